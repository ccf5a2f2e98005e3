// fabriclab-guest: PID 1 of every lab VM, the stand-in for "the customer's app plus Azure's
// integration services" inside a role instance.
//
// Why it exists. The drill must prove that guest applications survive a walk: that a VM was
// really shut down and restarted, that the image really changed, and that no acknowledged data
// was lost. Only the guest can testify to that, so the guest keeps a counter on its own data disk
// and reports it, with its image version and a fresh boot id, in a heartbeat over a virtio-serial
// port (our VMBus). The host agent reads those lines; the prober turns them into availability and
// data-loss figures. A value is reported only after pwrite + fdatasync, so "reported" implies
// "durable", and a counter that goes backwards after a reboot is real data loss, not noise.
//
// Shape. One static binary, no libc services beyond system calls, single-threaded: after boot
// (mounts, finit_module of the modules the image builder listed, configuration from
// /etc/fabriclab and /proc/cmdline) everything happens in one poll() loop whose timeout is the
// nearest timer: the heartbeat tick, delayed scheduled-event acks (the "drain" time an Azure app
// takes before answering StartRequests), retries for the data disk (heartbeats wait up to 5 s for
// it, so the first one already carries a durable counter), rescans for input devices and for the
// channel, and re-probes of a channel whose host end is closed. Devices that are late never block
// the loop, so the power button works from the moment its device exists. The power button (ACPI
// KEY_POWER through evdev) triggers the clean shutdown: final record on disk, `final` line,
// sync, power off. The image builder bakes the rest of the behaviour into files: the image
// version (v1, v2 = patched), and a "bad patch" mode (fail-app: the app never starts, so no
// heartbeats) the orchestrator must detect and roll back. `fabriclab.mode=ignore-power` makes a
// guest that ignores ACPI, to exercise the host's shutdown timeout and destroy path.
//
// The app clients see. With `fabriclab.ip=A.B.C.D/NN fabriclab.gw=G` on the kernel command line
// (the agent sets them from its lease table; docs/clients.md is the contract) the guest is also
// what a load balancer fronts: it configures eth0 itself (network.*: ioctls, retried from the
// loop until virtio_net has probed the NIC), serves HTTP on port 80 (http_server.*: `/health`
// for the balancer's probe, `/` with instance, image, boot id and durable counter for clients)
// and talks to the Instance Metadata Service like an Azure app (imds_client.*): it learns its
// name from compute metadata (the channel's `instance` message, service-index, is the fallback),
// then polls Scheduled Events once a second. drain.* decides: a Scheduled event that names this
// VM turns /health to 503 at once, and after drain_ms (long enough for the balancer to mark it
// down and finish in-flight requests) the guest approves with StartRequests; it serves again
// once the event has left the document. With `fabriclab.drain=0` it ignores events and the host
// goes ahead at NotBefore. IMDS is then the one approval path: channel scheduled_events are
// logged, not acked; without a network everything stays on the channel as before. HTTP and IMDS
// are non-blocking state machines in the same poll loop with bounded buffers and deadlines, so a
// slow client or a silent IMDS can delay nothing else (heartbeats, power button). In fail-app
// mode the server still runs and answers 503 `app failed` (the balancer must see the bad patch).
//
// PID 1 rules: never exit (panic=-1 would reboot the VM in a loop), never block forever on a
// device that may not come, and treat every byte from the host (channel or IMDS) and from
// clients as hostile.
#include <unistd.h>

#include <exception>
#include <string>
#include <utility>

#include "boot_env.hpp"
#include "guest_app.hpp"

namespace fabriclab::guest {
namespace {

[[noreturn]] void guest_main() {
  mount_basics();
  log("fabriclab guest starting (pid 1)");
  load_modules(std::string(kConfigDir) + "/modules");
  GuestConfig config = load_config();
  std::string boot_id = make_boot_id();
  log("image=%s mode=%s hb_ms=%lld drain_ms=%lld disk=%s boot_id=%s%s%s", config.image.c_str(),
      std::string(to_string(config.mode)).c_str(), static_cast<long long>(config.heartbeat_ms),
      static_cast<long long>(config.drain_ms), config.disk.c_str(), boot_id.c_str(),
      config.patch.empty() ? "" : " patch=", config.patch.c_str());
  GuestApp app(std::move(config), std::move(boot_id));
  app.run();
}

}  // namespace
}  // namespace fabriclab::guest

int main() {
  if (::getpid() != 1) {
    // Guard: as root outside a VM this program would mount over /dev and power the machine off.
    static const char kMessage[] =
        "fabriclab-guest: must run as PID 1 (/init) inside a fabriclab guest VM\n";
    (void)!::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
    return 2;
  }
  std::set_terminate([] { fabriclab::guest::halt_forever("unhandled exception"); });
  try {
    fabriclab::guest::guest_main();
  } catch (const std::exception& e) {
    fabriclab::guest::halt_forever(e.what());
  } catch (...) {
    fabriclab::guest::halt_forever("unknown exception");
  }
}