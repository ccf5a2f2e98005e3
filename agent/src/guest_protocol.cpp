#include "fabriclab/agent/guest_protocol.hpp"

#include <boost/json.hpp>

namespace fabriclab::agent {
namespace json = boost::json;

namespace {

Error bad(std::string_view type, std::string_view field, std::string_view what) {
  return make_error(Condition::invalid_argument,
                    std::string(type) + "." + std::string(field) + " " + std::string(what));
}

Result<std::string> get_string(const json::object& o, std::string_view type, std::string_view key,
                               size_t max_len) {
  auto* v = o.if_contains(key);
  if (!v) return bad(type, key, "is missing");
  if (!v->is_string()) return bad(type, key, "must be a string");
  if (v->as_string().size() > max_len) return bad(type, key, "is too long");
  return std::string(v->as_string());
}

Result<int64_t> get_int(const json::object& o, std::string_view type, std::string_view key,
                        int64_t lo, int64_t hi) {
  auto* v = o.if_contains(key);
  if (!v) return bad(type, key, "is missing");
  int64_t x = 0;
  if (v->is_int64()) {
    x = v->as_int64();
  } else if (v->is_uint64() && v->as_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    x = static_cast<int64_t>(v->as_uint64());
  } else {
    return bad(type, key, "must be an integer");
  }
  if (x < lo || x > hi) return bad(type, key, "is out of range");
  return x;
}

}  // namespace

std::string_view type_name(const GuestMessage& m) {
  static constexpr std::string_view kNames[] = {"heartbeat", "ack", "instance_ack", "final", "error"};
  return kNames[m.index()];
}

Result<GuestMessage> parse_guest_line(std::string_view line) {
  if (line.size() > kMaxGuestLine) {
    return make_error(Condition::invalid_argument, "guest line longer than 64 KiB");
  }
  json::parse_options opt;
  opt.max_depth = kMaxGuestJsonDepth;
  boost::system::error_code ec;
  json::value v = json::parse(line, ec, json::storage_ptr(), opt);
  if (ec) return make_error(Condition::invalid_argument, "guest line is not JSON: " + ec.message());
  if (!v.is_object()) return make_error(Condition::invalid_argument, "guest line is not a JSON object");
  const auto& o = v.as_object();
  FL_ASSIGN_OR_RETURN(std::string type, get_string(o, "message", "type", 32));
  constexpr int64_t kMax = INT64_MAX;
  if (type == "heartbeat") {
    Heartbeat h;
    FL_ASSIGN_OR_RETURN(int64_t seq, get_int(o, type, "seq", 0, kMax));
    h.seq = static_cast<uint64_t>(seq);
    FL_ASSIGN_OR_RETURN(h.boot_id, get_string(o, type, "boot_id", 64));
    if (h.boot_id.empty()) return bad(type, "boot_id", "is empty");
    FL_ASSIGN_OR_RETURN(h.image, get_string(o, type, "image", 64));
    FL_ASSIGN_OR_RETURN(h.counter, get_int(o, type, "counter", -1, kMax));
    FL_ASSIGN_OR_RETURN(int64_t up, get_int(o, type, "uptime_ms", 0, kMax));
    h.uptime_ms = static_cast<uint64_t>(up);
    if (o.contains("mode")) {
      FL_ASSIGN_OR_RETURN(h.mode, get_string(o, type, "mode", 32));
    }
    return GuestMessage{std::move(h)};
  }
  if (type == "ack") {
    Ack a;
    FL_ASSIGN_OR_RETURN(a.event_id, get_string(o, type, "EventId", 128));
    if (a.event_id.empty()) return bad(type, "EventId", "is empty");
    return GuestMessage{std::move(a)};
  }
  if (type == "instance_ack") {
    InstanceAck a;
    FL_ASSIGN_OR_RETURN(a.service, get_string(o, type, "service", 64));
    FL_ASSIGN_OR_RETURN(int64_t idx, get_int(o, type, "index", 0, 100000));
    FL_ASSIGN_OR_RETURN(int64_t ud, get_int(o, type, "platformUpdateDomain", 0, 19));
    FL_ASSIGN_OR_RETURN(int64_t fd, get_int(o, type, "platformFaultDomain", 0, 1000));
    a.index = static_cast<int>(idx);
    a.update_domain = static_cast<int>(ud);
    a.fault_domain = static_cast<int>(fd);
    return GuestMessage{std::move(a)};
  }
  if (type == "final") {
    Final f;
    FL_ASSIGN_OR_RETURN(f.boot_id, get_string(o, type, "boot_id", 64));
    FL_ASSIGN_OR_RETURN(f.counter, get_int(o, type, "counter", -1, kMax));
    auto* clean = o.if_contains("clean");
    if (!clean || !clean->is_bool()) return bad(type, "clean", "must be a boolean");
    f.clean = clean->as_bool();
    return GuestMessage{std::move(f)};
  }
  if (type == "error") {
    GuestError e;
    FL_ASSIGN_OR_RETURN(e.message, get_string(o, type, "message", 1024));
    return GuestMessage{std::move(e)};
  }
  return make_error(Condition::invalid_argument, "message.type '" + type + "' is unknown");
}

std::string instance_line(const InstanceIdentity& id) {
  json::object o;
  o["type"] = "instance";
  o["service"] = id.service;
  o["index"] = id.index;
  o["platformUpdateDomain"] = id.update_domain;
  o["platformFaultDomain"] = id.fault_domain;
  o["host"] = id.host;
  return json::serialize(o);
}

json::object scheduled_events_json(uint64_t incarnation, const std::vector<ScheduledEvent>& events) {
  json::array arr;
  for (const auto& e : events) {
    json::object ev;
    ev["EventId"] = e.event_id;
    ev["EventType"] = e.event_type;
    ev["ResourceType"] = "VirtualMachine";
    json::array res;
    for (const auto& r : e.resources) res.emplace_back(r);
    ev["Resources"] = std::move(res);
    ev["EventStatus"] = e.event_status;
    ev["NotBefore"] = e.not_before;
    ev["Description"] = e.description;
    ev["EventSource"] = "Platform";
    ev["DurationInSeconds"] = e.duration_seconds;
    arr.emplace_back(std::move(ev));
  }
  json::object o;
  o["DocumentIncarnation"] = incarnation;
  o["Events"] = std::move(arr);
  return o;
}

std::string scheduled_events_line(uint64_t incarnation, const std::vector<ScheduledEvent>& events) {
  json::object o;
  o["type"] = "scheduled_events";
  for (auto& [k, v] : scheduled_events_json(incarnation, events)) o[k] = std::move(v);
  return json::serialize(o);
}

}  // namespace fabriclab::agent
