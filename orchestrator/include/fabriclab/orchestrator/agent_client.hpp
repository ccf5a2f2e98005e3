#pragma once
// The orchestrator's client for one host agent's REST API (agent/src/api.cpp is the other side).
// Synchronous, one fresh connection per call, each call with a deadline. Every answer is checked:
// a body that is not the JSON the contract promises is an error naming the agent and the call.
// Conditions: transport failures transient, deadlines timeout, HTTP errors mapped back from the
// agent's {"error": {"code", "message"}} body (not_found, invalid_state, ...).

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::orchestrator {

struct Endpoint {
  std::string host;  // an IP address or name
  uint16_t port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
};
// "127.0.1.3:7100" -> Endpoint; the error names the text.
Result<Endpoint> parse_endpoint(std::string_view text);

// The calls the orchestrator makes on one host's agent. An interface so that the controller can
// run against agents that live in the same process (tests/unit/controller_fake_agent_test.cpp);
// HttpAgentClient below is the real one. Every implementation keeps the contract above: errors
// are values with the agent's conditions (not_found, invalid_state, timeout, transient, ...), and
// every call may be made from any thread (the controller's watchers and executors call at once).
class AgentClient {
 public:
  virtual ~AgentClient() = default;

  virtual Result<json::object> host() const = 0;      // GET /v1/host
  virtual Result<json::array> instances() const = 0;  // GET /v1/instances
  virtual Result<json::object> create_instance(const json::object& spec) const = 0;  // POST
  virtual Status delete_instance(const std::string& name) const = 0;
  // DELETE /v1/instances/NAME?keep_data=true: the instance goes, its data disk is moved aside on
  // the host; the answer's "data_disk_kept" is where ("" when it had none).
  virtual Result<json::object> delete_instance_keep_data(const std::string& name) const = 0;
  virtual Status start_instance(
      const std::string& name) const = 0;  // POST /v1/instances/NAME/start
  // POST /v1/operations: the answer is the accepted job ({"id", "state", ...}).
  virtual Result<json::object> start_operation(const json::object& request) const = 0;
  virtual Result<json::object> job(const std::string& id) const = 0;  // GET /v1/operations/ID
  virtual Result<json::array> jobs() const = 0;                       // GET /v1/operations
  virtual Status cancel(const std::string& id) const = 0;
  virtual Result<json::object> stage_host_image(const std::string& version, const std::string& path,
                                                const std::string& sha256) const = 0;
};

// Makes the client for the agent at `endpoint`, whose calls have `timeout` as their deadline.
using AgentClientFactory = std::function<std::unique_ptr<AgentClient>(
    const Endpoint& endpoint, std::chrono::milliseconds timeout)>;

// The agent's REST API over HTTP.
class HttpAgentClient final : public AgentClient {
 public:
  // netns: where the connections are opened (http_client.hpp); empty: this thread's namespace.
  HttpAgentClient(Endpoint endpoint, std::string token,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10),
                  std::string netns = {});

  const Endpoint& endpoint() const { return endpoint_; }

  Result<json::object> host() const override;
  Result<json::array> instances() const override;
  Result<json::object> create_instance(const json::object& spec) const override;
  Status delete_instance(const std::string& name) const override;
  Result<json::object> delete_instance_keep_data(const std::string& name) const override;
  Status start_instance(const std::string& name) const override;
  Result<json::object> start_operation(const json::object& request) const override;
  Result<json::object> job(const std::string& id) const override;
  Result<json::array> jobs() const override;
  Status cancel(const std::string& id) const override;
  Result<json::object> stage_host_image(const std::string& version, const std::string& path,
                                        const std::string& sha256) const override;

 private:
  Result<json::value> call(std::string_view method, const std::string& target,
                           const std::string& body, int expect) const;

  Endpoint endpoint_;
  std::string token_;
  std::chrono::milliseconds timeout_;
  std::string netns_;
};

// The factory of HttpAgentClients with this token, opening connections in `netns`.
AgentClientFactory http_agent_client_factory(std::string token, std::string netns);

}  // namespace fabriclab::orchestrator
