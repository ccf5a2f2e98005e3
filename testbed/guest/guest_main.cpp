// fabriclab-guest: PID 1 of every lab VM, the stand-in for "the customer's app plus Azure's
// integration services" inside a role instance.
//
// Why it exists. The drill must prove that guest applications survive a walk: that a VM was
// really shut down and restarted, that the image really changed, and that no acknowledged data
// was lost. Only the guest can testify to that, so the guest keeps a counter on its own data disk
// and reports it, with its image version and a fresh boot id, in a heartbeat over a virtio-serial
// port (our VMBus). The host agent reads those lines; the prober turns them into availability and
// data-loss figures. A value is reported only after pwrite + fdatasync, so "reported" implies
// "durable", and a counter that goes backwards after a reboot is real data loss, not noise.
//
// Shape. One static binary, no libc services beyond system calls, single-threaded: after boot
// (mounts, finit_module of the modules the image builder listed, configuration from
// /etc/fabriclab and /proc/cmdline) everything happens in one poll() loop whose timeout is the
// nearest timer: the heartbeat tick, delayed scheduled-event acks (the "drain" time an Azure app
// takes before answering StartRequests), retries for the data disk (heartbeats wait up to 5 s for
// it, so the first one already carries a durable counter), rescans for input devices and for the
// channel, and re-probes of a channel whose host end is closed. Devices that are late never block
// the loop, so the power button works from the moment its device exists. The power button (ACPI
// KEY_POWER through evdev) triggers the clean shutdown: final record on disk, `final` line,
// sync, power off. The image builder bakes the rest of the behaviour into files: the image
// version (v1, v2 = patched), and a "bad patch" mode (fail-app: the app never starts, so no
// heartbeats) the orchestrator must detect and roll back. `fabriclab.mode=ignore-power` makes a
// guest that ignores ACPI, to exercise the host's shutdown timeout and destroy path.
//
// PID 1 rules: never exit (panic=-1 would reboot the VM in a loop), never block forever on a
// device that may not come, and treat every byte from the host as hostile.

#include <poll.h>
#include <sys/reboot.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "boot_env.hpp"
#include "channel.hpp"
#include "data_disk.hpp"
#include "power_button.hpp"
#include "protocol.hpp"

namespace fabriclab::guest {
namespace {

constexpr const char* kPortName = "org.fabriclab.integration.0";
constexpr int kDiskWaitMs = 5000;
constexpr std::int64_t kDiskRetryMs = 50;
constexpr std::int64_t kFastScanWindowMs = 10'000;  // after start: rescan often
constexpr std::int64_t kChannelFastMs = 100;
constexpr std::int64_t kChannelSlowMs = 1000;
constexpr std::int64_t kChannelProbeMs = 200;
constexpr std::int64_t kInputFastMs = 200;
constexpr std::int64_t kInputSlowMs = 2000;
constexpr std::int64_t kAckRetryMs = 200;
constexpr std::size_t kRememberedAcks = 1024;
constexpr int kFinalFlushMs = 1500;
constexpr std::size_t kLogLineBytes = 900;

class GuestApp {
 public:
  GuestApp(GuestConfig config, std::string boot_id)
      : config_(std::move(config)), boot_id_(std::move(boot_id)), channel_(kPortName) {}

  [[noreturn]] void run() {
    start_ms_ = monotonic_ms();
    if (config_.mode == Mode::fail_app) {
      log("app failed to start (fail-app mode): no heartbeats will be sent");
    }
    next_heartbeat_ms_ = start_ms_;
    next_disk_check_ms_ = start_ms_;
    next_channel_check_ms_ = start_ms_;
    next_input_scan_ms_ = start_ms_;
    for (;;) loop_once();
  }

 private:
  enum class DiskState { waiting, ready, absent };

  bool heartbeats_enabled() const { return config_.mode != Mode::fail_app; }
  // Heartbeats wait for the disk (up to kDiskWaitMs) so the first one carries a durable counter.
  bool heartbeats_running() const {
    return heartbeats_enabled() && disk_state_ != DiskState::waiting;
  }

  // The virtio disk may show up a moment after virtio_blk loads; never block the loop on it.
  void check_disk(std::int64_t now) {
    switch (disk_.try_open(config_.disk)) {
      case DataDisk::OpenResult::opened:
        disk_state_ = DiskState::ready;
        if (!disk_.begin_boot(boot_id_)) log("data disk: could not record the new boot");
        return;
      case DataDisk::OpenResult::unusable:
        disk_state_ = DiskState::absent;
        log("no usable data disk: counter will be -1");
        return;
      case DataDisk::OpenResult::not_yet:
        if (now - start_ms_ >= kDiskWaitMs) {
          disk_state_ = DiskState::absent;
          log("data disk %s did not appear within %d ms: counter will be -1", config_.disk.c_str(),
              kDiskWaitMs);
        } else {
          next_disk_check_ms_ = now + kDiskRetryMs;
        }
        return;
    }
  }

  void loop_once() {
    std::vector<std::string> lines;
    std::int64_t now = monotonic_ms();
    run_timers(now, lines);
    handle_lines(lines);

    std::vector<pollfd> fds;
    const bool poll_channel = channel_.host_connected();
    if (poll_channel) fds.push_back(pollfd{channel_.fd(), channel_.poll_events(), 0});
    buttons_.append_pollfds(fds);
    now = monotonic_ms();
    int timeout = static_cast<int>(std::clamp<std::int64_t>(next_deadline() - now, 0, 1000));
    int rc = ::poll(fds.data(), fds.size(), timeout);
    if (rc < 0) {
      if (errno != EINTR) log("poll failed: %s", std::strerror(errno));
      return;
    }
    bool power_pressed = false;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      if (poll_channel && i == 0) {
        channel_.on_ready(fds[i].revents, lines);
      } else if (buttons_.on_ready(fds[i].fd, fds[i].revents)) {
        power_pressed = true;
      }
    }
    handle_lines(lines);
    if (power_pressed) on_power_button();
  }

  void run_timers(std::int64_t now, std::vector<std::string>& lines) {
    const bool early = now - start_ms_ < kFastScanWindowMs;
    if (disk_state_ == DiskState::waiting && now >= next_disk_check_ms_) check_disk(now);
    if (now >= next_channel_check_ms_) {
      if (!channel_.is_open()) {
        if (channel_.try_open()) {
          check_channel(lines);
        } else if (!channel_missing_logged_ && now - start_ms_ > kDiskWaitMs) {
          log("channel %s not found yet; still looking", kPortName);
          channel_missing_logged_ = true;
        }
      } else if (!channel_.host_connected()) {
        check_channel(lines);
      }
      next_channel_check_ms_ = now + (channel_.is_open() ? kChannelProbeMs
                                      : early            ? kChannelFastMs
                                                         : kChannelSlowMs);
    }
    if (now >= next_input_scan_ms_) {
      const bool had_button = buttons_.has_power_button();
      buttons_.rescan();
      if (!had_button && buttons_.has_power_button()) log("power button ready");
      next_input_scan_ms_ = now + (early ? kInputFastMs : kInputSlowMs);
    }
    if (heartbeats_running() && now >= next_heartbeat_ms_) {
      heartbeat_tick();
      next_heartbeat_ms_ += config_.heartbeat_ms;
      if (next_heartbeat_ms_ <= now) next_heartbeat_ms_ = now + config_.heartbeat_ms;
    }
    fire_due_acks(now);
  }

  std::int64_t next_deadline() const {
    std::int64_t deadline = next_input_scan_ms_;
    if (!channel_.host_connected()) deadline = std::min(deadline, next_channel_check_ms_);
    if (disk_state_ == DiskState::waiting) deadline = std::min(deadline, next_disk_check_ms_);
    if (heartbeats_running()) deadline = std::min(deadline, next_heartbeat_ms_);
    for (const auto& pending : pending_acks_) deadline = std::min(deadline, pending.due_ms);
    return deadline;
  }

  void check_channel(std::vector<std::string>& lines) {
    if (channel_.probe(lines)) on_channel_connected();
  }

  void on_channel_connected() {
    if (config_.mode == Mode::fail_app) {
      const char* message = "app failed to start (fail-app mode)";
      log("channel: reporting error: %s", message);
      channel_.send(error_line(message));
    } else if (seq_ > 0 && last_heartbeat_dropped_) {
      send_heartbeat();  // tell a newly connected host right away, with the current counter
    }
  }

  void heartbeat_tick() {
    if (disk_.is_open() && !disk_.commit_counter(disk_.record().counter + 1)) {
      log("data disk: counter not advanced; reporting the last durable value");
    }
    send_heartbeat();
  }

  void send_heartbeat() {
    ++seq_;
    Heartbeat heartbeat{seq_,          boot_id_,
                        config_.image, disk_.reported_counter(),
                        uptime_ms(),   to_string(config_.mode)};
    last_heartbeat_dropped_ = !channel_.send(heartbeat_line(heartbeat));
    if (!last_heartbeat_dropped_ && !first_heartbeat_logged_) {
      first_heartbeat_logged_ = true;
      log("first heartbeat delivered: seq=%llu counter=%lld", static_cast<unsigned long long>(seq_),
          static_cast<long long>(heartbeat.counter));
    } else if (seq_ % 60 == 0) {
      log("heartbeat seq=%llu counter=%lld instance=%s/%lld (dropped out=%llu in=%llu)",
          static_cast<unsigned long long>(seq_), static_cast<long long>(heartbeat.counter),
          instance_ ? instance_->service.c_str() : "-",
          instance_ ? static_cast<long long>(instance_->index) : -1LL,
          static_cast<unsigned long long>(channel_.dropped_out()),
          static_cast<unsigned long long>(channel_.dropped_in()));
    }
  }

  void handle_lines(std::vector<std::string>& lines) {
    for (const std::string& line : lines) handle_line(line);
    lines.clear();
  }

  void handle_line(const std::string& line) {
    HostMessage message = parse_host_line(line);
    if (auto* instance = std::get_if<InstanceInfo>(&message)) {
      on_instance(*instance);
    } else if (auto* doc = std::get_if<ScheduledEventsDoc>(&message)) {
      on_scheduled_events(*doc, line);
    } else if (auto* bad = std::get_if<BadLine>(&message)) {
      channel_.count_dropped_in();
      log("channel: dropped bad line (%s), %llu dropped so far: %.120s", bad->reason.c_str(),
          static_cast<unsigned long long>(channel_.dropped_in()), line.c_str());
    } else if (auto* fields = std::get_if<BadFields>(&message)) {
      log("channel: rejected: %s", fields->message.c_str());
      channel_.send(error_line(fields->message));
    } else if (auto* other = std::get_if<OtherType>(&message)) {
      log("channel: ignoring message of unknown type '%s'", other->type.c_str());
    }
  }

  void on_instance(const InstanceInfo& info) {
    log("instance: service=%s index=%lld UD=%lld FD=%lld", info.service.c_str(),
        static_cast<long long>(info.index), static_cast<long long>(info.update_domain),
        static_cast<long long>(info.fault_domain));
    instance_ = info;
    channel_.send(instance_ack_line(info));
  }

  bool was_acked(const std::string& id) const {
    return std::find(acked_ids_.begin(), acked_ids_.end(), id) != acked_ids_.end();
  }

  void on_scheduled_events(const ScheduledEventsDoc& doc, const std::string& raw) {
    log("scheduled_events: %.*s%s", static_cast<int>(std::min(raw.size(), kLogLineBytes)),
        raw.c_str(), raw.size() > kLogLineBytes ? "..." : "");
    // The document is the whole current set: a pending ack whose event is gone or no longer
    // Scheduled (Started by the platform, or cancelled) is not sent.
    std::erase_if(pending_acks_, [&](const PendingAck& pending) {
      bool still = std::any_of(doc.events.begin(), doc.events.end(), [&](const auto& e) {
        return e.event_id == pending.event_id && e.event_status == "Scheduled";
      });
      if (!still)
        log("scheduled_events: %s no longer Scheduled, ack cancelled", pending.event_id.c_str());
      return !still;
    });
    const std::int64_t now = monotonic_ms();
    for (const auto& event : doc.events) {
      if (event.event_status != "Scheduled" || was_acked(event.event_id)) continue;
      bool pending = std::any_of(pending_acks_.begin(), pending_acks_.end(),
                                 [&](const auto& p) { return p.event_id == event.event_id; });
      if (pending) continue;
      log("scheduled_events: %s (%s) will be acked in %lld ms", event.event_id.c_str(),
          event.event_type.c_str(), static_cast<long long>(config_.drain_ms));
      pending_acks_.push_back(PendingAck{event.event_id, now + config_.drain_ms});
    }
  }

  void fire_due_acks(std::int64_t now) {
    for (auto it = pending_acks_.begin(); it != pending_acks_.end();) {
      if (it->due_ms > now) {
        ++it;
        continue;
      }
      if (!channel_.send(ack_line(it->event_id))) {
        it->due_ms = now + kAckRetryMs;  // no host right now: retry until it is back
        ++it;
        continue;
      }
      log("scheduled_events: acked %s", it->event_id.c_str());
      acked_ids_.push_back(it->event_id);
      if (acked_ids_.size() > kRememberedAcks) acked_ids_.pop_front();
      it = pending_acks_.erase(it);
    }
  }

  void on_power_button() {
    if (config_.mode == Mode::ignore_power) {
      log("power button ignored (ignore-power mode)");
      return;
    }
    power_off("power button");
  }

  [[noreturn]] void power_off(const char* reason) {
    log("clean shutdown (%s)", reason);
    if (disk_.is_open() && !disk_.mark_clean()) log("data disk: clean flag not written");
    std::vector<std::string> ignored;
    if (!channel_.host_connected()) check_channel(ignored);
    const std::int64_t counter = disk_.reported_counter();
    channel_.send(final_line(boot_id_, counter, true));
    bool delivered = channel_.flush(kFinalFlushMs);
    log("final record counter=%lld; final line %s", static_cast<long long>(counter),
        delivered ? "delivered" : "NOT delivered (no host)");
    ::sync();
    log("powering off");
    ::reboot(RB_POWER_OFF);
    halt_forever(std::strerror(errno));
  }

  struct PendingAck {
    std::string event_id;
    std::int64_t due_ms = 0;
  };

  GuestConfig config_;
  std::string boot_id_;
  DataDisk disk_;
  Channel channel_;
  PowerButtonWatcher buttons_;
  std::int64_t start_ms_ = 0;
  DiskState disk_state_ = DiskState::waiting;
  std::int64_t next_heartbeat_ms_ = 0;
  std::int64_t next_disk_check_ms_ = 0;
  std::int64_t next_channel_check_ms_ = 0;
  std::int64_t next_input_scan_ms_ = 0;
  std::uint64_t seq_ = 0;
  bool last_heartbeat_dropped_ = false;
  bool first_heartbeat_logged_ = false;
  bool channel_missing_logged_ = false;
  std::optional<InstanceInfo> instance_;
  std::vector<PendingAck> pending_acks_;
  std::deque<std::string> acked_ids_;
};

[[noreturn]] void guest_main() {
  mount_basics();
  log("fabriclab guest starting (pid 1)");
  load_modules(std::string(kConfigDir) + "/modules");
  GuestConfig config = load_config();
  std::string boot_id = make_boot_id();
  log("image=%s mode=%s hb_ms=%lld drain_ms=%lld disk=%s boot_id=%s%s%s", config.image.c_str(),
      std::string(to_string(config.mode)).c_str(), static_cast<long long>(config.heartbeat_ms),
      static_cast<long long>(config.drain_ms), config.disk.c_str(), boot_id.c_str(),
      config.patch.empty() ? "" : " patch=", config.patch.c_str());
  GuestApp app(std::move(config), std::move(boot_id));
  app.run();
}

}  // namespace
}  // namespace fabriclab::guest

int main() {
  if (::getpid() != 1) {
    // Guard: as root outside a VM this program would mount over /dev and power the machine off.
    static const char kMessage[] =
        "fabriclab-guest: must run as PID 1 (/init) inside a fabriclab guest VM\n";
    (void)!::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
    return 2;
  }
  std::set_terminate([] { fabriclab::guest::halt_forever("unhandled exception"); });
  try {
    fabriclab::guest::guest_main();
  } catch (const std::exception& e) {
    fabriclab::guest::halt_forever(e.what());
  } catch (...) {
    fabriclab::guest::halt_forever("unknown exception");
  }
}
