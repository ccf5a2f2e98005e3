// Service healing (docs/placement.md "Healing"): when a host dies, its instances get new homes.
//
// The UD rule stays hard: a new home never holds another UD of the instance's service, counting
// the survivors and the instances re-placed earlier in the same call. Fault-domain diversity is
// what healing exists for ("a new VM in an FD other than the survivor's"), so it is the first
// preference; when every usable domain already holds the service, the domain with the fewest of
// its instances wins and the plan says the rule was relaxed. Then slot alignment: the UD's slot
// is read from the surviving instances of that UD on slotted hosts, else from the dead host's
// slot; a host on that slot (or an empty one, which takes it) keeps the walk at its lower bound.
// Healing can not always keep alignment (the slot may be full in the chosen domain); the planner
// copes with the result.

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include "fabriclab/orchestrator/placement.hpp"
#include "host_pool.hpp"

namespace fabriclab::orchestrator {

Result<HealingPlan> place_again(const Cluster& cluster, const std::vector<Instance>& lost) {
  detail::HostPool pool(cluster, lost);
  std::set<std::pair<std::string_view, int>> gone;
  for (const auto& l : lost) gone.emplace(l.service, l.index);
  // Per service: host index -> UD, over the survivors (and later the re-placed instances).
  std::unordered_map<std::string_view, std::unordered_map<int, int>> ud_on;
  for (const auto& inst : cluster.instances) {
    if (gone.contains({inst.service, inst.index})) continue;
    int h = pool.index_of(inst.host);
    if (h >= 0) ud_on[inst.service][h] = inst.ud;
  }
  HealingPlan plan;
  for (const auto& l : lost) {
    const Service* s = cluster.find_service(l.service);
    if (s == nullptr) {
      return make_error(Condition::not_found,
                        fmt::format("instance {}/{} names unknown service", l.service, l.index));
    }
    auto& mine = ud_on[l.service];
    std::map<int, int> in_fd;  // fault domain -> instances of the service there
    int slot = -1;
    for (auto [h, ud] : mine) {
      ++in_fd[pool.hosts[h].host->fault_domain];
      if (ud == l.ud && !pool.hosts[h].empty && pool.hosts[h].slot >= 0) slot = pool.hosts[h].slot;
    }
    const int old = pool.index_of(l.host);
    if (slot < 0 && old >= 0) slot = pool.hosts[old].slot;

    int best = -1;
    std::tuple<int, int, int> best_key;
    for (int i = 0; i < static_cast<int>(pool.hosts.size()); ++i) {
      const auto& h = pool.hosts[i];
      if (i == old || !h.usable()) continue;
      auto it = mine.find(i);
      if (it != mine.end() && it->second != l.ud) continue;
      int fd_count = in_fd.contains(h.host->fault_domain) ? in_fd[h.host->fault_domain] : 0;
      int aligned = (slot >= 0 && !h.empty && h.slot == slot) ? 0 : (h.empty ? 1 : 2);
      std::tuple<int, int, int> key{fd_count, aligned, -h.free};
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
    if (h.empty && slot >= 0) plan.new_slots.emplace_back(h.host->id, slot);
    pool.take(best, h.empty ? slot : -1);
    mine[best] = l.ud;
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
