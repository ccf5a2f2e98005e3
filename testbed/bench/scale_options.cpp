// fabriclab-bench-scale's flags and printed figures (scale_options.hpp).
#include "scale_options.hpp"

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "fabriclab/common/cli_range.hpp"
#include "fabriclab/rack/lab.hpp"
#include "scale_processes.hpp"

namespace fabriclab::bench_scale {

namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

// The binary `name` beside this program or in the build tree's agent/ and orchestrator/
// (rack::find_binary); `fallback` for the message when it is nowhere.
std::string default_binary(const std::string& name, const std::string& fallback) {
  std::string found = rack::find_binary(name, rack::self_dir());
  return found.empty() ? fallback : found;
}

double round3(double x) { return std::round(x * 1000) / 1000; }

}  // namespace

std::optional<int> parse_options(int argc, char** argv, Options& o) {
  CLI::App app{
      "A whole zero-length walk over N simulated hosts (libvirt test driver) with M "
      "instances, through the real agent and orchestrator binaries"};
  const std::string here = rack::self_dir();
  o.agent_bin = default_binary("fabriclab-agent", here + "/../agent/fabriclab-agent");
  o.orchestrator_bin =
      default_binary("fabriclab-orchestrator", here + "/../orchestrator/fabriclab-orchestrator");
#ifdef FABRICLAB_BENCH_IMAGES_DIR
  o.images = FABRICLAB_BENCH_IMAGES_DIR;
#endif
  add_ranged_option(app, "--hosts", o.hosts, "Simulated hosts (agent processes)", 1, 5000);
  add_ranged_option(app, "--instances", o.instances, "Instances in all (services of 2..50)", 2,
                    1000000);
  add_ranged_option(app, "--capacity", o.capacity, "Instances per host", 1, 1000);
  add_ranged_option(app, "--memory-mib", o.memory_mib, "Memory of each instance", 64, 4096);
  add_ranged_option(app, "--fault-domains", o.fault_domains, "Host N is in fault domain N mod this",
                    1, 100);
  add_ranged_option(app, "--poll-ms", o.poll_ms, "Orchestrator --poll-ms", 10, 60000);
  add_ranged_option(app, "--unhealthy-after-ms", o.unhealthy_after_ms,
                    "Orchestrator --unhealthy-after-ms", 100, 3600000);
  add_ranged_option(app, "--agent-timeout-ms", o.agent_timeout_ms,
                    "Orchestrator --agent-timeout-ms", 100, 600000);
  add_ranged_option(app, "--heartbeat-ms", o.heartbeat_ms,
                    "Agents' --heartbeat-ms (simulated guests)", 10, 60000);
  app.add_option("--seed", o.seed, "Seed of the service sizes")->capture_default_str();
  add_ranged_option(app, "--start-parallel", o.start_parallel, "Agents starting at once", 1, 1000);
  app.add_option("--agent", o.agent_bin, "fabriclab-agent binary")->capture_default_str();
  app.add_option("--orchestrator", o.orchestrator_bin, "fabriclab-orchestrator binary")
      ->capture_default_str();
  app.add_option("--images", o.images, "Guest image directory (manifest.json) for the agents")
      ->capture_default_str();
  app.add_option("--dir", o.dir,
                 "Working directory (default: a new /tmp/flsc.XXXXXX; removed at the end)");
  app.add_flag("--keep", o.keep, "Keep the working directory (logs, journal)");
  app.add_flag("--agents-on-tmpfs", o.agents_on_tmpfs,
               "Agents' state directories in a new /dev/shm/flsc.XXXXXX: the simulated guests "
               "fdatasync a counter file at every heartbeat, a cost of the simulation");
  add_ranged_option(app, "--idle-s", o.idle_s,
                    "Before the walk, measure the idle CPU of the rack this long", 0.0, 600.0);
  app.add_option("--agent-log-level", o.agent_log_level)->capture_default_str();
  app.add_option("--orchestrator-log-level", o.orchestrator_log_level)->capture_default_str();
  app.add_option("--setup-timeout-s", o.setup_timeout_s, "Give up on the setup after this")
      ->capture_default_str();
  app.add_option("--walk-timeout-s", o.walk_timeout_s, "Give up on the walk after this")
      ->capture_default_str();
  app.add_flag("--json", o.json, "Print one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (o.images.empty()) die("--images is required (a guest image directory with manifest.json)");
  if (!fs::exists(o.images + "/manifest.json")) die("no manifest.json in --images " + o.images);
  for (const auto& bin : {o.agent_bin, o.orchestrator_bin}) {
    if (::access(bin.c_str(), X_OK) != 0)
      die(bin + " is not an executable (see --agent, --orchestrator)");
  }
  o.agent_bin = fs::canonical(o.agent_bin).string();
  o.orchestrator_bin = fs::canonical(o.orchestrator_bin).string();
  o.images = fs::absolute(o.images).string();
  return std::nullopt;
}

void print_json(const Options& o, const Figures& f) {
  json::object out{{"hosts", o.hosts},
                   {"instances", o.instances},
                   {"services", f.services},
                   {"capacity", o.capacity},
                   {"poll_ms", o.poll_ms},
                   {"state", f.state},
                   {"reason", f.reason},
                   {"wall_s", round3(f.wall_s)},
                   {"drill_s", round3(f.drill_s)},
                   {"batches", f.batches},
                   {"lower_bound", f.lower_bound},
                   {"hosts_done", f.hosts_done},
                   {"setup_s", round3(f.setup_s)},
                   {"agents_start_s", round3(f.agents_s)},
                   {"register_s", round3(f.register_s)},
                   {"services_s", round3(f.services_s)},
                   {"healthy_wait_s", round3(f.healthy_s)},
                   {"peak_rss_mb", round3(f.orch_rss)},
                   {"agents_peak_rss_mb_sum", round3(f.agents_rss)},
                   {"agent_peak_rss_mb_max", round3(f.agent_max)},
                   {"agents_pss_mb_sum_end", round3(f.agents_pss)},
                   {"orchestrator_cpu_s_walk", round3(f.orch_cpu_walk)},
                   {"orchestrator_cpu_s_total", round3(f.orch_cpu_total)},
                   {"agents_cpu_s_walk", round3(f.agents_cpu_walk)},
                   {"idle_orchestrator_cores", round3(f.idle_orch_cores)},
                   {"idle_agents_cores", round3(f.idle_agents_cores)},
                   {"idle_orchestrator_ctx_switches_per_s", std::round(f.idle_orch_cs)},
                   {"orchestrator_ctx_switches_per_s_walk", std::round(f.orch_cs_walk / f.wall_s)},
                   {"agents_on_tmpfs", o.agents_on_tmpfs},
                   {"agent_calls_walk", f.calls_walk},
                   {"agent_call_failures_walk", f.failures_walk},
                   {"events_walk", f.events_walk},
                   {"unhealthy_hosts_setup", f.unhealthy_hosts_setup},
                   {"unhealthy_hosts_walk_max", f.max_unhealthy}};
  std::cout << json::serialize(out) << "\n";
}

void print_text(const Options& o, const Figures& f) {
  std::printf(
      "walk: %s in %.2f s (orchestrator's clock %.2f s), %d batches (lower bound %d), %d of %d "
      "hosts done%s%s\n",
      f.state.c_str(), f.wall_s, f.drill_s, f.batches, f.lower_bound, f.hosts_done, o.hosts,
      f.reason.empty() ? "" : ": ", f.reason.c_str());
  std::printf(
      "  orchestrator: peak RSS %.1f MiB, CPU %.1f s during the walk (%.1f s in all); %.0f agent "
      "calls (%.0f failed), %.0f events during the walk\n",
      f.orch_rss, f.orch_cpu_walk, f.orch_cpu_total, f.calls_walk, f.failures_walk, f.events_walk);
  std::printf(
      "  agents: peak RSS %.1f MiB summed (PSS %.1f MiB summed at the end), %.1f MiB the largest, "
      "CPU %.1f s during the walk; Unhealthy hosts: %d after setup, at most %d during the walk\n",
      f.agents_rss, f.agents_pss, f.agent_max, f.agents_cpu_walk, f.unhealthy_hosts_setup,
      f.max_unhealthy);
  if (o.idle_s > 0) {
    std::printf(
        "  idle rack before the walk: orchestrator %.2f cores (%.0f context switches/s), agents "
        "%.2f cores\n",
        f.idle_orch_cores, f.idle_orch_cs, f.idle_agents_cores);
  }
  std::printf("  orchestrator context switches during the walk: %.0f/s\n",
              f.orch_cs_walk / f.wall_s);
  std::printf(
      "  setup %.1f s: agents %.1f s, registration %.1f s, services %.1f s, healthy %.1f s\n",
      f.setup_s, f.agents_s, f.register_s, f.services_s, f.healthy_s);
}

}  // namespace fabriclab::bench_scale
