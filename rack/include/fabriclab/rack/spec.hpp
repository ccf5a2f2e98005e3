#pragma once
// A drill spec: the rack, the services, the update, the policies and the faults to inject.
// YAML (testbed/specs/*.yaml); every key is checked, unknown keys are refused, and errors name
// the key path ("services[1].instances must be an integer in 1..100").
//
//   rack:     {hosts: 6, fault_domains: 3, capacity: 4}
//   hypervisor: qemu | test          (test: libvirt's test driver, simulated guests)
//   services: [{name: web, instances: 2, ud_count: 5, image: v1, memory_mib: 128,
//               endpoint: {port: 80, probe: {path: /health, interval_s: 5,
//                                            unhealthy_threshold: 2}},
//               drain: true, traffic: {rps: 20}}, ...]
//             endpoint: the service sits behind the rack's load balancer on a VIP, probed as
//             Azure's load balancer probes (defaults as Azure's: /health, 5 s, 2); the probe's
//             interval is time-scaled like every wait, but never below kMinProbeIntervalMs.
//             drain: the app drains on a scheduled event before it approves it (default true).
//             traffic.rps: client requests per second to the VIP during a drill (default 20).
//             data_check: {command: [/bin/cat, /data/counter], rule: equal | not_less}: run in
//             every guest through its guest agent before the notice and after the restart; the
//             report shows both outputs and whether the rule held (default rule not_less).
//             command: 1..16 strings of 1..256 characters, no NUL or newline, the first an
//             absolute path (no shell runs it).
//   update:   {kind: host-os | guest-os | freeze, target: host-v2}
//   updates:  [{kind: host-os, target: host-v2}, {kind: guest-os, target: v2}]  (1..4; instead
//             of update: each runs as its own drill, one after the other on the same rack,
//             stopping at the first that does not pass)
//   policies: {max_parallel_hosts: 0, time_scale: 0.001, recovery_s: 1800, notice_s: 900,
//              healthy_timeout_s: 600, freeze_s: 5}
//   faults:   [{kind: kill-agent, target: {host: h1}, at: {batch: 2, step: SwappingImage},
//              duration_s: 5000}, ...]   (fault_spec.hpp, docs/faults.md; local racks only)

#include <optional>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/fault_spec.hpp"

namespace fabriclab::rack {

// The floor of a time-scaled probe interval: what HAProxy and TCG guests can honour.
inline constexpr int kMinProbeIntervalMs = 200;

struct EndpointSpec {
  int port = 80;
  std::string probe_path = "/health";
  double probe_interval_s = 5;  // Azure's default
  int unhealthy_threshold = 2;  // Azure's default
};

inline constexpr size_t kMaxDataCheckArgs = 16;
inline constexpr size_t kMaxDataCheckArgBytes = 256;
struct DataCheckSpec {
  std::vector<std::string> command;
  std::string rule = "not_less";  // equal | not_less
};

struct ServiceSpec {
  std::string name;
  int instances = 1;
  int ud_count = 5;
  std::string image = "v1";
  int memory_mib = 128;
  std::optional<EndpointSpec> endpoint;
  bool drain = true;
  double traffic_rps = 20;
  std::optional<DataCheckSpec> data_check;
};

// The probe interval a drill uses: interval_s * time_scale, never below kMinProbeIntervalMs.
int scaled_probe_interval_ms(const EndpointSpec& e, double time_scale);

// The POST /v1/services body of a service (the orchestrator's wire form: the probe interval
// already time-scaled, in ms).
json::object service_body(const ServiceSpec& s, double time_scale);

inline constexpr size_t kMaxUpdates = 4;
struct UpdateSpec {
  std::string kind = "host-os";  // host-os | guest-os | freeze
  std::string target = "host-v2";
};

struct DrillFileSpec {
  std::string name = "default";
  int hosts = 6;
  int fault_domains = 3;
  int capacity = 4;
  std::string hypervisor = "qemu";
  std::vector<ServiceSpec> services;
  // The update a drill runs: the spec's only one, or (see for_update) one of `updates`.
  std::string kind = "host-os";
  std::string target = "host-v2";
  std::vector<UpdateSpec> updates = {UpdateSpec{}};  // every update, in order (1..kMaxUpdates)
  int max_parallel_hosts = 0;
  double time_scale = 0.001;
  double recovery_s = 1800;
  double notice_s = 900;
  double healthy_timeout_s = 600;
  double freeze_s = 5;
  std::vector<FaultSpec> faults;
};

// The default drill (host-os.yaml): 6 hosts in 3 FDs, hello (1), web (2), worker (3), 5 UDs each,
// host-os to host-v2, time compressed 1000x.
DrillFileSpec default_spec();

// The spec as its update `k` (0-based, < updates.size()) runs: kind and target of updates[k];
// faults only with the first (they are injected around the first walk).
DrillFileSpec for_update(const DrillFileSpec& spec, size_t k);

Result<DrillFileSpec> load_spec(const std::string& path);
Result<DrillFileSpec> parse_spec(const std::string& yaml_text, const std::string& what = "spec");

}  // namespace fabriclab::rack
