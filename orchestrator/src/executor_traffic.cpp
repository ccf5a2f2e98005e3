// What a drill measures beside the walk (executor.cpp): the client traffic generator, started
// before the first batch and stopped after the last one, its stats published on the feed; and the
// report's input (report.hpp) gathered from the drill and the cluster.

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
}  // namespace

void Controller::Impl::start_traffic(DrillRun& d, std::thread& stats_thread,
                                     std::atomic<bool>& stats_stop) {
  std::vector<TrafficTarget> targets;
  std::string reason;
  {
    std::lock_guard lock(mu);
    for (const auto& s : cluster.services) {
      if (!s.endpoint || s.vip.empty()) continue;
      targets.push_back(TrafficTarget{s.name, s.vip, s.endpoint->port, "/", s.traffic_rps});
    }
    bool any_endpoint = std::any_of(cluster.services.begin(), cluster.services.end(),
                                    [](const Service& s) { return s.endpoint.has_value(); });
    if (!lb) {
      reason = opt.no_lb_reason;
    } else if (!any_endpoint) {
      reason = "no service has an endpoint";
    }
  }
  std::shared_ptr<TrafficGenerator> gen;
  if (reason.empty()) {
    TrafficOptions o;
    o.netns = opt.client_netns;
    auto started = TrafficGenerator::start(targets, o);
    if (started.ok()) {
      gen = std::move(started).value();
    } else {
      reason = "the traffic generator did not start: " + started.error().message;
      log()->error("[drill:{}] {}", d.id, reason);
    }
  }
  std::string note;
  {
    std::lock_guard lock(mu);
    traffic = gen;
    d.traffic_measured = gen != nullptr;
    d.traffic_reason = reason;
    d.traffic_records.clear();
    traffic_view = json::object{{"drill", d.id},
                                {"measured", d.traffic_measured},
                                {"reason", reason},
                                {"services", json::object{}}};
    if (gen && d.resumed) {
      note =
          "client traffic measured again from the resume on: what was sent before the restart is "
          "not in the report";
      d.notes.push_back(note);
    }
  }
  if (!gen) return;
  log()->info("[drill:{}] client traffic: {} service(s){}", d.id, targets.size(),
              opt.client_netns.empty() ? "" : " from network namespace " + opt.client_netns);
  stats_thread = std::thread([this, gen, id = d.id, &stats_stop] {
    while (!stats_stop && !stopping) {
      {
        std::unique_lock lock(mu);
        cv.wait_for(lock, std::chrono::seconds(1),
                    [&] { return stats_stop.load() || stopping.load(); });
      }
      if (stats_stop || stopping) break;
      json::object stats = gen->stats_json();
      json::value services =
          stats.contains("services") ? stats["services"] : json::value(json::object{});
      {
        std::lock_guard lock(mu);
        traffic_view["services"] = services;
      }
      publish({{"traffic.stats", json::object{{"drill", id}, {"services", services}}}});
    }
  });
  // The lead: clients are served before the first host goes down.
  std::unique_lock lock(mu);
  cv.wait_for(lock, opt.traffic_lead, [this] { return stopping.load(); });
}

void Controller::Impl::stop_traffic(DrillRun& d, bool tail, std::thread& stats_thread,
                                    std::atomic<bool>& stats_stop) {
  std::shared_ptr<TrafficGenerator> gen;
  {
    std::lock_guard lock(mu);
    gen = traffic;
  }
  if (!gen) return;
  if (tail) {
    // The tail: the last batch's instances are seen back in rotation by clients too.
    std::unique_lock lock(mu);
    cv.wait_for(lock, opt.traffic_tail, [this] { return stopping.load(); });
  }
  {
    std::lock_guard lock(mu);
    stats_stop = true;
    cv.notify_all();
  }
  if (stats_thread.joinable()) stats_thread.join();
  gen->stop();
  auto records = gen->records();
  json::object stats = gen->stats_json();
  json::value services =
      stats.contains("services") ? stats["services"] : json::value(json::object{});
  {
    std::lock_guard lock(mu);
    d.traffic_records = std::move(records);
    traffic_view["services"] = services;
    traffic.reset();
  }
  publish(
      {{"traffic.stats", json::object{{"drill", d.id}, {"services", services}, {"final", true}}}});
}

ReportInput Controller::Impl::report_input(const DrillRun& d) const {
  ReportInput in;
  in.drill_id = d.id;
  in.kind = d.spec.kind;
  in.target = d.spec.target;
  in.state = std::string(to_string(d.state));
  in.reason = d.reason;
  in.started_ms = d.started_ms;
  in.finished_ms = d.finished_ms ? d.finished_ms : unix_ms();
  in.lower_bound = d.plan.lower_bound;
  in.events = d.notes;
  for (const auto& b : d.batches) {
    in.batches.push_back(ReportBatch{b.index, b.hosts, b.started_ms, b.finished_ms, b.status});
  }
  for (const auto& h : cluster.hosts) {
    ReportHost rh;
    rh.id = h.id;
    rh.fd = h.fault_domain;
    if (auto it = d.host_image_before.find(h.id); it != d.host_image_before.end())
      rh.image_before = it->second;
    if (auto it = hosts.find(h.id); it != hosts.end()) rh.image_after = it->second.host_image;
    rh.state = std::string(to_string(h.state));
    in.hosts.push_back(rh);
  }
  for (const auto& s : cluster.services) {
    in.services.push_back(
        ReportService{s.name, s.instance_count, s.ud_count, s.drain, s.data_check.has_value()});
  }
  // Client traffic: the records of the finished drill, or, while it runs, the generator's.
  in.traffic_measured = d.traffic_measured;
  in.traffic_reason = d.traffic_reason;
  if (d.traffic_measured) {
    std::map<std::string, std::vector<RequestRecord>> live;
    const auto* records = &d.traffic_records;
    if (records->empty() && traffic && active.get() == &d) {
      live = traffic->records();
      records = &live;
    }
    if (records->empty() && d.finished()) {
      in.traffic_measured = false;
      in.traffic_reason =
          "the orchestrator restarted since the drill: its client traffic records were kept in "
          "memory only";
    }
    for (const auto& s : cluster.services) {
      if (!s.endpoint || !in.traffic_measured) continue;
      ReportTraffic t;
      t.service = s.name;
      t.rps = s.traffic_rps;
      t.probe_detection_ms = s.endpoint->probe.detection_ms();
      if (auto it = records->find(s.name); it != records->end()) {
        t.requests.reserve(it->second.size());
        for (const auto& r : it->second) {
          t.requests.push_back(
              ReportRequest{r.sent_ms, r.status, r.error, r.latency_ms, r.served_by});
        }
      }
      in.traffic.push_back(std::move(t));
    }
  }
  // The agents' own per-guest records, from the jobs of this drill.
  std::map<std::string, const json::object*> guest_reports;
  for (const auto& [h, p] : d.progress) {
    auto* g = p.detail.if_contains("guests");
    if (!g || !g->is_array()) continue;
    for (const auto& v : g->as_array()) {
      if (v.is_object()) guest_reports[json_get::str(v.as_object(), "name")] = &v.as_object();
    }
  }
  for (const auto& i : cluster.instances) {
    ReportInstance ri;
    ri.name = instance_name(i.service, i.index);
    ri.service = i.service;
    ri.host = i.host;
    ri.index = i.index;
    ri.ud = i.ud;
    ri.fd = i.fd;
    auto bef = d.before.find(ri.name);
    if (bef != d.before.end()) {
      ri.host_before = bef->second.host;
      ri.image_before = bef->second.image;
      ri.host_image_before = bef->second.host_image;
      ri.counter_before = bef->second.counter;
      ri.healed = !bef->second.host.empty() && bef->second.host != i.host;
    } else {
      ri.host_before = i.host;
    }
    if (auto it = instances.find(ri.name); it != instances.end()) {
      ri.image_after = it->second.image;
      ri.counter_after = it->second.counter;
      ri.healthy_at_end = it->second.healthy;
      ri.timeline = it->second.timeline;
    }
    if (auto it = hosts.find(i.host); it != hosts.end())
      ri.host_image_after = it->second.host_image;
    if (auto it = instances.find(ri.name); it != instances.end() && it->second.signals_known) {
      // What the guest offers now; its job's record, when there is one, says what it offered then.
      ri.signals_reported = true;
      ri.heartbeat = it->second.heartbeat;
      ri.guest_agent = it->second.guest_agent;
    }
    if (auto it = guest_reports.find(ri.name); it != guest_reports.end())
      read_guest_record(*it->second, ri);
    const Service* s = cluster.find_service(i.service);
    ri.app_probe = lb && s && s->endpoint && !s->vip.empty();
    ri.app_up = d.app_up.count(ri.name) > 0;
    in.instances.push_back(std::move(ri));
  }
  return in;
}

}  // namespace fabriclab::orchestrator
