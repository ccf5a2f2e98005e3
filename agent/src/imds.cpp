// The Instance Metadata Service (see imds.hpp for the rules it enforces).
//
// Every handler runs the same gate (gate()) before it looks at its path: the order of the checks
// is part of the contract (imds.hpp), and doing them in one place keeps the routes from drifting
// apart. The rate limit is a sliding one-second window per VM: the times of the VM's last five
// accepted requests; a sixth within a second of the oldest is refused. Only accepted requests
// are recorded, so a client that backs off recovers at once, and the map holds at most one entry
// per instance that asked in the last second (stale ones are pruned as they are met).

#include "fabriclab/agent/imds.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "fabriclab/common/json.hpp"

namespace fabriclab::agent {

namespace {

using Clock = std::chrono::steady_clock;
using http::Request;
using http::Response;

constexpr size_t kMaxBody = 4096;
constexpr int kMaxDepth = 4;
constexpr size_t kMaxStartRequests = 16;
constexpr size_t kMaxEventId = 64;

// Oldest first; the last three are "newest-versions" (newest first).
const std::vector<std::string> kScheduledEventsVersions = {
    "2017-03-01", "2017-08-01", "2017-11-01", "2019-01-01", "2019-08-01", "2020-07-01"};
const std::vector<std::string> kInstanceVersions = {
    "2017-03-01", "2017-04-02", "2017-08-01", "2017-10-01", "2017-12-01", "2018-02-01",
    "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30", "2019-06-01",
    "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01", "2020-06-01", "2020-07-15",
    "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01", "2021-02-01", "2021-03-01",
    "2021-05-01", "2021-08-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
    "2023-07-01"};

Response imds_error(int status, const std::string& message) {
  return http::json_response(status, json::object{{"error", message}});
}

Response version_error(const std::vector<std::string>& versions, bool missing) {
  json::array newest;
  for (size_t i = 0; i < 3 && i < versions.size(); ++i)
    newest.emplace_back(versions[versions.size() - 1 - i]);
  return http::json_response(
      400,
      json::object{
          {"error", missing ? "Bad request. api-version was not specified in the request. For more "
                              "information refer to aka.ms/azureimds"
                            : "Bad request. api-version is invalid or was not specified in the "
                              "request. For more information refer to aka.ms/azureimds"},
          {"newest-versions", std::move(newest)}});
}

// "127.77.0.10:54321" -> "127.77.0.10" ("[::1]:5" and "::1:5" -> "::1").
std::string address_of(const std::string& remote) {
  auto colon = remote.rfind(':');
  std::string a = colon == std::string::npos ? remote : remote.substr(0, colon);
  if (a.size() >= 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
  if (a.starts_with("::ffff:") && a.find('.') != std::string::npos) a = a.substr(7);
  return a;
}

class RateLimiter {
 public:
  // True when `vm` may make one more request now (and records it).
  bool admit(const std::string& vm) {
    const auto now = Clock::now();
    std::lock_guard lock(mu_);
    for (auto it = seen_.begin(); it != seen_.end();) {
      if (it->first != vm &&
          (it->second.empty() || now - it->second.back() >= std::chrono::seconds(1))) {
        it = seen_.erase(it);
      } else {
        ++it;
      }
    }
    auto& times = seen_[vm];
    while (!times.empty() && now - times.front() >= std::chrono::seconds(1)) times.pop_front();
    if (times.size() >= static_cast<size_t>(kImdsRequestsPerSecond)) return false;
    times.push_back(now);
    return true;
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::deque<Clock::time_point>> seen_;
};

struct Imds {
  explicit Imds(HostAgent& a) : agent(a) {}
  HostAgent& agent;
  RateLimiter limiter;

  // The checks every request passes, in the contract's order; the caller's instance name, or
  // the refusal.
  std::variant<std::string, Response> gate(const Request& r,
                                           const std::vector<std::string>* versions) {
    if (r.headers.count("x-forwarded-for")) {
      return imds_error(403, "Forbidden. Requests with an X-Forwarded-For header are not served");
    }
    auto md = r.headers.find("metadata");
    std::string v = md == r.headers.end() ? "" : md->second;
    std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
    if (v != "true") return imds_error(400, "Bad request. Required metadata header not specified");
    const std::string source = address_of(r.remote);
    auto name = agent.instance_at(source);
    if (!name)
      return imds_error(403, "Forbidden. " + source + " is not the address of a VM on this host");
    if (!limiter.admit(*name)) return imds_error(429, "Too many requests");
    if (versions) {
      auto q = r.query.find("api-version");
      if (q == r.query.end() || q->second.empty()) return version_error(*versions, true);
      if (std::find(versions->begin(), versions->end(), q->second) == versions->end()) {
        return version_error(*versions, false);
      }
    }
    return *name;
  }

  std::string format_of(const Request& r) {
    auto f = r.query.find("format");
    return f == r.query.end() ? "json" : f->second;
  }

  Response get_events(const Request& r) {
    auto g = gate(r, &kScheduledEventsVersions);
    if (auto* refused = std::get_if<Response>(&g)) return *refused;
    return http::json_response(200, agent.scheduled_events_for(std::get<std::string>(g)));
  }

  Response post_events(const Request& r) {
    auto g = gate(r, &kScheduledEventsVersions);
    if (auto* refused = std::get_if<Response>(&g)) return *refused;
    const auto& name = std::get<std::string>(g);
    auto ids = parse_start_requests(r.body);
    if (!ids.ok()) return imds_error(400, "Bad request. " + ids.error().message);
    if (auto s = agent.approve_events(name, *ids); !s.ok())
      return imds_error(400, "Bad request. " + s.error().message);
    return http::json_response(200, json::object{});
  }

  static Result<std::vector<std::string>> parse_start_requests(const std::string& body) {
    if (body.size() > kMaxBody) {
      return make_error(Condition::invalid_argument,
                        "body larger than " + std::to_string(kMaxBody) + " bytes");
    }
    FL_ASSIGN_OR_RETURN(json::object o, parse_json_object(body, kMaxBody, kMaxDepth, "body"));
    FL_RETURN_IF_ERROR(check_fields(o, {"StartRequests"}));
    FL_ASSIGN_OR_RETURN(const json::array* reqs, get_array(o, "StartRequests", kMaxStartRequests));
    std::vector<std::string> ids;
    for (size_t i = 0; i < reqs->size(); ++i) {
      const std::string where = "StartRequests[" + std::to_string(i) + "]";
      if (!(*reqs)[i].is_object())
        return make_error(Condition::invalid_argument, where + " must be an object");
      const auto& item = (*reqs)[i].as_object();
      if (auto s = check_fields(item, {"EventId"}); !s.ok()) {
        return make_error(Condition::invalid_argument, where + ": " + s.error().message);
      }
      auto id = get_string(item, "EventId", kMaxEventId);
      if (!id.ok())
        return make_error(Condition::invalid_argument, where + ": " + id.error().message);
      if (id->empty())
        return make_error(Condition::invalid_argument, where + ": field 'EventId' is empty");
      ids.push_back(std::move(id).value());
    }
    return ids;
  }

  Response get_instance(const Request& r) {
    auto g = gate(r, &kInstanceVersions);
    if (auto* refused = std::get_if<Response>(&g)) return *refused;
    if (format_of(r) != "json")
      return imds_error(400, "Bad request. format=text is only for leaf nodes");
    const auto& name = std::get<std::string>(g);
    auto compute = agent.compute_metadata(name);
    auto network = agent.network_metadata(name);
    if (!compute.ok() || !network.ok()) return imds_error(404, "Not found");
    return http::json_response(200, json::object{{"compute", *compute}, {"network", *network}});
  }

  Response get_compute(const Request& r) {
    auto g = gate(r, &kInstanceVersions);
    if (auto* refused = std::get_if<Response>(&g)) return *refused;
    if (format_of(r) != "json")
      return imds_error(400, "Bad request. format=text is only for leaf nodes");
    auto compute = agent.compute_metadata(std::get<std::string>(g));
    if (!compute.ok()) return imds_error(404, "Not found");
    return http::json_response(200, *compute);
  }

  Response get_compute_leaf(const Request& r) {
    auto g = gate(r, &kInstanceVersions);
    if (auto* refused = std::get_if<Response>(&g)) return *refused;
    auto compute = agent.compute_metadata(std::get<std::string>(g));
    if (!compute.ok()) return imds_error(404, "Not found");
    const auto* leaf = compute->if_contains(r.params.at("leaf"));
    if (!leaf) return imds_error(404, "Not found");
    const std::string format = format_of(r);
    if (format == "json") return http::json_response(200, *leaf);
    if (format != "text") return imds_error(400, "Bad request. format must be json or text");
    http::Response res;
    res.status = 200;
    res.content_type = "text/plain; charset=utf-8";
    res.body = leaf->is_string() ? std::string(leaf->as_string()) : json::serialize(*leaf);
    return res;
  }

  Response get_versions(const Request& r) {
    auto g = gate(r, nullptr);
    if (auto* refused = std::get_if<Response>(&g)) return *refused;
    return http::json_response(200,
                               json::object{{"apiVersions", json::value_from(kInstanceVersions)}});
  }
};

}  // namespace

void install_imds(http::Server& server, HostAgent& agent) {
  auto imds = std::make_shared<Imds>(agent);
  struct Route {
    const char* method;
    const char* path;
    Response (Imds::*handler)(const Request&);
  };
  static constexpr Route kRoutes[] = {
      {"GET", "/metadata/scheduledevents", &Imds::get_events},
      {"POST", "/metadata/scheduledevents", &Imds::post_events},
      {"GET", "/metadata/instance", &Imds::get_instance},
      {"GET", "/metadata/instance/compute", &Imds::get_compute},
      {"GET", "/metadata/instance/compute/{leaf}", &Imds::get_compute_leaf},
      {"GET", "/metadata/versions", &Imds::get_versions},
  };
  for (const auto& route : kRoutes) {
    server.route(route.method, route.path, http::Access::open,
                 [imds, handler = route.handler](const Request& r) { return (*imds.*handler)(r); });
  }
}

}  // namespace fabriclab::agent
