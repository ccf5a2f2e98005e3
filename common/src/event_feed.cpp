// EventFeed: one mutex orders everything that must agree on seq — numbering and storing an
// event, queueing it to every subscription, and taking a snapshot or backlog while registering a
// new subscription. Holding it across the fan-out is what rules out gaps and duplicates; it is
// cheap because the fan-out only appends a shared string to each bounded queue and, on the
// empty -> non-empty edge, calls the consumer's on_ready (which posts, never runs the write).
//
// Lock order: feed mutex, then a subscription's mutex. take() only needs the subscription's.

#include "fabriclab/common/event_feed.hpp"

#include <algorithm>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <mutex>

#include "fabriclab/common/json.hpp"

namespace fabriclab {

using Message = Subscription::Message;

struct Subscription::Impl {
  std::weak_ptr<EventFeed::Impl> feed;
  size_t max_queue = 0;

  mutable std::mutex mu;
  std::deque<Message> queue;
  bool overflowed = false;
  bool cancelled = false;
  bool notified = false;  // on_ready was called and take() has not run since
  std::function<void()> on_ready;

  // Called under the feed's lock, with the events of one publish call. False when the
  // subscription overflowed just now.
  bool push(const std::vector<Message>& ms) {
    std::lock_guard lock(mu);
    if (cancelled || overflowed) return true;
    if (queue.size() + ms.size() > max_queue) {
      overflowed = true;
      queue.clear();
      if (on_ready) on_ready();
      return false;
    }
    queue.insert(queue.end(), ms.begin(), ms.end());
    if (!notified) {
      notified = true;
      if (on_ready) on_ready();
    }
    return true;
  }
};

struct EventFeed::Impl {
  struct Stored {
    uint64_t seq;
    json::object event;
    Message text;
  };

  Impl(SnapshotFn fn, size_t history, uint64_t start_after)
      : snapshot(std::move(fn)), history(history), last_seq(start_after) {}

  SnapshotFn snapshot;
  const size_t history;

  mutable std::mutex mu;
  std::deque<Stored> ring;
  uint64_t last_seq = 0;
  uint64_t published = 0;
  uint64_t dropped_slow = 0;
  std::vector<std::shared_ptr<Subscription::Impl>> subs;

  void remove(const Subscription::Impl* s) {
    std::erase_if(subs, [&](const auto& p) { return p.get() == s; });
  }
};

// Subscription

Subscription::Subscription(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Subscription::~Subscription() { cancel(); }

std::deque<Message> Subscription::take(bool* overflowed) {
  std::lock_guard lock(impl_->mu);
  impl_->notified = false;
  if (overflowed) *overflowed = impl_->overflowed;
  return std::exchange(impl_->queue, {});
}

bool Subscription::overflowed() const {
  std::lock_guard lock(impl_->mu);
  return impl_->overflowed;
}

void Subscription::cancel() {
  if (auto feed = impl_->feed.lock()) {
    std::lock_guard lock(feed->mu);
    feed->remove(impl_.get());
  }
  std::function<void()> dropped;  // destroyed after the lock is released
  std::lock_guard lock(impl_->mu);
  impl_->cancelled = true;
  impl_->queue.clear();
  dropped = std::move(impl_->on_ready);
  impl_->on_ready = nullptr;
}

// EventFeed

EventFeed::EventFeed(SnapshotFn snapshot, size_t history, uint64_t start_after)
    : impl_(std::make_shared<Impl>(std::move(snapshot), history, start_after)) {}

EventFeed::~EventFeed() = default;

uint64_t EventFeed::publish(std::string type, json::object fields) {
  return publish(std::move(type), std::move(fields), {});
}

uint64_t EventFeed::publish(std::string type, json::object fields,
                            const std::function<void()>& apply) {
  std::vector<std::pair<std::string, json::object>> one;
  one.emplace_back(std::move(type), std::move(fields));
  return publish(std::move(one), apply);
}

uint64_t EventFeed::publish(std::vector<std::pair<std::string, json::object>> events,
                            const std::function<void()>& apply) {
  Impl& f = *impl_;
  std::lock_guard lock(f.mu);
  if (apply) apply();
  std::vector<Message> texts;
  texts.reserve(events.size());
  for (auto& [type, fields] : events) {
    uint64_t seq = ++f.last_seq;
    json::object event;
    event.reserve(fields.size() + 3);
    event["seq"] = static_cast<int64_t>(seq);  // int64 like a parsed number, for readers
    event["time"] = rfc3339_now();
    event["type"] = type;
    for (auto& kv : fields) {
      if (kv.key() == "seq" || kv.key() == "time" || kv.key() == "type") continue;
      event[kv.key()] = std::move(kv.value());
    }
    auto text = std::make_shared<const std::string>(json::serialize(event));
    if (f.history > 0) {
      f.ring.push_back({seq, std::move(event), text});
      if (f.ring.size() > f.history) f.ring.pop_front();
    }
    ++f.published;
    texts.push_back(std::move(text));
  }
  if (texts.empty()) return f.last_seq;
  // One push (and at most one wake-up) per subscription for the whole group. Overflowed
  // subscriptions leave the fan-out so a dead consumer costs nothing afterwards.
  std::erase_if(f.subs, [&](const std::shared_ptr<Subscription::Impl>& s) {
    if (s->push(texts)) return false;
    ++f.dropped_slow;
    return true;
  });
  return f.last_seq;
}

uint64_t EventFeed::last_seq() const {
  std::lock_guard lock(impl_->mu);
  return impl_->last_seq;
}

std::vector<json::object> EventFeed::since(uint64_t seq) const {
  std::lock_guard lock(impl_->mu);
  std::vector<json::object> out;
  for (const auto& e : impl_->ring) {
    if (e.seq > seq) out.push_back(e.event);
  }
  return out;
}

FeedStats EventFeed::stats() const {
  std::lock_guard lock(impl_->mu);
  return FeedStats{impl_->subs.size(), impl_->published, impl_->dropped_slow};
}

EventFeed::Subscribed EventFeed::subscribe(std::optional<uint64_t> since, size_t max_queue,
                                           std::function<void()> on_ready) {
  Impl& f = *impl_;
  auto sub = std::make_shared<Subscription::Impl>();
  sub->feed = impl_;
  sub->max_queue = std::max<size_t>(max_queue, 1);
  sub->on_ready = std::move(on_ready);

  Subscribed out;
  std::lock_guard lock(f.mu);
  // The ring holds every event after `oldest - 1`; an empty ring holds every event after last_seq.
  uint64_t oldest = f.ring.empty() ? f.last_seq + 1 : f.ring.front().seq;
  if (since && *since <= f.last_seq && *since + 1 >= oldest) {
    for (const auto& e : f.ring) {
      if (e.seq > *since) out.initial.push_back(e.text);
    }
  } else {
    json::object snap;
    snap["seq"] = static_cast<int64_t>(f.last_seq);
    snap["time"] = rfc3339_now();
    snap["type"] = "snapshot";
    snap["state"] = f.snapshot ? f.snapshot() : json::object();
    if (since) snap["resync"] = true;
    out.resync = since.has_value();
    out.initial.push_back(std::make_shared<const std::string>(json::serialize(snap)));
  }
  f.subs.push_back(sub);
  out.subscription.reset(new Subscription(std::move(sub)));
  return out;
}

}  // namespace fabriclab
