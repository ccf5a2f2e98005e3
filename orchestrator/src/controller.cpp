// The controller's model: registration, services, snapshot, drills' control, and the journal
// (restore at start, a writer thread that drains the feed into SQLite in seq order). The model's
// JSON views are in controller_views.cpp, the Prometheus text in controller_metrics.cpp, the
// drill spec's wire form in drill_spec.cpp.
//
// The journal holds three kinds of record. The cluster document (hosts with endpoints, services,
// instances) is rewritten after every change of placement. Each drill is a document (spec, plan,
// batches, the "before" snapshot) plus one progress row per host, written before and after every
// host's update, so a restart knows which hosts are done, which are in flight and which have not
// started. Every feed event is appended too, which is what lets the report's timelines survive a
// restart of the orchestrator.

#include "fabriclab/orchestrator/controller.hpp"

#include <algorithm>
#include <sstream>
#include <thread>

#include "controller_impl.hpp"
#include "fabriclab/common/logging.hpp"
#include "fabriclab/orchestrator/placement.hpp"

namespace fabriclab::orchestrator {

namespace {
auto log() { return logger("orchestrator"); }
constexpr size_t kMaxEndpointBytes = 255;

// The journal writer trails the feed: an event reaches websocket clients a moment before it is
// in SQLite, so a SIGKILL can lose events that a client has already seen. Numbering the restarted
// feed on from the journal's last seq would then give those numbers to other events, and a
// client resuming with ?since= would take a new event for one it has. So publish() keeps the
// writer within kMaxJournalLag events of the feed, and a restart numbers on after a gap far
// wider than that (a few events of overshoot per publishing thread are possible; seq is 64-bit).
constexpr uint64_t kMaxJournalLag = 4096;
constexpr uint64_t kRestartSeqGap = 1u << 20;

// The views of every element of `items` (a part of `m`, read under its lock).
template <class Items, class View>
json::array list_json(Controller::Impl& m, const Items& items, View view) {
  std::lock_guard lock(m.mu);
  json::array a;
  for (const auto& x : items) a.push_back(view(x));
  return a;
}
}  // namespace

int64_t unix_ms() { return unix_now_ms(); }

std::string instance_name(const std::string& service, int index) {
  return service + "-" + std::to_string(index);
}

json::object instance_spec(const Service& s, const Instance& i, const std::string& image) {
  json::object spec{{"name", instance_name(i.service, i.index)},
                    {"service", i.service},
                    {"index", i.index},
                    {"ud", i.ud},
                    {"fd", i.fd},
                    {"image", image},
                    {"memory_mib", s.memory_mib}};
  if (s.endpoint) {
    // The built-in guest leaves rotation for drain_ms before approving its event
    // (docs/clients.md); the agent accepts 0..600000.
    spec["drain"] = s.drain;
    spec["drain_ms"] = std::min<int64_t>(s.drain_ms(), 600000);
    // A guest that brings its own image is healthy only when its app answers this too (the
    // agent probes it as the load balancer does, on the backend port, before it verifies it).
    spec["probe"] = json::object{{"port", static_cast<int64_t>(kBackendPort)},
                                 {"path", s.endpoint->probe.path}};
  }
  // The agent runs it through the guest agent before the notice and after the restart, and
  // reports both outputs in its job's guest records (the report judges the rule).
  if (s.data_check) spec["data_check"] = to_json(*s.data_check);
  return spec;
}

Result<HostRegistration> host_registration_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(o, {"id", "fault_domain", "endpoint", "capacity"}));
  HostRegistration r;
  FL_ASSIGN_OR_RETURN(r.id, get_string(o, "id", kMaxNameBytes));
  if (r.id.empty()) return make_error(Condition::invalid_argument, "field 'id' must not be empty");
  for (char c : r.id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return make_error(Condition::invalid_argument,
                        "field 'id' may hold only letters, digits, '-', '_' and '.'");
    }
  }
  FL_ASSIGN_OR_RETURN(auto fd, get_int(o, "fault_domain", 0, kMaxFaultDomain));
  r.fault_domain = static_cast<int>(fd);
  FL_ASSIGN_OR_RETURN(r.endpoint, get_string(o, "endpoint", kMaxEndpointBytes));
  FL_RETURN_IF_ERROR(parse_endpoint(r.endpoint));
  FL_ASSIGN_OR_RETURN(auto cap, get_int_or(o, "capacity", 1, kMaxHostCapacity, 8));
  r.capacity = static_cast<int>(cap);
  return r;
}

Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Controller::~Controller() { stop(); }

Result<std::unique_ptr<Controller>> Controller::create(ControllerOptions options) {
  if (options.journal_path.empty()) {
    return make_error(Condition::invalid_argument, "a journal path is required");
  }
  auto impl = std::make_unique<Impl>();
  impl->opt = std::move(options);
  impl->make_agent_client =
      impl->opt.agent_clients
          ? impl->opt.agent_clients
          : http_agent_client_factory(impl->opt.agent_token, impl->opt.agent_netns);
  FL_ASSIGN_OR_RETURN(impl->journal, Journal::open(impl->opt.journal_path));
  FL_ASSIGN_OR_RETURN(uint64_t last, impl->journal->last_event_seq());
  impl->journal_seq = last == 0 ? 0 : last + kRestartSeqGap;
  FL_RETURN_IF_ERROR(impl->restore());
  if (!impl->opt.lb_config.empty()) {
    FL_RETURN_IF_ERROR(check_vip_range(impl->opt.vip_range));
    LbOptions lo;
    lo.config_path = impl->opt.lb_config;
    lo.master_socket = impl->opt.lb_master_socket;
    lo.haproxy = impl->opt.lb_haproxy;
    lo.settings = lb_settings_for(impl->opt.lb_config);
    lo.settings.health_bind = impl->opt.lb_health_bind;
    FL_ASSIGN_OR_RETURN(impl->lb, LoadBalancer::create(std::move(lo)));
  }
  return std::unique_ptr<Controller>(new Controller(std::move(impl)));
}

uint64_t Controller::last_journal_seq() const { return impl_->journal_seq; }

void Controller::start(std::shared_ptr<EventFeed> feed) {
  auto& m = *impl_;
  m.feed = std::move(feed);
  // The journal writer: an in-process subscription with a deep queue, drained in seq order.
  auto sub = m.feed->subscribe(std::nullopt, 1'000'000, [&m] { m.cv.notify_all(); });
  m.journal_sub = sub.subscription;
  m.journaled = m.feed->last_seq();
  m.journal_writer = std::thread([&m] {
    while (!m.stopping) {
      std::deque<Subscription::Message> batch;
      {
        std::unique_lock lock(m.mu);
        m.cv.wait_for(lock, std::chrono::milliseconds(200));
      }
      batch = m.journal_sub->take();
      if (batch.empty()) continue;
      uint64_t high = 0;
      auto s = m.journal->transaction([&]() -> Status {
        for (const auto& msg : batch) {
          auto v = parse_json_object(*msg, 1 << 20, 64, "event");
          if (!v.ok()) continue;
          auto seq = v->at("seq").to_number<uint64_t>();
          high = std::max(high, seq);
          std::string type(v->at("type").as_string());
          FL_RETURN_IF_ERROR(m.journal->append_event(seq, type, *msg));
        }
        return {};
      });
      if (!s.ok()) {
        ++m.journal_errors;
        log()->error("journal: events not written: {}", s.error().describe());
      }
      // Handled, written or not (a failed write is counted and logged; waiting on it would hang
      // every publisher).
      if (high > m.journaled) m.journaled = high;
      m.cv.notify_all();
    }
  });
  std::vector<std::string> ids;
  std::shared_ptr<DrillRun> resume;
  bool vips_given = false;
  {
    std::lock_guard lock(m.mu);
    vips_given = m.assign_vips_locked();  // services made before the rack had a load balancer
    m.traffic_view["reason"] = m.lb ? "no drill has run yet" : m.opt.no_lb_reason;
    for (const auto& h : m.cluster.hosts) ids.push_back(h.id);
    if (m.active && is_resumable(m.active->state)) resume = m.active;
  }
  if (vips_given) m.save_cluster();
  for (const auto& id : ids) m.start_watcher(id);
  if (m.lb) m.lb_thread = std::thread([&m] { m.lb_loop(); });
  if (resume) {
    m.executor = std::thread([&m, resume] { m.run_drill(resume); });
  }
}

void Controller::stop() {
  auto& m = *impl_;
  if (m.stopping.exchange(true)) return;
  {
    std::lock_guard lock(m.mu);
    m.cv.notify_all();
    m.lb_cv.notify_all();
  }
  if (m.executor.joinable()) m.executor.join();
  if (m.lb_thread.joinable()) m.lb_thread.join();
  for (auto& [id, t] : m.watchers) {
    if (t.joinable()) t.join();
  }
  if (m.journal_writer.joinable()) m.journal_writer.join();
  // What the writer had not taken yet.
  if (m.journal_sub) {
    auto rest = m.journal_sub->take();
    for (const auto& msg : rest) {
      auto v = parse_json_object(*msg, 1 << 20, 64, "event");
      if (v.ok()) {
        (void)m.journal->append_event(v->at("seq").to_number<uint64_t>(),
                                      std::string(v->at("type").as_string()), *msg);
      }
    }
    m.journal_sub->cancel();
  }
}

void Controller::Impl::availability_locked(const std::string& service, Events& out) {
  int healthy = 0, total = 0;
  std::set<int> uds_down;
  for (const auto* i : cluster.instances_of(service)) {
    ++total;
    auto it = instances.find(instance_name(i->service, i->index));
    if (it != instances.end() && it->second.healthy) {
      ++healthy;
    } else {
      uds_down.insert(i->ud);
    }
  }
  json::array uds;
  for (int u : uds_down) uds.push_back(u);
  json::object now{{"service", service},
                   {"healthy", healthy},
                   {"total", total},
                   {"available", healthy > 0},
                   {"uds_down", std::move(uds)}};
  auto& last = availability[service];
  if (last != now) {
    last = now;
    out.emplace_back("service.availability", std::move(now));
  }
}

void Controller::Impl::set_health_locked(const std::string& name, bool healthy, int64_t at_ms) {
  auto& m = instances[name];
  if (m.timeline.empty() || m.timeline.back().healthy != healthy) {
    m.timeline.push_back({at_ms, healthy});
  }
  m.healthy = healthy;
}

void Controller::Impl::publish(Events events) {
  if (!feed) return;
  uint64_t last = feed->publish(std::move(events));
  if (last <= journaled + kMaxJournalLag) return;
  // The journal writer is far behind: wait for it (see kRestartSeqGap). mu is never held here.
  std::unique_lock lock(mu);
  while (!stopping && last > journaled + kMaxJournalLag)
    cv.wait_for(lock, std::chrono::milliseconds(100));
}

void Controller::Impl::save_cluster() {
  json::object doc;
  {
    std::lock_guard lock(mu);
    doc = cluster_doc_locked();
  }
  if (auto s = journal->put_doc("cluster", doc); !s.ok()) {
    ++journal_errors;
    log()->error("journal: cluster not written: {}", s.error().describe());
  }
}

void Controller::Impl::save_drill(const DrillRun& d) {
  json::object doc;
  {
    std::lock_guard lock(mu);
    doc = drill_json_locked(d);
    doc["plan"] = to_json(d.plan);
    json::object before;
    for (const auto& [n, b] : d.before) {
      before[n] = json::object{{"host", b.host},
                               {"image", b.image},
                               {"host_image", b.host_image},
                               {"counter", b.counter}};
    }
    doc["before"] = std::move(before);
    doc["host_image_before"] = json::value_from(d.host_image_before);
    doc["started_ms"] = d.started_ms;
    doc["finished_ms"] = d.finished_ms;
    doc["notice_ms"] = d.notice_ms;
    doc["traffic_measured"] = d.traffic_measured;
    doc["traffic_reason"] = d.traffic_reason;
    doc["app_up"] = json::value_from(d.app_up);
  }
  if (auto s = journal->save_drill(d.id, std::string(to_string(d.state)), doc); !s.ok()) {
    ++journal_errors;
    log()->error("journal: drill {} not written: {}", d.id, s.error().describe());
  }
}

std::unique_ptr<AgentClient> Controller::Impl::client(const std::string& host_id) const {
  std::lock_guard lock(mu);
  auto it = hosts.find(host_id);
  Endpoint e = it != hosts.end() ? it->second.endpoint : Endpoint{};
  return make_agent_client(e, opt.agent_timeout);
}

std::unique_ptr<AgentClient> Controller::Impl::slow_client(const std::string& host_id) const {
  constexpr std::chrono::milliseconds kSlowCallTimeout{60000};
  std::lock_guard lock(mu);
  auto it = hosts.find(host_id);
  Endpoint e = it != hosts.end() ? it->second.endpoint : Endpoint{};
  return make_agent_client(e, std::max(opt.agent_timeout, kSlowCallTimeout));
}

// ---- public API ----

json::object Controller::snapshot() const {
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  json::array hosts, services, instances;
  for (const auto& h : m.cluster.hosts) hosts.push_back(m.host_json_locked(h));
  for (const auto& s : m.cluster.services) services.push_back(m.service_json_locked(s));
  for (const auto& i : m.cluster.instances) instances.push_back(m.instance_json_locked(i));
  json::object o{{"hosts", std::move(hosts)},
                 {"services", std::move(services)},
                 {"instances", std::move(instances)}};
  o["drill"] = m.active ? json::value(m.drill_json_locked(*m.active)) : json::value(nullptr);
  o["traffic"] = m.traffic_view;
  return o;
}

Result<json::object> Controller::register_host(const HostRegistration& r) {
  auto& m = *impl_;
  FL_ASSIGN_OR_RETURN(auto endpoint, parse_endpoint(r.endpoint));
  // Ask the agent who it is before believing the registration.
  auto info = m.make_agent_client(endpoint, m.opt.agent_timeout)->host();
  if (!info.ok()) {
    return make_error(info.error().condition, "host '" + r.id + "' is not answering at " +
                                                  r.endpoint + ": " + info.error().message);
  }
  auto agent_id = get_string(*info, "host_id", kMaxNameBytes);
  auto agent_fd = get_int(*info, "fault_domain", 0, kMaxFaultDomain);
  if (!agent_id.ok() || !agent_fd.ok()) {
    return make_error(Condition::invalid_state,
                      "the agent at " + r.endpoint + " gave no host_id/fault_domain");
  }
  if (*agent_id != r.id || *agent_fd != r.fault_domain) {
    return make_error(Condition::invalid_argument,
                      "the agent at " + r.endpoint + " is host '" + *agent_id + "' in FD " +
                          std::to_string(*agent_fd) + ", not '" + r.id + "' in FD " +
                          std::to_string(r.fault_domain));
  }
  std::lock_guard admin(m.admin_mu);
  Events events;
  json::object out;
  bool is_new = false;
  {
    std::lock_guard lock(m.mu);
    Host* h = m.cluster.find_host(r.id);
    if (h) {
      if (h->fault_domain != r.fault_domain) {
        return make_error(Condition::already_exists, "host '" + r.id + "' is registered in FD " +
                                                         std::to_string(h->fault_domain));
      }
      h->capacity = std::max(r.capacity, static_cast<int>(m.cluster.instances_on(r.id).size()));
    } else {
      if (m.cluster.hosts.size() >= kMaxHosts) {
        return make_error(Condition::invalid_state,
                          "the cluster already has the most hosts allowed");
      }
      m.cluster.hosts.push_back(
          Host{r.id, r.fault_domain, r.capacity, HostState::ready, std::nullopt});
      is_new = true;
    }
    auto& mirror = m.hosts[r.id];
    mirror.endpoint = endpoint;
    mirror.reachable = true;
    mirror.last_answer = Clock::now();
    if (auto* img = info->if_contains("host_image"); img && img->is_string())
      mirror.host_image = img->as_string();
    out = m.host_json_locked(*m.cluster.find_host(r.id));
    events.emplace_back("host.registered", json::object{{"host", out}});
  }
  log()->info("[host:{}] registered: FD {}, {}, capacity {}", r.id, r.fault_domain, r.endpoint,
              r.capacity);
  m.save_cluster();
  m.publish(std::move(events));
  if (is_new && m.feed) m.start_watcher(r.id);
  return out;
}

json::array Controller::hosts_json() const {
  return list_json(*impl_, impl_->cluster.hosts,
                   [&](const Host& h) { return impl_->host_json_locked(h); });
}

Result<json::object> Controller::host_json(const std::string& id) const {
  std::lock_guard lock(impl_->mu);
  const Host* h = impl_->cluster.find_host(id);
  if (!h) return make_error(Condition::not_found, "host '" + id + "' not found");
  return impl_->host_json_locked(*h);
}

Result<json::object> Controller::create_service(const Service& s) {
  auto& m = *impl_;
  if (!s.vip.empty()) {
    return make_error(Condition::invalid_argument, "field 'vip' is assigned by the orchestrator");
  }
  std::lock_guard admin(m.admin_mu);
  Cluster next;
  PlacementReport report;
  {
    std::lock_guard lock(m.mu);
    next = m.cluster;
    // Placement sees the hosts as the agents report them right now.
    for (auto& h : next.hosts) {
      auto it = m.hosts.find(h.id);
      if (it != m.hosts.end() && !it->second.reachable) h.state = HostState::unhealthy;
    }
  }
  FL_ASSIGN_OR_RETURN(report, place_service(next, s));
  // Create the VMs, all at once (each boots on its own host); on any failure delete those made
  // and leave the cluster as it was.
  const size_t n = report.placed.size();
  std::vector<Status> results(n);
  {
    std::vector<std::thread> creators;
    creators.reserve(n);
    for (size_t k = 0; k < n; ++k) {
      creators.emplace_back([&m, &s, &report, &results, k] {
        const auto& i = report.placed[k];
        auto r = m.slow_client(i.host)->create_instance(instance_spec(s, i, s.image));
        if (!r.ok()) results[k] = r.error();
      });
    }
    for (auto& t : creators) t.join();
  }
  for (size_t k = 0; k < n; ++k) {
    if (results[k].ok()) continue;
    const auto& bad = report.placed[k];
    for (size_t j = 0; j < n; ++j) {
      if (results[j].ok()) {
        const auto& i = report.placed[j];
        (void)m.slow_client(i.host)->delete_instance(instance_name(i.service, i.index));
      }
    }
    return make_error(results[k].error().condition, "service '" + s.name + "': creating " +
                                                        instance_name(bad.service, bad.index) +
                                                        " on host '" + bad.host +
                                                        "' failed: " + results[k].error().message);
  }
  Events events;
  json::object out;
  {
    std::lock_guard lock(m.mu);
    // Keep the live states of hosts; take the new services, instances and slots.
    for (auto& h : next.hosts) {
      if (const Host* cur = m.cluster.find_host(h.id)) h.state = cur->state;
    }
    m.cluster = std::move(next);
    m.assign_vips_locked();
    m.lb_dirty = true;
    m.lb_cv.notify_all();
    const Service* svc = m.cluster.find_service(s.name);
    int64_t now = unix_ms();
    json::array placed;
    for (const auto& i : report.placed) {
      auto name = instance_name(i.service, i.index);
      auto& im = m.instances[name];
      im.status = "Creating";
      im.image = s.image;
      m.set_health_locked(name, false, now);
      auto j = m.instance_json_locked(i);
      placed.push_back(j);
      events.emplace_back("instance.state", json::object{{"instance", std::move(j)}});
    }
    m.availability_locked(s.name, events);
    out = m.service_json_locked(*svc);
    events.insert(events.begin(), {"service.created", json::object{{"service", out}}});
    out["placed"] = std::move(placed);
    out["unaligned"] = report.unaligned;
    out["off_round_robin_fd"] = report.off_round_robin_fd;
  }
  log()->info("service '{}' placed: {} instances, {} UDs", s.name, s.instance_count, s.ud_count);
  m.save_cluster();
  m.publish(std::move(events));
  return out;
}

json::array Controller::services_json() const {
  return list_json(*impl_, impl_->cluster.services,
                   [&](const auto& s) { return impl_->service_json_locked(s); });
}

json::array Controller::instances_json() const {
  return list_json(*impl_, impl_->cluster.instances,
                   [&](const Instance& i) { return impl_->instance_json_locked(i); });
}

Result<json::object> Controller::plan_json(int max_parallel_hosts) const {
  Cluster c;
  {
    std::lock_guard lock(impl_->mu);
    c = impl_->cluster;
  }
  FL_ASSIGN_OR_RETURN(auto plan, plan_walk(c, PlanOptions{max_parallel_hosts}));
  FL_RETURN_IF_ERROR(validate_plan(c, plan, max_parallel_hosts));
  json::object o = to_json(plan);
  json::array f;
  for (const auto& sf : forecast(c, plan)) f.push_back(to_json(sf));
  o["forecast"] = std::move(f);
  return o;
}

Result<json::object> Controller::drill_json(const std::string& id) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->drills.find(id);
  if (it == impl_->drills.end())
    return make_error(Condition::not_found, "drill '" + id + "' not found");
  return impl_->drill_json_locked(*it->second);
}

json::array Controller::drills_json() const {
  return list_json(*impl_, impl_->drills,
                   [&](const auto& kv) { return impl_->drill_json_locked(*kv.second); });
}

namespace {
Result<std::shared_ptr<DrillRun>> find_drill(Controller::Impl& m, const std::string& id) {
  auto it = m.drills.find(id);
  if (it == m.drills.end()) return make_error(Condition::not_found, "drill '" + id + "' not found");
  if (it->second->finished()) {
    return make_error(Condition::invalid_state,
                      "drill '" + id + "' is " + std::string(to_string(it->second->state)));
  }
  return it->second;
}

// Sets the flags the executor reads between batches, and wakes it to read them.
Status set_pause_flags(Controller::Impl& m, const std::string& id, bool pause, bool step_once) {
  std::lock_guard lock(m.mu);
  FL_ASSIGN_OR_RETURN(auto d, find_drill(m, id));
  d->pause_requested = pause;
  d->step_once = step_once;
  m.cv.notify_all();
  return {};
}
}  // namespace

Status Controller::pause(const std::string& id) { return set_pause_flags(*impl_, id, true, false); }

Status Controller::resume(const std::string& id) {
  return set_pause_flags(*impl_, id, false, false);
}

Status Controller::step(const std::string& id) { return set_pause_flags(*impl_, id, false, true); }

Status Controller::abort(const std::string& id) {
  std::lock_guard lock(impl_->mu);
  FL_ASSIGN_OR_RETURN(auto d, find_drill(*impl_, id));
  d->abort_requested = true;
  impl_->cv.notify_all();
  return {};
}

Result<json::object> Controller::report_json(const std::string& id) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->drills.find(id);
  if (it == impl_->drills.end())
    return make_error(Condition::not_found, "drill '" + id + "' not found");
  return build_report(impl_->report_input(*it->second));
}

}  // namespace fabriclab::orchestrator
