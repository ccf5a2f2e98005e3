#pragma once
// The host agent: the emulated Hyper-V host of the seeds. It owns one hypervisor connection, the
// instances (guest VMs) the fabric placed on it, their integration channels, the host image store,
// and at most one maintenance operation at a time, which it runs on its own worker thread:
//
//   host-os   scheduled event -> stop guests one by one (ladder) -> swap the host image ->
//             reboot the host environment (close + reopen the hypervisor, recover) -> start the
//             guests -> wait for their heartbeats -> Ready.  With memory_preserving the guests are
//             saved (managed save) and restored instead: they see a pause, not a reboot.
//   guest-os  the same without the host swap/reboot; each guest boots a new guest image with its
//             data disk kept; a guest not healthy on it in time is put back on its previous image.
//   freeze    suspend and resume the guests, measuring the pause each one saw.
//
// Every step is persisted before it starts; a restarted agent (SIGKILL included) reattaches to
// its VMs and rolls back an operation that had not yet swapped anything (restarting the guests
// it stopped) or rolls forward one that had. Every change is an event on the feed.
//
// The guest network and scheduled events (docs/clients.md). With a guest subnet every instance
// gets an address and a MAC at creation (the lowest free slot; persisted with the instance and
// released when it is deleted), a dnsmasq host file when a DHCP hosts directory is set, and, with
// a guest bridge, a virtio NIC on it plus `fabriclab.ip=/fabriclab.gw=` on the built-in guest's
// kernel command line. Each operation announces ONE scheduled event (an EventId GUID kept in the
// persisted operation) whose Resources are every guest it affects: EventType Reboot (host-os,
// guest-os) or Freeze (freeze, memory-preserving host-os), Scheduled with NotBefore = now +
// notice, Started (NotBefore "") when StoppingGuests begins, removed when the job ends. The same
// document goes to the guests over their channel and is served by IMDS (imds.hpp). A guest
// approves through a channel ack or an IMDS StartRequests; the host starts when every affected
// guest that can approve (one with a channel link or an address) did, or at NotBefore.
// DocumentIncarnation starts at 1 for a new host and grows by one at every change of the event
// set (Scheduled, Started, removed); it is persisted. Each change is an `imds.event` on the feed.

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fabriclab/agent/host_state.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab {
class EventFeed;
}

namespace fabriclab::agent {

struct AgentOptions {
  std::string host_id = "host-0";
  int fault_domain = 0;
  std::string hypervisor_uri;  // default: qemu:///embed?root=<state_dir>/hv
  std::string state_dir;       // required
  std::vector<std::string>
      guest_images_dirs;        // guest image directories (manifest.json each), in order
  std::string host_images_dir;  // default: <state_dir>/host-images
  int capacity = 8;             // instances this host can hold
  std::chrono::milliseconds heartbeat_period{1000};
  int healthy_periods = 3;  // healthy = a heartbeat within this many periods
  std::chrono::milliseconds stop_timeout{10000};
  std::chrono::milliseconds boot_timeout{120000};
  std::chrono::milliseconds boot_delay{0};  // emulated host boot time during a host reboot
  std::chrono::milliseconds drain{200};     // default drain before a guest approves an event
  // An operation stops, starts and verifies up to this many of the host's guests at once (1: one
  // after another), so a guest's down time is its own stop and boot, not its neighbours'. 1..64.
  int parallel_guests = 8;
  // Test driver only: a simulated guest takes this long to power off after the button (a real
  // one takes seconds; the test driver's is instant), so tests see whether stops overlap.
  std::chrono::milliseconds sim_power_off{0};
  // The guest network (docs/clients.md); all empty: none.
  std::string guest_bridge;    // the guests' virtio NICs go on this bridge; empty: no NIC
  std::string guest_subnet;    // "A.B.C.0/24": guest addresses .10-.250, gateway .1
  std::string dhcp_hosts_dir;  // absolute; one dnsmasq host file per instance (NAME.conf)
  // Creating an instance (or reimaging one) that could leave less than this free in the state
  // directory's file system is refused before anything is made.
  uint64_t disk_reserve_mib = 256;
  // UEFI firmware for images with firmware: efi (Debian's ovmf package): the code, shared and
  // read-only, and the variable store template each such instance gets its own copy of.
  std::string ovmf_code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
  std::string ovmf_vars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
  // A host back from a power loss (its rack's power control cut it): the guests it finds stopped
  // at start stay stopped until its orchestrator says (it may have placed them elsewhere).
  bool hold_guests = false;
  // POST /v1/faults (docs/faults.md): only for a test rack, which passes --fault-injection.
  bool fault_injection = false;
};

struct InstanceSpec {
  std::string name;  // default: <service>-<index>
  hypervisor::InstanceMetadata meta;
  uint32_t memory_mib = 128;
  std::string mode = "normal";  // the guest program's mode (normal | ignore-power | fail-app)
  bool drain = true;            // the guest drains before approving a scheduled event
  int64_t drain_ms = 0;         // 0..600000; 0: the agent's default (AgentOptions::drain)
  std::optional<DataCheck> data_check;  // run through the guest agent around each operation
  AppProbe probe;                       // the service's probe; port 0: none
};
// {service, index, ud, fd, image, memory_mib?, name?, mode?, drain?, drain_ms?, data_check?,
// probe?};
// errors name the field.
Result<InstanceSpec> instance_spec_from_json(const boost::json::object& o);

class HostAgent {
 public:
  static Result<std::unique_ptr<HostAgent>> create(AgentOptions options,
                                                   std::shared_ptr<EventFeed> feed);
  ~HostAgent();
  HostAgent(const HostAgent&) = delete;
  HostAgent& operator=(const HostAgent&) = delete;

  // What a websocket client gets on connect: host, instances, current job.
  boost::json::object snapshot() const;
  boost::json::object host_json() const;
  boost::json::array instances_json() const;
  Result<boost::json::object> instance_json(const std::string& name) const;

  // Instance lifecycle (refused with invalid_state unless the host is Ready).
  Result<boost::json::object> create_instance(const InstanceSpec& spec);
  Status start_instance(const std::string& name);
  Status stop_instance(const std::string& name);
  // keep_data: the data disk is moved to <state_dir>/kept-data/<name>-<unix ms>.data.raw instead
  // of deleted, and its new path returned ("" when there was none); without it: "".
  Result<std::string> delete_instance(const std::string& name, bool keep_data = false);
  // The instance's persistent libvirt definition (what its next boot uses), for inspection.
  Result<std::string> domain_xml(const std::string& name);
  // Runs the instance's data check now, through the guest agent, and returns its output
  // (invalid_argument when it declares none; an error when the command fails or exits non-zero):
  // a way to see that the app holds its data before a walk starts.
  Result<std::string> data_check(const std::string& name);

  // Maintenance operations: one at a time; returns the job (202 semantics: it runs on).
  Result<boost::json::object> start_operation(const OperationRequest& request);
  Result<boost::json::object> job_json(const std::string& id) const;
  boost::json::array jobs_json() const;
  // Cancels a running job between steps: guests it stopped are started again.
  Status cancel(const std::string& id);
  // Waits until no job runs (tests, shutdown). False on timeout.
  bool wait_idle(std::chrono::milliseconds timeout);

  // Host image store access for the API.
  boost::json::array host_images_json() const;
  Result<boost::json::object> stage_host_image(const std::string& version, const std::string& path,
                                               const std::string& sha256);
  boost::json::array guest_images_json() const;

  // Fault injection (faults.cpp; AgentOptions::fault_injection, else unsupported). Body:
  // {kind: guest-crash | guest-hang | slow-boot, instance: NAME, delay_ms: 1..600000 (slow-boot
  // only)}. guest-crash: the guest's VM is destroyed as if it crashed (the agent does not know it
  // did it: its monitor sees a VM that stopped on its own). guest-hang: the guest ignores the
  // power button until its next start (a stop waits out the stop timeout and destroys it).
  // slow-boot: its next start waits delay_ms before the VM starts. Errors name the field;
  // unknown instance -> not_found.
  Result<boost::json::object> inject_fault(const boost::json::object& body);
  bool fault_injection() const;

  // -- What the Instance Metadata Service (imds.hpp) serves; thread safe --
  // The instance whose guest address is `address` ("" never matches); nullopt if none.
  std::optional<std::string> instance_at(const std::string& address) const;
  // {"DocumentIncarnation": n, "Events": [...]}: the host's events whose Resources contain `name`.
  boost::json::object scheduled_events_for(const std::string& name) const;
  // StartRequests from `name`: every id must be an event `name` sees (not_found naming the first
  // that is not); approving twice is fine.
  Status approve_events(const std::string& name, const std::vector<std::string>& event_ids);
  // IMDS `compute` (numbers as strings, as Azure sends them) and `network` of `name`; not_found.
  Result<boost::json::object> compute_metadata(const std::string& name) const;
  Result<boost::json::object> network_metadata(const std::string& name) const;

  struct Impl;

 private:
  explicit HostAgent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fabriclab::agent
