// The drill report's figures and verdicts (orchestrator/report.hpp).
//
// Everything rests on one reading of a timeline: `clip` turns an instance's health changes into
// contiguous segments covering the window exactly, with the state before the first entry marked
// unknown (and counted as down). Per-instance down time sums the down segments. Per-service
// availability sweeps the segment starts of all the service's instances in time order, keeping
// the number of down instances and, per UD, the number of down instances; each stretch between
// two distinct times has one state, and only stretches of positive length count. That makes the
// half-open reading of the header exact: a hand-over at the same millisecond is not an outage,
// and a zero-length window has no moments at all.
//
// The report refuses to pass on missing data rather than guess: an unknown counter, an unknown
// image, an unknown drill kind or a silent guest each fail their check and are named in it.
//
// What the clients saw (traffic_summary, the per-service traffic object) is report_traffic.cpp.

#include "fabriclab/orchestrator/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <tuple>
#include <utility>

#include "report_internal.hpp"

namespace fabriclab::orchestrator {

namespace report_detail {

constexpr size_t kMaxNamesInDetail = 20;

std::string name_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t k = 0; k < items.size() && k < kMaxNamesInDetail; ++k) {
    if (k > 0) out += ", ";
    out += items[k];
  }
  if (items.size() > kMaxNamesInDetail) {
    out += fmt::format(" and {} more", items.size() - kMaxNamesInDetail);
  }
  return out;
}

json::object check(std::string_view name, bool passed, std::string detail) {
  return json::object{{"name", name}, {"passed", passed}, {"detail", std::move(detail)}};
}

double seconds(int64_t ms) { return static_cast<double>(ms) / 1000.0; }
double round_to(double v, double scale) { return std::round(v * scale) / scale; }

std::string format_seconds(int64_t ms) {
  std::string s = fmt::format("{:.3f}", seconds(ms));
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

json::value int_or_null(int64_t v) {
  if (v < 0) return nullptr;
  return v;
}

}  // namespace report_detail

namespace {

using report_detail::check;
using report_detail::format_seconds;
using report_detail::int_or_null;
using report_detail::name_list;
using report_detail::promises_clients;
using report_detail::round_to;
using report_detail::seconds;
using report_detail::traffic_json;
using report_detail::traffic_note;

constexpr int64_t kMonthMs = 30LL * 24 * 3600 * 1000;

struct Segment {
  int64_t from = 0, to = 0;
  bool healthy = false;
  bool known = false;
};

int64_t window_end(const ReportInput& in) { return std::max(in.finished_ms, in.started_ms); }

// The instance's state over [started_ms, end), as contiguous segments (empty for no window).
std::vector<Segment> clip(const ReportInput& in, const ReportInstance& i) {
  const int64_t s = in.started_ms, f = window_end(in);
  std::vector<Segment> out;
  if (f == s) return out;
  std::vector<HealthChange> changes = i.timeline;
  std::stable_sort(changes.begin(), changes.end(),
                   [](const HealthChange& a, const HealthChange& b) { return a.t_ms < b.t_ms; });
  Segment cur{s, f, false, false};
  for (const HealthChange& c : changes) {
    if (c.t_ms >= f) break;
    if (c.t_ms > cur.from) {
      cur.to = c.t_ms;
      out.push_back(cur);
      cur.from = c.t_ms;
    }
    cur.healthy = c.healthy;  // several entries at one t_ms: the last one listed wins
    cur.known = true;
  }
  cur.to = f;
  out.push_back(cur);
  // Merge neighbours in the same state, so the JSON timeline lists real transitions only.
  std::vector<Segment> merged;
  for (const Segment& g : out) {
    if (!merged.empty() && merged.back().healthy == g.healthy && merged.back().known == g.known) {
      merged.back().to = g.to;
    } else {
      merged.push_back(g);
    }
  }
  return merged;
}

json::value seconds_or_null(int64_t ms) {
  if (ms < 0) return nullptr;
  return seconds(ms);
}
json::value time_or_null(int64_t unix_ms) {
  if (unix_ms <= 0) return nullptr;
  return json::string(
      rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(unix_ms))));
}

double clamped_sla(const ReportInput& in) { return std::clamp(in.sla_percent, 0.0, 100.0); }

// Services in report order: the declared ones, then any only the instances name.
std::vector<ReportService> report_services(const ReportInput& in) {
  std::vector<ReportService> out = in.services;
  std::set<std::string> seen;
  for (const ReportService& s : in.services) seen.insert(s.name);
  for (const ReportInstance& i : in.instances) {
    if (seen.insert(i.service).second) {
      int n = static_cast<int>(
          std::count_if(in.instances.begin(), in.instances.end(),
                        [&](const ReportInstance& x) { return x.service == i.service; }));
      out.push_back(ReportService{i.service, n, 5});
    }
  }
  return out;
}

std::string off_target_reason(const ReportInput& in, const ReportInstance& i) {
  if (in.kind == "host-os") {
    return fmt::format("{} on host image '{}' (target '{}')", i.name, i.host_image_after,
                       in.target);
  }
  if (in.kind == "guest-os") {
    return fmt::format("{} on image '{}' (target '{}')", i.name, i.image_after, in.target);
  }
  if (i.image_before != i.image_after) {
    return fmt::format("{} image changed '{}' -> '{}'", i.name, i.image_before, i.image_after);
  }
  return fmt::format("{} host image changed '{}' -> '{}'", i.name, i.host_image_before,
                     i.host_image_after);
}

std::string counter_text(int64_t v) { return v < 0 ? std::string("unknown") : std::to_string(v); }

// Whether the instance carries the built-in guest's counter: not when its agent says the guest
// offers no heartbeat (a guest that brings its own image; its data check is its proof instead).
bool has_builtin_counter(const ReportInstance& i) { return !i.signals_reported || i.heartbeat; }

// "counter kept": every instance with the built-in counter kept it; healed instances (new VMs)
// and guests without the counter are named, not judged.
json::object counter_check(const ReportInput& in) {
  std::vector<std::string> lost, healed, none;
  for (const ReportInstance& i : in.instances) {
    if (i.healed) {
      healed.push_back(fmt::format("{} ({} -> {})", i.name, i.host_before, i.host));
    } else if (!has_builtin_counter(i)) {
      none.push_back(i.name);
    } else if (!counter_kept(i)) {
      lost.push_back(fmt::format("{} ({} -> {})", i.name, counter_text(i.counter_before),
                                 counter_text(i.counter_after)));
    }
  }
  const size_t judged = in.instances.size() - healed.size() - none.size();
  std::string detail = lost.empty() ? fmt::format("all {} counters kept", judged)
                                    : fmt::format("counter lost or unknown: {}", name_list(lost));
  if (lost.empty() && !healed.empty()) {
    detail += fmt::format("; {} healed on a new host (new VM, counter restarted): {}",
                          healed.size(), name_list(healed));
  }
  if (!none.empty()) {
    detail += fmt::format("; no built-in counter (no heartbeat; the data check is their proof): {}",
                          name_list(none));
  }
  return check("counter kept", lost.empty(), std::move(detail));
}

json::object drill_json(const ReportInput& in) {
  const int64_t window = window_end(in) - in.started_ms;
  return json::object{
      {"id", in.drill_id},
      {"kind", in.kind},
      {"target", in.target},
      {"state", in.state},
      {"reason", in.reason},
      {"started_at", time_or_null(in.started_ms)},
      {"finished_at", time_or_null(in.finished_ms)},
      {"duration_s", seconds(window)},
      {"sla_percent", clamped_sla(in)},
  };
}

json::object walk_json(const ReportInput& in) {
  json::array list;
  for (const ReportBatch& b : in.batches) {
    json::array hosts;
    for (const std::string& h : b.hosts) hosts.emplace_back(h);
    const bool started = b.started_ms > 0, finished = b.finished_ms > 0;
    list.emplace_back(json::object{
        {"index", b.index},
        {"hosts", std::move(hosts)},
        {"started_at", time_or_null(b.started_ms)},
        {"finished_at", time_or_null(b.finished_ms)},
        {"start_s", started ? json::value(seconds(b.started_ms - in.started_ms)) : nullptr},
        {"end_s", finished ? json::value(seconds(b.finished_ms - in.started_ms)) : nullptr},
        {"duration_s", started && finished && b.finished_ms >= b.started_ms
                           ? json::value(seconds(b.finished_ms - b.started_ms))
                           : nullptr},
        {"status", b.status},
    });
  }
  return json::object{{"lower_bound", in.lower_bound},
                      {"batches", static_cast<int64_t>(in.batches.size())},
                      {"batch_list", std::move(list)}};
}

json::object placement_json(const ReportInput& in) {
  std::set<int> fds;
  for (const ReportHost& h : in.hosts) fds.insert(h.fd);
  int uds = 0;
  std::map<std::pair<int, int>, std::vector<const ReportInstance*>> cells;
  for (const ReportInstance& i : in.instances) {
    fds.insert(i.fd);
    uds = std::max(uds, i.ud + 1);
    cells[{i.ud, i.fd}].push_back(&i);
  }
  json::array fd_list;
  for (int fd : fds) fd_list.emplace_back(fd);
  json::array cell_list;
  for (auto& [key, members] : cells) {
    std::stable_sort(members.begin(), members.end(), [](const auto* a, const auto* b) {
      return std::tie(a->service, a->index) < std::tie(b->service, b->index);
    });
    json::array names;
    for (const ReportInstance* i : members) names.emplace_back(i->name);
    cell_list.emplace_back(
        json::object{{"ud", key.first}, {"fd", key.second}, {"instances", std::move(names)}});
  }
  return json::object{{"fault_domains", std::move(fd_list)},
                      {"update_domains", uds},
                      {"cells", std::move(cell_list)}};
}

json::object service_json(const ReportService& s, const ServiceAvailability& a, json::value traffic,
                          std::string traffic_note) {
  json::value budget = nullptr, used_s = nullptr, used_pct = nullptr;
  if (a.sla_applies) {
    budget = seconds(a.budget_ms_per_month);
    used_s = seconds(a.unavailable_ms);
    used_pct = round_to(a.budget_used_percent, 1e4);
  }
  return json::object{
      {"name", a.service},
      {"instances", a.instances},
      {"ud_count", s.ud_count},
      {"sla_applies", a.sla_applies},
      {"always_available", a.always_available},
      {"availability_percent", round_to(a.availability_percent, 1e4)},
      {"unavailable_s", seconds(a.unavailable_ms)},
      {"max_uds_down", a.max_uds_down},
      {"max_instances_down", a.max_instances_down},
      {"error_budget_s_per_month", budget},
      {"error_budget_used_s", used_s},
      {"error_budget_used_percent", used_pct},
      {"verdict", a.verdict},
      {"traffic", std::move(traffic)},
      {"traffic_note", std::move(traffic_note)},
  };
}

json::object instance_json(const ReportInput& in, const ReportInstance& i) {
  json::array timeline;
  for (const Segment& g : clip(in, i)) {
    if (!g.known) continue;  // unknown: the timeline starts later
    timeline.emplace_back(
        json::object{{"t_s", seconds(g.from - in.started_ms)}, {"healthy", g.healthy}});
  }
  json::object o{
      {"name", i.name},
      {"service", i.service},
      {"index", i.index},
      {"ud", i.ud},
      {"fd", i.fd},
      {"host", i.host},
      {"host_before", i.host_before},
      {"healed", i.healed},
      {"down_s", seconds(instance_down_ms(in, i))},
      {"agent_down_s", seconds_or_null(i.agent_down_ms)},
      {"notice_s", seconds_or_null(i.notice_ms)},
      {"ack_s", seconds_or_null(i.ack_ms)},
      {"stop_method", i.stop_method},
      {"image_before", i.image_before},
      {"image_after", i.image_after},
      {"host_image_before", i.host_image_before},
      {"host_image_after", i.host_image_after},
      {"counter_before", int_or_null(i.counter_before)},
      {"counter_after", int_or_null(i.counter_after)},
      {"counter_kept", counter_kept(i)},
      {"healthy_at_end", i.healthy_at_end},
      {"on_target", instance_on_target(in, i)},
      {"ok", i.ok},
      {"error", i.error},
      {"timeline", std::move(timeline)},
  };
  report_detail::add_guest_fields(i, o);
  return o;
}

}  // namespace

int64_t instance_down_ms(const ReportInput& in, const ReportInstance& i) {
  int64_t down = 0;
  for (const Segment& g : clip(in, i)) {
    if (!g.healthy) down += g.to - g.from;
  }
  return down;
}

ServiceAvailability service_availability(const ReportInput& in, const ReportService& s) {
  ServiceAvailability a;
  a.service = s.name;
  std::vector<const ReportInstance*> members;
  for (const ReportInstance& i : in.instances) {
    if (i.service == s.name) members.push_back(&i);
  }
  a.instances = static_cast<int>(members.size());
  a.sla_applies = a.instances >= 2;

  const int64_t start = in.started_ms, end = window_end(in);
  struct Change {
    int64_t t;
    size_t member;
    bool down;
  };
  std::vector<Change> changes;
  for (size_t m = 0; m < members.size(); ++m) {
    for (const Segment& g : clip(in, *members[m])) changes.push_back({g.from, m, !g.healthy});
  }
  std::stable_sort(changes.begin(), changes.end(),
                   [](const Change& x, const Change& y) { return x.t < y.t; });

  if (members.empty()) {
    a.unavailable_ms = end - start;  // nothing to serve with
  } else {
    std::vector<char> down(members.size(), 0);
    std::map<int, int> down_per_ud;
    int down_count = 0;
    for (size_t k = 0; k < changes.size();) {
      const int64_t t = changes[k].t;
      for (; k < changes.size() && changes[k].t == t; ++k) {
        const Change& c = changes[k];
        if (static_cast<bool>(down[c.member]) == c.down) continue;
        down[c.member] = c.down;
        const int ud = members[c.member]->ud;
        down_count += c.down ? 1 : -1;
        if ((down_per_ud[ud] += c.down ? 1 : -1) == 0) down_per_ud.erase(ud);
      }
      const int64_t next = k < changes.size() ? changes[k].t : end;
      if (next <= t) continue;  // clip() covers the window, so this is only a zero-length stretch
      if (down_count == a.instances) a.unavailable_ms += next - t;
      a.max_instances_down = std::max(a.max_instances_down, down_count);
      a.max_uds_down = std::max(a.max_uds_down, static_cast<int>(down_per_ud.size()));
    }
  }
  a.always_available = a.unavailable_ms == 0;
  const int64_t window = end - start;
  if (window > 0) {
    a.availability_percent =
        100.0 * static_cast<double>(window - a.unavailable_ms) / static_cast<double>(window);
  }
  if (a.sla_applies) {
    // (100 - sla) / 100 rather than 1 - sla / 100: 99.95 gives exactly 1296 s, not 1295.999...
    a.budget_ms_per_month = std::llround((100.0 - clamped_sla(in)) / 100.0 * kMonthMs);
    if (a.budget_ms_per_month > 0) {
      a.budget_used_percent = 100.0 * static_cast<double>(a.unavailable_ms) /
                              static_cast<double>(a.budget_ms_per_month);
    } else if (a.unavailable_ms > 0) {
      a.budget_used_percent = 100.0;
    }
  }

  if (a.instances == 0) {
    a.verdict = "no instances";
  } else if (!a.sla_applies) {
    a.verdict =
        fmt::format("no SLA (single instance): down {} s", format_seconds(a.unavailable_ms));
  } else if (a.always_available) {
    a.verdict = "kept serving";
  } else {
    a.verdict = fmt::format("lost availability for {} s", format_seconds(a.unavailable_ms));
  }
  return a;
}

bool instance_on_target(const ReportInput& in, const ReportInstance& i) {
  if (in.kind == "host-os") return i.host_image_after == in.target;
  if (in.kind == "guest-os") return i.image_after == in.target;
  if (in.kind == "freeze") {
    return i.image_after == i.image_before && i.host_image_after == i.host_image_before;
  }
  return false;
}

bool counter_kept(const ReportInstance& i) {
  return i.counter_before >= 0 && i.counter_after >= i.counter_before;
}

json::object build_report(const ReportInput& in) {
  json::object report;
  report["drill"] = drill_json(in);
  report["walk"] = walk_json(in);
  report["placement"] = placement_json(in);

  json::array hosts;
  for (const ReportHost& h : in.hosts) {
    hosts.emplace_back(json::object{{"id", h.id},
                                    {"fd", h.fd},
                                    {"image_before", h.image_before},
                                    {"image_after", h.image_after},
                                    {"state", h.state}});
  }
  report["hosts"] = std::move(hosts);

  json::array services;
  std::vector<std::string> lost, unserved, not_checked;
  size_t clients_checked = 0;
  for (const ReportService& s : report_services(in)) {
    ServiceAvailability a = service_availability(in, s);
    if (a.sla_applies && !a.always_available)
      lost.push_back(fmt::format("{} ({})", a.service, a.verdict));
    const ReportTraffic* t = nullptr;
    for (const ReportTraffic& x : in.traffic) {
      if (x.service == s.name) t = &x;
    }
    json::value traffic = nullptr;
    std::string note;
    if (in.traffic_measured && t) {
      TrafficSummary m = traffic_summary(*t);
      traffic = traffic_json(in, *t, m, promises_clients(s, a));
      note = traffic_note(s, a, m);
      if (promises_clients(s, a)) {
        clients_checked++;
        if (m.requests == 0) {
          unserved.push_back(fmt::format("{} (no requests recorded)", s.name));
        } else if (m.failed > 0) {
          unserved.push_back(fmt::format("{} ({} of {} failed, longest run {} s)", s.name, m.failed,
                                         m.requests, format_seconds(m.longest_failure_run_ms)));
        }
      } else if (m.failed > 0) {
        not_checked.push_back(note);
      }
    }
    services.emplace_back(service_json(s, a, std::move(traffic), std::move(note)));
  }
  report["services"] = std::move(services);
  report["traffic"] =
      json::object{{"measured", in.traffic_measured},
                   {"reason", in.traffic_measured ? std::string() : in.traffic_reason}};

  json::array instances;
  std::vector<std::string> unhealthy, off_target;
  for (const ReportInstance& i : in.instances) {
    instances.emplace_back(instance_json(in, i));
    if (!i.healthy_at_end) unhealthy.push_back(i.name);
    if (!instance_on_target(in, i)) off_target.push_back(off_target_reason(in, i));
  }
  report["instances"] = std::move(instances);

  json::array events;
  for (const std::string& e : in.events) events.emplace_back(e);
  report["events"] = std::move(events);

  const size_t n = in.instances.size();
  const bool known_kind = in.kind == "host-os" || in.kind == "guest-os" || in.kind == "freeze";
  json::array checks;
  checks.emplace_back(check("drill completed", in.state == "Completed",
                            in.reason.empty() ? fmt::format("state {}", in.state)
                                              : fmt::format("state {}: {}", in.state, in.reason)));
  checks.emplace_back(check("healthy at end", unhealthy.empty(),
                            unhealthy.empty()
                                ? fmt::format("all {} instances healthy", n)
                                : fmt::format("not healthy: {}", name_list(unhealthy))));
  std::string target_detail;
  if (!known_kind) {
    target_detail =
        fmt::format("unknown drill kind '{}'; not on target: {}", in.kind, name_list(off_target));
  } else if (off_target.empty()) {
    target_detail = in.kind == "freeze" ? fmt::format("all {} instances kept their images", n)
                                        : fmt::format("all {} instances on '{}'", n, in.target);
  } else {
    target_detail = fmt::format("not on target: {}", name_list(off_target));
  }
  checks.emplace_back(
      check("on target", known_kind && off_target.empty(), std::move(target_detail)));
  checks.emplace_back(counter_check(in));
  checks.emplace_back(check("services kept serving", lost.empty(),
                            lost.empty() ? std::string("every service with an SLA kept serving")
                                         : fmt::format("lost availability: {}", name_list(lost))));
  if (in.traffic_measured) {
    std::string d;
    if (!unserved.empty()) {
      d = fmt::format("clients failed: {}", name_list(unserved));
    } else if (clients_checked == 0) {
      d = "no service with an endpoint, >= 2 instances and drain on";
    } else {
      d = fmt::format("no failed request to {} service(s) with >= 2 instances and drain on",
                      clients_checked);
    }
    if (!not_checked.empty()) d += fmt::format("; not checked: {}", name_list(not_checked));
    checks.emplace_back(check("clients kept served", unserved.empty(), std::move(d)));
  }
  report_detail::add_guest_checks(in, checks);

  bool passed = true;
  for (const json::value& c : checks) passed = passed && c.as_object().at("passed").as_bool();
  report["checks"] = std::move(checks);
  report["result"] = passed ? "passed" : "failed";
  return report;
}

}  // namespace fabriclab::orchestrator
