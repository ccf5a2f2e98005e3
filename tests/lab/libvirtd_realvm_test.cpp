// Lab-host mode on a real system-mode libvirtd (label `realvm`): the README's
// `fabriclab-agent --hypervisor qemu:///system`, on a machine where embedded racks have run on the
// same guest images.
//
// The story it replays: an embedded agent runs a guest and is SIGKILLed, and its QEMU is killed
// after it (what stopping a local rack does). Then a libvirtd of the machine's own kind (root,
// QEMU as libvirt-qemu, DAC labelling with remembered owners; testbed/libvirtd.sh starts a
// private one) gets a domain that is not ours, and an agent on it creates a guest, takes it through
// a host-os update, is SIGKILLed and restarted, and deletes the guest. Along the way: no shared
// image file ever carries a libvirt label (trusted.libvirt.security.* xattrs: a label left by one
// domain makes libvirt refuse every other domain the file, "Setting different DAC user or group
// on ... which is already in use"), and the foreign domain is never touched.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>
#include <utility>

#include "agent_process.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/child_process.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/process.hpp"
#include "fabriclab/testbed/images.hpp"
#include "fabriclab/testbed/lab_vm.hpp"
#include "wait_until.hpp"

namespace fabriclab::testing {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kBoot = 150s;
constexpr char kToken[] = "ctl";
constexpr char kForeign[] = "customer-db";

// ---------------------------------------------------------------------------------------------
// libvirt's labels on the shared images.

// file -> "name=value; ..." of its trusted.libvirt.* attributes, for every file that has one.
std::map<std::string, std::string> libvirt_labels(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec) || it->is_symlink(ec)) continue;
    const std::string path = it->path().string();
    char names[4096];
    ssize_t n = ::llistxattr(path.c_str(), names, sizeof(names));
    std::string found;
    for (ssize_t i = 0; i < n; i += static_cast<ssize_t>(std::strlen(names + i)) + 1) {
      std::string name(names + i);
      if (name.rfind("trusted.libvirt.", 0) != 0) continue;
      char value[256];
      ssize_t v = ::lgetxattr(path.c_str(), name.c_str(), value, sizeof(value));
      found += (found.empty() ? "" : "; ") + name + "=" + (v >= 0 ? std::string(value, v) : "?");
    }
    if (!found.empty()) out[path] = found;
  }
  return out;
}

// The labels `after` has that `before` did not (new files or changed values).
std::string new_labels(const std::map<std::string, std::string>& before,
                       const std::map<std::string, std::string>& after) {
  std::string out;
  for (const auto& [file, labels] : after) {
    auto b = before.find(file);
    if (b == before.end() || b->second != labels) out += "\n  " + file + ": " + labels;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// An agent process and its HTTP API.

// `hypervisor` empty: the agent's default, the embedded driver under the state directory.
AgentProcess spawn_agent(const std::string& dir, const std::string& hypervisor,
                         const std::string& log) {
  std::vector<std::string> args = {FABRICLAB_AGENT_BIN,
                                   "--host-id",
                                   "lab-host",
                                   "--state-dir",
                                   dir + "/st",
                                   "--guest-images",
                                   testbed::default_images_dir(),
                                   "--port",
                                   "0",
                                   "--control-token-file",
                                   dir + "/ctl",
                                   "--stop-timeout-ms",
                                   "30000",
                                   "--log-level",
                                   "info"};
  if (!hypervisor.empty()) args.insert(args.end(), {"--hypervisor", hypervisor});
  return AgentProcess::spawn(args, dir + "/agent.out", log);
}

json::value api_get(uint16_t port, const std::string& target) {
  auto r = http::request("127.0.0.1", port, "GET", target, {}, kToken);
  if (!r.ok() || r->status != 200) return nullptr;
  return json::parse(r->body);
}

// The instance's JSON once its status is `status`; null if it never was within `timeout`.
json::value wait_instance(uint16_t port, const std::string& name, const std::string& status,
                          std::chrono::seconds timeout) {
  json::value last;
  wait_until(
      [&] {
        last = api_get(port, "/v1/instances/" + name);
        return last.is_object() && last.as_object().at("status").as_string() == status;
      },
      timeout);
  return last.is_object() && last.as_object().at("status").as_string() == status
             ? last
             : json::value(nullptr);
}

std::string boot_id_of(const json::value& instance) {
  if (!instance.is_object()) return "";
  auto* hb = instance.as_object().if_contains("last_heartbeat");
  if (!hb || !hb->is_object()) return "";
  auto* id = hb->as_object().if_contains("boot_id");
  return id && id->is_string() ? std::string(id->as_string()) : "";
}

Result<http::ClientResponse> create_instance(uint16_t port, const std::string& service, int index) {
  return http::request("127.0.0.1", port, "POST", "/v1/instances",
                       R"({"service":")" + service + R"(","index":)" + std::to_string(index) +
                           R"(,"ud":0,"fd":0,"image":"v1"})",
                       kToken, 60s);
}

// ---------------------------------------------------------------------------------------------
// Programs: virsh against the private daemon, and testbed/libvirtd.sh.

CommandResult run(const std::vector<std::string>& argv, std::chrono::seconds timeout = 60s) {
  auto r = run_command(argv, timeout);
  if (!r.ok()) return CommandResult{-1, r.error().describe()};
  return *r;
}

class LabHostOnSystemLibvirtd : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "a system-mode libvirtd needs root (run the tests as root)";
    for (const char* tool :
         {"/usr/bin/qemu-system-x86_64", "/usr/sbin/libvirtd", "/usr/bin/virsh"}) {
      ASSERT_EQ(::access(tool, X_OK), 0) << tool << " is missing: run testbed/setup.sh";
    }
    images_ = testbed::default_images_dir();
    ASSERT_TRUE(fs::exists(images_ + "/manifest.json")) << "no guest images at " << images_;
  }

  void TearDown() override {
    embedded_.kill9();
    system_agent_.kill9();
    if (!daemon_dir_.empty()) {
      // The agent's domains first (destroyed by a daemon that restores their labels), then ours.
      if (!uri_.empty()) {
        for (const char* d : {"web-0", kForeign}) {
          (void)run({"virsh", "-q", "-c", uri_, "destroy", d});
          (void)run({"virsh", "-q", "-c", uri_, "undefine", d});
        }
      }
      auto stop = run({"bash", FABRICLAB_LIBVIRTD_SH, "stop", daemon_dir_});
      EXPECT_EQ(stop.exit_code, 0) << stop.output;
    }
    for (const auto& d : {embedded_dir_, system_dir_}) {
      if (d.empty()) continue;
      for (pid_t p : processes_matching("qemu", {d + "/"})) ::kill(p, SIGKILL);
      if (::testing::Test::HasFailure()) {
        std::cout << "[note] kept for inspection: " << d << " (agent.log; lv/libvirtd.log)\n";
      } else {
        fs::remove_all(d);
      }
    }
  }

  std::string virsh_out(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"virsh", "-q", "-c", uri_};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run(argv);
    EXPECT_EQ(r.exit_code, 0) << describe_command(argv) << ": " << r.output;
    return r.output;
  }

  std::string images_;
  std::string embedded_dir_, system_dir_, daemon_dir_, uri_;
  AgentProcess embedded_, system_agent_;
};

TEST_F(LabHostOnSystemLibvirtd,
       HostOsUpdateAfterADirtyEmbeddedStopOnTheSameImagesLeavesNoLabelAndNoForeignDomainTouched) {
  const auto labels_at_start = libvirt_labels(images_);
  if (!labels_at_start.empty()) {
    // Labels from before this test (e.g. left by an older agent that booted guests from the shared
    // files): harmless to an agent that does not, but worth knowing.
    std::string list;
    for (const auto& [f, l] : labels_at_start) list += "\n  " + f + ": " + l;
    std::cout << "[note] the shared images already carry libvirt labels:" << list << "\n";
  }

  // --- 1. An embedded agent with a guest, stopped dirty: agent SIGKILLed, its QEMU killed. ---
  {
    auto dir = testbed::make_short_tmpdir("flvA-");
    ASSERT_TRUE(dir.ok());
    embedded_dir_ = *dir;
    std::ofstream(embedded_dir_ + "/ctl") << kToken;
    embedded_ = spawn_agent(embedded_dir_, "", embedded_dir_ + "/agent.log");
    ASSERT_GT(embedded_.port, 0) << "the embedded agent did not start" << embedded_.log_tail();
    auto c = create_instance(embedded_.port, "web", 0);
    ASSERT_TRUE(c.ok() && c->status == 201)
        << (c.ok() ? c->body : c.error().describe()) << embedded_.log_tail();
    ASSERT_FALSE(wait_instance(embedded_.port, "web-0", "Healthy", kBoot).is_null())
        << json::serialize(api_get(embedded_.port, "/v1/instances")) << embedded_.log_tail();
    EXPECT_EQ(new_labels(labels_at_start, libvirt_labels(images_)), "")
        << "an embedded guest labelled the shared images while running: each instance must boot "
           "from its own copy of the kernel and initrd";
    embedded_.kill9();
    auto qemus = processes_matching("qemu", {embedded_dir_ + "/"});
    EXPECT_EQ(qemus.size(), 1u) << "the embedded guest's QEMU outlives its agent";
    for (pid_t p : qemus) ::kill(p, SIGKILL);
    ASSERT_TRUE(
        wait_until([&] { return processes_matching("qemu", {embedded_dir_ + "/"}).empty(); }, 10s));
    EXPECT_EQ(new_labels(labels_at_start, libvirt_labels(images_)), "")
        << "an embedded guest killed without its labels restored left them on the shared images: "
           "a system libvirtd now refuses these files to every domain";
  }

  // --- 2. A private system-mode libvirtd with a domain that is not ours. ---
  auto dir = testbed::make_short_tmpdir("flvS-");
  ASSERT_TRUE(dir.ok());
  system_dir_ = *dir;
  // QEMU runs as libvirt-qemu: it must traverse to the agent's state directory (mkdtemp's 0700).
  ASSERT_EQ(::chmod(system_dir_.c_str(), 0711), 0);
  std::ofstream(system_dir_ + "/ctl") << kToken;
  daemon_dir_ = system_dir_ + "/lv";
  auto started = run({"bash", FABRICLAB_LIBVIRTD_SH, "start", daemon_dir_}, 120s);
  ASSERT_EQ(started.exit_code, 0) << started.output;
  uri_ = "qemu:///system?socket=" + daemon_dir_ + "/libvirt-sock";
  ASSERT_NE(started.output.find(uri_), std::string::npos) << started.output;

  const std::string foreign_xml = system_dir_ + "/foreign.xml";
  std::ofstream(foreign_xml)
      << "<domain type='qemu'>\n  <name>" << kForeign << "</name>\n"
      << "  <description>a customer's database VM, not fabriclab's</description>\n"
      << "  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n"
      << "  <os><type arch='x86_64'>hvm</type></os>\n</domain>\n";
  virsh_out({"define", foreign_xml});
  const std::string foreign_before = virsh_out({"dumpxml", "--inactive", kForeign});
  ASSERT_NE(foreign_before.find(kForeign), std::string::npos) << foreign_before;

  // --- 3. The agent on it: a guest, a host-os update. ---
  system_agent_ = spawn_agent(system_dir_, uri_, system_dir_ + "/agent.log");
  ASSERT_GT(system_agent_.port, 0)
      << "the agent did not start on " << uri_ << system_agent_.log_tail();
  auto c = create_instance(system_agent_.port, "web", 0);
  ASSERT_TRUE(c.ok() && c->status == 201)
      << (c.ok() ? c->body : c.error().describe()) << system_agent_.log_tail();
  auto healthy = wait_instance(system_agent_.port, "web-0", "Healthy", kBoot);
  ASSERT_FALSE(healthy.is_null()) << json::serialize(
                                         api_get(system_agent_.port, "/v1/instances/web-0"))
                                  << system_agent_.log_tail();
  EXPECT_EQ(new_labels(labels_at_start, libvirt_labels(images_)), "")
      << "a guest on the system libvirtd labels the shared images while it runs";
  const std::string domain_xml = virsh_out({"dumpxml", "web-0"});
  EXPECT_NE(domain_xml.find("<kernel>" + system_dir_ + "/st/"), std::string::npos)
      << "the guest should boot from the agent's own copy of the kernel:\n"
      << domain_xml;
  EXPECT_NE(domain_xml.find("<label>+" + std::to_string(::getpwnam("libvirt-qemu")->pw_uid)),
            std::string::npos)
      << "QEMU should run as libvirt-qemu, as on a packaged lab host:\n"
      << domain_xml;

  const std::string img = system_dir_ + "/host-2.img";
  auto sha = agent::write_synthetic_host_image(img, "host-2");
  ASSERT_TRUE(sha.ok()) << sha.error().describe();
  auto staged = http::request(
      "127.0.0.1", system_agent_.port, "POST", "/v1/images/host",
      R"({"version":"host-2","path":")" + img + R"(","sha256":")" + *sha + R"("})", kToken);
  ASSERT_TRUE(staged.ok() && staged->status == 201)
      << (staged.ok() ? staged->body : staged.error().describe());
  auto op = http::request("127.0.0.1", system_agent_.port, "POST", "/v1/operations",
                          R"({"kind":"host-os","target":"host-2","notice_ms":0})", kToken);
  ASSERT_TRUE(op.ok() && op->status == 202) << (op.ok() ? op->body : op.error().describe());
  const std::string op_id(json::parse(op->body).as_object().at("id").as_string());
  json::value job;
  ASSERT_TRUE(wait_until(
      [&] {
        job = api_get(system_agent_.port, "/v1/operations/" + op_id);
        return job.is_object() && job.as_object().at("status").as_string() != "running";
      },
      300s))
      << json::serialize(job) << system_agent_.log_tail();
  ASSERT_EQ(job.as_object().at("status").as_string(), "succeeded")
      << json::serialize(job) << system_agent_.log_tail();
  ASSERT_EQ(job.as_object().at("guests").as_array().size(), 1u) << json::serialize(job);
  const auto& g = job.as_object().at("guests").as_array().at(0).as_object();
  EXPECT_TRUE(g.at("ok").as_bool()) << json::serialize(g);
  EXPECT_EQ(g.at("stop_method").as_string(), "graceful") << json::serialize(g);
  EXPECT_NE(g.at("boot_id_after"), g.at("boot_id_before"))
      << "the guest rebooted: " << json::serialize(g);
  EXPECT_GT(g.at("counter_before").as_int64(), 0) << json::serialize(g);
  EXPECT_GE(g.at("counter_after").as_int64(), g.at("counter_before").as_int64())
      << "the data disk's counter is kept: " << json::serialize(g);
  EXPECT_EQ(api_get(system_agent_.port, "/v1/host").as_object().at("host_image").as_string(),
            "host-2");

  // --- 4. The agent crashes and comes back: it reattaches to the running guest. ---
  auto before_restart = wait_instance(system_agent_.port, "web-0", "Healthy", 60s);
  ASSERT_FALSE(before_restart.is_null())
      << json::serialize(api_get(system_agent_.port, "/v1/instances/web-0"));
  const std::string boot_id = boot_id_of(before_restart);
  ASSERT_FALSE(boot_id.empty()) << json::serialize(before_restart);
  system_agent_.kill9();
  system_agent_ = spawn_agent(system_dir_, uri_, system_dir_ + "/agent.log");
  ASSERT_GT(system_agent_.port, 0)
      << "the restarted agent did not start" << system_agent_.log_tail();
  json::value after_restart;
  ASSERT_TRUE(wait_until(
      [&] {
        after_restart = api_get(system_agent_.port, "/v1/instances/web-0");
        return after_restart.is_object() &&
               after_restart.as_object().at("status").as_string() == "Healthy" &&
               !boot_id_of(after_restart).empty();
      },
      60s))
      << json::serialize(after_restart) << system_agent_.log_tail();
  EXPECT_EQ(boot_id_of(after_restart), boot_id)
      << "reattached, not restarted: " << json::serialize(after_restart);
  EXPECT_EQ(api_get(system_agent_.port, "/v1/host").as_object().at("state").as_string(), "Ready");

  // --- 5. The foreign domain was never touched; deleting the guest removes its domain. ---
  EXPECT_EQ(virsh_out({"dumpxml", "--inactive", kForeign}), foreign_before);
  EXPECT_EQ(virsh_out({"domstate", kForeign}).find("shut off"), 0u);
  auto del = http::request("127.0.0.1", system_agent_.port, "DELETE", "/v1/instances/web-0", {},
                           kToken, 60s);
  ASSERT_TRUE(del.ok() && del->status == 200) << (del.ok() ? del->body : del.error().describe());
  EXPECT_EQ(virsh_out({"list", "--all", "--name"}), std::string(kForeign) + "\n")
      << "only the foreign domain is left";
  EXPECT_EQ(virsh_out({"dumpxml", "--inactive", kForeign}), foreign_before);
  virsh_out({"undefine", kForeign});
  EXPECT_EQ(new_labels(labels_at_start, libvirt_labels(images_)), "");

  // --- 6. The daemon stops, and no QEMU of it was left running. ---
  system_agent_.kill9();
  std::string daemon_pid;
  std::getline(std::ifstream(daemon_dir_ + "/libvirtd.pid"), daemon_pid);
  ASSERT_FALSE(daemon_pid.empty()) << "no pid file in " << daemon_dir_;
  auto stop = run({"bash", FABRICLAB_LIBVIRTD_SH, "stop", daemon_dir_});
  EXPECT_EQ(stop.exit_code, 0) << stop.output;
  EXPECT_EQ(stop.output.find("killing QEMU"), std::string::npos)
      << "the agent's delete left its QEMU running: " << stop.output;
  EXPECT_FALSE(fs::exists("/proc/" + daemon_pid))
      << "libvirtd " << daemon_pid << " is still running";
  EXPECT_TRUE(processes_matching("qemu", {system_dir_ + "/"}).empty());
  daemon_dir_.clear();
}

}  // namespace
}  // namespace fabriclab::testing
