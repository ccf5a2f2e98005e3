#pragma once
// The guest integration channel as the agent sees it: the shared protocol library
// (fabriclab/guestproto/protocol.hpp: every message kind, its encoder and its checked parser) under
// the agent's names. The agent reads guest lines (parse_guest_line, every one untrusted) and
// writes host lines (guestproto::to_line of an InstanceIdentity or a ScheduledEventsDoc;
// guestproto::to_json of the document is what IMDS serves).

#include <cstddef>

#include "fabriclab/guestproto/protocol.hpp"

namespace fabriclab::agent {

inline constexpr std::size_t kMaxGuestLine = guestproto::kMaxLineBytes;

using guestproto::Ack;
using guestproto::Final;
using guestproto::GuestError;
using guestproto::GuestMessage;
using guestproto::Heartbeat;
using guestproto::InstanceAck;
using guestproto::InstanceIdentity;
using guestproto::parse_guest_line;
using guestproto::ScheduledEvent;
using guestproto::ScheduledEventsDoc;

}  // namespace fabriclab::agent
