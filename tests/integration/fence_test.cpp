// Fence before heal (docs/state-machines.md), on simulated racks: the orchestrator and three
// agents as separate processes on loopback (test driver). A host is made "silent but alive" by
// SIGSTOPping its agent (its guests live inside it and go on, as a partitioned host's do). The
// power command is the test's own BMC: a script that kills the agent (confirmed off), one that
// fails, one that hangs. Checked from the feed and the REST API: no instance is re-created before
// its old host is confirmed off; a failed fence re-creates nothing and says why; a host that comes
// back holding a copy of an instance placed elsewhere is Reconciling until that copy is removed
// (its data disk kept aside), and only then Ready; every difference between an agent and the
// placement is a host.drift event and a /metrics gauge.

#include <signal.h>
#include <sys/stat.h>

#include <set>

#include "fabriclab/common/process.hpp"
#include "fabriclab/orchestrator/controller.hpp"
#include "json_find.hpp"
#include "orchestrator_stack.hpp"

namespace fabriclab::testing {
namespace {

class Fence : public OrchestratorStack {
 protected:
  // A BMC script in the test directory: `sh FILE HOST`. Returns the argument of --power-command.
  std::string bmc(const std::string& name, const std::string& body) {
    const std::string path = dir() + "/" + name + ".sh";
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    return "/bin/sh " + path + " {host}";
  }

  // The script that cuts a host's power: SIGKILLs the agent whose pid the test wrote into
  // DIR/pids/HOST and exits 0 only once it is gone.
  std::string killing_bmc() {
    std::filesystem::create_directories(dir() + "/pids");
    return bmc("bmc-off",
               "pid=$(cat " + dir() +
                   "/pids/$1) || exit 3\n"
                   "echo \"$1\" >> " +
                   dir() +
                   "/fenced.log\n"
                   "kill -9 \"$pid\"\n"
                   // A zombie counts as off: the agent is the test's child, reaped later.
                   "for i in $(seq 1 200); do\n"
                   "  grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null && exit 0\n"
                   "  kill -0 \"$pid\" 2>/dev/null || exit 0; sleep 0.05\n"
                   "done\n"
                   "echo \"$1 still runs\" >&2; exit 1");
  }

  // Three agents in three FDs, the orchestrator with `extra`, web with 2 instances (2 UDs).
  void start(const std::vector<std::string>& extra) {
    ASSERT_NO_FATAL_FAILURE(start_agents(3, 3));
    ASSERT_NO_FATAL_FAILURE(start_orchestrator(extra));
    ASSERT_NO_FATAL_FAILURE(register_agents());
    ASSERT_NO_FATAL_FAILURE(create_service("web", 2, 2));
    ASSERT_TRUE(wait_until([&] { return all_instances_healthy(); }, 60s))
        << "web never became healthy: " << json::serialize(get("/v1/instances"));
    std::filesystem::create_directories(dir() + "/pids");
    for (const auto& [id, a] : agents()) std::ofstream(dir() + "/pids/" + id) << a.pid << "\n";
  }

  std::string host_of(const std::string& instance) {
    const auto all = get("/v1/instances");  // the list find_named points into
    const auto* i = find_named(all, instance);
    return i ? jstr(*i, "host") : std::string();
  }

  // The agent's instance names, as it reports them itself.
  std::set<std::string> agent_instances(const std::string& id) {
    std::set<std::string> out;
    auto v = agent_get(id, "/v1/instances");
    if (v.is_array()) {
      for (const auto& i : v.as_array()) out.insert(jstr(i, "name"));
    }
    return out;
  }

  static int64_t seq_of(const json::object& e) { return jint(e, "seq"); }
};

TEST_F(Fence, AConfirmedFenceComesBeforeHealingAndAReturningHostIsReconciledBeforeItIsReady) {
  ASSERT_NO_FATAL_FAILURE(start({"--power-command", killing_bmc(), "--power-timeout-ms", "15000"}));
  const std::string victim = host_of("web-0");
  ASSERT_FALSE(victim.empty());
  EventLog& feed = record_events();
  const pid_t silent = agent(victim).pid;
  const auto stopped_at = Clock::now();
  ASSERT_EQ(::kill(silent, SIGSTOP), 0);

  auto fenced =
      feed.wait_for([&](const json::object& e) { return jstr(e, "type") == "host.fenced"; }, 20s);
  ASSERT_TRUE(fenced) << "the silent host was never fenced";
  EXPECT_EQ(jstr(*fenced, "host"), victim);
  auto healed = feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "service.healed" && jstr(e, "instance") == "web-0";
      },
      20s);
  ASSERT_TRUE(healed) << "web-0 was never healed";
  const auto healed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped_at).count();
  std::cout << "silent -> fenced -> healed in " << healed_ms << " ms (unhealthy after 1.5 s)"
            << std::endl;
  EXPECT_LT(seq_of(*fenced), seq_of(*healed)) << "healed before the host was confirmed off";
  EXPECT_TRUE(jbool(*healed, "fenced"));
  EXPECT_NE(jstr(*healed, "to_host"), victim);
  // The power control really ran against the victim, and the agent is gone.
  EXPECT_NE(fabriclab::file_tail(dir() + "/fenced.log", 4).find(victim), std::string::npos);
  EXPECT_FALSE(process_alive(silent)) << "the fenced agent still runs";
  agent(victim).pid = -1;
  auto h = get("/v1/hosts/" + victim);
  EXPECT_EQ(jstr(h, "state"), "Fenced") << json::serialize(h);
  EXPECT_NE(jstr(h, "reason").find("powered off"), std::string::npos) << json::serialize(h);
  ASSERT_TRUE(wait_until([&] { return all_instances_healthy(); }, 30s))
      << json::serialize(get("/v1/instances"));

  // The host comes back (an agent restarted on the same state directory: it starts web-0's old
  // VM again, as a host whose power returns without --hold-guests would). It must not be Ready
  // while it runs a copy of web-0, which is placed elsewhere now.
  ASSERT_NO_FATAL_FAILURE(start_agent({victim, fd_of(victim)}));
  json::object body{{"id", victim},
                    {"fault_domain", fd_of(victim)},
                    {"endpoint", "http://" + agent(victim).address},
                    {"capacity", 4}};
  ASSERT_EQ(post("/v1/hosts", body).status, 201);
  auto reconciled = feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "host.reconciled" && jstr(e, "host") == victim;
      },
      20s);
  ASSERT_TRUE(reconciled) << "the returning host was never reconciled";
  EXPECT_EQ(jstr(*reconciled, "instance"), "web-0");
  EXPECT_EQ(jstr(*reconciled, "action"), "removed");
  const std::string kept = jstr(*reconciled, "data_disk_kept");
  EXPECT_FALSE(kept.empty());
  EXPECT_TRUE(std::filesystem::exists(kept)) << kept << ": the data disk was not kept aside";
  ASSERT_TRUE(
      wait_until([&] { return jstr(try_get("/v1/hosts/" + victim), "state") == "Ready"; }, 10s))
      << json::serialize(get("/v1/hosts/" + victim));
  EXPECT_TRUE(agent_instances(victim).empty()) << "the returned host still holds instances";
  // Reconciling was published before Ready, and no Ready while the copy was there.
  int64_t reconciling_seq = -1, ready_seq = -1;
  for (const auto& m : feed.messages()) {
    if (jstr(m.body, "type") != "host.state" || jstr(m.body, "host") != victim) continue;
    if (jstr(m.body, "state") == "Reconciling" && reconciling_seq < 0)
      reconciling_seq = seq_of(m.body);
    if (jstr(m.body, "state") == "Ready" && seq_of(m.body) > seq_of(*healed))
      ready_seq = seq_of(m.body);
  }
  EXPECT_GT(reconciling_seq, 0) << "no Reconciling state on the feed";
  EXPECT_GT(ready_seq, seq_of(*reconciled))
      << "the host was Ready before its copy of web-0 was removed";
  EXPECT_EQ(host_of("web-0"), jstr(*healed, "to_host"));
}

TEST_F(Fence, AFailedFenceReCreatesNothingAndTheHostSaysWhy) {
  const std::string cmd = bmc("bmc-fail", "echo \"BMC of $1 does not answer\" >&2; exit 4");
  ASSERT_NO_FATAL_FAILURE(start({"--power-command", cmd, "--fence-attempts", "2"}));
  const std::string victim = host_of("web-0");
  EventLog& feed = record_events();
  ASSERT_EQ(::kill(agent(victim).pid, SIGSTOP), 0);
  auto failed = feed.wait_for(
      [&](const json::object& e) { return jstr(e, "type") == "host.fence_failed"; }, 20s);
  ASSERT_TRUE(failed) << "no host.fence_failed";
  EXPECT_NE(jstr(*failed, "reason").find("does not answer"), std::string::npos)
      << json::serialize(*failed);
  EXPECT_NE(jstr(*failed, "reason").find("code 4"), std::string::npos) << json::serialize(*failed);
  EXPECT_TRUE(jbool(*failed, "retry"));
  // Tried again once (5 s later), then given up; nothing healed meanwhile.
  auto last = feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "host.fence_failed" && jint(e, "attempt") == 2;
      },
      20s);
  ASSERT_TRUE(last) << "the fence was not tried a second time";
  EXPECT_FALSE(jbool(*last, "retry"));
  std::this_thread::sleep_for(2s);
  for (const auto& m : feed.messages()) {
    EXPECT_NE(jstr(m.body, "type"), "service.healed") << json::serialize(m.body);
    EXPECT_FALSE(jstr(m.body, "type") == "host.fence_failed" && jint(m.body, "attempt") > 2)
        << "more attempts than allowed";
  }
  auto h = get("/v1/hosts/" + victim);
  EXPECT_EQ(jstr(h, "state"), "Unhealthy");
  EXPECT_NE(jstr(h, "reason").find("fencing failed"), std::string::npos) << json::serialize(h);
  EXPECT_NE(jstr(h, "reason").find("not re-created"), std::string::npos) << json::serialize(h);
  EXPECT_EQ(host_of("web-0"), victim) << "web-0 moved although its host was never confirmed off";

  // The host answers again: it still holds web-0, which is still placed there: Ready, nothing
  // removed.
  ASSERT_EQ(::kill(agent(victim).pid, SIGCONT), 0);
  ASSERT_TRUE(
      wait_until([&] { return jstr(try_get("/v1/hosts/" + victim), "state") == "Ready"; }, 10s));
  ASSERT_TRUE(wait_until([&] { return all_instances_healthy(); }, 20s));
  EXPECT_EQ(agent_instances(victim).count("web-0"), 1u);
  for (const auto& m : feed.messages()) EXPECT_NE(jstr(m.body, "type"), "host.reconciled");
}

TEST_F(Fence, APowerCommandPastItsTimeoutIsKilledAndCountsAsFailed) {
  const std::string cmd = bmc("bmc-hang", "sleep 30");
  ASSERT_NO_FATAL_FAILURE(
      start({"--power-command", cmd, "--power-timeout-ms", "700", "--fence-attempts", "1"}));
  const std::string victim = host_of("web-0");
  EventLog& feed = record_events();
  ASSERT_EQ(::kill(agent(victim).pid, SIGSTOP), 0);
  auto failed = feed.wait_for(
      [&](const json::object& e) { return jstr(e, "type") == "host.fence_failed"; }, 20s);
  ASSERT_TRUE(failed);
  EXPECT_LT(jint(*failed, "duration_ms"), 5000)
      << "the hung power command was not cut at its timeout";
  EXPECT_NE(jstr(*failed, "reason").find("700"), std::string::npos) << json::serialize(*failed);
  EXPECT_FALSE(jbool(*failed, "retry"));
  std::this_thread::sleep_for(1s);
  for (const auto& m : feed.messages()) EXPECT_NE(jstr(m.body, "type"), "service.healed");
  ::kill(agent(victim).pid, SIGCONT);
}

TEST_F(Fence, EveryDifferenceBetweenAnAgentAndThePlacementIsReported) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  const std::string host = host_of("web-1");
  EventLog& feed = record_events();
  // An instance the orchestrator never placed, made on the agent behind its back.
  const Child& a = agent(host);
  auto colon = a.address.rfind(':');
  json::object rogue{
      {"service", "rogue"}, {"index", 0}, {"ud", 0}, {"fd", fd_of(host)}, {"image", "v1"}};
  auto made = http::request(a.address.substr(0, colon), a.port, "POST", "/v1/instances",
                            json::serialize(rogue), kToken, 15s);
  ASSERT_TRUE(made.ok() && made->status == 201)
      << (made.ok() ? made->body : made.error().describe());
  auto drift =
      feed.wait_for([&](const json::object& e) { return jstr(e, "type") == "host.drift"; }, 10s);
  ASSERT_TRUE(drift) << "no host.drift for an instance nobody placed";
  EXPECT_EQ(jstr(*drift, "host"), host);
  ASSERT_EQ(jarr(*drift, "unexpected").size(), 1u) << json::serialize(*drift);
  EXPECT_EQ(jstr(jarr(*drift, "unexpected")[0], "instance"), "rogue-0");
  EXPECT_EQ(jstr(jarr(*drift, "unexpected")[0], "placed_on"), "");
  EXPECT_FALSE(jbool(*drift, "in_step"));
  auto metrics = call("GET", "/metrics").body;
  EXPECT_NE(metrics.find("fabriclab_host_drift_instances{host=\"" + host + "\"} 1"),
            std::string::npos)
      << metrics;
  // Removing it on the agent, and removing web-1 there too (placed on the host, now missing).
  for (const char* name : {"rogue-0", "web-1"}) {
    auto gone = http::request(a.address.substr(0, colon), a.port, "DELETE",
                              std::string("/v1/instances/") + name, {}, kToken, 15s);
    ASSERT_TRUE(gone.ok() && gone->status == 200) << name;
  }
  auto missing = feed.wait_for(
      [&](const json::object& e) {
        return jstr(e, "type") == "host.drift" && !jarr(e, "missing").empty();
      },
      10s);
  ASSERT_TRUE(missing) << "no host.drift for a placed instance the agent lost";
  EXPECT_EQ(json::value_to<std::string>(jarr(*missing, "missing")[0]), "web-1");
  EXPECT_TRUE(jarr(*missing, "unexpected").empty());
  // Reported once per difference, not at every poll.
  std::this_thread::sleep_for(1s);
  int drift_events = 0;
  for (const auto& m : feed.messages()) drift_events += jstr(m.body, "type") == "host.drift";
  EXPECT_EQ(drift_events, 2);
}

}  // namespace
}  // namespace fabriclab::testing

namespace fabriclab::testing {
namespace {

TEST(PowerCommand, IsSplitAtSpacesWithoutAShellAndChecked) {
  auto ok =
      orchestrator::parse_power_command("  /usr/bin/ipmitool -H bmc-{host} chassis power off ");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(*ok, (std::vector<std::string>{"/usr/bin/ipmitool", "-H", "bmc-{host}", "chassis",
                                           "power", "off"}));
  for (auto [text, says] : std::vector<std::pair<std::string, std::string>>{
           {"", "empty"},
           {"   ", "empty"},
           {"ipmitool {host}", "absolute path"},
           {"/bin/echo " + std::string(1025, 'x'), "word 2"},
           {"/bin/echo a\tb", "control character"}}) {
    auto bad = orchestrator::parse_power_command(text);
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_NE(bad.error().message.find(says), std::string::npos) << bad.error().message;
  }
  std::string many = "/bin/echo";
  for (int i = 0; i < 32; ++i) many += " w";
  EXPECT_FALSE(orchestrator::parse_power_command(many).ok());
}

TEST(PowerCommand, TheOrchestratorRefusesABadOneAtStart) {
  char tmpl[] = "/tmp/flpc-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  std::ofstream(dir + "/token") << kToken << "\n";
  auto r =
      run_command({FABRICLAB_ORCHESTRATOR_BIN, "--journal", dir + "/j.db", "--control-token-file",
                   dir + "/token", "--power-command", "ipmitool power off {host}"},
                  10s);
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->exit_code, 2) << r->output;
  EXPECT_NE(r->output.find(
                "--power-command: the power command's program 'ipmitool' must be an absolute path"),
            std::string::npos)
      << r->output;
}

}  // namespace
}  // namespace fabriclab::testing
