// `fabriclab lab power-off|power-on --lab-dir DIR HOST`: the local rack's power control for one
// host (rack::Lab::power_off/power_on), the emulated BMC/PDU the rack's orchestrator fences a
// silent host through. Exit codes: 0 done (power-off: the host is confirmed off), 2 bad input (no
// lab, no such host), 3 the host could not be powered off or on (the message says what is left).
#include <chrono>
#include <iostream>
#include <string>

#include "fabriclab/rack/lab.hpp"

using namespace fabriclab;

int run_lab_power(const std::string& lab_dir, const std::string& host, bool on, int timeout_ms) {
  const char* what = on ? "power-on" : "power-off";
  auto lab = rack::Lab::attach(lab_dir);
  if (!lab.ok()) {
    std::cerr << "fabriclab: lab " << what << ": " << lab.error().message << "\n";
    return 2;
  }
  auto began = std::chrono::steady_clock::now();
  auto timeout = std::chrono::milliseconds(timeout_ms);
  Status st = on ? lab->power_on(host, timeout) : lab->power_off(host, timeout);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - began).count();
  if (!st.ok()) {
    std::cerr << "fabriclab: lab " << what << " " << host << ": " << st.error().message << "\n";
    return st.error().condition == Condition::invalid_argument ? 2 : 3;
  }
  std::cout << "host " << host << (on ? " is on (agent started, guests held)" : " is off (agent and VMs gone)")
            << " after " << ms << " ms\n";
  return 0;
}
