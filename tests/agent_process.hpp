#pragma once
// A fabriclab-agent as a separate process, for the real-VM tests that SIGKILL one and start it
// again on the same state directory. Started with common's spawn_child: stdout appended to OUT
// (a restart reads its own "listening" line), stderr to `log` when given. The owner ends it:
// SIGTERM on destruction (the agent leaves its guests running by design), kill9() for a crash.

#include <chrono>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "fabriclab/common/child_process.hpp"

namespace fabriclab::testing {

struct AgentProcess {
  pid_t pid = -1;
  uint16_t port = 0;  // 0: it did not start (error says why)
  std::string log;    // its stderr; empty: the test's own
  std::string error;

  AgentProcess() = default;
  AgentProcess(const AgentProcess&) = delete;
  // Moves hand the process over: only one owner ends it.
  AgentProcess& operator=(AgentProcess&& o) noexcept {
    if (this != &o) {
      stop();
      pid = std::exchange(o.pid, -1);
      port = o.port;
      log = std::move(o.log);
      error = std::move(o.error);
    }
    return *this;
  }
  AgentProcess(AgentProcess&& o) noexcept { *this = std::move(o); }
  ~AgentProcess() { stop(); }

  // Starts `argv` (argv[0] the agent binary) and waits up to a minute for its API.
  static AgentProcess spawn(const std::vector<std::string>& argv, const std::string& out_path,
                            const std::string& log = {}) {
    AgentProcess p;
    p.log = log;
    SpawnOptions o;
    o.name = "the agent";
    o.stdout_path = out_path;
    o.append_stdout = true;
    o.stderr_path = log;
    auto child = spawn_child(argv, o);
    if (!child.ok()) {
      p.error = child.error().describe();
      return p;
    }
    p.pid = child->pid;
    auto at = wait_listening(*child, std::chrono::seconds(60));
    if (at.ok()) {
      p.port = at->port;
    } else {
      p.error = at.error().describe();
    }
    return p;
  }

  void kill9() {
    kill_process(pid);
    pid = -1;
  }
  void stop() {
    stop_process(pid, std::chrono::seconds(60));
    pid = -1;
  }

  // For a failure message: why it did not start, and the end of its log.
  std::string log_tail() const {
    std::string out = error.empty() ? "" : "\n" + error;
    if (log.empty()) return out;
    std::ifstream in(log);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return out + "\n--- agent log (" + log + ") ---\n" +
           all.substr(all.size() > 3000 ? all.size() - 3000 : 0);
  }
};

}  // namespace fabriclab::testing
