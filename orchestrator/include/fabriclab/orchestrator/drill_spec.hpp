#pragma once
// The drill spec as it travels: the body of POST /v1/drills, read by the orchestrator
// (drill_spec_from_json, every field checked) and written by its clients and its journal
// (to_json), and the drill's state as the API names it. One wire type, in the pure library, so
// the orchestrator and the CLI cannot disagree on a field (docs/api.md).

#include <string>
#include <string_view>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::orchestrator {

// A drill's state. Created Running or Paused (Planned is never seen through the API); it ends
// Completed, Failed or Aborted. A restarted orchestrator resumes a drill journaled Running or
// Paused (docs/state-machines.md).
enum class DrillState { planned, running, paused, completed, failed, aborted };
std::string_view to_string(DrillState s);  // "Planned", "Running", ... as the API shows them
Result<DrillState> parse_drill_state(std::string_view s, std::string_view field = "state");
constexpr bool is_finished(DrillState s) {
  return s == DrillState::completed || s == DrillState::failed || s == DrillState::aborted;
}
// Running or Paused: a drill that a restarted orchestrator goes on with.
constexpr bool is_resumable(DrillState s) {
  return s == DrillState::running || s == DrillState::paused;
}

// POST /v1/drills: one walk over the cluster.
struct DrillSpec {
  std::string kind = "host-os";    // host-os | guest-os | freeze
  std::string target;              // host image (host-os) or guest image (guest-os); "" for freeze
  int max_parallel_hosts = 0;      // 0: no cap
  double time_scale = 1.0;         // every wait and notice below is multiplied by it (0 < s <= 1)
  double recovery_s = 1800;        // after a batch (Azure gives a rebooted UD 30 minutes)
  double notice_s = 900;           // scheduled-event notice to the guests (Azure: 15 minutes)
  double freeze_s = 5;             // freeze: how long guests stay paused
  double healthy_timeout_s = 600;  // a batch's hosts must be Ready + healthy within this
  bool memory_preserving = false;
  bool start_paused = false;
};
Result<DrillSpec> drill_spec_from_json(const json::object& o);
json::object to_json(const DrillSpec& s);

}  // namespace fabriclab::orchestrator
