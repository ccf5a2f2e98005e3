#include "drill_output.hpp"

#include <iostream>

namespace fabriclab::bench_drill {

namespace {

constexpr double kRatioTarget = 1.15;
constexpr double kDowntimeTarget = 1.10;

}  // namespace

json::object output_json(BenchRun& r, const Figures& f, const CpuSampler& cpu) {
  const auto& spec = r.spec;
  const auto& report = r.report;
  const auto& ratio = f.ratio;
  const auto& dr50 = f.instances.dr50;
  return json::object{
      {"bench", "drill"},
      {"hypervisor", spec.hypervisor},
      {"hosts", spec.hosts},
      {"fault_domains", spec.fault_domains},
      {"instances", static_cast<int64_t>(arr(report, "instances").size())},
      {"kind", spec.kind},
      {"target", spec.target},
      {"time_scale", spec.time_scale},
      {"recovery_s", spec.recovery_s},
      {"notice_s", round3(r.notice_eff_s)},
      {"notice_policy", r.notice_policy},
      {"settle_s", r.settle_s},
      {"populate_s", round3(secs(r.populate_ms))},
      {"drill_id", str(r.rdrill(), "id")},
      {"drill_state", r.drill_state},
      {"drill_result", str(report, "result")},
      {"batches", static_cast<int64_t>(r.batches.size())},
      {"lower_bound", int_or(obj(report, "walk"), "lower_bound", -1)},
      {"makespan_s", round3(*r.makespan_s)},
      {"floor_s", round3(f.floor_s)},
      {"ratio", num_or_null(ratio)},
      {"ratio_target", kRatioTarget},
      {"ratio_met", ratio && *ratio <= kRatioTarget},
      {"downtime_ratio_p50", num_or_null(dr50)},
      {"downtime_ratio_target", kDowntimeTarget},
      {"downtime_ratio_met", dr50 && *dr50 <= kDowntimeTarget},
      {"downtime_ratio_prober_p50", num_or_null(f.instances.dr50p)},
      {"downtime_ratio_gap_p50", num_or_null(f.instances.dr50g)},
      {"where_the_time_goes", where_the_time_goes(f.excess, f.batches, f.tail_s)},
      {"requests", f.clients.with_drain.requests},
      {"failed_multi_instance", f.clients.with_drain.failed_multi_instance},
      {"floor_under_client_traffic", r.floor_under_traffic},
      {"clients", f.clients.out},
      {"cpu_cores", CpuSampler::cores()},
      {"cpu_settle_after_populate", cpu.window(r.settle1_ms, r.settle1_end_ms, {})},
      {"cpu_settle_after_drill", cpu.window(r.settle2_ms, r.settle2_end_ms, {})},
      {"cpu_drill", cpu.window(r.drill_start_ms, r.drill_end_ms, {})},
      {"foreign_qemu_max", f.foreign_qemu},
      {"batch_list", f.batches.out},
      {"instance_list", f.instances.out},
      {"heartbeats_from_events", r.refined},
      {"notes", json::value_from(r.notes)},
      {"method",
       "makespan = drill duration (recovery 0); floor = sum over the drill's batches "
       "of the slowest host's raw "
       "agent stop (each guest) + start (each guest) -> first heartbeat of the new "
       "boot of its last guest, hosts of "
       "a batch concurrently, same rack after the drill; downtime_ratio = "
       "agent_down_s / raw cycle (stop request "
       "-> first new heartbeat) per instance, p50"}};
}

// The human text: the headline figures, per batch, where the time goes, the CPU, per instance,
// the clients and the notes.
void print_text(const BenchRun& r, const Figures& f, const json::object& out) {
  const auto& spec = r.spec;
  const auto& report = r.report;
  const auto& ratio = f.ratio;
  const auto& dr50 = f.instances.dr50;
  const Share& share = f.batches.share;
  std::cout << fmt::format(
      "fabriclab-bench-drill: {} hosts / {} FDs, {} instances, {} {} -> {}, hypervisor {}\n",
      spec.hosts, spec.fault_domains, arr(report, "instances").size(), spec.kind, "host image",
      spec.target, spec.hypervisor);
  std::cout << "notice: " << r.notice_policy << "; recovery 0\n";
  std::cout << fmt::format("drill {} {} ({}), {} batches (lower bound {})\n", str(r.rdrill(), "id"),
                           r.drill_state, str(report, "result"), r.batches.size(),
                           int_or(obj(report, "walk"), "lower_bound", -1));
  std::cout << fmt::format("makespan_s          {:.3f}\n", *r.makespan_s);
  std::cout << fmt::format("floor_s             {:.3f}\n", f.floor_s);
  std::cout << fmt::format("ratio               {}   (target <= {:.2f}: {})\n", fmt_opt(ratio),
                           kRatioTarget, ratio && *ratio <= kRatioTarget ? "met" : "NOT met");
  std::cout << fmt::format(
      "downtime_ratio_p50  {}   (target <= {:.2f}: {}); prober down_s {}, like-for-like gap {}\n",
      fmt_opt(dr50), kDowntimeTarget, dr50 && *dr50 <= kDowntimeTarget ? "met" : "NOT met",
      fmt_opt(f.instances.dr50p), fmt_opt(f.instances.dr50g));
  std::cout << "batches:\n";
  for (const auto& l : f.batches.text) std::cout << l << "\n";
  std::cout << fmt::format(
      "where the time goes (excess {:.3f} s over the floor): notify {:.3f}, stop {:.3f}, swap "
      "{:.3f}, reboot {:.3f}, "
      "start {:.3f}, verify {:.3f}, dispatch {:.3f}, collect {:.3f}, gaps before batches {:.3f}, "
      "after the last "
      "batch {:.3f}\n",
      f.excess, share.notify, share.stop, share.swap, share.reboot, share.start, share.verify,
      share.dispatch, share.collect, f.batches.gaps_s, f.tail_s);
  for (const char* k : {"cpu_settle_after_populate", "cpu_drill", "cpu_settle_after_drill"}) {
    const auto& w = obj(out, k);
    std::string top;
    for (const auto& t : arr(w, "top_other_processes")) {
      top += fmt::format(" {} {:.2f}", str(t.as_object(), "name"),
                         number(t.as_object(), "cores").value_or(0));
    }
    std::cout << fmt::format(
        "{}: machine {:.2f} of {:.0f} cores busy; lab qemu {:.2f}, agents+orchestrator {:.2f}, "
        "foreign qemu {:.2f} (max {} processes), other {:.2f}{}{}, unaccounted {:.2f}\n",
        k, number(w, "machine_busy_cores").value_or(0), CpuSampler::cores(),
        number(w, "qemu_cores_batch_hosts").value_or(0) +
            number(w, "qemu_cores_other_hosts").value_or(0),
        number(w, "lab_processes_cores").value_or(0), number(w, "foreign_qemu_cores").value_or(0),
        int_or(w, "foreign_qemu_max", 0), number(w, "other_processes_cores").value_or(0),
        top.empty() ? "" : " (top:", top.empty() ? "" : top + ")",
        number(w, "unaccounted_cores").value_or(0));
  }
  std::cout << "instances:\n";
  for (const auto& l : f.instances.text) std::cout << l << "\n";
  const ClientFigures& clients = f.clients.with_drain;
  if (clients.measured) {
    std::cout << fmt::format(
        "clients: {} requests, {} failed for multi-instance services (target 0)\n",
        clients.requests, clients.failed_multi_instance);
  }
  if (const auto& no_drain = f.clients.no_drain) {
    std::cout << fmt::format("without drain: {} requests, {} failed for multi-instance services\n",
                             no_drain->requests, no_drain->failed_multi_instance);
    for (const auto& [name, v] : no_drain->services) {
      const auto& o = v.as_object();
      std::cout << fmt::format(
          "  {:<10} outage_ms_p50 {} over {} failure runs; probe_detection_ms {}\n",
          std::string(name), fmt_opt(number(o, "outage_ms_p50"), "{:.0f}"),
          int_or(o, "failure_runs", 0), int_or(o, "probe_detection_ms", 0));
    }
    std::cout << "outage / probe detection (p50 over services): "
              << fmt_opt(no_drain->outage_ratio_p50) << "\n";
  }
  for (const auto& n : r.notes) std::cout << "note: " << n << "\n";
}
}  // namespace fabriclab::bench_drill
