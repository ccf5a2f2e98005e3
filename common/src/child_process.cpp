// spawn_child, wait_listening and the stop functions (child_process.hpp).
//
// Everything the child needs (argv, the files, the namespace, the message it writes when exec
// fails) is opened or built before fork(): between fork and exec the child of a threaded process
// may only make async-signal-safe calls, and a malloc there can deadlock on a lock another thread
// held at the fork.

#include "fabriclab/common/child_process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace fabriclab {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Up to `max` bytes of `path` from `offset` (all of it when it is shorter); "" when unreadable.
std::string read_from(const std::string& path, uint64_t offset, size_t max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out;
  char buf[8192];
  off_t at = static_cast<off_t>(offset);
  while (out.size() < max) {
    ssize_t n = ::pread(fd, buf, std::min(sizeof buf, max - out.size()), at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    at += n;
  }
  ::close(fd);
  return out;
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// Whether `pid` is a zombie that is not ours to reap (/proc/PID/stat's state field).
bool zombie(pid_t pid) {
  std::string stat = read_from("/proc/" + std::to_string(pid) + "/stat", 0, 4096);
  auto rp = stat.rfind(')');
  return rp != std::string::npos && rp + 2 < stat.size() && stat[rp + 2] == 'Z';
}

// 1 exited (`status` set when it was our child, else -1), 0 running.
bool exited(pid_t pid, int& status) {
  status = -1;
  if (pid <= 0) return true;
  pid_t r = ::waitpid(pid, &status, WNOHANG);
  if (r == pid) return true;
  status = -1;
  if (r == 0) return false;  // our child, running
  return ::kill(pid, 0) != 0 || zombie(pid);
}

std::string describe_status(int status) {
  if (status == -1) return "exited";
  if (WIFEXITED(status)) return "exited (exit code " + std::to_string(WEXITSTATUS(status)) + ")";
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "exited";
}

// "HOST:PORT" -> the address; nullopt unless the port is 1..65535.
std::optional<ListenAddress> parse_endpoint(std::string_view ep) {
  auto colon = ep.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 >= ep.size() ||
      colon + 6 < ep.size())
    return std::nullopt;
  int port = 0;
  for (char c : ep.substr(colon + 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535) return std::nullopt;
  return ListenAddress{std::string(ep.substr(0, colon)), static_cast<uint16_t>(port)};
}

// The first complete "listening HOST:PORT" line of `out`.
std::optional<ListenAddress> find_listening(const std::string& out) {
  size_t begin = 0;
  for (size_t nl; (nl = out.find('\n', begin)) != std::string::npos; begin = nl + 1) {
    std::string_view line(out.data() + begin, nl - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.starts_with("listening ")) continue;
    if (auto a = parse_endpoint(line.substr(10))) return a;
  }
  return std::nullopt;
}

// "; it printed: ...; its log (PATH) ends:\n..." for an error about `c`.
std::string what_it_printed(const ChildProcess& c) {
  std::string out = read_from(c.stdout_path, c.stdout_offset, 400);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  std::string s = out.empty() ? "; it printed nothing on stdout (" + c.stdout_path + ")"
                              : "; its stdout (" + c.stdout_path + ") began: '" + out + "'";
  if (!c.stderr_path.empty())
    s += "; its log (" + c.stderr_path + ") ends:\n" + file_tail(c.stderr_path);
  return s;
}

// Up to `d` for `pid` to be gone.
bool wait_gone(pid_t pid, std::chrono::milliseconds d) {
  auto deadline = Clock::now() + d;
  for (;;) {
    if (!process_alive(pid)) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

}  // namespace

Result<ChildProcess> spawn_child(const std::vector<std::string>& argv, const SpawnOptions& o) {
  if (argv.empty() || argv[0].empty())
    return make_error(Condition::invalid_argument, "spawn_child: no program given");
  const std::string name = o.name.empty() ? argv[0] : o.name;
  if (o.stdout_path.empty())
    return make_error(Condition::invalid_argument, "spawn_child: no stdout file for " + name);
  ChildProcess c;
  c.name = name;
  c.stdout_path = o.stdout_path;
  c.stderr_path = o.stderr_path;

  // Opened here, closed on every way out of this function (the child has its copies).
  struct Fds {
    int out = -1, err = -1, null = -1, ns = -1;
    ~Fds() {
      for (int fd : {out, err, null, ns})
        if (fd >= 0) ::close(fd);
    }
  } f;
  if (!o.netns_path.empty()) {
    f.ns = ::open(o.netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.ns < 0) {
      return make_error(Condition::not_found, "cannot open network namespace " + o.netns_path +
                                                  " for " + name + ": " + std::strerror(errno));
    }
  }
  f.out = ::open(o.stdout_path.c_str(),
                 O_WRONLY | O_CREAT | O_CLOEXEC | (o.append_stdout ? O_APPEND : O_TRUNC), 0644);
  if (f.out < 0)
    return make_error(Condition::transient, "cannot open " + o.stdout_path + " for " + name + ": " +
                                                std::strerror(errno));
  if (o.append_stdout) c.stdout_offset = file_size(o.stdout_path);
  if (!o.stderr_path.empty()) {
    f.err = ::open(o.stderr_path.c_str(),
                   O_WRONLY | O_CREAT | O_CLOEXEC | (o.truncate_stderr ? O_TRUNC : O_APPEND), 0644);
    if (f.err < 0)
      return make_error(Condition::transient, "cannot open " + o.stderr_path + " for " + name +
                                                  ": " + std::strerror(errno));
  }
  f.null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (f.null < 0)
    return make_error(Condition::transient,
                      std::string("cannot open /dev/null: ") + std::strerror(errno));

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const std::string exec_failed = "fabriclab: cannot execute " + argv[0] + "\n";
  static const char kSetnsFailed[] = "fabriclab: cannot enter the network namespace (setns)\n";
  const pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0)
    return make_error(Condition::transient,
                      "cannot start " + name + ": fork: " + std::strerror(errno));
  if (pid == 0) {
    if (o.die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);  // the parent died between fork and prctl
    }
    if (o.own_process_group) ::setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(f.null, 0);
    ::dup2(f.out, 1);
    if (f.err >= 0) ::dup2(f.err, 2);
    if (f.ns >= 0 && ::setns(f.ns, CLONE_NEWNET) != 0) {
      (void)!::write(2, kSetnsFailed, sizeof kSetnsFailed - 1);
      ::_exit(126);
    }
    ::close_range(3, ~0U, 0);  // nothing of ours (sockets, pipes) leaks into the program
    ::execv(args[0], args.data());
    (void)!::write(2, exec_failed.data(), exec_failed.size());
    ::_exit(127);
  }
  c.pid = pid;
  return c;
}

Result<ListenAddress> wait_listening(const ChildProcess& c, std::chrono::milliseconds timeout,
                                     const std::function<bool()>& cancelled) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto a = find_listening(read_from(c.stdout_path, c.stdout_offset, 64 << 10))) return *a;
    if (int status = -1; exited(c.pid, status)) {
      return make_error(Condition::internal, c.name + " " + describe_status(status) +
                                                 " before it printed 'listening HOST:PORT'" +
                                                 what_it_printed(c));
    }
    if (cancelled && cancelled()) return make_error(Condition::cancelled, "interrupted");
    if (Clock::now() >= deadline) {
      return make_error(Condition::timeout,
                        c.name + " did not print 'listening HOST:PORT' within " +
                            std::to_string(timeout.count()) + " ms" + what_it_printed(c));
    }
    std::this_thread::sleep_for(20ms);
  }
}

bool process_alive(pid_t pid) {
  int status = 0;
  return !exited(pid, status);
}

void stop_process(pid_t pid, std::chrono::milliseconds grace) { stop_processes({pid}, grace); }

void stop_processes(const std::vector<pid_t>& pids, std::chrono::milliseconds grace) {
  for (pid_t p : pids) {
    if (process_alive(p)) ::kill(p, SIGTERM);
  }
  const auto deadline = Clock::now() + grace;
  for (pid_t p : pids) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (!wait_gone(p, std::max(left, 0ms))) ::kill(p, SIGKILL);
  }
  for (pid_t p : pids) wait_gone(p, 1s);
}

void kill_process(pid_t pid) {
  if (!process_alive(pid)) return;
  ::kill(pid, SIGKILL);
  wait_gone(pid, 1s);
}

std::vector<pid_t> process_ids() {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  const pid_t self = ::getpid();
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || pid <= 1 || pid == self) continue;
    out.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(d);
  return out;
}

std::vector<pid_t> processes_matching(std::string_view name_prefix,
                                      const std::vector<std::string>& needles) {
  std::vector<pid_t> out;
  for (pid_t pid : process_ids()) {
    const std::string proc = "/proc/" + std::to_string(pid);
    if (!read_from(proc + "/comm", 0, 64).starts_with(name_prefix)) continue;
    const std::string cmdline = read_from(proc + "/cmdline", 0, 1 << 16);
    if (cmdline.empty()) continue;  // gone, or a kernel thread
    bool all = true;
    for (const auto& n : needles) all = all && cmdline.find(n) != std::string::npos;
    if (all) out.push_back(pid);
  }
  return out;
}

std::string file_tail(const std::string& path, size_t lines) {
  constexpr size_t kMax = 1 << 20;
  uint64_t size = file_size(path);
  std::string s = read_from(path, size > kMax ? size - kMax : 0, kMax);
  size_t pos = s.size();
  if (pos > 0 && s[pos - 1] == '\n') --pos;  // the last line's own newline
  for (size_t n = 0; n < lines; ++n) {
    if (pos == 0) break;
    pos = s.rfind('\n', pos - 1);
    if (pos == std::string::npos) {
      pos = 0;
      break;
    }
  }
  return s.substr(pos == 0 ? 0 : pos + 1);
}

}  // namespace fabriclab
