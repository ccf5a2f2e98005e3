#pragma once
// The integration channel: a virtio-serial port found by name under /sys/class/virtio-ports,
// carrying one JSON object per line in both directions.
//
// Linux's virtio_console tells the guest whether the host end is open: while it is not, poll()
// reports POLLHUP (always, whatever was asked), read() returns 0 and write() would block. So the
// channel keeps a `host_connected` flag: while it is false the fd stays out of the main poll set
// (else poll would spin on POLLHUP) and `probe()` re-checks it with a zero-timeout poll on a timer.
// Lines sent while the host is away are dropped and counted, never queued for later: a stale
// heartbeat is worse than a missing one. Incoming lines longer than kMaxLineBytes are dropped
// whole (up to the next newline) and counted.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fabriclab::guest {

class Channel {
 public:
  static constexpr std::size_t kMaxLineBytes = 64 * 1024;
  static constexpr std::size_t kMaxPendingOutput = 256 * 1024;

  explicit Channel(std::string port_name) : port_name_(std::move(port_name)) {}
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel();

  // Looks the port up in sysfs and opens its device. True once open (cheap when already open).
  bool try_open();
  bool is_open() const { return fd_ >= 0; }
  bool host_connected() const { return fd_ >= 0 && host_connected_; }
  int fd() const { return fd_; }
  const std::string& device() const { return device_; }

  // Zero-timeout check of the host side; reads pending input into `lines`. Returns true when the
  // host went from disconnected to connected.
  bool probe(std::vector<std::string>& lines);

  // The events to poll for while the host is connected.
  short poll_events() const;
  // Handles poll results for fd(); appends complete incoming lines to `lines`.
  void on_ready(short revents, std::vector<std::string>& lines);

  // Queues `line` (without newline) and tries to write it now. False when dropped (no host,
  // output backlog full, or a write error).
  bool send(std::string_view line);
  // Blocks up to `timeout_ms` until everything queued is written (used at power-off).
  bool flush(int timeout_ms);

  std::uint64_t dropped_in() const { return dropped_in_; }
  std::uint64_t dropped_out() const { return dropped_out_; }
  void count_dropped_in() { ++dropped_in_; }

 private:
  void read_available(std::vector<std::string>& lines);
  void consume(const char* data, std::size_t size, std::vector<std::string>& lines);
  void write_pending();
  void set_connected(bool connected);

  std::string port_name_;
  std::string device_;
  int fd_ = -1;
  bool host_connected_ = false;
  bool discarding_line_ = false;  // inside an oversized line: skip to the next newline
  std::string in_buffer_;
  std::string out_buffer_;
  std::uint64_t dropped_in_ = 0;
  std::uint64_t dropped_out_ = 0;
};

}  // namespace fabriclab::guest
