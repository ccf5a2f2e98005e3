#include "protocol.hpp"

#include <algorithm>
#include <boost/json.hpp>

namespace fabriclab::guest {
namespace {

namespace json = boost::json;

constexpr std::size_t kMaxComputeNameBytes = 256;

}  // namespace

HostMessage parse_host_line(std::string_view line) {
  auto envelope = guestproto::parse_envelope(line);
  if (!envelope.ok()) return BadLine{envelope.error().message};
  auto message = guestproto::parse_host_message(*envelope);
  if (!message.ok()) {
    if (message.condition() == Condition::unsupported) return OtherType{envelope->type};
    return BadFields{message.error().message};
  }
  if (auto* instance = std::get_if<InstanceInfo>(&*message)) return std::move(*instance);
  return std::get<ScheduledEventsDoc>(std::move(*message));
}

std::optional<ScheduledEventsDoc> parse_imds_scheduled_events(std::string_view body,
                                                              std::string& error) {
  auto doc = guestproto::parse_scheduled_events(body);
  if (!doc.ok()) {
    error = doc.error().message;
    return std::nullopt;
  }
  return std::move(doc).value();
}

std::optional<std::string> parse_imds_compute_name(std::string_view body, std::string& error) {
  auto object = guestproto::parse_object(body, "compute");
  if (!object.ok()) {
    error = object.error().message;
    return std::nullopt;
  }
  const json::value* name = object->if_contains("name");
  if (name == nullptr || !name->is_string()) {
    error = "compute: name must be a string";
    return std::nullopt;
  }
  std::string_view text(name->get_string().data(), name->get_string().size());
  bool printable = std::all_of(text.begin(), text.end(),
                               [](char c) { return c > ' ' && c < 0x7f && c != '"' && c != '\\'; });
  if (text.empty() || text.size() > kMaxComputeNameBytes || !printable) {
    error = "compute: name must be 1.." + std::to_string(kMaxComputeNameBytes) +
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

std::string heartbeat_line(const Heartbeat& h) {
  return guestproto::to_line(
      guestproto::Heartbeat{h.seq, std::string(h.boot_id), std::string(h.image), h.counter,
                            static_cast<std::uint64_t>(h.uptime_ms), std::string(h.mode)});
}

std::string instance_ack_line(const InstanceInfo& instance) {
  return guestproto::to_line(guestproto::acknowledge(instance));
}

std::string ack_line(std::string_view event_id) {
  return guestproto::to_line(guestproto::Ack{std::string(event_id)});
}

std::string error_line(std::string_view message) {
  return guestproto::to_line(guestproto::GuestError{std::string(message)});
}

std::string final_line(std::string_view boot_id, std::int64_t counter, bool clean) {
  return guestproto::to_line(guestproto::Final{std::string(boot_id), counter, clean});
}

}  // namespace fabriclab::guest
