// The fault executor (faults.hpp): a thread that follows the walk and injects the schedule.
//
// Each kind, on this rack (docs/faults.md says the same for users):
//   kill-agent          SIGKILL of the host's agent process; with a duration it is started again
//                       with its own command line on its own address and port (the orchestrator
//                       knows it there). Its QEMU guests run on; a simulated host's guests are
//                       threads of the agent and die with it.
//   kill-orchestrator   SIGKILL (0.3 s after its drill.fault was posted, so its journal has it);
//                       started again on the same journal, address and port.
//   partition-host      `ip -n flab-ID-hN link set eth0 down`, then up: the agent and its guests
//                       run on, nothing reaches them. Needs the rack's network namespaces (root);
//                       on a loopback rack the fault fails, saying so.
//   kill-fault-domain   Lab::kill_fault_domain at the moment given.
//   guest-crash         real: SIGKILL of the guest's QEMU process; simulated: the agent's fault
//                       endpoint (the agent's stand-in for the guest dies the same way).
//   guest-hang, slow-boot  the agent's fault endpoint (POST /v1/faults, docs/api.md).
//   corrupt-host-image  bytes of the host's staged target host image overwritten on disk.
#include "fabriclab/rack/faults.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <fstream>
#include <ostream>

#include "fabriclab/common/child_process.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/process.hpp"
#include "lab_internal.hpp"
#include "netns.hpp"

namespace fabriclab::rack {

using namespace std::chrono_literals;
using json_get::arr;
using json_get::str;

struct FaultExecutor::Active {
  size_t index = 0;    // into records_
  int64_t end_ms = 0;  // unix ms; 0: never (a killed agent without duration)
};

namespace {

// QEMU processes of the lab whose command line names guest `name` under host `host`'s state dir.
std::vector<pid_t> qemu_of(const std::string& lab_dir, const std::string& host,
                           const std::string& name) {
  return processes_matching("qemu", {lab_dir + "/" + host + "/", "guest=" + name + ","});
}

// Starts lab process `p` again with its own command line, on the port it had (so the orchestrator
// and the CLI find it where they knew it), and waits for it to listen. `hold_guests`: an agent
// whose host was fenced meanwhile comes back as `fabriclab lab power-on` brings it (--hold-guests:
// a host back from a power loss starts no guest by itself; the orchestrator reconciles it).
Status restart(Lab& lab, LabProcess& p, bool hold_guests = false) {
  if (p.argv.empty())
    return make_error(Condition::invalid_state, p.name + " was not started by this process");
  std::vector<std::string> argv = p.argv;
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "--port") argv[i + 1] = std::to_string(p.port);
  }
  if (hold_guests && std::find(argv.begin(), argv.end(), "--hold-guests") == argv.end())
    argv.push_back("--hold-guests");
  FL_ASSIGN_OR_RETURN(auto child, detail::start_process(p, lab.dir(), argv, /*restart=*/true));
  (void)lab.save_state();
  FL_ASSIGN_OR_RETURN(auto at, wait_listening(child, 60s));
  if (at.port != p.port) {
    return make_error(Condition::internal,
                      fmt::format("{} came back on port {}, not {}", p.name, at.port, p.port));
  }
  return {};
}

int step_index(const std::string& step) {
  const auto& steps = fault_steps();
  auto it = std::find(steps.begin(), steps.end(), step);
  return it == steps.end() ? -1 : static_cast<int>(it - steps.begin());
}

// Host `host`'s (state, step) as its agent says (GET /v1/host); empty when it does not answer.
std::pair<std::string, std::string> host_state(Lab& lab, const std::string& host) {
  const LabProcess* p = lab.process(host);
  if (!p || p->port <= 0) return {};
  auto r = http::request(p->address, static_cast<uint16_t>(p->port), "GET", "/v1/host", {},
                         lab.control_token(), 500ms, lab.agent_netns());
  if (!r.ok() || r->status != 200) return {};
  auto o = parse_json_object(r->body, 1 << 20, 16, "host");
  if (!o.ok()) return {};
  return {str(*o, "state"), str(*o, "step")};
}

}  // namespace

json::object FaultRecord::to_json() const {
  return {{"kind", spec.kind},
          {"target", spec.where()},
          {"scheduled", spec.describe()},
          {"status", status},
          {"at_s", at_s < 0 ? json::value(nullptr) : json::value(std::round(at_s * 1000) / 1000)},
          {"at", at_actual},
          {"injected_at", injected_ms ? json::value(rfc3339(std::chrono::system_clock::time_point(
                                            std::chrono::milliseconds(injected_ms))))
                                      : json::value(nullptr)},
          {"duration_s", ended_ms && injected_ms ? json::value((ended_ms - injected_ms) / 1000.0)
                                                 : json::value(nullptr)},
          {"detail", detail},
          {"outcome", outcome}};
}

json::array faults_json(const std::vector<FaultRecord>& records) {
  json::array a;
  for (const auto& r : records) a.push_back(r.to_json());
  return a;
}

FaultExecutor::FaultExecutor(Lab& lab, const client::OrchestratorClient& api,
                             const DrillFileSpec& spec, std::string drill_id, std::ostream* out)
    : lab_(lab), api_(api), spec_(spec), drill_id_(std::move(drill_id)), out_(out) {
  api_.set_timeout(2s);
  for (const auto& f : spec.faults) {
    if (f.at.kind == FaultAt::Kind::before_walk) continue;  // the drill runner's own (drill.cpp)
    FaultRecord r;
    r.spec = f;
    records_.push_back(std::move(r));
  }
}

FaultExecutor::~FaultExecutor() { finish("the drill runner stopped"); }

void FaultExecutor::start() {
  walk_start_ms_ = unix_now_ms();
  thread_ = std::thread([this] { run(); });
}

std::vector<FaultRecord> FaultExecutor::records() const {
  std::lock_guard lock(mu_);
  return records_;
}

void FaultExecutor::run() {
  while (!stopping_) {
    tick();
    end_due(false);
    flush_posts();
    std::this_thread::sleep_for(25ms);
  }
}

void FaultExecutor::finish(const std::string& reason) {
  if (stopping_.exchange(true)) return;
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(mu_);
    for (auto& r : records_) {
      if (r.status == "pending") {
        r.status = "not injected";
        r.detail = r.waiting_since_ms ? r.detail + "; it did not before " + reason : reason;
      }
    }
  }
  end_due(true);
  flush_posts();
}

void FaultExecutor::tick() {
  const int64_t now = unix_now_ms();
  if (now - drill_read_ms_ >= 100) {
    drill_read_ms_ = now;
    if (auto d = api_.get("/v1/drills/" + drill_id_); d.ok() && d->is_object())
      drill_ = d->as_object();
  }
  const double scale = spec_.time_scale;
  const auto& batches = arr(drill_, "batches");
  std::map<std::string, std::pair<std::string, std::string>>
      host_step;  // host -> (state, step), this tick
  auto step_of = [&](const std::string& host) -> std::pair<std::string, std::string> {
    if (auto it = host_step.find(host); it != host_step.end()) return it->second;
    return host_step[host] = host_state(lab_, host);
  };
  for (size_t i = 0; i < records_.size(); ++i) {
    FaultSpec f;
    std::string waiting_due_at;  // set: due already, waiting for its guest to run
    {
      std::lock_guard lock(mu_);
      const FaultRecord& r = records_[i];
      if (r.status != "pending") continue;
      if (r.waiting_since_ms && now - r.last_try_ms < 100) continue;  // tried every 100 ms
      f = r.spec;
      if (r.waiting_since_ms) waiting_due_at = r.due_at;
    }
    if (!waiting_due_at.empty()) {
      fire(i, waiting_due_at);
      continue;
    }
    if (f.at.kind == FaultAt::Kind::after) {
      const double due_ms = f.at.after_s * scale * 1000.0;
      if (static_cast<double>(now - walk_start_ms_) >= due_ms) {
        fire(i, fmt::format("{:.1f} s after the walk started", (now - walk_start_ms_) / 1000.0));
      }
      continue;
    }
    if (static_cast<size_t>(f.at.batch) > batches.size() || !batches[f.at.batch - 1].is_object())
      continue;
    const auto& b = batches[f.at.batch - 1].as_object();
    const std::string status = str(b, "status");
    if (status == "pending" || status.empty()) continue;
    const bool over = status != "running";
    if (f.at.step.empty()) {
      if (!over) fire(i, fmt::format("batch {} start", f.at.batch));
      continue;
    }
    std::vector<std::string> hosts;
    for (const auto& h : arr(b, "hosts")) {
      if (h.is_string()) hosts.emplace_back(h.as_string());
    }
    if (f.target_kind == "host" && std::find(hosts.begin(), hosts.end(), f.target) != hosts.end())
      hosts = {f.target};
    bool fired = false;
    for (const auto& h : hosts) {
      auto [state, step] = step_of(h);
      if (state != "Updating") continue;
      const int have = step_index(step), want = step_index(f.at.step);
      if (have >= 0 && have >= want) {
        fire(i, fmt::format("batch {} {} on {}{}", f.at.batch, step, h,
                            have > want ? " (" + f.at.step + " was not seen: too short)" : ""));
        fired = true;
        break;
      }
    }
    if (!fired && over) {
      std::lock_guard lock(mu_);
      records_[i].status = "not injected";
      records_[i].detail = fmt::format("batch {} ended ({}) before {} was seen on its hosts",
                                       f.at.batch, status, f.at.step);
    }
  }
}

void FaultExecutor::post(const FaultRecord& r, const std::string& status) {
  std::lock_guard lock(mu_);
  json::object body{{"kind", r.spec.kind},
                    {"target", r.spec.where()},
                    {"at", r.at_actual},
                    {"status", status},
                    {"detail", r.detail.substr(0, 1000)}};
  if (r.injected_ms) {
    body["injected_at"] =
        rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(r.injected_ms)));
  }
  unposted_.push_back(std::move(body));
}

void FaultExecutor::flush_posts() {
  std::vector<json::object> left;
  {
    std::lock_guard lock(mu_);
    left.swap(unposted_);
  }
  size_t sent = 0;
  for (; sent < left.size(); ++sent) {
    if (orchestrator_down_) break;
    if (!api_.post("/v1/drills/" + drill_id_ + "/faults", left[sent]).ok()) break;
  }
  if (sent < left.size()) {
    std::lock_guard lock(mu_);
    unposted_.insert(unposted_.begin(), left.begin() + static_cast<std::ptrdiff_t>(sent),
                     left.end());
  }
}

namespace {

// The agent's fault endpoint (docs/api.md), on host `host`.
Status agent_fault(Lab& lab, const std::string& host, const json::object& body) {
  const LabProcess* p = lab.process(host);
  if (!p || p->port <= 0) return make_error(Condition::not_found, "no agent " + host);
  FL_ASSIGN_OR_RETURN(
      auto r, http::request(p->address, static_cast<uint16_t>(p->port), "POST", "/v1/faults",
                            json::serialize(body), lab.control_token(), 5s, lab.agent_netns()));
  if (r.status / 100 != 2) {
    // 409: the instance is not in a state the fault applies to (a guest-crash on a stopped guest);
    // 503: the host is rebooting (its hypervisor is away).
    return make_error(r.status == 409   ? Condition::invalid_state
                      : r.status == 503 ? Condition::transient
                                        : Condition::internal,
                      fmt::format("agent {} refused the fault (HTTP {}): {}", host, r.status,
                                  r.body.substr(0, 300)));
  }
  return {};
}

// Overwrites the first bytes of the host's staged `version` image (bit-inverted): its checksum no
// longer matches its manifest, as after a bad disk or a botched copy.
Status corrupt_image(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  if (!f)
    return make_error(Condition::not_found, "staged host image " + path + " cannot be opened");
  char buf[64] = {};
  f.read(buf, sizeof buf);
  auto n = f.gcount();
  if (n <= 0) return make_error(Condition::invalid_state, path + " is empty");
  for (auto k = 0; k < n; ++k) buf[k] = static_cast<char>(~buf[k]);
  f.clear();
  f.seekp(0);
  f.write(buf, n);
  f.flush();
  if (!f) return make_error(Condition::transient, "cannot write " + path);
  return {};
}

}  // namespace

// Where instance `name` runs now: the orchestrator's view, else the first agent that has it.
static std::string host_of_instance(Lab& lab, const client::OrchestratorClient& api, bool orch_down,
                                    const std::string& name) {
  if (!orch_down) {
    if (auto inst = api.get("/v1/instances"); inst.ok() && inst->is_array()) {
      for (const auto& v : inst->as_array()) {
        if (v.is_object() && str(v, "name") == name) return str(v, "host");
      }
    }
  }
  for (const auto& a : lab.agents()) {
    auto r = http::request(a.address, static_cast<uint16_t>(a.port), "GET", "/v1/instances/" + name,
                           {}, lab.control_token(), 1s, lab.agent_netns());
    if (r.ok() && r->status == 200) return a.name;
  }
  return {};
}

void FaultExecutor::fire(size_t i, const std::string& at_actual) {
  FaultSpec f;
  {
    std::lock_guard lock(mu_);
    f = records_[i].spec;
  }
  const int64_t now = unix_now_ms();
  const int64_t dur_ms =
      f.duration_s ? std::llround(*f.duration_s * spec_.time_scale * 1000.0) : -1;
  std::string detail;
  Status st;
  bool ends = false;
  if (f.kind == "kill-agent") {
    LabProcess* p = lab_.process(f.target);
    if (!p) {
      st = make_error(Condition::not_found, "no agent " + f.target);
    } else {
      detail = fmt::format("SIGKILL agent {} (pid {})", f.target, p->pid);
      kill_process(p->pid);
      ends = dur_ms >= 0;
      detail += ends ? fmt::format("; restart after {:.1f} s", dur_ms / 1000.0) : "; not restarted";
    }
  } else if (f.kind == "kill-orchestrator") {
    LabProcess* p = lab_.process("orchestrator");
    detail =
        fmt::format("SIGKILL orchestrator (pid {}); restart on the same journal after {:.1f} s",
                    p->pid, std::max<int64_t>(dur_ms, 0) / 1000.0);
    {
      std::lock_guard lock(mu_);
      records_[i].status = "injected";
      records_[i].injected_ms = now;
      records_[i].at_actual = at_actual;
      records_[i].detail = detail;
    }
    post(records_[i], "injected");  // published while it still can be, and journaled: its journal
    flush_posts();                  // writer trails the feed by a moment, and a SIGKILL loses that
    std::this_thread::sleep_for(300ms);
    orchestrator_down_ = true;
    kill_process(p->pid);
    ends = true;
  } else if (f.kind == "partition-host") {
    const LabProcess* p = lab_.process(f.target);
    if (!p || p->netns.empty()) {
      st = make_error(Condition::unsupported,
                      "the rack has no network namespaces (" +
                          (lab_.network_reason().empty() ? std::string("loopback network")
                                                         : lab_.network_reason()) +
                          "): a host's link cannot be cut");
    } else {
      st = netns::set_link(p->netns, false);
      detail = fmt::format("ip -n {} link set eth0 down for {:.1f} s", p->netns, dur_ms / 1000.0);
      ends = st.ok();
    }
  } else if (f.kind == "kill-fault-domain") {
    st = lab_.kill_fault_domain(f.fault_domain);
    detail = fmt::format("SIGKILL every agent of fault domain {} and its VMs", f.fault_domain);
  } else if (f.kind == "corrupt-host-image") {
    const std::string path =
        lab_.dir() + "/" + f.target + "/host-images/versions/" + spec_.target + "/image";
    st = corrupt_image(path);
    detail = "inverted the first 64 bytes of " + path;
  } else {  // guest-crash, guest-hang, slow-boot: on the instance's host now
    const std::string host = host_of_instance(lab_, api_, orchestrator_down_, f.target);
    bool waiting = false;
    {
      std::lock_guard lock(mu_);
      waiting = records_[i].waiting_since_ms != 0;
    }
    // A crash put off while the walk had the guest stopped waits out its host's update too: a
    // guest that crashes while its host verifies fails that update, which is not what was asked
    // (a schedule asks for that with `at: {batch: N, step: Verifying}`).
    const auto [host_st, host_step] =
        waiting && !host.empty() ? host_state(lab_, host) : std::pair<std::string, std::string>{};
    if (host.empty()) {
      st = make_error(Condition::not_found, "instance " + f.target + " is on no reachable host");
    } else if (f.kind == "guest-crash" && host_st == "Updating") {
      st = make_error(Condition::transient, "host " + host + " is Updating (" + host_step + ")");
    } else if (f.kind == "guest-crash" && lab_.hypervisor() == "qemu") {
      auto pids = qemu_of(lab_.dir(), host, f.target);
      // No QEMU process: the guest is stopped (by the walk, or crashed already).
      if (pids.empty())
        st = make_error(Condition::invalid_state, "no QEMU process of " + f.target + " on " + host);
      for (pid_t pid : pids) kill(pid, SIGKILL);
      detail = fmt::format("SIGKILL QEMU process of {} on {} (pid {})", f.target, host,
                           pids.empty() ? 0 : pids[0]);
    } else {
      json::object body{{"kind", f.kind}, {"instance", f.target}};
      if (f.kind == "slow-boot") body["delay_ms"] = std::max<int64_t>(dur_ms, 1);
      st = agent_fault(lab_, host, body);
      detail = f.kind == "guest-crash"
                   ? "the agent on " + host + " killed its simulated guest " + f.target
               : f.kind == "guest-hang"
                   ? f.target + " on " + host + " ignores the power button from now on"
                   : fmt::format("{} on {}: its next boot is delayed {:.1f} s", f.target, host,
                                 dur_ms / 1000.0);
    }
  }
  if (deferred_guest_fault(i, f, st, at_actual, now)) return;
  FaultRecord copy;
  {
    std::lock_guard lock(mu_);
    FaultRecord& r = records_[i];
    r.status = st.ok() ? "injected" : "failed";
    r.injected_ms = now;
    r.at_s = (now - walk_start_ms_) / 1000.0;
    r.at_actual = at_actual;
    r.detail = st.ok() ? detail : st.error().message;
    if (r.waiting_since_ms) {
      r.detail +=
          fmt::format(" (due at {}; waited {:.1f} s for {} to run again, its host's update over)",
                      r.due_at, (now - r.waiting_since_ms) / 1000.0, f.target);
    }
    copy = r;
    if (st.ok() && ends)
      active_.push_back(std::make_unique<Active>(Active{i, now + std::max<int64_t>(dur_ms, 0)}));
  }
  if (out_)
    *out_ << "fault: " << f.describe() << ": " << (st.ok() ? "" : "FAILED: ") << copy.detail << "\n"
          << std::flush;
  if (f.kind != "kill-orchestrator") post(copy, copy.status);
}

bool FaultExecutor::deferred_guest_fault(size_t i, const FaultSpec& f, const Status& st,
                                         const std::string& at_actual, int64_t now) {
  if (f.kind != "guest-crash" || st.ok() ||
      (st.condition() != Condition::invalid_state && st.condition() != Condition::transient))
    return false;
  std::string first;  // the message, the first time only
  {
    std::lock_guard lock(mu_);
    FaultRecord& r = records_[i];
    r.last_try_ms = now;
    if (!r.waiting_since_ms) {
      r.waiting_since_ms = now;
      r.due_at = at_actual;
      r.detail = fmt::format("{} was not running when due ({}); waiting for it to run again",
                             f.target, st.error().message);
      first = r.detail;
    }
  }
  if (!first.empty() && out_) *out_ << "fault: " << f.describe() << ": " << first << "\n";
  return true;
}

void FaultExecutor::end_due(bool all) {
  const int64_t now = unix_now_ms();
  std::vector<std::unique_ptr<Active>> due;
  {
    std::lock_guard lock(mu_);
    for (auto it = active_.begin(); it != active_.end();) {
      const auto& kind = records_[(*it)->index].spec.kind;
      // A killed agent with no duration stays down; the teardown stops what is left.
      const bool never = kind == "kill-agent" && !records_[(*it)->index].spec.duration_s;
      if (!never && ((*it)->end_ms <= now || all)) {
        due.push_back(std::move(*it));
        it = active_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& a : due) {
    FaultSpec f;
    {
      std::lock_guard lock(mu_);
      f = records_[a->index].spec;
    }
    Status st;
    std::string what;
    if (f.kind == "kill-agent") {
      // Fenced while its agent was down: the host was powered off, so it comes back powered on.
      bool fenced = false;
      if (!orchestrator_down_) {
        if (auto h = api_.get("/v1/hosts/" + f.target); h.ok() && h->is_object())
          fenced = str(*h, "state") == "Fenced";
      }
      LabProcess* p = lab_.process(f.target);
      st = p ? restart(lab_, *p, fenced) : make_error(Condition::not_found, "no agent " + f.target);
      what = fenced ? "agent restarted holding its guests (the host was fenced meanwhile)"
                    : "agent restarted";
    } else if (f.kind == "kill-orchestrator") {
      LabProcess* p = lab_.process("orchestrator");
      st = restart(lab_, *p);
      orchestrator_down_ = false;
      what = "orchestrator restarted on the same journal";
    } else if (f.kind == "partition-host") {
      const LabProcess* p = lab_.process(f.target);
      st = netns::set_link(p->netns, true);
      what = "link up again";
    }
    FaultRecord copy;
    {
      std::lock_guard lock(mu_);
      FaultRecord& r = records_[a->index];
      r.ended_ms = unix_now_ms();
      r.detail +=
          st.ok() ? fmt::format("; {} after {:.1f} s", what, (r.ended_ms - r.injected_ms) / 1000.0)
                  : "; ending it FAILED: " + st.error().message;
      copy = r;
    }
    if (out_)
      *out_ << "fault ended: " << f.describe() << ": " << (st.ok() ? what : st.error().message)
            << "\n"
            << std::flush;
    post(copy, st.ok() ? "ended" : "end failed");
  }
}

}  // namespace fabriclab::rack
