#pragma once
// fabriclab-bench-scale's flags and figures (bench_scale.cpp): the command line it takes, what it
// measures phase by phase, and the two ways it prints them (a text summary, or one JSON object).

#include <optional>
#include <string>

namespace fabriclab::bench_scale {

struct Options {
  int hosts = 500;
  int instances = 5000;
  int capacity = 12;
  int memory_mib = 64;
  int poll_ms = 1000;
  int unhealthy_after_ms = 30000;
  int agent_timeout_ms = 5000;
  int heartbeat_ms = 2000;
  int fault_domains = 3;
  unsigned seed = 1;
  int start_parallel = 16;
  std::string agent_bin, orchestrator_bin, images, dir;
  std::string agent_log_level = "warn", orchestrator_log_level = "info";
  double setup_timeout_s = 1800, walk_timeout_s = 3600;
  double idle_s = 5;
  bool agents_on_tmpfs = false;
  bool keep = false;
  bool json = false;
};

// Parses the command line into `o`; an exit code when the bench ends here (--help, a bad flag).
std::optional<int> parse_options(int argc, char** argv, Options& o);

// What the bench measures, phase by phase (printed at the end).
struct Figures {
  size_t services = 0;
  int max_uds = 0;
  double setup_s = 0, agents_s = 0, register_s = 0, services_s = 0, healthy_s = 0;
  int unhealthy_hosts_setup = 0;
  double idle_orch_cores = -1, idle_agents_cores = -1, idle_orch_cs = -1;
  std::string state, reason;
  double wall_s = 0, drill_s = -1;
  int batches = 0, lower_bound = 0, hosts_done = 0, max_unhealthy = 0;
  double orch_cpu_walk = 0, agents_cpu_walk = 0, orch_cs_walk = 0, orch_cpu_total = 0;
  double orch_rss = 0, agents_rss = 0, agent_max = 0, agents_pss = 0;
  double calls_walk = 0, failures_walk = 0, events_walk = 0;
};
// The figures as one JSON object on stdout (--json), or as a text summary.
void print_json(const Options& o, const Figures& f);
void print_text(const Options& o, const Figures& f);

}  // namespace fabriclab::bench_scale
