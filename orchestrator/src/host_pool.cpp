#include "host_pool.hpp"

#include <algorithm>
#include <map>
#include <set>

namespace fabriclab::orchestrator::detail {

HostPool::HostPool(const Cluster& c, const std::vector<Instance>& excluded) {
  hosts.reserve(c.hosts.size());
  for (size_t i = 0; i < c.hosts.size(); ++i) {
    const Host& h = c.hosts[i];
    hosts.push_back(PoolHost{&h, h.capacity, true, h.ud_slot.value_or(-1)});
    by_id_.emplace(h.id, static_cast<int>(i));
  }
  std::set<std::pair<std::string_view, int>> gone;
  for (const auto& e : excluded) gone.emplace(e.service, e.index);
  for (const auto& inst : c.instances) {
    if (gone.contains({inst.service, inst.index})) continue;
    int h = index_of(inst.host);
    if (h < 0) continue;
    hosts[h].free -= 1;
    hosts[h].empty = false;
  }
  // A host holding instances without a recorded slot was not laid out by the allocator: it has
  // no slot, and the allocator only uses it when nothing aligned is left.
  for (auto& h : hosts) {
    if (h.empty) h.slot = -1;
  }
}

int HostPool::index_of(std::string_view id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? -1 : it->second;
}

void HostPool::assign_empty_slots(int slot_count) {
  if (slot_count <= 0) return;
  // Capacity per (fd, slot) and per slot, counting the hosts whose slot is settled.
  std::map<int, std::vector<long>> per_fd;
  std::vector<long> global(slot_count, 0);
  for (const auto& h : hosts) {
    auto& v = per_fd[h.host->fault_domain];
    v.resize(slot_count, 0);
    if (!h.empty && h.slot >= 0 && h.slot < slot_count) {
      v[h.slot] += h.host->capacity;
      global[h.slot] += h.host->capacity;
    }
  }
  // Round by round over the fault domains, so each domain's first empty host gets a different
  // slot and small domains complement each other.
  std::map<int, std::vector<int>> empties;
  for (int i = 0; i < static_cast<int>(hosts.size()); ++i) {
    if (hosts[i].empty && hosts[i].ready()) empties[hosts[i].host->fault_domain].push_back(i);
  }
  for (size_t round = 0;; ++round) {
    bool any = false;
    for (auto& [fd, list] : empties) {
      if (round >= list.size()) continue;
      any = true;
      auto& v = per_fd[fd];
      int best = 0;
      for (int t = 1; t < slot_count; ++t) {
        if (v[t] < v[best] || (v[t] == v[best] && global[t] < global[best])) best = t;
      }
      PoolHost& h = hosts[list[round]];
      h.slot = best;
      v[best] += h.host->capacity;
      global[best] += h.host->capacity;
    }
    if (!any) break;
  }
}

void HostPool::take(int h, int slot) {
  hosts[h].free -= 1;
  if (hosts[h].empty && slot >= 0) hosts[h].slot = slot;
  hosts[h].empty = false;
}

int slot_count(const Cluster& c, const Service* extra) {
  int most = 0;
  for (const auto& s : c.services) most = std::max(most, std::min(s.instance_count, s.ud_count));
  if (extra) most = std::max(most, std::min(extra->instance_count, extra->ud_count));
  return most;
}

}  // namespace fabriclab::orchestrator::detail
