// The host agent on real QEMU guests (label `realvm`): the maintenance operations end to end, and
// an agent process SIGKILLed in the middle of one.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "agent_fixture.hpp"
#include "agent_process.hpp"
#include "fabriclab/common/http_client.hpp"
#include "wait_until.hpp"

namespace fabriclab::testing {
namespace {

using agent::OperationKind;

constexpr auto kBoot = 120s;

class AgentOnRealVms : public AgentFixture {
 protected:
  void SetUp() override {
    if (::access("/usr/bin/qemu-system-x86_64", X_OK) != 0) {
      GTEST_SKIP() << "QEMU cannot run here: /usr/bin/qemu-system-x86_64 is missing";
    }
    agent::AgentOptions o;
    o.stop_timeout = 10s;
    o.boot_timeout = 90s;
    open_agent(true, o);
  }
  void TearDown() override {
    delete_instances();
    AgentFixture::TearDown();
  }
};

TEST_F(AgentOnRealVms, HostOsUpdateOfTwoRunningGuestsBringsBothBackWithTheirData) {
  ASSERT_OK(agent_->create_instance(spec("web", 0)));
  ASSERT_OK(agent_->create_instance(spec("web", 1)));
  wait_status("web-0", "Healthy", kBoot);
  wait_status("web-1", "Healthy", kBoot);
  stage_host_image("host-2");
  auto job = run_job({OperationKind::host_os, "host-2", false, 3000}, 300s);
  ASSERT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  EXPECT_EQ(job["host_image_before"].as_string(), "");
  EXPECT_EQ(job["host_image_after"].as_string(), "host-2");
  for (auto& g : job["guests"].as_array()) {
    auto& r = g.as_object();
    EXPECT_TRUE(r.at("ok").as_bool()) << json::serialize(r);
    EXPECT_EQ(r.at("stop_method").as_string(), "graceful");
    EXPECT_GE(r.at("ack_ms").as_int64(), 0) << "the guest program acked the Reboot event";
    EXPECT_GE(r.at("counter_after").as_int64(), r.at("counter_before").as_int64());
    EXPECT_NE(r.at("boot_id_after"), r.at("boot_id_before"));
    EXPECT_GT(r.at("down_ms").as_int64(), 0);
  }
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready");
  EXPECT_EQ(agent_->host_json()["host_image"].as_string(), "host-2");
  wait_status("web-0", "Healthy", 10s);
  wait_status("web-1", "Healthy", 10s);
}

TEST_F(AgentOnRealVms, GuestOsUpdateToV2AndABrokenImageIsRolledBack) {
  ASSERT_OK(agent_->create_instance(spec("worker", 0)));
  wait_status("worker-0", "Healthy", kBoot);
  auto job = run_job({OperationKind::guest_os, "v2", false, 1000}, 300s);
  ASSERT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  auto& r = job["guests"].as_array().at(0).as_object();
  EXPECT_EQ(r.at("image_before").as_string(), "v1");
  EXPECT_EQ(r.at("image_after").as_string(), "v2");
  EXPECT_GE(r.at("counter_after").as_int64(), r.at("counter_before").as_int64())
      << "data disk kept";

  auto broken = run_job({OperationKind::guest_os, "v3-broken", false, 0}, 300s);
  EXPECT_EQ(broken["status"].as_string(), "failed") << json::serialize(broken);
  std::string error(broken["error"].as_string());
  EXPECT_NE(error.find("app failed to start"), std::string::npos) << error;
  EXPECT_NE(error.find("rolled back to v2"), std::string::npos) << error;
  auto w = wait_status("worker-0", "Healthy", kBoot);
  EXPECT_EQ(w["last_heartbeat"].as_object()["image"].as_string(), "v2");
}

TEST_F(AgentOnRealVms, MemoryPreservingHostUpdateAndFreezeKeepTheGuestsBoot) {
  ASSERT_OK(agent_->create_instance(spec("web", 0)));
  wait_status("web-0", "Healthy", kBoot);
  stage_host_image("host-2");
  auto job = run_job({OperationKind::host_os, "host-2", true, 0}, 300s);
  ASSERT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  auto& r = job["guests"].as_array().at(0).as_object();
  EXPECT_EQ(r.at("stop_method").as_string(), "saved");
  EXPECT_EQ(r.at("boot_id_after"), r.at("boot_id_before")) << "a pause, not a reboot";
  EXPECT_GE(r.at("counter_after").as_int64(), r.at("counter_before").as_int64());
  EXPECT_GT(r.at("down_ms").as_int64(), 0) << "the pause the guest saw";

  // A freeze: suspended and resumed without a host reboot; the guest sees a pause of about the
  // freeze (Azure documents under 10 s today).
  wait_status("web-0", "Healthy", 30s);
  auto fr = run_job({OperationKind::freeze, "", false, 0, 1500}, 120s);
  ASSERT_EQ(fr["status"].as_string(), "succeeded") << json::serialize(fr);
  auto& f = fr["guests"].as_array().at(0).as_object();
  EXPECT_GE(f.at("pause_ms").as_int64(), 1500);
  EXPECT_LT(f.at("pause_ms").as_int64(), 10000);
  EXPECT_EQ(f.at("boot_id_after"), f.at("boot_id_before"));
}

// ---------------------------------------------------------------------------------------------
// The agent as a separate process, SIGKILLed during StoppingGuests.

AgentProcess spawn_agent(const std::string& dir) {
  return AgentProcess::spawn(
      {FABRICLAB_AGENT_BIN, "--host-id", "host-k", "--state-dir", dir + "/st", "--guest-images",
       testbed::default_images_dir(), "--port", "0", "--control-token-file", dir + "/ctl",
       "--stop-timeout-ms", "10000", "--log-level", "warn"},
      dir + "/agent.out");
}

json::value get(uint16_t port, const std::string& target) {
  auto r = http::request("127.0.0.1", port, "GET", target, {}, "ctl");
  if (!r.ok() || r->status != 200) return nullptr;
  return json::parse(r->body);
}

TEST(AgentProcessOnRealVms, KilledDuringStoppingGuestsStillEndsWithBothGuestsRunning) {
  if (::access("/usr/bin/qemu-system-x86_64", X_OK) != 0) GTEST_SKIP() << "QEMU is missing";
  auto dir = testbed::make_short_tmpdir("flk-");
  ASSERT_TRUE(dir.ok());
  std::ofstream(*dir + "/ctl") << "ctl";
  auto a = spawn_agent(*dir);
  ASSERT_GT(a.port, 0) << "the agent did not start" << a.log_tail();
  for (int i = 0; i < 2; ++i) {
    auto r = http::request("127.0.0.1", a.port, "POST", "/v1/instances",
                           R"({"service":"web","index":)" + std::to_string(i) + R"(,"ud":)" +
                               std::to_string(i) + R"(,"fd":0,"image":"v1"})",
                           "ctl", 30s);
    ASSERT_TRUE(r.ok() && r->status == 201) << (r.ok() ? r->body : r.error().describe());
  }
  auto all_healthy = [](const json::value& v) {
    if (!v.is_array() || v.as_array().size() != 2) return false;
    for (auto& i : v.as_array()) {
      if (i.as_object().at("status").as_string() != "Healthy") return false;
    }
    return true;
  };
  ASSERT_TRUE(wait_until([&] { return all_healthy(get(a.port, "/v1/instances")); }, 150s));
  const std::string img = *dir + "/h2.img";
  auto sha = agent::write_synthetic_host_image(img, "host-2");
  ASSERT_TRUE(sha.ok());
  auto staged = http::request(
      "127.0.0.1", a.port, "POST", "/v1/images/host",
      R"({"version":"host-2","path":")" + img + R"(","sha256":")" + *sha + R"("})", "ctl");
  ASSERT_TRUE(staged.ok() && staged->status == 201) << (staged.ok() ? staged->body : "");
  auto op = http::request("127.0.0.1", a.port, "POST", "/v1/operations",
                          R"({"kind":"host-os","target":"host-2","notice_ms":0})", "ctl");
  ASSERT_TRUE(op.ok() && op->status == 202) << (op.ok() ? op->body : "");
  std::string id(json::parse(op->body).as_object().at("id").as_string());
  ASSERT_TRUE(wait_until(
      [&] {
        auto h = get(a.port, "/v1/host");
        return h.is_object() && h.as_object().at("step").as_string() == "StoppingGuests";
      },
      60s));
  a.kill9();

  auto b = spawn_agent(*dir);
  ASSERT_GT(b.port, 0) << "the restarted agent did not start" << b.log_tail();
  ASSERT_TRUE(wait_until(
      [&] {
        auto j = get(b.port, "/v1/operations/" + id);
        return j.is_object() && j.as_object().at("status").as_string() != "running";
      },
      300s));
  auto job = get(b.port, "/v1/operations/" + id).as_object();
  EXPECT_EQ(job.at("status").as_string(), "cancelled") << json::serialize(job);
  EXPECT_NE(std::string(job.at("error").as_string()).find("rolled back"), std::string::npos);
  EXPECT_TRUE(wait_until([&] { return all_healthy(get(b.port, "/v1/instances")); }, 150s))
      << json::serialize(get(b.port, "/v1/instances"));
  EXPECT_EQ(get(b.port, "/v1/host").as_object().at("state").as_string(), "Ready");
  for (const char* n : {"web-0", "web-1"}) {
    (void)http::request("127.0.0.1", b.port, "DELETE", std::string("/v1/instances/") + n, {}, "ctl",
                        30s);
  }
  std::filesystem::remove_all(*dir);
}

}  // namespace
}  // namespace fabriclab::testing
