// Host watchers and service healing.
//
// One thread per host asks its agent, every `poll`, for the host and its instances, and folds
// the answers into the mirror: host state, step and image; per instance status, health, image
// and data counter. A health change is a point on the instance's timeline (the prober's record)
// and may change its service's availability; every change is an event.
//
// A host that does not answer is not declared dead at once (a host reboot under load can make
// one call slow): only after `unhealthy_after` without an answer does it become Unhealthy and its
// instances count as down. With healing on, it is first fenced (its power control must confirm it
// off: controller_fencing.cpp), and only then are its instances placed again on Ready hosts
// (healing.cpp chooses where). A host that answers again is reconciled first (Reconciling: the
// copies it still runs of instances healed away are removed) and then becomes what its agent says.
// Every poll also compares what the agent holds with what is placed there (host.drift).

#include <fmt/format.h>

#include <thread>

#include "controller_impl.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/logging.hpp"
#include "fabriclab/orchestrator/placement.hpp"

namespace fabriclab::orchestrator {

namespace {

using json_get::str;

auto log() { return logger("orchestrator"); }

HostState host_state_of(std::string_view agent_state) {
  if (agent_state == "Ready") return HostState::ready;
  if (agent_state == "Updating") return HostState::updating;
  if (agent_state == "Offline") return HostState::offline;
  return HostState::unhealthy;
}
}  // namespace

void Controller::Impl::start_watcher(const std::string& host_id) {
  std::lock_guard lock(mu);
  if (watchers.count(host_id) || stopping) return;
  watchers[host_id] = std::thread([this, host_id] { watch(host_id); });
}

void Controller::Impl::watch(const std::string& host_id) {
  while (!stopping) {
    auto began = Clock::now();
    poll_once(host_id);
    std::unique_lock lock(mu);
    cv.wait_until(lock, began + opt.poll, [this] { return stopping.load(); });
  }
}

void Controller::Impl::poll_once(const std::string& host_id) {
  auto began = Clock::now();
  auto c = client(host_id);
  ++agent_calls;
  auto host = c->host();
  Result<json::array> insts = make_error(Condition::internal, "not asked");
  if (host.ok()) {
    ++agent_calls;
    insts = c->instances();
  }
  if (!host.ok() || !insts.ok()) {
    ++agent_call_failures;
    mark_unreachable(host_id);
    return;
  }
  Events events;
  int64_t now = unix_ms();
  Drift drift;
  bool reconcile_now = false;
  // Drift is judged only while no placement or healing is in flight (they hold admin_mu while
  // the agents create the new VMs the model does not list yet). try_lock: never waits.
  std::unique_lock admin(admin_mu, std::try_to_lock);
  {
    std::lock_guard lock(mu);
    auto& m = hosts[host_id];
    Host* h = cluster.find_host(host_id);
    if (!h) return;
    ++m.polls;
    m.last_answer = Clock::now();
    m.last_poll_began = began;
    bool was_reachable = m.reachable;
    m.reachable = true;
    std::string state = str(*host, "state"), step = str(*host, "step"),
                image = str(*host, "host_image");
    std::string job = str(*host, "active_job");
    HostState hs = host_state_of(state);
    // Back after a silence (or still reconciling): trusted again only once it runs nothing that
    // is placed elsewhere.
    const bool returning =
        !was_reachable || h->state == HostState::reconciling || h->state == HostState::fenced;
    drift = drift_locked(host_id, *insts);
    if (returning) {
      if (!was_reachable) {
        m.fence_attempts = 0;
        m.may_heal = false;
        heal_retry.erase(host_id);
      }
      size_t elsewhere = 0;
      for (const auto& u : drift.unexpected) elsewhere += !u.second.empty();
      if (elsewhere > 0 || !drift.held.empty()) {
        hs = HostState::reconciling;
        m.reason = fmt::format(
            "back after a silence: removing {} instance(s) placed elsewhere meanwhile, starting {} "
            "still placed here; it takes new work after that",
            elsewhere, drift.held.size());
        reconcile_now = true;
      } else {
        m.reason.clear();
      }
    }
    if (admin.owns_lock() || returning) {
      note_drift_locked(host_id, drift, returning, events);
    } else {
      m.drift_pending.clear();
    }
    if (hs != h->state || step != m.step || image != m.host_image || !was_reachable) {
      h->state = hs;
      m.agent_state = state;
      m.step = step;
      m.host_image = image;
      json::object ev{{"host", host_id},
                      {"state", to_string(hs)},
                      {"step", step},
                      {"host_image", image},
                      {"reachable", true}};
      if (!m.reason.empty()) ev["reason"] = m.reason;
      events.emplace_back("host.state", std::move(ev));
    }
    m.active_job = job;
    // Instances this host should hold, as the agent reports them.
    std::set<std::string> services_touched;
    for (const auto* inst : cluster.instances_on(host_id)) {
      auto name = instance_name(inst->service, inst->index);
      const json::object* rep = nullptr;
      for (const auto& v : *insts) {
        if (v.is_object() && str(v.as_object(), "name") == name) rep = &v.as_object();
      }
      auto& im = instances[name];
      std::string status = rep ? str(*rep, "status") : "Missing";
      bool healthy = false;
      std::string img = im.image;
      int64_t counter = im.counter;
      if (rep) {
        if (auto* v = rep->if_contains("healthy"); v && v->is_bool()) healthy = v->as_bool();
        img = str(*rep, "image");
        // The guest's address (agents with a guest network): a new one is a new backend.
        if (std::string address = str(*rep, "address"); !address.empty() && address != im.address) {
          im.address = address;
          lb_dirty = true;
          lb_cv.notify_all();
          events.emplace_back("instance.state",
                              json::object{{"instance", instance_json_locked(*inst)}});
        }
        if (auto* sig = rep->if_contains("signals"); sig && sig->is_object()) {
          const auto& so = sig->as_object();
          im.signals_known = true;
          im.heartbeat = json_get::flag(so, "heartbeat");
          im.guest_agent = json_get::flag(so, "guest_agent");
        }
        if (auto* hb = rep->if_contains("last_heartbeat"); hb && hb->is_object()) {
          if (auto* cn = hb->as_object().if_contains("counter"); cn && cn->is_int64())
            counter = cn->as_int64();
        }
      }
      if (healthy) status = "Healthy";
      if (status != im.status || healthy != im.healthy || img != im.image ||
          counter != im.counter) {
        bool health_changed = healthy != im.healthy;
        bool visible = status != im.status || img != im.image || health_changed;
        im.status = status;
        im.image = img;
        im.counter = counter;
        set_health_locked(name, healthy, now);
        if (visible)
          events.emplace_back("instance.state",
                              json::object{{"instance", instance_json_locked(*inst)}});
        if (health_changed) services_touched.insert(inst->service);
      }
    }
    for (const auto& s : services_touched) availability_locked(s, events);
  }
  if (admin.owns_lock()) admin.unlock();
  publish(std::move(events));
  if (reconcile_now) {
    log()->warn("[host:{}] answers again: reconciling before it takes new work", host_id);
    reconcile(host_id, drift);  // the next poll ends Reconciling once nothing is left
  }
}

void Controller::Impl::mark_unreachable(const std::string& host_id) {
  Events events;
  enum class Next { nothing, fence_then_heal, heal_again } next = Next::nothing;
  {
    std::lock_guard lock(mu);
    auto& m = hosts[host_id];
    Host* h = cluster.find_host(host_id);
    if (!h) return;
    ++m.failed_polls;
    if (Clock::now() - m.last_answer < opt.unhealthy_after) return;
    const bool has_instances = !cluster.instances_on(host_id).empty();
    if (!m.reachable) {
      if (!opt.healing || !has_instances) return;
      if (!m.may_heal) {
        // Fencing failed before: tried again now and then, a bounded number of times.
        if (m.fence_attempts >= opt.fence_attempts || Clock::now() - m.last_fence < opt.fence_retry)
          return;
        next = Next::fence_then_heal;
      } else {
        // Fenced: only a healing that did not finish is tried again, now and then.
        auto retry = heal_retry.find(host_id);
        if (retry == heal_retry.end() || Clock::now() - retry->second < kHealRetry) return;
        retry->second = Clock::now();
        next = Next::heal_again;
      }
    } else {
      m.reachable = false;
      m.may_heal = false;
      m.fence_attempts = 0;
      m.reason =
          "the agent has not answered for " + std::to_string(opt.unhealthy_after.count()) + " ms";
      h->state = HostState::unhealthy;
      events.emplace_back("host.state", json::object{{"host", host_id},
                                                     {"state", "Unhealthy"},
                                                     {"step", m.step},
                                                     {"host_image", m.host_image},
                                                     {"reachable", false},
                                                     {"reason", m.reason}});
      int64_t now = unix_ms();
      std::set<std::string> services;
      for (const auto* inst : cluster.instances_on(host_id)) {
        auto name = instance_name(inst->service, inst->index);
        auto& im = instances[name];
        im.status = "Failed";
        set_health_locked(name, false, now);
        events.emplace_back("instance.state",
                            json::object{{"instance", instance_json_locked(*inst)}});
        services.insert(inst->service);
      }
      for (const auto& s : services) availability_locked(s, events);
      if (opt.healing && has_instances) next = Next::fence_then_heal;
      log()->warn("[host:{}] Unhealthy: no answer for {} ms", host_id, opt.unhealthy_after.count());
    }
  }
  publish(std::move(events));
  if (next == Next::heal_again) {
    log()->info("[host:{}] healing again: instances are still on it", host_id);
    heal(host_id);
  } else if (next == Next::fence_then_heal) {
    // Fence before heal: a silent host may still run its guests.
    if (fence(host_id)) heal(host_id);
  }
}

void Controller::Impl::heal(const std::string& host_id) {
  std::lock_guard admin(admin_mu);
  Cluster view;
  std::vector<Instance> lost;
  std::map<std::string, std::pair<std::string, uint32_t>> image_of;  // service -> image, memory
  {
    std::lock_guard lock(mu);
    view = cluster;
    for (auto& h : view.hosts) {
      auto it = hosts.find(h.id);
      if (it != hosts.end() && !it->second.reachable) h.state = HostState::unhealthy;
    }
    for (const auto* i : cluster.instances_on(host_id)) lost.push_back(*i);
    for (const auto& s : cluster.services) image_of[s.name] = {s.image, s.memory_mib};
    heal_retry.erase(host_id);
  }
  if (lost.empty()) return;
  auto retry_later = [this, &host_id] {
    std::lock_guard lock(mu);
    heal_retry[host_id] = Clock::now();
  };
  auto plan = place_again(view, lost);
  if (!plan.ok()) {
    retry_later();
    log()->error("[host:{}] healing refused: {}", host_id, plan.error().message);
    publish({{"service.healing_failed",
              json::object{{"host", host_id}, {"reason", plan.error().message}}}});
    return;
  }
  for (const auto& placed : plan->placed) {
    auto name = instance_name(placed.service, placed.index);
    std::string image;
    {
      std::lock_guard lock(mu);
      image = instances[name].image;
    }
    if (image.empty()) image = image_of[placed.service].first;
    Service svc;
    {
      std::lock_guard lock(mu);
      if (const Service* found = cluster.find_service(placed.service)) svc = *found;
    }
    svc.memory_mib = image_of[placed.service].second;
    auto made = slow_client(placed.host)->create_instance(instance_spec(svc, placed, image));
    if (!made.ok()) {
      retry_later();
      log()->error("[host:{}] healing {} on {} failed (retried in {} ms): {}", host_id, name,
                   placed.host, kHealRetry.count(), made.error().message);
      publish({{"service.healing_failed", json::object{{"host", host_id},
                                                       {"instance", name},
                                                       {"to_host", placed.host},
                                                       {"reason", made.error().message}}}});
      continue;
    }
    Events events;
    // The plan's lines about this instance ("web/0: ..."): rules relaxed, batches it may cost.
    auto about_this = [&](const std::vector<std::string>& lines) {
      json::array out;
      const std::string prefix = placed.service + "/" + std::to_string(placed.index) + ":";
      for (const auto& line : lines) {
        if (line.rfind(prefix, 0) == 0) out.push_back(json::value(line));
      }
      return out;
    };
    {
      std::lock_guard lock(mu);
      HealingPlan one;
      one.placed.push_back(placed);
      for (const auto& [h, slot] : plan->new_slots) {
        if (h == placed.host) one.new_slots.emplace_back(h, slot);
      }
      apply_healing(cluster, one);
      auto& im = instances[name];
      im.status = "Creating";
      im.address.clear();  // the old VM's; the new host reports the new one
      events.emplace_back("service.healed",
                          json::object{{"service", placed.service},
                                       {"instance", name},
                                       {"from_host", host_id},
                                       {"to_host", placed.host},
                                       {"fd", placed.fd},
                                       {"fenced", !opt.power_command.empty()},
                                       {"relaxed", about_this(plan->relaxed)},
                                       {"walk_cost", about_this(plan->walk_cost)}});
      const Instance* inst = cluster.find_instance(placed.service, placed.index);
      events.emplace_back("instance.state",
                          json::object{{"instance", instance_json_locked(*inst)}});
      std::string note = "healing: " + name + " moved from " + host_id + " to " + placed.host +
                         " (FD " + std::to_string(placed.fd) + ")";
      if (active && !active->finished()) active->notes.push_back(note);
    }
    log()->info("[host:{}] healed {} onto {} (FD {})", host_id, name, placed.host, placed.fd);
    save_cluster();
    mark_lb_dirty();
    publish(std::move(events));
  }
}

}  // namespace fabriclab::orchestrator
