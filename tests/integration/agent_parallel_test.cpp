// A host with several guests on libvirt's test driver: an operation stops and starts them in
// parallel (AgentOptions::parallel_guests), so a guest's down time is its own stop and boot and
// not its neighbours'; each guest keeps its notice, its ack and its report, a cancel stops
// beginning new stops, and the rollback restarts only the guests that were stopped.
//
// The test driver powers a domain off at once; AgentOptions::sim_power_off gives each simulated
// guest a power-off time so the overlap (or its absence) shows.

#include <map>
#include <set>

#include "agent_fixture.hpp"
#include "wait_until.hpp"

namespace fabriclab::testing {
namespace {

using agent::OperationKind;
using Clock = std::chrono::steady_clock;

constexpr auto kPowerOff = 1500ms;

class AgentWithFourGuests : public AgentFixture {
 protected:
  void open(int parallel) {
    agent::AgentOptions o;
    o.parallel_guests = parallel;
    o.sim_power_off = kPowerOff;
    open_agent(false, o);
    for (int i = 0; i < 4; ++i) ASSERT_OK(agent_->create_instance(spec("web", i)));
    for (int i = 0; i < 4; ++i) wait_status("web-" + std::to_string(i), "Healthy", 5s);
    stage_host_image("host-2");
  }

  // Opens the agent with `parallel` and updates the host OS of its four guests: the job, which
  // must succeed, and in `took` how long it ran.
  json::object update_host(int parallel, Clock::duration& took) {
    open(parallel);
    const auto t0 = Clock::now();
    auto job = run_job({OperationKind::host_os, "host-2", false, 300}, 30s);
    took = Clock::now() - t0;
    EXPECT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
    return job;
  }

  // The Stopping / Stopped instance.state events in feed order: (name, true for Stopping).
  std::vector<std::pair<std::string, bool>> stop_events() {
    std::vector<std::pair<std::string, bool>> out;
    for (auto& e : events_of_type("instance.state")) {
      const std::string status(e["status"].as_string());
      // The monitor also reports the health change of a stopping guest ("healthy": false).
      if (status == "Stopping" && !e.contains("healthy"))
        out.emplace_back(std::string(e["name"].as_string()), true);
      if (status == "Stopped" && e.contains("stop_method"))
        out.emplace_back(std::string(e["name"].as_string()), false);
    }
    return out;
  }

  // The most guests between their Stopping and their Stopped at one time.
  int most_stopping_at_once() {
    int now = 0, most = 0;
    for (auto& [name, stopping] : stop_events()) {
      now += stopping ? 1 : -1;
      most = std::max(most, now);
    }
    return most;
  }

  std::string boot_id(const std::string& name) {
    auto i = agent_->instance_json(name);
    if (!i.ok() || !i->contains("last_heartbeat")) return "";
    return std::string(i->at("last_heartbeat").as_object().at("boot_id").as_string());
  }
};

TEST_F(AgentWithFourGuests, AHostOsUpdateStopsFourGuestsInAboutOneGuestsStopTime) {
  Clock::duration took{};
  auto job = update_host(8, took);
  ASSERT_EQ(job["guests"].as_array().size(), 4u);
  for (auto& g : job["guests"].as_array()) {
    auto& r = g.as_object();
    EXPECT_TRUE(r["ok"].as_bool()) << json::serialize(r);
    EXPECT_GE(r["ack_ms"].as_int64(), 0)
        << "each guest acked the one scheduled event: " << json::serialize(r);
    EXPECT_EQ(r["stop_method"].as_string(), "graceful");
    EXPECT_GE(r["stop_ms"].as_int64(), 0);
    EXPECT_NE(r["boot_id_after"].as_string(), r["boot_id_before"].as_string());
    EXPECT_GT(r["down_ms"].as_int64(), 0);
    // Its own power-off and boot, not three neighbours' power-offs too.
    EXPECT_LT(r["down_ms"].as_int64(), 3 * kPowerOff.count()) << json::serialize(r);
  }
  EXPECT_EQ(most_stopping_at_once(), 4) << "all four guests were stopping at the same time";
  // One after another the stops alone would take 4 x 1.5 s.
  EXPECT_LT(took, 3 * kPowerOff)
      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready");
}

TEST_F(AgentWithFourGuests, OneGuestAtATimeIsStillThereAndTakesFourStopTimes) {
  // The control for the test above: with parallel_guests 1 the stops do not overlap.
  Clock::duration took{};
  update_host(1, took);
  EXPECT_EQ(most_stopping_at_once(), 1);
  EXPECT_GE(took, 4 * kPowerOff);
}

TEST_F(AgentWithFourGuests, ACancelWhileTwoStopStopsNoMoreAndRestartsOnlyThoseTwo) {
  open(2);
  std::map<std::string, std::string> before;
  for (int i = 0; i < 4; ++i)
    before["web-" + std::to_string(i)] = boot_id("web-" + std::to_string(i));
  const auto image_before = agent_->host_json()["host_image"];
  auto job = agent_->start_operation({OperationKind::host_os, "host-2", false, 0});
  ASSERT_OK(job);
  const std::string id(job->at("id").as_string());
  // Cancel once the first two are stopping (they take 1.5 s each to power off).
  wait_until([&] { return stop_events().size() >= 2; }, 5s, 10ms);
  ASSERT_EQ(stop_events().size(), 2u)
      << "two guests stopping at once (the bound), none stopped yet";
  ASSERT_OK(agent_->cancel(id));
  ASSERT_TRUE(agent_->wait_idle(30s));
  auto done = agent_->job_json(id);
  ASSERT_OK(done);
  EXPECT_EQ(done->at("status").as_string(), "cancelled") << json::serialize(*done);
  EXPECT_NE(std::string(done->at("error").as_string()).find("cancelled while stopping guests"),
            std::string::npos)
      << json::serialize(*done);
  EXPECT_EQ(most_stopping_at_once(), 2);
  std::set<std::string> stopped;
  for (auto& [name, stopping] : stop_events()) {
    if (stopping) stopped.insert(name);
  }
  EXPECT_EQ(stopped, (std::set<std::string>{"web-0", "web-1"}))
      << "the stops begun before the cancel, no more";
  for (int i = 0; i < 4; ++i) {
    const std::string name = "web-" + std::to_string(i);
    wait_status(name, "Healthy", 5s);
    if (stopped.count(name)) {
      EXPECT_NE(boot_id(name), before[name])
          << name << " was stopped and started again by the rollback";
    } else {
      EXPECT_EQ(boot_id(name), before[name]) << name << " was never stopped: it kept running";
    }
  }
  EXPECT_EQ(agent_->host_json()["state"].as_string(), "Ready");
  EXPECT_EQ(agent_->host_json()["host_image"], image_before) << "nothing was swapped";
}

TEST(AgentOptionsCheck, ParallelGuestsOutsideItsRangeIsRefusedNamingIt) {
  auto dir = testbed::make_short_tmpdir("flp-");
  ASSERT_OK(dir);
  agent::AgentOptions o;
  o.state_dir = *dir + "/st";
  o.hypervisor_uri = "test:///default";
  o.parallel_guests = 0;
  auto a = agent::HostAgent::create(o, std::make_shared<EventFeed>([] { return json::object{}; }));
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message.find("parallel_guests"), std::string::npos) << a.error().message;
  std::filesystem::remove_all(*dir);
}

}  // namespace
}  // namespace fabriclab::testing
