#pragma once
// Private state of the Controller (controller.hpp). Lock order: admin_mu (serializes placement,
// healing and drill creation, which make HTTP calls) before mu (the model; never held across an
// HTTP call or a publish). The feed's lock is taken by publish and, around snapshot(), before mu:
// so nothing publishes while holding mu. Events are collected under mu and published after.

#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/orchestrator/agent_client.hpp"
#include "fabriclab/orchestrator/controller.hpp"
#include "fabriclab/orchestrator/journal.hpp"
#include "fabriclab/orchestrator/lb.hpp"
#include "fabriclab/orchestrator/planner.hpp"
#include "fabriclab/orchestrator/report.hpp"
#include "fabriclab/orchestrator/traffic.hpp"

namespace fabriclab::orchestrator {

using Clock = std::chrono::steady_clock;
using Events = std::vector<std::pair<std::string, json::object>>;

int64_t unix_ms();
// A drill duration: `seconds` of the spec times its time scale (executor.cpp).
std::chrono::milliseconds scaled(double seconds, double scale);
std::string instance_name(const std::string& service, int index);
// --vip-range: "A.B.C.D/N", N in 8..28 (lb_control.cpp).
Status check_vip_range(std::string_view range);
// The notice a drill gives its guests (time-scaled), raised when draining guests need longer,
// and the drill notes saying so or warning that it is shorter than a probe's detection time.
std::vector<std::string> drill_notice(const Cluster& c, const DrillSpec& spec, int64_t& notice_ms);
// What an agent's create-instance request carries for instance `i` of `s`, with `image`.
json::object instance_spec(const Service& s, const Instance& i, const std::string& image);

// What the orchestrator last learned from a host's agent.
struct HostMirror {
  Endpoint endpoint;
  std::string agent_state = "Ready";  // the agent's own state
  std::string step = "None";
  std::string host_image;
  std::string active_job;
  bool reachable = true;
  Clock::time_point last_answer = Clock::now();
  // When the poll whose answer the mirror holds began (its watcher polls one at a time).
  Clock::time_point last_poll_began{};
  int64_t polls = 0, failed_polls = 0;
  // Fence before heal (controller_fencing.cpp). `reason`: why the host is in a state the
  // orchestrator chose (Unhealthy, Fenced, Reconciling); "" otherwise. `may_heal`: the power
  // control confirmed it off since it went silent (or there is none: healing is unfenced).
  std::string reason;
  bool may_heal = false;
  int fence_attempts = 0;  // since it went silent
  Clock::time_point last_fence{};
  // Drift: the last difference published (a key of names), the one seen at the previous poll,
  // and how many instances differ now (for /metrics).
  std::string drift_published, drift_pending;
  int drift_instances = 0;
};

// What a poll found that differs from the placement: instances the agent holds that the
// orchestrator placed on another host ("" when on none), and instances placed here that the
// agent does not hold.
struct Drift {
  std::vector<std::pair<std::string, std::string>> unexpected;  // name, where it is placed
  std::vector<std::string> missing;
  std::vector<std::string>
      held;  // placed here, stopped by the agent (a host back from a power loss)
  bool empty() const { return unexpected.empty() && missing.empty(); }
  std::string key() const;
};

// What the orchestrator last learned about an instance, and its health timeline (the prober).
struct InstanceMirror {
  std::string status = "Creating";
  bool healthy = false;
  std::string image;
  int64_t counter = -1;
  std::string address;  // the guest's address, as its agent reports it ("" without a network)
  std::vector<HealthChange> timeline;
  // Which OS signals the guest offers, as its agent reports them (older agents do not).
  bool signals_known = false, heartbeat = false, guest_agent = false;
};

struct BatchRun {
  int index = 0;
  std::vector<std::string> hosts;
  std::string status = "pending";  // pending | running | done | failed | skipped
  int64_t started_ms = 0, finished_ms = 0;
};

// Snapshot of an instance at drill start, for the report's "before".
struct InstanceBefore {
  std::string host, image, host_image;
  int64_t counter = -1;
};

struct DrillRun {
  std::string id;
  DrillSpec spec;
  DrillState state = DrillState::planned;
  std::string reason;
  int current_batch = 0;
  Plan plan;
  std::vector<BatchRun> batches;
  std::map<std::string, Journal::HostProgress> progress;  // by host
  std::map<std::string, InstanceBefore> before;           // by instance name
  std::map<std::string, std::string> host_image_before;   // by host
  std::vector<std::string> notes;                         // healing, replans, rollbacks
  int64_t started_ms = 0, finished_ms = 0;
  // The notice given to guests (time-scaled, perhaps raised so draining guests leave rotation
  // first; see create_drill); 0: the spec's scaled notice.
  int64_t notice_ms = 0;
  bool resumed = false;  // restored from the journal after a restart
  // Client traffic (traffic.hpp): whether it was measured, or why not, and what it recorded
  // (in memory only: a restart loses it and says so).
  bool traffic_measured = false;
  std::string traffic_reason;
  std::map<std::string, std::vector<RequestRecord>> traffic_records;
  // The app side of "healthy after restart": when each instance's host job ended (the first load
  // balancer poll begun after it counts), and the instances seen UP in the load balancer then.
  // app_up is journaled with the drill; restarted_at is not (a resumed batch sets it again).
  std::map<std::string, Clock::time_point> restarted_at;  // by instance
  std::set<std::string> app_up;                           // by instance
  // Control, guarded by Impl::mu; the executor waits on Impl::cv.
  bool pause_requested = false;
  bool abort_requested = false;
  bool step_once = false;
  // What the walk waits for before or after a batch ("instance web-0 on host 'h0' is DOWN in
  // the load balancer"); "" when it is not waiting. Shown by the CLI and the dashboard.
  std::string waiting_for;
  int64_t waiting_until_ms = 0;  // when that wait ends (a recovery window), Unix ms; 0: unknown

  bool finished() const { return is_finished(state); }
};

struct Controller::Impl {
  ControllerOptions opt;
  // opt.agent_clients, or HTTP clients with opt.agent_token in opt.agent_netns.
  AgentClientFactory make_agent_client;
  std::unique_ptr<Journal> journal;
  std::shared_ptr<EventFeed> feed;

  std::mutex admin_mu;
  mutable std::mutex mu;
  std::condition_variable cv;
  Cluster cluster;
  std::map<std::string, HostMirror> hosts;          // by host id
  std::map<std::string, InstanceMirror> instances;  // by instance name
  std::map<std::string, std::shared_ptr<DrillRun>> drills;
  std::shared_ptr<DrillRun> active;                  // the drill whose executor runs (or last ran)
  std::map<std::string, json::object> availability;  // last published, by service

  // Load balancer (lb.cpp drives HAProxy; lb_control.cpp keeps it in step with the cluster).
  std::unique_ptr<LoadBalancer> lb;  // null: the rack has none
  std::thread lb_thread;
  std::condition_variable lb_cv;                   // wakes the LB thread (with mu)
  bool lb_dirty = true;                            // under mu: the placement or an address changed
  std::map<std::string, LbServerState> lb_states;  // by instance; under mu
  bool lb_polled = false;                          // under mu: lb_states hold a poll
  Clock::time_point lb_poll_began{};               // under mu: when the poll lb_states hold began
  // Client traffic of the running drill (executor.cpp); the generator under mu.
  std::shared_ptr<TrafficGenerator> traffic;
  json::object traffic_view{{"measured", false}, {"reason", ""}, {"services", json::object{}}};

  std::atomic<bool> stopping{false};
  std::map<std::string, std::thread> watchers;  // by host id
  std::thread executor;
  std::thread journal_writer;
  std::shared_ptr<Subscription> journal_sub;
  uint64_t journal_seq = 0;            // the feed numbers on after this (controller.cpp)
  std::atomic<uint64_t> journaled{0};  // the newest event seq the writer has handled
  std::atomic<uint64_t> journal_errors{0};
  std::atomic<uint64_t> agent_calls{0}, agent_call_failures{0};

  // Model helpers (mu held).
  json::object host_json_locked(const Host& h) const;
  json::object instance_json_locked(const Instance& i) const;
  json::object service_json_locked(const Service& s) const;
  json::object drill_json_locked(const DrillRun& d) const;
  json::object batch_json_locked(const DrillRun& d, const BatchRun& b) const;
  json::object cluster_doc_locked() const;
  // Recomputes the availability of `service`; appends service.availability when it changed.
  void availability_locked(const std::string& service, Events& out);
  void set_health_locked(const std::string& name, bool healthy, int64_t at_ms);

  void publish(Events events);
  void save_cluster();                 // the cluster doc into the journal (takes mu)
  void save_drill(const DrillRun& d);  // takes mu
  std::unique_ptr<AgentClient> client(const std::string& host_id) const;  // takes mu
  // For calls that start or create VMs: a guest definition and start can take seconds on a busy
  // host, so these get at least kSlowCallTimeout.
  std::unique_ptr<AgentClient> slow_client(const std::string& host_id) const;  // takes mu

  // watcher.cpp
  void start_watcher(const std::string& host_id);
  void watch(const std::string& host_id);
  void poll_once(const std::string& host_id);
  void mark_unreachable(const std::string& host_id);
  // Places the instances still on `host_id` (Unhealthy) again. A placement or creation that fails
  // (e.g. onto a host that died too but is not yet marked) leaves the host in heal_retry, and its
  // watcher calls heal again every kHealRetry while it stays unreachable.
  void heal(const std::string& host_id);
  static constexpr std::chrono::milliseconds kHealRetry{2000};

  // controller_fencing.cpp
  // Runs the power command for `host_id` (its watcher thread; no lock held). True when the host
  // is confirmed off, or when there is no power control (healing unfenced). Publishes
  // host.fencing and host.fenced or host.fence_failed, and sets the host's state and reason.
  bool fence(const std::string& host_id);
  // The difference between what `agent` (GET /v1/instances) holds and what is placed on
  // `host_id`; mu held.
  Drift drift_locked(const std::string& host_id, const json::array& agent) const;
  // Publishes host.drift when the difference changed (seen at two polls in a row, or at once
  // when `now`); mu held, events appended.
  void note_drift_locked(const std::string& host_id, const Drift& d, bool now, Events& out);
  // A host back after a silence: removes the instances it runs that are placed elsewhere (data
  // disks kept aside) and starts the ones placed here that it holds stopped. True when all went.
  bool reconcile(const std::string& host_id, const Drift& d);
  std::map<std::string, Clock::time_point> heal_retry;  // host -> last attempt; under mu

  // lb_control.cpp
  // The services HAProxy should serve now (endpoint, VIP, instances with an address); mu held.
  std::vector<LbService> lb_services_locked() const;
  // Gives every service with an endpoint and no VIP one (mu held); true when any was given.
  bool assign_vips_locked();
  void lb_loop();
  void lb_poll_once(Events& events);
  // Marks the active drill's restarted instances that a poll begun at `began` shows UP (mu held).
  void note_app_up_locked(const std::map<std::string, LbServerState>& now, Clock::time_point began);
  void mark_lb_dirty();  // takes mu
  json::array backends_json_locked(const Service& s) const;
  // Why instance `name` of `s` is not in rotation ("" when it is, or when the load balancer
  // does not apply to it); mu held.
  std::string lb_not_serving_locked(const Service& s, const std::string& name) const;

  // executor.cpp
  void run_drill(std::shared_ptr<DrillRun> d);
  // The walk itself; the drill's end state and reason, or nullopt when the orchestrator stops.
  std::optional<std::pair<DrillState, std::string>> run_walk(DrillRun& d);
  // Client traffic around the walk: start (and wait the lead time), stop (after the tail).
  void start_traffic(DrillRun& d, std::thread& stats_thread, std::atomic<bool>& stats_stop);
  void stop_traffic(DrillRun& d, bool tail, std::thread& stats_thread,
                    std::atomic<bool>& stats_stop);
  Status run_batch(DrillRun& d, BatchRun& b);
  // Waits (up to the healthy timeout) until the hosts are Ready and their instances healthy and
  // UP in the load balancer. `abortable`: an abort ends the wait (cancelled) — before a batch;
  // after one, the hosts in flight are seen through.
  Status wait_ready(DrillRun& d, const std::vector<std::string>& host_ids, std::string_view why,
                    bool abortable);
  // Waits (bounded) until each host's mirror holds a poll that began after `since`, or the host
  // is unreachable: what its agent did up to `since` is then what the drill and report show.
  void await_fresh_polls(const std::vector<std::string>& host_ids, Clock::time_point since);
  // The instances on `host_ids` were restarted by jobs that ended at `ended`: the load balancer's
  // next polls say whether their apps came back (DrillRun::app_up). Waits (bounded) for the first
  // poll begun after `ended`, so a batch's report already knows; no wait without a load balancer.
  void note_restarted(DrillRun& d, const std::vector<std::string>& host_ids,
                      Clock::time_point ended);
  Result<json::object> run_host(DrillRun& d, BatchRun& b, const std::string& host_id);
  void maybe_replan(DrillRun& d);
  bool wait_gate(DrillRun& d);  // false: abort requested
  void finish(DrillRun& d, DrillState state, std::string reason);
  ReportInput report_input(const DrillRun& d) const;  // mu held
  Status restore();
};

}  // namespace fabriclab::orchestrator
