// Drill specs from YAML, checked key by key (spec.hpp).
#include "fabriclab/rack/spec.hpp"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <sstream>

#include "fault_parse.hpp"

namespace fabriclab::rack {

namespace {

constexpr size_t kMaxSpecBytes = 256 * 1024;

Error bad(const std::string& what, const std::string& msg) {
  return make_error(Condition::invalid_argument, what + ": " + msg);
}

Status only_keys(const YAML::Node& n, const std::string& path, std::set<std::string> allowed) {
  if (!n.IsMap()) return bad(path, "must be a mapping");
  for (const auto& kv : n) {
    auto key = kv.first.as<std::string>();
    if (!allowed.count(key)) return bad(path.empty() ? key : path + "." + key, "unknown key");
  }
  return {};
}

template <class T>
Status read(const YAML::Node& parent, const std::string& key, const std::string& path, T& out, T lo,
            T hi) {
  auto n = parent[key];
  if (!n) return {};
  try {
    T v = n.as<T>();
    if (v < lo || v > hi) {
      std::ostringstream m;
      m << "must be in " << lo << ".." << hi;
      return bad(path + key, m.str());
    }
    out = v;
  } catch (const YAML::Exception&) {
    return bad(path + key, "must be a number");
  }
  return {};
}

Status read_str(const YAML::Node& parent, const std::string& key, const std::string& path,
                std::string& out, std::set<std::string> one_of = {}) {
  auto n = parent[key];
  if (!n) return {};
  if (!n.IsScalar()) return bad(path + key, "must be a string");
  auto v = n.as<std::string>();
  if (v.empty() || v.size() > 64) return bad(path + key, "must be 1..64 characters");
  for (char c : v) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return bad(path + key, "may hold only letters, digits, '-', '_' and '.'");
    }
  }
  if (!one_of.empty() && !one_of.count(v)) {
    std::string list;
    for (const auto& o : one_of) list += (list.empty() ? "" : ", ") + o;
    return bad(path + key, "must be one of " + list + " (got '" + v + "')");
  }
  out = v;
  return {};
}

// The probe's path: an absolute HTTP path of printable characters, no spaces (it goes into the
// load balancer's configuration as one word).
Status read_path(const YAML::Node& parent, const std::string& key, const std::string& path,
                 std::string& out) {
  auto n = parent[key];
  if (!n) return {};
  if (!n.IsScalar()) return bad(path + key, "must be a string");
  auto v = n.as<std::string>();
  if (v.empty() || v[0] != '/' || v.size() > 256)
    return bad(path + key, "must be an absolute path ('/...'), at most 256 characters");
  for (char c : v) {
    if (static_cast<unsigned char>(c) <= ' ' || static_cast<unsigned char>(c) >= 0x7f || c == '"' ||
        c == '\\' || c == '#') {
      return bad(path + key,
                 "may hold only printable characters without spaces, quotes, '\\' or '#'");
    }
  }
  out = v;
  return {};
}

Status read_bool(const YAML::Node& parent, const std::string& key, const std::string& path,
                 bool& out) {
  auto n = parent[key];
  if (!n) return {};
  try {
    out = n.as<bool>();
  } catch (const YAML::Exception&) {
    return bad(path + key, "must be true or false");
  }
  return {};
}

// One argument of a data check's command: 1..256 characters, no NUL or newline (it is passed to
// guest-exec as one argv element, and a newline would break the report's one-line details).
Status read_arg(const YAML::Node& n, const std::string& path, bool first, std::string& out) {
  if (!n.IsScalar()) return bad(path, "must be a string");
  auto v = n.as<std::string>();
  if (v.empty() || v.size() > kMaxDataCheckArgBytes) return bad(path, "must be 1..256 characters");
  if (v.find('\0') != std::string::npos || v.find('\n') != std::string::npos ||
      v.find('\r') != std::string::npos) {
    return bad(path, "must not hold NUL or a newline");
  }
  if (first && v[0] != '/')
    return bad(path, "must be an absolute path (no shell runs the command)");
  out = std::move(v);
  return {};
}

Status read_data_check(const YAML::Node& n, const std::string& p,
                       std::optional<DataCheckSpec>& out) {
  FL_RETURN_IF_ERROR(only_keys(n, p, {"command", "rule"}));
  DataCheckSpec dc;
  auto cmd = n["command"];
  if (!cmd) return bad(p + ".command", "is required");
  if (!cmd.IsSequence() || cmd.size() < 1 || cmd.size() > kMaxDataCheckArgs) {
    return bad(p + ".command", "must be a list of 1..16 strings");
  }
  for (size_t i = 0; i < cmd.size(); ++i) {
    std::string arg;
    FL_RETURN_IF_ERROR(read_arg(cmd[i], p + ".command[" + std::to_string(i) + "]", i == 0, arg));
    dc.command.push_back(std::move(arg));
  }
  FL_RETURN_IF_ERROR(read_str(n, "rule", p + ".", dc.rule, {"equal", "not_less"}));
  out = std::move(dc);
  return {};
}

// One update ({kind, target}); the target defaults by kind (host-v2, v2, none for freeze).
Status read_update(const YAML::Node& u, const std::string& p, UpdateSpec& out) {
  FL_RETURN_IF_ERROR(only_keys(u, p, {"kind", "target"}));
  FL_RETURN_IF_ERROR(read_str(u, "kind", p + ".", out.kind, {"host-os", "guest-os", "freeze"}));
  if (out.kind != "host-os" && !u["target"]) out.target = out.kind == "guest-os" ? "v2" : "";
  return read_str(u, "target", p + ".", out.target);
}

Status read_updates(const YAML::Node& root, DrillFileSpec& s) {
  auto one = root["update"], many = root["updates"];
  if (one && many) return bad("updates", "give either update or updates, not both");
  if (one) {
    s.updates.assign(1, UpdateSpec{});
    FL_RETURN_IF_ERROR(read_update(one, "update", s.updates[0]));
  } else if (many) {
    if (!many.IsSequence() || many.size() < 1 || many.size() > kMaxUpdates) {
      return bad("updates", "must be a list of 1..4 updates ({kind, target})");
    }
    s.updates.assign(many.size(), UpdateSpec{});
    for (size_t i = 0; i < many.size(); ++i) {
      const std::string p = "updates[" + std::to_string(i) + "]";
      if (many[i].IsMap() && !many[i]["kind"]) return bad(p + ".kind", "is required");
      FL_RETURN_IF_ERROR(read_update(many[i], p, s.updates[i]));
    }
  }
  s.kind = s.updates[0].kind;
  s.target = s.updates[0].target;
  return {};
}

Status read_service_extras(const YAML::Node& n, const std::string& p, ServiceSpec& svc) {
  if (auto dc = n["data_check"])
    FL_RETURN_IF_ERROR(read_data_check(dc, p + ".data_check", svc.data_check));
  if (auto e = n["endpoint"]) {
    FL_RETURN_IF_ERROR(only_keys(e, p + ".endpoint", {"port", "probe"}));
    EndpointSpec ep;
    FL_RETURN_IF_ERROR(read(e, "port", p + ".endpoint.", ep.port, 1, 65535));
    if (auto pr = e["probe"]) {
      const std::string pp = p + ".endpoint.probe";
      FL_RETURN_IF_ERROR(only_keys(pr, pp, {"path", "interval_s", "unhealthy_threshold"}));
      FL_RETURN_IF_ERROR(read_path(pr, "path", pp + ".", ep.probe_path));
      FL_RETURN_IF_ERROR(read(pr, "interval_s", pp + ".", ep.probe_interval_s, 1.0, 3600.0));
      FL_RETURN_IF_ERROR(read(pr, "unhealthy_threshold", pp + ".", ep.unhealthy_threshold, 1, 10));
    }
    svc.endpoint = ep;
  }
  FL_RETURN_IF_ERROR(read_bool(n, "drain", p + ".", svc.drain));
  if (auto t = n["traffic"]) {
    FL_RETURN_IF_ERROR(only_keys(t, p + ".traffic", {"rps"}));
    FL_RETURN_IF_ERROR(read(t, "rps", p + ".traffic.", svc.traffic_rps, 0.1, 1000.0));
  }
  if ((n["drain"] || n["traffic"]) && !svc.endpoint) {
    return bad(p + (n["drain"] ? ".drain" : ".traffic"),
               "needs an endpoint (clients reach a service through its load balancer)");
  }
  return {};
}

}  // namespace

int scaled_probe_interval_ms(const EndpointSpec& e, double time_scale) {
  double ms = e.probe_interval_s * 1000.0 * time_scale;
  return ms < kMinProbeIntervalMs ? kMinProbeIntervalMs : static_cast<int>(ms + 0.5);
}

json::object service_body(const ServiceSpec& s, double time_scale) {
  json::object body{{"name", s.name},
                    {"instance_count", s.instances},
                    {"ud_count", s.ud_count},
                    {"image", s.image},
                    {"memory_mib", s.memory_mib}};
  if (s.endpoint) {
    body["endpoint"] = json::object{
        {"port", s.endpoint->port},
        {"probe", json::object{{"path", s.endpoint->probe_path},
                               {"interval_ms", scaled_probe_interval_ms(*s.endpoint, time_scale)},
                               {"unhealthy_threshold", s.endpoint->unhealthy_threshold}}}};
    body["drain"] = s.drain;
    body["traffic_rps"] = s.traffic_rps;
  }
  if (s.data_check) {
    json::array command;
    for (const auto& a : s.data_check->command) command.emplace_back(a);
    body["data_check"] =
        json::object{{"command", std::move(command)}, {"rule", s.data_check->rule}};
  }
  return body;
}

DrillFileSpec default_spec() {
  DrillFileSpec s;
  // Every service behind the load balancer with Azure's default probe; the seeds' Hello World
  // sample (one instance, no SLA) too, so the report shows what its clients saw in its outage.
  s.services = {{"hello", 1, 5, "v1", 128, EndpointSpec{}},
                {"web", 2, 5, "v1", 128, EndpointSpec{}},
                {"worker", 3, 5, "v1", 128, EndpointSpec{}}};
  return s;
}

Result<DrillFileSpec> parse_spec(const std::string& text, const std::string& what) {
  if (text.size() > kMaxSpecBytes) return bad(what, "larger than 256 KiB");
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return bad(what, std::string("not YAML: ") + e.what());
  }
  DrillFileSpec s = default_spec();
  if (!root || root.IsNull()) return s;
  FL_RETURN_IF_ERROR(only_keys(
      root, "",
      {"name", "rack", "hypervisor", "services", "update", "updates", "policies", "faults"}));
  FL_RETURN_IF_ERROR(read_str(root, "name", "", s.name));
  FL_RETURN_IF_ERROR(read_str(root, "hypervisor", "", s.hypervisor, {"qemu", "test"}));
  if (auto r = root["rack"]) {
    FL_RETURN_IF_ERROR(only_keys(r, "rack", {"hosts", "fault_domains", "capacity"}));
    FL_RETURN_IF_ERROR(read(r, "hosts", "rack.", s.hosts, 1, 250));
    FL_RETURN_IF_ERROR(read(r, "fault_domains", "rack.", s.fault_domains, 1, 250));
    FL_RETURN_IF_ERROR(read(r, "capacity", "rack.", s.capacity, 1, 64));
    if (s.fault_domains > s.hosts) return bad("rack.fault_domains", "must not exceed rack.hosts");
  }
  if (auto sv = root["services"]) {
    if (!sv.IsSequence()) return bad("services", "must be a list");
    if (sv.size() > 100) return bad("services", "at most 100");
    s.services.clear();
    std::set<std::string> names;
    for (size_t i = 0; i < sv.size(); ++i) {
      std::string p = "services[" + std::to_string(i) + "]";
      FL_RETURN_IF_ERROR(only_keys(sv[i], p,
                                   {"name", "instances", "ud_count", "image", "memory_mib",
                                    "endpoint", "drain", "traffic", "data_check"}));
      ServiceSpec svc;
      if (!sv[i]["name"]) return bad(p + ".name", "is required");
      FL_RETURN_IF_ERROR(read_str(sv[i], "name", p + ".", svc.name));
      if (!names.insert(svc.name).second)
        return bad(p + ".name", "'" + svc.name + "' is used twice");
      FL_RETURN_IF_ERROR(read(sv[i], "instances", p + ".", svc.instances, 1, 100));
      FL_RETURN_IF_ERROR(read(sv[i], "ud_count", p + ".", svc.ud_count, 1, 20));
      FL_RETURN_IF_ERROR(read_str(sv[i], "image", p + ".", svc.image));
      FL_RETURN_IF_ERROR(read(sv[i], "memory_mib", p + ".", svc.memory_mib, 32, 4096));
      FL_RETURN_IF_ERROR(read_service_extras(sv[i], p, svc));
      s.services.push_back(svc);
    }
  }
  FL_RETURN_IF_ERROR(read_updates(root, s));
  if (auto p = root["policies"]) {
    FL_RETURN_IF_ERROR(only_keys(p, "policies",
                                 {"max_parallel_hosts", "time_scale", "recovery_s", "notice_s",
                                  "healthy_timeout_s", "freeze_s"}));
    FL_RETURN_IF_ERROR(read(p, "max_parallel_hosts", "policies.", s.max_parallel_hosts, 0, 10000));
    FL_RETURN_IF_ERROR(read(p, "time_scale", "policies.", s.time_scale, 1e-6, 1.0));
    FL_RETURN_IF_ERROR(read(p, "recovery_s", "policies.", s.recovery_s, 0.0, 7 * 86400.0));
    FL_RETURN_IF_ERROR(read(p, "notice_s", "policies.", s.notice_s, 0.0, 86400.0));
    FL_RETURN_IF_ERROR(
        read(p, "healthy_timeout_s", "policies.", s.healthy_timeout_s, 1.0, 86400.0));
    FL_RETURN_IF_ERROR(read(p, "freeze_s", "policies.", s.freeze_s, 0.0, 3600.0));
  }
  if (auto f = root["faults"]) {
    FaultRack rack{s.hosts, s.fault_domains, {}};
    for (const auto& svc : s.services) {
      for (int i = 0; i < svc.instances; ++i)
        rack.instances.push_back(svc.name + "-" + std::to_string(i));
    }
    bool host_os = false;
    for (const auto& u : s.updates) host_os = host_os || u.kind == "host-os";
    FL_RETURN_IF_ERROR(parse_faults(f, rack, host_os, s.faults));
  }
  int slots = s.hosts * s.capacity, need = 0;
  for (const auto& svc : s.services) need += svc.instances;
  if (need > slots) {
    return bad("services", std::to_string(need) + " instances do not fit " +
                               std::to_string(s.hosts) + " hosts of capacity " +
                               std::to_string(s.capacity));
  }
  return s;
}

DrillFileSpec for_update(const DrillFileSpec& spec, size_t k) {
  DrillFileSpec s = spec;
  if (k < spec.updates.size()) {
    s.kind = spec.updates[k].kind;
    s.target = spec.updates[k].target;
  }
  if (k > 0) s.faults.clear();
  return s;
}

Result<DrillFileSpec> load_spec(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(Condition::not_found, "spec file '" + path + "' cannot be read");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_spec(text, path);
}

}  // namespace fabriclab::rack
