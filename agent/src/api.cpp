#include "fabriclab/agent/api.hpp"

#include <boost/json.hpp>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/json.hpp"

namespace fabriclab::agent {

using http::Access;
using http::Request;
using http::Response;
using http::result_or;
using http::status_or;

void install_api(http::Server& server, HostAgent& agent, std::shared_ptr<EventFeed> feed,
                 const http::Limits& limits) {
  HostAgent* a = &agent;
  server.route("GET", "/healthz", Access::open, [](const Request&) {
    return http::json_response(200, json::object{{"ok", true}});
  });
  server.route("GET", "/v1/host", Access::read,
               [a](const Request&) { return http::json_response(200, a->host_json()); });
  server.route("GET", "/v1/instances", Access::read,
               [a](const Request&) { return http::json_response(200, a->instances_json()); });
  server.route("GET", "/v1/instances/{name}", Access::read, [a](const Request& r) {
    return result_or(a->instance_json(r.params.at("name")), 200);
  });
  server.route("POST", "/v1/instances", Access::control, [a, limits](const Request& r) {
    auto spec = http::parse_body_as(r, limits, instance_spec_from_json);
    if (!spec.ok()) return http::error_response(spec.error());
    return result_or(a->create_instance(*spec), 201);
  });
  server.route("POST", "/v1/instances/{name}/start", Access::control, [a](const Request& r) {
    const auto& n = r.params.at("name");
    return status_or(a->start_instance(n), 200, json::object{{"name", n}, {"started", true}});
  });
  server.route("POST", "/v1/instances/{name}/stop", Access::control, [a](const Request& r) {
    const auto& n = r.params.at("name");
    return status_or(a->stop_instance(n), 200, json::object{{"name", n}, {"stopped", true}});
  });
  server.route("DELETE", "/v1/instances/{name}", Access::control, [a](const Request& r) {
    const auto& n = r.params.at("name");
    auto keep = r.query.find("keep_data");
    auto kept = a->delete_instance(n, keep != r.query.end() && keep->second == "true");
    if (!kept.ok()) return http::error_response(kept.error());
    return http::json_response(
        200, json::object{{"name", n}, {"deleted", true}, {"data_disk_kept", *kept}});
  });
  server.route("POST", "/v1/operations", Access::control, [a, limits](const Request& r) {
    auto req = http::parse_body_as(r, limits, operation_request_from_json);
    if (!req.ok()) return http::error_response(req.error());
    return result_or(a->start_operation(*req), 202);
  });
  server.route("GET", "/v1/operations", Access::read,
               [a](const Request&) { return http::json_response(200, a->jobs_json()); });
  server.route("GET", "/v1/operations/{id}", Access::read,
               [a](const Request& r) { return result_or(a->job_json(r.params.at("id")), 200); });
  server.route("POST", "/v1/operations/{id}/cancel", Access::control, [a](const Request& r) {
    const auto& id = r.params.at("id");
    return status_or(a->cancel(id), 202, json::object{{"id", id}, {"cancel_requested", true}});
  });
  server.route("GET", "/v1/images/host", Access::read,
               [a](const Request&) { return http::json_response(200, a->host_images_json()); });
  server.route("POST", "/v1/images/host", Access::control, [a, limits](const Request& r) {
    auto body = http::parse_object_body(r, limits);
    if (!body.ok()) return http::error_response(body.error());
    const json::object& o = *body;
    if (auto s = check_fields(o, {"version", "path", "sha256"}); !s.ok())
      return http::error_response(s.error());
    auto version = get_string(o, "version", 64);
    auto path = get_string(o, "path", 4096);
    auto sha = get_string(o, "sha256", 64);
    for (const auto* f : {&version, &path, &sha}) {
      if (!f->ok()) return http::error_response(f->error());
    }
    return result_or(a->stage_host_image(*version, *path, *sha), 201);
  });
  server.route("GET", "/v1/images/guest", Access::read,
               [a](const Request&) { return http::json_response(200, a->guest_images_json()); });
  if (a->fault_injection()) {
    server.route("POST", "/v1/faults", Access::control, [a, limits](const Request& r) {
      auto body = http::parse_object_body(r, limits);
      if (!body.ok()) return http::error_response(body.error());
      return result_or(a->inject_fault(*body), 202);
    });
  }
  server.events("/v1/events", std::move(feed));
}

}  // namespace fabriclab::agent
