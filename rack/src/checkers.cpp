// The chaos campaign's checkers (checkers.hpp). Each walks its evidence once, in time order, and
// keeps the first offence for the detail and a count of all of them.
#include "fabriclab/rack/checkers.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <climits>
#include <optional>

#include "fabriclab/common/json_get.hpp"

namespace fabriclab::rack {

namespace {

using json_get::arr;
using json_get::str;

struct Placed {
  std::string service, host;
  int ud = -1;
};

void place(std::map<std::string, Placed>& at, const json::object& i) {
  const std::string name = str(i, "name");
  if (name.empty()) return;
  Placed& p = at[name];
  if (auto s = str(i, "service"); !s.empty()) p.service = s;
  if (auto h = str(i, "host"); !h.empty()) p.host = h;
  if (auto* u = i.if_contains("ud"); u && u->is_int64()) p.ud = static_cast<int>(u->as_int64());
}

// Per service, the UDs (with one instance each as an example) among `hosts`; the first service
// with two or more, as "web: UD0 (web-0 on h0), UD1 (web-1 on h1)"; "" when none.
std::string two_uds(const std::map<std::string, Placed>& at, const std::set<std::string>& hosts) {
  std::map<std::string, std::map<int, std::string>> uds;
  for (const auto& [name, p] : at) {
    if (p.ud >= 0 && hosts.count(p.host)) uds[p.service].emplace(p.ud, name + " on " + p.host);
  }
  for (const auto& [svc, m] : uds) {
    if (m.size() < 2) continue;
    std::string s = svc + ":";
    for (const auto& [ud, ex] : m) s += fmt::format(" UD{} ({})", ud, ex);
    return s;
  }
  return {};
}

CheckResult verdict(std::string name, int offences, const std::string& first,
                    const std::string& ok_detail) {
  CheckResult r;
  r.name = std::move(name);
  r.passed = offences == 0;
  r.detail = r.passed
                 ? ok_detail
                 : fmt::format("{} (at {} moment{})", first, offences, offences == 1 ? "" : "s");
  return r;
}

bool is_final_state(const std::string& s) {
  return s == "Completed" || s == "Failed" || s == "Aborted";
}

}  // namespace

CheckResult check_ud_rule_feed(const std::vector<json::object>& feed) {
  std::map<std::string, Placed> at;
  std::set<std::string> in_flight;
  int offences = 0, moments = 0;
  std::string first;
  // A drill's JSON says which of its hosts are running now: a snapshot (the first one, or a resync
  // after an orchestrator restart, when the "done" of a host may have happened unseen) and every
  // drill.state reset the hosts in flight to it.
  auto from_drill = [&in_flight](const json::object& d) {
    if (!d.contains("hosts")) return;
    in_flight.clear();
    if (is_final_state(str(d, "state"))) return;
    for (const auto& h : arr(d, "hosts")) {
      if (h.is_object() && str(h, "status") == "running") in_flight.insert(str(h, "host"));
    }
  };
  for (const auto& e : feed) {
    const std::string type = str(e, "type");
    if (type == "snapshot") {
      if (auto* st = e.if_contains("state"); st && st->is_object()) {
        for (const auto& v : arr(st->as_object(), "instances")) {
          if (v.is_object()) place(at, v.as_object());
        }
        if (auto* d = st->as_object().if_contains("drill"); d && d->is_object())
          from_drill(d->as_object());
      }
      continue;
    }
    if (type == "instance.state") {
      if (auto* i = e.if_contains("instance"); i && i->is_object()) place(at, i->as_object());
    } else if (type == "drill.host") {
      const std::string h = str(e, "host");
      if (str(e, "status") == "running") {
        in_flight.insert(h);
      } else {
        in_flight.erase(h);
      }
    } else if (type == "drill.state") {
      if (auto* d = e.if_contains("drill"); d && d->is_object()) {
        if (is_final_state(str(d->as_object(), "state"))) in_flight.clear();
        from_drill(d->as_object());
      }
      continue;
    } else {
      continue;
    }
    if (in_flight.size() < 2) continue;
    ++moments;
    if (auto two = two_uds(at, in_flight); !two.empty()) {
      if (offences++ == 0)
        first = fmt::format("two UDs in maintenance at once (seq {}, {}): {}",
                            json_get::int_or(e, "seq", -1), str(e, "time"), two);
    }
  }
  return verdict("UD rule (feed)", offences, first,
                 fmt::format("never two UDs of a service in maintenance at once ({} moments with "
                             "several hosts in flight)",
                             moments));
}

std::vector<JobSpan> job_spans(const std::string& host, const json::array& operations) {
  std::vector<JobSpan> out;
  for (const auto& v : operations) {
    if (!v.is_object()) continue;
    const auto& o = v.as_object();
    JobSpan j;
    j.host = host;
    j.start_ms = parse_rfc3339_ms(str(o, "started_at")).value_or(0);
    j.end_ms = parse_rfc3339_ms(str(o, "finished_at")).value_or(0);
    for (const auto& g : arr(o, "guests")) {
      if (g.is_object() && !str(g, "name").empty()) j.guests.push_back(str(g, "name"));
    }
    if (j.start_ms > 0) out.push_back(std::move(j));
  }
  return out;
}

CheckResult check_ud_rule_jobs(const std::vector<JobSpan>& jobs,
                               const std::map<std::string, std::pair<std::string, int>>& ud_of) {
  int offences = 0;
  std::string first;
  auto end_of = [](const JobSpan& j) { return j.end_ms > 0 ? j.end_ms : INT64_MAX; };
  for (size_t a = 0; a < jobs.size(); ++a) {
    for (size_t b = a + 1; b < jobs.size(); ++b) {
      const JobSpan &x = jobs[a], &y = jobs[b];
      if (x.host == y.host) continue;
      if (!(x.start_ms < end_of(y) && y.start_ms < end_of(x))) continue;  // half-open: no overlap
      for (const auto& gx : x.guests) {
        for (const auto& gy : y.guests) {
          auto ix = ud_of.find(gx), iy = ud_of.find(gy);
          if (ix == ud_of.end() || iy == ud_of.end()) continue;
          if (ix->second.first != iy->second.first || ix->second.second == iy->second.second)
            continue;
          if (offences++ == 0) {
            first = fmt::format("{}: UD{} ({} on {}) and UD{} ({} on {}) in jobs that overlapped",
                                ix->second.first, ix->second.second, gx, x.host, iy->second.second,
                                gy, y.host);
          }
        }
      }
    }
  }
  CheckResult r = verdict(
      "UD rule (agents' jobs)", offences, first,
      fmt::format("no two overlapping jobs took two UDs of a service down ({} jobs)", jobs.size()));
  if (!r.passed)
    r.detail = fmt::format("{} ({} pair{})", first, offences, offences == 1 ? "" : "s");
  return r;
}

void add_agent_instances(PlacementSample& sample, const std::string& host,
                         const json::array& instances) {
  for (const auto& v : instances) {
    if (!v.is_object()) continue;
    const std::string st = str(v, "status");
    if (st == "Starting" || st == "Healthy" || st == "Stopping")
      sample.hosts_of[str(v, "name")].insert(host);
  }
}

CheckResult check_single_host(const std::vector<PlacementSample>& samples,
                              const std::string& source) {
  int offences = 0;
  std::string first;
  for (const auto& s : samples) {
    for (const auto& [name, hosts] : s.hosts_of) {
      if (hosts.size() < 2) continue;
      if (offences++ == 0) {
        std::string hs;
        for (const auto& h : hosts) hs += (hs.empty() ? "" : " and ") + h;
        first = fmt::format(
            "{} ran on {} at once ({})", name, hs,
            rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(s.t_ms))));
      }
    }
  }
  return verdict("one host per instance (" + source + ")", offences, first,
                 fmt::format("no instance on two hosts in {} looks", samples.size()));
}

void add_counters(std::map<std::string, CounterReading>& out, const std::string& host,
                  const json::array& instances) {
  for (const auto& v : instances) {
    if (!v.is_object()) continue;
    const std::string name = str(v, "name");
    const std::string st = str(v, "status");
    if (name.empty() || st == "Stopped" || st == "Failed") continue;  // a stale copy says nothing
    CounterReading r{host, -1};
    if (auto* hb = v.as_object().if_contains("last_heartbeat"); hb && hb->is_object()) {
      r.counter = json_get::int_or(hb->as_object(), "counter", -1);
    }
    auto it = out.find(name);
    if (it == out.end() || it->second.counter < 0) out[name] = r;
  }
}

CheckResult check_counters(const std::map<std::string, CounterReading>& before,
                           const std::map<std::string, CounterReading>& after) {
  CheckResult r{"data counters kept", true, ""};
  std::vector<std::string> bad, moved, unknown;
  int judged = 0;
  for (const auto& [name, b] : before) {
    auto it = after.find(name);
    if (it == after.end() || b.counter < 0 || it->second.counter < 0) {
      unknown.push_back(name);
      continue;
    }
    if (it->second.host != b.host) {
      moved.push_back(name + " " + b.host + "->" + it->second.host);
      continue;
    }
    ++judged;
    if (it->second.counter < b.counter) {
      bad.push_back(fmt::format("{} on {}: {} -> {}", name, b.host, b.counter, it->second.counter));
    }
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t k = 0; k < v.size() && k < 8; ++k) s += (k ? ", " : "") + v[k];
    return v.size() > 8 ? s + ", ..." : s;
  };
  r.passed = bad.empty();
  r.detail = r.passed ? fmt::format("{} counters after >= before", judged)
                      : "went backwards: " + list(bad);
  if (!moved.empty()) r.detail += "; moved (new VMs, not judged): " + list(moved);
  if (!unknown.empty()) r.detail += "; unknown: " + list(unknown);
  return r;
}

namespace {

// The moments (unix ms) at which service `svc` became whole (every backend it has shown UP) and
// stopped being whole, from the feed's lb.backend events in order: (time, whole after it).
std::vector<std::pair<int64_t, bool>> whole_changes(const std::vector<json::object>& feed,
                                                    const std::string& svc) {
  std::vector<std::pair<int64_t, bool>> out;
  std::map<std::string, bool> up;
  bool whole = true;
  for (const auto& e : feed) {
    if (str(e, "type") != "lb.backend" || str(e, "service") != svc) continue;
    auto t = parse_rfc3339_ms(str(e, "time"));
    if (!t) continue;
    up[str(e, "instance")] = str(e, "state") == "UP";
    const bool now = std::all_of(up.begin(), up.end(), [](const auto& kv) { return kv.second; });
    if (now != whole) out.emplace_back(*t, now);
    whole = now;
  }
  return out;
}

// The first moment >= t at which the service is whole (changes from whole_changes); nullopt:
// never again.
std::optional<int64_t> whole_from(const std::vector<std::pair<int64_t, bool>>& changes, int64_t t) {
  bool whole = true;
  for (const auto& [at, w] : changes) {
    if (at > t) break;
    whole = w;
  }
  if (whole) return t;
  for (const auto& [at, w] : changes) {
    if (at > t && w) return at;
  }
  return std::nullopt;
}

}  // namespace

CheckResult check_client_traffic(const json::object& report, const std::vector<json::object>& feed,
                                 const std::vector<FaultWindow>& faults) {
  CheckResult r{"clients served outside fault windows", true, ""};
  const auto& traffic = json_get::obj(report, "traffic");
  auto* measured = traffic.if_contains("measured");
  if (!(measured && measured->is_bool() && measured->as_bool())) {
    r.detail = "client traffic not measured (" + str(traffic, "reason") + ")";
    return r;
  }
  const auto& drill = json_get::obj(report, "drill");
  const auto started = parse_rfc3339_ms(str(drill, "started_at"));
  const auto ended = parse_rfc3339_ms(str(drill, "finished_at"));
  if (!started) {
    r.passed = false;
    r.detail = "the report's drill.started_at is missing: failure runs cannot be placed in time";
    return r;
  }
  constexpr int64_t kLeadMs = 500, kSettleMs = 2000;
  int64_t excused = 0, outside = 0, runs_outside = 0;
  std::string first;
  for (const auto& sv : arr(report, "services")) {
    if (!sv.is_object() || json_get::int_or(sv.as_object(), "instances", 0) < 2) continue;
    const auto& t = json_get::obj(sv.as_object(), "traffic");
    if (t.empty()) continue;
    const std::string name = str(sv, "name");
    const auto detection_ms =
        static_cast<int64_t>(json_get::number(t, "probe_detection_s").value_or(0) * 1000);
    const auto changes = whole_changes(feed, name);
    std::vector<std::pair<int64_t, int64_t>> windows;
    for (const auto& f : faults) {
      const auto whole = whole_from(changes, std::max(f.from_ms, f.to_ms) + detection_ms);
      const int64_t end = whole ? *whole + kSettleMs : ended.value_or(INT64_MAX);
      windows.emplace_back(f.from_ms - kLeadMs, end);
    }
    for (const auto& rv : arr(t, "failure_runs")) {
      if (!rv.is_object()) continue;
      const auto& run = rv.as_object();
      const double from_s = json_get::number(run, "from_s").value_or(0);
      const double to_s = json_get::number(run, "to_s").value_or(from_s);
      const int64_t from = *started + static_cast<int64_t>(from_s * 1000);
      const int64_t to = *started + static_cast<int64_t>(to_s * 1000);
      const int64_t count = json_get::int_or(run, "count", 1);
      const bool in = std::any_of(windows.begin(), windows.end(),
                                  [&](const auto& w) { return from <= w.second && to >= w.first; });
      (in ? excused : outside) += count;
      if (in) continue;
      ++runs_outside;
      if (first.empty()) {
        first = fmt::format(
            "{}: {} failed request{} {:.1f}-{:.1f} s after the drill started, "
            "outside every fault's window",
            name, count, count == 1 ? "" : "s", from_s, to_s);
      }
    }
  }
  if (outside > 0) {
    r.passed = false;
    r.detail = fmt::format("{} ({} failed request{} in {} run{} outside)", first, outside,
                           outside == 1 ? "" : "s", runs_outside, runs_outside == 1 ? "" : "s");
  } else {
    r.detail = excused ? fmt::format(
                             "{} failed request{} of multi-instance services, all within "
                             "a fault's window",
                             excused, excused == 1 ? "" : "s")
                       : "no failed request of a multi-instance service";
  }
  return r;
}

CheckResult check_terminal(const json::object& drill, const json::object& report) {
  const std::string state = str(drill, "state");
  std::string reported;
  if (auto* d = report.if_contains("drill"); d && d->is_object())
    reported = str(d->as_object(), "state");
  CheckResult r{"terminal state", true, "drill " + state};
  if (!is_final_state(state)) {
    r.passed = false;
    r.detail = "the drill ended in no terminal state: '" + state + "'";
  } else if (reported != state) {
    r.passed = false;
    r.detail = "the drill is " + state + " but its report says '" + reported + "'";
  }
  return r;
}

CheckResult check_report_agrees(const json::object& report,
                                const std::vector<CheckResult>& outside) {
  bool all = true;
  std::string failed_own;
  for (const auto& c : arr(report, "checks")) {
    if (!c.is_object()) continue;
    auto* p = c.as_object().if_contains("passed");
    if (!(p && p->is_bool() && p->as_bool())) {
      all = false;
      if (failed_own.empty()) failed_own = str(c, "name");
    }
  }
  const std::string result = str(report, "result");
  CheckResult r{"report agrees", true, ""};
  if ((result == "passed") != all || (result != "passed" && result != "failed")) {
    r.passed = false;
    r.detail = "the report says '" + result + "' but its own checks " +
               (all ? std::string("all passed") : "failed (" + failed_own + ")");
    return r;
  }
  for (const auto& o : outside) {
    if (result == "passed" && !o.passed) {
      r.passed = false;
      r.detail = "the report says passed but '" + o.name + "' failed: " + o.detail;
      return r;
    }
  }
  r.detail = "report " + result + (all ? "" : " (" + failed_own + " failed)");
  return r;
}

}  // namespace fabriclab::rack
