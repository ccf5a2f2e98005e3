#include "http_server.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "boot_env.hpp"

namespace fabriclab::guest {
namespace {

constexpr std::size_t kReadChunk = 4096;
constexpr std::uint64_t kMaxBadRequestLogs = 20;  // garbage must not flood the console

}  // namespace

HttpServer::~HttpServer() {
  for (auto& connection : connections_) close_connection(connection);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

bool HttpServer::start(std::uint16_t port) {
  if (listen_fd_ >= 0) return true;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log("http: socket failed: %s", std::strerror(errno));
    return false;
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::listen(fd, 64) != 0) {
    log("http: cannot listen on port %u: %s", port, std::strerror(errno));
    ::close(fd);
    return false;
  }
  listen_fd_ = fd;
  log("http: listening on port %u", port);
  return true;
}

void HttpServer::append_pollfds(std::vector<pollfd>& fds) const {
  if (listen_fd_ < 0) return;
  fds.push_back(pollfd{listen_fd_, POLLIN, 0});
  for (const auto& connection : connections_) {
    short events = connection.state == State::writing ? POLLOUT : POLLIN;
    fds.push_back(pollfd{connection.fd, events, 0});
  }
}

void HttpServer::on_ready(const pollfd* fds, std::size_t count, std::int64_t now_ms) {
  if (listen_fd_ < 0 || count == 0) return;
  // The slice mirrors append_pollfds: listener, then connections_ in order (fds, not indexes,
  // are matched, because accept_all below may evict and append).
  for (std::size_t i = 1; i < count; ++i) {
    if (fds[i].revents == 0) continue;
    auto it = std::find_if(connections_.begin(), connections_.end(),
                           [&](const Connection& c) { return c.fd == fds[i].fd; });
    if (it != connections_.end()) on_connection_ready(*it, fds[i].revents, now_ms);
  }
  std::erase_if(connections_, [](const Connection& c) { return c.fd < 0; });
  if (fds[0].revents & POLLIN) accept_all(now_ms);
}

void HttpServer::accept_all(std::int64_t now_ms) {
  for (int accepted = 0; accepted < 16; ++accepted) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        log("http: accept failed: %s", std::strerror(errno));
      }
      return;
    }
    if (connections_.size() >= kMaxConnections) {
      close_connection(connections_.front());  // the oldest: likely idle or slow
      connections_.erase(connections_.begin());
    }
    Connection connection;
    connection.fd = fd;
    connection.deadline_ms = now_ms + kRequestDeadlineMs;
    connections_.push_back(std::move(connection));
    // Most clients send the request with the handshake's last ACK: try to answer right away.
    read_request(connections_.back(), now_ms);
    if (connections_.back().fd < 0) connections_.pop_back();
  }
}

void HttpServer::on_connection_ready(Connection& connection, short revents, std::int64_t now_ms) {
  if (revents & POLLNVAL) {
    connection.fd = -1;
    return;
  }
  switch (connection.state) {
    case State::reading:
      read_request(connection, now_ms);
      return;
    case State::writing:
      if (revents & (POLLERR | POLLHUP)) {
        close_connection(connection);
        return;
      }
      write_response(connection, now_ms);
      return;
    case State::lingering: {
      char sink[kReadChunk];
      for (;;) {
        ssize_t n = ::read(connection.fd, sink, sizeof sink);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        close_connection(connection);  // EOF or error: the client has what it needs
        return;
      }
    }
  }
}

void HttpServer::read_request(Connection& connection, std::int64_t now_ms) {
  char buffer[kReadChunk];
  bool eof = false;
  while (connection.in.size() <= kMaxRequestHeadBytes) {
    ssize_t n = ::read(connection.fd, buffer, sizeof buffer);
    if (n > 0) {
      connection.in.append(buffer, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    eof = true;  // EOF or error
    break;
  }
  RequestParse parse = parse_http_request(connection.in);
  switch (parse.kind) {
    case RequestParse::Kind::incomplete:
      if (eof) close_connection(connection);  // nothing to answer
      return;
    case RequestParse::Kind::bad:
    case RequestParse::Kind::too_large:
      if (bad_logged_ < kMaxBadRequestLogs) {
        ++bad_logged_;
        log("http: bad request (%s)%s", parse.error.c_str(),
            bad_logged_ == kMaxBadRequestLogs ? "; not logging further bad requests" : "");
      }
      respond(connection, bad_request_response(parse), false, now_ms);
      return;
    case RequestParse::Kind::complete:
      respond(connection, handler_(parse.request), parse.request.method == "HEAD", now_ms);
      return;
  }
}

void HttpServer::respond(Connection& connection, const HttpResponse& response, bool head_only,
                         std::int64_t now_ms) {
  ++served_;
  connection.out = format_response(response, head_only);
  connection.written = 0;
  connection.in.clear();
  connection.in.shrink_to_fit();
  connection.state = State::writing;
  write_response(connection, now_ms);
}

void HttpServer::write_response(Connection& connection, std::int64_t now_ms) {
  while (connection.written < connection.out.size()) {
    ssize_t n = ::send(connection.fd, connection.out.data() + connection.written,
                       connection.out.size() - connection.written, MSG_NOSIGNAL);
    if (n > 0) {
      connection.written += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    close_connection(connection);
    return;
  }
  ::shutdown(connection.fd, SHUT_WR);
  connection.state = State::lingering;
  connection.out.clear();
  connection.out.shrink_to_fit();
  connection.deadline_ms = std::min(connection.deadline_ms, now_ms + kLingerMs);
}

void HttpServer::close_connection(Connection& connection) {
  if (connection.fd >= 0) ::close(connection.fd);
  connection.fd = -1;
}

void HttpServer::expire(std::int64_t now_ms) {
  for (auto& connection : connections_) {
    if (connection.fd >= 0 && now_ms >= connection.deadline_ms) {
      if (connection.state == State::reading && !connection.in.empty()) {
        // A partial request that never completed: answer 408 once, without waiting on it.
        HttpResponse response;
        response.status = 408;
        response.body = "request timeout\n";
        std::string out = format_response(response, false);
        (void)!::send(connection.fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      close_connection(connection);
    }
  }
  std::erase_if(connections_, [](const Connection& c) { return c.fd < 0; });
}

std::int64_t HttpServer::next_deadline() const {
  std::int64_t deadline = INT64_MAX;
  for (const auto& connection : connections_) deadline = std::min(deadline, connection.deadline_ms);
  return deadline;
}

}  // namespace fabriclab::guest
