#pragma once
// A drill spec's fault schedule (docs/faults.md): what to break, where, and at which moment of the
// walk. Parsed from the spec's `faults:` list (parse_faults), every entry checked against the rack
// and the services it names; an error names the entry ("faults[2].target.host: 'h9' is not a host
// of the rack (h0..h5)").
//
//   faults:
//     - {kind: kill-agent, target: {host: h1}, at: {batch: 2, step: SwappingImage}, duration_s:
//     5000}
//     - {kind: kill-orchestrator, at: {after_s: 3000}, duration_s: 2000}
//     - {kind: partition-host, target: {host: h2}, at: {batch: 1}, duration_s: 8000}
//     - {kind: kill-fault-domain, target: {fault_domain: 0}, at: {batch: 1, step: Rebooting}}
//     - {kind: guest-crash, target: {instance: web-0}, at: {after_s: 1000}}
//     - {kind: guest-hang, target: {instance: worker-1}, at: {batch: 1, step: Notifying}}
//     - {kind: slow-boot, target: {instance: web-1}, at: {batch: 1}, duration_s: 4000}
//     - {kind: corrupt-host-image, target: {host: h0}, at: {batch: 1, step: Notifying}}
//     - {kind: kill-fault-domain, fault_domain: 0}   (the old form: before the walk starts)
//
// `at.batch` counts from 1, as `fabriclab drill` prints the batches; `at.step` (optional: the
// batch's start) is an update step of a host of that batch (the target host when it is one of
// them). `at.after_s` counts from the walk's start. Times (after_s, duration_s) are time-scaled
// like the spec's other times: the rack waits X * policies.time_scale real seconds.

#include <optional>
#include <string>
#include <vector>

namespace fabriclab::rack {

inline constexpr size_t kMaxFaults = 32;
inline constexpr double kMaxFaultAfterS = 7 * 86400.0;
inline constexpr double kMaxFaultDurationS = 86400.0;
inline constexpr int kMaxFaultBatch = 1000;

// Every fault kind, in the order docs/faults.md lists them.
const std::vector<std::string>& fault_kinds();
// The agent's update steps a fault may wait for (docs/state-machines.md), in walk order.
const std::vector<std::string>& fault_steps();

struct FaultAt {
  enum class Kind { before_walk, batch, after };
  Kind kind = Kind::before_walk;
  int batch = 0;       // 1-based (Kind::batch)
  std::string step;    // "" : when the batch starts
  double after_s = 0;  // Kind::after: spec seconds after the walk's start
};

struct FaultSpec {
  std::string kind;         // one of fault_kinds()
  std::string target_kind;  // "host" | "fault_domain" | "instance" | "" (kill-orchestrator)
  std::string target;       // "h1", "0", "web-0", ""
  int fault_domain = 0;     // kill-fault-domain: the domain (also target)
  FaultAt at;
  std::optional<double> duration_s;  // spec seconds; where it applies (see parse_faults)

  // "kill-agent h1 at batch 2 SwappingImage for 5000 s": one line for tables and logs.
  std::string describe() const;
  // "h1", "fault domain 0", "web-0", "orchestrator".
  std::string where() const;
};

// What parse_faults checks names against.
struct FaultRack {
  int hosts = 0;
  int fault_domains = 0;
  // Every instance name of the spec's services ("web-0", ...).
  std::vector<std::string> instances;
};

}  // namespace fabriclab::rack
