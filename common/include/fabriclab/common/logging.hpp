#pragma once
// One spdlog logger per component ("hypervisor", "agent", ...), created on first use and shared.
// `setup_logging` picks the level and the output format (text for people, JSON lines for machines).

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

namespace fabriclab {

struct LogOptions {
  std::string level = "info";  // trace, debug, info, warn, error, off
  bool json = false;           // one JSON object per line
};

// Applies to every logger, existing and future. Unknown levels fall back to info.
void setup_logging(const LogOptions& options);

// The logger of a component; thread safe.
std::shared_ptr<spdlog::logger> logger(std::string_view component);

}  // namespace fabriclab
