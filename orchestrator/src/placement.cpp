// The allocator.
//
// Placement and walk: one design (docs/placement.md). The walk's lower bound L is the most UDs any
// service spans; the hosts holding different UDs of one service must go in different batches.
// If every host carries one of L slots and every service sends its UDs to distinct slots, then
// two hosts of one slot never hold different UDs of one service, each slot is a conflict-free
// batch, and the walk has exactly L batches. So the allocator works in slots:
//
//   1. Hard rules first (Ready hosts exist, enough free capacity, enough usable hosts for the
//      service's distinct UDs); a refusal names the rule.
//   2. Empty hosts have no settled slot: each call gives them tentative slots that even out the
//      capacity per (fault domain, slot). A host's slot is settled by its first instance.
//   3. Fault domains: instance i goes to fds[(start + i) mod F], `start` being the domain with
//      the most free capacity (FD0 on an empty rack, which gives the seeds' examples exactly).
//   4. Slots: UD u of the service takes the unused slot with the most spare capacity in the
//      fault domains its instances go to.
//   5. Hosts: in the instance's (fault domain, slot), a used host with room (packing keeps empty
//      hosts free for services spanning more slots later), else an empty host of that slot, else
//      any empty host of that domain, re-slotted. Only when the domain has no host of the slot
//      left does it look for a host of the slot in another domain still below its fair share
//      (ceil(n / F)), then take an unaligned host, and only when the domain has no usable host at
//      all another domain; each of these is counted in the report, never silent. The UD rule is
//      checked on every choice.

#include "fabriclab/orchestrator/placement.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <map>
#include <random>
#include <unordered_map>

#include "host_pool.hpp"

namespace fabriclab::orchestrator {
namespace {

using detail::HostPool;

Error rule(std::string_view name, std::string detail) {
  return make_error(Condition::invalid_state, fmt::format("placement rule '{}': {}", name, detail));
}

Status check_service(const Cluster& c, const Service& s) {
  if (s.name.empty() || s.name.size() > kMaxNameBytes) {
    return make_error(Condition::invalid_argument, "service name must be 1..64 bytes");
  }
  if (s.instance_count < 1 || s.instance_count > kMaxInstancesPerService) {
    return make_error(Condition::invalid_argument,
                      fmt::format("service '{}': instance_count must be in 1..{}", s.name,
                                  kMaxInstancesPerService));
  }
  if (s.ud_count < 1 || s.ud_count > kMaxUdCount) {
    return make_error(Condition::invalid_argument,
                      fmt::format("service '{}': ud_count must be in 1..{}", s.name, kMaxUdCount));
  }
  if (c.find_service(s.name)) {
    return make_error(Condition::already_exists,
                      fmt::format("service '{}' already exists", s.name));
  }
  return {};
}

Status check_hard_rules(const HostPool& pool, const Service& s) {
  int ready = 0, usable = 0;
  long free = 0;
  for (const auto& h : pool.hosts) {
    if (!h.ready()) continue;
    ++ready;
    if (h.free > 0) ++usable, free += h.free;
  }
  if (ready == 0) {
    return rule("only Ready hosts",
                pool.hosts.empty()
                    ? fmt::format("service '{}' cannot be placed: the cluster has no hosts", s.name)
                    : fmt::format("service '{}' cannot be placed: none of the {} hosts is Ready",
                                  s.name, pool.hosts.size()));
  }
  if (free < s.instance_count) {
    return rule("capacity",
                fmt::format("service '{}' needs {} instances but the {} Ready hosts have only {} "
                            "free",
                            s.name, s.instance_count, ready, free));
  }
  int uds = std::min(s.instance_count, s.ud_count);
  if (usable < uds) {
    return rule("different UDs on different hosts",
                fmt::format("service '{}' spans {} UDs and needs {} distinct hosts, but only {} "
                            "Ready hosts have free capacity",
                            s.name, uds, uds, usable));
  }
  return {};
}

Error no_host_for(const Service& s, int index, int ud) {
  return rule("different UDs on different hosts",
              fmt::format("no Ready host with free capacity can take instance {}/{} (UD {}): "
                          "every one already holds another UD of '{}'",
                          s.name, index, ud, s.name));
}

// Adds the service, its instances and the settled slots of newly used hosts.
void commit(Cluster& c, const Service& s, const HostPool& pool, const PlacementReport& r) {
  for (size_t i = 0; i < pool.hosts.size(); ++i) {
    const auto& h = pool.hosts[i];
    if (!h.empty && h.slot >= 0) c.hosts[i].ud_slot = h.slot;
  }
  c.services.push_back(s);
  c.instances.insert(c.instances.end(), r.placed.begin(), r.placed.end());
}

class Allocator {
 public:
  Allocator(HostPool& pool, const Service& s, int slots) : pool_(pool), s_(s), slots_(slots) {}

  Result<PlacementReport> run() {
    const int n = s_.instance_count, k = s_.ud_count, m = std::min(n, k);
    std::vector<int> fds = usable_fds();
    std::vector<int> fd_of(n);
    for (int i = 0; i < n; ++i) fd_of[i] = fds[(start_index(fds) + i) % fds.size()];
    choose_slots(fd_of, m);
    PlacementReport report;
    for (int i = 0; i < n; ++i) {
      const int u = i % k;
      int h = pick(fd_of[i], u, /*aligned_only=*/true);
      if (h < 0) {
        // Another fault domain still below its fair share may have a host on the UD's slot:
        // the service spans the same domains, evenly, and the walk keeps its bound.
        h = pick_aligned_elsewhere(
            u, (n + static_cast<int>(fds.size()) - 1) / static_cast<int>(fds.size()));
        if (h >= 0) ++report.off_round_robin_fd;
      }
      if (h < 0) h = pick(fd_of[i], u, false);
      if (h < 0) {
        h = pick_other_fd(u);
        if (h >= 0) ++report.off_round_robin_fd;
      }
      if (h < 0) return no_host_for(s_, i, u);
      PoolHost& ph = pool_.hosts[h];
      if (ph.empty) ph.slot = sigma_[u];  // an empty host's slot is open: settle it here
      if (ph.slot != sigma_[u]) ++report.unaligned;
      pool_.take(h, -1);
      ud_on_[h] = u;
      ++in_fd_[ph.host->fault_domain];
      report.placed.push_back(Instance{s_.name, i, u, ph.host->fault_domain, ph.host->id});
    }
    return report;
  }

 private:
  using PoolHost = detail::PoolHost;

  std::vector<int> usable_fds() const {
    std::vector<int> fds;
    for (const auto& h : pool_.hosts) {
      if (h.usable()) fds.push_back(h.host->fault_domain);
    }
    std::sort(fds.begin(), fds.end());
    fds.erase(std::unique(fds.begin(), fds.end()), fds.end());
    return fds;
  }

  size_t start_index(const std::vector<int>& fds) const {
    std::map<int, long> free;
    for (const auto& h : pool_.hosts) {
      if (h.usable()) free[h.host->fault_domain] += h.free;
    }
    size_t best = 0;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (free[fds[i]] > free[fds[best]]) best = i;
    }
    return best;
  }

  void choose_slots(const std::vector<int>& fd_of, int m) {
    // spare[(fd, slot)]: free capacity of the usable hosts settled or tentatively in that slot.
    std::map<std::pair<int, int>, long> spare;
    for (const auto& h : pool_.hosts) {
      if (h.usable() && h.slot >= 0) spare[{h.host->fault_domain, h.slot}] += h.free;
    }
    sigma_.assign(s_.ud_count, -1);
    std::vector<bool> used(std::max(slots_, 1), false);
    for (int u = 0; u < m; ++u) {
      std::map<int, int> demand;  // fd -> instances of UD u there
      for (size_t i = u; i < fd_of.size(); i += s_.ud_count) ++demand[fd_of[i]];
      int best = -1;
      long best_score = std::numeric_limits<long>::min();
      for (int t = 0; t < slots_; ++t) {
        if (used[t]) continue;
        long score = std::numeric_limits<long>::max();
        for (auto [fd, d] : demand) score = std::min(score, spare[{fd, t}] - d);
        if (score > best_score) best = t, best_score = score;
      }
      sigma_[u] = best;
      used[best] = true;
      for (auto [fd, d] : demand) spare[{fd, best}] -= d;
    }
  }

  bool allowed(int h, int u) const {
    auto it = ud_on_.find(h);
    return pool_.hosts[h].usable() && (it == ud_on_.end() || it->second == u);
  }

  // In fault domain `fd`: aligned hosts (used host of `slot` with the most room, then an empty
  // host of `slot`, then any empty host); or, unaligned, the usable host with the most room.
  int pick(int fd, int u, bool aligned_only) const {
    const int slot = sigma_[u];
    int best = -1;
    auto rank = [&](const PoolHost& h) {
      if (!aligned_only) return 0;
      if (!h.empty && h.slot == slot) return 3;
      if (h.empty && h.slot == slot) return 2;
      if (h.empty) return 1;
      return 0;
    };
    for (int i = 0; i < static_cast<int>(pool_.hosts.size()); ++i) {
      const PoolHost& h = pool_.hosts[i];
      if (h.host->fault_domain != fd || !allowed(i, u)) continue;
      int r = rank(h);
      if (aligned_only && r == 0) continue;
      if (best < 0) {
        best = i;
        continue;
      }
      const PoolHost& b = pool_.hosts[best];
      int rb = rank(b);
      if (r > rb || (r == rb && h.free > b.free)) best = i;
    }
    return best;
  }

  // An aligned host in a fault domain holding fewer than `share` instances of the service, the
  // emptiest domain first.
  int pick_aligned_elsewhere(int u, int share) const {
    int best = -1, best_count = share;
    for (int fd : usable_fds()) {
      auto it = in_fd_.find(fd);
      int count = it == in_fd_.end() ? 0 : it->second;
      if (count >= best_count) continue;
      int h = pick(fd, u, true);
      if (h >= 0) best = h, best_count = count;
    }
    return best;
  }

  // Any usable host of the fault domain holding the fewest instances of this service.
  int pick_other_fd(int u) const {
    std::map<int, int> count;
    for (auto [h, ud] : ud_on_) ++count[pool_.hosts[h].host->fault_domain];
    int best = -1;
    for (int i = 0; i < static_cast<int>(pool_.hosts.size()); ++i) {
      if (!allowed(i, u)) continue;
      if (best < 0) {
        best = i;
        continue;
      }
      int ci = count[pool_.hosts[i].host->fault_domain];
      int cb = count[pool_.hosts[best].host->fault_domain];
      if (ci < cb || (ci == cb && pool_.hosts[i].free > pool_.hosts[best].free)) best = i;
    }
    return best;
  }

  HostPool& pool_;
  const Service& s_;
  int slots_;
  std::vector<int> sigma_;
  std::unordered_map<int, int> ud_on_;  // host index -> UD of this service on it
  std::map<int, int> in_fd_;            // fault domain -> instances of this service there
};

}  // namespace

Result<PlacementReport> place_service(Cluster& cluster, const Service& service) {
  FL_RETURN_IF_ERROR(check_service(cluster, service));
  HostPool pool(cluster);
  FL_RETURN_IF_ERROR(check_hard_rules(pool, service));
  const int slots = detail::slot_count(cluster, &service);
  pool.assign_empty_slots(slots);
  Allocator alloc(pool, service, slots);
  FL_ASSIGN_OR_RETURN(PlacementReport report, alloc.run());
  commit(cluster, service, pool, report);
  return report;
}

Result<PlacementReport> place_services(Cluster& cluster, std::vector<Service> services) {
  std::stable_sort(services.begin(), services.end(), [](const Service& a, const Service& b) {
    return std::min(a.instance_count, a.ud_count) > std::min(b.instance_count, b.ud_count);
  });
  // The widest service first fixes the slot range before narrower services settle host slots.
  PlacementReport total;
  for (const auto& s : services) {
    FL_ASSIGN_OR_RETURN(PlacementReport r, place_service(cluster, s));
    total.unaligned += r.unaligned;
    total.off_round_robin_fd += r.off_round_robin_fd;
    total.placed.insert(total.placed.end(), r.placed.begin(), r.placed.end());
  }
  return total;
}

Result<PlacementReport> place_service_scattered(Cluster& cluster, const Service& service,
                                                uint64_t seed) {
  FL_RETURN_IF_ERROR(check_service(cluster, service));
  HostPool pool(cluster);
  FL_RETURN_IF_ERROR(check_hard_rules(pool, service));
  std::mt19937_64 rng(seed);
  std::unordered_map<int, int> ud_on;
  PlacementReport report;
  std::vector<int> candidates;
  for (int i = 0; i < service.instance_count; ++i) {
    const int u = i % service.ud_count;
    candidates.clear();
    for (int h = 0; h < static_cast<int>(pool.hosts.size()); ++h) {
      auto it = ud_on.find(h);
      if (pool.hosts[h].usable() && (it == ud_on.end() || it->second == u)) candidates.push_back(h);
    }
    if (candidates.empty()) return no_host_for(service, i, u);
    int h = candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(rng)];
    pool.hosts[h].free -= 1;  // no slot: this is the layout the allocator would not make
    ud_on[h] = u;
    const Host& host = *pool.hosts[h].host;
    report.placed.push_back(Instance{service.name, i, u, host.fault_domain, host.id});
  }
  cluster.services.push_back(service);
  cluster.instances.insert(cluster.instances.end(), report.placed.begin(), report.placed.end());
  return report;
}

}  // namespace fabriclab::orchestrator
