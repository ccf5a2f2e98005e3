#pragma once
// The host side of one guest's integration channel: a unix socket that QEMU binds for the
// virtio-serial port. A reader thread splits lines, parses them (dropping and counting malformed
// or oversized ones) and keeps the recent messages for waiters. The link ends at EOF, which is
// what the host sees when the guest powers off; a restarted guest needs a new link.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "fabriclab/agent/guest_protocol.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::agent {

struct ReceivedMessage {
  uint64_t index = 0;  // 1, 2, ... per link
  GuestMessage message;
  std::chrono::steady_clock::time_point at;
  std::chrono::system_clock::time_point wall;
};

struct GuestLinkStats {
  uint64_t lines = 0;      // well-formed messages received
  uint64_t malformed = 0;  // dropped: not JSON or not the schema
  uint64_t oversized = 0;  // dropped: longer than kMaxGuestLine
  std::string last_drop;   // why the last line was dropped
};

class GuestLink {
 public:
  // Called on the reader thread for every well-formed message; must not block.
  using Handler = std::function<void(const ReceivedMessage&)>;

  // Connects to `socket_path`, retrying until `timeout` (QEMU creates the socket when it starts).
  static Result<std::unique_ptr<GuestLink>> connect(const std::string& socket_path,
                                                    std::chrono::milliseconds timeout,
                                                    Handler handler = {});
  ~GuestLink();
  GuestLink(const GuestLink&) = delete;
  GuestLink& operator=(const GuestLink&) = delete;

  // Sends one line (a newline is appended). Fails with transient after EOF.
  Status send_line(const std::string& line);

  // Waits for the first message with index > `after` that satisfies `pred`.
  // timeout when none arrived in time; transient when the link closed first.
  Result<ReceivedMessage> wait_for(const std::function<bool(const GuestMessage&)>& pred,
                                   std::chrono::milliseconds timeout, uint64_t after = 0);
  Result<ReceivedMessage> wait_for_heartbeat(std::chrono::milliseconds timeout, uint64_t after = 0);

  std::optional<ReceivedMessage> last_heartbeat() const;
  uint64_t received() const;  // index of the newest message
  GuestLinkStats stats() const;
  bool closed() const;
  // Waits until the guest side closes (EOF); returns false on timeout.
  bool wait_closed(std::chrono::milliseconds timeout);

 private:
  GuestLink(int fd, Handler handler);
  void run();
  void on_line(std::string_view line);

  int fd_ = -1;
  int wake_fd_ = -1;
  Handler handler_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ReceivedMessage> recent_;
  std::optional<ReceivedMessage> last_heartbeat_;
  GuestLinkStats stats_;
  uint64_t index_ = 0;
  bool closed_ = false;
  std::mutex write_mu_;
  std::thread reader_;
};

}  // namespace fabriclab::agent
