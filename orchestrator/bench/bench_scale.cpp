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

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

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
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/common/http_client.hpp"

using namespace fabriclab;
using namespace std::chrono_literals;
namespace json = boost::json;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double round3(double x) { return std::round(x * 1000) / 1000; }

// ---- the processes we start ----------------------------------------------------------------

struct Child {
  pid_t pid = -1;
  int out_fd = -1;      // its stdout (read for "listening ADDR:PORT", then kept open)
  std::string name;     // "orchestrator" or the host id
  std::string log;      // its stderr
  std::string partial;  // stdout read so far, until the listening line
  std::string addr;
  uint16_t port = 0;
};

class Children {
 public:
  // Forks and execs `argv`; stdout to a pipe, stderr to `log`, stdin from /dev/null. The child
  // gets SIGKILL when the bench dies (PR_SET_PDEATHSIG), and its own process group, so a Ctrl-C
  // reaches the bench only and the bench decides how children end.
  Child* spawn(const std::string& name, const std::vector<std::string>& argv, const std::string& log) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::lock_guard lock(mu_);
    if (closed_) return nullptr;
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return nullptr;
    int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid == 0) {  // only async-signal-safe calls from here
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::setpgid(0, 0);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::dup2(null, 0);
      ::dup2(p[1], 1);
      if (err >= 0) ::dup2(err, 2);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(p[1]);
    if (err >= 0) ::close(err);
    if (null >= 0) ::close(null);
    if (pid < 0) {
      ::close(p[0]);
      return nullptr;
    }
    ::fcntl(p[0], F_SETFL, O_NONBLOCK);
    auto c = std::make_unique<Child>();
    c->pid = pid;
    c->out_fd = p[0];
    c->name = name;
    c->log = log;
    list_.push_back(std::move(c));
    return list_.back().get();
  }

  // Ends every child: SIGTERM, up to `grace` for all to exit, then SIGKILL; reaps them all.
  // Afterwards spawn() refuses. Safe to call twice and from the signal thread.
  void kill_all(std::chrono::milliseconds grace) {
    std::lock_guard lock(mu_);
    closed_ = true;
    for (auto& c : list_) {
      if (c->pid > 0) ::kill(c->pid, SIGTERM);
    }
    auto deadline = Clock::now() + grace;
    for (;;) {
      bool left = false;
      for (auto& c : list_) {
        if (c->pid <= 0) continue;
        pid_t r = ::waitpid(c->pid, nullptr, WNOHANG);
        if (r == c->pid || (r < 0 && errno == ECHILD)) c->pid = -1;
        else left = true;
      }
      if (!left) break;
      if (Clock::now() > deadline) {
        for (auto& c : list_) {
          if (c->pid > 0) {
            ::kill(c->pid, SIGKILL);
            ::waitpid(c->pid, nullptr, 0);
            c->pid = -1;
          }
        }
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    for (auto& c : list_) {
      if (c->out_fd >= 0) ::close(c->out_fd);
      c->out_fd = -1;
    }
  }

  // A child that exited on its own (reaped here); nullptr when all run.
  Child* find_exited() {
    std::lock_guard lock(mu_);
    for (auto& c : list_) {
      if (c->pid <= 0) continue;
      int status = 0;
      if (::waitpid(c->pid, &status, WNOHANG) == c->pid) {
        c->pid = -1;
        return c.get();
      }
    }
    return nullptr;
  }

 private:
  std::mutex mu_;
  bool closed_ = false;
  std::vector<std::unique_ptr<Child>> list_;
};

// What must happen on any exit: children ended, directory removed.
struct Cleanup {
  Children children;
  std::string dir;
  std::string agent_dir;  // when the agents' state lives elsewhere (--agents-on-tmpfs)
  bool keep = false;
  std::atomic<bool> signalled{false};  // the signal thread is cleaning up and will exit
  std::mutex mu;
  bool done = false;

  // Once; a second caller waits until the first has finished.
  void run() {
    std::lock_guard lock(mu);
    if (done) return;
    done = true;
    children.kill_all(std::chrono::seconds(10));
    for (const auto& d : {dir, agent_dir}) {
      std::error_code ec;
      if (!d.empty() && !keep) fs::remove_all(d, ec);
    }
  }
};
Cleanup* g_cleanup = nullptr;

std::string tail_of(const std::string& path, size_t bytes = 1500) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > bytes ? "..." + s.substr(s.size() - bytes) : s;
}

[[noreturn]] void die(const std::string& what, const Child* c = nullptr) {
  // Failing because a signal is ending everything: the signal thread cleans up and exits.
  if (g_cleanup && g_cleanup->signalled) {
    for (;;) ::pause();
  }
  std::cerr << "fabriclab-bench-scale: " << what << "\n";
  if (c) std::cerr << "--- " << c->name << " stderr (" << c->log << "):\n" << tail_of(c->log) << "\n";
  if (g_cleanup) {
    if (c) g_cleanup->keep = true;  // leave the logs for a post-mortem
    g_cleanup->run();
    if (g_cleanup->keep) std::cerr << "logs kept in " << g_cleanup->dir << "\n";
  }
  std::exit(1);
}

// Waits until each child in `cs` printed "listening ADDR:PORT" on stdout.
void await_listening(const std::vector<Child*>& cs, std::chrono::seconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::vector<Child*> waiting(cs.begin(), cs.end());
  while (!waiting.empty()) {
    if (Clock::now() > deadline) die(waiting.front()->name + " did not print 'listening' in time", waiting.front());
    std::vector<pollfd> fds;
    for (auto* c : waiting) fds.push_back({c->out_fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);
    for (size_t i = 0; i < fds.size(); ++i) {
      Child* c = waiting[i];
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[512];
      ssize_t n = ::read(c->out_fd, buf, sizeof buf);
      if (n == 0) die(c->name + " exited before listening", c);
      if (n > 0) c->partial.append(buf, n);
      auto nl = c->partial.find('\n');
      if (nl == std::string::npos) continue;
      std::string line = c->partial.substr(0, nl);
      auto colon = line.rfind(':');
      if (line.rfind("listening ", 0) != 0 || colon == std::string::npos) {
        die(c->name + " printed '" + line + "', not 'listening ADDR:PORT'", c);
      }
      c->addr = line.substr(10, colon - 10);
      c->port = static_cast<uint16_t>(std::stoi(line.substr(colon + 1)));
    }
    std::erase_if(waiting, [](Child* c) { return c->port != 0; });
  }
}

// ---- /proc ----------------------------------------------------------------------------------

// A "Key:   N kB" line of /proc/PID/status, in MiB; -1 when unreadable.
double status_mib(pid_t pid, const char* key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  size_t k = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, k, key) == 0 && line.size() > k && line[k] == ':') {
      return std::stod(line.substr(k + 1)) / 1024.0;
    }
  }
  return -1;
}

// Context switches of a process, all threads (voluntary + involuntary), from /proc/PID/task/*.
double ctx_switches(pid_t pid) {
  double sum = 0;
  std::error_code ec;
  for (const auto& t : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(t.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 || line.rfind("nonvoluntary_ctxt_switches:", 0) == 0) {
        sum += std::stod(line.substr(line.find(':') + 1));
      }
    }
  }
  return sum;
}

// Proportional set size (shared pages split between the processes sharing them), in MiB; the
// sum over processes is what they occupy together, unlike a sum of VmHWM.
double pss_mib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pss:", 0) == 0) return std::stod(line.substr(4)) / 1024.0;
  }
  return -1;
}

// utime + stime of a process, in seconds.
double cpu_s(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto rp = s.rfind(')');
  if (rp == std::string::npos) return -1;
  std::istringstream rest(s.substr(rp + 2));
  std::string f;
  std::vector<std::string> fields;
  while (rest >> f) fields.push_back(f);
  // Fields after ")" start at field 3 (state); utime and stime are fields 14 and 15.
  if (fields.size() < 13) return -1;
  return (std::stod(fields[11]) + std::stod(fields[12])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// ---- the orchestrator's API -----------------------------------------------------------------

struct Api {
  std::string host;
  uint16_t port = 0;
  std::string token;

  Result<http::ClientResponse> call(std::string_view method, const std::string& target,
                                    const std::string& body = {},
                                    std::chrono::milliseconds timeout = 60s) const {
    return http::request(host, port, method, target, body, token, timeout);
  }

  // The parsed JSON answer of a call expected to return `expect`; dies otherwise.
  json::value must(std::string_view method, const std::string& target, const std::string& body,
                   int expect, const Child* orch) const {
    auto r = call(method, target, body);
    if (!r.ok()) die(std::string(method) + " " + target + ": " + r.error().describe(), orch);
    if (r->status != expect) {
      die(std::string(method) + " " + target + ": HTTP " + std::to_string(r->status) + ": " +
              r->body.substr(0, 600),
          orch);
    }
    boost::system::error_code ec;
    auto v = json::parse(r->body, ec);
    if (ec) die(std::string(method) + " " + target + ": answer is not JSON", orch);
    return v;
  }

  // The Prometheus text of /metrics, as name{labels} -> value.
  std::map<std::string, double> metrics(const Child* orch) const {
    auto r = call("GET", "/metrics");
    if (!r.ok() || r->status != 200) die("GET /metrics failed", orch);
    std::map<std::string, double> out;
    std::istringstream in(r->body);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      auto sp = line.rfind(' ');
      if (sp == std::string::npos) continue;
      out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
    }
    return out;
  }
};

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

struct Options {
  int hosts = 500;
  int instances = 5000;
  int capacity = 12;
  int memory_mib = 64;
  int poll_ms = 1000;
  int unhealthy_after_ms = 30000;
  int agent_timeout_ms = 5000;
  int heartbeat_ms = 2000;
  int fault_domains = 3;
  unsigned seed = 1;
  int start_parallel = 16;
  std::string agent_bin, orchestrator_bin, images, dir;
  std::string agent_log_level = "warn", orchestrator_log_level = "info";
  double setup_timeout_s = 1800, walk_timeout_s = 3600;
  double idle_s = 5;
  bool agents_on_tmpfs = false;
  bool keep = false;
  bool json = false;
};

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

std::string self_dir() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A whole zero-length walk over N simulated hosts (libvirt test driver) with M "
               "instances, through the real agent and orchestrator binaries"};
  Options o;
  std::string here = self_dir();
  o.agent_bin = here + "/../agent/fabriclab-agent";
  o.orchestrator_bin = here + "/fabriclab-orchestrator";
#ifdef FABRICLAB_BENCH_IMAGES_DIR
  o.images = FABRICLAB_BENCH_IMAGES_DIR;
#endif
  app.add_option("--hosts", o.hosts, "Simulated hosts (agent processes)")->check(CLI::Range(1, 5000))->capture_default_str();
  app.add_option("--instances", o.instances, "Instances in all (services of 2..50)")
      ->check(CLI::Range(2, 1000000))->capture_default_str();
  app.add_option("--capacity", o.capacity, "Instances per host")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--memory-mib", o.memory_mib, "Memory of each instance")->check(CLI::Range(64, 4096))->capture_default_str();
  app.add_option("--fault-domains", o.fault_domains, "Host N is in fault domain N mod this")
      ->check(CLI::Range(1, 100))->capture_default_str();
  app.add_option("--poll-ms", o.poll_ms, "Orchestrator --poll-ms")->check(CLI::Range(10, 60000))->capture_default_str();
  app.add_option("--unhealthy-after-ms", o.unhealthy_after_ms, "Orchestrator --unhealthy-after-ms")
      ->check(CLI::Range(100, 3600000))->capture_default_str();
  app.add_option("--agent-timeout-ms", o.agent_timeout_ms, "Orchestrator --agent-timeout-ms")
      ->check(CLI::Range(100, 600000))->capture_default_str();
  app.add_option("--heartbeat-ms", o.heartbeat_ms, "Agents' --heartbeat-ms (simulated guests)")
      ->check(CLI::Range(10, 60000))->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of the service sizes")->capture_default_str();
  app.add_option("--start-parallel", o.start_parallel, "Agents starting at once")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--agent", o.agent_bin, "fabriclab-agent binary")->capture_default_str();
  app.add_option("--orchestrator", o.orchestrator_bin, "fabriclab-orchestrator binary")->capture_default_str();
  app.add_option("--images", o.images, "Guest image directory (manifest.json) for the agents")->capture_default_str();
  app.add_option("--dir", o.dir, "Working directory (default: a new /tmp/flsc.XXXXXX; removed at the end)");
  app.add_flag("--keep", o.keep, "Keep the working directory (logs, journal)");
  app.add_flag("--agents-on-tmpfs", o.agents_on_tmpfs,
               "Agents' state directories in a new /dev/shm/flsc.XXXXXX: the simulated guests "
               "fdatasync a counter file at every heartbeat, a cost of the simulation");
  app.add_option("--idle-s", o.idle_s, "Before the walk, measure the idle CPU of the rack this long")
      ->check(CLI::Range(0.0, 600.0))->capture_default_str();
  app.add_option("--agent-log-level", o.agent_log_level)->capture_default_str();
  app.add_option("--orchestrator-log-level", o.orchestrator_log_level)->capture_default_str();
  app.add_option("--setup-timeout-s", o.setup_timeout_s, "Give up on the setup after this")->capture_default_str();
  app.add_option("--walk-timeout-s", o.walk_timeout_s, "Give up on the walk after this")->capture_default_str();
  app.add_flag("--json", o.json, "Print one JSON object");
  CLI11_PARSE(app, argc, argv);
  if (o.images.empty()) die("--images is required (a guest image directory with manifest.json)");
  if (!fs::exists(o.images + "/manifest.json")) die("no manifest.json in --images " + o.images);
  for (const auto& bin : {o.agent_bin, o.orchestrator_bin}) {
    if (::access(bin.c_str(), X_OK) != 0) die(bin + " is not an executable (see --agent, --orchestrator)");
  }
  o.agent_bin = fs::canonical(o.agent_bin).string();
  o.orchestrator_bin = fs::canonical(o.orchestrator_bin).string();
  o.images = fs::absolute(o.images).string();

  // Signals go to one thread that cleans up and exits; every thread started later inherits the
  // blocked mask (the HTTP client's threads included).
  // A shell starts a background job with SIGINT ignored, and an ignored signal never reaches
  // sigwait: take SIGINT and SIGTERM back; SIGHUP only when not ignored (nohup means it).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old{};
    ::sigaction(sig, nullptr, &old);
    if (sig == SIGHUP && old.sa_handler == SIG_IGN) continue;
    ::signal(sig, SIG_DFL);
    sigaddset(&stop_signals, sig);
  }
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  static Cleanup cleanup;
  g_cleanup = &cleanup;
  cleanup.keep = o.keep;
  std::thread([stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::cerr << "fabriclab-bench-scale: signal " << sig << ": stopping every process started\n";
    g_cleanup->signalled = true;
    g_cleanup->run();
    ::_exit(128 + sig);
  }).detach();

  if (o.dir.empty()) {
    char tmpl[] = "/tmp/flsc.XXXXXX";
    if (!::mkdtemp(tmpl)) die(std::string("mkdtemp: ") + std::strerror(errno));
    o.dir = tmpl;
  } else {
    std::error_code ec;
    if (fs::exists(o.dir) && !fs::is_empty(o.dir, ec)) die("--dir " + o.dir + " is not empty");
    fs::create_directories(o.dir, ec);
    if (ec) die("--dir " + o.dir + ": " + ec.message());
    o.dir = fs::canonical(o.dir).string();
  }
  cleanup.dir = o.dir;
  std::string agent_root = o.dir;
  if (o.agents_on_tmpfs) {
    char tmpl[] = "/dev/shm/flsc.XXXXXX";
    if (!::mkdtemp(tmpl)) die(std::string("mkdtemp /dev/shm: ") + std::strerror(errno));
    agent_root = cleanup.agent_dir = tmpl;
  }

  const std::string token_file = o.dir + "/token", node_xml = o.dir + "/node.xml";
  std::string token;
  {
    std::random_device rd;
    char buf[33];
    std::snprintf(buf, sizeof buf, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    token = buf;
    std::ofstream(token_file) << token << "\n";
    // 80 GiB (the test driver counts in KiB): 12 guests of a few hundred MiB each fit with room.
    std::ofstream(node_xml) << "<node><cpu><mhz>2000</mhz></cpu><memory>83886080</memory></node>\n";
  }
  if (!o.json) {
    std::printf("%d hosts, %d instances, capacity %d, poll %d ms, unhealthy after %d ms; dir %s\n",
                o.hosts, o.instances, o.capacity, o.poll_ms, o.unhealthy_after_ms, o.dir.c_str());
    std::fflush(stdout);
  }
  if (static_cast<long>(o.hosts) * o.capacity < o.instances) {
    die("--hosts x --capacity is less than --instances");
  }

  // The orchestrator first (its journal on disk like in production: synchronous=FULL commits).
  auto t_setup = Clock::now();
  Child* orch = cleanup.children.spawn(
      "orchestrator",
      {o.orchestrator_bin, "--journal", o.dir + "/j.db", "--port", "0", "--control-token-file", token_file,
       "--agent-token-file", token_file, "--poll-ms", std::to_string(o.poll_ms), "--unhealthy-after-ms",
       std::to_string(o.unhealthy_after_ms), "--agent-timeout-ms", std::to_string(o.agent_timeout_ms),
       "--log-level", o.orchestrator_log_level},
      o.dir + "/orchestrator.log");
  if (!orch) die("could not start " + o.orchestrator_bin);
  await_listening({orch}, 30s);
  Api api{orch->addr, orch->port, token};

  // The agents, `start_parallel` starting at a time.
  std::vector<Child*> agents;
  auto t_agents = Clock::now();
  for (int i = 0; i < o.hosts; i += o.start_parallel) {
    std::vector<Child*> wave;
    for (int k = i; k < std::min(o.hosts, i + o.start_parallel); ++k) {
      std::string id = std::string("h").append(std::to_string(k));  // not "h" + ...: GCC 12 -Wrestrict
      std::string addr = "127.0." + std::to_string(1 + k / 250) + "." + std::to_string(1 + k % 250);
      std::string state = agent_root + "/" + id;
      Child* c = cleanup.children.spawn(
          id,
          {o.agent_bin, "--host-id", id, "--fault-domain", std::to_string(k % o.fault_domains), "--state-dir", state,
           "--guest-images", o.images, "--listen", addr, "--port", "0", "--control-token-file", token_file,
           "--capacity", std::to_string(o.capacity), "--hypervisor", "test://" + node_xml, "--lab-host-images",
           "host-v1,host-v2", "--heartbeat-ms", std::to_string(o.heartbeat_ms), "--log-level", o.agent_log_level},
          o.dir + "/" + id + ".log");
      if (!c) die("could not start " + o.agent_bin);
      wave.push_back(c);
    }
    await_listening(wave, 120s);
    agents.insert(agents.end(), wave.begin(), wave.end());
  }
  double agents_s = since(t_agents);
  if (!o.json) {
    std::printf("agents: %d listening after %.1f s\n", o.hosts, agents_s);
    std::fflush(stdout);
  }

  // Registration: the orchestrator asks each agent who it is, then journals the cluster.
  auto t_register = Clock::now();
  auto err = parallel_for(o.hosts, 4, [&](int k) -> std::string {
    json::object body{{"id", agents[k]->name},
                      {"fault_domain", k % o.fault_domains},
                      {"endpoint", "http://" + agents[k]->addr + ":" + std::to_string(agents[k]->port)},
                      {"capacity", o.capacity}};
    auto r = api.call("POST", "/v1/hosts", json::serialize(body));
    if (!r.ok()) return "POST /v1/hosts " + agents[k]->name + ": " + r.error().describe();
    if (r->status != 201) return "POST /v1/hosts " + agents[k]->name + ": HTTP " + std::to_string(r->status) + ": " + r->body;
    return {};
  });
  if (!err.empty()) die(err, orch);
  double register_s = since(t_register);
  if (!o.json) {
    std::printf("registration: %d hosts in %.1f s\n", o.hosts, register_s);
    std::fflush(stdout);
  }

  // Services, one at a time (the orchestrator serializes placement anyway).
  auto services = make_services(o.instances, o.seed);
  int max_uds = 0;
  auto t_services = Clock::now();
  for (size_t s = 0; s < services.size(); ++s) {
    services[s]["memory_mib"] = o.memory_mib;
    max_uds = std::max<int>(max_uds, static_cast<int>(services[s]["ud_count"].as_int64()));
    api.must("POST", "/v1/services", json::serialize(services[s]), 201, orch);
    if (!o.json && (s + 1) % 20 == 0) {
      std::printf("  services: %zu of %zu placed (%.1f s)\n", s + 1, services.size(), since(t_services));
      std::fflush(stdout);
    }
    if (since(t_setup) > o.setup_timeout_s) die("setup timeout while creating services", orch);
  }
  double services_s = since(t_services);

  // Every instance healthy (the orchestrator's mirror, fed by its pollers).
  auto t_healthy = Clock::now();
  std::map<std::string, double> m;
  for (;;) {
    if (Child* gone = cleanup.children.find_exited()) die(gone->name + " exited during setup", gone);
    m = api.metrics(orch);
    if (m["fabriclab_instances_healthy"] >= o.instances) break;
    if (since(t_setup) > o.setup_timeout_s) {
      die("setup timeout: " + std::to_string(static_cast<int>(m["fabriclab_instances_healthy"])) + " of " +
              std::to_string(o.instances) + " instances healthy",
          orch);
    }
    std::this_thread::sleep_for(500ms);
  }
  double healthy_s = since(t_healthy);
  double setup_s = since(t_setup);
  int unhealthy_hosts_setup = static_cast<int>(m["fabriclab_hosts{state=\"Unhealthy\"}"]);
  if (!o.json) {
    std::printf("services: %zu (%d instances, up to %d UDs) placed in %.1f s, all healthy %.1f s later; "
                "setup %.1f s\n",
                services.size(), o.instances, max_uds, services_s, healthy_s, setup_s);
    std::fflush(stdout);
  }

  // What the idle rack costs (the orchestrator's pollers, the agents and their simulated guests).
  auto agents_cpu = [&] {
    double sum = 0;
    for (auto* a : agents) sum += std::max(0.0, cpu_s(a->pid));
    return sum;
  };
  double idle_orch_cores = -1, idle_agents_cores = -1, idle_orch_cs = -1;
  if (o.idle_s > 0) {
    double c0 = cpu_s(orch->pid), a0 = agents_cpu(), s0 = ctx_switches(orch->pid);
    auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(o.idle_s));
    double dt = since(t0);
    idle_orch_cores = (cpu_s(orch->pid) - c0) / dt;
    idle_agents_cores = (agents_cpu() - a0) / dt;
    idle_orch_cs = (ctx_switches(orch->pid) - s0) / dt;
  }

  // The walk: a host-os drill with every wait zero.
  double orch_cpu0 = cpu_s(orch->pid), agents_cpu0 = agents_cpu(), orch_cs0 = ctx_switches(orch->pid);
  auto calls0 = m["fabriclab_agent_calls_total"], failures0 = m["fabriclab_agent_call_failures_total"];
  auto events0 = m["fabriclab_events_published_total"];
  json::object spec{{"kind", "host-os"}, {"target", "host-v2"}, {"recovery_s", 0}, {"notice_s", 0}};
  auto t_walk = Clock::now();
  auto created = api.must("POST", "/v1/drills", json::serialize(spec), 201, orch);
  std::string id(created.as_object().at("id").as_string());
  int batches = static_cast<int>(created.as_object().at("batch_count").to_number<int64_t>());
  int lower_bound = static_cast<int>(created.as_object().at("lower_bound").to_number<int64_t>());
  if (!o.json) {
    std::printf("drill %s: %d batches (lower bound %d)\n", id.c_str(), batches, lower_bound);
    std::fflush(stdout);
  }
  json::object drill;
  std::string state;
  int last_batch = -1, max_unhealthy = 0;
  for (;;) {
    if (Child* gone = cleanup.children.find_exited()) die(gone->name + " exited during the walk", gone);
    drill = api.must("GET", "/v1/drills/" + id, "", 200, orch).as_object();
    state = std::string(drill.at("state").as_string());
    if (state == "Completed" || state == "Failed" || state == "Aborted") break;
    if (since(t_walk) > o.walk_timeout_s) die("walk timeout in batch " + std::to_string(last_batch + 1), orch);
    int cb = static_cast<int>(drill.at("current_batch").to_number<int64_t>());
    if (!o.json && cb != last_batch && cb < batches) {
      std::printf("  batch %d of %d at %.1f s\n", cb + 1, batches, since(t_walk));
      std::fflush(stdout);
    }
    last_batch = cb;
    auto mm = api.metrics(orch);
    max_unhealthy = std::max(max_unhealthy, static_cast<int>(mm["fabriclab_hosts{state=\"Unhealthy\"}"]));
    std::this_thread::sleep_for(200ms);
  }
  double wall_s = since(t_walk);
  double orch_cpu_walk = cpu_s(orch->pid) - orch_cpu0;
  double agents_cpu_walk = agents_cpu() - agents_cpu0;
  double orch_cs_walk = ctx_switches(orch->pid) - orch_cs0;
  m = api.metrics(orch);
  // The orchestrator's own clock for the drill (RFC 3339 with ms).
  auto parse_ms = [](const json::value& v) -> double {
    if (!v.is_string()) return -1;
    std::string s(v.as_string());
    std::tm tm{};
    int ms = 0;
    if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                    &tm.tm_min, &tm.tm_sec, &ms) < 6) {
      return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return static_cast<double>(timegm(&tm)) + ms / 1000.0;
  };
  double drill_s = -1;
  if (double a = parse_ms(drill.at("started_at")), b = parse_ms(drill.at("finished_at")); a > 0 && b > 0) drill_s = b - a;
  batches = static_cast<int>(drill.at("batch_count").to_number<int64_t>());
  int hosts_done = 0;
  for (const auto& h : drill.at("hosts").as_array()) hosts_done += h.as_object().at("status") == "done";

  double orch_rss = status_mib(orch->pid, "VmHWM");
  double agents_rss = 0, agent_max = 0, agents_pss = 0;
  for (auto* a : agents) {
    double r = status_mib(a->pid, "VmHWM");
    agents_rss += std::max(0.0, r);
    agent_max = std::max(agent_max, r);
    agents_pss += std::max(0.0, pss_mib(a->pid));
  }
  double orch_cpu_total = cpu_s(orch->pid);
  std::string reason(drill.at("reason").as_string());

  cleanup.run();

  if (o.json) {
    json::object out{{"hosts", o.hosts},
                     {"instances", o.instances},
                     {"services", services.size()},
                     {"capacity", o.capacity},
                     {"poll_ms", o.poll_ms},
                     {"state", state},
                     {"reason", reason},
                     {"wall_s", round3(wall_s)},
                     {"drill_s", round3(drill_s)},
                     {"batches", batches},
                     {"lower_bound", lower_bound},
                     {"hosts_done", hosts_done},
                     {"setup_s", round3(setup_s)},
                     {"agents_start_s", round3(agents_s)},
                     {"register_s", round3(register_s)},
                     {"services_s", round3(services_s)},
                     {"healthy_wait_s", round3(healthy_s)},
                     {"peak_rss_mb", round3(orch_rss)},
                     {"agents_peak_rss_mb_sum", round3(agents_rss)},
                     {"agent_peak_rss_mb_max", round3(agent_max)},
                     {"agents_pss_mb_sum_end", round3(agents_pss)},
                     {"orchestrator_cpu_s_walk", round3(orch_cpu_walk)},
                     {"orchestrator_cpu_s_total", round3(orch_cpu_total)},
                     {"agents_cpu_s_walk", round3(agents_cpu_walk)},
                     {"idle_orchestrator_cores", round3(idle_orch_cores)},
                     {"idle_agents_cores", round3(idle_agents_cores)},
                     {"idle_orchestrator_ctx_switches_per_s", std::round(idle_orch_cs)},
                     {"orchestrator_ctx_switches_per_s_walk", std::round(orch_cs_walk / wall_s)},
                     {"agents_on_tmpfs", o.agents_on_tmpfs},
                     {"agent_calls_walk", m["fabriclab_agent_calls_total"] - calls0},
                     {"agent_call_failures_walk", m["fabriclab_agent_call_failures_total"] - failures0},
                     {"events_walk", m["fabriclab_events_published_total"] - events0},
                     {"unhealthy_hosts_setup", unhealthy_hosts_setup},
                     {"unhealthy_hosts_walk_max", max_unhealthy}};
    std::cout << json::serialize(out) << "\n";
  } else {
    std::printf("walk: %s in %.2f s (orchestrator's clock %.2f s), %d batches (lower bound %d), %d of %d "
                "hosts done%s%s\n",
                state.c_str(), wall_s, drill_s, batches, lower_bound, hosts_done, o.hosts,
                reason.empty() ? "" : ": ", reason.c_str());
    std::printf("  orchestrator: peak RSS %.1f MiB, CPU %.1f s during the walk (%.1f s in all); %.0f agent "
                "calls (%.0f failed), %.0f events during the walk\n",
                orch_rss, orch_cpu_walk, orch_cpu_total, m["fabriclab_agent_calls_total"] - calls0,
                m["fabriclab_agent_call_failures_total"] - failures0,
                m["fabriclab_events_published_total"] - events0);
    std::printf("  agents: peak RSS %.1f MiB summed (PSS %.1f MiB summed at the end), %.1f MiB the largest, "
                "CPU %.1f s during the walk; Unhealthy hosts: %d after setup, at most %d during the walk\n",
                agents_rss, agents_pss, agent_max, agents_cpu_walk, unhealthy_hosts_setup, max_unhealthy);
    if (o.idle_s > 0) {
      std::printf("  idle rack before the walk: orchestrator %.2f cores (%.0f context switches/s), agents "
                  "%.2f cores\n",
                  idle_orch_cores, idle_orch_cs, idle_agents_cores);
    }
    std::printf("  orchestrator context switches during the walk: %.0f/s\n", orch_cs_walk / wall_s);
    std::printf("  setup %.1f s: agents %.1f s, registration %.1f s, services %.1f s, healthy %.1f s\n",
                setup_s, agents_s, register_s, services_s, healthy_s);
  }
  return state == "Completed" ? 0 : 1;
}
