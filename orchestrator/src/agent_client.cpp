#include "fabriclab/orchestrator/agent_client.hpp"

#include <boost/json/serialize.hpp>
#include <charconv>

#include "fabriclab/common/http_client.hpp"

namespace fabriclab::orchestrator {

namespace {

// Agents' answers are small; anything larger is not an agent talking.
constexpr size_t kMaxAnswer = 4 << 20;
constexpr int kMaxDepth = 32;

Condition condition_from_code(std::string_view code, int status) {
  static const std::pair<std::string_view, Condition> kCodes[] = {
      {"invalid_argument", Condition::invalid_argument},
      {"not_found", Condition::not_found},
      {"already_exists", Condition::already_exists},
      {"invalid_state", Condition::invalid_state},
      {"unsupported", Condition::unsupported},
      {"timeout", Condition::timeout},
      {"transient", Condition::transient},
      {"cancelled", Condition::cancelled},
      {"unauthenticated", Condition::unauthenticated},
      {"permission_denied", Condition::permission_denied},
  };
  for (const auto& [name, c] : kCodes) {
    if (name == code) return c;
  }
  return status >= 500 ? Condition::transient : Condition::internal;
}

}  // namespace

Result<Endpoint> parse_endpoint(std::string_view text) {
  // "http://HOST:PORT" is accepted as well (a trailing "/" too); any other scheme is refused.
  if (text.starts_with("http://")) text.remove_prefix(7);
  if (text.ends_with("/")) text.remove_suffix(1);
  if (text.find("://") != std::string_view::npos || text.find('/') != std::string_view::npos) {
    return make_error(Condition::invalid_argument,
                      "endpoint '" + std::string(text) + "' must be HOST:PORT or http://HOST:PORT");
  }
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || text.size() > 255) {
    return make_error(Condition::invalid_argument,
                      "endpoint '" + std::string(text) + "' must be HOST:PORT");
  }
  unsigned port = 0;
  auto digits = text.substr(colon + 1);
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc() || p != digits.data() + digits.size() || port == 0 || port > 65535) {
    return make_error(Condition::invalid_argument,
                      "endpoint '" + std::string(text) + "' has no valid port (1..65535)");
  }
  return Endpoint{std::string(text.substr(0, colon)), static_cast<uint16_t>(port)};
}

HttpAgentClient::HttpAgentClient(Endpoint endpoint, std::string token,
                                 std::chrono::milliseconds timeout, std::string netns)
    : endpoint_(std::move(endpoint)),
      token_(std::move(token)),
      timeout_(timeout),
      netns_(std::move(netns)) {}

Result<json::value> HttpAgentClient::call(std::string_view method, const std::string& target,
                                          const std::string& body, int expect) const {
  const std::string what = "agent " + endpoint_.str() + " " + std::string(method) + " " + target;
  auto r =
      http::request(endpoint_.host, endpoint_.port, method, target, body, token_, timeout_, netns_);
  if (!r.ok()) return make_error(r.error().condition, what + ": " + r.error().message);
  auto parsed = parse_json(r->body, kMaxAnswer, kMaxDepth, "answer");
  if (r->status != expect) {
    std::string code, message = r->body.substr(0, 300);
    if (parsed.ok() && parsed->is_object()) {
      if (auto* e = parsed->as_object().if_contains("error"); e && e->is_object()) {
        if (auto* c = e->as_object().if_contains("code"); c && c->is_string())
          code = c->as_string();
        if (auto* m = e->as_object().if_contains("message"); m && m->is_string())
          message = m->as_string();
      }
    }
    return make_error(condition_from_code(code, r->status),
                      what + ": HTTP " + std::to_string(r->status) + ": " + message);
  }
  if (!parsed.ok()) return make_error(Condition::internal, what + ": " + parsed.error().message);
  return std::move(parsed).value();
}

namespace {
Result<json::object> as_object(Result<json::value> v, std::string_view what) {
  if (!v.ok()) return v.error();
  if (!v->is_object())
    return make_error(Condition::internal, std::string(what) + ": answer is not a JSON object");
  return std::move(v->as_object());
}
Result<json::array> as_array(Result<json::value> v, std::string_view what) {
  if (!v.ok()) return v.error();
  if (!v->is_array())
    return make_error(Condition::internal, std::string(what) + ": answer is not a JSON array");
  return std::move(v->as_array());
}
}  // namespace

Result<json::object> HttpAgentClient::host() const {
  return as_object(call("GET", "/v1/host", "", 200), "GET /v1/host");
}
Result<json::array> HttpAgentClient::instances() const {
  return as_array(call("GET", "/v1/instances", "", 200), "GET /v1/instances");
}
Result<json::object> HttpAgentClient::create_instance(const json::object& spec) const {
  return as_object(call("POST", "/v1/instances", json::serialize(spec), 201), "POST /v1/instances");
}
Status HttpAgentClient::delete_instance(const std::string& name) const {
  auto r = call("DELETE", "/v1/instances/" + name, "", 200);
  if (!r.ok()) return r.error();
  return {};
}
Result<json::object> HttpAgentClient::delete_instance_keep_data(const std::string& name) const {
  return as_object(call("DELETE", "/v1/instances/" + name + "?keep_data=true", "", 200),
                   "DELETE /v1/instances/" + name);
}
Status HttpAgentClient::start_instance(const std::string& name) const {
  auto r = call("POST", "/v1/instances/" + name + "/start", "", 200);
  if (!r.ok()) return r.error();
  return {};
}
Result<json::object> HttpAgentClient::start_operation(const json::object& request) const {
  return as_object(call("POST", "/v1/operations", json::serialize(request), 202),
                   "POST /v1/operations");
}
Result<json::object> HttpAgentClient::job(const std::string& id) const {
  return as_object(call("GET", "/v1/operations/" + id, "", 200), "GET /v1/operations/" + id);
}
Result<json::array> HttpAgentClient::jobs() const {
  return as_array(call("GET", "/v1/operations", "", 200), "GET /v1/operations");
}
Status HttpAgentClient::cancel(const std::string& id) const {
  auto r = call("POST", "/v1/operations/" + id + "/cancel", "", 202);
  if (!r.ok()) return r.error();
  return {};
}
Result<json::object> HttpAgentClient::stage_host_image(const std::string& version,
                                                       const std::string& path,
                                                       const std::string& sha256) const {
  json::object body{{"version", version}, {"path", path}, {"sha256", sha256}};
  return as_object(call("POST", "/v1/images/host", json::serialize(body), 201),
                   "POST /v1/images/host");
}

AgentClientFactory http_agent_client_factory(std::string token, std::string netns) {
  return [token = std::move(token), netns = std::move(netns)](
             const Endpoint& endpoint,
             std::chrono::milliseconds timeout) -> std::unique_ptr<AgentClient> {
    return std::make_unique<HttpAgentClient>(endpoint, token, timeout, netns);
  };
}

}  // namespace fabriclab::orchestrator
