// fabriclab-bench-drill: a whole drill on real VMs against its floor, measured in the same run.
//
// Figures (the issue's):
//   makespan_s          the drill's duration (report.drill.duration_s: drill created -> finished)
//   floor_s             sum over the drill's batches of the slowest host's raw stop + start +
//                       first-heartbeat time, measured on the same rack right after the drill
//   ratio               makespan_s / floor_s                                 (target <= 1.15)
//   downtime_ratio_p50  median over instances of (the instance's down time during the drill) /
//                       (its raw cycle time)                                 (target <= 1.10)
//
// Method, in one run on one rack:
//  1. Rack up (rack::Lab: one fabriclab-agent process per host with real QEMU guests through the
//     embedded driver, one fabriclab-orchestrator), populate (hosts registered, services created,
//     every guest heartbeating), then a settle pause (--settle-s) so boot-time CPU load is over.
//  2. The drill: rack::default_spec() (6 hosts, 3 FDs, hello 1 / web 2 / worker 3, host-os to
//     host-v2, time_scale 0.001) with recovery_s = 0 (no recovery wait between batches). The
//     scheduled-event notice is kept as the spec has it (900 s x 0.001 = 0.9 s; a guest that
//     acks earlier ends it early) unless --notice-s says otherwise; the output says which
//     (notice_s, notice_policy). makespan_s = report.drill.duration_s.
//  3. The floor, after another settle pause, on the same rack: for each batch of the drill's
//     walk (report.walk.batch_list, same host groups, in order, one batch after the other), every
//     host of the batch at once (one thread per host, as the orchestrator runs them) stops every
//     guest on it and starts it again through the agent's raw calls: POST
//     /v1/instances/{name}/stop for each guest, then POST /v1/instances/{name}/start for each.
//     Within one host the calls go one after the other: the agent serializes them on its
//     hypervisor lock anyway, and the host-os operation also stops every guest before it starts
//     any. The host's time runs from its first stop request to the first heartbeat of the new
//     boot (new boot_id) of its last guest; the batch's floor is its slowest host; floor_s is the
//     sum over batches (no gap between batches: recovery waits are 0). No notice, no image swap,
//     no emulated host reboot, no orchestrator: that is what the drill adds. On a rack with a
//     guest network the floor runs under the drill's client load (the same requests per second
//     to every endpoint service's VIP, from the rack namespace): clients and probes cost the
//     TCG guests CPU, and a floor without them would count that against the drill.
//  4. Per instance, from the same step: cycle_s = its stop request -> its first heartbeat of the
//     new boot (raw cycle time), and raw_gap_s = its last heartbeat before the stop request -> the
//     same first heartbeat (the heartbeat gap, measured like the agent's down_ms). downtime_ratio
//     = agent_down_s (the agent's own down_ms for the drill: last heartbeat before its stop ->
//     first heartbeat after its start) / cycle_s; the median over instances is
//     downtime_ratio_p50 (with an even count, the mean of the two middle values). Also reported:
//     the same with the prober's down_s (the orchestrator's health timeline) and the
//     like-for-like agent_down_s / raw_gap_s (both heartbeat gaps; the headline one also counts
//     up to one heartbeat period before the stop request against the drill).
//  Heartbeat times come from each agent's own event history (GET /v1/events?since=0 websocket
//  backlog: instance.heartbeat events, stamped when the agent received the line); when an event
//  is missing, from polling GET /v1/instances (receive time - last_heartbeat.age_ms). Where the
//  drill's time goes comes from the same histories (host.state steps Notifying ... Verifying,
//  job.started / job.done) and from the agents' job records (GET /v1/operations/{id}).
//  5. The rack is always torn down (errors and Ctrl-C too: SIGINT/SIGTERM abort the drill); the
//     VMs' console logs (guest-side boot timings) are copied to LAB/consoles/ first.
//  6. What clients saw (docs/clients.md; only on a rack with a guest network): from the drill's
//     report, `requests` (all services) and `failed_multi_instance` (failed requests of services
//     with >= 2 instances; target 0 with drain). Then, unless --no-drain-drill=false, a second rack
//     runs the same drill with `drain: false` on every endpoint service: its apps ignore the
//     scheduled event, so clients are sent to a stopping guest until the load balancer's probe
//     notices. Per multi-instance service, outage_ms_p50 = the median run of consecutive failed
//     requests (first to last failed send, plus one request period), beside probe_detection_ms =
//     probe interval x unhealthy threshold (time-scaled): the ratio shows how close the load
//     balancer's reaction is to its own floor.
//
// Machine load: on 2 cores under TCG a guest's boot is CPU-bound, so anything else running moves
// the drill and the floor by more than the overhead measured here (seen: +-30 % per phase). A
// sampler thread reads /proc every second and the output gives, per drill batch, per floor batch
// and for the settle pauses, the busy cores of the machine split into the lab's QEMU processes
// (batch hosts / others), its agents + orchestrator, foreign QEMU processes (another run's VMs)
// and other processes by name (e.g. a compiler). Compare the phases before trusting a ratio; a
// note says when foreign VMs ran. Wait for a quiet machine before a run.
//
// Output: human text on stdout (progress on stderr); --json prints one JSON object instead.
// Exit: 0 measured (met flags in the output), 1 failed to measure, 130 interrupted.
//
// The code, by phase: drill_phases (1 to 4), drill_floor (3), drill_agents (the agents' calls and
// event histories), drill_cpu (the sampler), drill_clients (6), drill_figures and drill_output.

#include <sys/types.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <set>

#include "drill_agents.hpp"
#include "drill_cpu.hpp"
#include "drill_figures.hpp"
#include "drill_output.hpp"
#include "drill_phases.hpp"
#include "fabriclab/client/api_client.hpp"
#include "fabriclab/rack/drill.hpp"
#include "fabriclab/rack/lab.hpp"

#ifndef FABRICLAB_BENCH_IMAGES_DIR
#define FABRICLAB_BENCH_IMAGES_DIR ""
#endif

namespace fabriclab::bench_drill {

namespace {

int fail(const std::string& what) {
  std::cerr << "fabriclab-bench-drill: " << what << "\n";
  return client::interrupted() ? 130 : 1;
}

}  // namespace

int run(const Options& opt) {
  BenchRun r(opt);
  if (auto st = prepare(r); !st.ok()) {
    std::cerr << "fabriclab-bench-drill: " << st.error().message << "\n";
    return 1;
  }
  const rack::DrillFileSpec& spec = r.spec;

  // ---- 1. rack up, populate, settle
  client::install_interrupt_handlers();
  r.lo.dir = opt.lab_dir;
  r.lo.bin_dir = rack::self_dir();
  r.lo.images_dir = rack::images_dir(opt.images, FABRICLAB_BENCH_IMAGES_DIR);
  if (r.real) r.lo.start_timeout = 60s;
  progress(fmt::format("rack up: {} hosts in {} FDs, hypervisor {}, images {}, lab dir {}",
                       spec.hosts, spec.fault_domains, spec.hypervisor, r.lo.images_dir, r.lo.dir));
  auto up = rack::Lab::up(spec, r.lo);
  if (!up.ok()) return fail("lab up: " + up.error().message);
  rack::Lab lab = std::move(up).value();
  progress(
      "network " + lab.network() +
      (lab.network() == "netns"
           ? " (rack namespace " + lab.agent_netns() + ")"
           : " (" + (lab.network_reason().empty() ? "asked for" : lab.network_reason()) + ")"));
  struct Down {
    rack::Lab& lab;
    ~Down() {
      keep_consoles(lab.dir());
      progress("stopping the rack (VMs, agents, orchestrator, network namespaces)");
      if (auto st = lab.down(false); !st.ok()) progress("teardown: " + st.error().message);
      progress("rack stopped; logs in " + lab.dir());
    }
  } down{lab};
  std::set<pid_t> agent_pids;
  for (const auto& a : lab.agents()) agent_pids.insert(a.pid);
  CpuSampler cpu(lab.dir(), agent_pids, lab.orchestrator().pid);
  if (auto st = populate_and_settle(r, lab); !st.ok()) return fail(st.error().message);
  auto api = client::OrchestratorClient::from_url(lab.orchestrator_url(), lab.control_token());
  if (!api.ok()) return fail(api.error().message);
  Agents agents(lab);

  // ---- 2. the drill; 3. the floor; 4. the agents' histories
  if (auto st = run_the_drill(r, *api, lab); !st.ok()) return fail(st.error().message);
  if (auto st = measure_floor(r, *api, lab, agents); !st.ok()) return fail(st.error().message);
  read_histories(r, agents);

  // ---- figures
  Figures f;
  for (size_t b = 0; b < r.batches.size(); ++b) add_batch(r, b, cpu, f.batches);
  f.floor_s = secs(static_cast<int64_t>(f.batches.floor_sum_ms));
  f.tail_s = f.batches.prev_end ? *r.makespan_s - *f.batches.prev_end : 0.0;
  f.ratio = f.floor_s > 0 ? std::optional<double>(*r.makespan_s / f.floor_s) : std::nullopt;
  f.instances = instance_figures(r);
  f.excess = *r.makespan_s - f.floor_s;
  cpu.finish();
  f.foreign_qemu = cpu.foreign_max();
  if (f.foreign_qemu > 0) {
    r.notes.push_back(fmt::format(
        "up to {} QEMU processes of something else ran during the bench: figures distorted",
        f.foreign_qemu));
  }

  // ---- 6. what clients saw, with drain (this drill) and without (a second rack)
  f.clients = clients_figures(r, lab);

  json::object out = output_json(r, f, cpu);
  if (opt.json_out) {
    std::cout << json::serialize(out) << "\n";
  } else {
    print_text(r, f, out);
  }
  return 0;
}
}  // namespace fabriclab::bench_drill

using fabriclab::bench_drill::Options;

int main(int argc, char** argv) {
  CLI::App app{
      "A drill on real VMs against its floor (the raw stop + start + heartbeat time of the same "
      "batches, "
      "same run): makespan_s, floor_s, ratio (target <= 1.15), downtime_ratio_p50 (target <= "
      "1.10)"};
  Options opt;
  double notice = -1;
  app.add_option("--hypervisor", opt.hypervisor, "qemu (real VMs) or test (simulated guests)")
      ->check(CLI::IsMember({"qemu", "test"}))
      ->capture_default_str();
  app.add_option("--images", opt.images,
                 "Guest images directory (default: FABRICLAB_IMAGES_DIR, then the build's)");
  app.add_option("--lab-dir", opt.lab_dir, "Lab directory (short: sockets live under it)")
      ->capture_default_str();
  app.add_option("--spec", opt.spec_file,
                 "A drill spec (YAML) instead of the default drill; recovery is set to 0");
  app.add_option("--notice-s", notice,
                 "Override the spec's notice_s (spec seconds, scaled by time_scale)")
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--settle-s", opt.settle_s,
                 "Pause after populate and after the drill (default 10 s qemu, 1 s test)");
  app.add_option("--floor-timeout-s", opt.floor_timeout_s,
                 "Per host, how long the raw cycle may take")
      ->capture_default_str();
  app.add_flag("--json", opt.json_out, "Print one JSON object");
  app.add_option(
         "--no-drain-drill", opt.no_drain_drill,
         "Also run the drill on a second rack with drain: false (client outage vs probe detection)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (notice >= 0) opt.notice_s = notice;
  return run(opt);
}
