#include "drain.hpp"

#include <algorithm>
#include <climits>

#include "boot_env.hpp"

namespace fabriclab::guest {
namespace {

constexpr std::size_t kRememberedEvents = 1024;

bool names(const ScheduledEvent& event, std::string_view name) {
  return !name.empty() &&
         std::find(event.resources.begin(), event.resources.end(), name) != event.resources.end();
}

}  // namespace

DrainPolicy::Tracked* DrainPolicy::find(std::string_view event_id) {
  auto it = std::find_if(tracked_.begin(), tracked_.end(),
                         [&](const Tracked& t) { return t.event_id == event_id; });
  return it == tracked_.end() ? nullptr : &*it;
}

bool DrainPolicy::seen(const std::string& event_id) const {
  return std::find(seen_.begin(), seen_.end(), event_id) != seen_.end();
}

void DrainPolicy::remember(const std::string& event_id) {
  seen_.push_back(event_id);
  if (seen_.size() > kRememberedEvents) seen_.pop_front();
}

void DrainPolicy::on_document(const ScheduledEventsDoc& doc, std::string_view name,
                              std::int64_t now_ms) {
  const bool was_draining = draining();
  if (name != name_) {  // "does not name us" was decided for another name: decide again
    name_ = std::string(name);
    seen_.clear();
  }
  // Events that left the document end their drain.
  std::erase_if(tracked_, [&](const Tracked& tracked) {
    bool listed = std::any_of(doc.events.begin(), doc.events.end(),
                              [&](const auto& e) { return e.event_id == tracked.event_id; });
    if (!listed) {
      log("imds: event %s is gone from the document%s", tracked.event_id.c_str(),
          tracked.approval == Approval::done ? "" : " before it was approved");
    }
    return !listed;
  });
  for (const ScheduledEvent& event : doc.events) {
    if (Tracked* tracked = find(event.event_id)) {
      if (event.event_status != "Scheduled" && tracked->approval != Approval::done) {
        log("imds: event %s is %s: approval no longer needed", event.event_id.c_str(),
            event.event_status.c_str());
        tracked->approval = Approval::done;  // an in-flight POST's answer is ignored
      }
      continue;
    }
    if (seen(event.event_id)) continue;
    if (!names(event, name)) {
      // Resources list every VM the operation affects; one that does not list this VM is about
      // someone else (IMDS should not send it, but the app must not act on it).
      log("imds: event %s (%s, %s) does not name %.*s: ignored", event.event_id.c_str(),
          event.event_type.c_str(), event.event_status.c_str(), static_cast<int>(name.size()),
          name.data());
      remember(event.event_id);
      continue;
    }
    if (event.event_status != "Scheduled") {
      log("imds: event %s (%s) for %.*s is already %s: nothing to do", event.event_id.c_str(),
          event.event_type.c_str(), static_cast<int>(name.size()), name.data(),
          event.event_status.c_str());
      remember(event.event_id);
      continue;
    }
    if (!drain_) {
      log("imds: event %s (%s) for %.*s: drain is off, not draining and not approving (the "
          "host goes ahead at NotBefore)",
          event.event_id.c_str(), event.event_type.c_str(), static_cast<int>(name.size()),
          name.data());
      remember(event.event_id);
      continue;
    }
    log("imds: event %s (%s) for %.*s: draining (/health 503), approving in %lld ms",
        event.event_id.c_str(), event.event_type.c_str(), static_cast<int>(name.size()),
        name.data(), static_cast<long long>(drain_ms_));
    tracked_.push_back(Tracked{event.event_id, Approval::waiting, now_ms + drain_ms_, 0});
    remember(event.event_id);
  }
  if (was_draining && !draining()) log("imds: no event left for this VM: serving again");
}

std::optional<std::string> DrainPolicy::take_due_approval(std::int64_t now_ms) {
  for (Tracked& tracked : tracked_) {
    if (tracked.approval == Approval::waiting && tracked.due_ms <= now_ms) {
      tracked.approval = Approval::in_flight;
      ++tracked.attempts;
      return tracked.event_id;
    }
  }
  return std::nullopt;
}

void DrainPolicy::approval_result(const std::string& event_id, Outcome outcome,
                                  std::int64_t now_ms) {
  Tracked* tracked = find(event_id);
  if (tracked == nullptr || tracked->approval != Approval::in_flight) return;  // gone meanwhile
  switch (outcome) {
    case Outcome::accepted:
      log("imds: approved %s (StartRequests accepted)", event_id.c_str());
      tracked->approval = Approval::done;
      return;
    case Outcome::refused:
      log("imds: approval of %s refused; not retrying (still draining while it is listed)",
          event_id.c_str());
      tracked->approval = Approval::done;
      return;
    case Outcome::retry:
      if (tracked->attempts >= kMaxApprovalAttempts) {
        log("imds: approval of %s failed %d times; giving up (the host goes ahead at NotBefore)",
            event_id.c_str(), tracked->attempts);
        tracked->approval = Approval::done;
        return;
      }
      tracked->approval = Approval::waiting;
      tracked->due_ms = now_ms + kApprovalRetryMs;
      return;
  }
}

std::int64_t DrainPolicy::next_deadline() const {
  std::int64_t deadline = INT64_MAX;
  for (const Tracked& tracked : tracked_) {
    if (tracked.approval == Approval::waiting) deadline = std::min(deadline, tracked.due_ms);
  }
  return deadline;
}

}  // namespace fabriclab::guest
