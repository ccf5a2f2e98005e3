#pragma once
// Running a drill spec against an orchestrator: create the drill, inject the spec's faults (on a
// local rack), follow it to its end with a live progress view (a bar per batch), fetch the report.
// Ctrl-C (rack::interrupted()) aborts the drill: the hosts in flight finish, nothing new starts.

#include <iosfwd>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/api_client.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::rack {

struct DrillOutcome {
  json::object drill;   // the drill's final state (GET /v1/drills/{id})
  json::object report;  // GET /v1/drills/{id}/report
  bool passed = false;  // report.result == "passed"
  bool interrupted = false;
};

// The POST /v1/drills body of a spec.
json::object drill_body(const DrillFileSpec& spec);

struct DrillView {
  std::ostream* out = nullptr;  // progress goes here (nullptr: silent)
  bool redraw = false;          // a terminal: redraw the bars in place; else a line per change
};

// `lab` is needed only for faults (it kills the hosts of a fault domain); the healing wait lasts
// at most `heal_timeout`.
Result<DrillOutcome> run_drill(const OrchestratorClient& api, const DrillFileSpec& spec, Lab* lab,
                               const DrillView& view,
                               std::chrono::milliseconds heal_timeout = std::chrono::minutes(3));

// A compact text view of a drill (its batches as bars), as `fabriclab status` and the drill
// command print it.
std::string render_drill(const json::object& drill, int width = 24);

// The UD x FD grid of the instances (as the seeds draw it) from GET /v1/instances, with each
// instance's status; `fabriclab watch` and `status` print it.
std::string render_grid(const json::array& instances, const json::array& hosts);

}  // namespace fabriclab::rack
