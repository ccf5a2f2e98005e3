// fabriclab-bench-feed, internal: one phase of the bench. run_phase publishes the drill's events
// at the options' rate and waits (bounded) for the readers to catch up; score computes latency,
// loss and order from the readers' samples once the client threads are joined.
#pragma once

#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/http_server.hpp"
#include "feed_client.hpp"

namespace fabriclab::bench_feed {

struct PhaseResult {
  uint64_t first_seq = 0, last_seq = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
  uint64_t expected = 0, received = 0;
  int readers_ended = 0;        // readers the server closed during the phase (should be 0)
  uint64_t events = 0;          // published in the phase
  uint64_t misordered = 0;      // samples whose seq was not above the reader's previous one
  double publish_s = 0;         // wall time of the publishing loop
  double cpu_cores = 0;         // process CPU / wall over the phase
  double client_cores = 0;      // ... of which the client io threads
  double cpu_s = 0;             // process CPU over the phase
  double us_per_delivery = 0;   // process CPU per event received by a reader (server + client)
  double drain_ms = 0;          // after the last publish, until every reader had the last event
  double cut_off_after_s = -1;  // stalled phase: when the feed dropped the stalled subscription
  int64_t cut_off_after_events = -1;  // ... and how many events into the phase
};

inline double round3(double x) { return std::round(x * 1000) / 1000; }

struct Options {
  int subscribers = 1000;
  int events = 1500;
  double rate = 200;  // events/s: above the ~90/s a 500-host, 5000-instance walk publishes
  int burst = 7;      // events per publish call, as the orchestrator narrates a host
  int server_threads = 2;
  int client_threads = 1;
  std::string client = "raw";
  size_t ws_queue = http::Limits{}.max_ws_queue;
  int stall_rcvbuf = 4096;
  double stall_max_s = 120;
  bool json = false;
};

// Publishes `n` drill events at `rate`, then waits (bounded) until every live reader has the last
// one. With `stalled_dropped` it watches for the stalled subscription's drop.
PhaseResult run_phase(const Options& o, EventFeed& feed, DrillSim& drill,
                      const std::vector<std::shared_ptr<Subscriber>>& readers,
                      const std::function<bool()>& stalled_dropped);

// Latency and loss of the readers over the phase's seq range (after the client threads ended).
void score(PhaseResult& r, const std::vector<std::shared_ptr<Subscriber>>& readers);

// The phase's figures as JSON, and as two lines of text on stdout.
json::object figures(const PhaseResult& r);
void print_phase(const char* name, const PhaseResult& r);

}  // namespace fabriclab::bench_feed
