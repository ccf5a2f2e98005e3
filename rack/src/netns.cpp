// The lab's network namespaces through iproute2's `ip` (netns.hpp).
//
// Each namespace is set up with one `ip -n NAME -batch -` run (its commands on stdin), so a rack
// of N hosts costs 2N + 3 runs of `ip`, not one per command. A run has a deadline: `ip` does not
// hang, but a child that did would hold the whole lab up.
#include "netns.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>

#include "fabriclab/common/child_process.hpp"
#include "fabriclab/common/random_hex.hpp"

namespace fabriclab::rack::netns {

namespace {

using Clock = std::chrono::steady_clock;

const std::string& ip_binary() {
  static const std::string path = [] {
    for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
      if (access(p, X_OK) == 0) return std::string(p);
    }
    return std::string();
  }();
  return path;
}

// Every argument we hand to `ip` is one word of our own making; check it anyway.
bool plain_word(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  }
  return true;
}

std::string describe(const std::vector<std::string>& args) {
  std::string s = "ip";
  for (const auto& a : args) s += " " + a;
  return s;
}

// Runs `ip ARGS` with `input` on its stdin; its stdout and stderr together go into the error.
Status run_ip(const std::vector<std::string>& args, const std::string& input = {},
              std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const std::string& ip = ip_binary();
  if (ip.empty())
    return make_error(Condition::not_found,
                      "ip (iproute2) not found in /usr/sbin, /sbin, /usr/bin, /bin");
  for (const auto& a : args) {
    if (!plain_word(a))
      return make_error(Condition::invalid_argument, describe(args) + ": bad argument '" + a + "'");
  }
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0)
    return make_error(Condition::transient, "pipe: " + std::string(std::strerror(errno)));
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]);
    close(in[1]);
    return make_error(Condition::transient, "pipe: " + std::string(std::strerror(errno)));
  }
  std::vector<char*> argv{const_cast<char*>(ip.c_str())};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    return make_error(Condition::transient, "fork: " + std::string(std::strerror(errno)));
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(out[1], 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  // Batches are a few hundred bytes: far below a pipe's buffer, so this write does not block.
  if (!input.empty() &&
      write(in[1], input.data(), input.size()) != static_cast<ssize_t>(input.size())) {
    // `ip` exited early; its exit code and output say why.
  }
  close(in[1]);
  std::string output;
  auto deadline = Clock::now() + timeout;
  bool timed_out = false;
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[4096];
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (output.size() < 16384) output.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
  if (timed_out)
    return make_error(Condition::timeout, describe(args) + ": no answer within " +
                                              std::to_string(timeout.count()) + " ms");
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  Condition c = output.find("Operation not permitted") != std::string::npos ||
                        output.find("Permission denied") != std::string::npos
                    ? Condition::permission_denied
                    : Condition::internal;
  std::string code = WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                       : "signal " + std::to_string(WTERMSIG(status));
  return make_error(
      c, describe(args) + " failed (" + code + ")" + (output.empty() ? "" : ": " + output));
}

// Turns IPv4 forwarding on inside namespace `name`: a child enters it and writes the sysctl
// (/proc/sys/net belongs to the namespace of whoever opens it).
Status enable_forwarding(const std::string& name) {
  int ns = open(path_of(name).c_str(), O_RDONLY | O_CLOEXEC);
  if (ns < 0)
    return make_error(Condition::not_found,
                      "cannot open " + path_of(name) + ": " + std::strerror(errno));
  pid_t pid = fork();
  if (pid < 0) {
    close(ns);
    return make_error(Condition::transient, "fork: " + std::string(std::strerror(errno)));
  }
  if (pid == 0) {
    if (setns(ns, CLONE_NEWNET) != 0) _exit(10);
    int fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC);
    if (fd < 0) _exit(11);
    _exit(write(fd, "1\n", 2) == 2 ? 0 : 12);
  }
  close(ns);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  return make_error(Condition::internal,
                    "cannot turn on IPv4 forwarding in " + name + " (exit " +
                        std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")");
}

}  // namespace

std::string host_address(int n) { return "198.18.0." + std::to_string(n + 2); }
std::string guest_subnet(int n) { return "198.19." + std::to_string(n) + ".0/24"; }
std::string guest_gateway(int n) { return "198.19." + std::to_string(n) + ".1"; }

std::string new_id() { return random_hex(8); }

std::string rack_name(const std::string& id) { return "flab-" + id + "-rack"; }
std::string host_name(const std::string& id, int n) {
  return "flab-" + id + "-h" + std::to_string(n);
}
std::string path_of(const std::string& name) { return "/run/netns/" + name; }

bool exists(const std::string& name) {
  struct stat st {};
  return lstat(path_of(name).c_str(), &st) == 0;
}

bool is_lab_name(const std::string& name) {
  // flab- + 8 hex + -rack | -h + 1..3 digits
  if (name.size() < 15 || name.size() > 19 || name.rfind("flab-", 0) != 0 || name[13] != '-')
    return false;
  for (size_t i = 5; i < 13; ++i) {
    if (!std::isxdigit(static_cast<unsigned char>(name[i])) ||
        std::isupper(static_cast<unsigned char>(name[i])))
      return false;
  }
  std::string rest = name.substr(14);
  if (rest == "rack") return true;
  if (rest.size() < 2 || rest.size() > 4 || rest[0] != 'h') return false;
  for (size_t i = 1; i < rest.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(rest[i]))) return false;
  }
  return true;
}

Status create(const std::string& id, int hosts, std::vector<std::string>& created,
              bool guest_network) {
  if (hosts < 1 || hosts > kMaxHosts) {
    return make_error(Condition::invalid_argument, "a namespaced rack has 1.." +
                                                       std::to_string(kMaxHosts) + " hosts, not " +
                                                       std::to_string(hosts));
  }
  const std::string rack = rack_name(id);
  if (!is_lab_name(rack)) return make_error(Condition::invalid_argument, "bad lab id '" + id + "'");
  FL_RETURN_IF_ERROR(run_ip({"netns", "add", rack}));
  created.push_back(rack);
  FL_RETURN_IF_ERROR(run_ip({"-n", rack, "-batch", "-"},
                            "link set lo up\n"
                            "link add br0 type bridge\n"
                            "addr add " +
                                std::string(kBridgeAddress) +
                                "/24 dev br0\n"
                                "link set br0 up\n"));
  std::string ports;
  for (int n = 0; n < hosts; ++n) {
    const std::string host = host_name(id, n), peer = fmt::format("h{}", n);
    FL_RETURN_IF_ERROR(run_ip({"netns", "add", host}));
    created.push_back(host);
    FL_RETURN_IF_ERROR(run_ip({"-n", host, "-batch", "-"},
                              "link set lo up\n"
                              "link add eth0 type veth peer name " +
                                  peer + " netns " + rack +
                                  "\n"
                                  "addr add " +
                                  host_address(n) +
                                  "/24 dev eth0\n"
                                  "link set eth0 up\n"));
    ports += "link set " + peer + " master br0 up\n";
    if (guest_network) {
      FL_RETURN_IF_ERROR(run_ip({"-n", host, "-batch", "-"},
                                "link add " + std::string(kGuestBridge) +
                                    " type bridge\n"
                                    "addr add " +
                                    guest_gateway(n) + "/24 dev " + kGuestBridge +
                                    "\n"
                                    "addr add " +
                                    std::string(kImdsAddress) + "/32 dev " + kGuestBridge +
                                    "\n"
                                    "link set " +
                                    kGuestBridge + " up\n"));
      FL_RETURN_IF_ERROR(enable_forwarding(host));
      ports += "route add " + guest_subnet(n) + " via " + host_address(n) + "\n";
    }
  }
  if (guest_network) ports += "route add local " + std::string(kVipRange) + " dev lo\n";
  return run_ip({"-n", rack, "-batch", "-"}, ports);
}

std::vector<int> pids(const std::string& name) {
  std::vector<int> out;
  struct stat ns {};
  if (stat(path_of(name).c_str(), &ns) != 0) return out;
  for (pid_t pid : process_ids()) {
    struct stat st {};
    std::string p = "/proc/" + std::to_string(pid) + "/ns/net";
    if (stat(p.c_str(), &st) == 0 && st.st_ino == ns.st_ino && st.st_dev == ns.st_dev) {
      out.push_back(static_cast<int>(pid));
    }
  }
  return out;
}

Status set_link(const std::string& name, bool up) {
  if (!is_lab_name(name))
    return make_error(Condition::invalid_argument, "not a lab namespace: " + name);
  return run_ip({"-n", name, "link", "set", "eth0", up ? "up" : "down"});
}

Status remove(const std::vector<std::string>& names) {
  std::string failed;
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    if (!is_lab_name(*it)) {
      failed +=
          (failed.empty() ? "" : "; ") + ("'" + *it + "' is not a lab namespace name (left alone)");
      continue;
    }
    if (!exists(*it)) continue;
    if (auto st = run_ip({"netns", "delete", *it}); !st.ok() && exists(*it)) {
      failed += (failed.empty() ? "" : "; ") + st.error().message;
    }
  }
  if (failed.empty()) return {};
  return make_error(Condition::internal, "network namespaces not removed: " + failed);
}

}  // namespace fabriclab::rack::netns
