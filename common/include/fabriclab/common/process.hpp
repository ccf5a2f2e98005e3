#pragma once
// Running a helper program to its end: `haproxy -c`, `qemu-img info`, `qemu-img check`.
//
// run_command is for short tools whose output is the answer. It blocks the calling thread until
// the program exits or the timeout passes, so callers on an io_context run it on a worker thread.
// The child gets /dev/null as stdin (a tool that prompts fails instead of hanging), one pipe for
// stdout and stderr (the order the tool wrote them in), the caller's environment, and no file
// descriptor of ours (every descriptor this project opens is O_CLOEXEC). It stays in the caller's
// process group, so a Ctrl-C at the terminal reaches it too.

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "fabriclab/common/result.hpp"

namespace fabriclab {

struct CommandResult {
  int exit_code = -1;      // the exit status, or 128 + the signal that ended it
  std::string output;      // stdout and stderr, interleaved, at most max_output bytes
  bool truncated = false;  // the program wrote more than max_output (the rest was read and dropped)
};

// Runs argv (argv[0] looked up in PATH). A non-zero exit is a value, not an error: the caller
// knows what the tool's codes mean. Errors: empty argv -> invalid_argument; the program does not
// exist or cannot be executed -> not_found naming it; the program still running at the timeout ->
// killed (SIGKILL, then reaped) and timeout naming the command; a pipe or spawn failure ->
// transient.
Result<CommandResult> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout, size_t max_output = 1 << 20);

// "qemu-img info --output=json /x": argv joined by spaces, each word shell-quoted when it needs to
// be, cut at 200 characters; for messages.
std::string describe_command(const std::vector<std::string>& argv);

}  // namespace fabriclab
