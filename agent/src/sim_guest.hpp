#pragma once
// A simulated guest program for libvirt's test driver, which boots nothing. It binds the same
// channel socket QEMU would and speaks the same line protocol as testbed/guest through the same
// library (fabriclab/guestproto): heartbeats with a durable counter, instance_ack, an error line
// for a host line with bad fields, scheduled-event acks after a drain delay, a final record on a
// clean power-off. So the agent's code path is the same with or without real VMs. Guest image
// versions ending in "-broken" behave like the guest program's fail-app mode.
//
// Scheduled events: a Scheduled event is acked `drain` after it arrived (while heartbeats go on;
// an event that is gone or no longer Scheduled by then is not acked), once per EventId; with
// `ack` false (the instance's drain is off) it is never acked and the host goes at NotBefore.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace fabriclab::agent {

class SimGuest {
 public:
  // `counter_file` keeps the counter across boots (the simulated data disk).
  SimGuest(std::string socket_path, std::string counter_file, std::chrono::milliseconds period,
           std::chrono::milliseconds drain, bool ack = true);
  ~SimGuest();
  SimGuest(const SimGuest&) = delete;
  SimGuest& operator=(const SimGuest&) = delete;

  // A fresh boot on `image`: new boot_id, seq from 1.
  void boot(const std::string& image, const std::string& mode);
  // Power off (clean: a final record first).
  void power_off(bool clean);
  // Suspend / resume (freeze, memory-preserving save/restore): boot_id and counter continue.
  void pause();
  void resume();
  bool running() const { return running_; }

 private:
  void run();
  void send(const std::string& line);
  void handle(const std::string& line);

  std::string socket_path_, counter_file_;
  std::chrono::milliseconds period_, drain_;
  bool ack_ = true;
  // Acks not yet sent (EventId, due) and EventIds already acked; reader thread only.
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> pending_acks_;
  std::vector<std::string> acked_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
  std::atomic<bool> running_{false};
  bool paused_ = false;
  bool stop_ = false;
  bool clean_ = false;
  int listen_fd_ = -1;
  int client_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: stop / pause / resume wake the thread's poll()
  std::string image_, mode_, boot_id_;
  uint64_t seq_ = 0;
  int64_t counter_ = 0;
  std::chrono::steady_clock::time_point booted_at_;
};

}  // namespace fabriclab::agent
