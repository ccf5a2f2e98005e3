#include "channel.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "boot_env.hpp"

namespace fabriclab::guest {
namespace {

constexpr const char* kPortsDir = "/sys/class/virtio-ports";

}  // namespace

Channel::~Channel() {
  if (fd_ >= 0) ::close(fd_);
}

bool Channel::try_open() {
  if (fd_ >= 0) return true;
  DIR* dir = ::opendir(kPortsDir);
  if (dir == nullptr) return false;
  std::string found;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::string base = std::string(kPortsDir) + "/" + entry->d_name;
    auto name = read_text_file(base + "/name", 256);
    if (name && trim(*name) == port_name_) {
      found = entry->d_name;
      break;
    }
  }
  ::closedir(dir);
  if (found.empty()) return false;
  std::string device = "/dev/" + found;
  int fd = ::open(device.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    // The node may not be in devtmpfs yet; EBUSY means someone else has it. Retry later.
    return false;
  }
  fd_ = fd;
  device_ = device;
  host_connected_ = false;
  log("channel %s open on %s", port_name_.c_str(), device_.c_str());
  return true;
}

bool Channel::probe(std::vector<std::string>& lines) {
  if (fd_ < 0) return false;
  const bool was_connected = host_connected_;
  pollfd pfd{fd_, static_cast<short>(POLLIN | POLLOUT), 0};
  int rc = ::poll(&pfd, 1, 0);
  if (rc < 0) return false;
  // While the host end is closed, virtio_console reports POLLIN|POLLHUP and read() returns 0.
  bool connected = (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) == 0;
  if (connected) set_connected(true);
  if (pfd.revents & POLLIN) read_available(lines);
  if (!connected) set_connected(false);
  if (host_connected_ && (pfd.revents & POLLOUT)) write_pending();
  return !was_connected && host_connected_;
}

short Channel::poll_events() const {
  return static_cast<short>(POLLIN | (out_buffer_.empty() ? 0 : POLLOUT));
}

void Channel::on_ready(short revents, std::vector<std::string>& lines) {
  if (fd_ < 0) return;
  if (revents & POLLIN) read_available(lines);
  if (host_connected_ && (revents & POLLOUT)) write_pending();
  if (revents & (POLLHUP | POLLERR | POLLNVAL)) set_connected(false);
}

bool Channel::send(std::string_view line) {
  if (!host_connected() || out_buffer_.size() + line.size() + 1 > kMaxPendingOutput) {
    ++dropped_out_;
    return false;
  }
  out_buffer_.append(line);
  out_buffer_.push_back('\n');
  write_pending();
  return host_connected_;
}

bool Channel::flush(int timeout_ms) {
  const std::int64_t deadline = monotonic_ms() + timeout_ms;
  while (host_connected() && !out_buffer_.empty()) {
    std::int64_t left = deadline - monotonic_ms();
    if (left <= 0) break;
    pollfd pfd{fd_, POLLOUT, 0};
    int rc = ::poll(&pfd, 1, static_cast<int>(left));
    if (rc < 0 && errno != EINTR) break;
    if (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) {
      set_connected(false);
      break;
    }
    if (pfd.revents & POLLOUT) write_pending();
  }
  return out_buffer_.empty() && host_connected();
}

void Channel::read_available(std::vector<std::string>& lines) {
  char chunk[16 * 1024];
  for (;;) {
    ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n > 0) {
      consume(chunk, static_cast<std::size_t>(n), lines);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n < 0) log("channel read failed: %s", std::strerror(errno));
    set_connected(false);  // EOF: the host end is closed
    return;
  }
}

void Channel::consume(const char* data, std::size_t size, std::vector<std::string>& lines) {
  while (size > 0) {
    const char* newline = static_cast<const char*>(std::memchr(data, '\n', size));
    std::size_t take = newline ? static_cast<std::size_t>(newline - data) : size;
    if (!discarding_line_) {
      if (in_buffer_.size() + take > kMaxLineBytes) {
        ++dropped_in_;
        log("channel: dropped an incoming line longer than %zu bytes (%llu dropped so far)",
            kMaxLineBytes, static_cast<unsigned long long>(dropped_in_));
        in_buffer_.clear();
        discarding_line_ = true;
      } else {
        in_buffer_.append(data, take);
      }
    }
    if (newline == nullptr) return;
    if (!discarding_line_) {
      if (!in_buffer_.empty() && in_buffer_.back() == '\r') in_buffer_.pop_back();
      if (!in_buffer_.empty()) lines.push_back(std::move(in_buffer_));
    }
    in_buffer_.clear();
    discarding_line_ = false;
    data += take + 1;
    size -= take + 1;
  }
}

void Channel::write_pending() {
  while (!out_buffer_.empty()) {
    ssize_t n = ::write(fd_, out_buffer_.data(), out_buffer_.size());
    if (n > 0) {
      out_buffer_.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    log("channel write failed: %s", n < 0 ? std::strerror(errno) : "wrote 0 bytes");
    set_connected(false);
    return;
  }
}

void Channel::set_connected(bool connected) {
  if (connected == host_connected_) return;
  host_connected_ = connected;
  if (connected) {
    log("channel: host connected");
    return;
  }
  auto lost = std::count(out_buffer_.begin(), out_buffer_.end(), '\n');
  dropped_out_ += static_cast<std::uint64_t>(lost);
  log("channel: host disconnected (%ld unsent lines dropped)", static_cast<long>(lost));
  out_buffer_.clear();
  in_buffer_.clear();
  discarding_line_ = false;
}

}  // namespace fabriclab::guest
