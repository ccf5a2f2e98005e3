// The reader is one thread per guest: a handful of guests per host, each sending a line a second,
// do not justify more machinery, and a blocking poll() with an eventfd to wake it on destruction
// keeps shutdown prompt. Lines longer than the limit are discarded up to their newline without
// ever being buffered whole, so a misbehaving guest cannot grow the agent's memory.

#include "fabriclab/agent/guest_link.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace fabriclab::agent {

using Clock = std::chrono::steady_clock;
constexpr size_t kRecentMessages = 1024;

Result<std::unique_ptr<GuestLink>> GuestLink::connect(const std::string& socket_path,
                                                      std::chrono::milliseconds timeout,
                                                      Handler handler) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return make_error(Condition::invalid_argument, "channel socket path too long: " + socket_path);
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  const auto deadline = Clock::now() + timeout;
  std::string last = "not tried";
  for (;;) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return make_error(Condition::transient, std::string("socket: ") + std::strerror(errno));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      return std::unique_ptr<GuestLink>(new GuestLink(fd, std::move(handler)));
    }
    last = std::strerror(errno);
    ::close(fd);
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return make_error(Condition::timeout,
                    "cannot connect to guest channel " + socket_path + ": " + last);
}

GuestLink::GuestLink(int fd, Handler handler) : fd_(fd), handler_(std::move(handler)) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  reader_ = std::thread([this] { run(); });
}

GuestLink::~GuestLink() {
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof(one));
  if (reader_.joinable()) reader_.join();
  if (fd_ >= 0) ::close(fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void GuestLink::run() {
  std::string buf;
  bool discarding = false;  // inside an oversized line, dropping until its newline
  char chunk[8192];
  for (;;) {
    pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (fds[1].revents & POLLIN)) break;
    ssize_t r = ::read(fd_, chunk, sizeof(chunk));
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) break;  // EOF: the guest powered off (or QEMU exited)
    size_t start = 0;
    for (size_t i = 0; i < static_cast<size_t>(r); ++i) {
      if (chunk[i] != '\n') continue;
      if (discarding) {
        discarding = false;
      } else {
        buf.append(chunk + start, i - start);
        if (buf.size() > kMaxGuestLine) {
          std::lock_guard lock(mu_);
          ++stats_.oversized;
          stats_.last_drop = "line longer than 64 KiB";
        } else if (!buf.empty()) {
          on_line(buf);
        }
      }
      buf.clear();
      start = i + 1;
    }
    if (!discarding) buf.append(chunk + start, r - start);
    if (buf.size() > kMaxGuestLine) {
      buf.clear();
      discarding = true;
      std::lock_guard lock(mu_);
      ++stats_.oversized;
      stats_.last_drop = "line longer than 64 KiB";
    }
  }
  std::lock_guard lock(mu_);
  closed_ = true;
  cv_.notify_all();
}

void GuestLink::on_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  auto parsed = parse_guest_line(line);
  ReceivedMessage m;
  {
    std::lock_guard lock(mu_);
    if (!parsed.ok()) {
      ++stats_.malformed;
      stats_.last_drop = parsed.error().message;
      return;
    }
    ++stats_.lines;
    m = ReceivedMessage{++index_, std::move(parsed).value(), Clock::now(),
                        std::chrono::system_clock::now()};
    recent_.push_back(m);
    if (recent_.size() > kRecentMessages) recent_.pop_front();
    if (std::holds_alternative<Heartbeat>(m.message)) last_heartbeat_ = m;
  }
  cv_.notify_all();
  if (handler_) handler_(m);
}

Status GuestLink::send_line(const std::string& line) {
  if (line.find('\n') != std::string::npos) {
    return make_error(Condition::invalid_argument, "a channel line must not contain a newline");
  }
  std::string out = line + "\n";
  std::lock_guard lock(write_mu_);
  size_t off = 0;
  while (off < out.size()) {
    ssize_t w = ::send(fd_, out.data() + off, out.size() - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0)
      return make_error(Condition::transient,
                        std::string("channel write: ") + std::strerror(errno));
    off += static_cast<size_t>(w);
  }
  return {};
}

Result<ReceivedMessage> GuestLink::wait_for(const std::function<bool(const GuestMessage&)>& pred,
                                            std::chrono::milliseconds timeout, uint64_t after) {
  std::unique_lock lock(mu_);
  const auto deadline = Clock::now() + timeout;
  uint64_t scanned = after;
  for (;;) {
    for (const auto& m : recent_) {
      if (m.index <= scanned) continue;
      scanned = m.index;
      if (pred(m.message)) return m;
    }
    if (closed_) return make_error(Condition::transient, "guest channel closed");
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      for (const auto& m : recent_) {
        if (m.index > scanned && pred(m.message)) return m;
      }
      return make_error(Condition::timeout, "no matching guest message within " +
                                                std::to_string(timeout.count()) + " ms");
    }
  }
}

Result<ReceivedMessage> GuestLink::wait_for_heartbeat(std::chrono::milliseconds timeout,
                                                      uint64_t after) {
  return wait_for([](const GuestMessage& m) { return std::holds_alternative<Heartbeat>(m); },
                  timeout, after);
}

std::optional<ReceivedMessage> GuestLink::last_heartbeat() const {
  std::lock_guard lock(mu_);
  return last_heartbeat_;
}

uint64_t GuestLink::received() const {
  std::lock_guard lock(mu_);
  return index_;
}

GuestLinkStats GuestLink::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

bool GuestLink::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

bool GuestLink::wait_closed(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return closed_; });
}

}  // namespace fabriclab::agent
