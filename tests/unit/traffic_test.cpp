// The client traffic generator against real sockets on 127.0.0.1 (servers bound to port 0):
// rate, failures (HTTP errors, refused connections, a server that stops answering, deadlines,
// the in-flight bound), X-Served-By, a bounded stop(), refused targets, and (as root) a server
// reachable only inside a network namespace. Waits poll a condition with a deadline; no
// assertion follows a fixed sleep except the rate test's run, whose length is measured.

#include "fabriclab/orchestrator/traffic.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json.hpp>
#include <cstdlib>
#include <functional>
#include <thread>

#include "fabriclab/common/http_server.hpp"
#include "status_matchers.hpp"
#include "test_netns.hpp"
#include "wait_until.hpp"

namespace fabriclab::orchestrator {
namespace {

namespace json = boost::json;
namespace net = boost::asio;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::wait_until;

// An HTTP server on 127.0.0.1:0 answering GET / with `status` and X-Served-By: `name`.
std::unique_ptr<http::Server> serve(int status, std::string name, uint16_t& port) {
  auto server = std::make_unique<http::Server>("traffic-test", http::Tokens{"c", "r"});
  server->route("GET", "/", http::Access::open, [status, name](const http::Request&) {
    http::Response r = http::json_response(status, json::object{{"instance", name}});
    if (!name.empty()) r.headers.emplace_back("X-Served-By", name);
    return r;
  });
  auto p = server->start("127.0.0.1", 0, 2);
  EXPECT_OK(p);
  port = p.ok() ? *p : 0;
  return server;
}

TrafficTarget target(std::string service, uint16_t port, double rps) {
  return TrafficTarget{std::move(service), "127.0.0.1", port, "/", rps};
}

// A counter of stats_json() for `service`; -1 when the service is not there.
int64_t stat_of(const TrafficGenerator& g, const std::string& service, const char* field) {
  const json::object stats = g.stats_json();
  const json::value* s = stats.at("services").as_object().if_contains(service);
  return s ? s->as_object().at(field).as_int64() : -1;
}
int64_t count_of(const TrafficGenerator& g, const std::string& s) {
  return stat_of(g, s, "requests");
}
int64_t failed_of(const TrafficGenerator& g, const std::string& s) {
  return stat_of(g, s, "failed");
}

// A generator sending GET / for "web" to `address`:`port` at `rps`, returned once its `field`
// counter (requests, failed) has reached `at_least`; null, after a failure saying why, otherwise.
std::unique_ptr<TrafficGenerator> web_traffic(uint16_t port, double rps, const char* field,
                                              int64_t at_least, const TrafficOptions& options = {},
                                              const std::string& address = "127.0.0.1") {
  auto g = TrafficGenerator::start({{"web", address, port, "/", rps}}, options);
  EXPECT_OK(g);
  if (!g.ok()) return nullptr;
  if (!wait_until([&] { return stat_of(**g, "web", field) >= at_least; }, 10s)) {
    ADD_FAILURE() << "web's " << field << " did not reach " << at_least;
    return nullptr;
  }
  return std::move(*g);
}

// Every record failed, with HTTP `status` (0: no answer) and the client's `error` ("" for none).
void expect_all_failed(const std::vector<RequestRecord>& records, int status,
                       std::string_view error) {
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(records[i].status, status) << "record " << i;
    EXPECT_EQ(records[i].error, error) << "record " << i;
    EXPECT_TRUE(records[i].failed()) << "record " << i;
  }
}

TEST(Traffic, SendsAtTheConfiguredRateOpenLoop) {
  uint16_t port = 0;
  auto server = serve(200, "web-0", port);
  const double rps = 40;
  auto started = Clock::now();
  auto g = TrafficGenerator::start({target("web", port, rps)});
  ASSERT_OK(g);
  std::this_thread::sleep_for(2s);  // the run; its real length is measured below
  (*g)->stop();
  const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
  auto records = (*g)->records().at("web");
  // Requests due in [0, elapsed]: about rps * elapsed + 1 (the first goes at once). A lagging
  // thread catches up, so the count holds on a loaded machine too.
  const double expected = rps * elapsed + 1;
  EXPECT_GE(static_cast<double>(records.size()), expected * 0.9 - 2) << "elapsed " << elapsed;
  EXPECT_LE(static_cast<double>(records.size()), expected * 1.05 + 2) << "elapsed " << elapsed;
  ASSERT_GE(records.size(), 2u);
  // Evenly spaced send times, in order.
  for (size_t i = 1; i < records.size(); ++i) {
    EXPECT_LE(records[i - 1].sent_ms, records[i].sent_ms);
    EXPECT_NEAR(records[i].sent_ms - records[0].sent_ms, i * 1000.0 / rps, 1.5) << i;
  }
  for (const auto& r : records) {
    EXPECT_EQ(r.status, 200) << r.error;
    EXPECT_FALSE(r.failed());
    EXPECT_GE(r.latency_ms, 0);
  }
  EXPECT_EQ(count_of(**g, "web"), static_cast<int64_t>(records.size()));
  EXPECT_EQ(failed_of(**g, "web"), 0);
}

TEST(Traffic, CapturesTheInstanceThatAnsweredAndLiveStats) {
  uint16_t a = 0, b = 0;
  auto sa = serve(200, "web-0", a);
  auto sb = serve(200, "api-1", b);
  auto g = TrafficGenerator::start({target("web", a, 50), target("api", b, 50)});
  ASSERT_OK(g);
  ASSERT_TRUE(
      wait_until([&] { return count_of(**g, "web") >= 5 && count_of(**g, "api") >= 5; }, 10s));
  json::object stats = (*g)->stats_json();
  const auto& web = stats.at("services").at("web").as_object();
  EXPECT_GE(web.at("requests").as_int64(), 5);
  EXPECT_EQ(web.at("failed").as_int64(), 0);
  EXPECT_TRUE(web.contains("in_flight"));
  EXPECT_TRUE(web.contains("rps"));
  EXPECT_EQ(web.at("last_error").as_string(), "");
  (*g)->stop();
  auto records = (*g)->records();
  ASSERT_FALSE(records.at("web").empty());
  ASSERT_FALSE(records.at("api").empty());
  for (const auto& r : records.at("web")) EXPECT_EQ(r.served_by, "web-0");
  for (const auto& r : records.at("api")) EXPECT_EQ(r.served_by, "api-1");
}

TEST(Traffic, AnHttpErrorStatusCountsAsFailed) {
  uint16_t port = 0;
  auto server = serve(503, "web-0", port);
  auto g = web_traffic(port, 50, "requests", 5);
  ASSERT_TRUE(g);
  EXPECT_EQ(json::value(g->stats_json()).at("services").at("web").at("last_error").as_string(),
            "HTTP 503");
  g->stop();
  auto records = g->records().at("web");
  ASSERT_GE(records.size(), 5u);
  expect_all_failed(records, 503, "");
  EXPECT_EQ(failed_of(*g, "web"), static_cast<int64_t>(records.size()));
}

TEST(Traffic, AClosedPortRecordsTheConnectError) {
  uint16_t port = 0;
  {
    net::io_context ioc;
    net::ip::tcp::acceptor acceptor(ioc, {net::ip::make_address("127.0.0.1"), 0});
    port = acceptor.local_endpoint().port();
  }  // closed: nothing listens there now
  auto g = web_traffic(port, 50, "requests", 3);
  ASSERT_TRUE(g);
  g->stop();
  auto records = g->records().at("web");
  ASSERT_GE(records.size(), 3u);
  expect_all_failed(records, 0, "connect: Connection refused");
}

TEST(Traffic, AServerThatStopsAnsweringMidRunGivesARunOfFailures) {
  uint16_t port = 0;
  auto server = serve(200, "web-0", port);
  auto g = web_traffic(port, 50, "requests", 10);
  ASSERT_TRUE(g);
  // Destroyed, not only stopped: http::Server::stop() can leave its listening socket open until
  // destruction (its close is posted to an io_context it may stop first), which would turn
  // this into a run of timeouts.
  server.reset();
  ASSERT_TRUE(wait_until([&] { return failed_of(*g, "web") >= 10; }, 10s));
  g->stop();
  auto records = g->records().at("web");
  // Successes, then failures only: the outage is one run at the end.
  size_t first_failure = 0;
  while (first_failure < records.size() && !records[first_failure].failed()) ++first_failure;
  EXPECT_GE(first_failure, 10u);
  ASSERT_GE(records.size() - first_failure, 10u);
  for (size_t i = first_failure; i < records.size(); ++i)
    EXPECT_TRUE(records[i].failed()) << i << " " << records[i].status;
}

// A port that accepts connections (the kernel's backlog) but never answers.
struct BlackHole {
  net::io_context ioc;
  net::ip::tcp::acceptor acceptor{ioc, {net::ip::make_address("127.0.0.1"), 0}};
  uint16_t port() const { return acceptor.local_endpoint().port(); }
};

TEST(Traffic, ARequestWithoutAnswerTimesOutAndStopIsBounded) {
  BlackHole hole;
  TrafficOptions options;
  options.request_timeout = 300ms;
  auto g = web_traffic(hole.port(), 20, "failed", 3, options);
  ASSERT_TRUE(g);
  auto records = g->records().at("web");
  ASSERT_GE(records.size(), 3u);
  for (const auto& r : records) {
    EXPECT_EQ(r.error, "timeout");
    EXPECT_GE(r.latency_ms, 250);
  }
  // Requests are in flight now: stop() waits for them, but no longer than their deadline.
  EXPECT_GT(stat_of(*g, "web", "in_flight"), 0);
  auto before = Clock::now();
  g->stop();
  EXPECT_LT(Clock::now() - before, 300ms + 2s);
  EXPECT_EQ(stat_of(*g, "web", "in_flight"), 0);
  // Every request sent was recorded, the in-flight ones included.
  auto after = g->records().at("web");
  EXPECT_EQ(static_cast<int64_t>(after.size()), count_of(*g, "web"));
  g->stop();  // idempotent
}

TEST(Traffic, RequestsOverTheInFlightBoundFailAtOnce) {
  BlackHole hole;
  TrafficOptions options;
  options.request_timeout = 5s;
  options.max_in_flight = 3;
  auto g = web_traffic(hole.port(), 100, "failed", 5, options);
  ASSERT_TRUE(g);
  json::object stats = g->stats_json();
  EXPECT_LE(stats.at("services").at("web").at("in_flight").as_int64(), 3);
  EXPECT_EQ(stats.at("services").at("web").at("last_error").as_string(), "client overloaded");
  auto records = g->records().at("web");
  ASSERT_GE(records.size(), 5u);
  for (const auto& r : records) EXPECT_EQ(r.error, "client overloaded");
  // Drop the in-flight ones quickly: closing the listener resets the queued connections.
  hole.acceptor.close();
  g->stop();
}

TEST(Traffic, MaxRecordsBoundsTheRecordsNotTheCount) {
  uint16_t port = 0;
  auto server = serve(200, "web-0", port);
  TrafficOptions options;
  options.max_records = 4;
  auto g = web_traffic(port, 100, "requests", 10, options);
  ASSERT_TRUE(g);
  g->stop();
  EXPECT_EQ(g->records().at("web").size(), 4u);
  EXPECT_GE(count_of(*g, "web"), 10);
}

TEST(Traffic, BadTargetsAreRefusedNamingTheField) {
  auto refused = [](TrafficTarget t, std::string_view field, TrafficOptions o = {}) {
    auto g = TrafficGenerator::start({target("ok", 80, 1), std::move(t)}, o);
    ASSERT_FALSE(g.ok()) << field;
    EXPECT_EQ(g.condition(), Condition::invalid_argument) << field;
    EXPECT_NE(g.error().message.find(field), std::string::npos) << g.error().message;
  };
  refused({"web", "198.18.1", 80, "/", 20}, "'address'");
  refused({"web", "localhost", 80, "/", 20}, "'address'");
  refused({"web", "198.18.1.10", 0, "/", 20}, "'port'");
  refused({"web", "198.18.1.10", 80, "health", 20}, "'path'");
  refused({"web", "198.18.1.10", 80, "/a b", 20}, "'path'");
  refused({"web", "198.18.1.10", 80, "/", 0}, "'rps'");
  refused({"web", "198.18.1.10", 80, "/", 1001}, "'rps'");
  refused({"", "198.18.1.10", 80, "/", 20}, "'service'");
  refused({"ok", "198.18.1.10", 80, "/", 20}, "listed twice");
  refused({"web", "bad", 80, "/", 20}, "traffic target 'web'");
  TrafficOptions bad_ns;
  bad_ns.netns = "../etc";
  refused({"web", "198.18.1.10", 80, "/", 20}, "network namespace", bad_ns);
}

TEST(Traffic, ANamespaceThatCannotBeEnteredIsAStartError) {
  TrafficOptions o;
  o.netns = "/nonexistent/fabriclab-ns";
  auto g = TrafficGenerator::start({target("web", 80, 10)}, o);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.condition(), Condition::not_found);
  EXPECT_NE(g.error().message.find("/nonexistent/fabriclab-ns"), std::string::npos);
}

TEST(Traffic, NoTargetsSendsNothingAndStops) {
  auto g = TrafficGenerator::start({});
  ASSERT_OK(g);
  (*g)->stop();
  EXPECT_TRUE((*g)->records().empty());
  EXPECT_TRUE((*g)->stats_json().at("services").as_object().empty());
}

// As root: a server on an address that exists only inside a namespace of the test's making is
// reached from the generator's thread, and the test's own thread stays in its namespace.
TEST(Traffic, ReachesAnAddressThatExistsOnlyInsideTheNamespace) {
  if (!testing::can_make_netns()) GTEST_SKIP() << "needs root and /usr/sbin/ip";
  const std::string name = "flabtraffic-" + std::to_string(getpid());
  testing::TestNetns netns;
  ASSERT_TRUE(netns.make(name, "198.18.1.10"));
  std::unique_ptr<http::Server> server;
  Result<uint16_t> port = make_error(Condition::internal, "the server was not started");
  ASSERT_TRUE(netns.run_inside([&] {
    server = std::make_unique<http::Server>("traffic-test", http::Tokens{"c", "r"});
    server->route("GET", "/", http::Access::open, [](const http::Request&) {
      http::Response r = http::json_response(200, json::object{});
      r.headers.emplace_back("X-Served-By", "web-0");
      return r;
    });
    port = server->start("198.18.1.10", 0);
  }));
  ASSERT_OK(port);

  // What `at_least` requests at `rps` recorded, sent through `options`.
  auto records = [&](double rps, int64_t at_least, const TrafficOptions& options) {
    auto g = web_traffic(*port, rps, "requests", at_least, options, "198.18.1.10");
    if (g) g->stop();
    return g ? g->records().at("web") : std::vector<RequestRecord>{};
  };
  const auto inside = records(50, 5, {.netns = name, .request_timeout = 1s});
  ASSERT_GE(inside.size(), 5u);
  for (const auto& r : inside) {
    EXPECT_EQ(r.status, 200) << r.error;
    EXPECT_EQ(r.served_by, "web-0");
  }
  // Without the namespace the address does not exist here.
  const auto outside = records(20, 1, {.request_timeout = 300ms});
  ASSERT_GE(outside.size(), 1u);
  for (const auto& r : outside) EXPECT_TRUE(r.failed()) << r.status;
  server->stop();
}

}  // namespace
}  // namespace fabriclab::orchestrator
