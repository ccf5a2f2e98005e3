// Domain spec -> libvirt XML.
//
// The XML is built by hand from a validated spec: every string that reaches it is either checked
// against a character set (the name) or escaped. Choices that matter under TCG: machine 'pc' (the
// fastest to boot), no USB controller, no balloon, no graphics; <acpi/> because without it the
// ACPI shutdown request returns 0 and nothing happens; the serial log with append='on' because
// QEMU truncates it at every start otherwise; disks without cache=none because O_DIRECT
// fails on tmpfs. An OS disk (a qcow2 overlay per instance) is vda so that an image's
// "root=/dev/vda" holds; the data disk then follows as vdb. UEFI guests name their firmware
// files explicitly (loader + per-VM nvram) rather than through libvirt's firmware='efi'
// autoselection, so that a missing OVMF file is our error naming the path, and the NVRAM lives
// with the instance's other files.

#include "fabriclab/hypervisor/domain_spec.hpp"

#include <cctype>
#include <cstring>
#include <sstream>

#include "fabriclab/common/escape.hpp"

namespace fabriclab::hypervisor {
namespace {

bool valid_name(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) {
      return false;
    }
  }
  return n[0] != '.' && n[0] != '-';
}

Status check_path(const std::string& field, const std::string& p, bool required) {
  if (p.empty()) {
    if (required) return make_error(Condition::invalid_argument, field + " is required");
    return {};
  }
  if (p[0] != '/')
    return make_error(Condition::invalid_argument, field + " must be absolute: " + p);
  if (p.size() > 4096) return make_error(Condition::invalid_argument, field + " is too long");
  for (char c : p) {
    if (static_cast<unsigned char>(c) < 0x20) {
      return make_error(Condition::invalid_argument, field + " contains a control character");
    }
  }
  return {};
}

// Extracts attr='v' or attr="v" from a single element's text.
Result<std::string> attribute(const std::string& xml, const std::string& attr) {
  size_t pos = 0;
  while ((pos = xml.find(attr + "=", pos)) != std::string::npos) {
    bool boundary = pos > 0 && std::isspace(static_cast<unsigned char>(xml[pos - 1]));
    pos += attr.size() + 1;
    if (!boundary) continue;
    if (pos >= xml.size() || (xml[pos] != '\'' && xml[pos] != '"')) break;
    char quote = xml[pos];
    size_t end = xml.find(quote, pos + 1);
    if (end == std::string::npos) break;
    std::string raw = xml.substr(pos + 1, end - pos - 1);
    // Undo the escaping libvirt (or we) applied.
    std::string out;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] != '&') {
        out += raw[i];
        continue;
      }
      static const std::pair<const char*, char> kEntities[] = {
          {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&apos;", '\''}, {"&quot;", '"'}};
      bool matched = false;
      for (auto& [ent, ch] : kEntities) {
        if (raw.compare(i, std::strlen(ent), ent) == 0) {
          out += ch;
          i += std::strlen(ent) - 1;
          matched = true;
          break;
        }
      }
      if (!matched)
        return make_error(Condition::invalid_argument, "metadata: bad entity in " + attr);
    }
    return out;
  }
  return make_error(Condition::invalid_argument, "metadata: attribute '" + attr + "' missing");
}

Result<int> int_attribute(const std::string& xml, const std::string& attr, int lo, int hi) {
  FL_ASSIGN_OR_RETURN(std::string s, attribute(xml, attr));
  if (s.empty() || s.size() > 6) {
    return make_error(Condition::invalid_argument,
                      "metadata: attribute '" + attr + "' is not a number");
  }
  int v = 0;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) {
      return make_error(Condition::invalid_argument,
                        "metadata: attribute '" + attr + "' is not a number");
    }
    v = v * 10 + (c - '0');
  }
  if (v < lo || v > hi) {
    return make_error(Condition::invalid_argument,
                      "metadata: attribute '" + attr + "' out of range");
  }
  return v;
}

// UEFI needs both files; a variable store without a loader would be silently ignored.
Status validate_firmware(const Firmware& f) {
  if (f.loader.empty()) {
    if (!f.nvram.empty())
      return make_error(Condition::invalid_argument, "firmware.nvram needs firmware.loader");
    return {};
  }
  FL_RETURN_IF_ERROR(check_path("firmware.loader", f.loader, true));
  FL_RETURN_IF_ERROR(check_path("firmware.nvram", f.nvram, true));
  if (f.loader == f.nvram) {
    return make_error(
        Condition::invalid_argument,
        "firmware.nvram must be the VM's own copy, not the loader itself: " + f.nvram);
  }
  return {};
}

// The boot source: a kernel (with optional initrd and command line), or the OS disk.
Status validate_boot(const DomainSpec& s) {
  FL_RETURN_IF_ERROR(validate_firmware(s.firmware));
  FL_RETURN_IF_ERROR(check_path("os_disk", s.os_disk, false));
  if (s.os_disk_format != "qcow2" && s.os_disk_format != "raw") {
    return make_error(Condition::invalid_argument,
                      "os_disk_format must be qcow2 or raw: '" + s.os_disk_format + "'");
  }
  if (s.boot.kernel.empty()) {
    if (s.os_disk.empty()) {
      return make_error(Condition::invalid_argument,
                        "boot.kernel is required unless an os_disk is given to boot from");
    }
    // Booting the disk's own bootloader: an initrd or command line would be silently ignored.
    if (!s.boot.initrd.empty() || !s.boot.cmdline.empty()) {
      return make_error(Condition::invalid_argument,
                        "boot.initrd and boot.cmdline need boot.kernel (booting from os_disk)");
    }
    return {};
  }
  FL_RETURN_IF_ERROR(check_path("boot.kernel", s.boot.kernel, true));
  FL_RETURN_IF_ERROR(check_path("boot.initrd", s.boot.initrd, false));
  if (s.boot.cmdline.size() > 2048)
    return make_error(Condition::invalid_argument, "boot.cmdline is too long");
  return {};
}

void render_disk(std::ostringstream& x, const std::string& path, const std::string& format,
                 const std::string& target) {
  x << "    <disk type='file' device='disk'>\n"
    << "      <driver name='qemu' type='" << format << "'/>\n"
    << "      <source file='" << xml_escape(path) << "'/>\n"
    << "      <target dev='" << target << "' bus='virtio'/>\n    </disk>\n";
}

}  // namespace

std::string os_disk_target(const DomainSpec& s) { return s.os_disk.empty() ? "" : "vda"; }

std::string data_disk_target(const DomainSpec& s) {
  if (s.data_disk.empty()) return "";
  return s.os_disk.empty() ? "vda" : "vdb";
}

bool valid_mac(const std::string& mac) {
  if (mac.size() != 17) return false;
  for (size_t i = 0; i < mac.size(); ++i) {
    if (i % 3 == 2) {
      if (mac[i] != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(mac[i]))) {
      return false;
    }
  }
  // The low bit of the first octet marks a multicast address, which no NIC may have.
  const int first = std::stoi(mac.substr(0, 2), nullptr, 16);
  return (first & 1) == 0;
}

bool valid_bridge_name(const std::string& name) {
  if (name.empty() || name.size() > 15) return false;  // IFNAMSIZ - 1
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) {
      return false;
    }
  }
  return name != "." && name != "..";
}

std::string xml_escape(const std::string& s) {
  static constexpr CharEntity kXml[] = {
      {'&', "&amp;"}, {'<', "&lt;"}, {'>', "&gt;"}, {'\'', "&apos;"}, {'"', "&quot;"}};
  return escape_chars(s, kXml);
}

std::string render_metadata_xml(const InstanceMetadata& m, bool qualified) {
  std::ostringstream x;
  if (qualified) {
    x << "<" << kMetadataPrefix << ":instance xmlns:" << kMetadataPrefix << "='"
      << kMetadataNamespace << "'";
  } else {
    x << "<instance";
  }
  x << " service='" << xml_escape(m.service) << "' index='" << m.index << "' ud='" << m.ud
    << "' fd='" << m.fd << "' image='" << xml_escape(m.image) << "'/>";
  return x.str();
}

Result<InstanceMetadata> parse_metadata_xml(const std::string& xml) {
  if (xml.size() > 4096) return make_error(Condition::invalid_argument, "metadata: too large");
  if (xml.find(":instance") == std::string::npos && xml.find("<instance") == std::string::npos) {
    return make_error(Condition::invalid_argument, "metadata: not an instance element");
  }
  InstanceMetadata m;
  FL_ASSIGN_OR_RETURN(m.service, attribute(xml, "service"));
  FL_ASSIGN_OR_RETURN(m.index, int_attribute(xml, "index", 0, 100000));
  FL_ASSIGN_OR_RETURN(m.ud, int_attribute(xml, "ud", 0, 19));
  FL_ASSIGN_OR_RETURN(m.fd, int_attribute(xml, "fd", 0, 1000));
  FL_ASSIGN_OR_RETURN(m.image, attribute(xml, "image"));
  return m;
}

Status validate(const DomainSpec& s) {
  if (!valid_name(s.name)) {
    return make_error(Condition::invalid_argument,
                      "name must be 1..64 characters of [A-Za-z0-9_.-]: '" + s.name + "'");
  }
  if (s.memory_mib < 32 || s.memory_mib > 65536) {
    return make_error(Condition::invalid_argument, "memory_mib must be in 32..65536");
  }
  if (s.vcpus < 1 || s.vcpus > 64)
    return make_error(Condition::invalid_argument, "vcpus must be in 1..64");
  FL_RETURN_IF_ERROR(validate_boot(s));
  FL_RETURN_IF_ERROR(check_path("console_log", s.console_log, false));
  FL_RETURN_IF_ERROR(check_path("data_disk", s.data_disk, false));
  if (!s.os_disk.empty() && s.os_disk == s.data_disk) {
    return make_error(Condition::invalid_argument,
                      "os_disk and data_disk are the same file: " + s.os_disk);
  }
  FL_RETURN_IF_ERROR(check_path("channel_socket", s.channel_socket, false));
  if (s.channel_socket.size() >= 108) {
    return make_error(
        Condition::invalid_argument,
        "channel_socket longer than a unix socket path allows (107): " + s.channel_socket);
  }
  if (s.metadata) {
    if (s.metadata->service.empty() || s.metadata->service.size() > 64) {
      return make_error(Condition::invalid_argument, "metadata.service must be 1..64 characters");
    }
    if (s.metadata->ud < 0 || s.metadata->ud > 19) {
      return make_error(Condition::invalid_argument, "metadata.ud must be in 0..19");
    }
    if (s.metadata->fd < 0 || s.metadata->index < 0) {
      return make_error(Condition::invalid_argument, "metadata.fd and metadata.index must be >= 0");
    }
  }
  if (s.nic) {
    if (!valid_mac(s.nic->mac)) {
      return make_error(
          Condition::invalid_argument,
          "nic.mac must be a unicast xx:xx:xx:xx:xx:xx address: '" + s.nic->mac + "'");
    }
    if (!valid_bridge_name(s.nic->bridge)) {
      return make_error(
          Condition::invalid_argument,
          "nic.bridge must be 1..15 characters of [A-Za-z0-9_.-]: '" + s.nic->bridge + "'");
    }
  }
  return {};
}

Result<std::string> render_domain_xml(const DomainSpec& s, const std::string& domain_type) {
  FL_RETURN_IF_ERROR(validate(s));
  if (domain_type != "kvm" && domain_type != "qemu" && domain_type != "test") {
    return make_error(Condition::invalid_argument, "unknown domain type '" + domain_type + "'");
  }
  const bool real = domain_type != "test";
  std::ostringstream x;
  x << "<domain type='" << domain_type << "'>\n"
    << "  <name>" << s.name << "</name>\n"
    << "  <memory unit='MiB'>" << s.memory_mib << "</memory>\n"
    << "  <vcpu>" << s.vcpus << "</vcpu>\n";
  if (s.metadata) x << "  <metadata>" << render_metadata_xml(*s.metadata) << "</metadata>\n";
  x << "  <os>\n    <type arch='x86_64'" << (real ? " machine='pc'" : "") << ">hvm</type>\n";
  if (s.firmware.uefi()) {
    // Non-secure-boot OVMF runs on machine 'pc' (secure boot would need q35 and SMM).
    x << "    <loader readonly='yes' type='pflash'>" << xml_escape(s.firmware.loader)
      << "</loader>\n"
      << "    <nvram>" << xml_escape(s.firmware.nvram) << "</nvram>\n";
  }
  if (s.boot.kernel.empty()) {
    x << "    <boot dev='hd'/>\n";  // validate() made sure there is an OS disk
  } else {
    x << "    <kernel>" << xml_escape(s.boot.kernel) << "</kernel>\n";
    if (!s.boot.initrd.empty()) x << "    <initrd>" << xml_escape(s.boot.initrd) << "</initrd>\n";
    if (!s.boot.cmdline.empty())
      x << "    <cmdline>" << xml_escape(s.boot.cmdline) << "</cmdline>\n";
  }
  x << "  </os>\n";
  if (s.acpi) x << "  <features><acpi/></features>\n";
  x << "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n"
    << "  <on_crash>destroy</on_crash>\n  <devices>\n";
  if (!s.os_disk.empty()) render_disk(x, s.os_disk, s.os_disk_format, os_disk_target(s));
  if (!s.data_disk.empty()) render_disk(x, s.data_disk, "raw", data_disk_target(s));
  if (!s.console_log.empty()) {
    x << "    <serial type='file'>\n      <source path='" << xml_escape(s.console_log)
      << "' append='on'/>\n      <target port='0'/>\n    </serial>\n";
  }
  if (!s.channel_socket.empty()) {
    x << "    <channel type='unix'>\n      <source mode='bind' path='"
      << xml_escape(s.channel_socket) << "'/>\n      <target type='virtio' name='"
      << kIntegrationChannelName << "'/>\n"
      << "    </channel>\n";
  }
  if (s.guest_agent) {
    // No source path: libvirt makes the socket in its own channel directory and connects to it
    // itself (the agent lifecycle events and virDomainQemuAgentCommand need exactly that).
    x << "    <channel type='unix'>\n      <target type='virtio' name='" << kGuestAgentChannelName
      << "'/>\n    </channel>\n";
  }
  if (s.nic) {
    // Both strings are validated to a character set that needs no escaping.
    x << "    <interface type='bridge'>\n      <mac address='" << s.nic->mac << "'/>\n"
      << "      <source bridge='" << s.nic->bridge << "'/>\n      <model type='virtio'/>\n"
      << "    </interface>\n";
  }
  if (real) {
    x << "    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n";
  }
  x << "  </devices>\n</domain>\n";
  return x.str();
}

}  // namespace fabriclab::hypervisor
