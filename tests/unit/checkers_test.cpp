// The chaos checkers (rack/ checkers.hpp), fed crafted evidence: a feed where the walk
// takes two UDs of a service down at once must fail the UD rule, and one where it does not must
// pass; the same for job timelines, two hosts running one instance, counters going backwards, a
// drill left in no terminal state, and a report that says passed against the evidence.

#include "fabriclab/rack/checkers.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>

namespace fabriclab {
namespace {

namespace json = boost::json;
using namespace rack;

json::object inst(const std::string& name, const std::string& svc, int ud,
                  const std::string& host) {
  return {{"name", name}, {"service", svc}, {"ud", ud}, {"host", host}};
}
json::object snapshot(json::array instances) {
  return {{"seq", 1},
          {"type", "snapshot"},
          {"state", json::object{{"instances", std::move(instances)}}}};
}
json::object drill_host(int64_t seq, const std::string& host, const std::string& status) {
  return {{"seq", seq},
          {"type", "drill.host"},
          {"host", host},
          {"status", status},
          {"time", "2026-11-30T10:00:00.000Z"}};
}

TEST(CheckUdRuleFeed, TwoHostsInFlightHoldingTwoUdsOfOneServiceFail) {
  std::vector<json::object> feed = {
      snapshot({inst("web-0", "web", 0, "h0"), inst("web-1", "web", 1, "h1"),
                inst("worker-0", "worker", 0, "h2")}),
      drill_host(2, "h0", "running"), drill_host(3, "h1", "running"), drill_host(4, "h0", "done"),
      drill_host(5, "h1", "done")};
  auto r = check_ud_rule_feed(feed);
  EXPECT_FALSE(r.passed);
  EXPECT_NE(r.detail.find("web: UD0 (web-0 on h0) UD1 (web-1 on h1)"), std::string::npos)
      << r.detail;
  EXPECT_NE(r.detail.find("seq 3"), std::string::npos) << r.detail;
}

TEST(CheckUdRuleFeed, OneUdPerServiceInFlightPassesAndAHealedInstanceCountsOnItsNewHost) {
  std::vector<json::object> feed = {
      snapshot({inst("web-0", "web", 0, "h0"), inst("web-1", "web", 1, "h1"),
                inst("worker-0", "worker", 0, "h2")}),
      drill_host(2, "h0", "running"), drill_host(3, "h2", "running"),  // web UD0 + worker UD0: fine
      drill_host(4, "h0", "done"), drill_host(5, "h2", "done")};
  EXPECT_TRUE(check_ud_rule_feed(feed).passed) << check_ud_rule_feed(feed).detail;
  // web-1 healed onto h2 while h0 and h2 are in flight: now web has UD0 and UD1 down.
  feed = {snapshot({inst("web-0", "web", 0, "h0"), inst("web-1", "web", 1, "h1")}),
          drill_host(2, "h0", "running"), drill_host(3, "h2", "running"),
          json::object{
              {"seq", 4}, {"type", "instance.state"}, {"instance", inst("web-1", "web", 1, "h2")}}};
  EXPECT_FALSE(check_ud_rule_feed(feed).passed);
  // A drill that ended clears what was in flight (a host left "running" by an abort).
  feed = {snapshot({inst("web-0", "web", 0, "h0"), inst("web-1", "web", 1, "h1")}),
          drill_host(2, "h0", "running"),
          json::object{
              {"seq", 3}, {"type", "drill.state"}, {"drill", json::object{{"state", "Aborted"}}}},
          drill_host(4, "h1", "running")};
  EXPECT_TRUE(check_ud_rule_feed(feed).passed);
  // An orchestrator restarted mid-walk: h0's end happened while it was down; the resync snapshot's
  // drill says who runs now, so h1 starting is not taken for two UDs at once.
  json::object resync = snapshot({inst("web-0", "web", 0, "h0"), inst("web-1", "web", 1, "h1")});
  resync["state"].as_object()["drill"] =
      json::object{{"state", "Running"},
                   {"hosts", json::array{json::object{{"host", "h0"}, {"status", "done"}}}}};
  feed = {snapshot({inst("web-0", "web", 0, "h0"), inst("web-1", "web", 1, "h1")}),
          drill_host(2, "h0", "running"), resync, drill_host(1048600, "h1", "running")};
  EXPECT_TRUE(check_ud_rule_feed(feed).passed) << check_ud_rule_feed(feed).detail;
  feed.pop_back();
  feed.back()["state"]
      .as_object()["drill"]
      .as_object()["hosts"]
      .as_array()[0]
      .as_object()["status"] = "running";
  feed.push_back(drill_host(1048600, "h1", "running"));
  EXPECT_FALSE(check_ud_rule_feed(feed).passed);
}

TEST(CheckUdRuleJobs, OverlappingJobsOnTwoUdsFailAndBackToBackJobsPass) {
  std::map<std::string, std::pair<std::string, int>> ud_of = {{"web-0", {"web", 0}},
                                                              {"web-1", {"web", 1}}};
  std::vector<JobSpan> jobs = {{"h0", 1000, 2000, {"web-0"}}, {"h1", 1500, 2500, {"web-1"}}};
  auto r = check_ud_rule_jobs(jobs, ud_of);
  EXPECT_FALSE(r.passed);
  EXPECT_NE(r.detail.find("web: UD0 (web-0 on h0) and UD1 (web-1 on h1)"), std::string::npos)
      << r.detail;
  jobs = {{"h0", 1000, 2000, {"web-0"}}, {"h1", 2000, 2500, {"web-1"}}};  // half open: no overlap
  EXPECT_TRUE(check_ud_rule_jobs(jobs, ud_of).passed);
  jobs = {{"h0", 1000, 0, {"web-0"}},
          {"h1", 5000, 6000, {"web-1"}}};  // still running: overlaps all later
  EXPECT_FALSE(check_ud_rule_jobs(jobs, ud_of).passed);
  // From an agent's answer.
  json::array ops =
      json::parse(
          R"([{"started_at":"2026-11-30T10:00:00.000Z","finished_at":"2026-11-30T10:00:05.000Z",
                                      "guests":[{"name":"web-0"}]}])")
          .as_array();
  auto spans = job_spans("h0", ops);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].end_ms - spans[0].start_ms, 5000);
  EXPECT_EQ(spans[0].guests, std::vector<std::string>{"web-0"});
}

TEST(CheckSingleHost, AnInstanceRunningOnTwoAgentsFailsAndAStoppedCopyDoesNot) {
  json::array h0 =
      json::parse(R"([{"name":"web-0","status":"Healthy"},{"name":"web-1","status":"Stopped"}])")
          .as_array();
  json::array h1 = json::parse(R"([{"name":"web-1","status":"Healthy"}])").as_array();
  PlacementSample s{100, {}};
  add_agent_instances(s, "h0", h0);
  add_agent_instances(s, "h1", h1);
  EXPECT_TRUE(check_single_host({s}, "agents' records").passed);
  json::array h2 = json::parse(R"([{"name":"web-0","status":"Starting"}])").as_array();
  add_agent_instances(s, "h2", h2);
  auto r = check_single_host({s}, "agents' records");
  EXPECT_FALSE(r.passed);
  EXPECT_EQ(r.name, "one host per instance (agents' records)");
  EXPECT_NE(r.detail.find("web-0 ran on h0 and h2 at once"), std::string::npos) << r.detail;
}

TEST(CheckCounters, ACounterGoingBackwardsFailsAMovedOneIsNamedNotJudged) {
  std::map<std::string, CounterReading> before = {
      {"web-0", {"h0", 10}}, {"web-1", {"h1", 7}}, {"hello-0", {"h2", 3}}};
  std::map<std::string, CounterReading> after = {
      {"web-0", {"h0", 12}}, {"web-1", {"h3", 0}}, {"hello-0", {"h2", 3}}};
  auto r = check_counters(before, after);
  EXPECT_TRUE(r.passed) << r.detail;
  EXPECT_NE(r.detail.find("moved (new VMs, not judged): web-1 h1->h3"), std::string::npos)
      << r.detail;
  after["web-0"] = {"h0", 9};
  r = check_counters(before, after);
  EXPECT_FALSE(r.passed);
  EXPECT_NE(r.detail.find("web-0 on h0: 10 -> 9"), std::string::npos) << r.detail;
  // From an agent's answer: a stopped stale copy is not a reading.
  std::map<std::string, CounterReading> read;
  add_counters(read, "h0",
               json::parse(R"([{"name":"web-0","status":"Healthy","last_heartbeat":{"counter":5}},
                                           {"name":"web-1","status":"Stopped","last_heartbeat":{"counter":99}}])")
                   .as_array());
  EXPECT_EQ(read.at("web-0").counter, 5);
  EXPECT_EQ(read.count("web-1"), 0u);
}

TEST(CheckTerminalAndReport, NonTerminalStatesAndReportsThatDisagreeFail) {
  json::object report = {
      {"drill", json::object{{"state", "Completed"}}},
      {"checks", json::array{json::object{{"name", "drill completed"}, {"passed", true}}}},
      {"result", "passed"}};
  EXPECT_TRUE(check_terminal({{"state", "Completed"}}, report).passed);
  EXPECT_FALSE(check_terminal({{"state", "Running"}}, report).passed);
  EXPECT_FALSE(check_terminal({{"state", "Failed"}}, report).passed);  // the report says Completed
  CheckResult ok{"x", true, ""},
      bad{"one host per instance (agents' records)", false, "web-0 on h0 and h1"};
  EXPECT_TRUE(check_report_agrees(report, {ok}).passed);
  auto r = check_report_agrees(report, {ok, bad});
  EXPECT_FALSE(r.passed);
  EXPECT_NE(r.detail.find("the report says passed but 'one host per instance"), std::string::npos)
      << r.detail;
  // A failed drill's report may disagree with nothing: it says failed.
  report["result"] = "failed";
  report["checks"] = json::array{json::object{{"name", "drill completed"}, {"passed", false}}};
  EXPECT_TRUE(check_report_agrees(report, {bad}).passed);
  // A report whose result contradicts its own checks.
  report["result"] = "passed";
  EXPECT_FALSE(check_report_agrees(report, {ok}).passed);
}

// Client traffic: a drill that started at T0 = 2026-11-30T10:00:00Z; web has two instances, its
// probe takes 1 s to notice a failure. A guest-crash of web-0 at T0+10 s; the feed shows web-0
// DOWN at 11 s and UP again at 14 s.
json::object traffic_report(json::array web_runs) {
  return {
      {"drill", json::object{{"started_at", "2026-11-30T10:00:00.000Z"},
                             {"finished_at", "2026-11-30T10:01:00.000Z"}}},
      {"traffic", json::object{{"measured", true}}},
      {"services",
       json::array{
           json::object{
               {"name", "web"},
               {"instances", 2},
               {"traffic", json::object{{"probe_detection_s", 1.0}, {"failure_runs", web_runs}}}},
           json::object{{"name", "hello"},
                        {"instances", 1},
                        {"traffic",
                         json::object{{"probe_detection_s", 1.0},
                                      {"failure_runs",
                                       json::array{json::object{
                                           {"from_s", 30.0}, {"to_s", 31.0}, {"count", 9}}}}}}}}}};
}

json::object backend(const std::string& time, const std::string& instance,
                     const std::string& state) {
  return {{"type", "lb.backend"},
          {"time", time},
          {"service", "web"},
          {"instance", instance},
          {"state", state}};
}

TEST(CheckClientTraffic, FailuresInsideAFaultsWindowAreExcusedAndOthersAreViolations) {
  const int64_t t0 = *parse_rfc3339_ms("2026-11-30T10:00:00.000Z");
  std::vector<json::object> feed = {backend("2026-11-30T10:00:01.000Z", "web-0", "UP"),
                                    backend("2026-11-30T10:00:01.000Z", "web-1", "UP"),
                                    backend("2026-11-30T10:00:11.000Z", "web-0", "DOWN"),
                                    backend("2026-11-30T10:00:14.000Z", "web-0", "UP")};
  std::vector<FaultWindow> crash = {{"guest-crash web-0", t0 + 10'000, t0 + 10'000}};
  auto run = [](double from, double to, int count) {
    return json::object{{"from_s", from}, {"to_s", to}, {"count", count}};
  };
  // The crash's failures (10.0-11.0 s) and a run while web-0 was still DOWN (13.5 s) are its own;
  // the single-instance service's outage is not judged.
  auto r =
      check_client_traffic(traffic_report({run(10.0, 11.0, 5), run(13.5, 13.6, 2)}), feed, crash);
  EXPECT_TRUE(r.passed) << r.detail;
  EXPECT_NE(r.detail.find("7 failed requests of multi-instance services, all within"),
            std::string::npos)
      << r.detail;
  // Whole again at 14 s, + 2 s: a run at 25 s is what the walk cost the clients.
  r = check_client_traffic(traffic_report({run(10.0, 11.0, 5), run(25.0, 25.4, 3)}), feed, crash);
  EXPECT_FALSE(r.passed);
  EXPECT_NE(r.detail.find("web: 3 failed requests 25.0-25.4 s after the drill started, outside "
                          "every fault's window"),
            std::string::npos)
      << r.detail;
  // No fault at all: any failure is a violation.
  EXPECT_FALSE(check_client_traffic(traffic_report({run(10.0, 11.0, 5)}), feed, {}).passed);
  // A service that never became whole again after the fault: its window lasts to the drill's end.
  feed.pop_back();
  EXPECT_TRUE(
      check_client_traffic(traffic_report({run(10.0, 11.0, 5), run(25.0, 25.4, 3)}), feed, crash)
          .passed);
  // Unmeasured traffic passes, saying so.
  json::object unmeasured = traffic_report({run(25.0, 25.4, 3)});
  unmeasured["traffic"] = json::object{{"measured", false}, {"reason", "simulated guests"}};
  r = check_client_traffic(unmeasured, feed, {});
  EXPECT_TRUE(r.passed);
  EXPECT_NE(r.detail.find("not measured (simulated guests)"), std::string::npos) << r.detail;
}

}  // namespace
}  // namespace fabriclab
