#pragma once
// Running the `fabriclab` CLI from a test as a user would (the lab tests: drill, fence, chaos; the
// image CLI test), and what such a run may leave behind. The including target defines
// FABRICLAB_CLI_BIN.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "fabriclab/common/child_process.hpp"

namespace fabriclab::testing {

struct CliRun {
  int exit_code = -1;
  std::string output;
};

// The whole file; "" when it cannot be read. libstdc++ throws on a failed read(2): a /proc file of
// a process that just exited.
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  try {
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure&) {
    return {};
  }
}

// What a CLI run's environment changes: NAME -> value, or NAME -> "" to remove NAME.
using CliEnv = std::map<std::string, std::string>;

// Starts the CLI with stdout+stderr captured to `log`; `wrapper` (a program and its arguments)
// runs it when given, e.g. {"/usr/bin/unshare", "-U"}; `env` changes its environment. Returns its
// pid.
inline pid_t start_cli(const std::vector<std::string>& args, const std::string& log,
                       const std::vector<std::string>& wrapper = {}, const CliEnv& env = {}) {
  pid_t pid = fork();
  if (pid == 0) {
    for (const auto& [k, v] : env)
      v.empty() ? unsetenv(k.c_str()) : setenv(k.c_str(), v.c_str(), 1);
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    if (!f) _exit(126);
    dup2(fileno(stdout), 2);
    std::vector<char*> argv;
    std::string bin = FABRICLAB_CLI_BIN;
    for (const auto& w : wrapper) argv.push_back(const_cast<char*>(w.c_str()));
    argv.push_back(bin.data());
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for the CLI; exit_code is its exit status, or 1000 + the signal that killed it (never
// mistaken for the 130 it exits with after handling Ctrl-C).
inline CliRun wait_cli(pid_t pid, const std::string& log) {
  CliRun r;
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
  r.output = slurp(log);
  return r;
}

// Runs the CLI to its end (see start_cli).
inline CliRun run_cli(const std::vector<std::string>& args, const std::string& log,
                      const std::vector<std::string>& wrapper = {}, const CliEnv& env = {}) {
  return wait_cli(start_cli(args, log, wrapper, env), log);
}

// Processes whose name starts with `comm` and whose command line mentions `dir`: a teardown
// that leaks VMs (qemu), load balancers (haproxy) or DHCP servers (dnsmasq) shows here.
inline int processes_under(const std::string& dir, const std::string& comm = "qemu") {
  return static_cast<int>(processes_matching(comm, {dir}).size());
}

// Alive and not a zombie (an orphaned agent is reaped by whoever init is here, maybe never).
inline bool running(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto rp = stat.rfind(')');
  return !(rp != std::string::npos && rp + 2 < stat.size() && stat[rp + 2] == 'Z');
}

}  // namespace fabriclab::testing
