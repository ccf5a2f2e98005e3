#pragma once
// Running a drill spec against an orchestrator: create the drill, inject the spec's faults (on a
// local rack: the old before-the-walk form here, the schedule through faults.hpp's executor while
// the walk runs), follow it to its end with a live progress view (a bar per batch), fetch the
// report; a spec with several updates runs them as a series of drills on the same rack
// (run_drills). Ctrl-C (client::interrupted()) aborts the drill: the hosts in flight finish,
// nothing new starts.

#include <iosfwd>
#include <optional>
#include <vector>

#include "fabriclab/client/api_client.hpp"
#include "fabriclab/client/terminal.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/faults.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::rack {

struct DrillOutcome {
  json::object drill;   // the drill's final state (GET /v1/drills/{id})
  json::object report;  // GET /v1/drills/{id}/report
  bool passed = false;  // report.result == "passed"
  bool interrupted = false;
  bool timed_out = false;  // DrillView::deadline passed: the drill was aborted
  // The spec's scheduled faults as they went (also the report's "faults" rows), and the
  // orchestrator's feed during the drill when it was recorded (faults, or DrillView::record_feed).
  std::vector<FaultRecord> faults;
  std::vector<json::object> feed;
};

// The POST /v1/drills body of a spec.
json::object drill_body(const DrillFileSpec& spec);

struct DrillView {
  std::ostream* out = nullptr;  // progress goes here (nullptr: silent)
  bool redraw = false;          // a terminal: redraw the bars in place; else a line per change
  client::LiveRegion::SizeFn
      size;                  // with redraw: the terminal's size (terminal.hpp; empty: unknown)
  bool record_feed = false;  // record the orchestrator's feed into DrillOutcome::feed
  // The drill is aborted when it has not ended this long after its creation (0: no limit); the
  // abort then has two minutes to take effect.
  std::chrono::milliseconds deadline{0};
};

// `lab` is needed only for faults (it kills the hosts of a fault domain); the healing wait lasts
// at most `heal_timeout`.
Result<DrillOutcome> run_drill(const client::OrchestratorClient& api, const DrillFileSpec& spec,
                               Lab* lab, const DrillView& view,
                               std::chrono::milliseconds heal_timeout = std::chrono::minutes(3));

// A spec's updates (DrillFileSpec::updates) run one after another on the same rack.
struct DrillSeries {
  size_t planned = 0;                // the spec's updates
  std::vector<DrillOutcome> drills;  // the drills that reached an end, in order
  std::optional<Error> error;        // why the series stopped, other than a drill's verdict
  bool passed() const;               // every update ran and passed
  bool interrupted() const;          // Ctrl-C during one of them
};

// Runs every update of `spec` as its own drill through the orchestrator API (run_drill with
// for_update(spec, k)), on the same orchestrator and VMs, and stops after the first drill that
// does not pass, is interrupted, or cannot run (`error`). With several updates each starts with a
// line "update K/N: KIND -> TARGET".
DrillSeries run_drills(const client::OrchestratorClient& api, const DrillFileSpec& spec, Lab* lab,
                       const DrillView& view,
                       std::chrono::milliseconds heal_timeout = std::chrono::minutes(3));

// What `--report` writes. One update: its drill's report, unchanged. Several: {"drills": [the
// reports of the drills that ran, in order], "updates": [{kind, target, result: "passed" |
// "failed" | "not run"}], "result": "passed" (all ran and passed) | "failed"}.
json::object series_report(const DrillFileSpec& spec, const DrillSeries& series);

}  // namespace fabriclab::rack
