#pragma once
// Waiting for something a test can observe (a state in an API, a counter, an event) instead of
// sleeping a fixed time: `wait_until(pred, timeout, period)` asks `pred` every `period` until it
// holds or `timeout` passes, and once more at the end, so a condition that came true during the
// last sleep is not reported as a timeout. Returns whether it held.

#include <chrono>
#include <functional>
#include <thread>

namespace fabriclab::testing {

inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
                       std::chrono::milliseconds period = std::chrono::milliseconds(50)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(period);
  }
  return pred();
}

}  // namespace fabriclab::testing
