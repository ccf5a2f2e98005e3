#pragma once
// A small synchronous HTTP/1.1 and websocket client (plain TCP), for tests and for the
// orchestrator's calls to agents. Each call has a deadline. Transport failures are
// Condition::transient, deadlines Condition::timeout; HTTP error statuses are not errors here
// (look at ClientResponse::status).
//
// Network namespaces: every call takes an optional `netns`, a network namespace given as a name
// under /run/netns (what `ip netns add NAME` makes) or as an absolute path to a namespace file
// (/run/netns/NAME, /proc/PID/ns/net). The call's socket is then created inside that namespace
// (setns(2) on the calling thread around socket(2), and back at once; a socket keeps its
// namespace for life), so a process in one namespace reaches addresses that exist only in
// another. Empty: the calling thread's own namespace. A namespace that cannot be entered is
// Condition::not_found (no such file) or permission_denied (EPERM), the error naming it.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "fabriclab/common/result.hpp"

namespace fabriclab::http {

struct ClientResponse {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // names in lower case
};

// One request on a fresh connection. A non-empty body is sent as application/json; a non-empty
// token as `Authorization: Bearer <token>`. `target` is the path with an optional query.
Result<ClientResponse> request(const std::string& host, uint16_t port, std::string_view method,
                               std::string_view target, std::string_view body = {},
                               std::string_view token = {},
                               std::chrono::milliseconds timeout = std::chrono::seconds(10),
                               std::string_view netns = {});

// The namespace file `netns` names: NAME -> /run/netns/NAME, an absolute path as it is. Refuses
// names that are not [A-Za-z0-9._-]{1,64} (or start with '.') and paths with "..", whitespace or
// control characters, or longer than 255.
Result<std::string> netns_path(std::string_view netns);

// A websocket connection. Not thread safe: use it from one thread.
class WsClient {
 public:
  // Connects and upgrades; the token goes in the Authorization header when non-empty. A server
  // that refuses the upgrade gives an error whose message carries the HTTP status and body.
  static Result<std::unique_ptr<WsClient>> connect(
      const std::string& host, uint16_t port, std::string_view target, std::string_view token = {},
      std::chrono::milliseconds timeout = std::chrono::seconds(10), std::string_view netns = {});

  ~WsClient();
  WsClient(const WsClient&) = delete;
  WsClient& operator=(const WsClient&) = delete;

  // The next message. After a timeout the connection is unusable (Beast cannot resume a
  // cancelled read). A close from the server: Condition::cancelled with the close reason.
  Result<std::string> read(std::chrono::milliseconds timeout);
  Status write(std::string_view text, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Sends a close frame (best effort, short deadline) and closes the socket.
  void close();

  // The close reason the server sent, once read() reported the close.
  std::string close_reason() const;

  struct Impl;

 private:
  explicit WsClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fabriclab::http
