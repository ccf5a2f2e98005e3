#pragma once
// A host agent in-process, on libvirt's test driver (simulated guests) or on real QEMU (embedded
// driver), with its event feed, for the agent's tests.

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/testbed/images.hpp"
#include "fabriclab/testbed/lab_vm.hpp"
#include "status_matchers.hpp"

namespace fabriclab::testing {

using namespace std::chrono_literals;
namespace json = boost::json;

class AgentFixture : public ::testing::Test {
 protected:
  // real: the embedded QEMU driver and real guests; otherwise the test driver.
  void open_agent(bool real, agent::AgentOptions extra = {}) {
    if (dir_.empty()) {
      auto dir = testbed::make_short_tmpdir(real ? "fla-" : "fls-");
      ASSERT_TRUE(dir.ok());
      dir_ = *dir;
      auto node = hypervisor::write_test_node(dir_);
      ASSERT_TRUE(node.ok()) << node.error().describe();
      node_uri_ = *node;
    }
    agent::AgentOptions o = extra;
    o.host_id = "host-a";
    o.state_dir = dir_ + "/st";
    if (o.guest_images_dirs.empty()) o.guest_images_dirs = {testbed::default_images_dir()};
    if (!real) {
      o.hypervisor_uri = node_uri_;
      o.heartbeat_period = 100ms;
      o.drain = 20ms;
    }
    feed_ = std::make_shared<EventFeed>(
        [this] { return agent_ ? agent_->snapshot() : json::object{}; });
    auto a = agent::HostAgent::create(o, feed_);
    ASSERT_TRUE(a.ok()) << a.error().describe();
    agent_ = std::move(a).value();
  }

  void TearDown() override {
    agent_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Deletes every instance: real guests outlive an agent that goes away (by design), so a real-VM
  // fixture calls this before AgentFixture::TearDown.
  void delete_instances() {
    if (!agent_) return;
    for (auto& i : agent_->instances_json())
      (void)agent_->delete_instance(std::string(i.as_object().at("name").as_string()));
  }

  agent::InstanceSpec spec(const std::string& service, int index, const std::string& image = "v1") {
    agent::InstanceSpec s;
    s.name = service + "-" + std::to_string(index);
    s.meta = {service, index, index % 5, index % 2, image};
    return s;
  }

  // Reads `name`'s JSON every `every` until `done` holds for it or `deadline` passes; `last` is the
  // last JSON read. Returns whether `done` held.
  bool poll_instance(const std::string& name, std::chrono::steady_clock::time_point deadline,
                     const std::function<bool(json::object&)>& done, json::object& last,
                     std::chrono::milliseconds every = 50ms) {
    while (std::chrono::steady_clock::now() < deadline) {
      auto i = agent_->instance_json(name);
      if (i.ok()) {
        last = *i;
        if (done(last)) return true;
      }
      std::this_thread::sleep_for(every);
    }
    return false;
  }

  // Waits until `name` reports `status` (e.g. "Healthy").
  json::object wait_status(const std::string& name, const std::string& status,
                           std::chrono::milliseconds timeout) {
    json::object last;
    if (poll_instance(
            name, std::chrono::steady_clock::now() + timeout,
            [&](json::object& i) { return i["status"].as_string() == status; }, last)) {
      return last;
    }
    ADD_FAILURE() << name << " never became " << status << ": " << json::serialize(last);
    return last;
  }

  // Whether an instance's JSON says its guest agent has answered.
  static bool guest_agent_up(json::object& i) {
    return i["signals"].as_object()["guest_agent"].as_bool();
  }

  json::object run_job(const agent::OperationRequest& req, std::chrono::milliseconds timeout) {
    auto job = agent_->start_operation(req);
    EXPECT_TRUE(job.ok()) << job.error().describe();
    if (!job.ok()) return {};
    std::string id(job->at("id").as_string());
    EXPECT_TRUE(agent_->wait_idle(timeout)) << "job " << id << " did not finish";
    auto done = agent_->job_json(id);
    EXPECT_TRUE(done.ok());
    return done.ok() ? *done : json::object{};
  }

  // Stages a synthetic host image `version` and returns nothing; asserts on failure.
  void stage_host_image(const std::string& version) {
    const std::string file = dir_ + "/" + version + ".img";
    auto sha = agent::write_synthetic_host_image(file, version);
    ASSERT_TRUE(sha.ok()) << sha.error().describe();
    ASSERT_OK(agent_->stage_host_image(version, file, *sha));
  }

  std::vector<json::object> events_of_type(const std::string& type) {
    std::vector<json::object> out;
    for (auto& e : feed_->since(0)) {
      if (e["type"].as_string() == type) out.push_back(e);
    }
    return out;
  }

  std::string dir_;
  std::string node_uri_;  // the simulated host (write_test_node in dir_)
  std::shared_ptr<EventFeed> feed_;
  std::unique_ptr<agent::HostAgent> agent_;
};

}  // namespace fabriclab::testing
