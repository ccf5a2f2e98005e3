// fabriclab lab up | down | status: a local rack that stays up between commands; lab power-off |
// power-on HOST: one host's emulated BMC/PDU (the rack's orchestrator fences through power-off).
#include <boost/json.hpp>
#include <iostream>

#include "commands.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::cli {

rack::LabOptions lab_options(const DrillArgs& a) {
  rack::LabOptions lo;
  lo.dir = a.lab_dir;
  lo.bin_dir = rack::self_dir();
  lo.images_dir = rack::images_dir(a.images);
  lo.image_dirs = a.image_dirs;
  lo.image_library = a.image_library.empty() ? rack::default_image_library() : a.image_library;
  lo.orchestrator_port = a.port;
  lo.network = a.network;
  return lo;
}

int run_lab_up(const DrillArgs& a) {
  auto spec = drill_file_spec(a);
  if (!spec.ok()) return fail(kBadInput, spec.error().message);
  client::install_interrupt_handlers();
  rack::LabOptions lo = lab_options(a);
  auto up = rack::Lab::up(*spec, lo);
  if (!up.ok())
    return fail(exit_for(up.error()) == kBadInput ? kBadInput : kLabError,
                "lab up: " + up.error().message);
  auto pop = up->populate(*spec, std::chrono::seconds(spec->hypervisor == "qemu" ? 300 : 60));
  if (!pop.ok()) {
    std::string msg = "lab up: " + pop.error().message;
    if (auto st = up->down(false); !st.ok())
      msg += " (and while stopping: " + st.error().message + ")";
    return fail(kLabError, msg);
  }
  std::cout << "lab up in " << up->dir() << ": orchestrator " << up->orchestrator_url()
            << ", dashboard " << up->orchestrator_url() << "/?token=" << up->control_token() << "\n"
            << "rack " << network_line(*up) << "\n"
            << guest_network_line(*up) << "\n";
  return 0;
}

int run_lab_down(const std::string& dir) {
  auto lab = rack::Lab::attach(dir);
  if (!lab.ok()) return fail(kBadInput, lab.error().message);
  if (auto st = lab->down(false); !st.ok()) return fail(kLabError, st.error().message);
  std::cout << "lab in " << dir << " stopped (VMs, agents, orchestrator, network namespaces)\n";
  return 0;
}

int run_lab_status(const std::string& dir) {
  auto lab = rack::Lab::attach(dir);
  if (!lab.ok()) return fail(kBadInput, lab.error().message);
  std::cout << json::serialize(lab->status_json()) << "\n";
  return 0;
}

int run_lab_power(const std::string& dir, const std::string& host, bool on, int timeout_ms) {
  const std::string what = on ? "lab power-on " : "lab power-off ";
  auto lab = rack::Lab::attach(dir);
  if (!lab.ok()) return fail(kBadInput, what + lab.error().message);
  auto began = std::chrono::steady_clock::now();
  auto timeout = std::chrono::milliseconds(timeout_ms);
  Status st = on ? lab->power_on(host, timeout) : lab->power_off(host, timeout);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  began)
                .count();
  if (!st.ok()) {
    return fail(st.error().condition == Condition::invalid_argument ? kBadInput : kLabError,
                what + host + ": " + st.error().message);
  }
  std::cout << "host " << host
            << (on ? " is on (agent started, guests held)" : " is off (agent and VMs gone)")
            << " after " << ms << " ms\n";
  return 0;
}

}  // namespace fabriclab::cli
