// fabriclab-bench-vm: what one guest maintenance cycle costs on this machine.
//
// Boots one real guest and cycles it N times through our hypervisor layer (ACPI stop via the
// shutdown ladder, start, first heartbeat on the integration channel), then the same cycle on the
// same guest with virsh commands alone. virsh cannot open an embedded root another process holds,
// so our connection is closed before the virsh half; both halves detect the heartbeat the same way
// (our channel link), so the ratio compares only the control path.
//
// With --image debian-v1 (an OS-disk image from testbed/build-debian-image.sh) it also boots that
// guest once, as the agent would (its own qcow2 overlay, kernel and initrd copies, a 64 MiB data
// disk, the qemu-guest-agent channel, no network card), beside the built-in guest's cycles:
// start -> guest-ping answered, start -> the app's /health answering (probed with curl INSIDE the
// guest through guest-exec: the bench gives the guest no network), and the ACPI stop. The
// built-in figures then come from the v1 guest.

#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

#include "fabriclab/common/logging.hpp"
#include "fabriclab/hypervisor/disk_image.hpp"
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
  // Runs one command; returns what virsh printed for it (its prompt and echoed command line
  // included). The end marker is echoed by a command line that does not contain it (virsh joins
  // '__fabriclab'_end__ into one word), and virsh prints it without a newline, so we read until
  // the output ends with it: matching the echoed command line instead returned before the command
  // had run and shifted every later output by one command.
  std::string run(const std::string& cmd) {
    static const std::string kEnd = "__fabriclab_end__";
    std::fprintf(to_, "%s\necho '__fabriclab'_end__\n", cmd.c_str());
    std::fflush(to_);
    std::string out;
    for (int c; (c = std::fgetc(from_)) != EOF;) {
      out += static_cast<char>(c);
      if (out.size() >= kEnd.size() &&
          out.compare(out.size() - kEnd.size(), kEnd.size(), kEnd) == 0) {
        out.resize(out.size() - kEnd.size());
        return out;
      }
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

struct Options {
  int cycles = 5;
  bool json_out = false;
  std::string images = testbed::default_images_dir();
  std::string image = "v1";   // the built-in guest's version
  std::string os_image;       // an OS-disk image ("debian-v1"); empty: none
  std::string debian_images;  // where os_image lives
};

// Runs `body` in a child process and returns the JSON object it produced. The embedded driver
// holds its root (a pid-file lock) until the process that opened it exits, even after the
// connection closes, so every half that opens libvirt runs in a child of its own.
boost::json::object in_child(const std::string& what,
                             const std::function<boost::json::object()>& body) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) die("pipe failed");
  pid_t child = ::fork();
  if (child < 0) die("fork failed");
  if (child == 0) {
    ::close(pipefd[0]);
    std::string out = boost::json::serialize(body());
    (void)!::write(pipefd[1], out.data(), out.size());
    ::close(pipefd[1]);
    std::_Exit(0);  // no destructors: a guest may be meant to keep running (the virsh half)
  }
  ::close(pipefd[1]);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof(buf))) > 0;) got.append(buf, n);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got.empty()) die(what + " failed");
  return boost::json::parse(got).as_object();
}

// Our half: boot the built-in guest and cycle it through the shutdown ladder and start.
boost::json::object fabriclab_half(const Options& o, const testbed::GuestImage& img,
                                   const std::string& uri, const std::string& dir) {
  auto opened = hypervisor::Connection::open(uri);
  if (!opened.ok()) die(opened.error().describe());
  // Never closed: the child ends with _Exit and the guest keeps running for the virsh half.
  auto* conn = std::move(opened).value().release();
  auto made = testbed::LabGuest::create(*conn, "bench-0", dir, img);
  if (!made.ok()) die(made.error().describe());
  auto* g = new testbed::LabGuest(std::move(made).value());
  auto first = g->start_and_wait(120s);
  if (!first.ok()) die(first.error().describe());
  boost::json::object r;
  boost::json::array stops, boots;
  int destroyed = 0;
  for (int i = 0; i < o.cycles; ++i) {
    auto stop = g->stop({20s, 250ms});
    if (!stop.ok()) die(stop.error().describe());
    if (stop->method != hypervisor::StopMethod::graceful) ++destroyed;
    auto up = g->start_and_wait(120s);
    if (!up.ok()) die(up.error().describe());
    stops.push_back(stop->elapsed.count() / 1000.0);
    boots.push_back(up->count() / 1000.0);
    std::cerr << std::fixed << std::setprecision(2) << "fabriclab cycle " << i + 1 << ": stop "
              << stops.back().as_double() << " s, start->heartbeat " << boots.back().as_double()
              << " s\n";
  }
  r["stops"] = stops;
  r["boots"] = boots;
  r["destroyed"] = destroyed;
  r["domain_type"] = conn->domain_type();
  return r;
}

struct VirshFigures {
  std::vector<double> stop, boot_hb, cycle;
};

// The same cycle with virsh alone (the parent never opens libvirt itself).
VirshFigures virsh_half(const Options& o, const std::string& uri, const std::string& dir) {
  VirshFigures f;
  VirshShell virsh(uri);
  for (int i = 0; i < o.cycles; ++i) {
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
    f.stop.push_back(seconds(t1 - t0));
    f.boot_hb.push_back(seconds(hb->at - t1));
    f.cycle.push_back(seconds(hb->at - t0));
    std::cerr << "virsh cycle " << i + 1 << ": stop " << f.stop.back() << " s, start->heartbeat "
              << f.boot_hb.back() << " s\n";
  }
  virsh.run("destroy bench-0");
  virsh.run("undefine bench-0");
  return f;
}

// The built-in guest's figures, the keys the benchmark has always printed.
boost::json::object builtin_figures(const Options& o) {
  auto img = testbed::find_image(o.images, o.image);
  if (!img.ok()) die(img.error().describe());
  auto root = testbed::make_short_tmpdir("flb-");
  if (!root.ok()) die(root.error().describe());
  const std::string uri = "qemu:///embed?root=" + *root;
  const std::string dir = *root + "/vm";

  auto r = in_child("the fabriclab half", [&] { return fabriclab_half(o, *img, uri, dir); });
  std::vector<double> boot_hb, acpi_stop, cycle;
  for (auto& v : r["stops"].as_array()) acpi_stop.push_back(v.as_double());
  for (auto& v : r["boots"].as_array()) boot_hb.push_back(v.as_double());
  for (size_t i = 0; i < acpi_stop.size(); ++i) cycle.push_back(acpi_stop[i] + boot_hb[i]);
  const auto v = virsh_half(o, uri, dir);
  std::filesystem::remove_all(*root);

  boost::json::object out;
  out["cycles"] = o.cycles;
  out["domain_type"] = r["domain_type"];
  out["image"] = o.image;
  out["start_to_heartbeat_p50_s"] = testbed::median(boot_hb);
  out["acpi_stop_p50_s"] = testbed::median(acpi_stop);
  out["cycle_p50_s"] = testbed::median(cycle);
  out["virsh_acpi_stop_p50_s"] = testbed::median(v.stop);
  out["virsh_start_to_heartbeat_p50_s"] = testbed::median(v.boot_hb);
  out["virsh_cycle_p50_s"] = testbed::median(v.cycle);
  out["ratio_cycle_vs_virsh"] = testbed::median(cycle) / testbed::median(v.cycle);
  out["stops_destroyed"] = r["destroyed"];
  return out;
}

}  // namespace

// $FABRICLAB_DEBIAN_IMAGES, else the build cache for this checkout when run from its top
// directory (/var/cache/fabriclab/debian-images/<build-debian-image.sh --stamp>).
std::string default_debian_images() {
  if (const char* env = std::getenv("FABRICLAB_DEBIAN_IMAGES"); env && *env) return env;
  const char* script = "testbed/build-debian-image.sh";
  if (!std::filesystem::exists(script)) return "";
  std::string stamp;
  if (FILE* p = ::popen((std::string("bash ") + script + " --stamp").c_str(), "r")) {
    char buf[128] = {};
    if (std::fgets(buf, sizeof(buf), p)) stamp = buf;
    ::pclose(p);
  }
  while (!stamp.empty() && std::isspace(static_cast<unsigned char>(stamp.back()))) stamp.pop_back();
  return stamp.empty() ? "" : "/var/cache/fabriclab/debian-images/" + stamp;
}

// The virtual size recorded in a qcow2 header (big-endian u64 at offset 24, after the magic).
uint64_t qcow2_virtual_size(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char h[32] = {};
  if (!in.read(reinterpret_cast<char*>(h), sizeof(h)) || h[0] != 'Q' || h[1] != 'F' ||
      h[2] != 'I' || h[3] != 0xfb) {
    die(path + " is not a qcow2 image");
  }
  uint64_t v = 0;
  for (int i = 24; i < 32; ++i) v = (v << 8) | h[i];
  return v;
}

// The OS-disk guest's domain, made the way the agent makes one: a qcow2 overlay on the image, the
// kernel and initrd copied (a shared file would carry this domain's security label), a 64 MiB
// sparse data disk, the guest agent channel, no network card.
hypervisor::DomainSpec os_image_spec(const std::string& image_dir, const std::string& root) {
  namespace fs = std::filesystem;
  const std::string dir = root + "/vm";
  fs::create_directories(dir);
  for (const char* f : {"vmlinuz", "initrd.img"}) fs::copy_file(image_dir + "/" + f, dir + "/" + f);
  std::ifstream in(image_dir + "/cmdline");
  std::string cmdline;
  std::getline(in, cmdline);
  hypervisor::DomainSpec s;
  s.name = "bench-os-0";
  s.memory_mib = 512;
  s.boot = {dir + "/vmlinuz", dir + "/initrd.img", cmdline};
  s.os_disk = dir + "/os.qcow2";
  s.data_disk = dir + "/data.raw";
  s.console_log = dir + "/console.log";
  s.guest_agent = true;
  if (auto st = hypervisor::create_overlay(fs::absolute(image_dir + "/disk.qcow2").string(),
                                           "qcow2", s.os_disk);
      !st.ok())
    die(st.error().describe());
  if (auto st = testbed::create_raw_disk(s.data_disk, 64ull << 20); !st.ok())
    die(st.error().describe());
  return s;
}

// Polls `probe` every 250 ms until it holds; the seconds since `t0`.
double seconds_until(Clock::time_point t0, std::chrono::seconds limit, const std::string& what,
                     const std::function<bool()>& probe) {
  while (!probe()) {
    if (Clock::now() - t0 > limit)
      die(what + " did not happen within " + std::to_string(limit.count()) + " s");
    std::this_thread::sleep_for(250ms);
  }
  return seconds(Clock::now() - t0);
}

// When the guest's own services became active, on the bench's clock (seconds since start). The
// polls above see a service up to a poll late (each failed ping or curl costs up to its timeout,
// a curl under TCG about a second); the guest's systemd knows when: ActiveEnterTimestampMonotonic
// counts from the guest kernel's start, like /proc/uptime. One guest-exec reads both; the kernel
// started `uptime` before the moment of that read, which lies between the bench's clock before
// and after the exec, and the later bound is taken (a figure never reads early). 0 from systemd
// (a unit this image does not have, or never active) is left out.
boost::json::object guest_timeline(hypervisor::Domain& d, Clock::time_point t0) {
  static constexpr const char* kUnits[] = {"qemu-guest-agent.service", "nginx.service",
                                           "fabriclab-app.service"};
  static constexpr const char* kKeys[] = {"guest_agent_active_s", "nginx_active_s", "app_active_s"};
  std::string script = "cat /proc/uptime; systemctl show -p ActiveEnterTimestampMonotonic --value";
  for (const char* u : kUnits) script += std::string(" ") + u;
  const double before = seconds(Clock::now() - t0);
  auto e = d.guest_exec({"/bin/sh", "-c", script}, 30s);
  const double after = seconds(Clock::now() - t0);
  boost::json::object r;
  if (!e.ok() || e->exit_code != 0) {
    std::cerr << "os image: the guest's timeline could not be read: "
              << (e.ok() ? e->err : e.error().describe()) << "\n";
    return r;
  }
  std::istringstream in(e->out);
  double uptime = 0, idle = 0;
  if (!(in >> uptime >> idle)) return r;
  const double kernel = after - uptime;
  r["kernel_start_s"] = kernel;
  r["read_bracket_s"] = after - before;
  for (size_t i = 0; i < std::size(kUnits); ++i) {
    long long us = 0;
    if (!(in >> us)) break;
    if (us > 0) r[kKeys[i]] = kernel + static_cast<double>(us) / 1e6;
  }
  return r;
}

// One boot and one ACPI stop of the OS-disk guest, in a child of its own (its own embedded root).
boost::json::object os_image_half(const std::string& image_dir) {
  auto root = testbed::make_short_tmpdir("flbo-");
  if (!root.ok()) die(root.error().describe());
  auto conn = hypervisor::Connection::open("qemu:///embed?root=" + *root);
  if (!conn.ok()) die(conn.error().describe());
  auto d = (*conn)->define(os_image_spec(image_dir, *root));
  if (!d.ok()) die(d.error().describe());
  boost::json::object r;
  const auto t0 = Clock::now();
  if (auto st = d->start(); !st.ok()) die(st.error().describe());
  r["boot_to_guest_agent_s"] =
      seconds_until(t0, 300s, "the guest agent answering", [&] { return d->guest_ping(2s).ok(); });
  std::cerr << "os image: start->guest agent " << r["boot_to_guest_agent_s"].as_double() << " s\n";
  r["boot_to_app_s"] = seconds_until(t0, 300s, "the app's /health answering", [&] {
    auto e = d->guest_exec({"/usr/bin/curl", "-sf", "-m", "2", "http://127.0.0.1/health"}, 10s);
    return e.ok() && e->exit_code == 0;
  });
  std::cerr << "os image: start->app /health " << r["boot_to_app_s"].as_double() << " s\n";
  r["guest_view"] = guest_timeline(*d, t0);
  std::cerr << "os image: as the guest saw it " << boost::json::serialize(r["guest_view"]) << "\n";
  auto stop = d->shutdown_ladder({120s, 250ms, 3000ms});
  if (!stop.ok()) die(stop.error().describe());
  r["acpi_stop_s"] = stop->elapsed.count() / 1000.0;
  r["acpi_stop_method"] = std::string(hypervisor::to_string(stop->method));
  std::cerr << "os image: ACPI stop " << r["acpi_stop_s"].as_double() << " s ("
            << hypervisor::to_string(stop->method) << ")\n";
  (void)d->undefine();
  std::filesystem::remove_all(*root);
  return r;
}

// The OS-disk image's figures (the "os_image" object of the output).
boost::json::object os_image_figures(const Options& o) {
  const std::string image_dir = o.debian_images + "/" + o.os_image;
  if (o.debian_images.empty() || !std::filesystem::exists(image_dir + "/disk.qcow2")) {
    die("no " + o.os_image + "/disk.qcow2 in '" + o.debian_images +
        "': run testbed/build-debian-image.sh DIR or set FABRICLAB_DEBIAN_IMAGES (or "
        "--debian-images)");
  }
  boost::json::object r =
      in_child("the " + o.os_image + " half", [&] { return os_image_half(image_dir); });
  r["name"] = o.os_image;
  r["disk_qcow2_bytes"] = std::filesystem::file_size(image_dir + "/disk.qcow2");
  r["virtual_size_bytes"] = qcow2_virtual_size(image_dir + "/disk.qcow2");
  r["app_probe"] =
      "curl http://127.0.0.1/health inside the guest through guest-exec (the bench guest has no "
      "network)";
  // The build time the image's manifest recorded, when it has one.
  std::ifstream in(o.debian_images + "/manifest.json");
  std::stringstream text;
  text << in.rdbuf();
  boost::system::error_code ec;
  auto manifest = boost::json::parse(text.str(), ec);
  if (!ec && manifest.is_object()) {
    if (auto* b = manifest.as_object().if_contains("build_seconds"); b && b->is_number()) {
      r["image_build_s"] = *b;
    }
  }
  return r;
}

int main(int argc, char** argv) {
  CLI::App app{
      "Cycle one real guest (ACPI stop, start, first heartbeat) through fabriclab and "
      "through virsh, and print the figures; with --image debian-v1 also boot that OS "
      "image once (guest agent, app, ACPI stop)"};
  Options o;
  app.add_option("-n,--cycles", o.cycles, "Cycles per method")->check(CLI::Range(1, 100));
  app.add_flag("--json", o.json_out, "Print one JSON object");
  app.add_option("--images", o.images, "Guest images directory (manifest.json)");
  app.add_option("--image", o.image,
                 "Guest image version to boot (v1, v2, ...), or an OS-disk image (debian-v1) to "
                 "measure beside the built-in v1");
  app.add_option("--debian-images", o.debian_images,
                 "Debian images directory (testbed/build-debian-image.sh DIR); default "
                 "$FABRICLAB_DEBIAN_IMAGES, else the build cache for this checkout");
  CLI11_PARSE(app, argc, argv);
  if (o.image.rfind("debian-", 0) == 0) {
    o.os_image = o.image;
    o.image = "v1";
    if (o.debian_images.empty()) o.debian_images = default_debian_images();
  }

  boost::json::object out = builtin_figures(o);
  if (!o.os_image.empty()) out["os_image"] = os_image_figures(o);
  if (o.json_out) {
    std::cout << boost::json::serialize(out) << "\n";
  } else {
    for (auto& [k, v] : out) std::cout << k << ": " << boost::json::serialize(v) << "\n";
  }
  return 0;
}
