#pragma once
// The planner: the walk as ordered batches of hosts (docs/placement.md "The walk").
//
// Two hosts conflict when some service has an instance in UD u on one and in UD v != u on the
// other. A batch is a set of hosts without a conflict between them and of at most
// `max_parallel_hosts` hosts; taking the batches down one after the other never has two UDs of
// one service down at once. Every host of the cluster is in exactly one batch (hosts without
// instances too: they still get the update).
//
// Lower bound: the most distinct UDs one service occupies (those hosts conflict pairwise) and,
// with a cap, ceil(hosts / max_parallel_hosts); the larger one. On placements the allocator made
// the plan meets it (one batch per slot). On others (after healing, imported) the planner searches
// a colouring of the conflict graph (DSatur, then tabu search down towards the bound within an
// iteration budget), which is deterministic for a given seed.

#include <cstdint>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab::orchestrator {

struct PlanOptions {
  int max_parallel_hosts = 0;  // 0: unlimited
  uint64_t seed = 1;           // tie-breaking in the search; same seed, same plan
  // Moves of the tabu search, over all colour counts tried. Only placements the allocator did not
  // make need it; ~1 µs to 10 µs a move on a 1000-host cluster.
  int64_t max_iterations = 1'000'000;
};

struct Plan {
  std::vector<std::vector<std::string>> batches;  // host ids, in walk order
  int lower_bound = 0;      // max(ud_lower_bound, cap_lower_bound, 1 if any host)
  int ud_lower_bound = 0;   // most distinct UDs one service occupies
  int cap_lower_bound = 0;  // ceil(hosts / max_parallel_hosts), 0 without a cap
  // The largest set of pairwise-conflicting hosts the planner found (exact up to 64 conflicting
  // hosts, and beyond when a bounded branch and bound completes, as on 160-host scattered
  // placements; otherwise the best clique found). Never above the number of batches a walk needs;
  // when the UD bound is below it (only on placements the allocator did not make), the UD bound
  // cannot be met. 0 when not computed.
  int clique_lower_bound = 0;
  // How the batches were found: "slots" (the hosts' UD slots were a valid colouring at the
  // bound), "components" (hosts sharing a (service, UD) grouped, then coloured), "search"
  // (host-level colouring), "dsatur" (the baseline).
  std::string method;
  int64_t iterations = 0;  // tabu moves spent
};

// The lower bounds of a walk over all hosts of `c`.
struct WalkBounds {
  int ud = 0;
  int cap = 0;
  int overall = 0;
};
WalkBounds walk_bounds(const Cluster& c, int max_parallel_hosts);

// Plans the walk over every host of `c`. Refused (invalid_state / invalid_argument, as
// validate_cluster) when the cluster is inconsistent, in particular when a host holds two UDs of
// one service: no walk can keep the UD rule there.
Result<Plan> plan_walk(const Cluster& c, const PlanOptions& options = {});

// The textbook baseline: one DSatur colouring of the host conflict graph, classes split to the
// cap. For benchmarks and comparison only.
Result<Plan> plan_walk_dsatur(const Cluster& c, int max_parallel_hosts = 0);

// Checks a plan against the cluster: every host appears exactly once and no unknown host
// appears, no batch is empty or larger than `max_parallel_hosts` (when > 0), and no batch holds
// two UDs of one service. invalid_argument, naming the batch, hosts, service and UDs, e.g.
// "batch 3: hosts 'h1' and 'h7' hold UD 0 and UD 2 of service 'web'".
Status validate_plan(const Cluster& c, const Plan& plan, int max_parallel_hosts);

// The dry run's predicted worst case for one service under a plan.
struct ServiceForecast {
  std::string service;
  int instances = 0;
  int uds_occupied = 0;        // distinct UDs its instances are in
  int max_instances_down = 0;  // most instances in one batch
  int max_uds_down = 0;        // most distinct UDs in one batch (<= 1 under a valid plan)
  int batches_touched = 0;
  bool keeps_serving = false;  // some instance stays up in every batch (needs >= 2 instances)
};
std::vector<ServiceForecast> forecast(const Cluster& c, const Plan& plan);

json::object to_json(const Plan& p);
json::object to_json(const ServiceForecast& f);
// Reads a plan (e.g. from the journal); limits: kMaxHosts batches and host ids.
Result<Plan> plan_from_json(const json::object& o);

}  // namespace fabriclab::orchestrator
