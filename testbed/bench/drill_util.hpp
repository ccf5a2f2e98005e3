// fabriclab-bench-drill, internal: the small helpers every phase uses (seconds, rounding,
// medians, text for optional figures, the progress log on stderr). Header only.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/json_get.hpp"

namespace fabriclab::bench_drill {

using namespace std::chrono_literals;

using json_get::arr;
using json_get::int_or;
using json_get::number;
using json_get::obj;
using json_get::str;

inline int64_t now_ms() { return unix_now_ms(); }

inline double secs(int64_t ms) { return static_cast<double>(ms) / 1000.0; }
inline double round3(double v) { return std::round(v * 1000.0) / 1000.0; }
inline json::value secs_or_null(int64_t ms) {
  return ms < 0 ? json::value(nullptr) : json::value(round3(secs(ms)));
}
inline json::value num_or_null(std::optional<double> v) {
  return v && std::isfinite(*v) ? json::value(round3(*v)) : json::value(nullptr);
}

// The median; with an even count, the mean of the two middle values.
inline std::optional<double> median(std::vector<double> v) {
  if (v.empty()) return std::nullopt;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

inline std::string fmt_opt(std::optional<double> v, const char* spec = "{:.3f}") {
  return v ? fmt::format(fmt::runtime(spec), *v) : std::string("-");
}

// Seconds with 3 decimals, "-" for an unknown (negative) span.
inline std::string ms_text(int64_t ms) {
  return ms < 0 ? std::string("-") : fmt::format("{:.3f}", secs(ms));
}

// One progress line on stderr, stamped with the local time; safe from several threads.
inline void progress(const std::string& line) {
  static std::mutex log_mu;
  std::lock_guard lock(log_mu);
  std::time_t t = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", std::localtime(&t));
  std::cerr << "[" << buf << "] " << line << "\n" << std::flush;
}

}  // namespace fabriclab::bench_drill
