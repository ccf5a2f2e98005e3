// The planner, the plan validator and the dry-run forecast (orchestrator/planner.hpp), on the
// seeds' layouts, on hand-made corner cases and on thousands of random clusters.

#include "fabriclab/orchestrator/planner.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "cluster_builders.hpp"
#include "fabriclab/orchestrator/placement.hpp"

namespace fabriclab::orchestrator {
namespace {

using testing::rack;
using testing::svc;

// A random rack and random services; `aligned` places them with the allocator, otherwise
// uniformly at random among valid hosts. Services that do not fit are skipped. `unaligned`
// receives the instances the allocator could not put on their UD's slot (tight capacity).
Cluster random_cluster(uint64_t seed, bool aligned, int* unaligned = nullptr) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int fds = pick(1, 5), per_fd = pick(2, 8), capacity = pick(2, 8);
  Cluster c = rack(fds, per_fd, capacity);
  std::vector<Service> services;
  const int count = pick(1, 14);
  for (int s = 0; s < count; ++s) {
    services.push_back(svc(fmt::format("s{}", s), pick(1, 12), pick(1, 10)));
  }
  if (aligned) {
    std::stable_sort(services.begin(), services.end(), [](const Service& a, const Service& b) {
      return std::min(a.instance_count, a.ud_count) > std::min(b.instance_count, b.ud_count);
    });
  }
  if (unaligned) *unaligned = 0;
  for (const auto& s : services) {
    if (aligned) {
      auto r = place_service(c, s);
      if (r.ok() && unaligned) *unaligned += r->unaligned;
    } else {
      (void)place_service_scattered(c, s, rng());
    }
  }
  return c;
}

TEST(Planner, SeedLayoutsWalkInAsManyBatchesAsUds) {
  for (int n : {2, 3}) {
    for (int fds : {2, 3}) {
      Cluster c = rack(fds, 2);
      ASSERT_TRUE(place_service(c, svc("web", n)).ok());
      auto plan = plan_walk(c);
      ASSERT_TRUE(plan.ok()) << plan.error().describe();
      EXPECT_EQ(plan->lower_bound, n);
      EXPECT_EQ(static_cast<int>(plan->batches.size()), n);
      EXPECT_TRUE(validate_plan(c, *plan, 0).ok());
    }
  }
}

TEST(Planner, EveryHostIsUpdatedIncludingEmptyOnesAndTheyGoLast) {
  Cluster c = rack(2, 4);
  ASSERT_TRUE(place_service(c, svc("web", 4, 4)).ok());
  ASSERT_TRUE(place_service(c, svc("hello", 1)).ok());  // single instance: no availability anyway
  auto plan = plan_walk(c);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(validate_plan(c, *plan, 0).ok()) << validate_plan(c, *plan, 0).error().describe();
  EXPECT_EQ(plan->batches.size(), 4u);
  // Hosts without a multi-instance service go in the last batch: web's hosts come first.
  const std::string hello_host = c.find_instance("hello", 0)->host;
  auto in_last = [&](const std::string& h) {
    const auto& last = plan->batches.back();
    return std::find(last.begin(), last.end(), h) != last.end();
  };
  if (c.instances_on(hello_host).size() == 1) {
    EXPECT_TRUE(in_last(hello_host));
  }
  for (const auto& h : c.hosts) {
    if (c.instances_on(h.id).empty()) {
      EXPECT_TRUE(in_last(h.id)) << h.id;
    }
  }
}

TEST(Planner, RefusesAClusterWhereAHostHoldsTwoUdsOfAService) {
  Cluster c = rack(1, 2);
  c.services.push_back(svc("web", 2));
  c.instances = {Instance{"web", 0, 0, 0, "fd0-h0"}, Instance{"web", 1, 1, 0, "fd0-h0"}};
  auto plan = plan_walk(c);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.condition(), Condition::invalid_state);
}

TEST(Planner, CapLimitsEveryBatchAndRaisesTheLowerBound) {
  Cluster c = rack(3, 6, 4);
  ASSERT_TRUE(place_services(c, {svc("a", 6, 3), svc("b", 9, 5), svc("c", 4, 2)}).ok());
  auto plan = plan_walk(c, PlanOptions{.max_parallel_hosts = 2});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->cap_lower_bound, 9);
  EXPECT_EQ(plan->lower_bound, 9);
  EXPECT_TRUE(validate_plan(c, *plan, 2).ok()) << validate_plan(c, *plan, 2).error().describe();
  for (const auto& b : plan->batches) EXPECT_LE(b.size(), 2u);
}

TEST(Planner, SameSeedSamePlan) {
  Cluster c = random_cluster(42, false);
  auto a = plan_walk(c, PlanOptions{.seed = 7});
  auto b = plan_walk(c, PlanOptions{.seed = 7});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->batches, b->batches);
}

TEST(Validator, CatchesAPlantedConflictAndNamesBatchHostsServiceAndUds) {
  Cluster c = rack(2, 2);
  ASSERT_TRUE(place_service(c, svc("web", 2)).ok());
  const std::string h0 = c.find_instance("web", 0)->host, h1 = c.find_instance("web", 1)->host;
  Plan bad;
  bad.batches = {{h0, h1}};
  for (const auto& h : c.hosts) {
    if (h.id != h0 && h.id != h1) bad.batches.push_back({h.id});
  }
  auto st = validate_plan(c, bad, 0);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message,
            "batch 0: hosts '" + h0 + "' and '" + h1 + "' hold UD 0 and UD 1 of service 'web'");
}

TEST(Validator, CatchesMissingDuplicateUnknownHostsAndTheCap) {
  Cluster c = rack(1, 3);
  Plan p;
  p.batches = {{"fd0-h0", "fd0-h1"}};
  EXPECT_NE(validate_plan(c, p, 0).error().message.find("'fd0-h2' is in no batch"),
            std::string::npos);
  p.batches = {{"fd0-h0", "fd0-h1"}, {"fd0-h2", "fd0-h0"}};
  EXPECT_NE(validate_plan(c, p, 0).error().message.find("is in batch 0 and batch 1"),
            std::string::npos);
  p.batches = {{"fd0-h0", "fd0-h1", "fd0-h2", "ghost"}};
  EXPECT_NE(validate_plan(c, p, 0).error().message.find("unknown host 'ghost'"), std::string::npos);
  p.batches = {{"fd0-h0", "fd0-h1", "fd0-h2"}};
  EXPECT_TRUE(validate_plan(c, p, 0).ok());
  EXPECT_NE(validate_plan(c, p, 2).error().message.find("more than max_parallel_hosts 2"),
            std::string::npos);
}

TEST(Forecast, PredictsOneUdDownPerServiceAndNoServiceForASingleInstance) {
  Cluster c = rack(3, 3);
  ASSERT_TRUE(place_services(c, {svc("web", 6, 3), svc("hello", 1)}).ok());
  auto plan = plan_walk(c);
  ASSERT_TRUE(plan.ok());
  for (const auto& f : forecast(c, *plan)) {
    EXPECT_EQ(f.max_uds_down, 1) << f.service;
    if (f.service == "web") {
      EXPECT_EQ(f.instances, 6);
      EXPECT_EQ(f.max_instances_down, 2);
      EXPECT_TRUE(f.keeps_serving);
    } else {
      EXPECT_FALSE(f.keeps_serving);
    }
  }
  // A hand-made bad plan shows up in the forecast too.
  Plan all;
  all.batches.emplace_back();
  for (const auto& h : c.hosts) all.batches[0].push_back(h.id);
  for (const auto& f : forecast(c, all)) {
    if (f.service == "web") {
      EXPECT_EQ(f.max_uds_down, 3);
    }
  }
}

TEST(PlanJson, RoundTripsAndRefusesBadBatches) {
  Cluster c = random_cluster(3, true);
  auto plan = plan_walk(c);
  ASSERT_TRUE(plan.ok());
  auto back = plan_from_json(to_json(*plan));
  ASSERT_TRUE(back.ok()) << back.error().describe();
  EXPECT_EQ(back->batches, plan->batches);
  EXPECT_EQ(back->lower_bound, plan->lower_bound);
  auto bad = plan_from_json(json::object{{"batches", json::array{json::array{1}}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("batches[0]"), std::string::npos);
}

// --- properties over random clusters -------------------------------------------------------------

TEST(PlannerProperty, AllocatorPlacementsWalkAtTheLowerBound) {
  // Where the allocator kept every instance on its UD's slot the walk is one batch per slot,
  // exactly the bound. Where capacity was too tight for that (the report says so), the plan must
  // still validate, and rarely exceeds the bound.
  int aligned = 0, tight = 0, tight_above = 0;
  for (uint64_t seed = 1; seed <= 2000; ++seed) {
    int unaligned = 0;
    Cluster c = random_cluster(seed, true, &unaligned);
    if (c.instances.empty()) continue;
    auto plan = plan_walk(c);
    ASSERT_TRUE(plan.ok()) << plan.error().describe();
    ASSERT_TRUE(validate_plan(c, *plan, 0).ok()) << "seed " << seed;
    const int batches = static_cast<int>(plan->batches.size());
    if (unaligned == 0) {
      ++aligned;
      ASSERT_EQ(batches, plan->lower_bound) << "seed " << seed << " method " << plan->method;
      ASSERT_EQ(plan->method, "slots") << "seed " << seed;
    } else {
      ++tight;
      if (batches > plan->lower_bound) ++tight_above;
    }
  }
  std::printf(
      "[ allocator ] %d clusters fully slot-aligned, all at the bound; %d with tight "
      "capacity, of which %d above the bound\n",
      aligned, tight, tight_above);
  // Measured on these seeds: 1289 aligned; 694 tight (tiny racks: 2..8 hosts per FD with room for
  // 2..8 instances each), 105 of them above the bound, which after such a placement is mostly
  // unreachable (the clique of conflicting hosts exceeds it).
  EXPECT_GT(aligned, 1200);
  EXPECT_LT(static_cast<double>(tight_above) / tight, 0.2);
}

TEST(PlannerProperty, EveryPlanValidatesWithAndWithoutACap) {
  for (uint64_t seed = 1; seed <= 1500; ++seed) {
    Cluster c = random_cluster(seed * 7919, seed % 2 == 0);
    const int cap = static_cast<int>(seed % 4);  // 0 (unlimited), 1, 2, 3
    auto plan = plan_walk(c, PlanOptions{.max_parallel_hosts = cap, .seed = seed});
    ASSERT_TRUE(plan.ok()) << plan.error().describe();
    ASSERT_TRUE(validate_plan(c, *plan, cap).ok())
        << "seed " << seed << ": " << validate_plan(c, *plan, cap).error().describe();
    ASSERT_GE(static_cast<int>(plan->batches.size()), plan->lower_bound);
    for (const auto& f : forecast(c, *plan)) ASSERT_LE(f.max_uds_down, 1);
  }
}

TEST(PlannerProperty, ScatteredPlacementsMostlyWalkAtTheLowerBoundAndBeatDsatur) {
  int clusters = 0, above = 0, unproven = 0, ours = 0, baseline = 0;
  for (uint64_t seed = 1; seed <= 2000; ++seed) {
    Cluster c = random_cluster(seed * 104729, false);
    if (c.instances.empty()) continue;
    ++clusters;
    auto plan = plan_walk(c, PlanOptions{.seed = seed});
    auto dsatur = plan_walk_dsatur(c);
    ASSERT_TRUE(plan.ok() && dsatur.ok());
    ASSERT_TRUE(validate_plan(c, *plan, 0).ok()) << "seed " << seed;
    ASSERT_TRUE(validate_plan(c, *dsatur, 0).ok()) << "seed " << seed;
    ASSERT_LE(plan->batches.size(), dsatur->batches.size()) << "seed " << seed;
    const int batches = static_cast<int>(plan->batches.size());
    if (batches > plan->lower_bound) ++above;
    if (batches > std::max(plan->lower_bound, plan->clique_lower_bound)) ++unproven;
    ours += static_cast<int>(plan->batches.size());
    baseline += static_cast<int>(dsatur->batches.size());
  }
  const double share = static_cast<double>(above) / clusters;
  std::printf(
      "[ scattered ] %d clusters: share above the UD lower bound %.4f, above the clique "
      "bound too %.4f; batches ours %d vs DSatur %d\n",
      clusters, share, static_cast<double>(unproven) / clusters, ours, baseline);
  // Measured: 0.387 above the UD bound (a random layout often has more pairwise-conflicting
  // hosts than UDs, so the bound is unreachable), 0.0096 not proven optimal by the clique bound.
  EXPECT_LT(share, 0.45);
  EXPECT_LT(static_cast<double>(unproven) / clusters, 0.02);
  EXPECT_LT(ours, baseline);
}

TEST(PlannerProperty, HealedClustersKeepTheUdRuleAndStayNearTheBound) {
  int clusters = 0, above = 0, unproven = 0;
  for (uint64_t seed = 1; seed <= 1000; ++seed) {
    Cluster c = random_cluster(seed * 31337, true);
    if (c.instances.empty() || c.hosts.size() < 3) continue;
    const int dead = static_cast<int>(seed % c.hosts.size());
    c.hosts[dead].state = HostState::offline;
    std::vector<Instance> lost;
    for (const auto* i : c.instances_on(c.hosts[dead].id)) lost.push_back(*i);
    auto heal = place_again(c, lost);
    if (!heal.ok()) continue;  // refusal is tested on its own; here: what a healed walk looks like
    apply_healing(c, *heal);
    ASSERT_TRUE(validate_cluster(c).ok()) << validate_cluster(c).error().describe();
    ++clusters;
    auto plan = plan_walk(c, PlanOptions{.seed = seed});
    ASSERT_TRUE(plan.ok());
    ASSERT_TRUE(validate_plan(c, *plan, 0).ok()) << "seed " << seed;
    const int batches = static_cast<int>(plan->batches.size());
    if (batches > plan->lower_bound) ++above;
    if (batches > std::max(plan->lower_bound, plan->clique_lower_bound)) ++unproven;
  }
  const double share = static_cast<double>(above) / clusters;
  std::printf(
      "[ healed ] %d clusters: share above the UD lower bound %.4f, above the clique "
      "bound too %.4f\n",
      clusters, share, static_cast<double>(unproven) / clusters);
  EXPECT_GT(clusters, 500);
  EXPECT_LT(share, 0.12);
  EXPECT_LT(static_cast<double>(unproven) / clusters, 0.02);
}

}  // namespace
}  // namespace fabriclab::orchestrator
