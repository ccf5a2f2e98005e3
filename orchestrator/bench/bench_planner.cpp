// fabriclab-bench-planner [--json] [--issue] [--clusters N] [--heal-clusters N] [--heal-capacity C]
//
// Builds clusters shaped like the issue's reference experiment, once placed by the allocator
// (slot-aligned) and once by uniformly random valid placement (what the allocator would not make:
// imports, history), and plans each with our planner and with a plain DSatur baseline.
//
// Default: 160 hosts in 8 fault domains (capacity 16), services of 2..40 instances with 5..20 UDs
// and one 20-UD service, so the UD lower bound is 20; 5 clusters of each kind.
// --issue: the issue's size: 1000 hosts in 3 fault domains, ~20 000 instances in services of
// 2..50 instances with 5..20 UDs (N clusters of each kind, default 10).
//
// The healed case (always run; --heal-clusters N, default 20): 300 hosts in 3 fault domains
// (capacity 16, or --heal-capacity), ~1 650 instances in services of 2..40 instances with 5..20
// UDs and one 20-UD service, placed by the allocator. Every host of FD 0 fails; each one's
// instances are placed again with place_again (one host after another, as the controller heals)
// and the walk is planned again: `healed_batches_over_lb_p50`, `healed_share_within_1` (target
// >= 0.95), the instances healing put where the walk may need more batches, and FD diversity
// relaxations.

#include <fmt/format.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "fabriclab/orchestrator/placement.hpp"
#include "fabriclab/orchestrator/planner.hpp"

using namespace fabriclab;
using namespace fabriclab::orchestrator;

namespace {

struct Shape {
  int hosts, fds, capacity, instances, min_n, max_n;
};

Cluster make_cluster(const Shape& shape, uint64_t seed, bool aligned) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Cluster c;
  for (int h = 0; h < shape.hosts; ++h) {
    c.hosts.push_back(Host{fmt::format("h{}", h), h % shape.fds, shape.capacity});
  }
  std::vector<Service> services;
  services.push_back(Service{"s0", std::max(20, shape.min_n), 20, "img", 256});
  int total = services[0].instance_count;
  while (total < shape.instances) {
    int n = std::min(pick(shape.min_n, shape.max_n), shape.instances - total);
    if (n < 1) break;
    services.push_back(Service{fmt::format("s{}", services.size()), n, pick(5, 20), "img", 256});
    total += n;
  }
  if (aligned) {
    auto r = place_services(c, services);
    if (!r.ok()) std::fprintf(stderr, "placement: %s\n", r.error().describe().c_str());
  } else {
    for (const auto& s : services) {
      auto r = place_service_scattered(c, s, rng());
      if (!r.ok()) std::fprintf(stderr, "scattered placement: %s\n", r.error().describe().c_str());
    }
  }
  return c;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Integral figures as JSON integers, the rest (medians of an even count, times) as doubles.
json::value num(double x) {
  if (x == static_cast<double>(static_cast<int64_t>(x))) return static_cast<int64_t>(x);
  return std::round(x * 1000) / 1000;
}

// The healed case of one cluster: FD `dead_fd` fails whole, its instances are healed host by
// host, and the walk is planned again.
struct Healed {
  int lower_bound = 0, batches = 0, off_slot = 0, relaxed = 0, failed = 0;
  // Services whose largest fault domain holds more than an even split over the surviving domains
  // (ceil(n / surviving FDs)) after healing: what keeping the walk short cost in balance.
  int uneven_services = 0;
  bool valid = true;
  double heal_ms = 0;
};

Healed heal_fault_domain(Cluster c, int dead_fd, uint64_t seed) {
  Healed out;
  for (auto& h : c.hosts) {
    if (h.fault_domain == dead_fd) h.state = HostState::unhealthy;
  }
  auto t0 = std::chrono::steady_clock::now();
  for (const auto& h : c.hosts) {
    if (h.fault_domain != dead_fd) continue;
    std::vector<Instance> lost;
    for (const auto* i : c.instances_on(h.id)) lost.push_back(*i);
    if (lost.empty()) continue;
    auto plan = place_again(c, lost);
    if (!plan.ok()) {
      ++out.failed;
      std::fprintf(stderr, "healing %s: %s\n", h.id.c_str(), plan.error().describe().c_str());
      continue;
    }
    out.off_slot += plan->off_slot;
    out.relaxed += static_cast<int>(plan->relaxed.size());
    apply_healing(c, *plan);
  }
  out.heal_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const int surviving_fds = static_cast<int>(c.fault_domains().size()) - 1;
  for (const auto& s : c.services) {
    std::map<int, int> in_fd;
    int most = 0;
    for (const auto* i : c.instances_of(s.name)) most = std::max(most, ++in_fd[i->fd]);
    if (most > (s.instance_count + surviving_fds - 1) / surviving_fds) ++out.uneven_services;
  }
  auto walk = plan_walk(c, PlanOptions{.seed = seed});
  if (!walk.ok()) {
    std::fprintf(stderr, "plan after healing failed: %s\n", walk.error().describe().c_str());
    out.valid = false;
    return out;
  }
  out.valid = validate_plan(c, *walk, 0).ok() && validate_cluster(c).ok();
  out.lower_bound = walk->lower_bound;
  out.batches = static_cast<int>(walk->batches.size());
  return out;
}

struct Runs {
  std::vector<double> lb, clique, dsatur, ours, ms, dsatur_ms, over_lb, dsatur_over_lb;
  int at_lb = 0, invalid = 0;
};

}  // namespace

int main(int argc, char** argv) {
  bool as_json = false, issue = false;
  int clusters = -1, heal_clusters = 20, heal_capacity = 16;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json"))
      as_json = true;
    else if (!std::strcmp(argv[i], "--issue"))
      issue = true;
    else if (!std::strcmp(argv[i], "--clusters") && i + 1 < argc)
      clusters = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--heal-clusters") && i + 1 < argc)
      heal_clusters = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--heal-capacity") && i + 1 < argc)
      heal_capacity = std::atoi(argv[++i]);
    else {
      std::fprintf(
          stderr,
          "usage: %s [--json] [--issue] [--clusters N] [--heal-clusters N] [--heal-capacity C]\n",
          argv[0]);
      return 2;
    }
  }
  if (heal_clusters < 1 || heal_clusters > 1000 || heal_capacity < 1 || heal_capacity > 1000) {
    std::fprintf(stderr, "--heal-clusters and --heal-capacity must be in 1..1000\n");
    return 2;
  }
  const Shape shape = issue ? Shape{1000, 3, 24, 20000, 2, 50} : Shape{160, 8, 16, 1900, 2, 40};
  if (clusters < 1) clusters = issue ? 10 : 5;

  Runs runs[2];  // 0: aligned, 1: random
  std::vector<double> all_ms;
  if (!as_json) {
    std::printf("%-8s %4s %6s %9s %3s %6s %6s %4s %-10s %9s %9s\n", "kind", "seed", "hosts",
                "instances", "lb", "clique", "dsatur", "ours", "method", "ours_ms", "dsatur_ms");
  }
  for (int kind = 0; kind < 2; ++kind) {
    for (int k = 0; k < clusters; ++k) {
      const uint64_t seed = 1000 + k;
      Cluster c = make_cluster(shape, seed, kind == 0);
      auto t0 = std::chrono::steady_clock::now();
      auto plan = plan_walk(c, PlanOptions{.seed = seed});
      auto t1 = std::chrono::steady_clock::now();
      auto base = plan_walk_dsatur(c);
      auto t2 = std::chrono::steady_clock::now();
      if (!plan.ok() || !base.ok()) {
        std::fprintf(stderr, "plan failed: %s\n",
                     (plan.ok() ? base.error() : plan.error()).describe().c_str());
        return 1;
      }
      Runs& r = runs[kind];
      if (!validate_plan(c, *plan, 0).ok() || !validate_plan(c, *base, 0).ok()) ++r.invalid;
      const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
      const double dms = std::chrono::duration<double, std::milli>(t2 - t1).count();
      const int ours = static_cast<int>(plan->batches.size());
      const int dsatur = static_cast<int>(base->batches.size());
      r.lb.push_back(plan->lower_bound);
      r.clique.push_back(plan->clique_lower_bound);
      r.ours.push_back(ours);
      r.dsatur.push_back(dsatur);
      r.over_lb.push_back(ours - plan->lower_bound);
      r.dsatur_over_lb.push_back(dsatur - plan->lower_bound);
      r.ms.push_back(ms);
      r.dsatur_ms.push_back(dms);
      if (ours == plan->lower_bound) ++r.at_lb;
      all_ms.push_back(ms);
      if (!as_json) {
        std::printf("%-8s %4d %6zu %9zu %3d %6d %6d %4d %-10s %9.1f %9.1f\n",
                    kind == 0 ? "aligned" : "random", k, c.hosts.size(), c.instances.size(),
                    plan->lower_bound, plan->clique_lower_bound, dsatur, ours, plan->method.c_str(),
                    ms, dms);
        std::fflush(stdout);
      }
    }
  }
  // The healed case: one fault domain of three fails and is healed.
  const Shape heal_shape{300, 3, heal_capacity, 1650, 2, 40};
  std::vector<double> healed_over, healed_batches, heal_ms;
  int within_1 = 0, off_slot = 0, relaxed = 0, heal_failed = 0, uneven = 0;
  size_t heal_services = 0;
  size_t heal_instances = 0;
  for (int k = 0; k < heal_clusters; ++k) {
    const uint64_t seed = 5000 + k;
    Cluster c = make_cluster(heal_shape, seed, true);
    heal_instances += c.instances.size();
    heal_services += c.services.size();
    Healed h = heal_fault_domain(std::move(c), 0, seed);
    if (!h.valid) ++runs[0].invalid;
    healed_over.push_back(h.batches - h.lower_bound);
    healed_batches.push_back(h.batches);
    heal_ms.push_back(h.heal_ms);
    if (h.batches - h.lower_bound <= 1) ++within_1;
    off_slot += h.off_slot;
    relaxed += h.relaxed;
    heal_failed += h.failed;
    uneven += h.uneven_services;
    if (!as_json) {
      std::printf("%-8s %4d %6d %9s %3d %6s %6s %4d %-10s %9.1f  off_slot %d relaxed %d\n",
                  "healed", k, heal_shape.hosts, "", h.lower_bound, "", "", h.batches, "",
                  h.heal_ms, h.off_slot, h.relaxed);
      std::fflush(stdout);
    }
  }
  const Runs& a = runs[0];
  const Runs& b = runs[1];
  json::object out{
      {"hosts", shape.hosts},
      {"fault_domains", shape.fds},
      {"clusters_per_kind", clusters},
      {"aligned_lower_bound", num(median(a.lb))},
      {"aligned_dsatur_batches", num(median(a.dsatur))},
      {"aligned_batches", num(median(a.ours))},
      {"aligned_share_at_lower_bound", num(static_cast<double>(a.at_lb) / clusters)},
      {"aligned_max_batches_over_lower_bound",
       num(*std::max_element(a.over_lb.begin(), a.over_lb.end()))},
      {"aligned_plan_ms_p50", num(median(a.ms))},
      {"random_lower_bound", num(median(b.lb))},
      {"random_clique_bound", num(median(b.clique))},
      {"random_dsatur_batches", num(median(b.dsatur))},
      {"random_batches", num(median(b.ours))},
      {"arbitrary_batches_over_lb_p50", num(median(b.over_lb))},
      {"dsatur_batches_over_lb_p50", num(median(b.dsatur_over_lb))},
      {"random_plan_ms_p50", num(median(b.ms))},
      {"dsatur_ms_p50", num(median(b.dsatur_ms))},
      {"plan_time_ms_p50", num(median(all_ms))},
      {"healed_clusters", heal_clusters},
      {"healed_hosts", heal_shape.hosts},
      {"healed_capacity", heal_capacity},
      {"healed_instances_mean", num(static_cast<double>(heal_instances) / heal_clusters)},
      {"healed_batches_p50", num(median(healed_batches))},
      {"healed_batches_over_lb_p50", num(median(healed_over))},
      {"healed_batches_over_lb_max",
       num(*std::max_element(healed_over.begin(), healed_over.end()))},
      {"healed_share_within_1", num(static_cast<double>(within_1) / heal_clusters)},
      {"healed_off_slot_instances", off_slot},
      {"healed_fd_diversity_relaxed", relaxed},
      {"healed_refused", heal_failed},
      {"healed_uneven_fd_services", uneven},
      {"healed_services", static_cast<int64_t>(heal_services)},
      {"heal_ms_p50", num(median(heal_ms))},
      {"invalid_plans", a.invalid + b.invalid},
  };
  std::printf("%s\n", json::serialize(out).c_str());
  return a.invalid + b.invalid == 0 ? 0 : 1;
}
