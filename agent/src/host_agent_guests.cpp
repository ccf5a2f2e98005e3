// The host agent's guests: their domains (define, start, stop), their guest channels (messages
// and heartbeats), libvirt's lifecycle events, and the monitor loop that judges health and
// restarts what the fabric wants running. Shared state and locks: agent_impl.hpp.

#include <filesystem>
#include <fstream>
#include <set>
#include <tuple>

#include "agent_impl.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/logging.hpp"
#include "instance_files.hpp"

namespace fabriclab::agent {

namespace fs = std::filesystem;
using hypervisor::DomainState;

std::unique_ptr<SimGuest> HostAgent::Impl::make_sim(const InstanceRecord& rec) const {
  return std::make_unique<SimGuest>(socket_path(rec.name),
                                    opt.state_dir + "/sim/" + rec.name + ".counter",
                                    opt.heartbeat_period, drain_of(rec), rec.drain);
}

Status HostAgent::Impl::open_hypervisor() {
  FL_ASSIGN_OR_RETURN(conn, hypervisor::Connection::open(opt.hypervisor_uri));
  simulated = conn->domain_type() == "test";
  conn_sub = conn->subscribe([this](const hypervisor::LifecycleEvent& e) { on_lifecycle(e); });
  return {};
}

void HostAgent::Impl::close_hypervisor() {
  if (conn && conn_sub >= 0) conn->unsubscribe(conn_sub);
  conn_sub = -1;
  conn.reset();
}

Result<hypervisor::Domain> HostAgent::Impl::domain(const std::string& name) {
  if (!conn)
    return make_error(Condition::transient, "the hypervisor is not connected (host rebooting)");
  return conn->lookup(name);
}

std::string HostAgent::Impl::builtin_cmdline(const InstanceRecord& rec) const {
  // The mode goes on the command line only when it is not the default: a command-line mode
  // overrides the image's own (v3-broken carries fail-app in the image).
  std::string c = "console=ttyS0 panic=-1 quiet" +
                  (rec.mode == "normal" ? std::string() : " fabriclab.mode=" + rec.mode) +
                  " fabriclab.drain=" + (rec.drain ? "1" : "0") +
                  " fabriclab.drain_ms=" + std::to_string(drain_of(rec).count()) +
                  " fabriclab.hb_ms=" + std::to_string(opt.heartbeat_period.count());
  // The built-in guest configures eth0 itself from these (it has no DHCP client).
  if (subnet && !rec.address.empty())
    c += " fabriclab.ip=" + rec.address + "/24 fabriclab.gw=" + subnet->gateway();
  return c;
}

Result<hypervisor::Domain> HostAgent::Impl::define_domain(const InstanceRecord& rec) {
  FL_ASSIGN_OR_RETURN(auto image, guest_store->get(rec.meta.image));
  hypervisor::DomainSpec s;
  s.name = rec.name;
  s.memory_mib = rec.memory_mib;
  FL_ASSIGN_OR_RETURN(s.boot, private_boot_files(instance_files_dir(vm_dir(), rec.name), image));
  FL_ASSIGN_OR_RETURN(s.firmware, instance_firmware(instance_files_dir(vm_dir(), rec.name), image,
                                                    opt.ovmf_code, opt.ovmf_vars));
  if (image.builtin()) {
    s.boot.cmdline = builtin_cmdline(rec);
  } else {
    // A guest with its own OS disk boots its own way (its cmdline, DHCP for its address); the
    // overlay was made when the instance was created or reimaged.
    if (rec.os_disk.empty())
      return make_error(Condition::internal, rec.name + ": no OS disk overlay");
    // The drain switches go along (an Azure-style handler in the guest may read them, as the
    // Debian image's does); any other guest ignores them. A disk that boots through its own
    // bootloader (boot: disk) has its command line inside: nothing can be added.
    if (!s.boot.kernel.empty()) {
      s.boot.cmdline = image.cmdline + " fabriclab.drain=" + (rec.drain ? "1" : "0") +
                       " fabriclab.drain_ms=" + std::to_string(drain_of(rec).count());
    }
    s.os_disk = rec.os_disk;
    s.os_disk_format = "qcow2";
  }
  if (!opt.guest_bridge.empty() && !rec.mac.empty())
    s.nic = hypervisor::NicSpec{rec.mac, opt.guest_bridge};
  // Every guest gets the qemu-guest-agent channel: a guest that runs the agent answers on it.
  s.guest_agent = true;
  s.console_log = vm_dir() + "/" + rec.name + ".console.log";
  s.data_disk = vm_dir() + "/" + rec.name + ".data.raw";
  s.channel_socket = socket_path(rec.name);
  s.metadata = rec.meta;
  FL_RETURN_IF_ERROR(ensure_data_disk(
      s.data_disk, image.builtin() ? kBuiltinDataDiskBytes : kDefaultDataDiskBytes));
  return conn->define(s);
}

Result<hypervisor::Domain> HostAgent::Impl::redefine_domain(const InstanceRecord& rec) {
  // The guest is off: its definition is replaced whole (a reimage may change its disks' layout,
  // from the built-in guest's initramfs to an OS disk or back).
  if (auto d = domain(rec.name); d.ok()) FL_RETURN_IF_ERROR(d->undefine());
  return define_domain(rec);
}

Status HostAgent::Impl::start_guest(const std::string& name) {
  FL_ASSIGN_OR_RETURN(auto d, domain(name));
  auto st = d.state();
  if (!st.ok() || *st != DomainState::running) {
    {
      std::lock_guard lock(mu);
      auto& slot = slots[name];
      slot.status = InstanceStatus::starting;
      slot.started_at = Clock::now();
      slot.first_hb_since_start.reset();
      slot.guest_error.clear();
    }
    bool restored = d.has_managed_save().ok() && *d.has_managed_save();
    // An injected slow boot (faults.cpp): the VM starts late; the instance shows Starting
    // meanwhile.
    if (auto delay = take_boot_delay(name); delay.count() > 0) std::this_thread::sleep_for(delay);
    FL_RETURN_IF_ERROR(d.start());
    std::string image, mode;
    {
      std::lock_guard lock(mu);
      auto& slot = slots[name];
      slot.expect_running = true;
      slot.domain_state = DomainState::running;
      if (auto* r = record_locked(name)) {
        image = r->meta.image;
        mode = r->mode;
      }
      // A simulated guest that was saved (memory-preserving) or frozen resumes; others boot.
      if (slot.sim && slot.sim->running()) {
        slot.sim->resume();
      } else if (slot.sim) {
        slot.sim->boot(image, mode);
      }
    }
    publish("instance.state", {{"name", name},
                               {"status", to_string(InstanceStatus::starting)},
                               {"image", image},
                               {"restored", restored}});
  }
  return {};
}

Result<hypervisor::ShutdownResult> HostAgent::Impl::stop_guest(const std::string& name,
                                                               bool force) {
  FL_ASSIGN_OR_RETURN(auto d, domain(name));
  uint64_t events_before = 0;
  {
    std::lock_guard lock(mu);
    auto& slot = slots[name];
    slot.expect_running = false;
    slot.status = InstanceStatus::stopping;
    events_before = slot.stop_events;
  }
  publish("instance.state", {{"name", name}, {"status", to_string(InstanceStatus::stopping)}});
  const auto before = d.state();
  const bool was_on = before.ok() && *before != DomainState::shut_off;
  hypervisor::ShutdownResult r;
  if (simulated && !force && was_on && opt.sim_power_off.count() > 0)
    std::this_thread::sleep_for(opt.sim_power_off);
  if (force) {
    if (was_on) FL_RETURN_IF_ERROR(d.destroy());
    r.method = hypervisor::StopMethod::destroyed;
  } else if (is_hung(name)) {
    // An injected hang (faults.cpp): the power button goes unanswered; the ladder's last rung.
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(opt.stop_timeout);
    if (was_on) FL_RETURN_IF_ERROR(d.destroy());
    r.method = hypervisor::StopMethod::destroyed;
    r.elapsed = std::chrono::duration_cast<milliseconds>(Clock::now() - t0);
  } else {
    FL_ASSIGN_OR_RETURN(r, d.shutdown_ladder({opt.stop_timeout, milliseconds(250)}));
  }
  if (was_on) {
    // The stop's own stopped event arrives later, on libvirt's event thread (seconds later on a
    // loaded machine). Consumed here (bounded), it cannot be taken for the guest the caller
    // starts next stopping on its own ("the VM stopped").
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(2),
                [&] { return slots[name].stop_events > events_before; });
  }
  {
    std::lock_guard lock(mu);
    auto& slot = slots[name];
    slot.domain_state = DomainState::shut_off;
    slot.status = InstanceStatus::stopped;
    slot.healthy = false;
    if (slot.sim) slot.sim->power_off(r.method == hypervisor::StopMethod::graceful);
  }
  drop_link(name);
  publish("instance.state", {{"name", name},
                             {"status", to_string(InstanceStatus::stopped)},
                             {"stop_method", hypervisor::to_string(r.method)},
                             {"stop_ms", r.elapsed.count()}});
  return r;
}

void HostAgent::Impl::drop_link(const std::string& name) {
  std::unique_ptr<GuestLink> old;
  {
    std::lock_guard lock(mu);
    auto it = slots.find(name);
    if (it != slots.end()) old = std::move(it->second.link);
  }
  // `old` is destroyed here, outside mu: its reader thread may be waiting for mu.
}

void HostAgent::Impl::on_message(const std::string& name, const ReceivedMessage& m) {
  json::object event;
  std::string type;
  {
    std::lock_guard lock(mu);
    auto it = slots.find(name);
    if (it == slots.end()) return;
    auto& slot = it->second;
    if (auto* hb = std::get_if<Heartbeat>(&m.message)) {
      slot.last_hb = m;
      ++slot.heartbeats;
      if (!slot.first_hb_since_start && m.at >= slot.started_at) slot.first_hb_since_start = m;
      type = "instance.heartbeat";
      event = {{"name", name},       {"seq", hb->seq},         {"boot_id", hb->boot_id},
               {"image", hb->image}, {"counter", hb->counter}, {"uptime_ms", hb->uptime_ms}};
    } else if (auto* ack = std::get_if<Ack>(&m.message)) {
      slot.acks[ack->event_id] = m.at;
      const bool known = approve_locked(name, ack->event_id, m.at);
      type = "instance.ack";
      event = {{"name", name}, {"event_id", ack->event_id}, {"via", "channel"}, {"known", known}};
    } else if (auto* err = std::get_if<GuestError>(&m.message)) {
      slot.guest_error = err->message;
      type = "instance.guest_error";
      event = {{"name", name}, {"message", err->message}};
    } else if (auto* fin = std::get_if<Final>(&m.message)) {
      type = "instance.final";
      event = {{"name", name}, {"counter", fin->counter}, {"clean", fin->clean}};
    }
  }
  cv.notify_all();
  if (!type.empty()) publish(type, std::move(event));
}

void HostAgent::Impl::on_lifecycle(const hypervisor::LifecycleEvent& e) {
  // Runs on libvirt's event thread: record and return (publish happens without mu).
  if (e.kind == hypervisor::LifecycleKind::agent_connected ||
      e.kind == hypervisor::LifecycleKind::agent_disconnected) {
    on_agent_lifecycle(e);
    return;
  }
  if (e.kind != hypervisor::LifecycleKind::stopped && e.kind != hypervisor::LifecycleKind::crashed)
    return;
  bool unexpected = false;
  {
    std::lock_guard lock(mu);
    auto it = slots.find(e.domain);
    if (it == slots.end()) return;
    ++it->second.stop_events;
    it->second.domain_state = DomainState::shut_off;
    it->second.agent_connected = false;
    if (it->second.expect_running) {
      unexpected = true;
      it->second.status = InstanceStatus::failed;
      it->second.healthy = false;
    }
  }
  cv.notify_all();
  if (unexpected) {
    publish("instance.state", {{"name", e.domain},
                               {"status", to_string(InstanceStatus::failed)},
                               {"reason", "the VM stopped without the agent stopping it"}});
  }
}

void HostAgent::Impl::monitor_loop() {
  const auto healthy_window = opt.heartbeat_period * opt.healthy_periods;
  while (!stopping) {
    std::vector<std::string> to_connect;
    std::vector<std::pair<std::string, json::object>> events;
    {
      std::unique_lock lock(mu);
      const auto now = Clock::now();
      for (auto& [name, slot] : slots) {
        if (slot.expect_running && (!slot.link || slot.link->closed())) to_connect.push_back(name);
        // The built-in guest: a recent heartbeat since its start, from a VM not seen stopped (a
        // crashed VM's last heartbeat is still recent for a moment). A guest with its own image:
        // its VM runs and, once it has shown a guest agent, the agent is connected (its app's
        // health is the load balancer's probe).
        bool healthy = builtin_locked(name)
                           ? slot.expect_running && slot.last_hb &&
                                 now - slot.last_hb->at < healthy_window &&
                                 slot.first_hb_since_start.has_value() &&
                                 slot.domain_state != DomainState::shut_off
                           : slot.expect_running && slot.domain_state == DomainState::running &&
                                 (!slot.agent_seen || slot.agent_connected);
        if (healthy != slot.healthy) {
          slot.healthy = healthy;
          InstanceStatus status =
              healthy ? InstanceStatus::healthy
                      : (slot.expect_running ? InstanceStatus::failed : slot.status);
          if (!healthy && slot.status == InstanceStatus::starting)
            status = InstanceStatus::starting;
          slot.status = status;
          json::object ev{{"name", name}, {"status", to_string(status)}, {"healthy", healthy}};
          if (slot.last_hb) ev["image"] = std::get<Heartbeat>(slot.last_hb->message).image;
          events.emplace_back("instance.state", std::move(ev));
        }
      }
    }
    {
      // An Unhealthy host whose wanted guests are all healthy again is Ready again.
      std::lock_guard lock(mu);
      bool all_healthy = true;
      for (const auto& r : state.instances) {
        if (r.want_running && !slots[r.name].healthy) all_healthy = false;
      }
      if (state.state == HostState::unhealthy && active_job.empty() && all_healthy) {
        state.state = HostState::ready;
        (void)persist_locked();
        events.emplace_back("host.state", json::object{{"state", "Ready"},
                                                       {"step", "None"},
                                                       {"reason", "every guest is healthy again"}});
      }
    }
    for (auto& [type, ev] : events) publish(type, std::move(ev));
    if (!events.empty()) cv.notify_all();
    restart_failed_guests();
    for (const auto& name : to_connect) {
      auto link =
          GuestLink::connect(socket_path(name), milliseconds(30),
                             [this, name](const ReceivedMessage& m) { on_message(name, m); });
      if (!link.ok()) continue;
      std::unique_ptr<GuestLink> discard;
      {
        std::lock_guard lock(mu);
        auto it = slots.find(name);
        if (it != slots.end() && it->second.expect_running) {
          discard = std::move(it->second.link);
          it->second.link = std::move(link).value();
          if (auto* r = record_locked(name)) {
            (void)it->second.link->send_line(guestproto::to_line(InstanceIdentity{
                r->meta.service, r->meta.index, r->meta.ud, r->meta.fd, opt.host_id}));
          }
        } else {
          discard = std::move(link).value();
        }
      }
    }
    std::unique_lock lock(mu);
    cv.wait_for(lock, milliseconds(100), [&] { return stopping.load(); });
  }
}

}  // namespace fabriclab::agent
