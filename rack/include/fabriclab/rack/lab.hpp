#pragma once
// The local rack: one `fabriclab-agent` process per host, each with its own state directory,
// its own hypervisor connection (the embedded QEMU driver, or libvirt's test driver for a
// simulation) and its own address; one `fabriclab-orchestrator` process. Everything the lab
// starts is recorded in LAB_DIR/lab.json, so `fabriclab lab status|down` in another process finds
// it, and down() stops it all: the orchestrator, the agents, any QEMU process still running under
// the lab directory, and the lab's network namespaces.
//
// Network ("network" in lab.json and status_json(); the CLI's rack line says the same):
//  - "netns" (where the testbed may create network namespaces: root, or CAP_SYS_ADMIN +
//    CAP_NET_ADMIN, and iproute2's `ip`): a rack namespace flab-ID-rack holding a bridge br0 with
//    198.18.0.1/24, and one namespace flab-ID-hN per host whose eth0 (198.18.0.(N+2)/24) is one
//    end of a veth pair whose other end (hN) is a port of br0. ID is 8 random hex digits, so two
//    labs never share a name, and each has its own rack namespace, so both may use the same
//    198.18 addresses. 198.18.0.0/15 is the range reserved for network tests (RFC 2544); its
//    addresses exist only inside these namespaces, never where the lab was started. Each agent
//    runs inside its host namespace (entered with setns(2) between fork and exec, so the recorded
//    pid is the agent's own). The orchestrator stays in the starting namespace on
//    orchestrator_address (so a browser and `fabriclab status|watch` reach it) and opens its
//    connections to agents inside the rack namespace (--agent-netns). `ip netns list` shows them.
//  - "loopback" (asked for, or namespaces not permitted): host N on 127.0.1.(N+1), which every
//    Linux host routes to lo without set-up; network_reason() says why namespaces were not used.
// A fault domain losing power (kill_fault_domain) kills its agents and VMs but leaves their
// namespaces until down(): a dead host's address refuses connections, as on loopback. Each host
// has a power control (power_off/power_on: `fabriclab lab power-off|power-on`), and the lab gives
// the orchestrator `fabriclab lab power-off` as its --power-command, so a silent host is fenced
// before its instances are healed (docs/state-machines.md "Fence before heal").
//
// Guest network (docs/clients.md; "guest_network" in lab.json): on a namespaced rack of real VMs
// every host namespace also gets a guest bridge gbr0 (198.19.N.1/24 and the IMDS address
// 169.254.169.254), a dnsmasq serving static leases on it (the agent writes one host file per
// instance into its dhcp directory), and the agent serves IMDS there; the rack namespace routes to
// every guest subnet, holds the VIPs 198.18.1.0/24 and runs HAProxy (master-worker, its master
// socket in the lab directory), which the orchestrator configures and reloads. A simulated or
// loopback rack has none of this; guest_network_reason() says why, and the drill's report says
// that client traffic was not measured. down() stops HAProxy and the dnsmasqs, and kills any
// process still inside a lab namespace before removing it.

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::rack {

struct LabOptions {
  std::string dir = "/tmp/flab";        // short: the agents' unix sockets live under it
  std::string bin_dir;                  // where fabriclab-agent and fabriclab-orchestrator are
  std::string images_dir;               // the built-in guest images (manifest.json)
  std::vector<std::string> image_dirs;  // more guest image directories (e.g. the Debian builder's)
  std::string
      image_library;  // the `fabriclab image` library, given to the agents if it has a manifest
  // "auto": network namespaces where permitted, else loopback (saying why); "netns": namespaces or
  // fail; "loopback": never namespaces.
  std::string network = "auto";
  std::string address_prefix = "127.0.1.";  // loopback: host N listens on PREFIX(N+1)
  int orchestrator_port = 0;                // 0: ephemeral
  std::string orchestrator_address = "127.0.0.1";
  std::chrono::milliseconds start_timeout{30000};
  int poll_ms = 200;        // orchestrator's agent poll period
  std::string haproxy_bin;  // empty: haproxy from /usr/sbin, /usr/bin
  std::string dnsmasq_bin;  // empty: dnsmasq from /usr/sbin, /usr/bin
  int unhealthy_after_ms = 3000;
};

struct LabProcess {
  std::string name;  // "orchestrator", "h0", ...
  pid_t pid = 0;
  std::string address;
  int port = 0;
  int fault_domain = -1;
  std::string log;
  std::string netns;  // the host's network namespace (a name under /run/netns); empty: none
  std::vector<std::string> argv;  // how it was started (agents: power_on starts it again so)
};

class Lab {
 public:
  // Starts the rack of `spec` (agents then orchestrator); on failure stops what it started.
  static Result<Lab> up(const DrillFileSpec& spec, const LabOptions& options);
  // The lab recorded in DIR/lab.json (not_found when there is none).
  static Result<Lab> attach(const std::string& dir);

  // Everything stopped and removed (VMs, processes, network namespaces; the directory is kept
  // for its logs unless remove_dir). Idempotent; safe on a half-started lab. An error names the
  // namespaces that could not be removed (lab.json is then kept, so a later down retries).
  Status down(bool remove_dir = false);

  // Kills the agents of one fault domain (SIGKILL) and their VMs: a rack losing power.
  Status kill_fault_domain(int fd);

  // The emulated BMC/PDU of one host (lab_power.cpp). power_off kills the host's agent and every
  // QEMU process of the host (the ones naming its state directory, and any in its network
  // namespace) with SIGKILL, and returns only once all are gone: ok = confirmed off; timeout
  // naming what is left otherwise. With the test driver the guests live inside the agent, so the
  // agent is all there is. power_on starts the agent again on its address and port, with
  // --hold-guests (a host back from a power loss starts no guest by itself: its orchestrator
  // decides). Errors name the host; already_exists when it is on.
  Status power_off(const std::string& host, std::chrono::milliseconds timeout);
  Status power_on(const std::string& host, std::chrono::milliseconds timeout);
  // The orchestrator's --power-command for this lab: `fabriclab lab power-off --lab-dir DIR
  // {host}` (empty when the fabriclab binary is not found near `bin_dir`).
  static std::string power_command(const std::string& bin_dir, const std::string& lab_dir);

  json::object status_json() const;

  const std::string& dir() const { return dir_; }
  const std::string& hypervisor() const { return hypervisor_; }
  // "netns" or "loopback" (see above); why not netns (empty when netns or when asked for loopback).
  const std::string& network() const { return network_; }
  const std::string& network_reason() const { return network_reason_; }
  // The rack namespace to open agent connections in (http_client.hpp's netns); empty: loopback.
  const std::string& agent_netns() const { return rack_netns_; }
  // Every namespace the lab created, rack first.
  const std::vector<std::string>& namespaces() const { return namespaces_; }
  const std::string& control_token() const { return token_; }
  const LabProcess& orchestrator() const { return orchestrator_; }
  const std::vector<LabProcess>& agents() const { return agents_; }
  // The orchestrator or an agent by name, to record a restart's new pid (faults.hpp); nullptr if
  // no such process. save() records it in lab.json.
  LabProcess* process(const std::string& name);
  Status save_state() const { return save(); }
  // dnsmasq per host ("dnsmasq-hN") and HAProxy ("haproxy"), when there is a guest network.
  const std::vector<LabProcess>& network_processes() const { return net_procs_; }
  bool guest_network() const { return guest_network_; }
  const std::string& guest_network_reason() const { return guest_network_reason_; }
  std::string orchestrator_url() const;

  // Registers every host with the orchestrator and creates the services (POST /v1/hosts,
  // /v1/services), then waits until every instance is healthy.
  Status populate(const DrillFileSpec& spec, std::chrono::milliseconds healthy_timeout);

 private:
  // What lab.json records (status_json(): and whether each process is alive).
  json::object to_json(bool with_alive) const;
  Status save() const;
  // The phases of up(), in order: namespaces or loopback (and whether guests get a network), the
  // agents (started together, then awaited), the orchestrator.
  void choose_network(const DrillFileSpec& spec, const LabOptions& options);
  std::vector<std::string> agent_argv(const DrillFileSpec& spec, const LabOptions& options, int i,
                                      const std::string& agent_bin) const;
  Status start_agents(const DrillFileSpec& spec, const LabOptions& options,
                      const std::string& agent_bin);
  Status start_orchestrator(const LabOptions& options, const std::string& orch_bin);
  // dnsmasq in every host namespace and HAProxy in the rack namespace (guest network only).
  Status start_network_services(const LabOptions& options);
  void stop_network_services();
  std::string dir_;
  std::string token_;
  std::string network_ = "loopback";
  std::string network_reason_;
  std::string rack_netns_;
  std::vector<std::string> namespaces_;
  std::string hypervisor_;
  std::vector<std::string> image_dirs_;  // every agent's --guest-images, in order
  LabProcess orchestrator_;
  std::vector<LabProcess> agents_;
  std::vector<LabProcess> net_procs_;
  bool guest_network_ = false;
  std::string guest_network_reason_;
};

// Finds the binaries: FABRICLAB_BIN_DIR, the directory of this executable, then the build tree
// layout (../agent, ../orchestrator relative to it).
std::string find_binary(const std::string& name, const std::string& hint_dir);

// The directory of this executable (/proc/self/exe); "." when it cannot be read.
std::string self_dir();

// Guest images: `flag` when set, FABRICLAB_IMAGES_DIR, `build_default` when set, then the build
// tree's images/ beside the executable's directory.
std::string images_dir(const std::string& flag, const std::string& build_default = {});

}  // namespace fabriclab::rack
