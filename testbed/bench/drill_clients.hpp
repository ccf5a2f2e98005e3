// fabriclab-bench-drill, internal: what clients saw (step 6 of the method in bench_drill.cpp).
// `client_figures` reads one drill report's traffic section; `floor_traffic_targets` gives the
// floor the drill's client load; `no_drain_figures` runs the same drill on a fresh rack with drain
// off on every endpoint service (the rack is torn down before it returns).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "drill_util.hpp"
#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/orchestrator/traffic.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::bench_drill {

// Client traffic figures of one drill report (step 6): requests, failed requests of services
// with >= 2 instances, and per such service the failure runs' lengths.
struct ClientFigures {
  int64_t requests = 0, failed_multi_instance = 0;
  bool measured = false;
  std::string reason;
  json::object services;  // name -> {requests, failed, outage_ms_p50, runs, probe_detection_ms}
  std::optional<double> outage_ratio_p50;  // median over services of outage_ms_p50 / detection
};

ClientFigures client_figures(const json::object& report, const rack::DrillFileSpec& spec);

// The drill's client load for the floor (step 3): every endpoint service's VIP at its rate.
Result<std::vector<orchestrator::TrafficTarget>> floor_traffic_targets(
    const client::OrchestratorClient& api, const rack::DrillFileSpec& spec);

// Step 6's second drill: a fresh rack, every endpoint service with drain off, the same drill.
Result<ClientFigures> no_drain_figures(rack::DrillFileSpec spec, rack::LabOptions lo);

}  // namespace fabriclab::bench_drill
