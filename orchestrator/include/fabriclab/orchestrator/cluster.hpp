#pragma once
// The cluster the orchestrator owns, as plain data: hosts (one agent each), services (availability
// sets) and their instances (guest VMs). Placement (placement.hpp) fills it and the planner
// (planner.hpp) reads it; nothing here does I/O.
//
// JSON: every entity has `to_json` and a `*_from_json` that treats its input as untrusted (types,
// ranges, string lengths, list sizes, unknown fields) and names the offending field, e.g.
// "hosts[3]: field 'fault_domain' must be an integer in 0..999".

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::orchestrator {

// Limits shared by the model, its JSON readers, placement and the planner.
inline constexpr int kMaxUdCount = 20;  // upgradeDomainCount: 1..20, default 5
inline constexpr int kDefaultUdCount = 5;
inline constexpr int kMaxFaultDomain = 999;    // fault domains are 0..999
inline constexpr int kMaxHostCapacity = 1000;  // instances per host
inline constexpr int kMaxInstancesPerService = 10000;
inline constexpr size_t kMaxHosts = 10000;
inline constexpr size_t kMaxServices = 10000;
inline constexpr size_t kMaxInstances = 200000;
inline constexpr size_t kMaxNameBytes = 64;  // host ids, service names, images

// Host states as the agents report them (docs/state-machines.md); the Updating sub-steps are
// the agent's business. Only Ready hosts receive new instances. Two are the orchestrator's own:
// Fenced (silent, and its power control confirmed it off) and Reconciling (back after a silence:
// the instances it still runs that were placed elsewhere meanwhile are being removed).
enum class HostState { ready, updating, unhealthy, offline, fenced, reconciling };
// "Ready", "Updating", "Unhealthy", "Offline", "Fenced", "Reconciling"
std::string_view to_string(HostState s);
Result<HostState> parse_host_state(std::string_view s, std::string_view field = "state");

// A host: one agent, in one fault domain (≈ a rack), holding up to `capacity` instances.
// `ud_slot` is the batch of the walk this host belongs to when the allocator placed its
// instances (see placement.hpp); empty for a host the allocator has not used, or whose instances
// came from elsewhere (imported, or an older layout).
struct Host {
  std::string id;
  int fault_domain = 0;
  int capacity = 0;
  HostState state = HostState::ready;
  std::optional<int> ud_slot;
};

// A service's load-balancer probe (Azure's health probe): `GET path` on each instance every
// `interval_ms` (already time-scaled by the client; at least kMinProbeIntervalMs), out of rotation
// after `unhealthy_threshold` failures in a row (at least kMinProbeDetectionMs of them), back
// after one success.
inline constexpr int kMinProbeIntervalMs = 200;
inline constexpr int kMaxProbeIntervalMs = 600000;
inline constexpr int kMaxUnhealthyThreshold = 10;
// The shortest run of failed checks that takes an instance out of rotation. A healthy guest under
// TCG on a loaded machine stalls now and then for about half a second; at a time-scaled 200 ms
// interval two failed checks (0.4 s) took such a guest out while its peer was legitimately out
// for maintenance, leaving the service no server (docs/clients.md "Load balancer").
inline constexpr int kMinProbeDetectionMs = 1000;

// The failures in a row that take an instance out: `unhealthy_threshold`, raised so that they
// span at least kMinProbeDetectionMs. The load balancer's `fall` and every computation that
// assumes how fast it notices (drain, notice, the report) use this one value.
constexpr int effective_unhealthy_threshold(int interval_ms, int unhealthy_threshold) {
  const int interval = interval_ms > 0 ? interval_ms : 1;
  const int floor = (kMinProbeDetectionMs + interval - 1) / interval;
  return unhealthy_threshold > floor ? unhealthy_threshold : floor;
}
inline constexpr size_t kMaxProbePathBytes = 256;
struct Probe {
  std::string path = "/health";
  int interval_ms = 5000;       // Azure's default: 5 s
  int unhealthy_threshold = 2;  // Azure's default: 2
  // The failures in a row the load balancer waits for (effective_unhealthy_threshold).
  int effective_threshold() const {
    return effective_unhealthy_threshold(interval_ms, unhealthy_threshold);
  }
  // How long the load balancer takes to notice a failing instance: interval x that count.
  int64_t detection_ms() const { return int64_t{interval_ms} * effective_threshold(); }
  bool operator==(const Probe&) const = default;
};

// A service's load-balanced endpoint: a VIP (assigned by the orchestrator) on `port`, spread over
// the instances' HTTP port 80 (docs/clients.md "Load balancer").
struct ServiceEndpoint {
  uint16_t port = 80;
  Probe probe;
  bool operator==(const ServiceEndpoint&) const = default;
};

// Proof that a service's data survived (docs/report.md): `command` (argv, no shell) runs in every
// guest through its guest agent (guest-exec) before the scheduled event's notice and after the
// restart; the report compares the two outputs by `rule`: "equal" (the same text) or "not_less"
// (both numbers, the second >= the first). Limits: 1..kMaxDataCheckArgs strings, each
// 1..kMaxDataCheckArgBytes bytes without NUL or newline, argv[0] an absolute path.
inline constexpr size_t kMaxDataCheckArgs = 16;
inline constexpr size_t kMaxDataCheckArgBytes = 256;
struct DataCheck {
  std::vector<std::string> command;
  std::string rule = "not_less";  // "equal" | "not_less"
  bool operator==(const DataCheck&) const = default;
};

// A service (availability set): `instance_count` guest VMs spread over `ud_count` update domains
// and over as many fault domains as exist.
//
// With an `endpoint`, its instances are the backends of a load-balanced VIP, clients send
// `traffic_rps` requests a second to it during a drill, and `drain` says whether its app leaves
// rotation on a scheduled event (the built-in guest turns /health to 503 for drain_ms()).
// With a `data_check`, every instance proves its data survived each update (DataCheck).
struct Service {
  std::string name;
  int instance_count = 1;
  int ud_count = kDefaultUdCount;
  std::string image;
  uint32_t memory_mib = 256;
  std::optional<ServiceEndpoint> endpoint;
  bool drain = true;
  double traffic_rps = 20;  // 0.1..1000
  std::string vip;          // dotted IPv4, assigned by the orchestrator ("" until then)
  std::optional<DataCheck> data_check;

  // How long a draining instance stays out of rotation before it approves its event:
  // interval x threshold + one interval (so the load balancer has noticed); 0 without endpoint.
  int64_t drain_ms() const {
    return endpoint ? endpoint->probe.detection_ms() + endpoint->probe.interval_ms : 0;
  }
};

// Names the load balancer uses as HAProxy identifiers (services with an endpoint, and so their
// instances): letters, digits, '-', '_' and '.'.
bool is_lb_name(std::string_view name);
// A probe path HAProxy's configuration can carry as it is: '/' then at most kMaxProbePathBytes
// printable ASCII characters, no space, quote or backslash.
bool is_probe_path(std::string_view p);
// A dotted IPv4 address ("198.18.1.10"): four decimal octets, no leading zeros.
bool is_ipv4(std::string_view text);

// One role instance (guest VM): instance `index` of `service`, in update domain `ud` and fault
// domain `fd` (the fault domain of `host`).
struct Instance {
  std::string service;
  int index = 0;
  int ud = 0;
  int fd = 0;
  std::string host;
};

// The whole cluster. Lookups are linear scans or built on demand: the cluster is at most a few
// thousand hosts and the callers (placement, planner) build their own indexes once per call.
struct Cluster {
  std::vector<Host> hosts;
  std::vector<Service> services;
  std::vector<Instance> instances;

  const Host* find_host(std::string_view id) const;
  Host* find_host(std::string_view id);
  const Service* find_service(std::string_view name) const;
  const Instance* find_instance(std::string_view service, int index) const;

  // Instances per host id (hosts without instances are absent).
  std::unordered_map<std::string, int> instance_counts() const;
  std::vector<const Instance*> instances_of(std::string_view service) const;
  std::vector<const Instance*> instances_on(std::string_view host) const;
  // The distinct fault domains of all hosts, ascending.
  std::vector<int> fault_domains() const;
};

// Checks that the cluster is self-consistent: unique host ids, service names and (service, index)
// pairs; every instance names a known service and host, its `ud` is below the service's ud_count
// and its `fd` is its host's fault domain; no host is over capacity; and no host holds two
// different UDs of one service (the placement rule; such a cluster has no valid walk).
// invalid_argument for references and ranges, invalid_state for the placement rules.
Status validate_cluster(const Cluster& c);

json::object to_json(const Host& h);
json::object to_json(const ServiceEndpoint& e);
json::object to_json(const DataCheck& c);  // {"command": [...], "rule"}: the agent's wire form too
json::object to_json(const Service& s);
json::object to_json(const Instance& i);
json::object to_json(const Cluster& c);

Result<Host> host_from_json(const json::object& o);
// {"port": 1..65535, "probe": {"path", "interval_ms", "unhealthy_threshold"}} (probe and its
// fields optional: /health, 5000, 2). Errors name the key in full: "endpoint.probe.path ...".
Result<ServiceEndpoint> endpoint_from_json(const json::object& o);
// {"command": [...], "rule": "equal" | "not_less" (default not_less)} with DataCheck's limits.
// Errors name the key in full: "data_check.command[0] must be an absolute path".
Result<DataCheck> data_check_from_json(const json::object& o);
// Also reads the optional "data_check", "endpoint", "drain" (default true), "traffic_rps"
// (0.1..1000, default 20) and "vip" (dotted IPv4; the orchestrator assigns it and refuses one in a
// request).
Result<Service> service_from_json(const json::object& o);
Result<Instance> instance_from_json(const json::object& o);
// Reads {"hosts": [...], "services": [...], "instances": [...]} (each optional) and then runs
// validate_cluster. Errors carry the path: "instances[12]: field 'ud' must be ...".
Result<Cluster> cluster_from_json(const json::object& o);

}  // namespace fabriclab::orchestrator
