#include "fabriclab/common/logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>

namespace fabriclab {
namespace {

std::mutex g_mu;
LogOptions g_options;

void apply(spdlog::logger& l, const LogOptions& o) {
  l.set_level(spdlog::level::from_str(o.level));
  if (o.json) {
    l.set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","component":"%n","msg":"%v"})",
                  spdlog::pattern_time_type::utc);
  } else {
    l.set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [%n] %v");
  }
}

}  // namespace

void setup_logging(const LogOptions& options) {
  std::lock_guard lock(g_mu);
  g_options = options;
  spdlog::apply_all([&](const std::shared_ptr<spdlog::logger>& l) { apply(*l, g_options); });
}

std::shared_ptr<spdlog::logger> logger(std::string_view component) {
  std::lock_guard lock(g_mu);
  std::string name(component);
  if (auto l = spdlog::get(name)) return l;
  // Logs go to stderr so that stdout stays for the program's own output (JSON figures, reports).
  auto l = spdlog::stderr_color_mt(name);
  apply(*l, g_options);
  return l;
}

}  // namespace fabriclab
