// The host agent's model: instances, guest channels, health, persistence and recovery. The
// maintenance operations themselves are in operations.cpp.
//
// Recovery is one path for three situations: a fresh start, a restart after a crash or SIGKILL,
// and the emulated host reboot inside a host-os update. It opens the hypervisor, re-reads every
// domain, redefines the instances libvirt lost (the test driver forgets everything on reconnect;
// a real host would after a reinstall), reattaches to running guests' channels, and then either
// resumes the persisted operation or, with none, starts every instance the fabric wants running.

#include <filesystem>
#include <fstream>
#include <set>
#include <tuple>

#include "agent_impl.hpp"
#include "instance_files.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::agent {

namespace fs = std::filesystem;
using hypervisor::DomainState;

json::object GuestReport::to_json() const {
  json::object o{{"name", name},           {"notice_ms", notice_ms},
          {"ack_ms", ack_ms},       {"stop_method", stop_method},
          {"stop_ms", stop_ms},     {"down_ms", down_ms},
          {"pause_ms", pause_ms},   {"image_before", image_before},
          {"image_after", image_after}, {"counter_before", counter_before},
          {"counter_after", counter_after}, {"boot_id_before", boot_id_before},
          {"boot_id_after", boot_id_after}, {"ok", ok},
          {"error", error}};
  o["boot_id_source"] = boot_id_source;
  o["signals"] = json::object{{"heartbeat", signal_heartbeat}, {"guest_agent", signal_guest_agent}};
  o["os_up"] = os_up;
  if (data_check) {
    o["data_check"] = json::object{{"command", agent::to_json(data_check->check)["command"]},
                                   {"rule", data_check->check.rule},
                                   {"before", data_check->before},
                                   {"after", data_check->after},
                                   {"ok", data_check->ok},
                                   {"error", data_check->error}};
  }
  return o;
}

json::object Job::to_json() const {
  json::array g;
  for (const auto& r : guests) g.push_back(r.to_json());
  return {{"id", id},
          {"request", agent::to_json(request)},
          {"status", to_string(status)},
          {"step", step},
          {"error", error},
          {"started_at", started_at},
          {"finished_at", finished_at},
          {"host_image_before", host_image_before},
          {"host_image_after", host_image_after},
          {"event_id", event_id},
          {"guests", std::move(g)}};
}

Result<InstanceSpec> instance_spec_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(
      o, {"name", "service", "index", "ud", "fd", "image", "memory_mib", "mode", "drain", "drain_ms",
          "data_check", "probe"}));
  InstanceSpec s;
  FL_ASSIGN_OR_RETURN(s.meta, metadata_from_json(o));
  FL_ASSIGN_OR_RETURN(int64_t mem, get_int_or(o, "memory_mib", 64, 4096, 128));
  s.memory_mib = static_cast<uint32_t>(mem);
  FL_ASSIGN_OR_RETURN(s.mode, get_string(o, "mode", 16, false));
  if (s.mode.empty()) s.mode = "normal";
  if (s.mode != "normal" && s.mode != "ignore-power" && s.mode != "fail-app") {
    return make_error(Condition::invalid_argument, "field 'mode' must be normal, ignore-power or fail-app");
  }
  FL_ASSIGN_OR_RETURN(s.drain, get_bool_or(o, "drain", true));
  FL_ASSIGN_OR_RETURN(s.drain_ms, get_int_or(o, "drain_ms", 0, 600000, 0));
  if (const auto* dc = o.if_contains("data_check")) {
    FL_ASSIGN_OR_RETURN(s.data_check, data_check_from_json(*dc, "data_check"));
  }
  if (const auto* pr = o.if_contains("probe")) {
    FL_ASSIGN_OR_RETURN(s.probe, app_probe_from_json(*pr, "probe"));
  }
  FL_ASSIGN_OR_RETURN(s.name, get_string(o, "name", 48, false));
  if (s.name.empty()) s.name = s.meta.service + "-" + std::to_string(s.meta.index);
  for (char c : s.name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return make_error(Condition::invalid_argument, "field 'name' must be [A-Za-z0-9_-]: '" + s.name + "'");
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------

HostAgent::HostAgent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<HostAgent>> HostAgent::create(AgentOptions options,
                                                     std::shared_ptr<EventFeed> feed) {
  if (options.state_dir.empty() || options.state_dir[0] != '/') {
    return make_error(Condition::invalid_argument, "state_dir must be an absolute path");
  }
  if (options.hypervisor_uri.empty()) options.hypervisor_uri = "qemu:///embed?root=" + options.state_dir + "/hv";
  if (options.host_images_dir.empty()) options.host_images_dir = options.state_dir + "/host-images";
  if ((options.state_dir + "/s/").size() + 48 + 5 >= 108) {
    return make_error(Condition::invalid_argument,
                      "state_dir too long for the guests' channel sockets (keep it under 50 characters): " +
                          options.state_dir);
  }
  std::optional<GuestSubnet> subnet;
  if (!options.guest_subnet.empty()) {
    FL_ASSIGN_OR_RETURN(subnet, GuestSubnet::parse(options.guest_subnet, "guest_subnet"));
  }
  if (!options.guest_bridge.empty()) {
    if (!hypervisor::valid_bridge_name(options.guest_bridge)) {
      return make_error(Condition::invalid_argument,
                        "guest_bridge must be 1..15 characters of [A-Za-z0-9_.-]: '" + options.guest_bridge + "'");
    }
    if (!subnet) return make_error(Condition::invalid_argument, "guest_bridge needs guest_subnet");
  }
  if (!options.dhcp_hosts_dir.empty()) {
    if (options.dhcp_hosts_dir[0] != '/') {
      return make_error(Condition::invalid_argument, "dhcp_hosts_dir must be an absolute path");
    }
    if (!subnet) return make_error(Condition::invalid_argument, "dhcp_hosts_dir needs guest_subnet");
  }
  std::error_code ec;
  for (const char* sub : {"", "/vm", "/s", "/sim"}) fs::create_directories(options.state_dir + sub, ec);
  if (ec) return make_error(Condition::transient, "cannot create " + options.state_dir + ": " + ec.message());
  if (!options.dhcp_hosts_dir.empty()) {
    fs::create_directories(options.dhcp_hosts_dir, ec);
    if (ec) return make_error(Condition::transient, "cannot create " + options.dhcp_hosts_dir + ": " + ec.message());
  }

  auto impl = std::make_unique<Impl>();
  impl->opt = options;
  impl->subnet = subnet;
  impl->feed = std::move(feed);
  FL_ASSIGN_OR_RETURN(auto hs, HostImageStore::open(options.host_images_dir));
  impl->host_store.emplace(std::move(hs));
  FL_ASSIGN_OR_RETURN(auto gs, GuestImageStore::open(options.guest_images_dirs));
  impl->guest_store.emplace(std::move(gs));

  auto loaded = load_state(impl->state_path());
  if (loaded.ok()) {
    impl->state = std::move(loaded).value();
    if (impl->state.host_id != options.host_id) {
      return make_error(Condition::invalid_argument, "state dir belongs to host '" + impl->state.host_id +
                                                         "', not '" + options.host_id + "'");
    }
  } else if (loaded.condition() == Condition::not_found) {
    impl->state.host_id = options.host_id;
  } else {
    return loaded.error();
  }
  if (auto cur = impl->host_store->current()) impl->state.host_image = cur->version;
  {
    // Instances from before the guest network (or from before a subnet was configured) get their
    // address now; every instance gets a vmId. Addresses outside the subnet are kept as they are.
    Impl& p = *impl;
    bool changed = false;
    for (auto& r : p.state.instances) {
      if (r.vm_id.empty()) {
        r.vm_id = new_guid();
        changed = true;
      }
      if (r.address.empty() && p.subnet) {
        FL_ASSIGN_OR_RETURN(auto am, p.allocate_address_locked());
        std::tie(r.address, r.mac) = am;
        changed = true;
      }
    }
    if (changed) FL_RETURN_IF_ERROR(p.persist_locked());
    if (!options.dhcp_hosts_dir.empty()) {
      for (const auto& r : p.state.instances) {
        if (!r.address.empty()) FL_RETURN_IF_ERROR(write_dhcp_host_file(options.dhcp_hosts_dir, r.name, r.mac, r.address));
      }
    }
  }

  Impl* p = impl.get();
  FL_RETURN_IF_ERROR(p->recover());
  p->monitor = std::thread([p] { p->monitor_loop(); });
  std::unique_ptr<HostAgent> agent(new HostAgent(std::move(impl)));
  std::string resume;
  {
    std::lock_guard lock(p->mu);
    if (p->state.operation) resume = p->state.operation->id;
  }
  if (!resume.empty()) {
    logger("agent")->warn("[host:{}] resuming operation {} after a restart", p->opt.host_id, resume);
    std::lock_guard lock(p->mu);
    Job job;
    job.id = resume;
    job.request = p->state.operation->request;
    job.started_at = p->state.operation->started_at;
    job.host_image_before = p->state.operation->previous_host_image;
    job.event_id = p->state.operation->event_id;
    p->jobs[resume] = job;
    p->active_job = resume;
    p->worker = std::thread([p, resume] { p->run_job(resume, true); });
  }
  return agent;
}

HostAgent::~HostAgent() {
  impl_->stopping = true;
  impl_->cv.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
  if (impl_->monitor.joinable()) impl_->monitor.join();
  std::map<std::string, GuestSlot> slots;
  {
    std::lock_guard lock(impl_->mu);
    slots.swap(impl_->slots);
  }
  slots.clear();  // links and simulated guests end outside the lock
  std::lock_guard lock(impl_->lv_mu);
  impl_->close_hypervisor();
}

// ---------------------------------------------------------------------------------------------

Status HostAgent::Impl::persist_locked() { return save_state(state_path(), state); }

Status HostAgent::Impl::set_want_running(const std::string& name, bool want) {
  std::lock_guard lock(mu);
  auto* r = record_locked(name);
  if (!r) return make_error(Condition::not_found, "instance '" + name + "' not found");
  r->want_running = want;
  return persist_locked();
}

Status HostAgent::Impl::check_not_updating(std::string_view refusal) {
  std::lock_guard lock(mu);
  if (state.state == HostState::updating || !active_job.empty()) {
    return make_error(Condition::invalid_state, "host " + opt.host_id + " is Updating (job " + active_job +
                                                    "): " + std::string(refusal) + " until it is Ready");
  }
  return {};
}

void HostAgent::Impl::publish(std::string type, json::object fields) {
  fields["host"] = opt.host_id;
  if (feed) feed->publish(std::move(type), std::move(fields));
}

void HostAgent::Impl::set_host_state(HostState s, UpdateStep st) {
  {
    std::lock_guard lock(mu);
    state.state = s;
    step = st;
    (void)persist_locked();
  }
  cv.notify_all();
  logger("agent")->info("[host:{}] {} {}", opt.host_id, to_string(s), st == UpdateStep::none ? "" : to_string(st));
  publish("host.state", {{"state", to_string(s)}, {"step", to_string(st)}});
}

InstanceRecord* HostAgent::Impl::record_locked(const std::string& name) {
  for (auto& r : state.instances) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

Result<std::pair<std::string, std::string>> HostAgent::Impl::allocate_address_locked() {
  if (!subnet) return std::pair<std::string, std::string>{};
  std::set<int> used;
  for (const auto& r : state.instances) {
    if (auto k = subnet->slot_of(r.address)) used.insert(*k);
  }
  FL_ASSIGN_OR_RETURN(int slot, lowest_free_slot(used));
  return std::pair{subnet->address(slot), subnet->mac(slot)};
}

std::unique_ptr<SimGuest> HostAgent::Impl::make_sim(const InstanceRecord& rec) const {
  return std::make_unique<SimGuest>(socket_path(rec.name), opt.state_dir + "/sim/" + rec.name + ".counter",
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
  if (!conn) return make_error(Condition::transient, "the hypervisor is not connected (host rebooting)");
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
  if (subnet && !rec.address.empty()) c += " fabriclab.ip=" + rec.address + "/24 fabriclab.gw=" + subnet->gateway();
  return c;
}

Result<hypervisor::Domain> HostAgent::Impl::define_domain(const InstanceRecord& rec) {
  FL_ASSIGN_OR_RETURN(auto image, guest_store->get(rec.meta.image));
  hypervisor::DomainSpec s;
  s.name = rec.name;
  s.memory_mib = rec.memory_mib;
  FL_ASSIGN_OR_RETURN(s.boot, private_boot_files(instance_files_dir(vm_dir(), rec.name), image));
  if (image.builtin()) {
    s.boot.cmdline = builtin_cmdline(rec);
  } else {
    // A guest with its own OS disk boots its own way (its cmdline, DHCP for its address); the
    // overlay was made when the instance was created or reimaged.
    if (rec.os_disk.empty()) return make_error(Condition::internal, rec.name + ": no OS disk overlay");
    // The drain switches go along (an Azure-style handler in the guest may read them, as the
    // Debian image's does); any other guest ignores them.
    s.boot.cmdline = image.cmdline + " fabriclab.drain=" + (rec.drain ? "1" : "0") +
                     " fabriclab.drain_ms=" + std::to_string(drain_of(rec).count());
    s.os_disk = rec.os_disk;
    s.os_disk_format = "qcow2";
  }
  if (!opt.guest_bridge.empty() && !rec.mac.empty()) s.nic = hypervisor::NicSpec{rec.mac, opt.guest_bridge};
  // Every guest gets the qemu-guest-agent channel: a guest that runs the agent answers on it.
  s.guest_agent = true;
  s.console_log = vm_dir() + "/" + rec.name + ".console.log";
  s.data_disk = vm_dir() + "/" + rec.name + ".data.raw";
  s.channel_socket = socket_path(rec.name);
  s.metadata = rec.meta;
  FL_RETURN_IF_ERROR(ensure_data_disk(s.data_disk, image.builtin() ? kBuiltinDataDiskBytes : kDefaultDataDiskBytes));
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
    // An injected slow boot (faults.cpp): the VM starts late; the instance shows Starting meanwhile.
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
    publish("instance.state", {{"name", name}, {"status", to_string(InstanceStatus::starting)}, {"image", image},
                               {"restored", restored}});
  }
  return {};
}

Result<hypervisor::ShutdownResult> HostAgent::Impl::stop_guest(const std::string& name, bool force) {
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
    cv.wait_for(lock, std::chrono::seconds(2), [&] { return slots[name].stop_events > events_before; });
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
  publish("instance.state", {{"name", name}, {"status", to_string(InstanceStatus::stopped)},
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
      event = {{"name", name}, {"seq", hb->seq}, {"boot_id", hb->boot_id}, {"image", hb->image},
               {"counter", hb->counter}, {"uptime_ms", hb->uptime_ms}};
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
  if (e.kind == hypervisor::LifecycleKind::agent_connected || e.kind == hypervisor::LifecycleKind::agent_disconnected) {
    on_agent_lifecycle(e);
    return;
  }
  if (e.kind != hypervisor::LifecycleKind::stopped && e.kind != hypervisor::LifecycleKind::crashed) return;
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
    publish("instance.state", {{"name", e.domain}, {"status", to_string(InstanceStatus::failed)},
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
        // crashed VM's last heartbeat is still recent for a moment). A guest with its own image: its
        // VM runs and, once it has shown a guest agent, the agent is connected (its app's health
        // is the load balancer's probe).
        bool healthy = builtin_locked(name)
                           ? slot.expect_running && slot.last_hb && now - slot.last_hb->at < healthy_window &&
                                 slot.first_hb_since_start.has_value() && slot.domain_state != DomainState::shut_off
                           : slot.expect_running && slot.domain_state == DomainState::running &&
                                 (!slot.agent_seen || slot.agent_connected);
        if (healthy != slot.healthy) {
          slot.healthy = healthy;
          InstanceStatus status =
              healthy ? InstanceStatus::healthy : (slot.expect_running ? InstanceStatus::failed : slot.status);
          if (!healthy && slot.status == InstanceStatus::starting) status = InstanceStatus::starting;
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
        events.emplace_back("host.state", json::object{{"state", "Ready"}, {"step", "None"},
                                                       {"reason", "every guest is healthy again"}});
      }
    }
    for (auto& [type, ev] : events) publish(type, std::move(ev));
    if (!events.empty()) cv.notify_all();
    restart_failed_guests();
    for (const auto& name : to_connect) {
      auto link = GuestLink::connect(socket_path(name), milliseconds(30),
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

Status HostAgent::Impl::recover() {
  std::lock_guard lv(lv_mu);
  close_hypervisor();
  FL_RETURN_IF_ERROR(open_hypervisor());
  FL_ASSIGN_OR_RETURN(auto domains, conn->list());
  std::map<std::string, DomainState> present;
  for (const auto& d : domains) present[d.name] = d.state;
  std::vector<InstanceRecord> records;
  bool operation_pending;
  {
    std::lock_guard lock(mu);
    records = state.instances;
    operation_pending = state.operation.has_value();
  }
  std::vector<std::string> to_start;
  for (const auto& rec : records) {
    if (!present.count(rec.name)) {
      auto d = define_domain(rec);
      if (!d.ok()) return make_error(d.condition(), "cannot redefine '" + rec.name + "': " + d.error().message);
      present[rec.name] = DomainState::shut_off;
      publish("instance.redefined", {{"name", rec.name}});
    }
    bool running = present[rec.name] == DomainState::running || present[rec.name] == DomainState::paused;
    {
      std::lock_guard lock(mu);
      auto& slot = slots[rec.name];
      slot.domain_state = present[rec.name];
      slot.expect_running = running;
      slot.status = running ? InstanceStatus::starting : InstanceStatus::stopped;
      if (running) slot.started_at = Clock::time_point{};  // any heartbeat counts after a reattach
      if (simulated && !slot.sim) slot.sim = make_sim(rec);
    }
    if (!running && rec.want_running && !operation_pending) to_start.push_back(rec.name);
  }
  for (const auto& name : to_start) {
    if (auto s = start_guest(name); !s.ok()) {
      logger("agent")->error("[host:{}] cannot restart {}: {}", opt.host_id, name, s.error().message);
      publish("instance.state", {{"name", name}, {"status", to_string(InstanceStatus::failed)}, {"reason", s.error().message}});
    } else {
      publish("instance.restarted", {{"name", name}, {"reason", "recovery: the fabric wants it running"}});
    }
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// Views

json::object HostAgent::Impl::instance_json_locked(const std::string& name) const {
  json::object o;
  const InstanceRecord* rec = nullptr;
  for (const auto& r : state.instances) {
    if (r.name == name) rec = &r;
  }
  if (!rec) return o;
  o["name"] = name;
  o["service"] = rec->meta.service;
  o["index"] = rec->meta.index;
  o["ud"] = rec->meta.ud;
  o["fd"] = rec->meta.fd;
  o["image"] = rec->meta.image;
  o["memory_mib"] = rec->memory_mib;
  o["want_running"] = rec->want_running;
  o["address"] = rec->address;
  o["mac"] = rec->mac;
  o["vm_id"] = rec->vm_id;
  o["drain"] = rec->drain;
  o["drain_ms"] = drain_of(*rec).count();
  auto it = slots.find(name);
  if (it != slots.end()) {
    const auto& s = it->second;
    o["status"] = to_string(s.status);
    o["healthy"] = s.healthy;
    o["domain_state"] = hypervisor::to_string(s.domain_state);
    o["heartbeats"] = s.heartbeats;
    o["signals"] = json::object{{"heartbeat", s.heartbeats > 0}, {"guest_agent", s.agent_seen}};
    o["guest_agent_connected"] = s.agent_connected;
    if (!s.guest_error.empty()) o["guest_error"] = s.guest_error;
    if (s.last_hb) {
      const auto& hb = std::get<Heartbeat>(s.last_hb->message);
      o["last_heartbeat"] = json::object{
          {"seq", hb.seq}, {"boot_id", hb.boot_id}, {"image", hb.image}, {"counter", hb.counter},
          {"age_ms", std::chrono::duration_cast<milliseconds>(Clock::now() - s.last_hb->at).count()}};
    }
    if (s.link) {
      auto st = s.link->stats();
      o["channel"] = json::object{{"lines", st.lines}, {"malformed", st.malformed}, {"oversized", st.oversized}};
    }
  }
  return o;
}

json::object HostAgent::host_json() const {
  std::lock_guard lock(impl_->mu);
  const auto& s = impl_->state;
  int running = 0;
  for (const auto& [n, slot] : impl_->slots) running += slot.expect_running ? 1 : 0;
  return {{"host_id", s.host_id},
          {"fault_domain", impl_->opt.fault_domain},
          {"state", to_string(s.state)},
          {"step", to_string(impl_->step)},
          {"host_image", s.host_image},
          {"hypervisor", impl_->opt.hypervisor_uri},
          {"simulated", impl_->simulated},
          {"capacity", impl_->opt.capacity},
          {"instances", s.instances.size()},
          {"running", running},
          {"active_job", impl_->active_job}};
}

json::array HostAgent::instances_json() const {
  std::lock_guard lock(impl_->mu);
  json::array a;
  for (const auto& r : impl_->state.instances) a.push_back(impl_->instance_json_locked(r.name));
  return a;
}

Result<json::object> HostAgent::instance_json(const std::string& name) const {
  std::lock_guard lock(impl_->mu);
  auto o = impl_->instance_json_locked(name);
  if (o.empty()) return make_error(Condition::not_found, "instance '" + name + "' not found");
  return o;
}

json::object HostAgent::snapshot() const {
  json::object o{{"host", host_json()}, {"instances", instances_json()}};
  std::lock_guard lock(impl_->mu);
  if (!impl_->active_job.empty()) o["job"] = impl_->jobs.at(impl_->active_job).to_json();
  return o;
}

// ---------------------------------------------------------------------------------------------
// Instance lifecycle

Result<json::object> HostAgent::create_instance(const InstanceSpec& spec) {
  auto& p = *impl_;
  FL_RETURN_IF_ERROR(p.check_not_updating("it takes no new instances"));
  std::lock_guard lv(p.lv_mu);
  {
    std::lock_guard lock(p.mu);
    if (p.state.state != HostState::ready) {
      return make_error(Condition::invalid_state, "host " + p.opt.host_id + " is " +
                                                      std::string(to_string(p.state.state)) +
                                                      ": it takes no new instances until it is Ready");
    }
    if (p.record_locked(spec.name)) {
      return make_error(Condition::already_exists, "instance '" + spec.name + "' already exists");
    }
    if (static_cast<int>(p.state.instances.size()) >= p.opt.capacity) {
      return make_error(Condition::invalid_state, "host " + p.opt.host_id + " is full (capacity " +
                                                      std::to_string(p.opt.capacity) + ")");
    }
  }
  FL_ASSIGN_OR_RETURN(auto image, p.guest_store->get(spec.meta.image));
  InstanceRecord rec{spec.name, spec.meta, spec.memory_mib, true, spec.mode};
  rec.drain = spec.drain;
  rec.drain_ms = spec.drain_ms;
  rec.data_check = spec.data_check;
  rec.probe = spec.probe;
  rec.vm_id = new_guid();
  // Checked before anything is made, so a refusal leaves no half-made VM behind.
  FL_RETURN_IF_ERROR(check_disk_reserve(
      p.vm_dir(), bytes_needed(image, image.builtin() ? kBuiltinDataDiskBytes : kDefaultDataDiskBytes, false),
      p.opt.disk_reserve_mib << 20));
  const std::string files = instance_files_dir(p.vm_dir(), rec.name);
  auto undo_files = [&] {
    std::error_code ec;
    fs::remove_all(files, ec);
    fs::remove(p.vm_dir() + "/" + rec.name + ".data.raw", ec);
  };

  {
    // lv_mu serialises creations, so the slot found here is still free when the record is added.
    std::lock_guard lock(p.mu);
    FL_ASSIGN_OR_RETURN(auto am, p.allocate_address_locked());
    std::tie(rec.address, rec.mac) = am;
  }
  if (!p.opt.dhcp_hosts_dir.empty()) {
    // Before the VM exists, so dnsmasq knows the lease when the guest first asks.
    FL_RETURN_IF_ERROR(write_dhcp_host_file(p.opt.dhcp_hosts_dir, rec.name, rec.mac, rec.address));
  }
  Result<hypervisor::Domain> defined = make_error(Condition::internal, "not defined");
  if (!image.builtin()) {
    auto overlay = create_os_overlay(files, image, 1);
    if (overlay.ok()) {
      rec.os_disk = *overlay;
      rec.os_gen = 1;
    } else {
      defined = overlay.error();
    }
  }
  if (image.builtin() || !rec.os_disk.empty()) defined = p.define_domain(rec);
  if (!defined.ok()) {
    if (!p.opt.dhcp_hosts_dir.empty()) (void)remove_dhcp_host_file(p.opt.dhcp_hosts_dir, rec.name);
    undo_files();
    return defined.error();
  }
  {
    std::lock_guard lock(p.mu);
    p.state.instances.push_back(rec);
    auto& slot = p.slots[rec.name];
    slot.status = InstanceStatus::creating;
    if (p.simulated) slot.sim = p.make_sim(rec);
    FL_RETURN_IF_ERROR(p.persist_locked());
  }
  p.publish("instance.created", {{"name", rec.name}, {"service", rec.meta.service}, {"index", rec.meta.index},
                                 {"ud", rec.meta.ud}, {"fd", rec.meta.fd}, {"image", rec.meta.image},
                                 {"address", rec.address}, {"mac", rec.mac}});
  FL_RETURN_IF_ERROR(p.start_guest(rec.name));
  std::lock_guard lock(p.mu);
  return p.instance_json_locked(rec.name);
}

Status HostAgent::start_instance(const std::string& name) {
  auto& p = *impl_;
  FL_RETURN_IF_ERROR(p.check_not_updating("it starts no instance"));
  std::lock_guard lv(p.lv_mu);
  FL_RETURN_IF_ERROR(p.set_want_running(name, true));
  return p.start_guest(name);
}

Status HostAgent::stop_instance(const std::string& name) {
  auto& p = *impl_;
  FL_RETURN_IF_ERROR(p.check_not_updating("it stops no instance on request"));
  std::lock_guard lv(p.lv_mu);
  FL_RETURN_IF_ERROR(p.set_want_running(name, false));
  FL_RETURN_IF_ERROR(p.stop_guest(name, false));
  return {};
}

Result<std::string> HostAgent::domain_xml(const std::string& name) {
  auto& p = *impl_;
  std::lock_guard lv(p.lv_mu);
  FL_ASSIGN_OR_RETURN(auto d, p.domain(name));
  return d.xml(true);
}

Status HostAgent::delete_instance(const std::string& name) {
  auto& p = *impl_;
  FL_RETURN_IF_ERROR(p.check_not_updating("it deletes no instance"));
  std::lock_guard lv(p.lv_mu);
  {
    std::lock_guard lock(p.mu);
    if (!p.record_locked(name)) return make_error(Condition::not_found, "instance '" + name + "' not found");
    if (p.state.state == HostState::updating) {
      return make_error(Condition::invalid_state, "host " + p.opt.host_id + " is Updating");
    }
  }
  FL_RETURN_IF_ERROR(p.stop_guest(name, true));
  if (auto d = p.domain(name); d.ok()) FL_RETURN_IF_ERROR(d->undefine());
  std::unique_ptr<SimGuest> sim;
  {
    std::lock_guard lock(p.mu);
    std::erase_if(p.state.instances, [&](const InstanceRecord& r) { return r.name == name; });
    sim = std::move(p.slots[name].sim);
    p.slots.erase(name);
    FL_RETURN_IF_ERROR(p.persist_locked());
  }
  std::error_code ec;
  fs::remove(p.vm_dir() + "/" + name + ".data.raw", ec);
  fs::remove_all(instance_files_dir(p.vm_dir(), name), ec);
  if (!p.opt.dhcp_hosts_dir.empty()) {
    if (auto s = remove_dhcp_host_file(p.opt.dhcp_hosts_dir, name); !s.ok()) {
      logger("agent")->warn("[host:{}] {}", p.opt.host_id, s.error().message);
    }
  }
  p.publish("instance.deleted", {{"name", name}});
  return {};
}

// ---------------------------------------------------------------------------------------------
// Images

json::array HostAgent::host_images_json() const {
  json::array a;
  std::lock_guard store(impl_->store_mu);
  auto list = impl_->host_store->list();
  auto cur = impl_->host_store->current();
  auto prev = impl_->host_store->previous();
  if (!list.ok()) return a;
  for (const auto& img : *list) {
    auto o = to_json(img);
    o["current"] = cur && cur->version == img.version;
    o["previous"] = prev && prev->version == img.version;
    a.push_back(std::move(o));
  }
  return a;
}

Result<json::object> HostAgent::stage_host_image(const std::string& version, const std::string& path,
                                                 const std::string& sha256) {
  Result<HostImage> staged = make_error(Condition::internal, "not staged");
  {
    std::lock_guard store(impl_->store_mu);
    staged = impl_->host_store->stage(version, path, sha256);
  }
  FL_ASSIGN_OR_RETURN(auto img, staged);
  impl_->publish("image.staged", {{"version", version}, {"sha256", img.sha256}});
  return to_json(img);
}

json::array HostAgent::guest_images_json() const {
  json::array a;
  for (const auto& g : impl_->guest_store->list()) a.push_back(to_json(g));
  return a;
}

}  // namespace fabriclab::agent
