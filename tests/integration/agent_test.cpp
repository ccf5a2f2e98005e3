// The host agent's behaviour on libvirt's test driver, with simulated guests speaking the real
// channel protocol: the state machine, operations, persistence and restart.

#include <unistd.h>

#include <fstream>

#include "agent_fixture.hpp"
#include "fabriclab/agent/host_state.hpp"

namespace fabriclab::testing {
namespace {

using agent::OperationKind;
using agent::OperationRequest;

class AgentOnTestDriver : public AgentFixture {
 protected:
  void SetUp() override {
    open_agent(false);
    ASSERT_OK(agent_->create_instance(spec("web", 0)));
    ASSERT_OK(agent_->create_instance(spec("web", 1)));
    wait_status("web-0", "Healthy", 5s);
    wait_status("web-1", "Healthy", 5s);
  }

  // Stops the agent and leaves its state file as a SIGKILL during host-os update `id` at `step`
  // leaves it, with `stopped` of web-0 and web-1 stopped by it.
  void kill_mid_update(const std::string& id, agent::UpdateStep step,
                       std::vector<std::string> stopped) {
    agent_.reset();
    auto st = agent::load_state(dir_ + "/st/state.json");
    ASSERT_OK(st);
    st->state = agent::HostState::updating;
    agent::OperationRecord op;
    op.id = id;
    op.request = {OperationKind::host_os, "host-2", false, 0};
    op.step = step;
    op.running_before = {"web-0", "web-1"};
    op.stopped = std::move(stopped);
    st->operation = op;
    ASSERT_OK(agent::save_state(dir_ + "/st/state.json", *st));
  }
};

TEST_F(AgentOnTestDriver, HostOsUpdateSwapsTheHostImageAndBringsEveryGuestBack) {
  stage_host_image("host-2");
  auto job = run_job({OperationKind::host_os, "host-2", false, 300}, 20s);
  EXPECT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  EXPECT_EQ(job["host_image_after"].as_string(), "host-2");
  ASSERT_EQ(job["guests"].as_array().size(), 2u);
  for (auto& g : job["guests"].as_array()) {
    auto& r = g.as_object();
    EXPECT_TRUE(r["ok"].as_bool()) << json::serialize(r);
    EXPECT_EQ(r["stop_method"].as_string(), "graceful");
    EXPECT_GE(r["ack_ms"].as_int64(), 0) << "the guest acked the scheduled event";
    EXPECT_LT(r["ack_ms"].as_int64(), 300) << "an ack starts maintenance before NotBefore";
    EXPECT_GE(r["counter_after"].as_int64(), r["counter_before"].as_int64());
    EXPECT_NE(r["boot_id_after"].as_string(), r["boot_id_before"].as_string()) << "a real reboot";
    EXPECT_GT(r["down_ms"].as_int64(), 0);
  }
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready");
  EXPECT_EQ(agent_->host_json()["host_image"].as_string(), "host-2");

  // The feed told the story in order: Updating with each step, then Ready.
  std::vector<std::string> steps;
  for (auto& e : events_of_type("host.state")) steps.emplace_back(e["step"].as_string());
  std::vector<std::string> want = {"Notifying",      "StoppingGuests", "SwappingImage", "Rebooting",
                                   "StartingGuests", "Verifying",      "None"};
  std::vector<std::string> got;
  for (auto& s : steps) {
    if (got.empty() || got.back() != s) got.push_back(s);
  }
  EXPECT_EQ(got, want);
}

TEST_F(AgentOnTestDriver, AnUpdatingHostTakesNoNewInstances) {
  stage_host_image("host-2");
  auto job = agent_->start_operation({OperationKind::host_os, "host-2", false, 2000});
  ASSERT_OK(job);
  auto refused = agent_->create_instance(spec("worker", 0));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.condition(), Condition::invalid_state);
  EXPECT_NE(refused.error().message.find("takes no new instances"), std::string::npos);
  auto second = agent_->start_operation({OperationKind::freeze, "", false, 0});
  EXPECT_EQ(second.condition(), Condition::invalid_state);
  ASSERT_TRUE(agent_->wait_idle(20s));
  EXPECT_OK(agent_->create_instance(spec("worker", 0)));
}

TEST_F(AgentOnTestDriver, ACorruptHostImageIsRefusedBeforeAnyGuestIsTouched) {
  stage_host_image("host-2");
  auto before = agent_->instance_json("web-0");
  ASSERT_OK(before);
  // Corrupt the staged copy in the store.
  { std::ofstream(dir_ + "/st/host-images/versions/host-2/image", std::ios::app) << "tampered"; }
  auto job = agent_->start_operation({OperationKind::host_os, "host-2", false, 0});
  ASSERT_FALSE(job.ok());
  EXPECT_NE(job.error().message.find("host-2"), std::string::npos) << job.error().message;
  auto missing = agent_->start_operation({OperationKind::host_os, "host-9", false, 0});
  EXPECT_EQ(missing.condition(), Condition::not_found) << missing.error().describe();
  // The guest goes on: three more heartbeats (100 ms apart here), all from the same boot.
  auto hb_seq = [](const json::object& i) {
    return i.at("last_heartbeat").as_object().at("seq").to_number<int64_t>();
  };
  const int64_t seq_before = hb_seq(*before);
  json::object after;
  for (auto deadline = std::chrono::steady_clock::now() + 5s;
       std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(20ms)) {
    auto now = agent_->instance_json("web-0");
    ASSERT_OK(now);
    after = *now;
    if (hb_seq(after) >= seq_before + 3) break;
  }
  ASSERT_GE(hb_seq(after), seq_before + 3)
      << "web-0 sent no three heartbeats within 5 s of the refusals: " << json::serialize(after);
  EXPECT_EQ(after.at("status").as_string(), "Healthy");
  EXPECT_EQ(after.at("last_heartbeat").as_object().at("boot_id"),
            before->at("last_heartbeat").as_object().at("boot_id"))
      << "no guest was restarted";
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready");
}

TEST_F(AgentOnTestDriver, GuestOsUpdateBootsTheNewImageAndRollsBackABrokenOne) {
  auto job = run_job({OperationKind::guest_os, "v2", false, 100}, 20s);
  EXPECT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  for (auto& g : job["guests"].as_array()) {
    EXPECT_EQ(g.as_object().at("image_before").as_string(), "v1");
    EXPECT_EQ(g.as_object().at("image_after").as_string(), "v2");
  }
  EXPECT_EQ(agent_->instance_json("web-0")->at("image").as_string(), "v2");

  auto broken = run_job({OperationKind::guest_os, "v3-broken", false, 100}, 30s);
  EXPECT_EQ(broken["status"].as_string(), "failed");
  std::string error(broken["error"].as_string());
  EXPECT_NE(error.find("v3-broken"), std::string::npos) << error;
  EXPECT_NE(error.find("rolled back to v2"), std::string::npos) << error;
  auto web0 = wait_status("web-0", "Healthy", 5s);
  EXPECT_EQ(web0["image"].as_string(), "v2") << "back on its previous image";
  EXPECT_EQ(web0["last_heartbeat"].as_object()["image"].as_string(), "v2");
  EXPECT_FALSE(events_of_type("instance.rolled_back").empty());
}

TEST_F(AgentOnTestDriver, MemoryPreservingUpdateAndFreezeKeepTheGuestsBoot) {
  stage_host_image("host-2");
  auto job = run_job({OperationKind::host_os, "host-2", true, 0}, 20s);
  EXPECT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  for (auto& g : job["guests"].as_array()) {
    auto& r = g.as_object();
    EXPECT_EQ(r.at("stop_method").as_string(), "saved");
    EXPECT_EQ(r.at("boot_id_after"), r.at("boot_id_before")) << "a pause, not a reboot";
    EXPECT_GE(r.at("counter_after").as_int64(), r.at("counter_before").as_int64());
  }
  OperationRequest freeze{OperationKind::freeze, "", false, 0, 500};
  auto fr = run_job(freeze, 20s);
  EXPECT_EQ(fr["status"].as_string(), "succeeded") << json::serialize(fr);
  for (auto& g : fr["guests"].as_array()) {
    auto& r = g.as_object();
    EXPECT_GE(r.at("pause_ms").as_int64(), 500) << "the guest saw the freeze";
    EXPECT_LT(r.at("pause_ms").as_int64(), 10000);
    EXPECT_EQ(r.at("boot_id_after"), r.at("boot_id_before"));
  }
}

TEST_F(AgentOnTestDriver, ARestartedAgentRestoresItsInstancesAndState) {
  stage_host_image("host-2");
  ASSERT_EQ(run_job({OperationKind::host_os, "host-2", false, 0}, 20s)["status"].as_string(),
            "succeeded");
  ASSERT_OK(agent_->stop_instance("web-1"));
  agent_.reset();  // the test driver forgets every domain with its connection
  open_agent(false);
  auto host = agent_->host_json();
  EXPECT_EQ(host["state"].as_string(), "Ready");
  EXPECT_EQ(host["host_image"].as_string(), "host-2");
  EXPECT_EQ(host["instances"].to_number<int64_t>(), 2);
  wait_status("web-0", "Healthy", 5s);
  EXPECT_EQ(agent_->instance_json("web-1")->at("status").as_string(), "Stopped")
      << "an instance the fabric stopped stays stopped";
  EXPECT_EQ(events_of_type("instance.redefined").size(), 2u);
}

TEST_F(AgentOnTestDriver, AnAgentKilledWhileStoppingGuestsRollsBackAndRestartsThem) {
  // A SIGKILL during StoppingGuests: web-0 already stopped.
  kill_mid_update("host-a-job-7", agent::UpdateStep::stopping_guests, {"web-0"});
  open_agent(false);
  ASSERT_TRUE(agent_->wait_idle(20s));
  auto job = agent_->job_json("host-a-job-7");
  ASSERT_OK(job);
  EXPECT_EQ(job->at("status").as_string(), "cancelled") << json::serialize(*job);
  EXPECT_NE(std::string(job->at("error").as_string()).find("rolled back"), std::string::npos);
  wait_status("web-0", "Healthy", 5s);
  wait_status("web-1", "Healthy", 5s);
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready")
      << json::serialize(agent_->instances_json());
}

// Powered on after a fence (--hold-guests) in the middle of a host-os update that had already
// started its guests again: nothing is resumed and no guest starts; the orchestrator may have
// placed them elsewhere meanwhile, and it reconciles the host first.
TEST_F(AgentOnTestDriver, AHostPoweredOnHoldingItsGuestsDoesNotResumeItsOperation) {
  stage_host_image("host-2");
  kill_mid_update("host-a-job-9", agent::UpdateStep::starting_guests, {"web-0", "web-1"});
  agent::AgentOptions held;
  held.hold_guests = true;
  open_agent(false, held);
  ASSERT_TRUE(agent_->wait_idle(20s));
  auto job = agent_->job_json("host-a-job-9");
  ASSERT_OK(job);
  EXPECT_EQ(job->at("status").as_string(), "cancelled") << json::serialize(*job);
  EXPECT_NE(std::string(job->at("error").as_string()).find("no guest started"), std::string::npos)
      << json::serialize(*job);
  std::this_thread::sleep_for(500ms);  // five heartbeat periods: a started guest would show
  for (const char* name : {"web-0", "web-1"}) {
    EXPECT_EQ(agent_->instance_json(name)->at("status").as_string(), "Stopped") << name;
  }
  EXPECT_TRUE(events_of_type("instance.restarted").empty());
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready");
}

TEST(AgentState, SaveAndLoadRoundTripAndBadFilesNameTheField) {
  auto dir = testbed::make_short_tmpdir("fl-st-");
  ASSERT_TRUE(dir.ok());
  agent::PersistedState s;
  s.host_id = "h1";
  s.state = agent::HostState::unhealthy;
  s.host_image = "host-3";
  s.instances.push_back({"web-0", {"web", 0, 0, 0, "v1"}, 128, true, "normal"});
  ASSERT_OK(agent::save_state(*dir + "/state.json", s));
  auto back = agent::load_state(*dir + "/state.json");
  ASSERT_OK(back);
  EXPECT_EQ(back->state, agent::HostState::unhealthy);
  EXPECT_EQ(back->instances.at(0).meta, s.instances.at(0).meta);
  std::ofstream(*dir + "/bad.json") << R"({"host_id":"h1","state":"Sleeping","instances":[]})";
  auto bad = agent::load_state(*dir + "/bad.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("state"), std::string::npos) << bad.error().message;
  EXPECT_EQ(agent::load_state(*dir + "/none.json").condition(), Condition::not_found);
  std::filesystem::remove_all(*dir);
}

TEST(AgentState, DataCheckProbeAndOverlayPersistAndBadOnesNameTheField) {
  auto dir = testbed::make_short_tmpdir("fl-st-");
  ASSERT_TRUE(dir.ok());
  agent::PersistedState s;
  s.host_id = "h1";
  agent::InstanceRecord r{"web-0", {"web", 0, 0, 0, "debian-v1"}, 384, true, "normal"};
  r.data_check = agent::DataCheck{{"/bin/cat", "/data/counter"}, "equal"};
  r.probe = agent::AppProbe{8080, "/healthz"};
  r.os_disk = "/x/web-0.d/os-debian-v1-3.qcow2";
  r.os_gen = 3;
  s.instances.push_back(r);
  ASSERT_OK(agent::save_state(*dir + "/state.json", s));
  auto back = agent::load_state(*dir + "/state.json");
  ASSERT_OK(back);
  const auto& b = back->instances.at(0);
  EXPECT_EQ(b.data_check, r.data_check);
  EXPECT_EQ(b.probe, r.probe);
  EXPECT_EQ(b.os_disk, r.os_disk);
  EXPECT_EQ(b.os_gen, 3);
  std::filesystem::remove_all(*dir);

  auto spec = [](const char* text) {
    return agent::instance_spec_from_json(json::parse(text).as_object());
  };
  auto ok = spec(R"({"service":"web","index":0,"ud":0,"fd":0,"image":"v1",
                    "data_check":{"command":["/bin/cat","/data/counter"]},"probe":{"port":80}})");
  ASSERT_OK(ok);
  EXPECT_EQ(ok->data_check->rule, "not_less");
  EXPECT_EQ(ok->probe.path, "/health");
  const std::pair<const char*, const char*> bad[] = {
      {R"("data_check":{"command":[]})", "data_check.command must be a list of 1..16"},
      {R"("data_check":{"command":["cat","/data/counter"]})",
       "data_check.command[0] must be an absolute path"},
      {R"("data_check":{"command":["/bin/cat"],"rule":"greater"})",
       "data_check.rule must be equal or not_less"},
      {R"("data_check":{"command":["/bin/cat"],"when":"now"})", "unknown field 'when'"},
      {R"("probe":{"port":0})", "probe.port must be an integer in 1..65535"},
      {R"("probe":{"port":80,"path":"health"})", "probe.path must be a path starting with '/'"},
  };
  for (const auto& [field, message] : bad) {
    auto r2 = spec(
        (std::string(R"({"service":"web","index":0,"ud":0,"fd":0,"image":"v1",)") + field + "}")
            .c_str());
    ASSERT_FALSE(r2.ok()) << field;
    EXPECT_NE(r2.error().message.find(message), std::string::npos) << r2.error().message;
  }
}

class AgentDisks : public AgentFixture {};

TEST_F(AgentDisks, AnInstanceThatWouldEatTheDiskReserveIsRefusedBeforeAnythingIsMade) {
  agent::AgentOptions o;
  o.disk_reserve_mib = 1ull << 30;  // a PiB must stay free: no file system here has that
  open_agent(false, o);
  auto r = agent_->create_instance(spec("web", 0));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::invalid_state);
  EXPECT_NE(r.error().message.find("not enough disk space"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("--disk-reserve-mib"), std::string::npos) << r.error().message;
  EXPECT_TRUE(agent_->instances_json().empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/st/vm"))
      << "no data disk, overlay or kernel copy left behind";
}

TEST_F(AgentDisks, EveryInstanceBootsFromItsOwnKernelAndInitrdCopy) {
  open_agent(false);
  ASSERT_OK(agent_->create_instance(spec("web", 0)));
  ASSERT_OK(agent_->create_instance(spec("web", 1)));
  for (const char* name : {"web-0", "web-1"}) {
    const std::string boot = dir_ + "/st/vm/" + std::string(name) + ".d/boot-v1";
    EXPECT_TRUE(std::filesystem::is_regular_file(boot + "/vmlinuz")) << boot;
    EXPECT_TRUE(std::filesystem::is_regular_file(boot + "/initrd.img")) << boot;
    auto xml = agent_->domain_xml(name);
    ASSERT_OK(xml);
    EXPECT_NE(xml->find("<kernel>" + boot + "/vmlinuz</kernel>"), std::string::npos) << *xml;
    EXPECT_NE(xml->find("org.qemu.guest_agent.0"), std::string::npos)
        << "every guest gets the guest agent channel";
  }
  ASSERT_OK(agent_->delete_instance("web-0"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/st/vm/web-0.d"));
}

}  // namespace
}  // namespace fabriclab::testing
