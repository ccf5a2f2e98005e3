// fabriclab-bench-vm: what one guest maintenance cycle costs on this machine.
//
// Boots one real guest and cycles it N times through our hypervisor layer (ACPI stop via the
// shutdown ladder, start, first heartbeat on the integration channel), then the same cycle on the
// same guest with virsh commands alone. virsh cannot open an embedded root another process holds,
// so our connection is closed before the virsh half; both halves detect the heartbeat the same way
// (our channel link), so the ratio compares only the control path.

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "fabriclab/common/logging.hpp"
#include "fabriclab/testbed/lab_guest.hpp"

using namespace fabriclab;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

int run(const std::string& cmd, std::string* out = nullptr) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[512];
  std::string s;
  while (std::fgets(buf, sizeof(buf), p)) s += buf;
  int rc = ::pclose(p);
  if (out) *out = s;
  return rc;
}

[[noreturn]] void die(const std::string& what) {
  std::cerr << "fabriclab-bench-vm: " << what << "\n";
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Cycle one real guest (ACPI stop, start, first heartbeat) through fabriclab and "
               "through virsh, and print the figures"};
  int cycles = 5;
  bool json_out = false;
  std::string images = testbed::default_images_dir();
  std::string image = "v1";
  app.add_option("-n,--cycles", cycles, "Cycles per method")->check(CLI::Range(1, 100));
  app.add_flag("--json", json_out, "Print one JSON object");
  app.add_option("--images", images, "Guest images directory (manifest.json)");
  app.add_option("--image", image, "Guest image version to boot");
  CLI11_PARSE(app, argc, argv);

  auto img = testbed::find_image(images, image);
  if (!img.ok()) die(img.error().describe());
  auto root = testbed::make_short_tmpdir("flb-");
  if (!root.ok()) die(root.error().describe());
  const std::string uri = "qemu:///embed?root=" + *root;
  const std::string dir = *root + "/vm";

  std::vector<double> boot_hb, acpi_stop, cycle, v_stop, v_boot_hb, v_cycle;
  std::string domain_type;
  int destroyed = 0;
  {
    auto conn = hypervisor::Connection::open(uri);
    if (!conn.ok()) die(conn.error().describe());
    domain_type = (*conn)->domain_type();
    auto g = testbed::LabGuest::create(**conn, "bench-0", dir, *img);
    if (!g.ok()) die(g.error().describe());
    auto first = g->start_and_wait(120s);
    if (!first.ok()) die(first.error().describe());
    for (int i = 0; i < cycles; ++i) {
      auto stop = g->stop({20s, 250ms});
      if (!stop.ok()) die(stop.error().describe());
      if (stop->method != hypervisor::StopMethod::graceful) ++destroyed;
      auto up = g->start_and_wait(120s);
      if (!up.ok()) die(up.error().describe());
      acpi_stop.push_back(stop->elapsed.count() / 1000.0);
      boot_hb.push_back(up->count() / 1000.0);
      cycle.push_back(acpi_stop.back() + boot_hb.back());
      std::cerr << "fabriclab cycle " << i + 1 << ": stop " << acpi_stop.back() << " s, start->heartbeat "
                << boot_hb.back() << " s\n";
    }
  }  // our connection closes; the guest keeps running

  const std::string virsh = "virsh -q -c '" + uri + "' ";
  for (int i = 0; i < cycles; ++i) {
    auto t0 = Clock::now();
    std::string out;
    if (run(virsh + "shutdown --mode acpi bench-0", &out) != 0) die("virsh shutdown: " + out);
    for (;;) {
      run(virsh + "domstate bench-0", &out);
      if (out.find("shut off") != std::string::npos) break;
      if (Clock::now() - t0 > 30s) die("virsh: guest did not stop: " + out);
      std::this_thread::sleep_for(100ms);
    }
    auto t1 = Clock::now();
    if (run(virsh + "start bench-0", &out) != 0) die("virsh start: " + out);
    auto link = agent::GuestLink::connect(dir + "/bench-0.sock", 30s);
    if (!link.ok()) die(link.error().describe());
    auto hb = (*link)->wait_for_heartbeat(120s);
    if (!hb.ok()) die(hb.error().describe());
    v_stop.push_back(seconds(t1 - t0));
    v_boot_hb.push_back(seconds(hb->at - t1));
    v_cycle.push_back(seconds(hb->at - t0));
    std::cerr << "virsh cycle " << i + 1 << ": stop " << v_stop.back() << " s, start->heartbeat "
              << v_boot_hb.back() << " s\n";
  }
  std::string ignored;
  run(virsh + "destroy bench-0", &ignored);
  run(virsh + "undefine bench-0", &ignored);
  std::filesystem::remove_all(*root);

  boost::json::object o;
  o["cycles"] = cycles;
  o["domain_type"] = domain_type;
  o["image"] = image;
  o["start_to_heartbeat_p50_s"] = testbed::median(boot_hb);
  o["acpi_stop_p50_s"] = testbed::median(acpi_stop);
  o["cycle_p50_s"] = testbed::median(cycle);
  o["virsh_acpi_stop_p50_s"] = testbed::median(v_stop);
  o["virsh_start_to_heartbeat_p50_s"] = testbed::median(v_boot_hb);
  o["virsh_cycle_p50_s"] = testbed::median(v_cycle);
  o["ratio_cycle_vs_virsh"] = testbed::median(cycle) / testbed::median(v_cycle);
  o["stops_destroyed"] = destroyed;
  if (json_out) {
    std::cout << boost::json::serialize(o) << "\n";
  } else {
    for (auto& [k, v] : o) std::cout << k << ": " << boost::json::serialize(v) << "\n";
  }
  return 0;
}
