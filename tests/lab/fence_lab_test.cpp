// Fence before heal on a local rack (`fabriclab lab up`), through the rack's own power control
// (`fabriclab lab power-off|power-on`, which the lab gives the orchestrator as --power-command).
//
// Sim: a host made silent by SIGSTOPping its agent is fenced (its agent killed), its instance
// healed elsewhere, and after `lab power-on` it is reconciled (its copy removed, data disk kept)
// before it is Ready.
// Real VMs (issue 14's reproduction): web-0's host is cut off its rack for 12 s (`ip link set eth0
// down` in its namespace). Sampling the QEMU processes all along, at no moment do two of them run
// web-0; the healed web-0 serves (healthy, UP in the load balancer); after the link is back and
// the host is powered on it ends Ready, holding nothing, with no QEMU process left under it.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "cli_runner.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/json_get.hpp"
#include "json_find.hpp"
#include "temp_dir.hpp"
#include "wait_until.hpp"

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using fabriclab::json_get::str;
using namespace fabriclab::testing;

// QEMU processes whose command line holds every one of `needles`.
int qemu_processes_with(const std::vector<std::string>& needles) {
  return static_cast<int>(fabriclab::processes_matching("qemu", needles).size());
}

class FenceLab : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir("flfence");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
    lab_ = dir_ + "/lab";
  }
  void TearDown() override {
    if (up_) {
      auto down = run_cli({"lab", "down", "--lab-dir", lab_}, dir_ + "/down.log");
      EXPECT_EQ(down.exit_code, 0) << down.output;
    }
    if (HasFailure())
      std::cerr << "---- orchestrator log (tail) ----\n" << tail(lab_ + "/orchestrator.log", 40);
    std::error_code ec;
    if (!std::getenv("FABRICLAB_KEEP_TMP")) fs::remove_all(dir_, ec);
  }

  static std::string tail(const std::string& path, size_t lines) {
    std::string s = slurp(path);
    size_t at = s.size();
    for (size_t n = 0; n <= lines && at != std::string::npos && at > 0; ++n)
      at = s.rfind('\n', at - 1);
    return at == std::string::npos ? s : s.substr(at + 1);
  }

  void lab_up(const std::string& spec, const std::string& hypervisor) {
    std::ofstream(dir_ + "/spec.yaml") << spec;
    auto up = run_cli(
        {"lab", "up", "--spec", dir_ + "/spec.yaml", "--hypervisor", hypervisor, "--lab-dir", lab_},
        dir_ + "/up.log");
    up_ = true;
    ASSERT_EQ(up.exit_code, 0) << up.output;
    lab_json_ = json::parse(slurp(lab_ + "/lab.json")).as_object();
    std::string url = str(lab_json_, "orchestrator_url");  // http://127.0.0.1:PORT
    auto colon = url.rfind(':');
    host_ = url.substr(7, colon - 7);
    port_ = static_cast<uint16_t>(std::stoi(url.substr(colon + 1)));
    token_ = slurp(lab_ + "/token");
    while (!token_.empty() && std::isspace(static_cast<unsigned char>(token_.back())))
      token_.pop_back();
    // The lab gave its orchestrator its own power control.
    std::string cmd = slurp(
        "/proc/" + std::to_string(lab_json_.at("orchestrator").at("pid").as_int64()) + "/cmdline");
    ASSERT_NE(cmd.find(std::string("--power-command") + '\0'), std::string::npos)
        << "the orchestrator has no power command";
    ASSERT_NE(cmd.find("lab power-off --lab-dir " + lab_ + " {host}"), std::string::npos);
  }

  json::value get(const std::string& target) {
    auto r = fabriclab::http::request(host_, port_, "GET", target, {}, token_, 10s);
    if (!r.ok() || r->status != 200) return nullptr;
    boost::system::error_code ec;
    auto v = json::parse(r->body, ec);
    return ec ? json::value(nullptr) : v;
  }
  std::string host_of(const std::string& instance) {
    const auto all = get("/v1/instances");  // the list find_named points into
    const auto* i = find_named(all, instance);
    return i ? str(*i, "host") : std::string();
  }
  bool healthy(const std::string& instance) {
    const auto all = get("/v1/instances");  // the list find_named points into
    const auto* i = find_named(all, instance);
    return i && fabriclab::json_get::flag(*i, "healthy");
  }
  std::string host_state(const std::string& id) { return str(get("/v1/hosts/" + id), "state"); }
  const json::object& agent_json(const std::string& id) {
    for (const auto& a : lab_json_.at("agents").as_array()) {
      if (str(a, "name") == id) return a.as_object();
    }
    static const json::object none;
    return none;
  }
  std::vector<std::string> kept_disks(const std::string& id) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(lab_ + "/" + id + "/kept-data", ec))
      out.push_back(e.path().string());
    return out;
  }

  std::string dir_, lab_, host_, token_;
  uint16_t port_ = 0;
  bool up_ = false;
  json::object lab_json_;
};

TEST_F(FenceLab, SimSilentHostIsFencedThroughTheLabPowerControlAndReconciledAfterPowerOn) {
  ASSERT_NO_FATAL_FAILURE(
      lab_up("rack: {hosts: 3, fault_domains: 3, capacity: 2}\n"
             "services:\n  - {name: web, instances: 2, ud_count: 2, image: v1, memory_mib: 128}\n",
             "test"));
  const std::string victim = host_of("web-0");
  ASSERT_FALSE(victim.empty());
  const pid_t agent = static_cast<pid_t>(agent_json(victim).at("pid").as_int64());
  // A host that does not exist is refused, naming the hosts there are.
  auto bad = run_cli({"lab", "power-off", "--lab-dir", lab_, "h9"}, dir_ + "/bad.log");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("no host 'h9'"), std::string::npos) << bad.output;

  auto t0 = Clock::now();
  ASSERT_EQ(kill(agent, SIGSTOP), 0);
  ASSERT_TRUE(wait_until([&] { return host_state(victim) == "Fenced"; }, 30s))
      << json::serialize(get("/v1/hosts"));
  auto fenced_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_FALSE(running(agent)) << "Fenced, but the agent still runs";
  ASSERT_TRUE(wait_until([&] { return host_of("web-0") != victim && healthy("web-0"); }, 30s));
  auto healed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  std::cout << "sim: silent -> Fenced " << fenced_ms << " ms, -> web-0 healthy elsewhere "
            << healed_ms << " ms" << std::endl;
  // Powered off twice is still off.
  auto again = run_cli({"lab", "power-off", "--lab-dir", lab_, victim}, dir_ + "/off.log");
  EXPECT_EQ(again.exit_code, 0) << again.output;

  auto on = run_cli({"lab", "power-on", "--lab-dir", lab_, victim}, dir_ + "/on.log");
  ASSERT_EQ(on.exit_code, 0) << on.output;
  ASSERT_TRUE(wait_until([&] { return host_state(victim) == "Ready"; }, 30s))
      << json::serialize(get("/v1/hosts"));
  EXPECT_TRUE(fabriclab::json_get::arr(get("/v1/hosts/" + victim), "instances").empty());
  ASSERT_EQ(kept_disks(victim).size(), 1u) << "web-0's data disk was not kept aside";
  EXPECT_NE(kept_disks(victim)[0].find("web-0-"), std::string::npos);
  EXPECT_NE(slurp(lab_ + "/orchestrator.log").find("reconciling: removed web-0"),
            std::string::npos);
  // Powering on a host that is on is refused.
  auto twice = run_cli({"lab", "power-on", "--lab-dir", lab_, victim}, dir_ + "/on2.log");
  EXPECT_EQ(twice.exit_code, 3) << twice.output;
}

TEST_F(FenceLab, RealVmPartitionedHostNeverRunsWeb0TwiceAndEndsReadyWithNothingLeaked) {
  ASSERT_NO_FATAL_FAILURE(lab_up(
      "rack: {hosts: 3, fault_domains: 3, capacity: 2}\n"
      "services:\n  - {name: web, instances: 2, ud_count: 2, image: v1, memory_mib: 128,\n"
      "     endpoint: {port: 80, probe: {path: /health, interval_s: 1, unhealthy_threshold: 2}}}\n",
      "qemu"));
  ASSERT_EQ(str(lab_json_, "network"), "netns")
      << "the partition needs the rack's network namespaces";
  const std::string victim = host_of("web-0");
  ASSERT_FALSE(victim.empty());
  const std::string ns = str(agent_json(victim), "netns");
  ASSERT_FALSE(ns.empty());
  const std::vector<std::string> web0 = {std::string("guest=web-0,"), lab_ + "/"};
  ASSERT_EQ(qemu_processes_with(web0), 1);

  // Sample the QEMU processes of web-0 all along.
  std::atomic<bool> stop{false};
  std::atomic<int> most{0}, samples{0};
  std::thread sampler([&] {
    while (!stop) {
      int n = qemu_processes_with(web0);
      if (n > most) most = n;
      ++samples;
      std::this_thread::sleep_for(50ms);
    }
  });
  auto t0 = Clock::now();
  auto since = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  };
  ASSERT_EQ(std::system(("/usr/sbin/ip -n " + ns + " link set eth0 down").c_str()), 0);
  int64_t fenced_ms = -1, healed_ms = -1;
  while (since() < 12000) {
    if (fenced_ms < 0 && host_state(victim) == "Fenced") fenced_ms = since();
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_EQ(std::system(("/usr/sbin/ip -n " + ns + " link set eth0 up").c_str()), 0);
  if (fenced_ms < 0 && wait_until([&] { return host_state(victim) == "Fenced"; }, 30s))
    fenced_ms = since();
  EXPECT_GE(fenced_ms, 0) << "web-0's host was never fenced: "
                          << json::serialize(get("/v1/hosts/" + victim));
  // The healed web-0 serves: healthy on another host and UP in the load balancer.
  auto serving = [&] {
    if (host_of("web-0") == victim || !healthy("web-0")) return false;
    auto services = get("/v1/services");
    if (!services.is_array()) return false;
    for (const auto& s : services.as_array()) {
      for (const auto& b : fabriclab::json_get::arr(s, "backends")) {
        if (str(b, "instance") == "web-0" && str(b, "state") == "UP") return true;
      }
    }
    return false;
  };
  EXPECT_TRUE(wait_until(serving, 120s)) << json::serialize(get("/v1/services"));
  healed_ms = since();

  // The host's power comes back: reconciled, Ready, holding nothing, no VM left under it.
  auto on = run_cli({"lab", "power-on", "--lab-dir", lab_, victim}, dir_ + "/on.log");
  EXPECT_EQ(on.exit_code, 0) << on.output;
  EXPECT_TRUE(wait_until([&] { return host_state(victim) == "Ready"; }, 60s))
      << json::serialize(get("/v1/hosts/" + victim));
  auto ready_ms = since();
  std::this_thread::sleep_for(2s);
  stop = true;
  sampler.join();
  std::cout << "realvm: partition -> Fenced " << fenced_ms << " ms, -> healed web-0 serving "
            << healed_ms << " ms, power-on -> Ready " << ready_ms << " ms; " << samples
            << " samples, most web-0 QEMU at once " << most << std::endl;
  EXPECT_EQ(most.load(), 1) << "two QEMU processes ran web-0 at once";
  EXPECT_GE(samples.load(), 100);
  EXPECT_TRUE(fabriclab::json_get::arr(get("/v1/hosts/" + victim), "instances").empty());
  EXPECT_EQ(qemu_processes_with({lab_ + "/" + victim + "/"}), 0) << victim << " leaked a VM";
  EXPECT_EQ(kept_disks(victim).size(), 1u) << "web-0's data disk was not kept aside";
  EXPECT_EQ(qemu_processes_with(web0), 1);
}

}  // namespace
