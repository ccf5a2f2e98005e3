#pragma once
// Private to placement.cpp and healing.cpp: a working copy of the hosts' free capacity and slots,
// so a placement can be computed without touching the cluster and committed at the end.

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab::orchestrator::detail {

struct PoolHost {
  const Host* host = nullptr;
  int free = 0;       // capacity minus instances (excluding the ones being re-placed)
  bool empty = true;  // holds no instance: its slot is still open
  int slot = -1;      // the host's slot; for an empty host a tentative one (-1: none)
  bool ready() const { return host->state == HostState::ready; }
  bool usable() const { return ready() && free > 0; }
};

class HostPool {
 public:
  // `excluded` instances (service, index) count as gone: their capacity is free again.
  explicit HostPool(const Cluster& c, const std::vector<Instance>& excluded = {});

  std::vector<PoolHost> hosts;
  int index_of(std::string_view id) const;

  // Gives every empty host a tentative slot in [0, slot_count) so that in each fault domain the
  // capacity per slot is as even as possible (ties go to the slot with the least capacity in the
  // whole cluster, so small fault domains complement each other).
  void assign_empty_slots(int slot_count);

  // Records one instance on host `h` in slot `slot` (-1 keeps the host's slot).
  void take(int h, int slot);

 private:
  std::unordered_map<std::string_view, int> by_id_;
};

// The slot range the allocator uses: the most UDs any service spans (min(instances, ud_count)),
// which is also the walk's lower bound.
int slot_count(const Cluster& c, const Service* extra = nullptr);

}  // namespace fabriclab::orchestrator::detail
