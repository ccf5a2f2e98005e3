#pragma once
// The fault executor of a local rack (docs/faults.md): follows a running drill and injects the
// spec's scheduled faults (fault_spec.hpp) at their moments, ends the ones with a duration
// (restarts a killed agent or orchestrator, brings a cut link back up), and records each as a
// FaultRecord: what, where, when, what the rack did. Every injection and end is also posted to the
// orchestrator (POST /v1/drills/{id}/faults), which publishes it on its feed as `drill.fault`;
// posts made while the orchestrator is down (a kill-orchestrator fault) are sent once it is back.
//
// Following the walk: the drill's batches come from GET /v1/drills/{id} (every 100 ms while the
// orchestrator answers); a step of a batch's host from that host's agent (GET /v1/host, every
// 25 ms while its batch runs). A step shorter than that may be seen late: the fault then fires
// at the first later step of the same host in the same batch, and the record says at which step
// it fired. A fault whose batch ends (or whose drill ends) before its moment is "not injected",
// with the reason. Bounded: nothing waits longer than the drill runs, and finish() ends every
// fault still active so the rack is whole for the report and the teardown.
//
// Threads: one, started by start(); records() and finish() may be called from another.

#include <atomic>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::rack {

struct FaultRecord {
  FaultSpec spec;
  std::string status = "pending";  // pending | injected | not injected | failed
  int64_t injected_ms = 0;         // unix ms (0: not injected)
  int64_t ended_ms = 0;            // unix ms the rack ended it (restart, link up); 0: none
  double at_s = -1;                // seconds after the walk's start it was injected (-1: not)
  std::string at_actual;           // "batch 2 Rebooting on h1", "3.0 s after the walk started"
  std::string detail;              // what the rack did ("SIGKILL agent h1 (pid 4242); ...")
  std::string outcome;             // what the system did about it (explain_outcomes)
  // A guest-crash due while the walk had its instance stopped waits for the instance to run
  // again (crashing a stopped guest tests nothing): since when (unix ms; 0: not waiting), the
  // moment it was due, and the last try.
  int64_t waiting_since_ms = 0;
  std::string due_at;
  int64_t last_try_ms = 0;
  json::object to_json() const;
};

class FaultExecutor {
 public:
  // `lab` must outlive the executor; `drill_id` is the drill whose walk it follows.
  FaultExecutor(Lab& lab, const client::OrchestratorClient& api, const DrillFileSpec& spec,
                std::string drill_id, std::ostream* out);
  ~FaultExecutor();
  FaultExecutor(const FaultExecutor&) = delete;
  FaultExecutor& operator=(const FaultExecutor&) = delete;

  // The walk starts now: `after_s` counts from here. Starts the thread.
  void start();
  // Stops following: pending faults become "not injected" (why: `reason`), active ones are ended
  // now (agents and the orchestrator restarted, links up) and their end posted.
  void finish(const std::string& reason);
  // While a killed orchestrator is down: the drill runner waits instead of failing.
  bool orchestrator_down() const { return orchestrator_down_.load(); }
  std::vector<FaultRecord> records() const;

  struct Active;  // a fault with a duration, waiting for its end

 private:
  void run();
  void tick();
  void fire(size_t i, const std::string& at_actual);
  // fire() for record `i` when its guest is running again; false while it still is not.
  bool deferred_guest_fault(size_t i, const FaultSpec& f, const Status& st,
                            const std::string& at_actual, int64_t now);
  void end_due(bool all);
  void post(const FaultRecord& r, const std::string& status);
  void flush_posts();

  Lab& lab_;
  client::OrchestratorClient api_;
  DrillFileSpec spec_;
  std::string drill_id_;
  std::ostream* out_;
  int64_t walk_start_ms_ = 0;
  mutable std::mutex mu_;
  std::vector<FaultRecord> records_;
  std::vector<std::unique_ptr<Active>> active_;
  std::vector<json::object> unposted_;
  json::object drill_;  // the last drill JSON seen
  int64_t drill_read_ms_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> orchestrator_down_{false};
  std::thread thread_;
};

// Fills each record's `outcome` from the orchestrator's feed (as FeedRecorder recorded it), the
// drill's final JSON and its report: the host marked Unhealthy, instances healed elsewhere (or
// healing that failed), a host's update that failed, the walk halted, the orchestrator resuming
// the drill, an instance down and healthy again, a guest stopped by force.
void explain_outcomes(std::vector<FaultRecord>& records, const std::vector<json::object>& events,
                      const json::object& drill, const json::object& report);

// The report's `faults` rows: [FaultRecord::to_json()...].
json::array faults_json(const std::vector<FaultRecord>& records);

}  // namespace fabriclab::rack
