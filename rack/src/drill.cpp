// Running a drill spec against an orchestrator, with live progress (drill.hpp).
#include "fabriclab/rack/drill.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <iostream>
#include <map>
#include <set>
#include <thread>

#include "fabriclab/client/render.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/orchestrator/drill_spec.hpp"
#include "fabriclab/rack/feed_recorder.hpp"

namespace fabriclab::rack {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

using json_get::arr;
using json_get::int_or;
using json_get::str;

bool is_final(const std::string& state) {
  auto s = orchestrator::parse_drill_state(state);
  return s.ok() && orchestrator::is_finished(*s);
}

// Waits until every instance is healthy on a host outside `dead` (healing done).
Status wait_healed(const client::OrchestratorClient& api, const std::set<std::string>& dead,
                   std::chrono::milliseconds timeout, std::ostream* out) {
  auto deadline = Clock::now() + timeout;
  std::string last;
  while (Clock::now() < deadline) {
    FL_ASSIGN_OR_RETURN(auto inst, api.get("/v1/instances"));
    int ok = 0, total = 0;
    last.clear();
    for (const auto& v : inst.as_array()) {
      const auto& o = v.as_object();
      ++total;
      auto* h = o.if_contains("healthy");
      bool healthy = h && h->is_bool() && h->as_bool();
      if (healthy && !dead.count(str(o, "host"))) {
        ++ok;
      } else if (last.size() < 160) {
        last += (last.empty() ? "" : ", ") + str(o, "name") + " on " + str(o, "host") + " " +
                str(o, "status");
      }
    }
    if (ok == total) {
      if (out) *out << "healing done: all " << total << " instances healthy on surviving hosts\n";
      return {};
    }
    if (!client::sleep_unless_interrupted(300ms))
      return make_error(Condition::cancelled, "interrupted");
  }
  return make_error(Condition::timeout, "healing did not finish within " +
                                            std::to_string(timeout.count() / 1000) +
                                            " s; still waiting for " + last);
}

}  // namespace

json::object drill_body(const DrillFileSpec& spec) {
  orchestrator::DrillSpec body;  // the orchestrator's own wire type: one spelling of each field
  body.kind = spec.kind;
  body.target = spec.target;
  body.max_parallel_hosts = spec.max_parallel_hosts;
  body.time_scale = spec.time_scale;
  body.recovery_s = spec.recovery_s;
  body.notice_s = spec.notice_s;
  body.healthy_timeout_s = spec.healthy_timeout_s;
  body.freeze_s = spec.freeze_s;
  // Paused until the faults of the old form (before the walk) are injected.
  body.start_paused = std::any_of(spec.faults.begin(), spec.faults.end(), [](const FaultSpec& f) {
    return f.at.kind == FaultAt::Kind::before_walk;
  });
  return orchestrator::to_json(body);
}

namespace {

// The old form of a fault (kill-fault-domain before the walk): the drill was created paused; the
// domain is killed, healing awaited, and the walk resumed.
Status inject_before_walk(const client::OrchestratorClient& api, const DrillFileSpec& spec,
                          Lab* lab, const std::string& id, std::chrono::milliseconds heal_timeout,
                          std::ostream* out) {
  std::set<std::string> dead;
  bool any = false;
  for (const auto& f : spec.faults) {
    if (f.at.kind != FaultAt::Kind::before_walk) continue;
    any = true;
    if (out)
      *out << "fault: killing every host of fault domain " << f.fault_domain
           << " (agents and VMs)\n";
    FL_RETURN_IF_ERROR(lab->kill_fault_domain(f.fault_domain));
    for (const auto& a : lab->agents()) {
      if (a.fault_domain == f.fault_domain) dead.insert(a.name);
    }
  }
  if (!any) return {};
  if (auto st = wait_healed(api, dead, heal_timeout, out); !st.ok()) {
    (void)api.post("/v1/drills/" + id + "/abort", json::object{});
    return make_error(st.error().condition, "fault injection: " + st.error().message);
  }
  return api.post("/v1/drills/" + id + "/resume", json::object{}).ok()
             ? Status{}
             : make_error(Condition::transient, "the drill could not be resumed after the fault");
}

// Follows drill `id` to its end with the progress view. The orchestrator may be away a while (a
// kill-orchestrator fault, a restart): GETs are retried for up to a minute, or as long as the
// fault executor says it is down.
Status follow_drill(const client::OrchestratorClient& api, const std::string& id,
                    const DrillView& view, Clock::time_point created_at,
                    const FaultExecutor* faults, DrillOutcome& outcome) {
  std::ostream* out = view.out;
  std::string last_view;
  client::LiveRegion region(out ? *out : std::cerr, view.redraw, view.size);
  bool abort_sent = false;
  auto abort_deadline = Clock::time_point::max();
  auto unreachable_since = Clock::time_point::max();
  for (;;) {
    const bool over_time = view.deadline.count() > 0 && Clock::now() - created_at > view.deadline;
    if ((client::interrupted() || over_time) && !abort_sent) {
      abort_sent = true;
      outcome.interrupted = client::interrupted();
      outcome.timed_out = !outcome.interrupted;
      abort_deadline = Clock::now() + 120s;
      if (out) {
        *out << (outcome.timed_out ? "\nthe drill ran past its deadline: aborting it"
                                   : "\ninterrupted: aborting the drill")
             << " (hosts in flight finish, nothing new starts)\n";
      }
      (void)api.post("/v1/drills/" + id + "/abort", json::object{});
      region.forget();
    }
    auto d = api.get("/v1/drills/" + id);
    if (!d.ok()) {
      if (Clock::now() > abort_deadline) return d.error();
      unreachable_since = std::min(unreachable_since, Clock::now());
      const bool expected_down = faults && faults->orchestrator_down();
      if (!expected_down && Clock::now() - unreachable_since > 60s) return d.error();
      std::this_thread::sleep_for(300ms);
      continue;
    }
    unreachable_since = Clock::time_point::max();
    outcome.drill = d->as_object();
    std::string state = str(outcome.drill, "state");
    // In place, a countdown; in a log, a view per change (a fixed deadline, not a countdown).
    auto now = view.redraw ? std::optional(unix_now_ms()) : std::nullopt;
    std::string v = client::render_drill(outcome.drill, 24, now);
    if (out && v != last_view) {
      region.draw(v);
      last_view = v;
    }
    if (is_final(state)) return {};
    if (Clock::now() > abort_deadline)
      return make_error(Condition::timeout, "the drill did not stop after abort");
    std::this_thread::sleep_for(300ms);
  }
}

}  // namespace

Result<DrillOutcome> run_drill(const client::OrchestratorClient& api, const DrillFileSpec& spec,
                               Lab* lab, const DrillView& view,
                               std::chrono::milliseconds heal_timeout) {
  std::ostream* out = view.out;
  if (!lab) {
    // Against a running orchestrator: create the spec's services it does not have yet.
    FL_ASSIGN_OR_RETURN(auto have, api.get("/v1/services"));
    std::set<std::string> names;
    for (const auto& v : have.as_array()) {
      if (v.is_object()) names.insert(str(v.as_object(), "name"));
    }
    bool created_any = false;
    for (const auto& s : spec.services) {
      if (names.count(s.name)) continue;
      FL_RETURN_IF_ERROR(api.post("/v1/services", service_body(s, spec.time_scale)));
      if (out) *out << "service " << s.name << " created (" << s.instances << " instances)\n";
      created_any = true;
    }
    if (created_any) FL_RETURN_IF_ERROR(wait_healed(api, {}, heal_timeout, nullptr));
  }
  const bool scheduled =
      std::any_of(spec.faults.begin(), spec.faults.end(),
                  [](const FaultSpec& f) { return f.at.kind != FaultAt::Kind::before_walk; });
  if (!spec.faults.empty() && !lab) {
    return make_error(Condition::invalid_argument, "faults need a local rack (not --orchestrator)");
  }
  std::unique_ptr<FeedRecorder> feed;
  if (scheduled || view.record_feed) {
    feed = std::make_unique<FeedRecorder>(api);
    if (!feed->start())
      return make_error(Condition::transient, "the orchestrator's event feed did not answer");
  }
  FL_ASSIGN_OR_RETURN(auto created, api.post("/v1/drills", drill_body(spec)));
  std::string id = str(created.as_object(), "id");
  if (id.empty()) return make_error(Condition::internal, "POST /v1/drills answered without an id");
  if (out) *out << "drill " << id << " created: " << spec.kind << " -> " << spec.target << "\n";
  const auto created_at = Clock::now();
  FL_RETURN_IF_ERROR(inject_before_walk(api, spec, lab, id, heal_timeout, out));
  std::unique_ptr<FaultExecutor> faults;
  if (scheduled) {
    faults = std::make_unique<FaultExecutor>(*lab, api, spec, id, out);
    faults->start();
  }
  DrillOutcome outcome;
  FL_RETURN_IF_ERROR(follow_drill(api, id, view, created_at, faults.get(), outcome));
  if (faults) {
    faults->finish("the drill ended " + str(outcome.drill, "state") + " first");
    // A restarted orchestrator may still be reattaching: the drill's final state is read again.
    if (auto d = api.get("/v1/drills/" + id); d.ok()) outcome.drill = d->as_object();
  }
  FL_ASSIGN_OR_RETURN(auto report, api.get("/v1/drills/" + id + "/report"));
  outcome.report = report.as_object();
  outcome.passed = str(outcome.report, "result") == "passed";
  if (feed) {
    feed->stop();
    outcome.feed = feed->events();
  }
  if (faults) {
    outcome.faults = faults->records();
    explain_outcomes(outcome.faults, outcome.feed, outcome.drill, outcome.report);
    outcome.report["faults"] = faults_json(outcome.faults);
    if (out) {
      for (const auto& f : outcome.faults) {
        *out << "fault " << f.spec.describe() << ": " << f.status
             << (f.outcome.empty() ? "" : " -> " + f.outcome) << "\n";
      }
    }
  }
  return outcome;
}

bool DrillSeries::passed() const {
  if (error || drills.size() != planned || planned == 0) return false;
  return std::all_of(drills.begin(), drills.end(), [](const DrillOutcome& d) { return d.passed; });
}

bool DrillSeries::interrupted() const {
  return std::any_of(drills.begin(), drills.end(),
                     [](const DrillOutcome& d) { return d.interrupted; });
}

DrillSeries run_drills(const client::OrchestratorClient& api, const DrillFileSpec& spec, Lab* lab,
                       const DrillView& view, std::chrono::milliseconds heal_timeout) {
  DrillSeries series;
  series.planned = spec.updates.size();
  for (size_t k = 0; k < spec.updates.size(); ++k) {
    DrillFileSpec one = for_update(spec, k);
    if (view.out && series.planned > 1) {
      *view.out << fmt::format("update {}/{}: {} -> {}\n", k + 1, series.planned, one.kind,
                               one.target);
    }
    auto outcome = run_drill(api, one, lab, view, heal_timeout);
    if (!outcome.ok()) {
      series.error = outcome.error();
      break;
    }
    series.drills.push_back(std::move(outcome).value());
    const DrillOutcome& last = series.drills.back();
    if (!last.passed || last.interrupted || client::interrupted()) break;
  }
  return series;
}

json::object series_report(const DrillFileSpec& spec, const DrillSeries& series) {
  if (spec.updates.size() == 1 && series.drills.size() == 1) return series.drills[0].report;
  json::array drills, updates;
  for (size_t k = 0; k < spec.updates.size(); ++k) {
    std::string result = "not run";
    if (k < series.drills.size()) {
      drills.push_back(series.drills[k].report);
      result = series.drills[k].passed ? "passed" : "failed";
    }
    updates.push_back(json::object{
        {"kind", spec.updates[k].kind}, {"target", spec.updates[k].target}, {"result", result}});
  }
  return {{"drills", std::move(drills)},
          {"updates", std::move(updates)},
          {"result", series.passed() ? "passed" : "failed"}};
}

}  // namespace fabriclab::rack
