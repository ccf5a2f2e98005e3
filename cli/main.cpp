// fabriclab: the command-line tool. main() wires the commands' flags (CLI11) to their run_*
// functions, one file each in cli/ (commands.hpp):
//   plan    the dry run of a walk (plan.cpp)
//   drill   a drill spec on a local rack or against a running orchestrator (drill.cpp)
//   lab     up | down | status | power-off | power-on of a local rack (lab.cpp)
//   image   add | list | remove guest OS disk images in the user's image library (image.cpp)
//   status  the grid and the latest drill (status.cpp); watch: the same, live (watch.cpp)
//
// Exit codes: 0 ok (a drill passed), 1 the drill failed, 2 bad input, 3 no placement (plan) or a
// lab/orchestrator error, 130 interrupted.
//
// Each add_*_command adds its subcommands and returns the function that runs the one chosen
// (after parsing), or returns -1 when none of its own was (as add_chaos_command does).

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

#include "chaos.hpp"
#include "commands.hpp"
#include "fabriclab/common/cli_range.hpp"

using namespace fabriclab;
using namespace fabriclab::cli;

namespace {

using Command = std::function<int()>;

const std::string kImageDirHelp =
    "Another guest image directory (its manifest.json: e.g. testbed/build-debian-image.sh's "
    "output), repeatable; "
    "the agents get the built-in images, these, then the image library";
const std::string kImageLibraryHelp =
    "The image library to offer (fabriclab image add; default: $FABRICLAB_IMAGE_LIBRARY, else "
    "$XDG_DATA_HOME/fabriclab/images, else ~/.local/share/fabriclab/images; used when it has "
    "images)";

Command add_plan_command(CLI::App& app) {
  auto pa = std::make_shared<PlanArgs>();
  auto* plan = app.add_subcommand(
      "plan", "Dry run: place the services, compute the walk, predict each service's worst case");
  plan->add_option("--rack", pa->rack, "FAULT_DOMAINSxHOSTS_PER_FD")->capture_default_str();
  add_ranged_option(*plan, "--capacity", pa->capacity, "Instances per host", 1, 1000);
  plan->add_option(
      "--service", pa->services,
      "NAME:INSTANCES[:UD_COUNT], repeatable (default: the seeds' hello:1 web:2 worker:3)");
  add_ranged_option(*plan, "--ud-count", pa->ud_count, "Default UD count per service (1..20)", 1,
                    20);
  plan->add_option("--max-parallel", pa->max_parallel,
                   "At most this many hosts per batch (0: no cap)")
      ->check(CLI::Range(0, 100000));
  plan->add_option(
      "--cluster", pa->cluster_file,
      "A cluster JSON with hosts, services and placed instances (instead of --rack/--service)");
  plan->add_flag("--json", pa->json_out, "Print one JSON object");
  return [pa, plan] { return *plan ? run_plan(*pa) : -1; };
}

Command add_drill_command(CLI::App& app) {
  auto da = std::make_shared<DrillArgs>();
  auto* drill =
      app.add_subcommand("drill",
                         "Run a drill: without --orchestrator, start a local rack (one agent "
                         "process per host, one orchestrator), "
                         "run the spec's update walk on it, write the report, stop the rack. "
                         "Default spec: 6 hosts in 3 FDs, "
                         "hello(1) web(2) worker(3), host-os update to host-v2, on real VMs.");
  drill->add_option("--spec", da->spec_file,
                    "YAML drill spec (testbed/specs/*.yaml); default: the default drill");
  drill
      ->add_option("--hypervisor", da->hypervisor,
                   "qemu (real VMs, embedded QEMU driver) or test (simulation)")
      ->check(CLI::IsMember({"qemu", "test"}));
  drill->add_flag("--keep", da->keep,
                  "Leave the rack up after the drill (fabriclab lab down stops it)");
  drill->add_option("--report", da->report_file, "Write the report JSON here");
  drill->add_option("--html", da->html_file, "Write the report as a self-contained HTML page here");
  drill->add_option("--lab-dir", da->lab_dir, "The local rack's directory (state, logs, lab.json)")
      ->capture_default_str();
  drill->add_option("--images", da->images,
                    "The built-in guest images (v1, v2, v3-broken; default: FABRICLAB_IMAGES_DIR "
                    "or the build's images/)");
  drill->add_option("--image-dir", da->image_dirs, kImageDirHelp);
  drill->add_option("--image-library", da->image_library, kImageLibraryHelp);
  drill->add_option("--port", da->port, "The orchestrator's port on 127.0.0.1 (0: any free port)")
      ->check(CLI::Range(0, 65535));
  drill->add_option("--orchestrator", da->orchestrator_url,
                    "Run against this orchestrator (http://HOST:PORT) instead of a local rack");
  drill->add_option("--token-file", da->token_file, "Control token file for --orchestrator");
  drill
      ->add_option(
          "--network", da->network,
          "auto: a network namespace per host where permitted (else loopback), netns, or loopback")
      ->check(CLI::IsMember({"auto", "netns", "loopback"}))
      ->capture_default_str();
  drill->add_flag("--json", da->json_out,
                  "Print the report JSON on stdout (progress goes to stderr)");
  return [da, drill] { return *drill ? run_drill_cmd(*da) : -1; };
}

// The flags of `lab down`, `lab status`, `lab power-off` and `lab power-on`.
struct LabArgs {
  std::string lab_dir = "/tmp/flab";
  // The emulated BMC of one host; the rack's orchestrator fences a silent host through power-off.
  std::string host;
  int timeout_ms = 15000;
};

Command add_lab_command(CLI::App& app) {
  auto p = std::make_shared<LabArgs>();
  auto* lab = app.add_subcommand("lab", "Manage a local rack explicitly");
  lab->require_subcommand(1);
  auto la = std::make_shared<DrillArgs>();
  auto* lab_up = lab->add_subcommand(
      "up",
      "Start a rack and create the spec's services (then: fabriclab drill --orchestrator ...)");
  lab_up->add_option("--spec", la->spec_file, "YAML drill spec (its rack and services)");
  lab_up->add_option("--hypervisor", la->hypervisor, "qemu or test")
      ->check(CLI::IsMember({"qemu", "test"}));
  lab_up->add_option("--lab-dir", la->lab_dir, "The rack's directory")->capture_default_str();
  lab_up->add_option("--images", la->images, "The built-in guest images (as for drill)");
  lab_up->add_option("--image-dir", la->image_dirs, kImageDirHelp);
  lab_up->add_option("--image-library", la->image_library, kImageLibraryHelp);
  lab_up->add_option("--port", la->port, "The orchestrator's port (0: any)")
      ->check(CLI::Range(0, 65535));
  lab_up->add_option("--network", la->network, "auto, netns or loopback (as for drill)")
      ->check(CLI::IsMember({"auto", "netns", "loopback"}))
      ->capture_default_str();
  auto* lab_down = lab->add_subcommand(
      "down",
      "Stop a rack: VMs destroyed, agents and orchestrator stopped, network namespaces removed");
  lab_down->add_option("--lab-dir", p->lab_dir, "The rack's directory")->capture_default_str();
  auto* lab_status = lab->add_subcommand("status", "The rack's processes (JSON)");
  lab_status->add_option("--lab-dir", p->lab_dir, "The rack's directory")->capture_default_str();
  auto* lab_off = lab->add_subcommand(
      "power-off", "Cut one host's power: kill its agent and VMs; exit 0 once all are gone");
  auto* lab_on = lab->add_subcommand(
      "power-on",
      "Start a powered-off host's agent again (its guests held until the orchestrator decides)");
  for (auto* c : {lab_off, lab_on}) {
    c->add_option("HOST", p->host, "The host (h0, h1, ...)")->required();
    c->add_option("--lab-dir", p->lab_dir, "The rack's directory")->capture_default_str();
    add_ranged_option(*c, "--timeout-ms", p->timeout_ms, "Give up after this long", 100, 600000);
  }
  return [=] {
    if (*lab_up) return run_lab_up(*la);
    if (*lab_down) return run_lab_down(p->lab_dir);
    if (*lab_status) return run_lab_status(p->lab_dir);
    if (*lab_off || *lab_on)
      return run_lab_power(p->lab_dir, p->host, lab_on->parsed(), p->timeout_ms);
    return -1;
  };
}

Command add_image_command(CLI::App& app) {
  auto ia = std::make_shared<ImageArgs>();
  auto* image = app.add_subcommand(
      "image", "Guest OS disk images: the image library the racks' agents are given");
  image->require_subcommand(1);
  const std::string library_help =
      "The image library (default: $FABRICLAB_IMAGE_LIBRARY, else $XDG_DATA_HOME/fabriclab/images, "
      "else "
      "~/.local/share/fabriclab/images)";
  auto* image_add = image->add_subcommand(
      "add",
      "Check an OS disk (qcow2 or raw; no backing file; a partition table or file system) and its "
      "boot files, "
      "then copy them read-only into the library; nothing is created when a check fails");
  image_add
      ->add_option("NAME", ia->add.name,
                   "The image's name, as drill specs use it ([A-Za-z0-9._-], not v1/v2/v3-broken)")
      ->required();
  image_add->add_option("--disk", ia->add.disk, "The OS disk image (qcow2 or raw)")->required();
  image_add->add_option("--kernel", ia->add.kernel, "boot: kernel: the guest's kernel (vmlinuz)");
  image_add->add_option("--initrd", ia->add.initrd, "boot: kernel: the guest's initrd");
  image_add->add_option(
      "--cmdline", ia->add.cmdline,
      "boot: kernel: the kernel command line (e.g. \"root=/dev/vda rw console=ttyS0\")");
  image_add
      ->add_option("--boot", ia->add.boot,
                   "kernel (QEMU boots --kernel/--initrd) or disk (the disk's own bootloader); "
                   "default: kernel when --kernel, --initrd or --cmdline is given")
      ->check(CLI::IsMember({"kernel", "disk"}));
  image_add
      ->add_option("--firmware", ia->add.firmware,
                   "bios (default) or efi: UEFI (OVMF), for a disk whose "
                   "bootloader is an EFI program (EFI/BOOT/BOOTX64.EFI)")
      ->check(CLI::IsMember({"bios", "efi"}));
  image_add->add_option("--library", ia->library, library_help);
  auto* image_list = image->add_subcommand(
      "list", "The library's images (each disk checked again) and the built-in guests");
  image_list->add_option("--library", ia->library, library_help);
  image_list->add_flag("--json", ia->json_out, "Print JSON");
  auto* image_remove =
      image->add_subcommand("remove", "Remove an image from the library (its files included)");
  image_remove->add_option("NAME", ia->add.name, "The image's name")->required();
  image_remove->add_option("--library", ia->library, library_help);
  return [=] {
    if (*image_add) return run_image_add(*ia);
    if (*image_list) return run_image_list(*ia);
    if (*image_remove) return run_image_remove(*ia);
    return -1;
  };
}

Command add_status_commands(CLI::App& app) {
  auto st = std::make_shared<Target>();
  auto status_json = std::make_shared<bool>(false);
  auto* status =
      app.add_subcommand("status", "The cluster's UD x FD grid, hosts and the latest drill");
  status->add_option("--orchestrator", st->url, "http://HOST:PORT (default: the local lab's)");
  status->add_option("--token-file", st->token_file, "Token file for --orchestrator");
  status->add_option("--lab-dir", st->lab_dir, "The local lab's directory")->capture_default_str();
  status->add_flag("--json", *status_json, "Print JSON");
  auto wt = std::make_shared<Target>();
  auto once = std::make_shared<bool>(false);
  auto* watch = app.add_subcommand(
      "watch", "Live UD x FD grid and walk progress from the websocket feed (Ctrl-C ends)");
  watch->add_option("--orchestrator", wt->url, "http://HOST:PORT (default: the local lab's)");
  watch->add_option("--token-file", wt->token_file, "Token file for --orchestrator");
  watch->add_option("--lab-dir", wt->lab_dir, "The local lab's directory")->capture_default_str();
  watch->add_flag("--once", *once, "Print the first view (the snapshot) and exit");
  return [=] {
    if (*status) return run_status(*st, *status_json);
    if (*watch) return run_watch(*wt, *once);
    return -1;
  };
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fabriclab: planned host maintenance rehearsed on real VMs.\n"
      "Exit codes: 0 ok (a drill: passed), 1 drill failed, 2 bad input, 3 lab/orchestrator error "
      "(plan: no placement), 130 interrupted."};
  app.require_subcommand(1);
  // In the order `fabriclab --help` lists them.
  const Command commands[] = {add_plan_command(app),    add_drill_command(app),
                              add_lab_command(app),     add_image_command(app),
                              add_status_commands(app), add_chaos_command(app)};
  CLI11_PARSE(app, argc, argv);
  for (const auto& run : commands) {
    if (int code = run(); code >= 0) return code;
  }
  return kBadInput;
}
