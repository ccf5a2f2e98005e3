#pragma once
// What the guest app does about scheduled events it reads from IMDS: the decisions only, as a
// pure state machine over (document, name, clock), so they can be tested without sockets.
//
// Azure's guidance for an app behind a load balancer: on a Scheduled event that names this VM,
// take it out of rotation (fail the health probe), wait until the balancer has noticed and the
// in-flight requests are done (drain_ms), then approve with StartRequests so the host need not
// wait for NotBefore. With drain off the app ignores events (the host goes ahead at NotBefore).
// The app stays out of rotation while the event is listed (Scheduled, then Started: a
// memory-preserving update resumes this same boot) and serves again once the event is gone.
// Only a Scheduled event starts a drain: a fresh boot that sees its event already Started (the
// host restarted it) serves at once.

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol.hpp"

namespace fabriclab::guest {

class DrainPolicy {
 public:
  static constexpr std::int64_t kApprovalRetryMs = 1000;
  static constexpr int kMaxApprovalAttempts = 30;

  DrainPolicy(bool drain, std::int64_t drain_ms) : drain_(drain), drain_ms_(drain_ms) {}

  // A freshly fetched and parsed document; `name` is this VM's name. Logs every decision.
  void on_document(const ScheduledEventsDoc& doc, std::string_view name, std::int64_t now_ms);

  // True while an event this app is draining for is still listed: /health answers 503.
  bool draining() const { return !tracked_.empty(); }

  // The next approval to POST now, if one is due (marked in flight until reported).
  std::optional<std::string> take_due_approval(std::int64_t now_ms);
  // Outcome of that POST: `accepted` (HTTP 200), `retry` (transport error, 429, 5xx) or a final
  // refusal (400: unknown or malformed, not retried).
  enum class Outcome { accepted, retry, refused };
  void approval_result(const std::string& event_id, Outcome outcome, std::int64_t now_ms);

  std::int64_t next_deadline() const;  // INT64_MAX when nothing is pending

 private:
  enum class Approval { waiting, in_flight, done };
  struct Tracked {
    std::string event_id;
    Approval approval = Approval::waiting;
    std::int64_t due_ms = 0;
    int attempts = 0;
  };
  Tracked* find(std::string_view event_id);
  bool seen(const std::string& event_id) const;
  void remember(const std::string& event_id);

  bool drain_;
  std::int64_t drain_ms_;
  std::string name_;
  std::vector<Tracked> tracked_;
  std::deque<std::string> seen_;  // events already decided on (logged once), bounded
};

}  // namespace fabriclab::guest
