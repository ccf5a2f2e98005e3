#pragma once
// The integration-channel line protocol (one JSON object per line, each with "type"), as plain
// structs and functions so the rest of the guest never touches JSON.
//
// Host -> guest:  instance, scheduled_events (docs/guest-channel.md); anything else is logged.
// Guest -> host:  heartbeat, instance_ack, ack, error, final.
// Every host line is untrusted: depth-limited parse, then a schema check that names the field.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace fabriclab::guest {

inline constexpr std::int64_t kMaxUpdateDomain = 19;  // at most 20 UDs (upgradeDomainCount)
inline constexpr std::int64_t kMaxFaultDomain = 255;
inline constexpr std::size_t kMaxEvents = 256;
inline constexpr std::size_t kMaxResources = 1024;

struct InstanceInfo {
  std::string service;
  std::int64_t index = 0;
  std::int64_t update_domain = 0;
  std::int64_t fault_domain = 0;
};

struct ScheduledEvent {
  std::string event_id;
  std::string event_type;              // Freeze|Reboot|Redeploy|Reimage|Terminate (not enforced)
  std::string event_status;            // Scheduled|Started
  std::vector<std::string> resources;  // the VM names it affects (optional on the channel)
};

struct ScheduledEventsDoc {
  std::int64_t incarnation = 0;
  std::vector<ScheduledEvent> events;
};

struct BadLine {  // not JSON, not an object, or no string "type": dropped and counted
  std::string reason;
};
struct BadFields {  // a known type with bad fields: answered with an error line
  std::string message;
};
struct OtherType {  // a well-formed message of a type this guest does not know: logged
  std::string type;
};

using HostMessage = std::variant<InstanceInfo, ScheduledEventsDoc, BadLine, BadFields, OtherType>;

HostMessage parse_host_line(std::string_view line);

// IMDS bodies (Azure's shapes, see docs/clients.md "IMDS"). Untrusted like channel lines: on
// failure `error` names the problem and the result is empty.
std::optional<ScheduledEventsDoc> parse_imds_scheduled_events(std::string_view body,
                                                              std::string& error);
// `name` of /metadata/instance/compute: a non-empty printable-ASCII string of at most 256 bytes.
std::optional<std::string> parse_imds_compute_name(std::string_view body, std::string& error);
// {"StartRequests": [{"EventId": ID}]}
std::string start_requests_body(std::string_view event_id);

struct Heartbeat {
  std::uint64_t seq = 0;
  std::string_view boot_id;
  std::string_view image;
  std::int64_t counter = -1;
  std::int64_t uptime_ms = 0;
  std::string_view mode;
};

std::string heartbeat_line(const Heartbeat& heartbeat);
std::string instance_ack_line(const InstanceInfo& instance);
std::string ack_line(std::string_view event_id);
std::string error_line(std::string_view message);
std::string final_line(std::string_view boot_id, std::int64_t counter, bool clean);

}  // namespace fabriclab::guest
