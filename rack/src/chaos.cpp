// A chaos campaign (chaos.hpp): draw, run on a fresh rack, gather evidence, judge.
//
// The draw uses its own arithmetic on mt19937_64's raw output (not std::uniform_*_distribution,
// whose results differ between standard libraries), so a seed replays the same campaign wherever
// it runs.
#include "fabriclab/rack/chaos.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <fstream>
#include <mutex>
#include <ostream>
#include <random>
#include <thread>

#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/rack/drill.hpp"
#include "lab_internal.hpp"

namespace fabriclab::rack {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using json_get::arr;
using json_get::str;

namespace {

class Draw {
 public:
  Draw(uint64_t seed, int drill)
      : rng_(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(drill) * 0xBF58476D1CE4E5B9ull) {}
  uint64_t below(uint64_t n) { return n ? rng_() % n : 0; }
  double between(double lo, double hi) {
    return lo + (hi - lo) * static_cast<double>(rng_() >> 11) / 9007199254740992.0;
  }
  bool chance(double p) { return between(0, 1) < p; }

 private:
  std::mt19937_64 rng_;
};

// One fault of `kind`, drawn in the base spec's rack. Times are drawn in real seconds and written
// in spec seconds (divided by the time scale), as a user would write them.
// `early`: in the first batch or the walk's first 3 s, which every walk reaches (a campaign's
// first fault per drill, so every kind it goes round is injected, not only drawn).
FaultSpec draw_one(const DrillFileSpec& base, const std::string& kind, Draw& d, double max_outage_s,
                   bool early) {
  FaultSpec f;
  f.kind = kind;
  const double scale = base.time_scale;
  auto spec_s = [scale](double real_s) { return std::round(real_s / scale); };
  std::vector<std::string> instances;
  for (const auto& s : base.services) {
    for (int i = 0; i < s.instances; ++i) instances.push_back(s.name + "-" + std::to_string(i));
  }
  if (kind == "kill-agent" || kind == "partition-host" || kind == "corrupt-host-image") {
    f.target_kind = "host";
    f.target = "h" + std::to_string(d.below(static_cast<uint64_t>(base.hosts)));
  } else if (kind == "kill-fault-domain") {
    f.target_kind = "fault_domain";
    f.fault_domain = static_cast<int>(d.below(static_cast<uint64_t>(base.fault_domains)));
    f.target = std::to_string(f.fault_domain);
  } else if (kind != "kill-orchestrator") {
    f.target_kind = "instance";
    f.target = instances.empty() ? "" : instances[d.below(instances.size())];
  }
  const bool host_os = base.kind == "host-os";
  if (kind == "corrupt-host-image" || d.chance(0.6)) {
    f.at.kind = FaultAt::Kind::batch;
    f.at.batch = early ? 1 : 1 + static_cast<int>(d.below(2));
    std::vector<std::string> steps = {""};
    for (const auto& s : fault_steps()) {
      if (host_os || (s != "SwappingImage" && s != "Rebooting")) steps.push_back(s);
    }
    // A corrupt image only matters before the swap.
    if (kind == "corrupt-host-image") steps = {"", "Notifying", "StoppingGuests"};
    f.at.step = steps[d.below(steps.size())];
  } else {
    f.at.kind = FaultAt::Kind::after;
    f.at.after_s = spec_s(d.between(0, early ? 3 : 8));
  }
  auto outage = [&](double lo, double hi) {
    if (max_outage_s > 0) hi = std::min(hi, max_outage_s), lo = std::min(lo, hi / 2);
    return spec_s(d.between(lo, hi));
  };
  if (kind == "kill-agent" && d.chance(0.75)) f.duration_s = outage(1, 6);
  if (kind == "kill-orchestrator") f.duration_s = spec_s(d.between(0.5, 4));
  if (kind == "partition-host") f.duration_s = outage(2, 8);
  if (kind == "slow-boot") f.duration_s = spec_s(d.between(1, 5));
  return f;
}

// Every agent's GET path answer, asked through the host's own namespace (a partitioned host's
// agent still answers there), by host; agents that do not answer are left out.
std::vector<std::pair<std::string, json::array>> ask_agents(const Lab& lab,
                                                            const std::string& path) {
  std::vector<std::pair<std::string, json::array>> out;
  for (const auto& a : lab.agents()) {
    if (a.port <= 0) continue;
    auto r = http::request(a.address, static_cast<uint16_t>(a.port), "GET", path, {},
                           lab.control_token(), 1s, a.netns);
    if (!r.ok() || r->status != 200) continue;
    boost::system::error_code ec;
    auto v = json::parse(r->body, ec);
    if (!ec && v.is_array()) out.emplace_back(a.name, std::move(v.as_array()));
  }
  return out;
}

// Which guest each QEMU process of the lab runs, and under which host's state dir.
PlacementSample qemu_sample(const Lab& lab) {
  PlacementSample s{unix_now_ms(), {}};
  for (pid_t pid : processes_matching("qemu", {lab.dir() + "/"})) {
    std::string cmd = detail::cmdline_of(pid);
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    auto g = cmd.find("guest=");
    if (g == std::string::npos) continue;
    std::string name = cmd.substr(g + 6, cmd.find_first_of(", ", g + 6) - (g + 6));
    for (const auto& a : lab.agents()) {
      if (cmd.find(lab.dir() + "/" + a.name + "/") != std::string::npos)
        s.hosts_of[name].insert(a.name);
    }
  }
  return s;
}

// Samples the agents' records (and the QEMU processes) every 250 ms until stopped.
class Sampler {
 public:
  Sampler(const Lab& lab, bool qemu) : lab_(lab), qemu_(qemu) {
    thread_ = std::thread([this] {
      while (!stop_) {
        PlacementSample s{unix_now_ms(), {}};
        for (const auto& [host, inst] : ask_agents(lab_, "/v1/instances"))
          add_agent_instances(s, host, inst);
        auto q = qemu_ ? qemu_sample(lab_) : PlacementSample{};
        {
          std::lock_guard lock(mu_);
          agents_.push_back(std::move(s));
          if (qemu_) processes_.push_back(std::move(q));
        }
        for (int i = 0; i < 5 && !stop_; ++i) std::this_thread::sleep_for(50ms);
      }
    });
  }
  ~Sampler() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::vector<PlacementSample> agents() const { return agents_; }
  std::vector<PlacementSample> processes() const { return processes_; }

 private:
  const Lab& lab_;
  bool qemu_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<PlacementSample> agents_, processes_;
  std::thread thread_;
};

std::map<std::string, CounterReading> counters(const Lab& lab) {
  std::map<std::string, CounterReading> out;
  for (const auto& [host, inst] : ask_agents(lab, "/v1/instances")) add_counters(out, host, inst);
  return out;
}

// The checks of one drill from its evidence.
std::vector<CheckResult> judge(const Lab& lab, const DrillOutcome& o, const Sampler& sampler,
                               bool qemu, const std::map<std::string, CounterReading>& before) {
  std::vector<CheckResult> checks;
  checks.push_back(check_ud_rule_feed(o.feed));
  std::vector<JobSpan> jobs;
  std::map<std::string, std::pair<std::string, int>> ud_of;
  for (const auto& [host, inst] : ask_agents(lab, "/v1/instances")) {
    for (const auto& v : inst) {
      if (v.is_object())
        ud_of[str(v, "name")] = {str(v, "service"),
                                 static_cast<int>(json_get::int_or(v.as_object(), "ud", -1))};
    }
  }
  for (const auto& [host, ops] : ask_agents(lab, "/v1/operations")) {
    auto spans = job_spans(host, ops);
    jobs.insert(jobs.end(), spans.begin(), spans.end());
  }
  checks.push_back(check_ud_rule_jobs(jobs, ud_of));
  checks.push_back(check_single_host(sampler.agents(), "agents' records"));
  if (qemu) checks.push_back(check_single_host(sampler.processes(), "QEMU processes"));
  checks.push_back(check_counters(before, counters(lab)));
  std::vector<FaultWindow> windows;
  for (const auto& f : o.faults) {
    if (f.injected_ms > 0)
      windows.push_back({f.spec.describe(), f.injected_ms, std::max(f.ended_ms, f.injected_ms)});
  }
  checks.push_back(check_client_traffic(o.report, o.feed, windows));
  checks.push_back(check_terminal(o.drill, o.report));
  checks.push_back(check_report_agrees(o.report, checks));
  return checks;
}

void print_block(std::ostream& out, const ChaosDrill& d, int total) {
  out << fmt::format(
      "drill {}/{}: {} ({}), report {}, {:.1f} s{}\n", d.number, total,
      d.state.empty() ? "-" : d.state, d.reason.empty() ? "no reason" : d.reason.substr(0, 160),
      d.result.empty() ? "-" : d.result, d.seconds, d.error.empty() ? "" : "; ERROR: " + d.error);
  for (const auto& f : d.faults) {
    out << "  fault " << f.spec.describe() << ": " << f.status;
    if (!f.at_actual.empty()) out << " (" << f.at_actual << ")";
    if (!f.outcome.empty())
      out << " -> " << f.outcome;
    else if (f.status != "injected" && !f.detail.empty())
      out << ": " << f.detail;
    out << "\n";
  }
  for (const auto& c : d.checks)
    out << "  " << (c.passed ? "ok   " : "FAIL ") << c.name << ": " << c.detail << "\n";
  out << std::flush;
}

// One drill of the campaign on its own rack.
ChaosDrill run_one(const ChaosOptions& opt, int k, std::optional<Error>& fatal) {
  ChaosDrill d;
  d.number = k;
  DrillFileSpec spec = opt.base;
  spec.faults = draw_faults(opt.base, opt.kinds, opt.seed, k, opt.max_outage_s);
  for (const auto& f : spec.faults) d.faults.push_back(FaultRecord{f});
  const auto t0 = Clock::now();
  LabOptions lo = opt.lab;
  lo.dir = opt.lab.dir + "/d" + std::to_string(k);
  auto lab = Lab::up(spec, lo);
  if (!lab.ok()) {
    fatal = make_error(lab.error().condition,
                       "drill " + std::to_string(k) + ": lab up: " + lab.error().message);
    return d;
  }
  const bool qemu = spec.hypervisor == "qemu";
  auto body = [&]() -> Status {
    FL_RETURN_IF_ERROR(lab->populate(spec, qemu ? 300s : 60s));
    FL_ASSIGN_OR_RETURN(auto api, client::OrchestratorClient::from_url(lab->orchestrator_url(),
                                                                       lab->control_token()));
    auto before = counters(*lab);
    Sampler sampler(*lab, qemu);
    DrillView view;
    view.record_feed = true;
    view.deadline = opt.drill_deadline;
    auto outcome = run_drill(api, spec, &*lab, view);
    sampler.stop();
    if (!outcome.ok()) {
      d.error = outcome.error().message;
      d.checks.push_back(
          CheckResult{"terminal state", false, "the drill did not reach its end: " + d.error});
      return {};
    }
    d.faults = outcome->faults;
    d.state = str(outcome->drill, "state");
    d.reason = str(outcome->drill, "reason");
    d.result = str(outcome->report, "result");
    d.checks = judge(*lab, *outcome, sampler, qemu, before);
    if (outcome->timed_out) {
      d.checks.push_back(CheckResult{
          "within deadline", false,
          fmt::format("still running after {} s: aborted", opt.drill_deadline.count() / 1000)});
    }
    return {};
  };
  if (auto st = body(); !st.ok()) {
    if (st.error().condition == Condition::cancelled) fatal = st.error();
    d.error = st.error().message;
    d.checks.push_back(CheckResult{"terminal state", false, "the drill could not run: " + d.error});
  }
  if (auto st = lab->down(true); !st.ok() && !fatal) fatal = st.error();
  d.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return d;
}

}  // namespace

DrillFileSpec chaos_base_spec(const std::string& hypervisor) {
  DrillFileSpec s = default_spec();
  s.name = "chaos";
  s.hypervisor = hypervisor;
  s.hosts = 4;
  s.fault_domains = 2;
  s.capacity = 3;
  s.services = {{"hello", 1, 5, "v1", 128}, {"web", 2, 2, "v1", 128}, {"worker", 3, 3, "v1", 128}};
  s.notice_s = 500;
  s.recovery_s = 500;
  return s;
}

std::vector<FaultSpec> draw_faults(const DrillFileSpec& base,
                                   const std::vector<std::string>& kinds_in, uint64_t seed,
                                   int drill, double max_outage_s) {
  std::vector<std::string> kinds = kinds_in.empty() ? fault_kinds() : kinds_in;
  if (base.kind != "host-os") {
    kinds.erase(std::remove(kinds.begin(), kinds.end(), "corrupt-host-image"), kinds.end());
  }
  if (kinds.empty()) return {};
  Draw d(seed, drill);
  std::vector<FaultSpec> out;
  out.push_back(
      draw_one(base, kinds[static_cast<size_t>(drill - 1) % kinds.size()], d, max_outage_s, true));
  if (d.chance(0.5))
    out.push_back(draw_one(base, kinds[d.below(kinds.size())], d, max_outage_s, false));
  // A cap on outages holds per host: two outages of one host back to back would add up past it.
  auto outage = [](const FaultSpec& f) {
    return f.kind == "kill-agent" || f.kind == "partition-host";
  };
  if (max_outage_s > 0 && out.size() == 2 && outage(out[0]) && outage(out[1]) &&
      out[0].target == out[1].target && base.hosts > 1) {
    out[1].target = "h" + std::to_string((std::stoi(out[1].target.substr(1)) + 1) % base.hosts);
  }
  return out;
}

bool ChaosDrill::violation() const {
  return std::any_of(checks.begin(), checks.end(), [](const CheckResult& c) { return !c.passed; });
}

json::object ChaosDrill::to_json() const {
  json::array cs;
  for (const auto& c : checks) cs.push_back(c.to_json());
  return {{"drill", number},
          {"state", state},
          {"result", result},
          {"reason", reason},
          {"seconds", std::round(seconds * 10) / 10},
          {"error", error},
          {"faults", faults_json(faults)},
          {"checks", std::move(cs)},
          {"violation", violation()}};
}

const ChaosDrill* ChaosCampaign::first_violation() const {
  for (const auto& d : drills) {
    if (d.violation()) return &d;
  }
  return nullptr;
}

json::object ChaosCampaign::summary() const {
  json::object by_kind, states;
  json::array violations, results;
  for (const auto& d : drills) {
    for (const auto& f : d.faults) {
      auto& k = by_kind[f.spec.kind];
      if (!k.is_object()) k = json::object{{"drawn", 0}, {"injected", 0}};
      k.as_object()["drawn"] = k.as_object()["drawn"].as_int64() + 1;
      if (f.status == "injected")
        k.as_object()["injected"] = k.as_object()["injected"].as_int64() + 1;
    }
    auto& n = states[d.state.empty() ? "none" : d.state];
    n = (n.is_int64() ? n.as_int64() : 0) + 1;
    for (const auto& c : d.checks) {
      if (!c.passed)
        violations.push_back(
            json::object{{"drill", d.number}, {"check", c.name}, {"detail", c.detail}});
    }
    results.push_back(d.to_json());
  }
  json::object o{{"seed", seed},
                 {"drills", drills.size()},
                 {"faults_by_kind", std::move(by_kind)},
                 {"states", std::move(states)},
                 {"violations", std::move(violations)},
                 {"results", std::move(results)}};
  if (error) o["error"] = error->message;
  return o;
}

std::string chaos_table(const ChaosCampaign& c) {
  std::string out = fmt::format("{:>5}  {:<10} {:<7} {:<6} {:>6}  {}\n", "drill", "state", "report",
                                "checks", "secs", "faults (status)");
  for (const auto& d : c.drills) {
    int ok = 0;
    for (const auto& ch : d.checks) ok += ch.passed ? 1 : 0;
    std::string faults;
    for (const auto& f : d.faults) {
      faults +=
          (faults.empty() ? "" : "; ") + f.spec.kind + " " + f.spec.where() + " (" + f.status + ")";
    }
    out += fmt::format("{:>5}  {:<10} {:<7} {:<6} {:>6.1f}  {}\n", d.number,
                       d.state.empty() ? "-" : d.state, d.result.empty() ? "-" : d.result,
                       fmt::format("{}/{}{}", ok, d.checks.size(), d.violation() ? "!" : ""),
                       d.seconds, faults);
  }
  return out;
}

ChaosCampaign run_chaos(const ChaosOptions& opt) {
  ChaosCampaign c;
  c.seed = opt.seed;
  for (int k = opt.first; k < opt.first + opt.drills; ++k) {
    if (client::interrupted()) {
      c.error = make_error(Condition::cancelled, "interrupted");
      break;
    }
    std::optional<Error> fatal;
    ChaosDrill d = run_one(opt, k, fatal);
    if (fatal && d.state.empty() && d.checks.empty()) {
      c.error = fatal;
      break;
    }
    if (opt.out) print_block(*opt.out, d, opt.first + opt.drills - 1);
    c.drills.push_back(std::move(d));
    if (fatal) {
      c.error = fatal;
      break;
    }
  }
  return c;
}

}  // namespace fabriclab::rack
