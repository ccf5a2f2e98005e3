// fabriclab-bench-scale's processes and /proc readers (scale_processes.hpp).

#include "scale_processes.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace fabriclab::bench_scale {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

Cleanup* g_cleanup = nullptr;

Child* Children::spawn(const std::string& name, const std::vector<std::string>& argv,
                       const std::string& dir, std::string& error) {
  SpawnOptions o;
  o.name = name;
  o.stdout_path = dir + "/" + name + ".out";
  o.stderr_path = dir + "/" + name + ".log";
  o.truncate_stderr = true;
  o.own_process_group = true;
  o.die_with_parent = true;
  std::lock_guard lock(mu_);
  if (closed_) return nullptr;
  auto p = spawn_child(argv, o);
  if (!p.ok()) {
    error = p.error().message;
    return nullptr;
  }
  list_.push_back(Child{*p, name, o.stderr_path, {}});
  return &list_.back();
}

void Children::kill_all(std::chrono::milliseconds grace) {
  std::lock_guard lock(mu_);
  closed_ = true;
  std::vector<pid_t> pids;
  for (const auto& c : list_) pids.push_back(c.pid());
  stop_processes(pids, grace);
}

const Child* Children::find_exited() {
  std::lock_guard lock(mu_);
  for (const auto& c : list_) {
    if (!process_alive(c.pid())) return &c;
  }
  return nullptr;
}

void Cleanup::run() {
  std::lock_guard lock(mu);
  if (done) return;
  done = true;
  children.kill_all(std::chrono::seconds(10));
  for (const auto& d : {dir, agent_dir}) {
    std::error_code ec;
    if (!d.empty() && !keep) fs::remove_all(d, ec);
  }
}

namespace {

std::string tail_of(const std::string& path, size_t bytes = 1500) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > bytes ? "..." + s.substr(s.size() - bytes) : s;
}

}  // namespace

void die(const std::string& what, const Child* c, bool show_log) {
  // Failing because a signal is ending everything: the signal thread cleans up and exits.
  if (g_cleanup && g_cleanup->signalled) {
    for (;;) ::pause();
  }
  std::cerr << "fabriclab-bench-scale: " << what << "\n";
  if (c && show_log)
    std::cerr << "--- " << c->name << " stderr (" << c->log << "):\n" << tail_of(c->log) << "\n";
  if (g_cleanup) {
    if (c) g_cleanup->keep = true;  // leave the logs for a post-mortem
    g_cleanup->run();
    if (g_cleanup->keep) std::cerr << "logs kept in " << g_cleanup->dir << "\n";
  }
  std::exit(1);
}

void await_listening(const std::vector<Child*>& cs, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (Child* c : cs) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    auto at = wait_listening(c->process, std::max(left, 0ms));
    if (!at.ok()) die(at.error().message, c, /*show_log=*/false);
    c->at = *at;
  }
}

// A "Key:   N kB" line of /proc/PID/status, in MiB; -1 when unreadable.
double status_mib(pid_t pid, const char* key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  size_t k = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, k, key) == 0 && line.size() > k && line[k] == ':') {
      return std::stod(line.substr(k + 1)) / 1024.0;
    }
  }
  return -1;
}

// Context switches of a process, all threads (voluntary + involuntary), from /proc/PID/task/*.
double ctx_switches(pid_t pid) {
  double sum = 0;
  std::error_code ec;
  for (const auto& t : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(t.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 ||
          line.rfind("nonvoluntary_ctxt_switches:", 0) == 0) {
        sum += std::stod(line.substr(line.find(':') + 1));
      }
    }
  }
  return sum;
}

// Proportional set size (shared pages split between the processes sharing them), in MiB; the
// sum over processes is what they occupy together, unlike a sum of VmHWM.
double pss_mib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pss:", 0) == 0) return std::stod(line.substr(4)) / 1024.0;
  }
  return -1;
}

// utime + stime of a process, in seconds.
double cpu_s(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto rp = s.rfind(')');
  if (rp == std::string::npos) return -1;
  std::istringstream rest(s.substr(rp + 2));
  std::string f;
  std::vector<std::string> fields;
  while (rest >> f) fields.push_back(f);
  // Fields after ")" start at field 3 (state); utime and stime are fields 14 and 15.
  if (fields.size() < 13) return -1;
  return (std::stod(fields[11]) + std::stod(fields[12])) /
         static_cast<double>(::sysconf(_SC_CLK_TCK));
}

}  // namespace fabriclab::bench_scale
