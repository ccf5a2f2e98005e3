#pragma once
// Private to the rack library: the process helpers lab.cpp and lab_power.cpp share.

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "fabriclab/common/child_process.hpp"
#include "fabriclab/rack/lab.hpp"

namespace fabriclab::rack::detail {

// Every QEMU process (comm "qemu*") whose command line mentions `needle` (the VMs of a state dir).
std::vector<pid_t> qemu_processes_mentioning(const std::string& needle);
// Every QEMU process inside network namespace `netns` (a name under /run/netns).
std::vector<pid_t> qemu_processes_in(const std::string& netns);
// The command line of `pid`, NUL-separated as /proc has it ("" when it is gone).
std::string cmdline_of(pid_t pid);

// Starts `argv` as the lab process `p` (lab.cpp's start_process) and waits until it listens.
Status start_and_await(LabProcess& p, const std::string& dir, const std::vector<std::string>& argv,
                       std::chrono::milliseconds timeout);

}  // namespace fabriclab::rack::detail
