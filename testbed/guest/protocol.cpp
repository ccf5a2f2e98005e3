#include "protocol.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <optional>

namespace fabriclab::guest {
namespace {

namespace json = boost::json;

constexpr std::size_t kMaxDepth = 16;
constexpr std::size_t kMaxIdBytes = 256;

std::optional<std::int64_t> as_integer(const json::value* value) {
  if (value == nullptr) return std::nullopt;
  if (value->is_int64()) return value->get_int64();
  if (value->is_uint64()) {
    if (value->get_uint64() > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<std::int64_t>(value->get_uint64());
  }
  if (value->is_double()) {
    double d = value->get_double();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      return static_cast<std::int64_t>(d);
    }
  }
  return std::nullopt;
}

// Sets `error` (first error wins) unless `object[key]` is an integer in [lo, hi].
std::int64_t integer_field(const json::object& object, std::string_view key, std::int64_t lo,
                           std::int64_t hi, std::string_view where, std::string& error) {
  auto value = as_integer(object.if_contains(key));
  if (!value || *value < lo || *value > hi) {
    if (error.empty()) {
      error = std::string(where) + std::string(key) + " must be an integer in " +
              std::to_string(lo) + ".." + std::to_string(hi);
    }
    return 0;
  }
  return *value;
}

std::string string_field(const json::object& object, std::string_view key, bool required,
                         std::string_view where, std::string& error) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr && !required) return {};
  if (value == nullptr || !value->is_string() || value->get_string().empty() ||
      value->get_string().size() > kMaxIdBytes) {
    if (error.empty()) {
      error = std::string(where) + std::string(key) + " must be a non-empty string of at most " +
              std::to_string(kMaxIdBytes) + " bytes";
    }
    return {};
  }
  return std::string(value->get_string());
}

HostMessage parse_instance(const json::object& object) {
  std::string error;
  InstanceInfo info;
  info.service = string_field(object, "service", true, "instance: ", error);
  info.index = integer_field(object, "index", 0, 1'000'000, "instance: ", error);
  info.update_domain =
      integer_field(object, "platformUpdateDomain", 0, kMaxUpdateDomain, "instance: ", error);
  info.fault_domain =
      integer_field(object, "platformFaultDomain", 0, kMaxFaultDomain, "instance: ", error);
  if (!error.empty()) return BadFields{error};
  return info;
}

HostMessage parse_scheduled_events(const json::object& object) {
  std::string error;
  ScheduledEventsDoc doc;
  doc.incarnation =
      integer_field(object, "DocumentIncarnation", 0, INT64_MAX, "scheduled_events: ", error);
  const json::value* events = object.if_contains("Events");
  if (events == nullptr || !events->is_array() || events->get_array().size() > kMaxEvents) {
    if (error.empty()) {
      error = "scheduled_events: Events must be an array of at most " + std::to_string(kMaxEvents) +
              " events";
    }
    return BadFields{error};
  }
  std::size_t i = 0;
  for (const json::value& item : events->get_array()) {
    std::string where = "scheduled_events: Events[" + std::to_string(i++) + "].";
    if (!item.is_object()) {
      if (error.empty()) error = where.substr(0, where.size() - 1) + " must be an object";
      break;
    }
    const json::object& event = item.get_object();
    ScheduledEvent parsed;
    parsed.event_id = string_field(event, "EventId", true, where, error);
    parsed.event_status = string_field(event, "EventStatus", true, where, error);
    parsed.event_type = string_field(event, "EventType", false, where, error);
    if (const json::value* resources = event.if_contains("Resources")) {
      if (!resources->is_array() || resources->get_array().size() > kMaxResources) {
        if (error.empty()) {
          error = where + "Resources must be an array of at most " + std::to_string(kMaxResources) +
                  " strings";
        }
      } else {
        for (const json::value& resource : resources->get_array()) {
          if (!resource.is_string() || resource.get_string().size() > kMaxIdBytes) {
            if (error.empty()) {
              error = where + "Resources must hold strings of at most " +
                      std::to_string(kMaxIdBytes) + " bytes";
            }
            break;
          }
          parsed.resources.emplace_back(resource.get_string());
        }
      }
    }
    doc.events.push_back(std::move(parsed));
  }
  if (!error.empty()) return BadFields{error};
  return doc;
}

std::string serialize_line(const json::object& object) { return json::serialize(object); }

// Depth-limited parse of an untrusted body into an object; nullopt with `error` set otherwise.
std::optional<json::object> parse_object(std::string_view text, std::string& error) {
  json::parse_options options;
  options.max_depth = kMaxDepth;
  boost::system::error_code ec;
  json::value value;
  try {
    value = json::parse(json::string_view(text.data(), text.size()), ec, {}, options);
  } catch (const std::exception& e) {
    error = std::string("parse failed: ") + e.what();
    return std::nullopt;
  }
  if (ec) {
    error = "invalid JSON: " + ec.message();
    return std::nullopt;
  }
  if (!value.is_object()) {
    error = "not a JSON object";
    return std::nullopt;
  }
  return std::move(value.get_object());
}

}  // namespace

HostMessage parse_host_line(std::string_view line) {
  json::parse_options options;
  options.max_depth = kMaxDepth;
  boost::system::error_code ec;
  json::value value;
  try {
    value = json::parse(json::string_view(line.data(), line.size()), ec, {}, options);
  } catch (const std::exception& e) {
    return BadLine{std::string("parse failed: ") + e.what()};
  }
  if (ec) return BadLine{"invalid JSON: " + ec.message()};
  if (!value.is_object()) return BadLine{"not a JSON object"};
  const json::object& object = value.get_object();
  const json::value* type = object.if_contains("type");
  if (type == nullptr || !type->is_string()) return BadLine{"no string \"type\""};
  const std::string_view kind(type->get_string().data(), type->get_string().size());
  if (kind == "instance") return parse_instance(object);
  if (kind == "scheduled_events") return parse_scheduled_events(object);
  return OtherType{std::string(kind.substr(0, 64))};
}

std::optional<ScheduledEventsDoc> parse_imds_scheduled_events(std::string_view body,
                                                              std::string& error) {
  auto object = parse_object(body, error);
  if (!object) return std::nullopt;
  HostMessage parsed = parse_scheduled_events(*object);
  if (auto* fields = std::get_if<BadFields>(&parsed)) {
    error = fields->message;
    return std::nullopt;
  }
  return std::get<ScheduledEventsDoc>(std::move(parsed));
}

std::optional<std::string> parse_imds_compute_name(std::string_view body, std::string& error) {
  auto object = parse_object(body, error);
  if (!object) return std::nullopt;
  const json::value* name = object->if_contains("name");
  if (name == nullptr || !name->is_string()) {
    error = "compute: name must be a string";
    return std::nullopt;
  }
  std::string_view text(name->get_string().data(), name->get_string().size());
  bool printable = std::all_of(text.begin(), text.end(),
                               [](char c) { return c > ' ' && c < 0x7f && c != '"' && c != '\\'; });
  if (text.empty() || text.size() > kMaxIdBytes || !printable) {
    error = "compute: name must be 1.." + std::to_string(kMaxIdBytes) +
            " printable ASCII characters without spaces or quotes";
    return std::nullopt;
  }
  return std::string(text);
}

std::string start_requests_body(std::string_view event_id) {
  json::object request;
  request["EventId"] = event_id;
  json::array requests;
  requests.push_back(std::move(request));
  json::object object;
  object["StartRequests"] = std::move(requests);
  return json::serialize(object);
}

std::string heartbeat_line(const Heartbeat& heartbeat) {
  json::object object;
  object["type"] = "heartbeat";
  object["seq"] = heartbeat.seq;
  object["boot_id"] = heartbeat.boot_id;
  object["image"] = heartbeat.image;
  object["counter"] = heartbeat.counter;
  object["uptime_ms"] = heartbeat.uptime_ms;
  object["mode"] = heartbeat.mode;
  return serialize_line(object);
}

std::string instance_ack_line(const InstanceInfo& instance) {
  json::object object;
  object["type"] = "instance_ack";
  object["service"] = instance.service;
  object["index"] = instance.index;
  object["platformUpdateDomain"] = instance.update_domain;
  object["platformFaultDomain"] = instance.fault_domain;
  return serialize_line(object);
}

std::string ack_line(std::string_view event_id) {
  json::object object;
  object["type"] = "ack";
  object["EventId"] = event_id;
  return serialize_line(object);
}

std::string error_line(std::string_view message) {
  json::object object;
  object["type"] = "error";
  object["message"] = message;
  return serialize_line(object);
}

std::string final_line(std::string_view boot_id, std::int64_t counter, bool clean) {
  json::object object;
  object["type"] = "final";
  object["boot_id"] = boot_id;
  object["counter"] = counter;
  object["clean"] = clean;
  return serialize_line(object);
}

}  // namespace fabriclab::guest
