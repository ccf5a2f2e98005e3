// The orchestrator end to end, as its users meet it: a fabriclab-orchestrator process and six
// fabriclab-agent processes on loopback (libvirt's test driver: simulated guests speaking the
// real channel protocol), driven through the REST API and watched through the websocket feed.
//
// What each test proves is checked from a source other than the one that acted: the UD rule of
// a walk is recomputed from the feed's events alone (instance health, host states) and from the
// agents' own job records (start and finish times), never from the orchestrator's report of
// itself; "no host updated twice" comes from the agents' job lists.
//
// Time: drills run with time_scale 0.001 (a 900 s notice is 0.9 s, a 1800 s recovery 1.8 s);
// --boot-delay-ms on the agents stretches the host reboot where a test needs to act mid-batch.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "fabriclab/orchestrator/lb.hpp"
#include "haproxy_process.hpp"
#include "orchestrator_stack.hpp"

namespace fabriclab::testing {
namespace {

// A host-os drill to host-v2 at time scale 0.001 (recovery_s of 300 is 0.3 s).
json::object drill_body(double recovery_s, bool start_paused = false) {
  return {{"kind", "host-os"},       {"target", "host-v2"},
          {"time_scale", 0.001},     {"recovery_s", recovery_s},
          {"notice_s", 900},         {"max_parallel_hosts", 0},
          {"healthy_timeout_s", 60}, {"start_paused", start_paused}};
}

// The three services of the seeds' examples, five UDs each: web 2, worker 3, hello 1.
constexpr std::pair<const char*, int> kServices[] = {{"web", 2}, {"worker", 3}, {"hello", 1}};

// {"error": {"code", "message"}} of an error answer; the test fails when the body is not that.
std::pair<std::string, std::string> error_of(const http::ClientResponse& r) {
  auto v = parse_or_null(r.body);
  const auto& e = jval(v, "error");
  if (!e.is_object()) {
    ADD_FAILURE() << "HTTP " << r.status << ": body is not a JSON error: " << r.body;
    return {};
  }
  return {jstr(e, "code"), jstr(e, "message")};
}

// ---- the feed, replayed --------------------------------------------------------------------

// The cluster as the feed's events alone describe it: seeded by the first snapshot, then moved
// on by every delta. After each delta it recomputes, per service, how many distinct UDs have an
// unhealthy instance and how many have an instance on an Updating host, and keeps the worst.
struct FeedReplay {
  struct Inst {
    std::string service, host;
    int ud = -1;
    bool healthy = false;
  };
  std::map<std::string, Inst> instances;          // by name
  std::map<std::string, std::string> host_state;  // by host
  std::map<std::string, std::vector<std::string>>
      host_states;  // every state each host went through
  std::map<std::string, size_t> max_uds_unhealthy, max_uds_updating;  // by service
  std::vector<std::string> violations;                                // "seq N: ..."
  std::vector<std::string> seq_problems;
  size_t deltas = 0;

  void seed(const json::value& state) {
    instances.clear();
    for (const auto& i : jarr(state, "instances")) take_instance(i);
    for (const auto& h : jarr(state, "hosts")) {
      host_state[jstr(h, "id")] = jstr(h, "state");
      auto& seen = host_states[jstr(h, "id")];
      if (seen.empty() || seen.back() != jstr(h, "state")) seen.push_back(jstr(h, "state"));
    }
  }

  void take_instance(const json::value& i) {
    auto& m = instances[jstr(i, "name")];
    m.service = jstr(i, "service");
    m.host = jstr(i, "host");
    m.ud = static_cast<int>(jint(i, "ud"));
    m.healthy = jbool(i, "healthy");
  }

  void apply(const json::object& ev) {
    const std::string type = jstr(ev, "type");
    ++deltas;
    if (type == "instance.state") {
      take_instance(jval(ev, "instance"));
    } else if (type == "host.state") {
      const std::string h = jstr(ev, "host");
      host_state[h] = jstr(ev, "state");
      auto& seen = host_states[h];
      if (seen.empty() || seen.back() != host_state[h]) seen.push_back(host_state[h]);
    } else {
      return;
    }
    judge(jint(ev, "seq"));
  }

  void judge(int64_t seq) {
    std::map<std::string, std::set<int>> unhealthy, updating;
    for (const auto& [name, i] : instances) {
      if (!i.healthy) unhealthy[i.service].insert(i.ud);
      auto hs = host_state.find(i.host);
      if (hs != host_state.end() && hs->second == "Updating") updating[i.service].insert(i.ud);
    }
    for (const auto& [what, by_service, worst] :
         {std::tuple{"unhealthy", &unhealthy, &max_uds_unhealthy},
          {"on Updating hosts", &updating, &max_uds_updating}}) {
      for (const auto& [service, uds] : *by_service) {
        auto& w = (*worst)[service];
        w = std::max(w, uds.size());
        if (uds.size() > 1) {
          std::string list;
          for (int u : uds) {
            if (!list.empty()) list += ',';
            list += std::to_string(u);
          }
          violations.push_back("seq " + std::to_string(seq) + ": service " + service +
                               " has instances " + what + " in UDs " + list);
        }
      }
    }
  }

  // Replays `messages`; every delta must follow the previous message's seq by exactly one,
  // across reconnects (the recorder resumes with ?since=), unless a snapshot re-seeds.
  static FeedReplay of(const std::vector<EventLog::Message>& messages) {
    FeedReplay r;
    int64_t prev = -1;
    for (const auto& m : messages) {
      const auto& ev = m.body;
      int64_t seq = jint(ev, "seq");
      if (jstr(ev, "type") == "snapshot") {
        r.seed(jval(ev, "state"));
        prev = seq;
        continue;
      }
      if (prev < 0) {
        r.seq_problems.push_back("a delta (seq " + std::to_string(seq) + ") before any snapshot");
      } else if (seq != prev + 1) {
        r.seq_problems.push_back("seq " + std::to_string(seq) + " after " + std::to_string(prev));
      }
      prev = seq;
      r.apply(ev);
    }
    return r;
  }
};

std::string joined(const std::vector<std::string>& v, size_t max = 10) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < max; ++i) out += "\n  " + v[i];
  if (v.size() > max) out += "\n  ... (" + std::to_string(v.size() - max) + " more)";
  return out;
}

// ---- fixture helpers --------------------------------------------------------------------------

class OrchestratorIt : public OrchestratorStack {
 protected:
  // Six agents in three FDs, the orchestrator, the three services, all healthy.
  void start_rack(int64_t boot_delay_ms = 0) {
    ASSERT_NO_FATAL_FAILURE(start_agents(6, 3, boot_delay_ms));
    ASSERT_NO_FATAL_FAILURE(start_orchestrator());
    ASSERT_NO_FATAL_FAILURE(register_agents());
    for (auto [name, n] : kServices) ASSERT_NO_FATAL_FAILURE(create_service(name, n, 5));
    ASSERT_TRUE(wait_until([&] { return all_instances_healthy(); }, 60s))
        << "the services never became healthy: " << json::serialize(get("/v1/instances"));
  }

  // fabriclab_agent_calls_total from the orchestrator's /metrics: its calls to agents so far.
  int64_t agent_calls() {
    auto r = call("GET", "/metrics");
    const std::string key = "\nfabriclab_agent_calls_total ";
    auto at = r.body.find(key);
    if (r.status != 200 || at == std::string::npos) {
      ADD_FAILURE() << "GET /metrics: HTTP " << r.status
                    << ", no fabriclab_agent_calls_total: " << r.body.substr(0, 300);
      return -1;
    }
    return std::stoll(r.body.substr(at + key.size()));
  }

  // Waits until the orchestrator's watchers have polled every agent `rounds` more times (two calls
  // per poll: the host and its instances; one poll per agent every --poll-ms 100). A paused drill
  // holds at its gate meanwhile: the gate looks at the drill again at least every 500 ms, so a
  // wait of more rounds than that spans a re-check, on the orchestrator's own clock.
  void wait_poll_rounds(int rounds) {
    const int64_t from = agent_calls();
    ASSERT_GE(from, 0);
    const int64_t want = from + int64_t{rounds} * 2 * static_cast<int64_t>(agents().size());
    int64_t last = from;
    ASSERT_TRUE(wait_until([&] { return (last = agent_calls()) >= want; }, 30s))
        << "the orchestrator made " << last - from << " calls to its agents in 30 s, not "
        << want - from << " (" << rounds << " polls of each of " << agents().size() << ")";
  }
  static constexpr int kGateRounds = 8;  // 8 polls 100 ms apart: past the gate's 500 ms re-check

  std::string start_drill(const json::object& body) {
    auto r = post("/v1/drills", body);
    EXPECT_EQ(r.status, 201) << r.body;
    auto d = parse_or_null(r.body);
    EXPECT_FALSE(jstr(d, "id").empty()) << r.body;
    return jstr(d, "id");
  }

  // The agent's host-os jobs, from its own job list.
  json::array host_os_jobs(const std::string& host) {
    json::array out;
    const json::value all = agent_get(host, "/v1/operations");
    if (!all.is_array()) return out;
    for (const auto& j : all.as_array()) {
      if (jstr(jval(j, "request"), "kind") == "host-os") out.push_back(j);
    }
    return out;
  }

  // Pairs of hosts that hold instances of one service in different UDs (the walk's conflicts),
  // from the orchestrator's instance list.
  std::vector<std::pair<std::string, std::string>> conflicting_hosts(std::string* why = nullptr) {
    std::map<std::string, std::map<std::string, std::set<int>>> uds;  // service -> host -> UDs
    const json::value instances = get("/v1/instances");
    for (const auto& i : instances.as_array()) {
      uds[jstr(i, "service")][jstr(i, "host")].insert(static_cast<int>(jint(i, "ud")));
    }
    std::set<std::pair<std::string, std::string>> out;
    for (const auto& [service, by_host] : uds) {
      for (const auto& [a, ua] : by_host) {
        for (const auto& [b, ub] : by_host) {
          if (a >= b) continue;
          if (ua != ub || ua.size() > 1) {
            out.emplace(a, b);
            if (why) *why += service + ":" + a + "/" + b + " ";
          }
        }
      }
    }
    return {out.begin(), out.end()};
  }

  std::vector<std::string> host_ids() const {
    std::vector<std::string> out;
    for (const auto& [id, a] : agents()) out.push_back(id);
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// 1. A whole walk, judged from the feed alone.

TEST_F(OrchestratorIt, HostOsDrillUpdatesEveryHostAndTheFeedShowsNoServiceDownInTwoUds) {
  ASSERT_NO_FATAL_FAILURE(start_rack());
  auto plan = get("/v1/plan");
  const auto planned_batches = jarr(plan, "batches").size();
  ASSERT_GE(planned_batches, 3u) << "three UDs of worker must take three batches: "
                                 << json::serialize(plan);

  EventLog& feed = record_events();
  const std::string id = start_drill(drill_body(/*recovery_s=*/300));
  ASSERT_FALSE(id.empty());
  auto drill = wait_drill_finished(id, 120s);
  ASSERT_EQ(jstr(drill, "state"), "Completed") << json::serialize(drill);
  EXPECT_EQ(jarr(drill, "batches").size(), planned_batches);
  for (const auto& b : jarr(drill, "batches"))
    EXPECT_EQ(jstr(b, "status"), "done") << json::serialize(b);
  for (const auto& h : jarr(drill, "hosts"))
    EXPECT_EQ(jstr(h, "status"), "done") << json::serialize(h);

  // The report's verdict, and every host really on host-v2 (the orchestrator's view and the
  // agent's own).
  auto report = get("/v1/drills/" + id + "/report");
  EXPECT_EQ(jstr(report, "result"), "passed") << json::serialize(jval(report, "checks"));
  for (const auto& s : jarr(report, "services")) {
    EXPECT_LE(jint(s, "max_uds_down"), 1) << json::serialize(s);
  }
  const json::value hosts = get("/v1/hosts");
  for (const auto& h : hosts.as_array()) {
    EXPECT_EQ(jstr(h, "host_image"), "host-v2") << json::serialize(h);
    EXPECT_EQ(jstr(h, "state"), "Ready") << json::serialize(h);
  }
  for (const auto& host : host_ids()) {
    EXPECT_EQ(jstr(agent_get(host, "/v1/host"), "host_image"), "host-v2") << host;
    auto jobs = host_os_jobs(host);
    ASSERT_EQ(jobs.size(), 1u) << host << " ran " << jobs.size()
                               << " host-os jobs: " << json::serialize(jobs);
    EXPECT_EQ(jstr(jobs[0], "status"), "succeeded") << json::serialize(jobs[0]);
  }

  // The feed, replayed on its own: the snapshot taken before the drill, then every delta.
  ASSERT_TRUE(feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "drill.state" && jstr(jval(e, "drill"), "state") == "Completed";
      },
      10s))
      << "the feed never said the drill completed";
  feed.stop();
  auto messages = feed.messages();
  ASSERT_FALSE(messages.empty());
  ASSERT_EQ(jstr(messages.front().body, "type"), "snapshot");
  auto replay = FeedReplay::of(messages);
  EXPECT_TRUE(replay.seq_problems.empty())
      << "the feed skipped or repeated events:" << joined(replay.seq_problems);
  EXPECT_TRUE(replay.violations.empty())
      << "two UDs of one service down at once:" << joined(replay.violations);
  for (auto [name, n] : kServices) {
    // Not vacuous: every service was taken down (one UD at a time) during the walk.
    EXPECT_EQ(replay.max_uds_unhealthy[name], 1u) << name;
    EXPECT_EQ(replay.max_uds_updating[name], 1u) << name;
  }
  for (const auto& host : host_ids()) {
    const auto& seen = replay.host_states[host];
    auto updating = std::find(seen.begin(), seen.end(), "Updating");
    EXPECT_NE(updating, seen.end()) << host << " never went Updating on the feed: " << joined(seen);
    EXPECT_EQ(seen.back(), "Ready") << host << " did not end Ready on the feed";
    EXPECT_EQ(std::count(seen.begin(), seen.end(), "Updating"), 1)
        << host << " went Updating twice" << joined(seen);
  }
  for (const auto& [name, i] : replay.instances)
    EXPECT_TRUE(i.healthy) << name << " ended unhealthy on the feed";
}

// ---------------------------------------------------------------------------------------------
// 2. SIGKILL of the orchestrator mid-walk, restart on the same journal.

TEST_F(OrchestratorIt, OrchestratorKilledMidDrillResumesAndNoHostIsUpdatedTwice) {
  // A 1.5 s host reboot and a 1 s recovery make the walk last long enough to kill it mid-batch.
  ASSERT_NO_FATAL_FAILURE(start_rack(/*boot_delay_ms=*/1500));
  EventLog& feed = record_events();
  const std::string id = start_drill(drill_body(/*recovery_s=*/1000));
  ASSERT_FALSE(id.empty());

  // Kill once batch 2 is in flight (batch 1's hosts are done, batch 2's agents have their jobs).
  auto second = feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "drill.host" && jint(e, "batch") == 1 &&
               jstr(e, "status") == "running";
      },
      60s);
  ASSERT_TRUE(second) << "batch 2 never started";
  ASSERT_TRUE(feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "drill.host" && jstr(e, "status") == "done";
      },
      0ms))
      << "batch 2 started before any host of batch 1 was done";
  const std::string in_flight = jstr(*second, "host");
  kill_orchestrator();
  const int connections_before = feed.connections();
  // The agents go on without it: the in-flight host's job moves on to another step.
  auto step_of = [&](const std::string& host) {
    const Child& a = agent(host);
    auto r = http::request(a.address.substr(0, a.address.rfind(':')), a.port, "GET", "/v1/host", {},
                           kToken, 5s);
    return r.ok() && r->status == 200 ? jstr(parse_or_null(r->body), "step") : std::string();
  };
  const std::string step_at_kill = step_of(in_flight);
  ASSERT_FALSE(step_at_kill.empty()) << in_flight << "'s agent did not answer GET /v1/host";
  std::string step_now = step_at_kill;
  ASSERT_TRUE(wait_until(
      [&] {
        step_now = step_of(in_flight);
        return !step_now.empty() && step_now != step_at_kill;
      },
      30s))
      << in_flight << " stayed at step " << step_at_kill << " with the orchestrator down";
  int64_t seq_before = -1;  // the highest seq a client saw from the killed process
  for (const auto& m : feed.messages()) {
    if (m.connection <= connections_before) seq_before = std::max(seq_before, jint(m.body, "seq"));
  }
  ASSERT_NO_FATAL_FAILURE(start_orchestrator());

  auto drill = wait_drill_finished(id, 120s);
  ASSERT_EQ(jstr(drill, "state"), "Completed") << json::serialize(drill);
  for (const auto& h : host_ids())
    EXPECT_EQ(jstr(get("/v1/hosts/" + h), "host_image"), "host-v2") << h;

  // No host updated twice: each agent ran exactly one host-os job, and it is the one the drill
  // recorded for that host (the restarted orchestrator reattached, it did not start another).
  std::map<std::string, std::string> drill_job;
  for (const auto& h : jarr(drill, "hosts")) {
    EXPECT_EQ(jstr(h, "status"), "done") << json::serialize(h);
    drill_job[jstr(h, "host")] = jstr(h, "job");
  }
  struct Window {
    int64_t from, to;
  };
  std::map<std::string, Window> windows;
  for (const auto& host : host_ids()) {
    auto jobs = host_os_jobs(host);
    ASSERT_EQ(jobs.size(), 1u) << host << " ran " << jobs.size()
                               << " host-os jobs: " << json::serialize(jobs);
    EXPECT_EQ(jstr(jobs[0], "status"), "succeeded") << json::serialize(jobs[0]);
    EXPECT_EQ(jstr(jval(jobs[0], "request"), "target"), "host-v2");
    EXPECT_EQ(jstr(jobs[0], "id"), drill_job[host]) << host;
    EXPECT_EQ(jstr(agent_get(host, "/v1/host"), "host_image"), "host-v2") << host;
    windows[host] = {rfc3339_ms(jstr(jobs[0], "started_at")),
                     rfc3339_ms(jstr(jobs[0], "finished_at"))};
    EXPECT_GT(windows[host].from, 0) << json::serialize(jobs[0]);
    EXPECT_GE(windows[host].to, windows[host].from) << json::serialize(jobs[0]);
  }

  // The UD rule, from the agents' clocks: hosts holding one service's instances in different UDs
  // never had their jobs overlap, the restart included.
  std::string why;
  auto conflicts = conflicting_hosts(&why);
  EXPECT_FALSE(conflicts.empty()) << "the check would be vacuous";
  for (const auto& [a, b] : conflicts) {
    const auto& wa = windows[a];
    const auto& wb = windows[b];
    EXPECT_TRUE(wa.to <= wb.from || wb.to <= wa.from)
        << a << " [" << wa.from << ", " << wa.to << "] and " << b << " [" << wb.from << ", "
        << wb.to << "] updated at the same time, but they hold different UDs of one service ("
        << why << ")";
  }

  // The feed after the restart: the recorder resumed with ?since=<last seq seen>, and the
  // numbering went on from there (the journal carries it across the restart).
  ASSERT_TRUE(feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "drill.state" && jstr(jval(e, "drill"), "state") == "Completed";
      },
      10s));
  feed.stop();
  int64_t first_after = -1, prev = -1;
  for (const auto& m : feed.messages()) {
    if (m.connection <= connections_before || jstr(m.body, "type") == "snapshot") continue;
    int64_t seq = jint(m.body, "seq");
    if (first_after < 0) first_after = seq;
    EXPECT_GT(seq, prev) << "seq went backwards after the restart";
    prev = seq;
  }
  ASSERT_GE(first_after, 0) << "no event after the restart";
  EXPECT_GT(first_after, seq_before) << "numbering restarted below what a client had already seen";

  // The report spans the restart: the services kept serving through it.
  auto report = get("/v1/drills/" + id + "/report");
  EXPECT_EQ(jstr(report, "result"), "passed") << json::serialize(jval(report, "checks")) << "\n"
                                              << json::serialize(jval(report, "services"));
}

// ---------------------------------------------------------------------------------------------
// 3. A host dies outside a drill: Unhealthy, its instances healed elsewhere.

TEST_F(OrchestratorIt, KilledAgentsInstancesAreHealedOntoReadyHostsInOtherFaultDomains) {
  ASSERT_NO_FATAL_FAILURE(start_rack());
  auto before = get("/v1/instances").as_array();
  auto hosts_before = get("/v1/hosts").as_array();
  // The victim: the host of web-0 (web has two instances, so it has a survivor).
  std::string victim;
  for (const auto& i : before) {
    if (jstr(i, "name") == "web-0") victim = jstr(i, "host");
  }
  ASSERT_FALSE(victim.empty());
  std::map<std::string, json::value> lost;  // name -> instance before
  for (const auto& i : before) {
    if (jstr(i, "host") == victim) lost[jstr(i, "name")] = i;
  }

  EventLog& feed = record_events();
  const auto killed_at = Clock::now();
  agent(victim).kill9();
  ASSERT_TRUE(
      wait_until([&] { return jstr(try_get("/v1/hosts/" + victim), "state") == "Unhealthy"; }, 10s))
      << victim << " never became Unhealthy";
  const auto noticed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at).count();
  EXPECT_LT(noticed_ms, 5000) << "unhealthy-after is 1.5 s";

  // One service.healed per instance the host held.
  for (const auto& [name, inst] : lost) {
    auto healed = feed.wait_for(
        [&](const json::object& e) {
          return jstr(e, "type") == "service.healed" && jstr(e, "instance") == name;
        },
        20s);
    ASSERT_TRUE(healed) << name << " was never healed";
    EXPECT_EQ(jstr(*healed, "from_host"), victim);
    EXPECT_NE(jstr(*healed, "to_host"), victim);
  }
  ASSERT_TRUE(wait_until([&] { return all_instances_healthy(); }, 30s))
      << "the services did not become healthy again: " << json::serialize(get("/v1/instances"));

  // Where they went: Ready hosts, same UD, and a fault domain other than the service's
  // survivors' wherever the rack had a usable host in one (computed from the hosts before).
  auto after = get("/v1/instances").as_array();
  std::map<std::string, const json::value*> host_after;
  auto hosts_now = get("/v1/hosts");
  for (const auto& h : hosts_now.as_array()) host_after[jstr(h, "id")] = &h;
  int fd_rule_checks = 0;
  for (const auto& [name, inst] : lost) {
    const json::value* now = nullptr;
    for (const auto& i : after) {
      if (jstr(i, "name") == name) now = &i;
    }
    ASSERT_NE(now, nullptr) << name;
    const std::string service = jstr(inst, "service");
    const std::string to = jstr(*now, "host");
    EXPECT_NE(to, victim) << name;
    EXPECT_EQ(jint(*now, "ud"), jint(inst, "ud")) << name << " changed UD";
    ASSERT_TRUE(host_after.count(to)) << to;
    EXPECT_EQ(jstr(*host_after[to], "state"), "Ready") << name << " went to " << to;
    EXPECT_EQ(jint(*now, "fd"), fd_of(to)) << name;
    std::set<int> survivor_fds;
    std::map<std::string, int> other_ud_hosts;  // hosts holding another UD of the service
    for (const auto& i : before) {
      if (jstr(i, "service") != service || jstr(i, "host") == victim) continue;
      survivor_fds.insert(static_cast<int>(jint(i, "fd")));
      if (jint(i, "ud") != jint(inst, "ud")) other_ud_hosts[jstr(i, "host")] = 1;
    }
    bool possible = false;
    for (const auto& h : hosts_before) {
      const std::string hid = jstr(h, "id");
      if (hid == victim || other_ud_hosts.count(hid)) continue;
      if (jarr(h, "instances").size() >= static_cast<size_t>(jint(h, "capacity"))) continue;
      if (!survivor_fds.count(static_cast<int>(jint(h, "fd")))) possible = true;
    }
    if (possible) {
      ++fd_rule_checks;
      EXPECT_FALSE(survivor_fds.count(fd_of(to)))
          << name << " was healed into FD " << fd_of(to) << ", which already holds " << service
          << ", although another FD had room";
    }
  }
  EXPECT_GT(fd_rule_checks, 0)
      << "web-0 had a survivor and the rack had room elsewhere: the FD check must run";
  // The UD rule still holds after healing: no host holds two UDs of one service.
  std::map<std::pair<std::string, std::string>, std::set<int>> uds_on;
  for (const auto& i : after)
    uds_on[{jstr(i, "service"), jstr(i, "host")}].insert(static_cast<int>(jint(i, "ud")));
  for (const auto& [key, uds] : uds_on)
    EXPECT_EQ(uds.size(), 1u) << key.first << " on " << key.second;

  // Every service whole again, on the API and on the feed.
  const json::value services = get("/v1/services");
  for (const auto& s : services.as_array()) {
    EXPECT_EQ(jint(s, "healthy"), jint(s, "total")) << json::serialize(s);
    EXPECT_GT(jint(s, "total"), 0) << json::serialize(s);
  }
  std::set<std::string> touched;
  for (const auto& [name, inst] : lost) touched.insert(jstr(inst, "service"));
  for (const auto& service : touched) {
    auto availability = [&](bool whole, int64_t after_seq) {
      return feed.wait_for(
          [&](const json::object& e) {
            return jstr(e, "type") == "service.availability" && jstr(e, "service") == service &&
                   jint(e, "seq") > after_seq && (jint(e, "healthy") == jint(e, "total")) == whole;
          },
          10s);
    };
    auto down = availability(false, -1);
    ASSERT_TRUE(down) << service << ": the feed never said it lost an instance";
    EXPECT_TRUE(availability(true, jint(*down, "seq")))
        << service << ": the feed never said it was whole again";
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Pause, step, resume, abort.

TEST_F(OrchestratorIt, DrillPausesStepsResumesAndAbortsBetweenBatches) {
  // A 1 s host reboot so that a batch is still in flight when the pause arrives.
  ASSERT_NO_FATAL_FAILURE(start_rack(/*boot_delay_ms=*/1000));
  EventLog& feed = record_events();
  const std::string id = start_drill(drill_body(/*recovery_s=*/300, /*start_paused=*/true));
  ASSERT_FALSE(id.empty());
  auto drill_now = [&] { return get("/v1/drills/" + id); };
  auto batch = [&](const json::value& d, size_t i) { return jarr(d, "batches").at(i); };
  auto jobs_on_batch = [&](const json::value& d, size_t i) {
    size_t n = 0;
    const json::value b = batch(d, i);
    for (const auto& h : jarr(b, "hosts")) n += host_os_jobs(std::string(h.as_string())).size();
    return n;
  };

  // Created paused: nothing runs.
  ASSERT_NO_FATAL_FAILURE(wait_poll_rounds(kGateRounds));
  auto d = drill_now();
  ASSERT_EQ(jstr(d, "state"), "Paused") << json::serialize(d);
  ASSERT_GE(jarr(d, "batches").size(), 3u) << json::serialize(d);
  for (const auto& b : jarr(d, "batches")) EXPECT_EQ(jstr(b, "status"), "pending");
  for (const auto& host : host_ids()) EXPECT_TRUE(host_os_jobs(host).empty()) << host;

  // Waits until batch `b` is done and the drill Paused, lets the gate poll a few rounds, and
  // checks in `d` that the pause held: still Paused, every host of batch b updated, none of
  // batch b + 1 (`ran` and `unfinished` say which broke).
  auto held_after = [&](size_t b, const char* ran, const char* unfinished) {
    ASSERT_TRUE(wait_until(
        [&] {
          auto x = drill_now();
          return jstr(batch(x, b), "status") == "done" && jstr(x, "state") == "Paused";
        },
        30s))
        << json::serialize(drill_now());
    ASSERT_NO_FATAL_FAILURE(wait_poll_rounds(kGateRounds));
    d = drill_now();
    EXPECT_EQ(jstr(d, "state"), "Paused");
    EXPECT_EQ(jstr(batch(d, b + 1), "status"), "pending");
    EXPECT_EQ(jobs_on_batch(d, b + 1), 0u) << ran;
    EXPECT_EQ(jobs_on_batch(d, b), jarr(batch(d, b), "hosts").size()) << unfinished;
  };

  // Step: exactly one batch, then paused again before the next.
  ASSERT_EQ(post("/v1/drills/" + id + "/step", json::object{}).status, 202);
  ASSERT_NO_FATAL_FAILURE(held_after(0, "a step ran into the next batch", ""));
  EXPECT_EQ(jint(d, "current_batch"), 1);

  // Resume, then pause while batch 2 is in flight: it finishes, batch 3 does not start.
  ASSERT_EQ(post("/v1/drills/" + id + "/resume", json::object{}).status, 202);
  ASSERT_TRUE(wait_until([&] { return jstr(batch(drill_now(), 1), "status") == "running"; }, 30s))
      << json::serialize(drill_now());
  ASSERT_EQ(post("/v1/drills/" + id + "/pause", json::object{}).status, 202);
  ASSERT_NO_FATAL_FAILURE(
      held_after(1, "the pause did not hold before batch 3", "the in-flight batch did not finish"));

  // Abort while paused: Aborted, batch 3 never ran; the drill no longer takes verbs.
  ASSERT_EQ(post("/v1/drills/" + id + "/abort", json::object{}).status, 202);
  auto finished = wait_drill_finished(id, 20s);
  EXPECT_EQ(jstr(finished, "state"), "Aborted") << json::serialize(finished);
  EXPECT_NE(jstr(finished, "reason").find("abort"), std::string::npos) << jstr(finished, "reason");
  for (size_t i = 2; i < jarr(finished, "batches").size(); ++i) {
    EXPECT_EQ(jstr(batch(finished, i), "status"), "pending") << i;
    EXPECT_EQ(jobs_on_batch(finished, i), 0u) << "batch " << i + 1 << " ran after the abort";
  }
  for (const char* verb : {"pause", "resume", "step", "abort"}) {
    auto r = post("/v1/drills/" + id + "/" + verb, json::object{});
    EXPECT_EQ(r.status, 409) << verb << ": " << r.body;
    EXPECT_EQ(error_of(r).first, "invalid_state") << r.body;
  }
  auto report = get("/v1/drills/" + id + "/report");
  EXPECT_EQ(jstr(report, "result"), "failed") << "an aborted drill did not complete";

  // The feed told the same story, in order.
  ASSERT_TRUE(feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "drill.state" && jstr(jval(e, "drill"), "state") == "Aborted";
      },
      10s));
  std::vector<std::string> states;
  for (const auto& m : feed.messages()) {
    if (jstr(m.body, "type") != "drill.state" || jstr(jval(m.body, "drill"), "id") != id) continue;
    auto s = jstr(jval(m.body, "drill"), "state");
    if (states.empty() || states.back() != s) states.push_back(s);
  }
  EXPECT_EQ(states, (std::vector<std::string>{"Paused", "Running", "Paused", "Running", "Paused",
                                              "Aborted"}))
      << joined(states);

  // The rack is free again: a new drill is accepted.
  auto next = post("/v1/drills", drill_body(300, true));
  EXPECT_EQ(next.status, 201) << next.body;
  auto next_id = jstr(parse_or_null(next.body), "id");
  EXPECT_NE(next_id, id);
  EXPECT_EQ(post("/v1/drills/" + next_id + "/abort", json::object{}).status, 202);
}

// ---------------------------------------------------------------------------------------------
// 5. The API's answers to bad requests.

TEST_F(OrchestratorIt, ApiAnswersBadRequestsWithTheRightStatusAndNamesTheField) {
  ASSERT_NO_FATAL_FAILURE(start_agents(2, 2));
  ASSERT_NO_FATAL_FAILURE(start_orchestrator());
  ASSERT_NO_FATAL_FAILURE(register_agents());
  ASSERT_NO_FATAL_FAILURE(create_service("web", 2, 2));

  // 401 without a token or with a wrong one, for reads, control and the feed.
  for (auto [method, target, token] : {std::tuple{"GET", "/v1/hosts", ""},
                                       {"GET", "/v1/drills", "not-the-token"},
                                       {"POST", "/v1/drills", ""},
                                       {"POST", "/v1/drills/x/abort", "not-the-token"}}) {
    auto r =
        call(method, target,
             std::string_view(method) == "POST" ? json::serialize(drill_body(300)) : "", token);
    EXPECT_EQ(r.status, 401) << method << " " << target << ": " << r.body;
    EXPECT_EQ(error_of(r).first, "unauthenticated") << r.body;
  }
  auto ws = http::WsClient::connect(kOrchestratorHost, port(), "/v1/events", "", 5s);
  EXPECT_FALSE(ws.ok()) << "the feed opened without a token";
  if (!ws.ok()) {
    EXPECT_NE(ws.error().message.find("401"), std::string::npos) << ws.error().describe();
  }
  EXPECT_TRUE(get("/v1/drills").as_array().empty()) << "a refused request created a drill";

  // 404 for what does not exist, naming it.
  for (auto [method, target] : {std::pair{"GET", "/v1/drills/no-such-drill"},
                                {"GET", "/v1/drills/no-such-drill/report"},
                                {"POST", "/v1/drills/no-such-drill/pause"},
                                {"POST", "/v1/drills/no-such-drill/abort"},
                                {"GET", "/v1/hosts/no-such-host"}}) {
    auto r = call(method, target, "");
    EXPECT_EQ(r.status, 404) << method << " " << target << ": " << r.body;
    auto [code, message] = error_of(r);
    EXPECT_EQ(code, "not_found");
    EXPECT_NE(message.find("no-such-"), std::string::npos) << message;
  }

  // 400 for bad bodies, with a message naming the field.
  auto with = [](json::object o, std::string_view key, json::value v) {
    o[key] = std::move(v);
    return json::serialize(o);
  };
  const json::object good = drill_body(300, true);
  struct Bad {
    std::string target, body, field;
  };
  const std::vector<Bad> bad = {
      {"/v1/drills", with(good, "bogus", 1), "bogus"},
      {"/v1/drills", with(good, "max_parallel_hosts", "two"), "max_parallel_hosts"},
      {"/v1/drills", with(good, "time_scale", json::parse("[1]")), "time_scale"},
      {"/v1/drills", with(good, "start_paused", "yes"), "start_paused"},
      {"/v1/drills", with(good, "kind", "os"), "kind"},
      {"/v1/drills", with(good, "target", json::string(std::string(65, 't'))), "target"},
      {"/v1/drills", with(good, "recovery_s", -1), "recovery_s"},
      {"/v1/services", R"({"name":"db","instance_count":"3"})", "instance_count"},
      {"/v1/services", R"({"name":"db","instance_count":3,"ud_count":21})", "ud_count"},
      {"/v1/services", R"({"name":"db","instance_count":3,"replicas":3})", "replicas"},
      {"/v1/services", R"({"name":")" + std::string(65, 'n') + R"(","instance_count":3})", "name"},
      {"/v1/hosts", R"({"id":"h9","fault_domain":0,"endpoint":"ftp://127.0.0.1:1"})", "endpoint"},
      {"/v1/hosts", R"({"id":"h9","fault_domain":"zero","endpoint":"127.0.0.1:1"})",
       "fault_domain"},
  };
  for (const auto& b : bad) {
    auto r = call("POST", b.target, b.body);
    EXPECT_EQ(r.status, 400) << b.target << " " << b.body << ": " << r.body;
    auto [code, message] = error_of(r);
    EXPECT_EQ(code, "invalid_argument") << r.body;
    EXPECT_NE(message.find(b.field), std::string::npos)
        << b.target << " " << b.body.substr(0, 120) << ": the message does not name '" << b.field
        << "': " << message;
  }
  for (const std::string body : {"not json", "[1,2]", ""}) {
    auto r = call("POST", "/v1/drills", body);
    EXPECT_EQ(r.status, 400) << "'" << body << "': " << r.body;
    EXPECT_EQ(error_of(r).first, "invalid_argument") << r.body;
  }
  auto bad_query = call("GET", "/v1/plan?max_parallel_hosts=many");
  EXPECT_EQ(bad_query.status, 400) << bad_query.body;
  EXPECT_NE(error_of(bad_query).second.find("max_parallel_hosts"), std::string::npos)
      << bad_query.body;
  // A body over the server's limit (1 MiB) is refused before it is parsed.
  auto huge =
      call("POST", "/v1/drills", with(good, "target", json::string(std::string(2 << 20, 'x'))));
  EXPECT_EQ(huge.status, 413) << huge.body.substr(0, 200);
  EXPECT_EQ(error_of(huge).first, "body_too_large");
  EXPECT_TRUE(get("/v1/drills").as_array().empty()) << "a refused request created a drill";

  // 409: one drill at a time (a paused drill counts), and verbs on a finished drill.
  auto first = post("/v1/drills", good);
  ASSERT_EQ(first.status, 201) << first.body;
  const std::string id = jstr(parse_or_null(first.body), "id");
  auto second = post("/v1/drills", good);
  EXPECT_EQ(second.status, 409) << second.body;
  auto [code, message] = error_of(second);
  EXPECT_EQ(code, "invalid_state");
  EXPECT_NE(message.find(id), std::string::npos)
      << "the refusal should name the drill that runs: " << message;
  EXPECT_EQ(post("/v1/drills/" + id + "/abort", json::object{}).status, 202);
  EXPECT_EQ(jstr(wait_drill_finished(id, 10s), "state"), "Aborted");
  auto late = post("/v1/drills/" + id + "/resume", json::object{});
  EXPECT_EQ(late.status, 409) << late.body;
  EXPECT_EQ(get("/v1/drills").as_array().size(), 1u);
}

// ---------------------------------------------------------------------------------------------
// 6. A load balancer: HAProxy started as the rack starts it (the renderer's bootstrap file), the
//    orchestrator driving it. VIPs come from 127.0.0.0/24 (loopback: local without a namespace).
//    The simulated guests have no network, so the frontend has no backend: every client request
//    fails (503), which is what the report must then say.

TEST_F(OrchestratorIt, EndpointServiceGetsAVipAHaproxyFrontendAndADrillMeasuresItsClients) {
  const std::string config = dir() + "/haproxy.cfg", sock = dir() + "/lb.sock";
  // Both ports held until HAProxy has stopped (haproxy_process.hpp says why); declared before
  // HAProxy, so they outlive it.
  fabriclab::testing::ReservedPort health_port, service_port;
  ASSERT_NE(health_port.port(), 0);
  ASSERT_NE(service_port.port(), 0);
  const std::string health = health_port.loopback();
  auto settings = orchestrator::lb_settings_for(config);
  settings.health_bind = health;
  std::ofstream(config) << orchestrator::render_haproxy_config({}, settings);
  fabriclab::testing::HaproxyProcess haproxy;
  int rc = haproxy.start(config, sock, dir() + "/haproxy.log");
  ASSERT_EQ(rc, 0) << "cannot start haproxy (Debian's haproxy package): " << std::strerror(rc);
  ASSERT_TRUE(wait_until([&] { return ::access(sock.c_str(), F_OK) == 0; }, 10s))
      << "no master socket";
  ASSERT_NO_FATAL_FAILURE(start_agents(4, 2));
  ASSERT_NO_FATAL_FAILURE(
      start_orchestrator({"--lb-config", config, "--lb-master-socket", sock, "--lb-health-bind",
                          health, "--vip-range", "127.0.0.0/24"}));
  ASSERT_NO_FATAL_FAILURE(register_agents());
  EventLog& feed = record_events();

  const uint16_t port = service_port.port();
  json::object body{
      {"name", "web"},
      {"instance_count", 2},
      {"ud_count", 2},
      {"image", "v1"},
      {"memory_mib", 128},
      {"traffic_rps", 10},
      {"endpoint", json::object{{"port", port},
                                {"probe", json::object{{"path", "/health"},
                                                       {"interval_ms", 200},
                                                       {"unhealthy_threshold", 2}}}}}};
  json::object with_vip = body;
  with_vip["name"] = "api";
  with_vip["vip"] = "127.0.0.99";
  auto refused = post("/v1/services", with_vip);
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_NE(error_of(refused).second.find("vip"), std::string::npos) << refused.body;
  auto created = post("/v1/services", body);
  ASSERT_EQ(created.status, 201) << created.body;
  auto svc = parse_or_null(created.body);
  EXPECT_EQ(jstr(svc, "vip"), "127.0.0.10");
  EXPECT_EQ(jint(jval(svc, "endpoint"), "port"), port);
  ASSERT_TRUE(wait_until([&] { return all_instances_healthy(); }, 60s));

  // The frontend exists once the orchestrator has reloaded HAProxy: no backend has an address,
  // so it answers 503.
  ASSERT_TRUE(wait_until(
      [&] {
        auto r = http::request("127.0.0.10", port, "GET", "/", {}, {}, 1s);
        return r.ok() && r->status == 503;
      },
      15s))
      << "HAProxy never served the VIP";
  EXPECT_TRUE(feed.wait_for(
      [&](const json::object& e) { return jstr(e, "type") == "lb.config" && jbool(e, "ok"); }, 5s));
  auto services = get("/v1/services");
  ASSERT_EQ(services.as_array().size(), 1u);
  const auto& backends = jarr(services.as_array()[0], "backends");
  ASSERT_EQ(backends.size(), 2u) << json::serialize(services);
  for (const auto& b : backends) {
    EXPECT_EQ(jstr(b, "address"), "");
    EXPECT_EQ(jstr(b, "state"), "UNKNOWN");
  }

  // notice 900 s x 0.001 = 0.9 s; a draining guest needs 1 + (0.2 x 5 + 0.2) + 0.5 = 2.7 s (the
  // threshold 2 raised to 5 so that failures span kMinProbeDetectionMs).
  const std::string id = start_drill(drill_body(/*recovery_s=*/100));
  ASSERT_FALSE(id.empty());
  auto drill = wait_drill_finished(id, 120s);
  ASSERT_EQ(jstr(drill, "state"), "Completed") << json::serialize(drill);
  bool raised = false;
  for (const auto& n : jarr(drill, "notes")) {
    raised |=
        n.is_string() && n.as_string() ==
                             "notice raised from 0.9 s to 2.7 s so that draining guests leave "
                             "rotation before their host stops";
  }
  EXPECT_TRUE(raised) << json::serialize(jarr(drill, "notes"));
  for (const auto& host : host_ids()) {
    for (const auto& j : host_os_jobs(host)) {
      EXPECT_EQ(jint(jval(j, "request"), "notice_ms"), 2700) << json::serialize(j);
    }
  }

  auto report = get("/v1/drills/" + id + "/report");
  EXPECT_TRUE(jbool(jval(report, "traffic"), "measured"))
      << json::serialize(jval(report, "traffic"));
  const auto& rs = jarr(report, "services");
  ASSERT_EQ(rs.size(), 1u);
  const auto& traffic = jval(rs[0], "traffic");
  // 10 rps over at least the 2 s lead and 2 s tail, every request answered 503.
  EXPECT_GE(jint(traffic, "requests"), 30) << json::serialize(traffic);
  EXPECT_EQ(jint(traffic, "failed"), jint(traffic, "requests")) << json::serialize(traffic);
  EXPECT_EQ(jstr(report, "result"), "failed");

  auto stats = feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "traffic.stats" && jstr(e, "drill") == id;
      },
      5s);
  ASSERT_TRUE(stats.has_value()) << "no traffic.stats event";
  EXPECT_TRUE(jval(jval(json::value(*stats), "services"), "web").is_object())
      << json::serialize(*stats);
  // A new connection's snapshot carries the traffic view.
  EventLog& later = record_events();
  auto snap_event =
      later.wait_for([](const json::object& e) { return jstr(e, "type") == "snapshot"; }, 10s);
  ASSERT_TRUE(snap_event.has_value());
  const json::value snap = jval(json::value(*snap_event), "state");
  EXPECT_TRUE(jbool(jval(snap, "traffic"), "measured")) << json::serialize(jval(snap, "traffic"));
  EXPECT_TRUE(jval(jval(jval(snap, "traffic"), "services"), "web").is_object())
      << json::serialize(jval(snap, "traffic"));
}

}  // namespace
}  // namespace fabriclab::testing
