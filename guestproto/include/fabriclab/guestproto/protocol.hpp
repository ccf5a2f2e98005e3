#pragma once
// The guest integration channel's line protocol (docs/guest-channel.md): a virtio-serial port
// (org.fabriclab.integration.0) carrying one JSON object per line, each with a string "type".
//
// One copy for the three programs that speak it: the host agent (agent/src/guest_link.cpp), the
// simulated guest of libvirt's test driver (agent/src/sim_guest.cpp) and the guest program
// (testbed/guest, PID 1 of the lab VMs). The guest program is linked statically into an
// initramfs, so this library depends on nothing but Boost.JSON's headers and
// fabriclab/common/result.hpp (the fabriclab_result library, which has no dependency). The program
// that links it supplies Boost.JSON's implementation: the agent links Boost::json, the guest
// compiles it header-only once (testbed/guest/json_impl.cpp).
//
// Every line is untrusted, in both directions. A parse checks, in order: the line's size
// (kMaxLineBytes), JSON nested at most kMaxDepth deep, an object with a string "type" (the
// envelope), then that type's schema with a limit on every field. Errors are
// Condition::invalid_argument naming the problem ("heartbeat.boot_id is empty"), except a
// well-formed line of a type the reading side does not know: Condition::unsupported
// ("message.type 'x' is unknown"). The limits are the same for the writer and the reader, so what
// one side encodes within them the other side parses to an equal struct; encoders do not check
// (a value past a limit makes a line the other side refuses).
//
// Messages are plain aggregates compared field by field (`==` is defaulted).

#include <boost/json/object.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "fabriclab/common/result.hpp"

namespace fabriclab::guestproto {

// ---------------------------------------------------------------------------------------------
// Limits (both directions)

inline constexpr std::size_t kMaxLineBytes = 64 * 1024;  // without the newline
inline constexpr int kMaxDepth = 8;                      // a scheduled-events line needs 4
inline constexpr std::size_t kMaxTypeBytes = 32;
inline constexpr std::size_t kMaxNameBytes = 64;      // service, boot_id, image, Resources[i]
inline constexpr std::size_t kMaxHostBytes = 256;     // instance.host (the agent's --host-id)
inline constexpr std::size_t kMaxWordBytes = 32;      // mode, EventType, EventStatus
inline constexpr std::size_t kMaxEventIdBytes = 128;  // EventId (Azure's are GUIDs)
inline constexpr std::size_t kMaxTimeBytes = 64;      // NotBefore (RFC 1123)
inline constexpr std::size_t kMaxTextBytes = 1024;    // error.message, Description
inline constexpr std::int64_t kMaxIndex = 100000;
inline constexpr std::int64_t kMaxUpdateDomain = 19;  // at most 20 UDs (upgradeDomainCount)
inline constexpr std::int64_t kMaxFaultDomain = 1000;
inline constexpr std::size_t kMaxEvents = 256;
inline constexpr std::size_t kMaxResources = 1024;

// ---------------------------------------------------------------------------------------------
// Guest -> host

// "heartbeat", every heartbeat period. `counter` is durable on the guest's data disk before it is
// reported (-1: the guest has no data disk). `mode`: normal | ignore-power | fail-app (optional
// on the wire, always written).
struct Heartbeat {
  std::uint64_t seq = 0;
  std::string boot_id;  // non-empty
  std::string image;
  std::int64_t counter = 0;
  std::uint64_t uptime_ms = 0;
  std::string mode;

  bool operator==(const Heartbeat&) const = default;
};
// "ack" {EventId}: "start now" for a scheduled event (Azure's StartRequests).
struct Ack {
  std::string event_id;  // non-empty

  bool operator==(const Ack&) const = default;
};
// "instance_ack": the guest read its instance identity (the instance line's fields but host).
struct InstanceAck {
  std::string service;  // non-empty
  int index = 0;
  int update_domain = 0;
  int fault_domain = 0;

  bool operator==(const InstanceAck&) const = default;
};
// "final": the last record on a clean power-off.
struct Final {
  std::string boot_id;
  std::int64_t counter = 0;
  bool clean = false;

  bool operator==(const Final&) const = default;
};
// "error" {message}: the guest reports a problem (its app failed to start, a host line it
// refused).
struct GuestError {
  std::string message;

  bool operator==(const GuestError&) const = default;
};

using GuestMessage = std::variant<Heartbeat, Ack, InstanceAck, Final, GuestError>;

// ---------------------------------------------------------------------------------------------
// Host -> guest

// "instance": what Azure's instance metadata gives a guest. `host` is optional on the wire.
struct InstanceIdentity {
  std::string service;  // non-empty
  int index = 0;
  int update_domain = 0;
  int fault_domain = 0;
  std::string host;

  bool operator==(const InstanceIdentity&) const = default;
};

// One event of a document shaped like Azure Scheduled Events. ResourceType ("VirtualMachine") and
// EventSource ("Platform") are constants: written, not read back. On the wire EventType,
// Resources, NotBefore, Description and DurationInSeconds are optional.
struct ScheduledEvent {
  std::string event_id;                    // non-empty
  std::string event_type = "Reboot";       // Freeze | Reboot | Redeploy | Preempt | Terminate
  std::string event_status = "Scheduled";  // Scheduled | Started (non-empty)
  std::vector<std::string> resources;      // the VM names it affects
  std::string not_before;                  // RFC 1123 time, as Azure writes it ("" once Started)
  std::string description;
  int duration_seconds = -1;  // -1: unknown

  bool operator==(const ScheduledEvent&) const = default;
};
// "scheduled_events": the whole current set (a guest drops what is no longer listed).
struct ScheduledEventsDoc {
  std::int64_t incarnation = 0;  // DocumentIncarnation, 0..INT64_MAX
  std::vector<ScheduledEvent> events;

  bool operator==(const ScheduledEventsDoc&) const = default;
};

using HostMessage = std::variant<InstanceIdentity, ScheduledEventsDoc>;

// The ack a guest answers an instance line with.
InstanceAck acknowledge(const InstanceIdentity& identity);

// ---------------------------------------------------------------------------------------------
// Encoding: one line, without its newline.

std::string to_line(const Heartbeat& m);
std::string to_line(const Ack& m);
std::string to_line(const InstanceAck& m);
std::string to_line(const Final& m);
std::string to_line(const GuestError& m);
std::string to_line(const GuestMessage& m);
std::string to_line(const InstanceIdentity& m);
std::string to_line(const ScheduledEventsDoc& m);
std::string to_line(const HostMessage& m);

// The scheduled-events document without "type": what IMDS serves at /metadata/scheduledevents.
boost::json::object to_json(const ScheduledEventsDoc& doc);

// The wire "type" of a message ("heartbeat", "ack", "instance_ack", "final", "error";
// "instance", "scheduled_events").
std::string_view type_name(const GuestMessage& m);
std::string_view type_name(const HostMessage& m);

// ---------------------------------------------------------------------------------------------
// Parsing

// An untrusted JSON object within the line limits (size, depth). `what` names it in errors
// ("line is not JSON: ...").
Result<boost::json::object> parse_object(std::string_view text, std::string_view what = "line");

// The envelope of one line: a JSON object with a string "type" of at most kMaxTypeBytes.
struct Envelope {
  std::string type;
  boost::json::object fields;  // the whole object, "type" included
};
Result<Envelope> parse_envelope(std::string_view line);

// The schema of each direction's types; another type is Condition::unsupported.
Result<GuestMessage> parse_guest_message(const Envelope& envelope);
Result<HostMessage> parse_host_message(const Envelope& envelope);

// Both steps for one line (without its newline).
Result<GuestMessage> parse_guest_line(std::string_view line);
Result<HostMessage> parse_host_line(std::string_view line);

// A scheduled-events document on its own, "type" not required: an IMDS body.
Result<ScheduledEventsDoc> parse_scheduled_events(std::string_view text);

}  // namespace fabriclab::guestproto
