#pragma once
// The load balancer (docs/clients.md "Load balancer"): HAProxy in the rack namespace, one
// frontend per service with an endpoint, the service's instances as its backends, driven by the
// orchestrator through HAProxy's master CLI socket.
//
// Two layers:
//   - Pure (fabriclab::orchestrator, no I/O): `render_haproxy_config` turns the wanted services
//     into a whole configuration file, and the parsers read what the master CLI answers
//     (`show stat`, `show proc`). The rack launcher calls the renderer with no services to write
//     the bootstrap configuration HAProxy starts with, so it must stay usable without a running
//     controller.
//   - `LoadBalancer` (fabriclab::controller): applies a configuration (validate with
//     `haproxy -c`, write, carry server states over, reload through the master socket, confirm
//     the new worker) and reads the backends' check states.
//
// Azure's load balancer is the model: a probe per service (HTTP path, interval, unhealthy
// threshold); new connections only to healthy backends; a connection that fails is not retried
// on another backend; established connections continue (a reload leaves them on the old worker).

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "fabriclab/common/result.hpp"

namespace fabriclab::orchestrator {

// The port the built-in guest (and any guest app) serves HTTP on: every backend's port.
inline constexpr uint16_t kBackendPort = 80;

// One backend: an instance and its guest address.
struct LbBackend {
  std::string instance;  // HAProxy server name, sent back as X-Served-By; is_lb_name
  std::string address;   // dotted IPv4
  uint16_t port = kBackendPort;
};

// One service with an endpoint, as HAProxy serves it.
struct LbService {
  std::string name;  // is_lb_name; the proxies are fe_NAME and be_NAME
  std::string vip;   // dotted IPv4
  uint16_t port = 80;
  std::string probe_path = "/health";  // starts with '/', printable, no space/quotes/backslash
  int interval_ms = 5000;              // kMinProbeIntervalMs..kMaxProbeIntervalMs
  int unhealthy_threshold = 2;         // 1..kMaxUnhealthyThreshold
  std::vector<LbBackend> backends;
};

struct LbSettings {
  // The load balancer's own listener, always present, so HAProxy starts with no service and
  // the rack can tell it is up: GET / answers 200 "ok".
  std::string health_bind = "198.18.1.1:8404";
  // Where server states are carried over a reload (`server-state-file`); "" for none.
  std::string server_state_file;
  int hard_stop_after_ms = 30000;  // an old worker's connections get this long after a reload
  int maxconn = 4096;
};

// The settings the orchestrator uses with `--lb-config PATH` unless told otherwise: the state
// file beside the configuration (PATH.state). The rack renders its bootstrap file with the same
// settings, so the orchestrator's first render of "no services" matches it and needs no reload.
LbSettings lb_settings_for(std::string_view config_path);

// Checks one service: names, VIP and backend addresses, port, probe ranges and path. The error
// names the service and the field.
Status check_lb_service(const LbService& s);
// Checks the settings: health_bind is IPV4:PORT, the state file path has no quote, newline or
// control character.
Status check_lb_settings(const LbSettings& s);

// The whole HAProxy configuration. Per service: `frontend fe_NAME` bound to VIP:port,
// `backend be_NAME` with `option httpchk GET 'PATH'`, `http-check expect status 200`,
// `default-server inter I fall T rise 1`, one `server INSTANCE ADDRESS:80 check` per backend,
// `http-response set-header X-Served-By %s`, `retries 0` and no redispatch, connect/check
// timeouts derived from the interval, server states loaded from the state file. Services (and
// settings) that fail their check are left out with a comment, never rendered half-escaped; the
// output depends only on the input (same input, same text), so a caller can compare renders to
// skip a reload.
std::string render_haproxy_config(const std::vector<LbService>& services,
                                  const LbSettings& settings);

// One server's check state, from `show stat`.
struct LbServerState {
  std::string service;   // the backend's name without "be_"
  std::string instance;  // the server name
  std::string state;     // "UP" | "DOWN" | "MAINT"
  std::string check;     // e.g. "L7OK 200", "L7STS 503", "L4CON", "L4TOUT", "" (not checked yet)
  std::string detail;    // HAProxy's check description ("Layer4 connection problem", ...)
  bool operator==(const LbServerState&) const = default;

  // Serving: UP *and* its last check passed. HAProxy starts a new server UP before its first
  // check, so UP alone would call a guest whose app has not started yet serving.
  bool serving() const { return state == "UP" && passed_check(check); }
  static bool passed_check(const std::string& c) {
    return c.rfind("L7OK", 0) == 0 || c.rfind("L6OK", 0) == 0 || c.rfind("L4OK", 0) == 0;
  }
};

// Parses `show stat` CSV (columns found by the header line) into the servers of the be_*
// backends (FRONTEND/BACKEND rows and other proxies skipped). HAProxy's status maps as: "UP",
// "UP n/m" (going down), "no check", "NOLB" -> UP; "DOWN", "DOWN n/m" (going up) -> DOWN;
// "MAINT...", "DRAIN..." -> MAINT. An answer without the header is an error quoting its start.
Result<std::vector<LbServerState>> parse_haproxy_stat(std::string_view csv);

// The master CLI's `show proc`.
struct HaproxyProcs {
  int master_pid = 0;
  int reloads = 0;  // the master's reload count
  int failed = 0;   // of which failed (the new configuration did not start)
  struct Worker {
    int pid = 0;
    int reloads = 0;  // how many reloads this worker has survived (0: the current one)
  };
  std::vector<Worker> workers;      // "# workers"
  std::vector<Worker> old_workers;  // "# old workers" (finishing their connections)
};
Result<HaproxyProcs> parse_haproxy_show_proc(std::string_view text);

// ---- the live load balancer (fabriclab::controller) ----

struct LbOptions {
  std::string config_path;          // the file HAProxy was started with (-f)
  std::string master_socket;        // its master CLI socket (-S)
  std::string haproxy = "haproxy";  // binary for `haproxy -c`
  LbSettings settings;
  std::chrono::milliseconds socket_timeout{3000};   // one master CLI command
  std::chrono::milliseconds reload_timeout{15000};  // reload until the new worker runs
};

class LoadBalancer {
 public:
  // Checks the options (paths set, settings valid); does not contact HAProxy.
  static Result<std::unique_ptr<LoadBalancer>> create(LbOptions options);

  const LbOptions& options() const { return options_; }

  // Makes HAProxy serve `services`: render; when the text equals the file's, nothing more.
  // Else write it to a temporary file beside the configuration, `haproxy -c -f TMP` (its own
  // message in the error when it refuses), rename over the configuration, dump
  // `@1 show servers state` into the state file, `reload` through the master socket, and wait
  // (reload_timeout) until `show proc` shows a new worker. A reload HAProxy reports as failed
  // (e.g. a VIP it cannot bind) is an error; the old worker then keeps serving the old
  // configuration, and the file is put back. Serialized: one apply at a time.
  // Returns whether HAProxy was reloaded.
  Result<bool> apply(const std::vector<LbService>& services);

  // Every be_* server's check state (`@1 show stat`).
  Result<std::vector<LbServerState>> servers() const;

  // One command on the master CLI; the whole answer. Connection refused while the master
  // re-executes itself is retried until the socket timeout.
  Result<std::string> command(std::string_view cmd) const;

  // Reloads HAProxy so far (successful applies that changed the configuration).
  int reloads() const;

 private:
  explicit LoadBalancer(LbOptions options) : options_(std::move(options)) {}
  Status reload_and_confirm();

  LbOptions options_;
  mutable std::mutex mu_;
  int reloads_ = 0;
};

}  // namespace fabriclab::orchestrator
