#include "drill_phases.hpp"

#include <memory>
#include <thread>

#include "drill_clients.hpp"
#include "fabriclab/orchestrator/traffic.hpp"
#include "fabriclab/rack/drill.hpp"

namespace fabriclab::bench_drill {

namespace {

// Sleeps `s` seconds; false when interrupted.
bool settle(double s) {
  return client::sleep_unless_interrupted(
      std::chrono::milliseconds(static_cast<int64_t>(s * 1000)));
}

}  // namespace

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
  progress(fmt::format("rack populated in {:.1f} s; settling {:.0f} s", secs(r.populate_ms),
                       r.settle_s));
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
  if (!outcome.ok())
    return make_error(outcome.error().condition, "drill: " + outcome.error().message);
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
    auto gen = targets.ok()
                   ? orchestrator::TrafficGenerator::start(*targets, to)
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
}  // namespace fabriclab::bench_drill
