#pragma once
// The hypervisor layer: the only code that talks to libvirt. Synchronous and Asio-free; callers
// that must not block run these calls on a worker thread.
//
// Every libvirt failure is captured at the call site (libvirt's errors are thread-local) into an
// `Error` with a `Condition` and libvirt's own message. libvirt never prints to stderr.
//
// Handles are RAII: a `Domain` owns one reference to a virDomain and may outlive nothing but its
// `Connection` (keep the Connection alive while Domains exist). Across reconnects keep names or
// UUIDs, never Domain objects.

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "fabriclab/common/result.hpp"
#include "fabriclab/hypervisor/domain_spec.hpp"

struct _virConnect;
struct _virDomain;

namespace fabriclab::hypervisor {

enum class DomainState { no_state, running, blocked, paused, shutting_down, shut_off, crashed,
                         pm_suspended, unknown };
std::string_view to_string(DomainState s);

enum class LifecycleKind { defined, undefined, started, suspended, resumed, stopped, shutdown,
                           pm_suspended, crashed, other };
std::string_view to_string(LifecycleKind k);

// A libvirt lifecycle event as a plain value. Events are hints: they arrive late and may be
// coalesced; reconcile by querying the domain.
struct LifecycleEvent {
  uint64_t seq = 0;  // strictly increasing per connection
  std::string domain;
  std::string uuid;
  LifecycleKind kind = LifecycleKind::other;
  int detail = 0;  // libvirt's detail code for the kind
  std::chrono::steady_clock::time_point at;
};

// Called on the libvirt event-loop thread: copy what you need and return; never block.
using LifecycleHandler = std::function<void(const LifecycleEvent&)>;

struct DomainInfo {
  std::string name;
  std::string uuid;
  DomainState state = DomainState::unknown;
  bool persistent = false;
  bool has_managed_save = false;
};

enum class StopMethod { graceful, destroyed, already_off };
std::string_view to_string(StopMethod m);

struct ShutdownOptions {
  std::chrono::milliseconds timeout{10000};  // graceful window before destroy
  std::chrono::milliseconds poll{250};       // state poll while waiting (events wake it earlier)
  std::chrono::milliseconds repress{3000};   // press the power button again after this long
};

struct ShutdownResult {
  StopMethod method = StopMethod::graceful;
  std::chrono::milliseconds elapsed{0};  // from the request to the domain being off
  std::string note;                      // why it was destroyed, when it was
};

class Connection;

class Domain {
 public:
  Domain(Domain&&) noexcept;
  Domain& operator=(Domain&&) noexcept;
  Domain(const Domain&) = delete;
  Domain& operator=(const Domain&) = delete;
  ~Domain();

  const std::string& name() const { return name_; }
  const std::string& uuid() const { return uuid_; }

  Status start();
  // Starts the domain paused (to attach to its channel before the guest runs).
  Status start_paused();
  // Sends the ACPI power button (falls back to the driver's default shutdown where the driver
  // rejects the ACPI flag, as the test driver does). Returns when the request is sent.
  Status request_shutdown();
  Status destroy();
  Status undefine();  // also drops a managed save image
  Status suspend();
  Status resume();
  Result<DomainState> state() const;

  // The shutdown ladder: request_shutdown, wait (lifecycle event or poll) up to options.timeout,
  // then destroy. Reports how it ended and how long it took.
  Result<ShutdownResult> shutdown_ladder(const ShutdownOptions& options);

  // Memory-preserving pause: save the running guest to disk and stop it; start() restores it.
  Status managed_save();
  Result<bool> has_managed_save() const;

  // Instance metadata. Running domain: LIVE|CONFIG so it survives a reboot; inactive: CONFIG.
  Status set_metadata(const InstanceMetadata& m);
  // not_found when the domain carries no metadata.
  Result<InstanceMetadata> metadata() const;

  // Sets kernel/initrd/cmdline for the NEXT boot (the persistent definition); the running guest
  // is not touched.
  Status set_boot_image(const BootImage& image);
  // Current persistent boot image.
  Result<BootImage> boot_image() const;
  // Replaces the source of disk `target_dev` (e.g. "vda") in the persistent definition.
  Status set_disk_source(const std::string& target_dev, const std::string& path);

  // The domain XML (inactive = the persistent definition), for debugging.
  Result<std::string> xml(bool inactive = false) const;

 private:
  friend class Connection;
  Domain(Connection* conn, _virDomain* dom, std::string name, std::string uuid);
  Error state_error(const std::string& what, std::initializer_list<DomainState> wrong) const;

  Connection* conn_ = nullptr;
  _virDomain* dom_ = nullptr;
  std::string name_;
  std::string uuid_;
};

class Connection {
 public:
  // Opens any libvirt URI: test:///ABS/node.xml, qemu:///embed?root=DIR, qemu:///system,
  // remote URIs. Starts the event-loop thread first. For an embedded root it creates the root
  // and, when absent, a qemu.conf that runs QEMU as the current user.
  static Result<std::unique_ptr<Connection>> open(const std::string& uri);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const std::string& uri() const { return uri_; }
  // "kvm" where the capabilities offer it and it works, else "qemu"; "test" on the test driver.
  const std::string& domain_type() const { return domain_type_; }

  Result<Domain> define(const DomainSpec& spec);
  Result<Domain> define_xml(const std::string& xml);
  Result<Domain> lookup(const std::string& name);
  Result<std::vector<DomainInfo>> list();

  // Lifecycle events of every domain of this connection. Returns a subscription id.
  int subscribe(LifecycleHandler handler);
  void unsubscribe(int id);

  // Waits until an event arrives for `uuid` or `max_wait` passes (events are hints: the caller
  // re-queries). Returns true when an event arrived.
  bool wait_for_event(const std::string& uuid, uint64_t after_seq,
                      std::chrono::milliseconds max_wait);
  uint64_t last_event_seq() const;

  Result<std::string> capabilities_xml();
  _virConnect* raw() const { return conn_; }

  struct Hub;  // implementation detail: event fan-out shared with libvirt's callback

 private:
  Connection(std::string uri, _virConnect* conn);
  Status init();

  std::string uri_;
  _virConnect* conn_ = nullptr;
  std::string domain_type_ = "qemu";
  std::shared_ptr<Hub> hub_;
  int callback_id_ = -1;
};

}  // namespace fabriclab::hypervisor
