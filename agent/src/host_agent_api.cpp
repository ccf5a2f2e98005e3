// The host agent's API side: the JSON views of the host and its instances, and the instance and
// image commands behind the REST API (the maintenance operations are in operations.cpp).

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
          {"seq", hb.seq},
          {"boot_id", hb.boot_id},
          {"image", hb.image},
          {"counter", hb.counter},
          {"age_ms",
           std::chrono::duration_cast<milliseconds>(Clock::now() - s.last_hb->at).count()}};
    }
    if (s.link) {
      auto st = s.link->stats();
      o["channel"] = json::object{
          {"lines", st.lines}, {"malformed", st.malformed}, {"oversized", st.oversized}};
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
      return make_error(Condition::invalid_state,
                        "host " + p.opt.host_id + " is " + std::string(to_string(p.state.state)) +
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
  FL_RETURN_IF_ERROR(check_firmware(image, p.opt.ovmf_code, p.opt.ovmf_vars));
  FL_RETURN_IF_ERROR(check_disk_reserve(
      p.vm_dir(),
      bytes_needed(image, image.builtin() ? kBuiltinDataDiskBytes : kDefaultDataDiskBytes, false),
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
  json::object created = identity_json(rec.name, rec.meta);
  created.insert({{"address", rec.address}, {"mac", rec.mac}});
  p.publish("instance.created", std::move(created));
  FL_RETURN_IF_ERROR(p.start_guest(rec.name));
  std::lock_guard lock(p.mu);
  return p.instance_json_locked(rec.name);
}

Status HostAgent::start_instance(const std::string& name) {
  auto& p = *impl_;
  FL_RETURN_IF_ERROR(p.check_not_updating("it starts no instance"));
  std::shared_lock lv(p.lv_mu);  // one domain: several instances may start at once
  FL_RETURN_IF_ERROR(p.set_want_running(name, true));
  return p.start_guest(name);
}

Status HostAgent::stop_instance(const std::string& name) {
  auto& p = *impl_;
  FL_RETURN_IF_ERROR(p.check_not_updating("it stops no instance on request"));
  std::shared_lock lv(p.lv_mu);  // one domain: several instances may stop at once
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

Result<std::string> HostAgent::delete_instance(const std::string& name, bool keep_data) {
  auto& p = *impl_;
  FL_RETURN_IF_ERROR(p.check_not_updating("it deletes no instance"));
  std::lock_guard lv(p.lv_mu);
  {
    std::lock_guard lock(p.mu);
    if (!p.record_locked(name))
      return make_error(Condition::not_found, "instance '" + name + "' not found");
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
  std::string kept;
  const std::string data = p.vm_dir() + "/" + name + ".data.raw";
  if (keep_data && fs::exists(data, ec)) {
    // Kept aside, not deleted: the orchestrator removed a duplicate whose data may be newer.
    const std::string dir = p.opt.state_dir + "/kept-data";
    fs::create_directories(dir, ec);
    kept = dir + "/" + name + "-" + std::to_string(unix_now_ms()) + ".data.raw";
    fs::rename(data, kept, ec);
    if (ec) {
      logger("agent")->error("[host:{}] cannot keep {}'s data disk: {}", p.opt.host_id, name,
                             ec.message());
      kept.clear();
    }
  }
  fs::remove(data, ec);
  fs::remove_all(instance_files_dir(p.vm_dir(), name), ec);
  if (!p.opt.dhcp_hosts_dir.empty()) {
    if (auto s = remove_dhcp_host_file(p.opt.dhcp_hosts_dir, name); !s.ok()) {
      logger("agent")->warn("[host:{}] {}", p.opt.host_id, s.error().message);
    }
  }
  p.publish("instance.deleted", {{"name", name}, {"data_disk_kept", kept}});
  return kept;
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

Result<json::object> HostAgent::stage_host_image(const std::string& version,
                                                 const std::string& path,
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
