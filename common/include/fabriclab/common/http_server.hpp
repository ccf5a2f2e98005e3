#pragma once
// A small HTTP/1.1 + websocket server for the agent's and the orchestrator's APIs (Beast inside,
// none of it in this header).
//
// - Routes: "METHOD /v1/things/{name}" -> Handler. Unknown path: 404; known path, other method:
//   405 with Allow. Every error body is {"error": {"code": "...", "message": "..."}}.
// - Auth: `Authorization: Bearer <token>` (and `?access_token=` on websocket upgrades, since
//   browsers cannot set headers there). The control token may do everything, the read token
//   Access::read and Access::open routes. No or unknown token: 401 + WWW-Authenticate; read token
//   on a control route: 403.
// - Limits: body (413), header (431), malformed HTTP (400), read/write deadlines, connection cap
//   (503); the connection is closed after any of these.
// - A handler that throws gives 500 (logged); the server keeps serving.
// - events(): a websocket event stream over an EventFeed (snapshot then deltas, ?since= resume,
//   slow consumers cut off with close reason "slow consumer").

#include <boost/json/fwd.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::http {

// open: no token needed (/healthz, the dashboard page). read: the read or control token.
// control: the control token.
enum class Access { open, read, control };

struct Request {
  std::string method;                         // "GET", "POST", ...
  std::string path;                           // percent-decoded, without the query
  std::map<std::string, std::string> query;   // decoded; the last of repeated keys wins
  std::map<std::string, std::string> params;  // {param} segments of the route
  std::string body;
  std::string role;    // "control" | "read" | "" (no valid token)
  std::string remote;  // "127.0.0.1:54321"
  // Every request header, names in lower case; repeated headers joined with ", ".
  std::map<std::string, std::string> headers;
};

struct Response {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
};

Response json_response(int status, const boost::json::value& v);
// Body {"error": {"code": code, "message": message}}.
Response error_response(int status, std::string_view code, std::string_view message);
// Status from the condition: invalid_argument 400, not_found 404, already_exists 409,
// invalid_state 409, unsupported 501, timeout 504, transient 503, cancelled 409,
// unauthenticated 401, permission_denied 403, internal 500; code = the condition's name.
Response error_response(const Error& e);
int status_for(Condition c);

// `body` with ok_status when `s` is ok, else the error response.
inline Response status_or(const Status& s, int ok_status, const boost::json::value& body) {
  if (!s.ok()) return error_response(s.error());
  return json_response(ok_status, body);
}

// The result's value as JSON with ok_status, else the error response.
template <class T>
Response result_or(const Result<T>& r, int ok_status) {
  if (!r.ok()) return error_response(r.error());
  return json_response(ok_status, boost::json::value(*r));
}

// Runs on one of the server's io threads: it must not block for long (post slow work elsewhere).
using Handler = std::function<Response(const Request&)>;

struct Limits {
  size_t max_body = 1 << 20;
  size_t max_header = 8 * 1024;
  int max_json_depth = 32;
  size_t max_ws_message = 64 * 1024;
  size_t max_ws_queue = 1024;  // events queued per websocket before it is cut off
  // SO_SNDBUF of a websocket (the kernel doubles it): with Linux's autotuning a socket to a peer
  // that stopped reading could hold up to 4 MB before the bounded queue even starts to fill.
  int ws_send_buffer = 128 * 1024;
  std::chrono::seconds read_timeout{30};
  std::chrono::seconds write_timeout{10};
  size_t max_connections = 256;
};

// The request body as JSON within the limits; an empty body is an error ("body is required").
Result<boost::json::value> parse_body(const Request& req, const Limits& limits);
// parse_body, for routes that take a JSON object: JSON of another kind is invalid_argument
// ("body must be a JSON object").
Result<boost::json::object> parse_object_body(const Request& req, const Limits& limits);
// parse_object_body, then `parse` (a wire type's from_json) on the object: what `parse` returns,
// or the first error on the way. (`Object` stays a template parameter so that this header needs
// only boost/json/fwd.hpp.)
template <class Parse, class Object = boost::json::object>
auto parse_body_as(const Request& req, const Limits& limits, const Parse& parse)
    -> decltype(parse(std::declval<const Object&>())) {
  Result<Object> body = parse_object_body(req, limits);
  if (!body.ok()) return body.error();
  return parse(*body);
}

struct Tokens {
  std::string control;  // empty: the role is disabled
  std::string read;
};

// Each file holds one token (surrounding whitespace trimmed). An empty path leaves that role
// disabled. A missing file: not_found naming it; an empty file: invalid_argument.
Result<Tokens> load_tokens(const std::string& control_file, const std::string& read_file);

class Server {
 public:
  // `name` is the logger component ("agent-api", ...).
  Server(std::string name, Tokens tokens, Limits limits = {});
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Before start(). Patterns are absolute paths whose segments may be "{param}".
  void route(std::string method, std::string pattern, Access access, Handler handler);

  // The websocket event stream at `path` (Access::read), before start(). Query: `since=SEQ`,
  // `access_token=TOKEN`. Clients may send {"type":"ping"} and get {"type":"pong"}.
  void events(std::string path, std::shared_ptr<EventFeed> feed);

  // Binds `address:port` (port 0: ephemeral), starts `threads` io threads; returns the port.
  Result<uint16_t> start(const std::string& address, uint16_t port, int threads = 1);

  // Closes the acceptor, closes sessions (websockets with a close frame "going away") with a
  // short grace period, joins the threads. Idempotent.
  void stop();

  uint16_t port() const;

  // Connections open now (HTTP and websocket sessions; those over Limits::max_connections are
  // refused at once and never counted).
  size_t connections() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace fabriclab::http
