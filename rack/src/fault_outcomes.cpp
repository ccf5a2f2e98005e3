// What the system did about each fault (faults.hpp explain_outcomes), read from the
// orchestrator's feed after the fault's injection, the drill's final state and its report. Every
// line is something the feed or the report shows; nothing is inferred from the fault's kind alone.
#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <map>
#include <set>

#include "fabriclab/common/json_get.hpp"
#include "fabriclab/rack/faults.hpp"

namespace fabriclab::rack {

namespace {

using json_get::arr;
using json_get::str;

int64_t time_of(const json::object& e) { return parse_rfc3339_ms(str(e, "time")).value_or(0); }

std::string secs(int64_t ms) { return fmt::format("{:.1f} s", std::max<int64_t>(ms, 0) / 1000.0); }

const json::object* sub(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  return v && v->is_object() ? &v->as_object() : nullptr;
}

// The hosts a fault hits: its host, every host of its fault domain, or none.
std::set<std::string> hosts_hit(const FaultRecord& r, const json::object& report) {
  std::set<std::string> h;
  if (r.spec.target_kind == "host") h.insert(r.spec.target);
  if (r.spec.target_kind == "fault_domain") {
    for (const auto& v : arr(report, "hosts")) {
      if (v.is_object() && json_get::int_or(v.as_object(), "fd", -1) == r.spec.fault_domain)
        h.insert(str(v, "id"));
    }
  }
  return h;
}

std::string explain_one(const FaultRecord& r, const std::vector<json::object>& events,
                        const json::object& drill, const json::object& report) {
  const int64_t t0 = r.injected_ms;
  const auto hosts = hosts_hit(r, report);
  const std::string inst = r.spec.target_kind == "instance" ? r.spec.target : "";
  std::vector<std::string> lines;
  std::map<std::string, std::string> host_seen;  // host -> last state reported after t0
  std::vector<std::string> healed;
  bool inst_down = false, inst_back = false, back_seen = false;
  for (const auto& e : events) {
    const int64_t t = time_of(e);
    if (t + 50 < t0) continue;  // the feed's clock and ours are the same host's
    const std::string type = str(e, "type");
    if (type == "host.state" && hosts.count(str(e, "host"))) {
      const std::string h = str(e, "host"), s = str(e, "state");
      std::string& last = host_seen[h];
      if ((s == "Unhealthy" || s == "Offline") && last != s) {
        lines.push_back(fmt::format("{} {} after {}", h, s, secs(t - t0)));
      } else if (s == "Ready" && (last == "Unhealthy" || last == "Offline")) {
        lines.push_back(fmt::format("{} Ready again after {}", h, secs(t - t0)));
      }
      last = s;
    } else if (type == "service.healed" &&
               (hosts.count(str(e, "from_host")) || str(e, "instance") == inst)) {
      healed.push_back(
          fmt::format("{} {}->{}", str(e, "instance"), str(e, "from_host"), str(e, "to_host")));
    } else if (type == "service.healing_failed" && hosts.count(str(e, "host"))) {
      lines.push_back("healing failed: " + str(e, "reason"));
    } else if (type == "drill.host" && hosts.count(str(e, "host")) &&
               str(e, "status") == "failed") {
      const std::string why = str(e, "reason");
      lines.push_back(str(e, "host") + "'s update failed" + (why.empty() ? "" : ": " + why));
    } else if (type == "instance.state" && !inst.empty()) {
      const json::object* i = sub(e, "instance");
      if (!i || str(*i, "name") != inst) continue;
      auto* hv = i->if_contains("healthy");
      const bool healthy = hv && hv->is_bool() && hv->as_bool();
      if (!healthy && !inst_down) {
        inst_down = true;
        lines.push_back(
            fmt::format("{} down after {} ({})", inst, secs(t - t0), str(*i, "status")));
      } else if (healthy && inst_down && !inst_back) {
        inst_back = true;
        lines.push_back(
            fmt::format("{} healthy again on {} after {}", inst, str(*i, "host"), secs(t - t0)));
      }
    } else if (r.spec.kind == "kill-orchestrator" && r.ended_ms && t >= r.ended_ms && !back_seen &&
               type == "drill.state") {
      back_seen = true;
      const json::object* d = sub(e, "drill");
      lines.push_back(fmt::format("the restarted orchestrator resumed the drill ({})",
                                  d ? str(*d, "state") : "?"));
    }
  }
  if (!healed.empty()) {
    std::string h;
    for (size_t k = 0; k < healed.size() && k < 6; ++k) h += (k ? ", " : "") + healed[k];
    if (healed.size() > 6) h += fmt::format(" and {} more", healed.size() - 6);
    lines.push_back("healed " + h);
  }
  if (!inst.empty()) {
    for (const auto& v : arr(report, "instances")) {
      if (!v.is_object() || str(v, "name") != inst) continue;
      if (str(v, "stop_method") == "destroyed")
        lines.push_back(inst + " stopped by force (destroyed) after its stop timeout");
    }
  }
  const std::string state = str(drill, "state"), reason = str(drill, "reason");
  bool named = false;
  for (const auto& h : hosts) named = named || reason.find(h) != std::string::npos;
  if (!inst.empty()) named = named || reason.find(inst) != std::string::npos;
  if (state != "Completed" &&
      (named || r.spec.kind == "kill-orchestrator" || r.spec.kind == "corrupt-host-image")) {
    lines.push_back("the drill ended " + state + (reason.empty() ? "" : ": " + reason));
  }
  if (lines.empty()) return "no reaction seen on the feed (the drill ended " + state + ")";
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : "; ") + l;
  return out;
}

}  // namespace

void explain_outcomes(std::vector<FaultRecord>& records, const std::vector<json::object>& events,
                      const json::object& drill, const json::object& report) {
  for (auto& r : records) {
    if (r.status == "injected") r.outcome = explain_one(r, events, drill, report);
  }
}

}  // namespace fabriclab::rack
