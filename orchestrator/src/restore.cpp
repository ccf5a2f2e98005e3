// Restoring the controller from its journal after a restart (SIGKILL included).
//
// The cluster document gives hosts, endpoints, services and instances. The newest drill that was
// Running or Paused becomes the active one again, with its plan, batches, "before" snapshot and
// the per-host progress rows (the rows are written separately and are the truth about each
// host). The instances' health timelines are rebuilt from the journaled instance.state events
// (the last one before the drill began gives each instance's state at its start), so the report
// spans the restart; the time the orchestrator was down is a gap during which the last known
// health carries on, and the drill's notes say so.

#include "controller_impl.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::orchestrator {

namespace {
auto log() { return logger("orchestrator"); }

// Unix ms of a journaled RFC 3339 time; 0 for a missing or malformed one.
int64_t ms_of(std::string_view rfc) { return parse_rfc3339_ms(rfc).value_or(0); }

using json_get::int_or;
using json_get::str;
}  // namespace

Status Controller::Impl::restore() {
  FL_ASSIGN_OR_RETURN(auto doc, journal->get_doc("cluster"));
  if (doc) {
    json::object c = *doc;
    json::object endpoints;
    if (auto* e = c.if_contains("endpoints"); e && e->is_object()) endpoints = e->as_object();
    c.erase("endpoints");
    auto restored = cluster_from_json(c);
    if (!restored.ok()) {
      return make_error(restored.error().condition,
                        "journal " + journal->path() + ": cluster: " + restored.error().message);
    }
    cluster = std::move(restored).value();
    for (auto& h : cluster.hosts) {
      auto& m = hosts[h.id];
      if (auto* e = endpoints.if_contains(h.id); e && e->is_string()) {
        if (auto ep = parse_endpoint(e->as_string()); ep.ok()) m.endpoint = *ep;
      }
      m.last_answer = Clock::now();  // a restart gives every host the full grace period again
    }
    for (const auto& i : cluster.instances) {
      const Service* s = cluster.find_service(i.service);
      auto& im = instances[instance_name(i.service, i.index)];
      im.status = "Unknown";
      im.image = s ? s->image : "";
    }
  }
  FL_ASSIGN_OR_RETURN(auto rows, journal->drills());
  for (auto& row : rows) {
    auto d = std::make_shared<DrillRun>();
    d->id = row.id;
    // A state this build does not know (a newer journal) is not resumed: it reads as Failed.
    auto state = parse_drill_state(row.state);
    d->state = state.ok() ? *state : DrillState::failed;
    const auto& o = row.doc;
    if (auto* s = o.if_contains("spec"); s && s->is_object()) {
      if (auto spec = drill_spec_from_json(s->as_object()); spec.ok()) d->spec = *spec;
    }
    d->reason = str(o, "reason");
    d->current_batch = static_cast<int>(int_or(o, "current_batch", 0));
    d->started_ms = int_or(o, "started_ms", 0);
    d->finished_ms = int_or(o, "finished_ms", 0);
    d->notice_ms = int_or(o, "notice_ms", 0);
    if (auto* m = o.if_contains("traffic_measured"); m && m->is_bool())
      d->traffic_measured = m->as_bool();
    d->traffic_reason = str(o, "traffic_reason");
    d->resumed = is_resumable(d->state);
    if (auto* p = o.if_contains("plan"); p && p->is_object()) {
      if (auto plan = plan_from_json(p->as_object()); plan.ok()) d->plan = *plan;
    }
    if (auto* bs = o.if_contains("batches"); bs && bs->is_array()) {
      for (const auto& v : bs->as_array()) {
        if (!v.is_object()) continue;
        const auto& bo = v.as_object();
        BatchRun b;
        b.index = static_cast<int>(int_or(bo, "index", 0));
        if (auto* hs = bo.if_contains("hosts"); hs && hs->is_array()) {
          for (const auto& h : hs->as_array()) {
            if (h.is_string()) b.hosts.emplace_back(h.as_string());
          }
        }
        b.status = str(bo, "status");
        b.started_ms = ms_of(str(bo, "started_at"));
        b.finished_ms = ms_of(str(bo, "finished_at"));
        d->batches.push_back(std::move(b));
      }
    }
    if (auto* bef = o.if_contains("before"); bef && bef->is_object()) {
      for (const auto& [name, v] : bef->as_object()) {
        if (!v.is_object()) continue;
        const auto& b = v.as_object();
        d->before[std::string(name)] = InstanceBefore{
            str(b, "host"), str(b, "image"), str(b, "host_image"), int_or(b, "counter", -1)};
      }
    }
    if (auto* hib = o.if_contains("host_image_before"); hib && hib->is_object()) {
      for (const auto& [h, v] : hib->as_object()) {
        if (v.is_string()) d->host_image_before[std::string(h)] = v.as_string();
      }
    }
    if (auto* up = o.if_contains("app_up"); up && up->is_array()) {
      for (const auto& n : up->as_array()) {
        if (n.is_string()) d->app_up.emplace(n.as_string());
      }
    }
    if (auto* notes = o.if_contains("notes"); notes && notes->is_array()) {
      for (const auto& n : notes->as_array()) {
        if (n.is_string()) d->notes.emplace_back(n.as_string());
      }
    }
    FL_ASSIGN_OR_RETURN(auto progress, journal->host_progress(d->id));
    for (auto& p : progress) d->progress[p.host] = p;
    d->pause_requested = d->state == DrillState::paused;
    drills[d->id] = d;
    active = d;
  }
  if (active && is_resumable(active->state)) {
    // Rebuild the timelines of this drill from the journaled events.
    int64_t since_ms = active->started_ms;
    uint64_t seq = 0;
    int64_t last_event_ms = 0;
    for (;;) {
      FL_ASSIGN_OR_RETURN(auto page, journal->events_since(seq, 5000));
      if (page.empty()) break;
      for (const auto& text : page) {
        auto ev = parse_json_object(text, 1 << 20, 64, "journaled event");
        if (!ev.ok()) continue;
        seq = static_cast<uint64_t>(int_or(*ev, "seq", 0));
        int64_t t = ms_of(str(*ev, "time"));
        last_event_ms = std::max(last_event_ms, t);
        if (str(*ev, "type") != "instance.state") continue;
        auto* inst = ev->if_contains("instance");
        if (!inst || !inst->is_object()) continue;
        const auto& io = inst->as_object();
        std::string name = str(io, "name");
        auto it = instances.find(name);
        if (it == instances.end()) continue;
        bool healthy = false;
        if (auto* h = io.if_contains("healthy"); h && h->is_bool()) healthy = h->as_bool();
        auto& tl = it->second.timeline;
        if (t < since_ms) {
          // Before the drill only the latest state counts: it is the one the drill began with.
          // Without it the report reads the start of the window as unknown, i.e. down.
          tl.assign(1, HealthChange{t, healthy});
        } else if (tl.empty() || tl.back().healthy != healthy) {
          tl.push_back({t, healthy});
        }
        it->second.healthy = healthy;
        it->second.status = str(io, "status");
        it->second.image = str(io, "image");
        it->second.counter = int_or(io, "counter", -1);
      }
    }
    std::string note =
        "orchestrator restarted; not observing from " +
        rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(last_event_ms))) +
        " to " + rfc3339_now() + " (last known health carried over)";
    active->notes.push_back(note);
    log()->info("[drill:{}] resuming at batch {} of {} ({})", active->id, active->current_batch + 1,
                active->batches.size(), to_string(active->state));
  }
  return {};
}

}  // namespace fabriclab::orchestrator
