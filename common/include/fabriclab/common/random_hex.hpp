#pragma once
// Unpredictable names and secrets: a lab's control token, a network namespace id.

#include <cstddef>
#include <random>
#include <string>

namespace fabriclab {

// `digits` lower-case hex digits from std::random_device (the kernel's entropy on Linux).
inline std::string random_hex(size_t digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string out;
  out.reserve(digits);
  for (size_t i = 0; i < digits; ++i) out += kHex[rd() % 16];
  return out;
}

}  // namespace fabriclab
