// Faults in the middle of maintenance, end to end through the CLI (docs/faults.md): a drill spec
// with a fault schedule on a simulated rack writes a row per fault into its report; a short
// simulated chaos campaign with every fault kind the sim can express holds every rule; and a
// 3-drill campaign on real VMs (label realvm). Every assertion reads what a user reads: the exit
// code, the report and summary JSON, and what is left running.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "fabriclab/orchestrator/journal.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace fabriclab::testing;

json::object parse_object(const std::string& text) {
  boost::system::error_code ec;
  auto v = json::parse(text, ec);
  return !ec && v.is_object() ? v.as_object() : json::object{};
}

class Chaos : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir("flct");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
  }
  void TearDown() override {
    EXPECT_EQ(processes_under(dir_, "qemu"), 0) << "VMs left running under " << dir_;
    if (!HasFailure()) fs::remove_all(dir_);
  }

  // Runs a campaign; checks what every campaign must show and returns the summary.
  json::object campaign(const std::vector<std::string>& extra, int drills, CliRun& r) {
    std::vector<std::string> args = {
        "chaos",       "--drills",  std::to_string(drills), "--lab-dir",
        dir_ + "/lab", "--summary", dir_ + "/summary.json"};
    args.insert(args.end(), extra.begin(), extra.end());
    r = run_cli(args, dir_ + "/chaos.log");
    json::object s = parse_object(slurp(dir_ + "/summary.json"));
    EXPECT_FALSE(s.empty()) << r.output;
    return s;
  }

  std::string dir_;
};

TEST_F(Chaos, SimDrillWithAFaultScheduleWritesARowPerFaultWithWhatTheSystemDid) {
  CliRun r = run_cli(
      {"drill", "--spec", std::string(FABRICLAB_SPECS_DIR) + "/faults-sim.yaml", "--lab-dir",
       dir_ + "/lab", "--report", dir_ + "/report.json", "--html", dir_ + "/report.html"},
      dir_ + "/drill.log");
  json::object report = parse_object(slurp(dir_ + "/report.json"));
  ASSERT_TRUE(report.contains("faults")) << r.output;
  const auto& faults = report.at("faults").as_array();
  ASSERT_EQ(faults.size(), 4u) << json::serialize(faults);
  std::set<std::string> kinds;
  for (const auto& fv : faults) {
    const auto& f = fv.as_object();
    kinds.insert(std::string(f.at("kind").as_string()));
    EXPECT_EQ(f.at("status").as_string(), "injected") << json::serialize(f) << "\n" << r.output;
    EXPECT_FALSE(f.at("at").as_string().empty()) << json::serialize(f);
    EXPECT_FALSE(f.at("detail").as_string().empty()) << json::serialize(f);
    EXPECT_FALSE(f.at("outcome").as_string().empty()) << json::serialize(f);
    EXPECT_TRUE(f.at("injected_at").is_string()) << json::serialize(f);
  }
  EXPECT_EQ(kinds,
            (std::set<std::string>{"kill-orchestrator", "kill-agent", "guest-crash", "slow-boot"}));
  for (const auto& fv : faults) {
    const auto& f = fv.as_object();
    if (f.at("kind").as_string() == "kill-orchestrator") {
      // The drill went on after the restart: the walk finished on the same journal.
      EXPECT_NE(f.at("outcome").as_string().find("resumed the drill"), std::string::npos)
          << json::serialize(f);
      EXPECT_NE(f.at("detail").as_string().find("restarted on the same journal"),
                std::string::npos);
    }
    if (f.at("kind").as_string() == "kill-agent") {
      EXPECT_NE(f.at("detail").as_string().find("agent restarted after"), std::string::npos)
          << json::serialize(f);
    }
  }
  // The drill ended in a terminal state and said so; the faults are on the page and the output.
  const std::string state(report.at("drill").at("state").as_string());
  EXPECT_TRUE(state == "Completed" || state == "Failed") << state;
  EXPECT_EQ(r.exit_code, state == "Completed" ? 0 : 1) << r.output;
  EXPECT_NE(slurp(dir_ + "/report.html").find("kill-orchestrator"), std::string::npos);
  EXPECT_NE(r.output.find("fault: kill-orchestrator orchestrator at batch 2"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir_ + "/lab/lab.json"));
  // Every fault is an event on the orchestrator's feed, journaled with the drill's other events:
  // its injection (the orchestrator's own killing posted just before it) and the ends of those
  // with a duration (the orchestrator's restart posted by the restarted orchestrator).
  auto journal = fabriclab::orchestrator::Journal::open(dir_ + "/lab/journal.db");
  ASSERT_TRUE(journal.ok()) << journal.error().message;
  auto events = (*journal)->events_since(0, 100000);
  ASSERT_TRUE(events.ok());
  std::multiset<std::string> seen;
  for (const auto& e : *events) {
    json::object o = parse_object(e);
    if (o.contains("type") && o.at("type").as_string() == "drill.fault") {
      seen.insert(std::string(o.at("kind").as_string()) + " " +
                  std::string(o.at("status").as_string()));
    }
  }
  for (const char* k :
       {"kill-orchestrator injected", "kill-orchestrator ended", "kill-agent injected",
        "kill-agent ended", "guest-crash injected", "slow-boot injected"}) {
    EXPECT_EQ(seen.count(k), 1u) << k << " in " << seen.size() << " drill.fault events";
  }
}

// Every kind, partitions and agent outages longer than the orchestrator's Unhealthy threshold
// among them: the cut-off host is fenced (its agent and guests killed by the rack's power control)
// before its instances are healed, so no instance runs twice.
TEST_F(Chaos, SimCampaignWithEveryFaultKindHoldsEveryRule) {
  const std::vector<std::string> kinds = {
      "kill-agent",  "kill-orchestrator", "partition-host", "kill-fault-domain",
      "guest-crash", "guest-hang",        "slow-boot",      "corrupt-host-image"};
  std::string list;
  for (const auto& k : kinds) list += (list.empty() ? "" : ",") + k;
  CliRun r;
  const int drills = 30;
  json::object s = campaign({"--seed", "14", "--kinds", list}, drills, r);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(s.at("drills").to_number<int64_t>(), drills);
  EXPECT_TRUE(s.at("violations").as_array().empty()) << json::serialize(s.at("violations"));
  const auto& by_kind = s.at("faults_by_kind").as_object();
  for (const auto& k : kinds) {
    ASSERT_TRUE(by_kind.contains(k)) << k << " never drawn: " << json::serialize(by_kind);
    EXPECT_GE(by_kind.at(k).at("injected").to_number<int64_t>(), 1)
        << k << ": " << json::serialize(by_kind);
  }
  // Every drill was judged by every check and ended in a terminal state.
  for (const auto& d : s.at("results").as_array()) {
    EXPECT_GE(d.at("checks").as_array().size(), 7u) << json::serialize(d);
    const std::string st(d.at("state").as_string());
    EXPECT_TRUE(st == "Completed" || st == "Failed" || st == "Aborted") << json::serialize(d);
  }
  EXPECT_NE(r.output.find("no violation"), std::string::npos) << r.output;
}

TEST_F(Chaos, BadArgumentsAreRefusedNamingThem) {
  CliRun r = run_cli({"chaos", "--kinds", "kill-agent,unplug", "--lab-dir", dir_ + "/lab"},
                     dir_ + "/bad.log");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--kinds: 'unplug' is not a fault kind"), std::string::npos) << r.output;
  std::ofstream(dir_ + "/bad.yaml")
      << "faults: [{kind: kill-agent, target: {host: h9}, at: {batch: 1}}]\n";
  r = run_cli(
      {"drill", "--spec", dir_ + "/bad.yaml", "--hypervisor", "test", "--lab-dir", dir_ + "/lab"},
      dir_ + "/bad2.log");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("faults[0].target.host: 'h9' is not a host of the rack (h0..h5)"),
            std::string::npos)
      << r.output;
}

// Real VMs: three drills on a 3-host rack of built-in guests serving clients through the load
// balancer, every kind but partition-host (the simulated campaign has it).
TEST_F(Chaos, RealVmCampaignHoldsEveryRule) {
  std::ofstream(dir_ + "/base.yaml")
      << "name: chaos-real\nhypervisor: qemu\nrack: {hosts: 3, fault_domains: 3, capacity: 2}\n"
         "services:\n  - {name: web, instances: 2, ud_count: 2, image: v1, endpoint: {port: 80}}\n"
         "update: {kind: host-os, target: host-v2}\npolicies: {time_scale: 0.001, recovery_s: 500, "
         "notice_s: 500}\n";
  CliRun r;
  json::object s =
      campaign({"--seed", "3", "--hypervisor", "qemu", "--spec", dir_ + "/base.yaml", "--kinds",
                "guest-crash,kill-agent,kill-orchestrator,guest-hang,slow-boot,corrupt-host-image,"
                "kill-fault-domain",
                "--max-outage", "2.5"},
               3, r);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(s.at("violations").as_array().empty()) << json::serialize(s.at("violations"));
  // On real VMs the QEMU processes are a second witness of "one host per instance", and the
  // clients' failed requests were judged against the faults' windows.
  for (const auto& d : s.at("results").as_array()) {
    bool qemu_check = false, clients_judged = false;
    for (const auto& c : d.at("checks").as_array()) {
      qemu_check =
          qemu_check || c.at("name").as_string() == "one host per instance (QEMU processes)";
      if (c.at("name").as_string() == "clients served outside fault windows")
        clients_judged = c.at("detail").as_string().find("not measured") == std::string::npos;
    }
    EXPECT_TRUE(qemu_check) << json::serialize(d);
    EXPECT_TRUE(clients_judged) << json::serialize(d);
  }
}

}  // namespace
