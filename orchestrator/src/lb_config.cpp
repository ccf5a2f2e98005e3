// The load balancer's pure half: HAProxy configuration text and the master CLI's answers.
//
// Rendering never escapes its way out of a bad name: HAProxy's configuration language has
// quoting, environment expansion and comments, so anything that reaches the file is first held
// to a small alphabet (names: [A-Za-z0-9._-]; addresses: dotted IPv4; the probe path: printable
// ASCII without space, quotes or backslash, written inside single quotes, where HAProxy expands
// nothing and '#' is not a comment). A service that does not pass is left out, with a comment
// that repeats none of its text.
//
// Timeouts: a client's connection to a backend that vanished (its host stopped) fails after
// `timeout connect` = the interval clamped to 1 .. 2 s (kMinConnectMs) instead of the kernel's
// several seconds, so a client sees a 503 rather than a hang. A check connects within
// min(timeout connect, inter), so a stopped guest is still noticed within the interval, and then
// waits for its answer at least 1 s (kMinCheckReadMs). `fall` is the threshold raised to span at
// least kMinProbeDetectionMs (effective_unhealthy_threshold, cluster.hpp), the same count the
// orchestrator's drain and notice computations assume.

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "fabriclab/orchestrator/cluster.hpp"
#include "fabriclab/orchestrator/lb.hpp"

namespace fabriclab::orchestrator {

namespace {

Error bad(const std::string& what) { return make_error(Condition::invalid_argument, what); }

// How long a check waits for the answer once connected. A TCG guest on a busy 2-core machine
// answers in tens of ms but now and then in several hundred; a 200 ms probe that gave up by then
// took healthy guests out of rotation (two in a row: both backends of a service DOWN at once).
// The connect part stays at the interval, so a stopped guest is still noticed within it.
constexpr int kMinCheckReadMs = 1000;
// How long a client's request may wait for a backend to accept its connection. A TCG guest on
// a loaded machine (CI: two real-VM tests side by side) now and then takes over 200 ms to answer
// a SYN; a connect timeout at a 200 ms interval failed those requests with 503 ("sC--" in
// haproxy.log) while the guest was healthy and in rotation.
constexpr int kMinConnectMs = 1000;

bool is_ipv4_port(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) return false;
  if (!is_ipv4(text.substr(0, colon))) return false;
  auto digits = text.substr(colon + 1);
  unsigned port = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  return ec == std::errc() && p == digits.data() + digits.size() && port >= 1 && port <= 65535 &&
         digits[0] != '0';
}

int clamp_ms(int64_t v, int64_t lo, int64_t hi) { return static_cast<int>(std::clamp(v, lo, hi)); }

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    auto pos = s.find(sep, start);
    out.push_back(
        s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) return out;
    start = pos + 1;
  }
}

std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

bool to_int(std::string_view s, int& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::string quote_start(std::string_view text) {
  std::string s(text.substr(0, 80));
  for (char& c : s) {
    if (c < 0x20 || c >= 0x7f) c = ' ';
  }
  return "'" + s + "'";
}

// The defaults section, fixed text. The last two lines keep one request per server connection:
// the built-in guest serves one request per connection.
constexpr std::string_view kDefaults = R"(
defaults
  mode http
  log global
  option httplog
  option dontlog-normal
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-request 5s
  timeout http-keep-alive 1s
  option http-server-close
  http-reuse never
)";

}  // namespace

LbSettings lb_settings_for(std::string_view config_path) {
  LbSettings s;
  if (!config_path.empty()) s.server_state_file = std::string(config_path) + ".state";
  return s;
}

Status check_lb_service(const LbService& s) {
  if (!is_lb_name(s.name)) {
    return bad("load balancer: a service name must hold only letters, digits, '-', '_' and '.'");
  }
  const std::string at = "load balancer: service '" + s.name + "': ";
  if (!is_ipv4(s.vip)) return bad(at + "vip must be a dotted IPv4 address");
  if (s.port == 0) return bad(at + "port must be in 1..65535");
  if (!is_probe_path(s.probe_path)) {
    return bad(at +
               "probe path must start with '/' and hold only printable ASCII characters "
               "other than space, quotes and '\\'");
  }
  if (s.interval_ms < kMinProbeIntervalMs || s.interval_ms > kMaxProbeIntervalMs) {
    return bad(at + fmt::format("probe interval_ms must be in {}..{}", kMinProbeIntervalMs,
                                kMaxProbeIntervalMs));
  }
  if (s.unhealthy_threshold < 1 || s.unhealthy_threshold > kMaxUnhealthyThreshold) {
    return bad(at +
               fmt::format("probe unhealthy_threshold must be in 1..{}", kMaxUnhealthyThreshold));
  }
  for (size_t i = 0; i < s.backends.size(); ++i) {
    const auto& b = s.backends[i];
    if (!is_lb_name(b.instance)) {
      return bad(at + fmt::format("backends[{}]: an instance name must hold only letters, digits, "
                                  "'-', '_' and '.'",
                                  i));
    }
    if (!is_ipv4(b.address)) {
      return bad(at + "backend '" + b.instance + "': address must be a dotted IPv4 address");
    }
    if (b.port == 0) return bad(at + "backend '" + b.instance + "': port must be in 1..65535");
    for (size_t j = 0; j < i; ++j) {
      if (s.backends[j].instance == b.instance) {
        return bad(at + "backend '" + b.instance + "' is listed twice");
      }
    }
  }
  return {};
}

Status check_lb_settings(const LbSettings& s) {
  if (!is_ipv4_port(s.health_bind)) {
    return bad("load balancer: health bind '" + s.health_bind + "' must be IPV4:PORT");
  }
  for (char c : s.server_state_file) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\'' || c == '"' || c == '\\') {
      return bad(
          "load balancer: the server state file path may not hold quotes, backslashes or "
          "control characters");
    }
  }
  if (!s.server_state_file.empty() && s.server_state_file[0] != '/') {
    return bad("load balancer: the server state file path must be absolute");
  }
  if (s.hard_stop_after_ms < 100 || s.maxconn < 1) {
    return bad("load balancer: hard_stop_after_ms must be >= 100 and maxconn >= 1");
  }
  return {};
}

std::string render_haproxy_config(const std::vector<LbService>& services,
                                  const LbSettings& settings) {
  std::string out;
  out += "# fabriclab load balancer: rendered by the orchestrator (orchestrator/lb.hpp).\n";
  out += "# Rewritten on every change of placement: do not edit.\n";
  const bool settings_ok = check_lb_settings(settings).ok();
  const bool state_file = settings_ok && !settings.server_state_file.empty();
  out += "global\n";
  if (settings_ok) {
    out += fmt::format("  maxconn {}\n", settings.maxconn);
    out += fmt::format("  hard-stop-after {}ms\n", settings.hard_stop_after_ms);
  }
  if (state_file) out += fmt::format("  server-state-file '{}'\n", settings.server_state_file);
  // Every failed request is logged (to HAProxy's stderr, the rack's haproxy.log) with its timers
  // and termination state ("SC--": the server refused or did not answer the connect), so that a
  // client's failure can be matched to what the backend did; served requests are not logged.
  out += "  log stderr format iso local0 info\n";
  out += kDefaults;
  if (state_file) out += "  load-server-state-from-file global\n";
  out += "\n# The load balancer's own listener: up as soon as HAProxy is.\n";
  out += "frontend lb_health\n";
  if (settings_ok) {
    out += fmt::format("  bind {}\n", settings.health_bind);
  } else {
    out += "  # invalid settings (check_lb_settings): no health listener\n";
    out += "  bind 127.0.0.1:0\n";
  }
  out += "  http-request return status 200 content-type text/plain string ok\n";
  for (size_t i = 0; i < services.size(); ++i) {
    const auto& s = services[i];
    if (!check_lb_service(s).ok()) {
      out += fmt::format("\n# services[{}] left out: it failed check_lb_service\n", i);
      continue;
    }
    const int connect_ms = clamp_ms(s.interval_ms, kMinConnectMs, 2000);
    out += fmt::format("\nfrontend fe_{}\n", s.name);
    out += fmt::format("  bind {}:{}\n", s.vip, s.port);
    out += fmt::format("  default_backend be_{}\n", s.name);
    out += fmt::format("\nbackend be_{}\n", s.name);
    out += "  balance roundrobin\n";
    out += fmt::format("  option httpchk GET '{}'\n", s.probe_path);
    out += "  http-check expect status 200\n";
    // As Azure's load balancer: a failed connection is the client's failure, never retried on
    // another backend.
    out += "  retries 0\n";
    out += "  no option redispatch\n";
    out += fmt::format("  timeout connect {}ms\n", connect_ms);
    out += fmt::format("  timeout queue {}ms\n", connect_ms);
    out += fmt::format("  timeout check {}ms\n", std::max(s.interval_ms, kMinCheckReadMs));
    out += fmt::format("  default-server inter {}ms fall {} rise 1\n", s.interval_ms,
                       effective_unhealthy_threshold(s.interval_ms, s.unhealthy_threshold));
    out += "  http-response set-header X-Served-By %s\n";
    for (const auto& b : s.backends) {
      out += fmt::format("  server {} {}:{} check\n", b.instance, b.address, b.port);
    }
  }
  return out;
}

Result<std::vector<LbServerState>> parse_haproxy_stat(std::string_view csv) {
  auto nl = csv.find('\n');
  std::string_view header = csv.substr(0, nl);
  if (!header.starts_with("# pxname,")) {
    return make_error(Condition::internal, "haproxy 'show stat' answered " + quote_start(csv));
  }
  header.remove_prefix(2);
  auto cols = split(header, ',');
  auto col = [&](std::string_view name) -> int {
    for (size_t i = 0; i < cols.size(); ++i) {
      if (cols[i] == name) return static_cast<int>(i);
    }
    return -1;
  };
  const int px = col("pxname"), sv = col("svname"), st = col("status"), cs = col("check_status"),
            cc = col("check_code"), cd = col("check_desc"), lc = col("last_chk");
  if (px < 0 || sv < 0 || st < 0) {
    return make_error(Condition::internal,
                      "haproxy 'show stat' has no pxname/svname/status column");
  }
  std::vector<LbServerState> out;
  if (nl == std::string_view::npos) return out;
  for (auto line : split(csv.substr(nl + 1), '\n')) {
    if (line.empty() || line[0] == '#') continue;
    auto f = split(line, ',');
    auto at = [&](int i) -> std::string_view {
      return i >= 0 && static_cast<size_t>(i) < f.size() ? f[i] : std::string_view();
    };
    std::string_view proxy = at(px), server = at(sv);
    if (!proxy.starts_with("be_") || server == "BACKEND" || server == "FRONTEND") continue;
    LbServerState s;
    s.service = std::string(proxy.substr(3));
    s.instance = std::string(server);
    std::string_view status = at(st);
    if (status.starts_with("UP") || status == "no check" || status.starts_with("NOLB")) {
      s.state = "UP";
    } else if (status.starts_with("DOWN")) {
      s.state = "DOWN";
    } else if (status.starts_with("MAINT") || status.starts_with("DRAIN")) {
      s.state = "MAINT";
    } else {
      s.state = "DOWN";  // anything unknown is not serving
    }
    std::string_view check = at(cs);
    if (check.starts_with("* ")) check.remove_prefix(2);  // a check in progress
    s.check = std::string(check);
    if (!at(cc).empty() && !s.check.empty()) s.check += " " + std::string(at(cc));
    s.detail = std::string(at(cd));
    if (!at(lc).empty()) s.detail += (s.detail.empty() ? "" : ": ") + std::string(at(lc));
    out.push_back(std::move(s));
  }
  return out;
}

Result<HaproxyProcs> parse_haproxy_show_proc(std::string_view text) {
  HaproxyProcs out;
  enum { none, workers, old_workers, other } section = none;
  bool master_seen = false;
  for (auto raw : split(text, '\n')) {
    std::string_view line = raw;
    if (line.empty()) continue;
    if (line.starts_with("#")) {
      if (line.starts_with("#<PID>")) continue;
      if (line.starts_with("# workers")) {
        section = workers;
      } else if (line.starts_with("# old workers")) {
        section = old_workers;
      } else {
        section = other;
      }
      continue;
    }
    auto w = words(line);
    if (w.size() < 3) continue;
    int pid = 0, reloads = 0;
    if (!to_int(w[0], pid) || !to_int(w[2], reloads)) continue;
    if (w[1] == "master") {
      master_seen = true;
      out.master_pid = pid;
      out.reloads = reloads;
      // "N [failed: M]"
      auto pos = line.find("[failed:");
      if (pos != std::string_view::npos) {
        auto rest = words(line.substr(pos + 8));
        if (!rest.empty()) {
          std::string_view n = rest[0];
          if (n.ends_with("]")) n.remove_suffix(1);
          (void)to_int(n, out.failed);
        }
      }
    } else if (w[1] == "worker") {
      if (section == old_workers) {
        out.old_workers.push_back({pid, reloads});
      } else {
        out.workers.push_back({pid, reloads});
      }
    }
  }
  if (!master_seen) {
    return make_error(Condition::internal, "haproxy 'show proc' answered " + quote_start(text));
  }
  return out;
}

}  // namespace fabriclab::orchestrator
