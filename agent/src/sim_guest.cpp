#include "sim_guest.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <vector>

#include "fabriclab/agent/guest_protocol.hpp"

namespace fabriclab::agent {

using Clock = std::chrono::steady_clock;

namespace {

int64_t read_counter(const std::string& path) {
  std::ifstream in(path);
  int64_t v = 0;
  return (in >> v) ? v : 0;
}

void write_counter(const std::string& path, int64_t v) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return;
  std::string s = std::to_string(v) + "\n";
  (void)!::write(fd, s.data(), s.size());
  ::fdatasync(fd);
  ::close(fd);
  ::rename(tmp.c_str(), path.c_str());
}

std::string new_boot_id() {
  std::random_device rd;
  std::mt19937_64 g(rd());
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(g()),
                static_cast<unsigned long long>(g()));
  return buf;
}

}  // namespace

SimGuest::SimGuest(std::string socket_path, std::string counter_file,
                   std::chrono::milliseconds period, std::chrono::milliseconds drain, bool ack)
    : socket_path_(std::move(socket_path)),
      counter_file_(std::move(counter_file)),
      period_(period),
      drain_(drain),
      ack_(ack),
      wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

SimGuest::~SimGuest() {
  power_off(false);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

namespace {
void wake(int fd) {
  uint64_t one = 1;
  if (fd >= 0) (void)!::write(fd, &one, sizeof one);
}
}  // namespace

void SimGuest::boot(const std::string& image, const std::string& mode) {
  power_off(false);
  ::unlink(socket_path_.c_str());
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof(addr.sun_path) - 1);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 2) != 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    return;
  }
  image_ = image;
  mode_ = image.ends_with("-broken") ? "fail-app" : mode;
  boot_id_ = new_boot_id();
  seq_ = 0;
  pending_acks_.clear();
  acked_.clear();
  counter_ = read_counter(counter_file_);
  booted_at_ = Clock::now();
  stop_ = false;
  paused_ = false;
  running_ = true;
  thread_ = std::thread([this] { run(); });
}

void SimGuest::power_off(bool clean) {
  {
    std::lock_guard lock(mu_);
    if (!thread_.joinable()) return;
    stop_ = true;
    clean_ = clean;
  }
  cv_.notify_all();
  wake(wake_fd_);
  thread_.join();
  running_ = false;
  if (client_fd_ >= 0) ::close(client_fd_);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  client_fd_ = listen_fd_ = -1;
  ::unlink(socket_path_.c_str());
}

void SimGuest::pause() {
  {
    std::lock_guard lock(mu_);
    paused_ = true;
  }
  wake(wake_fd_);
}

void SimGuest::resume() {
  {
    std::lock_guard lock(mu_);
    paused_ = false;
  }
  cv_.notify_all();
}

void SimGuest::send(const std::string& line) {
  if (client_fd_ < 0) return;
  std::string out = line + "\n";
  if (::send(client_fd_, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    ::close(client_fd_);
    client_fd_ = -1;
  }
}

void SimGuest::handle(const std::string& line) {
  // As the guest program: a line that is not a message is dropped, a message with bad fields is
  // answered with an error line, a type this guest does not know is ignored.
  auto envelope = guestproto::parse_envelope(line);
  if (!envelope.ok()) return;
  auto message = guestproto::parse_host_message(*envelope);
  if (!message.ok()) {
    if (message.condition() != Condition::unsupported) {
      send(guestproto::to_line(GuestError{message.error().message}));
    }
    return;
  }
  if (auto* identity = std::get_if<InstanceIdentity>(&*message)) {
    send(guestproto::to_line(guestproto::acknowledge(*identity)));
    return;
  }
  const auto& doc = std::get<ScheduledEventsDoc>(*message);
  std::vector<std::string> scheduled;
  for (const auto& e : doc.events) {
    if (e.event_status == "Scheduled") scheduled.push_back(e.event_id);
  }
  // The document is the whole current set: a pending ack whose event is no longer Scheduled
  // is dropped, as the guest program does.
  std::erase_if(pending_acks_, [&](const auto& p) {
    return std::find(scheduled.begin(), scheduled.end(), p.first) == scheduled.end();
  });
  if (!ack_) return;
  for (auto& id : scheduled) {
    bool known = std::find(acked_.begin(), acked_.end(), id) != acked_.end() ||
                 std::any_of(pending_acks_.begin(), pending_acks_.end(),
                             [&](const auto& p) { return p.first == id; });
    if (!known) pending_acks_.emplace_back(id, Clock::now() + drain_);
  }
}

void SimGuest::run() {
  std::string buf;
  auto next_beat = Clock::now() + std::chrono::milliseconds(50);
  bool announced = false;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (stop_) break;
      if (paused_) {
        cv_.wait(lock, [&] { return stop_ || !paused_; });
        next_beat = Clock::now();
        continue;
      }
    }
    if (client_fd_ < 0) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) {
        client_fd_ = fd;
        announced = false;
      }
    }
    if (client_fd_ >= 0 && mode_ == "fail-app" && !announced) {
      send(guestproto::to_line(GuestError{"app failed to start (fail-app mode)"}));
      announced = true;
    }
    if (client_fd_ >= 0) {
      char chunk[4096];
      ssize_t r = ::recv(client_fd_, chunk, sizeof(chunk), MSG_DONTWAIT);
      if (r == 0) {
        ::close(client_fd_);
        client_fd_ = -1;
      } else if (r > 0) {
        buf.append(chunk, r);
        for (size_t nl; (nl = buf.find('\n')) != std::string::npos;) {
          std::string line = buf.substr(0, nl);
          buf.erase(0, nl + 1);
          if (line.size() <= kMaxGuestLine) handle(line);
        }
        if (buf.size() > kMaxGuestLine) buf.clear();
      }
    }
    for (auto it = pending_acks_.begin(); client_fd_ >= 0 && it != pending_acks_.end();) {
      if (it->second > Clock::now()) {
        ++it;
        continue;
      }
      send(guestproto::to_line(Ack{it->first}));
      acked_.push_back(it->first);
      if (acked_.size() > 64) acked_.erase(acked_.begin());
      it = pending_acks_.erase(it);
    }
    if (Clock::now() >= next_beat && mode_ != "fail-app") {
      ++counter_;
      write_counter(counter_file_, counter_);  // durable before it is reported
      ++seq_;
      const auto uptime =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - booted_at_);
      send(guestproto::to_line(Heartbeat{seq_, boot_id_, image_, counter_,
                                         static_cast<uint64_t>(uptime.count()), mode_}));
      next_beat += period_;
    }
    // Sleep until the next heartbeat, a connection, a line from the agent, or a wake-up.
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {client_fd_ >= 0 ? client_fd_ : listen_fd_, POLLIN, 0}};
    int timeout = -1;
    if (mode_ != "fail-app") {
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(next_beat - Clock::now()).count();
      timeout = static_cast<int>(std::clamp<int64_t>(left + 1, 0, 60000));
    }
    for (const auto& [id, due] : pending_acks_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(due - Clock::now()).count();
      int t = static_cast<int>(std::clamp<int64_t>(left + 1, 0, 60000));
      timeout = timeout < 0 ? t : std::min(timeout, t);
    }
    if (client_fd_ >= 0 && mode_ == "fail-app" && !announced) timeout = 0;
    if (::poll(fds, 2, timeout) > 0 && (fds[0].revents & POLLIN)) {
      uint64_t n;
      (void)!::read(wake_fd_, &n, sizeof n);
    }
  }
  if (clean_ && client_fd_ >= 0) {
    send(guestproto::to_line(Final{boot_id_, counter_, true}));
  }
}

}  // namespace fabriclab::agent
