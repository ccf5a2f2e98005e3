// The allocator, service healing and the cluster model's JSON (orchestrator/placement.hpp,
// cluster.hpp).

#include "fabriclab/orchestrator/placement.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "cluster_builders.hpp"
#include "fabriclab/orchestrator/cluster.hpp"
#include "fabriclab/orchestrator/planner.hpp"

namespace fabriclab::orchestrator {
namespace {

using testing::rack;
using testing::svc;

std::vector<std::pair<int, int>> ud_fd(const Cluster& c, std::string_view service) {
  std::vector<std::pair<int, int>> out;
  for (const auto* i : c.instances_of(service)) out.emplace_back(i->ud, i->fd);
  return out;
}

using Pairs = std::vector<std::pair<int, int>>;

TEST(Placement, SeedTwoInstancesGoToUd0Fd0AndUd1Fd1) {
  Cluster c = rack(2, 2);
  ASSERT_TRUE(place_service(c, svc("web", 2)).ok());
  EXPECT_EQ(ud_fd(c, "web"), (Pairs{{0, 0}, {1, 1}}));
}

TEST(Placement, SeedThreeInstancesOverThreeFaultDomainsTakeOptionOne) {
  Cluster c = rack(3, 2);
  ASSERT_TRUE(place_service(c, svc("web", 3)).ok());
  EXPECT_EQ(ud_fd(c, "web"), (Pairs{{0, 0}, {1, 1}, {2, 2}}));
}

TEST(Placement, SeedThreeInstancesOverTwoFaultDomainsTakeOptionTwo) {
  Cluster c = rack(2, 2);
  ASSERT_TRUE(place_service(c, svc("web", 3)).ok());
  EXPECT_EQ(ud_fd(c, "web"), (Pairs{{0, 0}, {1, 1}, {2, 0}}));
  // UD2 is back on FD0, but on another host than UD0.
  EXPECT_NE(c.find_instance("web", 0)->host, c.find_instance("web", 2)->host);
}

TEST(Placement, UpdateDomainIsIndexModuloUdCountAndFaultDomainsRoundRobin) {
  Cluster c = rack(3, 6, 8);
  ASSERT_TRUE(place_service(c, svc("api", 12, 5)).ok());
  std::map<int, int> per_fd;
  for (const auto* i : c.instances_of("api")) {
    EXPECT_EQ(i->ud, i->index % 5);
    EXPECT_EQ(i->fd, i->index % 3);
    ++per_fd[i->fd];
  }
  EXPECT_EQ(per_fd, (std::map<int, int>{{0, 4}, {1, 4}, {2, 4}}));
}

TEST(Placement, DifferentUdsOfOneServiceNeverShareAHostAndEachSlotHoldsOneUd) {
  Cluster c = rack(4, 10, 6);
  std::vector<Service> services;
  for (int s = 0; s < 30; ++s)
    services.push_back(svc(fmt::format("s{}", s), 2 + s % 9, 1 + s % 12));
  auto r = place_services(c, services);
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->unaligned, 0);
  ASSERT_TRUE(validate_cluster(c).ok()) << validate_cluster(c).error().describe();
  std::map<std::pair<std::string, int>, std::set<int>> slots_of_ud;  // (service, ud) -> slots
  std::map<std::pair<std::string, int>, std::set<int>> uds_of_slot;  // (service, slot) -> uds
  for (const auto& i : c.instances) {
    const Host* h = c.find_host(i.host);
    ASSERT_TRUE(h->ud_slot.has_value()) << "host " << h->id << " used without a slot";
    slots_of_ud[{i.service, i.ud}].insert(*h->ud_slot);
    uds_of_slot[{i.service, *h->ud_slot}].insert(i.ud);
  }
  for (const auto& [k, v] : slots_of_ud) EXPECT_EQ(v.size(), 1u) << k.first << " UD " << k.second;
  for (const auto& [k, v] : uds_of_slot) EXPECT_EQ(v.size(), 1u) << k.first << " slot " << k.second;
}

TEST(Placement, OnlyReadyHostsReceiveInstances) {
  Cluster c = rack(2, 3);
  c.hosts[0].state = HostState::updating;
  c.hosts[4].state = HostState::unhealthy;
  ASSERT_TRUE(place_service(c, svc("web", 8, 4)).ok());
  for (const auto& i : c.instances) {
    EXPECT_NE(i.host, c.hosts[0].id);
    EXPECT_NE(i.host, c.hosts[4].id);
  }
}

TEST(Placement, RefusesWhenTooFewHostsForDistinctUdsAndNamesTheRule) {
  Cluster c = rack(1, 3, 10);
  auto r = place_service(c, svc("db", 5, 5));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::invalid_state);
  EXPECT_EQ(r.error().message.rfind("placement rule 'different UDs on different hosts'", 0), 0u)
      << r.error().message;
  EXPECT_NE(r.error().message.find("'db'"), std::string::npos);
  EXPECT_TRUE(c.instances.empty());
  EXPECT_TRUE(c.services.empty());
}

TEST(Placement, RefusesWhenCapacityIsExhaustedAndNamesTheRule) {
  Cluster c = rack(2, 2, 1);
  ASSERT_TRUE(place_service(c, svc("a", 3)).ok());
  auto r = place_service(c, svc("b", 2));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::invalid_state);
  EXPECT_EQ(r.error().message.rfind("placement rule 'capacity'", 0), 0u) << r.error().message;
  EXPECT_EQ(c.instances.size(), 3u);
}

TEST(Placement, RefusesWithoutAReadyHostAndNamesTheRule) {
  Cluster c = rack(2, 2);
  for (auto& h : c.hosts) h.state = HostState::offline;
  auto r = place_service(c, svc("web", 2));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message.rfind("placement rule 'only Ready hosts'", 0), 0u)
      << r.error().message;
}

TEST(Placement, RefusesWhenEveryFreeHostHoldsAnotherUd) {
  // Two hosts, one with room for 3: instance 2 (UD2) would have to join UD0 or UD1.
  Cluster c;
  c.hosts = {Host{"a", 0, 3}, Host{"b", 1, 1}};
  auto r = place_service(c, svc("web", 3, 3));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message.rfind("placement rule 'different UDs on different hosts'", 0), 0u)
      << r.error().message;
}

TEST(Placement, RefusesADuplicateServiceAndBadUdCount) {
  Cluster c = rack(2, 2);
  ASSERT_TRUE(place_service(c, svc("web", 2)).ok());
  EXPECT_EQ(place_service(c, svc("web", 2)).condition(), Condition::already_exists);
  EXPECT_EQ(place_service(c, svc("x", 2, 21)).condition(), Condition::invalid_argument);
  EXPECT_EQ(place_service(c, svc("y", 2, 0)).condition(), Condition::invalid_argument);
}

TEST(Placement, ScatteredPlacementKeepsTheHardRules) {
  Cluster c = rack(3, 8, 6);
  for (int s = 0; s < 20; ++s) {
    ASSERT_TRUE(
        place_service_scattered(c, svc(fmt::format("s{}", s), 2 + s % 7, 1 + s % 6), s).ok());
  }
  EXPECT_TRUE(validate_cluster(c).ok()) << validate_cluster(c).error().describe();
}

// --- healing -----------------------------------------------------------------------------------

TEST(Healing, PlacesLostInstancesInAFaultDomainWithoutSurvivors) {
  Cluster c = rack(3, 3);
  ASSERT_TRUE(place_service(c, svc("web", 2)).ok());  // FD0 and FD1
  const Instance lost = *c.find_instance("web", 0);
  auto plan = place_again(c, {lost});
  ASSERT_TRUE(plan.ok()) << plan.error().describe();
  ASSERT_EQ(plan->placed.size(), 1u);
  EXPECT_NE(plan->placed[0].host, lost.host);
  EXPECT_NE(plan->placed[0].fd, 1) << "FD 1 holds the survivor";
  EXPECT_EQ(plan->placed[0].ud, lost.ud);
  EXPECT_TRUE(plan->relaxed.empty());
  apply_healing(c, *plan);
  EXPECT_TRUE(validate_cluster(c).ok());
}

TEST(Healing, RelaxesOnlyFaultDomainDiversityAndSaysSo) {
  // Two FDs, both hold a survivor once FD0's host dies: the new home shares an FD.
  Cluster c = rack(2, 3);
  ASSERT_TRUE(place_service(c, svc("web", 4, 4)).ok());
  const Instance lost = *c.find_instance("web", 0);
  auto plan = place_again(c, {lost});
  ASSERT_TRUE(plan.ok()) << plan.error().describe();
  ASSERT_EQ(plan->relaxed.size(), 1u);
  EXPECT_NE(plan->relaxed[0].find("fault-domain diversity relaxed"), std::string::npos);
  apply_healing(c, *plan);
  EXPECT_TRUE(validate_cluster(c).ok()) << validate_cluster(c).error().describe();
}

TEST(Healing, NeverPutsTwoUdsOfAServiceOnOneHost) {
  // Every other host already holds another UD of the service: refuse, naming the rule.
  Cluster c = rack(1, 3, 5);
  ASSERT_TRUE(place_service(c, svc("web", 3, 3)).ok());
  const Instance lost = *c.find_instance("web", 1);
  auto plan = place_again(c, {lost});
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.error().message.find("different UDs on different hosts"), std::string::npos);
}

TEST(Healing, AllInstancesOfADeadHostKeepTheUdRule) {
  Cluster c = rack(4, 6, 6);
  std::vector<Service> services;
  for (int s = 0; s < 25; ++s) services.push_back(svc(fmt::format("s{}", s), 2 + s % 8, 2 + s % 5));
  ASSERT_TRUE(place_services(c, services).ok());
  for (int dead = 0; dead < 6; ++dead) {
    Cluster copy = c;
    copy.hosts[dead].state = HostState::offline;
    std::vector<Instance> lost;
    for (const auto* i : copy.instances_on(copy.hosts[dead].id)) lost.push_back(*i);
    auto plan = place_again(copy, lost);
    ASSERT_TRUE(plan.ok()) << plan.error().describe();
    apply_healing(copy, *plan);
    ASSERT_TRUE(validate_cluster(copy).ok()) << validate_cluster(copy).error().describe();
    for (const auto& p : plan->placed) EXPECT_NE(p.host, copy.hosts[dead].id);
  }
}

// Healing and the walk: a hand-made allocator-style layout (every used host slotted, each
// service's UDs on distinct slots).
struct SlottedHost {
  std::string id;
  int fd;
  int capacity;
  std::optional<int> slot;
};
struct Placed {
  std::string service;
  int index;
  int ud;
  std::string host;
};
struct SlottedRack {
  Cluster c;
  void hosts(const std::vector<SlottedHost>& hosts) {
    for (const SlottedHost& s : hosts) {
      Host h{s.id, s.fd, s.capacity};
      h.ud_slot = s.slot;
      c.hosts.push_back(std::move(h));
    }
  }
  void put(const std::vector<Placed>& placed) {
    for (const Placed& p : placed) {
      c.instances.push_back(
          Instance{p.service, p.index, p.ud, c.find_host(p.host)->fault_domain, p.host});
    }
  }
  // web/0 placed again (its host a0 dies in every rack here).
  Result<HealingPlan> place_web0_again() const {
    return place_again(c, {*c.find_instance("web", 0)});
  }
};

// web (3 UDs) over FD0..2 on slots 0, 1, 2; `other` (4 UDs) fills slots 0..3, so the walk's bound
// is 4. web/0's host a0 dies. FD1 and FD2 hold one web each (a tie); UD0's own slot has no room
// in either; b2 (FD1, slot 1) has the most room but slot 1 holds web's UD1; c0 (FD2, slot 3)
// holds no web at all.
SlottedRack web_on_three_slots(int c0_capacity) {
  SlottedRack r;
  r.hosts({{"a0", 0, 2, 0},
           {"b0", 1, 1, 0},
           {"b1", 1, 2, 1},
           {"b2", 1, 6, 1},
           {"c1", 2, 2, 2},
           {"c0", 2, c0_capacity, 3}});
  r.c.services = {svc("web", 3, 3), svc("other", 4, 4)};
  r.put({{"web", 0, 0, "a0"},
         {"web", 1, 1, "b1"},
         {"web", 2, 2, "c1"},
         {"other", 0, 0, "b0"},
         {"other", 1, 1, "b2"},
         {"other", 2, 2, "c1"},
         {"other", 3, 3, "c0"}});
  r.c.find_host("a0")->state = HostState::unhealthy;
  return r;
}

TEST(Healing, PrefersASlotFreeOfTheServicesOtherUdsOverTheMostRoom) {
  SlottedRack r = web_on_three_slots(2);
  ASSERT_TRUE(validate_cluster(r.c).ok()) << validate_cluster(r.c).error().describe();
  auto plan = r.place_web0_again();
  ASSERT_TRUE(plan.ok()) << plan.error().describe();
  ASSERT_EQ(plan->placed.size(), 1u);
  EXPECT_EQ(plan->placed[0].host, "c0") << "slot 3 holds no web: the walk keeps its bound";
  EXPECT_EQ(plan->placed[0].ud, 0);
  EXPECT_EQ(plan->off_slot, 0);
  EXPECT_TRUE(plan->walk_cost.empty());
  apply_healing(r.c, *plan);
  ASSERT_TRUE(validate_cluster(r.c).ok());
  auto walk = plan_walk(r.c);
  ASSERT_TRUE(walk.ok()) << walk.error().describe();
  EXPECT_EQ(walk->lower_bound, 4);
  EXPECT_EQ(walk->batches.size(), 4u);
  EXPECT_EQ(walk->method, "slots") << "the hosts' slots are still a walk";
}

TEST(Healing, SaysWhatItCostTheWalkWhenNoSlotIsFree) {
  // c0 is full: only b2 (slot 1, which holds web's UD1) is left.
  SlottedRack r = web_on_three_slots(1);
  auto plan = r.place_web0_again();
  ASSERT_TRUE(plan.ok()) << plan.error().describe();
  ASSERT_EQ(plan->placed.size(), 1u);
  EXPECT_EQ(plan->placed[0].host, "b2");
  EXPECT_EQ(plan->off_slot, 1);
  ASSERT_EQ(plan->walk_cost.size(), 1u);
  EXPECT_NE(plan->walk_cost[0].find("web/0:"), std::string::npos) << plan->walk_cost[0];
  EXPECT_NE(plan->walk_cost[0].find("the walk may need a batch more"), std::string::npos)
      << plan->walk_cost[0];
  apply_healing(r.c, *plan);
  EXPECT_TRUE(validate_cluster(r.c).ok()) << "the UD rule holds all the same";
}

TEST(Healing, FaultDomainDiversityStillComesBeforeTheWalk) {
  // web spans FD0 and FD1 only; a0 (FD0) dies. FD1 has a walk-safe host (b3, slot 3), FD2 only a
  // host whose slot holds web's UD1: FD2 wins, and the cost is reported.
  SlottedRack r;
  r.hosts({{"a0", 0, 2, 0}, {"b1", 1, 2, 1}, {"b3", 1, 4, 3}, {"c1", 2, 2, 1}});
  r.c.services = {svc("web", 2, 2), svc("other", 4, 4)};
  r.put({{"web", 0, 0, "a0"},
         {"web", 1, 1, "b1"},
         {"other", 0, 0, "a0"},
         {"other", 1, 1, "c1"},
         {"other", 3, 3, "b3"}});
  r.c.services[1].instance_count = 3;  // other/2 was never placed: indices 0, 1, 3 suffice here
  r.c.instances.back().index = 2;
  r.c.find_host("a0")->state = HostState::unhealthy;
  ASSERT_TRUE(validate_cluster(r.c).ok()) << validate_cluster(r.c).error().describe();
  auto plan = r.place_web0_again();
  ASSERT_TRUE(plan.ok()) << plan.error().describe();
  EXPECT_EQ(plan->placed[0].fd, 2) << "a fault domain without web";
  EXPECT_TRUE(plan->relaxed.empty());
  EXPECT_EQ(plan->off_slot, 1);
}

TEST(Healing, AnEmptyHostTakesTheDeadHostsSlotWhenTheUdHasNoSurvivor) {
  SlottedRack r;
  r.hosts({{"a0", 0, 2, 5},
           {"b1", 1, 2, 1},
           {"c9", 2, 2, std::nullopt}});  // c9 empty: its slot is open
  r.c.services = {svc("web", 2, 2)};
  r.put({{"web", 0, 0, "a0"}, {"web", 1, 1, "b1"}});
  r.c.find_host("a0")->state = HostState::unhealthy;
  auto plan = r.place_web0_again();
  ASSERT_TRUE(plan.ok()) << plan.error().describe();
  EXPECT_EQ(plan->placed[0].host, "c9");
  ASSERT_EQ(plan->new_slots.size(), 1u);
  EXPECT_EQ(plan->new_slots[0], (std::pair<std::string, int>{"c9", 5}))
      << "UD0's slot was the dead host's";
}

TEST(Healing, AFaultDomainHealedHostByHostKeepsTheWalkAtItsLowerBound) {
  // Allocator-made clusters; every host of FD0 fails and is healed one after another (as the
  // controller does). Before, healing looked only for the UD's own slot and these walks needed
  // one to five batches over the bound.
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    Cluster c = rack(3, 20, 12);
    std::mt19937_64 rng(seed);
    std::vector<Service> services = {svc("wide", 12, 12)};
    for (int s = 0; s < 40; ++s) {
      services.push_back(svc(fmt::format("s{}", s), 2 + static_cast<int>(rng() % 12),
                             3 + static_cast<int>(rng() % 9)));
    }
    ASSERT_TRUE(place_services(c, services).ok());
    for (auto& h : c.hosts) {
      if (h.fault_domain == 0) h.state = HostState::unhealthy;
    }
    int off_slot = 0;
    for (const auto& h : c.hosts) {
      if (h.fault_domain != 0) continue;
      std::vector<Instance> lost;
      for (const auto* i : c.instances_on(h.id)) lost.push_back(*i);
      auto plan = place_again(c, lost);
      ASSERT_TRUE(plan.ok()) << plan.error().describe();
      off_slot += plan->off_slot;
      apply_healing(c, *plan);
    }
    ASSERT_TRUE(validate_cluster(c).ok()) << validate_cluster(c).error().describe();
    for (const auto& i : c.instances) EXPECT_NE(i.fd, 0) << i.service << "/" << i.index;
    // Fault-domain balance is kept: no service has more in one surviving FD than an even split.
    for (const auto& s : c.services) {
      std::map<int, int> in_fd;
      for (const auto* i : c.instances_of(s.name)) ++in_fd[i->fd];
      for (auto [fd, n] : in_fd)
        EXPECT_LE(n, (s.instance_count + 1) / 2) << s.name << " in FD " << fd;
    }
    auto walk = plan_walk(c);
    ASSERT_TRUE(walk.ok()) << walk.error().describe();
    EXPECT_EQ(walk->batches.size(), static_cast<size_t>(walk->lower_bound)) << "seed " << seed;
    EXPECT_EQ(off_slot, 0) << "seed " << seed;
  }
}

// --- JSON --------------------------------------------------------------------------------------

TEST(ClusterJson, RoundTripsAPlacedCluster) {
  Cluster c = rack(2, 3);
  c.hosts[5].state = HostState::updating;
  ASSERT_TRUE(place_service(c, svc("web", 4)).ok());
  auto back = cluster_from_json(to_json(c));
  ASSERT_TRUE(back.ok()) << back.error().describe();
  EXPECT_EQ(json::serialize(to_json(*back)), json::serialize(to_json(c)));
}

TEST(ClusterJson, ErrorsNameTheElementAndField) {
  json::object bad_host{
      {"hosts", json::array{json::object{{"id", "a"}, {"fault_domain", 0}, {"capacity", 2}},
                            json::object{{"id", "b"}, {"fault_domain", -1}, {"capacity", 2}}}}};
  auto r = cluster_from_json(bad_host);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "hosts[1]: field 'fault_domain' must be an integer in 0..999");

  auto s =
      service_from_json(json::object{{"name", "web"}, {"instance_count", 3}, {"ud_count", 21}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("'ud_count'"), std::string::npos);

  auto u =
      host_from_json(json::object{{"id", "a"}, {"fault_domain", 0}, {"capacity", 1}, {"rack", 2}});
  ASSERT_FALSE(u.ok());
  EXPECT_NE(u.error().message.find("'rack'"), std::string::npos);

  auto st = host_from_json(
      json::object{{"id", "a"}, {"fault_domain", 0}, {"capacity", 1}, {"state", "Sleeping"}});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("'state'"), std::string::npos);
}

TEST(ClusterJson, RefusesAnImportThatBreaksTheUdRule) {
  Cluster c = rack(1, 2);
  c.services.push_back(svc("web", 2));
  c.instances = {Instance{"web", 0, 0, 0, "fd0-h0"}, Instance{"web", 1, 1, 0, "fd0-h0"}};
  auto r = cluster_from_json(to_json(c));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::invalid_state);
  EXPECT_NE(r.error().message.find("holds UD 0 and UD 1 of service 'web'"), std::string::npos)
      << r.error().message;
}

TEST(ClusterJson, RefusesInstancesReferringToUnknownHostsOrWrongFaultDomain) {
  Cluster c = rack(2, 1);
  c.services.push_back(svc("web", 1));
  c.instances = {Instance{"web", 0, 0, 0, "nowhere"}};
  EXPECT_NE(cluster_from_json(to_json(c)).error().message.find("unknown host 'nowhere'"),
            std::string::npos);
  c.instances = {Instance{"web", 0, 0, 0, "fd1-h0"}};
  EXPECT_NE(cluster_from_json(to_json(c)).error().message.find("is in FD 1"), std::string::npos);
}

}  // namespace
}  // namespace fabriclab::orchestrator
