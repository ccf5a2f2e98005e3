// Keeping the load balancer in step with the cluster, and watching its backends.
//
// One thread does both, so HAProxy is only ever driven from one place. Each round it renders
// what the cluster wants (services with an endpoint and a VIP; their instances that have an
// address), and when the text differs from the last one applied it applies it (lb.cpp: check,
// carry states over, reload, confirm); a failed apply is logged, published as `lb.config` with
// the error, and retried after kApplyRetry. Then it reads every backend's check state and
// publishes an `lb.backend` event for each change. Rounds come every half of the shortest
// probe interval (at least 100 ms, at most 1 s), and at once when the placement or an address
// changed (lb_dirty).
//
// VIPs are the orchestrator's: the s-th service with an endpoint gets the range's base + 10 + s
// (the lowest such address no other service holds), saved in the journal's cluster document, so
// a restart keeps them.

#include <arpa/inet.h>

#include <charconv>

#include "controller_impl.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::orchestrator {

namespace {
auto log() { return logger("orchestrator"); }
constexpr std::chrono::milliseconds kApplyRetry{2000};

// "198.18.1.0/24" -> base address (host order) and the number of addresses.
std::optional<std::pair<uint32_t, uint64_t>> parse_range(std::string_view range) {
  auto slash = range.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string ip(range.substr(0, slash));
  if (!is_ipv4(ip)) return std::nullopt;
  int prefix = 0;
  auto digits = range.substr(slash + 1);
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
  if (ec != std::errc() || p != digits.data() + digits.size() || prefix < 8 || prefix > 28)
    return std::nullopt;
  in_addr a{};
  if (inet_pton(AF_INET, ip.c_str(), &a) != 1) return std::nullopt;
  uint32_t base = ntohl(a.s_addr);
  uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  return std::make_pair(base & mask, uint64_t{1} << (32 - prefix));
}

std::string ip_text(uint32_t host_order) {
  in_addr a{htonl(host_order)};
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a, buf, sizeof buf);
  return buf;
}
}  // namespace

Status check_vip_range(std::string_view range) {
  if (!parse_range(range)) {
    return make_error(Condition::invalid_argument,
                      "--vip-range '" + std::string(range) + "' must be A.B.C.D/N with N in 8..28");
  }
  return {};
}

bool Controller::Impl::assign_vips_locked() {
  auto range = parse_range(opt.vip_range);
  if (!range || !lb) return false;
  bool changed = false;
  for (auto& s : cluster.services) {
    if (!s.endpoint || !s.vip.empty()) continue;
    for (uint64_t k = 10; k + 1 < range->second; ++k) {
      std::string ip = ip_text(range->first + static_cast<uint32_t>(k));
      bool taken = false;
      for (const auto& o : cluster.services) taken |= o.vip == ip;
      if (taken || ip + ":" == opt.lb_health_bind.substr(0, ip.size() + 1)) continue;
      s.vip = ip;
      changed = true;
      break;
    }
  }
  return changed;
}

std::vector<LbService> Controller::Impl::lb_services_locked() const {
  std::vector<LbService> out;
  for (const auto& s : cluster.services) {
    if (!s.endpoint || s.vip.empty()) continue;
    LbService l;
    l.name = s.name;
    l.vip = s.vip;
    l.port = s.endpoint->port;
    l.probe_path = s.endpoint->probe.path;
    l.interval_ms = s.endpoint->probe.interval_ms;
    l.unhealthy_threshold = s.endpoint->probe.unhealthy_threshold;
    for (const auto* i : cluster.instances_of(s.name)) {
      auto name = instance_name(i->service, i->index);
      auto it = instances.find(name);
      if (it == instances.end() || it->second.address.empty()) continue;
      l.backends.push_back(LbBackend{name, it->second.address, kBackendPort});
    }
    out.push_back(std::move(l));
  }
  return out;
}

void Controller::Impl::mark_lb_dirty() {
  if (!lb) return;
  std::lock_guard lock(mu);
  lb_dirty = true;
  lb_cv.notify_all();
}

json::array Controller::Impl::backends_json_locked(const Service& s) const {
  json::array out;
  for (const auto* i : cluster.instances_of(s.name)) {
    auto name = instance_name(i->service, i->index);
    std::string address, state = "UNKNOWN", check;
    if (auto it = instances.find(name); it != instances.end()) address = it->second.address;
    if (auto it = lb_states.find(name); it != lb_states.end() && it->second.service == s.name) {
      state = it->second.state;
      check = it->second.check;
    }
    out.push_back(
        json::object{{"instance", name}, {"address", address}, {"state", state}, {"check", check}});
  }
  return out;
}

std::string Controller::Impl::lb_not_serving_locked(const Service& s,
                                                    const std::string& name) const {
  if (!lb || !s.endpoint || s.vip.empty()) return "";
  auto im = instances.find(name);
  if (im == instances.end() || im->second.address.empty()) return "";  // not a backend at all
  auto it = lb_states.find(name);
  if (it == lb_states.end() || it->second.service != s.name) {
    return "instance " + name + " is not a backend of the load balancer yet";
  }
  if (it->second.serving()) return "";
  if (it->second.state == "UP")
    return "instance " + name + " is UP in the load balancer but not checked yet";
  return "instance " + name + " is " + it->second.state + " in the load balancer" +
         (it->second.check.empty() ? "" : " (" + it->second.check + ")");
}

void Controller::Impl::note_app_up_locked(const std::map<std::string, LbServerState>& now,
                                          Clock::time_point began) {
  if (!active) return;
  for (const auto& [name, at] : active->restarted_at) {
    auto it = now.find(name);
    if (it != now.end() && it->second.serving() && began >= at) active->app_up.insert(name);
  }
}

void Controller::Impl::lb_poll_once(Events& events) {
  const auto began = Clock::now();
  auto polled = lb->servers();
  std::lock_guard lock(mu);
  if (!polled.ok()) {
    log()->debug("load balancer: reading check states: {}", polled.error().message);
    return;
  }
  std::map<std::string, LbServerState> now;
  for (auto& s : *polled) now[s.instance] = std::move(s);
  // The check's status word (L7OK, L7STS, L4TOUT, ...) without its code: HAProxy shows code 0
  // while a check is in flight, and a change of that alone is no news (it would publish every
  // probe interval per backend).
  auto check_word = [](const std::string& c) { return c.substr(0, c.find(' ')); };
  for (const auto& [name, s] : now) {
    auto it = lb_states.find(name);
    if (it != lb_states.end() && it->second.state == s.state &&
        check_word(it->second.check) == check_word(s.check) && it->second.service == s.service) {
      continue;
    }
    events.emplace_back("lb.backend", json::object{{"service", s.service},
                                                   {"instance", s.instance},
                                                   {"state", s.state},
                                                   {"check", s.check}});
  }
  note_app_up_locked(now, began);
  lb_states = std::move(now);
  lb_polled = true;
  lb_poll_began = began;
  cv.notify_all();  // wait_ready looks at lb_states
}

void Controller::Impl::lb_loop() {
  std::string applied_text;  // what the last successful apply rendered
  Clock::time_point retry_at{};
  std::string last_error;
  while (!stopping) {
    std::vector<LbService> wanted;
    std::chrono::milliseconds period{1000};
    {
      std::lock_guard lock(mu);
      lb_dirty = false;
      wanted = lb_services_locked();
      for (const auto& s : wanted) {
        period = std::min(period, std::chrono::milliseconds(std::max(100, s.interval_ms / 2)));
      }
    }
    const std::string text = render_haproxy_config(wanted, lb->options().settings);
    if (text != applied_text && Clock::now() >= retry_at) {
      auto r = lb->apply(wanted);
      json::array names;
      for (const auto& s : wanted) names.push_back(json::value(s.name));
      if (r.ok()) {
        applied_text = text;
        last_error.clear();
        if (*r) {
          publish({{"lb.config", json::object{{"ok", true},
                                              {"reloads", lb->reloads()},
                                              {"services", std::move(names)},
                                              {"error", ""}}}});
        }
      } else {
        retry_at = Clock::now() + kApplyRetry;
        if (r.error().message != last_error) {
          last_error = r.error().message;
          log()->error("load balancer: {}", last_error);
          publish({{"lb.config", json::object{{"ok", false},
                                              {"reloads", lb->reloads()},
                                              {"services", std::move(names)},
                                              {"error", last_error}}}});
        }
      }
    }
    Events events;
    lb_poll_once(events);
    publish(std::move(events));
    std::unique_lock lock(mu);
    lb_cv.wait_for(lock, period, [this] { return stopping.load() || lb_dirty; });
  }
}

}  // namespace fabriclab::orchestrator
