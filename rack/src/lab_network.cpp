// A lab's network (lab.hpp): the choice between network namespaces and loopback, the guest
// network's services (one dnsmasq per host namespace, HAProxy in the rack namespace) and the wait
// in `Lab::populate` until every instance is healthy and, with a load balancer, serving.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/child_process.hpp"
#include "fabriclab/orchestrator/lb.hpp"
#include "fabriclab/rack/lab.hpp"
#include "lab_internal.hpp"
#include "netns.hpp"

namespace fabriclab::rack {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using detail::start_process;

namespace {

std::string system_binary(const std::string& flag, const std::string& name) {
  if (!flag.empty()) return flag;
  for (const char* d : {"/usr/sbin/", "/usr/bin/", "/sbin/", "/bin/"}) {
    std::string p = d + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

// Whether a unix stream socket at `path` accepts a connection (HAProxy's master socket is up).
bool unix_socket_accepts(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) {
    close(fd);
    return false;
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

}  // namespace

void Lab::choose_network(const DrillFileSpec& spec, const LabOptions& options) {
  const bool sim = spec.hypervisor == "test";
  if (options.network == "loopback") {
    network_reason_.clear();
  } else if (spec.hosts > netns::kMaxHosts) {
    network_reason_ =
        "more than " + std::to_string(netns::kMaxHosts) + " hosts do not fit 198.18.0.0/24";
  } else {
    auto made = netns::create(netns::new_id(), spec.hosts, namespaces_, /*guest_network=*/!sim);
    if (made.ok()) {
      network_ = "netns";
      rack_netns_ = namespaces_.front();
    } else {
      network_reason_ = made.error().message;
      // What was made part way goes now; anything that will not go stays listed for down().
      if (netns::remove(namespaces_).ok()) namespaces_.clear();
    }
  }
  guest_network_ = network_ == "netns" && !sim;
  guest_network_reason_ =
      guest_network_ ? ""
      : sim          ? "simulated guests serve no HTTP (test driver)"
                     : "loopback network: the rack has no guest network (" +
                  (network_reason_.empty() ? std::string("--network loopback") : network_reason_) +
                  ")";
}

Status Lab::start_network_services(const LabOptions& options) {
  const std::string dnsmasq = system_binary(options.dnsmasq_bin, "dnsmasq");
  const std::string haproxy = system_binary(options.haproxy_bin, "haproxy");
  if (dnsmasq.empty())
    return make_error(
        Condition::not_found,
        "dnsmasq not found (Debian package dnsmasq-base; testbed/setup.sh installs it)");
  if (haproxy.empty())
    return make_error(Condition::not_found,
                      "haproxy not found (Debian package haproxy; testbed/setup.sh installs it)");
  std::error_code ec;
  // One dnsmasq per host namespace: DHCP only (port=0: no DNS), static leases from the files the
  // agent writes into DIR/hN-dhcp (re-read on change through inotify).
  for (size_t i = 1; i < namespaces_.size(); ++i) {
    const int n = static_cast<int>(i) - 1;
    LabProcess p;
    p.name = "dnsmasq-h" + std::to_string(n);
    p.netns = namespaces_[i];
    p.log = dir_ + "/" + p.name + ".log";
    const std::string hosts_dir = dir_ + "/h" + std::to_string(n) + "-dhcp";
    fs::remove_all(hosts_dir, ec);
    fs::create_directories(hosts_dir, ec);
    if (ec)
      return make_error(Condition::transient, "cannot create " + hosts_dir + ": " + ec.message());
    const std::string gw = netns::guest_gateway(n);
    const std::string net = gw.substr(0, gw.size() - 2);  // "198.19.N"
    std::vector<std::string> argv = {dnsmasq,
                                     "--keep-in-foreground",
                                     "--conf-file=/dev/null",
                                     "--no-resolv",
                                     "--no-hosts",
                                     "--port=0",
                                     "--interface=" + std::string(netns::kGuestBridge),
                                     "--bind-dynamic",
                                     "--dhcp-authoritative",
                                     "--dhcp-range=" + net + ".10," + net + ".250,255.255.255.0,1h",
                                     "--dhcp-option=option:router," + gw,
                                     "--dhcp-hostsdir=" + hosts_dir,
                                     "--dhcp-leasefile=" + dir_ + "/" + p.name + ".leases",
                                     "--log-dhcp",
                                     "--log-facility=-",
                                     "--pid-file=",
                                     "--user=root"};
    FL_RETURN_IF_ERROR(start_process(p, dir_, argv));
    net_procs_.push_back(p);
  }
  // HAProxy in the rack namespace, master-worker, its master socket in the lab directory.
  LabProcess h;
  h.name = "haproxy";
  h.netns = rack_netns_;
  h.log = dir_ + "/haproxy.log";
  const std::string cfg = dir_ + "/haproxy.cfg", sock = dir_ + "/haproxy.sock";
  // The first configuration: no service yet, only HAProxy's own health listener. The
  // orchestrator renders the same settings (--lb-config), so its first apply needs no reload.
  {
    auto settings = orchestrator::lb_settings_for(cfg);
    settings.health_bind = netns::kLbHealthBind;
    std::ofstream(cfg, std::ios::trunc) << orchestrator::render_haproxy_config({}, settings);
  }
  FL_RETURN_IF_ERROR(start_process(h, dir_, {haproxy, "-W", "-S", sock + ",mode,600", "-f", cfg}));
  net_procs_.push_back(h);
  if (auto st = save(); !st.ok()) return st;
  // Ready when its master socket accepts; a HAProxy that exits says why in its own words.
  auto deadline = Clock::now() + 10s;
  for (;;) {
    for (const auto& p : net_procs_) {
      if (!process_alive(p.pid)) {
        return make_error(Condition::internal, p.name + " exited at start; its log (" + p.log +
                                                   ") ends:\n" + file_tail(p.log));
      }
    }
    if (unix_socket_accepts(sock)) break;
    if (Clock::now() > deadline) {
      return make_error(Condition::timeout, "haproxy's master socket " + sock +
                                                " did not answer within 10 s; its log (" + h.log +
                                                ") ends:\n" + file_tail(h.log));
    }
    if (client::interrupted()) return make_error(Condition::cancelled, "interrupted");
    std::this_thread::sleep_for(20ms);
  }
  return {};
}

void Lab::stop_network_services() {
  std::vector<pid_t> pids;
  for (const auto& p : net_procs_) pids.push_back(p.pid);
  stop_processes(pids, 3s);  // HAProxy's master stops its workers on SIGTERM
}

namespace {

// The backends of every load-balanced service that are not UP yet ("web-0 (DOWN), ..."); "" when
// all are.
Result<std::string> backends_not_up(const client::OrchestratorClient& api) {
  FL_ASSIGN_OR_RETURN(auto services, api.get("/v1/services"));
  std::string out;
  if (!services.is_array()) return out;
  for (const auto& sv : services.as_array()) {
    const auto* backends = sv.is_object() ? sv.as_object().if_contains("backends") : nullptr;
    if (!backends || !backends->is_array()) continue;
    for (const auto& b : backends->as_array()) {
      if (!b.is_object()) continue;
      const auto& o = b.as_object();
      const auto* state = o.if_contains("state");
      const auto* check = o.if_contains("check");
      // HAProxy starts a server UP before its first check: serving means UP with a check passed.
      if (state && state->is_string() && state->as_string() == "UP" && check &&
          check->is_string() &&
          orchestrator::LbServerState::passed_check(std::string(check->as_string()))) {
        continue;
      }
      const auto* name = o.if_contains("instance");
      if (out.size() < 200) {
        out += (out.empty() ? "" : ", ") +
               std::string(name && name->is_string() ? name->as_string() : "?") + " (" +
               std::string(state && state->is_string() ? state->as_string() : "?") +
               " in the load balancer)";
      }
    }
  }
  return out;
}

}  // namespace

Status Lab::populate(const DrillFileSpec& spec, std::chrono::milliseconds healthy_timeout) {
  FL_ASSIGN_OR_RETURN(auto api, client::OrchestratorClient::from_url(orchestrator_url(), token_));
  for (const auto& a : agents_) {
    json::object h{{"id", a.name},
                   {"fault_domain", a.fault_domain},
                   {"endpoint", "http://" + a.address + ":" + std::to_string(a.port)},
                   {"capacity", spec.capacity}};
    FL_RETURN_IF_ERROR(api.post("/v1/hosts", h));
  }
  int total = 0;
  for (const auto& s : spec.services) {
    FL_RETURN_IF_ERROR(api.post("/v1/services", service_body(s, spec.time_scale)));
    total += s.instances;
  }
  auto deadline = Clock::now() + healthy_timeout;
  std::string last;
  while (Clock::now() < deadline) {
    FL_ASSIGN_OR_RETURN(auto inst, api.get("/v1/instances"));
    int healthy = 0;
    std::string waiting;
    if (inst.is_array()) {
      for (const auto& v : inst.as_array()) {
        const auto& o = v.as_object();
        auto* hb = o.if_contains("healthy");
        if (hb && hb->is_bool() && hb->as_bool()) {
          ++healthy;
        } else if (auto* n = o.if_contains("name"); n && n->is_string() && waiting.size() < 200) {
          waiting += (waiting.empty() ? "" : ", ") + std::string(n->as_string());
        }
      }
    }
    // With a load balancer, a guest is serving once its app answers the probe: a guest that
    // brings its own image runs (healthy) long before its app does, and the drill's clients
    // start right away.
    if (healthy == total && guest_network_) {
      FL_ASSIGN_OR_RETURN(waiting, backends_not_up(api));
    }
    if (healthy == total && waiting.empty()) return {};
    last =
        std::to_string(healthy) + "/" + std::to_string(total) + " healthy; waiting for " + waiting;
    if (!client::sleep_unless_interrupted(250ms))
      return make_error(Condition::cancelled, "interrupted");
  }
  return make_error(Condition::timeout, "the instances did not all become healthy within " +
                                            std::to_string(healthy_timeout.count() / 1000) +
                                            " s: " + last);
}

}  // namespace fabriclab::rack
