// The local rack's power control per host: the emulated BMC/PDU (lab.hpp). The orchestrator
// fences a silent host through it (`fabriclab lab power-off`, its --power-command) before it
// heals the host's instances, so "confirmed off" must mean it: every process of the host is
// SIGKILLed and looked for again until none is left.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <thread>

#include "fabriclab/common/child_process.hpp"
#include "fabriclab/rack/lab.hpp"
#include "lab_internal.hpp"

namespace fabriclab::rack {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

LabProcess* find_agent(std::vector<LabProcess>& agents, const std::string& host) {
  for (auto& a : agents) {
    if (a.name == host) return &a;
  }
  return nullptr;
}

Status no_such_host(const std::vector<LabProcess>& agents, const std::string& host) {
  std::string names;
  for (const auto& a : agents) names += (names.empty() ? "" : ", ") + a.name;
  return make_error(Condition::invalid_argument,
                    "the lab has no host '" + host + "' (its hosts: " + names + ")");
}

// Whether `pid` is still the agent of `state_dir` (a recorded pid may have been reused).
bool is_agent_of(pid_t pid, const std::string& state_dir) {
  if (pid <= 1 || !process_alive(pid)) return false;
  std::string cmd = detail::cmdline_of(pid);
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  return cmd.find("fabriclab-agent") != std::string::npos &&
         cmd.find(" " + state_dir + " ") != std::string::npos;
}

}  // namespace

std::string Lab::power_command(const std::string& bin_dir, const std::string& lab_dir) {
  std::string cli = find_binary("fabriclab", bin_dir);
  if (cli.empty()) return {};
  return cli + " lab power-off --lab-dir " + lab_dir + " {host}";
}

Status Lab::power_off(const std::string& host, std::chrono::milliseconds timeout) {
  LabProcess* a = find_agent(agents_, host);
  if (!a) return no_such_host(agents_, host);
  const std::string state_dir = dir_ + "/" + a->name;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    std::set<pid_t> left;
    if (is_agent_of(a->pid, state_dir)) left.insert(a->pid);
    for (pid_t p : processes_matching("qemu", {state_dir + "/"})) left.insert(p);
    if (!a->netns.empty()) {
      for (pid_t p : detail::qemu_processes_in(a->netns)) left.insert(p);
    }
    // Zombies of ours are reaped by process_alive; anyone else's count as gone there too.
    std::erase_if(left, [](pid_t p) { return !process_alive(p); });
    if (left.empty()) return {};
    if (Clock::now() > deadline) {
      std::string pids;
      for (pid_t p : left) pids += (pids.empty() ? "" : ", ") + std::to_string(p);
      return make_error(Condition::timeout, "host " + host + " is not off after " +
                                                std::to_string(timeout.count()) +
                                                " ms: still running: " + pids);
    }
    for (pid_t p : left) kill(p, SIGKILL);
    std::this_thread::sleep_for(20ms);
  }
}

Status Lab::power_on(const std::string& host, std::chrono::milliseconds timeout) {
  LabProcess* a = find_agent(agents_, host);
  if (!a) return no_such_host(agents_, host);
  if (is_agent_of(a->pid, dir_ + "/" + a->name)) {
    return make_error(Condition::already_exists, "host " + host + " is on (its agent runs as pid " +
                                                     std::to_string(a->pid) + ")");
  }
  if (a->argv.empty()) {
    return make_error(Condition::unsupported, "lab.json holds no command line for host " + host +
                                                  "'s agent (a lab started by an older fabriclab)");
  }
  // The same agent on the same address and port (the orchestrator knows it there), holding its
  // guests: the instances it had may have been healed elsewhere meanwhile.
  std::vector<std::string> argv = a->argv;
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "--port") argv[i + 1] = std::to_string(a->port);
  }
  argv.push_back("--hold-guests");
  FL_RETURN_IF_ERROR(detail::start_and_await(*a, dir_, argv, timeout));
  return save();
}

}  // namespace fabriclab::rack
