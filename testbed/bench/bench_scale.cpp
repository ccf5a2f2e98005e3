// fabriclab-bench-scale: a whole walk over a large simulated rack, end to end through the real
// binaries.
//
// Starts N `fabriclab-agent` processes on libvirt's test driver (no boot time; each agent
// simulates its guests' heartbeats in-process), each on its own loopback address (127.0.1.1,
// 127.0.1.2, ... 127.0.2.1, ...: Linux routes all of 127.0.0.0/8 to lo, and distinct addresses
// keep the orchestrator's many short connections from sharing one 4-tuple space), and one
// `fabriclab-orchestrator` on 127.0.0.1. Then, through the orchestrator's REST API only:
// registers every host, creates services of 2..50 instances with 5..20 UDs summing to
// --instances, waits until every instance is healthy, and starts a host-os drill with every wait
// set to zero (notice_s 0, recovery_s 0, no emulated boot delay; time_scale is left at 1: the API
// takes it in (0, 1], and with every wait zero it changes nothing). The operations are zero-length
// but not free: an agent's Verifying step waits for each restarted guest's first heartbeat (up to
// --heartbeat-ms), and the orchestrator notices a finished job and a Ready host by polling (up to
// --poll-ms each). The drill is polled until Completed or Failed.
//
// Figures: setup_s (agents up, hosts registered, services placed, all healthy; each part also
// separately), wall_s (POST /v1/drills until the bench sees Completed), the orchestrator's own
// drill duration (finished_at - started_at), batches and the planner's lower bound, the
// orchestrator's peak RSS (VmHWM), CPU seconds and context switches, the agents' summed and
// largest VmHWM and their summed PSS (shared pages counted once), and the CPU the idle rack costs
// before the walk (--idle-s). Agents, simulated guests and orchestrator share the machine: on a
// small one the simulated rack's own cost, not the orchestrator, can be the limit.
//
// Every process it starts dies with it: SIGTERM then SIGKILL at the end, on an error, on
// SIGINT/SIGTERM/SIGHUP (a signal thread does it), and PR_SET_PDEATHSIG covers a SIGKILL of the
// bench itself. Its directory (a fresh /tmp/flsc.XXXXXX unless --dir) is removed unless --keep.
//
// Built on common's child_process.hpp (scale_processes.hpp), the rack's OrchestratorClient and
// common's parse_rfc3339_ms; its flags and its printed figures are scale_options.cpp. main() runs
// the phases: prepare, start the orchestrator and the
// agents, register, create services, wait until healthy, measure the idle rack, walk, collect.

#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/random_hex.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/rack/lab.hpp"
#include "scale_options.hpp"
#include "scale_processes.hpp"

using namespace fabriclab;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using client::OrchestratorClient;
using namespace fabriclab::bench_scale;

namespace {

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// ---- the orchestrator's API -----------------------------------------------------------------

// The JSON answer of a call; an error (naming the call and the orchestrator's message) ends the
// bench.
json::value must(Result<json::value> r, const Child* orch) {
  if (!r.ok()) die(r.error().message, orch);
  return std::move(r).value();
}

// The Prometheus text of /metrics, as name{labels} -> value.
std::map<std::string, double> metrics(const OrchestratorClient& api, const Child* orch) {
  auto r = api.get_text("/metrics");
  if (!r.ok()) die("GET /metrics failed: " + r.error().message, orch);
  std::map<std::string, double> out;
  std::istringstream in(*r);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

// Runs fn(0..n-1) on `threads` threads; the first error message (non-empty) wins.
std::string parallel_for(int n, int threads, const std::function<std::string(int)>& fn) {
  std::atomic<int> next{0};
  std::mutex mu;
  std::string first;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      for (int i; (i = next++) < n;) {
        {
          std::lock_guard lock(mu);
          if (!first.empty()) return;
        }
        auto e = fn(i);
        if (!e.empty()) {
          std::lock_guard lock(mu);
          if (first.empty()) first = e;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  return first;
}

// Services of 2..50 instances with 5..20 UDs, summing to `total`.
std::vector<json::object> make_services(int total, unsigned seed) {
  std::mt19937 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<json::object> out;
  int left = total;
  while (left > 0) {
    int n = left <= 50 ? left : std::min(pick(2, 50), left - 2);
    out.push_back(json::object{{"name", "svc" + std::to_string(out.size())},
                               {"instance_count", n},
                               {"ud_count", pick(5, 20)},
                               {"image", "v1"}});
    left -= n;
  }
  return out;
}

// Signals go to one thread that cleans up and exits; every thread started later inherits the
// blocked mask (the HTTP client's threads included; spawn_child unblocks them in the children).
// A shell starts a background job with SIGINT ignored, and an ignored signal never reaches
// sigwait: take SIGINT and SIGTERM back; SIGHUP only when not ignored (nohup means it).
void handle_signals(Cleanup& cleanup) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    ::sigaction(sig, nullptr, &old);
    if (sig == SIGHUP && old.sa_handler == SIG_IGN) continue;
    ::signal(sig, SIG_DFL);
    sigaddset(&stop_signals, sig);
  }
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  g_cleanup = &cleanup;
  std::thread([stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::cerr << "fabriclab-bench-scale: signal " << sig << ": stopping every process started\n";
    g_cleanup->signalled = true;
    g_cleanup->run();
    ::_exit(128 + sig);
  }).detach();
}

// ---- the phases -----------------------------------------------------------------------------

class Bench {
 public:
  Bench(Options& o, Cleanup& cleanup) : o_(o), cleanup_(cleanup) {}

  // The working directory, the agents' state root, the token and the test driver's node file.
  void prepare() {
    if (o_.dir.empty()) {
      char tmpl[] = "/tmp/flsc.XXXXXX";
      if (!::mkdtemp(tmpl)) die(std::string("mkdtemp: ") + std::strerror(errno));
      o_.dir = tmpl;
    } else {
      std::error_code ec;
      if (fs::exists(o_.dir) && !fs::is_empty(o_.dir, ec)) die("--dir " + o_.dir + " is not empty");
      fs::create_directories(o_.dir, ec);
      if (ec) die("--dir " + o_.dir + ": " + ec.message());
      o_.dir = fs::canonical(o_.dir).string();
    }
    cleanup_.dir = o_.dir;
    agent_root_ = o_.dir;
    if (o_.agents_on_tmpfs) {
      char tmpl[] = "/dev/shm/flsc.XXXXXX";
      if (!::mkdtemp(tmpl)) die(std::string("mkdtemp /dev/shm: ") + std::strerror(errno));
      agent_root_ = cleanup_.agent_dir = tmpl;
    }
    token_file_ = o_.dir + "/token";
    token_ = random_hex(32);
    std::ofstream(token_file_) << token_ << "\n";
    // 80 GiB (the test driver counts in KiB): 12 guests of a few hundred MiB each fit with room.
    auto node = hypervisor::write_test_node(o_.dir, 80ull << 20);
    if (!node.ok()) die(node.error().describe());
    node_uri_ = *node;
    if (!o_.json) {
      std::printf(
          "%d hosts, %d instances, capacity %d, poll %d ms, unhealthy after %d ms; dir %s\n",
          o_.hosts, o_.instances, o_.capacity, o_.poll_ms, o_.unhealthy_after_ms, o_.dir.c_str());
      std::fflush(stdout);
    }
    if (static_cast<long>(o_.hosts) * o_.capacity < o_.instances)
      die("--hosts x --capacity is less than --instances");
  }

  // The orchestrator first (its journal on disk like in production: synchronous=FULL commits).
  void start_orchestrator() {
    t_setup_ = Clock::now();
    std::string error;
    orch_ = cleanup_.children.spawn(
        "orchestrator",
        {o_.orchestrator_bin, "--journal", o_.dir + "/j.db", "--port", "0", "--control-token-file",
         token_file_, "--agent-token-file", token_file_, "--poll-ms", std::to_string(o_.poll_ms),
         "--unhealthy-after-ms", std::to_string(o_.unhealthy_after_ms), "--agent-timeout-ms",
         std::to_string(o_.agent_timeout_ms), "--log-level", o_.orchestrator_log_level},
        o_.dir, error);
    if (!orch_) die("could not start " + o_.orchestrator_bin + (error.empty() ? "" : ": " + error));
    await_listening({orch_}, 30s);
    auto api = OrchestratorClient::from_url("http://" + orch_->at.str(), token_);
    if (!api.ok()) die(api.error().message, orch_);
    api_.emplace(std::move(api).value());
    // A loaded 2-core machine with hundreds of agents answers slowly; not an error.
    api_->set_timeout(60s);
  }

  // The agents, `start_parallel` starting at a time, each on its own loopback address.
  void start_agents() {
    auto t_agents = Clock::now();
    for (int i = 0; i < o_.hosts; i += o_.start_parallel) {
      std::vector<Child*> wave;
      for (int k = i; k < std::min(o_.hosts, i + o_.start_parallel); ++k) {
        std::string id =
            std::string("h").append(std::to_string(k));  // not "h" + ...: GCC 12 -Wrestrict
        std::string addr =
            "127.0." + std::to_string(1 + k / 250) + "." + std::to_string(1 + k % 250);
        std::string error;
        Child* c = cleanup_.children.spawn(id,
                                           {o_.agent_bin,
                                            "--host-id",
                                            id,
                                            "--fault-domain",
                                            std::to_string(k % o_.fault_domains),
                                            "--state-dir",
                                            agent_root_ + "/" + id,
                                            "--guest-images",
                                            o_.images,
                                            "--listen",
                                            addr,
                                            "--port",
                                            "0",
                                            "--control-token-file",
                                            token_file_,
                                            "--capacity",
                                            std::to_string(o_.capacity),
                                            "--hypervisor",
                                            node_uri_,
                                            "--lab-host-images",
                                            "host-v1,host-v2",
                                            "--heartbeat-ms",
                                            std::to_string(o_.heartbeat_ms),
                                            "--log-level",
                                            o_.agent_log_level},
                                           o_.dir, error);
        if (!c) die("could not start " + o_.agent_bin + (error.empty() ? "" : ": " + error));
        wave.push_back(c);
      }
      await_listening(wave, 120s);
      agents_.insert(agents_.end(), wave.begin(), wave.end());
    }
    f_.agents_s = since(t_agents);
    progress("agents: %d listening after %.1f s\n", o_.hosts, f_.agents_s);
  }

  // Registration: the orchestrator asks each agent who it is, then journals the cluster.
  void register_hosts() {
    auto t_register = Clock::now();
    auto err = parallel_for(o_.hosts, 4, [&](int k) -> std::string {
      json::object body{{"id", agents_[k]->name},
                        {"fault_domain", k % o_.fault_domains},
                        {"endpoint", "http://" + agents_[k]->at.str()},
                        {"capacity", o_.capacity}};
      auto r = api_->post("/v1/hosts", body);
      return r.ok() ? std::string() : agents_[k]->name + ": " + r.error().message;
    });
    if (!err.empty()) die(err, orch_);
    f_.register_s = since(t_register);
    progress("registration: %d hosts in %.1f s\n", o_.hosts, f_.register_s);
  }

  // Services, one at a time (the orchestrator serializes placement anyway).
  void create_services() {
    auto services = make_services(o_.instances, o_.seed);
    f_.services = services.size();
    auto t_services = Clock::now();
    for (size_t s = 0; s < services.size(); ++s) {
      services[s]["memory_mib"] = o_.memory_mib;
      f_.max_uds = std::max<int>(f_.max_uds, static_cast<int>(services[s]["ud_count"].as_int64()));
      must(api_->post("/v1/services", services[s]), orch_);
      if (!o_.json && (s + 1) % 20 == 0) {
        std::printf("  services: %zu of %zu placed (%.1f s)\n", s + 1, services.size(),
                    since(t_services));
        std::fflush(stdout);
      }
      if (since(t_setup_) > o_.setup_timeout_s) die("setup timeout while creating services", orch_);
    }
    f_.services_s = since(t_services);
  }

  // Every instance healthy (the orchestrator's mirror, fed by its pollers).
  void wait_healthy() {
    auto t_healthy = Clock::now();
    for (;;) {
      if (const Child* gone = cleanup_.children.find_exited())
        die(gone->name + " exited during setup", gone);
      m_ = metrics(*api_, orch_);
      if (m_["fabriclab_instances_healthy"] >= o_.instances) break;
      if (since(t_setup_) > o_.setup_timeout_s) {
        die("setup timeout: " +
                std::to_string(static_cast<int>(m_["fabriclab_instances_healthy"])) + " of " +
                std::to_string(o_.instances) + " instances healthy",
            orch_);
      }
      std::this_thread::sleep_for(500ms);
    }
    f_.healthy_s = since(t_healthy);
    f_.setup_s = since(t_setup_);
    f_.unhealthy_hosts_setup = static_cast<int>(m_["fabriclab_hosts{state=\"Unhealthy\"}"]);
    progress(
        "services: %zu (%d instances, up to %d UDs) placed in %.1f s, all healthy %.1f s later; "
        "setup %.1f s\n",
        f_.services, o_.instances, f_.max_uds, f_.services_s, f_.healthy_s, f_.setup_s);
  }

  // What the idle rack costs (the orchestrator's pollers, the agents and their simulated guests).
  void measure_idle() {
    if (o_.idle_s <= 0) return;
    const pid_t orch = orch_->pid();
    double c0 = cpu_s(orch), a0 = agents_cpu(), s0 = ctx_switches(orch);
    auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(o_.idle_s));
    double dt = since(t0);
    f_.idle_orch_cores = (cpu_s(orch) - c0) / dt;
    f_.idle_agents_cores = (agents_cpu() - a0) / dt;
    f_.idle_orch_cs = (ctx_switches(orch) - s0) / dt;
  }

  // The walk: a host-os drill with every wait zero, polled until it ends.
  void walk() {
    const pid_t orch = orch_->pid();
    double orch_cpu0 = cpu_s(orch), agents_cpu0 = agents_cpu(), orch_cs0 = ctx_switches(orch);
    auto calls0 = m_["fabriclab_agent_calls_total"],
         failures0 = m_["fabriclab_agent_call_failures_total"];
    auto events0 = m_["fabriclab_events_published_total"];
    json::object spec{
        {"kind", "host-os"}, {"target", "host-v2"}, {"recovery_s", 0}, {"notice_s", 0}};
    auto t_walk = Clock::now();
    auto created = must(api_->post("/v1/drills", spec), orch_);
    const std::string id = json_get::str(created, "id");
    f_.batches = static_cast<int>(json_get::int_or(created, "batch_count", 0));
    f_.lower_bound = static_cast<int>(json_get::int_or(created, "lower_bound", 0));
    progress("drill %s: %d batches (lower bound %d)\n", id.c_str(), f_.batches, f_.lower_bound);
    json::value drill = poll_drill(id, t_walk);
    f_.wall_s = since(t_walk);
    f_.orch_cpu_walk = cpu_s(orch) - orch_cpu0;
    f_.agents_cpu_walk = agents_cpu() - agents_cpu0;
    f_.orch_cs_walk = ctx_switches(orch) - orch_cs0;
    m_ = metrics(*api_, orch_);
    f_.calls_walk = m_["fabriclab_agent_calls_total"] - calls0;
    f_.failures_walk = m_["fabriclab_agent_call_failures_total"] - failures0;
    f_.events_walk = m_["fabriclab_events_published_total"] - events0;
    // The orchestrator's own clock for the drill.
    auto started = parse_rfc3339_ms(json_get::str(drill, "started_at"));
    auto finished = parse_rfc3339_ms(json_get::str(drill, "finished_at"));
    if (started && finished) f_.drill_s = static_cast<double>(*finished - *started) / 1000.0;
    f_.batches = static_cast<int>(json_get::int_or(drill, "batch_count", f_.batches));
    for (const auto& h : json_get::arr(drill, "hosts"))
      f_.hosts_done += json_get::str(h, "status") == "done";
    f_.reason = json_get::str(drill, "reason");
  }

  // Peak memory and CPU of every process, while they still run.
  void collect() {
    f_.orch_rss = status_mib(orch_->pid(), "VmHWM");
    for (const Child* a : agents_) {
      double r = status_mib(a->pid(), "VmHWM");
      f_.agents_rss += std::max(0.0, r);
      f_.agent_max = std::max(f_.agent_max, r);
      f_.agents_pss += std::max(0.0, pss_mib(a->pid()));
    }
    f_.orch_cpu_total = cpu_s(orch_->pid());
  }

  const Figures& figures() const { return f_; }

 private:
  // GET /v1/drills/ID until it is Completed, Failed or Aborted; the last answer.
  json::value poll_drill(const std::string& id, Clock::time_point t_walk) {
    int last_batch = -1;
    for (;;) {
      if (const Child* gone = cleanup_.children.find_exited())
        die(gone->name + " exited during the walk", gone);
      json::value drill = must(api_->get("/v1/drills/" + id), orch_);
      f_.state = json_get::str(drill, "state");
      if (f_.state == "Completed" || f_.state == "Failed" || f_.state == "Aborted") return drill;
      if (since(t_walk) > o_.walk_timeout_s)
        die("walk timeout in batch " + std::to_string(last_batch + 1), orch_);
      int cb = static_cast<int>(json_get::int_or(drill, "current_batch", 0));
      if (cb != last_batch && cb < f_.batches)
        progress("  batch %d of %d at %.1f s\n", cb + 1, f_.batches, since(t_walk));
      last_batch = cb;
      auto mm = metrics(*api_, orch_);
      f_.max_unhealthy =
          std::max(f_.max_unhealthy, static_cast<int>(mm["fabriclab_hosts{state=\"Unhealthy\"}"]));
      std::this_thread::sleep_for(200ms);
    }
  }

  double agents_cpu() const {
    double sum = 0;
    for (const Child* a : agents_) sum += std::max(0.0, cpu_s(a->pid()));
    return sum;
  }

  // A progress line (not with --json, whose output is one object).
  template <class... Args>
  void progress(const char* format, Args... args) const {
    if (o_.json) return;
    std::printf(format, args...);
    std::fflush(stdout);
  }

  Options& o_;
  Cleanup& cleanup_;
  std::string agent_root_, token_file_, node_uri_, token_;
  Clock::time_point t_setup_;
  Child* orch_ = nullptr;
  std::vector<Child*> agents_;
  std::optional<OrchestratorClient> api_;
  std::map<std::string, double> m_;  // the last /metrics
  Figures f_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (auto rc = parse_options(argc, argv, o)) return *rc;
  static Cleanup cleanup;
  cleanup.keep = o.keep;
  handle_signals(cleanup);
  Bench bench(o, cleanup);
  bench.prepare();
  bench.start_orchestrator();
  bench.start_agents();
  bench.register_hosts();
  bench.create_services();
  bench.wait_healthy();
  bench.measure_idle();
  bench.walk();
  bench.collect();
  cleanup.run();
  if (o.json) {
    print_json(o, bench.figures());
  } else {
    print_text(o, bench.figures());
  }
  return bench.figures().state == "Completed" ? 0 : 1;
}
