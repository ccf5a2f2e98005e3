// fabriclab-guest, internal: GuestApp, the guest program's one poll() loop and everything it
// drives (the design is at the top of guest_main.cpp). run() never returns: the guest powers off
// through power_off() or stays in the loop. Single-threaded: nothing here is locked.
//
// guest_app.cpp: the loop, timers, data disk, channel, heartbeats, channel scheduled events and
// the power button; guest_app_net.cpp: network bring-up, HTTP and IMDS (only with fabriclab.ip).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
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

  [[noreturn]] void run();

 private:
  enum class DiskState { waiting, ready, absent };

  bool heartbeats_enabled() const { return config_.mode != Mode::fail_app; }
  // Heartbeats wait for the disk (up to kDiskWaitMs) so the first one carries a durable counter.
  bool heartbeats_running() const;

  // The virtio disk may show up a moment after virtio_blk loads; never block the loop on it.
  void check_disk(std::int64_t now);

  void loop_once();

  void run_timers(std::int64_t now, std::vector<std::string>& lines);

  std::int64_t next_deadline() const;

  // --- network, HTTP and IMDS (only with fabriclab.ip) --------------------------------------

  void network_timers(std::int64_t now);

  const std::string& vm_name() const { return imds_name_.empty() ? fallback_name_ : imds_name_; }

  // IMDS trouble is logged when it starts, when it changes, and every kImdsErrorLogEvery-th
  // time, so a dead IMDS does not drown the console at one line a second. Compute metadata and
  // scheduled events keep separate streaks: with a fallback name the two alternate, and one
  // failing endpoint must not make the other look like it keeps recovering.
  struct Trouble {
    std::uint64_t streak = 0;
    std::string last;
  };

  static void imds_trouble(Trouble& trouble, const char* what, const std::string& detail);

  static void imds_fine(Trouble& trouble, const char* what);

  static std::string status_detail(const ImdsResult& result);

  void on_imds_result(ImdsResult result, std::int64_t now);

  HttpResponse on_http_request(const HttpRequest& request);

  void check_channel(std::vector<std::string>& lines);

  void on_channel_connected();

  void heartbeat_tick();

  void send_heartbeat();

  void handle_lines(std::vector<std::string>& lines);

  void handle_line(const std::string& line);

  void on_instance(const InstanceInfo& info);

  bool was_acked(const std::string& id) const;

  void on_scheduled_events(const ScheduledEventsDoc& doc, const std::string& raw);

  void fire_due_acks(std::int64_t now);

  void on_power_button();

  [[noreturn]] void power_off(const char* reason);

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
}  // namespace fabriclab::guest
