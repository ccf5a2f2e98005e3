#pragma once
// The drill report (docs/report.md): the proof, after a walk, that the guest apps survived.
//
// Pure functions over plain data. The caller (the controller) gathers what the prober, the agents
// and the journal know into a `ReportInput`; `build_report` turns it into the report JSON with
// per-service availability, per-instance figures, the checks and `"result": "passed" | "failed"`;
// `render_report_html` turns that JSON into one self-contained HTML page.
//
// How health is read from a timeline (the same everywhere in this file):
//   - The window is [started_ms, finished_ms); a finished_ms before started_ms counts as a
//     zero-length window. Each moment is half open: a change at t holds from t on, so an instance
//     coming back at t and another going down at t are never down together.
//   - At a moment t an instance is in the state of its last timeline entry with t_ms <= t (the
//     last one listed when several share a t_ms). Before its first entry its state is unknown, and
//     unknown counts as down: a guest nobody heard from is not serving. An empty timeline is
//     therefore down for the whole window, whatever `healthy_at_end` says.
//   - Entries before the window only set the state at its start; entries at or after its end are
//     ignored.
//   - A zero-length window has no moments: nothing is down, every service is always available,
//     availability is 100 %. The other checks (state, health at end, images, counters) still apply.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"

namespace fabriclab::orchestrator {

// A health transition of one instance at unix time `t_ms`. healthy=true: the guest heartbeats and
// the agent says healthy; false: down (stopped, booting, failed, host unreachable).
struct HealthChange {
  int64_t t_ms = 0;
  bool healthy = false;
};

// A service's data check as the agent ran it in one guest (cluster.hpp DataCheck): the command's
// output before the notice and after the restart, as the guest agent returned them.
struct ReportDataCheck {
  std::vector<std::string> command;
  std::string rule;                          // "equal" | "not_less"
  std::optional<std::string> before, after;  // nullopt: none (not run, failed, or empty output)
  bool ok = false;                           // the agent's verdict
  std::string error;                         // the agent's reason when not ok
};

// One instance (guest VM) as the drill saw it, before and after.
struct ReportInstance {
  std::string name;         // instance name, e.g. "web-0"; user input, escaped in HTML
  std::string service;      // the service (availability set) it belongs to
  std::string host;         // the host it is on at the end of the drill
  int index = 0;            // instance index within its service
  int ud = 0;               // update domain
  int fd = 0;               // fault domain (of `host`)
  std::string host_before;  // differs from `host` when healing moved it
  bool healed = false;      // healing re-created it on another host during the drill: a new VM
                            // whose counter starts again (the dead host's local data is gone)
  std::string image_before, image_after;            // guest image
  std::string host_image_before, host_image_after;  // image of the host it ran on
  int64_t counter_before = -1, counter_after = -1;  // the guest's durable data counter; -1 unknown
  int64_t notice_ms = -1;      // scheduled-event notice given to the guest before stop (-1: none)
  int64_t ack_ms = -1;         // when the guest acked, ms after the notice (-1: no ack)
  std::string stop_method;     // "graceful" | "destroyed" | "saved" | "" (not stopped)
  int64_t agent_down_ms = -1;  // the agent's own measure of the guest's down time (-1: unknown)
  bool ok = true;              // the agent's verdict for this guest in its operation
  std::string error;           // why not ok
  bool healthy_at_end = false;
  std::vector<HealthChange> timeline;  // by t_ms; the first entry at or before the drill start

  // Health for any guest, from its host's job record of it and the load balancer.
  bool restarted = false;         // its host's job has a record of it (the walk reached it)
  bool signals_reported = false;  // the agent said which OS signals the guest offered
  bool heartbeat = false;         // the built-in guest's integration-channel heartbeat
  bool guest_agent = false;       // qemu-guest-agent answered guest-ping during the operation
  bool os_up = false;             // after the restart: heartbeat or guest-agent ping answered
  bool app_probe = false;         // its service sits behind the load balancer (probed)
  bool app_up = false;            // UP in the load balancer after its restart
  std::string boot_id_before, boot_id_after;  // "" unknown
  std::string boot_id_source;                 // "heartbeat" | "guest_agent" | ""
  std::optional<ReportDataCheck> data_check;  // when its service has one and the agent ran it
};

// One batch of the walk.
struct ReportBatch {
  int index = 0;
  std::vector<std::string> hosts;
  int64_t started_ms = 0, finished_ms = 0;  // unix ms; 0 (or less): not started / not finished
  std::string status;                       // "done" | "failed" | "pending" | "running" | "skipped"
};

// One host of the rack, with its host image before and after.
struct ReportHost {
  std::string id;
  int fd = 0;
  std::string image_before, image_after, state;
};

// One service (availability set).
struct ReportService {
  std::string name;
  int instance_count = 0;   // as declared; the figures count the instances listed in the input
  int ud_count = 5;         // upgradeDomainCount
  bool drain = true;        // its app drains on a scheduled event (spec `drain`)
  bool data_check = false;  // it declares a data check: every instance must prove its data kept
};

// One client request to a service's VIP (traffic.hpp RequestRecord), as the report reads it.
struct ReportRequest {
  int64_t t_ms = 0;  // unix ms when it was sent
  int status = 0;    // HTTP status; 0: no response (error says why)
  std::string error;
  int64_t latency_ms = -1;
  std::string served_by;  // the instance that answered ("" unknown)
};

// The client traffic one service received during the drill.
struct ReportTraffic {
  std::string service;
  double rps = 0;                       // the configured rate
  int64_t probe_detection_ms = 0;       // the load balancer's probe interval x unhealthy threshold
  std::vector<ReportRequest> requests;  // in send order
};

// Everything the report is made from.
struct ReportInput {
  std::string drill_id;
  std::string kind;    // "host-os" | "guest-os" | "freeze"
  std::string target;  // target image version (host image for host-os, guest image for guest-os)
  std::string state;   // drill state at the end: Completed | Failed | Aborted | ...
  std::string reason;  // why it failed or halted ("" when Completed)
  int64_t started_ms = 0, finished_ms = 0;  // unix ms; the availability window
  int lower_bound = 0;                      // the planner's lower bound on the number of batches
  std::vector<ReportBatch> batches;
  std::vector<ReportHost> hosts;
  // Services in report order. A service named by an instance but missing here is still reported
  // (after these, with ud_count 5), so an omission cannot hide a failure.
  std::vector<ReportService> services;
  std::vector<ReportInstance> instances;
  std::vector<std::string> events;  // notable lines (healing, rollbacks), shown in the report
  double sla_percent = 99.95;       // clamped to 0..100
  // Client traffic (traffic.hpp): measured only on a rack with a guest network and a load
  // balancer; otherwise traffic_reason says why not (e.g. "loopback network: the rack has no
  // guest network").
  bool traffic_measured = false;
  std::string traffic_reason;
  std::vector<ReportTraffic> traffic;  // services with an endpoint
};

// Per service, what its clients saw (requests sent inside the window plus the traffic lead/tail
// the caller included). Requests are read in send order (t_ms; ties keep the input order); a
// request failed when its status is not 2xx/3xx (0: no response). Latency percentiles are
// nearest-rank over the requests that got a response (any status) with a known latency.
struct TrafficSummary {
  std::string service;
  int64_t requests = 0, failed = 0;
  double success_percent = 100.0;  // 100 with no requests
  // A run of failures: failed requests less than 1 s apart, whatever was answered in between
  // (a load balancer still sending every other request to a stopped instance interleaves
  // successes with failures; the clients' outage is the whole stretch).
  int64_t longest_failure_run_ms = 0;  // first to last send time of the longest run (0: none
                                       // or a single failure)
  int64_t p50_latency_ms = -1, p99_latency_ms = -1;  // of answered requests; -1: none
  std::map<std::string, int64_t> served_by;          // instance -> answered requests
  // Each run of failures: [from_ms, to_ms] send times, and how many failed in it.
  struct Run {
    int64_t from_ms = 0, to_ms = 0, count = 0;
    // What the failed requests got, e.g. "HTTP 503 from web-1" or "connect: Connection refused":
    // at most kMaxFailureCauses distinct ones, the rest counted under "other".
    std::map<std::string, int64_t> causes;
  };
  static constexpr size_t kMaxFailureCauses = 8;
  std::vector<Run> failure_runs;
};
TrafficSummary traffic_summary(const ReportTraffic& t);

// Per service, from its instances' timelines over the window (see the top of this file).
struct ServiceAvailability {
  std::string service;
  int instances = 0;              // instances of the service in the input
  bool sla_applies = false;       // >= 2 instances (the Hello World single instance gets none)
  bool always_available = false;  // some instance healthy at every moment of the window
  int64_t unavailable_ms = 0;     // total time with no healthy instance
  double availability_percent = 100.0;  // (window - unavailable) / window; 100 for no window
  int max_uds_down = 0;                 // most distinct UDs with a down instance at the same moment
  int max_instances_down = 0;           // most instances down at the same moment
  // What the SLA allows in a 30-day month, (1 - sla/100) * 30 d, rounded to ms; 0 without SLA.
  int64_t budget_ms_per_month = 0;
  // unavailable_ms / budget_ms_per_month * 100; 0 without SLA. With a zero budget (SLA 100 %)
  // any downtime reads as 100.
  double budget_used_percent = 0;
  // "kept serving" | "lost availability for N s" | "no SLA (single instance): down N s" |
  // "no instances"
  std::string verdict;
};

// The availability figures of service `s` over the window of `in`.
ServiceAvailability service_availability(const ReportInput& in, const ReportService& s);

// The time instance `i` was down inside the window of `in` (unknown counts as down).
int64_t instance_down_ms(const ReportInput& in, const ReportInstance& i);

// Whether `i` ended on the drill's target: host-os: host_image_after == target; guest-os:
// image_after == target; freeze: neither image changed. False for any other kind.
bool instance_on_target(const ReportInput& in, const ReportInstance& i);

// Whether the guest's durable counter survived: counter_after >= counter_before >= 0.
bool counter_kept(const ReportInstance& i);

// ---- health for any guest (report_guest.cpp) ----
//
// An instance the walk restarted is healthy after it when its OS signal held (os_up, judged
// only when it offered one: heartbeat or guest agent) and its app probe held (app_up, judged only
// when it has one). Nothing offered at all is not healthy: no data is not proof. An agent that
// did not report signals (signals_reported false) has the OS side left unjudged.

// Reads what an agent's job recorded of one guest (an entry of its "guests": notice_ms, ack_ms,
// stop_method, down_ms, ok, error, signals {heartbeat, guest_agent}, os_up, boot_id_before/after,
// boot_id_source, data_check {command, rule, before, after, ok, error}) into `i`, and marks it
// restarted. Missing or mistyped fields keep their defaults (unknown); an empty data-check output
// (the agent writes "" for one it did not get) reads as none. signals_reported only when the
// record has "signals" (an older agent has not).
void read_guest_record(const json::object& g, ReportInstance& i);

// The signals it had: "heartbeat, guest agent, app probe", "guest agent, app probe",
// "heartbeat, app probe", "app probe only", "heartbeat only", "guest agent only", "none";
// "app probe only (OS signals not reported)" / "none reported" without signals_reported.
std::string signals_text(const ReportInstance& i);

// "" when healthy after its restart (or not restarted); else what held and what failed, e.g.
// "guest agent did not answer after restart; app probe UP".
std::string restart_health_problem(const ReportInstance& i);

// Whether the data check's rule held: the agent says ok with no error, both outputs there, and
// equal (byte for byte) or not_less (both start with an integer, as the agent reads them, after
// leading whitespace; after >= before).
bool data_check_held(const ReportDataCheck& c);

// "rebooted" (boot ids differ), "memory kept" (equal), "" (either unknown).
std::string boot_verdict(const ReportInstance& i);

// The whole report as JSON:
// {"drill": {id, kind, target, state, reason, started_at, finished_at (RFC 3339), duration_s,
//            sla_percent},
//  "walk": {lower_bound, batches, batch_list: [{index, hosts, started_at, finished_at, start_s,
//           end_s (relative to the drill start), duration_s, status}]},   (unknown times: null)
//  "placement": {fault_domains: [fd...], update_domains: n (rows UD0..UDn-1, the UDs in use),
//                cells: [{ud, fd, instances: [names]}]},    (non-empty cells, by UD then FD)
//  "hosts": [{id, fd, image_before, image_after, state}],
//  "services": [{name, instances, ud_count, sla_applies, always_available, availability_percent,
//                unavailable_s, max_uds_down, max_instances_down, error_budget_s_per_month,
//                error_budget_used_s, error_budget_used_percent, verdict,
//                traffic, traffic_note}],                                (budget null w/o SLA)
//  "instances": [{name, service, index, ud, fd, host, host_before, down_s, agent_down_s,
//                 notice_s, ack_s, stop_method, image_before, image_after, host_image_before,
//                 host_image_after, counter_before, counter_after, counter_kept, healthy_at_end,
//                 on_target, ok, error, timeline: [{t_s, healthy}],
//                 restarted, signals: {heartbeat, guest_agent, app_probe, reported, text},
//                 os_up, app_up (null when not restarted, or not judged: no such signal),
//                 health_after_restart (what held and what failed, "" when not restarted),
//                 healthy_after_restart (null when not restarted or nothing to judge it by),
//                 boot_id_before, boot_id_after, boot_id_source, boot ("rebooted" | "memory kept"
//                 | ""), data_check: null | {command, rule, before, after (null: none), ok, error,
//                 held}}],
//  "traffic": {measured, reason},                      (reason "" when measured)
//  "events": [lines], "checks": [{name, passed, detail}], "result": "passed" | "failed"}
//
// A service's `traffic` (null when traffic was not measured or the service has no endpoint,
// i.e. no ReportTraffic entry): {requests, failed, success_percent, longest_failure_run_s,
// p50_ms, p99_ms (null: no answered request), served_by: {instance: answered requests},
// failure_runs: [{from_s, to_s, count}] (send times relative to the drill start, negative for the
// lead before it; at most 50: the largest runs, in time order), failure_runs_total, checked
// (whether "clients kept served" judges it: >= 2 instances and drain on), rps, probe_detection_s} —
// traffic_summary()'s figures. `traffic_note` ("" without traffic) is one line on what its clients
// saw: "web: all 1200 requests served", "web: 3 of 1200 failed, longest run 0.1 s", "hello: 31
// failed during its 11 s outage (single instance, no SLA)", "api: 12 of 1200 failed (drain off: not
// checked; ...)", "web: no requests recorded".
//
// Unknown values (-1 in the input) are null. Seconds are doubles rounded to 3 decimals,
// percentages to 4. An instance's timeline is clipped to the window: t_s is relative to the drill
// start, an entry at 0 gives the state at the start, and a timeline starting later means unknown
// (down) until then.
//
// The checks, in this order, each naming what fails: "drill completed" (state is Completed),
// "healthy at end", "on target" (instance_on_target), "counter kept" (counter_kept; healed
// instances and guests whose agent reports no heartbeat, i.e. without the built-in counter, are
// named instead of judged), "services
// kept serving" (every service with sla_applies was always_available), and, only when traffic was
// measured, "clients kept served": every service with a traffic entry, >= 2 instances (in the
// input) and drain on had requests and none failed; the detail names each failing service with
// its counts and lists the failures of services it does not judge (single instance, drain off)
// as "not checked". Then, only when some instance was restarted, "guests healthy after restart"
// (restart_health_problem for each; the detail names each failing instance with what failed, and
// groups the instances by the signals they had), and, only when some service declares a data
// check or some instance has a result, "data kept (data check)": every instance of a service
// with a data check (healed ones without a result excepted) has a result that held
// (data_check_held); the detail names each failing instance with its rule and both outputs.
// result is "passed" only when all pass.
json::object build_report(const ReportInput& in);

// A self-contained HTML page (inline CSS and SVG, no script, no external resource) rendering a
// report as built by `build_report`: the verdict banner with the failed checks, the drill
// summary, the walk, the UD x FD placement table, hosts, services, instances, their guest health
// (signals, OS and app after the restart, boot, data check before/after/rule/held), a timeline per
// instance grouped by service and UD on a shared time axis, and the events. Every string taken
// from the report is HTML-escaped. Missing or mistyped fields render as empty, never throw.
std::string render_report_html(const json::object& report);

// Several drills run one after another (a spec's `updates`) on one page: a banner with the
// overall result and one section per drill, in order, each rendered as render_report_html renders
// a single report (its element ids prefixed "dN-", so they stay unique).
std::string render_reports_html(const std::vector<json::object>& reports);

}  // namespace fabriclab::orchestrator
