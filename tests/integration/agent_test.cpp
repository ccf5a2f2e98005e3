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
  std::vector<std::string> want = {"Notifying", "StoppingGuests", "SwappingImage", "Rebooting",
                                   "StartingGuests", "Verifying", "None"};
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
  {
    std::ofstream(dir_ + "/st/host-images/versions/host-2/image", std::ios::app) << "tampered";
  }
  auto job = agent_->start_operation({OperationKind::host_os, "host-2", false, 0});
  ASSERT_FALSE(job.ok());
  EXPECT_NE(job.error().message.find("host-2"), std::string::npos) << job.error().message;
  auto missing = agent_->start_operation({OperationKind::host_os, "host-9", false, 0});
  EXPECT_EQ(missing.condition(), Condition::not_found) << missing.error().describe();
  std::this_thread::sleep_for(300ms);
  auto after = agent_->instance_json("web-0");
  EXPECT_EQ(after->at("status").as_string(), "Healthy");
  EXPECT_EQ(after->at("last_heartbeat").as_object().at("boot_id"),
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
  ASSERT_EQ(run_job({OperationKind::host_os, "host-2", false, 0}, 20s)["status"].as_string(), "succeeded");
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
  agent_.reset();
  // The state file as a SIGKILL during StoppingGuests leaves it: web-0 already stopped.
  auto st = agent::load_state(dir_ + "/st/state.json");
  ASSERT_OK(st);
  st->state = agent::HostState::updating;
  agent::OperationRecord op;
  op.id = "host-a-job-7";
  op.request = {OperationKind::host_os, "host-2", false, 0};
  op.step = agent::UpdateStep::stopping_guests;
  op.running_before = {"web-0", "web-1"};
  op.stopped = {"web-0"};
  st->operation = op;
  ASSERT_OK(agent::save_state(dir_ + "/st/state.json", *st));

  open_agent(false);
  ASSERT_TRUE(agent_->wait_idle(20s));
  auto job = agent_->job_json("host-a-job-7");
  ASSERT_OK(job);
  EXPECT_EQ(job->at("status").as_string(), "cancelled") << json::serialize(*job);
  EXPECT_NE(std::string(job->at("error").as_string()).find("rolled back"), std::string::npos);
  wait_status("web-0", "Healthy", 5s);
  wait_status("web-1", "Healthy", 5s);
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready") << json::serialize(agent_->instances_json());
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

}  // namespace
}  // namespace fabriclab::testing
