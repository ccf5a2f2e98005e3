// Service healing (docs/placement.md "Healing"): when a host dies, its instances get new homes.
//
// The UD rule stays hard: a new home never holds another UD of the instance's service, counting
// the survivors and the instances re-placed earlier in the same call. Fault-domain diversity is
// what healing exists for ("a new VM in an FD other than the survivor's"), so a fault domain
// holding none of the service comes first; when every usable domain already holds the service,
// the plan says the rule was relaxed.
//
// Then the walk. On an allocator-made cluster every used host carries a slot, and the walk is one
// batch per slot because no slot holds two UDs of one service (placement.cpp). A new home keeps
// that true exactly when its slot holds no UD of the service other than the instance's own: the
// UD's own slot (read from its surviving instances, else the dead host's slot) is one such slot,
// but so is any slot the service does not use at all, which on a cluster whose widest service
// spans L UDs leaves L - (UDs of the service) + 1 slots to choose from instead of one. So the
// order among the hosts that keep the UD rule is:
//   1. the fault domain with the fewest of the service's instances (none: diversity; else
//      balance, which is what a second fault-domain failure takes);
//   2. walk-safe: a used host of the UD's own slot, then a used host of another slot free of the
//      service's other UDs, then an empty host (it takes the UD's slot); anything else may cost
//      the walk a batch, and the plan says so per instance (off_slot, walk_cost);
//   3. the most free capacity.
// Only the UD's own slot counted before, after balance: with three fault domains and one dead,
// the emptier survivor often had no room in that slot and the healed instance went off-slot, so
// that after a whole fault domain was healed the walk needed 1-5 batches over its bound. With any
// free slot counting, fault-domain balance and the bound are kept together
// (fabriclab-bench-planner's healed case, docs/benchmarks.md).

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include "fabriclab/orchestrator/placement.hpp"
#include "host_pool.hpp"

namespace fabriclab::orchestrator {
namespace {

// One service as healing sees it: where its instances are (survivors, then the re-placed ones).
struct ServiceLayout {
  std::unordered_map<int, int> ud_on;        // host index -> UD
  std::map<int, std::set<int>> uds_in_slot;  // slot -> UDs on the slotted hosts of that slot
  std::map<int, int> slot_of_ud;             // UD -> a slot one of its instances is on
  std::map<int, int> in_fd;                  // fault domain -> instances there

  void add(const detail::PoolHost& h, int host_index, int ud) {
    ud_on[host_index] = ud;
    ++in_fd[h.host->fault_domain];
    if (h.slot >= 0) {
      uds_in_slot[h.slot].insert(ud);
      slot_of_ud.emplace(ud, h.slot);
    }
  }
  // No other UD of the service in `slot`: a host there holding `ud` keeps the slots a walk.
  bool slot_free_for(int slot, int ud) const {
    auto it = uds_in_slot.find(slot);
    return it == uds_in_slot.end() ||
           std::all_of(it->second.begin(), it->second.end(), [&](int u) { return u == ud; });
  }
};

// Walk-safety rank of host `h` for UD `ud` whose slot is `slot` (-1: unknown): 0 a used host of
// the UD's slot, 1 a used host of a slot free of other UDs, 2 an empty host, 3 neither.
int walk_rank(const detail::PoolHost& h, const ServiceLayout& s, int ud, int slot) {
  if (h.empty) return slot < 0 || s.slot_free_for(slot, ud) ? 2 : 3;
  if (h.slot < 0) return 3;
  if (!s.slot_free_for(h.slot, ud)) return 3;
  return h.slot == slot ? 0 : 1;
}

}  // namespace

Result<HealingPlan> place_again(const Cluster& cluster, const std::vector<Instance>& lost) {
  detail::HostPool pool(cluster, lost);
  std::set<std::pair<std::string_view, int>> gone;
  for (const auto& l : lost) gone.emplace(l.service, l.index);
  std::unordered_map<std::string_view, ServiceLayout> layout;
  for (const auto& inst : cluster.instances) {
    if (gone.contains({inst.service, inst.index})) continue;
    int h = pool.index_of(inst.host);
    if (h >= 0) layout[inst.service].add(pool.hosts[h], h, inst.ud);
  }
  HealingPlan plan;
  for (const auto& l : lost) {
    const Service* s = cluster.find_service(l.service);
    if (s == nullptr) {
      return make_error(Condition::not_found,
                        fmt::format("instance {}/{} names unknown service", l.service, l.index));
    }
    auto& mine = layout[l.service];
    const int old = pool.index_of(l.host);
    // The UD's slot: where its survivors are, else the dead host's (the pool sees that host as
    // empty, its instances being the lost ones, so it is read from the cluster).
    int slot = -1;
    if (auto it = mine.slot_of_ud.find(l.ud); it != mine.slot_of_ud.end()) {
      slot = it->second;
    } else if (old >= 0 && pool.hosts[old].host->ud_slot) {
      slot = *pool.hosts[old].host->ud_slot;
    }

    int best = -1;
    std::tuple<int, int, int> best_key;  // fault domain count, walk rank, -free
    for (int i = 0; i < static_cast<int>(pool.hosts.size()); ++i) {
      const auto& h = pool.hosts[i];
      if (i == old || !h.usable()) continue;
      auto it = mine.ud_on.find(i);
      if (it != mine.ud_on.end() && it->second != l.ud) continue;
      auto fd = mine.in_fd.find(h.host->fault_domain);
      const int fd_count = fd == mine.in_fd.end() ? 0 : fd->second;
      std::tuple<int, int, int> key{fd_count, walk_rank(h, mine, l.ud, slot), -h.free};
      if (best < 0 || key < best_key) best = i, best_key = key;
    }
    if (best < 0) {
      return make_error(
          Condition::invalid_state,
          fmt::format("placement rule 'different UDs on different hosts': no Ready host with free "
                      "capacity can take instance {}/{} (UD {}) without holding another UD of '{}'",
                      l.service, l.index, l.ud, l.service));
    }
    auto& h = pool.hosts[best];
    if (std::get<0>(best_key) > 0) {
      plan.relaxed.push_back(fmt::format(
          "{}/{}: fault-domain diversity relaxed: every fault domain with a usable host already "
          "holds an instance of '{}' (placed in FD {})",
          l.service, l.index, l.service, h.host->fault_domain));
    }
    if (std::get<1>(best_key) == 3) {
      ++plan.off_slot;
      plan.walk_cost.push_back(fmt::format(
          "{}/{}: no host with room in a slot free of other UDs of '{}': the walk may need a batch "
          "more (placed on {}, slot {})",
          l.service, l.index, l.service, h.host->id, h.empty ? slot : h.slot));
    }
    if (h.empty && slot >= 0) plan.new_slots.emplace_back(h.host->id, slot);
    pool.take(best, h.empty ? slot : -1);
    mine.add(h, best, l.ud);
    Instance moved = l;
    moved.host = h.host->id;
    moved.fd = h.host->fault_domain;
    plan.placed.push_back(std::move(moved));
  }
  return plan;
}

void apply_healing(Cluster& cluster, const HealingPlan& plan) {
  std::map<std::pair<std::string_view, int>, const Instance*> moved;
  for (const auto& p : plan.placed)
    moved.emplace(std::pair{std::string_view(p.service), p.index}, &p);
  for (auto& inst : cluster.instances) {
    auto it = moved.find({inst.service, inst.index});
    if (it != moved.end()) inst = *it->second;
  }
  for (const auto& [id, slot] : plan.new_slots) {
    if (Host* h = cluster.find_host(id)) h->ud_slot = slot;
  }
}

}  // namespace fabriclab::orchestrator
