// The controller's model as JSON, for the API, the feed and the journal: hosts, instances,
// services, batches, drills and the cluster document. Called with the model's mutex held.

#include "controller_impl.hpp"

namespace fabriclab::orchestrator {

namespace {
std::string ms_to_rfc3339(int64_t ms) {
  if (ms <= 0) return "";
  return rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(ms)));
}
}  // namespace

json::object Controller::Impl::host_json_locked(const Host& h) const {
  json::object o{{"id", h.id},
                 {"fd", h.fault_domain},
                 {"capacity", h.capacity},
                 {"state", to_string(h.state)}};
  if (h.ud_slot) o["ud_slot"] = *h.ud_slot;
  if (auto it = hosts.find(h.id); it != hosts.end()) {
    const auto& m = it->second;
    o["endpoint"] = m.endpoint.str();
    o["step"] = m.step;
    o["host_image"] = m.host_image;
    o["reachable"] = m.reachable;
    o["active_job"] = m.active_job;
    o["reason"] = m.reason;
  }
  json::array names;
  for (const auto* i : cluster.instances_on(h.id))
    names.push_back(json::value(instance_name(i->service, i->index)));
  o["instances"] = std::move(names);
  return o;
}

json::object Controller::Impl::instance_json_locked(const Instance& i) const {
  auto name = instance_name(i.service, i.index);
  json::object o{{"name", name}, {"service", i.service}, {"index", i.index},
                 {"ud", i.ud},   {"fd", i.fd},           {"host", i.host}};
  if (auto it = instances.find(name); it != instances.end()) {
    o["status"] = it->second.status;
    o["healthy"] = it->second.healthy;
    o["image"] = it->second.image;
    o["counter"] = it->second.counter;
    o["address"] = it->second.address;
    if (it->second.signals_known) {
      o["signals"] = json::object{{"heartbeat", it->second.heartbeat},
                                  {"guest_agent", it->second.guest_agent}};
    }
  }
  return o;
}

json::object Controller::Impl::service_json_locked(const Service& s) const {
  json::object o = to_json(s);
  if (auto it = availability.find(s.name); it != availability.end()) {
    for (const auto& [k, v] : it->second) {
      if (k != "service") o[k] = v;
    }
  }
  if (s.endpoint) o["backends"] = backends_json_locked(s);
  return o;
}

json::object Controller::Impl::batch_json_locked(const DrillRun& d, const BatchRun& b) const {
  json::array hs;
  for (const auto& h : b.hosts) hs.push_back(json::value(h));
  return {{"drill", d.id},
          {"index", b.index},
          {"hosts", std::move(hs)},
          {"status", b.status},
          {"started_at", ms_to_rfc3339(b.started_ms)},
          {"finished_at", ms_to_rfc3339(b.finished_ms)}};
}

json::object Controller::Impl::drill_json_locked(const DrillRun& d) const {
  json::array batches;
  for (const auto& b : d.batches) {
    auto o = batch_json_locked(d, b);
    o.erase("drill");
    batches.push_back(std::move(o));
  }
  json::array progress;
  for (const auto& [h, p] : d.progress) {
    progress.push_back(
        json::object{{"host", h}, {"batch", p.batch}, {"status", p.status}, {"job", p.job}});
  }
  json::array notes;
  for (const auto& n : d.notes) notes.push_back(json::value(n));
  return {{"id", d.id},
          {"state", to_string(d.state)},
          {"reason", d.reason},
          {"kind", d.spec.kind},
          {"target", d.spec.target},
          {"spec", to_json(d.spec)},
          {"current_batch", d.current_batch},
          {"waiting_for", d.waiting_for},
          {"waiting_until", ms_to_rfc3339(d.waiting_until_ms)},
          {"lower_bound", d.plan.lower_bound},
          {"batch_count", d.batches.size()},
          {"method", d.plan.method},
          {"started_at", ms_to_rfc3339(d.started_ms)},
          {"finished_at", ms_to_rfc3339(d.finished_ms)},
          {"batches", std::move(batches)},
          {"hosts", std::move(progress)},
          {"notes", std::move(notes)}};
}

json::object Controller::Impl::cluster_doc_locked() const {
  json::object doc = to_json(cluster);
  json::object endpoints;
  for (const auto& [id, m] : hosts) endpoints[id] = m.endpoint.str();
  doc["endpoints"] = std::move(endpoints);
  return doc;
}

}  // namespace fabriclab::orchestrator
