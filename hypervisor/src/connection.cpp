// Connections: opening any URI, the domain type, listing, and lifecycle events.
//
// Events: one libvirt lifecycle callback per connection feeds a `Hub` shared (via shared_ptr)
// between the Connection and libvirt's callback registration, so a callback that races with
// close never touches freed memory. The hub gives every event a sequence number, fans it out to
// subscribers, and wakes threads blocked in `wait_for_event` (the shutdown ladder). Events are
// hints; waiters re-query the domain.
//
// The embedded QEMU driver (qemu:///embed?root=DIR) needs the event loop running before open and
// reads DIR/etc/qemu.conf rather than /etc/libvirt. When that file is absent we write one that
// runs QEMU as the current user, without per-domain mount namespaces or cgroups (a lab machine
// without systemd has neither machined nor delegated cgroups, and the testbed owns every file the
// guests touch) and without virtlogd (a daemon nobody started).

#include "fabriclab/hypervisor/connection.hpp"

#include <grp.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>

#include "fabriclab/common/logging.hpp"
#include "libvirt_error.hpp"

namespace fabriclab::hypervisor {

using detail::last_error;

struct Connection::Hub {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t seq = 0;
  int next_id = 1;
  std::map<int, LifecycleHandler> handlers;
  std::deque<std::pair<uint64_t, std::string>> recent;  // (seq, uuid), bounded
};

namespace {

constexpr size_t kRecentEvents = 512;

LifecycleKind kind_of(int event) {
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
      return LifecycleKind::defined;
    case VIR_DOMAIN_EVENT_UNDEFINED:
      return LifecycleKind::undefined;
    case VIR_DOMAIN_EVENT_STARTED:
      return LifecycleKind::started;
    case VIR_DOMAIN_EVENT_SUSPENDED:
      return LifecycleKind::suspended;
    case VIR_DOMAIN_EVENT_RESUMED:
      return LifecycleKind::resumed;
    case VIR_DOMAIN_EVENT_STOPPED:
      return LifecycleKind::stopped;
    case VIR_DOMAIN_EVENT_SHUTDOWN:
      return LifecycleKind::shutdown;
    case VIR_DOMAIN_EVENT_PMSUSPENDED:
      return LifecycleKind::pm_suspended;
    case VIR_DOMAIN_EVENT_CRASHED:
      return LifecycleKind::crashed;
    default:
      return LifecycleKind::other;
  }
}

void publish(Connection::Hub& hub, virDomainPtr dom, LifecycleKind kind, int detail) {
  LifecycleEvent ev;
  const char* name = virDomainGetName(dom);
  ev.domain = name ? name : "";
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  if (virDomainGetUUIDString(dom, uuid) == 0) ev.uuid = uuid;
  ev.kind = kind;
  ev.detail = detail;
  ev.at = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(hub.mu);
    ev.seq = ++hub.seq;
    hub.recent.emplace_back(ev.seq, ev.uuid);
    if (hub.recent.size() > kRecentEvents) hub.recent.pop_front();
    // Handlers run under the lock so that unsubscribe() guarantees no later call; they must
    // copy and return (documented in the header).
    for (auto& [id, handler] : hub.handlers) handler(ev);
  }
  hub.cv.notify_all();
}

int on_lifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  publish(**static_cast<std::shared_ptr<Connection::Hub>*>(opaque), dom, kind_of(event), detail);
  return 0;
}

void on_agent_lifecycle(virConnectPtr, virDomainPtr dom, int state, int reason, void* opaque) {
  LifecycleKind kind;
  switch (state) {
    case VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED:
      kind = LifecycleKind::agent_connected;
      break;
    case VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED:
      kind = LifecycleKind::agent_disconnected;
      break;
    default:
      return;  // a state newer than this code: nothing a subscriber could act on
  }
  publish(**static_cast<std::shared_ptr<Connection::Hub>*>(opaque), dom, kind, reason);
}

void delete_hub_ref(void* p) { delete static_cast<std::shared_ptr<Connection::Hub>*>(p); }

std::string query_param(const std::string& uri, const std::string& key) {
  auto q = uri.find('?');
  if (q == std::string::npos) return {};
  std::string rest = uri.substr(q + 1);
  size_t pos = 0;
  while (pos <= rest.size()) {
    size_t amp = rest.find('&', pos);
    std::string kv = rest.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    if (kv.rfind(key + "=", 0) == 0) return kv.substr(key.size() + 1);
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return {};
}

Status prepare_embed_root(const std::string& root) {
  namespace fs = std::filesystem;
  if (root.empty() || root[0] != '/') {
    return make_error(Condition::invalid_argument, "qemu:///embed needs an absolute root= path");
  }
  // QEMU's monitor socket lives several levels below the root; unix socket paths max out at 108.
  if (root.size() > 60) {
    return make_error(Condition::invalid_argument,
                      "embed root path too long for unix sockets (max 60 chars): " + root);
  }
  std::error_code ec;
  fs::create_directories(root + "/etc", ec);
  if (ec)
    return make_error(Condition::transient, "cannot create " + root + "/etc: " + ec.message());
  const std::string conf = root + "/etc/qemu.conf";
  if (fs::exists(conf)) return {};
  const passwd* pw = getpwuid(geteuid());
  const group* gr = getgrgid(getegid());
  std::ofstream out(conf);
  out << "# written by fabriclab: run QEMU as the agent's own user\n"
      << "user = \"" << (pw ? pw->pw_name : "root") << "\"\n"
      << "group = \"" << (gr ? gr->gr_name : "root") << "\"\n"
      << "namespaces = [ ]\n"
      << "cgroup_controllers = [ ]\n"
      // QEMU writes console logs itself: virtlogd is a daemon nobody started here.
      << "stdio_handler = \"file\"\n";
  if (!out) return make_error(Condition::transient, "cannot write " + conf);
  return {};
}

Status precheck_uri(const std::string& uri) {
  if (uri.empty()) return make_error(Condition::invalid_argument, "hypervisor URI is empty");
  if (uri.size() > 1024) return make_error(Condition::invalid_argument, "hypervisor URI too long");
  if (uri.find("://") == std::string::npos || uri.find("://") == 0) {
    return make_error(Condition::invalid_argument,
                      "hypervisor URI '" + uri + "' is not of the form driver:///path");
  }
  for (char c : uri) {
    if (static_cast<unsigned char>(c) < 0x20 || c == ' ') {
      return make_error(Condition::invalid_argument,
                        "hypervisor URI contains a space or control character");
    }
  }
  // An unknown scheme would otherwise be handed to a libvirtd that may not exist, and the user
  // would read "cannot connect socket" for a typo.
  const std::string scheme = uri.substr(0, uri.find("://"));
  static const char* kDrivers[] = {"test", "qemu", "lxc", "xen",    "libxl",  "vbox", "bhyve",
                                   "ch",   "esx",  "vpx", "hyperv", "openvz", "vz",   "remote"};
  bool known = scheme.find('+') != std::string::npos;  // driver+transport: a remote daemon
  for (const char* d : kDrivers) known = known || scheme == d;
  if (!known) {
    return make_error(Condition::unsupported, "unknown hypervisor driver '" + scheme +
                                                  "' in URI '" + uri + "' (use test, qemu, ...)");
  }
  if (uri.rfind("test:///", 0) == 0 && uri != "test:///default") {
    std::string path = uri.substr(7);
    if (!std::filesystem::exists(path)) {
      return make_error(Condition::not_found, "test driver node file not found: " + path);
    }
  }
  if (uri.rfind("qemu:///embed", 0) == 0) {
    FL_RETURN_IF_ERROR(prepare_embed_root(query_param(uri, "root")));
  }
  return {};
}

// /dev/kvm can exist where KVM cannot run a Linux guest (seen on a nested sandbox whose CPU flags
// lack vmx/svm: SeaBIOS runs, the kernel hangs). For a hypervisor on this machine we only trust
// kvm when the CPU also advertises hardware virtualization.
bool local_cpu_can_kvm() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    return line.find(" vmx") != std::string::npos || line.find(" svm") != std::string::npos;
  }
  return false;
}

}  // namespace

Result<std::unique_ptr<Connection>> Connection::open(const std::string& uri) {
  FL_RETURN_IF_ERROR(detail::ensure_event_loop());
  FL_RETURN_IF_ERROR(precheck_uri(uri));
  virConnectPtr c = virConnectOpen(uri.c_str());
  if (!c) return last_error("cannot open hypervisor '" + uri + "'");
  std::unique_ptr<Connection> conn(new Connection(uri, c));
  FL_RETURN_IF_ERROR(conn->init());
  return conn;
}

Connection::Connection(std::string uri, virConnectPtr conn)
    : uri_(std::move(uri)), conn_(conn), hub_(std::make_shared<Hub>()) {}

Status Connection::init() {
  FL_ASSIGN_OR_RETURN(std::string caps, capabilities_xml());
  const char* forced = std::getenv("FABRICLAB_DOMAIN_TYPE");
  if (caps.find("<domain type='test'") != std::string::npos) {
    domain_type_ = "test";
  } else if (forced && (std::string(forced) == "qemu" || std::string(forced) == "kvm")) {
    domain_type_ = forced;
  } else if (caps.find("<domain type='kvm'") != std::string::npos &&
             (uri_.rfind("qemu:///", 0) != 0 || local_cpu_can_kvm())) {
    domain_type_ = "kvm";
  } else {
    domain_type_ = "qemu";
  }
  auto* opaque = new std::shared_ptr<Hub>(hub_);
  callback_id_ = virConnectDomainEventRegisterAny(conn_, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                  VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), opaque,
                                                  delete_hub_ref);
  if (callback_id_ < 0) {
    delete opaque;
    return last_error("cannot register lifecycle events on '" + uri_ + "'");
  }
  // Agent events are a bonus: a driver without them still has guest_ping and the channel state.
  auto* agent_opaque = new std::shared_ptr<Hub>(hub_);
  agent_callback_id_ = virConnectDomainEventRegisterAny(
      conn_, nullptr, VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
      VIR_DOMAIN_EVENT_CALLBACK(on_agent_lifecycle), agent_opaque, delete_hub_ref);
  if (agent_callback_id_ < 0) {
    delete agent_opaque;
    logger("hypervisor")
        ->debug("no agent lifecycle events on {}: {}", uri_, last_error("register").message);
  }
  logger("hypervisor")->debug("opened {} (domain type {})", uri_, domain_type_);
  return {};
}

Connection::~Connection() {
  if (callback_id_ >= 0) virConnectDomainEventDeregisterAny(conn_, callback_id_);
  if (agent_callback_id_ >= 0) virConnectDomainEventDeregisterAny(conn_, agent_callback_id_);
  if (conn_) virConnectClose(conn_);
}

Result<std::string> Connection::capabilities_xml() {
  char* caps = virConnectGetCapabilities(conn_);
  if (!caps) return last_error("cannot read capabilities");
  std::string out(caps);
  free(caps);
  return out;
}

Result<Domain> Connection::define(const DomainSpec& spec) {
  FL_ASSIGN_OR_RETURN(std::string xml, render_domain_xml(spec, domain_type_));
  return define_xml(xml);
}

Result<Domain> Connection::define_xml(const std::string& xml) {
  if (xml.size() > 1024 * 1024)
    return make_error(Condition::invalid_argument, "domain XML larger than 1 MiB");
  virDomainPtr d = virDomainDefineXML(conn_, xml.c_str());
  if (!d) return last_error("cannot define domain");
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  virDomainGetUUIDString(d, uuid);
  const char* name = virDomainGetName(d);
  return Domain(this, d, name ? name : "", uuid);
}

Result<Domain> Connection::lookup(const std::string& name) {
  virDomainPtr d = virDomainLookupByName(conn_, name.c_str());
  if (!d) return last_error("domain '" + name + "'");
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  virDomainGetUUIDString(d, uuid);
  return Domain(this, d, name, uuid);
}

Result<std::vector<DomainInfo>> Connection::list() {
  virDomainPtr* doms = nullptr;
  int n = virConnectListAllDomains(conn_, &doms, 0);
  if (n < 0) return last_error("cannot list domains");
  std::vector<DomainInfo> out;
  for (int i = 0; i < n; ++i) {
    Domain d(this, doms[i], virDomainGetName(doms[i]), "");
    char uuid[VIR_UUID_STRING_BUFLEN] = {};
    virDomainGetUUIDString(doms[i], uuid);
    DomainInfo info;
    info.name = d.name();
    info.uuid = uuid;
    auto st = d.state();
    info.state = st.ok() ? *st : DomainState::unknown;
    info.persistent = virDomainIsPersistent(doms[i]) == 1;
    auto ms = d.has_managed_save();
    info.has_managed_save = ms.ok() && *ms;
    out.push_back(std::move(info));
  }
  free(doms);
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.name < b.name; });
  return out;
}

int Connection::subscribe(LifecycleHandler handler) {
  std::lock_guard lock(hub_->mu);
  int id = hub_->next_id++;
  hub_->handlers.emplace(id, std::move(handler));
  return id;
}

void Connection::unsubscribe(int id) {
  std::lock_guard lock(hub_->mu);
  hub_->handlers.erase(id);
}

uint64_t Connection::last_event_seq() const {
  std::lock_guard lock(hub_->mu);
  return hub_->seq;
}

bool Connection::wait_for_event(const std::string& uuid, uint64_t after_seq,
                                std::chrono::milliseconds max_wait) {
  std::unique_lock lock(hub_->mu);
  return hub_->cv.wait_for(lock, max_wait, [&] {
    for (auto it = hub_->recent.rbegin(); it != hub_->recent.rend() && it->first > after_seq;
         ++it) {
      if (it->second == uuid) return true;
    }
    return false;
  });
}

std::string_view to_string(DomainState s) {
  switch (s) {
    case DomainState::no_state:
      return "no_state";
    case DomainState::running:
      return "running";
    case DomainState::blocked:
      return "blocked";
    case DomainState::paused:
      return "paused";
    case DomainState::shutting_down:
      return "shutting_down";
    case DomainState::shut_off:
      return "shut_off";
    case DomainState::crashed:
      return "crashed";
    case DomainState::pm_suspended:
      return "pm_suspended";
    case DomainState::unknown:
      return "unknown";
  }
  return "unknown";
}

std::string_view to_string(LifecycleKind k) {
  switch (k) {
    case LifecycleKind::defined:
      return "defined";
    case LifecycleKind::undefined:
      return "undefined";
    case LifecycleKind::started:
      return "started";
    case LifecycleKind::suspended:
      return "suspended";
    case LifecycleKind::resumed:
      return "resumed";
    case LifecycleKind::stopped:
      return "stopped";
    case LifecycleKind::shutdown:
      return "shutdown";
    case LifecycleKind::pm_suspended:
      return "pm_suspended";
    case LifecycleKind::crashed:
      return "crashed";
    case LifecycleKind::other:
      return "other";
    case LifecycleKind::agent_connected:
      return "agent-connected";
    case LifecycleKind::agent_disconnected:
      return "agent-disconnected";
  }
  return "other";
}

Result<std::string> write_test_node(const std::string& dir, uint64_t memory_kib) {
  const std::string path = dir + "/node.xml";
  std::ofstream out(path, std::ios::trunc);
  out << "<node><cpu><mhz>2000</mhz></cpu><memory>" << memory_kib << "</memory></node>\n";
  out.close();
  if (!out) return make_error(Condition::transient, "cannot write " + path);
  return "test://" + path;
}

std::string_view to_string(StopMethod m) {
  switch (m) {
    case StopMethod::graceful:
      return "graceful";
    case StopMethod::destroyed:
      return "destroyed";
    case StopMethod::already_off:
      return "already_off";
  }
  return "graceful";
}

}  // namespace fabriclab::hypervisor
