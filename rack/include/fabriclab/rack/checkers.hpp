#pragma once
// The chaos campaign's checkers (docs/faults.md "Checkers"): pure functions that judge a drill
// from evidence gathered outside the orchestrator's conclusions: its raw event feed, the agents'
// own records (their instances and job timelines, each asked directly), the QEMU processes of a
// local rack, the data counters before and after. Each returns a CheckResult whose detail names
// the first offence (and how many there were), so a violation can be read without the logs.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"

namespace fabriclab::rack {

struct CheckResult {
  std::string name;
  bool passed = true;
  std::string detail;
  json::object to_json() const { return {{"name", name}, {"passed", passed}, {"detail", detail}}; }
};

// The UD rule from the feed: at no moment did the hosts the walk had in flight (drill.host
// "running" until its end status) hold instances of one service in two or more update domains.
// Placement comes from the snapshot's and instance.state events' instance JSON (service, ud,
// host), so a healed instance counts on its new host from its move on.
CheckResult check_ud_rule_feed(const std::vector<json::object>& feed);

// One agent's job (GET /v1/operations): when it ran on `host` and which guests it took down.
struct JobSpan {
  std::string host;
  int64_t start_ms = 0;
  int64_t end_ms = 0;  // 0: still running when read (counts as running to the end)
  std::vector<std::string> guests;
};
// The UD rule from the agents' job timelines: no two overlapping jobs on different hosts took
// down instances of one service in different update domains. `ud_of` maps an instance name to
// (service, ud); guests it does not know are skipped.
CheckResult check_ud_rule_jobs(const std::vector<JobSpan>& jobs,
                               const std::map<std::string, std::pair<std::string, int>>& ud_of);
// The jobs of one agent's GET /v1/operations answer.
std::vector<JobSpan> job_spans(const std::string& host, const json::array& operations);

// One look at where instances run: instance name -> the hosts where it runs. From the agents'
// records (status Starting, Healthy or Stopping) or from the QEMU processes on a local rack.
struct PlacementSample {
  int64_t t_ms = 0;
  std::map<std::string, std::set<std::string>> hosts_of;
};
// Adds to `sample` what one agent's GET /v1/instances answer says runs on `host`.
void add_agent_instances(PlacementSample& sample, const std::string& host,
                         const json::array& instances);
// No instance ran on two hosts at once, in any sample. `source` names the evidence in the check's
// name ("agents' records", "QEMU processes").
CheckResult check_single_host(const std::vector<PlacementSample>& samples,
                              const std::string& source);

// An instance's data counter as its agent reports it (its last heartbeat), and where.
struct CounterReading {
  std::string host;
  int64_t counter = -1;  // -1: unknown (no heartbeat yet, agent gone)
};
// Every counter after >= before, for each instance that is on the same host after as before and
// whose both readings are known; moved (healed) instances start a new VM and are named, not
// judged; unknown readings are named too.
CheckResult check_counters(const std::map<std::string, CounterReading>& before,
                           const std::map<std::string, CounterReading>& after);
// Readings from one agent's GET /v1/instances answer, added to `out`.
void add_counters(std::map<std::string, CounterReading>& out, const std::string& host,
                  const json::array& instances);

// A fault's own window, in unix ms: from its injection to its end (its injection when it has no
// duration). check_client_traffic widens it by what the fault takes to wear off.
struct FaultWindow {
  std::string what;  // "kill-agent h1"
  int64_t from_ms = 0, to_ms = 0;
};
// With client traffic measured (the report's `traffic.measured`), no request of a service with
// two or more instances failed outside every fault's own window. A window runs from half a
// second before the injection until the service is whole again: the first moment, at least one
// probe detection time after the fault's end, at which the feed's lb.backend events show every
// backend of the service UP, plus 2 s (a client's connect timeout and a probe interval); never
// whole again: to the drill's end. Failures outside are what the walk itself cost the clients.
// Unmeasured traffic passes, saying so.
CheckResult check_client_traffic(const json::object& report, const std::vector<json::object>& feed,
                                 const std::vector<FaultWindow>& faults);

// The drill reached a terminal state (Completed, Failed, Aborted) that its report states too.
CheckResult check_terminal(const json::object& drill, const json::object& report);
// The report agrees with the checkers: its result is "passed" exactly when all its own checks
// passed; and when it says passed, every outside check (`outside`) passed as well.
CheckResult check_report_agrees(const json::object& report,
                                const std::vector<CheckResult>& outside);

}  // namespace fabriclab::rack
