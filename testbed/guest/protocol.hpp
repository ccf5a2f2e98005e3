#pragma once
// The integration channel as the guest program uses it, so the rest of the guest never touches
// JSON. The protocol itself (every message kind, its encoder, its checked parser and the limits)
// is the shared library fabriclab/guestproto, the same one the host agent and its simulated
// guest use; this file only puts it in the guest's terms:
//
// Host -> guest:  instance, scheduled_events (docs/guest-channel.md). parse_host_line sorts a
// line into what the guest does with it: a message, a line that is not a message at all (BadLine:
// dropped and counted), a known type with bad fields (BadFields: answered with an error line), a
// type this guest does not know (OtherType: logged).
// Guest -> host:  heartbeat, instance_ack, ack, error, final.
//
// Plus the two IMDS documents the guest app reads and the approval it posts (Azure's shapes), which
// are untrusted like channel lines.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "fabriclab/guestproto/protocol.hpp"

namespace fabriclab::guest {

using InstanceInfo = guestproto::InstanceIdentity;
using guestproto::ScheduledEvent;
using guestproto::ScheduledEventsDoc;

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

// IMDS bodies (Azure's shapes, see docs/clients.md "IMDS"). On failure `error` names the problem
// and the result is empty.
std::optional<ScheduledEventsDoc> parse_imds_scheduled_events(std::string_view body,
                                                              std::string& error);
// `name` of /metadata/instance/compute: a non-empty printable-ASCII string of at most 256 bytes.
std::optional<std::string> parse_imds_compute_name(std::string_view body, std::string& error);
// {"StartRequests": [{"EventId": ID}]}
std::string start_requests_body(std::string_view event_id);

// The heartbeat as the guest's main loop fills it each period (views of its own strings).
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
