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

enum class DomainState {
  no_state,
  running,
  blocked,
  paused,
  shutting_down,
  shut_off,
  crashed,
  pm_suspended,
  unknown
};
std::string_view to_string(DomainState s);

// agent_connected / agent_disconnected come from libvirt's agent lifecycle event: the guest
// opened / closed the qemu-guest-agent port (the agent started / stopped, or the guest booted /
// went down). Drivers without that event (the test driver) never deliver them.
enum class LifecycleKind {
  defined,
  undefined,
  started,
  suspended,
  resumed,
  stopped,
  shutdown,
  pm_suspended,
  crashed,
  other,
  agent_connected,
  agent_disconnected
};
// "started", ..., "agent-connected", "agent-disconnected".
std::string_view to_string(LifecycleKind k);

// A libvirt lifecycle event as a plain value. Events are hints: they arrive late and may be
// coalesced; reconcile by querying the domain. For agent events `detail` is libvirt's reason
// (1: the domain started, 2: the channel changed state).
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

// What a command run through the guest agent (guest-exec) did.
struct GuestExecResult {
  int exit_code = -1;      // the exit status; 128 + signal when a signal killed it
  std::string out, err;    // captured stdout / stderr, each at most kGuestExecOutputCap bytes
  bool truncated = false;  // out or err was cut (by us at the cap, or by the guest agent)
  int signal = 0;          // the signal that killed it; 0 when it exited
};

// Limits of Domain::guest_exec.
inline constexpr size_t kGuestExecOutputCap = 64 * 1024;
inline constexpr size_t kGuestExecMaxArgs = 64;
inline constexpr size_t kGuestExecMaxArgBytes = 4096;

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
  // Replaces the source of disk `target_dev` (e.g. "vda") in the persistent definition, keeping
  // its driver type (an OS disk overlay stays qcow2); a recorded backing chain is dropped (libvirt
  // reads the new file's own). With `format` ("qcow2" | "raw") the driver type becomes that.
  Status set_disk_source(const std::string& target_dev, const std::string& path);
  Status set_disk_source(const std::string& target_dev, const std::string& path,
                         const std::string& format);

  // --- The qemu-guest-agent (DomainSpec::guest_agent). These block for up to `timeout` (libvirt
  // counts whole seconds: rounded up, at least 1 s); run them off any event loop. Conditions:
  //   transient       the agent is not connected (no agent running in the guest, or the guest
  //                   is still booting or going down); the message says "not connected"
  //   timeout         the agent is connected but did not answer in time
  //   unsupported     the domain has no guest agent channel
  //   invalid_state   the domain is not running
  //   invalid_argument  a bad request, or the agent refused the command (its reason quoted)
  // A reply that is not a JSON object with "return" is an internal error naming the command.

  // Raw guest-agent command (virDomainQemuAgentCommand). `command_json` is one QMP-style object
  // ({"execute": "guest-ping"}); returns the reply JSON text.
  Result<std::string> agent_command(const std::string& command_json,
                                    std::chrono::milliseconds timeout);
  // guest-ping: ok when the agent answers.
  Status guest_ping(std::chrono::milliseconds timeout);
  // The channel's state from the live XML (<target ... state='connected'/>): true when the
  // guest agent is connected; false when disconnected, not running, or there is no such channel.
  Result<bool> guest_agent_connected() const;
  // guest-exec with captured output, then guest-exec-status polled until the process exited or
  // `timeout` passed (a timeout error; the process may still run in the guest). argv[0] is an
  // absolute path in the guest; argv has 1..kGuestExecMaxArgs entries of at most
  // kGuestExecMaxArgBytes bytes, without NUL. A non-zero exit is a result, not an error.
  Result<GuestExecResult> guest_exec(const std::vector<std::string>& argv,
                                     std::chrono::milliseconds timeout);
  // The guest's /proc/sys/kernel/random/boot_id (a lower-case 36-character UUID, checked); it
  // changes at every boot, so two reads tell a reboot from a memory-preserving pause.
  Result<std::string> guest_boot_id(std::chrono::milliseconds timeout);

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
  int agent_callback_id_ = -1;  // -1 where the driver has no agent lifecycle event
};

// A simulated host of its own on libvirt's test driver: writes DIR/node.xml (a 2 GHz host with
// `memory_kib` KiB of memory; guests are counted against it) and returns the URI that opens it,
// "test://DIR/node.xml". test:///default, by contrast, is one host every connection shares.
Result<std::string> write_test_node(const std::string& dir, uint64_t memory_kib = 8 << 20);

}  // namespace fabriclab::hypervisor
