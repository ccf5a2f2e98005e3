#pragma once
// Long-running helper programs: an agent, the orchestrator, dnsmasq, HAProxy. Start one with its
// output in files, wait until it says where it listens, stop it. (run_command in process.hpp is
// for short tools whose output is the answer.)
//
// spawn_child forks and execs argv[0] (a path: no PATH lookup). The child gets /dev/null as
// stdin, stdout in a file (the wait reads it there, and a post-mortem finds it), stderr in a file
// or the caller's, a signal mask with nothing blocked (a caller that blocks SIGINT/SIGTERM for a
// sigwait thread must not hand that to its children), and no file descriptor of ours: every
// descriptor above 2 is closed before exec. Options: its own process group (so a Ctrl-C at the
// terminal reaches the caller only, and the caller decides how its children end), death with the
// caller (PR_SET_PDEATHSIG: SIGKILL when the thread that spawned it ends), and a network
// namespace entered with setns(2) between fork and exec (so the pid is the program's own, no
// `ip netns exec` in between). The child only makes async-signal-safe calls after fork: callers
// have threads.
//
// Our programs print "listening HOST:PORT" on a line of their own once their API accepts
// connections; wait_listening reads that line from the child's stdout file, from where this run
// began (a restart that appends to the same file reads its own line). Errors name the program and
// say what it printed: its stdout so far and the end of its stderr file.
//
// The stop functions work on any pid: a child of ours is reaped, anyone else's is watched through
// kill(pid, 0) and /proc (a zombie not ours to reap counts as gone), so a process recorded by
// another run (a lab's lab.json) can be stopped as well.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "fabriclab/common/result.hpp"

namespace fabriclab {

struct SpawnOptions {
  std::string name;              // in messages: "orchestrator", "agent h3"
  std::string stdout_path;       // required
  bool append_stdout = false;    // true: keep what the file holds (wait_listening reads after it)
  std::string stderr_path;       // empty: the caller's stderr
  bool truncate_stderr = false;  // false: appended to
  std::string netns_path;        // a namespace file (/run/netns/NAME) to enter; empty: ours
  bool own_process_group = false;
  bool die_with_parent = false;
};

struct ChildProcess {
  std::string name;
  pid_t pid = -1;
  std::string stdout_path, stderr_path;
  uint64_t stdout_offset = 0;  // where this run's output begins in stdout_path
};

struct ListenAddress {
  std::string host;
  uint16_t port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }  // "127.0.0.1:4000"
};

// Starts argv. Errors: empty argv or stdout_path -> invalid_argument; a file or the namespace
// that cannot be opened -> not_found / transient naming it; fork failing -> transient. A program
// that cannot be executed is a child that exits 127 at once, saying so on its stderr.
Result<ChildProcess> spawn_child(const std::vector<std::string>& argv, const SpawnOptions& options);

// Waits for a line "listening HOST:PORT" (port 1..65535) in the child's stdout. Polls every 20 ms.
// Errors: the child exits first -> internal ("NAME exited (exit code 1) before it printed
// 'listening HOST:PORT'; ..."); not within `timeout` -> timeout (the child is left running: the
// caller stops what it started); `cancelled` returning true -> cancelled ("interrupted").
Result<ListenAddress> wait_listening(const ChildProcess& child, std::chrono::milliseconds timeout,
                                     const std::function<bool()>& cancelled = {});

// Whether `pid` runs (reaps it when it is our child and has exited).
bool process_alive(pid_t pid);

// SIGTERM, up to `grace` to exit, then SIGKILL and up to a second to be gone.
void stop_process(pid_t pid, std::chrono::milliseconds grace);
// The same for many at once: all get SIGTERM, then one deadline for all.
void stop_processes(const std::vector<pid_t>& pids, std::chrono::milliseconds grace);
// SIGKILL at once (a crash, not a stop), then reaped or up to a second to be gone.
void kill_process(pid_t pid);

// The processes running now (the numeric entries of /proc), this process and init left out.
std::vector<pid_t> process_ids();
// The processes whose name (/proc/PID/comm) starts with `name_prefix` and whose command line
// (/proc/PID/cmdline: argv, NUL-separated) holds every one of `needles`, e.g. the QEMU processes
// of one state directory: {"qemu", {"/lab/h1/"}}. A process that exits meanwhile is left out.
std::vector<pid_t> processes_matching(std::string_view name_prefix,
                                      const std::vector<std::string>& needles);

// The last `lines` lines of a file (at most its last MiB); "" when it cannot be read.
std::string file_tail(const std::string& path, size_t lines = 8);

}  // namespace fabriclab
