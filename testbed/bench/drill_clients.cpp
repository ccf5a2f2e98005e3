#include "drill_clients.hpp"

#include "fabriclab/orchestrator/cluster.hpp"
#include "fabriclab/rack/drill.hpp"

namespace fabriclab::bench_drill {

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
    const int64_t detection_ms =
        static_cast<int64_t>(interval_ms) *
        orchestrator::effective_unhealthy_threshold(interval_ms, ss->endpoint->unhealthy_threshold);
    const double period_ms = 1000.0 / ss->traffic_rps;
    std::vector<double> runs;
    for (const auto& rv : arr(st, "failure_runs")) {
      const auto& r = rv.as_object();
      runs.push_back((number(r, "to_s").value_or(0) - number(r, "from_s").value_or(0)) * 1000.0 +
                     period_ms);
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

Result<std::vector<orchestrator::TrafficTarget>> floor_traffic_targets(
    const client::OrchestratorClient& api, const rack::DrillFileSpec& spec) {
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
  FL_ASSIGN_OR_RETURN(
      auto api, client::OrchestratorClient::from_url(lab.orchestrator_url(), lab.control_token()));
  rack::DrillView view{&std::cerr, false};
  FL_ASSIGN_OR_RETURN(auto outcome, rack::run_drill(api, spec, &lab, view));
  if (outcome.interrupted) return make_error(Condition::cancelled, "interrupted");
  return client_figures(outcome.report, spec);
}
}  // namespace fabriclab::bench_drill
