// fabriclab-bench-planner [--json] [--issue] [--clusters N]
//
// Builds clusters shaped like the issue's reference experiment, once placed by the allocator
// (slot-aligned) and once by uniformly random valid placement (what the allocator would not make:
// imports, history), and plans each with our planner and with a plain DSatur baseline.
//
// Default: 160 hosts in 8 fault domains (capacity 16), services of 2..40 instances with 5..20 UDs
// and one 20-UD service, so the UD lower bound is 20; 5 clusters of each kind.
// --issue: the issue's size: 1000 hosts in 3 fault domains, ~20 000 instances in services of
// 2..50 instances with 5..20 UDs (N clusters of each kind, default 10).

#include <fmt/format.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
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

struct Runs {
  std::vector<double> lb, clique, dsatur, ours, ms, dsatur_ms, over_lb, dsatur_over_lb;
  int at_lb = 0, invalid = 0;
};

}  // namespace

int main(int argc, char** argv) {
  bool as_json = false, issue = false;
  int clusters = -1;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json"))
      as_json = true;
    else if (!std::strcmp(argv[i], "--issue"))
      issue = true;
    else if (!std::strcmp(argv[i], "--clusters") && i + 1 < argc)
      clusters = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--json] [--issue] [--clusters N]\n", argv[0]);
      return 2;
    }
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
      {"invalid_plans", a.invalid + b.invalid},
  };
  std::printf("%s\n", json::serialize(out).c_str());
  return a.invalid + b.invalid == 0 ? 0 : 1;
}
