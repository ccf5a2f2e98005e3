// fabriclab-bench-drill, internal: the run's phases 1 to 4 (the method at the top of
// bench_drill.cpp). Each phase reads what the earlier ones left in BenchRun and adds its own;
// an error names the phase, and Condition::cancelled means Ctrl-C.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "drill_agents.hpp"
#include "drill_floor.hpp"
#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::bench_drill {

// The command line.
struct Options {
  std::string hypervisor = "qemu";
  std::string images;
  std::string lab_dir = "/tmp/flbd";
  std::string spec_file;
  std::optional<double> notice_s;
  double settle_s = -1;
  int floor_timeout_s = 180;
  bool json_out = false;
  bool no_drain_drill = true;
};

// One batch of the drill's walk as the report has it.
struct DrillBatch {
  int index = 0;
  std::vector<std::string> hosts;
  std::optional<double> start_s, end_s, duration_s;
};

// The run's inputs and what each phase measured, handed from one phase to the next.
struct BenchRun {
  explicit BenchRun(const Options& o) : opt(o) {}
  const Options& opt;
  rack::DrillFileSpec spec;
  bool real = false;
  double settle_s = 0, notice_eff_s = 0;
  std::string notice_policy;
  rack::LabOptions lo;
  // 1.
  int64_t populate_ms = 0, settle1_ms = 0, settle1_end_ms = 0;
  // 2.
  json::object report;
  std::string drill_state;
  std::optional<double> makespan_s;
  int64_t drill_start_ms = -1, drill_end_ms = -1;
  std::vector<DrillBatch> batches;
  // 3.
  int64_t settle2_ms = 0, settle2_end_ms = 0;
  std::vector<std::vector<RawHost>> floor;
  bool floor_under_traffic = false;
  // 4.
  std::map<std::string, std::vector<Event>> events;
  int refined = 0;
  std::map<std::string, HostSteps> steps;
  std::map<std::string, json::object> job_guests;  // instance -> the agent's guest record
  std::vector<std::string> notes;

  const json::object& rdrill() const { return obj(report, "drill"); }
};

// The drill spec as the bench runs it (recovery 0, no faults, the notice policy) and the rack's
// options.
Status prepare(BenchRun& r);

// 1. Every guest heartbeating, then the settle pause.
Status populate_and_settle(BenchRun& r, rack::Lab& lab);

// 2. The drill: its report, times and batches.
Status run_the_drill(BenchRun& r, const client::OrchestratorClient& api, rack::Lab& lab);

// 3. The floor, after another settle pause: each batch's hosts cycled raw, all at once.
Status measure_floor(BenchRun& r, const client::OrchestratorClient& api, const rack::Lab& lab,
                     const Agents& agents);

// 4. Heartbeat times of the floor's guests from the agents' event histories (where an event is
// missing, the poll estimate stays), then the drill's jobs (agents' records) and steps (agents'
// events).
void read_histories(BenchRun& r, const Agents& agents);

}  // namespace fabriclab::bench_drill
