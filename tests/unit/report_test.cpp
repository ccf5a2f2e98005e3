// The drill report (orchestrator/report.hpp): availability figures from timelines, the checks and
// the verdict, the JSON shape, and the self-contained HTML page.

#include "fabriclab/orchestrator/report.hpp"

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "text_checks.hpp"

namespace fabriclab::orchestrator {
namespace {

using fabriclab::testing::contains_all;
using fabriclab::testing::contains_none;

constexpr int64_t kStart = 1'700'000'000'000;  // 2023-11-14T22:13:20.000Z
constexpr int64_t kWindow = 600'000;           // ten minutes
int64_t s(double seconds) { return std::llround(seconds * 1000); }

// An instance healthy from before the drill, down over each [from, to) (seconds after the
// start), on the target images with its counter kept.
ReportInstance instance(std::string name, std::string service, int index, int ud, int fd,
                        std::vector<std::pair<double, double>> downs = {}) {
  ReportInstance i;
  i.name = std::move(name);
  i.service = std::move(service);
  i.index = index;
  i.ud = ud;
  i.fd = fd;
  i.host = i.host_before = "h" + std::to_string(fd) + "-" + std::to_string(ud);
  i.image_before = i.image_after = "guest-1";
  i.host_image_before = "host-1";
  i.host_image_after = "host-2";
  i.counter_before = 10;
  i.counter_after = 12;
  i.stop_method = "graceful";
  i.healthy_at_end = true;
  i.timeline.push_back({kStart - 5'000, true});
  for (auto [from, to] : downs) {
    i.timeline.push_back({kStart + s(from), false});
    i.timeline.push_back({kStart + s(to), true});
  }
  return i;
}

// A completed host-os drill to "host-2" over [kStart, kStart + kWindow).
ReportInput drill(std::vector<ReportInstance> instances) {
  ReportInput in;
  in.drill_id = "d-1";
  in.kind = "host-os";
  in.target = "host-2";
  in.state = "Completed";
  in.started_ms = kStart;
  in.finished_ms = kStart + kWindow;
  in.lower_bound = 2;
  in.batches = {{0, {"h0-0"}, kStart + s(10), kStart + s(200), "done"},
                {1, {"h1-1"}, kStart + s(200), kStart + s(400), "done"}};
  in.hosts = {{"h0-0", 0, "host-1", "host-2", "Ready"}, {"h1-1", 1, "host-1", "host-2", "Ready"}};
  for (const ReportInstance& i : instances) {
    bool known = false;
    for (ReportService& sv : in.services) {
      if (sv.name == i.service) {
        ++sv.instance_count;
        known = true;
      }
    }
    if (!known) in.services.push_back({i.service, 1, 5});
  }
  in.instances = std::move(instances);
  return in;
}

// The object of report[list] (checks, services) whose "name" is `name`; null when there is none.
const json::object* find_named(const json::object& report, std::string_view list,
                               std::string_view name) {
  for (const json::value& v : report.at(list).as_array()) {
    if (v.as_object().at("name").as_string() == name) return &v.as_object();
  }
  return nullptr;
}
// The same, failing the test (and answering an empty object) when there is none.
const json::object& named(const json::object& report, std::string_view list,
                          std::string_view name) {
  if (const json::object* o = find_named(report, list, name)) return *o;
  ADD_FAILURE() << "no " << list << " entry named " << name;
  static const json::object kNone;
  return kNone;
}
const json::object& check_named(const json::object& report, std::string_view name) {
  return named(report, "checks", name);
}
bool passed(const json::object& report, std::string_view check) {
  return check_named(report, check).at("passed").as_bool();
}
std::string detail(const json::object& report, std::string_view check) {
  return std::string(check_named(report, check).at("detail").as_string());
}
// The detail of check `check` holds `piece` (a failure shows the whole detail).
::testing::AssertionResult detail_has(const json::object& report, std::string_view check,
                                      std::string_view piece) {
  return fabriclab::testing::contains_all(detail(report, check), {piece});
}
std::string result(const json::object& report) {
  return std::string(report.at("result").as_string());
}
// The report's instances[i], and its timeline as (t_s, healthy) entries.
const json::object& instance_of(const json::object& report, size_t i) {
  return report.at("instances").as_array()[i].as_object();
}
using Timeline = std::vector<std::pair<double, bool>>;
Timeline timeline_of(const json::object& report, size_t i) {
  Timeline entries;
  for (const json::value& e : instance_of(report, i).at("timeline").as_array()) {
    entries.emplace_back(e.at("t_s").as_double(), e.at("healthy").as_bool());
  }
  return entries;
}

TEST(ReportAvailability, DownsInDifferentUdsThatDoNotOverlapKeepTheServiceServing) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0, {{100, 160}}),
                          instance("web-1", "web", 1, 1, 1, {{200, 260}})});
  ServiceAvailability a = service_availability(in, in.services[0]);
  EXPECT_TRUE(a.sla_applies);
  EXPECT_TRUE(a.always_available);
  EXPECT_EQ(a.unavailable_ms, 0);
  EXPECT_DOUBLE_EQ(a.availability_percent, 100.0);
  EXPECT_EQ(a.max_uds_down, 1);
  EXPECT_EQ(a.max_instances_down, 1);
  EXPECT_EQ(a.verdict, "kept serving");
  EXPECT_EQ(result(build_report(in)), "passed");
}

TEST(ReportAvailability, HandOverAtTheSameMillisecondIsNotAnOutage) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0, {{100, 200}}),
                          instance("web-1", "web", 1, 1, 1, {{200, 300}})});
  ServiceAvailability a = service_availability(in, in.services[0]);
  EXPECT_TRUE(a.always_available);
  EXPECT_EQ(a.max_uds_down, 1);
}

TEST(ReportAvailability, OverlappingDownsLoseAvailabilityForExactlyTheOverlap) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0, {{100, 200}}),
                          instance("web-1", "web", 1, 1, 1, {{150.5, 260}}),
                          instance("db-0", "db", 0, 0, 0), instance("db-1", "db", 1, 1, 1)});
  ServiceAvailability a = service_availability(in, in.services[0]);
  EXPECT_FALSE(a.always_available);
  EXPECT_EQ(a.unavailable_ms, 49'500);
  EXPECT_EQ(a.max_uds_down, 2);
  EXPECT_EQ(a.max_instances_down, 2);
  EXPECT_DOUBLE_EQ(a.availability_percent, 100.0 * (kWindow - 49'500) / kWindow);
  EXPECT_EQ(a.verdict, "lost availability for 49.5 s");

  json::object r = build_report(in);
  EXPECT_EQ(result(r), "failed");
  EXPECT_FALSE(passed(r, "services kept serving"));
  EXPECT_TRUE(detail_has(r, "services kept serving", "web"));
  EXPECT_EQ(detail(r, "services kept serving").find("db"), std::string::npos);
  EXPECT_TRUE(passed(r, "drill completed"));
  EXPECT_TRUE(passed(r, "on target"));
  EXPECT_TRUE(passed(r, "counter kept"));
  const json::object& web = r.at("services").as_array()[0].as_object();
  EXPECT_EQ(web.at("name").as_string(), "web");
  EXPECT_DOUBLE_EQ(web.at("unavailable_s").as_double(), 49.5);
  EXPECT_EQ(web.at("max_uds_down").as_int64(), 2);
  EXPECT_FALSE(web.at("always_available").as_bool());
}

TEST(ReportAvailability, TwoInstancesOfOneUdDownTogetherCountAsOneUd) {
  ReportInput in =
      drill({instance("web-0", "web", 0, 0, 0, {{100, 200}}), instance("web-1", "web", 1, 1, 1),
             instance("web-2", "web", 2, 0, 1, {{120, 220}})});
  ServiceAvailability a = service_availability(in, in.services[0]);
  EXPECT_TRUE(a.always_available);
  EXPECT_EQ(a.max_uds_down, 1);
  EXPECT_EQ(a.max_instances_down, 2);
}

TEST(ReportAvailability, SingleInstanceServiceHasNoSlaAndDoesNotFailTheDrillByBeingDown) {
  ReportInput in = drill({instance("hello-0", "hello", 0, 0, 0, {{100, 160}})});
  ServiceAvailability a = service_availability(in, in.services[0]);
  EXPECT_FALSE(a.sla_applies);
  EXPECT_FALSE(a.always_available);
  EXPECT_EQ(a.unavailable_ms, 60'000);
  EXPECT_EQ(a.budget_ms_per_month, 0);
  EXPECT_EQ(a.budget_used_percent, 0);
  EXPECT_EQ(a.verdict, "no SLA (single instance): down 60 s");

  json::object r = build_report(in);
  EXPECT_EQ(result(r), "passed");
  EXPECT_TRUE(r.at("services").as_array()[0].as_object().at("error_budget_s_per_month").is_null());
}

TEST(ReportAvailability, ErrorBudgetAt9995PercentIs1296SecondsPerThirtyDayMonth) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0, {{100, 164.8}}),
                          instance("web-1", "web", 1, 1, 1, {{100, 164.8}})});
  ServiceAvailability a = service_availability(in, in.services[0]);
  EXPECT_EQ(a.budget_ms_per_month, 1'296'000);
  EXPECT_NEAR(a.budget_used_percent, 5.0, 1e-9);  // 64.8 s of 1296 s
  const json::object r = build_report(in);
  const json::object& web = r.at("services").as_array()[0].as_object();
  EXPECT_DOUBLE_EQ(web.at("error_budget_s_per_month").as_double(), 1296.0);
  EXPECT_DOUBLE_EQ(web.at("error_budget_used_s").as_double(), 64.8);
  EXPECT_DOUBLE_EQ(web.at("error_budget_used_percent").as_double(), 5.0);

  in.sla_percent = 99.9;
  EXPECT_EQ(service_availability(in, in.services[0]).budget_ms_per_month, 2'592'000);
}

TEST(ReportTimeline, EmptyTimelineCountsAsDownForTheWholeWindowEvenIfHealthyAtEnd) {
  ReportInstance silent = instance("web-1", "web", 1, 1, 1);
  silent.timeline.clear();
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0), silent});
  EXPECT_EQ(instance_down_ms(in, in.instances[1]), kWindow);
  ServiceAvailability a = service_availability(in, in.services[0]);
  EXPECT_TRUE(a.always_available);  // web-0 served throughout
  EXPECT_EQ(a.max_instances_down, 1);
  const json::object r = build_report(in);
  EXPECT_TRUE(timeline_of(r, 1).empty());
  EXPECT_DOUBLE_EQ(instance_of(r, 1).at("down_s").as_double(), 600.0);
}

TEST(ReportTimeline, TimelineStartingInsideTheWindowIsDownUntilItsFirstEntry) {
  ReportInstance late = instance("web-0", "web", 0, 0, 0);
  late.timeline = {{kStart + s(30), true}};
  ReportInput in = drill({late});
  EXPECT_EQ(instance_down_ms(in, in.instances[0]), s(30));
  EXPECT_EQ(timeline_of(build_report(in), 0), (Timeline{{30.0, true}}));
}

TEST(ReportTimeline, EntriesOutsideTheWindowAreClipped) {
  ReportInstance i = instance("web-0", "web", 0, 0, 0);
  i.timeline = {{kStart - s(100), false},  {kStart - s(50), true},
                {kStart + s(10), false},   {kStart + s(20), true},
                {kStart + kWindow, false}, {kStart + kWindow + s(5), true}};
  ReportInput in = drill({i});
  EXPECT_EQ(instance_down_ms(in, in.instances[0]), s(10));
  EXPECT_EQ(timeline_of(build_report(in), 0), (Timeline{{0.0, true}, {10.0, false}, {20.0, true}}));
}

TEST(ReportTimeline, UnsortedTimelineIsReadInTimeOrder) {
  ReportInstance i = instance("web-0", "web", 0, 0, 0);
  i.timeline = {{kStart + s(20), true}, {kStart + s(10), false}, {kStart - 1, true}};
  ReportInput in = drill({i});
  EXPECT_EQ(instance_down_ms(in, in.instances[0]), s(10));
}

TEST(ReportTimeline, ZeroLengthWindowHasNothingDown) {
  ReportInput in = drill(
      {instance("web-0", "web", 0, 0, 0, {{0, 1}}), instance("web-1", "web", 1, 1, 1, {{0, 1}})});
  in.instances[1].timeline.clear();
  for (int64_t finished : {kStart, kStart - 1000}) {
    in.finished_ms = finished;
    EXPECT_EQ(instance_down_ms(in, in.instances[1]), 0);
    ServiceAvailability a = service_availability(in, in.services[0]);
    EXPECT_TRUE(a.always_available);
    EXPECT_EQ(a.unavailable_ms, 0);
    EXPECT_DOUBLE_EQ(a.availability_percent, 100.0);
    EXPECT_EQ(a.max_uds_down, 0);
    json::object r = build_report(in);
    EXPECT_DOUBLE_EQ(r.at("drill").as_object().at("duration_s").as_double(), 0.0);
    EXPECT_EQ(result(r), "passed");
  }
}

TEST(ReportChecks, CounterThatWentBackwardsFailsCounterKeptNamingTheInstance) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0), instance("web-1", "web", 1, 1, 1)});
  in.instances[1].counter_before = 7;
  in.instances[1].counter_after = 5;
  json::object r = build_report(in);
  EXPECT_EQ(result(r), "failed");
  EXPECT_FALSE(passed(r, "counter kept"));
  EXPECT_TRUE(detail_has(r, "counter kept", "web-1 (7 -> 5)"));
  EXPECT_EQ(detail(r, "counter kept").find("web-0"), std::string::npos);
  EXPECT_FALSE(instance_of(r, 1).at("counter_kept").as_bool());
  EXPECT_TRUE(instance_of(r, 0).at("counter_kept").as_bool());
}

TEST(ReportChecks, UnknownCounterFailsCounterKept) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0)});
  in.instances[0].counter_before = -1;
  json::object r = build_report(in);
  EXPECT_FALSE(passed(r, "counter kept"));
  EXPECT_TRUE(detail_has(r, "counter kept", "web-0 (unknown -> 12)"));
  EXPECT_TRUE(instance_of(r, 0).at("counter_before").is_null());
}

TEST(ReportChecks, InstanceOnTheWrongHostImageFailsOnTarget) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0), instance("web-1", "web", 1, 1, 1)});
  in.instances[0].host_image_after = "host-1";
  json::object r = build_report(in);
  EXPECT_EQ(result(r), "failed");
  EXPECT_FALSE(passed(r, "on target"));
  EXPECT_TRUE(detail_has(r, "on target", "web-0 on host image 'host-1'"));
  EXPECT_EQ(detail(r, "on target").find("web-1"), std::string::npos);
}

TEST(ReportChecks, OnTargetFollowsTheDrillKind) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0)});
  ReportInstance& i = in.instances[0];
  in.kind = "guest-os";
  in.target = "guest-2";
  EXPECT_FALSE(instance_on_target(in, i));  // host image changed, guest image did not
  i.image_after = "guest-2";
  EXPECT_TRUE(instance_on_target(in, i));

  in.kind = "freeze";
  EXPECT_FALSE(instance_on_target(in, i));
  i.image_after = i.image_before;
  i.host_image_after = i.host_image_before;
  EXPECT_TRUE(instance_on_target(in, i));

  in.kind = "reboot-everything";
  EXPECT_FALSE(instance_on_target(in, i));
  json::object r = build_report(in);
  EXPECT_FALSE(passed(r, "on target"));
  EXPECT_TRUE(detail_has(r, "on target", "unknown drill kind"));
}

TEST(ReportChecks, FailedDrillStateFailsTheReport) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0), instance("web-1", "web", 1, 1, 1)});
  in.state = "Failed";
  in.reason = "batch 1: host h1-1 did not come back";
  json::object r = build_report(in);
  EXPECT_EQ(result(r), "failed");
  EXPECT_FALSE(passed(r, "drill completed"));
  EXPECT_TRUE(detail_has(r, "drill completed", "did not come back"));
  EXPECT_TRUE(passed(r, "healthy at end"));
}

TEST(ReportChecks, UnhealthyAtEndFailsNamingTheInstance) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0), instance("web-1", "web", 1, 1, 1)});
  in.instances[1].healthy_at_end = false;
  json::object r = build_report(in);
  EXPECT_EQ(result(r), "failed");
  EXPECT_EQ(detail(r, "healthy at end"), "not healthy: web-1");
}

TEST(ReportChecks, ServiceMissingFromTheServiceListIsStillJudged) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0, {{10, 20}}),
                          instance("web-1", "web", 1, 1, 1, {{10, 20}})});
  in.services.clear();
  json::object r = build_report(in);
  ASSERT_EQ(r.at("services").as_array().size(), 1u);
  EXPECT_EQ(r.at("services").as_array()[0].as_object().at("instances").as_int64(), 2);
  EXPECT_FALSE(passed(r, "services kept serving"));
}

TEST(ReportJson, HasTheDrillWalkPlacementAndInstanceFigures) {
  ReportInstance moved = instance("web-1", "web", 1, 1, 1, {{200.1234, 201.5}});
  moved.host_before = "h9";
  moved.agent_down_ms = 1'300;
  moved.notice_ms = 15'000;
  ReportInput in =
      drill({instance("web-0", "web", 0, 0, 0), moved, instance("web-2", "web", 2, 0, 1)});
  in.events = {"healing: web-1 moved from h9 to h1-1"};
  json::object r = build_report(in);

  const json::object& d = r.at("drill").as_object();
  EXPECT_EQ(d.at("started_at").as_string(), "2023-11-14T22:13:20.000Z");
  EXPECT_EQ(d.at("finished_at").as_string(), "2023-11-14T22:23:20.000Z");
  EXPECT_DOUBLE_EQ(d.at("duration_s").as_double(), 600.0);

  const json::object& w = r.at("walk").as_object();
  EXPECT_EQ(w.at("lower_bound").as_int64(), 2);
  EXPECT_EQ(w.at("batches").as_int64(), 2);
  const json::object& b1 = w.at("batch_list").as_array()[1].as_object();
  EXPECT_DOUBLE_EQ(b1.at("duration_s").as_double(), 200.0);
  EXPECT_EQ(b1.at("status").as_string(), "done");

  const json::object& p = r.at("placement").as_object();
  EXPECT_EQ(p.at("update_domains").as_int64(), 2);
  EXPECT_EQ(p.at("fault_domains").as_array().size(), 2u);
  const json::array& cells = p.at("cells").as_array();
  ASSERT_EQ(cells.size(), 3u);  // (UD0, FD0) web-0, (UD0, FD1) web-2, (UD1, FD1) web-1
  EXPECT_EQ(cells[1].as_object().at("ud").as_int64(), 0);
  EXPECT_EQ(cells[1].as_object().at("fd").as_int64(), 1);
  EXPECT_EQ(cells[1].as_object().at("instances").as_array()[0].as_string(), "web-2");

  const json::object& i1 = instance_of(r, 1);
  EXPECT_EQ(i1.at("host_before").as_string(), "h9");
  EXPECT_DOUBLE_EQ(i1.at("down_s").as_double(), 1.377);  // 200.123 .. 201.5 (ms resolution)
  EXPECT_DOUBLE_EQ(i1.at("agent_down_s").as_double(), 1.3);
  EXPECT_DOUBLE_EQ(i1.at("notice_s").as_double(), 15.0);
  EXPECT_TRUE(i1.at("ack_s").is_null());
  EXPECT_TRUE(i1.at("on_target").as_bool());
  EXPECT_EQ(r.at("events").as_array().size(), 1u);
  EXPECT_EQ(r.at("checks").as_array().size(), 5u);
  EXPECT_EQ(result(r), "passed");
}

// Requests to `service` at 10 per second over [from, to) seconds after the start, served by
// `by` (round robin), failing (503 or, with `refused`, no response) inside each of `fails`.
ReportTraffic traffic(std::string service, std::vector<std::string> by,
                      std::vector<std::pair<double, double>> fails = {}, double from = -2,
                      double to = 600) {
  ReportTraffic t;
  t.service = std::move(service);
  t.rps = 10;
  t.probe_detection_ms = 6'000;
  size_t k = 0;
  for (int64_t ms = s(from); ms < s(to); ms += 100, ++k) {
    ReportRequest r;
    r.t_ms = kStart + ms;
    bool failing = false;
    for (auto [a, b] : fails) failing = failing || (ms >= s(a) && ms < s(b));
    if (failing) {
      r.status = 0;
      r.error = "connect: Connection refused";
      r.latency_ms = 1;
    } else {
      r.status = 200;
      r.latency_ms = static_cast<int64_t>(k % 100) + 1;  // 1..100 ms
      r.served_by = by[k % by.size()];
    }
    t.requests.push_back(std::move(r));
  }
  return t;
}

// A drill with client traffic measured: web (2 instances, drain on), hello (1 instance).
ReportInput drill_with_traffic() {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0, {{100, 160}}),
                          instance("web-1", "web", 1, 1, 1, {{200, 260}}),
                          instance("hello-0", "hello", 0, 0, 0, {{300, 311}})});
  in.traffic_measured = true;
  in.traffic = {traffic("web", {"web-0", "web-1"}), traffic("hello", {"hello-0"}, {{300, 311}})};
  return in;
}

const json::object& service_named(const json::object& report, std::string_view name) {
  return named(report, "services", name);
}

bool has_check(const json::object& report, std::string_view name) {
  return find_named(report, "checks", name) != nullptr;
}

TEST(ReportTraffic, SummaryCountsRunsAndLatencyInSendOrder) {
  ReportTraffic t;
  t.service = "web";
  auto req = [](int64_t t_ms, int status, int64_t latency, std::string by = "") {
    return ReportRequest{kStart + t_ms, status, status ? "" : "timeout", latency, std::move(by)};
  };
  // Listed out of order on purpose: read by send time.
  t.requests = {req(500, 200, 10, "web-1"), req(0, 200, 30, "web-0"),   req(100, 0, 2000),
                req(200, 503, 5, "web-0"),  req(250, 200, 40, "web-1"), req(300, 0, 2000),
                req(400, 200, 20, "web-1"), req(1600, 0, 2000)};
  TrafficSummary m = traffic_summary(t);
  EXPECT_EQ(m.requests, 8);
  EXPECT_EQ(m.failed, 4);
  EXPECT_NEAR(m.success_percent, 400.0 / 8, 1e-9);
  // 100, 200 (503) and 300 fail together although web-1 answered at 250 (a load balancer's
  // round robin interleaves the healthy instance); 1600 is a run of its own, 1.3 s later.
  ASSERT_EQ(m.failure_runs.size(), 2u);
  EXPECT_EQ(m.failure_runs[0].from_ms, kStart + 100);
  EXPECT_EQ(m.failure_runs[0].to_ms, kStart + 300);
  EXPECT_EQ(m.failure_runs[0].count, 3);
  EXPECT_EQ(m.failure_runs[1].from_ms, kStart + 1600);
  EXPECT_EQ(m.failure_runs[1].count, 1);
  // Each run says what its requests got: the status and who answered, or the error.
  EXPECT_EQ(m.failure_runs[0].causes,
            (std::map<std::string, int64_t>{{"timeout", 2}, {"HTTP 503 from web-0", 1}}));
  EXPECT_EQ(m.failure_runs[1].causes, (std::map<std::string, int64_t>{{"timeout", 1}}));
  EXPECT_EQ(m.longest_failure_run_ms, 200);
  // Answered: 30, 5 (the 503 answered), 40, 20, 10 -> sorted 5 10 20 30 40.
  EXPECT_EQ(m.p50_latency_ms, 20);
  EXPECT_EQ(m.p99_latency_ms, 40);
  EXPECT_EQ(m.served_by.at("web-0"), 2);
  EXPECT_EQ(m.served_by.at("web-1"), 3);
}

TEST(ReportTraffic, NoRequestsIsAHundredPercentWithUnknownLatency) {
  TrafficSummary m = traffic_summary(ReportTraffic{"web", 20, 0, {}});
  EXPECT_EQ(m.requests, 0);
  EXPECT_DOUBLE_EQ(m.success_percent, 100.0);
  EXPECT_EQ(m.p50_latency_ms, -1);
  EXPECT_EQ(m.longest_failure_run_ms, 0);
  EXPECT_TRUE(m.failure_runs.empty());
}

TEST(ReportTraffic, ClientsKeptServedPassesWhenNoRequestFailed) {
  json::object r = build_report(drill_with_traffic());
  EXPECT_TRUE(passed(r, "clients kept served"));
  EXPECT_TRUE(detail_has(r, "clients kept served", "no failed request to 1 service(s)"));
  EXPECT_EQ(result(r), "passed");
  EXPECT_TRUE(r.at("traffic").at("measured").as_bool());
  const json::object& web = service_named(r, "web");
  const json::object& t = web.at("traffic").as_object();
  EXPECT_EQ(t.at("requests").as_int64(), 6020);
  EXPECT_EQ(t.at("failed").as_int64(), 0);
  EXPECT_DOUBLE_EQ(t.at("success_percent").as_double(), 100.0);
  EXPECT_EQ(t.at("served_by").at("web-0").as_int64(), 3010);
  EXPECT_EQ(t.at("served_by").at("web-1").as_int64(), 3010);
  EXPECT_EQ(t.at("p50_ms").as_int64(), 50);
  EXPECT_EQ(t.at("p99_ms").as_int64(), 99);
  EXPECT_TRUE(t.at("failure_runs").as_array().empty());
  EXPECT_EQ(web.at("traffic_note").as_string(), "web: all 6020 requests served");
  // The checks, in order, with the traffic check last.
  EXPECT_EQ(r.at("checks").as_array().size(), 6u);
  EXPECT_EQ(r.at("checks").as_array().back().at("name").as_string(), "clients kept served");
}

TEST(ReportTraffic, AFailedRequestToAServiceWithTwoDrainingInstancesFailsTheCheck) {
  ReportInput in = drill_with_traffic();
  in.traffic[0] = traffic("web", {"web-0", "web-1"}, {{100, 100.3}, {200.5, 201}});
  json::object r = build_report(in);
  EXPECT_FALSE(passed(r, "clients kept served"));
  EXPECT_TRUE(detail(r, "clients kept served")
                  .starts_with("clients failed: web (8 of 6020 failed, longest run 0.4 s)"))
      << detail(r, "clients kept served");
  EXPECT_EQ(result(r), "failed");
  const json::object& t = service_named(r, "web").at("traffic").as_object();
  EXPECT_EQ(t.at("failed").as_int64(), 8);
  EXPECT_DOUBLE_EQ(t.at("longest_failure_run_s").as_double(), 0.4);
  const json::array& runs = t.at("failure_runs").as_array();
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_DOUBLE_EQ(runs[0].at("from_s").as_double(), 100.0);  // relative to the drill start
  EXPECT_DOUBLE_EQ(runs[0].at("to_s").as_double(), 100.2);
  EXPECT_EQ(runs[0].at("count").as_int64(), 3);
  const json::array& causes = runs[0].at("causes").as_array();
  ASSERT_EQ(causes.size(), 1u);
  EXPECT_EQ(causes[0].at("what").as_string(), "connect: Connection refused");
  EXPECT_EQ(causes[0].at("count").as_int64(), 3);
  EXPECT_DOUBLE_EQ(runs[1].at("from_s").as_double(), 200.5);
  EXPECT_EQ(runs[1].at("count").as_int64(), 5);
  EXPECT_EQ(service_named(r, "web").at("traffic_note").as_string(),
            "web: 8 of 6020 failed, longest run 0.4 s");
  EXPECT_TRUE(t.at("checked").as_bool());
}

TEST(ReportTraffic, ASingleInstanceServiceFailingDuringItsOutageDoesNotFailTheCheck) {
  json::object r = build_report(drill_with_traffic());
  EXPECT_TRUE(passed(r, "clients kept served"));
  const std::string note(service_named(r, "hello").at("traffic_note").as_string());
  EXPECT_EQ(note, "hello: 110 failed during its 11 s outage (single instance, no SLA)");
  EXPECT_FALSE(service_named(r, "hello").at("traffic").at("checked").as_bool());
  EXPECT_NE(detail(r, "clients kept served").find("not checked: " + note), std::string::npos);
}

TEST(ReportTraffic, DrainOffFailuresAreNotedNotJudged) {
  ReportInput in = drill_with_traffic();
  in.services[0].drain = false;
  in.traffic[0] = traffic("web", {"web-0", "web-1"}, {{100, 103}});
  json::object r = build_report(in);
  EXPECT_TRUE(passed(r, "clients kept served"));
  EXPECT_TRUE(detail(r, "clients kept served")
                  .starts_with("no service with an endpoint, >= 2 instances and drain on; "
                               "not checked: web: 30 of 6020 failed (drain off"))
      << detail(r, "clients kept served");
  const std::string note(service_named(r, "web").at("traffic_note").as_string());
  EXPECT_EQ(note.substr(0, 43), "web: 30 of 6020 failed (drain off: not chec");
}

TEST(ReportTraffic, AMeasuredServiceWithNoRequestsFailsTheCheck) {
  ReportInput in = drill_with_traffic();
  in.traffic[0].requests.clear();
  json::object r = build_report(in);
  EXPECT_FALSE(passed(r, "clients kept served"));
  EXPECT_TRUE(detail(r, "clients kept served")
                  .starts_with("clients failed: web (no requests recorded); not checked: hello"))
      << detail(r, "clients kept served");
}

TEST(ReportTraffic, NotMeasuredHasNoCheckAndSaysWhy) {
  ReportInput in = drill_with_traffic();
  in.traffic_measured = false;
  in.traffic_reason = "loopback network: the rack has no guest network";
  in.traffic[0] = traffic("web", {"web-0"}, {{100, 200}});  // ignored: not measured
  json::object r = build_report(in);
  EXPECT_FALSE(has_check(r, "clients kept served"));
  EXPECT_EQ(r.at("checks").as_array().size(), 5u);
  EXPECT_FALSE(r.at("traffic").at("measured").as_bool());
  EXPECT_EQ(r.at("traffic").at("reason").as_string(),
            "loopback network: the rack has no guest network");
  EXPECT_TRUE(service_named(r, "web").at("traffic").is_null());
  EXPECT_EQ(service_named(r, "web").at("traffic_note").as_string(), "");
  EXPECT_EQ(result(r), "passed");
}

TEST(ReportTraffic, AServiceWithoutAnEndpointHasNullTraffic) {
  ReportInput in = drill_with_traffic();
  in.traffic.erase(in.traffic.begin());  // web has no endpoint
  json::object r = build_report(in);
  EXPECT_TRUE(service_named(r, "web").at("traffic").is_null());
  EXPECT_TRUE(service_named(r, "hello").at("traffic").is_object());
  EXPECT_TRUE(passed(r, "clients kept served"));
}

TEST(ReportTraffic, FailureRunsAreCappedToTheLargestInTimeOrder) {
  ReportInput in = drill_with_traffic();
  std::vector<std::pair<double, double>> fails;
  for (int k = 0; k < 60; ++k) fails.push_back({10.0 + 5 * k, 10.15 + 5 * k});  // 2 each
  fails.push_back({400, 401});  // 10: among the kept
  in.traffic[0] = traffic("web", {"web-0", "web-1"}, fails);
  json::object r = build_report(in);
  const json::object& t = service_named(r, "web").at("traffic").as_object();
  EXPECT_EQ(t.at("failure_runs_total").as_int64(), 61);
  const json::array& runs = t.at("failure_runs").as_array();
  ASSERT_EQ(runs.size(), 50u);
  EXPECT_DOUBLE_EQ(runs.back().at("from_s").as_double(), 400.0);
  EXPECT_EQ(runs.back().at("count").as_int64(), 10);
  for (size_t k = 1; k < runs.size(); ++k)
    EXPECT_LT(runs[k - 1].at("from_s").as_double(), runs[k].at("from_s").as_double());
}

TEST(ReportHtml, EscapesNamesAndReferencesNothingOutside) {
  ReportInput in = drill({instance("<script>alert(1)</script>", "web", 0, 0, 0, {{10, 20}}),
                          instance("web-1", "web", 1, 1, 1)});
  in.events = {"healing moved \"<b>x</b>\" & 'y'"};
  const std::string html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(html, {"&lt;script&gt;alert(1)&lt;&#47;script&gt;",
                                  "&quot;&lt;b&gt;x&lt;&#47;b&gt;&quot; &amp; &#39;y&#39;"}));
  EXPECT_TRUE(contains_none(html, {"<script", "<b>x", "http://", "https://", "src=", "<link"}));
}

TEST(ReportHtml, DrawsTheUdByFdTableAsTheSeedsDo) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0), instance("web-1", "web", 1, 1, 1)});
  const std::string html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(html, {"<tr><th></th><th>FD0</th><th>FD1</th></tr>",
                                  "<tr><th>UD0</th><td><div>web-0</div></td><td></td></tr>",
                                  "<tr><th>UD1</th><td></td><td><div>web-1</div></td></tr>"}));
}

TEST(ReportHtml, ShowsTheVerdictAndTheFailedChecks) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0), instance("web-1", "web", 1, 1, 1)});
  std::string html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(html, {"<h1>PASSED</h1>"}));
  EXPECT_TRUE(contains_none(html, {"FAILED"}));

  in.instances[1].counter_after = 3;
  html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(
      html, {"<h1>FAILED</h1>",
             "<li><b>counter kept</b>: counter lost or unknown: web-1 (10 -&gt; 3)</li>"}));
}

TEST(ReportHtml, DrawsTimelinesWithDownBarsOnASharedAxis) {
  ReportInput in = drill({instance("web-0", "web", 0, 0, 0, {{100, 160}}),
                          instance("web-1", "web", 1, 1, 1), instance("db-0", "db", 0, 0, 0)});
  in.instances[2].timeline = {{kStart + s(30), true}};
  const std::string html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(html, {"<svg class=\"timeline\"", "web-0: down from 100 s to 160 s",
                                  "db-0: unknown (counted as down) from 0 s to 30 s",
                                  "web-1: healthy from 0 s to 600 s"}));
  EXPECT_LT(html.find("<h3>web</h3>"), html.find("<h3>db</h3>"));  // report order
}

TEST(ReportHtml, ShowsTheTrafficTableAndFailuresOnTheTimelineAxis) {
  ReportInput in = drill_with_traffic();
  in.traffic[0] = traffic("web", {"web-0", "web-1"}, {{100, 100.3}, {-1, -0.5}});
  const std::string html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(
      html, {"<table id=\"traffic-table\">",
             "<td>web</td><td class=\"num\">6020</td><td class=\"num bad\">8</td>",
             "<td>hello</td><td class=\"num\">6020</td><td class=\"num muted\">110</td>",
             "web-0: 3005, web-1: 3007"}));
  // A red mark per failure run inside the window, on the service's own "clients" lane.
  EXPECT_TRUE(contains_all(
      html, {"<title>web clients: 3 failed from 100 s to 100.2 s: connect: Connection "
             "refused x3</title>",
             "<title>hello clients: 110 failed from 300 s to 310.9 s: connect: Connection "
             "refused x110</title>"}));
  // No run before the start.
  EXPECT_TRUE(contains_none(html, {"web clients: 5 failed from -1 s"}));
  EXPECT_LT(html.find("web clients: 3 failed"), html.find("<h3>hello</h3>"));
  EXPECT_EQ(html.find("not measured"), std::string::npos);
}

TEST(ReportHtml, SaysWhyClientTrafficWasNotMeasuredAndEscapesTrafficNames) {
  ReportInput in = drill_with_traffic();
  in.traffic_measured = false;
  in.traffic_reason = "loopback network: <no> guest network";
  std::string html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(
      html, {"client traffic not measured: loopback network: &lt;no&gt; guest network"}));
  // No lane without traffic.
  EXPECT_TRUE(contains_none(html, {"clients</text>"}));

  in = drill({instance("<i>-0", "<i>", 0, 0, 0), instance("<i>-1", "<i>", 1, 1, 1)});
  in.traffic_measured = true;
  in.traffic = {traffic("<i>", {"<z>"}, {{10, 11}})};
  html = render_report_html(build_report(in));
  EXPECT_TRUE(
      contains_all(html, {"&lt;z&gt;: 6010", "&lt;i&gt; clients: 10 failed from 10 s to 10.9 s"}));
  EXPECT_TRUE(contains_none(html, {"<i>", "<z>"}));
}

TEST(ReportHtml, RendersADamagedReportWithoutThrowing) {
  std::string html = render_report_html(json::object{});
  EXPECT_NE(html.find("FAILED"), std::string::npos);
  json::object bad{
      {"drill", 3},
      {"placement", json::object{{"update_domains", 1e12}, {"cells", "x"}}},
      {"instances", json::array{1, json::object{{"name", 5}, {"timeline", 2}}}},
      {"walk", json::object{{"batch_list", json::array{nullptr}}}},
      {"traffic", json::object{{"measured", true}}},
      {"services", json::array{json::object{
                       {"name", "web"},
                       {"traffic", json::object{{"failure_runs", json::array{1, nullptr}},
                                                {"served_by", json::object{{"x", "y"}}}}}}}}};
  html = render_report_html(bad);
  EXPECT_NE(html.find("</html>"), std::string::npos);
}

// ---- health for any guest: signals, after-restart health, boot, data check --------

// A Debian-like guest the walk restarted: guest agent, no heartbeat, behind the load balancer,
// everything back.
ReportInstance debian(std::string name, int index) {
  ReportInstance i = instance(std::move(name), "web", index, index, index);
  i.restarted = true;
  i.signals_reported = true;
  i.guest_agent = true;
  i.os_up = true;
  i.app_probe = true;
  i.app_up = true;
  i.boot_id_before = "b-" + i.name + "-1";
  i.boot_id_after = "b-" + i.name + "-2";
  i.boot_id_source = "guest_agent";
  return i;
}

ReportDataCheck data(std::string rule, std::optional<std::string> before,
                     std::optional<std::string> after) {
  ReportDataCheck c;
  c.command = {"/bin/cat", "/data/counter"};
  c.rule = std::move(rule);
  c.before = std::move(before);
  c.after = std::move(after);
  c.ok = true;
  return c;
}

// Two guests of "web", which declares a data check.
ReportInput data_drill(ReportDataCheck c0, ReportDataCheck c1) {
  ReportInput in = drill({debian("web-0", 0), debian("web-1", 1)});
  in.services[0].data_check = true;
  in.instances[0].data_check = std::move(c0);
  in.instances[1].data_check = std::move(c1);
  return in;
}

TEST(ReportDataCheck, NotLessHoldsWhenTheCounterGrewAndTheReportShowsBothOutputs) {
  auto r = build_report(data_drill(data("not_less", "123\n", "130\n"), data("not_less", "7", "7")));
  EXPECT_TRUE(passed(r, "data kept (data check)")) << detail(r, "data kept (data check)");
  EXPECT_EQ(result(r), "passed");
  EXPECT_TRUE(detail_has(r, "data kept (data check)", "web-0 '123' -> '130'"));
  const auto& dc = instance_of(r, 0).at("data_check").as_object();
  EXPECT_EQ(dc.at("before").as_string(), "123\n");
  EXPECT_EQ(dc.at("after").as_string(), "130\n");
  EXPECT_EQ(dc.at("rule").as_string(), "not_less");
  EXPECT_EQ(dc.at("command").as_array().size(), 2u);
  EXPECT_TRUE(dc.at("held").as_bool());
}

TEST(ReportDataCheck, NotLessFailsWhenTheCounterWentBackwardsNamingTheInstanceAndBothOutputs) {
  auto r = build_report(
      data_drill(data("not_less", "123\n", "130\n"), data("not_less", "123\n", "99\n")));
  EXPECT_FALSE(passed(r, "data kept (data check)"));
  EXPECT_EQ(result(r), "failed");
  EXPECT_EQ(detail(r, "data kept (data check)"),
            "data not kept or not proven: web-1: not_less did not hold: before '123', after '99'");
  EXPECT_FALSE(instance_of(r, 1).at("data_check").at("held").as_bool());
}

TEST(ReportDataCheck, NotLessNeedsNumbers) {
  EXPECT_FALSE(data_check_held(data("not_less", "abc", "abd")));
  EXPECT_FALSE(data_check_held(data("not_less", "", "1")));
  EXPECT_TRUE(data_check_held(
      data("not_less", " 1.5\n", "2")));  // the leading integer, as the agent reads it
  EXPECT_TRUE(data_check_held(data("not_less", "123 bytes\n", "130 bytes\n")));
  EXPECT_FALSE(data_check_held(data("not_less", "-3", "-4")));
  auto r = build_report(data_drill(data("not_less", "1", "2"), data("not_less", "x", "y")));
  EXPECT_TRUE(detail_has(r, "data kept (data check)",
                         "web-1: not_less needs numbers: before 'x', after 'y'"));
}

TEST(ReportDataCheck, EqualHoldsOnlyForTheSameText) {
  EXPECT_TRUE(data_check_held(data("equal", "v1 abc\n", "v1 abc\n")));
  EXPECT_FALSE(data_check_held(data("equal", "v1 abc\n", "v1 abd\n")));
  EXPECT_FALSE(data_check_held(data("equal", "5", "6")));  // numbers too: same text or nothing
  auto r = build_report(data_drill(data("equal", "a\n", "a\n"), data("equal", "a\n", "b\n")));
  EXPECT_EQ(detail(r, "data kept (data check)"),
            "data not kept or not proven: web-1: equal did not hold: before 'a', after 'b'");
}

TEST(ReportDataCheck, AMissingAfterFailsEvenWhenTheAgentSaysOkAndAnErrorIsQuoted) {
  ReportDataCheck no_after = data("not_less", "123\n", std::nullopt);
  no_after.ok = false;
  no_after.error = "guest-exec: the guest agent did not answer within 10 s";
  ReportDataCheck silent = data("not_less", "5", std::nullopt);  // ok but no output: no proof
  auto r = build_report(data_drill(no_after, silent));
  EXPECT_FALSE(passed(r, "data kept (data check)"));
  const std::string d = detail(r, "data kept (data check)");
  EXPECT_NE(
      d.find(
          "web-0: no output after the restart (before '123'): guest-exec: the guest agent did not "
          "answer within 10 s"),
      std::string::npos)
      << d;
  EXPECT_NE(d.find("web-1: no output after the restart (before '5')"), std::string::npos) << d;
  EXPECT_TRUE(instance_of(r, 0).at("data_check").at("after").is_null());
}

TEST(ReportDataCheck, AnAgentErrorFailsEvenWhenTheOutputsCompareWell) {
  ReportDataCheck c = data("not_less", "1", "2");
  c.error = "guest-exec exited 1";
  EXPECT_FALSE(data_check_held(c));
  c.error.clear();
  c.ok = false;
  EXPECT_FALSE(data_check_held(c));
}

TEST(ReportDataCheck, AnInstanceOfADeclaringServiceWithoutAResultFails) {
  ReportInput in = data_drill(data("not_less", "1", "2"), data("not_less", "1", "2"));
  in.instances[1].data_check.reset();
  auto r = build_report(in);
  EXPECT_EQ(
      detail(r, "data kept (data check)"),
      "data not kept or not proven: web-1: no data check result (the agent did not report one)");
  in.instances[1].restarted = false;
  r = build_report(in);
  EXPECT_TRUE(detail_has(r, "data kept (data check)", "the walk did not reach it"));
  // A healed instance is a new VM: no result is expected of it.
  in.instances[1].healed = true;
  r = build_report(in);
  EXPECT_TRUE(passed(r, "data kept (data check)")) << detail(r, "data kept (data check)");
  EXPECT_TRUE(
      detail_has(r, "data kept (data check)", "healed on a new host (new VM, no result): web-1"));
}

TEST(ReportDataCheck, NoCheckWithoutADataCheck) {
  auto r = build_report(drill({debian("web-0", 0), debian("web-1", 1)}));
  EXPECT_FALSE(has_check(r, "data kept (data check)"));
  EXPECT_TRUE(instance_of(r, 0).at("data_check").is_null());
}

TEST(ReportGuestHealth, SignalsTextSaysWhatWasAvailable) {
  ReportInstance i = debian("web-0", 0);
  EXPECT_EQ(signals_text(i), "guest agent, app probe");
  i.guest_agent = false;
  i.heartbeat = true;
  EXPECT_EQ(signals_text(i), "heartbeat, app probe");
  i.heartbeat = false;
  EXPECT_EQ(signals_text(i), "app probe only");
  i.app_probe = false;
  EXPECT_EQ(signals_text(i), "none");
  i.heartbeat = true;
  EXPECT_EQ(signals_text(i), "heartbeat only");
  i.signals_reported = false;
  i.app_probe = true;
  EXPECT_EQ(signals_text(i), "app probe only (OS signals not reported)");
}

TEST(ReportGuestHealth, AHealthyRestartPassesAndTheDetailGroupsTheSignals) {
  ReportInput in = drill({debian("web-0", 0), debian("web-1", 1), instance("db-0", "db", 0, 0, 0)});
  in.instances[2].restarted = true;
  in.instances[2].signals_reported = true;
  in.instances[2].heartbeat = true;
  in.instances[2].os_up = true;
  auto r = build_report(in);
  EXPECT_TRUE(passed(r, "guests healthy after restart"))
      << detail(r, "guests healthy after restart");
  EXPECT_EQ(detail(r, "guests healthy after restart"),
            "all 3 restarted instances healthy; signals: web-0, web-1: guest agent, app probe; "
            "db-0: heartbeat only");
  const auto& i0 = instance_of(r, 0);
  EXPECT_EQ(i0.at("signals").at("text").as_string(), "guest agent, app probe");
  EXPECT_TRUE(i0.at("os_up").as_bool());
  EXPECT_TRUE(i0.at("app_up").as_bool());
  EXPECT_TRUE(i0.at("healthy_after_restart").as_bool());
  EXPECT_EQ(i0.at("health_after_restart").as_string(),
            "guest agent answered after restart; app probe UP");
  EXPECT_TRUE(instance_of(r, 2).at("app_up").is_null());  // db has no probe
}

TEST(ReportGuestHealth, TheFailureSaysWhichSignalFailed) {
  ReportInput in = drill({debian("web-0", 0), debian("web-1", 1)});
  in.instances[1].os_up = false;
  auto r = build_report(in);
  EXPECT_FALSE(passed(r, "guests healthy after restart"));
  EXPECT_EQ(result(r), "failed");
  EXPECT_TRUE(
      detail_has(r, "guests healthy after restart",
                 "not healthy after restart: web-1: guest agent did not answer after restart; "
                 "app probe UP"));

  // The problem named for each way the signals can fail.
  const struct {
    bool guest_agent, heartbeat, os_up, app_up;
    std::string_view problem;
  } cases[] = {
      {true, false, false, true, "guest agent did not answer after restart; app probe UP"},
      {true, false, true, false,
       "guest agent answered after restart; app probe not UP after restart"},
      {false, true, false, false, "no heartbeat after restart; app probe not UP after restart"},
  };
  for (const auto& c : cases) {
    ReportInstance i = debian("web-1", 1);
    i.guest_agent = c.guest_agent;
    i.heartbeat = c.heartbeat;
    i.os_up = c.os_up;
    i.app_up = c.app_up;
    EXPECT_EQ(restart_health_problem(i), c.problem);
  }
}

TEST(ReportGuestHealth, AGuestWithoutAGuestAgentIsJudgedByItsProbeAlone) {
  ReportInput in = drill({debian("web-0", 0), debian("web-1", 1)});
  in.instances[0].guest_agent = false;
  in.instances[0].os_up = false;
  auto r = build_report(in);
  EXPECT_TRUE(passed(r, "guests healthy after restart"))
      << detail(r, "guests healthy after restart");
  EXPECT_TRUE(detail_has(r, "guests healthy after restart", "web-0: app probe only"));
  EXPECT_TRUE(instance_of(r, 0).at("os_up").is_null());
  in.instances[0].app_up = false;
  EXPECT_EQ(restart_health_problem(in.instances[0]),
            "no OS signal (no heartbeat, no guest agent); app probe not UP after restart");
}

TEST(ReportGuestHealth, NoSignalAtAllIsNoProof) {
  ReportInput in = drill({debian("web-0", 0), debian("web-1", 1)});
  in.instances[0].guest_agent = false;
  in.instances[0].app_probe = false;
  auto r = build_report(in);
  EXPECT_FALSE(passed(r, "guests healthy after restart"));
  EXPECT_TRUE(detail_has(r, "guests healthy after restart", "web-0: no signal tells it is up"));
  // An agent that did not report signals leaves the OS side unjudged: judged by the probe alone,
  // or not at all, and said so.
  in.instances[0].signals_reported = false;
  r = build_report(in);
  EXPECT_TRUE(passed(r, "guests healthy after restart"));
  EXPECT_TRUE(
      detail_has(r, "guests healthy after restart", "not judged (no signal reported): web-0"));
}

TEST(ReportGuestHealth, NoCheckWhenTheWalkRestartedNothing) {
  auto r =
      build_report(drill({instance("web-0", "web", 0, 0, 0), instance("web-1", "web", 1, 1, 1)}));
  EXPECT_FALSE(has_check(r, "guests healthy after restart"));
  EXPECT_EQ(instance_of(r, 0).at("health_after_restart").as_string(), "");
}

TEST(ReportGuestHealth, AGuestWithoutTheHeartbeatHasNoBuiltInCounterToJudge) {
  ReportInput in = drill({debian("web-0", 0), debian("web-1", 1)});
  for (auto& i : in.instances)
    i.counter_before = i.counter_after = -1;  // what the agent knows of them
  auto r = build_report(in);
  EXPECT_TRUE(passed(r, "counter kept")) << detail(r, "counter kept");
  EXPECT_EQ(detail(r, "counter kept"),
            "all 0 counters kept; no built-in counter (no heartbeat; the data check is their "
            "proof): web-0, web-1");
  // A guest that heartbeats has the counter: unknown is still a failure.
  in.instances[1].heartbeat = true;
  r = build_report(in);
  EXPECT_FALSE(passed(r, "counter kept"));
  EXPECT_TRUE(detail_has(r, "counter kept", "counter lost or unknown: web-1 (unknown -> unknown)"));
  // So is an agent that does not say (an older agent: the built-in guest).
  in.instances[1].heartbeat = false;
  in.instances[1].signals_reported = false;
  EXPECT_FALSE(passed(build_report(in), "counter kept"));
}

TEST(ReportGuestHealth, BootIdsTellARebootFromAMemoryPreservingUpdate) {
  ReportInstance i = debian("web-0", 0);
  EXPECT_EQ(boot_verdict(i), "rebooted");
  i.boot_id_after = i.boot_id_before;
  EXPECT_EQ(boot_verdict(i), "memory kept");
  i.boot_id_after.clear();
  EXPECT_EQ(boot_verdict(i), "");
  ReportInput in = drill({debian("web-0", 0), debian("web-1", 1)});
  in.instances[1].boot_id_after = in.instances[1].boot_id_before;
  auto r = build_report(in);
  EXPECT_EQ(instance_of(r, 0).at("boot").as_string(), "rebooted");
  EXPECT_EQ(instance_of(r, 1).at("boot").as_string(), "memory kept");
  EXPECT_EQ(instance_of(r, 1).at("boot_id_source").as_string(), "guest_agent");
}

TEST(ReportGuestRecord, ReadsTheAgentsJobRecordOfAGuest) {
  // As the agent writes it (agent/src/host_agent.cpp GuestReport::to_json).
  auto record =
      json::parse(R"({"name": "web-0", "notice_ms": 2100, "ack_ms": 1500, "stop_method": "graceful",
      "stop_ms": 900, "down_ms": 31000, "pause_ms": -1, "image_before": "debian-v1", "image_after": "debian-v2",
      "counter_before": -1, "counter_after": -1, "boot_id_before": "aaa", "boot_id_after": "bbb", "ok": true,
      "error": "", "boot_id_source": "guest_agent", "signals": {"heartbeat": false, "guest_agent": true},
      "os_up": true, "data_check": {"command": ["/bin/cat", "/data/counter"], "rule": "not_less",
      "before": "123\n", "after": "", "ok": false, "error": "guest-exec: no answer"}})")
          .as_object();
  ReportInstance i;
  read_guest_record(record, i);
  EXPECT_TRUE(i.restarted);
  EXPECT_EQ(i.notice_ms, 2100);
  EXPECT_EQ(i.agent_down_ms, 31000);
  EXPECT_EQ(i.stop_method, "graceful");
  EXPECT_TRUE(i.signals_reported);
  EXPECT_FALSE(i.heartbeat);
  EXPECT_TRUE(i.guest_agent);
  EXPECT_TRUE(i.os_up);
  EXPECT_EQ(i.boot_id_source, "guest_agent");
  EXPECT_EQ(boot_verdict(i), "rebooted");
  ASSERT_TRUE(i.data_check.has_value());
  EXPECT_EQ(i.data_check->command, (std::vector<std::string>{"/bin/cat", "/data/counter"}));
  EXPECT_EQ(i.data_check->before, std::optional<std::string>("123\n"));
  EXPECT_FALSE(i.data_check->after.has_value());  // "": none
  EXPECT_EQ(i.data_check->error, "guest-exec: no answer");
  EXPECT_FALSE(data_check_held(*i.data_check));

  // An older agent's record: no signals, no data check.
  ReportInstance old;
  read_guest_record(json::parse(R"({"name": "web-0", "ok": true, "notice_ms": "x"})").as_object(),
                    old);
  EXPECT_TRUE(old.restarted);
  EXPECT_FALSE(old.signals_reported);
  EXPECT_FALSE(old.data_check.has_value());
  EXPECT_EQ(old.notice_ms, -1);  // mistyped: unknown
}

TEST(ReportHtml, ShowsEachGuestsSignalsBootAndDataCheckEscaped) {
  ReportInput in =
      data_drill(data("not_less", "<b>1</b>\n", "2\n"), data("not_less", "3", std::nullopt));
  in.instances[1].os_up = false;
  const std::string html = render_report_html(build_report(in));
  EXPECT_TRUE(contains_all(
      html, {
                "<section id=\"guest-health\">",
                "<td>web-0</td><td>guest agent, app probe</td><td class=\"good\">yes</td>"
                "<td class=\"good\">UP</td>",
                "guest agent did not answer after restart; app probe UP",
                "rebooted <span class=\"muted\">(guest_agent)</span>",
                "not_less <code>&#47;bin&#47;cat &#47;data&#47;counter</code>",
                "<code>&lt;b&gt;1&lt;&#47;b&gt;\n</code>",
                "<span class=\"bad\">none</span>"  // web-1 has no after
            }));
  EXPECT_TRUE(contains_none(html, {"<b>1</b>"}));
}

TEST(ReportHtml, SeveralDrillsRenderOnOnePageWithUniqueIds) {
  ReportInput first = drill({debian("web-0", 0), debian("web-1", 1)});
  ReportInput second = first;
  second.drill_id = "d-2";
  second.kind = "guest-os";
  second.target = "debian-v2";  // the images stay guest-1: not on target, so it fails
  const std::string html = render_reports_html({build_report(first), build_report(second)});
  EXPECT_TRUE(contains_all(
      html, {"<h1>FAILED</h1><div>2 drills, one after the other on one rack</div>",
             "drill d-1 · host-os → host-2</a>", "<article class=\"drill\" id=\"drill-1\">",
             "<article class=\"drill\" id=\"drill-2\">", "id=\"d1-checks\"", "id=\"d2-checks\""}));
  EXPECT_TRUE(contains_none(html, {"id=\"checks\""}));
  EXPECT_LT(html.find("id=\"d1-guest-health\""),
            html.find("id=\"d2-checks\""));  // one after the other
  EXPECT_NE(html.find("<li><b>on target</b>"), std::string::npos);
  const std::string ok = render_reports_html({build_report(first), build_report(first)});
  EXPECT_TRUE(contains_all(ok, {"<h1>ALL PASSED</h1>"}));
  EXPECT_TRUE(contains_none(ok, {"FAILED"}));
}

}  // namespace
}  // namespace fabriclab::orchestrator
