#pragma once
// The orchestrator's client for one host agent's REST API (agent/src/api.cpp is the other side).
// Synchronous, one fresh connection per call, each call with a deadline. Every answer is checked:
// a body that is not the JSON the contract promises is an error naming the agent and the call.
// Conditions: transport failures transient, deadlines timeout, HTTP errors mapped back from the
// agent's {"error": {"code", "message"}} body (not_found, invalid_state, ...).

#include <chrono>
#include <cstdint>
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

class AgentClient {
 public:
  // netns: where the connections are opened (http_client.hpp); empty: this thread's namespace.
  AgentClient(Endpoint endpoint, std::string token,
              std::chrono::milliseconds timeout = std::chrono::seconds(10), std::string netns = {});

  const Endpoint& endpoint() const { return endpoint_; }

  Result<json::object> host() const;                                     // GET /v1/host
  Result<json::array> instances() const;                                 // GET /v1/instances
  Result<json::object> create_instance(const json::object& spec) const;  // POST /v1/instances
  Status delete_instance(const std::string& name) const;
  // DELETE /v1/instances/NAME?keep_data=true: the instance goes, its data disk is moved aside on
  // the host; the answer's "data_disk_kept" is where ("" when it had none).
  Result<json::object> delete_instance_keep_data(const std::string& name) const;
  Status start_instance(const std::string& name) const;  // POST /v1/instances/NAME/start
  Result<json::object> start_operation(const json::object& request) const;  // POST /v1/operations
  Result<json::object> job(const std::string& id) const;                    // GET /v1/operations/ID
  Result<json::array> jobs() const;                                         // GET /v1/operations
  Status cancel(const std::string& id) const;
  Result<json::object> stage_host_image(const std::string& version, const std::string& path,
                                        const std::string& sha256) const;

 private:
  Result<json::value> call(std::string_view method, const std::string& target,
                           const std::string& body, int expect) const;

  Endpoint endpoint_;
  std::string token_;
  std::chrono::milliseconds timeout_;
  std::string netns_;
};

}  // namespace fabriclab::orchestrator
