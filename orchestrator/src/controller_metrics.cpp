// GET /metrics: the controller's Prometheus text (hosts by state, instances by status, the
// current drill's batches and state, the feed's and the journal's counters).

#include <map>
#include <sstream>

#include "controller_impl.hpp"
#include "fabriclab/orchestrator/controller.hpp"

namespace fabriclab::orchestrator {

std::string Controller::metrics_text() const {
  auto& m = *impl_;
  std::ostringstream out;
  std::map<std::string, int> host_states, inst_states;
  for (auto s : {HostState::ready, HostState::updating, HostState::unhealthy, HostState::offline,
                 HostState::fenced, HostState::reconciling}) {
    host_states[std::string(to_string(s))] = 0;
  }
  std::map<std::string, int> drift;  // by host: instances that differ from the placement
  int healthy = 0, batches = 0, batches_done = 0;
  std::optional<DrillState> drill_state;
  {
    std::lock_guard lock(m.mu);
    for (const auto& h : m.cluster.hosts) ++host_states[std::string(to_string(h.state))];
    for (const auto& [id, hm] : m.hosts) drift[id] = hm.drift_instances;
    for (const auto& i : m.cluster.instances) {
      auto it = m.instances.find(instance_name(i.service, i.index));
      std::string st = it != m.instances.end() ? it->second.status : "Unknown";
      ++inst_states[st];
      if (it != m.instances.end() && it->second.healthy) ++healthy;
    }
    if (m.active) {
      drill_state = m.active->state;
      batches = static_cast<int>(m.active->batches.size());
      for (const auto& b : m.active->batches)
        batches_done += b.status == "done" || b.status == "skipped";
    }
  }
  out << "# HELP fabriclab_hosts Hosts by state.\n# TYPE fabriclab_hosts gauge\n";
  for (const auto& [s, n] : host_states)
    out << "fabriclab_hosts{state=\"" << s << "\"} " << n << "\n";
  out << "# HELP fabriclab_host_drift_instances Instances a host's agent holds that are placed "
         "elsewhere, or "
         "placed on it and missing, at its last poll.\n# TYPE fabriclab_host_drift_instances "
         "gauge\n";
  for (const auto& [h, n] : drift)
    out << "fabriclab_host_drift_instances{host=\"" << h << "\"} " << n << "\n";
  out << "# HELP fabriclab_instances Instances by status.\n# TYPE fabriclab_instances gauge\n";
  for (const auto& [s, n] : inst_states)
    out << "fabriclab_instances{status=\"" << s << "\"} " << n << "\n";
  out << "# HELP fabriclab_instances_healthy Instances whose guest heartbeats.\n"
         "# TYPE fabriclab_instances_healthy gauge\nfabriclab_instances_healthy "
      << healthy << "\n";
  out << "# HELP fabriclab_drill_batches Batches of the current drill.\n# TYPE "
         "fabriclab_drill_batches gauge\n"
      << "fabriclab_drill_batches{status=\"total\"} " << batches << "\n"
      << "fabriclab_drill_batches{status=\"done\"} " << batches_done << "\n";
  out << "# HELP fabriclab_drill_state The current drill's state (1 for the state it is in).\n"
         "# TYPE fabriclab_drill_state gauge\n";
  for (auto s : {DrillState::planned, DrillState::running, DrillState::paused,
                 DrillState::completed, DrillState::failed, DrillState::aborted}) {
    out << "fabriclab_drill_state{state=\"" << to_string(s) << "\"} " << (drill_state == s ? 1 : 0)
        << "\n";
  }
  FeedStats fs = m.feed ? m.feed->stats() : FeedStats{};
  out << "# HELP fabriclab_events_published_total Events published on the feed.\n"
         "# TYPE fabriclab_events_published_total counter\nfabriclab_events_published_total "
      << fs.published << "\n";
  out << "# HELP fabriclab_event_subscribers Live feed subscriptions (websockets and the "
         "journal).\n"
         "# TYPE fabriclab_event_subscribers gauge\nfabriclab_event_subscribers "
      << fs.subscribers << "\n";
  out << "# HELP fabriclab_event_subscribers_dropped_total Subscribers cut off for being slow.\n"
         "# TYPE fabriclab_event_subscribers_dropped_total counter\n"
         "fabriclab_event_subscribers_dropped_total "
      << fs.dropped_slow << "\n";
  out << "# HELP fabriclab_agent_calls_total Calls to agents.\n# TYPE fabriclab_agent_calls_total "
         "counter\n"
      << "fabriclab_agent_calls_total " << m.agent_calls.load() << "\n"
      << "# HELP fabriclab_agent_call_failures_total Calls to agents that failed.\n"
         "# TYPE fabriclab_agent_call_failures_total counter\nfabriclab_agent_call_failures_total "
      << m.agent_call_failures.load() << "\n";
  out << "# HELP fabriclab_journal_errors_total Journal writes that failed.\n"
         "# TYPE fabriclab_journal_errors_total counter\nfabriclab_journal_errors_total "
      << m.journal_errors.load() << "\n";
  return out.str();
}

}  // namespace fabriclab::orchestrator
