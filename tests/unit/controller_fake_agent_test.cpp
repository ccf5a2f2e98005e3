// The real Controller, in this process, over agents that live in memory (AgentClient is an
// interface; ControllerOptions::agent_clients makes the clients). No process, no socket: each
// test registers hosts, creates services and walks drills in about a second, and asserts what an
// operator would see: where instances went, the order and overlap of host updates, why a drill
// halted, and a silent host turning Unhealthy.
//
// A fake host runs a host-os job for a few of the controller's job polls: while it runs, the host
// is Updating and its instances are stopped; then the host is Ready on the target image with its
// instances healthy again (or, told to fail, the job fails and the host stays on its image).

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/orchestrator/agent_client.hpp"
#include "fabriclab/orchestrator/controller.hpp"
#include "wait_until.hpp"

namespace fl = fabriclab;
namespace orch = fabriclab::orchestrator;
namespace json = boost::json;
using namespace std::chrono_literals;
using fabriclab::testing::wait_until;

namespace {

std::string s(const json::object& o, std::string_view key) {
  auto* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

struct FakeJob {
  std::string id, kind, target, status = "running", started_at;
  int polls = 0;
};

struct FakeHost {
  std::string id;
  int fd = 0;
  std::string state = "Ready", host_image = "host-v1", active_job;
  std::map<std::string, std::string> instances;  // name -> image
  bool stopped = false;                          // its instances, while a job runs
  std::map<std::string, FakeJob> jobs;
  bool answering = true;
  bool fail_jobs = false;
};

// Every fake host, keyed by the endpoint the controller is given; and what the walk did to them.
class FakeRack {
 public:
  static constexpr int kPollsPerJob = 5;

  std::string add_host(const std::string& id, int fd) {
    std::lock_guard lock(mu_);
    std::string endpoint = "127.0.0.1:" + std::to_string(7100 + hosts_.size());
    hosts_[endpoint] = FakeHost{.id = id, .fd = fd};
    return endpoint;
  }
  template <class F>
  void with_host(const std::string& id, F f) {
    std::lock_guard lock(mu_);
    for (auto& [e, h] : hosts_)
      if (h.id == id) f(h);
  }
  // The hosts updating at once, as each job began (the new one included).
  std::vector<std::set<std::string>> overlaps() const {
    std::lock_guard lock(mu_);
    return overlaps_;
  }
  std::vector<std::string> job_order() const {
    std::lock_guard lock(mu_);
    return job_order_;
  }
  std::set<std::string> instances_on(const std::string& id) {
    std::set<std::string> out;
    with_host(id, [&](FakeHost& h) {
      for (const auto& [n, img] : h.instances) out.insert(n);
    });
    return out;
  }

  orch::AgentClientFactory factory();

  // The agent's calls, on the host behind `endpoint`.
  template <class T, class F>
  fl::Result<T> call(const std::string& endpoint, F f) {
    std::lock_guard lock(mu_);
    auto it = hosts_.find(endpoint);
    if (it == hosts_.end())
      return fl::make_error(fl::Condition::transient, "no agent at " + endpoint);
    if (!it->second.answering)
      return fl::make_error(fl::Condition::transient,
                            "agent " + it->second.id + " is not answering");
    return f(it->second);
  }

  fl::Result<json::object> start_job(FakeHost& h, const json::object& req) {
    if (!h.active_job.empty())
      return fl::make_error(fl::Condition::invalid_state, "a job is running on " + h.id);
    FakeJob j{.id = h.id + "-job-" + std::to_string(h.jobs.size()),
              .kind = s(req, "kind"),
              .target = s(req, "target"),
              .started_at = fl::rfc3339(std::chrono::system_clock::now())};
    h.active_job = j.id;
    h.state = "Updating";
    h.stopped = true;
    down_.insert(h.id);
    overlaps_.push_back(down_);
    job_order_.push_back(h.id);
    h.jobs[j.id] = j;
    return job_json(j);
  }
  fl::Result<json::object> poll_job(FakeHost& h, const std::string& id) {
    auto it = h.jobs.find(id);
    if (it == h.jobs.end()) return fl::make_error(fl::Condition::not_found, "no job " + id);
    FakeJob& j = it->second;
    if (j.status == "running" && ++j.polls >= kPollsPerJob) {
      j.status = h.fail_jobs ? "failed" : "succeeded";
      if (!h.fail_jobs) h.host_image = j.target;
      h.state = "Ready";
      h.stopped = false;
      h.active_job.clear();
      down_.erase(h.id);
    }
    return job_json(j);
  }
  static json::object job_json(const FakeJob& j) {
    json::object o{{"id", j.id},
                   {"status", j.status},
                   {"started_at", j.started_at},
                   {"request", json::object{{"kind", j.kind}, {"target", j.target}}}};
    if (j.status == "failed") o["error"] = "fake: host image " + j.target + " did not boot";
    return o;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, FakeHost> hosts_;
  std::set<std::string> down_;
  std::vector<std::set<std::string>> overlaps_;
  std::vector<std::string> job_order_;
};

class FakeAgentClient final : public orch::AgentClient {
 public:
  FakeAgentClient(FakeRack& rack, std::string endpoint)
      : rack_(rack), endpoint_(std::move(endpoint)) {}

  fl::Result<json::object> host() const override {
    return rack_.call<json::object>(endpoint_, [](FakeHost& h) -> fl::Result<json::object> {
      return json::object{{"host_id", h.id},
                          {"fault_domain", h.fd},
                          {"state", h.state},
                          {"step", h.stopped ? "Rebooting" : "None"},
                          {"host_image", h.host_image},
                          {"active_job", h.active_job}};
    });
  }
  fl::Result<json::array> instances() const override {
    return rack_.call<json::array>(endpoint_, [](FakeHost& h) -> fl::Result<json::array> {
      json::array out;
      for (const auto& [name, image] : h.instances) {
        out.push_back(json::object{{"name", name},
                                   {"image", image},
                                   {"status", h.stopped ? "Stopped" : "Running"},
                                   {"healthy", !h.stopped}});
      }
      return out;
    });
  }
  fl::Result<json::object> create_instance(const json::object& spec) const override {
    return rack_.call<json::object>(endpoint_, [&](FakeHost& h) -> fl::Result<json::object> {
      std::string name = s(spec, "name");
      if (h.instances.count(name))
        return fl::make_error(fl::Condition::already_exists, name + " exists");
      h.instances[name] = s(spec, "image");
      return json::object{{"name", name}, {"status", "Running"}};
    });
  }
  fl::Status delete_instance(const std::string& name) const override {
    auto r = delete_instance_keep_data(name);
    if (!r.ok()) return r.error();
    return {};
  }
  fl::Result<json::object> delete_instance_keep_data(const std::string& name) const override {
    return rack_.call<json::object>(endpoint_, [&](FakeHost& h) -> fl::Result<json::object> {
      if (!h.instances.erase(name)) return fl::make_error(fl::Condition::not_found, name);
      return json::object{{"data_disk_kept", ""}};
    });
  }
  fl::Status start_instance(const std::string&) const override { return {}; }
  fl::Result<json::object> start_operation(const json::object& request) const override {
    return rack_.call<json::object>(endpoint_,
                                    [&](FakeHost& h) { return rack_.start_job(h, request); });
  }
  fl::Result<json::object> job(const std::string& id) const override {
    return rack_.call<json::object>(endpoint_, [&](FakeHost& h) { return rack_.poll_job(h, id); });
  }
  fl::Result<json::array> jobs() const override {
    return rack_.call<json::array>(endpoint_, [](FakeHost& h) -> fl::Result<json::array> {
      json::array out;
      for (const auto& [id, j] : h.jobs) out.push_back(FakeRack::job_json(j));
      return out;
    });
  }
  fl::Status cancel(const std::string& id) const override {
    return fl::make_error(fl::Condition::unsupported, "the fake agent cannot cancel " + id);
  }
  fl::Result<json::object> stage_host_image(const std::string& version, const std::string&,
                                            const std::string&) const override {
    return json::object{{"version", version}};
  }

 private:
  FakeRack& rack_;
  std::string endpoint_;
};

orch::AgentClientFactory FakeRack::factory() {
  return [this](const orch::Endpoint& e, std::chrono::milliseconds) {
    return std::make_unique<FakeAgentClient>(*this, e.str());
  };
}

// Six hosts, two per fault domain, and the controller over them.
class ControllerFakeAgent : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("fabriclab-fake-agent-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (controller_) controller_->stop();
    std::filesystem::remove_all(dir_);
  }

  void start(bool healing = false) {
    orch::ControllerOptions o;
    o.journal_path = (dir_ / "journal.db").string();
    o.poll = 20ms;
    o.unhealthy_after = 300ms;
    o.healing = healing;
    o.traffic_lead = 0ms;
    o.traffic_tail = 0ms;
    o.agent_clients = rack_.factory();
    auto c = orch::Controller::create(std::move(o));
    ASSERT_TRUE(c.ok()) << c.error().describe();
    controller_ = std::move(*c);
    auto* raw = controller_.get();
    feed_ = std::make_shared<fl::EventFeed>([raw] { return raw->snapshot(); }, 10000,
                                            raw->last_journal_seq());
    controller_->start(feed_);
    for (int i = 0; i < 6; ++i) {
      std::string id = "h" + std::to_string(i);
      int fd = i % 3;
      auto r = controller_->register_host(orch::HostRegistration{
          .id = id, .fault_domain = fd, .endpoint = rack_.add_host(id, fd), .capacity = 4});
      ASSERT_TRUE(r.ok()) << r.error().describe();
    }
  }
  void create_service(const std::string& name, int count, int uds) {
    orch::Service svc;
    svc.name = name;
    svc.instance_count = count;
    svc.ud_count = uds;
    svc.image = "guest-v1";
    auto r = controller_->create_service(svc);
    ASSERT_TRUE(r.ok()) << r.error().describe();
  }
  static orch::DrillSpec quick_drill() {
    orch::DrillSpec d;
    d.kind = "host-os";
    d.target = "host-v2";
    d.time_scale = 0.001;
    d.recovery_s = 1;
    d.notice_s = 0;
    d.healthy_timeout_s = 10;
    return d;
  }
  // Polls the drill until it ends (or 20 s pass: then the last view, still running).
  json::object wait_drill(const std::string& id) {
    json::object d;
    wait_until(
        [&] {
          auto r = controller_->drill_json(id);
          if (r.ok()) d = *r;
          std::string st = s(d, "state");
          return st == "Completed" || st == "Failed" || st == "Aborted";
        },
        20s, 20ms);
    return d;
  }
  // instance -> {host, ud}
  std::map<std::string, std::pair<std::string, int64_t>> placement() const {
    std::map<std::string, std::pair<std::string, int64_t>> out;
    for (const auto& v : controller_->instances_json()) {
      const auto& o = v.as_object();
      out[s(o, "name")] = {s(o, "host"), o.at("ud").as_int64()};
    }
    return out;
  }

  std::filesystem::path dir_;
  FakeRack rack_;
  std::unique_ptr<orch::Controller> controller_;
  std::shared_ptr<fl::EventFeed> feed_;
};

TEST_F(ControllerFakeAgent, ServiceInstancesLandOnTheAgentsAcrossEveryFaultDomain) {
  start();
  create_service("web", 6, 3);
  std::set<int64_t> fds;
  std::map<std::string, std::set<std::string>> placed;  // host -> instances
  for (const auto& v : controller_->instances_json()) {
    const auto& o = v.as_object();
    fds.insert(o.at("fd").as_int64());
    placed[s(o, "host")].insert(s(o, "name"));
  }
  EXPECT_EQ(fds, (std::set<int64_t>{0, 1, 2}));
  EXPECT_EQ(controller_->instances_json().size(), 6u);
  // What the controller placed is what the agents were asked to run, host by host.
  for (int i = 0; i < 6; ++i) {
    std::string id = "h" + std::to_string(i);
    EXPECT_EQ(rack_.instances_on(id), placed[id]) << id;
  }
}

TEST_F(ControllerFakeAgent, HostOsDrillWalksTheBatchesInOrderAndNeverTakesTwoUdsDown) {
  start();
  create_service("web", 6, 3);
  create_service("api", 3, 3);
  auto made = controller_->create_drill(quick_drill());
  ASSERT_TRUE(made.ok()) << made.error().describe();
  auto d = wait_drill(s(*made, "id"));
  ASSERT_EQ(s(d, "state"), "Completed") << json::serialize(d);

  // Every host updated once, in the order of the drill's batches.
  std::vector<std::string> planned;
  for (const auto& b : d.at("batches").as_array())
    for (const auto& h : b.as_object().at("hosts").as_array()) planned.emplace_back(h.as_string());
  auto order = rack_.job_order();
  ASSERT_EQ(order.size(), 6u);
  std::map<std::string, size_t> batch_of;
  const auto& batches = d.at("batches").as_array();
  for (size_t b = 0; b < batches.size(); ++b)
    for (const auto& h : batches[b].as_object().at("hosts").as_array())
      batch_of[std::string(h.as_string())] = b;
  for (size_t i = 1; i < order.size(); ++i)
    EXPECT_LE(batch_of[order[i - 1]], batch_of[order[i]]) << order[i - 1] << " then " << order[i];
  EXPECT_EQ(std::set<std::string>(order.begin(), order.end()),
            std::set<std::string>(planned.begin(), planned.end()));
  for (int i = 0; i < 6; ++i)
    rack_.with_host("h" + std::to_string(i),
                    [](FakeHost& h) { EXPECT_EQ(h.host_image, "host-v2") << h.id; });

  // The hosts of a batch were updated together, and whenever hosts were down together, they held
  // at most one UD of each service.
  size_t widest_batch = 0, widest_overlap = 0;
  for (const auto& b : batches)
    widest_batch = std::max(widest_batch, b.at("hosts").as_array().size());
  for (const auto& down : rack_.overlaps()) widest_overlap = std::max(widest_overlap, down.size());
  EXPECT_GE(widest_batch, 2u);
  EXPECT_EQ(widest_overlap, widest_batch);
  auto where = placement();
  for (const auto& down : rack_.overlaps()) {
    std::map<std::string, std::set<int64_t>> uds;  // service -> UDs down
    for (const auto& [name, hu] : where)
      if (down.count(hu.first)) uds[name.substr(0, name.find('-'))].insert(hu.second);
    for (const auto& [svc, u] : uds)
      EXPECT_EQ(u.size(), 1u) << svc << " had " << u.size() << " UDs down at once";
  }
}

TEST_F(ControllerFakeAgent, AFailedJobHaltsTheWalkAndTheDrillSaysWhy) {
  start();
  create_service("web", 6, 3);
  // Every host fails its update: the first one tried halts the walk.
  for (int i = 0; i < 6; ++i)
    rack_.with_host("h" + std::to_string(i), [](FakeHost& h) { h.fail_jobs = true; });
  auto made = controller_->create_drill(quick_drill());
  ASSERT_TRUE(made.ok()) << made.error().describe();
  auto first = controller_->drill_json(s(*made, "id"));
  ASSERT_TRUE(first.ok());
  auto batches = first->at("batches").as_array();
  ASSERT_GE(batches.size(), 2u);

  auto d = wait_drill(s(*made, "id"));
  ASSERT_EQ(s(d, "state"), "Failed") << json::serialize(d);
  EXPECT_NE(s(d, "reason").find("did not boot"), std::string::npos) << s(d, "reason");
  // No host beyond the first batch was touched, and none was left on the new image.
  std::set<std::string> first_batch;
  for (const auto& h : batches[0].as_object().at("hosts").as_array())
    first_batch.insert(std::string(h.as_string()));
  for (const auto& h : rack_.job_order()) EXPECT_TRUE(first_batch.count(h)) << h;
  EXPECT_FALSE(rack_.job_order().empty());
  for (int i = 0; i < 6; ++i)
    rack_.with_host("h" + std::to_string(i),
                    [](FakeHost& h) { EXPECT_EQ(h.host_image, "host-v1") << h.id; });
}

TEST_F(ControllerFakeAgent, AnAgentThatStopsAnsweringTurnsItsHostUnhealthyAndBackReady) {
  start();
  create_service("web", 6, 3);
  rack_.with_host("h4", [](FakeHost& h) { h.answering = false; });
  auto state_of = [&](const std::string& id) {
    auto h = controller_->host_json(id);
    return h.ok() ? s(*h, "state") : std::string();
  };
  auto until = [&](const std::string& want) {
    return wait_until([&] { return state_of("h4") == want; }, 5s, 20ms);
  };
  ASSERT_TRUE(until("Unhealthy")) << "h4 is " << state_of("h4");
  EXPECT_FALSE(controller_->host_json("h4")->at("reachable").as_bool());
  EXPECT_EQ(state_of("h3"), "Ready");  // its neighbours are unaffected
  rack_.with_host("h4", [](FakeHost& h) { h.answering = true; });
  EXPECT_TRUE(until("Ready")) << "h4 is " << state_of("h4");
}

TEST_F(ControllerFakeAgent, HealingPlacesTheInstancesOfASilentHostOnTheOthers) {
  start(/*healing=*/true);
  create_service("web", 6, 3);
  auto before = placement();
  std::set<std::string> on_h2;
  for (const auto& [n, hu] : before)
    if (hu.first == "h2") on_h2.insert(n);
  ASSERT_FALSE(on_h2.empty());
  rack_.with_host("h2", [](FakeHost& h) { h.answering = false; });
  const bool moved = wait_until(
      [&] {
        for (const auto& [n, hu] : placement())
          if (hu.first == "h2") return false;
        return true;
      },
      10s, 20ms);
  ASSERT_TRUE(moved) << "the instances of h2 are still placed on it";
  // The agents of the hosts they moved to run them.
  for (const auto& n : on_h2) {
    std::string host = placement()[n].first;
    EXPECT_TRUE(rack_.instances_on(host).count(n)) << n << " on " << host;
  }
  EXPECT_EQ(placement().size(), 6u);
}

TEST_F(ControllerFakeAgent, AWalkSkipsAHostThatIsSilentWhenItsBatchBeginsAndSaysWhy) {
  start(/*healing=*/true);
  create_service("web", 6, 3);
  rack_.with_host("h5", [](FakeHost& h) { h.answering = false; });
  auto unhealthy = [&] {
    auto h = controller_->host_json("h5");
    return h.ok() && s(*h, "state") == "Unhealthy";
  };
  ASSERT_TRUE(wait_until(unhealthy, 5s, 20ms));
  auto made = controller_->create_drill(quick_drill());
  ASSERT_TRUE(made.ok()) << made.error().describe();
  auto d = wait_drill(s(*made, "id"));
  ASSERT_EQ(s(d, "state"), "Completed") << json::serialize(d);
  auto order = rack_.job_order();
  EXPECT_EQ(std::count(order.begin(), order.end(), "h5"), 0) << "a silent host got a job";
  EXPECT_EQ(order.size(), 5u);
  bool noted = false;
  for (const auto& n : d.at("notes").as_array())
    noted = noted || n.as_string() == "host h5 skipped: Unhealthy when its batch began";
  EXPECT_TRUE(noted) << json::serialize(d.at("notes"));
}

}  // namespace
