#include "drill_floor.hpp"

#include "fabriclab/rack/drill.hpp"

namespace fabriclab::bench_drill {

namespace {

// The instances of an agent that should run, once all of them heartbeat (healthy).
Result<json::array> healthy_instances(const Agents& agents, const AgentRef& a,
                                      std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string waiting;
  while (std::chrono::steady_clock::now() < deadline) {
    FL_ASSIGN_OR_RETURN(auto v, agents.call(a, "GET", "/v1/instances"));
    json::array want;
    waiting.clear();
    for (const auto& x : v.as_array()) {
      const auto& o = x.as_object();
      auto* w = o.if_contains("want_running");
      if (w && w->is_bool() && !w->as_bool()) continue;
      auto* h = o.if_contains("healthy");
      if (!(h && h->is_bool() && h->as_bool()) || !o.if_contains("last_heartbeat"))
        waiting.append(" ").append(str(o, "name"));
      want.push_back(x);
    }
    if (waiting.empty()) return want;
    if (!client::sleep_unless_interrupted(250ms))
      return make_error(Condition::cancelled, "interrupted");
  }
  return make_error(Condition::timeout, a.name + ": not healthy:" + waiting);
}

}  // namespace

RawHost raw_cycle_host(const Agents& agents, const std::string& host, int batch,
                       std::chrono::seconds timeout) {
  RawHost h;
  h.host = host;
  h.batch = batch;
  const AgentRef* a = agents.find(host);
  if (!a) {
    h.error = "no agent for host " + host;
    return h;
  }
  auto inst = healthy_instances(agents, *a, 120s);
  if (!inst.ok()) {
    h.error = inst.error().message;
    return h;
  }
  int64_t polled_at = now_ms();
  for (const auto& x : *inst) {
    const auto& o = x.as_object();
    RawGuest g;
    g.name = str(o, "name");
    g.host = host;
    g.batch = batch;
    const auto& hb = obj(o, "last_heartbeat");
    g.boot_before = str(hb, "boot_id");
    if (auto age = number(hb, "age_ms"))
      g.last_hb_before_ms = polled_at - static_cast<int64_t>(*age);
    h.guests.push_back(std::move(g));
  }
  if (h.guests.empty()) return h;  // nothing on this host: no time
  h.t0_ms = now_ms();
  for (auto& g : h.guests) {
    g.stop_req_ms = now_ms();
    auto r = agents.call(*a, "POST", "/v1/instances/" + g.name + "/stop", 120s);
    g.stop_done_ms = now_ms();
    if (!r.ok()) {
      h.error = r.error().message;
      break;
    }
  }
  h.stops_done_ms = now_ms();
  // Start every guest even after a failed stop: the rack must not be left with stopped guests.
  for (auto& g : h.guests) {
    g.start_req_ms = now_ms();
    auto r = agents.call(*a, "POST", "/v1/instances/" + g.name + "/start", 120s);
    g.start_done_ms = now_ms();
    if (!r.ok() && h.error.empty()) h.error = r.error().message;
  }
  h.starts_done_ms = now_ms();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto v = agents.call(*a, "GET", "/v1/instances");
    int64_t at = now_ms();
    bool all = true;
    if (v.ok() && v->is_array()) {
      for (auto& g : h.guests) {
        if (g.first_hb_ms >= 0) continue;
        for (const auto& x : v->as_array()) {
          const auto& o = x.as_object();
          if (str(o, "name") != g.name) continue;
          const auto& hb = obj(o, "last_heartbeat");
          std::string boot = str(hb, "boot_id");
          if (!boot.empty() && boot != g.boot_before) {
            g.first_hb_ms = at - int_or(hb, "age_ms", 0);
            g.first_hb_seq = int_or(hb, "seq", -1);
          }
        }
        if (g.first_hb_ms < 0) all = false;
      }
    } else {
      all = false;
    }
    if (all) break;
    if (!client::sleep_unless_interrupted(50ms)) {
      if (h.error.empty()) h.error = "interrupted";
      break;
    }
  }
  if (!h.complete() && h.error.empty())
    h.error = "not every guest heartbeat within " + std::to_string(timeout.count()) + " s";
  return h;
}
}  // namespace fabriclab::bench_drill
