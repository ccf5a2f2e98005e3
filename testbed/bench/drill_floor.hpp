// fabriclab-bench-drill, internal: the floor (step 3 of the method in bench_drill.cpp). One
// host's raw cycle through the agent's own calls: every guest stopped, every guest started, then
// polled until each heartbeats from a new boot. `raw_cycle_host` never throws and never leaves a
// guest stopped on purpose: it starts every guest even after a failed stop; what failed is in
// RawHost::error.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "drill_agents.hpp"

namespace fabriclab::bench_drill {

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

// Waits (up to 120 s) until every guest of `host` heartbeats, then cycles them raw and waits up to
// `timeout` for the new boots' first heartbeats.
RawHost raw_cycle_host(const Agents& agents, const std::string& host, int batch,
                       std::chrono::seconds timeout);

}  // namespace fabriclab::bench_drill
