// JSON for the cluster model. Input is untrusted: every reader checks fields against a schema
// (unknown fields are refused, so a typo does not silently fall back to a default), checks types
// and ranges through the common getters, and prefixes errors with the element's path so an
// operator can find the bad line in a 10 000-instance import.

#include <fmt/format.h>

#include <cctype>

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

// "field 'x' ..." from the common getters -> "PREFIX.x ...", so a nested key is named in full
// ("endpoint.probe.interval_ms must be an integer in 200..600000").
Error qualify(const Error& e, std::string_view prefix) {
  std::string m = e.message;
  if (m.starts_with("field '")) {
    auto end = m.find('\'', 7);
    if (end != std::string::npos) {
      m = fmt::format("{}.{}{}", prefix, m.substr(7, end - 7), m.substr(end + 1));
    }
  } else if (m.starts_with("unknown field '")) {
    m = fmt::format("{}: {}", prefix, m);
  }
  return make_error(e.condition, m);
}
template <class T>
Result<T> qualified(Result<T> r, std::string_view prefix) {
  if (!r.ok()) return qualify(r.error(), prefix);
  return r;
}
inline Status qualified(Status s, std::string_view prefix) {
  if (!s.ok()) return qualify(s.error(), prefix);
  return s;
}

}  // namespace

bool is_probe_path(std::string_view p) {
  if (p.empty() || p.size() > kMaxProbePathBytes || p[0] != '/') return false;
  for (char c : p) {
    if (c <= 0x20 || c >= 0x7f || c == '\'' || c == '"' || c == '\\') return false;
  }
  return true;
}

bool is_lb_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return false;
  }
  return true;
}

bool is_ipv4(std::string_view text) {
  int parts = 0;
  size_t i = 0;
  while (parts < 4) {
    size_t start = i;
    int value = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9' && i - start < 3) {
      value = value * 10 + (text[i] - '0');
      ++i;
    }
    if (i == start || value > 255 || (i - start > 1 && text[start] == '0')) return false;
    ++parts;
    if (parts < 4) {
      if (i >= text.size() || text[i] != '.') return false;
      ++i;
    }
  }
  return i == text.size();
}

json::object to_json(const Host& h) {
  json::object o{{"id", h.id},
                 {"fault_domain", h.fault_domain},
                 {"capacity", h.capacity},
                 {"state", to_string(h.state)}};
  if (h.ud_slot) o["ud_slot"] = *h.ud_slot;
  return o;
}

json::object to_json(const ServiceEndpoint& e) {
  return {{"port", static_cast<int64_t>(e.port)},
          {"probe", json::object{{"path", e.probe.path},
                                 {"interval_ms", e.probe.interval_ms},
                                 {"unhealthy_threshold", e.probe.unhealthy_threshold}}}};
}

json::object to_json(const DataCheck& c) {
  json::array command;
  for (const auto& a : c.command) command.emplace_back(a);
  return {{"command", std::move(command)}, {"rule", c.rule}};
}

json::object to_json(const Service& s) {
  json::object o{{"name", s.name},
                 {"instance_count", s.instance_count},
                 {"ud_count", s.ud_count},
                 {"image", s.image},
                 {"memory_mib", static_cast<int64_t>(s.memory_mib)},
                 {"drain", s.drain},
                 {"traffic_rps", s.traffic_rps}};
  if (s.endpoint) o["endpoint"] = to_json(*s.endpoint);
  if (!s.vip.empty()) o["vip"] = s.vip;
  if (s.data_check) o["data_check"] = to_json(*s.data_check);
  return o;
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

Result<ServiceEndpoint> endpoint_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(qualified(check_fields(o, {"port", "probe"}), "endpoint"));
  ServiceEndpoint e;
  FL_ASSIGN_OR_RETURN(int64_t port, qualified(get_int(o, "port", 1, 65535), "endpoint"));
  e.port = static_cast<uint16_t>(port);
  FL_ASSIGN_OR_RETURN(const json::object* probe,
                      qualified(get_optional_object(o, "probe"), "endpoint"));
  if (probe == nullptr) return e;
  const json::object& p = *probe;
  FL_RETURN_IF_ERROR(
      qualified(check_fields(p, {"path", "interval_ms", "unhealthy_threshold"}), "endpoint.probe"));
  FL_ASSIGN_OR_RETURN(auto path, qualified(get_optional_string(p, "path", kMaxProbePathBytes + 1),
                                           "endpoint.probe"));
  if (path) {
    if (!is_probe_path(*path)) {
      return make_error(Condition::invalid_argument,
                        fmt::format("endpoint.probe.path must start with '/' and hold at most {} "
                                    "printable ASCII characters other than space, quotes and '\\'",
                                    kMaxProbePathBytes));
    }
    e.probe.path = *path;
  }
  FL_ASSIGN_OR_RETURN(int64_t interval,
                      qualified(get_int_or(p, "interval_ms", kMinProbeIntervalMs,
                                           kMaxProbeIntervalMs, e.probe.interval_ms),
                                "endpoint.probe"));
  FL_ASSIGN_OR_RETURN(int64_t threshold,
                      qualified(get_int_or(p, "unhealthy_threshold", 1, kMaxUnhealthyThreshold,
                                           e.probe.unhealthy_threshold),
                                "endpoint.probe"));
  e.probe.interval_ms = static_cast<int>(interval);
  e.probe.unhealthy_threshold = static_cast<int>(threshold);
  return e;
}

Result<DataCheck> data_check_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(qualified(check_fields(o, {"command", "rule"}), "data_check"));
  auto bad = [](std::string what) {
    return make_error(Condition::invalid_argument, std::move(what));
  };
  FL_ASSIGN_OR_RETURN(const json::array* command,
                      qualified(get_array(o, "command", kMaxDataCheckArgs), "data_check"));
  if (command->empty()) {
    return bad(fmt::format("data_check.command must hold 1..{} strings", kMaxDataCheckArgs));
  }
  DataCheck c;
  for (size_t i = 0; i < command->size(); ++i) {
    const json::value& v = (*command)[i];
    const std::string key = fmt::format("data_check.command[{}]", i);
    if (!v.is_string()) return bad(key + " must be a string");
    std::string_view a = v.get_string();
    if (a.empty() || a.size() > kMaxDataCheckArgBytes) {
      return bad(fmt::format("{} must be 1..{} bytes", key, kMaxDataCheckArgBytes));
    }
    if (a.find('\0') != std::string_view::npos || a.find('\n') != std::string_view::npos) {
      return bad(key + " must not hold NUL or a newline");
    }
    if (i == 0 && a[0] != '/')
      return bad(key + " must be an absolute path (the guest agent runs it without a shell)");
    c.command.emplace_back(a);
  }
  FL_ASSIGN_OR_RETURN(auto rule, qualified(get_optional_string(o, "rule", 16), "data_check"));
  if (rule) {
    if (*rule != "equal" && *rule != "not_less") {
      return bad("data_check.rule must be one of equal, not_less (got '" + *rule + "')");
    }
    c.rule = *rule;
  }
  return c;
}

Result<Service> service_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(o, {"name", "instance_count", "ud_count", "image", "memory_mib",
                                      "endpoint", "drain", "traffic_rps", "vip", "data_check"}));
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
  FL_ASSIGN_OR_RETURN(const json::object* endpoint, get_optional_object(o, "endpoint"));
  if (endpoint != nullptr) {
    FL_ASSIGN_OR_RETURN(s.endpoint, endpoint_from_json(*endpoint));
    if (!is_lb_name(s.name)) {
      return make_error(Condition::invalid_argument,
                        "field 'name' of a service with an endpoint may hold only letters, digits, "
                        "'-', '_' and '.'");
    }
  }
  FL_ASSIGN_OR_RETURN(s.drain, get_bool_or(o, "drain", true));
  FL_ASSIGN_OR_RETURN(s.traffic_rps, get_number_or(o, "traffic_rps", 0.1, 1000, 20));
  FL_ASSIGN_OR_RETURN(s.vip, get_string(o, "vip", 15, false));
  if (!s.vip.empty() && !is_ipv4(s.vip)) {
    return make_error(Condition::invalid_argument, "field 'vip' must be a dotted IPv4 address");
  }
  FL_ASSIGN_OR_RETURN(const json::object* data_check, get_optional_object(o, "data_check"));
  if (data_check != nullptr) {
    FL_ASSIGN_OR_RETURN(s.data_check, data_check_from_json(*data_check));
  }
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
