#pragma once
// Placement (the allocator) and service healing. docs/placement.md.
//
// The hard rules, never weakened: instance i of a service gets UD i mod ud_count; two instances
// of one service in different UDs never share a host; only Ready hosts with free capacity are
// candidates. A request that cannot satisfy them is refused with an error whose message starts
// with the rule's name:
//   "placement rule 'only Ready hosts': ..."                         (invalid_state)
//   "placement rule 'capacity': ..."                                 (invalid_state)
//   "placement rule 'different UDs on different hosts': ..."         (invalid_state)
//
// The soft goals, met whenever resources allow and reported when not:
//   - fault domains are filled round robin, so a service spans min(instances, FDs) FDs (the
//     seeds' examples: 2 instances -> (UD0,FD0),(UD1,FD1); 3 over 3 FDs -> FD0,FD1,FD2; 3 over
//     2 FDs -> FD0,FD1,FD0);
//   - slot alignment: every host the allocator uses carries a UD slot (Host::ud_slot) and each
//     service maps its UDs onto distinct slots, so the hosts of one slot never conflict and the
//     walk (planner.hpp) is one batch per slot: it meets its lower bound by construction.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fabriclab/common/result.hpp"
#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab::orchestrator {

// What a placement did beyond the hard rules.
struct PlacementReport {
  std::vector<Instance> placed;
  // Instances put on a host whose slot differs from their UD's slot (capacity forced it). Each one
  // may cost the walk a batch above its lower bound; 0 on a cluster with room to spare.
  int unaligned = 0;
  // Instances put outside their round-robin fault domain because it had no usable host.
  int off_round_robin_fd = 0;
};

// Places every instance of `service` (its name must be new: already_exists otherwise) and adds
// the service, its instances and the slots of newly used hosts to `cluster`. Atomic: on error the
// cluster is unchanged. Deterministic.
Result<PlacementReport> place_service(Cluster& cluster, const Service& service);

// Places several services, those spanning the most UDs first (so the slot range is known before
// small services claim hosts). Stops at the first refusal, naming the service; the services
// placed before it stay placed.
Result<PlacementReport> place_services(Cluster& cluster, std::vector<Service> services);

// A valid placement that the allocator would not make: each instance goes to a uniformly random
// Ready host with capacity that holds no other UD of the service (no slots, no FD balance). Stands
// for imported or historical layouts in tests and benchmarks of the planner. Deterministic in seed.
Result<PlacementReport> place_service_scattered(Cluster& cluster, const Service& service,
                                                uint64_t seed);

// Service healing: new homes for instances whose host died, so the service keeps its instances.
struct HealingPlan {
  // The lost instances with their new host and fd (service, index and UD unchanged).
  std::vector<Instance> placed;
  // Slots to record on hosts that held no instance before (host id, slot).
  std::vector<std::pair<std::string, int>> new_slots;
  // One line per instance for which a soft rule had to give, e.g. "web/3: fault-domain
  // diversity relaxed: every fault domain with a usable host already holds an instance of 'web'
  // (placed in FD 1)". Fault-domain diversity is the only rule healing relaxes.
  std::vector<std::string> relaxed;
  // What healing cost the walk: instances placed on a host where the walk may need a batch more
  // than its lower bound (no usable host was in a slot that holds no other UD of the service),
  // with one line each, e.g. "web/3: no host with room in a slot free of other UDs of 'web': the
  // walk may need a batch more (placed on h7, slot 4)". 0 and empty when the walk keeps its bound.
  int off_slot = 0;
  std::vector<std::string> walk_cost;
};

// Places `lost` again (instances of `cluster`, normally all those of one dead host). Candidates
// are Ready hosts with free capacity other than the instance's old host, never holding another
// UD of its service. Preference, in order: the fault domain holding the fewest of the service's
// other instances (none: diversity), a host where the walk keeps its lower bound (a used host
// whose slot holds no other UD of the service, the UD's own slot first, then an empty host, which
// takes the UD's slot), the most free capacity. Refused with the rule named when some instance
// has no candidate. Pure: does not modify the cluster.
Result<HealingPlan> place_again(const Cluster& cluster, const std::vector<Instance>& lost);

// Moves the instances of `plan` to their new hosts and records the new slots.
void apply_healing(Cluster& cluster, const HealingPlan& plan);

}  // namespace fabriclab::orchestrator
