// The plan validator, the dry run's forecast, and the plan's JSON.
//
// The validator trusts nothing in the plan: it is what the executor runs before a walk starts
// (the plan may come from the journal or from a person), so it checks coverage, the cap and the
// UD rule independently of how the plan was made, and names exactly what is wrong.

#include <fmt/format.h>

#include <boost/describe.hpp>
#include <boost/json.hpp>
#include <map>
#include <set>
#include <unordered_map>

#include "fabriclab/orchestrator/planner.hpp"

namespace fabriclab::orchestrator {
namespace {

Error bad(std::string m) { return make_error(Condition::invalid_argument, std::move(m)); }

// host id -> its instances
std::unordered_map<std::string_view, std::vector<const Instance*>> by_host(const Cluster& c) {
  std::unordered_map<std::string_view, std::vector<const Instance*>> out;
  for (const auto& i : c.instances) out[i.host].push_back(&i);
  return out;
}

}  // namespace

Status validate_plan(const Cluster& c, const Plan& plan, int max_parallel_hosts) {
  std::unordered_map<std::string_view, size_t> batch_of;
  for (const auto& h : c.hosts) batch_of.emplace(h.id, SIZE_MAX);
  const auto instances = by_host(c);
  for (size_t b = 0; b < plan.batches.size(); ++b) {
    const auto& batch = plan.batches[b];
    if (batch.empty()) return bad(fmt::format("batch {} is empty", b));
    if (max_parallel_hosts > 0 && batch.size() > static_cast<size_t>(max_parallel_hosts)) {
      return bad(fmt::format("batch {} has {} hosts, more than max_parallel_hosts {}", b,
                             batch.size(), max_parallel_hosts));
    }
    // service -> (UD, first host holding it in this batch)
    std::unordered_map<std::string_view, std::pair<int, std::string_view>> down;
    for (const auto& id : batch) {
      auto it = batch_of.find(id);
      if (it == batch_of.end()) return bad(fmt::format("batch {}: unknown host '{}'", b, id));
      if (it->second != SIZE_MAX) {
        return bad(fmt::format("host '{}' is in batch {} and batch {}", id, it->second, b));
      }
      it->second = b;
      auto inst = instances.find(id);
      if (inst == instances.end()) continue;
      for (const Instance* i : inst->second) {
        auto [d, fresh] = down.emplace(i->service, std::pair{i->ud, std::string_view(id)});
        if (!fresh && d->second.first != i->ud) {
          return bad(
              fmt::format("batch {}: hosts '{}' and '{}' hold UD {} and UD {} of service "
                          "'{}'",
                          b, d->second.second, id, d->second.first, i->ud, i->service));
        }
      }
    }
  }
  for (const auto& h : c.hosts) {
    if (batch_of.at(h.id) == SIZE_MAX) return bad(fmt::format("host '{}' is in no batch", h.id));
  }
  return {};
}

std::vector<ServiceForecast> forecast(const Cluster& c, const Plan& plan) {
  std::map<std::string_view, ServiceForecast> out;
  std::map<std::string_view, std::set<int>> uds;
  for (const auto& s : c.services) out[s.name].service = s.name;
  for (const auto& i : c.instances) {
    auto& f = out[i.service];
    f.service = i.service;
    ++f.instances;
    uds[i.service].insert(i.ud);
  }
  const auto instances = by_host(c);
  for (const auto& batch : plan.batches) {
    std::map<std::string_view, std::pair<int, std::set<int>>> down;
    for (const auto& id : batch) {
      auto it = instances.find(id);
      if (it == instances.end()) continue;
      for (const Instance* i : it->second) {
        auto& d = down[i->service];
        ++d.first;
        d.second.insert(i->ud);
      }
    }
    for (const auto& [s, d] : down) {
      auto& f = out[s];
      f.max_instances_down = std::max(f.max_instances_down, d.first);
      f.max_uds_down = std::max(f.max_uds_down, static_cast<int>(d.second.size()));
      ++f.batches_touched;
    }
  }
  std::vector<ServiceForecast> list;
  for (auto& [s, f] : out) {
    f.uds_occupied = static_cast<int>(uds[s].size());
    f.keeps_serving = f.instances >= 2 && f.max_instances_down < f.instances;
    list.push_back(std::move(f));
  }
  return list;
}

// Every field under its own name, in declaration order (batches: arrays of host ids).
BOOST_DESCRIBE_STRUCT(Plan, (),
                      (batches, lower_bound, ud_lower_bound, cap_lower_bound, clique_lower_bound,
                       method, iterations))

json::object to_json(const Plan& p) { return json::value_from(p).as_object(); }

// Every field under its own name, in declaration order.
BOOST_DESCRIBE_STRUCT(ServiceForecast, (),
                      (service, instances, uds_occupied, max_instances_down, max_uds_down,
                       batches_touched, keeps_serving))

json::object to_json(const ServiceForecast& f) { return json::value_from(f).as_object(); }

Result<Plan> plan_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(o, {"batches", "lower_bound", "ud_lower_bound", "cap_lower_bound",
                                      "clique_lower_bound", "method", "iterations"}));
  Plan p;
  FL_ASSIGN_OR_RETURN(const json::array* batches, get_array(o, "batches", kMaxHosts));
  size_t total = 0;
  for (size_t b = 0; b < batches->size(); ++b) {
    const auto& v = (*batches)[b];
    if (!v.is_array()) return bad(fmt::format("batches[{}] must be an array of host ids", b));
    auto& out = p.batches.emplace_back();
    for (const auto& h : v.get_array()) {
      if (!h.is_string() || h.get_string().empty() || h.get_string().size() > kMaxNameBytes) {
        return bad(fmt::format("batches[{}] must hold host ids of 1..{} bytes", b, kMaxNameBytes));
      }
      if (++total > kMaxHosts)
        return bad(fmt::format("batches hold more than {} hosts", kMaxHosts));
      out.emplace_back(h.get_string());
    }
  }
  const int64_t max = static_cast<int64_t>(kMaxHosts);
  FL_ASSIGN_OR_RETURN(int64_t lb, get_int_or(o, "lower_bound", 0, max, 0));
  FL_ASSIGN_OR_RETURN(int64_t ud, get_int_or(o, "ud_lower_bound", 0, kMaxUdCount, 0));
  FL_ASSIGN_OR_RETURN(int64_t cap, get_int_or(o, "cap_lower_bound", 0, max, 0));
  FL_ASSIGN_OR_RETURN(int64_t clique, get_int_or(o, "clique_lower_bound", 0, max, 0));
  p.clique_lower_bound = static_cast<int>(clique);
  FL_ASSIGN_OR_RETURN(p.method, get_string(o, "method", 32, false));
  FL_ASSIGN_OR_RETURN(p.iterations, get_int_or(o, "iterations", 0, INT64_MAX, 0));
  p.lower_bound = static_cast<int>(lb);
  p.ud_lower_bound = static_cast<int>(ud);
  p.cap_lower_bound = static_cast<int>(cap);
  return p;
}

}  // namespace fabriclab::orchestrator
