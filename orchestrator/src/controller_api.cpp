#include "fabriclab/orchestrator/controller_api.hpp"

#include <tuple>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/orchestrator/report.hpp"
#include "fabriclab_dashboard.hpp"  // generated from web/dashboard.html

namespace fabriclab::orchestrator {

using http::Access;
using http::Request;
using http::Response;
using http::result_or;
using http::status_or;

namespace {

Result<int> query_int(const Request& r, const std::string& key, int lo, int hi, int fallback) {
  auto it = r.query.find(key);
  if (it == r.query.end()) return fallback;
  try {
    size_t used = 0;
    int v = std::stoi(it->second, &used);
    if (used == it->second.size() && v >= lo && v <= hi) return v;
  } catch (...) {
  }
  return make_error(Condition::invalid_argument, "query '" + key + "' must be an integer in " +
                                                     std::to_string(lo) + ".." +
                                                     std::to_string(hi));
}

// POST /v1/drills/{id}/faults: a fault the rack injected (docs/faults.md), published on the feed
// as `drill.fault` (and so journaled with the drill's other events). The orchestrator does not act
// on it: it is the record of what was done to the rack, for the dashboard, watchers and the
// chaos checkers. Every field is a bounded string; kind and status are short words.
Result<json::object> fault_event(const json::object& o, const std::string& drill) {
  FL_RETURN_IF_ERROR(check_fields(o, {"kind", "target", "at", "status", "detail", "injected_at"}));
  json::object ev{{"drill", drill}};
  for (auto [field, max, required] : {std::tuple{"kind", size_t{32}, true},
                                      {"status", 32, true},
                                      {"target", 128, false},
                                      {"at", 256, false},
                                      {"detail", 1024, false},
                                      {"injected_at", 64, false}}) {
    FL_ASSIGN_OR_RETURN(auto v, get_string(o, field, max, required));
    for (char ch : v) {
      if (static_cast<unsigned char>(ch) < 0x20) {
        return make_error(Condition::invalid_argument,
                          std::string("field '") + field + "' holds a control character");
      }
    }
    ev[field] = v;
  }
  return ev;
}

// POST `path` creates something: the body (an object) parsed by `parse` into what `create` takes;
// 201 and what `create` returns, or the first error.
template <class Parse, class Create>
void route_create(http::Server& server, const std::string& path, const http::Limits& limits,
                  Parse parse, Create create) {
  server.route("POST", path, Access::control, [limits, parse, create](const Request& r) {
    auto parsed = http::parse_body_as(r, limits, parse);
    if (!parsed.ok()) return http::error_response(parsed.error());
    return result_or(create(*parsed), 201);
  });
}

}  // namespace

void install_controller_api(http::Server& server, Controller& controller,
                            std::shared_ptr<EventFeed> feed, const http::Limits& limits) {
  Controller* c = &controller;
  server.route("GET", "/healthz", Access::open, [](const Request&) {
    return http::json_response(200, json::object{{"ok", true}});
  });
  server.route("GET", "/", Access::open, [](const Request&) {
    Response r;
    r.body.assign(fabriclab_dashboard, fabriclab_dashboard_size);
    r.content_type = "text/html; charset=utf-8";
    r.headers.emplace_back("Cache-Control", "no-store");
    return r;
  });
  server.route("GET", "/metrics", Access::read, [c](const Request&) {
    Response r;
    r.body = c->metrics_text();
    r.content_type = "text/plain; version=0.0.4";
    return r;
  });
  server.route("GET", "/v1/hosts", Access::read,
               [c](const Request&) { return http::json_response(200, c->hosts_json()); });
  server.route("GET", "/v1/hosts/{id}", Access::read,
               [c](const Request& r) { return result_or(c->host_json(r.params.at("id")), 200); });
  route_create(server, "/v1/hosts", limits, host_registration_from_json,
               [c](const auto& reg) { return c->register_host(reg); });
  server.route("GET", "/v1/services", Access::read,
               [c](const Request&) { return http::json_response(200, c->services_json()); });
  route_create(server, "/v1/services", limits, service_from_json,
               [c](const auto& svc) { return c->create_service(svc); });
  server.route("GET", "/v1/instances", Access::read,
               [c](const Request&) { return http::json_response(200, c->instances_json()); });
  server.route("GET", "/v1/plan", Access::read, [c](const Request& r) {
    auto mp = query_int(r, "max_parallel_hosts", 0, 100000, 0);
    if (!mp.ok()) return http::error_response(mp.error());
    return result_or(c->plan_json(*mp), 200);
  });
  server.route("GET", "/v1/drills", Access::read,
               [c](const Request&) { return http::json_response(200, c->drills_json()); });
  route_create(server, "/v1/drills", limits, drill_spec_from_json,
               [c](const auto& spec) { return c->create_drill(spec); });
  server.route("GET", "/v1/drills/{id}", Access::read,
               [c](const Request& r) { return result_or(c->drill_json(r.params.at("id")), 200); });
  server.route("GET", "/v1/drills/{id}/report", Access::read,
               [c](const Request& r) { return result_or(c->report_json(r.params.at("id")), 200); });
  server.route("GET", "/v1/drills/{id}/report.html", Access::read, [c](const Request& r) {
    auto rep = c->report_json(r.params.at("id"));
    if (!rep.ok()) return http::error_response(rep.error());
    Response resp;
    resp.body = render_report_html(*rep);
    resp.content_type = "text/html; charset=utf-8";
    return resp;
  });
  server.route("POST", "/v1/drills/{id}/faults", Access::control,
               [c, limits, feed](const Request& r) {
                 const auto& id = r.params.at("id");
                 if (auto d = c->drill_json(id); !d.ok()) return http::error_response(d.error());
                 auto body = http::parse_object_body(r, limits);
                 if (!body.ok()) return http::error_response(body.error());
                 auto ev = fault_event(*body, id);
                 if (!ev.ok()) return http::error_response(ev.error());
                 uint64_t seq = feed->publish("drill.fault", std::move(*ev));
                 return http::json_response(202, json::object{{"id", id}, {"seq", seq}});
               });
  using Verb = Status (Controller::*)(const std::string&);
  for (auto [name, fn] : {std::pair<const char*, Verb>{"pause", &Controller::pause},
                          {"resume", &Controller::resume},
                          {"step", &Controller::step},
                          {"abort", &Controller::abort}}) {
    std::string verb = name;
    server.route("POST", "/v1/drills/{id}/" + verb, Access::control,
                 [c, fn, verb](const Request& r) {
                   const auto& id = r.params.at("id");
                   return status_or((c->*fn)(id), 202,
                                    json::object{{"id", id}, {verb + "_requested", true}});
                 });
  }
  server.events("/v1/events", std::move(feed));
}

}  // namespace fabriclab::orchestrator
