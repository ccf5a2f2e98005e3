// The chaos campaign's draw and the fault rows' outcomes (rack/ chaos.hpp, faults.hpp):
// the same seed draws the same faults, every kind comes up, drawn outages respect their cap, and
// what the system did is read from the feed, not from the fault's kind.

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <set>

#include "fabriclab/rack/chaos.hpp"
#include "fabriclab/rack/faults.hpp"

namespace fabriclab {
namespace {

namespace json = boost::json;
using namespace rack;

TEST(ChaosDraw, TheSameSeedAndDrillDrawTheSameFaultsAndEveryKindComesUp) {
  const auto base = chaos_base_spec("test");
  std::set<std::string> kinds;
  bool differs = false;
  for (int k = 1; k <= 16; ++k) {
    auto a = draw_faults(base, {}, 7, k), b = draw_faults(base, {}, 7, k),
         c = draw_faults(base, {}, 8, k);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_GE(a.size(), 1u);
    ASSERT_LE(a.size(), 2u);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].describe(), b[i].describe());
    differs = differs || a.size() != c.size() || a[0].describe() != c[0].describe();
    for (const auto& f : a) {
      kinds.insert(f.kind);
      if (f.target_kind == "host") {
        EXPECT_TRUE(f.target >= "h0" && f.target <= "h3") << f.describe();
      }
      if (f.at.kind == FaultAt::Kind::batch) {
        EXPECT_GE(f.at.batch, 1);
      }
      if (f.kind == "partition-host" || f.kind == "slow-boot") {
        EXPECT_TRUE(f.duration_s.has_value()) << f.describe();
      }
    }
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(kinds.size(), fault_kinds().size());
}

TEST(ChaosDraw, KindsAreLimitedAndOutagesCapped) {
  const auto base = chaos_base_spec("test");
  for (int k = 1; k <= 30; ++k) {
    auto faults = draw_faults(base, {"kill-agent", "partition-host"}, 3, k, 2.5);
    if (faults.size() == 2) {
      EXPECT_NE(faults[0].target, faults[1].target) << "two outages of one host add up";
    }
    for (const auto& f : faults) {
      EXPECT_TRUE(f.kind == "kill-agent" || f.kind == "partition-host") << f.describe();
      if (f.duration_s) {
        EXPECT_LE(*f.duration_s * base.time_scale, 2.5 + 1e-9) << f.describe();
      }
    }
  }
  auto guest_os = base;
  guest_os.kind = "guest-os";
  for (int k = 1; k <= 10; ++k) {
    for (const auto& f : draw_faults(guest_os, {}, 3, k)) {
      EXPECT_NE(f.kind, "corrupt-host-image");
      EXPECT_NE(f.at.step, "Rebooting");
    }
  }
}

json::object ev(const std::string& type, const std::string& time, json::object fields) {
  fields["type"] = type;
  fields["time"] = time;
  return fields;
}

TEST(FaultOutcomes, WhatTheSystemDidIsReadFromTheFeedAfterTheInjection) {
  FaultRecord r;
  r.spec.kind = "kill-agent";
  r.spec.target_kind = "host";
  r.spec.target = "h1";
  r.status = "injected";
  r.injected_ms = *parse_rfc3339_ms("2026-11-30T10:00:00.000Z");
  std::vector<json::object> feed = {
      ev("host.state", "2026-11-30T09:59:59.000Z",
         {{"host", "h1"}, {"state", "Unhealthy"}}),  // before: ignored
      ev("host.state", "2026-11-30T10:00:03.000Z", {{"host", "h1"}, {"state", "Unhealthy"}}),
      ev("service.healed", "2026-11-30T10:00:03.500Z",
         {{"instance", "web-1"}, {"from_host", "h1"}, {"to_host", "h0"}}),
      ev("host.state", "2026-11-30T10:00:06.000Z", {{"host", "h1"}, {"state", "Ready"}}),
      ev("drill.host", "2026-11-30T10:00:06.500Z",
         {{"host", "h2"}, {"status", "failed"}})};  // another host
  std::vector<FaultRecord> rs = {r};
  explain_outcomes(rs, feed, {{"state", "Completed"}}, {});
  EXPECT_EQ(rs[0].outcome,
            "h1 Unhealthy after 3.0 s; h1 Ready again after 6.0 s; healed web-1 h1->h0");
  // Nothing on the feed: said so, with how the drill ended; a fault not injected gets no outcome.
  rs = {r};
  rs.push_back(r);
  rs[1].status = "not injected";
  explain_outcomes(rs, {}, {{"state", "Failed"}, {"reason", "batch 1: host 'h2': x"}}, {});
  EXPECT_EQ(rs[0].outcome, "no reaction seen on the feed (the drill ended Failed)");
  EXPECT_EQ(rs[1].outcome, "");
  // An instance fault: down and back, and a forced stop from the report.
  FaultRecord g = r;
  g.spec.kind = "guest-hang";
  g.spec.target_kind = "instance";
  g.spec.target = "web-0";
  feed = {
      ev("instance.state", "2026-11-30T10:00:01.000Z",
         {{"instance",
           json::object{
               {"name", "web-0"}, {"healthy", false}, {"status", "Stopping"}, {"host", "h1"}}}}),
      ev("instance.state", "2026-11-30T10:00:12.000Z",
         {{"instance",
           json::object{
               {"name", "web-0"}, {"healthy", true}, {"status", "Healthy"}, {"host", "h1"}}}})};
  json::object report{
      {"instances", json::array{json::object{{"name", "web-0"}, {"stop_method", "destroyed"}}}}};
  rs = {g};
  explain_outcomes(rs, feed, {{"state", "Completed"}}, report);
  EXPECT_EQ(rs[0].outcome,
            "web-0 down after 1.0 s (Stopping); web-0 healthy again on h1 after 12.0 s; web-0 "
            "stopped by force "
            "(destroyed) after its stop timeout");
}

}  // namespace
}  // namespace fabriclab
