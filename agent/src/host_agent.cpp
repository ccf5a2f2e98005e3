// The host agent's model: instances, guest channels, health, persistence and recovery. The
// maintenance operations themselves are in operations.cpp.
//
// Recovery is one path for three situations: a fresh start, a restart after a crash or SIGKILL,
// and the emulated host reboot inside a host-os update. It opens the hypervisor, re-reads every
// domain, redefines the instances libvirt lost (the test driver forgets everything on reconnect;
// a real host would after a reinstall), reattaches to running guests' channels, and then either
// resumes the persisted operation or, with none, starts every instance the fabric wants running.//
// This file: the agent's creation and teardown, its small internal helpers and recovery. The
// guests' lifecycle (domains, channels, the monitor loop) is in host_agent_guests.cpp; the views
// and the instance and image commands in host_agent_api.cpp.

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

json::object GuestReport::to_json() const {
  json::object o{{"name", name},
                 {"notice_ms", notice_ms},
                 {"ack_ms", ack_ms},
                 {"stop_method", stop_method},
                 {"stop_ms", stop_ms},
                 {"down_ms", down_ms},
                 {"pause_ms", pause_ms},
                 {"image_before", image_before},
                 {"image_after", image_after},
                 {"counter_before", counter_before},
                 {"counter_after", counter_after},
                 {"boot_id_before", boot_id_before},
                 {"boot_id_after", boot_id_after},
                 {"ok", ok},
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
  FL_RETURN_IF_ERROR(check_fields(o, {"name", "service", "index", "ud", "fd", "image", "memory_mib",
                                      "mode", "drain", "drain_ms", "data_check", "probe"}));
  InstanceSpec s;
  FL_ASSIGN_OR_RETURN(s.meta, metadata_from_json(o));
  FL_ASSIGN_OR_RETURN(int64_t mem, get_int_or(o, "memory_mib", 64, 4096, 128));
  s.memory_mib = static_cast<uint32_t>(mem);
  FL_ASSIGN_OR_RETURN(s.mode, get_string(o, "mode", 16, false));
  if (s.mode.empty()) s.mode = "normal";
  if (s.mode != "normal" && s.mode != "ignore-power" && s.mode != "fail-app") {
    return make_error(Condition::invalid_argument,
                      "field 'mode' must be normal, ignore-power or fail-app");
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
      return make_error(Condition::invalid_argument,
                        "field 'name' must be [A-Za-z0-9_-]: '" + s.name + "'");
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
  if (options.hypervisor_uri.empty())
    options.hypervisor_uri = "qemu:///embed?root=" + options.state_dir + "/hv";
  if (options.host_images_dir.empty()) options.host_images_dir = options.state_dir + "/host-images";
  if ((options.state_dir + "/s/").size() + 48 + 5 >= 108) {
    return make_error(
        Condition::invalid_argument,
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
                        "guest_bridge must be 1..15 characters of [A-Za-z0-9_.-]: '" +
                            options.guest_bridge + "'");
    }
    if (!subnet) return make_error(Condition::invalid_argument, "guest_bridge needs guest_subnet");
  }
  if (!options.dhcp_hosts_dir.empty()) {
    if (options.dhcp_hosts_dir[0] != '/') {
      return make_error(Condition::invalid_argument, "dhcp_hosts_dir must be an absolute path");
    }
    if (!subnet)
      return make_error(Condition::invalid_argument, "dhcp_hosts_dir needs guest_subnet");
  }
  if (options.parallel_guests < 1 || options.parallel_guests > 64) {
    return make_error(Condition::invalid_argument, "parallel_guests must be in 1..64, not " +
                                                       std::to_string(options.parallel_guests));
  }
  std::error_code ec;
  for (const char* sub : {"", "/vm", "/s", "/sim"})
    fs::create_directories(options.state_dir + sub, ec);
  if (ec)
    return make_error(Condition::transient,
                      "cannot create " + options.state_dir + ": " + ec.message());
  if (!options.dhcp_hosts_dir.empty()) {
    fs::create_directories(options.dhcp_hosts_dir, ec);
    if (ec)
      return make_error(Condition::transient,
                        "cannot create " + options.dhcp_hosts_dir + ": " + ec.message());
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
      return make_error(
          Condition::invalid_argument,
          "state dir belongs to host '" + impl->state.host_id + "', not '" + options.host_id + "'");
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
        if (!r.address.empty())
          FL_RETURN_IF_ERROR(
              write_dhcp_host_file(options.dhcp_hosts_dir, r.name, r.mac, r.address));
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
    logger("agent")->warn("[host:{}] resuming operation {} after a restart", p->opt.host_id,
                          resume);
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
    return make_error(Condition::invalid_state, "host " + opt.host_id + " is Updating (job " +
                                                    active_job + "): " + std::string(refusal) +
                                                    " until it is Ready");
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
  logger("agent")->info("[host:{}] {} {}", opt.host_id, to_string(s),
                        st == UpdateStep::none ? "" : to_string(st));
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
      if (!d.ok())
        return make_error(d.condition(),
                          "cannot redefine '" + rec.name + "': " + d.error().message);
      present[rec.name] = DomainState::shut_off;
      publish("instance.redefined", {{"name", rec.name}});
    }
    bool running =
        present[rec.name] == DomainState::running || present[rec.name] == DomainState::paused;
    {
      std::lock_guard lock(mu);
      auto& slot = slots[rec.name];
      slot.domain_state = present[rec.name];
      slot.expect_running = running;
      slot.status = running ? InstanceStatus::starting : InstanceStatus::stopped;
      if (running) slot.started_at = Clock::time_point{};  // any heartbeat counts after a reattach
      if (simulated && !slot.sim) slot.sim = make_sim(rec);
    }
    if (!running && rec.want_running && !operation_pending && !opt.hold_guests)
      to_start.push_back(rec.name);
  }
  for (const auto& name : to_start) {
    if (auto s = start_guest(name); !s.ok()) {
      logger("agent")->error("[host:{}] cannot restart {}: {}", opt.host_id, name,
                             s.error().message);
      publish("instance.state", {{"name", name},
                                 {"status", to_string(InstanceStatus::failed)},
                                 {"reason", s.error().message}});
    } else {
      publish("instance.restarted",
              {{"name", name}, {"reason", "recovery: the fabric wants it running"}});
    }
  }
  return {};
}

}  // namespace fabriclab::agent
