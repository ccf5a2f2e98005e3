// GuestApp (guest_app.hpp): the loop, its timers, the data disk, the channel and heartbeats.

#include "guest_app.hpp"

#include <poll.h>
#include <sys/reboot.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace fabriclab::guest {

[[noreturn]] void GuestApp::run() {
  start_ms_ = monotonic_ms();
  if (config_.mode == Mode::fail_app) {
    log("app failed to start (fail-app mode): no heartbeats will be sent");
  }
  next_heartbeat_ms_ = start_ms_;
  next_disk_check_ms_ = start_ms_;
  next_channel_check_ms_ = start_ms_;
  next_input_scan_ms_ = start_ms_;
  if (net_) {
    log("network: %s/%d gw %s on %s; drain=%d drain_ms=%lld; scheduled events through IMDS "
        "(no channel acks)",
        ipv4_to_string(config_.net->address).c_str(), config_.net->prefix,
        ipv4_to_string(config_.net->gateway).c_str(), config_.net->interface.c_str(),
        config_.drain ? 1 : 0, static_cast<long long>(config_.drain_ms));
    next_net_ms_ = start_ms_;
    next_http_start_ms_ = start_ms_;
  } else {
    log("network: off (no usable fabriclab.ip/gw); scheduled events are acked over the channel");
  }
  for (;;) loop_once();
}

bool GuestApp::heartbeats_running() const {
  return heartbeats_enabled() && disk_state_ != DiskState::waiting;
}

void GuestApp::check_disk(std::int64_t now) {
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

void GuestApp::loop_once() {
  std::vector<std::string> lines;
  std::int64_t now = monotonic_ms();
  run_timers(now, lines);
  handle_lines(lines);

  std::vector<pollfd> fds;
  const bool poll_channel = channel_.host_connected();
  if (poll_channel) fds.push_back(pollfd{channel_.fd(), channel_.poll_events(), 0});
  buttons_.append_pollfds(fds);
  const std::size_t http_begin = fds.size();
  http_.append_pollfds(fds);
  const std::size_t http_end = fds.size();
  if (imds_) imds_->append_pollfds(fds);
  const std::size_t imds_index = http_end < fds.size() ? http_end : SIZE_MAX;
  now = monotonic_ms();
  int timeout = static_cast<int>(std::clamp<std::int64_t>(next_deadline() - now, 0, 1000));
  int rc = ::poll(fds.data(), fds.size(), timeout);
  if (rc < 0) {
    if (errno != EINTR) log("poll failed: %s", std::strerror(errno));
    return;
  }
  now = monotonic_ms();
  if (http_end > http_begin) http_.on_ready(fds.data() + http_begin, http_end - http_begin, now);
  if (imds_index != SIZE_MAX && fds[imds_index].revents != 0) {
    imds_->on_ready(fds[imds_index].revents, now);
  }
  bool power_pressed = false;
  for (std::size_t i = 0; i < http_begin; ++i) {
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

void GuestApp::run_timers(std::int64_t now, std::vector<std::string>& lines) {
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
  if (net_) network_timers(now);
}

std::int64_t GuestApp::next_deadline() const {
  std::int64_t deadline = next_input_scan_ms_;
  if (!channel_.host_connected()) deadline = std::min(deadline, next_channel_check_ms_);
  if (disk_state_ == DiskState::waiting) deadline = std::min(deadline, next_disk_check_ms_);
  if (heartbeats_running()) deadline = std::min(deadline, next_heartbeat_ms_);
  for (const auto& pending : pending_acks_) deadline = std::min(deadline, pending.due_ms);
  if (net_) {
    if (!net_->up()) deadline = std::min(deadline, next_net_ms_);
    if (!http_.listening()) deadline = std::min(deadline, next_http_start_ms_);
    deadline = std::min(deadline, http_.next_deadline());
    if (net_->up()) {
      deadline = std::min(deadline, imds_->next_deadline());
      if (!imds_->busy()) {
        deadline = std::min({deadline, next_imds_poll_ms_, drain_.next_deadline()});
      }
    }
  }
  return deadline;
}

void GuestApp::check_channel(std::vector<std::string>& lines) {
  if (channel_.probe(lines)) on_channel_connected();
}

void GuestApp::on_channel_connected() {
  if (config_.mode == Mode::fail_app) {
    const char* message = "app failed to start (fail-app mode)";
    log("channel: reporting error: %s", message);
    channel_.send(error_line(message));
  } else if (seq_ > 0 && last_heartbeat_dropped_) {
    send_heartbeat();  // tell a newly connected host right away, with the current counter
  }
}

void GuestApp::heartbeat_tick() {
  if (disk_.is_open() && !disk_.commit_counter(disk_.record().counter + 1)) {
    log("data disk: counter not advanced; reporting the last durable value");
  }
  send_heartbeat();
}

void GuestApp::send_heartbeat() {
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

void GuestApp::handle_lines(std::vector<std::string>& lines) {
  for (const std::string& line : lines) handle_line(line);
  lines.clear();
}

void GuestApp::handle_line(const std::string& line) {
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

void GuestApp::on_instance(const InstanceInfo& info) {
  log("instance: service=%s index=%lld UD=%lld FD=%lld", info.service.c_str(),
      static_cast<long long>(info.index), static_cast<long long>(info.update_domain),
      static_cast<long long>(info.fault_domain));
  instance_ = info;
  fallback_name_ = info.service + "-" + std::to_string(info.index);
  channel_.send(instance_ack_line(info));
}

bool GuestApp::was_acked(const std::string& id) const {
  return std::find(acked_ids_.begin(), acked_ids_.end(), id) != acked_ids_.end();
}

void GuestApp::on_scheduled_events(const ScheduledEventsDoc& doc, const std::string& raw) {
  log("scheduled_events: %.*s%s", static_cast<int>(std::min(raw.size(), kLogLineBytes)),
      raw.c_str(), raw.size() > kLogLineBytes ? "..." : "");
  if (net_) {
    log("scheduled_events: not acked over the channel (this guest approves through IMDS)");
    return;
  }
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

void GuestApp::fire_due_acks(std::int64_t now) {
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

void GuestApp::on_power_button() {
  if (config_.mode == Mode::ignore_power) {
    log("power button ignored (ignore-power mode)");
    return;
  }
  power_off("power button");
}

[[noreturn]] void GuestApp::power_off(const char* reason) {
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

}  // namespace fabriclab::guest
