#pragma once
// Small helpers to make a real guest VM on one machine: its files under a lab directory (data
// disk, console log, channel socket) and its DomainSpec.

#include <string>

#include "fabriclab/common/result.hpp"
#include "fabriclab/hypervisor/domain_spec.hpp"
#include "fabriclab/testbed/images.hpp"

namespace fabriclab::testbed {

// Creates (or keeps, when it exists with that size) a zero-filled raw disk.
Status create_raw_disk(const std::string& path, uint64_t size_bytes);

struct GuestOptions {
  std::string mode = "normal";  // normal | ignore-power | fail-app (the guest program's modes)
  int drain_ms = 200;           // delay before the guest acks a scheduled event
  int heartbeat_ms = 1000;
  uint32_t memory_mib = 128;
};

// The kernel command line the guest program understands.
std::string guest_cmdline(const GuestOptions& o);

// A spec for guest `name` booting `image`, with its disk, console log and channel socket in
// `dir` (created). The socket path must stay under 108 bytes: keep `dir` short.
Result<hypervisor::DomainSpec> guest_spec(const std::string& name, const std::string& dir,
                                          const GuestImage& image,
                                          const GuestOptions& options = {});

// Makes a short unique directory under /tmp (unix socket paths are limited to 108 bytes).
Result<std::string> make_short_tmpdir(const std::string& prefix);

}  // namespace fabriclab::testbed
