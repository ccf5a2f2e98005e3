#pragma once
// The host's persisted state: what survives an agent restart (SIGKILL included) and an emulated
// host reboot. Written atomically (temp file, fsync, rename, fsync of the directory) after every
// step, so a restarted agent knows the step it was in and which guests were running before it.

#include <boost/json/fwd.hpp>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fabriclab/common/result.hpp"
#include "fabriclab/hypervisor/domain_spec.hpp"

namespace fabriclab::agent {

// docs/state-machines.md: Ready -> Updating{steps} -> Ready; Unhealthy (a guest not back);
// Offline (the hypervisor cannot be reached).
enum class HostState { ready, updating, unhealthy, offline };
enum class UpdateStep {
  none,
  notifying,
  stopping_guests,
  swapping_image,
  rebooting,
  starting_guests,
  verifying
};
enum class OperationKind { host_os, guest_os, freeze };

std::string_view to_string(HostState s);
std::string_view to_string(UpdateStep s);
std::string_view to_string(OperationKind k);
Result<OperationKind> parse_operation_kind(std::string_view s);

// Proof that a guest's data survived (docs/report.md): a command run through the guest agent
// (guest-exec) before the notice and after the restart; `rule` compares the two outputs:
// "equal" (byte for byte) or "not_less" (both start with an integer, after >= before).
struct DataCheck {
  std::vector<std::string> command;  // 1..16 arguments of 1..256 bytes; command[0] absolute
  std::string rule = "not_less";

  bool operator==(const DataCheck&) const = default;
};
boost::json::object to_json(const DataCheck& c);
// {"command": [...], "rule"?}; errors name `field` ("data_check.command[0] must be an absolute
// path").
Result<DataCheck> data_check_from_json(const boost::json::value& v, const std::string& field);

// The service's app probe (its load-balancer probe), which the agent also runs against a guest
// that brings its own image before it calls the guest healthy: GET http://ADDRESS:port/path.
struct AppProbe {
  int port = 0;  // 0: none
  std::string path = "/health";

  bool operator==(const AppProbe&) const = default;
};
// {"port": 1..65535, "path": "/..." (<= 256)}; errors name `field`.
Result<AppProbe> app_probe_from_json(const boost::json::value& v, const std::string& field);

// An instance this host owns. `want_running` is what the fabric asked for; the agent restores it.
struct InstanceRecord {
  std::string name;
  hypervisor::InstanceMetadata meta;  // service, index, ud, fd, image (guest image version)
  uint32_t memory_mib = 128;
  bool want_running = true;
  std::string mode = "normal";  // guest program mode (tests: ignore-power)
  // The guest network (docs/clients.md): address and MAC from the host's guest subnet, allocated
  // at creation and kept for the instance's life; "" without a guest subnet.
  std::string address;
  std::string mac;
  std::string vm_id;     // a GUID, IMDS compute.vmId; made at creation
  bool drain = true;     // the built-in guest drains (leaves the load balancer) before it approves
  int64_t drain_ms = 0;  // how long it drains; 0: the agent's default
  std::optional<DataCheck> data_check;
  AppProbe probe;
  // A guest that brings its own OS disk runs on a qcow2 overlay of its image (instance_files.hpp):
  // the current overlay's path and its generation (a reimage makes the next); "" / 0 for the
  // built-in guest.
  std::string os_disk;
  int os_gen = 0;
};

struct OperationRequest {
  OperationKind kind = OperationKind::host_os;
  std::string target;              // host image version (host-os) or guest image version (guest-os)
  bool memory_preserving = false;  // host-os: managed save instead of shutdown
  int64_t notice_ms = 5000;        // scheduled event notice; an ack starts earlier
  int64_t freeze_ms = 2000;        // freeze: how long guests stay suspended
};

// An operation in flight, persisted at every step.
struct OperationRecord {
  std::string id;
  OperationRequest request;
  UpdateStep step = UpdateStep::notifying;
  std::vector<std::string> running_before;  // guests running when it began
  std::vector<std::string> stopped;         // guests this operation stopped (or saved)
  std::string previous_host_image;
  std::map<std::string, std::string> previous_guest_image;  // guest-os: for rollback
  std::map<std::string, std::string> previous_os_disk;      // guest-os: the overlay to go back to
  std::string started_at;                                   // RFC 3339
  std::string event_id;  // the operation's scheduled event (a GUID), the same after a restart
};

struct PersistedState {
  std::string host_id;
  HostState state = HostState::ready;
  std::string host_image;  // active host image version ("" before the first activation)
  std::vector<InstanceRecord> instances;
  std::optional<OperationRecord> operation;
  uint64_t next_job = 1;
  // The scheduled-events document's DocumentIncarnation: 1 for a new host, +1 at every change of
  // the host's event set, persisted so that it never goes back after a restart.
  uint64_t imds_incarnation = 1;
};

boost::json::object to_json(const OperationRequest& r);
Result<OperationRequest> operation_request_from_json(const boost::json::object& o);

// {service, index, ud, fd, image} as the API and the state file write them; errors name the field.
Result<hypervisor::InstanceMetadata> metadata_from_json(const boost::json::object& o);
// {name, service, index, ud, fd, image}: an instance's name and metadata as the state file and the
// instance.created event begin it (metadata_from_json reads them back).
boost::json::object identity_json(const std::string& name, const hypervisor::InstanceMetadata& m);

// Replaces `path` with `data` atomically: temp file, fsync, rename, fsync of the directory.
Status write_file_atomically(const std::string& path, const std::string& data);

Status save_state(const std::string& path, const PersistedState& state);
// not_found when there is no state file yet (a new host).
Result<PersistedState> load_state(const std::string& path);

}  // namespace fabriclab::agent
