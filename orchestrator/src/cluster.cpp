#include "fabriclab/orchestrator/cluster.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

namespace fabriclab::orchestrator {
namespace {

constexpr std::string_view kHostStates[] = {"Ready",   "Updating", "Unhealthy",
                                            "Offline", "Fenced",   "Reconciling"};

}  // namespace

std::string_view to_string(HostState s) { return kHostStates[static_cast<int>(s)]; }

Result<HostState> parse_host_state(std::string_view s, std::string_view field) {
  return enum_from_name<HostState>(kHostStates, s, field);
}

const Host* Cluster::find_host(std::string_view id) const {
  for (const auto& h : hosts) {
    if (h.id == id) return &h;
  }
  return nullptr;
}

Host* Cluster::find_host(std::string_view id) {
  return const_cast<Host*>(static_cast<const Cluster*>(this)->find_host(id));
}

const Service* Cluster::find_service(std::string_view name) const {
  for (const auto& s : services) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

const Instance* Cluster::find_instance(std::string_view service, int index) const {
  for (const auto& i : instances) {
    if (i.service == service && i.index == index) return &i;
  }
  return nullptr;
}

std::unordered_map<std::string, int> Cluster::instance_counts() const {
  std::unordered_map<std::string, int> out;
  for (const auto& i : instances) ++out[i.host];
  return out;
}

std::vector<const Instance*> Cluster::instances_of(std::string_view service) const {
  std::vector<const Instance*> out;
  for (const auto& i : instances) {
    if (i.service == service) out.push_back(&i);
  }
  return out;
}

std::vector<const Instance*> Cluster::instances_on(std::string_view host) const {
  std::vector<const Instance*> out;
  for (const auto& i : instances) {
    if (i.host == host) out.push_back(&i);
  }
  return out;
}

std::vector<int> Cluster::fault_domains() const {
  std::set<int> fds;
  for (const auto& h : hosts) fds.insert(h.fault_domain);
  return {fds.begin(), fds.end()};
}

Status validate_cluster(const Cluster& c) {
  auto bad = [](std::string m) { return make_error(Condition::invalid_argument, std::move(m)); };
  std::unordered_map<std::string_view, const Host*> hosts;
  for (const auto& h : c.hosts) {
    if (!hosts.emplace(h.id, &h).second) return bad(fmt::format("duplicate host id '{}'", h.id));
  }
  std::unordered_map<std::string_view, const Service*> services;
  for (const auto& s : c.services) {
    if (!services.emplace(s.name, &s).second) {
      return bad(fmt::format("duplicate service name '{}'", s.name));
    }
  }
  std::set<std::pair<std::string_view, int>> seen;
  std::unordered_map<std::string_view, int> used;
  // (service, host) -> the UD it holds there, to find two UDs of one service on one host.
  std::map<std::pair<std::string_view, std::string_view>, int> ud_on_host;
  for (const auto& i : c.instances) {
    auto s = services.find(i.service);
    if (s == services.end()) {
      return bad(fmt::format("instance {}/{} names unknown service", i.service, i.index));
    }
    auto h = hosts.find(i.host);
    if (h == hosts.end()) {
      return bad(fmt::format("instance {}/{} names unknown host '{}'", i.service, i.index, i.host));
    }
    if (!seen.emplace(i.service, i.index).second) {
      return bad(fmt::format("duplicate instance {}/{}", i.service, i.index));
    }
    if (i.ud < 0 || i.ud >= s->second->ud_count) {
      return bad(fmt::format("instance {}/{} has UD {} but service '{}' has {} UDs", i.service,
                             i.index, i.ud, i.service, s->second->ud_count));
    }
    if (i.fd != h->second->fault_domain) {
      return bad(fmt::format("instance {}/{} says FD {} but host '{}' is in FD {}", i.service,
                             i.index, i.fd, i.host, h->second->fault_domain));
    }
    if (++used[i.host] > h->second->capacity) {
      return make_error(Condition::invalid_state,
                        fmt::format("host '{}' holds more than its capacity of {} instances",
                                    i.host, h->second->capacity));
    }
    auto [it, fresh] =
        ud_on_host.emplace(std::pair{std::string_view(i.service), std::string_view(i.host)}, i.ud);
    if (!fresh && it->second != i.ud) {
      return make_error(
          Condition::invalid_state,
          fmt::format("placement rule 'different UDs on different hosts': host '{}' holds UD {} "
                      "and UD {} of service '{}'",
                      i.host, std::min(it->second, i.ud), std::max(it->second, i.ud), i.service));
    }
  }
  return {};
}

}  // namespace fabriclab::orchestrator
