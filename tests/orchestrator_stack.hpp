#pragma once
// The orchestrator and its host agents as real, separate processes on loopback, for the
// orchestrator's integration tests. Agents run on libvirt's test driver (simulated guests that
// speak the real channel protocol); every host listens on its own loopback address
// (127.0.1.N+1 for host hN); the orchestrator keeps its SQLite journal in the test's own short
// temporary directory, so it can be SIGKILLed and started again on the same journal.
//
// The fixture owns every process it starts and SIGKILLs them all in TearDown, whether the test
// passed or not; the children also die with the test binary (PR_SET_PDEATHSIG), so a crashed
// test leaves nothing behind. Each child's stdout and stderr go to files in the temp directory;
// a failed test prints their tails.
//
// EventLog records the orchestrator's websocket feed on its own thread. A read that times out
// leaves a Beast websocket unusable, so the recorder reconnects with ?since=<last seq> after
// every quiet spell and after the orchestrator went away; each message is tagged with the
// connection it came on, so a test can reason about resumes.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/common/child_process.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/testbed/images.hpp"
#include "http_call.hpp"
#include "wait_until.hpp"

#ifndef FABRICLAB_AGENT_BIN
#error "FABRICLAB_AGENT_BIN must name the fabriclab-agent binary"
#endif
#ifndef FABRICLAB_ORCHESTRATOR_BIN
#error "FABRICLAB_ORCHESTRATOR_BIN must name the fabriclab-orchestrator binary"
#endif

namespace fabriclab::testing {

namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline constexpr const char* kToken = "it-control-token";
inline constexpr const char* kOrchestratorHost = "127.0.0.1";

// ---- small JSON readers: a missing or mistyped field gives an empty / -1 value -------------
// (common's lenient readers, json_get.hpp, under the short names these tests use)

inline std::string jstr(const json::value& v, std::string_view key) {
  return json_get::str(v, key);
}
inline int64_t jint(const json::value& v, std::string_view key, int64_t fallback = -1) {
  return json_get::int_or(v, key, fallback);
}
inline bool jbool(const json::value& v, std::string_view key) { return json_get::flag(v, key); }
inline const json::array& jarr(const json::value& v, std::string_view key) {
  return json_get::arr(v, key);
}
inline const json::value& jval(const json::value& v, std::string_view key) {
  return json_get::field(v, key);
}
inline json::value parse_or_null(const std::string& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  return ec ? json::value(nullptr) : v;
}

// "2026-11-24T18:00:00.123Z" -> unix ms; 0 when it does not parse.
inline int64_t rfc3339_ms(std::string_view text) { return parse_rfc3339_ms(text).value_or(0); }

// The last lines of a file, indented for a failure message.
inline std::string indented_tail(const std::string& path, size_t max_lines) {
  std::string out;
  std::istringstream in(fabriclab::file_tail(path, max_lines));
  for (std::string line; std::getline(in, line);) out += "    " + line + "\n";
  return out;
}

// ---- a child process ------------------------------------------------------------------------

struct Child {
  std::string name;
  pid_t pid = -1;
  std::string address;  // what it printed after "listening ": HOST:PORT
  uint16_t port = 0;
  std::string out_path, err_path;

  bool running() const { return pid > 0; }

  // SIGKILL and reap (a crash, not a stop). Safe to call twice.
  void kill9() {
    kill_process(pid);
    pid = -1;
  }
};

// Starts `argv` with stdout/stderr appended to `out_path`/`err_path` and waits until it prints
// "listening HOST:PORT" (after what the files held before, so a restart reads its own line). The
// child dies with the test binary; a child that does not listen fails the test, saying what it
// printed, and is killed.
inline Child spawn_listening(const std::string& name, const std::vector<std::string>& argv,
                             const std::string& out_path, const std::string& err_path,
                             std::chrono::milliseconds timeout = 20s) {
  Child c;
  c.name = name;
  c.out_path = out_path;
  c.err_path = err_path;
  SpawnOptions o;
  o.name = name;
  o.stdout_path = out_path;
  o.append_stdout = true;
  o.stderr_path = err_path;
  o.die_with_parent = true;
  auto child = spawn_child(argv, o);
  if (!child.ok()) {
    ADD_FAILURE() << child.error().describe();
    return c;
  }
  c.pid = child->pid;
  auto at = wait_listening(*child, timeout);
  if (!at.ok()) {
    ADD_FAILURE() << at.error().describe();
    c.kill9();
    return c;
  }
  c.address = at->str();
  c.port = at->port;
  return c;
}

// ---- the orchestrator's feed, recorded --------------------------------------------------------

class EventLog {
 public:
  struct Message {
    int connection = 0;  // 1 for the first connection, +1 per reconnect
    json::object body;
  };

  // port(): where the orchestrator listens now (it changes when it is restarted on port 0).
  explicit EventLog(std::function<uint16_t()> port) : port_(std::move(port)) {}
  ~EventLog() { stop(); }

  // Connects (the first message is the snapshot, unless `since` is within the feed's history) and
  // records until stop(). Returns once the first connection is up.
  bool start(std::optional<uint64_t> since = std::nullopt) {
    if (since) last_seq_ = *since, have_seq_ = true;
    thread_ = std::thread([this] { run(); });
    return wait_until([this] { return connections_.load() > 0; }, 10s, 10ms);
  }

  void stop() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
  }

  std::vector<Message> messages() const {
    std::lock_guard lock(mu_);
    return messages_;
  }
  uint64_t last_seq() const {
    std::lock_guard lock(mu_);
    return last_seq_;
  }
  int connections() const { return connections_.load(); }

  // Waits until some recorded message satisfies `pred`; returns it.
  std::optional<json::object> wait_for(const std::function<bool(const json::object&)>& pred,
                                       std::chrono::milliseconds timeout) const {
    auto deadline = Clock::now() + timeout;
    size_t seen = 0;
    while (true) {
      {
        std::lock_guard lock(mu_);
        for (; seen < messages_.size(); ++seen) {
          if (pred(messages_[seen].body)) return messages_[seen].body;
        }
      }
      if (Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(10ms);
    }
  }

 private:
  void run() {
    while (!stopping_) {
      std::string target = "/v1/events";
      {
        std::lock_guard lock(mu_);
        if (have_seq_) target += "?since=" + std::to_string(last_seq_);
      }
      auto ws = http::WsClient::connect(kOrchestratorHost, port_(), target, kToken, 2s);
      if (!ws.ok()) {
        std::this_thread::sleep_for(50ms);
        continue;
      }
      int conn = ++connections_;
      while (!stopping_) {
        // Short reads: a timed-out websocket is unusable, and stop() must not wait long.
        auto m = (*ws)->read(300ms);
        if (!m.ok()) break;
        auto v = parse_or_null(*m);
        if (!v.is_object()) {
          std::lock_guard lock(mu_);
          bad_.push_back(*m);
          continue;
        }
        std::lock_guard lock(mu_);
        auto seq = jint(v, "seq");
        if (seq >= 0) {
          last_seq_ = static_cast<uint64_t>(seq);
          have_seq_ = true;
        }
        messages_.push_back({conn, std::move(v.as_object())});
      }
      (*ws)->close();
    }
  }

  std::function<uint16_t()> port_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  mutable std::mutex mu_;
  std::vector<Message> messages_;
  std::vector<std::string> bad_;
  uint64_t last_seq_ = 0;
  bool have_seq_ = false;
};

// ---- the fixture ----------------------------------------------------------------------------

struct AgentSpec {
  std::string id;
  int fd = 0;
};

class OrchestratorStack : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/flit-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << "mkdtemp failed";
    dir_ = tmpl;
    std::ofstream(dir_ + "/token") << kToken << "\n";
    auto node = hypervisor::write_test_node(dir_);
    ASSERT_TRUE(node.ok()) << node.error().describe();
    node_uri_ = *node;
  }

  void TearDown() override {
    for (auto& log : logs_) log->stop();
    logs_.clear();
    orchestrator_.kill9();
    for (auto& [id, a] : agents_) a.kill9();
    if (HasFailure()) {
      std::cerr << "---- orchestrator log (tail) ----\n"
                << indented_tail(dir_ + "/orchestrator.err", 60);
      for (auto& [id, a] : agents_) {
        std::cerr << "---- agent " << id << " log (tail) ----\n" << indented_tail(a.err_path, 15);
      }
    }
    if (!dir_.empty() && !std::getenv("FABRICLAB_KEEP_TMP")) std::filesystem::remove_all(dir_);
  }

  // ---- processes ----

  // `n` agents h1..hN; agent i (0-based) is in fault domain i % fds.
  void start_agents(int n, int fds, int64_t boot_delay_ms = 0) {
    for (int i = 0; i < n; ++i) {
      std::string id = "h";
      id += std::to_string(i + 1);
      start_agent({id, i % fds}, boot_delay_ms);
    }
  }

  void start_agent(const AgentSpec& spec, int64_t boot_delay_ms = 0) {
    const int n = std::stoi(spec.id.substr(1));
    const std::string listen = "127.0.1." + std::to_string(n + 1);
    // A healthy window of 10 heartbeats (1 s): this machine is shared and loaded, and a guest
    // thread that misses three 100 ms beats is the machine, not the walk.
    std::vector<std::string> argv = {FABRICLAB_AGENT_BIN,
                                     "--host-id",
                                     spec.id,
                                     "--fault-domain",
                                     std::to_string(spec.fd),
                                     "--state-dir",
                                     dir_ + "/" + spec.id,
                                     "--guest-images",
                                     testbed::default_images_dir(),
                                     "--listen",
                                     listen,
                                     "--port",
                                     "0",
                                     "--control-token-file",
                                     dir_ + "/token",
                                     "--capacity",
                                     "4",
                                     "--hypervisor",
                                     node_uri_,
                                     "--lab-host-images",
                                     "host-v1,host-v2",
                                     "--heartbeat-ms",
                                     "100",
                                     "--healthy-periods",
                                     "10",
                                     "--stop-timeout-ms",
                                     "3000",
                                     "--boot-delay-ms",
                                     std::to_string(boot_delay_ms)};
    Child c = spawn_listening("agent " + spec.id, argv, dir_ + "/" + spec.id + ".out",
                              dir_ + "/" + spec.id + ".err");
    ASSERT_TRUE(c.running()) << "agent " << spec.id << " did not start";
    fds_[spec.id] = spec.fd;
    agents_[spec.id] = std::move(c);
  }

  // `extra`: more options (e.g. the load balancer's).
  void start_orchestrator(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {FABRICLAB_ORCHESTRATOR_BIN,
                                     "--journal",
                                     dir_ + "/journal.db",
                                     "--port",
                                     "0",
                                     "--control-token-file",
                                     dir_ + "/token",
                                     "--agent-token-file",
                                     dir_ + "/token",
                                     "--poll-ms",
                                     "100",
                                     "--unhealthy-after-ms",
                                     "1500"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    orchestrator_ = spawn_listening("orchestrator", argv, dir_ + "/orchestrator.out",
                                    dir_ + "/orchestrator.err");
    ASSERT_TRUE(orchestrator_.running()) << "the orchestrator did not start";
    port_ = orchestrator_.port;
  }

  void kill_orchestrator() {
    orchestrator_.kill9();
    port_ = 0;
  }

  // Registers every started agent with the orchestrator.
  void register_agents() {
    for (const auto& [id, a] : agents_) {
      json::object body{{"id", id},
                        {"fault_domain", fds_.at(id)},
                        {"endpoint", "http://" + a.address},
                        {"capacity", 4}};
      auto r = post("/v1/hosts", body);
      ASSERT_EQ(r.status, 201) << "registering " << id << ": " << r.body;
    }
  }

  void create_service(const std::string& name, int instances, int uds) {
    json::object body{{"name", name},
                      {"instance_count", instances},
                      {"ud_count", uds},
                      {"image", "v1"},
                      {"memory_mib", 128}};
    auto r = post("/v1/services", body);
    ASSERT_EQ(r.status, 201) << "service " << name << ": " << r.body;
  }

  // ---- REST ----

  http::ClientResponse call(std::string_view method, std::string_view target,
                            std::string_view body = {}, std::string_view token = kToken) {
    return call_or_fail(kOrchestratorHost, port_.load(), method, target, body, token, 15s);
  }
  http::ClientResponse post(std::string_view target, const json::value& body,
                            std::string_view token = kToken) {
    return call("POST", target, json::serialize(body), token);
  }
  json::value get(std::string_view target) {
    auto r = call("GET", target);
    EXPECT_EQ(r.status, 200) << "GET " << target << ": " << r.body;
    return parse_or_null(r.body);
  }
  // GET without failing the test on a transport error (for polling while things restart).
  json::value try_get(std::string_view target) {
    auto r = http::request(kOrchestratorHost, port_.load(), "GET", target, {}, kToken, 5s);
    if (!r.ok() || r->status != 200) return nullptr;
    return parse_or_null(r->body);
  }

  // An agent's own view (its jobs at /v1/operations, its host at /v1/host).
  json::value agent_get(const std::string& id, std::string_view target) {
    const Child& a = agents_.at(id);
    auto colon = a.address.rfind(':');
    auto r = http::request(a.address.substr(0, colon), a.port, "GET", target, {}, kToken, 10s);
    if (!r.ok() || r->status != 200) {
      ADD_FAILURE() << "agent " << id << " GET " << target << ": "
                    << (r.ok() ? std::to_string(r->status) + " " + r->body : r.error().describe());
      return nullptr;
    }
    return parse_or_null(r->body);
  }

  // ---- waiting ----

  static bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
                         std::chrono::milliseconds period = 50ms) {
    return testing::wait_until(pred, timeout, period);
  }

  // Every instance the orchestrator knows is healthy.
  bool all_instances_healthy() {
    auto v = try_get("/v1/instances");
    if (!v.is_array() || v.as_array().empty()) return false;
    for (const auto& i : v.as_array()) {
      if (!jbool(i, "healthy")) return false;
    }
    return true;
  }

  // The drill document once its state is one of Completed / Failed / Aborted.
  json::value wait_drill_finished(const std::string& id, std::chrono::milliseconds timeout) {
    json::value last;
    wait_until(
        [&] {
          auto d = try_get("/v1/drills/" + id);
          if (d.is_object()) last = d;
          auto s = jstr(last, "state");
          return s == "Completed" || s == "Failed" || s == "Aborted";
        },
        timeout, 100ms);
    return last;
  }

  EventLog& record_events(std::optional<uint64_t> since = std::nullopt) {
    logs_.push_back(std::make_unique<EventLog>([this] { return port_.load(); }));
    EXPECT_TRUE(logs_.back()->start(since)) << "the event feed did not connect";
    return *logs_.back();
  }

  const std::map<std::string, Child>& agents() const { return agents_; }
  Child& agent(const std::string& id) { return agents_.at(id); }
  int fd_of(const std::string& id) const { return fds_.at(id); }
  uint16_t port() const { return port_.load(); }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::string node_uri_;  // the agents' simulated host (write_test_node in dir_)
  Child orchestrator_;
  std::atomic<uint16_t> port_{0};
  std::map<std::string, Child> agents_;
  std::map<std::string, int> fds_;
  std::vector<std::unique_ptr<EventLog>> logs_;
};

}  // namespace fabriclab::testing
