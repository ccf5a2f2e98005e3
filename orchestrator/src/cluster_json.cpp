// JSON for the cluster model. Input is untrusted: every reader checks fields against a schema
// (unknown fields are refused, so a typo does not silently fall back to a default), checks types
// and ranges through the common getters, and prefixes errors with the element's path so an
// operator can find the bad line in a 10 000-instance import.

#include <fmt/format.h>

#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab::orchestrator {
namespace {

Error at(std::string_view path, const Error& e) {
  return make_error(e.condition, fmt::format("{}: {}", path, e.message));
}

template <class T, class F>
Status read_list(const json::object& o, std::string_view field, size_t max_items, F&& read,
                 std::vector<T>& out) {
  FL_ASSIGN_OR_RETURN(const json::array* arr, get_optional_array(o, field, max_items));
  if (arr == nullptr) return {};
  out.reserve(arr->size());
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string path = fmt::format("{}[{}]", field, i);
    if (!(*arr)[i].is_object()) {
      return make_error(Condition::invalid_argument, path + " must be an object");
    }
    auto r = read((*arr)[i].get_object());
    if (!r.ok()) return at(path, r.error());
    out.push_back(std::move(r).value());
  }
  return {};
}

Status check_name(const std::string& name, std::string_view field) {
  if (name.empty()) {
    return make_error(Condition::invalid_argument,
                      fmt::format("field '{}' must not be empty", field));
  }
  return {};
}

}  // namespace

json::object to_json(const Host& h) {
  json::object o{{"id", h.id},
                 {"fault_domain", h.fault_domain},
                 {"capacity", h.capacity},
                 {"state", to_string(h.state)}};
  if (h.ud_slot) o["ud_slot"] = *h.ud_slot;
  return o;
}

json::object to_json(const Service& s) {
  return {{"name", s.name},
          {"instance_count", s.instance_count},
          {"ud_count", s.ud_count},
          {"image", s.image},
          {"memory_mib", static_cast<int64_t>(s.memory_mib)}};
}

json::object to_json(const Instance& i) {
  return {{"service", i.service}, {"index", i.index}, {"ud", i.ud}, {"fd", i.fd}, {"host", i.host}};
}

json::object to_json(const Cluster& c) {
  json::array hosts, services, instances;
  for (const auto& h : c.hosts) hosts.push_back(to_json(h));
  for (const auto& s : c.services) services.push_back(to_json(s));
  for (const auto& i : c.instances) instances.push_back(to_json(i));
  return {{"hosts", std::move(hosts)},
          {"services", std::move(services)},
          {"instances", std::move(instances)}};
}

Result<Host> host_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(o, {"id", "fault_domain", "capacity", "state", "ud_slot"}));
  Host h;
  FL_ASSIGN_OR_RETURN(h.id, get_string(o, "id", kMaxNameBytes));
  FL_RETURN_IF_ERROR(check_name(h.id, "id"));
  FL_ASSIGN_OR_RETURN(int64_t fd, get_int(o, "fault_domain", 0, kMaxFaultDomain));
  FL_ASSIGN_OR_RETURN(int64_t cap, get_int(o, "capacity", 0, kMaxHostCapacity));
  FL_ASSIGN_OR_RETURN(auto state, get_optional_string(o, "state", 16));
  FL_ASSIGN_OR_RETURN(auto slot, get_optional_int(o, "ud_slot", 0, kMaxUdCount - 1));
  h.fault_domain = static_cast<int>(fd);
  h.capacity = static_cast<int>(cap);
  if (state) {
    FL_ASSIGN_OR_RETURN(h.state, parse_host_state(*state));
  }
  if (slot) h.ud_slot = static_cast<int>(*slot);
  return h;
}

Result<Service> service_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(
      check_fields(o, {"name", "instance_count", "ud_count", "image", "memory_mib"}));
  Service s;
  FL_ASSIGN_OR_RETURN(s.name, get_string(o, "name", kMaxNameBytes));
  FL_RETURN_IF_ERROR(check_name(s.name, "name"));
  FL_ASSIGN_OR_RETURN(int64_t n, get_int(o, "instance_count", 1, kMaxInstancesPerService));
  FL_ASSIGN_OR_RETURN(int64_t k, get_int_or(o, "ud_count", 1, kMaxUdCount, kDefaultUdCount));
  FL_ASSIGN_OR_RETURN(s.image, get_string(o, "image", kMaxNameBytes, false));
  FL_ASSIGN_OR_RETURN(int64_t mem, get_int_or(o, "memory_mib", 32, 65536, 256));
  s.instance_count = static_cast<int>(n);
  s.ud_count = static_cast<int>(k);
  s.memory_mib = static_cast<uint32_t>(mem);
  return s;
}

Result<Instance> instance_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(o, {"service", "index", "ud", "fd", "host"}));
  Instance i;
  FL_ASSIGN_OR_RETURN(i.service, get_string(o, "service", kMaxNameBytes));
  FL_RETURN_IF_ERROR(check_name(i.service, "service"));
  FL_ASSIGN_OR_RETURN(int64_t index, get_int(o, "index", 0, kMaxInstancesPerService - 1));
  FL_ASSIGN_OR_RETURN(int64_t ud, get_int(o, "ud", 0, kMaxUdCount - 1));
  FL_ASSIGN_OR_RETURN(int64_t fd, get_int(o, "fd", 0, kMaxFaultDomain));
  FL_ASSIGN_OR_RETURN(i.host, get_string(o, "host", kMaxNameBytes));
  FL_RETURN_IF_ERROR(check_name(i.host, "host"));
  i.index = static_cast<int>(index);
  i.ud = static_cast<int>(ud);
  i.fd = static_cast<int>(fd);
  return i;
}

Result<Cluster> cluster_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(o, {"hosts", "services", "instances"}));
  Cluster c;
  FL_RETURN_IF_ERROR(read_list(o, "hosts", kMaxHosts, host_from_json, c.hosts));
  FL_RETURN_IF_ERROR(read_list(o, "services", kMaxServices, service_from_json, c.services));
  FL_RETURN_IF_ERROR(read_list(o, "instances", kMaxInstances, instance_from_json, c.instances));
  FL_RETURN_IF_ERROR(validate_cluster(c));
  return c;
}

}  // namespace fabriclab::orchestrator
