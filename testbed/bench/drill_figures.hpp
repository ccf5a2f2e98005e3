// fabriclab-bench-drill, internal: the figures, from what the phases measured. Per batch the
// drill against its floor and where the drill's time went (`add_batch`), per instance its down
// time against its raw cycle (`instance_figures`), and what clients saw (`clients_figures`, which
// may take the first rack down and run a second drill without drain).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "drill_clients.hpp"
#include "drill_cpu.hpp"
#include "drill_phases.hpp"

namespace fabriclab::bench_drill {

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

// Batch `b`: its entry in f.out, its two text lines, its share of the time.
void add_batch(BenchRun& r, size_t b, const CpuSampler& cpu, BatchFigures& f);

struct InstanceFigures {
  json::array out;
  std::vector<std::string> text;
  std::optional<double> dr50, dr50p, dr50g;  // downtime ratios' medians: agent, prober, gap
};

InstanceFigures instance_figures(BenchRun& r);

// The excess of the makespan over the floor, split into the agents' steps and the
// orchestrator's dispatch, collect and gaps.
json::object where_the_time_goes(double excess, const BatchFigures& bf, double tail_s);

// What clients saw: this drill's, and (unless --no-drain-drill=false) a second rack's without
// drain; the first rack is taken down before the second comes up.
struct Clients {
  ClientFigures with_drain;
  std::optional<ClientFigures> no_drain;
  json::object out;
};

// Step 6.
Clients clients_figures(BenchRun& r, rack::Lab& lab);

// Every figure of the run.
struct Figures {
  BatchFigures batches;
  InstanceFigures instances;
  double floor_s = 0, tail_s = 0, excess = 0;
  std::optional<double> ratio;
  int foreign_qemu = 0;
  Clients clients;
};
}  // namespace fabriclab::bench_drill
