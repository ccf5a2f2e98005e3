// The live load balancer: HAProxy driven through its master CLI socket (lb.hpp).
//
// A reload is the delicate part. HAProxy in master-worker mode (-W) re-executes itself on the
// master CLI's `reload`: the new worker parses the file from scratch and takes the listening
// sockets over, the old worker stops accepting and finishes the connections it has
// (hard-stop-after bounds that), so clients see no refused connection. Two things would still
// go wrong without care:
//   - A broken file: the master would then run without a worker of the new generation. So the
//     text is checked with `haproxy -c` first, on a temporary file beside the real one, and only
//     a valid one is renamed over it. `-c` does not bind, so a VIP that cannot be bound is only
//     found by the reload itself: `show proc` then counts a failed reload, the old worker keeps
//     serving, and the old file is put back so the next reload starts from what runs.
//   - Check states: a new worker starts every server as UP, so a backend the probe had taken out
//     (a draining guest) would get traffic again until its next failed checks. So the running
//     worker's `show servers state` is dumped into the server-state-file just before the reload,
//     and the configuration loads it (`load-server-state-from-file global`).
// A reload is confirmed by `show proc`: the master's reload count went up with no new failure
// and a worker that has survived no reload (the new one) runs, within a deadline.

#include "fabriclab/orchestrator/lb.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "fabriclab/common/logging.hpp"
#include "fabriclab/common/process.hpp"

namespace fabriclab::orchestrator {

namespace {

using Clock = std::chrono::steady_clock;
auto log() { return logger("lb"); }

std::string errno_text(int e) { return std::strerror(e); }

int remaining_ms(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<int64_t>(0, ms));
}

// HAProxy's own complaint from `haproxy -c` output: its ALERT lines, else the whole output.
std::string haproxy_message(const std::string& output) {
  std::istringstream in(output);
  std::string line, alerts;
  while (std::getline(in, line)) {
    if (line.find("[ALERT]") != std::string::npos) alerts += (alerts.empty() ? "" : "; ") + line;
  }
  std::string m = alerts.empty() ? output : alerts;
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  if (m.size() > 2000) m = m.substr(0, 2000) + "...";
  return m;
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(Condition::not_found, path + ": " + errno_text(errno));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// Writes `text` to PATH.tmp and renames it over PATH.
Status write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return make_error(Condition::internal, tmp + ": " + errno_text(errno));
    f << text;
    f.flush();
    if (!f) return make_error(Condition::internal, tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::remove(tmp.c_str());
    return make_error(Condition::internal, "rename " + tmp + ": " + errno_text(e));
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<LoadBalancer>> LoadBalancer::create(LbOptions options) {
  if (options.config_path.empty())
    return make_error(Condition::invalid_argument, "--lb-config is empty");
  if (options.master_socket.empty()) {
    return make_error(Condition::invalid_argument,
                      "--lb-master-socket is required with --lb-config");
  }
  sockaddr_un addr{};
  if (options.master_socket.size() >= sizeof(addr.sun_path)) {
    return make_error(Condition::invalid_argument,
                      "--lb-master-socket: path too long for a unix socket");
  }
  FL_RETURN_IF_ERROR(check_lb_settings(options.settings));
  return std::unique_ptr<LoadBalancer>(new LoadBalancer(std::move(options)));
}

int LoadBalancer::reloads() const {
  std::lock_guard lock(mu_);
  return reloads_;
}

Result<std::string> LoadBalancer::command(std::string_view cmd) const {
  auto deadline = Clock::now() + options_.socket_timeout;
  const std::string what = "haproxy master socket " + options_.master_socket;
  for (;;) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error(Condition::internal, "socket: " + errno_text(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, options_.master_socket.c_str(), options_.master_socket.size());
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      int e = errno;
      close(fd);
      // The master re-executes itself on a reload: its socket is briefly gone or refusing.
      if ((e == ECONNREFUSED || e == ENOENT || e == EAGAIN) && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      return make_error(Condition::transient, what + ": " + errno_text(e));
    }
    std::string line(cmd);
    line += "\n";
    size_t sent = 0;
    while (sent < line.size()) {
      ssize_t n = send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) {
        int e = errno;
        close(fd);
        return make_error(Condition::transient, what + ": send: " + errno_text(e));
      }
      sent += static_cast<size_t>(n);
    }
    shutdown(fd, SHUT_WR);  // non-interactive: HAProxy answers and closes
    std::string out;
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      int n = ::poll(&p, 1, remaining_ms(deadline));
      if (n == 0) {
        close(fd);
        return make_error(Condition::timeout,
                          what + ": no answer to '" + std::string(cmd) + "' in time");
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        break;
      }
      char buf[16384];
      ssize_t got = recv(fd, buf, sizeof buf, 0);
      if (got <= 0) break;
      if (out.size() > (16 << 20)) break;
      out.append(buf, static_cast<size_t>(got));
    }
    close(fd);
    return out;
  }
}

Result<std::vector<LbServerState>> LoadBalancer::servers() const {
  FL_ASSIGN_OR_RETURN(auto text, command("@1 show stat"));
  return parse_haproxy_stat(text);
}

Status LoadBalancer::reload_and_confirm() {
  FL_ASSIGN_OR_RETURN(auto before_text, command("show proc"));
  FL_ASSIGN_OR_RETURN(auto before, parse_haproxy_show_proc(before_text));
  std::set<int> old_pids;
  for (const auto& w : before.workers) old_pids.insert(w.pid);
  for (const auto& w : before.old_workers) old_pids.insert(w.pid);
  // The connection closes when the master re-executes; its answer (if any) says nothing more.
  (void)command("reload");
  auto deadline = Clock::now() + options_.reload_timeout;
  std::string last = "no answer from the master";
  while (Clock::now() < deadline) {
    auto text = command("show proc");
    if (text.ok()) {
      auto procs = parse_haproxy_show_proc(*text);
      if (procs.ok()) {
        if (procs->reloads > before.reloads && procs->failed > before.failed) {
          return make_error(Condition::invalid_state,
                            "haproxy could not start the new configuration (reload failed, the "
                            "previous worker keeps serving); its log on stderr says why");
        }
        if (procs->reloads > before.reloads) {
          for (const auto& w : procs->workers) {
            if (w.reloads == 0 && !old_pids.count(w.pid)) return {};
          }
        }
        last = "reloads " + std::to_string(procs->reloads) + ", no new worker yet";
      } else {
        last = procs.error().message;
      }
    } else {
      last = text.error().message;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return make_error(Condition::timeout, "haproxy reload not confirmed within " +
                                            std::to_string(options_.reload_timeout.count()) +
                                            " ms: " + last);
}

Result<bool> LoadBalancer::apply(const std::vector<LbService>& services) {
  std::lock_guard lock(mu_);
  const std::string text = render_haproxy_config(services, options_.settings);
  auto current = read_file(options_.config_path);
  if (current.ok() && *current == text) return false;

  const std::string candidate = options_.config_path + ".new";
  {
    std::ofstream f(candidate, std::ios::binary | std::ios::trunc);
    if (!f) return make_error(Condition::internal, candidate + ": " + errno_text(errno));
    f << text;
    if (!f.flush()) return make_error(Condition::internal, candidate + ": write failed");
  }
  auto checked =
      run_command({options_.haproxy, "-c", "-f", candidate}, std::chrono::seconds(20), 64 << 10);
  if (!checked.ok()) {
    std::remove(candidate.c_str());
    return checked.error();
  }
  if (checked->exit_code != 0) {
    std::remove(candidate.c_str());
    return make_error(Condition::invalid_argument,
                      "haproxy refused the configuration: " + haproxy_message(checked->output));
  }
  if (!options_.settings.server_state_file.empty()) {
    auto state = command("@1 show servers state");
    if (!state.ok()) {
      std::remove(candidate.c_str());
      return make_error(state.error().condition, "saving server states: " + state.error().message);
    }
    // "1\n# be_id ..." is the state file format (version 1); anything else is an error message.
    if (!state->starts_with("1\n")) {
      std::remove(candidate.c_str());
      return make_error(Condition::internal,
                        "saving server states: haproxy answered '" + state->substr(0, 200) + "'");
    }
    if (auto s = write_atomically(options_.settings.server_state_file, *state); !s.ok()) {
      std::remove(candidate.c_str());
      return s.error();
    }
  }
  if (std::rename(candidate.c_str(), options_.config_path.c_str()) != 0) {
    int e = errno;
    std::remove(candidate.c_str());
    return make_error(Condition::internal, "rename " + candidate + ": " + errno_text(e));
  }
  auto reloaded = reload_and_confirm();
  if (!reloaded.ok()) {
    // What runs is the previous configuration (or nothing new): keep the file saying so.
    if (current.ok()) (void)write_atomically(options_.config_path, *current);
    return reloaded.error();
  }
  ++reloads_;
  log()->info("haproxy reloaded: {} service(s)", services.size());
  return true;
}

}  // namespace fabriclab::orchestrator
