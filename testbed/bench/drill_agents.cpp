#include "drill_agents.hpp"

#include <filesystem>

#include "fabriclab/common/http_client.hpp"

namespace fabriclab::bench_drill {

Result<json::value> Agents::call(const AgentRef& a, std::string_view method,
                                 const std::string& target,
                                 std::chrono::milliseconds timeout) const {
  auto r = http::request(a.address, a.port, method, target, method == "POST" ? "{}" : "", token_,
                         timeout, netns_);
  if (!r.ok())
    return make_error(r.error().condition,
                      a.name + " " + std::string(method) + " " + target + ": " + r.error().message);
  if (r->status / 100 != 2) {
    return make_error(Condition::internal, a.name + " " + std::string(method) + " " + target +
                                               ": HTTP " + std::to_string(r->status) + " " +
                                               r->body.substr(0, 300));
  }
  return parse_json(r->body, 16 << 20, 64, "agent answer");
}

Result<std::vector<Event>> agent_events(const Agents& agents, const AgentRef& a, int64_t until_ms,
                                        bool& complete) {
  complete = true;
  FL_ASSIGN_OR_RETURN(auto ws, http::WsClient::connect(a.address, a.port, "/v1/events?since=0",
                                                       agents.token(), 10s, agents.netns()));
  std::vector<Event> out;
  bool first = true;
  for (;;) {
    auto m = ws->read(3s);
    if (!m.ok()) break;  // quiet for 3 s: the backlog is over
    auto v = parse_json(*m, 16 << 20, 64, "event");
    if (!v.ok() || !v->is_object()) continue;
    Event e;
    e.o = std::move(v->as_object());
    e.type = str(e.o, "type");
    if (e.type == "snapshot") {
      if (first && e.o.if_contains("resync")) complete = false;
      first = false;
      continue;
    }
    first = false;
    auto t = parse_rfc3339_ms(str(e.o, "time"));
    if (!t) continue;
    e.t_ms = *t;
    if (e.t_ms > until_ms) break;
    out.push_back(std::move(e));
  }
  ws->close();
  return out;
}

void keep_consoles(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir + "/consoles", ec);
  for (const auto& h : fs::directory_iterator(dir, ec)) {
    if (!h.is_directory() || h.path().filename().string().rfind("h", 0) != 0) continue;
    std::error_code ec2;
    for (const auto& f : fs::directory_iterator(h.path() / "vm", ec2)) {
      const std::string n = f.path().filename().string();
      if (n.size() > 12 && n.ends_with(".console.log")) {
        fs::copy_file(f.path(),
                      fs::path(dir) / "consoles" / (h.path().filename().string() + "-" + n),
                      fs::copy_options::overwrite_existing, ec2);
      }
    }
  }
}

HostSteps host_steps(const std::string& host, const std::vector<Event>& ev, int64_t from_ms,
                     int64_t to_ms) {
  HostSteps s;
  s.host = host;
  for (const auto& e : ev) {
    if (e.t_ms < from_ms - 1000 || e.t_ms > to_ms + 1000) continue;
    if (e.type == "job.started" && s.job.empty()) {
      s.job = str(e.o, "job");
      s.started = e.t_ms;
    } else if (e.type == "host.state" && !s.job.empty() && str(e.o, "job") == s.job) {
      std::string step = str(e.o, "step");
      if (!s.step_at.count(step)) s.step_at[step] = e.t_ms;
    } else if (e.type == "job.done" && str(e.o, "job") == s.job && s.done < 0) {
      s.done = e.t_ms;
      s.status = str(e.o, "status");
    }
  }
  return s;
}

GuestDrill guest_drill(const std::string& name, const std::vector<Event>& ev, int64_t from_ms,
                       int64_t to_ms) {
  GuestDrill g;
  std::string boot_before;
  for (const auto& e : ev) {
    if (e.t_ms < from_ms - 1000 || e.t_ms > to_ms + 1000 || str(e.o, "name") != name) continue;
    if (e.type == "instance.heartbeat") {
      if (g.stopping < 0) {
        g.last_hb_before = e.t_ms;
        boot_before = str(e.o, "boot_id");
      } else if (g.first_hb < 0 && g.starting >= 0 && str(e.o, "boot_id") != boot_before) {
        g.first_hb = e.t_ms;
      }
    } else if (e.type == "instance.state") {
      std::string st = str(e.o, "status");
      if (st == "Stopping" && g.stopping < 0) g.stopping = e.t_ms;
      if (st == "Stopped" && g.stopped < 0 && g.stopping >= 0) g.stopped = e.t_ms;
      if (st == "Starting" && g.starting < 0 && g.stopping >= 0 && e.o.if_contains("image"))
        g.starting = e.t_ms;
    }
  }
  return g;
}
}  // namespace fabriclab::bench_drill
