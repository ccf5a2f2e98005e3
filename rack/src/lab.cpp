// The local rack: agent and orchestrator processes, each agent in its own network namespace
// or on its own loopback address (lab.hpp).
#include "fabriclab/rack/lab.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/child_process.hpp"
#include "fabriclab/common/random_hex.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/orchestrator/lb.hpp"
#include "fabriclab/rack/image_library.hpp"
#include "lab_internal.hpp"
#include "netns.hpp"

namespace fabriclab::rack {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

using detail::await_listening;
using detail::kLabFile;
using detail::read_file;
using detail::start_process;

std::string detail::read_file(const std::string& path, size_t max) {
  std::ifstream in(path, std::ios::binary);
  std::string s;
  try {
    s.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure&) {
    // libstdc++'s filebuf throws when read(2) fails, whatever the stream's exception mask: a
    // /proc file of a process that exits while we scan (ESRCH). It reads as empty: gone.
    return {};
  }
  if (s.size() > max) s.erase(0, s.size() - max);
  return s;
}

std::string detail::cmdline_of(pid_t pid) {
  return read_file("/proc/" + std::to_string(pid) + "/cmdline", 1 << 16);
}

std::vector<pid_t> detail::qemu_processes_in(const std::string& name) {
  std::vector<pid_t> out;
  for (int pid : netns::pids(name)) {
    if (read_file("/proc/" + std::to_string(pid) + "/comm", 64).rfind("qemu", 0) == 0)
      out.push_back(pid);
  }
  return out;
}

namespace {

void kill_mentioning(const std::string& needle) {
  for (pid_t p : processes_matching("qemu", {needle})) kill(p, SIGKILL);
}

}  // namespace

Result<ChildProcess> detail::start_process(LabProcess& p, const std::string& dir,
                                           const std::vector<std::string>& argv, bool restart) {
  SpawnOptions o;
  o.name = p.name;
  o.stdout_path = dir + "/" + p.name + ".out";
  o.append_stdout = restart;
  o.stderr_path = p.log;
  o.own_process_group = true;
  if (!p.netns.empty()) o.netns_path = netns::path_of(p.netns);
  FL_ASSIGN_OR_RETURN(auto child, spawn_child(argv, o));
  p.pid = child.pid;
  if (!restart) p.argv = argv;
  return child;
}

Status detail::await_listening(LabProcess& p, const ChildProcess& child,
                               std::chrono::milliseconds timeout) {
  FL_ASSIGN_OR_RETURN(auto at,
                      wait_listening(child, timeout, [] { return client::interrupted().load(); }));
  p.address = at.host;
  p.port = at.port;
  return {};
}

Status detail::start_and_await(LabProcess& p, const std::string& dir,
                               const std::vector<std::string>& argv,
                               std::chrono::milliseconds timeout) {
  FL_ASSIGN_OR_RETURN(auto child, start_process(p, dir, argv));
  return await_listening(p, child, timeout);
}

std::string find_binary(const std::string& name, const std::string& hint_dir) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("FABRICLAB_BIN_DIR"); env && *env) dirs.push_back(env);
  if (!hint_dir.empty()) {
    dirs.push_back(hint_dir);
    dirs.push_back(hint_dir + "/../agent");
    dirs.push_back(hint_dir + "/../orchestrator");
  }
  for (const auto& d : dirs) {
    std::error_code ec;
    fs::path p = fs::path(d) / name;
    if (fs::exists(p, ec) && access(p.c_str(), X_OK) == 0)
      return fs::weakly_canonical(p, ec).string();
  }
  return {};
}

std::string self_dir() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

std::string images_dir(const std::string& flag, const std::string& build_default) {
  if (!flag.empty()) return flag;
  if (const char* e = std::getenv("FABRICLAB_IMAGES_DIR"); e && *e) return e;
  if (!build_default.empty()) return build_default;
  return self_dir() + "/../images";
}

std::string Lab::orchestrator_url() const {
  return "http://" + orchestrator_.address + ":" + std::to_string(orchestrator_.port);
}

namespace {

// Whether the spec boots an image other than the built-in guests (v1, v2, v3-broken).
bool own_images(const DrillFileSpec& spec) {
  auto builtin = [](const std::string& v) { return v == "v1" || v == "v2" || v == "v3-broken"; };
  for (const auto& s : spec.services) {
    if (!builtin(s.image)) return true;
  }
  for (const auto& u : spec.updates) {
    if (u.kind == "guest-os" && !builtin(u.target)) return true;
  }
  return false;
}

// A lab already recorded in `dir`: refused while any of its processes runs, else stopped (its VMs
// may still run; a namespace it cannot remove stays listed there).
Status clear_stale_lab(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir + "/" + kLabFile, ec)) return {};
  auto old = Lab::attach(dir);
  if (!old.ok()) return {};
  bool any = process_alive(old->orchestrator().pid);
  for (const auto& a : old->agents()) any = any || process_alive(a.pid);
  if (any) {
    return make_error(
        Condition::already_exists,
        "a lab is already up in " + dir + " (fabriclab lab down --lab-dir " + dir + " stops it)");
  }
  (void)old->down(false);
  return {};
}

Status write_token(const std::string& path, const std::string& token) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(Condition::transient, "cannot write " + path);
  std::string line = token + "\n";
  bool ok = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  close(fd);
  if (!ok) return make_error(Condition::transient, "cannot write " + path);
  return {};
}

}  // namespace

Result<Lab> Lab::up(const DrillFileSpec& spec, const LabOptions& options) {
  FL_RETURN_IF_ERROR(clear_stale_lab(options.dir));
  std::error_code ec;
  fs::create_directories(options.dir, ec);
  if (ec)
    return make_error(Condition::invalid_argument,
                      "cannot create " + options.dir + ": " + ec.message());
  const std::string agent_bin = find_binary("fabriclab-agent", options.bin_dir);
  const std::string orch_bin = find_binary("fabriclab-orchestrator", options.bin_dir);
  if (agent_bin.empty() || orch_bin.empty()) {
    return make_error(Condition::not_found,
                      "fabriclab-agent / fabriclab-orchestrator not found near " + options.bin_dir +
                          " (set FABRICLAB_BIN_DIR)");
  }
  if (options.network != "auto" && options.network != "netns" && options.network != "loopback") {
    return make_error(Condition::invalid_argument,
                      "network '" + options.network + "': auto, netns or loopback");
  }
  FL_ASSIGN_OR_RETURN(auto image_dirs, guest_image_dirs(options.images_dir, options.image_dirs,
                                                        options.image_library));
  Lab lab;
  lab.image_dirs_ = std::move(image_dirs);
  lab.dir_ = fs::absolute(options.dir).string();
  lab.hypervisor_ = spec.hypervisor;
  lab.token_ = random_hex(32);
  FL_RETURN_IF_ERROR(write_token(lab.dir_ + "/token", lab.token_));
  if (spec.hypervisor == "test") FL_RETURN_IF_ERROR(hypervisor::write_test_node(lab.dir_));
  // Started hosts are recorded at once, so a failure part-way stops what exists.
  auto fail = [&lab](Error e) -> Result<Lab> {
    if (auto st = lab.down(false); !st.ok())
      e.message += " (and while stopping: " + st.error().message + ")";
    return e;
  };
  lab.choose_network(spec, options);
  if (lab.network_ != "netns" && options.network == "netns") {
    return fail(make_error(Condition::unsupported, "network namespaces: " + lab.network_reason_));
  }
  // Recorded at once: a `fabriclab lab down` finds the namespaces even if this process dies now.
  if (auto st = lab.save(); !st.ok()) return fail(st.error());
  if (client::interrupted()) return fail(make_error(Condition::cancelled, "interrupted"));
  if (lab.guest_network_) {
    if (auto st = lab.start_network_services(options); !st.ok()) return fail(st.error());
  }
  if (auto st = lab.start_agents(spec, options, agent_bin); !st.ok()) return fail(st.error());
  if (auto st = lab.start_orchestrator(options, orch_bin); !st.ok()) return fail(st.error());
  if (auto st = lab.save(); !st.ok()) return fail(st.error());
  return lab;
}

std::vector<std::string> Lab::agent_argv(const DrillFileSpec& spec, const LabOptions& options,
                                         int i, const std::string& agent_bin) const {
  const LabProcess& p = agents_.at(static_cast<size_t>(i));
  std::vector<std::string> argv = {
      agent_bin,
      "--host-id",
      p.name,
      "--fault-domain",
      std::to_string(p.fault_domain),
      "--state-dir",
      dir_ + "/" + p.name,
      "--listen",
      network_ == "netns" ? netns::host_address(i) : options.address_prefix + std::to_string(i + 1),
      "--port",
      "0",
      "--control-token-file",
      dir_ + "/token",
      "--capacity",
      std::to_string(spec.capacity),
      "--lab-host-images",
      "host-v1,host-v2",
      "--fault-injection"};  // a lab rack: a drill's fault schedule uses it
  for (const auto& d : image_dirs_) argv.insert(argv.end(), {"--guest-images", d});
  if (spec.hypervisor == "test") {
    // Simulated guests and emulated durations: a 200 ms heartbeat, a 1 s host reboot.
    // Healthy = a heartbeat within the last 3 s (12 periods), as on real guests: a loaded machine
    // delays timers, and a tighter window would report outages that never happened.
    argv.insert(argv.end(), {"--hypervisor", "test://" + dir_ + "/node.xml", "--heartbeat-ms",
                             "250", "--healthy-periods", "12", "--boot-delay-ms", "1000",
                             "--boot-timeout-ms", "5000"});
  } else {
    // A TCG guest boots in ~8 s alone and ~15 s beside its neighbours on 2 cores; a patch that
    // never heartbeats is declared failed (and rolled back) after a minute, not the default two.
    // Healthy = a heartbeat within 5 s: TCG guests on a busy 2-core machine stall for seconds.
    // A guest that brings its own OS (a Debian guest: systemd, its app, its guest agent) takes
    // 20-60 s to answer under TCG, more beside other guests: it gets three minutes.
    argv.insert(argv.end(), {"--boot-timeout-ms", own_images(spec) ? "180000" : "60000",
                             "--healthy-periods", "5"});
  }
  if (guest_network_) {
    argv.insert(argv.end(),
                {"--guest-bridge", netns::kGuestBridge, "--guest-subnet", netns::guest_subnet(i),
                 "--dhcp-hosts-dir", dir_ + "/" + p.name + "-dhcp", "--imds-listen",
                 std::string(netns::kImdsAddress) + ":80"});
  }
  return argv;
}

Status Lab::start_agents(const DrillFileSpec& spec, const LabOptions& options,
                         const std::string& agent_bin) {
  std::vector<ChildProcess> started;
  for (int i = 0; i < spec.hosts; ++i) {
    LabProcess p;
    p.name = "h" + std::to_string(i);
    p.fault_domain = i % spec.fault_domains;
    p.log = dir_ + "/" + p.name + ".log";
    if (network_ == "netns") p.netns = namespaces_.at(static_cast<size_t>(i) + 1);
    std::error_code ec;
    fs::remove_all(dir_ + "/" + p.name, ec);
    fs::create_directories(dir_ + "/" + p.name, ec);
    agents_.push_back(p);
    agents_.back().argv = agent_argv(spec, options, i, agent_bin);
    FL_ASSIGN_OR_RETURN(auto child, start_process(agents_.back(), dir_, agents_.back().argv));
    started.push_back(std::move(child));
  }
  FL_RETURN_IF_ERROR(save());
  // Agents start in parallel; wait for each.
  for (size_t i = 0; i < started.size(); ++i) {
    FL_RETURN_IF_ERROR(await_listening(agents_[i], started[i], options.start_timeout));
  }
  return {};
}

Status Lab::start_orchestrator(const LabOptions& options, const std::string& orch_bin) {
  LabProcess& o = orchestrator_;
  o.name = "orchestrator";
  o.log = dir_ + "/orchestrator.log";
  std::vector<std::string> argv = {orch_bin,
                                   "--journal",
                                   dir_ + "/journal.db",
                                   "--listen",
                                   options.orchestrator_address,
                                   "--port",
                                   std::to_string(options.orchestrator_port),
                                   "--control-token-file",
                                   dir_ + "/token",
                                   "--agent-token-file",
                                   dir_ + "/token",
                                   "--poll-ms",
                                   std::to_string(options.poll_ms),
                                   "--unhealthy-after-ms",
                                   std::to_string(options.unhealthy_after_ms)};
  if (!rack_netns_.empty()) argv.insert(argv.end(), {"--agent-netns", netns::path_of(rack_netns_)});
  // Fence before heal: the orchestrator powers a silent host off through this lab's power
  // control before it heals the host's instances.
  if (std::string power = power_command(options.bin_dir, dir_); !power.empty()) {
    argv.insert(argv.end(), {"--power-command", power, "--power-timeout-ms", "20000"});
  }
  if (guest_network_) {
    argv.insert(argv.end(),
                {"--lb-config", dir_ + "/haproxy.cfg", "--lb-master-socket", dir_ + "/haproxy.sock",
                 "--lb-health-bind", netns::kLbHealthBind, "--client-netns",
                 netns::path_of(rack_netns_), "--vip-range", netns::kVipRange});
  } else {
    argv.insert(argv.end(), {"--no-lb-reason", guest_network_reason_});
  }
  std::error_code ec;
  for (const char* f : {"/journal.db", "/journal.db-wal", "/journal.db-shm"})
    fs::remove(dir_ + f, ec);
  FL_ASSIGN_OR_RETURN(auto child, start_process(o, dir_, argv));
  return await_listening(o, child, options.start_timeout);
}

Status Lab::kill_fault_domain(int fd) {
  int n = 0;
  for (auto& a : agents_) {
    if (a.fault_domain != fd) continue;
    ++n;
    if (process_alive(a.pid)) kill(a.pid, SIGKILL);
    // The rack loses power: its VMs die with it.
    kill_mentioning(dir_ + "/" + a.name + "/");
  }
  if (n == 0)
    return make_error(Condition::invalid_argument,
                      "the lab has no host in fault domain " + std::to_string(fd));
  for (auto& a : agents_) {
    if (a.fault_domain == fd) {
      for (int i = 0; i < 100 && process_alive(a.pid); ++i) std::this_thread::sleep_for(10ms);
    }
  }
  return {};
}

Status Lab::down(bool remove_dir) {
  if (dir_.empty()) return {};
  // The orchestrator first: it must not heal what the teardown stops.
  stop_process(orchestrator_.pid, 3s);
  // Agents: SIGTERM each (they stop their API), all at once, then a deadline.
  std::vector<pid_t> agent_pids;
  for (const auto& a : agents_) agent_pids.push_back(a.pid);
  stop_processes(agent_pids, 5s);
  // Every VM of the lab: QEMU processes whose command line names a state dir under it.
  for (int round = 0; round < 3; ++round) {
    auto left = processes_matching("qemu", {dir_ + "/"});
    if (left.empty()) break;
    for (pid_t p : left) kill(p, SIGKILL);
    std::this_thread::sleep_for(100ms);
  }
  stop_network_services();
  // Anything still inside a lab namespace (a HAProxy worker whose master was SIGKILLed, a process
  // a user started there) would keep it alive: kill it.
  for (int round = 0; round < 3; ++round) {
    bool any = false;
    for (const auto& n : namespaces_) {
      if (!netns::is_lab_name(n)) continue;
      for (int pid : netns::pids(n)) {
        kill(pid, SIGKILL);
        any = true;
      }
    }
    if (!any) break;
    std::this_thread::sleep_for(100ms);
  }
  // The namespaces last: nothing of the lab runs in them any more (hosts first, then the rack).
  auto removed = netns::remove(namespaces_);
  std::error_code ec;
  if (!removed.ok()) {
    // Keep lab.json (listing only what is left) so a later down, as root, retries.
    std::vector<std::string> left;
    for (const auto& n : namespaces_) {
      if (netns::exists(n)) left.push_back(n);
    }
    namespaces_ = std::move(left);
    for (const auto& a : agents_) fs::remove_all(dir_ + "/" + a.name, ec);
    (void)save();
    return removed;
  }
  namespaces_.clear();
  if (remove_dir) {
    fs::remove_all(dir_, ec);
  } else {
    for (const auto& a : agents_) {
      fs::remove_all(dir_ + "/" + a.name, ec);  // overlays and sockets
      fs::remove_all(dir_ + "/" + a.name + "-dhcp", ec);
    }
    fs::remove(dir_ + "/haproxy.sock", ec);
    fs::remove(dir_ + "/" + kLabFile, ec);
  }
  return {};
}

LabProcess* Lab::process(const std::string& name) {
  if (orchestrator_.name == name) return &orchestrator_;
  for (auto& a : agents_) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

}  // namespace fabriclab::rack
