// Fence before heal, drift and reconciliation (docs/state-machines.md "Fence before heal").
//
// A silent host is not a dead host: after a partition its guests may still run. So the instances
// of an Unhealthy host are healed elsewhere only once its power control (the operator's
// --power-command: an IPMI or Redfish call on a lab rack, `fabriclab lab power-off` on a local
// one) confirmed it off. A power command that fails or times out leaves them where they are: the
// host stays Unhealthy with the reason, and the command is tried again, a bounded number of times.
//
// Every poll compares what the agent holds with what is placed on its host; a difference is an
// event (host.drift). A difference seen once can be a placement or a healing in flight (the agent
// has the new VM before the model does), so it is published when a second poll sees the same.
// A host that answers again after a silence is reconciled before it takes new work: the instances
// it runs that were placed elsewhere meanwhile are removed (their data disks moved aside on the
// host, not deleted, and reported), the ones still placed on it that it holds stopped (a host back
// from a power loss starts none by itself) are started.

#include <fmt/format.h>

#include "controller_impl.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/logging.hpp"
#include "fabriclab/common/process.hpp"

namespace fabriclab::orchestrator {

namespace {
auto log() { return logger("orchestrator"); }
constexpr size_t kMaxPowerOutput = 16 * 1024;
constexpr size_t kMaxReportedOutput = 400;

// The end of a command's output, on one line, for a reason or an event.
std::string output_tail(const std::string& out) {
  std::string s =
      out.size() > kMaxReportedOutput ? "..." + out.substr(out.size() - kMaxReportedOutput) : out;
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}
}  // namespace

Result<std::vector<std::string>> parse_power_command(std::string_view text) {
  std::vector<std::string> argv;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && text[i] == ' ') ++i;
    size_t j = i;
    while (j < text.size() && text[j] != ' ') ++j;
    if (j > i) argv.emplace_back(text.substr(i, j - i));
    i = j;
  }
  if (argv.empty()) return make_error(Condition::invalid_argument, "the power command is empty");
  if (argv.size() > kMaxPowerArgs) {
    return make_error(
        Condition::invalid_argument,
        fmt::format("the power command has {} words (at most {})", argv.size(), kMaxPowerArgs));
  }
  for (size_t k = 0; k < argv.size(); ++k) {
    if (argv[k].size() > kMaxPowerArgBytes) {
      return make_error(Condition::invalid_argument,
                        fmt::format("word {} of the power command is longer than {} bytes", k + 1,
                                    kMaxPowerArgBytes));
    }
    for (char c : argv[k]) {
      if (c == '\0' || c == '\n' || c == '\t') {
        return make_error(
            Condition::invalid_argument,
            fmt::format("word {} of the power command holds a control character", k + 1));
      }
    }
  }
  if (argv[0].front() != '/') {
    return make_error(Condition::invalid_argument,
                      "the power command's program '" + argv[0] + "' must be an absolute path");
  }
  return argv;
}

std::string Drift::key() const {
  std::string k;
  for (const auto& [n, where] : unexpected) k += "+" + n + "@" + where + ",";
  for (const auto& n : missing) k += "-" + n + ",";
  return k;
}

bool Controller::Impl::fence(const std::string& host_id) {
  if (opt.power_command.empty()) {
    std::lock_guard lock(mu);
    hosts[host_id].may_heal = true;
    hosts[host_id].reason =
        "silent; no power control configured: its instances are healed unfenced";
    return true;
  }
  std::vector<std::string> argv = opt.power_command;
  for (auto& w : argv) {
    for (size_t at = w.find("{host}"); at != std::string::npos;
         at = w.find("{host}", at + host_id.size())) {
      w.replace(at, 6, host_id);
    }
  }
  int attempt = 0;
  {
    std::lock_guard lock(mu);
    auto& m = hosts[host_id];
    attempt = ++m.fence_attempts;
    m.last_fence = Clock::now();
  }
  const std::string command = describe_command(argv);
  log()->warn("[host:{}] fencing (attempt {} of {}): {}", host_id, attempt, opt.fence_attempts,
              command);
  publish({{"host.fencing", json::object{{"host", host_id},
                                         {"attempt", attempt},
                                         {"attempts", opt.fence_attempts},
                                         {"command", command}}}});
  auto began = Clock::now();
  auto ran = run_command(argv, opt.power_timeout, kMaxPowerOutput);
  int64_t took =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count();
  const bool off = ran.ok() && ran->exit_code == 0;
  std::string why;
  if (!ran.ok()) {
    why = ran.error().message;
  } else if (!off) {
    why = fmt::format("{} exited with code {}: {}", argv[0], ran->exit_code,
                      output_tail(ran->output));
  }
  Events events;
  {
    std::lock_guard lock(mu);
    auto& m = hosts[host_id];
    Host* h = cluster.find_host(host_id);
    if (!h) return false;
    if (off) {
      m.may_heal = true;
      m.reason = fmt::format("powered off by its power control (confirmed in {} ms)", took);
      h->state = HostState::fenced;
      events.emplace_back("host.fenced", json::object{{"host", host_id},
                                                      {"attempt", attempt},
                                                      {"duration_ms", took},
                                                      {"output", output_tail(ran->output)}});
    } else {
      const bool again = attempt < opt.fence_attempts;
      m.reason = fmt::format(
          "fencing failed (attempt {} of {}): {}; its instances are not re-created{}", attempt,
          opt.fence_attempts, why,
          again ? fmt::format(" (tried again in {} s)", opt.fence_retry.count() / 1000.0)
                : " until it answers again or an operator powers it off");
      events.emplace_back("host.fence_failed", json::object{{"host", host_id},
                                                            {"attempt", attempt},
                                                            {"attempts", opt.fence_attempts},
                                                            {"retry", again},
                                                            {"duration_ms", took},
                                                            {"reason", why}});
    }
    events.emplace_back("host.state", json::object{{"host", host_id},
                                                   {"state", to_string(h->state)},
                                                   {"step", m.step},
                                                   {"host_image", m.host_image},
                                                   {"reachable", false},
                                                   {"reason", m.reason}});
    if (active && !active->finished()) active->notes.push_back("host " + host_id + ": " + m.reason);
  }
  if (off) {
    log()->warn("[host:{}] fenced: power command confirmed it off in {} ms", host_id, took);
  } else {
    log()->error("[host:{}] fencing failed: {}", host_id, why);
  }
  publish(std::move(events));
  return off;
}

Drift Controller::Impl::drift_locked(const std::string& host_id, const json::array& agent) const {
  Drift d;
  std::map<std::string, const Instance*> placed;  // by name
  for (const auto& i : cluster.instances) placed[instance_name(i.service, i.index)] = &i;
  std::set<std::string> held_by_agent;
  for (const auto& v : agent) {
    std::string name = json_get::str(v, "name");
    if (name.empty()) continue;
    held_by_agent.insert(name);
    auto it = placed.find(name);
    if (it == placed.end()) {
      d.unexpected.emplace_back(name, "");
    } else if (it->second->host != host_id) {
      d.unexpected.emplace_back(name, it->second->host);
    } else if (json_get::str(v, "status") == "Stopped" && json_get::flag(v, "want_running")) {
      d.held.push_back(name);
    }
  }
  for (const auto* i : cluster.instances_on(host_id)) {
    auto name = instance_name(i->service, i->index);
    if (!held_by_agent.contains(name)) d.missing.push_back(name);
  }
  return d;
}

void Controller::Impl::note_drift_locked(const std::string& host_id, const Drift& d, bool now,
                                         Events& out) {
  auto& m = hosts[host_id];
  const std::string key = d.key();
  m.drift_instances = static_cast<int>(d.unexpected.size() + d.missing.size());
  if (key == m.drift_published) {
    m.drift_pending = key;
    return;
  }
  if (!now && key != m.drift_pending) {  // first sight: a placement may be in flight
    m.drift_pending = key;
    return;
  }
  m.drift_pending = key;
  m.drift_published = key;
  json::array unexpected, missing;
  for (const auto& [n, where] : d.unexpected) {
    unexpected.push_back(json::object{{"instance", n}, {"placed_on", where}});
  }
  for (const auto& n : d.missing) missing.push_back(json::value(n));
  out.emplace_back("host.drift", json::object{{"host", host_id},
                                              {"unexpected", std::move(unexpected)},
                                              {"missing", std::move(missing)},
                                              {"in_step", d.empty()}});
}

bool Controller::Impl::reconcile(const std::string& host_id, const Drift& d) {
  auto c = slow_client(host_id);
  bool all = true;
  for (const auto& [name, where] : d.unexpected) {
    if (where.empty()) continue;  // placed nowhere: reported as drift, left to the operator
    auto gone = c->delete_instance_keep_data(name);
    Events events;
    if (!gone.ok()) {
      all = false;
      log()->error("[host:{}] reconciling: cannot remove {} (placed on {}): {}", host_id, name,
                   where, gone.error().message);
      events.emplace_back("host.reconcile_failed", json::object{{"host", host_id},
                                                                {"instance", name},
                                                                {"placed_on", where},
                                                                {"reason", gone.error().message}});
    } else {
      std::string kept = json_get::str(*gone, "data_disk_kept");
      log()->warn(
          "[host:{}] reconciling: removed {} (placed on {} meanwhile); data disk kept at {}",
          host_id, name, where, kept.empty() ? "(none)" : kept);
      events.emplace_back("host.reconciled", json::object{{"host", host_id},
                                                          {"instance", name},
                                                          {"action", "removed"},
                                                          {"placed_on", where},
                                                          {"data_disk_kept", kept}});
      std::lock_guard lock(mu);
      if (active && !active->finished()) {
        active->notes.push_back("reconciling " + host_id + ": removed its copy of " + name +
                                " (placed on " + where + "); data disk kept at " +
                                (kept.empty() ? "(none)" : kept));
      }
    }
    publish(std::move(events));
  }
  for (const auto& name : d.held) {
    auto started = c->start_instance(name);
    Events events;
    if (!started.ok()) {
      all = false;
      events.emplace_back("host.reconcile_failed",
                          json::object{{"host", host_id},
                                       {"instance", name},
                                       {"placed_on", host_id},
                                       {"reason", started.error().message}});
    } else {
      log()->info("[host:{}] reconciling: started {} (still placed here)", host_id, name);
      events.emplace_back("host.reconciled", json::object{{"host", host_id},
                                                          {"instance", name},
                                                          {"action", "started"},
                                                          {"placed_on", host_id},
                                                          {"data_disk_kept", ""}});
    }
    publish(std::move(events));
  }
  return all;
}

}  // namespace fabriclab::orchestrator
