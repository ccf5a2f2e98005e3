// The walk executor: runs a drill's plan batch by batch through the agents.
//
// Per batch: gate (pause / step / abort) -> the plan, checked again against the cluster as it is
// now (healing may have moved instances since it was made; then the hosts not yet walked are
// planned again) -> every host of this and of the previous batch, and every host holding another
// instance of a service this batch takes down, Ready with every instance on it healthy and in the
// load balancer's rotation -> one operation per host, started in parallel -> wait for every job ->
// the hosts Ready and healthy again -> batch done -> recovery window (scaled) -> next batch.
//
// Halting: a job that fails, a host that stops answering during its update, or a precondition
// that does not hold within the healthy timeout fails the drill with the reason. The other hosts
// of the batch finish (they are in flight: stopping them halfway would be worse), nothing further
// starts. Abort is the same without the failure. Progress is journaled before a job starts
// ("running", with no job id yet), when its id is known, and when it ends; on resume a host that
// is "running" is reattached to its job, found in the agent's job list by kind, target and start
// time, so a SIGKILL between the agent accepting a job and the journal recording it cannot make
// the same host update twice.

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>

#include "controller_impl.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::orchestrator {

namespace {
auto log() { return logger("orchestrator"); }

// 900 -> "0.9", 2150 -> "2.15", 3000 -> "3"
std::string secs(int64_t ms) {
  std::string t = fmt::format("{:.3f}", static_cast<double>(ms) / 1000.0);
  while (t.back() == '0') t.pop_back();
  if (t.back() == '.') t.pop_back();
  return t;
}
// What a draining guest needs between the event and its host stopping: its next IMDS poll
// (1 s), its drain time, and half a second to approve (docs/clients.md "The built-in guest").
constexpr int64_t kImdsPollMs = 1000;
constexpr int64_t kApproveMarginMs = 500;
}  // namespace

std::chrono::milliseconds scaled(double seconds, double scale) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(seconds * scale * 1000.0)));
}

std::vector<std::string> drill_notice(const Cluster& c, const DrillSpec& spec, int64_t& notice_ms) {
  std::vector<std::string> notes;
  const int64_t given = scaled(spec.notice_s, spec.time_scale).count();
  notice_ms = given;
  int64_t need = 0;
  for (const auto& s : c.services) {
    if (!s.endpoint) continue;
    if (s.drain) need = std::max(need, kImdsPollMs + s.drain_ms() + kApproveMarginMs);
    const auto& p = s.endpoint->probe;
    if (given < p.detection_ms()) {
      notes.push_back(fmt::format(
          "notice {} s is too short for service '{}': its probe needs {} s (interval {} s x {}) to "
          "take an instance out of rotation before its host stops",
          secs(given), s.name, secs(p.detection_ms()), secs(p.interval_ms),
          p.effective_threshold()));
    }
  }
  if (given < need) {
    notice_ms = need;
    notes.push_back(
        fmt::format("notice raised from {} s to {} s so that draining guests leave rotation before "
                    "their host stops",
                    secs(given), secs(need)));
  }
  return notes;
}

Result<json::object> Controller::create_drill(const DrillSpec& spec) {
  auto& m = *impl_;
  std::lock_guard admin(m.admin_mu);
  auto d = std::make_shared<DrillRun>();
  Cluster c;
  {
    std::lock_guard lock(m.mu);
    if (m.active && !m.active->finished()) {
      return make_error(Condition::invalid_state, "drill '" + m.active->id + "' is " +
                                                      std::string(to_string(m.active->state)) +
                                                      ": one drill at a time");
    }
    c = m.cluster;
    d->id = "d" + std::to_string(m.drills.size() + 1) + "-" + std::to_string(unix_ms() % 100000);
    for (const auto& i : c.instances) {
      auto name = instance_name(i.service, i.index);
      InstanceBefore b{i.host, "", "", -1};
      if (auto it = m.instances.find(name); it != m.instances.end()) {
        b.image = it->second.image;
        b.counter = it->second.counter;
      }
      if (auto it = m.hosts.find(i.host); it != m.hosts.end()) b.host_image = it->second.host_image;
      d->before[name] = b;
    }
    for (const auto& [id, h] : m.hosts) d->host_image_before[id] = h.host_image;
  }
  if (c.hosts.empty()) return make_error(Condition::invalid_state, "the cluster has no hosts");
  d->spec = spec;
  FL_ASSIGN_OR_RETURN(d->plan, plan_walk(c, PlanOptions{spec.max_parallel_hosts}));
  FL_RETURN_IF_ERROR(validate_plan(c, d->plan, spec.max_parallel_hosts));
  for (size_t i = 0; i < d->plan.batches.size(); ++i) {
    d->batches.push_back(BatchRun{static_cast<int>(i), d->plan.batches[i]});
    for (const auto& h : d->plan.batches[i]) {
      d->progress[h] = Journal::HostProgress{h, static_cast<int>(i), "pending", "", {}, ""};
    }
  }
  d->notes = drill_notice(c, spec, d->notice_ms);
  d->started_ms = unix_ms();
  d->pause_requested = spec.start_paused;
  d->state = spec.start_paused ? DrillState::paused : DrillState::running;
  json::object out;
  {
    std::lock_guard lock(m.mu);
    m.drills[d->id] = d;
    m.active = d;
    out = m.drill_json_locked(*d);
  }
  m.save_drill(*d);
  for (const auto& [h, p] : d->progress) (void)m.journal->set_host_progress(d->id, p);
  log()->info("[drill:{}] {} to '{}': {} batches (lower bound {}, {})", d->id, spec.kind,
              spec.target, d->batches.size(), d->plan.lower_bound, d->plan.method);
  m.publish({{"drill.state", json::object{{"drill", out}}}});
  if (m.executor.joinable()) m.executor.join();
  m.executor = std::thread([&m, d] { m.run_drill(d); });
  return out;
}

bool Controller::Impl::wait_gate(DrillRun& d) {
  std::unique_lock lock(mu);
  bool announced = false;
  while (!stopping && !d.abort_requested && d.pause_requested) {
    if (!announced && d.state != DrillState::paused) {
      d.state = DrillState::paused;
      auto j = drill_json_locked(d);
      lock.unlock();
      save_drill(d);
      publish({{"drill.state", json::object{{"drill", std::move(j)}}}});
      lock.lock();
    }
    announced = true;
    cv.wait_for(lock, std::chrono::milliseconds(500));
  }
  if (stopping || d.abort_requested) return false;
  if (d.step_once) {
    d.step_once = false;
    d.pause_requested = true;  // this batch, then pause again
  }
  if (d.state != DrillState::running) {
    d.state = DrillState::running;
    auto j = drill_json_locked(d);
    lock.unlock();
    save_drill(d);
    publish({{"drill.state", json::object{{"drill", std::move(j)}}}});
  }
  return true;
}

void Controller::Impl::finish(DrillRun& d, DrillState state, std::string reason) {
  json::object j;
  {
    std::lock_guard lock(mu);
    d.state = state;
    d.reason = std::move(reason);
    d.finished_ms = unix_ms();
    j = drill_json_locked(d);
  }
  save_drill(d);
  if (d.state == DrillState::completed) {
    log()->info("[drill:{}] Completed: {} batches", d.id, d.batches.size());
  } else {
    log()->warn("[drill:{}] {}: {}", d.id, to_string(d.state), d.reason);
  }
  publish({{"drill.state", json::object{{"drill", std::move(j)}}}});
}

void Controller::Impl::maybe_replan(DrillRun& d) {
  Cluster rest;
  std::vector<std::string> left;
  {
    std::lock_guard lock(mu);
    for (size_t b = d.current_batch; b < d.batches.size(); ++b) {
      for (const auto& h : d.batches[b].hosts) left.push_back(h);
    }
    rest.services = cluster.services;
    for (const auto& h : left) {
      if (const Host* host = cluster.find_host(h)) rest.hosts.push_back(*host);
      for (const auto* i : cluster.instances_on(h)) rest.instances.push_back(*i);
    }
  }
  Plan remaining;
  for (size_t b = d.current_batch; b < d.batches.size(); ++b)
    remaining.batches.push_back(d.batches[b].hosts);
  if (validate_plan(rest, remaining, d.spec.max_parallel_hosts).ok()) return;
  auto fresh = plan_walk(rest, PlanOptions{d.spec.max_parallel_hosts});
  if (!fresh.ok()) return;  // the batch precondition will halt the drill with a reason
  json::object j;
  std::string note;
  {
    std::lock_guard lock(mu);
    d.batches.resize(d.current_batch);
    for (size_t i = 0; i < fresh->batches.size(); ++i) {
      int index = d.current_batch + static_cast<int>(i);
      d.batches.push_back(BatchRun{index, fresh->batches[i]});
      for (const auto& h : fresh->batches[i]) d.progress[h].batch = index;
    }
    note = "replanned: placement changed (healing); " + std::to_string(left.size()) +
           " hosts left in " + std::to_string(fresh->batches.size()) + " batches";
    d.notes.push_back(note);
    j = drill_json_locked(d);
  }
  log()->info("[drill:{}] {}", d.id, note);
  save_drill(d);
  publish({{"drill.replanned", json::object{{"drill", d.id}, {"note", note}}},
           {"drill.state", json::object{{"drill", std::move(j)}}}});
}

Status Controller::Impl::wait_ready(DrillRun& d, const std::vector<std::string>& host_ids,
                                    std::string_view why, bool abortable) {
  auto deadline = Clock::now() + scaled(d.spec.healthy_timeout_s, 1.0);
  std::string last;
  std::unique_lock lock(mu);
  while (!stopping) {
    last.clear();
    for (const auto& id : host_ids) {
      const Host* h = cluster.find_host(id);
      if (!h) continue;
      auto& m = hosts[id];
      if (!m.reachable) continue;  // unreachable hosts are skipped or halt elsewhere
      if (h->state != HostState::ready) {
        last = "host '" + id + "' is " + std::string(to_string(h->state)) + " (" + m.step + ")";
        break;
      }
      for (const auto* i : cluster.instances_on(id)) {
        auto name = instance_name(i->service, i->index);
        auto it = instances.find(name);
        if (it == instances.end() || !it->second.healthy) {
          last = "instance " + name + " on host '" + id + "' is " +
                 (it == instances.end() ? std::string("unknown") : it->second.status);
          break;
        }
        // Back in rotation too, so two UDs of a service are never out of it at once.
        if (const Service* s = cluster.find_service(i->service)) {
          last = lb_not_serving_locked(*s, name);
          if (!last.empty()) break;
        }
      }
      if (!last.empty()) break;
    }
    d.waiting_for = last;
    if (last.empty()) return {};
    if (abortable && d.abort_requested) {
      d.waiting_for.clear();
      return make_error(Condition::cancelled,
                        "aborted by request " + std::string(why) + " while " + last);
    }
    if (Clock::now() >= deadline) break;
    cv.wait_for(lock, std::chrono::milliseconds(100));
  }
  d.waiting_for.clear();
  if (stopping) return make_error(Condition::cancelled, "the orchestrator is stopping");
  return make_error(Condition::timeout,
                    std::string(why) + ": " + last + " after " +
                        std::to_string(static_cast<int64_t>(d.spec.healthy_timeout_s)) + " s");
}

void Controller::Impl::await_fresh_polls(const std::vector<std::string>& host_ids,
                                         Clock::time_point since) {
  // A watcher polls every opt.poll; one that is slow to answer is marked unreachable after
  // opt.unhealthy_after. Past both, give up: the mirror is what it is.
  auto deadline = Clock::now() + 2 * opt.poll + opt.unhealthy_after;
  std::unique_lock lock(mu);
  while (!stopping && Clock::now() < deadline) {
    bool fresh = std::all_of(host_ids.begin(), host_ids.end(), [&](const std::string& h) {
      auto it = hosts.find(h);
      return it == hosts.end() || !it->second.reachable || it->second.last_poll_began > since;
    });
    if (fresh) return;
    cv.wait_for(lock, std::chrono::milliseconds(20));
  }
}

void Controller::Impl::note_restarted(DrillRun& d, const std::vector<std::string>& host_ids,
                                      Clock::time_point ended) {
  std::unique_lock lock(mu);
  for (const auto& h : host_ids) {
    for (const auto* i : cluster.instances_on(h))
      d.restarted_at[instance_name(i->service, i->index)] = ended;
  }
  if (!lb) return;
  // A poll takes at most its socket timeout; polls come at least every second.
  auto deadline = Clock::now() + lb->options().socket_timeout + std::chrono::seconds(1);
  cv.wait_until(lock, deadline,
                [&] { return stopping.load() || (lb_polled && lb_poll_began >= ended); });
}

namespace {

// Sets what the walk waits for and until when (Unix ms; "" and 0: it waits no more), and tells
// the event feed, which otherwise hears of the drill only when its state or a batch changes.
void announce_waiting(Controller::Impl& m, DrillRun& d, std::string why, int64_t until_ms) {
  json::object j;
  {
    std::lock_guard lock(m.mu);
    d.waiting_for = std::move(why);
    d.waiting_until_ms = until_ms;
    j = m.drill_json_locked(d);
  }
  m.publish({{"drill.state", json::object{{"drill", std::move(j)}}}});
}

}  // namespace

std::optional<std::pair<DrillState, std::string>> Controller::Impl::run_walk(DrillRun& d) {
  using End = std::pair<DrillState, std::string>;
  while (!stopping) {
    size_t index;
    {
      std::lock_guard lock(mu);
      index = d.current_batch;
    }
    if (index >= d.batches.size()) break;
    bool in_flight;
    {
      std::lock_guard lock(mu);
      in_flight = d.batches[index].status == "running";
    }
    // A batch already in flight (resumed after a restart) is finished before any gate.
    if (!in_flight) {
      if (!wait_gate(d)) {
        if (stopping) return std::nullopt;
        return End{DrillState::aborted,
                   "aborted by request before batch " + std::to_string(index + 1)};
      }
      maybe_replan(d);
      std::vector<std::string> pre;
      {
        std::lock_guard lock(mu);
        pre = d.batches[index].hosts;
        if (index > 0)
          pre.insert(pre.end(), d.batches[index - 1].hosts.begin(),
                     d.batches[index - 1].hosts.end());
        // And the hosts of every other instance of the services this batch takes down: they are
        // what serves meanwhile, so they must be healthy and in rotation first (a guest that
        // boots slowly may be up for its agent before its app is up for the load balancer).
        for (const auto& h : d.batches[index].hosts) {
          for (const auto* i : cluster.instances_on(h)) {
            for (const auto* sib : cluster.instances_of(i->service)) {
              if (std::find(pre.begin(), pre.end(), sib->host) == pre.end())
                pre.push_back(sib->host);
            }
          }
        }
      }
      auto ready = wait_ready(d, pre, "before batch " + std::to_string(index + 1), true);
      if (!ready.ok()) {
        if (ready.error().condition == Condition::cancelled && !stopping)
          return End{DrillState::aborted, ready.error().message};
        if (ready.error().condition == Condition::cancelled) return std::nullopt;
        return End{DrillState::failed, ready.error().message};
      }
    }
    auto s = run_batch(d, d.batches[index]);
    if (!s.ok()) {
      if (s.error().condition == Condition::cancelled) return std::nullopt;
      return End{DrillState::failed, s.error().message};
    }
    bool last;
    {
      std::lock_guard lock(mu);
      d.current_batch = static_cast<int>(index + 1);
      last = d.current_batch >= static_cast<int>(d.batches.size());
    }
    save_drill(d);
    if (last) break;
    // Recovery window: the rebooted UD gets time before the next one goes down.
    auto window = scaled(d.spec.recovery_s, d.spec.time_scale);
    auto until = Clock::now() + window;
    if (window.count() > 0) {
      announce_waiting(*this, d, "recovery window after batch " + std::to_string(index + 1),
                       unix_ms() + window.count());
    }
    bool aborted;
    {
      std::unique_lock lock(mu);
      cv.wait_until(lock, until, [&] { return stopping.load() || d.abort_requested; });
      aborted = d.abort_requested;
    }
    if (window.count() > 0) announce_waiting(*this, d, "", 0);
    if (aborted) {
      return End{DrillState::aborted,
                 "aborted by request after batch " + std::to_string(index + 1)};
    }
  }
  if (stopping) return std::nullopt;
  return End{DrillState::completed, ""};
}

void Controller::Impl::run_drill(std::shared_ptr<DrillRun> dp) {
  DrillRun& d = *dp;
  std::thread stats_thread;
  std::atomic<bool> stats_stop{false};
  start_traffic(d, stats_thread, stats_stop);
  auto end = run_walk(d);
  // The tail only for a drill that ends: a stopping orchestrator leaves the drill Running.
  stop_traffic(d, end.has_value(), stats_thread, stats_stop);
  if (end) finish(d, end->first, std::move(end->second));
}

}  // namespace fabriclab::orchestrator
