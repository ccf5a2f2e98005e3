// The walk's gate before a batch, end to end (orchestrator + two agents on libvirt's test driver):
// a batch does not take an instance down while another instance of its service, on a host of a
// later batch, is not serving. A guest that brings its own image can be up for its agent long
// before its app is up for the load balancer; the walk must not count on it meanwhile.

#include <gtest/gtest.h>

#include <string>

#include "orchestrator_stack.hpp"

namespace fabriclab::testing {
namespace {

class WalkGate : public OrchestratorStack {
 protected:
  // POST to an agent's own API (the test stops a guest behind the orchestrator's back).
  int agent_post(const std::string& id, const std::string& target) {
    const Child& a = agent(id);
    auto colon = a.address.rfind(':');
    auto r = http::request(a.address.substr(0, colon), a.port, "POST", target, "{}", kToken, 10s);
    return r.ok() ? r->status : -1;
  }
};

TEST_F(WalkGate, ABatchWaitsForTheOtherInstancesOfItsServicesAndFailsWithoutTakingItsOwnDown) {
  ASSERT_NO_FATAL_FAILURE(start_agents(2, 2));
  ASSERT_NO_FATAL_FAILURE(start_orchestrator());
  ASSERT_NO_FATAL_FAILURE(register_agents());
  ASSERT_NO_FATAL_FAILURE(create_service("web", 2, 2));
  ASSERT_TRUE(wait_until([&] { return all_instances_healthy(); }, 60s))
      << json::serialize(get("/v1/instances"));

  // Paused, so the test knows the batches before anything runs.
  json::object body{{"kind", "host-os"},   {"target", "host-v2"}, {"time_scale", 0.001},
                    {"recovery_s", 1},     {"notice_s", 900},     {"healthy_timeout_s", 3},
                    {"start_paused", true}};
  auto created = post("/v1/drills", body);
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string id = jstr(parse_or_null(created.body), "id");
  const json::value d = get("/v1/drills/" + id);
  const json::value batches = jarr(d, "batches");
  ASSERT_EQ(batches.as_array().size(), 2u) << json::serialize(d);
  const json::value first_hosts = jarr(batches.as_array().at(0), "hosts");
  const json::value second_hosts = jarr(batches.as_array().at(1), "hosts");
  const std::string first(first_hosts.as_array().at(0).as_string());
  const std::string second(second_hosts.as_array().at(0).as_string());

  // The instance on the second batch's host stops serving.
  std::string other;
  const json::value instances = get("/v1/instances");
  for (const auto& i : instances.as_array()) {
    if (jstr(i, "host") == second) other = jstr(i, "name");
  }
  ASSERT_FALSE(other.empty());
  ASSERT_EQ(agent_post(second, "/v1/instances/" + other + "/stop"), 200);
  ASSERT_TRUE(wait_until(
      [&] {
        const json::value now = get("/v1/instances");
        for (const auto& i : now.as_array()) {
          if (jstr(i, "name") == other) return !jbool(i, "healthy");
        }
        return false;
      },
      20s));

  ASSERT_EQ(post("/v1/drills/" + id + "/resume", json::object{}).status, 202);
  const json::value end = wait_drill_finished(id, 60s);
  EXPECT_EQ(jstr(end, "state"), "Failed") << json::serialize(end);
  const std::string reason = jstr(end, "reason");
  EXPECT_NE(reason.find("before batch 1"), std::string::npos) << reason;
  EXPECT_NE(reason.find("instance " + other + " on host '" + second + "'"), std::string::npos)
      << reason;
  // The first batch's host was never updated: web kept its one serving instance.
  const json::value jobs = agent_get(first, "/v1/operations");
  EXPECT_TRUE(jobs.is_array() && jobs.as_array().empty()) << json::serialize(jobs);
  const json::value end_batches = jarr(end, "batches");
  ASSERT_EQ(end_batches.as_array().size(), 2u) << json::serialize(end);
  EXPECT_EQ(jstr(end_batches.as_array().at(0), "status"), "pending") << json::serialize(end);
}

}  // namespace
}  // namespace fabriclab::testing
