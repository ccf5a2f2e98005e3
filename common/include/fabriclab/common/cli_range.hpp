#pragma once
// One CLI11 option with a checked range and its default shown in --help: the shape most numeric
// flags of the programs take (add_option, check(CLI::Range), capture_default_str), written once.
// Header-only: include it where CLI11 is already used.

#include <CLI/CLI.hpp>
#include <string>
#include <utility>

namespace fabriclab {

// Adds `name` bound to `var`, accepting lo..hi (inclusive; CLI11 names the range when a value is
// outside it) and printing the current value of `var` as the default.
template <class T, class Bound>
CLI::Option* add_ranged_option(CLI::App& app, std::string name, T& var, std::string help, Bound lo,
                               Bound hi) {
  return app.add_option(std::move(name), var, std::move(help))
      ->check(CLI::Range(lo, hi))
      ->capture_default_str();
}

}  // namespace fabriclab
