#include "imds_client.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "http.hpp"
#include "network.hpp"

namespace fabriclab::guest {

ImdsClient::~ImdsClient() {
  if (fd_ >= 0) ::close(fd_);
}

bool ImdsClient::start(const std::string& method, const std::string& target,
                       const std::string& json_body, std::int64_t now_ms) {
  if (busy()) return false;
  in_.clear();
  written_ = 0;
  deadline_ms_ = now_ms + kDeadlineMs;
  out_ = format_imds_request(method, target, ipv4_to_string(address_), json_body);
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    fail(std::string("socket: ") + std::strerror(errno));
    return true;
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port_);
  address.sin_addr.s_addr = htonl(address_);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    state_ = State::sending;
    do_send();
  } else if (errno == EINPROGRESS) {
    state_ = State::connecting;
  } else {
    fail(std::string("connect: ") + std::strerror(errno));
  }
  return true;
}

void ImdsClient::append_pollfds(std::vector<pollfd>& fds) const {
  if (fd_ < 0) return;
  short events = state_ == State::reading ? POLLIN : POLLOUT;
  fds.push_back(pollfd{fd_, events, 0});
}

void ImdsClient::on_ready(short revents, std::int64_t /*now_ms*/) {
  if (fd_ < 0) return;
  switch (state_) {
    case State::connecting: {
      int error = 0;
      socklen_t length = sizeof error;
      if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
      if (error == 0 && (revents & (POLLERR | POLLNVAL))) error = ECONNREFUSED;
      if (error != 0) {
        fail(std::string("connect: ") + std::strerror(error));
        return;
      }
      state_ = State::sending;
      do_send();
      return;
    }
    case State::sending:
      do_send();
      return;
    case State::reading:
      do_read();
      return;
    case State::idle:
      return;
  }
}

void ImdsClient::do_send() {
  while (written_ < out_.size()) {
    ssize_t n = ::send(fd_, out_.data() + written_, out_.size() - written_, MSG_NOSIGNAL);
    if (n > 0) {
      written_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    fail(std::string("send: ") + (n < 0 ? std::strerror(errno) : "no progress"));
    return;
  }
  state_ = State::reading;
}

void ImdsClient::do_read() {
  char buffer[4096];
  bool eof = false;
  for (;;) {
    ssize_t n = ::read(fd_, buffer, sizeof buffer);
    if (n > 0) {
      in_.append(buffer, static_cast<std::size_t>(n));
      if (in_.size() > kMaxResponseBytes) break;  // the parser reports "too large"
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      fail(std::string("read: ") + std::strerror(errno));
      return;
    }
    eof = true;
    break;
  }
  ResponseParse parse = parse_http_response(in_, eof, kMaxResponseBytes);
  switch (parse.kind) {
    case ResponseParse::Kind::incomplete:
      return;
    case ResponseParse::Kind::bad:
      fail("bad response: " + parse.error);
      return;
    case ResponseParse::Kind::complete:
      finish(ImdsResult{true, parse.status, std::move(parse.body), {}});
      return;
  }
}

void ImdsClient::finish(ImdsResult result) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  state_ = State::idle;
  in_.clear();
  out_.clear();
  result_ = std::move(result);
}

void ImdsClient::fail(std::string error) {
  ImdsResult result;
  result.error = std::move(error);
  finish(std::move(result));
}

void ImdsClient::expire(std::int64_t now_ms) {
  if (fd_ >= 0 && now_ms >= deadline_ms_) {
    fail(std::string("no complete response within ") + std::to_string(kDeadlineMs) + " ms (" +
         (state_ == State::connecting ? "connecting"
          : state_ == State::sending  ? "sending"
                                      : "reading") +
         ")");
  }
}

std::int64_t ImdsClient::next_deadline() const {
  if (result_) return 0;
  return fd_ >= 0 ? deadline_ms_ : INT64_MAX;
}

std::optional<ImdsResult> ImdsClient::take_result() {
  std::optional<ImdsResult> result = std::move(result_);
  result_.reset();
  return result;
}

}  // namespace fabriclab::guest
