// run_command (process.hpp): posix_spawnp, one pipe, a deadline.
//
// The read loop polls the pipe in slices of at most 50 ms and checks between slices whether the
// child has exited: a tool that leaves a background process holding the pipe open must not make
// us wait for the timeout after it has itself finished. Output past max_output is still read (a
// child blocked on a full pipe would never exit) and dropped. On the deadline the child is killed
// with SIGKILL and always reaped, so no zombie outlives the call.

#include "fabriclab/common/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <thread>

extern char** environ;

namespace fabriclab {
namespace {

using Clock = std::chrono::steady_clock;

int slice_ms(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 0, 50));
}

int exit_code_of(int status) {
  if (status == -1) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

struct Pipe {
  int r = -1, w = -1;
  ~Pipe() {
    if (r >= 0) ::close(r);
    if (w >= 0) ::close(w);
  }
};

// Appends what can be read now; false at end of file (or a read error).
bool drain(int fd, CommandResult& out, size_t max_output) {
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0) return false;
    size_t room = max_output > out.output.size() ? max_output - out.output.size() : 0;
    out.output.append(buf, std::min(room, static_cast<size_t>(n)));
    if (static_cast<size_t>(n) > room) out.truncated = true;
  }
}

}  // namespace

std::string describe_command(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    bool plain = !a.empty() && std::all_of(a.begin(), a.end(), [](unsigned char c) {
      return std::isalnum(c) || std::strchr("-_./=:,+@%", c) != nullptr;
    });
    out += plain ? a : "'" + a + "'";
    if (out.size() > 200) return out.substr(0, 197) + "...";
  }
  return out;
}

Result<CommandResult> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout, size_t max_output) {
  if (argv.empty() || argv[0].empty())
    return make_error(Condition::invalid_argument, "run_command: no program given");
  const std::string what = describe_command(argv);
  Pipe p;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return make_error(Condition::transient,
                      "cannot run " + what + ": pipe: " + std::strerror(errno));
  p.r = fds[0];
  p.w = fds[1];
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, p.w, 1);
  posix_spawn_file_actions_adddup2(&fa, p.w, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(p.w);
  p.w = -1;
  if (rc == ENOENT || rc == EACCES || rc == ENOEXEC || rc == ENOTDIR) {
    return make_error(Condition::not_found,
                      "cannot run '" + argv[0] + "': " + std::strerror(rc) + " (is it installed?)");
  }
  if (rc != 0)
    return make_error(Condition::transient, "cannot run " + what + ": " + std::strerror(rc));
  ::fcntl(p.r, F_SETFL, ::fcntl(p.r, F_GETFL) | O_NONBLOCK);

  CommandResult out;
  const auto deadline = Clock::now() + timeout;
  bool open = true, exited = false;
  int status = -1;  // stays unknown if someone else reaped the child (SIGCHLD ignored)
  for (;;) {
    if (open) {
      pollfd pf{p.r, POLLIN, 0};
      int n = ::poll(&pf, 1, slice_ms(deadline));
      if (n > 0) open = drain(p.r, out, max_output);
      if (n < 0 && errno != EINTR) open = false;
    } else if (!exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(2, slice_ms(deadline))));
    }
    if (!exited) {
      pid_t w = ::waitpid(pid, &status, WNOHANG);
      if (w < 0 && errno != EINTR) status = -1;
      exited = w == pid || (w < 0 && errno != EINTR);
    }
    // Done when the child has exited and its output is read; a descendant that still holds the
    // pipe gets what it wrote so far, not our time.
    if (exited) {
      if (open) drain(p.r, out, max_output);
      break;
    }
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);  // our own child, by pid
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return make_error(Condition::timeout, what + " did not finish within " +
                                                std::to_string(timeout.count()) + " ms (killed)");
    }
  }
  out.exit_code = exit_code_of(status);
  return out;
}

}  // namespace fabriclab
