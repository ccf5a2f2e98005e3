// The three kinds of maintenance operation (operations.cpp runs them, one at a time, on the
// agent's worker thread): host-os (stop or save every guest, switch the host image, reboot the
// emulated host, start and verify), guest-os (stop, reimage each guest onto the target, start,
// verify, roll a guest that does not come up healthy back) and freeze (suspend, wait, resume).
// Every kind persists each step before it starts (set_step), so a restarted agent resumes it.

#include <functional>
#include <shared_mutex>
#include <thread>

#include "agent_impl.hpp"
#include "instance_files.hpp"

namespace fabriclab::agent {

using hypervisor::DomainState;

Result<std::map<std::string, Clock::time_point>> HostAgent::Impl::start_stopped(
    Job& job, OperationRecord& op) {
  std::map<std::string, Clock::time_point> started;
  if (op.step != UpdateStep::starting_guests) return started;  // resumed past this step
  std::mutex m;
  FL_RETURN_IF_ERROR(for_each_guest(op.stopped, true, [&](const std::string& name) -> Status {
    {
      std::lock_guard lock(m);
      started[name] = Clock::now();
    }
    std::shared_lock lv(lv_mu);
    return start_guest(name);
  }));
  set_step(job, op, UpdateStep::verifying);
  return started;
}

Status HostAgent::Impl::notify_all(Job& job, OperationRecord& op, std::string_view done_to) {
  capture_before(job, op.running_before);
  set_step(job, op, UpdateStep::notifying);
  FL_RETURN_IF_ERROR(notify_guests(job, op, op.running_before));
  if (cancelled(job)) {
    return make_error(Condition::cancelled,
                      "cancelled before any guest was " + std::string(done_to));
  }
  set_step(job, op, UpdateStep::stopping_guests);
  return {};
}

Status HostAgent::Impl::notify_and_stop(Job& job, OperationRecord& op, const StopOne& stop) {
  FL_RETURN_IF_ERROR(notify_all(job, op, "stopped"));
  std::vector<std::string> to_stop;
  for (const auto& name : op.running_before) {
    if (std::find(op.stopped.begin(), op.stopped.end(), name) != op.stopped.end()) continue;
    to_stop.push_back(name);
    report_of(job, name);  // made now, so no worker adds to job.guests
  }
  std::mutex progress;  // op, job (its reports) while the workers run
  return for_each_guest(to_stop, true, [&](const std::string& name) -> Status {
    if (cancelled(job)) return make_error(Condition::cancelled, "cancelled while stopping guests");
    GuestReport r;
    {
      std::lock_guard p(progress);
      r = *report_of(job, name);
    }
    {
      std::lock_guard lock(mu);
      record_before(r, slots[name]);
    }
    Status s = stop(name, r);
    std::lock_guard p(progress);
    *report_of(job, name) = r;
    if (!s.ok()) return s;
    op.stopped.push_back(name);
    set_step(job, op, UpdateStep::stopping_guests);  // persists the progress
    return {};
  });
}

Status HostAgent::Impl::verify_started(Job& job, OperationRecord& op,
                                       const std::map<std::string, Clock::time_point>& started,
                                       const std::string& expect_image,
                                       const OnUnhealthy& unhealthy,
                                       const std::function<void(const std::string&)>& done) {
  // Every report exists before the workers start: each touches only its own.
  std::map<std::string, GuestReport*> reports;
  for (const auto& name : op.stopped) reports[name] = report_of(job, name);
  return for_each_guest(op.stopped, false, [&](const std::string& name) -> Status {
    GuestReport* r = reports.at(name);
    auto it = started.find(name);
    auto since = it != started.end() ? it->second : Clock::time_point{};
    auto s = wait_healthy(name, since, opt.boot_timeout, expect_image,
                          op.request.memory_preserving ? r->boot_id_before : "");
    Status reported;
    if (!s.ok()) {
      r->error = s.error().message;
      reported = unhealthy ? unhealthy(name, *r, s) : s;
    }
    if (s.ok()) capture_after(*r, name);
    if (done) done(name);
    std::lock_guard lock(mu);
    record_after(*r, slots[name]);
    r->ok = s.ok() && r->counter_after >= r->counter_before && data_held(*r);
    return reported;
  });
}

Status HostAgent::Impl::run_host_os(Job& job, OperationRecord& op, bool resumed) {
  const auto& req = op.request;
  if (!resumed) {
    // Refuse a corrupt or missing image before any guest is touched.
    Result<HostImage> verified = make_error(Condition::internal, "not verified");
    {
      std::lock_guard store(store_mu);
      verified = host_store->verify(req.target);
    }
    if (auto& v = verified; !v.ok()) {
      return make_error(v.condition(),
                        "host image '" + req.target + "' refused: " + v.error().message);
    }
    FL_RETURN_IF_ERROR(
        notify_and_stop(job, op, [&](const std::string& name, GuestReport& r) -> Status {
          std::shared_lock lv(lv_mu);
          if (req.memory_preserving) {
            auto t0 = Clock::now();
            FL_ASSIGN_OR_RETURN(auto d, domain(name));
            FL_RETURN_IF_ERROR(d.managed_save());
            r.stop_method = "saved";
            r.stop_ms = ms_between(t0, Clock::now());
            std::lock_guard lock(mu);
            slots[name].expect_running = false;
            slots[name].domain_state = DomainState::shut_off;
            slots[name].status = InstanceStatus::stopped;
            if (slots[name].sim) slots[name].sim->pause();
          } else {
            FL_ASSIGN_OR_RETURN(auto stopped, stop_guest(name, false));
            r.stop_method = std::string(hypervisor::to_string(stopped.method));
            r.stop_ms = stopped.elapsed.count();
          }
          drop_link(name);
          return {};
        }));
  }
  if (op.step < UpdateStep::swapping_image) set_step(job, op, UpdateStep::swapping_image);
  if (op.step == UpdateStep::swapping_image) {
    Result<HostImage> activated = make_error(Condition::internal, "not activated");
    {
      std::lock_guard store(store_mu);
      activated = host_store->activate(req.target);
    }
    FL_ASSIGN_OR_RETURN(auto img, activated);
    {
      std::lock_guard lock(mu);
      state.host_image = img.version;
    }
    publish("image.activated", {{"version", img.version}, {"previous", op.previous_host_image}});
    set_step(job, op, UpdateStep::rebooting);
  }
  if (op.step == UpdateStep::rebooting) {
    // The emulated host reboot: the hypervisor connection goes away and comes back through the
    // same recovery path as an agent restart.
    for (const auto& name : op.running_before) drop_link(name);
    {
      std::lock_guard lv(lv_mu);
      close_hypervisor();
    }
    std::this_thread::sleep_for(opt.boot_delay);
    FL_RETURN_IF_ERROR(recover());
    set_step(job, op, UpdateStep::starting_guests);
  }
  FL_ASSIGN_OR_RETURN(auto started, start_stopped(job, op));
  return verify_started(job, op, started, "", nullptr, nullptr);
}

Status HostAgent::Impl::run_guest_os(Job& job, OperationRecord& op, bool resumed) {
  const auto& req = op.request;
  FL_ASSIGN_OR_RETURN(auto target, guest_store->verify(req.target));
  if (!resumed) {
    FL_RETURN_IF_ERROR(
        notify_and_stop(job, op, [&](const std::string& name, GuestReport& r) -> Status {
          std::shared_lock lv(lv_mu);
          FL_ASSIGN_OR_RETURN(auto stopped, stop_guest(name, false));
          r.stop_method = std::string(hypervisor::to_string(stopped.method));
          r.stop_ms = stopped.elapsed.count();
          return {};
        }));
    set_step(job, op, UpdateStep::swapping_image);
  }
  // Edits a copy of the instance's record with `change`, redefines the stopped domain from it and
  // persists the record with the operation.
  auto redefine_with = [&](const std::string& name,
                           const std::function<Status(InstanceRecord&)>& change) -> Status {
    std::lock_guard lv(lv_mu);
    InstanceRecord rec;
    {
      std::lock_guard lock(mu);
      auto* r = record_locked(name);
      if (!r) return make_error(Condition::not_found, "instance '" + name + "' vanished");
      rec = *r;
    }
    FL_RETURN_IF_ERROR(change(rec));
    if (auto d = redefine_domain(rec); !d.ok()) return d.error();
    std::lock_guard lock(mu);
    if (auto* r = record_locked(name)) *r = rec;
    state.operation = op;
    return persist_locked();
  };
  // Point every stopped guest's next boot at the target image: a guest with its own OS disk gets
  // a fresh overlay on the target (Azure's reimage: the data disk is kept). Idempotent, so a
  // restarted agent redoes it without making a second overlay.
  auto point_at = [&](const std::string& name, const GuestImageInfo& img) -> Status {
    return redefine_with(name, [&](InstanceRecord& rec) -> Status {
      if (!op.previous_guest_image.count(name)) {
        op.previous_guest_image[name] = rec.meta.image;
        op.previous_os_disk[name] = rec.os_disk;
      }
      if (rec.meta.image == img.version && rec.os_disk != op.previous_os_disk[name])
        return {};  // done
      if (!img.builtin()) {
        FL_RETURN_IF_ERROR(
            check_disk_reserve(vm_dir(), bytes_needed(img, 0, true), opt.disk_reserve_mib << 20));
        FL_ASSIGN_OR_RETURN(
            rec.os_disk, create_os_overlay(instance_files_dir(vm_dir(), name), img, rec.os_gen + 1,
                                           /*replace_stale=*/true));
        ++rec.os_gen;
      } else {
        rec.os_disk.clear();
      }
      rec.meta.image = img.version;
      return {};
    });
  };
  // Rollback: back on the previous image and the overlay it ran on (kept until now for this).
  auto point_back = [&](const std::string& name) -> Status {
    return redefine_with(name, [&](InstanceRecord& rec) -> Status {
      rec.meta.image = op.previous_guest_image[name];
      rec.os_disk = op.previous_os_disk[name];
      return {};
    });
  };
  if (op.step == UpdateStep::swapping_image) {
    for (const auto& name : op.stopped) {
      {
        std::lock_guard lock(mu);
        slots[name].status = InstanceStatus::reimaging;
      }
      FL_RETURN_IF_ERROR(point_at(name, target));
    }
    set_step(job, op, UpdateStep::starting_guests);
  }
  FL_ASSIGN_OR_RETURN(auto started, start_stopped(job, op));
  // Not healthy on the new image: put it back on the previous one and start it.
  auto roll_back = [&](const std::string& name, GuestReport& r, const Status& s) -> Status {
    std::string prev = op.previous_guest_image.count(name) ? op.previous_guest_image[name] : "";
    if (!prev.empty()) {
      {
        // stop_guest waits for the destroy's own stopped event, so it is not taken for the
        // restarted guest stopping.
        std::shared_lock lv(lv_mu);
        (void)stop_guest(name, true);
      }
      auto back = point_back(name);
      Clock::time_point again = Clock::now();
      if (back.ok()) {
        std::shared_lock lv(lv_mu);
        back = start_guest(name);
      }
      if (back.ok()) back = wait_healthy(name, again, opt.boot_timeout, prev, "");
      r.error += back.ok() ? "; rolled back to " + prev
                           : "; rollback to " + prev + " failed: " + back.error().message;
      publish("instance.rolled_back",
              {{"name", name}, {"image", prev}, {"ok", back.ok()}, {"reason", s.error().message}});
    }
    return make_error(s.condition(), name + " not healthy on guest image " + req.target + " (" +
                                         s.error().message + "); " +
                                         r.error.substr(r.error.find(';') + 2));
  };
  return verify_started(job, op, started, req.target, roll_back,
                        [&](const std::string& name) { drop_unused_files(name); });
}

Status HostAgent::Impl::run_freeze(Job& job, OperationRecord& op) {
  const auto& req = op.request;
  FL_RETURN_IF_ERROR(notify_all(job, op, "frozen"));
  std::map<std::string, Clock::time_point> last_before;
  {
    std::lock_guard lv(lv_mu);
    for (const auto& name : op.running_before) {
      FL_ASSIGN_OR_RETURN(auto d, domain(name));
      FL_RETURN_IF_ERROR(d.suspend());
      std::lock_guard lock(mu);
      auto& s = slots[name];
      if (s.sim) s.sim->pause();
      last_before[name] = s.last_hb ? s.last_hb->at : Clock::now();
      op.stopped.push_back(name);
      auto* r = report_of(job, name);
      r->stop_method = "suspended";
      record_before(*r, s);
      r->last_hb_before = {};  // a freeze reports pause_ms, not down_ms
    }
  }
  std::this_thread::sleep_for(milliseconds(req.freeze_ms));
  set_step(job, op, UpdateStep::starting_guests);
  Clock::time_point resumed_at = Clock::now();
  {
    std::lock_guard lv(lv_mu);
    for (const auto& name : op.running_before) {
      FL_ASSIGN_OR_RETURN(auto d, domain(name));
      {
        // The first heartbeat after the resume ends the pause.
        std::lock_guard lock(mu);
        slots[name].started_at = Clock::now();
        slots[name].first_hb_since_start.reset();
      }
      FL_RETURN_IF_ERROR(d.resume());
      std::lock_guard lock(mu);
      if (slots[name].sim) slots[name].sim->resume();
    }
  }
  set_step(job, op, UpdateStep::verifying);
  Status first_error;
  for (const auto& name : op.running_before) {
    auto* r = report_of(job, name);
    auto s = wait_healthy(name, resumed_at, opt.boot_timeout, "", r->boot_id_before);
    if (s.ok()) capture_after(*r, name);
    std::lock_guard lock(mu);
    auto& slot = slots[name];
    if (slot.first_hb_since_start) {
      // The pause the guest saw: its last heartbeat before the suspend to its first after.
      r->pause_ms = ms_between(last_before[name], slot.first_hb_since_start->at);
      record_after(*r, slot);
    }
    r->ok = s.ok() && data_held(*r);
    if (!s.ok()) {
      r->error = s.error().message;
      if (first_error.ok()) first_error = s;
    }
  }
  return first_error;
}

}  // namespace fabriclab::agent
