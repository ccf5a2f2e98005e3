// The drill report's reading of client traffic (orchestrator/report.hpp).
//
// Client traffic is read in send order: a failure run is a maximal stretch of failed requests
// less than 1 s apart, successes in between included: a load balancer that still sends every
// other request to a stopped instance serves some clients and fails others, and the outage the
// clients saw is the whole stretch, not the single failures between two successes.
// "clients kept served" judges only the services that promise it (>= 2 instances, drain on); a
// measured service that recorded no request at all fails it too (no data is not proof). The
// others get a note instead: a single instance is expected to fail its clients while it is down,
// and without drain the load balancer only learns of a stopped instance from its probe.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fabriclab/orchestrator/report.hpp"
#include "report_internal.hpp"

namespace fabriclab::orchestrator {

using report_detail::format_seconds;
using report_detail::int_or_null;
using report_detail::round_to;
using report_detail::seconds;

namespace {

constexpr int64_t kFailureRunGapMs = 1000;  // failures closer than this belong to one run
constexpr size_t kMaxFailureRuns = 50;      // per service in the JSON: the largest, in time order

bool request_failed(const ReportRequest& r) { return r.status < 200 || r.status >= 400; }

// What a failed request got, for its run's causes: the status and who answered, or the error.
std::string failure_cause(const ReportRequest& r) {
  std::string what = r.status > 0 ? "HTTP " + std::to_string(r.status)
                                  : (r.error.empty() ? std::string("no response") : r.error);
  if (!r.served_by.empty()) what += " from " + r.served_by;
  return what;
}

json::array causes_json(const std::map<std::string, int64_t>& causes) {
  std::vector<std::pair<std::string, int64_t>> sorted(causes.begin(), causes.end());
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  json::array out;
  for (const auto& [what, n] : sorted) out.emplace_back(json::object{{"what", what}, {"count", n}});
  return out;
}

// The nearest-rank percentile p (0..100) of sorted values.
int64_t percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return -1;
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

// The per-service `traffic` object of the JSON (report.hpp).
json::object report_detail::traffic_json(const ReportInput& in, const ReportTraffic& t,
                                         const TrafficSummary& m, bool checked) {
  json::object served;
  for (const auto& [instance, n] : m.served_by) served[instance] = n;
  // The largest runs when there are too many, listed in time order.
  std::vector<TrafficSummary::Run> runs = m.failure_runs;
  if (runs.size() > kMaxFailureRuns) {
    std::stable_sort(runs.begin(), runs.end(),
                     [](const auto& a, const auto& b) { return a.count > b.count; });
    runs.resize(kMaxFailureRuns);
    std::stable_sort(runs.begin(), runs.end(),
                     [](const auto& a, const auto& b) { return a.from_ms < b.from_ms; });
  }
  json::array run_list;
  for (const auto& r : runs) {
    run_list.emplace_back(json::object{{"from_s", seconds(r.from_ms - in.started_ms)},
                                       {"to_s", seconds(r.to_ms - in.started_ms)},
                                       {"count", r.count},
                                       {"causes", causes_json(r.causes)}});
  }
  return json::object{
      {"requests", m.requests},
      {"failed", m.failed},
      {"success_percent", round_to(m.success_percent, 1e4)},
      {"longest_failure_run_s", seconds(m.longest_failure_run_ms)},
      {"p50_ms", int_or_null(m.p50_latency_ms)},
      {"p99_ms", int_or_null(m.p99_latency_ms)},
      {"served_by", std::move(served)},
      {"failure_runs", std::move(run_list)},
      {"failure_runs_total", static_cast<int64_t>(m.failure_runs.size())},
      {"checked", checked},
      {"rps", t.rps},
      {"probe_detection_s", seconds(t.probe_detection_ms)},
  };
}

// Whether "clients kept served" judges this service: it promises uninterrupted service.
bool report_detail::promises_clients(const ReportService& s, const ServiceAvailability& a) {
  return a.instances >= 2 && s.drain;
}

// One line on what the service's clients saw, for the services table and the check.
std::string report_detail::traffic_note(const ReportService& s, const ServiceAvailability& a,
                                        const TrafficSummary& m) {
  if (m.requests == 0) return fmt::format("{}: no requests recorded", s.name);
  if (m.failed == 0) return fmt::format("{}: all {} requests served", s.name, m.requests);
  if (a.instances < 2) {
    return fmt::format("{}: {} failed during its {} s outage (single instance, no SLA)", s.name,
                       m.failed, format_seconds(a.unavailable_ms));
  }
  if (!s.drain) {
    return fmt::format(
        "{}: {} of {} failed (drain off: not checked; the load balancer notices a "
        "stopped instance only by its probe)",
        s.name, m.failed, m.requests);
  }
  return fmt::format("{}: {} of {} failed, longest run {} s", s.name, m.failed, m.requests,
                     format_seconds(m.longest_failure_run_ms));
}

TrafficSummary traffic_summary(const ReportTraffic& t) {
  TrafficSummary m;
  m.service = t.service;
  std::vector<const ReportRequest*> by_time;
  by_time.reserve(t.requests.size());
  for (const ReportRequest& r : t.requests) by_time.push_back(&r);
  std::stable_sort(by_time.begin(), by_time.end(),
                   [](const auto* a, const auto* b) { return a->t_ms < b->t_ms; });
  std::vector<int64_t> latencies;
  TrafficSummary::Run run;
  auto close_run = [&] {
    if (run.count == 0) return;
    m.longest_failure_run_ms = std::max(m.longest_failure_run_ms, run.to_ms - run.from_ms);
    m.failure_runs.push_back(run);
    run = {};
  };
  for (const ReportRequest* r : by_time) {
    m.requests++;
    if (r->status > 0) {  // answered, whatever the status
      if (r->latency_ms >= 0) latencies.push_back(r->latency_ms);
      if (!r->served_by.empty()) m.served_by[r->served_by]++;
    }
    if (!request_failed(*r)) continue;
    m.failed++;
    // A run is a stretch of failures less than kFailureRunGapMs apart, whatever answered in
    // between: a load balancer still sending every other request to a stopped instance
    // interleaves successes with the failures, and the clients' outage is the whole stretch.
    if (run.count > 0 && r->t_ms - run.to_ms >= kFailureRunGapMs) close_run();
    if (run.count == 0) run.from_ms = r->t_ms;
    run.to_ms = r->t_ms;
    run.count++;
    std::string cause = failure_cause(*r);
    if (!run.causes.contains(cause) && run.causes.size() >= TrafficSummary::kMaxFailureCauses)
      cause = "other";
    run.causes[cause]++;
  }
  close_run();
  if (m.requests > 0) {
    m.success_percent =
        100.0 * static_cast<double>(m.requests - m.failed) / static_cast<double>(m.requests);
  }
  std::sort(latencies.begin(), latencies.end());
  m.p50_latency_ms = percentile(latencies, 50);
  m.p99_latency_ms = percentile(latencies, 99);
  return m;
}

}  // namespace fabriclab::orchestrator
