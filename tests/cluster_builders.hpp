#pragma once
// Clusters for the placement and planner tests: a rack of FDS fault domains with HOSTS_PER_FD
// hosts each ("fd0-h0", ...), and a service of N instances over UDS update domains.

#include <fmt/format.h>

#include <string>
#include <utility>

#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab::testing {

inline orchestrator::Cluster rack(int fds, int hosts_per_fd, int capacity = 4) {
  orchestrator::Cluster c;
  for (int f = 0; f < fds; ++f) {
    for (int h = 0; h < hosts_per_fd; ++h) {
      c.hosts.push_back(orchestrator::Host{fmt::format("fd{}-h{}", f, h), f, capacity});
    }
  }
  return c;
}

inline orchestrator::Service svc(std::string name, int n, int uds = orchestrator::kDefaultUdCount) {
  return orchestrator::Service{std::move(name), n, uds, "guest-1", 256};
}

}  // namespace fabriclab::testing
