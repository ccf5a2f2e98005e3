#pragma once
// `fabriclab chaos`: a campaign of drills with random faults, each checked from outside
// (fabriclab/rack/chaos.hpp, docs/faults.md).

#include <CLI/CLI.hpp>
#include <functional>

namespace fabriclab::cli {

// Adds the subcommand to `app`; the returned function runs it (after parsing) when it was chosen
// and returns its exit code: 0 no violation, 1 a violation (the seed and drill that reproduce it
// are printed), 2 bad input, 3 a rack that would not start, 130 interrupted.
std::function<int()> add_chaos_command(CLI::App& app);

}  // namespace fabriclab::cli
