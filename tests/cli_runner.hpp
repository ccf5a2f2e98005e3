#pragma once
// Running the `fabriclab` CLI from a test as a user would (the lab tests: drill, fence, chaos), and
// what such a run may leave behind. The including target defines FABRICLAB_CLI_BIN.

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

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

// Starts the CLI with stdout+stderr captured to `log`; `wrapper` (a program and its arguments)
// runs it when given, e.g. {"/usr/bin/unshare", "-U"}. Returns its pid.
inline pid_t start_cli(const std::vector<std::string>& args, const std::string& log,
                       const std::vector<std::string>& wrapper = {}) {
  pid_t pid = fork();
  if (pid == 0) {
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
                      const std::vector<std::string>& wrapper = {}) {
  return wait_cli(start_cli(args, log, wrapper), log);
}

// Processes whose name starts with `comm` and whose command line mentions `dir`: a teardown
// that leaks VMs (qemu), load balancers (haproxy) or DHCP servers (dnsmasq) shows here.
inline int processes_under(const std::string& dir, const std::string& comm = "qemu") {
  int n = 0;
  DIR* d = opendir("/proc");
  while (dirent* e = d ? readdir(d) : nullptr) {
    if (!std::isdigit(static_cast<unsigned char>(e->d_name[0]))) continue;
    std::string base = std::string("/proc/") + e->d_name;
    if (slurp(base + "/comm").rfind(comm, 0) != 0) continue;
    if (slurp(base + "/cmdline").find(dir) != std::string::npos) ++n;
  }
  if (d) closedir(d);
  return n;
}

// Alive and not a zombie (an orphaned agent is reaped by whoever init is here, maybe never).
inline bool running(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto rp = stat.rfind(')');
  return !(rp != std::string::npos && rp + 2 < stat.size() && stat[rp + 2] == 'Z');
}

}  // namespace fabriclab::testing
