#include "fabriclab/common/event_feed.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <thread>

namespace fabriclab {
namespace {

namespace json = boost::json;

json::object parse(const Subscription::Message& m) { return json::parse(*m).as_object(); }

int64_t seq_of(const json::object& o) { return o.at("seq").as_int64(); }

json::object fields(int64_t n) { return json::object{{"n", n}}; }

TEST(EventFeed, PublishNumbersEventsWithTimeTypeAndFields) {
  EventFeed feed([] { return json::object{}; });
  EXPECT_EQ(feed.last_seq(), 0u);
  EXPECT_EQ(feed.publish("a", fields(1)), 1u);
  // seq, time and type in the fields do not override the feed's.
  EXPECT_EQ(feed.publish("b", json::object{{"seq", 99}, {"type", "x"}, {"n", 2}}), 2u);
  auto events = feed.since(0);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].at("seq").as_int64(), 2);
  EXPECT_EQ(events[1].at("type").as_string(), "b");
  EXPECT_EQ(events[1].at("n").as_int64(), 2);
  EXPECT_EQ(events[1].at("time").as_string().size(), 24u);  // 2026-11-24T18:00:00.123Z
  EXPECT_EQ(feed.since(1).size(), 1u);
  EXPECT_EQ(feed.stats().published, 2u);
}

TEST(EventFeed, SubscribeWithoutSinceGetsSnapshotAtLastSeqThenLiveEvents) {
  EventFeed feed([] { return json::object{{"instances", 3}}; });
  feed.publish("a", fields(1));
  feed.publish("a", fields(2));
  int wakeups = 0;
  auto s = feed.subscribe(std::nullopt, 100, [&] { ++wakeups; });
  ASSERT_EQ(s.initial.size(), 1u);
  auto snap = parse(s.initial[0]);
  EXPECT_EQ(snap.at("type").as_string(), "snapshot");
  EXPECT_EQ(seq_of(snap), 2);
  EXPECT_EQ(snap.at("state").at("instances").as_int64(), 3);
  EXPECT_FALSE(snap.contains("resync"));
  feed.publish("a", fields(3));
  feed.publish("a", fields(4));
  EXPECT_EQ(wakeups, 1);  // only on the empty -> non-empty edge
  auto live = s.subscription->take();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(seq_of(parse(live[0])), 3);
  EXPECT_EQ(seq_of(parse(live[1])), 4);
  feed.publish("a", fields(5));
  EXPECT_EQ(wakeups, 2);
}

TEST(EventFeed, SinceWithinTheRingReplaysTheMissedEventsWithoutSnapshot) {
  EventFeed feed([] { return json::object{}; }, 5);
  for (int i = 1; i <= 8; ++i) feed.publish("a", fields(i));  // ring holds 4..8
  auto s = feed.subscribe(uint64_t{3}, 100, [] {});
  EXPECT_FALSE(s.resync);
  ASSERT_EQ(s.initial.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(seq_of(parse(s.initial[i])), int64_t(4 + i));
  auto caught_up = feed.subscribe(uint64_t{8}, 100, [] {});
  EXPECT_FALSE(caught_up.resync);
  EXPECT_TRUE(caught_up.initial.empty());
}

TEST(EventFeed, SinceOlderThanTheRingOrAheadOfItResyncsWithASnapshot) {
  EventFeed feed([] { return json::object{{"k", 1}}; }, 5);
  for (int i = 1; i <= 8; ++i) feed.publish("a", fields(i));
  for (uint64_t since : {uint64_t{2}, uint64_t{9}, uint64_t{1000}}) {
    auto s = feed.subscribe(since, 100, [] {});
    EXPECT_TRUE(s.resync) << since;
    ASSERT_EQ(s.initial.size(), 1u);
    auto snap = parse(s.initial[0]);
    EXPECT_EQ(snap.at("type").as_string(), "snapshot");
    EXPECT_TRUE(snap.at("resync").as_bool());
    EXPECT_EQ(seq_of(snap), 8);
  }
}

TEST(EventFeed, OverflowingSubscriptionIsCutOffAndCountedWithoutAffectingOthers) {
  EventFeed feed([] { return json::object{}; });
  int slow_wakeups = 0;
  auto slow = feed.subscribe(std::nullopt, 4, [&] { ++slow_wakeups; });
  auto fast = feed.subscribe(std::nullopt, 4, [] {});
  std::vector<int64_t> fast_seen;
  for (int i = 1; i <= 20; ++i) {
    feed.publish("a", fields(i));
    for (auto& m : fast.subscription->take()) fast_seen.push_back(seq_of(parse(m)));
  }
  EXPECT_TRUE(slow.subscription->overflowed());
  EXPECT_FALSE(fast.subscription->overflowed());
  EXPECT_EQ(slow_wakeups, 2);  // first event, then the overflow
  EXPECT_TRUE(slow.subscription->take().empty());
  ASSERT_EQ(fast_seen.size(), 20u);
  EXPECT_EQ(fast_seen.back(), 20);
  auto st = feed.stats();
  EXPECT_EQ(st.dropped_slow, 1u);
  EXPECT_EQ(st.subscribers, 1u);
  EXPECT_EQ(st.published, 20u);
}

// What one poll of an agent revealed is published as a group: consecutive numbers, in order,
// one wake-up per subscriber (so its websocket sends them in one write), and a group larger
// than the room left in a subscriber's queue cuts that subscriber off whole.
TEST(EventFeed, GroupIsNumberedInOrderAndWakesEachSubscriberOnce) {
  EventFeed feed([] { return json::object{}; });
  feed.publish("a", fields(0));
  int wakeups = 0, small_wakeups = 0;
  auto s = feed.subscribe(std::nullopt, 100, [&] { ++wakeups; });
  auto small = feed.subscribe(std::nullopt, 3, [&] { ++small_wakeups; });
  std::vector<std::pair<std::string, json::object>> group;
  for (int i = 1; i <= 5; ++i)
    group.emplace_back(i == 1 ? "host.state" : "instance.state", fields(i));
  EXPECT_EQ(feed.publish(std::move(group)), 6u);
  EXPECT_EQ(wakeups, 1);
  auto live = s.subscription->take();
  ASSERT_EQ(live.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    auto e = parse(live[i]);
    EXPECT_EQ(seq_of(e), i + 2);
    EXPECT_EQ(e.at("n").as_int64(), i + 1);
    EXPECT_EQ(e.at("type").as_string(), i == 0 ? "host.state" : "instance.state");
  }
  EXPECT_TRUE(small.subscription->overflowed());
  EXPECT_TRUE(small.subscription->take().empty());
  EXPECT_EQ(small_wakeups, 1);  // the overflow
  EXPECT_EQ(feed.since(0).size(), 6u);
  // An empty group publishes nothing.
  EXPECT_EQ(feed.publish({}), 6u);
  EXPECT_EQ(feed.stats().published, 6u);
  EXPECT_EQ(feed.stats().dropped_slow, 1u);
}

TEST(EventFeed, CancelledOrDestroyedSubscriptionReceivesNothing) {
  EventFeed feed([] { return json::object{}; });
  int wakeups = 0;
  auto s = feed.subscribe(std::nullopt, 10, [&] { ++wakeups; });
  EXPECT_EQ(feed.stats().subscribers, 1u);
  s.subscription->cancel();
  feed.publish("a", fields(1));
  EXPECT_EQ(wakeups, 0);
  EXPECT_TRUE(s.subscription->take().empty());
  EXPECT_EQ(feed.stats().subscribers, 0u);
  {
    auto t = feed.subscribe(std::nullopt, 10, [] {});
    EXPECT_EQ(feed.stats().subscribers, 1u);
  }
  EXPECT_EQ(feed.stats().subscribers, 0u);
}

// Subscribers joining while a publisher runs see the snapshot's state and seq agree, then every
// later event exactly once.
TEST(EventFeed, SnapshotAndLiveEventsHaveNoGapAndNoDuplicateUnderConcurrentPublish) {
  int64_t counter = 0;  // the owner's state, changed only inside publish's apply
  EventFeed feed([&] { return json::object{{"counter", counter}}; }, 100);
  constexpr int kEvents = 20000;
  std::atomic<bool> done{false};
  std::thread publisher([&] {
    for (int i = 0; i < kEvents; ++i) {
      feed.publish("tick", fields(i + 1), [&] { ++counter; });
    }
    done = true;
  });
  for (int round = 0; round < 20; ++round) {
    auto s = feed.subscribe(std::nullopt, kEvents, [] {});
    auto snap = parse(s.initial[0]);
    int64_t expect = seq_of(snap) + 1;
    EXPECT_EQ(snap.at("state").at("counter").as_int64(), seq_of(snap));
    // Resume from a point just behind: the backlog and live events must also join up.
    int64_t since = std::max<int64_t>(0, seq_of(snap) - 10);
    auto r = feed.subscribe(uint64_t(since), kEvents, [] {});
    int64_t expect_r = r.resync ? seq_of(parse(r.initial[0])) + 1 : since + 1;
    for (const auto& m : r.initial) {
      if (!r.resync) {
        EXPECT_EQ(seq_of(parse(m)), expect_r++);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    for (auto& m : s.subscription->take()) EXPECT_EQ(seq_of(parse(m)), expect++);
    for (auto& m : r.subscription->take()) EXPECT_EQ(seq_of(parse(m)), expect_r++);
    if (HasFailure()) break;
  }
  publisher.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(feed.last_seq(), uint64_t(kEvents));
}

}  // namespace
}  // namespace fabriclab
