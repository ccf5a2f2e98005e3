#pragma once
// Just enough HTTP/1.x for the guest, as pure functions over bytes (the sockets live in
// http_server.* and imds_client.*): parsing a request head, routing it to the guest's three
// answers, formatting responses and requests, and parsing a response (Content-Length, chunked,
// or close-delimited). Every input is untrusted and every parse is bounded by its caller's limit.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fabriclab::guest {

inline constexpr std::size_t kMaxRequestHeadBytes = 8 * 1024;
inline constexpr std::size_t kMaxTargetBytes = 2048;

struct HttpRequest {
  std::string method;  // as sent (case-sensitive, RFC 9110)
  std::string path;    // the target without its query
};

struct RequestParse {
  enum class Kind { incomplete, complete, bad, too_large };
  Kind kind = Kind::incomplete;
  HttpRequest request;
  std::string error;  // for bad / too_large
};

// Looks for a complete request head (request line + headers + empty line) in `data`. Bodies are
// not read: the server answers one request per connection and closes.
RequestParse parse_http_request(std::string_view data,
                                std::size_t max_head_bytes = kMaxRequestHeadBytes);

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain";
  std::string body;
  std::string allow;  // the Allow header of a 405
};

std::string_view reason_phrase(int status);
// The full response, `Connection: close`; `head_only` leaves the body out (HEAD).
std::string format_response(const HttpResponse& response, bool head_only);

// What the guest app answers with; filled from its state for each request.
struct AppView {
  enum class Health { serving, draining, app_failed };
  Health health = Health::serving;
  std::string_view instance;
  std::string_view image;
  std::string_view boot_id;
  std::int64_t counter = -1;
};

// GET|HEAD /health and /, 404 for other paths, 405 for other methods. In fail-app mode `/` is a
// 503 too: the app is not running, there is nothing to serve.
HttpResponse route(const HttpRequest& request, const AppView& view);
// The response for a request that could not be parsed (400, or 431 when too large).
HttpResponse bad_request_response(const RequestParse& parse);

struct ResponseParse {
  enum class Kind { incomplete, complete, bad };
  Kind kind = Kind::incomplete;
  int status = 0;
  std::string body;
  std::string error;
};

// Parses what a server sent so far; `eof` tells whether the peer closed. `max_bytes` bounds the
// whole response (head + body): more is an error, never a reason to keep reading.
ResponseParse parse_http_response(std::string_view data, bool eof, std::size_t max_bytes);

// A request with `Host`, `Metadata: true`, `Connection: close`, and for a body
// `Content-Type: application/json` + `Content-Length`.
std::string format_imds_request(std::string_view method, std::string_view target,
                                std::string_view host, std::string_view json_body);

}  // namespace fabriclab::guest
