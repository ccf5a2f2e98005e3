#pragma once
// One real guest VM of the lab, with the three things a drill does to it: start it and wait for
// its first heartbeat, stop it through the shutdown ladder, and point its next boot at another
// image. Used by the demo, the benchmark and the real-VM tests.

#include <chrono>
#include <memory>
#include <string>

#include "fabriclab/agent/guest_link.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/testbed/lab_vm.hpp"

namespace fabriclab::testbed {

class LabGuest {
 public:
  // Defines (or redefines) the guest `name` with its files in `dir`.
  static Result<LabGuest> create(hypervisor::Connection& conn, const std::string& name,
                                 const std::string& dir, const GuestImage& image,
                                 const GuestOptions& options = {},
                                 std::optional<hypervisor::InstanceMetadata> metadata = {});

  // Starts the domain, connects to its channel and waits for the first heartbeat. Returns the
  // time from the start request to that heartbeat.
  Result<std::chrono::milliseconds> start_and_wait(std::chrono::milliseconds timeout);

  // Waits for the first heartbeat on a fresh link to a guest someone else started.
  Result<std::chrono::milliseconds> attach_and_wait(std::chrono::milliseconds timeout);

  // Stops it through the shutdown ladder; the channel link ends with it.
  Result<hypervisor::ShutdownResult> stop(const hypervisor::ShutdownOptions& options);

  // Points the next boot at `image`, keeping the command line and the data disk.
  Status set_next_image(const GuestImage& image);

  hypervisor::Domain& domain() { return domain_; }
  agent::GuestLink* link() { return link_.get(); }
  const std::string& socket_path() const { return socket_path_; }
  const std::string& name() const { return domain_.name(); }
  // The newest heartbeat seen on the current or the previous link.
  std::optional<agent::Heartbeat> last_heartbeat() const { return last_heartbeat_; }

 private:
  LabGuest(hypervisor::Domain domain, std::string socket_path)
      : domain_(std::move(domain)), socket_path_(std::move(socket_path)) {}
  void remember_heartbeat();
  Result<std::chrono::steady_clock::time_point> connect_and_wait(
      std::chrono::steady_clock::time_point deadline);

  hypervisor::Domain domain_;
  std::string socket_path_;
  std::unique_ptr<agent::GuestLink> link_;
  std::optional<agent::Heartbeat> last_heartbeat_;
};

// Median of a sample (0 for an empty one).
double median(std::vector<double> v);

}  // namespace fabriclab::testbed
