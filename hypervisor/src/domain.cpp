// Domain operations, including the shutdown ladder and next-boot image changes.
//
// The ladder: ask for an ACPI power-off (pressed again every few seconds: a guest still booting
// does not see the first press), then wait for the domain to be off, woken by a lifecycle
// event or a short poll (events are late hints, the state query is the truth), and destroy it
// when the graceful window closes. It reports which way it ended and how long it took; under a
// drill that distinction is the difference between a clean guest shutdown and lost writes.
//
// Next-boot changes (kernel/initrd/cmdline, disk source) edit the persistent definition only:
// we take the INACTIVE XML, replace the element text and define it again. The running guest keeps
// what it booted with until it is stopped.

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <algorithm>
#include <thread>

#include "fabriclab/hypervisor/connection.hpp"
#include "libvirt_error.hpp"

namespace fabriclab::hypervisor {

using detail::last_error;
using Clock = std::chrono::steady_clock;

namespace {

std::string xml_unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '&') {
      static const std::pair<const char*, char> kEntities[] = {
          {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&apos;", '\''}, {"&quot;", '"'}};
      bool done = false;
      for (auto& [ent, ch] : kEntities) {
        std::string e(ent);
        if (s.compare(i, e.size(), e) == 0) {
          out += ch;
          i += e.size() - 1;
          done = true;
          break;
        }
      }
      if (done) continue;
    }
    out += s[i];
  }
  return out;
}

// Text of the first <tag>...</tag> inside <os>; empty when absent.
std::string os_element(const std::string& xml, const std::string& tag) {
  auto os = xml.find("<os");
  auto os_end = xml.find("</os>");
  if (os == std::string::npos || os_end == std::string::npos) return {};
  auto b = xml.find("<" + tag + ">", os);
  if (b == std::string::npos || b > os_end) return {};
  b += tag.size() + 2;
  auto e = xml.find("</" + tag + ">", b);
  if (e == std::string::npos) return {};
  return xml_unescape(xml.substr(b, e - b));
}

// Replaces (or inserts before </os>, or removes when value is empty) <tag>value</tag> in <os>.
Status set_os_element(std::string& xml, const std::string& tag, const std::string& value) {
  auto os_end = xml.find("</os>");
  if (os_end == std::string::npos) return make_error(Condition::internal, "domain XML has no <os>");
  const std::string open = "<" + tag + ">", close = "</" + tag + ">";
  auto b = xml.find(open, xml.find("<os"));
  std::string repl = value.empty() ? "" : open + xml_escape(value) + close;
  if (b != std::string::npos && b < os_end) {
    auto e = xml.find(close, b);
    if (e == std::string::npos)
      return make_error(Condition::internal, "domain XML: unclosed " + open);
    xml.replace(b, e + close.size() - b, repl);
  } else if (!value.empty()) {
    xml.insert(os_end, "  " + repl + "\n  ");
  }
  return {};
}

bool valid_target_dev(const std::string& t) {
  if (t.size() < 2 || t.size() > 8) return false;
  return std::all_of(t.begin(), t.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); });
}

// Points disk `target_dev` of a domain XML at `path` (and, when `format` is not empty, makes its
// driver type `format`; otherwise the type is kept: an OS disk stays qcow2). A <backingStore>
// libvirt recorded for the old file describes a chain that no longer applies, so it goes.
Status replace_disk_source(std::string& x, const std::string& domain, const std::string& target_dev,
                           const std::string& path, const std::string& format) {
  auto target = x.find("<target dev='" + target_dev + "'");
  if (target == std::string::npos) {
    return make_error(Condition::not_found, "'" + domain + "' has no disk " + target_dev);
  }
  auto disk = x.rfind("<disk", target);
  auto disk_end = x.find("</disk>", target);
  if (disk == std::string::npos || disk_end == std::string::npos) {
    return make_error(Condition::unsupported, "disk " + target_dev + " is not a disk element");
  }
  std::string el = x.substr(disk, disk_end - disk);
  const std::string src_open = "<source file='";
  auto src = el.find(src_open);
  if (el.find("<disk type='file'") != 0 || src == std::string::npos) {
    return make_error(Condition::unsupported, "disk " + target_dev + " is not a file disk");
  }
  auto val = src + src_open.size();
  el.replace(val, el.find('\'', val) - val, xml_escape(path));
  if (auto bs = el.find("<backingStore"); bs != std::string::npos) {
    // Either <backingStore/> or a nested chain closed by the last </backingStore>.
    const std::string close = "</backingStore>";
    auto open_end = el.find('>', bs);
    auto last_close = el.rfind(close);
    size_t end = std::string::npos;
    if (open_end != std::string::npos && el[open_end - 1] == '/')
      end = open_end + 1;
    else if (last_close != std::string::npos && last_close > bs)
      end = last_close + close.size();
    if (end == std::string::npos) {
      return make_error(Condition::internal, "disk " + target_dev + ": unclosed <backingStore>");
    }
    el.erase(bs, end - bs);
  }
  if (!format.empty()) {
    auto drv = el.find("<driver ");
    if (drv == std::string::npos) {
      return make_error(Condition::unsupported, "disk " + target_dev + " has no <driver> element");
    }
    auto type = el.find(" type='", drv);
    auto drv_end = el.find('>', drv);
    if (type != std::string::npos && type < drv_end) {
      auto v = type + 7;
      el.replace(v, el.find('\'', v) - v, format);
    } else {
      el.insert(drv + 7, "type='" + format + "' ");
    }
  }
  x.replace(disk, disk_end - disk, el);
  return {};
}

}  // namespace

// Drivers disagree on how they report "wrong state" (QEMU: operation invalid; the test driver:
// internal error). Capture libvirt's error, then ask the domain: when its state is one in which the
// operation cannot work, the condition is invalid_state whatever the driver said.
Error Domain::state_error(const std::string& what, std::initializer_list<DomainState> wrong) const {
  Error e = last_error(what);
  if (e.condition == Condition::internal) {
    auto st = state();
    if (st.ok() && std::find(wrong.begin(), wrong.end(), *st) != wrong.end()) {
      e.condition = Condition::invalid_state;
    }
  }
  return e;
}

Domain::Domain(Connection* conn, virDomainPtr dom, std::string name, std::string uuid)
    : conn_(conn), dom_(dom), name_(std::move(name)), uuid_(std::move(uuid)) {}

Domain::Domain(Domain&& o) noexcept
    : conn_(o.conn_), dom_(o.dom_), name_(std::move(o.name_)), uuid_(std::move(o.uuid_)) {
  o.dom_ = nullptr;
}

Domain& Domain::operator=(Domain&& o) noexcept {
  if (this != &o) {
    if (dom_) virDomainFree(dom_);
    conn_ = o.conn_;
    dom_ = o.dom_;
    name_ = std::move(o.name_);
    uuid_ = std::move(o.uuid_);
    o.dom_ = nullptr;
  }
  return *this;
}

Domain::~Domain() {
  if (dom_) virDomainFree(dom_);
}

Status Domain::start() {
  if (virDomainCreate(dom_) < 0) {
    return state_error("cannot start '" + name_ + "'", {DomainState::running, DomainState::paused});
  }
  return {};
}

Status Domain::start_paused() {
  if (virDomainCreateWithFlags(dom_, VIR_DOMAIN_START_PAUSED) < 0) {
    return state_error("cannot start '" + name_ + "' paused",
                       {DomainState::running, DomainState::paused});
  }
  return {};
}

Status Domain::request_shutdown() {
  if (virDomainShutdownFlags(dom_, VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) == 0) return {};
  Error e = last_error("cannot shut down '" + name_ + "'");
  // The test driver rejects the ACPI flag; its default shutdown is the closest equivalent.
  if (e.condition != Condition::unsupported && e.condition != Condition::invalid_argument) return e;
  if (virDomainShutdown(dom_) < 0) return last_error("cannot shut down '" + name_ + "'");
  return {};
}

Status Domain::destroy() {
  if (virDomainDestroy(dom_) < 0) {
    return state_error("cannot destroy '" + name_ + "'", {DomainState::shut_off});
  }
  return {};
}

Status Domain::undefine() {
  // A UEFI guest's variable store is the caller's file (DomainSpec::firmware.nvram): kept, as a
  // redefinition (a reimage) reuses it. Without KEEP_NVRAM libvirt refuses such a domain.
  if (virDomainUndefineFlags(
          dom_, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_KEEP_NVRAM) == 0)
    return {};
  Error e = last_error("cannot undefine '" + name_ + "'");
  if (e.condition != Condition::unsupported && e.condition != Condition::invalid_argument) return e;
  // Drivers that know no NVRAM (libvirt's test driver) refuse the flag.
  if (virDomainUndefineFlags(dom_, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE) == 0) return {};
  e = last_error("cannot undefine '" + name_ + "'");
  if (e.condition != Condition::unsupported && e.condition != Condition::invalid_argument) return e;
  if (virDomainUndefine(dom_) < 0) return last_error("cannot undefine '" + name_ + "'");
  return {};
}

Status Domain::suspend() {
  if (virDomainSuspend(dom_) < 0) {
    return state_error("cannot suspend '" + name_ + "'",
                       {DomainState::shut_off, DomainState::paused});
  }
  return {};
}

Status Domain::resume() {
  if (virDomainResume(dom_) < 0) {
    return state_error("cannot resume '" + name_ + "'",
                       {DomainState::shut_off, DomainState::running});
  }
  return {};
}

Result<DomainState> Domain::state() const {
  int st = 0, reason = 0;
  if (virDomainGetState(dom_, &st, &reason, 0) < 0)
    return last_error("cannot read state of '" + name_ + "'");
  switch (st) {
    case VIR_DOMAIN_NOSTATE:
      return DomainState::no_state;
    case VIR_DOMAIN_RUNNING:
      return DomainState::running;
    case VIR_DOMAIN_BLOCKED:
      return DomainState::blocked;
    case VIR_DOMAIN_PAUSED:
      return DomainState::paused;
    case VIR_DOMAIN_SHUTDOWN:
      return DomainState::shutting_down;
    case VIR_DOMAIN_SHUTOFF:
      return DomainState::shut_off;
    case VIR_DOMAIN_CRASHED:
      return DomainState::crashed;
    case VIR_DOMAIN_PMSUSPENDED:
      return DomainState::pm_suspended;
    default:
      return DomainState::unknown;
  }
}

Result<ShutdownResult> Domain::shutdown_ladder(const ShutdownOptions& options) {
  const auto t0 = Clock::now();
  auto since = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  };
  FL_ASSIGN_OR_RETURN(DomainState st, state());
  if (st == DomainState::shut_off) return ShutdownResult{StopMethod::already_off, since(), ""};

  uint64_t seq = conn_->last_event_seq();
  std::string note;
  if (auto s = request_shutdown(); !s.ok()) {
    note = "shutdown request failed (" + s.error().message + ")";
  } else {
    const auto deadline = t0 + options.timeout;
    auto last_request = t0;
    for (;;) {
      FL_ASSIGN_OR_RETURN(st, state());
      if (st == DomainState::shut_off) return ShutdownResult{StopMethod::graceful, since(), ""};
      auto now = Clock::now();
      if (now >= deadline) break;
      // A power button pressed before the guest watches its input device is lost (a guest in
      // early boot); pressing again costs nothing.
      if (now - last_request >= options.repress) {
        (void)request_shutdown();
        last_request = now;
      }
      auto wait = std::min<std::chrono::milliseconds>(
          options.poll, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) +
                            std::chrono::milliseconds(1));
      uint64_t before = seq;
      seq = conn_->last_event_seq();
      conn_->wait_for_event(uuid_, before, wait);
    }
    note = "no power-off within " + std::to_string(options.timeout.count()) + " ms";
  }
  if (auto s = destroy(); !s.ok()) {
    // It may have powered off between our last look and the destroy.
    auto again = state();
    if (again.ok() && *again == DomainState::shut_off) {
      return ShutdownResult{StopMethod::graceful, since(), ""};
    }
    return s.error();
  }
  return ShutdownResult{StopMethod::destroyed, since(), note};
}

Status Domain::managed_save() {
  if (virDomainManagedSave(dom_, 0) < 0) return last_error("cannot save '" + name_ + "'");
  return {};
}

Result<bool> Domain::has_managed_save() const {
  int r = virDomainHasManagedSaveImage(dom_, 0);
  if (r < 0) return last_error("cannot check managed save of '" + name_ + "'");
  return r == 1;
}

Status Domain::set_metadata(const InstanceMetadata& m) {
  int active = virDomainIsActive(dom_);
  if (active < 0) return last_error("cannot read state of '" + name_ + "'");
  unsigned flags =
      active ? (VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG) : VIR_DOMAIN_AFFECT_CONFIG;
  std::string xml = render_metadata_xml(m, false);
  if (virDomainSetMetadata(dom_, VIR_DOMAIN_METADATA_ELEMENT, xml.c_str(), kMetadataPrefix,
                           kMetadataNamespace, flags) < 0) {
    return last_error("cannot set metadata of '" + name_ + "'");
  }
  return {};
}

Result<InstanceMetadata> Domain::metadata() const {
  char* xml = virDomainGetMetadata(dom_, VIR_DOMAIN_METADATA_ELEMENT, kMetadataNamespace,
                                   VIR_DOMAIN_AFFECT_CURRENT);
  if (!xml) return last_error("metadata of '" + name_ + "'");
  std::string s(xml);
  free(xml);
  return parse_metadata_xml(s);
}

Result<std::string> Domain::xml(bool inactive) const {
  char* x = virDomainGetXMLDesc(dom_, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
  if (!x) return last_error("cannot read XML of '" + name_ + "'");
  std::string s(x);
  free(x);
  return s;
}

Result<BootImage> Domain::boot_image() const {
  FL_ASSIGN_OR_RETURN(std::string x, xml(true));
  return BootImage{os_element(x, "kernel"), os_element(x, "initrd"), os_element(x, "cmdline")};
}

Status Domain::set_boot_image(const BootImage& image) {
  DomainSpec probe;  // reuse the spec's path checks
  probe.name = "x";
  probe.boot = image;
  probe.os_disk = "/os-disk";  // whether there is one is checked on the definition below
  FL_RETURN_IF_ERROR(validate(probe));
  FL_ASSIGN_OR_RETURN(std::string x, xml(true));
  // Booting from the disk: libvirt's default boot order (<boot dev='hd'/>, which it adds itself
  // when there is no kernel) applies once the kernel is gone, but only with a disk to boot.
  if (image.kernel.empty() && x.find("<target dev='vda'") == std::string::npos) {
    return make_error(Condition::invalid_state,
                      "'" + name_ + "' has no OS disk (vda) to boot from; boot.kernel is required");
  }
  FL_RETURN_IF_ERROR(set_os_element(x, "kernel", image.kernel));
  FL_RETURN_IF_ERROR(set_os_element(x, "initrd", image.initrd));
  FL_RETURN_IF_ERROR(set_os_element(x, "cmdline", image.cmdline));
  virDomainPtr d = virDomainDefineXML(conn_->raw(), x.c_str());
  if (!d) return last_error("cannot set the boot image of '" + name_ + "'");
  virDomainFree(d);
  return {};
}

Status Domain::set_disk_source(const std::string& target_dev, const std::string& path) {
  return set_disk_source(target_dev, path, "");
}

Status Domain::set_disk_source(const std::string& target_dev, const std::string& path,
                               const std::string& format) {
  if (!valid_target_dev(target_dev)) {
    return make_error(Condition::invalid_argument,
                      "disk target must be 2..8 characters of [a-z0-9]: '" + target_dev + "'");
  }
  if (path.empty() || path[0] != '/' || path.size() > 4096 ||
      std::any_of(path.begin(), path.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20; })) {
    return make_error(
        Condition::invalid_argument,
        "disk source must be an absolute path of at most 4096 characters: '" + path + "'");
  }
  if (!format.empty() && format != "qcow2" && format != "raw") {
    return make_error(Condition::invalid_argument,
                      "disk format must be qcow2 or raw: '" + format + "'");
  }
  FL_ASSIGN_OR_RETURN(std::string x, xml(true));
  FL_RETURN_IF_ERROR(replace_disk_source(x, name_, target_dev, path, format));
  virDomainPtr d = virDomainDefineXML(conn_->raw(), x.c_str());
  if (!d) return last_error("cannot set disk " + target_dev + " of '" + name_ + "'");
  virDomainFree(d);
  return {};
}

}  // namespace fabriclab::hypervisor
