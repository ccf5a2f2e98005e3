#pragma once
// The guest integration channel's line protocol (docs/guest-channel.md): one JSON object per
// line, each with a "type". Every guest line is untrusted: `parse_guest_line` enforces the size
// and depth limits and the schema, and names the offending field in its error.

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <boost/json/object.hpp>

#include "fabriclab/common/result.hpp"

namespace fabriclab::agent {

inline constexpr size_t kMaxGuestLine = 64 * 1024;
inline constexpr int kMaxGuestJsonDepth = 8;

// guest -> host, every heartbeat period. `counter` is durable on the guest's data disk (-1: the
// guest has no data disk).
struct Heartbeat {
  uint64_t seq = 0;
  std::string boot_id;
  std::string image;
  int64_t counter = 0;
  uint64_t uptime_ms = 0;
  std::string mode;
};
// guest -> host: "start now" for a scheduled event (Azure's StartRequests).
struct Ack {
  std::string event_id;
};
// guest -> host: the guest read its instance identity.
struct InstanceAck {
  std::string service;
  int index = 0;
  int update_domain = 0;
  int fault_domain = 0;
};
// guest -> host: the last record on a clean power-off.
struct Final {
  std::string boot_id;
  int64_t counter = 0;
  bool clean = false;
};
// guest -> host: the guest reports a problem (e.g. its app failed to start).
struct GuestError {
  std::string message;
};

using GuestMessage = std::variant<Heartbeat, Ack, InstanceAck, Final, GuestError>;

std::string_view type_name(const GuestMessage& m);

// Parses one line (without its newline).
Result<GuestMessage> parse_guest_line(std::string_view line);

// host -> guest: what Azure's instance metadata gives a guest.
struct InstanceIdentity {
  std::string service;
  int index = 0;
  int update_domain = 0;
  int fault_domain = 0;
  std::string host;
};
std::string instance_line(const InstanceIdentity& id);

// host -> guest: a document shaped like Azure Scheduled Events.
struct ScheduledEvent {
  std::string event_id;
  std::string event_type = "Reboot";  // Freeze | Reboot | Redeploy | Preempt | Terminate
  std::vector<std::string> resources;
  std::string event_status = "Scheduled";  // Scheduled | Started
  std::string not_before;                  // RFC 1123 time, as Azure writes it
  std::string description;
  int duration_seconds = -1;
};
std::string scheduled_events_line(uint64_t incarnation, const std::vector<ScheduledEvent>& events);
// The same document without "type": what IMDS serves at /metadata/scheduledevents.
boost::json::object scheduled_events_json(uint64_t incarnation, const std::vector<ScheduledEvent>& events);

}  // namespace fabriclab::agent
