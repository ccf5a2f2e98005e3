// fabriclab lab up | down | status: a local rack that stays up between commands.
#include "commands.hpp"

#include <boost/json.hpp>

#include <iostream>

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
  auto spec = a.spec_file.empty() ? Result<rack::DrillFileSpec>(rack::default_spec()) : rack::load_spec(a.spec_file);
  if (!spec.ok()) return fail(kBadInput, spec.error().message);
  if (!a.hypervisor.empty()) spec->hypervisor = a.hypervisor;
  client::install_interrupt_handlers();
  rack::LabOptions lo = lab_options(a);
  auto up = rack::Lab::up(*spec, lo);
  if (!up.ok()) return fail(exit_for(up.error()) == kBadInput ? kBadInput : kLabError, "lab up: " + up.error().message);
  auto pop = up->populate(*spec, std::chrono::seconds(spec->hypervisor == "qemu" ? 300 : 60));
  if (!pop.ok()) {
    std::string msg = "lab up: " + pop.error().message;
    if (auto st = up->down(false); !st.ok()) msg += " (and while stopping: " + st.error().message + ")";
    return fail(kLabError, msg);
  }
  std::cout << "lab up in " << up->dir() << ": orchestrator " << up->orchestrator_url() << ", dashboard "
            << up->orchestrator_url() << "/?token=" << up->control_token() << "\n"
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

}  // namespace fabriclab::cli
