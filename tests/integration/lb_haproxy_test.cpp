// The load balancer (lb.hpp) against a real HAProxy: `haproxy -W -S SOCK -f CFG` on 127.0.0.1,
// started by the test from the renderer's bootstrap configuration, exactly as the rack starts it;
// the backends are small HTTP servers in this process (GET /health answers 200 or 503 at the
// test's command, GET / says who answered, GET /slow answers late). Every wait is bounded.
//
// Fails, never skips, when haproxy is missing (Debian's `haproxy` package; testbed/setup.sh).

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/common/http_client.hpp"
#include "fabriclab/orchestrator/cluster.hpp"
#include "fabriclab/orchestrator/lb.hpp"
#include "haproxy_process.hpp"
#include "temp_dir.hpp"
#include "wait_until.hpp"

using namespace fabriclab;
using namespace fabriclab::orchestrator;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using fabriclab::testing::wait_until;

namespace {

constexpr int kIntervalMs = 300;
constexpr int kThreshold = 2;

// A TCP socket bound to 127.0.0.1 at a port the kernel picks, listening with `backlog` when it is
// above 0; -1 when socket or bind fails. `port` is the port it got.
int bind_loopback(int backlog, uint16_t& port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      (backlog > 0 && listen(fd, backlog) != 0)) {
    close(fd);
    return -1;
  }
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

// A guest app stand-in: one thread accepting on 127.0.0.1:0, one thread per connection, one
// request per connection.
class Backend {
 public:
  explicit Backend(std::string name) : name_(std::move(name)) {
    fd_ = bind_loopback(128, port_);
    EXPECT_GE(fd_, 0) << "cannot listen on 127.0.0.1";
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~Backend() {
    stop_ = true;
    acceptor_.join();
    close(fd_);
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, 10s, [this] { return live_ == 0; });
  }

  uint16_t port() const { return port_; }
  const std::string& name() const { return name_; }
  void set_healthy(bool h) { healthy_ = h; }
  int app_requests() const { return app_requests_; }  // GET / and /slow
  int slow_started() const { return slow_started_; }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      {
        std::lock_guard lock(mu_);
        ++live_;
      }
      std::thread([this, c] {
        serve(c);
        close(c);
        std::lock_guard lock(mu_);
        --live_;
        cv_.notify_all();
      }).detach();
    }
  }
  void serve(int c) {
    std::string req;
    char buf[2048];
    auto deadline = Clock::now() + 5s;
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384 &&
           Clock::now() < deadline) {
      pollfd p{c, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      ssize_t n = recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      req.append(buf, static_cast<size_t>(n));
    }
    std::string path;
    {
      std::istringstream line(req.substr(0, req.find("\r\n")));
      std::string method;
      line >> method >> path;
    }
    int status = 200;
    std::string body;
    if (path == "/health") {
      status = healthy_ ? 200 : 503;
      body = healthy_ ? "ok" : "draining";
    } else if (path == "/slow") {
      ++app_requests_;
      ++slow_started_;
      std::this_thread::sleep_for(1500ms);
      body = "slow from " + name_;
    } else {
      ++app_requests_;
      body = "hello from " + name_;
    }
    std::string resp =
        "HTTP/1.1 " + std::to_string(status) + (status == 200 ? " OK" : " Service Unavailable") +
        "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\nConnection: close\r\n\r\n" + body;
    (void)send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
  }

  std::string name_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false}, healthy_{true};
  std::atomic<int> app_requests_{0}, slow_started_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable cv_;
  int live_ = 0;
};

class LbHaproxy : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fabriclab::testing::make_temp_dir("flab-lb");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
    config_ = dir_ + "/haproxy.cfg";
    socket_ = dir_ + "/master.sock";
    LbOptions o;
    o.config_path = config_;
    o.master_socket = socket_;
    o.haproxy = fabriclab::testing::haproxy_bin();
    o.settings = lb_settings_for(config_);
    ASSERT_NE(health_port_.port(), 0) << "cannot bind 127.0.0.1";
    ASSERT_NE(vip_port_.port(), 0) << "cannot bind 127.0.0.1";
    o.settings.health_bind = health_port_.loopback();
    o.settings.hard_stop_after_ms = 10000;
    {
      std::ofstream f(config_);
      f << render_haproxy_config({}, o.settings);  // what the rack writes
    }
    int rc = haproxy_.start(config_, socket_, dir_ + "/haproxy.log");
    ASSERT_EQ(rc, 0) << "cannot start " << o.haproxy << ": " << std::strerror(rc)
                     << " (install Debian's haproxy package)";
    auto lb = LoadBalancer::create(o);
    ASSERT_TRUE(lb.ok()) << lb.error().message;
    lb_ = std::move(lb).value();
    // Up when its own listener answers and the master knows its worker.
    auto host = o.settings.health_bind.substr(0, o.settings.health_bind.find(':'));
    auto port = static_cast<uint16_t>(std::stoi(o.settings.health_bind.substr(host.size() + 1)));
    bool up = wait_until(
        [&] {
          auto r = http::request(host, port, "GET", "/", {}, {}, 500ms);
          return r.ok() && r->status == 200;
        },
        10s);
    ASSERT_TRUE(up) << "haproxy did not come up:\n" << log_tail();
  }

  void TearDown() override {
    haproxy_.stop();
    if (HasFailure()) std::cerr << "haproxy log:\n" << log_tail();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string log_tail() const {
    std::ifstream f(dir_ + "/haproxy.log");
    std::stringstream s;
    s << f.rdbuf();
    auto t = s.str();
    return t.size() > 4000 ? t.substr(t.size() - 4000) : t;
  }

  LbService service(const std::vector<Backend*>& backends, int interval_ms = kIntervalMs,
                    int threshold = kThreshold) const {
    LbService s;
    s.name = "web";
    s.vip = "127.0.0.1";
    s.port = vip_port_.port();
    s.probe_path = "/health";
    s.interval_ms = interval_ms;
    s.unhealthy_threshold = threshold;
    for (auto* b : backends) s.backends.push_back({b->name(), "127.0.0.1", b->port()});
    return s;
  }

  std::map<std::string, std::string> states() const {
    std::map<std::string, std::string> out;
    auto r = lb_->servers();
    if (!r.ok()) return out;
    for (const auto& s : *r) out[s.instance] = s.state;
    return out;
  }

  // UP with a passed check: a server HAProxy has just added counts as UP before its first
  // check, and then a single failure takes it out (it has not reached full health yet).
  bool all_up(const std::vector<Backend*>& bs, std::chrono::milliseconds limit = 10s) const {
    return wait_until(
        [&] {
          auto r = lb_->servers();
          if (!r.ok()) return false;
          for (auto* b : bs) {
            bool ok = false;
            for (const auto& s : *r)
              ok |= s.instance == b->name() && s.state == "UP" && s.check == "L7OK 200";
            if (!ok) return false;
          }
          return true;
        },
        limit);
  }

  // GET path on the VIP; the X-Served-By header, or "status N" / the error.
  std::string get(const std::string& path = "/") const {
    auto r = http::request("127.0.0.1", vip_port_.port(), "GET", path, {}, {}, 5s);
    if (!r.ok()) return "error: " + r.error().message;
    if (r->status != 200) return "status " + std::to_string(r->status);
    auto it = r->headers.find("x-served-by");
    return it == r->headers.end() ? "no X-Served-By" : it->second;
  }

  std::string dir_, config_, socket_;
  // Held from before HAProxy starts until it has stopped (haproxy_process.hpp says why).
  fabriclab::testing::ReservedPort health_port_, vip_port_;
  fabriclab::testing::HaproxyProcess haproxy_;
  std::unique_ptr<LoadBalancer> lb_;
};

TEST_F(LbHaproxy, SpreadsRequestsOverHealthyBackendsAndNamesTheServer) {
  Backend a("web-0"), b("web-1"), c("web-2");
  auto applied = lb_->apply({service({&a, &b, &c})});
  ASSERT_TRUE(applied.ok()) << applied.error().message;
  EXPECT_TRUE(*applied);
  ASSERT_TRUE(all_up({&a, &b, &c})) << "servers never all UP";
  std::map<std::string, int> served;
  for (int i = 0; i < 30; ++i) ++served[get()];
  EXPECT_EQ(served.size(), 3u);
  for (auto* be : {&a, &b, &c}) {
    EXPECT_GE(served[be->name()], 5) << be->name();
    EXPECT_GE(be->app_requests(), 5) << be->name();
  }
  // Same services again: nothing to reload.
  auto again = lb_->apply({service({&a, &b, &c})});
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  EXPECT_EQ(lb_->reloads(), 1);
}

TEST_F(LbHaproxy, ABackendWhoseHealthTurns503IsTakenOutAfterIntervalTimesThreshold) {
  Backend a("web-0"), b("web-1");
  ASSERT_TRUE(lb_->apply({service({&a, &b})}).ok());
  ASSERT_TRUE(all_up({&a, &b}));
  b.set_healthy(false);
  auto t0 = Clock::now();
  ASSERT_TRUE(wait_until([&] { return states()["web-1"] == "DOWN"; }, 10s)) << "web-1 never DOWN";
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  // It takes `fall` failed checks (the threshold raised to span kMinProbeDetectionMs: 4 at
  // 300 ms): at least (fall - 1) intervals after the change (the first failing check may come at
  // once), and not much more than fall intervals (plus scheduling slack on a busy machine).
  const int fall = effective_unhealthy_threshold(kIntervalMs, kThreshold);
  EXPECT_EQ(fall, 4);
  EXPECT_GE(took, (fall - 1) * kIntervalMs - 50);
  EXPECT_LE(took, fall * kIntervalMs + 2 * kIntervalMs + 1500);
  int before = b.app_requests();
  for (int i = 0; i < 20; ++i) EXPECT_EQ(get(), "web-0");
  EXPECT_EQ(b.app_requests(), before) << "a request reached the DOWN backend";
  auto st = lb_->servers();
  ASSERT_TRUE(st.ok());
  for (const auto& s : *st) {
    if (s.instance == "web-1") {
      EXPECT_EQ(s.check, "L7STS 503");
    }
  }
  // And back after one success.
  b.set_healthy(true);
  EXPECT_TRUE(all_up({&a, &b}, 5s));
}

TEST_F(LbHaproxy, AReloadKeepsTheInFlightRequestAndTheDrainedServersDownState) {
  // A long interval: a new worker that did not take the states over would count web-1 UP until
  // its first check, a good part of a second after the reload, and hand it requests meanwhile.
  constexpr int kSlowInterval = 2000;
  Backend a("web-0"), b("web-1"), c("web-2");
  ASSERT_TRUE(lb_->apply({service({&a, &b}, kSlowInterval, 1)}).ok());
  ASSERT_TRUE(all_up({&a, &b}));
  b.set_healthy(false);
  ASSERT_TRUE(wait_until([&] { return states()["web-1"] == "DOWN"; }, 10s));
  // A slow request on the old worker (only web-0 is in rotation).
  std::string slow_result;
  std::thread slow([&] { slow_result = get("/slow"); });
  ASSERT_TRUE(wait_until([&] { return a.slow_started() == 1; }, 5s));
  int b_before = b.app_requests();
  auto applied = lb_->apply({service({&a, &b, &c}, kSlowInterval, 1)});
  ASSERT_TRUE(applied.ok()) << applied.error().message;
  EXPECT_TRUE(*applied);
  EXPECT_EQ(lb_->reloads(), 2);
  // The new worker took the drained server's state over: it is DOWN at once, never UP while its
  // health says 503, and gets no request.
  std::map<std::string, int> served;
  for (int i = 0; i < 12; ++i) ++served[get()];
  EXPECT_EQ(states()["web-1"], "DOWN");
  auto until = Clock::now() + std::chrono::milliseconds(kSlowInterval);
  while (Clock::now() < until) {
    EXPECT_EQ(states()["web-1"], "DOWN");
    ++served[get()];
  }
  EXPECT_EQ(b.app_requests(), b_before) << "the drained server got requests after the reload";
  EXPECT_EQ(served.count("web-1"), 0u);
  slow.join();
  EXPECT_EQ(slow_result, "web-0") << "the in-flight request did not survive the reload";
  EXPECT_TRUE(all_up({&a, &c}));
}

TEST_F(LbHaproxy, HaproxysOwnErrorIsReportedAndTheRunningConfigurationKept) {
  Backend a("web-0");
  ASSERT_TRUE(lb_->apply({service({&a})}).ok());
  std::string before;
  {
    std::ifstream f(config_);
    std::stringstream s;
    s << f.rdbuf();
    before = s.str();
  }
  // Two services of one name: each passes its own check, HAProxy refuses the pair.
  auto dup = service({&a});
  auto bad = lb_->apply({service({&a}), dup});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("haproxy refused the configuration"), std::string::npos)
      << bad.error().message;
  EXPECT_NE(bad.error().message.find("ALERT"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("fe_web"), std::string::npos) << bad.error().message;
  std::ifstream f(config_);
  std::stringstream s;
  s << f.rdbuf();
  EXPECT_EQ(s.str(), before);
  EXPECT_EQ(lb_->reloads(), 1);
  ASSERT_TRUE(all_up({&a}));
  EXPECT_EQ(get(), "web-0");
}

TEST_F(LbHaproxy, AReloadHaproxyCannotStartIsAnErrorAndTheOldWorkerServes) {
  Backend a("web-0");
  ASSERT_TRUE(lb_->apply({service({&a})}).ok());
  ASSERT_TRUE(all_up({&a}));
  // A second service on a port someone else holds: `haproxy -c` accepts it (it binds nothing),
  // the new worker cannot bind it.
  uint16_t held_port = 0;
  int holder = bind_loopback(1, held_port);
  ASSERT_GE(holder, 0) << "cannot listen on 127.0.0.1";
  auto other = service({&a});
  other.name = "api";
  other.port = held_port;
  auto r = lb_->apply({service({&a}), other});
  close(holder);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("reload failed"), std::string::npos) << r.error().message;
  EXPECT_EQ(get(), "web-0");
  // The file says what runs, so the next apply of the same services is a real reload again.
  auto again = lb_->apply({service({&a}), other});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_TRUE(*again);
}

}  // namespace
