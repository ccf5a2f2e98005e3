#pragma once
// The guest app's HTTP server on port 80 (what the load balancer probes and clients call), run
// inside the guest's single poll loop: non-blocking sockets, one request per connection
// (`Connection: close`), at most kMaxConnections at once (a new one evicts the oldest, so idle
// connections cannot lock the probe out), a head limit of 8 KiB and a deadline per connection.
// After the response the server half-closes and waits briefly for the client's FIN before
// closing, so unread request bytes do not turn the close into a reset that eats the response.

#include <poll.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "http.hpp"

namespace fabriclab::guest {

class HttpServer {
 public:
  static constexpr std::size_t kMaxConnections = 32;
  static constexpr std::int64_t kRequestDeadlineMs = 5000;
  static constexpr std::int64_t kLingerMs = 1000;

  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  explicit HttpServer(Handler handler) : handler_(std::move(handler)) {}
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();

  // Binds 0.0.0.0:port and listens. False (logged) on failure; the caller may retry.
  bool start(std::uint16_t port);
  bool listening() const { return listen_fd_ >= 0; }

  // Adds the listener and every connection; on_ready takes the same slice back after poll().
  void append_pollfds(std::vector<pollfd>& fds) const;
  void on_ready(const pollfd* fds, std::size_t count, std::int64_t now_ms);
  // Closes connections past their deadline.
  void expire(std::int64_t now_ms);
  std::int64_t next_deadline() const;  // INT64_MAX when idle

  std::uint64_t served() const { return served_; }

 private:
  enum class State { reading, writing, lingering };
  struct Connection {
    int fd = -1;
    State state = State::reading;
    std::int64_t deadline_ms = 0;
    std::string in;
    std::string out;
    std::size_t written = 0;
  };

  void accept_all(std::int64_t now_ms);
  void on_connection_ready(Connection& connection, short revents, std::int64_t now_ms);
  void read_request(Connection& connection, std::int64_t now_ms);
  void respond(Connection& connection, const HttpResponse& response, bool head_only,
               std::int64_t now_ms);
  void write_response(Connection& connection, std::int64_t now_ms);
  void close_connection(Connection& connection);

  Handler handler_;
  int listen_fd_ = -1;
  std::vector<Connection> connections_;  // oldest first
  std::uint64_t served_ = 0;
  std::uint64_t bad_logged_ = 0;
};

}  // namespace fabriclab::guest
