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
// The app clients see. With `fabriclab.ip=A.B.C.D/NN fabriclab.gw=G` on the kernel command line
// (the agent sets them from its lease table; docs/clients.md is the contract) the guest is also
// what a load balancer fronts: it configures eth0 itself (network.*: ioctls, retried from the
// loop until virtio_net has probed the NIC), serves HTTP on port 80 (http_server.*: `/health`
// for the balancer's probe, `/` with instance, image, boot id and durable counter for clients)
// and talks to the Instance Metadata Service like an Azure app (imds_client.*): it learns its
// name from compute metadata (the channel's `instance` message, service-index, is the fallback),
// then polls Scheduled Events once a second. drain.* decides: a Scheduled event that names this
// VM turns /health to 503 at once, and after drain_ms (long enough for the balancer to mark it
// down and finish in-flight requests) the guest approves with StartRequests; it serves again
// once the event has left the document. With `fabriclab.drain=0` it ignores events and the host
// goes ahead at NotBefore. IMDS is then the one approval path: channel scheduled_events are
// logged, not acked; without a network everything stays on the channel as before. HTTP and IMDS
// are non-blocking state machines in the same poll loop with bounded buffers and deadlines, so a
// slow client or a silent IMDS can delay nothing else (heartbeats, power button). In fail-app
// mode the server still runs and answers 503 `app failed` (the balancer must see the bad patch).
//
// PID 1 rules: never exit (panic=-1 would reboot the VM in a loop), never block forever on a
// device that may not come, and treat every byte from the host (channel or IMDS) and from
// clients as hostile.

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
#include <utility>
#include <vector>

#include "boot_env.hpp"
#include "channel.hpp"
#include "data_disk.hpp"
#include "drain.hpp"
#include "http_server.hpp"
#include "imds_client.hpp"
#include "network.hpp"
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
constexpr std::uint16_t kHttpPort = 80;
constexpr std::uint32_t kImdsAddress = 0xa9fea9fe;  // 169.254.169.254
constexpr std::uint16_t kImdsPort = 80;
constexpr const char* kImdsComputeTarget = "/metadata/instance/compute?api-version=2021-02-01";
constexpr const char* kImdsEventsTarget = "/metadata/scheduledevents?api-version=2020-07-01";
constexpr std::int64_t kNetFastMs = 50;
constexpr std::int64_t kNetSlowMs = 1000;
constexpr std::int64_t kHttpRetryMs = 1000;
constexpr std::int64_t kImdsPollMs = 1000;
// With a fallback name from the channel, a silent compute endpoint is retried this often while
// scheduled events are polled under the fallback name.
constexpr std::int64_t kComputeRetryWithFallbackMs = 10'000;
constexpr std::uint64_t kImdsErrorLogEvery = 30;

class GuestApp {
 public:
  GuestApp(GuestConfig config, std::string boot_id)
      : config_(std::move(config)),
        boot_id_(std::move(boot_id)),
        channel_(kPortName),
        http_([this](const HttpRequest& request) { return on_http_request(request); }),
        drain_(config_.drain, config_.drain_ms) {
    if (config_.net) {
      net_.emplace(*config_.net);
      imds_.emplace(kImdsAddress, kImdsPort);
    }
  }

  [[noreturn]] void run() {
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
    if (net_) network_timers(now);
  }

  std::int64_t next_deadline() const {
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

  // --- network, HTTP and IMDS (only with fabriclab.ip) --------------------------------------

  void network_timers(std::int64_t now) {
    if (!http_.listening() && now >= next_http_start_ms_) {
      // INADDR_ANY: listening needs no address yet, so the first probe after eth0 is up works.
      if (!http_.start(kHttpPort)) next_http_start_ms_ = now + kHttpRetryMs;
    }
    http_.expire(now);
    if (!net_->up()) {
      if (now >= next_net_ms_) {
        if (net_->step(now)) {
          next_imds_poll_ms_ = now;
        } else {
          next_net_ms_ = now + (now - start_ms_ < kFastScanWindowMs ? kNetFastMs : kNetSlowMs);
        }
      }
      if (!net_->up()) return;
    }
    imds_->expire(now);
    if (auto result = imds_->take_result()) on_imds_result(std::move(*result), now);
    if (imds_->busy()) return;
    if (auto event_id = drain_.take_due_approval(now)) {
      log("imds: approving %s: POST StartRequests", event_id->c_str());
      imds_request_ = ImdsRequest::approve;
      approving_id_ = *event_id;
      imds_->start("POST", kImdsEventsTarget, start_requests_body(*event_id), now);
      return;
    }
    if (now < next_imds_poll_ms_) return;
    next_imds_poll_ms_ = now + kImdsPollMs;
    if (imds_name_.empty() && (fallback_name_.empty() || now >= next_compute_ms_)) {
      imds_request_ = ImdsRequest::compute;
      imds_->start("GET", kImdsComputeTarget, {}, now);
    } else {
      imds_request_ = ImdsRequest::events;
      imds_->start("GET", kImdsEventsTarget, {}, now);
    }
  }

  const std::string& vm_name() const { return imds_name_.empty() ? fallback_name_ : imds_name_; }

  // IMDS trouble is logged when it starts, when it changes, and every kImdsErrorLogEvery-th
  // time, so a dead IMDS does not drown the console at one line a second. Compute metadata and
  // scheduled events keep separate streaks: with a fallback name the two alternate, and one
  // failing endpoint must not make the other look like it keeps recovering.
  struct Trouble {
    std::uint64_t streak = 0;
    std::string last;
  };

  static void imds_trouble(Trouble& trouble, const char* what, const std::string& detail) {
    ++trouble.streak;
    if (trouble.streak == 1 || detail != trouble.last || trouble.streak % kImdsErrorLogEvery == 0) {
      log("imds: %s: %s (%llu failures in a row)", what, detail.c_str(),
          static_cast<unsigned long long>(trouble.streak));
    }
    trouble.last = detail;
  }

  static void imds_fine(Trouble& trouble, const char* what) {
    if (trouble.streak > 0) {
      log("imds: %s answering again after %llu failures", what,
          static_cast<unsigned long long>(trouble.streak));
    }
    trouble = Trouble{};
  }

  static std::string status_detail(const ImdsResult& result) {
    if (!result.ok) return result.error;
    std::string body = result.body.substr(0, 160);
    std::replace_if(
        body.begin(), body.end(), [](char c) { return c < 0x20 || c >= 0x7f; }, '?');
    return "HTTP " + std::to_string(result.status) + " " + body;
  }

  void on_imds_result(ImdsResult result, std::int64_t now) {
    const ImdsRequest request = std::exchange(imds_request_, ImdsRequest::none);
    switch (request) {
      case ImdsRequest::none:
        return;
      case ImdsRequest::compute: {
        if (!result.ok || result.status != 200) {
          imds_trouble(compute_trouble_, "compute metadata", status_detail(result));
          if (!fallback_name_.empty()) next_compute_ms_ = now + kComputeRetryWithFallbackMs;
          return;
        }
        std::string error;
        if (auto name = parse_imds_compute_name(result.body, error)) {
          imds_fine(compute_trouble_, "compute metadata");
          imds_name_ = *name;
          log("imds: this VM is '%s' (compute metadata)%s%s", imds_name_.c_str(),
              fallback_name_.empty() || fallback_name_ == imds_name_ ? "" : "; channel said ",
              fallback_name_ == imds_name_ ? "" : fallback_name_.c_str());
          next_imds_poll_ms_ = now;  // first scheduled-events poll right away
        } else {
          imds_trouble(compute_trouble_, "compute metadata ignored", error);
          if (!fallback_name_.empty()) next_compute_ms_ = now + kComputeRetryWithFallbackMs;
        }
        return;
      }
      case ImdsRequest::events: {
        if (!result.ok || result.status != 200) {
          imds_trouble(events_trouble_, "scheduled events", status_detail(result));
          return;
        }
        std::string error;
        auto doc = parse_imds_scheduled_events(result.body, error);
        if (!doc) {
          imds_trouble(events_trouble_, "scheduled events document ignored", error);
          return;
        }
        imds_fine(events_trouble_, "scheduled events");
        if (!events_seen_ || doc->incarnation != last_incarnation_) {
          log("imds: scheduled events incarnation %lld, %zu event(s)%s",
              static_cast<long long>(doc->incarnation), doc->events.size(),
              events_seen_ ? "" : " (first poll)");
          events_seen_ = true;
          last_incarnation_ = doc->incarnation;
        }
        drain_.on_document(*doc, vm_name(), now);
        return;
      }
      case ImdsRequest::approve: {
        DrainPolicy::Outcome outcome = DrainPolicy::Outcome::retry;
        if (result.ok && result.status == 200) {
          outcome = DrainPolicy::Outcome::accepted;
        } else if (result.ok && result.status >= 400 && result.status < 500 &&
                   result.status != 403 && result.status != 429) {
          outcome = DrainPolicy::Outcome::refused;
        }
        if (outcome != DrainPolicy::Outcome::accepted) {
          log("imds: approval of %s: %s", approving_id_.c_str(), status_detail(result).c_str());
        }
        drain_.approval_result(approving_id_, outcome, now);
        return;
      }
    }
  }

  HttpResponse on_http_request(const HttpRequest& request) {
    AppView view;
    view.health = config_.mode == Mode::fail_app ? AppView::Health::app_failed
                  : drain_.draining()            ? AppView::Health::draining
                                                 : AppView::Health::serving;
    view.instance = vm_name();
    view.image = config_.image;
    view.boot_id = boot_id_;
    view.counter = disk_.reported_counter();
    HttpResponse response = route(request, view);
    if (!first_request_logged_) {
      first_request_logged_ = true;
      log("http: first request served: %s %s -> %d", request.method.c_str(),
          request.path.substr(0, 64).c_str(), response.status);
    }
    return response;
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
    fallback_name_ = info.service + "-" + std::to_string(info.index);
    channel_.send(instance_ack_line(info));
  }

  bool was_acked(const std::string& id) const {
    return std::find(acked_ids_.begin(), acked_ids_.end(), id) != acked_ids_.end();
  }

  void on_scheduled_events(const ScheduledEventsDoc& doc, const std::string& raw) {
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

  enum class ImdsRequest { none, compute, events, approve };
  std::optional<NetworkBringUp> net_;  // engaged with fabriclab.ip: network, HTTP and IMDS
  HttpServer http_;
  std::optional<ImdsClient> imds_;
  DrainPolicy drain_;
  std::int64_t next_net_ms_ = 0;
  std::int64_t next_http_start_ms_ = 0;
  std::int64_t next_imds_poll_ms_ = 0;
  std::int64_t next_compute_ms_ = 0;
  ImdsRequest imds_request_ = ImdsRequest::none;
  std::string approving_id_;
  std::string imds_name_;      // from IMDS compute metadata
  std::string fallback_name_;  // service-index from the channel's instance message
  Trouble compute_trouble_;
  Trouble events_trouble_;
  bool events_seen_ = false;
  std::int64_t last_incarnation_ = 0;
  bool first_request_logged_ = false;
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
