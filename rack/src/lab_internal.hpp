#pragma once
// Private to the rack library: the process and file helpers that lab.cpp, lab_state.cpp (lab.json),
// lab_network.cpp (the guest network's services) and lab_power.cpp share.

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "fabriclab/common/child_process.hpp"
#include "fabriclab/rack/lab.hpp"

namespace fabriclab::rack::detail {

// Every QEMU process inside network namespace `netns` (a name under /run/netns).
std::vector<pid_t> qemu_processes_in(const std::string& netns);
// The command line of `pid`, NUL-separated as /proc has it ("" when it is gone).
std::string cmdline_of(pid_t pid);

// The file a lab records itself in, under its directory.
inline constexpr const char* kLabFile = "lab.json";

// The last `max` bytes of the file at `path`; "" when it cannot be read. libstdc++'s filebuf throws
// when read(2) fails (a /proc file of a process that exits while it is read): that reads as "".
std::string read_file(const std::string& path, size_t max = 1 << 20);

// Starts `argv` as the lab process `p`: its stdout in DIR/NAME.out (where it says where it
// listens), its stderr in p.log, inside p.netns when set, in its own process group (so a Ctrl-C at
// the terminal reaches the CLI, which tears the lab down in order). Lab processes outlive the CLI
// (`fabriclab lab up` returns, `fabriclab lab down` stops them): they do not die with it.
// `restart`: the process comes back (a fault's end) with its command line adjusted: its stdout is
// appended to NAME.out, and p.argv keeps the command line it was first started with.
Result<ChildProcess> start_process(LabProcess& p, const std::string& dir,
                                   const std::vector<std::string>& argv, bool restart = false);
// Waits for "listening ADDR:PORT" from `child` and records the address in `p`.
Status await_listening(LabProcess& p, const ChildProcess& child, std::chrono::milliseconds timeout);

// Starts `argv` as the lab process `p` (start_process) and waits until it listens.
Status start_and_await(LabProcess& p, const std::string& dir, const std::vector<std::string>& argv,
                       std::chrono::milliseconds timeout);

}  // namespace fabriclab::rack::detail
