// fabriclab-orchestrator: the fabric controller service. Parses options and wires the pieces:
// journal + controller, event feed (continuing the journal's numbering), HTTP/websocket API.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <iostream>

#include "fabriclab/common/cli_range.hpp"
#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/http_server.hpp"
#include "fabriclab/common/logging.hpp"
#include "fabriclab/common/stop_signals.hpp"
#include "fabriclab/orchestrator/controller.hpp"
#include "fabriclab/orchestrator/controller_api.hpp"

using namespace fabriclab;

namespace {

// The service's flags: the controller's own options and what main wires around it.
struct Flags {
  orchestrator::ControllerOptions o;
  std::string listen = "127.0.0.1", control_token_file, read_token_file, agent_token_file,
              log_level = "info";
  int port = 7000, poll_ms = 250, unhealthy_ms = 5000, agent_timeout_ms = 5000;
  bool no_healing = false, json_logs = false;
  std::string power_command;
  int power_timeout_ms = 30000, fence_attempts = 3;
};

void add_options(CLI::App& app, Flags& f) {
  orchestrator::ControllerOptions& o = f.o;
  app.add_option("--journal", o.journal_path,
                 "SQLite journal (created if missing; a restart resumes from it)")
      ->required();
  app.add_option("--listen", f.listen, "Listen address (loopback unless told otherwise)")
      ->capture_default_str();
  add_ranged_option(app, "--port", f.port, "Listen port (0: ephemeral, printed on stdout)", 0,
                    65535);
  app.add_option("--control-token-file", f.control_token_file,
                 "File holding the control bearer token")
      ->required();
  app.add_option("--read-token-file", f.read_token_file, "File holding the read-only bearer token");
  app.add_option("--agent-token-file", f.agent_token_file,
                 "File holding the agents' control token (default: the control token)");
  add_ranged_option(app, "--poll-ms", f.poll_ms, "How often each agent is asked for its state", 10,
                    60000);
  add_ranged_option(app, "--unhealthy-after-ms", f.unhealthy_ms,
                    "A host silent this long becomes Unhealthy", 100, 3600000);
  add_ranged_option(app, "--agent-timeout-ms", f.agent_timeout_ms,
                    "Deadline of one call to an agent", 100, 600000);
  app.add_option("--agent-netns", o.agent_netns,
                 "Open every connection to an agent inside this network namespace (a name under "
                 "/run/netns or a path); the API still listens where --listen says");
  app.add_flag("--no-healing", f.no_healing,
               "Do not place the instances of an Unhealthy host again");
  app.add_option(
      "--power-command", f.power_command,
      "Fence a silent host before healing its instances: 'PROGRAM ARGS... {host}' (words split at "
      "spaces, no shell; {host} becomes the host's id); exit 0 = the host is confirmed off. "
      "Without it "
      "healing goes on unfenced");
  add_ranged_option(app, "--power-timeout-ms", f.power_timeout_ms,
                    "Deadline of one power command (then it is killed)", 100, 600000);
  add_ranged_option(app, "--fence-attempts", f.fence_attempts,
                    "Power commands tried per silence before giving up", 1, 100);
  app.add_option("--lb-config", o.lb_config,
                 "The HAProxy configuration file the rack's load balancer runs (rewritten on every "
                 "change of placement); without it the rack has no load balancer");
  app.add_option("--lb-master-socket", o.lb_master_socket, "HAProxy's master CLI socket (-S)");
  app.add_option("--lb-haproxy", o.lb_haproxy, "The haproxy binary (for `haproxy -c`)")
      ->capture_default_str();
  app.add_option("--lb-health-bind", o.lb_health_bind, "The load balancer's own health listener")
      ->capture_default_str();
  app.add_option(
      "--client-netns", o.client_netns,
      "Run client traffic from this network namespace (a name under /run/netns or a path)");
  app.add_option("--vip-range", o.vip_range,
                 "Service VIPs: base + 10 + s for the s-th service with an endpoint")
      ->capture_default_str();
  app.add_option("--no-lb-reason", o.no_lb_reason,
                 "Without --lb-config: why the rack has no load balancer, as drills report it")
      ->capture_default_str();
  app.add_option("--log-level", f.log_level, "trace|debug|info|warn|error")->capture_default_str();
  app.add_flag("--json-logs", f.json_logs, "Log JSON lines");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fabriclab-orchestrator: the fabric controller (placement, walk, live feed)"};
  Flags f;
  orchestrator::ControllerOptions& o = f.o;
  add_options(app, f);
  CLI11_PARSE(app, argc, argv);
  setup_logging({f.log_level, f.json_logs});

  // SIGINT/SIGTERM blocked in every thread (all start after this); main waits for them below.
  const StopSignals stop_signals;

  auto tokens = http::load_tokens(f.control_token_file, f.read_token_file);
  if (!tokens.ok()) {
    std::cerr << "fabriclab-orchestrator: " << tokens.error().describe() << "\n";
    return 2;
  }
  o.agent_token = tokens->control;
  if (!f.agent_token_file.empty()) {
    auto at = http::load_tokens(f.agent_token_file, "");
    if (!at.ok()) {
      std::cerr << "fabriclab-orchestrator: " << at.error().describe() << "\n";
      return 2;
    }
    o.agent_token = at->control;
  }
  o.poll = std::chrono::milliseconds(f.poll_ms);
  o.unhealthy_after = std::chrono::milliseconds(f.unhealthy_ms);
  o.agent_timeout = std::chrono::milliseconds(f.agent_timeout_ms);
  o.healing = !f.no_healing;
  // The namespaces are checked once here, so a bad value stops the start instead of every later
  // agent call or client request.
  auto netns_usable = [](const char* flag, const std::string& name) {
    if (name.empty()) return true;
    auto path = http::netns_path(name);
    if (path.ok() && access(path->c_str(), R_OK) == 0) return true;
    std::cerr << "fabriclab-orchestrator: " << flag << ": "
              << (path.ok() ? *path + ": " + std::strerror(errno) : path.error().message) << "\n";
    return false;
  };
  if (!netns_usable("--agent-netns", o.agent_netns)) return 2;
  if (!f.power_command.empty()) {
    auto argv = orchestrator::parse_power_command(f.power_command);
    if (!argv.ok()) {
      std::cerr << "fabriclab-orchestrator: --power-command: " << argv.error().message << "\n";
      return 2;
    }
    o.power_command = std::move(argv).value();
  }
  o.power_timeout = std::chrono::milliseconds(f.power_timeout_ms);
  o.fence_attempts = f.fence_attempts;
  if (!o.lb_config.empty() && o.lb_master_socket.empty()) {
    std::cerr << "fabriclab-orchestrator: --lb-master-socket is required with --lb-config\n";
    return 2;
  }
  if (!netns_usable("--client-netns", o.client_netns)) return 2;
  auto controller = orchestrator::Controller::create(o);
  if (!controller.ok()) {
    std::cerr << "fabriclab-orchestrator: " << controller.error().describe() << "\n";
    return 1;
  }
  auto* c = controller->get();
  auto feed =
      std::make_shared<EventFeed>([c] { return c->snapshot(); }, 10000, c->last_journal_seq());
  http::Limits limits;
  limits.max_connections = 2048;
  http::Server server("orchestrator-api", *tokens, limits);
  orchestrator::install_controller_api(server, *c, feed, limits);
  // Four io threads: registration and service creation wait on agents.
  auto bound = server.start(f.listen, static_cast<uint16_t>(f.port), 4);
  if (!bound.ok()) {
    std::cerr << "fabriclab-orchestrator: " << bound.error().describe() << "\n";
    return 1;
  }
  c->start(feed);
  std::cout << "listening " << f.listen << ":" << *bound << std::endl;
  logger("orchestrator")
      ->info(
          "listening on {}:{}, journal {}{}", f.listen, *bound, o.journal_path,
          o.agent_netns.empty() ? "" : ", agents reached from network namespace " + o.agent_netns);
  logger("orchestrator")
      ->info("{}", o.lb_config.empty()
                       ? std::string("no load balancer: client traffic is not measured")
                       : "load balancer: " + o.lb_config + " via " + o.lb_master_socket);
  stop_signals.wait();
  logger("orchestrator")->info("stopping");
  server.stop();
  c->stop();
  return 0;
}
