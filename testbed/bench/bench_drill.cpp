// fabriclab-bench-drill: a whole drill on real VMs against its floor, measured in the same run.
//
// Figures (the issue's):
//   makespan_s          the drill's duration (report.drill.duration_s: drill created -> finished)
//   floor_s             sum over the drill's batches of the slowest host's raw stop + start +
//                       first-heartbeat time, measured on the same rack right after the drill
//   ratio               makespan_s / floor_s                                 (target <= 1.15)
//   downtime_ratio_p50  median over instances of (the instance's down time during the drill) /
//                       (its raw cycle time)                                 (target <= 1.10)
//
// Method, in one run on one rack:
//  1. Rack up (rack::Lab: one fabriclab-agent process per host with real QEMU guests through the
//     embedded driver, one fabriclab-orchestrator), populate (hosts registered, services created,
//     every guest heartbeating), then a settle pause (--settle-s) so boot-time CPU load is over.
//  2. The drill: rack::default_spec() (6 hosts, 3 FDs, hello 1 / web 2 / worker 3, host-os to
//     host-v2, time_scale 0.001) with recovery_s = 0 (no recovery wait between batches). The
//     scheduled-event notice is kept as the spec has it (900 s x 0.001 = 0.9 s; a guest that
//     acks earlier ends it early) unless --notice-s says otherwise; the output says which
//     (notice_s, notice_policy). makespan_s = report.drill.duration_s.
//  3. The floor, after another settle pause, on the same rack: for each batch of the drill's
//     walk (report.walk.batch_list, same host groups, in order, one batch after the other), every
//     host of the batch at once (one thread per host, as the orchestrator runs them) stops every
//     guest on it and starts it again through the agent's raw calls: POST
//     /v1/instances/{name}/stop for each guest, then POST /v1/instances/{name}/start for each.
//     Within one host the calls go one after the other: the agent serializes them on its
//     hypervisor lock anyway, and the host-os operation also stops every guest before it starts
//     any. The host's time runs from its first stop request to the first heartbeat of the new
//     boot (new boot_id) of its last guest; the batch's floor is its slowest host; floor_s is the
//     sum over batches (no gap between batches: recovery waits are 0). No notice, no image swap,
//     no emulated host reboot, no orchestrator: that is what the drill adds. On a rack with a
//     guest network the floor runs under the drill's client load (the same requests per second
//     to every endpoint service's VIP, from the rack namespace): clients and probes cost the
//     TCG guests CPU, and a floor without them would count that against the drill.
//  4. Per instance, from the same step: cycle_s = its stop request -> its first heartbeat of the
//     new boot (raw cycle time), and raw_gap_s = its last heartbeat before the stop request -> the
//     same first heartbeat (the heartbeat gap, measured like the agent's down_ms). downtime_ratio
//     = agent_down_s (the agent's own down_ms for the drill: last heartbeat before its stop ->
//     first heartbeat after its start) / cycle_s; the median over instances is
//     downtime_ratio_p50 (with an even count, the mean of the two middle values). Also reported:
//     the same with the prober's down_s (the orchestrator's health timeline) and the
//     like-for-like agent_down_s / raw_gap_s (both heartbeat gaps; the headline one also counts
//     up to one heartbeat period before the stop request against the drill).
//  Heartbeat times come from each agent's own event history (GET /v1/events?since=0 websocket
//  backlog: instance.heartbeat events, stamped when the agent received the line); when an event
//  is missing, from polling GET /v1/instances (receive time - last_heartbeat.age_ms). Where the
//  drill's time goes comes from the same histories (host.state steps Notifying ... Verifying,
//  job.started / job.done) and from the agents' job records (GET /v1/operations/{id}).
//  5. The rack is always torn down (errors and Ctrl-C too: SIGINT/SIGTERM abort the drill); the
//     VMs' console logs (guest-side boot timings) are copied to LAB/consoles/ first.
//  6. What clients saw (docs/clients.md; only on a rack with a guest network): from the drill's
//     report, `requests` (all services) and `failed_multi_instance` (failed requests of services
//     with >= 2 instances; target 0 with drain). Then, unless --no-drain-drill=false, a second rack
//     runs the same drill with `drain: false` on every endpoint service: its apps ignore the
//     scheduled event, so clients are sent to a stopping guest until the load balancer's probe
//     notices. Per multi-instance service, outage_ms_p50 = the median run of consecutive failed
//     requests (first to last failed send, plus one request period), beside probe_detection_ms =
//     probe interval x unhealthy threshold (time-scaled): the ratio shows how close the load
//     balancer's reaction is to its own floor.
//
// Machine load: on 2 cores under TCG a guest's boot is CPU-bound, so anything else running moves
// the drill and the floor by more than the overhead measured here (seen: +-30 % per phase). A
// sampler thread reads /proc every second and the output gives, per drill batch, per floor batch
// and for the settle pauses, the busy cores of the machine split into the lab's QEMU processes
// (batch hosts / others), its agents + orchestrator, foreign QEMU processes (another run's VMs)
// and other processes by name (e.g. a compiler). Compare the phases before trusting a ratio; a
// note says when foreign VMs ran. Wait for a quiet machine before a run.
//
// Output: human text on stdout (progress on stderr); --json prints one JSON object instead.
// Exit: 0 measured (met flags in the output), 1 failed to measure, 130 interrupted.

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/orchestrator/traffic.hpp"
#include "fabriclab/client/api_client.hpp"
#include "fabriclab/rack/drill.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/spec.hpp"

#ifndef FABRICLAB_BENCH_IMAGES_DIR
#define FABRICLAB_BENCH_IMAGES_DIR ""
#endif

using namespace fabriclab;
using namespace std::chrono_literals;

namespace {

constexpr double kRatioTarget = 1.15;
constexpr double kDowntimeTarget = 1.10;

// ---------------------------------------------------------------------------------------------
// Small helpers

int64_t now_ms() { return unix_now_ms(); }

using json_get::arr;
using json_get::int_or;
using json_get::number;
using json_get::obj;
using json_get::str;

double secs(int64_t ms) { return static_cast<double>(ms) / 1000.0; }
double round3(double v) { return std::round(v * 1000.0) / 1000.0; }
json::value secs_or_null(int64_t ms) {
  return ms < 0 ? json::value(nullptr) : json::value(round3(secs(ms)));
}
json::value num_or_null(std::optional<double> v) {
  return v && std::isfinite(*v) ? json::value(round3(*v)) : json::value(nullptr);
}

std::optional<double> median(std::vector<double> v) {
  if (v.empty()) return std::nullopt;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

std::string fmt_opt(std::optional<double> v, const char* spec = "{:.3f}") {
  return v ? fmt::format(fmt::runtime(spec), *v) : std::string("-");
}

// Seconds with 3 decimals, "-" for an unknown (negative) span.
std::string ms_text(int64_t ms) {
  return ms < 0 ? std::string("-") : fmt::format("{:.3f}", secs(ms));
}


std::mutex log_mu;
void progress(const std::string& line) {
  std::lock_guard lock(log_mu);
  std::time_t t = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", std::localtime(&t));
  std::cerr << "[" << buf << "] " << line << "\n" << std::flush;
}

// ---------------------------------------------------------------------------------------------
// The agents' own API

struct AgentRef {
  std::string name, address;
  uint16_t port = 0;
};

class Agents {
 public:
  // The agents' addresses exist only in the lab's rack namespace when it has one.
  Agents(const rack::Lab& lab) : token_(lab.control_token()), netns_(lab.agent_netns()) {
    for (const auto& a : lab.agents())
      agents_[a.name] = {a.name, a.address, static_cast<uint16_t>(a.port)};
  }
  const AgentRef* find(const std::string& host) const {
    auto it = agents_.find(host);
    return it == agents_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, AgentRef>& all() const { return agents_; }
  const std::string& token() const { return token_; }
  const std::string& netns() const { return netns_; }

  Result<json::value> call(const AgentRef& a, std::string_view method, const std::string& target,
                           std::chrono::milliseconds timeout = 10s) const {
    auto r = http::request(a.address, a.port, method, target, method == "POST" ? "{}" : "", token_,
                           timeout, netns_);
    if (!r.ok())
      return make_error(r.error().condition, a.name + " " + std::string(method) + " " + target +
                                                 ": " + r.error().message);
    if (r->status / 100 != 2) {
      return make_error(Condition::internal, a.name + " " + std::string(method) + " " + target +
                                                 ": HTTP " + std::to_string(r->status) + " " +
                                                 r->body.substr(0, 300));
    }
    return parse_json(r->body, 16 << 20, 64, "agent answer");
  }

 private:
  std::string token_;
  std::string netns_;
  std::map<std::string, AgentRef> agents_;
};

struct Event {
  int64_t t_ms = 0;
  std::string type;
  json::object o;
};

// The agent's event history up to `until_ms` (its websocket backlog from seq 0). `complete` is
// false when the ring no longer held the start (the server then sends a snapshot first).
Result<std::vector<Event>> agent_events(const Agents& agents, const AgentRef& a, int64_t until_ms,
                                        bool& complete) {
  complete = true;
  FL_ASSIGN_OR_RETURN(auto ws, http::WsClient::connect(a.address, a.port, "/v1/events?since=0",
                                                       agents.token(), 10s, agents.netns()));
  std::vector<Event> out;
  bool first = true;
  for (;;) {
    auto m = ws->read(3s);
    if (!m.ok()) break;  // quiet for 3 s: the backlog is over
    auto v = parse_json(*m, 16 << 20, 64, "event");
    if (!v.ok() || !v->is_object()) continue;
    Event e;
    e.o = std::move(v->as_object());
    e.type = str(e.o, "type");
    if (e.type == "snapshot") {
      if (first && e.o.if_contains("resync")) complete = false;
      first = false;
      continue;
    }
    first = false;
    auto t = parse_rfc3339_ms(str(e.o, "time"));
    if (!t) continue;
    e.t_ms = *t;
    if (e.t_ms > until_ms) break;
    out.push_back(std::move(e));
  }
  ws->close();
  return out;
}

// ---------------------------------------------------------------------------------------------
// CPU: a sampler thread reads /proc every second: the machine's busy time (/proc/stat) and the
// CPU time of every process, in categories: the lab's QEMU processes per host (command lines
// name LAB/hN/), the lab's agents and orchestrator, this bench, QEMU processes that are not the
// lab's (another run on the machine distorts the figures), and everything else by command name.
// A process that ends between two samples loses its last second; what no category holds is
// reported as unaccounted (kernel threads, processes that ended).

struct CpuSample {
  int64_t t_ms = 0;
  double busy_s = 0, total_s = 0;       // the machine (all cores)
  std::map<std::string, double> cat_s;  // cumulative CPU seconds per category
  int foreign_qemu = 0;                 // live (not zombie) QEMU processes not of the lab
};

class CpuSampler {
 public:
  CpuSampler(std::string lab_dir, const std::set<pid_t>& agent_pids, pid_t orchestrator_pid)
      : dir_(std::move(lab_dir)), agents_(agent_pids), orchestrator_(orchestrator_pid) {
    hz_ = static_cast<double>(sysconf(_SC_CLK_TCK));
    sample();
    thread_ = std::thread([this] {
      while (!stop_) {
        for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(100ms);
        sample();
      }
    });
  }
  ~CpuSampler() { finish(); }
  void finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  // Over [a, b], in cores (CPU seconds per wall second).
  json::object window(int64_t a, int64_t b, const std::vector<std::string>& busy_hosts) const {
    std::lock_guard lock(mu_);
    const CpuSample* x = nullptr;
    const CpuSample* y = nullptr;
    int foreign = 0;
    for (const auto& s : samples_) {
      if (s.t_ms <= a) x = &s;
      if (!y && s.t_ms >= b) y = &s;
      if (s.t_ms >= a && s.t_ms <= b) foreign = std::max(foreign, s.foreign_qemu);
    }
    if (!x && !samples_.empty()) x = &samples_.front();
    if (!y && !samples_.empty()) y = &samples_.back();
    if (!x || !y || y->t_ms <= x->t_ms) return json::object{};
    const double wall = secs(y->t_ms - x->t_ms);
    double batch_q = 0, other_q = 0, lab = 0, bench = 0, foreign_q = 0, other = 0;
    json::object per_host;
    std::vector<std::pair<double, std::string>> others;
    for (const auto& [c, v] : y->cat_s) {
      double before = x->cat_s.count(c) ? x->cat_s.at(c) : 0.0;
      double d = std::max(0.0, v - before) / wall;
      if (c.rfind("qemu:", 0) == 0) {
        std::string h = c.substr(5);
        per_host[h] = round3(d);
        bool busy = std::find(busy_hosts.begin(), busy_hosts.end(), h) != busy_hosts.end();
        (busy ? batch_q : other_q) += d;
      } else if (c.rfind("lab:", 0) == 0) {
        lab += d;
      } else if (c == "bench") {
        bench += d;
      } else if (c == "foreign-qemu") {
        foreign_q += d;
      } else {
        other += d;
        if (d >= 0.01) others.emplace_back(d, c.substr(6));
      }
    }
    std::sort(others.rbegin(), others.rend());
    json::array top;
    for (size_t i = 0; i < others.size() && i < 5; ++i) {
      top.push_back(json::object{{"name", others[i].second}, {"cores", round3(others[i].first)}});
    }
    const double total = y->total_s - x->total_s;
    const double busy = total > 0 ? (y->busy_s - x->busy_s) / total * cores() : 0.0;
    return json::object{
        {"wall_s", round3(wall)},
        {"machine_busy_cores", round3(busy)},
        {"qemu_cores_batch_hosts", round3(batch_q)},
        {"qemu_cores_other_hosts", round3(other_q)},
        {"lab_processes_cores", round3(lab)},
        {"bench_cores", round3(bench)},
        {"foreign_qemu_cores", round3(foreign_q)},
        {"other_processes_cores", round3(other)},
        {"unaccounted_cores", round3(busy - batch_q - other_q - lab - bench - foreign_q - other)},
        {"top_other_processes", std::move(top)},
        {"qemu_cores_per_host", std::move(per_host)},
        {"foreign_qemu_max", foreign}};
  }
  int foreign_max() const {
    std::lock_guard lock(mu_);
    int m = 0;
    for (const auto& s : samples_) m = std::max(m, s.foreign_qemu);
    return m;
  }
  static double cores() { return static_cast<double>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))); }

 private:
  static std::string slurp(const std::string& path, size_t max = 1 << 16) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return {};
    std::string s(max, '\0');
    size_t n = std::fread(s.data(), 1, max, f);
    std::fclose(f);
    s.resize(n);
    return s;
  }
  void sample() {
    CpuSample s;
    s.t_ms = now_ms();
    {
      std::istringstream in(slurp("/proc/stat", 4096));
      std::string cpu;
      double v[8] = {};
      in >> cpu;
      for (double& x : v) in >> x;
      // user nice system idle iowait irq softirq steal (guest time is inside user)
      const double idle = v[3] + v[4];
      const double all = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
      s.busy_s = (all - idle) / hz_;
      s.total_s = all / hz_;
    }
    const pid_t self = getpid();
    std::map<pid_t, std::pair<std::string, double>> now;  // pid -> category, CPU seconds so far
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string n = e.path().filename().string();
      if (n.empty() || !std::isdigit(static_cast<unsigned char>(n[0]))) continue;
      const pid_t pid = static_cast<pid_t>(std::atol(n.c_str()));
      std::string stat = slurp("/proc/" + n + "/stat", 4096);
      auto lp = stat.find('('), rp = stat.rfind(')');
      if (lp == std::string::npos || rp == std::string::npos || rp + 2 >= stat.size()) continue;
      const std::string comm = stat.substr(lp + 1, rp - lp - 1);
      const char state = stat[rp + 2];
      std::istringstream in(stat.substr(rp + 2));
      std::string field;
      double ut = 0, st = 0;
      for (int i = 3; i <= 15 && in >> field; ++i) {
        if (i == 14) ut = std::atof(field.c_str());
        if (i == 15) st = std::atof(field.c_str());
      }
      std::string cat;
      if (comm.rfind("qemu", 0) == 0) {
        std::string cmd = slurp("/proc/" + n + "/cmdline");
        auto pos = cmd.find(dir_ + "/h");
        if (pos == std::string::npos) {
          if (state != 'Z') ++s.foreign_qemu;
          cat = "foreign-qemu";
        } else {
          size_t a = pos + dir_.size() + 1, z = cmd.find('/', a);
          cat = "qemu:" + cmd.substr(a, z == std::string::npos ? std::string::npos : z - a);
        }
      } else if (pid == self) {
        cat = "bench";
      } else if (agents_.count(pid)) {
        cat = "lab:agents";
      } else if (pid == orchestrator_) {
        cat = "lab:orchestrator";
      } else {
        cat = "other:" + comm;
      }
      now[pid] = {cat, (ut + st) / hz_};
    }
    std::lock_guard lock(mu_);
    // Cumulative per category: the previous totals plus each live pid's growth (a pid first seen
    // counts whole, except in the first sample, which is the baseline).
    std::map<std::string, double> acc =
        samples_.empty() ? std::map<std::string, double>{} : samples_.back().cat_s;
    const bool baseline = samples_.empty();
    for (const auto& [pid, cv] : now) {
      auto it = last_.find(pid);
      double prev = it != last_.end() ? it->second : (baseline ? cv.second : 0.0);
      acc[cv.first] += std::max(0.0, cv.second - prev);
    }
    last_.clear();
    for (const auto& [pid, cv] : now) last_[pid] = cv.second;
    s.cat_s = std::move(acc);
    samples_.push_back(std::move(s));
  }

  std::string dir_;
  std::set<pid_t> agents_;
  pid_t orchestrator_ = 0;
  double hz_ = 100;
  mutable std::mutex mu_;
  std::vector<CpuSample> samples_;
  std::map<pid_t, double> last_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Copies every VM's console log (LAB/hN/vm/*.console.log) to LAB/consoles/ before the teardown
// removes the state directories.
void keep_consoles(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir + "/consoles", ec);
  for (const auto& h : fs::directory_iterator(dir, ec)) {
    if (!h.is_directory() || h.path().filename().string().rfind("h", 0) != 0) continue;
    std::error_code ec2;
    for (const auto& f : fs::directory_iterator(h.path() / "vm", ec2)) {
      const std::string n = f.path().filename().string();
      if (n.size() > 12 && n.ends_with(".console.log")) {
        fs::copy_file(f.path(),
                      fs::path(dir) / "consoles" / (h.path().filename().string() + "-" + n),
                      fs::copy_options::overwrite_existing, ec2);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The floor: raw stop + start + first heartbeat, per batch

struct RawGuest {
  std::string name, host;
  int batch = 0;
  std::string boot_before;
  int64_t last_hb_before_ms = -1;  // last heartbeat of the old boot before the stop request
  int64_t stop_req_ms = 0, stop_done_ms = 0, start_req_ms = 0, start_done_ms = 0;
  int64_t first_hb_ms = -1;  // first heartbeat of the new boot
  int64_t first_hb_seq =
      -1;  // the heartbeat's own seq where polling first saw the new boot (1: its first)
  std::string hb_source = "poll";  // events | poll
  int64_t cycle_ms() const { return first_hb_ms < 0 ? -1 : first_hb_ms - stop_req_ms; }
  int64_t gap_ms() const {
    return first_hb_ms < 0 || last_hb_before_ms < 0 ? -1 : first_hb_ms - last_hb_before_ms;
  }
};

struct RawHost {
  std::string host;
  int batch = 0;
  int64_t t0_ms = 0, stops_done_ms = 0, starts_done_ms = 0;
  std::vector<RawGuest> guests;
  std::string error;
  int64_t last_hb_ms() const {
    int64_t t = -1;
    for (const auto& g : guests) t = g.first_hb_ms < 0 ? t : std::max(t, g.first_hb_ms);
    return t;
  }
  bool complete() const {
    for (const auto& g : guests) {
      if (g.first_hb_ms < 0) return false;
    }
    return error.empty() && !guests.empty();
  }
  int64_t total_ms() const { return complete() ? last_hb_ms() - t0_ms : -1; }
};

// The instances of an agent that should run, once all of them heartbeat (healthy).
Result<json::array> healthy_instances(const Agents& agents, const AgentRef& a,
                                      std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string waiting;
  while (std::chrono::steady_clock::now() < deadline) {
    FL_ASSIGN_OR_RETURN(auto v, agents.call(a, "GET", "/v1/instances"));
    json::array want;
    waiting.clear();
    for (const auto& x : v.as_array()) {
      const auto& o = x.as_object();
      auto* w = o.if_contains("want_running");
      if (w && w->is_bool() && !w->as_bool()) continue;
      auto* h = o.if_contains("healthy");
      if (!(h && h->is_bool() && h->as_bool()) || !o.if_contains("last_heartbeat"))
        waiting.append(" ").append(str(o, "name"));
      want.push_back(x);
    }
    if (waiting.empty()) return want;
    if (!client::sleep_unless_interrupted(250ms))
      return make_error(Condition::cancelled, "interrupted");
  }
  return make_error(Condition::timeout, a.name + ": not healthy:" + waiting);
}

RawHost raw_cycle_host(const Agents& agents, const std::string& host, int batch,
                       std::chrono::seconds timeout) {
  RawHost h;
  h.host = host;
  h.batch = batch;
  const AgentRef* a = agents.find(host);
  if (!a) {
    h.error = "no agent for host " + host;
    return h;
  }
  auto inst = healthy_instances(agents, *a, 120s);
  if (!inst.ok()) {
    h.error = inst.error().message;
    return h;
  }
  int64_t polled_at = now_ms();
  for (const auto& x : *inst) {
    const auto& o = x.as_object();
    RawGuest g;
    g.name = str(o, "name");
    g.host = host;
    g.batch = batch;
    const auto& hb = obj(o, "last_heartbeat");
    g.boot_before = str(hb, "boot_id");
    if (auto age = number(hb, "age_ms")) g.last_hb_before_ms = polled_at - static_cast<int64_t>(*age);
    h.guests.push_back(std::move(g));
  }
  if (h.guests.empty()) return h;  // nothing on this host: no time
  h.t0_ms = now_ms();
  for (auto& g : h.guests) {
    g.stop_req_ms = now_ms();
    auto r = agents.call(*a, "POST", "/v1/instances/" + g.name + "/stop", 120s);
    g.stop_done_ms = now_ms();
    if (!r.ok()) {
      h.error = r.error().message;
      break;
    }
  }
  h.stops_done_ms = now_ms();
  // Start every guest even after a failed stop: the rack must not be left with stopped guests.
  for (auto& g : h.guests) {
    g.start_req_ms = now_ms();
    auto r = agents.call(*a, "POST", "/v1/instances/" + g.name + "/start", 120s);
    g.start_done_ms = now_ms();
    if (!r.ok() && h.error.empty()) h.error = r.error().message;
  }
  h.starts_done_ms = now_ms();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto v = agents.call(*a, "GET", "/v1/instances");
    int64_t at = now_ms();
    bool all = true;
    if (v.ok() && v->is_array()) {
      for (auto& g : h.guests) {
        if (g.first_hb_ms >= 0) continue;
        for (const auto& x : v->as_array()) {
          const auto& o = x.as_object();
          if (str(o, "name") != g.name) continue;
          const auto& hb = obj(o, "last_heartbeat");
          std::string boot = str(hb, "boot_id");
          if (!boot.empty() && boot != g.boot_before) {
            g.first_hb_ms = at - int_or(hb, "age_ms", 0);
            g.first_hb_seq = int_or(hb, "seq", -1);
          }
        }
        if (g.first_hb_ms < 0) all = false;
      }
    } else {
      all = false;
    }
    if (all) break;
    if (!client::sleep_unless_interrupted(50ms)) {
      if (h.error.empty()) h.error = "interrupted";
      break;
    }
  }
  if (!h.complete() && h.error.empty())
    h.error = "not every guest heartbeat within " + std::to_string(timeout.count()) + " s";
  return h;
}

// ---------------------------------------------------------------------------------------------
// The drill's own timings from the agents' event histories

struct HostSteps {
  std::string host, job;
  int64_t started = -1, done = -1;
  std::map<std::string, int64_t> step_at;  // first time each step was entered
  std::string status;
  int64_t step_ms(const std::string& from, const std::string& to) const {
    auto a = step_at.find(from);
    int64_t b = -1;
    if (to == "done") {
      b = done;
    } else if (auto it = step_at.find(to); it != step_at.end()) {
      b = it->second;
    }
    return a == step_at.end() || b < 0 ? -1 : b - a->second;
  }
  int64_t job_ms() const { return started < 0 || done < 0 ? -1 : done - started; }
};

const std::vector<std::pair<std::string, std::string>> kStepSpans = {
    {"Notifying", "StoppingGuests"}, {"StoppingGuests", "SwappingImage"},
    {"SwappingImage", "Rebooting"},  {"Rebooting", "StartingGuests"},
    {"StartingGuests", "Verifying"}, {"Verifying", "done"}};
const std::vector<std::string> kStepNames = {"notify", "stop", "swap", "reboot", "start", "verify"};

HostSteps host_steps(const std::string& host, const std::vector<Event>& ev, int64_t from_ms,
                     int64_t to_ms) {
  HostSteps s;
  s.host = host;
  for (const auto& e : ev) {
    if (e.t_ms < from_ms - 1000 || e.t_ms > to_ms + 1000) continue;
    if (e.type == "job.started" && s.job.empty()) {
      s.job = str(e.o, "job");
      s.started = e.t_ms;
    } else if (e.type == "host.state" && !s.job.empty() && str(e.o, "job") == s.job) {
      std::string step = str(e.o, "step");
      if (!s.step_at.count(step)) s.step_at[step] = e.t_ms;
    } else if (e.type == "job.done" && str(e.o, "job") == s.job && s.done < 0) {
      s.done = e.t_ms;
      s.status = str(e.o, "status");
    }
  }
  return s;
}

// One guest's drill cycle as the agent's events show it: stop begun -> first heartbeat of the
// new boot.
struct GuestDrill {
  int64_t last_hb_before = -1, stopping = -1, stopped = -1, starting = -1, first_hb = -1;
};

GuestDrill guest_drill(const std::string& name, const std::vector<Event>& ev, int64_t from_ms,
                       int64_t to_ms) {
  GuestDrill g;
  std::string boot_before;
  for (const auto& e : ev) {
    if (e.t_ms < from_ms - 1000 || e.t_ms > to_ms + 1000 || str(e.o, "name") != name) continue;
    if (e.type == "instance.heartbeat") {
      if (g.stopping < 0) {
        g.last_hb_before = e.t_ms;
        boot_before = str(e.o, "boot_id");
      } else if (g.first_hb < 0 && g.starting >= 0 && str(e.o, "boot_id") != boot_before) {
        g.first_hb = e.t_ms;
      }
    } else if (e.type == "instance.state") {
      std::string st = str(e.o, "status");
      if (st == "Stopping" && g.stopping < 0) g.stopping = e.t_ms;
      if (st == "Stopped" && g.stopped < 0 && g.stopping >= 0) g.stopped = e.t_ms;
      if (st == "Starting" && g.starting < 0 && g.stopping >= 0 && e.o.if_contains("image"))
        g.starting = e.t_ms;
    }
  }
  return g;
}

// ---------------------------------------------------------------------------------------------

struct Options {
  std::string hypervisor = "qemu";
  std::string images;
  std::string lab_dir = "/tmp/flbd";
  std::string spec_file;
  std::optional<double> notice_s;
  double settle_s = -1;
  int floor_timeout_s = 180;
  bool json_out = false;
  bool no_drain_drill = true;
};

// Client traffic figures of one drill report (step 6): requests, failed requests of services
// with >= 2 instances, and per such service the failure runs' lengths.
struct ClientFigures {
  int64_t requests = 0, failed_multi_instance = 0;
  bool measured = false;
  std::string reason;
  json::object services;  // name -> {requests, failed, outage_ms_p50, runs, probe_detection_ms}
  std::optional<double> outage_ratio_p50;  // median over services of outage_ms_p50 / detection
};

ClientFigures client_figures(const json::object& report, const rack::DrillFileSpec& spec) {
  ClientFigures f;
  const auto& t = obj(report, "traffic");
  auto* m = t.if_contains("measured");
  f.measured = m && m->is_bool() && m->as_bool();
  f.reason = str(t, "reason");
  std::vector<double> ratios;
  for (const auto& sv : arr(report, "services")) {
    const auto& s = sv.as_object();
    auto* tv = s.if_contains("traffic");
    if (!tv || !tv->is_object()) continue;
    const auto& st = tv->as_object();
    const int64_t requests = int_or(st, "requests", 0), failed = int_or(st, "failed", 0);
    f.requests += requests;
    if (int_or(s, "instances", 0) < 2) continue;
    f.failed_multi_instance += failed;
    const rack::ServiceSpec* ss = nullptr;
    for (const auto& x : spec.services) {
      if (x.name == str(s, "name")) ss = &x;
    }
    if (!ss || !ss->endpoint) continue;
    const int interval_ms = rack::scaled_probe_interval_ms(*ss->endpoint, spec.time_scale);
    const int64_t detection_ms = static_cast<int64_t>(interval_ms) * ss->endpoint->unhealthy_threshold;
    const double period_ms = 1000.0 / ss->traffic_rps;
    std::vector<double> runs;
    for (const auto& rv : arr(st, "failure_runs")) {
      const auto& r = rv.as_object();
      runs.push_back((number(r, "to_s").value_or(0) - number(r, "from_s").value_or(0)) * 1000.0 + period_ms);
    }
    auto p50 = median(runs);
    if (p50) ratios.push_back(*p50 / static_cast<double>(detection_ms));
    f.services[str(s, "name")] = json::object{{"requests", requests},
                                              {"failed", failed},
                                              {"failure_runs", static_cast<int64_t>(runs.size())},
                                              {"outage_ms_p50", num_or_null(p50)},
                                              {"probe_detection_ms", detection_ms}};
  }
  f.outage_ratio_p50 = median(ratios);
  return f;
}

// The drill's client load for the floor (step 3): every endpoint service's VIP at its rate.
Result<std::vector<orchestrator::TrafficTarget>> floor_traffic_targets(const client::OrchestratorClient& api,
                                                                      const rack::DrillFileSpec& spec) {
  FL_ASSIGN_OR_RETURN(auto services, api.get("/v1/services"));
  std::vector<orchestrator::TrafficTarget> out;
  if (!services.is_array()) return out;
  for (const auto& v : services.as_array()) {
    if (!v.is_object()) continue;
    const auto& o = v.as_object();
    for (const auto& ss : spec.services) {
      if (ss.name != str(o, "name") || !ss.endpoint || str(o, "vip").empty()) continue;
      orchestrator::TrafficTarget t;
      t.service = ss.name;
      t.address = str(o, "vip");
      t.port = static_cast<uint16_t>(ss.endpoint->port);
      t.rps = ss.traffic_rps;
      out.push_back(t);
    }
  }
  return out;
}

// Step 6's second drill: a fresh rack, every endpoint service with drain off, the same drill.
Result<ClientFigures> no_drain_figures(rack::DrillFileSpec spec, rack::LabOptions lo) {
  for (auto& s : spec.services) s.drain = false;
  lo.dir += "-nodrain";
  progress("client traffic without drain: rack up in " + lo.dir);
  FL_ASSIGN_OR_RETURN(auto lab, rack::Lab::up(spec, lo));
  struct Down {
    rack::Lab& lab;
    ~Down() {
      if (auto st = lab.down(false); !st.ok()) progress("teardown: " + st.error().message);
    }
  } down{lab};
  FL_RETURN_IF_ERROR(lab.populate(spec, 300s));
  FL_ASSIGN_OR_RETURN(auto api, client::OrchestratorClient::from_url(lab.orchestrator_url(), lab.control_token()));
  rack::DrillView view{&std::cerr, false};
  FL_ASSIGN_OR_RETURN(auto outcome, rack::run_drill(api, spec, &lab, view));
  if (outcome.interrupted) return make_error(Condition::cancelled, "interrupted");
  return client_figures(outcome.report, spec);
}

// ---------------------------------------------------------------------------------------------
// The run, phase by phase (the numbers are the method's, at the top of this file)

int fail(const std::string& what) {
  std::cerr << "fabriclab-bench-drill: " << what << "\n";
  return client::interrupted() ? 130 : 1;
}

// Sleeps `s` seconds; false when interrupted.
bool settle(double s) {
  return client::sleep_unless_interrupted(std::chrono::milliseconds(static_cast<int64_t>(s * 1000)));
}

// One batch of the drill's walk as the report has it.
struct DrillBatch {
  int index = 0;
  std::vector<std::string> hosts;
  std::optional<double> start_s, end_s, duration_s;
};

// The run's inputs and what each phase measured, handed from one phase to the next.
struct BenchRun {
  explicit BenchRun(const Options& o) : opt(o) {}
  const Options& opt;
  rack::DrillFileSpec spec;
  bool real = false;
  double settle_s = 0, notice_eff_s = 0;
  std::string notice_policy;
  rack::LabOptions lo;
  // 1.
  int64_t populate_ms = 0, settle1_ms = 0, settle1_end_ms = 0;
  // 2.
  json::object report;
  std::string drill_state;
  std::optional<double> makespan_s;
  int64_t drill_start_ms = -1, drill_end_ms = -1;
  std::vector<DrillBatch> batches;
  // 3.
  int64_t settle2_ms = 0, settle2_end_ms = 0;
  std::vector<std::vector<RawHost>> floor;
  bool floor_under_traffic = false;
  // 4.
  std::map<std::string, std::vector<Event>> events;
  int refined = 0;
  std::map<std::string, HostSteps> steps;
  std::map<std::string, json::object> job_guests;  // instance -> the agent's guest record
  std::vector<std::string> notes;

  const json::object& rdrill() const { return obj(report, "drill"); }
};

// The drill spec as the bench runs it (recovery 0, no faults, the notice policy) and the rack's
// options.
Status prepare(BenchRun& r) {
  const Options& opt = r.opt;
  auto spec_r = opt.spec_file.empty() ? Result<rack::DrillFileSpec>(rack::default_spec())
                                      : rack::load_spec(opt.spec_file);
  if (!spec_r.ok()) return spec_r.error();
  rack::DrillFileSpec& spec = r.spec;
  spec = *spec_r;
  if (!opt.hypervisor.empty()) spec.hypervisor = opt.hypervisor;
  spec.recovery_s = 0;  // recovery waits at 0
  spec.faults.clear();
  const double spec_notice_s = spec.notice_s;
  if (opt.notice_s) spec.notice_s = *opt.notice_s;
  r.real = spec.hypervisor == "qemu";
  r.settle_s = opt.settle_s >= 0 ? opt.settle_s : (r.real ? 10.0 : 1.0);
  r.notice_eff_s = spec.notice_s * spec.time_scale;
  r.notice_policy =
      opt.notice_s ? fmt::format("overridden by --notice-s {} (x time_scale {} = {:.3f} s)",
                                 *opt.notice_s, spec.time_scale, r.notice_eff_s)
                   : fmt::format(
                         "the spec's notice_s {} kept (x time_scale {} = {:.3f} s; a guest's early "
                         "ack ends it)",
                         spec_notice_s, spec.time_scale, r.notice_eff_s);
  return {};
}

// 1. Every guest heartbeating, then the settle pause.
Status populate_and_settle(BenchRun& r, rack::Lab& lab) {
  const int64_t t_boot0 = now_ms();
  progress(
      "populating: registering hosts, creating services, waiting for every guest to heartbeat");
  if (auto st = lab.populate(r.spec, r.real ? 300s : 60s); !st.ok())
    return make_error(st.error().condition, "populate: " + st.error().message);
  r.populate_ms = now_ms() - t_boot0;
  progress(
      fmt::format("rack populated in {:.1f} s; settling {:.0f} s", secs(r.populate_ms), r.settle_s));
  r.settle1_ms = now_ms();
  if (!settle(r.settle_s)) return make_error(Condition::cancelled, "interrupted");
  r.settle1_end_ms = now_ms();
  return {};
}

// 2. The drill: its report, times and batches.
Status run_the_drill(BenchRun& r, const client::OrchestratorClient& api, rack::Lab& lab) {
  progress(fmt::format("drill: {} -> {}, recovery 0, notice {:.3f} s", r.spec.kind, r.spec.target,
                       r.notice_eff_s));
  rack::DrillView view{&std::cerr, false};
  auto outcome = rack::run_drill(api, r.spec, &lab, view);
  if (!outcome.ok()) return make_error(outcome.error().condition, "drill: " + outcome.error().message);
  if (outcome->interrupted || client::interrupted())
    return make_error(Condition::cancelled, "interrupted");
  r.report = std::move(outcome->report);
  const json::object& rdrill = r.rdrill();
  r.drill_state = str(rdrill, "state");
  r.makespan_s = number(rdrill, "duration_s");
  r.drill_start_ms = parse_rfc3339_ms(str(rdrill, "started_at")).value_or(-1);
  r.drill_end_ms = parse_rfc3339_ms(str(rdrill, "finished_at")).value_or(now_ms());
  progress(fmt::format("drill {} {} in {} s (report result {})", str(rdrill, "id"), r.drill_state,
                       fmt_opt(r.makespan_s), str(r.report, "result")));
  if (r.drill_state != "Completed" || !r.makespan_s) {
    return make_error(Condition::internal, "the drill did not complete (" + r.drill_state + ": " +
                                               str(rdrill, "reason") + "); no floor measured");
  }
  for (const auto& bv : arr(obj(r.report, "walk"), "batch_list")) {
    const auto& b = bv.as_object();
    DrillBatch x;
    x.index = static_cast<int>(int_or(b, "index", static_cast<int64_t>(r.batches.size())));
    for (const auto& h : arr(b, "hosts")) x.hosts.emplace_back(h.as_string());
    x.start_s = number(b, "start_s");
    x.end_s = number(b, "end_s");
    x.duration_s = number(b, "duration_s");
    r.batches.push_back(std::move(x));
  }
  if (r.batches.empty()) return make_error(Condition::internal, "the report has no batches");
  return {};
}

// 3. The floor, after another settle pause: each batch's hosts cycled raw, all at once.
Status measure_floor(BenchRun& r, const client::OrchestratorClient& api, const rack::Lab& lab,
                     const Agents& agents) {
  r.settle2_ms = now_ms();
  progress(fmt::format(
      "settling {:.0f} s, then the floor: raw stop + start + first heartbeat, batch by batch",
      r.settle_s));
  if (!settle(r.settle_s)) return make_error(Condition::cancelled, "interrupted");
  r.settle2_end_ms = now_ms();
  // The floor runs under the same client load as the drill: the drill's guests boot while their
  // neighbours answer clients and probes, and a TCG guest's HTTP costs CPU.
  std::unique_ptr<orchestrator::TrafficGenerator> floor_traffic;
  if (lab.guest_network()) {
    auto targets = floor_traffic_targets(api, r.spec);
    orchestrator::TrafficOptions to;
    to.netns = lab.agent_netns();
    auto gen = targets.ok() ? orchestrator::TrafficGenerator::start(*targets, to)
                            : Result<std::unique_ptr<orchestrator::TrafficGenerator>>(targets.error());
    if (gen.ok()) {
      floor_traffic = std::move(gen).value();
      progress(fmt::format("floor under client traffic: {} service(s)", targets->size()));
    } else {
      progress("floor without client traffic: " + gen.error().message);
    }
  }
  const auto& batches = r.batches;
  r.floor.assign(batches.size(), {});
  for (size_t b = 0; b < batches.size(); ++b) {
    std::vector<RawHost>& hosts = r.floor[b];
    hosts.resize(batches[b].hosts.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < batches[b].hosts.size(); ++i) {
      threads.emplace_back([&, b, i] {
        hosts[i] = raw_cycle_host(agents, batches[b].hosts[i], static_cast<int>(b),
                                  std::chrono::seconds(r.opt.floor_timeout_s));
      });
    }
    for (auto& t : threads) t.join();
    std::string err;
    int64_t slow = 0;
    for (const auto& h : hosts) {
      if (!h.error.empty() && err.empty()) err = h.host + ": " + h.error;
      slow = std::max(slow, h.total_ms());
    }
    if (!err.empty())
      return make_error(Condition::internal, "floor, batch " + std::to_string(b + 1) + ": " + err);
    progress(fmt::format("floor batch {}/{} [{}]: {:.3f} s", b + 1, batches.size(),
                         fmt::join(batches[b].hosts, " "), secs(slow)));
  }
  r.floor_under_traffic = floor_traffic != nullptr;
  if (floor_traffic) floor_traffic->stop();
  return {};
}

// 4. Heartbeat times of the floor's guests from the agents' event histories (where an event is
// missing, the poll estimate stays), then the drill's jobs (agents' records) and steps (agents'
// events).
void read_histories(BenchRun& r, const Agents& agents) {
  const int64_t until = now_ms();
  for (const auto& [name, a] : agents.all()) {
    bool complete = true;
    auto ev = agent_events(agents, a, until, complete);
    if (!ev.ok()) {
      r.notes.push_back("events of " + name + " unavailable (" + ev.error().message +
                        "): poll estimates used");
      continue;
    }
    if (!complete)
      r.notes.push_back("events of " + name + ": the agent's ring no longer held its start");
    r.events[name] = std::move(ev).value();
  }
  int polled = 0;
  for (auto& hosts : r.floor) {
    for (auto& h : hosts) {
      auto it = r.events.find(h.host);
      if (it == r.events.end()) continue;
      for (auto& g : h.guests) {
        int64_t last_old = -1, first_new = -1;
        for (const auto& e : it->second) {
          if (e.type != "instance.heartbeat" || str(e.o, "name") != g.name) continue;
          std::string boot = str(e.o, "boot_id");
          if (boot == g.boot_before && e.t_ms <= g.stop_req_ms) last_old = e.t_ms;
          if (boot != g.boot_before && e.t_ms >= g.start_req_ms && first_new < 0) {
            first_new = e.t_ms;
          }
        }
        if (last_old >= 0) g.last_hb_before_ms = last_old;
        if (first_new >= 0) {
          g.first_hb_ms = first_new;
          g.hb_source = "events";
          ++r.refined;
        } else {
          ++polled;
        }
      }
    }
  }
  if (polled)
    r.notes.push_back(
        fmt::format("{} guests' first heartbeat from polling (no event found)", polled));

  for (const auto& [name, a] : agents.all()) {
    auto it = r.events.find(name);
    HostSteps s = it == r.events.end()
                      ? HostSteps{}
                      : host_steps(name, it->second, r.drill_start_ms, r.drill_end_ms);
    s.host = name;
    if (!s.job.empty()) {
      auto j = agents.call(a, "GET", "/v1/operations/" + s.job);
      if (j.ok() && j->is_object()) {
        for (const auto& g : arr(j->as_object(), "guests"))
          r.job_guests[str(g.as_object(), "name")] = g.as_object();
      }
    }
    r.steps[name] = std::move(s);
  }
}

// ---------------------------------------------------------------------------------------------
// The figures

// Over batches, the slowest drill host's steps.
struct Share {
  double notify = 0, stop = 0, swap = 0, reboot = 0, start = 0, verify = 0, dispatch = 0,
         collect = 0;
};

struct BatchFigures {
  double floor_sum_ms = 0;
  json::array out;
  Share share;
  std::vector<std::string> text;
  std::optional<double> prev_end;
  double gaps_s = 0;
};

std::string cpu_text(const json::object& w) {
  if (w.empty()) return std::string("-");
  return fmt::format(
      "machine {:.2f} cores busy: qemu of the batch's hosts {:.2f}, of the other hosts {:.2f}, "
      "agents+orchestrator {:.2f}, not the lab's {:.2f}",
      number(w, "machine_busy_cores").value_or(0), number(w, "qemu_cores_batch_hosts").value_or(0),
      number(w, "qemu_cores_other_hosts").value_or(0), number(w, "lab_processes_cores").value_or(0),
      number(w, "foreign_qemu_cores").value_or(0) + number(w, "other_processes_cores").value_or(0) +
          number(w, "unaccounted_cores").value_or(0));
}

// The floor's side of one batch: per host its raw figures; `slow` and `slow_host` its slowest.
json::object floor_hosts_json(const std::vector<RawHost>& hosts, int64_t& slow,
                              std::string& slow_host) {
  json::object floor_hosts;
  for (const auto& h : hosts) {
    if (h.total_ms() > slow) {
      slow = h.total_ms();
      slow_host = h.host;
    }
    json::array gs;
    for (const auto& g : h.guests) {
      gs.push_back(json::object{{"name", g.name},
                                {"stop_call_s", secs_or_null(g.stop_done_ms - g.stop_req_ms)},
                                {"start_call_s", secs_or_null(g.start_done_ms - g.start_req_ms)},
                                {"cycle_s", secs_or_null(g.cycle_ms())},
                                {"first_hb_seq_polled", g.first_hb_seq},
                                {"hb_source", g.hb_source}});
    }
    floor_hosts[h.host] =
        json::object{{"total_s", secs_or_null(h.total_ms())},
                     {"stops_s", secs_or_null(h.stops_done_ms - h.t0_ms)},
                     {"starts_s", secs_or_null(h.starts_done_ms - h.stops_done_ms)},
                     {"boot_to_last_hb_s", secs_or_null(h.last_hb_ms() - h.starts_done_ms)},
                     {"guests", std::move(gs)}};
  }
  return floor_hosts;
}

// The drill's side of one batch, from the agents' steps.
struct DrillSide {
  json::object hosts;
  int64_t first_job = -1, last_done = -1, slow_job = -1;
  const HostSteps* slowest = nullptr;
};

DrillSide drill_side(BenchRun& r, const DrillBatch& B) {
  DrillSide d;
  for (const auto& host : B.hosts) {
    const HostSteps& s = r.steps[host];
    json::object st{{"job", s.job}, {"status", s.status}, {"job_s", secs_or_null(s.job_ms())}};
    for (size_t k = 0; k < kStepSpans.size(); ++k) {
      st[kStepNames[k] + "_s"] = secs_or_null(s.step_ms(kStepSpans[k].first, kStepSpans[k].second));
    }
    d.hosts[host] = std::move(st);
    if (s.started >= 0) d.first_job = d.first_job < 0 ? s.started : std::min(d.first_job, s.started);
    if (s.done >= 0) d.last_done = std::max(d.last_done, s.done);
    if (s.job_ms() > d.slow_job) {
      d.slow_job = s.job_ms();
      d.slowest = &s;
    }
  }
  return d;
}

// Batch `b`: its entry in f.out, its two text lines, its share of the time.
void add_batch(BenchRun& r, size_t b, const CpuSampler& cpu, BatchFigures& f) {
  const auto& B = r.batches[b];
  const auto& batches = r.batches;
  int64_t slow = -1;
  std::string slow_host;
  json::object floor_hosts = floor_hosts_json(r.floor[b], slow, slow_host);
  f.floor_sum_ms += std::max<int64_t>(slow, 0);
  int64_t floor_a = INT64_MAX, floor_z = 0;
  for (const auto& h : r.floor[b]) {
    if (h.guests.empty()) continue;
    floor_a = std::min(floor_a, h.t0_ms);
    floor_z = std::max(floor_z, h.last_hb_ms());
  }
  // The drill's side of this batch.
  int64_t b_start = B.start_s ? r.drill_start_ms + static_cast<int64_t>(*B.start_s * 1000) : -1;
  int64_t b_end = B.end_s ? r.drill_start_ms + static_cast<int64_t>(*B.end_s * 1000) : -1;
  DrillSide d = drill_side(r, B);
  const HostSteps* slowest = d.slowest;
  int64_t dispatch = b_start >= 0 && d.first_job >= 0 ? d.first_job - b_start : -1;
  int64_t collect = b_end >= 0 && d.last_done >= 0 ? b_end - d.last_done : -1;
  Share& share = f.share;
  if (slowest) {
    auto add = [](double& acc, int64_t ms) { acc += ms > 0 ? secs(ms) : 0; };
    add(share.notify, slowest->step_ms("Notifying", "StoppingGuests"));
    add(share.stop, slowest->step_ms("StoppingGuests", "SwappingImage"));
    add(share.swap, slowest->step_ms("SwappingImage", "Rebooting"));
    add(share.reboot, slowest->step_ms("Rebooting", "StartingGuests"));
    add(share.start, slowest->step_ms("StartingGuests", "Verifying"));
    add(share.verify, slowest->step_ms("Verifying", "done"));
  }
  share.dispatch += dispatch > 0 ? secs(dispatch) : 0;
  share.collect += collect > 0 ? secs(collect) : 0;
  double gap = 0;
  if (B.start_s) gap = *B.start_s - (f.prev_end ? *f.prev_end : 0.0);
  f.gaps_s += gap;
  f.prev_end = B.end_s;
  f.out.push_back(json::object{
      {"index", B.index},
      {"hosts", json::value_from(B.hosts)},
      {"drill_s", num_or_null(B.duration_s)},
      {"drill_start_s", num_or_null(B.start_s)},
      {"gap_before_s", round3(gap)},
      {"drill_slowest_host", slowest ? slowest->host : ""},
      {"drill_slowest_job_s", secs_or_null(d.slow_job)},
      {"dispatch_s", secs_or_null(dispatch)},
      {"collect_s", secs_or_null(collect)},
      {"drill_hosts", std::move(d.hosts)},
      {"floor_s", secs_or_null(slow)},
      {"drill_cpu", b_start >= 0 && b_end > b_start
                        ? json::value(cpu.window(b_start, b_end, B.hosts))
                        : json::value(nullptr)},
      {"floor_cpu", floor_a < floor_z ? json::value(cpu.window(floor_a, floor_z, B.hosts))
                                      : json::value(nullptr)},
      {"floor_slowest_host", slow_host},
      {"floor_hosts", std::move(floor_hosts)},
      {"ratio", B.duration_s && slow > 0 ? json::value(round3(*B.duration_s / secs(slow)))
                                         : json::value(nullptr)}});
  auto step = [&](const char* a, const char* z) {
    return slowest ? ms_text(slowest->step_ms(a, z)) : std::string("-");
  };
  f.text.push_back(fmt::format(
      "  batch {}/{} [{}]: drill {} s = dispatch {} + slowest job {} s on {} (notify {} stop {} "
      "swap {} reboot {} "
      "start {} verify {}) + collect {}; floor {} s (slowest {}); gap before {:.3f} s",
      b + 1, batches.size(), fmt::join(B.hosts, " "), fmt_opt(B.duration_s), ms_text(dispatch),
      ms_text(d.slow_job), slowest ? slowest->host : "-", step("Notifying", "StoppingGuests"),
      step("StoppingGuests", "SwappingImage"), step("SwappingImage", "Rebooting"),
      step("Rebooting", "StartingGuests"), step("StartingGuests", "Verifying"),
      step("Verifying", "done"), ms_text(collect), ms_text(slow), slow_host, gap));
  const auto& bo = f.out.back().as_object();
  f.text.push_back("      cpu, drill: " + cpu_text(obj(bo, "drill_cpu")) +
                   "; floor: " + cpu_text(obj(bo, "floor_cpu")));
}

struct InstanceFigures {
  json::array out;
  std::vector<std::string> text;
  std::optional<double> dr50, dr50p, dr50g;  // downtime ratios' medians: agent, prober, gap
};

// Per instance of the report: its drill down time against its raw cycle (step 4).
InstanceFigures instance_figures(BenchRun& r) {
  std::map<std::string, const RawGuest*> raw;
  for (const auto& hosts : r.floor) {
    for (const auto& h : hosts) {
      for (const auto& g : h.guests) raw[g.name] = &g;
    }
  }
  std::vector<double> r_agent, r_prober, r_gap;
  InstanceFigures f;
  for (const auto& iv : arr(r.report, "instances")) {
    const auto& i = iv.as_object();
    std::string name = str(i, "name");
    auto agent_down = number(i, "agent_down_s");
    auto down = number(i, "down_s");
    const RawGuest* g = raw.count(name) ? raw[name] : nullptr;
    std::optional<double> cycle, gap;
    if (g && g->cycle_ms() > 0) cycle = secs(g->cycle_ms());
    if (g && g->gap_ms() > 0) gap = secs(g->gap_ms());
    auto div = [](std::optional<double> a, std::optional<double> b) -> std::optional<double> {
      if (!a || !b || *b <= 0) return std::nullopt;
      return *a / *b;
    };
    auto ra = div(agent_down, cycle), rp = div(down, cycle), rg = div(agent_down, gap);
    if (ra) r_agent.push_back(*ra);
    if (rp) r_prober.push_back(*rp);
    if (rg) r_gap.push_back(*rg);
    std::string host = str(i, "host");
    GuestDrill gd;
    if (auto it = r.events.find(host); it != r.events.end())
      gd = guest_drill(name, it->second, r.drill_start_ms, r.drill_end_ms);
    auto span = [](int64_t a, int64_t b) { return a < 0 || b < 0 ? int64_t{-1} : b - a; };
    const json::object* jg = r.job_guests.count(name) ? &r.job_guests[name] : nullptr;
    f.out.push_back(
        json::object{{"name", name},
                     {"host", host},
                     {"ud", int_or(i, "ud", -1)},
                     {"agent_down_s", num_or_null(agent_down)},
                     {"down_s", num_or_null(down)},
                     {"cycle_s", num_or_null(cycle)},
                     {"raw_gap_s", num_or_null(gap)},
                     {"downtime_ratio", num_or_null(ra)},
                     {"downtime_ratio_prober", num_or_null(rp)},
                     {"downtime_ratio_gap", num_or_null(rg)},
                     {"drill_stop_to_first_hb_s", secs_or_null(span(gd.stopping, gd.first_hb))},
                     {"drill_stopping_to_stopped_s", secs_or_null(span(gd.stopping, gd.stopped))},
                     {"drill_stopped_to_starting_s", secs_or_null(span(gd.stopped, gd.starting))},
                     {"drill_starting_to_first_hb_s", secs_or_null(span(gd.starting, gd.first_hb))},
                     {"raw_stop_call_s",
                      g ? secs_or_null(g->stop_done_ms - g->stop_req_ms) : json::value(nullptr)},
                     {"raw_start_req_to_first_hb_s",
                      g ? secs_or_null(g->first_hb_ms < 0 ? -1 : g->first_hb_ms - g->start_req_ms)
                        : json::value(nullptr)},
                     {"job_guest", jg ? json::value(*jg) : json::value(nullptr)}});
    f.text.push_back(
        fmt::format("  {:<10} {:<3} drill agent_down {} s, prober down {} s | raw cycle {} s, raw "
                    "gap {} s | ratio {} (prober {}, "
                    "gap {}) | drill: stop {} s, stopped->starting {} s, starting->hb {} s; raw: "
                    "stop {} s, start->hb {} s",
                    name, host, fmt_opt(agent_down), fmt_opt(down), fmt_opt(cycle), fmt_opt(gap),
                    fmt_opt(ra), fmt_opt(rp), fmt_opt(rg), ms_text(span(gd.stopping, gd.stopped)),
                    ms_text(span(gd.stopped, gd.starting)), ms_text(span(gd.starting, gd.first_hb)),
                    g ? ms_text(g->stop_done_ms - g->stop_req_ms) : "-",
                    g && g->first_hb_ms >= 0 ? ms_text(g->first_hb_ms - g->start_req_ms) : "-"));
  }
  f.dr50 = median(r_agent);
  f.dr50p = median(r_prober);
  f.dr50g = median(r_gap);
  if (r_agent.size() != arr(r.report, "instances").size()) {
    r.notes.push_back(fmt::format("downtime ratio over {} of {} instances (the others lack a figure)",
                                  r_agent.size(), arr(r.report, "instances").size()));
  }
  return f;
}

json::object where_the_time_goes(double excess, const BatchFigures& bf, double tail_s) {
  const Share& share = bf.share;
  return json::object{{"excess_s", round3(excess)},
                      {"notify_s", round3(share.notify)},
                      {"stop_s", round3(share.stop)},
                      {"swap_s", round3(share.swap)},
                      {"reboot_s", round3(share.reboot)},
                      {"start_s", round3(share.start)},
                      {"verify_s", round3(share.verify)},
                      {"dispatch_s", round3(share.dispatch)},
                      {"collect_s", round3(share.collect)},
                      {"gaps_before_batches_s", round3(bf.gaps_s)},
                      {"after_last_batch_s", round3(tail_s)},
                      {"note",
                       "per batch, the slowest drill host's agent steps (notify = Notifying, stop = "
                       "StoppingGuests, swap = "
                       "SwappingImage, reboot = Rebooting, start = StartingGuests, verify = "
                       "Verifying to job done), plus the "
                       "orchestrator's dispatch (batch start -> first job started) and collect "
                       "(last job done -> batch done), "
                       "summed over batches; gaps = drill start -> batch 1 and between batches; "
                       "compare stop + start + verify "
                       "with floor_s"}};
}

// What clients saw: this drill's, and (unless --no-drain-drill=false) a second rack's without
// drain; the first rack is taken down before the second comes up.
struct Clients {
  ClientFigures with_drain;
  std::optional<ClientFigures> no_drain;
  json::object out;
};

// 6.
Clients clients_figures(BenchRun& r, rack::Lab& lab) {
  Clients c;
  c.with_drain = client_figures(r.report, r.spec);
  const ClientFigures& clients = c.with_drain;
  if (clients.measured && r.opt.no_drain_drill) {
    keep_consoles(lab.dir());
    if (auto st = lab.down(false); !st.ok()) progress("teardown: " + st.error().message);
    auto nd = no_drain_figures(r.spec, r.lo);
    if (nd.ok()) {
      c.no_drain = *nd;
    } else {
      r.notes.push_back("the drill without drain failed: " + nd.error().message);
    }
  } else if (!clients.measured) {
    r.notes.push_back("client traffic not measured: " + clients.reason);
  }
  c.out = json::object{{"measured", clients.measured},
                       {"requests", clients.requests},
                       {"failed_multi_instance", clients.failed_multi_instance},
                       {"failed_multi_instance_target", 0},
                       {"services", clients.services}};
  if (c.no_drain) {
    c.out["no_drain"] = json::object{{"requests", c.no_drain->requests},
                                     {"failed_multi_instance", c.no_drain->failed_multi_instance},
                                     {"services", c.no_drain->services},
                                     {"outage_over_detection_p50", num_or_null(c.no_drain->outage_ratio_p50)}};
  }
  return c;
}

// Every figure of the run.
struct Figures {
  BatchFigures batches;
  InstanceFigures instances;
  double floor_s = 0, tail_s = 0, excess = 0;
  std::optional<double> ratio;
  int foreign_qemu = 0;
  Clients clients;
};

json::object output_json(BenchRun& r, const Figures& f, const CpuSampler& cpu) {
  const auto& spec = r.spec;
  const auto& report = r.report;
  const auto& ratio = f.ratio;
  const auto& dr50 = f.instances.dr50;
  return json::object{
      {"bench", "drill"},
      {"hypervisor", spec.hypervisor},
      {"hosts", spec.hosts},
      {"fault_domains", spec.fault_domains},
      {"instances", static_cast<int64_t>(arr(report, "instances").size())},
      {"kind", spec.kind},
      {"target", spec.target},
      {"time_scale", spec.time_scale},
      {"recovery_s", spec.recovery_s},
      {"notice_s", round3(r.notice_eff_s)},
      {"notice_policy", r.notice_policy},
      {"settle_s", r.settle_s},
      {"populate_s", round3(secs(r.populate_ms))},
      {"drill_id", str(r.rdrill(), "id")},
      {"drill_state", r.drill_state},
      {"drill_result", str(report, "result")},
      {"batches", static_cast<int64_t>(r.batches.size())},
      {"lower_bound", int_or(obj(report, "walk"), "lower_bound", -1)},
      {"makespan_s", round3(*r.makespan_s)},
      {"floor_s", round3(f.floor_s)},
      {"ratio", num_or_null(ratio)},
      {"ratio_target", kRatioTarget},
      {"ratio_met", ratio && *ratio <= kRatioTarget},
      {"downtime_ratio_p50", num_or_null(dr50)},
      {"downtime_ratio_target", kDowntimeTarget},
      {"downtime_ratio_met", dr50 && *dr50 <= kDowntimeTarget},
      {"downtime_ratio_prober_p50", num_or_null(f.instances.dr50p)},
      {"downtime_ratio_gap_p50", num_or_null(f.instances.dr50g)},
      {"where_the_time_goes", where_the_time_goes(f.excess, f.batches, f.tail_s)},
      {"requests", f.clients.with_drain.requests},
      {"failed_multi_instance", f.clients.with_drain.failed_multi_instance},
      {"floor_under_client_traffic", r.floor_under_traffic},
      {"clients", f.clients.out},
      {"cpu_cores", CpuSampler::cores()},
      {"cpu_settle_after_populate", cpu.window(r.settle1_ms, r.settle1_end_ms, {})},
      {"cpu_settle_after_drill", cpu.window(r.settle2_ms, r.settle2_end_ms, {})},
      {"cpu_drill", cpu.window(r.drill_start_ms, r.drill_end_ms, {})},
      {"foreign_qemu_max", f.foreign_qemu},
      {"batch_list", f.batches.out},
      {"instance_list", f.instances.out},
      {"heartbeats_from_events", r.refined},
      {"notes", json::value_from(r.notes)},
      {"method",
       "makespan = drill duration (recovery 0); floor = sum over the drill's batches "
       "of the slowest host's raw "
       "agent stop (each guest) + start (each guest) -> first heartbeat of the new "
       "boot of its last guest, hosts of "
       "a batch concurrently, same rack after the drill; downtime_ratio = "
       "agent_down_s / raw cycle (stop request "
       "-> first new heartbeat) per instance, p50"}};
}

// The human text: the headline figures, per batch, where the time goes, the CPU, per instance,
// the clients and the notes.
void print_text(const BenchRun& r, const Figures& f, const json::object& out) {
  const auto& spec = r.spec;
  const auto& report = r.report;
  const auto& ratio = f.ratio;
  const auto& dr50 = f.instances.dr50;
  const Share& share = f.batches.share;
  std::cout << fmt::format(
      "fabriclab-bench-drill: {} hosts / {} FDs, {} instances, {} {} -> {}, hypervisor {}\n",
      spec.hosts, spec.fault_domains, arr(report, "instances").size(), spec.kind, "host image",
      spec.target, spec.hypervisor);
  std::cout << "notice: " << r.notice_policy << "; recovery 0\n";
  std::cout << fmt::format("drill {} {} ({}), {} batches (lower bound {})\n", str(r.rdrill(), "id"),
                           r.drill_state, str(report, "result"), r.batches.size(),
                           int_or(obj(report, "walk"), "lower_bound", -1));
  std::cout << fmt::format("makespan_s          {:.3f}\n", *r.makespan_s);
  std::cout << fmt::format("floor_s             {:.3f}\n", f.floor_s);
  std::cout << fmt::format("ratio               {}   (target <= {:.2f}: {})\n", fmt_opt(ratio),
                           kRatioTarget, ratio && *ratio <= kRatioTarget ? "met" : "NOT met");
  std::cout << fmt::format(
      "downtime_ratio_p50  {}   (target <= {:.2f}: {}); prober down_s {}, like-for-like gap {}\n",
      fmt_opt(dr50), kDowntimeTarget, dr50 && *dr50 <= kDowntimeTarget ? "met" : "NOT met",
      fmt_opt(f.instances.dr50p), fmt_opt(f.instances.dr50g));
  std::cout << "batches:\n";
  for (const auto& l : f.batches.text) std::cout << l << "\n";
  std::cout << fmt::format(
      "where the time goes (excess {:.3f} s over the floor): notify {:.3f}, stop {:.3f}, swap "
      "{:.3f}, reboot {:.3f}, "
      "start {:.3f}, verify {:.3f}, dispatch {:.3f}, collect {:.3f}, gaps before batches {:.3f}, "
      "after the last "
      "batch {:.3f}\n",
      f.excess, share.notify, share.stop, share.swap, share.reboot, share.start, share.verify,
      share.dispatch, share.collect, f.batches.gaps_s, f.tail_s);
  for (const char* k : {"cpu_settle_after_populate", "cpu_drill", "cpu_settle_after_drill"}) {
    const auto& w = obj(out, k);
    std::string top;
    for (const auto& t : arr(w, "top_other_processes")) {
      top += fmt::format(" {} {:.2f}", str(t.as_object(), "name"),
                         number(t.as_object(), "cores").value_or(0));
    }
    std::cout << fmt::format(
        "{}: machine {:.2f} of {:.0f} cores busy; lab qemu {:.2f}, agents+orchestrator {:.2f}, "
        "foreign qemu {:.2f} (max {} processes), other {:.2f}{}{}, unaccounted {:.2f}\n",
        k, number(w, "machine_busy_cores").value_or(0), CpuSampler::cores(),
        number(w, "qemu_cores_batch_hosts").value_or(0) + number(w, "qemu_cores_other_hosts").value_or(0),
        number(w, "lab_processes_cores").value_or(0), number(w, "foreign_qemu_cores").value_or(0),
        int_or(w, "foreign_qemu_max", 0), number(w, "other_processes_cores").value_or(0),
        top.empty() ? "" : " (top:", top.empty() ? "" : top + ")",
        number(w, "unaccounted_cores").value_or(0));
  }
  std::cout << "instances:\n";
  for (const auto& l : f.instances.text) std::cout << l << "\n";
  const ClientFigures& clients = f.clients.with_drain;
  if (clients.measured) {
    std::cout << fmt::format("clients: {} requests, {} failed for multi-instance services (target 0)\n",
                             clients.requests, clients.failed_multi_instance);
  }
  if (const auto& no_drain = f.clients.no_drain) {
    std::cout << fmt::format("without drain: {} requests, {} failed for multi-instance services\n",
                             no_drain->requests, no_drain->failed_multi_instance);
    for (const auto& [name, v] : no_drain->services) {
      const auto& o = v.as_object();
      std::cout << fmt::format("  {:<10} outage_ms_p50 {} over {} failure runs; probe_detection_ms {}\n",
                               std::string(name), fmt_opt(number(o, "outage_ms_p50"), "{:.0f}"),
                               int_or(o, "failure_runs", 0), int_or(o, "probe_detection_ms", 0));
    }
    std::cout << "outage / probe detection (p50 over services): " << fmt_opt(no_drain->outage_ratio_p50) << "\n";
  }
  for (const auto& n : r.notes) std::cout << "note: " << n << "\n";
}

int run(const Options& opt) {
  BenchRun r(opt);
  if (auto st = prepare(r); !st.ok()) {
    std::cerr << "fabriclab-bench-drill: " << st.error().message << "\n";
    return 1;
  }
  const rack::DrillFileSpec& spec = r.spec;

  // ---- 1. rack up, populate, settle
  client::install_interrupt_handlers();
  r.lo.dir = opt.lab_dir;
  r.lo.bin_dir = rack::self_dir();
  r.lo.images_dir = rack::images_dir(opt.images, FABRICLAB_BENCH_IMAGES_DIR);
  if (r.real) r.lo.start_timeout = 60s;
  progress(fmt::format("rack up: {} hosts in {} FDs, hypervisor {}, images {}, lab dir {}",
                       spec.hosts, spec.fault_domains, spec.hypervisor, r.lo.images_dir, r.lo.dir));
  auto up = rack::Lab::up(spec, r.lo);
  if (!up.ok()) return fail("lab up: " + up.error().message);
  rack::Lab lab = std::move(up).value();
  progress("network " + lab.network() +
           (lab.network() == "netns" ? " (rack namespace " + lab.agent_netns() + ")"
                                     : " (" + (lab.network_reason().empty() ? "asked for" : lab.network_reason()) + ")"));
  struct Down {
    rack::Lab& lab;
    ~Down() {
      keep_consoles(lab.dir());
      progress("stopping the rack (VMs, agents, orchestrator, network namespaces)");
      if (auto st = lab.down(false); !st.ok()) progress("teardown: " + st.error().message);
      progress("rack stopped; logs in " + lab.dir());
    }
  } down{lab};
  std::set<pid_t> agent_pids;
  for (const auto& a : lab.agents()) agent_pids.insert(a.pid);
  CpuSampler cpu(lab.dir(), agent_pids, lab.orchestrator().pid);
  if (auto st = populate_and_settle(r, lab); !st.ok()) return fail(st.error().message);
  auto api = client::OrchestratorClient::from_url(lab.orchestrator_url(), lab.control_token());
  if (!api.ok()) return fail(api.error().message);
  Agents agents(lab);

  // ---- 2. the drill; 3. the floor; 4. the agents' histories
  if (auto st = run_the_drill(r, *api, lab); !st.ok()) return fail(st.error().message);
  if (auto st = measure_floor(r, *api, lab, agents); !st.ok()) return fail(st.error().message);
  read_histories(r, agents);

  // ---- figures
  Figures f;
  for (size_t b = 0; b < r.batches.size(); ++b) add_batch(r, b, cpu, f.batches);
  f.floor_s = secs(static_cast<int64_t>(f.batches.floor_sum_ms));
  f.tail_s = f.batches.prev_end ? *r.makespan_s - *f.batches.prev_end : 0.0;
  f.ratio = f.floor_s > 0 ? std::optional<double>(*r.makespan_s / f.floor_s) : std::nullopt;
  f.instances = instance_figures(r);
  f.excess = *r.makespan_s - f.floor_s;
  cpu.finish();
  f.foreign_qemu = cpu.foreign_max();
  if (f.foreign_qemu > 0) {
    r.notes.push_back(fmt::format(
        "up to {} QEMU processes of something else ran during the bench: figures distorted",
        f.foreign_qemu));
  }

  // ---- 6. what clients saw, with drain (this drill) and without (a second rack)
  f.clients = clients_figures(r, lab);

  json::object out = output_json(r, f, cpu);
  if (opt.json_out) {
    std::cout << json::serialize(out) << "\n";
  } else {
    print_text(r, f, out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "A drill on real VMs against its floor (the raw stop + start + heartbeat time of the same "
      "batches, "
      "same run): makespan_s, floor_s, ratio (target <= 1.15), downtime_ratio_p50 (target <= "
      "1.10)"};
  Options opt;
  double notice = -1;
  app.add_option("--hypervisor", opt.hypervisor, "qemu (real VMs) or test (simulated guests)")
      ->check(CLI::IsMember({"qemu", "test"}))
      ->capture_default_str();
  app.add_option("--images", opt.images,
                 "Guest images directory (default: FABRICLAB_IMAGES_DIR, then the build's)");
  app.add_option("--lab-dir", opt.lab_dir, "Lab directory (short: sockets live under it)")
      ->capture_default_str();
  app.add_option("--spec", opt.spec_file,
                 "A drill spec (YAML) instead of the default drill; recovery is set to 0");
  app.add_option("--notice-s", notice,
                 "Override the spec's notice_s (spec seconds, scaled by time_scale)")
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--settle-s", opt.settle_s,
                 "Pause after populate and after the drill (default 10 s qemu, 1 s test)");
  app.add_option("--floor-timeout-s", opt.floor_timeout_s,
                 "Per host, how long the raw cycle may take")
      ->capture_default_str();
  app.add_flag("--json", opt.json_out, "Print one JSON object");
  app.add_option("--no-drain-drill", opt.no_drain_drill,
                 "Also run the drill on a second rack with drain: false (client outage vs probe detection)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (notice >= 0) opt.notice_s = notice;
  return run(opt);
}
