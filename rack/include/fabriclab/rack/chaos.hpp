#pragma once
// A chaos campaign (`fabriclab chaos`, docs/faults.md): N drills, each on a fresh local rack with
// faults drawn at random from the schedule space (fault_spec.hpp), each judged by checkers that
// do not trust the orchestrator's conclusions (checkers.hpp). A drill's faults depend only on the
// campaign's seed and the drill's number, so `--seed S --from K --drills 1` replays drill K.
//
// Evidence per drill: the orchestrator's feed (FeedRecorder), every agent's records sampled every
// 250 ms through the host's own network namespace (so a partitioned host is still seen), the QEMU
// processes of the rack (real VMs), the agents' job timelines and data counters before and after.
// A drill is a violation when any check fails; a drill that fails (the walk halted on a fault) is
// not one, as long as its report says so and agrees with the evidence.

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/checkers.hpp"
#include "fabriclab/rack/faults.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::rack {

inline constexpr int kMaxChaosDrills = 10000;

struct ChaosOptions {
  int drills = 10;  // how many (1..kMaxChaosDrills)
  uint64_t seed = 1;
  int first = 1;       // the first drill's number (a replay of drill K: first K, drills 1)
  DrillFileSpec base;  // the rack, services, update and policies (its faults are replaced)
  std::vector<std::string> kinds;  // the kinds to draw from (empty: all of fault_kinds())
  LabOptions lab;                  // each drill's rack: lab.dir + "/dK"
  std::chrono::milliseconds drill_deadline{std::chrono::minutes(3)};
  // Caps the drawn outages of kill-agent (restarted) and partition-host, in real seconds (0: the
  // draw's own range, 1..6 s and 2..8 s). Below the orchestrator's Unhealthy threshold (3 s on a
  // lab rack) a host comes back before healing starts. Two outages of a drill then hit two hosts.
  double max_outage_s = 0;
  std::ostream* out = nullptr;  // progress and the per-drill blocks
};

// The default base of a campaign: 4 hosts in 2 fault domains (capacity 3), hello (1), web (2, 2
// UDs), worker (3, 3 UDs), a host-os update, time compressed 1000x with short windows.
DrillFileSpec chaos_base_spec(const std::string& hypervisor);

// Drill `drill`'s faults (1 or 2): the first kind is kinds[(drill - 1) % kinds.size()] (so every
// kind comes up in a campaign of kinds.size() drills), at a moment every walk reaches (batch 1 or
// the walk's first 3 s); the rest drawn from (seed, drill), in batch 1 or 2 or the first 8 s.
// Targets, moments and durations are drawn in the base spec's rack, services and time scale.
std::vector<FaultSpec> draw_faults(const DrillFileSpec& base, const std::vector<std::string>& kinds,
                                   uint64_t seed, int drill, double max_outage_s = 0);

struct ChaosDrill {
  int number = 0;
  std::vector<FaultRecord> faults;
  std::string state;   // the drill's final state ("" when it did not run)
  std::string result;  // its report's result
  std::string reason;
  double seconds = 0;
  std::vector<CheckResult> checks;
  std::string error;  // the drill could not run to its end (counts as a violation)
  bool violation() const;
  json::object to_json() const;
};

struct ChaosCampaign {
  uint64_t seed = 0;
  std::vector<ChaosDrill> drills;
  std::optional<Error> error;  // the campaign stopped early (a rack that would not start, Ctrl-C)
  // The first drill with a violation, or nullptr.
  const ChaosDrill* first_violation() const;
  // {seed, drills, faults_by_kind: {kind: {drawn, injected}}, violations: [{drill, check,
  // detail}], states: {Completed: n, ...}, results: [drill.to_json()...]}
  json::object summary() const;
};

// Runs the campaign; each drill's block goes to options.out as it ends.
ChaosCampaign run_chaos(const ChaosOptions& options);

// The table: one line per drill (number, state, report result, each check ok/FAIL, the faults).
std::string chaos_table(const ChaosCampaign& c);

}  // namespace fabriclab::rack
