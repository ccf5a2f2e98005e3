// The host agent's REST + websocket API end to end: a HostAgent on libvirt's test driver (its
// guests are simulated, speaking the real channel protocol), its EventFeed and an http::Server
// wired as agent/main.cpp does, driven over loopback with the synchronous client. Every test has
// its own short temporary directory (node file, state dir, host images).

#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/agent/api.hpp"
#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/http_server.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/testbed/images.hpp"
#include "fabriclab/testbed/lab_vm.hpp"
#include "http_call.hpp"
#include "status_matchers.hpp"

namespace fabriclab::agent {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kHost = "127.0.0.1";
constexpr const char* kControl = "ctl-token";
constexpr const char* kRead = "read-token";
constexpr size_t kMaxBody = 4096;

// Parses a response body; a body that is not JSON is a test failure (every answer must be JSON).
json::value parse(const std::string& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) {
    ADD_FAILURE() << "not JSON (" << ec.message() << "): " << text;
    return nullptr;
  }
  return v;
}

std::string str_at(const json::value& v, std::string_view key) {
  if (!v.is_object()) return "<not an object>";
  const auto* f = v.as_object().if_contains(key);
  if (!f) return "<missing " + std::string(key) + ">";
  if (!f->is_string()) return json::serialize(*f);
  return std::string(f->as_string());
}

// {"error": {"code", "message"}} or a failure.
struct ApiError {
  std::string code;
  std::string message;
};
ApiError error_of(const http::ClientResponse& r) {
  json::value v = parse(r.body);
  const json::object* o = v.if_object();
  const json::value* e = o ? o->if_contains("error") : nullptr;
  if (!e || !e->is_object()) {
    ADD_FAILURE() << "HTTP " << r.status << ": body is not a JSON error: " << r.body;
    return {};
  }
  return {str_at(*e, "code"), str_at(*e, "message")};
}

class AgentApiTest : public ::testing::Test {
 protected:
  // Tests that need other agent options override this.
  virtual void Configure(AgentOptions& o) { (void)o; }

  void SetUp() override {
    auto dir = testbed::make_short_tmpdir("fl-api-");
    ASSERT_OK(dir);
    dir_ = *dir;
    auto node = hypervisor::write_test_node(dir_);
    ASSERT_OK(node);
    AgentOptions o;
    o.hypervisor_uri = *node;
    o.state_dir = dir_ + "/st";
    o.guest_images_dirs = {testbed::default_images_dir()};
    o.heartbeat_period = 100ms;
    Configure(o);
    feed_ = std::make_shared<EventFeed>([this] {
      HostAgent* a = agent_ptr_.load();
      return a ? a->snapshot() : json::object{};
    });
    auto agent = HostAgent::create(o, feed_);
    ASSERT_OK(agent);
    agent_ = std::move(agent).value();
    agent_ptr_ = agent_.get();
    limits_.max_body = kMaxBody;
    server_ = std::make_unique<http::Server>("agent-api", http::Tokens{kControl, kRead}, limits_);
    install_api(*server_, *agent_, feed_, limits_);
    auto port = server_->start(kHost, 0);
    ASSERT_OK(port);
    port_ = *port;
  }

  void TearDown() override {
    if (server_) server_->stop();
    server_.reset();
    if (agent_) {
      EXPECT_TRUE(agent_->wait_idle(30s)) << "an operation was still running at the end";
    }
    agent_ptr_ = nullptr;
    agent_.reset();
    feed_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // One request; a transport failure is a test failure and gives status 0.
  http::ClientResponse call(std::string_view method, std::string_view target,
                            std::string_view body = {}, std::string_view token = kControl) {
    return fabriclab::testing::call_or_fail(kHost, port_, method, target, body, token, 10s);
  }
  http::ClientResponse post(std::string_view target, const json::value& body,
                            std::string_view token = kControl) {
    return call("POST", target, json::serialize(body), token);
  }
  // GET `target` with the read token: a JSON list of exactly one element, `only`.
  void get_only(std::string_view target, json::value& only) {
    auto list = call("GET", target, {}, kRead);
    ASSERT_EQ(list.status, 200);
    json::value arr = parse(list.body);
    ASSERT_TRUE(arr.is_array()) << list.body;
    ASSERT_EQ(arr.as_array().size(), 1u) << list.body;
    only = arr.as_array()[0];
  }
  // A 401 with an "unauthenticated" JSON error whose message says `why` ("missing", "unknown").
  void expect_unauthenticated(const http::ClientResponse& r, std::string_view why) {
    EXPECT_EQ(r.status, 401);
    auto e = error_of(r);
    EXPECT_EQ(e.code, "unauthenticated");
    EXPECT_NE(e.message.find(why), std::string::npos) << e.message;
  }

  static json::object instance_body(const std::string& service, int index) {
    return {{"service", service}, {"index", index}, {"ud", 0}, {"fd", 0}, {"image", "v1"}};
  }

  // Polls GET /v1/instances/{name} until its status is `want`; returns the last status seen.
  std::string wait_status(const std::string& name, const std::string& want,
                          std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    std::string last;
    do {
      auto r = call("GET", "/v1/instances/" + name, {}, kRead);
      last = r.status == 200 ? str_at(parse(r.body), "status") : "HTTP " + std::to_string(r.status);
      if (last == want) return last;
      std::this_thread::sleep_for(50ms);
    } while (Clock::now() < deadline);
    return last;
  }

  // Creates `service`-`index` on v1 and waits until it is Healthy.
  void create_healthy(const std::string& service, int index) {
    auto r = post("/v1/instances", instance_body(service, index));
    ASSERT_EQ(r.status, 201) << r.body;
    const std::string name = service + "-" + std::to_string(index);
    ASSERT_EQ(wait_status(name, "Healthy", 5s), "Healthy");
  }

  // Writes a host image file under the test dir and returns {path, sha256}.
  std::pair<std::string, std::string> write_host_image(const std::string& version) {
    const std::string path = dir_ + "/" + version + ".img";
    {
      std::ofstream out(path, std::ios::binary);
      out << "fabriclab api test host image " << version << "\n";
      for (int i = 0; i < 1000; ++i) out << version << ":" << i << "\n";
    }
    auto sha = sha256_file(path);
    EXPECT_OK(sha);
    return {path, sha.ok() ? *sha : std::string()};
  }

  // Stages `version` through the API (201 expected).
  void stage(const std::string& version) {
    auto [path, sha] = write_host_image(version);
    auto r = post("/v1/images/host",
                  json::object{{"version", version}, {"path", path}, {"sha256", sha}});
    ASSERT_EQ(r.status, 201) << r.body;
  }

  // Polls GET /v1/operations/{id} until its status is not "running"; returns the job.
  json::object wait_job(const std::string& id, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    json::object job;
    do {
      auto r = call("GET", "/v1/operations/" + id, {}, kRead);
      EXPECT_EQ(r.status, 200) << r.body;
      json::value v = parse(r.body);
      if (v.is_object()) job = v.as_object();
      if (str_at(job, "status") != "running") return job;
      std::this_thread::sleep_for(100ms);
    } while (Clock::now() < deadline);
    ADD_FAILURE() << "job " << id << " still running after " << timeout.count()
                  << " ms: " << json::serialize(job);
    return job;
  }

  std::string dir_;
  std::shared_ptr<EventFeed> feed_;
  std::unique_ptr<HostAgent> agent_;
  std::atomic<HostAgent*> agent_ptr_{nullptr};
  http::Limits limits_;
  std::unique_ptr<http::Server> server_;
  uint16_t port_ = 0;
};

// A host whose emulated reboot takes 2 s, so a host-os operation reliably stays Updating long
// enough to be observed (simulated guests ack the notice after 200 ms, which would cut it short).
class AgentApiSlowHostTest : public AgentApiTest {
 protected:
  void Configure(AgentOptions& o) override { o.boot_delay = 2000ms; }
};

// ---------------------------------------------------------------------------------------------
// Auth

TEST_F(AgentApiTest, RequestWithoutTokenIsRefusedWith401AndAJsonError) {
  auto r = call("GET", "/v1/host", {}, "");
  expect_unauthenticated(r, "missing");
  EXPECT_EQ(r.headers["www-authenticate"], "Bearer");
  EXPECT_EQ(r.headers["content-type"], "application/json");
}

TEST_F(AgentApiTest, RequestWithUnknownTokenIsRefusedWith401) {
  expect_unauthenticated(call("GET", "/v1/instances", {}, "not-a-token"), "unknown");
  // A prefix of the real token is not the token.
  EXPECT_EQ(call("GET", "/v1/instances", {}, "ctl-toke").status, 401);
  EXPECT_EQ(
      call("POST", "/v1/instances", json::serialize(instance_body("web", 0)), "read-tokenX").status,
      401);
}

TEST_F(AgentApiTest, ReadTokenCannotCreateInstances) {
  auto r = post("/v1/instances", instance_body("web", 0), kRead);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(error_of(r).code, "permission_denied");
  auto list = call("GET", "/v1/instances", {}, kRead);
  ASSERT_EQ(list.status, 200);
  EXPECT_EQ(parse(list.body), json::array{}) << "a refused create must not create anything";
}

TEST_F(AgentApiTest, ReadTokenIsRefusedOnEveryControlRoute) {
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"POST", "/v1/instances"},
      {"POST", "/v1/instances/web-0/start"},
      {"POST", "/v1/instances/web-0/stop"},
      {"DELETE", "/v1/instances/web-0"},
      {"POST", "/v1/operations"},
      {"POST", "/v1/operations/x/cancel"},
      {"POST", "/v1/images/host"}};
  for (const auto& [method, target] : routes) {
    auto r = call(method, target, "{}", kRead);
    EXPECT_EQ(r.status, 403) << method << " " << target << ": " << r.body;
  }
}

TEST_F(AgentApiTest, ReadTokenCanReadHostAndEveryGetRoute) {
  auto r = call("GET", "/v1/host", {}, kRead);
  ASSERT_EQ(r.status, 200) << r.body;
  json::value host = parse(r.body);
  EXPECT_EQ(str_at(host, "host_id"), "host-0");
  EXPECT_EQ(str_at(host, "state"), "Ready");
  EXPECT_EQ(host.at("simulated"), json::value(true));
  for (const char* target :
       {"/v1/instances", "/v1/operations", "/v1/images/host", "/v1/images/guest"}) {
    auto g = call("GET", target, {}, kRead);
    EXPECT_EQ(g.status, 200) << target << ": " << g.body;
    EXPECT_TRUE(parse(g.body).is_array()) << target << ": " << g.body;
  }
}

TEST_F(AgentApiTest, ControlTokenIsAcceptedEverywhere) {
  for (const char* target : {"/healthz", "/v1/host", "/v1/instances", "/v1/operations",
                             "/v1/images/host", "/v1/images/guest"}) {
    auto g = call("GET", target, {}, kControl);
    EXPECT_EQ(g.status, 200) << target << ": " << g.body;
  }
  auto c = post("/v1/instances", instance_body("web", 0));
  EXPECT_EQ(c.status, 201) << c.body;
  EXPECT_EQ(call("GET", "/v1/instances/web-0").status, 200);
  EXPECT_EQ(wait_status("web-0", "Healthy", 5s), "Healthy");
  EXPECT_EQ(call("POST", "/v1/instances/web-0/stop").status, 200);
  EXPECT_EQ(call("POST", "/v1/instances/web-0/start").status, 200);
  EXPECT_EQ(call("DELETE", "/v1/instances/web-0").status, 200);
  auto [path, sha] = write_host_image("h1");
  EXPECT_EQ(
      post("/v1/images/host", json::object{{"version", "h1"}, {"path", path}, {"sha256", sha}})
          .status,
      201);
  auto op =
      post("/v1/operations", json::object{{"kind", "host-os"}, {"target", "h1"}, {"notice_ms", 0}});
  ASSERT_EQ(op.status, 202) << op.body;
  std::string id = str_at(parse(op.body), "id");
  // Cancel is allowed for the control token: 202 while it runs, 409 once it is done; never 401/403.
  auto cancel = call("POST", "/v1/operations/" + id + "/cancel");
  EXPECT_TRUE(cancel.status == 202 || cancel.status == 409) << cancel.status << " " << cancel.body;
  wait_job(id, 20s);
}

TEST_F(AgentApiTest, HealthzIsOpen) {
  auto r = call("GET", "/healthz", {}, "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(parse(r.body), (json::value{{"ok", true}}));
  EXPECT_EQ(call("GET", "/healthz", {}, "garbage").status, 200)
      << "an open route ignores a bad token";
}

// ---------------------------------------------------------------------------------------------
// Bad requests: 4xx with a JSON error naming what is wrong

struct BadCase {
  std::string what;
  std::string target;
  std::string body;
  int status;
  std::string code;
  std::vector<std::string> message_has;
};

TEST_F(AgentApiTest, BadRequestsGet4xxWithAJsonErrorNamingTheField) {
  const std::vector<BadCase> cases = {
      {"instance without service",
       "/v1/instances",
       R"({"index":0,"ud":0,"fd":0,"image":"v1"})",
       400,
       "invalid_argument",
       {"'service'", "required"}},
      {"ud out of range",
       "/v1/instances",
       R"({"service":"web","index":0,"ud":25,"fd":0,"image":"v1"})",
       400,
       "invalid_argument",
       {"'ud'", "0..19"}},
      {"memory_mib not a number",
       "/v1/instances",
       R"({"service":"web","index":0,"ud":0,"fd":0,"image":"v1","memory_mib":"x"})",
       400,
       "invalid_argument",
       {"'memory_mib'"}},
      {"unknown field",
       "/v1/instances",
       R"({"service":"web","index":0,"ud":0,"fd":0,"image":"v1","colour":"red"})",
       400,
       "invalid_argument",
       {"unknown field", "'colour'"}},
      {"non-JSON body",
       "/v1/instances",
       "service=web&index=0",
       400,
       "invalid_argument",
       {"not JSON"}},
      {"JSON array body",
       "/v1/instances",
       R"([{"service":"web"}])",
       400,
       "invalid_argument",
       {"JSON object"}},
      {"operation with unknown kind",
       "/v1/operations",
       R"({"kind":"bogus","target":"h1"})",
       400,
       "invalid_argument",
       {"'kind'", "bogus"}},
      {"host-os without target",
       "/v1/operations",
       R"({"kind":"host-os"})",
       400,
       "invalid_argument",
       {"'target'", "required"}},
      {"memory_preserving on guest-os",
       "/v1/operations",
       R"({"kind":"guest-os","target":"v2","memory_preserving":true})",
       400,
       "invalid_argument",
       {"memory_preserving", "host-os"}},
      {"unknown guest image",
       "/v1/instances",
       R"({"service":"web","index":0,"ud":0,"fd":0,"image":"v9"})",
       404,
       "not_found",
       {"v9"}},
      {"unknown host image target",
       "/v1/operations",
       R"({"kind":"host-os","target":"h-nope"})",
       404,
       "not_found",
       {"h-nope"}},
      {"unknown guest image target",
       "/v1/operations",
       R"({"kind":"guest-os","target":"v9"})",
       404,
       "not_found",
       {"v9"}},
      {"host image with a bad version name",
       "/v1/images/host",
       R"({"version":"../x","path":"/etc/hostname","sha256":"00"})",
       400,
       "invalid_argument",
       {}},
      {"empty body", "/v1/operations", "", 400, "invalid_argument", {"body is required"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    auto r = call("POST", c.target, c.body);
    EXPECT_EQ(r.status, c.status) << r.body;
    auto e = error_of(r);
    EXPECT_EQ(e.code, c.code) << r.body;
    for (const auto& s : c.message_has)
      EXPECT_NE(e.message.find(s), std::string::npos) << "'" << s << "' not in: " << e.message;
  }
  // Nothing of the above created anything or started anything.
  EXPECT_EQ(parse(call("GET", "/v1/instances").body), json::array{});
  EXPECT_EQ(parse(call("GET", "/v1/operations").body), json::array{});
  EXPECT_EQ(str_at(parse(call("GET", "/v1/host").body), "state"), "Ready");
}

TEST_F(AgentApiTest, UnknownInstanceIs404OnGetStartStopAndDelete) {
  for (const auto& [method, target] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/v1/instances/ghost"},
           {"DELETE", "/v1/instances/ghost"},
           {"POST", "/v1/instances/ghost/start"},
           {"POST", "/v1/instances/ghost/stop"},
           {"GET", "/v1/operations/host-0-job-99"},
           {"POST", "/v1/operations/host-0-job-99/cancel"}}) {
    auto r = call(method, target);
    EXPECT_EQ(r.status, 404) << method << " " << target << ": " << r.body;
    auto e = error_of(r);
    EXPECT_EQ(e.code, "not_found") << method << " " << target;
    EXPECT_TRUE(e.message.find("ghost") != std::string::npos ||
                e.message.find("job-99") != std::string::npos)
        << e.message;
  }
  EXPECT_EQ(call("GET", "/v1/nothing-here").status, 404);
}

TEST_F(AgentApiTest, WrongMethodIs405WithAllow) {
  auto r = call("PUT", "/v1/instances", "{}");
  EXPECT_EQ(r.status, 405) << r.body;
  EXPECT_EQ(error_of(r).code, "method_not_allowed");
  EXPECT_NE(r.headers["allow"].find("GET"), std::string::npos) << r.headers["allow"];
  EXPECT_NE(r.headers["allow"].find("POST"), std::string::npos) << r.headers["allow"];
  auto d = call("DELETE", "/v1/host");
  EXPECT_EQ(d.status, 405) << d.body;
  EXPECT_EQ(d.headers["allow"], "GET");
  EXPECT_EQ(call("GET", "/v1/instances/web-0/start").status, 405);
}

TEST_F(AgentApiTest, BodyOverTheLimitIs413) {
  json::object body = instance_body("web", 0);
  body["name"] = std::string(10 * 1024, 'a');
  auto r = post("/v1/instances", body);
  EXPECT_EQ(r.status, 413) << r.body.substr(0, 200);
  auto e = error_of(r);
  EXPECT_EQ(e.code, "body_too_large");
  EXPECT_NE(e.message.find(std::to_string(kMaxBody)), std::string::npos) << e.message;
  // The server keeps serving.
  EXPECT_EQ(call("GET", "/healthz").status, 200);
  EXPECT_EQ(parse(call("GET", "/v1/instances").body), json::array{});
}

TEST_F(AgentApiTest, DeeplyNestedJsonIs400) {
  std::string deep;
  for (int i = 0; i < 200; ++i) deep += R"({"a":)";
  deep += "1";
  deep += std::string(200, '}');
  ASSERT_LT(deep.size(), kMaxBody);
  for (const char* target : {"/v1/instances", "/v1/operations", "/v1/images/host"}) {
    auto r = call("POST", target, deep);
    EXPECT_EQ(r.status, 400) << target << ": " << r.body;
    auto e = error_of(r);
    EXPECT_EQ(e.code, "invalid_argument");
    EXPECT_NE(e.message.find("nested deeper"), std::string::npos) << e.message;
  }
  EXPECT_EQ(call("GET", "/healthz").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Instance lifecycle

TEST_F(AgentApiTest, InstanceLifecycleCreateDuplicateStopStartDelete) {
  auto r = post("/v1/instances", instance_body("web", 1));
  ASSERT_EQ(r.status, 201) << r.body;
  json::value created = parse(r.body);
  EXPECT_EQ(str_at(created, "name"), "web-1");
  EXPECT_EQ(str_at(created, "service"), "web");
  EXPECT_EQ(str_at(created, "image"), "v1");

  json::value listed;
  ASSERT_NO_FATAL_FAILURE(get_only("/v1/instances", listed));
  EXPECT_EQ(str_at(listed, "name"), "web-1");

  EXPECT_EQ(wait_status("web-1", "Healthy", 5s), "Healthy");
  auto one = parse(call("GET", "/v1/instances/web-1", {}, kRead).body);
  EXPECT_EQ(one.at("healthy"), json::value(true));
  EXPECT_EQ(str_at(one.at("last_heartbeat"), "image"), "v1");

  auto dup = post("/v1/instances", instance_body("web", 1));
  EXPECT_EQ(dup.status, 409) << dup.body;
  auto de = error_of(dup);
  EXPECT_EQ(de.code, "already_exists");
  EXPECT_NE(de.message.find("web-1"), std::string::npos) << de.message;
  EXPECT_EQ(parse(call("GET", "/v1/instances").body).as_array().size(), 1u);

  auto stop = call("POST", "/v1/instances/web-1/stop");
  ASSERT_EQ(stop.status, 200) << stop.body;
  EXPECT_EQ(parse(stop.body), (json::value{{"name", "web-1"}, {"stopped", true}}));
  auto stopped = parse(call("GET", "/v1/instances/web-1", {}, kRead).body);
  EXPECT_EQ(str_at(stopped, "status"), "Stopped");
  EXPECT_EQ(stopped.at("healthy"), json::value(false));
  EXPECT_EQ(stopped.at("want_running"), json::value(false));
  // It stays Stopped (nothing restarts it behind the fabric's back) while a second instance is
  // created and comes up: only the agent's monitor connects a guest's channel, so web-2 turning
  // Healthy means a whole monitor pass - the restart of failed guests included - began after the
  // stop, and the hypervisor's events of the stop came before web-2's.
  ASSERT_EQ(post("/v1/instances", instance_body("web", 2)).status, 201);
  ASSERT_EQ(wait_status("web-2", "Healthy", 5s), "Healthy");
  EXPECT_EQ(str_at(parse(call("GET", "/v1/instances/web-1").body), "status"), "Stopped");
  ASSERT_EQ(call("DELETE", "/v1/instances/web-2").status, 200);

  auto start = call("POST", "/v1/instances/web-1/start");
  ASSERT_EQ(start.status, 200) << start.body;
  EXPECT_EQ(wait_status("web-1", "Healthy", 5s), "Healthy");

  auto del = call("DELETE", "/v1/instances/web-1");
  ASSERT_EQ(del.status, 200) << del.body;
  EXPECT_EQ(call("GET", "/v1/instances/web-1").status, 404);
  EXPECT_EQ(parse(call("GET", "/v1/instances").body), json::array{});
  EXPECT_EQ(call("DELETE", "/v1/instances/web-1").status, 404) << "a second delete finds nothing";
  // The name is free again.
  EXPECT_EQ(post("/v1/instances", instance_body("web", 1)).status, 201);
  EXPECT_EQ(wait_status("web-1", "Healthy", 5s), "Healthy");
}

TEST_F(AgentApiTest, ExplicitNameAndMemoryAreKept) {
  json::object body = instance_body("db", 3);
  body["name"] = "primary_db";
  body["memory_mib"] = 256;
  body["ud"] = 2;
  body["fd"] = 1;
  auto r = post("/v1/instances", body);
  ASSERT_EQ(r.status, 201) << r.body;
  auto got = parse(call("GET", "/v1/instances/primary_db").body);
  EXPECT_EQ(got.at("memory_mib"), json::value(256));
  EXPECT_EQ(got.at("index"), json::value(3));
  EXPECT_EQ(got.at("ud"), json::value(2));
  EXPECT_EQ(got.at("fd"), json::value(1));
  EXPECT_EQ(call("GET", "/v1/instances/db-3").status, 404);
}

class AgentApiSmallHostTest : public AgentApiTest {
 protected:
  void Configure(AgentOptions& o) override { o.capacity = 1; }
};

TEST_F(AgentApiSmallHostTest, CreatingBeyondCapacityIs409AndDeleteFreesTheSlot) {
  ASSERT_EQ(post("/v1/instances", instance_body("web", 0)).status, 201);
  auto full = post("/v1/instances", instance_body("web", 1));
  EXPECT_EQ(full.status, 409) << full.body;
  auto e = error_of(full);
  EXPECT_EQ(e.code, "invalid_state");
  EXPECT_NE(e.message.find("full"), std::string::npos) << e.message;
  EXPECT_EQ(call("GET", "/v1/instances/web-1").status, 404);
  ASSERT_EQ(call("DELETE", "/v1/instances/web-0").status, 200);
  EXPECT_EQ(post("/v1/instances", instance_body("web", 1)).status, 201);
}

// ---------------------------------------------------------------------------------------------
// Host images

TEST_F(AgentApiTest, StagedHostImageIsListed) {
  auto [path, sha] = write_host_image("h1");
  auto r =
      post("/v1/images/host", json::object{{"version", "h1"}, {"path", path}, {"sha256", sha}});
  ASSERT_EQ(r.status, 201) << r.body;
  json::value img = parse(r.body);
  EXPECT_EQ(str_at(img, "version"), "h1");
  EXPECT_EQ(str_at(img, "sha256"), sha);

  json::value listed;
  ASSERT_NO_FATAL_FAILURE(get_only("/v1/images/host", listed));
  EXPECT_EQ(str_at(listed, "version"), "h1");
  EXPECT_EQ(str_at(listed, "sha256"), sha);
  EXPECT_EQ(listed.at("current"), json::value(false)) << "staged, not activated";

  // Restaging the same bytes is idempotent; the same version with other bytes is a conflict.
  auto again =
      post("/v1/images/host", json::object{{"version", "h1"}, {"path", path}, {"sha256", sha}});
  EXPECT_EQ(again.status, 201) << again.body;
  auto [other_path, other_sha] = write_host_image("h1-other");
  auto clash = post("/v1/images/host",
                    json::object{{"version", "h1"}, {"path", other_path}, {"sha256", other_sha}});
  EXPECT_EQ(clash.status, 409) << clash.body;
  EXPECT_EQ(error_of(clash).code, "already_exists");
  // A missing source file is 404 naming it.
  auto missing =
      post("/v1/images/host",
           json::object{{"version", "h9"}, {"path", dir_ + "/nope.img"}, {"sha256", sha}});
  EXPECT_EQ(missing.status, 404) << missing.body;
  EXPECT_NE(error_of(missing).message.find("nope.img"), std::string::npos) << missing.body;
  auto after = parse(call("GET", "/v1/images/host").body);
  ASSERT_TRUE(after.is_array());
  ASSERT_EQ(after.as_array().size(), 1u) << json::serialize(after);
  EXPECT_EQ(str_at(after.as_array()[0], "sha256"), sha);
}

TEST_F(AgentApiTest, HostImageWithWrongSha256IsRefusedAndNotListed) {
  auto [path, sha] = write_host_image("h2");
  std::string wrong = sha;
  wrong[0] = wrong[0] == '0' ? '1' : '0';
  auto r =
      post("/v1/images/host", json::object{{"version", "h2"}, {"path", path}, {"sha256", wrong}});
  EXPECT_EQ(r.status, 400) << r.body;
  auto e = error_of(r);
  EXPECT_EQ(e.code, "invalid_argument");
  EXPECT_NE(e.message.find("mismatch"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find(wrong), std::string::npos)
      << "names the expected checksum: " << e.message;
  EXPECT_NE(e.message.find(sha), std::string::npos) << "names the actual checksum: " << e.message;
  EXPECT_EQ(parse(call("GET", "/v1/images/host").body), json::array{});
  // And an operation to it is refused as unknown.
  auto op = post("/v1/operations", json::object{{"kind", "host-os"}, {"target", "h2"}});
  EXPECT_EQ(op.status, 404) << op.body;
}

TEST_F(AgentApiTest, GuestImagesAreTheBuildsManifest) {
  auto r = call("GET", "/v1/images/guest", {}, kRead);
  ASSERT_EQ(r.status, 200);
  json::value arr = parse(r.body);
  ASSERT_TRUE(arr.is_array());
  std::vector<std::string> versions;
  for (const auto& g : arr.as_array()) versions.push_back(str_at(g, "version"));
  EXPECT_EQ(versions, (std::vector<std::string>{"v1", "v2", "v3-broken"}));
}

// ---------------------------------------------------------------------------------------------
// Operations

TEST_F(AgentApiTest, HostOsOperationRunsToSucceededAndSwapsTheHostImage) {
  create_healthy("web", 0);
  create_healthy("web", 1);
  stage("h1");
  auto r = post("/v1/operations",
                json::object{{"kind", "host-os"}, {"target", "h1"}, {"notice_ms", 200}});
  ASSERT_EQ(r.status, 202) << r.body;
  json::value accepted = parse(r.body);
  const std::string id = str_at(accepted, "id");
  ASSERT_FALSE(id.empty()) << r.body;
  EXPECT_EQ(str_at(accepted, "status"), "running");

  json::object job = wait_job(id, 20s);
  EXPECT_EQ(str_at(job, "status"), "succeeded") << json::serialize(job);
  EXPECT_EQ(str_at(job, "host_image_after"), "h1");
  EXPECT_EQ(str_at(job, "host_image_before"), "");
  ASSERT_TRUE(job.contains("guests") && job.at("guests").is_array()) << json::serialize(job);
  const auto& guests = job.at("guests").as_array();
  EXPECT_EQ(guests.size(), 2u) << json::serialize(job);
  for (const auto& g : guests) {
    SCOPED_TRACE(str_at(g, "name"));
    EXPECT_EQ(g.at("ok"), json::value(true)) << json::serialize(g);
    ASSERT_TRUE(g.at("counter_before").is_int64() && g.at("counter_after").is_int64())
        << json::serialize(g);
    EXPECT_GE(g.at("counter_after").as_int64(), g.at("counter_before").as_int64())
        << json::serialize(g);
    EXPECT_GT(g.at("counter_before").as_int64(), 0)
        << "the guest had heartbeated before: " << json::serialize(g);
    EXPECT_NE(str_at(g, "boot_id_after"), str_at(g, "boot_id_before"))
        << "a host-os update reboots the guest";
  }

  auto host = parse(call("GET", "/v1/host", {}, kRead).body);
  EXPECT_EQ(str_at(host, "state"), "Ready");
  EXPECT_EQ(str_at(host, "host_image"), "h1");
  EXPECT_EQ(str_at(host, "active_job"), "");
  auto images = parse(call("GET", "/v1/images/host").body);
  ASSERT_TRUE(images.is_array() && images.as_array().size() == 1u) << json::serialize(images);
  EXPECT_EQ(images.as_array()[0].at("current"), json::value(true));
  // The guests are back.
  EXPECT_EQ(wait_status("web-0", "Healthy", 5s), "Healthy");
  EXPECT_EQ(wait_status("web-1", "Healthy", 5s), "Healthy");
  // The job is listed.
  auto jobs = parse(call("GET", "/v1/operations").body);
  ASSERT_TRUE(jobs.is_array() && jobs.as_array().size() == 1u) << json::serialize(jobs);
  EXPECT_EQ(str_at(jobs.as_array()[0], "id"), id);
}

TEST_F(AgentApiSlowHostTest, WhileUpdatingNewInstancesAndOperationsAreRefusedWith409) {
  create_healthy("web", 0);
  stage("h1");
  auto r = post("/v1/operations",
                json::object{{"kind", "host-os"}, {"target", "h1"}, {"notice_ms", 3000}});
  ASSERT_EQ(r.status, 202) << r.body;
  const std::string id = str_at(parse(r.body), "id");

  auto host = parse(call("GET", "/v1/host", {}, kRead).body);
  EXPECT_EQ(str_at(host, "state"), "Updating");
  EXPECT_EQ(str_at(host, "active_job"), id);

  auto create = post("/v1/instances", instance_body("web", 7));
  EXPECT_EQ(create.status, 409) << create.body;
  auto ce = error_of(create);
  EXPECT_EQ(ce.code, "invalid_state");
  EXPECT_NE(ce.message.find("Updating"), std::string::npos) << ce.message;
  EXPECT_NE(ce.message.find("no new instances"), std::string::npos) << ce.message;

  auto second =
      post("/v1/operations", json::object{{"kind", "host-os"}, {"target", "h1"}, {"notice_ms", 0}});
  EXPECT_EQ(second.status, 409) << second.body;
  auto se = error_of(second);
  EXPECT_EQ(se.code, "invalid_state");
  EXPECT_NE(se.message.find(id), std::string::npos) << "names the running job: " << se.message;

  auto freeze = post("/v1/operations", json::object{{"kind", "freeze"}});
  EXPECT_EQ(freeze.status, 409) << freeze.body;

  // The instances it is updating are not the fabric's to move meanwhile.
  for (const auto& [method, target] :
       std::vector<std::pair<std::string, std::string>>{{"POST", "/v1/instances/web-0/stop"},
                                                        {"POST", "/v1/instances/web-0/start"},
                                                        {"DELETE", "/v1/instances/web-0"}}) {
    auto m = call(method, target);
    EXPECT_EQ(m.status, 409) << method << " " << target << ": " << m.body;
    EXPECT_NE(error_of(m).message.find("Updating"), std::string::npos) << m.body;
  }

  // The refusals happened while the job was really running.
  auto still = parse(call("GET", "/v1/operations/" + id).body);
  EXPECT_EQ(str_at(still, "status"), "running") << json::serialize(still);

  json::object job = wait_job(id, 20s);
  EXPECT_EQ(str_at(job, "status"), "succeeded") << json::serialize(job);
  EXPECT_EQ(call("GET", "/v1/instances/web-7").status, 404)
      << "the refused create left nothing behind";
  // Ready again: creating works.
  EXPECT_EQ(str_at(parse(call("GET", "/v1/host").body), "state"), "Ready");
  EXPECT_EQ(post("/v1/instances", instance_body("web", 7)).status, 201);
}

// ---------------------------------------------------------------------------------------------
// The event stream

// Reads messages until `stop` says so or `timeout` passes; every message must be JSON.
std::vector<json::object> read_until(http::WsClient& ws,
                                     const std::function<bool(const json::object&)>& stop,
                                     std::chrono::milliseconds timeout) {
  std::vector<json::object> out;
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    auto m = ws.read(std::max(left, 1ms));
    if (!m.ok()) {
      ADD_FAILURE() << "websocket read: " << m.error().describe();
      return out;
    }
    json::value v = parse(*m);
    if (!v.is_object()) continue;
    out.push_back(v.as_object());
    if (stop(out.back())) return out;
  }
  ADD_FAILURE() << "the awaited event did not arrive within " << timeout.count() << " ms";
  return out;
}

int64_t seq_of(const json::object& e) {
  return e.contains("seq") && e.at("seq").is_int64() ? e.at("seq").as_int64() : -1;
}
std::string type_of(const json::object& e) { return str_at(e, "type"); }

// The next message of an event stream, which must be a JSON object, into `e`.
void read_object(http::WsClient& ws, json::object& e) {
  auto text = ws.read(5s);
  ASSERT_OK(text);
  json::value v = parse(*text);
  ASSERT_TRUE(v.is_object()) << *text;
  e = std::move(v.as_object());
}

TEST_F(AgentApiTest, EventStreamSnapshotThenHostStateDeltasAndResume) {
  stage("h1");
  auto ws = http::WsClient::connect(kHost, port_, "/v1/events", kRead, 5s);
  ASSERT_OK(ws);
  json::object snap;
  ASSERT_NO_FATAL_FAILURE(read_object(**ws, snap));
  EXPECT_EQ(type_of(snap), "snapshot") << json::serialize(snap);
  EXPECT_EQ(seq_of(snap), static_cast<int64_t>(feed_->last_seq()));
  ASSERT_TRUE(snap.contains("state")) << json::serialize(snap);
  EXPECT_EQ(str_at(snap.at("state").at("host"), "state"), "Ready") << json::serialize(snap);
  EXPECT_EQ(str_at(snap.at("state").at("host"), "host_id"), "host-0") << json::serialize(snap);

  auto r = post("/v1/operations",
                json::object{{"kind", "host-os"}, {"target", "h1"}, {"notice_ms", 200}});
  ASSERT_EQ(r.status, 202) << r.body;
  const std::string id = str_at(parse(r.body), "id");

  bool done_seen = false;
  auto events = read_until(
      **ws,
      [&](const json::object& e) {
        if (type_of(e) == "job.done") done_seen = true;
        return done_seen && type_of(e) == "host.state" && str_at(e, "state") == "Ready";
      },
      20s);
  ASSERT_FALSE(events.empty());

  // Strictly increasing, and since the client got every event after its snapshot: consecutive.
  int64_t prev = seq_of(snap);
  for (const auto& e : events) {
    EXPECT_GT(seq_of(e), prev) << json::serialize(e);
    EXPECT_EQ(seq_of(e), prev + 1) << "gap before " << json::serialize(e);
    EXPECT_EQ(str_at(e, "host"), "host-0") << json::serialize(e);
    EXPECT_FALSE(str_at(e, "time").empty());
    prev = seq_of(e);
  }
  size_t updating = events.size(), ready = events.size();
  for (size_t i = 0; i < events.size(); ++i) {
    if (type_of(events[i]) != "host.state") continue;
    if (str_at(events[i], "state") == "Updating" && updating == events.size()) updating = i;
    if (str_at(events[i], "state") == "Ready") ready = i;
  }
  ASSERT_LT(updating, events.size()) << "no host.state Updating event";
  ASSERT_LT(ready, events.size()) << "no host.state Ready event";
  EXPECT_LT(updating, ready);
  EXPECT_EQ(str_at(events[updating], "job"), id);
  bool activated = false;
  for (const auto& e : events)
    activated = activated || (type_of(e) == "image.activated" && str_at(e, "version") == "h1");
  EXPECT_TRUE(activated) << "no image.activated event for h1";
  // No instances: the feed is quiet after the final host.state.
  EXPECT_EQ(static_cast<int64_t>(feed_->last_seq()), seq_of(events.back()));

  // A second client resuming after the Updating event gets exactly what followed it.
  const int64_t since = seq_of(events[updating]);
  auto ws2 =
      http::WsClient::connect(kHost, port_, "/v1/events?since=" + std::to_string(since), kRead, 5s);
  ASSERT_OK(ws2);
  std::vector<json::object> expected(events.begin() + static_cast<std::ptrdiff_t>(updating) + 1,
                                     events.end());
  ASSERT_FALSE(expected.empty());
  std::vector<json::object> resumed;
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_NO_FATAL_FAILURE(read_object(**ws2, resumed.emplace_back()));
  }
  EXPECT_NE(type_of(resumed.front()), "snapshot") << "a servable since resumes, it does not resync";
  EXPECT_EQ(resumed, expected);
  // Nothing after: no duplicate, no stray snapshot.
  auto extra = (*ws2)->read(300ms);
  EXPECT_FALSE(extra.ok()) << "unexpected extra message: " << (extra.ok() ? *extra : "");

  // A live event reaches both: stage another image.
  stage("h2");
  auto live1 = read_until(
      **ws, [](const json::object& e) { return type_of(e) == "image.staged"; }, 5s);
  ASSERT_FALSE(live1.empty());
  EXPECT_EQ(seq_of(live1.back()), seq_of(events.back()) + 1);
  EXPECT_EQ(str_at(live1.back(), "version"), "h2");
}

TEST_F(AgentApiTest, EventStreamResumeFromTheFutureGetsAResyncSnapshot) {
  stage("h1");  // one event, so the feed is not empty
  const uint64_t last = feed_->last_seq();
  ASSERT_GT(last, 0u);
  auto ws = http::WsClient::connect(kHost, port_, "/v1/events?since=" + std::to_string(last + 1000),
                                    kRead, 5s);
  ASSERT_OK(ws);
  json::object v;
  ASSERT_NO_FATAL_FAILURE(read_object(**ws, v));
  EXPECT_EQ(type_of(v), "snapshot") << json::serialize(v);
  EXPECT_EQ(v.at("resync"), json::value(true)) << json::serialize(v);
  EXPECT_EQ(seq_of(v), static_cast<int64_t>(last));
  // Resuming at the newest seq gives no backlog, then the live events.
  auto at_last =
      http::WsClient::connect(kHost, port_, "/v1/events?since=" + std::to_string(last), kRead, 5s);
  ASSERT_OK(at_last);
  stage("h2");
  json::object n;
  ASSERT_NO_FATAL_FAILURE(read_object(**at_last, n));
  EXPECT_EQ(type_of(n), "image.staged") << json::serialize(n);
  EXPECT_EQ(seq_of(n), static_cast<int64_t>(last) + 1);
}

TEST_F(AgentApiTest, EventStreamAcceptsAccessTokenInTheQuery) {
  auto ws = http::WsClient::connect(kHost, port_, "/v1/events?access_token=read-token", "", 5s);
  ASSERT_OK(ws);
  auto first = (*ws)->read(5s);
  ASSERT_OK(first);
  EXPECT_EQ(type_of(parse(*first).as_object()), "snapshot") << *first;
  auto ctl = http::WsClient::connect(kHost, port_, "/v1/events?access_token=ctl-token", "", 5s);
  EXPECT_OK(ctl);
  // Ping gets a pong.
  ASSERT_OK((*ws)->write(R"({"type":"ping"})"));
  auto pong = (*ws)->read(5s);
  ASSERT_OK(pong);
  EXPECT_EQ(type_of(parse(*pong).as_object()), "pong");
}

TEST_F(AgentApiTest, EventStreamWithoutOrWithABadTokenIsRefused) {
  auto none = http::WsClient::connect(kHost, port_, "/v1/events", "", 5s);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.condition(), Condition::unauthenticated) << none.error().describe();
  EXPECT_NE(none.error().message.find("401"), std::string::npos) << none.error().message;

  auto bad = http::WsClient::connect(kHost, port_, "/v1/events?access_token=nope", "", 5s);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.condition(), Condition::unauthenticated) << bad.error().describe();

  auto bad_header = http::WsClient::connect(kHost, port_, "/v1/events", "nope", 5s);
  ASSERT_FALSE(bad_header.ok());
  EXPECT_EQ(bad_header.condition(), Condition::unauthenticated) << bad_header.error().describe();

  auto bad_since = http::WsClient::connect(kHost, port_, "/v1/events?since=abc", kRead, 5s);
  ASSERT_FALSE(bad_since.ok());
  EXPECT_EQ(bad_since.condition(), Condition::invalid_argument) << bad_since.error().describe();

  // A plain GET on the websocket path says it needs an upgrade.
  EXPECT_EQ(call("GET", "/v1/events", {}, kRead).status, 426);
}

}  // namespace
}  // namespace fabriclab::agent
