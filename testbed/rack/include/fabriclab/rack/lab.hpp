#pragma once
// The local rack: one `fabriclab-agent` process per host, each with its own state directory,
// its own hypervisor connection (the embedded QEMU driver, or libvirt's test driver for a
// simulation) and its own loopback address 127.0.1.N; one `fabriclab-orchestrator` process.
// Everything the lab starts is recorded in LAB_DIR/lab.json, so `fabriclab lab status|down` in
// another process finds it, and down() stops it all: the VMs (deleted through the agents, then
// any QEMU process still running under the lab directory is killed), the agents, the
// orchestrator.
//
// Addresses: distinct loopback addresses (127.0.1.N), which every Linux host routes to lo
// without set-up. Network namespaces joined by a bridge on 198.18.0.0/24 are not used yet: the
// rack says "loopback" in lab.json and in its status line.

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <sys/types.h>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/spec.hpp"

namespace fabriclab::rack {

struct LabOptions {
  std::string dir = "/tmp/flab";  // short: the agents' unix sockets live under it
  std::string bin_dir;            // where fabriclab-agent and fabriclab-orchestrator are
  std::string images_dir;         // guest images (manifest.json)
  std::string address_prefix = "127.0.1.";  // host N listens on PREFIX(N+1)
  int orchestrator_port = 0;      // 0: ephemeral
  std::string orchestrator_address = "127.0.0.1";
  std::chrono::milliseconds start_timeout{30000};
  int poll_ms = 200;              // orchestrator's agent poll period
  int unhealthy_after_ms = 3000;
};

struct LabProcess {
  std::string name;  // "orchestrator", "h0", ...
  pid_t pid = 0;
  std::string address;
  int port = 0;
  int fault_domain = -1;
  std::string log;
};

class Lab {
 public:
  // Starts the rack of `spec` (agents then orchestrator); on failure stops what it started.
  static Result<Lab> up(const DrillFileSpec& spec, const LabOptions& options);
  // The lab recorded in DIR/lab.json (not_found when there is none).
  static Result<Lab> attach(const std::string& dir);

  // Everything stopped and removed (VMs, processes; the directory is kept for its logs unless
  // remove_dir). Idempotent; safe on a half-started lab.
  void down(bool remove_dir = false);

  // Kills the agents of one fault domain (SIGKILL) and their VMs: a rack losing power.
  Status kill_fault_domain(int fd);

  json::object status_json() const;

  const std::string& dir() const { return dir_; }
  const std::string& hypervisor() const { return hypervisor_; }
  const std::string& control_token() const { return token_; }
  const LabProcess& orchestrator() const { return orchestrator_; }
  const std::vector<LabProcess>& agents() const { return agents_; }
  std::string orchestrator_url() const;

  // Registers every host with the orchestrator and creates the services (POST /v1/hosts,
  // /v1/services), then waits until every instance is healthy.
  Status populate(const DrillFileSpec& spec, std::chrono::milliseconds healthy_timeout);

 private:
  Status save() const;
  std::string dir_;
  std::string token_;
  std::string network = "loopback";
  std::string hypervisor_;
  LabProcess orchestrator_;
  std::vector<LabProcess> agents_;
};

// Finds the binaries: FABRICLAB_BIN_DIR, the directory of this executable, then the build tree
// layout (../agent, ../orchestrator relative to it).
std::string find_binary(const std::string& name, const std::string& hint_dir);

}  // namespace fabriclab::rack
