#include "drill_figures.hpp"

#include <climits>

namespace fabriclab::bench_drill {

namespace {

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
    if (s.started >= 0)
      d.first_job = d.first_job < 0 ? s.started : std::min(d.first_job, s.started);
    if (s.done >= 0) d.last_done = std::max(d.last_done, s.done);
    if (s.job_ms() > d.slow_job) {
      d.slow_job = s.job_ms();
      d.slowest = &s;
    }
  }
  return d;
}

}  // namespace

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
    r.notes.push_back(
        fmt::format("downtime ratio over {} of {} instances (the others lack a figure)",
                    r_agent.size(), arr(r.report, "instances").size()));
  }
  return f;
}

json::object where_the_time_goes(double excess, const BatchFigures& bf, double tail_s) {
  const Share& share = bf.share;
  return json::object{
      {"excess_s", round3(excess)},
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
    c.out["no_drain"] =
        json::object{{"requests", c.no_drain->requests},
                     {"failed_multi_instance", c.no_drain->failed_multi_instance},
                     {"services", c.no_drain->services},
                     {"outage_over_detection_p50", num_or_null(c.no_drain->outage_ratio_p50)}};
  }
  return c;
}
}  // namespace fabriclab::bench_drill
