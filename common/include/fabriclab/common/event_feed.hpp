#pragma once
// The event stream contract of every websocket (docs/events.md):
//   {"seq": n, "time": RFC 3339, "type": "...", ...fields}
// with seq strictly increasing per feed. A client connecting gets a snapshot, then the deltas;
// `?since=SEQ` resumes from a sequence number instead.
//
// An EventFeed numbers events, keeps the last `history` in a ring (for resume), and fans them out
// to subscriptions. Each subscription has a bounded queue: a consumer that falls `max_queue`
// events behind is cut off (overflowed) instead of slowing the publisher down. The websocket
// sessions of http::Server are subscriptions; tests can subscribe in-process.
//
// No gap, no duplicate: `subscribe` takes the snapshot (or copies the backlog) and registers the
// subscription under the feed's lock, the same lock `publish` numbers events under.

#include <boost/json/fwd.hpp>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fabriclab {

struct FeedStats {
  size_t subscribers = 0;     // live subscriptions
  uint64_t published = 0;     // events published since the feed was made
  uint64_t dropped_slow = 0;  // subscriptions cut off because their queue overflowed
};

class EventFeed;

// One consumer's view of a feed. Thread safe. Destroying it unsubscribes.
class Subscription {
 public:
  using Message = std::shared_ptr<const std::string>;  // one serialized event

  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // Moves out the live events queued so far, oldest first, and re-arms the ready callback.
  // `overflowed`, when given, is set as overflowed() would answer, under the same lock.
  std::deque<Message> take(bool* overflowed = nullptr);
  // True once the queue overflowed; the subscription then receives nothing more.
  bool overflowed() const;
  // Stops delivery; after it returns the ready callback is never called again.
  void cancel();

 private:
  friend class EventFeed;
  struct Impl;
  explicit Subscription(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // shared with the feed, which queues into it
};

class EventFeed {
 public:
  // The current state, sent as "state" of the snapshot event. Called under the feed's lock: it
  // must not call publish(), and it must not wait for a lock that a thread holds while calling
  // publish(). To make state and seq match exactly, mutate the state in publish()'s `apply`.
  using SnapshotFn = std::function<boost::json::object()>;

  // `start_after`: the first event gets seq start_after + 1 (a restarted producer continues its
  // numbering from its journal, so clients resuming with ?since= never see a number reused).
  explicit EventFeed(SnapshotFn snapshot, size_t history = 10000, uint64_t start_after = 0);
  ~EventFeed();
  EventFeed(const EventFeed&) = delete;
  EventFeed& operator=(const EventFeed&) = delete;

  // Numbers the event, stamps the time, stores it in the ring and queues it to every
  // subscription. Never blocks on consumers. `fields` must not contain seq, time or type (they
  // are overwritten). `apply`, when given, runs under the feed's lock before the event is
  // numbered (see SnapshotFn). Thread safe; returns the seq.
  uint64_t publish(std::string type, boost::json::object fields);
  uint64_t publish(std::string type, boost::json::object fields,
                   const std::function<void()>& apply);
  // Several events at once, numbered consecutively, in order; returns the last seq. Each
  // subscription gets them in one push with one wake-up, so a consumer writes them together
  // (the orchestrator publishes what one poll of an agent revealed this way).
  uint64_t publish(std::vector<std::pair<std::string, boost::json::object>> events,
                   const std::function<void()>& apply = {});

  // The seq of the newest event; 0 before the first.
  uint64_t last_seq() const;

  // Events with seq > `seq` still in the ring, oldest first.
  std::vector<boost::json::object> since(uint64_t seq) const;

  FeedStats stats() const;

  struct Subscribed {
    // What the consumer sends first, in order: a snapshot, or the backlog since `since`.
    std::vector<Subscription::Message> initial;
    std::shared_ptr<Subscription> subscription;
    bool resync = false;  // `since` could not be served; `initial` is a snapshot with "resync"
  };

  // Subscribes. Without `since`: initial = [snapshot {"seq": last_seq, "type": "snapshot",
  // "state": snapshot()}]. With `since` in [oldest_in_ring - 1, last_seq]: initial = the events
  // after it (maybe none). Otherwise: a snapshot with "resync": true. Live events published
  // after that are queued on the subscription (at most `max_queue`, else it overflows) and
  // `on_ready` is called when the queue goes from empty to non-empty or overflows. `on_ready`
  // runs on the publisher's thread under the feed's lock: it must only schedule work (post).
  Subscribed subscribe(std::optional<uint64_t> since, size_t max_queue,
                       std::function<void()> on_ready);

  // The shared state behind the feed; subscriptions keep a weak reference to it.
  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace fabriclab
