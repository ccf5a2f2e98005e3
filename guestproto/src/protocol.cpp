// The channel's encoders and its checked parsers, side by side so that a field's name, its limit
// and its error are written once for the writer and the reader.
//
// Reading a line is two steps: the envelope (size, JSON within the depth limit, an object, a
// string "type"), then the schema of that type. The guest program tells a line that is not a
// message at all (dropped and counted) from a message with bad fields (answered with an error
// line) from a type it does not know (logged), so the steps are public and the last case has its
// own condition. Integers may arrive as integral doubles (3.0): the value is what is checked.

#include "fabriclab/guestproto/protocol.hpp"

#include <boost/json.hpp>
#include <cmath>
#include <exception>
#include <optional>

namespace fabriclab::guestproto {
namespace json = boost::json;

namespace {

enum class Need { required, non_empty, optional };

// Reads the fields of one object; `where` names it in errors ("heartbeat",
// "scheduled_events.Events[0]").
class Fields {
 public:
  Fields(const json::object& object, std::string where)
      : object_(object), where_(std::move(where)) {}

  Error bad(std::string_view key, std::string_view what) const {
    return make_error(Condition::invalid_argument,
                      where_ + "." + std::string(key) + " " + std::string(what));
  }

  const json::value* find(std::string_view key) const { return object_.if_contains(key); }

  // An optional string that is missing reads as "".
  Result<std::string> string(std::string_view key, std::size_t max, Need need) const {
    const json::value* v = find(key);
    if (v == nullptr) {
      if (need == Need::optional) return std::string();
      return bad(key, "is missing");
    }
    if (!v->is_string()) return bad(key, "must be a string");
    if (v->get_string().size() > max) {
      return bad(key, "is longer than " + std::to_string(max) + " bytes");
    }
    if (need == Need::non_empty && v->get_string().empty()) return bad(key, "is empty");
    return std::string(v->get_string());
  }

  Result<std::int64_t> integer(std::string_view key, std::int64_t lo, std::int64_t hi) const {
    const json::value* v = find(key);
    if (v == nullptr) return bad(key, "is missing");
    std::optional<std::int64_t> x = as_integer(*v);
    if (!x) return bad(key, "must be an integer");
    if (*x < lo || *x > hi) {
      return bad(key, "is out of range " + std::to_string(lo) + ".." + std::to_string(hi));
    }
    return *x;
  }

  Result<bool> boolean(std::string_view key) const {
    const json::value* v = find(key);
    if (v == nullptr) return bad(key, "is missing");
    if (!v->is_bool()) return bad(key, "must be a boolean");
    return v->get_bool();
  }

 private:
  static std::optional<std::int64_t> as_integer(const json::value& v) {
    if (v.is_int64()) return v.get_int64();
    if (v.is_uint64()) {
      if (v.get_uint64() > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<std::int64_t>(v.get_uint64());
    }
    if (v.is_double()) {
      const double d = v.get_double();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
        return static_cast<std::int64_t>(d);
      }
    }
    return std::nullopt;
  }

  const json::object& object_;
  std::string where_;
};

// ---------------------------------------------------------------------------------------------
// Guest -> host schemas

Result<GuestMessage> heartbeat_from(const Fields& f) {
  Heartbeat h;
  FL_ASSIGN_OR_RETURN(std::int64_t seq, f.integer("seq", 0, INT64_MAX));
  h.seq = static_cast<std::uint64_t>(seq);
  FL_ASSIGN_OR_RETURN(h.boot_id, f.string("boot_id", kMaxNameBytes, Need::non_empty));
  FL_ASSIGN_OR_RETURN(h.image, f.string("image", kMaxNameBytes, Need::required));
  FL_ASSIGN_OR_RETURN(h.counter, f.integer("counter", -1, INT64_MAX));
  FL_ASSIGN_OR_RETURN(std::int64_t uptime, f.integer("uptime_ms", 0, INT64_MAX));
  h.uptime_ms = static_cast<std::uint64_t>(uptime);
  FL_ASSIGN_OR_RETURN(h.mode, f.string("mode", kMaxWordBytes, Need::optional));
  return GuestMessage{std::move(h)};
}

// The identity fields an instance line and its instance_ack share.
Result<InstanceAck> identity_from(const Fields& f) {
  InstanceAck a;
  FL_ASSIGN_OR_RETURN(a.service, f.string("service", kMaxNameBytes, Need::non_empty));
  FL_ASSIGN_OR_RETURN(std::int64_t index, f.integer("index", 0, kMaxIndex));
  FL_ASSIGN_OR_RETURN(std::int64_t ud, f.integer("platformUpdateDomain", 0, kMaxUpdateDomain));
  FL_ASSIGN_OR_RETURN(std::int64_t fd, f.integer("platformFaultDomain", 0, kMaxFaultDomain));
  a.index = static_cast<int>(index);
  a.update_domain = static_cast<int>(ud);
  a.fault_domain = static_cast<int>(fd);
  return a;
}

Result<GuestMessage> final_from(const Fields& f) {
  Final m;
  FL_ASSIGN_OR_RETURN(m.boot_id, f.string("boot_id", kMaxNameBytes, Need::required));
  FL_ASSIGN_OR_RETURN(m.counter, f.integer("counter", -1, INT64_MAX));
  FL_ASSIGN_OR_RETURN(m.clean, f.boolean("clean"));
  return GuestMessage{std::move(m)};
}

// ---------------------------------------------------------------------------------------------
// Host -> guest schemas

Result<std::vector<std::string>> resources_from(const Fields& f) {
  std::vector<std::string> out;
  const json::value* v = f.find("Resources");
  if (v == nullptr) return out;
  if (!v->is_array()) return f.bad("Resources", "must be an array");
  if (v->get_array().size() > kMaxResources) {
    return f.bad("Resources", "holds more than " + std::to_string(kMaxResources) + " names");
  }
  for (const json::value& name : v->get_array()) {
    if (!name.is_string() || name.get_string().size() > kMaxNameBytes) {
      return f.bad("Resources",
                   "must hold strings of at most " + std::to_string(kMaxNameBytes) + " bytes");
    }
    out.emplace_back(name.get_string());
  }
  return out;
}

Result<ScheduledEvent> event_from(const Fields& f) {
  ScheduledEvent e;
  FL_ASSIGN_OR_RETURN(e.event_id, f.string("EventId", kMaxEventIdBytes, Need::non_empty));
  FL_ASSIGN_OR_RETURN(e.event_status, f.string("EventStatus", kMaxWordBytes, Need::non_empty));
  FL_ASSIGN_OR_RETURN(e.event_type, f.string("EventType", kMaxWordBytes, Need::optional));
  FL_ASSIGN_OR_RETURN(e.resources, resources_from(f));
  FL_ASSIGN_OR_RETURN(e.not_before, f.string("NotBefore", kMaxTimeBytes, Need::optional));
  FL_ASSIGN_OR_RETURN(e.description, f.string("Description", kMaxTextBytes, Need::optional));
  if (f.find("DurationInSeconds") != nullptr) {
    FL_ASSIGN_OR_RETURN(std::int64_t d, f.integer("DurationInSeconds", -1, INT32_MAX));
    e.duration_seconds = static_cast<int>(d);
  }
  return e;
}

// `where` is "scheduled_events" for both a channel line and an IMDS body.
Result<ScheduledEventsDoc> doc_from(const json::object& object, const std::string& where) {
  Fields f(object, where);
  ScheduledEventsDoc doc;
  FL_ASSIGN_OR_RETURN(doc.incarnation, f.integer("DocumentIncarnation", 0, INT64_MAX));
  const json::value* events = f.find("Events");
  if (events == nullptr) return f.bad("Events", "is missing");
  if (!events->is_array()) return f.bad("Events", "must be an array");
  if (events->get_array().size() > kMaxEvents) {
    return f.bad("Events", "holds more than " + std::to_string(kMaxEvents) + " events");
  }
  for (const json::value& item : events->get_array()) {
    const std::string index = "Events[" + std::to_string(doc.events.size()) + "]";
    if (!item.is_object()) return f.bad(index, "must be an object");
    FL_ASSIGN_OR_RETURN(ScheduledEvent e,
                        event_from(Fields(item.get_object(), where + "." + index)));
    doc.events.push_back(std::move(e));
  }
  return doc;
}

Error unknown_type(const std::string& type) {
  return make_error(Condition::unsupported, "message.type '" + type + "' is unknown");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parsing

Result<json::object> parse_object(std::string_view text, std::string_view what) {
  const std::string name(what);
  if (text.size() > kMaxLineBytes) {
    return make_error(Condition::invalid_argument, name + " is longer than 64 KiB");
  }
  json::parse_options options;
  options.max_depth = kMaxDepth;
  boost::system::error_code ec;
  json::value value;
  try {
    value = json::parse(json::string_view(text.data(), text.size()), ec, {}, options);
  } catch (const std::exception& e) {  // allocation failure: the only throw left with an ec
    return make_error(Condition::invalid_argument, name + " is not JSON: " + e.what());
  }
  if (ec) return make_error(Condition::invalid_argument, name + " is not JSON: " + ec.message());
  if (!value.is_object()) {
    return make_error(Condition::invalid_argument, name + " is not a JSON object");
  }
  return std::move(value.get_object());
}

Result<Envelope> parse_envelope(std::string_view line) {
  FL_ASSIGN_OR_RETURN(json::object object, parse_object(line));
  Envelope envelope;
  FL_ASSIGN_OR_RETURN(envelope.type,
                      Fields(object, "message").string("type", kMaxTypeBytes, Need::required));
  envelope.fields = std::move(object);
  return envelope;
}

Result<GuestMessage> parse_guest_message(const Envelope& envelope) {
  const std::string& type = envelope.type;
  const Fields f(envelope.fields, type);
  if (type == "heartbeat") return heartbeat_from(f);
  if (type == "ack") {
    FL_ASSIGN_OR_RETURN(std::string id, f.string("EventId", kMaxEventIdBytes, Need::non_empty));
    return GuestMessage{Ack{std::move(id)}};
  }
  if (type == "instance_ack") {
    FL_ASSIGN_OR_RETURN(InstanceAck ack, identity_from(f));
    return GuestMessage{std::move(ack)};
  }
  if (type == "final") return final_from(f);
  if (type == "error") {
    FL_ASSIGN_OR_RETURN(std::string message, f.string("message", kMaxTextBytes, Need::required));
    return GuestMessage{GuestError{std::move(message)}};
  }
  return unknown_type(type);
}

Result<HostMessage> parse_host_message(const Envelope& envelope) {
  const std::string& type = envelope.type;
  if (type == "instance") {
    const Fields f(envelope.fields, type);
    FL_ASSIGN_OR_RETURN(InstanceAck id, identity_from(f));
    FL_ASSIGN_OR_RETURN(std::string host, f.string("host", kMaxHostBytes, Need::optional));
    return HostMessage{InstanceIdentity{std::move(id.service), id.index, id.update_domain,
                                        id.fault_domain, std::move(host)}};
  }
  if (type == "scheduled_events") {
    FL_ASSIGN_OR_RETURN(ScheduledEventsDoc doc, doc_from(envelope.fields, type));
    return HostMessage{std::move(doc)};
  }
  return unknown_type(type);
}

Result<GuestMessage> parse_guest_line(std::string_view line) {
  FL_ASSIGN_OR_RETURN(Envelope envelope, parse_envelope(line));
  return parse_guest_message(envelope);
}

Result<HostMessage> parse_host_line(std::string_view line) {
  FL_ASSIGN_OR_RETURN(Envelope envelope, parse_envelope(line));
  return parse_host_message(envelope);
}

Result<ScheduledEventsDoc> parse_scheduled_events(std::string_view text) {
  FL_ASSIGN_OR_RETURN(json::object object, parse_object(text, "document"));
  return doc_from(object, "scheduled_events");
}

// ---------------------------------------------------------------------------------------------
// Encoding

InstanceAck acknowledge(const InstanceIdentity& identity) {
  return InstanceAck{identity.service, identity.index, identity.update_domain,
                     identity.fault_domain};
}

std::string to_line(const Heartbeat& m) {
  return json::serialize(json::object{{"type", "heartbeat"},
                                      {"seq", m.seq},
                                      {"boot_id", m.boot_id},
                                      {"image", m.image},
                                      {"counter", m.counter},
                                      {"uptime_ms", m.uptime_ms},
                                      {"mode", m.mode}});
}

std::string to_line(const Ack& m) {
  return json::serialize(json::object{{"type", "ack"}, {"EventId", m.event_id}});
}

std::string to_line(const InstanceAck& m) {
  return json::serialize(json::object{{"type", "instance_ack"},
                                      {"service", m.service},
                                      {"index", m.index},
                                      {"platformUpdateDomain", m.update_domain},
                                      {"platformFaultDomain", m.fault_domain}});
}

std::string to_line(const Final& m) {
  return json::serialize(json::object{
      {"type", "final"}, {"boot_id", m.boot_id}, {"counter", m.counter}, {"clean", m.clean}});
}

std::string to_line(const GuestError& m) {
  return json::serialize(json::object{{"type", "error"}, {"message", m.message}});
}

std::string to_line(const InstanceIdentity& m) {
  return json::serialize(json::object{{"type", "instance"},
                                      {"service", m.service},
                                      {"index", m.index},
                                      {"platformUpdateDomain", m.update_domain},
                                      {"platformFaultDomain", m.fault_domain},
                                      {"host", m.host}});
}

json::object to_json(const ScheduledEventsDoc& doc) {
  json::array events;
  for (const ScheduledEvent& e : doc.events) {
    json::array resources;
    for (const std::string& r : e.resources) resources.emplace_back(r);
    events.emplace_back(json::object{{"EventId", e.event_id},
                                     {"EventType", e.event_type},
                                     {"ResourceType", "VirtualMachine"},
                                     {"Resources", std::move(resources)},
                                     {"EventStatus", e.event_status},
                                     {"NotBefore", e.not_before},
                                     {"Description", e.description},
                                     {"EventSource", "Platform"},
                                     {"DurationInSeconds", e.duration_seconds}});
  }
  return json::object{{"DocumentIncarnation", doc.incarnation}, {"Events", std::move(events)}};
}

std::string to_line(const ScheduledEventsDoc& m) {
  json::object line{{"type", "scheduled_events"}};
  for (auto& [key, value] : to_json(m)) line[key] = std::move(value);
  return json::serialize(line);
}

std::string to_line(const GuestMessage& m) {
  return std::visit([](const auto& alternative) { return to_line(alternative); }, m);
}

std::string to_line(const HostMessage& m) {
  return std::visit([](const auto& alternative) { return to_line(alternative); }, m);
}

std::string_view type_name(const GuestMessage& m) {
  static constexpr std::string_view kNames[] = {"heartbeat", "ack", "instance_ack", "final",
                                                "error"};
  return kNames[m.index()];
}

std::string_view type_name(const HostMessage& m) {
  static constexpr std::string_view kNames[] = {"instance", "scheduled_events"};
  return kNames[m.index()];
}

}  // namespace fabriclab::guestproto
