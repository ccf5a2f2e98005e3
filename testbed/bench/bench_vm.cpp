// fabriclab-bench-vm: what one guest maintenance cycle costs on this machine.
//
// Boots one real guest and cycles it N times through our hypervisor layer (ACPI stop via the
// shutdown ladder, start, first heartbeat on the integration channel), then the same cycle on the
// same guest with virsh commands alone. virsh cannot open an embedded root another process holds,
// so our connection is closed before the virsh half; both halves detect the heartbeat the same way
// (our channel link), so the ratio compares only the control path.

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <thread>

#include "fabriclab/common/logging.hpp"
#include "fabriclab/testbed/lab_guest.hpp"

using namespace fabriclab;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

[[noreturn]] void die(const std::string& what);

// One interactive virsh process fed commands on stdin. It must be one process: the embedded
// driver only reacts to a guest's power-off (QEMU runs with -no-shutdown) while a process holds
// the root open, so one-shot virsh commands would never see the guest stop.
class VirshShell {
 public:
  explicit VirshShell(const std::string& uri) {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) die("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) die("fork failed");
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::dup2(out[1], 2);
      ::close(in[1]);
      ::close(out[0]);
      ::execlp("virsh", "virsh", "-q", "-c", uri.c_str(), static_cast<char*>(nullptr));
      std::_Exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
  }
  ~VirshShell() {
    if (to_) std::fclose(to_);
    if (from_) std::fclose(from_);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  // Runs one command; returns its output (virsh's prompt-free -q output).
  std::string run(const std::string& cmd) {
    static const std::string kEnd = "__fabriclab_end__";
    std::fprintf(to_, "%s\necho %s\n", cmd.c_str(), kEnd.c_str());
    std::fflush(to_);
    std::string out;
    char line[1024];
    while (std::fgets(line, sizeof(line), from_)) {
      if (std::string(line).find(kEnd) != std::string::npos) return out;
      out += line;
    }
    die("virsh exited while running: " + cmd + "\n" + out);
  }

 private:
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

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
  // The embedded driver holds its root (a pid-file lock) until the process that opened it exits,
  // even after the connection closes; so our half runs in a child process and hands its samples
  // back through a pipe, and the parent, which never opens libvirt, runs the virsh half.
  int pipefd[2];
  if (::pipe(pipefd) != 0) die("pipe failed");
  pid_t child = ::fork();
  if (child < 0) die("fork failed");
  if (child == 0) {
    ::close(pipefd[0]);
    auto conn = hypervisor::Connection::open(uri);
    if (!conn.ok()) die(conn.error().describe());
    auto g = testbed::LabGuest::create(**conn, "bench-0", dir, *img);
    if (!g.ok()) die(g.error().describe());
    auto first = g->start_and_wait(120s);
    if (!first.ok()) die(first.error().describe());
    boost::json::object r;
    boost::json::array stops, boots;
    for (int i = 0; i < cycles; ++i) {
      auto stop = g->stop({20s, 250ms});
      if (!stop.ok()) die(stop.error().describe());
      if (stop->method != hypervisor::StopMethod::graceful) ++destroyed;
      auto up = g->start_and_wait(120s);
      if (!up.ok()) die(up.error().describe());
      stops.push_back(stop->elapsed.count() / 1000.0);
      boots.push_back(up->count() / 1000.0);
      std::cerr << std::fixed << std::setprecision(2) << "fabriclab cycle " << i + 1 << ": stop " << stops.back().as_double() << " s, start->heartbeat "
                << boots.back().as_double() << " s\n";
    }
    r["stops"] = stops;
    r["boots"] = boots;
    r["destroyed"] = destroyed;
    r["domain_type"] = (*conn)->domain_type();
    std::string out = boost::json::serialize(r);
    (void)!::write(pipefd[1], out.data(), out.size());
    ::close(pipefd[1]);
    std::_Exit(0);  // the guest keeps running for the virsh half
  }
  ::close(pipefd[1]);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof(buf))) > 0;) got.append(buf, n);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got.empty()) die("the fabriclab half failed");
  {
    auto r = boost::json::parse(got).as_object();
    for (auto& v : r["stops"].as_array()) acpi_stop.push_back(v.as_double());
    for (auto& v : r["boots"].as_array()) boot_hb.push_back(v.as_double());
    for (size_t i = 0; i < acpi_stop.size(); ++i) cycle.push_back(acpi_stop[i] + boot_hb[i]);
    destroyed = static_cast<int>(r["destroyed"].as_int64());
    domain_type = std::string(r["domain_type"].as_string());
  }

  {
    VirshShell virsh(uri);
    for (int i = 0; i < cycles; ++i) {
      auto t0 = Clock::now();
      std::string out = virsh.run("shutdown --mode acpi bench-0");
      if (out.find("error") != std::string::npos) die("virsh shutdown: " + out);
      for (;;) {
        out = virsh.run("domstate bench-0");
        if (out.find("shut off") != std::string::npos) break;
        if (Clock::now() - t0 > 60s) die("virsh: guest did not stop: " + out);
        std::this_thread::sleep_for(100ms);
      }
      auto t1 = Clock::now();
      out = virsh.run("start bench-0");
      if (out.find("error") != std::string::npos) die("virsh start: " + out);
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
    virsh.run("destroy bench-0");
    virsh.run("undefine bench-0");
  }
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
