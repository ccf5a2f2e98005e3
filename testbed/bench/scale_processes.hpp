#pragma once
// fabriclab-bench-scale's processes (bench_scale.cpp): the agents and the orchestrator it starts,
// the clean-up that ends them on any exit (the end, an error, a signal), and what /proc says of
// their memory and CPU.
//
// Children start through common's spawn_child: stdout in DIR/NAME.out (where each says where it
// listens), stderr in DIR/NAME.log, their own process group (a Ctrl-C reaches the bench only, and
// the bench decides how children end) and SIGKILL when the bench dies (PR_SET_PDEATHSIG).

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <list>
#include <mutex>
#include <string>
#include <vector>

#include "fabriclab/common/child_process.hpp"

namespace fabriclab::bench_scale {

struct Child {
  ChildProcess process;
  std::string name;  // "orchestrator" or the host id
  std::string log;   // its stderr
  ListenAddress at;  // where it listens, once it said so
  pid_t pid() const { return process.pid; }
};

class Children {
 public:
  // Starts `argv`. nullptr (and `error` set) when it cannot start, or once kill_all() has run.
  Child* spawn(const std::string& name, const std::vector<std::string>& argv,
               const std::string& dir, std::string& error);
  // Ends every child: SIGTERM, up to `grace` for all to exit, then SIGKILL; reaps them all.
  // Afterwards spawn() refuses. Safe to call twice and from the signal thread.
  void kill_all(std::chrono::milliseconds grace);
  // A child that exited on its own (reaped here); nullptr when all run.
  const Child* find_exited();

 private:
  std::mutex mu_;
  bool closed_ = false;
  std::list<Child> list_;  // stable addresses
};

// What must happen on any exit: children ended, directory removed.
struct Cleanup {
  Children children;
  std::string dir;
  std::string agent_dir;  // when the agents' state lives elsewhere (--agents-on-tmpfs)
  bool keep = false;
  std::atomic<bool> signalled{false};  // the signal thread is cleaning up and will exit
  std::mutex mu;
  bool done = false;

  // Once; a second caller waits until the first has finished.
  void run();
};

// The clean-up die() runs; set once at start.
extern Cleanup* g_cleanup;

// Ends the bench with a message. With a child: its logs are kept, and its stderr shown unless
// `what` already carries it. While a signal is ending everything, waits for the signal thread.
[[noreturn]] void die(const std::string& what, const Child* c = nullptr, bool show_log = true);

// Waits until each child in `cs` printed "listening ADDR:PORT" (recorded in its `at`), all within
// `timeout`; dies otherwise.
void await_listening(const std::vector<Child*>& cs, std::chrono::seconds timeout);

// /proc: a "Key:   N kB" line of /proc/PID/status in MiB; context switches of all threads; the
// proportional set size in MiB (shared pages split between the processes sharing them); utime +
// stime in seconds. -1 when unreadable.
double status_mib(pid_t pid, const char* key);
double ctx_switches(pid_t pid);
double pss_mib(pid_t pid);
double cpu_s(pid_t pid);

}  // namespace fabriclab::bench_scale
