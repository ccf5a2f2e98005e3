#include "fabriclab/agent/host_state.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fabriclab/common/json.hpp"

namespace fabriclab::agent {

namespace {

template <class E, size_t N>
Result<E> parse_enum(std::string_view s, const std::string_view (&names)[N],
                     std::string_view field) {
  for (size_t i = 0; i < N; ++i) {
    if (names[i] == s) return static_cast<E>(i);
  }
  return make_error(
      Condition::invalid_argument,
      "field '" + std::string(field) + "' has unknown value '" + std::string(s) + "'");
}

constexpr std::string_view kHostStates[] = {"Ready", "Updating", "Unhealthy", "Offline"};
constexpr std::string_view kSteps[] = {"None",          "Notifying", "StoppingGuests",
                                       "SwappingImage", "Rebooting", "StartingGuests",
                                       "Verifying"};
constexpr std::string_view kKinds[] = {"host-os", "guest-os", "freeze"};

json::array strings(const std::vector<std::string>& v) {
  json::array a;
  for (const auto& s : v) a.emplace_back(s);
  return a;
}

std::vector<std::string> strings_of(const json::value* v) {
  std::vector<std::string> out;
  if (v && v->is_array()) {
    for (const auto& s : v->as_array()) {
      if (s.is_string()) out.emplace_back(s.as_string());
    }
  }
  return out;
}

}  // namespace

Status write_file_atomically(const std::string& path, const std::string& data) {
  // The temp file's name starts with a dot: dnsmasq ignores such files in a directory it watches
  // (--dhcp-hostsdir), so it never reads a half-written host file.
  const std::filesystem::path p(path);
  std::string tmp_name = p.filename().string();
  tmp_name.insert(tmp_name.begin(), '.');  // (not "." + s: GCC 12 warns falsely on that)
  tmp_name += ".tmp";
  const std::string tmp = (p.parent_path() / tmp_name).string();
  int fd = ::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0)
    return make_error(Condition::transient, "cannot write " + tmp + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < data.size()) {
    ssize_t w = ::write(fd, data.data() + off, data.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      int err = errno;
      ::close(fd);
      return make_error(Condition::transient, "cannot write " + tmp + ": " + std::strerror(err));
    }
    off += static_cast<size_t>(w);
  }
  bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return make_error(Condition::transient, "cannot replace " + path + ": " + std::strerror(errno));
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

std::string_view to_string(HostState s) { return kHostStates[static_cast<int>(s)]; }
std::string_view to_string(UpdateStep s) { return kSteps[static_cast<int>(s)]; }
std::string_view to_string(OperationKind k) { return kKinds[static_cast<int>(k)]; }
Result<OperationKind> parse_operation_kind(std::string_view s) {
  return parse_enum<OperationKind>(s, kKinds, "kind");
}

json::object to_json(const OperationRequest& r) {
  return {{"kind", to_string(r.kind)},
          {"target", r.target},
          {"memory_preserving", r.memory_preserving},
          {"notice_ms", r.notice_ms},
          {"freeze_ms", r.freeze_ms}};
}

Result<OperationRequest> operation_request_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(
      check_fields(o, {"kind", "target", "memory_preserving", "notice_ms", "freeze_ms"}));
  OperationRequest r;
  FL_ASSIGN_OR_RETURN(std::string kind, get_string(o, "kind", 16));
  FL_ASSIGN_OR_RETURN(r.kind, parse_operation_kind(kind));
  FL_ASSIGN_OR_RETURN(r.target, get_string(o, "target", 64, r.kind != OperationKind::freeze));
  FL_ASSIGN_OR_RETURN(r.memory_preserving, get_bool_or(o, "memory_preserving", false));
  FL_ASSIGN_OR_RETURN(r.notice_ms, get_int_or(o, "notice_ms", 0, 15 * 60 * 1000, 5000));
  FL_ASSIGN_OR_RETURN(r.freeze_ms, get_int_or(o, "freeze_ms", 0, 30 * 1000, 2000));
  if (r.memory_preserving && r.kind != OperationKind::host_os) {
    return make_error(Condition::invalid_argument,
                      "field 'memory_preserving' applies to host-os only");
  }
  return r;
}

json::object identity_json(const std::string& name, const hypervisor::InstanceMetadata& m) {
  return {{"name", name}, {"service", m.service}, {"index", m.index},
          {"ud", m.ud},   {"fd", m.fd},           {"image", m.image}};
}

Result<hypervisor::InstanceMetadata> metadata_from_json(const json::object& o) {
  hypervisor::InstanceMetadata m;
  FL_ASSIGN_OR_RETURN(m.service, get_string(o, "service", 48));
  if (m.service.empty()) return make_error(Condition::invalid_argument, "field 'service' is empty");
  FL_ASSIGN_OR_RETURN(int64_t index, get_int(o, "index", 0, 9999));
  FL_ASSIGN_OR_RETURN(int64_t ud, get_int(o, "ud", 0, 19));
  FL_ASSIGN_OR_RETURN(int64_t fd, get_int(o, "fd", 0, 1000));
  m.index = static_cast<int>(index);
  m.ud = static_cast<int>(ud);
  m.fd = static_cast<int>(fd);
  FL_ASSIGN_OR_RETURN(m.image, get_string(o, "image", 64));
  return m;
}

json::object to_json(const DataCheck& c) {
  return {{"command", strings(c.command)}, {"rule", c.rule}};
}

namespace {

// `v` as an object holding no field but `allowed`; errors start with `field` and say `shape`.
Result<const json::object*> object_of(const json::value& v, const std::string& field,
                                      std::string_view shape,
                                      std::initializer_list<std::string_view> allowed) {
  if (!v.is_object()) {
    return make_error(Condition::invalid_argument,
                      field + " must be an object " + std::string(shape));
  }
  for (const auto& [k, _] : v.as_object()) {
    if (std::find(allowed.begin(), allowed.end(), std::string_view(k)) == allowed.end()) {
      return make_error(Condition::invalid_argument,
                        field + " has an unknown field '" + std::string(k) + "'");
    }
  }
  return &v.as_object();
}

}  // namespace

Result<DataCheck> data_check_from_json(const json::value& v, const std::string& field) {
  auto bad = [&](const std::string& what) {
    return make_error(Condition::invalid_argument, field + what);
  };
  FL_ASSIGN_OR_RETURN(
      const json::object* obj,
      object_of(v, field, "{command: [...], rule: equal|not_less}", {"command", "rule"}));
  const json::object& o = *obj;
  DataCheck c;
  const auto* cmd = o.if_contains("command");
  if (!cmd || !cmd->is_array() || cmd->as_array().empty() || cmd->as_array().size() > 16) {
    return bad(".command must be a list of 1..16 strings");
  }
  for (size_t i = 0; i < cmd->as_array().size(); ++i) {
    const auto& a = cmd->as_array()[i];
    const std::string at = ".command[" + std::to_string(i) + "]";
    if (!a.is_string() || a.as_string().empty() || a.as_string().size() > 256) {
      return bad(at + " must be a string of 1..256 bytes");
    }
    std::string arg(a.as_string());
    if (arg.find('\0') != std::string::npos || arg.find('\n') != std::string::npos) {
      return bad(at + " must not contain NUL or newline");
    }
    if (i == 0 && arg[0] != '/') return bad(at + " must be an absolute path: '" + arg + "'");
    c.command.push_back(std::move(arg));
  }
  if (const auto* rule = o.if_contains("rule")) {
    if (!rule->is_string() || (rule->as_string() != "equal" && rule->as_string() != "not_less")) {
      return bad(".rule must be equal or not_less");
    }
    c.rule = std::string(rule->as_string());
  }
  return c;
}

Result<AppProbe> app_probe_from_json(const json::value& v, const std::string& field) {
  auto bad = [&](const std::string& what) {
    return make_error(Condition::invalid_argument, field + what);
  };
  FL_ASSIGN_OR_RETURN(const json::object* obj,
                      object_of(v, field, "{port, path}", {"port", "path"}));
  const json::object& o = *obj;
  AppProbe p;
  const auto* port = o.if_contains("port");
  if (!port || !port->is_int64() || port->as_int64() < 1 || port->as_int64() > 65535) {
    return bad(".port must be an integer in 1..65535");
  }
  p.port = static_cast<int>(port->as_int64());
  if (const auto* path = o.if_contains("path")) {
    if (!path->is_string() || path->as_string().empty() || path->as_string()[0] != '/' ||
        path->as_string().size() > 256) {
      return bad(".path must be a path starting with '/' (<= 256 bytes)");
    }
    for (char c : path->as_string()) {
      if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f)
        return bad(".path must not contain spaces or control characters");
    }
    p.path = std::string(path->as_string());
  }
  return p;
}

Status save_state(const std::string& path, const PersistedState& s) {
  json::object o;
  o["version"] = 1;
  o["host_id"] = s.host_id;
  o["state"] = to_string(s.state);
  o["host_image"] = s.host_image;
  o["next_job"] = s.next_job;
  o["imds_incarnation"] = s.imds_incarnation;
  json::array instances;
  for (const auto& i : s.instances) {
    json::object io = identity_json(i.name, i.meta);
    io.insert({{"memory_mib", i.memory_mib},
               {"want_running", i.want_running},
               {"mode", i.mode},
               {"address", i.address},
               {"mac", i.mac},
               {"vm_id", i.vm_id},
               {"drain", i.drain},
               {"drain_ms", i.drain_ms},
               {"os_disk", i.os_disk},
               {"os_gen", i.os_gen}});
    if (i.data_check) io["data_check"] = to_json(*i.data_check);
    if (i.probe.port > 0)
      io["probe"] = json::object{{"port", i.probe.port}, {"path", i.probe.path}};
    instances.push_back(std::move(io));
  }
  o["instances"] = std::move(instances);
  if (s.operation) {
    const auto& op = *s.operation;
    json::object prev;
    for (const auto& [k, v] : op.previous_guest_image) prev[k] = v;
    json::object prev_disk;
    for (const auto& [k, v] : op.previous_os_disk) prev_disk[k] = v;
    o["operation"] = json::object{{"id", op.id},
                                  {"request", to_json(op.request)},
                                  {"step", to_string(op.step)},
                                  {"running_before", strings(op.running_before)},
                                  {"stopped", strings(op.stopped)},
                                  {"previous_host_image", op.previous_host_image},
                                  {"previous_guest_image", std::move(prev)},
                                  {"previous_os_disk", std::move(prev_disk)},
                                  {"started_at", op.started_at},
                                  {"event_id", op.event_id}};
  }
  return write_file_atomically(path, json::serialize(o) + "\n");
}

Result<PersistedState> load_state(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(Condition::not_found, "no state file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  FL_ASSIGN_OR_RETURN(json::object o, parse_json_object(ss.str(), 16 << 20, 16, path));
  PersistedState s;
  FL_ASSIGN_OR_RETURN(s.host_id, get_string(o, "host_id", 64));
  FL_ASSIGN_OR_RETURN(std::string state, get_string(o, "state", 16));
  FL_ASSIGN_OR_RETURN(s.state, parse_enum<HostState>(state, kHostStates, "state"));
  FL_ASSIGN_OR_RETURN(s.host_image, get_string(o, "host_image", 64, false));
  FL_ASSIGN_OR_RETURN(int64_t next, get_int_or(o, "next_job", 1, INT64_MAX, 1));
  s.next_job = static_cast<uint64_t>(next);
  FL_ASSIGN_OR_RETURN(int64_t inc, get_int_or(o, "imds_incarnation", 1, INT64_MAX, 1));
  s.imds_incarnation = static_cast<uint64_t>(inc);
  FL_ASSIGN_OR_RETURN(const json::array* instances, get_array(o, "instances", 10000));
  for (const auto& v : *instances) {
    if (!v.is_object())
      return make_error(Condition::invalid_argument, path + ": instances[] must be objects");
    const auto& io = v.as_object();
    InstanceRecord r;
    FL_ASSIGN_OR_RETURN(r.name, get_string(io, "name", 64));
    FL_ASSIGN_OR_RETURN(r.meta, metadata_from_json(io));
    FL_ASSIGN_OR_RETURN(int64_t mem, get_int(io, "memory_mib", 32, 65536));
    r.memory_mib = static_cast<uint32_t>(mem);
    FL_ASSIGN_OR_RETURN(r.want_running, get_bool_or(io, "want_running", true));
    FL_ASSIGN_OR_RETURN(r.mode, get_string(io, "mode", 32, false));
    // Written since the guest network came; a state file from before has none of them.
    FL_ASSIGN_OR_RETURN(r.address, get_string(io, "address", 15, false));
    FL_ASSIGN_OR_RETURN(r.mac, get_string(io, "mac", 17, false));
    FL_ASSIGN_OR_RETURN(r.vm_id, get_string(io, "vm_id", 36, false));
    FL_ASSIGN_OR_RETURN(r.drain, get_bool_or(io, "drain", true));
    FL_ASSIGN_OR_RETURN(r.drain_ms, get_int_or(io, "drain_ms", 0, 600000, 0));
    // Written since guests bring their own images; absent before.
    FL_ASSIGN_OR_RETURN(r.os_disk, get_string(io, "os_disk", 4096, false));
    FL_ASSIGN_OR_RETURN(int64_t gen, get_int_or(io, "os_gen", 0, 1000000, 0));
    r.os_gen = static_cast<int>(gen);
    if (auto* dc = io.if_contains("data_check")) {
      FL_ASSIGN_OR_RETURN(r.data_check, data_check_from_json(*dc, path + ": data_check"));
    }
    if (auto* pr = io.if_contains("probe")) {
      FL_ASSIGN_OR_RETURN(r.probe, app_probe_from_json(*pr, path + ": probe"));
    }
    s.instances.push_back(std::move(r));
  }
  if (auto* op = o.if_contains("operation"); op && op->is_object()) {
    const auto& oo = op->as_object();
    OperationRecord r;
    FL_ASSIGN_OR_RETURN(r.id, get_string(oo, "id", 64));
    FL_ASSIGN_OR_RETURN(const json::object* req, get_object(oo, "request"));
    FL_ASSIGN_OR_RETURN(r.request, operation_request_from_json(*req));
    FL_ASSIGN_OR_RETURN(std::string step, get_string(oo, "step", 32));
    FL_ASSIGN_OR_RETURN(r.step, parse_enum<UpdateStep>(step, kSteps, "operation.step"));
    r.running_before = strings_of(oo.if_contains("running_before"));
    r.stopped = strings_of(oo.if_contains("stopped"));
    FL_ASSIGN_OR_RETURN(r.previous_host_image, get_string(oo, "previous_host_image", 64, false));
    if (auto* prev = oo.if_contains("previous_guest_image"); prev && prev->is_object()) {
      for (const auto& [k, v] : prev->as_object()) {
        if (v.is_string()) r.previous_guest_image[std::string(k)] = std::string(v.as_string());
      }
    }
    if (auto* prev = oo.if_contains("previous_os_disk"); prev && prev->is_object()) {
      for (const auto& [k, v] : prev->as_object()) {
        if (v.is_string()) r.previous_os_disk[std::string(k)] = std::string(v.as_string());
      }
    }
    FL_ASSIGN_OR_RETURN(r.started_at, get_string(oo, "started_at", 64, false));
    FL_ASSIGN_OR_RETURN(r.event_id, get_string(oo, "event_id", 36, false));
    s.operation = std::move(r);
  }
  return s;
}

}  // namespace fabriclab::agent
