// The maintenance operations, run one at a time on the agent's worker thread.
//
// Each step is persisted before it starts (OperationRecord.step), so a restarted agent knows
// where it was. The rule for a restart: before anything was swapped (Notifying, StoppingGuests)
// the operation is rolled back, i.e. the guests it stopped are started again on what they ran,
// and the job fails saying so; from SwappingImage on it is rolled forward, since the swap is
// idempotent and the guests are down anyway. Either way no guest that was running stays stopped
// without the job and the feed saying which.
//
// A host's guests stop, start and are verified in parallel (up to opt.parallel_guests at once,
// for_each_guest): done one after another, the first guest's down time would include every
// other guest's stop, and the last guest's its neighbours' boots. Each guest's notice and ack are
// the one scheduled event's, as before. The workers share the job and the operation record: a
// worker fills in a copy of its guest's report and writes it back, with op.stopped and the
// persisted progress, under one `progress` mutex; lv_mu is held shared around a guest's own
// libvirt calls, so one guest's wait for its power-off does not hold up another's.
//
// This file holds the job's frame (steps, notices, health waits, restart and rollback rules, the
// public job API); the three kinds of operation (host-os, guest-os, freeze) are in
// operation_kinds.cpp.

#include <functional>
#include <shared_mutex>
#include <thread>

#include "agent_impl.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/logging.hpp"
#include "instance_files.hpp"

namespace fabriclab::agent {

using hypervisor::DomainState;

int64_t ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<milliseconds>(b - a).count();
}

bool data_held(const GuestReport& r) { return !r.data_check || r.data_check->ok; }

GuestReport* report_of(Job& job, const std::string& name) {
  for (auto& r : job.guests) {
    if (r.name == name) return &r;
  }
  job.guests.push_back(GuestReport{});
  job.guests.back().name = name;
  return &job.guests.back();
}

void record_before(GuestReport& r, const GuestSlot& slot) {
  if (!slot.last_hb) return;
  const auto& hb = std::get<Heartbeat>(slot.last_hb->message);
  r.image_before = hb.image;
  r.counter_before = hb.counter;
  r.boot_id_before = hb.boot_id;
  r.last_hb_before = slot.last_hb->at;
}

void record_after(GuestReport& r, const GuestSlot& slot) {
  const auto& m = slot.first_hb_since_start ? slot.first_hb_since_start : slot.last_hb;
  if (!m) return;
  const auto& hb = std::get<Heartbeat>(m->message);
  r.image_after = hb.image;
  r.counter_after = hb.counter;
  r.boot_id_after = hb.boot_id;
  if (r.last_hb_before != Clock::time_point{}) r.down_ms = ms_between(r.last_hb_before, m->at);
}

bool HostAgent::Impl::cancelled(const Job& job) {
  std::lock_guard lock(mu);
  return jobs[job.id].cancel_requested || stopping;
}

void HostAgent::Impl::set_step(Job& job, OperationRecord& op, UpdateStep s) {
  op.step = s;
  job.step = std::string(to_string(s));
  {
    std::lock_guard lock(mu);
    state.operation = op;
    state.state = HostState::updating;
    step = s;
    auto keep_cancel = jobs[job.id].cancel_requested;
    jobs[job.id] = job;
    jobs[job.id].cancel_requested = keep_cancel;
    (void)persist_locked();
  }
  cv.notify_all();
  logger("agent")->info("[host:{}][job:{}] {}", opt.host_id, job.id, to_string(s));
  publish("host.state", {{"state", "Updating"}, {"step", to_string(s)}, {"job", job.id}});
  // The guests see the event Started as soon as the host begins stopping them, and no event once
  // they run again (Azure lists an event until the VM is back): a guest that stays out of
  // rotation while an event names it would otherwise never pass the verification's app probe.
  if (s == UpdateStep::verifying) {
    end_event();
  } else if (s >= UpdateStep::stopping_guests) {
    start_event();
  }
}

Status HostAgent::Impl::notify_guests(Job& job, const OperationRecord& op,
                                      const std::vector<std::string>& guests) {
  const auto& req = op.request;
  for (const auto& name : guests) report_of(job, name)->notice_ms = req.notice_ms;
  if (guests.empty()) return {};
  const auto sent = Clock::now();
  const auto deadline = sent + milliseconds(req.notice_ms);
  ScheduledEvent ev;
  ev.event_id = op.event_id;
  ev.resources = guests;
  ev.not_before = rfc1123(std::chrono::system_clock::now() + milliseconds(req.notice_ms));
  ev.duration_seconds = -1;
  switch (req.kind) {
    case OperationKind::host_os:
      if (req.memory_preserving) {
        ev.event_type = "Freeze";
        ev.description =
            "Host OS update (memory-preserving): the VM is paused and resumed, not rebooted";
        // The pause: the emulated host reboot plus a save and a restore (~2 s each under TCG).
        ev.duration_seconds = static_cast<int>((opt.boot_delay.count() + 999) / 1000) + 4;
      } else {
        ev.event_type = "Reboot";
        ev.description =
            "Host OS update: the VM is shut down and started again after the host reboots";
      }
      break;
    case OperationKind::guest_os:
      ev.event_type = "Reboot";
      ev.description = "Guest OS update: the OS disk is reimaged with " + req.target +
                       " (the data disk is kept) and the VM reboots";
      break;
    case OperationKind::freeze:
      ev.event_type = "Freeze";
      ev.description = "Host maintenance: the VM is paused and resumed";
      ev.duration_seconds = static_cast<int>((req.freeze_ms + 999) / 1000);
      break;
  }
  const std::string type = ev.event_type;
  post_event(std::move(ev));
  // Who can approve: a guest with a channel link (ack) or an address (IMDS). The others would
  // only hold the host until NotBefore.
  std::vector<std::string> waiting;
  {
    std::lock_guard lock(mu);
    for (const auto& name : guests) {
      auto* rec = record_locked(name);
      if (slots[name].link || (rec && !rec->address.empty())) waiting.push_back(name);
    }
  }
  publish("job.notified", {{"job", job.id},
                           {"event_id", op.event_id},
                           {"event_type", type},
                           {"notice_ms", req.notice_ms},
                           {"guests", json::value_from(guests)}});
  // Wait for every approval or the notice to run out (approvals let maintenance start early).
  std::unique_lock lock(mu);
  wait_until(lock, deadline, [&] {
    if (jobs[job.id].cancel_requested) return true;
    for (const auto& name : waiting) {
      if (!event || !event->approved.count(name)) return false;
    }
    return true;
  });
  if (event) {
    for (const auto& [name, at] : event->approved)
      report_of(job, name)->ack_ms = ms_between(sent, at);
  }
  return {};
}

Status HostAgent::Impl::wait_healthy(const std::string& name, Clock::time_point since,
                                     milliseconds timeout, const std::string& expect_image,
                                     const std::string& expect_boot_id) {
  {
    std::unique_lock lock(mu);
    if (!builtin_locked(name)) {
      const bool expect_agent = slots[name].agent_seen;
      lock.unlock();
      return wait_os_up(name, since, timeout, expect_agent, expect_boot_id);
    }
  }
  std::unique_lock lock(mu);
  std::string why;
  bool ok = wait_until(lock, Clock::now() + timeout, [&] {
    auto& s = slots[name];
    if (!s.guest_error.empty()) {
      why = "the guest reported: " + s.guest_error;
      return true;
    }
    if (s.status == InstanceStatus::failed && s.domain_state == DomainState::shut_off) {
      why = "the VM stopped";
      return true;
    }
    if (!s.last_hb || s.last_hb->at < since) return false;
    const auto& hb = std::get<Heartbeat>(s.last_hb->message);
    if (!expect_image.empty() && hb.image != expect_image) return false;
    if (!expect_boot_id.empty() && hb.boot_id != expect_boot_id) {
      why = "the guest rebooted (boot_id changed) when its memory should have been preserved";
      return true;
    }
    return true;
  });
  if (!why.empty()) return make_error(Condition::invalid_state, name + ": " + why);
  if (!ok) {
    return make_error(Condition::timeout, name + ": no heartbeat" +
                                              (expect_image.empty() ? "" : " on " + expect_image) +
                                              " within " + std::to_string(timeout.count()) + " ms");
  }
  return {};
}

Status HostAgent::Impl::ensure_running(const std::string& name) {
  const auto deadline = Clock::now() + opt.stop_timeout + opt.boot_timeout;
  while (Clock::now() < deadline && !stopping) {
    {
      std::shared_lock lv(lv_mu);
      FL_ASSIGN_OR_RETURN(auto d, domain(name));
      FL_ASSIGN_OR_RETURN(auto st, d.state());
      if (st == DomainState::paused) {
        FL_RETURN_IF_ERROR(d.resume());
        std::lock_guard lock(mu);
        if (slots[name].sim) slots[name].sim->resume();
      } else if (st != DomainState::running) {
        FL_RETURN_IF_ERROR(start_guest(name));
      }
    }
    std::unique_lock lock(mu);
    if (wait_until(lock, Clock::now() + milliseconds(500), [&] { return slots[name].healthy; })) {
      return {};
    }
  }
  return make_error(Condition::timeout, name + " is not healthy again");
}

// Restarts every guest that was running before the operation, on what it ran before.
void HostAgent::Impl::rollback_stopped(OperationRecord& op, const std::string& why) {
  logger("agent")->warn("[host:{}][job:{}] rolling back: {}", opt.host_id, op.id, why);
  (void)for_each_guest(op.running_before, false, [&](const std::string& name) -> Status {
    auto s = ensure_running(name);
    if (!s.ok()) {
      publish("instance.state", {{"name", name},
                                 {"status", to_string(InstanceStatus::failed)},
                                 {"reason", s.error().message}});
    }
    return s;
  });
}

Status HostAgent::Impl::for_each_guest(const std::vector<std::string>& names, bool stop_at_error,
                                       const std::function<Status(const std::string&)>& fn) {
  std::mutex m;
  size_t next = 0;
  bool failed = false;
  std::vector<Status> results(names.size());
  auto work = [&] {
    for (;;) {
      size_t i;
      {
        std::lock_guard lock(m);
        if (next >= names.size() || (stop_at_error && failed)) return;
        i = next++;
      }
      Status s = fn(names[i]);
      std::lock_guard lock(m);
      if (!s.ok()) failed = true;
      results[i] = std::move(s);
    }
  };
  const size_t n = std::min(names.size(), static_cast<size_t>(std::max(opt.parallel_guests, 1)));
  if (n <= 1) {
    work();
  } else {
    std::vector<std::thread> workers;
    for (size_t i = 0; i < n; ++i) workers.emplace_back(work);
    for (auto& t : workers) t.join();
  }
  for (auto& s : results) {
    if (!s.ok()) return s;
  }
  return {};
}

void HostAgent::Impl::restart_failed_guests() {
  std::vector<std::string> failed;
  {
    std::lock_guard lock(mu);
    if (!active_job.empty()) return;
    for (auto& [name, slot] : slots) {
      auto* rec = record_locked(name);
      if (rec && rec->want_running && slot.status == InstanceStatus::failed &&
          slot.domain_state == DomainState::shut_off && slot.unexpected_restarts < 3) {
        ++slot.unexpected_restarts;
        failed.push_back(name);
      }
    }
  }
  for (const auto& name : failed) {
    std::unique_lock lv(lv_mu, std::try_to_lock);
    if (!lv.owns_lock()) return;
    auto s = start_guest(name);
    publish("instance.restarted", {{"name", name},
                                   {"reason", "its VM stopped on its own"},
                                   {"ok", s.ok()},
                                   {"error", s.ok() ? "" : s.error().message}});
  }
}

void HostAgent::Impl::run_job(const std::string& id, bool resumed) {
  Job job;
  OperationRecord op;
  {
    std::lock_guard lock(mu);
    job = jobs[id];
    op = *state.operation;
  }
  job.step = std::string(to_string(op.step));
  publish("job.started",
          {{"job", id}, {"request", agent::to_json(op.request)}, {"resumed", resumed}});
  Status result;
  bool rolled_back = false;
  // A host powered on again after its power control fenced it (--hold-guests) starts no guest by
  // itself, an interrupted operation's included: the orchestrator may have placed its instances
  // elsewhere meanwhile, and it reconciles the host before anything runs there.
  const bool held = resumed && opt.hold_guests;
  if (!held && resumed && op.step >= UpdateStep::stopping_guests && op.step < UpdateStep::verifying)
    resume_event(op);
  if (held) {
    result = make_error(Condition::cancelled,
                        "the host lost power during " + std::string(to_string(op.step)) +
                            "; powered on holding its guests (--hold-guests): not resumed, no "
                            "guest started");
    rolled_back = true;
  } else if (resumed && op.step <= UpdateStep::stopping_guests) {
    rollback_stopped(op, "the agent restarted during " + std::string(to_string(op.step)));
    result = make_error(Condition::cancelled,
                        "the agent restarted during " + std::string(to_string(op.step)) +
                            "; rolled back: the guests it had stopped were started again");
    rolled_back = true;
  } else {
    switch (op.request.kind) {
      case OperationKind::host_os:
        result = run_host_os(job, op, resumed);
        break;
      case OperationKind::guest_os:
        result = run_guest_os(job, op, resumed);
        break;
      case OperationKind::freeze:
        result = run_freeze(job, op);
        break;
    }
  }
  // A failure before anything was swapped leaves stopped guests behind: start them again.
  if (!result.ok() && !rolled_back && op.step <= UpdateStep::stopping_guests &&
      !op.stopped.empty()) {
    rollback_stopped(op, result.error().message);
  }
  // Wait (bounded) for the guests to be healthy again before reporting the host Ready.
  bool connected;
  {
    std::lock_guard lv(lv_mu);
    connected = conn != nullptr;
  }
  bool all_up = connected;
  if (connected && !held) {
    auto up = [&](const std::string& name) { return ensure_running(name); };
    all_up = for_each_guest(op.running_before, false, up).ok();
  }
  // Offline: the hypervisor could not be reached again (a host that did not come back).
  const HostState end_state = !connected ? HostState::offline
                              : all_up   ? HostState::ready
                                         : HostState::unhealthy;
  {
    std::lock_guard lock(mu);
    for (const auto& name : op.running_before) {
      auto* r = report_of(job, name);
      if (r->image_after.empty()) record_after(*r, slots[name]);
    }
    job.status = result.ok() ? JobStatus::succeeded
                             : (result.condition() == Condition::cancelled ? JobStatus::cancelled
                                                                           : JobStatus::failed);
    if (!result.ok()) job.error = result.error().message;
    job.finished_at = rfc3339_now();
    job.host_image_after = state.host_image;
    job.step = "None";
    jobs[id] = job;
    state.operation.reset();
    state.state = end_state;
    step = UpdateStep::none;
    (void)persist_locked();
  }
  logger("agent")->info("[host:{}][job:{}] {}{}", opt.host_id, id, to_string(job.status),
                        job.error.empty() ? "" : ": " + job.error);
  end_event();
  publish("job.done", {{"job", id},
                       {"status", to_string(job.status)},
                       {"error", job.error},
                       {"result", job.to_json()}});
  publish("host.state", {{"state", to_string(end_state)}, {"step", "None"}});
  {
    // Idle only now, so that whoever waits for it sees the final events too.
    std::lock_guard lock(mu);
    active_job.clear();
  }
  cv.notify_all();
}

Result<json::object> HostAgent::start_operation(const OperationRequest& request) {
  auto& p = *impl_;
  if (request.kind == OperationKind::host_os) {
    std::lock_guard store(p.store_mu);
    FL_RETURN_IF_ERROR(p.host_store->verify(request.target));
  }
  if (request.kind == OperationKind::guest_os)
    FL_RETURN_IF_ERROR(p.guest_store->get(request.target));
  std::unique_lock lock(p.mu);
  if (p.state.state != HostState::ready || !p.active_job.empty()) {
    return make_error(Condition::invalid_state,
                      "host " + p.opt.host_id + " is " + std::string(to_string(p.state.state)) +
                          (p.active_job.empty() ? "" : " (job " + p.active_job + ")") +
                          ": one operation at a time, from Ready");
  }
  if (p.worker.joinable()) {
    lock.unlock();
    p.worker.join();
    lock.lock();
  }
  OperationRecord op;
  op.id = p.opt.host_id + "-job-" + std::to_string(p.state.next_job++);
  op.request = request;
  op.started_at = rfc3339_now();
  op.previous_host_image = p.state.host_image;
  op.event_id = new_guid();
  for (const auto& r : p.state.instances) {
    if (p.slots[r.name].expect_running) op.running_before.push_back(r.name);
  }
  Job job;
  job.id = op.id;
  job.request = request;
  job.started_at = op.started_at;
  job.host_image_before = p.state.host_image;
  job.event_id = op.event_id;
  job.step = "Notifying";
  for (const auto& n : op.running_before) job.guests.push_back(GuestReport{.name = n});
  p.state.operation = op;
  p.state.state = HostState::updating;
  p.step = UpdateStep::notifying;
  FL_RETURN_IF_ERROR(p.persist_locked());
  p.jobs[op.id] = job;
  p.active_job = op.id;
  std::string id = op.id;
  p.worker = std::thread([&p, id] { p.run_job(id, false); });
  return job.to_json();
}

Result<json::object> HostAgent::job_json(const std::string& id) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->jobs.find(id);
  if (it == impl_->jobs.end())
    return make_error(Condition::not_found, "job '" + id + "' not found");
  return it->second.to_json();
}

json::array HostAgent::jobs_json() const {
  std::lock_guard lock(impl_->mu);
  json::array a;
  for (const auto& [id, j] : impl_->jobs) a.push_back(j.to_json());
  return a;
}

Status HostAgent::cancel(const std::string& id) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->jobs.find(id);
  if (it == impl_->jobs.end())
    return make_error(Condition::not_found, "job '" + id + "' not found");
  if (it->second.status != JobStatus::running) {
    return make_error(Condition::invalid_state,
                      "job '" + id + "' is " + std::string(to_string(it->second.status)));
  }
  it->second.cancel_requested = true;
  impl_->cv.notify_all();
  return {};
}

bool HostAgent::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mu);
  return impl_->cv.wait_for(lock, timeout, [&] { return impl_->active_job.empty(); });
}

}  // namespace fabriclab::agent
