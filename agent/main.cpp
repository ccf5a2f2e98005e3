// fabriclab-agent: the host agent daemon (the emulated Hyper-V host). Parses options (YAML config
// file, then flags), wires the agent, its API and its event feed, and (with --imds-listen) the
// Instance Metadata Service for its guests, and runs until SIGINT/SIGTERM.

#include <pthread.h>
#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <csignal>
#include <filesystem>
#include <iostream>

#include "fabriclab/agent/api.hpp"
#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/agent/imds.hpp"
#include "fabriclab/common/cli_range.hpp"
#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/logging.hpp"
#include "fabriclab/common/stop_signals.hpp"

using namespace fabriclab;

namespace {

// The config file is YAML with the long flag names as keys (host-id: h1, port: 7401, ...).
// Its values become flags placed before the command line's, so a flag given there wins.
Result<std::vector<std::string>> yaml_to_flags(const std::string& path) {
  std::vector<std::string> out;
  try {
    YAML::Node root = YAML::LoadFile(path);
    if (!root.IsMap())
      return make_error(Condition::invalid_argument, path + ": must be a mapping of option: value");
    for (const auto& kv : root) {
      const auto key = kv.first.as<std::string>();
      if (key == "config")
        return make_error(Condition::invalid_argument, path + ": 'config' cannot nest");
      if (!kv.second.IsScalar()) {
        return make_error(Condition::invalid_argument,
                          path + ": option '" + key + "' must be a scalar");
      }
      out.push_back("--" + key + "=" + kv.second.as<std::string>());
    }
  } catch (const YAML::Exception& e) {
    return make_error(Condition::invalid_argument, path + ": " + e.what());
  }
  return out;
}

// The daemon's flags: the agent's own options and what main wires around it.
struct Flags {
  agent::AgentOptions o;
  std::string config, listen = "127.0.0.1", control_token_file, read_token_file, log_level = "info";
  int port = 7400;
  int64_t hb_ms = 1000, stop_ms = 10000, boot_ms = 120000, boot_delay_ms = 0;
  bool json_logs = false;
  std::vector<std::string> lab_host_images;
  std::string imds_listen;
};

void add_options(CLI::App& app, Flags& f) {
  agent::AgentOptions& o = f.o;
  app.add_option("--config", f.config, "YAML config file (keys: the long option names; flags win)");
  app.add_option("--host-id", o.host_id, "This host's id")->capture_default_str();
  app.add_option("--fault-domain", o.fault_domain, "This host's fault domain")
      ->check(CLI::Range(0, 1000));
  app.add_option(
      "--hypervisor", o.hypervisor_uri,
      "libvirt URI (default qemu:///embed?root=STATE_DIR/hv; test:///ABS/node.xml simulates)");
  app.add_option("--state-dir", o.state_dir,
                 "State directory (absolute, short: sockets live in it)")
      ->required();
  app.add_option("--guest-images", o.guest_images_dirs,
                 "Guest image directory (manifest.json); repeat it for several (a version defined "
                 "in two is an error)")
      ->required();
  app.add_option("--host-images", o.host_images_dir,
                 "Host image store (default STATE_DIR/host-images)");
  app.add_option("--listen", f.listen, "Listen address (loopback unless told otherwise)")
      ->capture_default_str();
  app.add_option("--port", f.port, "Listen port (0: ephemeral, printed on stdout)")
      ->capture_default_str();
  app.add_option("--control-token-file", f.control_token_file,
                 "File holding the control bearer token")
      ->required();
  app.add_option("--read-token-file", f.read_token_file, "File holding the read-only bearer token");
  app.add_option("--capacity", o.capacity, "Instances this host holds")->capture_default_str();
  add_ranged_option(app, "--disk-reserve-mib", o.disk_reserve_mib,
                    "Refuse an instance that could leave less free in STATE_DIR's file system", 0,
                    1 << 24);
  app.add_option("--ovmf-code", o.ovmf_code,
                 "UEFI firmware code for firmware: efi images (read-only, shared)")
      ->capture_default_str();
  app.add_option("--ovmf-vars", o.ovmf_vars,
                 "UEFI variable store template; each firmware: efi instance gets a copy")
      ->capture_default_str();
  add_ranged_option(app, "--heartbeat-ms", f.hb_ms, "Guest heartbeat period", 10, 600000);
  add_ranged_option(app, "--healthy-periods", o.healthy_periods,
                    "Healthy = a heartbeat within this many periods", 1, 1000);
  add_ranged_option(app, "--stop-timeout-ms", f.stop_ms, "Graceful shutdown window before destroy",
                    0, 3600000);
  add_ranged_option(app, "--boot-timeout-ms", f.boot_ms,
                    "How long a guest may take to heartbeat after start", 100, 86400000);
  add_ranged_option(app, "--parallel-guests", o.parallel_guests,
                    "Guests an operation stops and starts at once (1: one after another)", 1, 64);
  app.add_option("--boot-delay-ms", f.boot_delay_ms, "Emulated host boot time during a host reboot")
      ->capture_default_str();
  app.add_option(
         "--lab-host-images", f.lab_host_images,
         "Lab convenience: write and stage synthetic host images with these versions at start "
         "(e.g. host-v1,host-v2)")
      ->delimiter(',');
  app.add_option(
      "--guest-bridge", o.guest_bridge,
      "Attach every guest's virtio NIC to this bridge (needs --guest-subnet; empty: no NIC)");
  app.add_option(
      "--guest-subnet", o.guest_subnet,
      "Guest addresses A.B.C.10-.250 and MACs 52:54:00:c6:C:K from this A.B.C.0/24; gateway .1");
  app.add_option("--dhcp-hosts-dir", o.dhcp_hosts_dir,
                 "Write one dnsmasq host file per instance here (NAME.conf: MAC,IP,NAME; needs "
                 "--guest-subnet)");
  app.add_option(
      "--imds-listen", f.imds_listen,
      "Serve the Instance Metadata Service at ADDR:PORT (169.254.169.254:80 in a rack; port 0: "
      "ephemeral); prints 'imds listening ADDR:PORT'");
  app.add_flag(
      "--hold-guests", o.hold_guests,
      "Start no stopped guest at start (a host back from a power loss waits for its orchestrator)");
  app.add_option("--log-level", f.log_level, "trace|debug|info|warn|error")->capture_default_str();
  app.add_flag("--json-logs", f.json_logs, "Log JSON lines");
  app.add_flag("--fault-injection", o.fault_injection,
               "Serve POST /v1/faults (guest-crash, guest-hang, slow-boot) for a test rack's fault "
               "schedule; never "
               "on a real host");
}

// The command line with every --config FILE expanded into flags placed before it (so a flag given
// on the command line wins), in the reverse order CLI11 takes them.
Result<std::vector<std::string>> expand_config(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string file;
    if (a == "--config" && i + 1 < argc)
      file = argv[++i];
    else if (a.rfind("--config=", 0) == 0)
      file = a.substr(9);
    else {
      args.push_back(a);
      continue;
    }
    FL_ASSIGN_OR_RETURN(auto flags, yaml_to_flags(file));
    args.insert(args.begin(), flags.begin(), flags.end());
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments in reverse order
  return args;
}

// --imds-listen ADDR:PORT, checked before anything starts.
Result<std::pair<std::string, int>> parse_imds_listen(const std::string& imds_listen) {
  std::string imds_addr;
  int imds_port = -1;
  auto colon = imds_listen.rfind(':');
  if (colon != std::string::npos && colon > 0 && colon + 1 < imds_listen.size() &&
      colon + 6 >= imds_listen.size() &&
      imds_listen.find_first_not_of("0123456789", colon + 1) == std::string::npos) {
    imds_port = std::stoi(imds_listen.substr(colon + 1));
    imds_addr = imds_listen.substr(0, colon);
  }
  if (imds_port < 0 || imds_port > 65535) {
    return make_error(Condition::invalid_argument,
                      "--imds-listen must be ADDR:PORT: '" + imds_listen + "'");
  }
  return std::pair{imds_addr, imds_port};
}

// Synthetic host images for a lab rack: written once into the state dir and staged; the first
// becomes the host's current image if it has none (a lab host "installed" with it). The error
// names the flag (and the version).
Status stage_lab_host_images(const agent::AgentOptions& o,
                             const std::vector<std::string>& versions) {
  std::string root = o.host_images_dir.empty() ? o.state_dir + "/host-images" : o.host_images_dir;
  std::error_code ec;
  std::filesystem::create_directories(o.state_dir, ec);
  auto store = agent::HostImageStore::open(root);
  if (!store.ok())
    return make_error(store.condition(), "--lab-host-images: " + store.error().describe());
  for (const auto& version : versions) {
    std::string file = o.state_dir + "/lab-host-image-" + version;
    auto sha = agent::write_synthetic_host_image(file, version);
    Status st = sha.ok() ? Status{} : Status(sha.error());
    if (st.ok()) {
      auto staged = store->stage(version, file, *sha);
      if (!staged.ok()) st = Status(staged.error());
    }
    if (!st.ok()) {
      return make_error(st.condition(),
                        "--lab-host-images " + version + ": " + st.error().describe());
    }
  }
  if (!store->current()) {
    auto act = store->activate(versions.front());
    if (!act.ok())
      return make_error(act.condition(), "--lab-host-images: " + act.error().describe());
  }
  return {};
}

// IMDS: a second server, open (guests hold no token), small bodies, known by source address.
Result<std::unique_ptr<http::Server>> start_imds(agent::HostAgent& agent, const std::string& addr,
                                                 int port, const std::string& host_id) {
  http::Limits imds_limits;
  imds_limits.max_body = 4096;
  imds_limits.max_header = 8 * 1024;
  imds_limits.max_json_depth = 4;
  imds_limits.read_timeout = std::chrono::seconds(10);
  auto imds = std::make_unique<http::Server>("imds", http::Tokens{}, imds_limits);
  agent::install_imds(*imds, agent);
  auto imds_bound = imds->start(addr, static_cast<uint16_t>(port), 1);
  if (!imds_bound.ok()) {
    return make_error(imds_bound.condition(), "--imds-listen: " + imds_bound.error().describe());
  }
  std::cout << "imds listening " << addr << ":" << *imds_bound << std::endl;
  logger("agent")->info("[host:{}] IMDS on {}:{}", host_id, addr, *imds_bound);
  return imds;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fabriclab-agent: the host agent (an emulated Hyper-V host that really pauses its guests)"};
  Flags f;
  agent::AgentOptions& o = f.o;
  add_options(app, f);
  auto args = expand_config(argc, argv);
  if (!args.ok()) {
    std::cerr << "fabriclab-agent: " << args.error().describe() << "\n";
    return 2;
  }
  try {
    app.parse(std::move(args).value());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  setup_logging({f.log_level, f.json_logs});
  // SIGINT/SIGTERM blocked in every thread (all start after this); main waits for them below.
  const StopSignals stop_signals;
  o.heartbeat_period = std::chrono::milliseconds(f.hb_ms);
  o.stop_timeout = std::chrono::milliseconds(f.stop_ms);
  o.boot_timeout = std::chrono::milliseconds(f.boot_ms);
  o.boot_delay = std::chrono::milliseconds(f.boot_delay_ms);
  std::pair<std::string, int> imds_at;
  if (!f.imds_listen.empty()) {
    auto at = parse_imds_listen(f.imds_listen);
    if (!at.ok()) {
      std::cerr << "fabriclab-agent: " << at.error().message << "\n";
      return 2;
    }
    imds_at = *at;
  }
  auto tokens = http::load_tokens(f.control_token_file, f.read_token_file);
  if (!tokens.ok()) {
    std::cerr << "fabriclab-agent: " << tokens.error().describe() << "\n";
    return 2;
  }
  if (!f.lab_host_images.empty()) {
    if (auto st = stage_lab_host_images(o, f.lab_host_images); !st.ok()) {
      std::cerr << "fabriclab-agent: " << st.error().message << "\n";
      return 2;
    }
  }
  agent::HostAgent* agent_ptr = nullptr;
  auto feed = std::make_shared<EventFeed>(
      [&agent_ptr] { return agent_ptr ? agent_ptr->snapshot() : boost::json::object{}; });
  auto agent = agent::HostAgent::create(o, feed);
  if (!agent.ok()) {
    std::cerr << "fabriclab-agent: " << agent.error().describe() << "\n";
    return 1;
  }
  agent_ptr = agent->get();
  http::Limits limits;
  http::Server server("agent-api", *tokens, limits);
  agent::install_api(server, **agent, feed, limits);
  // Two io threads: a create or stop that waits on libvirt must not hold up reads and /healthz.
  auto bound = server.start(f.listen, static_cast<uint16_t>(f.port), 2);
  if (!bound.ok()) {
    std::cerr << "fabriclab-agent: " << bound.error().describe() << "\n";
    return 1;
  }
  std::cout << "listening " << f.listen << ":" << *bound << std::endl;
  logger("agent")->info("[host:{}] listening on {}:{}", o.host_id, f.listen, *bound);
  std::unique_ptr<http::Server> imds;
  if (!f.imds_listen.empty()) {
    auto started = start_imds(**agent, imds_at.first, imds_at.second, o.host_id);
    if (!started.ok()) {
      std::cerr << "fabriclab-agent: " << started.error().message << "\n";
      return 1;
    }
    imds = std::move(started).value();
  }
  stop_signals.wait();
  logger("agent")->info("[host:{}] stopping", o.host_id);
  if (imds) imds->stop();
  server.stop();
  agent->reset();  // guests keep running: the host agent going away is not a host failure
  return 0;
}
