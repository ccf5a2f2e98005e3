#pragma once
// The host's persisted state: what survives an agent restart (SIGKILL included) and an emulated
// host reboot. Written atomically (temp file, fsync, rename, fsync of the directory) after every
// step, so a restarted agent knows the step it was in and which guests were running before it.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <boost/json/fwd.hpp>

#include "fabriclab/common/result.hpp"
#include "fabriclab/hypervisor/domain_spec.hpp"

namespace fabriclab::agent {

// DESIGN.md: Ready -> Updating{steps} -> Ready; Unhealthy (missed heartbeats or a failed step);
// Offline (the hypervisor cannot be reached).
enum class HostState { ready, updating, unhealthy, offline };
enum class UpdateStep { none, notifying, stopping_guests, swapping_image, rebooting, starting_guests,
                        verifying };
enum class OperationKind { host_os, guest_os, freeze };

std::string_view to_string(HostState s);
std::string_view to_string(UpdateStep s);
std::string_view to_string(OperationKind k);
Result<OperationKind> parse_operation_kind(std::string_view s);

// An instance this host owns. `want_running` is what the fabric asked for; the agent restores it.
struct InstanceRecord {
  std::string name;
  hypervisor::InstanceMetadata meta;  // service, index, ud, fd, image (guest image version)
  uint32_t memory_mib = 128;
  bool want_running = true;
  std::string mode = "normal";  // guest program mode (tests: ignore-power)
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
  std::vector<std::string> running_before;   // guests running when it began
  std::vector<std::string> stopped;          // guests this operation stopped (or saved)
  std::string previous_host_image;
  std::map<std::string, std::string> previous_guest_image;  // guest-os: for rollback
  std::string started_at;                    // RFC 3339
};

struct PersistedState {
  std::string host_id;
  HostState state = HostState::ready;
  std::string host_image;  // active host image version ("" before the first activation)
  std::vector<InstanceRecord> instances;
  std::optional<OperationRecord> operation;
  uint64_t next_job = 1;
};

boost::json::object to_json(const OperationRequest& r);
Result<OperationRequest> operation_request_from_json(const boost::json::object& o);

// {service, index, ud, fd, image} as the API and the state file write them; errors name the field.
Result<hypervisor::InstanceMetadata> metadata_from_json(const boost::json::object& o);

Status save_state(const std::string& path, const PersistedState& state);
// not_found when there is no state file yet (a new host).
Result<PersistedState> load_state(const std::string& path);

}  // namespace fabriclab::agent
