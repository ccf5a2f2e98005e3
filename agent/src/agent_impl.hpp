#pragma once
// Private: the host agent's state and the helpers its operations share.
//
// Locking: `mu_` guards the in-memory model (persisted state, slots, jobs); `lv_mu_` guards the
// hypervisor connection (which a host reboot replaces). It is shared: calls on one guest's domain
// (start, stop, save, resume) take it shared, since libvirt runs calls on different domains
// concurrently and an operation stops and starts a host's guests in parallel (each waiting
// seconds for a power-off or a boot); replacing the connection, defining and undefining domains
// take it exclusive. Order: lv_mu_ before mu_.
// Never publish an event or destroy a GuestLink while holding mu_: the feed's snapshot callback
// and the links' reader threads both take mu_.

#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "fabriclab/agent/guest_link.hpp"
#include "fabriclab/agent/guest_network.hpp"
#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "sim_guest.hpp"

namespace fabriclab::agent {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// An instance as the agent reports it (instances JSON `status`, instance.state events).
enum class InstanceStatus { creating, starting, healthy, stopping, stopped, reimaging, failed };
inline constexpr std::string_view kInstanceStatuses[] = {
    "Creating", "Starting", "Healthy", "Stopping", "Stopped", "Reimaging", "Failed"};
inline std::string_view to_string(InstanceStatus s) {
  return kInstanceStatuses[static_cast<int>(s)];
}

// A job (update operation) as the API shows it.
enum class JobStatus { running, succeeded, failed, cancelled };
inline constexpr std::string_view kJobStatuses[] = {"running", "succeeded", "failed", "cancelled"};
inline std::string_view to_string(JobStatus s) { return kJobStatuses[static_cast<int>(s)]; }

struct GuestSlot {
  hypervisor::DomainState domain_state = hypervisor::DomainState::unknown;
  bool expect_running = false;  // we started it (or found it running): keep a link to it
  uint64_t stop_events = 0;  // stopped/crashed lifecycle events seen (libvirt delivers them late)
  InstanceStatus status = InstanceStatus::stopped;
  bool healthy = false;
  std::unique_ptr<GuestLink> link;
  std::unique_ptr<SimGuest> sim;
  std::optional<ReceivedMessage> last_hb;
  std::optional<ReceivedMessage> first_hb_since_start;
  Clock::time_point started_at{};
  std::map<std::string, Clock::time_point> acks;  // EventId -> when
  std::string guest_error;
  uint64_t heartbeats = 0;
  int unexpected_restarts = 0;  // the monitor restarts a VM that died on its own, a few times
  // The qemu-guest-agent (libvirt's agent lifecycle events and guest-ping): connected now, and
  // whether it ever answered for this VM (then an operation expects it back after a restart).
  bool agent_connected = false;
  bool agent_seen = false;
  Clock::time_point agent_connected_at{};
};

// A data check's outcome in an operation (DataCheck, host_state.hpp).
struct DataCheckReport {
  DataCheck check;
  std::string before, after;  // the command's stdout (capped)
  bool ok = false;
  std::string error;  // why it did not hold or could not run
};

// What an operation reports per guest (issue: notice, ack latency, stop method and time, down
// time, image and counter before/after).
struct GuestReport {
  std::string name;
  int64_t notice_ms = 0;
  int64_t ack_ms = -1;
  std::string stop_method;
  int64_t stop_ms = 0;
  int64_t down_ms = -1;   // last heartbeat before -> first heartbeat after
  int64_t pause_ms = -1;  // freeze / memory-preserving: the heartbeat gap the guest saw
  std::string image_before, image_after;
  int64_t counter_before = -1, counter_after = -1;
  std::string boot_id_before, boot_id_after;
  std::string boot_id_source;  // "heartbeat" | "guest_agent" | ""
  // The OS-level signals the guest offered (the app's probe is the load balancer's, not ours):
  // heartbeats on our channel (the built-in guest) and the qemu-guest-agent.
  bool signal_heartbeat = false, signal_guest_agent = false;
  bool os_up = false;  // after the restart: a heartbeat, or the guest agent answered a ping
  std::optional<DataCheckReport> data_check;
  bool ok = false;
  std::string error;
  Clock::time_point last_hb_before{};  // not reported: the start of the down time
  json::object to_json() const;
};

struct Job;
// The job's report of guest `name`, added when it has none yet.
GuestReport* report_of(Job& job, const std::string& name);

// Fills the report's "before" side from the guest's newest heartbeat (mu held).
void record_before(GuestReport& r, const GuestSlot& slot);
// Fills the "after" side from the first heartbeat since the guest was started (mu held).
void record_after(GuestReport& r, const GuestSlot& slot);
// Milliseconds from `a` to `b`.
int64_t ms_between(Clock::time_point a, Clock::time_point b);
// A data check, when the guest has one, held (a job's guest is not ok otherwise).
bool data_held(const GuestReport& r);

struct Job {
  std::string id;
  OperationRequest request;
  JobStatus status = JobStatus::running;
  std::string step;
  std::string error;
  std::string started_at, finished_at;
  std::string host_image_before, host_image_after;
  std::vector<GuestReport> guests;
  std::string event_id;  // the operation's scheduled event
  bool cancel_requested = false;
  json::object to_json() const;
};

// The host's scheduled event (one operation at a time, so at most one) and who approved it.
struct EventState {
  ScheduledEvent event;
  std::map<std::string, Clock::time_point> approved;  // guest -> when (channel ack or IMDS)
};

struct HostAgent::Impl {
  AgentOptions opt;
  std::optional<GuestSubnet> subnet;  // from opt.guest_subnet
  std::shared_ptr<EventFeed> feed;
  std::optional<HostImageStore> host_store;  // not thread safe: use under store_mu
  std::mutex store_mu;
  std::optional<GuestImageStore> guest_store;

  std::shared_mutex lv_mu;
  std::unique_ptr<hypervisor::Connection> conn;
  int conn_sub = -1;
  bool simulated = false;  // test driver: SimGuests stand in for the guest program

  mutable std::mutex mu;
  std::condition_variable cv;  // any guest message, slot change or job change
  PersistedState state;
  UpdateStep step = UpdateStep::none;
  std::map<std::string, GuestSlot> slots;
  std::map<std::string, Job> jobs;
  std::string active_job;
  std::optional<EventState> event;  // under mu

  std::thread worker;
  std::thread monitor;
  std::atomic<bool> stopping{false};

  // The host state refuses lifecycle calls during an operation before they wait for lv_mu
  // (which the operation holds while it stops guests): a request gets its 409 at once.
  Status check_not_updating(std::string_view refusal);
  // Records what the fabric wants for `name` (persisted); not_found for an unknown instance.
  Status set_want_running(const std::string& name, bool want);

  // -- host_agent.cpp, host_agent_guests.cpp (domains, channels, monitor), host_agent_api.cpp --
  std::string state_path() const { return opt.state_dir + "/state.json"; }
  std::string vm_dir() const { return opt.state_dir + "/vm"; }
  std::string socket_path(const std::string& name) const {
    return opt.state_dir + "/s/" + name + ".sock";
  }
  Status persist_locked();  // mu held
  void publish(std::string type, json::object fields);
  void set_host_state(HostState s, UpdateStep step);
  InstanceRecord* record_locked(const std::string& name);
  Status open_hypervisor();  // lv_mu held
  void close_hypervisor();   // lv_mu held
  Status recover();          // reattach after start or host reboot
  Result<hypervisor::Domain> define_domain(const InstanceRecord& rec);  // lv_mu held
  // Undefines the (stopped) domain and defines it again from `rec` (lv_mu held).
  Result<hypervisor::Domain> redefine_domain(const InstanceRecord& rec);
  // The built-in guest's kernel command line (mode, drain, heartbeat period, address).
  std::string builtin_cmdline(const InstanceRecord& rec) const;
  Result<hypervisor::Domain> domain(const std::string& name);  // lv_mu held (shared will do)
  Status start_guest(const std::string& name);                 // lv_mu held (shared will do)
  Result<hypervisor::ShutdownResult> stop_guest(const std::string& name,
                                                bool force);  // lv_mu held (shared will do)
  void drop_link(const std::string& name);
  void on_message(const std::string& name, const ReceivedMessage& m);
  void on_lifecycle(const hypervisor::LifecycleEvent& e);
  void monitor_loop();
  json::object instance_json_locked(const std::string& name) const;

  // Waits (mu held via lock) until `pred` or the deadline; false on timeout or agent stop.
  template <class Pred>
  bool wait_until(std::unique_lock<std::mutex>& lock, Clock::time_point deadline, Pred pred) {
    return cv.wait_until(lock, deadline, [&] { return stopping.load() || pred(); }) && !stopping;
  }

  // Allocates the lowest free guest address slot (mu held); "" pair without a guest subnet.
  Result<std::pair<std::string, std::string>> allocate_address_locked();
  // The guest's drain time: its own, else the agent's default.
  milliseconds drain_of(const InstanceRecord& rec) const {
    return rec.drain_ms > 0 ? milliseconds(rec.drain_ms) : opt.drain;
  }
  std::unique_ptr<SimGuest> make_sim(const InstanceRecord& rec) const;

  // -- scheduled_events.cpp (each takes mu itself; call without it) --
  // Announces `ev` (Scheduled): incarnation + 1, persisted, sent over the guests' channels.
  void post_event(ScheduledEvent ev);
  // Scheduled -> Started (NotBefore ""); a no-op unless an event is Scheduled.
  void start_event();
  // A restarted agent past Notifying: the operation's event as Started.
  void resume_event(const OperationRecord& op);
  // Removes the event (the job ended); a no-op without one.
  void end_event();
  // Sends the current document to `guests` that have a channel link (mu held).
  void send_event_doc_locked(const std::vector<std::string>& guests);
  // The event set changed (mu held): incarnation + 1, persisted, the document sent to `guests`.
  void event_changed_locked(const std::vector<std::string>& guests);
  // After a change, without mu: wakes the waiters and publishes `imds.event` with `fields`.
  void announce_event(json::object fields);
  // Records `name`'s approval of the current event if `event_id` is it (mu held); true if known.
  bool approve_locked(const std::string& name, const std::string& event_id, Clock::time_point at);

  // -- guest_health.cpp (call without mu; they take lv_mu and mu themselves) --
  // True for a guest whose image is the built-in guest program (heartbeats on our channel).
  bool builtin_locked(const std::string& name) const;  // mu held
  void on_agent_lifecycle(const hypervisor::LifecycleEvent& e);
  // Before the notice: which signals each guest offers, its boot id through the guest agent,
  // and its data check's "before".
  void capture_before(Job& job, const std::vector<std::string>& guests);
  // After the restart (the guest is up): boot id, data check "after" and its rule.
  void capture_after(GuestReport& r, const std::string& name);
  // After a reimage is verified (or rolled back): removes the overlays and kernel copies the
  // instance no longer runs on.
  void drop_unused_files(const std::string& name);
  // A guest without heartbeats is up when its guest agent answers guest-ping (it had one before
  // the operation) or, without one, when its VM runs; the app's health is the probe's.
  Status wait_os_up(const std::string& name, Clock::time_point since, milliseconds timeout,
                    bool expect_agent, const std::string& expect_boot_id);
  // Then, when the instance has a probe and an address: its app answers 2xx/3xx on it.
  Status wait_app_probe(const std::string& name, Clock::time_point deadline);

  // -- operations.cpp (the job frame), operation_kinds.cpp (host-os, guest-os, freeze) --
  void run_job(const std::string& id, bool resumed);
  Status run_host_os(Job& job, OperationRecord& op, bool resumed);
  Status run_guest_os(Job& job, OperationRecord& op, bool resumed);
  Status run_freeze(Job& job, OperationRecord& op);
  // Notifying: posts the operation's scheduled event to `guests` and waits until each that can
  // approve did, or NotBefore (notice), or a cancel. Records ack_ms per guest.
  Status notify_guests(Job& job, const OperationRecord& op, const std::vector<std::string>& guests);
  Status wait_healthy(const std::string& name, Clock::time_point since, milliseconds timeout,
                      const std::string& expect_image, const std::string& expect_boot_id);
  void set_step(Job& job, OperationRecord& op, UpdateStep step);
  // StartingGuests: starts every guest the operation stopped; returns when each was started
  // (empty when a resumed operation is already past this step).
  Result<std::map<std::string, Clock::time_point>> start_stopped(Job& job, OperationRecord& op);
  // Runs `fn` for each of `names`, up to opt.parallel_guests at once, beginning them in the order
  // of `names`. With `stop_at_error`, no name is begun after a failure (those in flight finish).
  // Returns the failure of the earliest name in `names` that failed (fn's errors name the guest).
  Status for_each_guest(const std::vector<std::string>& names, bool stop_at_error,
                        const std::function<Status(const std::string&)>& fn);
  // Notifying, then StoppingGuests once every notice is acknowledged or timed out: captures the
  // guests' state and posts the event. Cancelled before any guest is touched when a cancel came
  // ("cancelled before any guest was <done_to>"). Shared by every kind of operation.
  Status notify_all(Job& job, OperationRecord& op, std::string_view done_to);
  // Notifying then StoppingGuests, shared by the host-os and guest-os updates: captures the
  // guests' state, posts the event, and stops the running guests not yet stopped with `stop`
  // (which fills in its report's stop method and time), in parallel (for_each_guest), persisting
  // the progress after each. `stop` is called without lv_mu or mu and must take lv_mu shared. A
  // cancel is honoured before each guest is begun; the guests stopped so far are listed in
  // op.stopped (the rollback's list).
  using StopOne = std::function<Status(const std::string& name, GuestReport& report)>;
  Status notify_and_stop(Job& job, OperationRecord& op, const StopOne& stop);
  // Verifying, shared by the updates: waits (in parallel) for each started guest to be healthy
  // (expecting `expect_image` when not empty; a memory-preserving update expects the same boot id),
  // records what it shows after, and returns the first failure. `unhealthy` (may be empty) is
  // called for a guest that failed and returns the error to report for it (e.g. after a rollback);
  // `done` (may be empty) runs for every guest once it is verified or given up. Both run on the
  // guest's own worker and may touch only that guest's report.
  using OnUnhealthy =
      std::function<Status(const std::string& name, GuestReport& report, const Status& why)>;
  Status verify_started(Job& job, OperationRecord& op,
                        const std::map<std::string, Clock::time_point>& started,
                        const std::string& expect_image, const OnUnhealthy& unhealthy,
                        const std::function<void(const std::string&)>& done);
  // Starts again (in parallel) every guest that was running before the operation.
  void rollback_stopped(OperationRecord& op, const std::string& why);
  // Makes sure `name` runs: starts it when its VM is off, waits for it to be healthy or to stop
  // (a guest a killed agent had asked to power off still does so) and starts it again then.
  Status ensure_running(const std::string& name);
  void restart_failed_guests();  // monitor: VMs that died on their own, while no job runs
  bool cancelled(const Job& job);

  // -- faults.cpp: injected faults (AgentOptions::fault_injection only; under mu) --
  std::map<std::string, bool> hung;               // guest-hang: until the guest's next start
  std::map<std::string, milliseconds> slow_boot;  // slow-boot: the next start's delay
  // At a start: the delay to wait first (taken), and the hang cleared.
  milliseconds take_boot_delay(const std::string& name);
  bool is_hung(const std::string& name);
};

}  // namespace fabriclab::agent
