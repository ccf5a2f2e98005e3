#pragma once
// The fabric controller (docs/architecture.md): owns the cluster, places services, plans the walk
// and runs it through the host agents, keeps a live mirror of every host and instance, heals
// services whose host died, journals everything in SQLite, and publishes every change on its
// event feed. The REST API (controller_api.hpp) is a thin layer over this class.
//
// Threads: one watcher per host (polls the agent: host state, instances, heartbeat health), one
// executor per running drill, one journal writer (drains the feed into SQLite in seq order). No
// lock is held across an HTTP call. Events are published after the state they describe changed.
//
// Restart: the cluster, the host endpoints and the drill (with its plan and per-host progress)
// live in the journal; a new Controller on the same database reattaches the watchers and resumes
// a Running or Paused drill at its current batch. A host whose job was in flight is reattached to
// that job (found in the agent's job list even when the journal had not recorded it yet), so a
// host is never updated twice and no batch starts before the one before it is done.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/orchestrator/agent_client.hpp"
#include "fabriclab/orchestrator/cluster.hpp"
#include "fabriclab/orchestrator/drill_spec.hpp"

namespace fabriclab {
class EventFeed;
}

namespace fabriclab::orchestrator {

struct ControllerOptions {
  std::string journal_path;                         // required (SQLite file; WAL beside it)
  std::string agent_token;                          // control token the agents accept
  std::chrono::milliseconds poll{250};              // how often each agent is asked for its state
  std::chrono::milliseconds agent_timeout{5000};    // deadline of one call to an agent
  std::chrono::milliseconds unhealthy_after{5000};  // unanswered this long: host Unhealthy
  bool healing = true;  // place the instances of an Unhealthy host again
  // Fencing (docs/state-machines.md "Fence before heal"): the host's power control, argv with
  // "{host}" replaced by the host's id in every word, run without a shell. Exit 0 within
  // power_timeout = the host is confirmed off; only then are its instances healed. Any other end
  // (a non-zero exit, the timeout: the command is killed) leaves them where they are; it is tried
  // again every fence_retry, at most fence_attempts times. Empty: no power control, and healing
  // goes on unfenced (every healing event says so). check_power_command() gives the limits.
  std::vector<std::string> power_command;
  std::chrono::milliseconds power_timeout{30000};
  std::chrono::milliseconds fence_retry{5000};
  int fence_attempts = 3;
  // The network namespace every agent connection is opened in (a name under /run/netns or a
  // path; http_client.hpp); empty: the orchestrator's own. The local rack's agents listen on
  // addresses that exist only in its rack namespace.
  std::string agent_netns;
  // How the controller talks to an agent: every agent call goes through a client this makes.
  // Empty: HTTP (HttpAgentClient with agent_token, in agent_netns). Tests pass agents that live
  // in the same process (tests/unit/controller_fake_agent_test.cpp).
  AgentClientFactory agent_clients;

  // The load balancer (lb.hpp, docs/clients.md "Load balancer"). Empty lb_config: the rack has
  // none; services with endpoints are still accepted, and drills report client traffic as not
  // measured.
  std::string lb_config;               // the HAProxy configuration file HAProxy was started with
  std::string lb_master_socket;        // its master CLI socket
  std::string lb_haproxy = "haproxy";  // the binary for `haproxy -c`
  std::string lb_health_bind = "198.18.1.1:8404";
  // Where the client traffic generator's connections are opened (the rack namespace, where the
  // VIPs exist); empty: our own.
  std::string client_netns;
  // VIPs: the s-th service with an endpoint gets the range's base + 10 + s.
  std::string vip_range = "198.18.1.0/24";
  // Why there is no load balancer, as drills report it (the local rack says why it has no guest
  // network: loopback, simulated guests).
  std::string no_lb_reason = "the rack has no load balancer (loopback network or simulated guests)";
  // Client traffic starts this long before a drill's first batch and stops this long after its
  // last one.
  std::chrono::milliseconds traffic_lead{2000};
  std::chrono::milliseconds traffic_tail{2000};
};

// A power command as --power-command gives it: words split at spaces (no shell, no quoting),
// 1..32 words of 1..1024 bytes, the first an absolute path. Errors name the word.
inline constexpr size_t kMaxPowerArgs = 32;
inline constexpr size_t kMaxPowerArgBytes = 1024;
Result<std::vector<std::string>> parse_power_command(std::string_view text);

// POST /v1/hosts: an agent joining the cluster.
struct HostRegistration {
  std::string id;
  int fault_domain = 0;
  std::string endpoint;  // HOST:PORT of the agent's API
  int capacity = 8;
};
Result<HostRegistration> host_registration_from_json(const json::object& o);

class Controller {
 public:
  // Opens (or creates) the journal and restores what it holds. `feed` is the feed this
  // controller publishes on; build it with the snapshot function calling snapshot() and with
  // start_after = the journal's last event seq (last_journal_seq()).
  static Result<std::unique_ptr<Controller>> create(ControllerOptions options);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // The seq the feed must continue after: the journal's newest event plus, after a restart, a
  // gap of 2^20 (events reach subscribers a moment before the journal holds them, so numbers a
  // client saw before a SIGKILL are never reused).
  uint64_t last_journal_seq() const;
  // Attaches the feed and starts the threads (watchers, journal writer, a resumed drill).
  void start(std::shared_ptr<EventFeed> feed);
  // Stops every thread; an in-flight drill stays Running in the journal (a restart resumes it).
  void stop();

  // What a websocket client gets on connect: hosts, services, instances, drill, and `traffic`:
  // {measured, reason, services: the last traffic.stats services}.
  json::object snapshot() const;

  Result<json::object> register_host(const HostRegistration& r);
  json::array hosts_json() const;
  Result<json::object> host_json(const std::string& id) const;

  // Places the service and creates its instances on the agents; all or nothing.
  Result<json::object> create_service(const Service& s);
  json::array services_json() const;
  json::array instances_json() const;

  // The dry run on the current cluster.
  Result<json::object> plan_json(int max_parallel_hosts) const;

  // Drills: one at a time.
  Result<json::object> create_drill(const DrillSpec& spec);
  Result<json::object> drill_json(const std::string& id) const;
  json::array drills_json() const;
  Status pause(const std::string& id);
  Status resume(const std::string& id);
  Status step(const std::string& id);   // run one batch, then pause
  Status abort(const std::string& id);  // finish the hosts in flight, start nothing new
  // The report (report.hpp) of a drill; for a drill still running, the report so far.
  Result<json::object> report_json(const std::string& id) const;

  // Prometheus text exposition.
  std::string metrics_text() const;

  struct Impl;

 private:
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fabriclab::orchestrator
