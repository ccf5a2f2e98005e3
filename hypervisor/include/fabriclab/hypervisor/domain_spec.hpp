#pragma once
// What a guest VM is made of, as plain data, and its libvirt domain XML. Knows nothing of
// connections; `render_domain_xml` is pure so it can be tested without libvirt.

#include <cstdint>
#include <optional>
#include <string>

#include "fabriclab/common/result.hpp"

namespace fabriclab::hypervisor {

// The virtio-serial port name of the guest integration channel (docs/guest-channel.md).
inline constexpr const char* kIntegrationChannelName = "org.fabriclab.integration.0";

// The virtio-serial port name of the qemu-guest-agent channel (the libvirt convention; libvirt
// picks the host-side socket path and connects to it while the guest has the port open).
inline constexpr const char* kGuestAgentChannelName = "org.qemu.guest_agent.0";

// The XML namespace of our instance metadata element.
inline constexpr const char* kMetadataNamespace = "https://fabriclab.dev/xmlns/instance/1";
inline constexpr const char* kMetadataPrefix = "fabriclab";

// Who a VM is, as the fabric sees it; stored in the domain XML as
// <fabriclab:instance service= index= ud= fd= image=/>.
struct InstanceMetadata {
  std::string service;
  int index = 0;
  int ud = 0;
  int fd = 0;
  std::string image;

  bool operator==(const InstanceMetadata&) const = default;
};

// Renders the metadata element; with `qualified` it carries our prefix and namespace declaration
// (inside a domain XML), without it is the bare element virDomainSetMetadata takes.
std::string render_metadata_xml(const InstanceMetadata& m, bool qualified = true);
// Parses an element produced by `render_metadata_xml` (as libvirt returns it). Rejects anything
// else with invalid_argument naming the attribute.
Result<InstanceMetadata> parse_metadata_xml(const std::string& xml);

// Direct kernel boot, or (kernel empty) boot from the OS disk through its own bootloader
// (<boot dev='hd'/>); the latter needs DomainSpec::os_disk, and then initrd and cmdline are empty.
struct BootImage {
  std::string kernel;   // absolute path; empty: boot from the disk
  std::string initrd;   // absolute path
  std::string cmdline;  // kernel command line

  bool operator==(const BootImage&) const = default;
};

// The firmware the VM starts: SeaBIOS (the default, loader empty), or UEFI (OVMF) from a
// read-only code file plus the VM's own variable store (NVRAM), a copy of the firmware's VARS
// template that the caller makes and keeps (boot entries and settings live there).
// Rendered as <loader readonly='yes' type='pflash'>LOADER</loader><nvram>NVRAM</nvram>.
struct Firmware {
  std::string loader;  // absolute path of the UEFI code (e.g. OVMF_CODE_4M.fd); empty: BIOS
  std::string nvram;   // absolute path of this VM's variable store; required with a loader

  bool uefi() const { return !loader.empty(); }
  bool operator==(const Firmware&) const = default;
};

// The guest's network card: a virtio NIC on a host bridge (the agent's --guest-bridge), rendered
// as <interface type='bridge'><mac address=MAC/><source bridge=BRIDGE/><model type='virtio'/>.
// libvirt's test driver accepts it too (it invents a tap name and needs no bridge).
struct NicSpec {
  std::string mac;     // "52:54:00:c6:00:0a": six two-digit hex groups, unicast
  std::string bridge;  // a Linux interface name: [A-Za-z0-9_.-]{1,15}

  bool operator==(const NicSpec&) const = default;
};

// Checks a MAC address ("xx:xx:xx:xx:xx:xx", hex, not multicast) / a bridge name.
bool valid_mac(const std::string& mac);
bool valid_bridge_name(const std::string& name);

struct DomainSpec {
  std::string name;           // [A-Za-z0-9_.-], 1..64 chars
  uint32_t memory_mib = 128;  // 32..65536
  uint32_t vcpus = 1;         // 1..64
  BootImage boot;             // direct kernel boot, or from the OS disk (kernel empty)
  Firmware firmware;          // BIOS unless firmware.loader is set
  bool acpi = true;           // without it ACPI shutdown silently does nothing
  std::string console_log;    // serial console appended to this file; empty: none
  // Disks: with an OS disk it is vda and the data disk vdb; without one the data disk is vda
  // (the built-in guest, whose root file system is its initramfs).
  std::string os_disk;                   // OS disk path (a per-instance qcow2 overlay); empty: none
  std::string os_disk_format = "qcow2";  // "qcow2" | "raw"
  std::string data_disk;       // raw disk image path (vda, or vdb with an OS disk); empty: none
  std::string channel_socket;  // unix socket path QEMU binds for the integration channel
  bool guest_agent = false;    // add the qemu-guest-agent virtio-serial channel
                               // (kGuestAgentChannelName, libvirt-managed unix source)
  std::optional<InstanceMetadata> metadata;
  std::optional<NicSpec> nic;  // none: the guest has no network card
};

// Checks every field; the error names the field.
Status validate(const DomainSpec& spec);

// The target device names the rendered XML gives the disks ("vda", "vdb"; empty: no such disk).
std::string os_disk_target(const DomainSpec& spec);
std::string data_disk_target(const DomainSpec& spec);

// `domain_type` is "kvm", "qemu" or "test" (what the connection's capabilities offer).
Result<std::string> render_domain_xml(const DomainSpec& spec, const std::string& domain_type);

// Escapes &, <, >, ' and " for XML text and attribute values.
std::string xml_escape(const std::string& s);

}  // namespace fabriclab::hypervisor
