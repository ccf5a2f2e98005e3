// The agent's fault injection (HostAgent::inject_fault, docs/faults.md) on libvirt's test driver:
// off unless asked for, every bad body refused naming the field, and each fault doing what a
// drill's schedule relies on: a hung guest is destroyed after its stop timeout (once: a fresh boot
// answers the power button again), a crashed guest is seen failed and started again by the
// agent's monitor, a slow boot starts the VM late.

#include <chrono>

#include "agent_fixture.hpp"

namespace fabriclab::testing {
namespace {

class AgentFaults : public AgentFixture {
 protected:
  void open(bool injection) {
    agent::AgentOptions o;
    o.fault_injection = injection;
    o.stop_timeout = 600ms;
    open_agent(false, o);
  }
  void create_healthy(const std::string& service, int index) {
    ASSERT_TRUE(agent_->create_instance(spec(service, index)).ok());
    wait_status(service + "-" + std::to_string(index), "Healthy", 20s);
  }
  Result<json::object> inject(json::object body) { return agent_->inject_fault(body); }
  std::string stop_method_of_last_stop(const std::string& name) {
    std::string m;
    for (auto& e : events_of_type("instance.state")) {
      if (e["name"].as_string() == name && e.contains("stop_method"))
        m = std::string(e["stop_method"].as_string());
    }
    return m;
  }
};

TEST_F(AgentFaults, AreRefusedUnlessTheAgentWasStartedWithFaultInjection) {
  open(false);
  create_healthy("web", 0);
  EXPECT_FALSE(agent_->fault_injection());
  auto r = inject({{"kind", "guest-crash"}, {"instance", "web-0"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().condition, Condition::unsupported);
  EXPECT_EQ(wait_status("web-0", "Healthy", 1s)["status"].as_string(), "Healthy");
}

TEST_F(AgentFaults, BadBodiesAreRefusedNamingTheField) {
  open(true);
  create_healthy("web", 0);
  for (auto [body, why] : std::vector<std::pair<json::object, std::string>>{
           {{{"kind", "unplug"}, {"instance", "web-0"}},
            "field 'kind' must be guest-crash, guest-hang or slow-boot"},
           {{{"kind", "guest-hang"}}, "field 'instance' is required"},
           {{{"kind", "guest-hang"}, {"instance", "web-0"}, {"when", 1}}, "unknown field 'when'"},
           {{{"kind", "slow-boot"}, {"instance", "web-0"}},
            "field 'delay_ms' is required for slow-boot"},
           {{{"kind", "slow-boot"}, {"instance", "web-0"}, {"delay_ms", 0}}, "delay_ms"},
           {{{"kind", "slow-boot"}, {"instance", "web-0"}, {"delay_ms", 600001}}, "delay_ms"},
           {{{"kind", "guest-crash"}, {"instance", "web-0"}, {"delay_ms", 5}},
            "field 'delay_ms' applies to slow-boot only"},
       }) {
    auto r = inject(body);
    ASSERT_FALSE(r.ok()) << json::serialize(body);
    EXPECT_NE(r.error().message.find(why), std::string::npos)
        << json::serialize(body) << " -> " << r.error().message;
  }
  auto r = inject({{"kind", "guest-hang"}, {"instance", "web-9"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().condition, Condition::not_found);
}

TEST_F(AgentFaults, AHungGuestIsDestroyedAfterItsStopTimeoutUntilItsNextBoot) {
  open(true);
  create_healthy("web", 0);
  ASSERT_TRUE(inject({{"kind", "guest-hang"}, {"instance", "web-0"}}).ok());
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_OK(agent_->stop_instance("web-0"));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 600ms);  // the power button went unanswered
  EXPECT_EQ(stop_method_of_last_stop("web-0"), "destroyed");
  ASSERT_OK(agent_->start_instance("web-0"));
  wait_status("web-0", "Healthy", 20s);
  ASSERT_OK(agent_->stop_instance("web-0"));
  EXPECT_EQ(stop_method_of_last_stop("web-0"), "graceful");
  EXPECT_EQ(events_of_type("instance.fault").size(), 1u);
}

TEST_F(AgentFaults, ACrashedGuestIsSeenFailedAndStartedAgainByTheMonitor) {
  open(true);
  create_healthy("web", 0);
  ASSERT_TRUE(inject({{"kind", "guest-crash"}, {"instance", "web-0"}}).ok());
  wait_status("web-0", "Failed", 10s);
  // Not Healthy again on its last heartbeat before the crash: only once the monitor started it.
  wait_status("web-0", "Healthy", 30s);
  uint64_t restarted_seq = 0, healthy_seq = 0, failed_seq = 0;
  for (auto& e : feed_->since(0)) {
    if (e["type"].as_string() == "instance.restarted")
      restarted_seq = e["seq"].to_number<uint64_t>();
    if (e["type"].as_string() == "instance.state" && e["status"].as_string() == "Failed")
      failed_seq = e["seq"].to_number<uint64_t>();
    if (e["type"].as_string() == "instance.state" && e["status"].as_string() == "Healthy" &&
        failed_seq) {
      if (!healthy_seq) healthy_seq = e["seq"].to_number<uint64_t>();
    }
  }
  ASSERT_GT(restarted_seq, 0u) << "no instance.restarted";
  EXPECT_LT(restarted_seq, healthy_seq) << "Healthy again before the monitor started it";
}

TEST_F(AgentFaults, ASlowBootStartsTheVmLateOnce) {
  open(true);
  create_healthy("web", 0);
  ASSERT_OK(agent_->stop_instance("web-0"));
  ASSERT_TRUE(inject({{"kind", "slow-boot"}, {"instance", "web-0"}, {"delay_ms", 900}}).ok());
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_OK(agent_->start_instance("web-0"));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);
  wait_status("web-0", "Healthy", 20s);
  ASSERT_OK(agent_->stop_instance("web-0"));
  t0 = std::chrono::steady_clock::now();
  ASSERT_OK(agent_->start_instance("web-0"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 900ms);  // taken by the first boot
}

}  // namespace
}  // namespace fabriclab::testing
