#pragma once
// The orchestrator's REST API as the CLI and the rack use it: one call, its JSON answer, and an
// error that names the call and carries the orchestrator's own error message.

#include <atomic>
#include <chrono>
#include <string>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::client {

class OrchestratorClient {
 public:
  // url: "http://HOST:PORT" (a trailing "/" is ignored).
  static Result<OrchestratorClient> from_url(const std::string& url, std::string token);

  Result<json::value> get(const std::string& target) const;
  Result<json::value> post(const std::string& target, const json::value& body) const;
  // A non-JSON answer (the report's HTML page).
  Result<std::string> get_text(const std::string& target) const;

  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }
  const std::string& token() const { return token_; }
  std::string url() const { return "http://" + host_ + ":" + std::to_string(port_); }
  // A call's deadline (10 s unless set; a POST gets at least 120 s: it may boot VMs).
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

 private:
  Result<json::value> call(std::string_view method, const std::string& target,
                           const std::string& body) const;
  Result<std::string> call_raw(std::string_view method, const std::string& target,
                               const std::string& body) const;
  std::string host_;
  uint16_t port_ = 0;
  std::string token_;
  std::chrono::milliseconds timeout_{10000};
};

// Set by the CLI's SIGINT/SIGTERM handler; long waits in the rack check it and stop early.
std::atomic<bool>& interrupted();

// SIGINT, SIGTERM and SIGHUP set interrupted() instead of ending the process, so a command can
// abort its drill and stop its rack in order.
void install_interrupt_handlers();

// Sleeps `d` in short slices; false when interrupted.
bool sleep_unless_interrupted(std::chrono::milliseconds d);

}  // namespace fabriclab::client
