// The qemu-guest-agent path of the hypervisor layer on real QEMU guests (label `realvm`), through
// the embedded driver, one root per test process:
//   - a real Debian 12 guest (testbed/build-debian-image.sh) on its own qcow2 overlay: the agent
//     lifecycle event, guest-ping, guest-exec (stdout, stderr, exit codes, the output cap), the
//     boot id across a graceful stop and a start on a swapped OS disk;
//   - the same guest with its agent stopped: the ping fails saying so, the channel reads
//     disconnected, the event says so;
//   - the built-in guest (no agent inside) given the channel anyway: the ping fails at once
//     saying "not connected", which is how a guest without an agent looks.
// The Debian images are a prerequisite: without them the Debian tests FAIL with the command that
// builds them. Nothing here writes to the images: each guest runs on an overlay and on copies of
// the kernel and initrd in its own temp root.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>

#include "fabriclab/agent/guest_link.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/hypervisor/disk_image.hpp"
#include "fabriclab/testbed/images.hpp"
#include "fabriclab/testbed/lab_vm.hpp"
#include "status_matchers.hpp"
#include "vm_teardown.hpp"

namespace fabriclab {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hypervisor::Connection;
using hypervisor::DomainState;
using hypervisor::LifecycleKind;
using hypervisor::StopMethod;
using Clock = std::chrono::steady_clock;

constexpr auto kAgentTimeout = 240s;  // Debian boot to the agent under TCG, machine shared
constexpr auto kCommandTimeout = 30s;
constexpr uint64_t kDataDiskBytes = 64ull * 1024 * 1024;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The Debian guest images: $FABRICLAB_DEBIAN_IMAGES, else the cache that
// testbed/build-debian-image.sh fills, keyed by the script's --stamp. Empty when neither holds
// debian-v1/disk.qcow2.
std::string find_debian_images() {
  if (const char* env = std::getenv("FABRICLAB_DEBIAN_IMAGES"); env && *env) {
    return fs::exists(std::string(env) + "/debian-v1/disk.qcow2") ? env : "";
  }
  std::string stamp;
  if (FILE* p =
          ::popen("bash " FABRICLAB_SOURCE_DIR "/testbed/build-debian-image.sh --stamp", "r")) {
    char buf[128] = {};
    if (std::fgets(buf, sizeof(buf), p)) stamp = buf;
    ::pclose(p);
  }
  while (!stamp.empty() && std::isspace(static_cast<unsigned char>(stamp.back()))) stamp.pop_back();
  const std::string dir = "/var/cache/fabriclab/debian-images/" + stamp;
  return !stamp.empty() && fs::exists(dir + "/debian-v1/disk.qcow2") ? dir : "";
}

// Every event of the connection, for waiting on one kind of one domain.
class EventLog {
 public:
  explicit EventLog(Connection& conn) : conn_(conn) {
    id_ = conn.subscribe([this](const hypervisor::LifecycleEvent& e) {
      std::lock_guard lock(mu_);
      events_.push_back(e);
      cv_.notify_all();
    });
  }
  ~EventLog() { conn_.unsubscribe(id_); }

  size_t size() {
    std::lock_guard lock(mu_);
    return events_.size();
  }
  // True when an event of `kind` for `uuid` arrived at position >= `from` within `timeout`.
  bool wait_for(const std::string& uuid, LifecycleKind kind, size_t from,
                std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (size_t i = from; i < events_.size(); ++i) {
        if (events_[i].uuid == uuid && events_[i].kind == kind) return true;
      }
      return false;
    });
  }
  std::string describe() {
    std::lock_guard lock(mu_);
    std::string s;
    for (const auto& e : events_) s += std::string(hypervisor::to_string(e.kind)) + " ";
    return s;
  }

 private:
  Connection& conn_;
  int id_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<hypervisor::LifecycleEvent> events_;
};

class GuestAgentRealVm : public ::testing::Test {
 protected:
  // One embedded root per process (libvirt allows no other), shared by the tests of a direct
  // run; ctest runs each test in a process of its own.
  static void SetUpTestSuite() {
    auto root = testbed::make_short_tmpdir("flga-");
    if (root.ok()) suite_root_ = *root;
  }
  static void TearDownTestSuite() {
    if (!suite_root_.empty()) fs::remove_all(suite_root_);
  }

  void SetUp() override {
    ASSERT_EQ(::access("/usr/bin/qemu-system-x86_64", X_OK), 0)
        << "QEMU cannot run here: /usr/bin/qemu-system-x86_64 is missing (run testbed/setup.sh)";
    ASSERT_FALSE(suite_root_.empty()) << "cannot make a temp directory under /tmp";
    root_ = suite_root_;
    auto c = Connection::open("qemu:///embed?root=" + root_);
    ASSERT_TRUE(c.ok()) << c.error().describe();
    conn_ = std::move(c).value();
    events_ = std::make_unique<EventLog>(*conn_);
  }

  void TearDown() override {
    events_.reset();
    if (conn_) {
      testing::remove_all_domains(*conn_);
      conn_.reset();
    }
    if (HasFailure()) dump_consoles();
    std::error_code ec;
    fs::remove_all(root_ + "/vm", ec);
    fs::remove_all(root_ + "/img", ec);
  }

  void dump_consoles() { testing::dump_console_tails(root_ + "/vm", 6000); }

  // A fresh qcow2 overlay on the image's disk.
  std::string make_overlay(const std::string& name) {
    const std::string path = root_ + "/vm/" + name;
    auto st = hypervisor::create_overlay(fs::absolute(debian_ + "/debian-v1/disk.qcow2").string(),
                                         "qcow2", path);
    EXPECT_TRUE(st.ok()) << st.error().describe();
    return path;
  }

  // The Debian guest: overlay as vda, a 64 MiB sparse raw data disk as vdb, the image's own
  // kernel command line, the guest agent channel, no network card.
  void define_debian(const std::string& name, std::optional<hypervisor::Domain>& out) {
    debian_ = find_debian_images();
    ASSERT_FALSE(debian_.empty())
        << "no Debian guest images: run testbed/build-debian-image.sh DIR "
           "or set FABRICLAB_DEBIAN_IMAGES";
    fs::create_directories(root_ + "/vm");
    fs::create_directories(root_ + "/img");
    // Copies: a shared kernel would carry this domain's security label (README: lab host).
    for (const char* f : {"vmlinuz", "initrd.img"}) {
      fs::copy_file(debian_ + "/debian-v1/" + f, root_ + "/img/" + f,
                    fs::copy_options::overwrite_existing);
    }
    std::string cmdline = read_file(debian_ + "/debian-v1/cmdline");
    while (!cmdline.empty() && std::isspace(static_cast<unsigned char>(cmdline.back())))
      cmdline.pop_back();

    hypervisor::DomainSpec s;
    s.name = name;
    s.memory_mib = 512;
    s.boot = {root_ + "/img/vmlinuz", root_ + "/img/initrd.img", cmdline};
    s.os_disk = make_overlay(name + ".os.qcow2");
    s.data_disk = root_ + "/vm/" + name + ".data.raw";
    s.console_log = root_ + "/vm/" + name + ".console.log";
    s.guest_agent = true;
    ASSERT_FALSE(HasFailure());
    ASSERT_OK(testbed::create_raw_disk(s.data_disk, kDataDiskBytes));
    auto d = conn_->define(s);
    ASSERT_TRUE(d.ok()) << d.error().describe();
    out.emplace(std::move(d).value());
  }

  // Starts `d` and waits for its guest agent: the event, the channel state, a ping.
  void start_and_wait_for_agent(hypervisor::Domain& d) {
    const size_t from = events_->size();
    const auto t0 = Clock::now();
    ASSERT_OK(d.start());
    ASSERT_TRUE(events_->wait_for(d.uuid(), LifecycleKind::agent_connected, from, kAgentTimeout))
        << "no agent-connected event within " << kAgentTimeout.count()
        << " s; events: " << events_->describe();
    auto connected = d.guest_agent_connected();
    ASSERT_TRUE(connected.ok()) << connected.error().describe();
    EXPECT_TRUE(*connected) << "the live XML says the channel is not connected";
    ASSERT_OK(d.guest_ping(kCommandTimeout));
    std::cerr << d.name() << ": start -> guest agent answering in "
              << std::chrono::duration<double>(Clock::now() - t0).count() << " s\n";
  }

  static inline std::string suite_root_;
  std::string root_;
  std::string debian_;
  std::unique_ptr<Connection> conn_;
  std::unique_ptr<EventLog> events_;
};

TEST_F(GuestAgentRealVm, DebianGuestAnswersPingExecAndANewBootIdAfterAGracefulRestart) {
  std::optional<hypervisor::Domain> dom;
  ASSERT_NO_FATAL_FAILURE(define_debian("deb-0", dom));
  auto& d = *dom;
  ASSERT_NO_FATAL_FAILURE(start_and_wait_for_agent(d));

  auto cat = d.guest_exec({"/bin/cat", "/proc/sys/kernel/random/boot_id"}, kCommandTimeout);
  ASSERT_TRUE(cat.ok()) << cat.error().describe();
  EXPECT_EQ(cat->exit_code, 0);
  EXPECT_TRUE(std::regex_match(cat->out, std::regex("[0-9a-f-]{36}\n"))) << cat->out;
  EXPECT_EQ(cat->err, "");
  EXPECT_FALSE(cat->truncated);
  auto boot1 = d.guest_boot_id(kCommandTimeout);
  ASSERT_TRUE(boot1.ok()) << boot1.error().describe();
  EXPECT_EQ(*boot1 + "\n", cat->out);

  auto three = d.guest_exec({"/bin/sh", "-c", "exit 3"}, kCommandTimeout);
  ASSERT_TRUE(three.ok()) << three.error().describe();
  EXPECT_EQ(three->exit_code, 3) << "a non-zero exit is a result, with its code";

  auto err = d.guest_exec({"/bin/sh", "-c", "echo to-stdout; echo 'to stderr' >&2; exit 1"},
                          kCommandTimeout);
  ASSERT_TRUE(err.ok()) << err.error().describe();
  EXPECT_EQ(err->exit_code, 1);
  EXPECT_EQ(err->out, "to-stdout\n");
  EXPECT_EQ(err->err, "to stderr\n");

  // The disks are where the image expects them: the OS on vda, the 64 MiB data disk on vdb.
  auto disks = d.guest_exec({"/bin/sh", "-c", "findmnt -n -o SOURCE /; cat /sys/block/vdb/size"},
                            kCommandTimeout);
  ASSERT_TRUE(disks.ok()) << disks.error().describe();
  EXPECT_EQ(disks->out, "/dev/vda\n" + std::to_string(kDataDiskBytes / 512) + "\n") << disks->err;

  // Output is capped at 64 KiB and says so.
  auto big =
      d.guest_exec({"/bin/sh", "-c", "head -c 70000 /dev/zero | tr '\\0' a"}, kCommandTimeout);
  ASSERT_TRUE(big.ok()) << big.error().describe();
  EXPECT_EQ(big->out.size(), hypervisor::kGuestExecOutputCap);
  EXPECT_EQ(big->out.find_first_not_of('a'), std::string::npos);
  EXPECT_TRUE(big->truncated);

  // Requests are checked before anything reaches the guest.
  EXPECT_EQ(d.guest_exec({}, kCommandTimeout).condition(), Condition::invalid_argument);
  auto relative = d.guest_exec({"cat", "/etc/hostname"}, kCommandTimeout);
  ASSERT_FALSE(relative.ok());
  EXPECT_NE(relative.error().message.find("argv[0]"), std::string::npos)
      << relative.error().message;
  auto missing = d.guest_exec({"/nonexistent/program"}, kCommandTimeout);
  ASSERT_FALSE(missing.ok()) << "the agent cannot run a program that does not exist";
  std::cerr << "guest-exec of a missing program: " << missing.error().describe() << "\n";
  EXPECT_EQ(missing.condition(), Condition::invalid_argument) << missing.error().describe();

  auto stop = d.shutdown_ladder({120s, 250ms, 3000ms});
  ASSERT_TRUE(stop.ok()) << stop.error().describe();
  EXPECT_EQ(stop->method, StopMethod::graceful) << stop->note;
  std::cerr << "deb-0: ACPI stop in " << stop->elapsed.count() / 1000.0 << " s\n";
  auto off = d.guest_ping(2s);
  ASSERT_FALSE(off.ok());
  EXPECT_EQ(off.condition(), Condition::invalid_state) << off.error().describe();

  // The next boot on a fresh overlay (what a reimage does): the OS disk swap keeps qcow2.
  const std::string next = make_overlay("deb-0.os2.qcow2");
  ASSERT_OK(d.set_disk_source("vda", next));
  auto inactive = d.xml(true);
  ASSERT_TRUE(inactive.ok());
  EXPECT_NE(
      inactive->find("<driver name='qemu' type='qcow2'/>\n      <source file='" + next + "'/>"),
      std::string::npos)
      << *inactive;
  ASSERT_NO_FATAL_FAILURE(start_and_wait_for_agent(d));
  auto boot2 = d.guest_boot_id(kCommandTimeout);
  ASSERT_TRUE(boot2.ok()) << boot2.error().describe();
  EXPECT_NE(*boot2, *boot1) << "a restart is a new boot";
  auto live = d.xml(false);
  ASSERT_TRUE(live.ok());
  EXPECT_NE(live->find("<source file='" + next + "'"), std::string::npos)
      << "the guest runs on the new overlay";
}

TEST_F(GuestAgentRealVm, AStoppedGuestAgentIsReportedNotConnected) {
  std::optional<hypervisor::Domain> dom;
  ASSERT_NO_FATAL_FAILURE(define_debian("deb-1", dom));
  auto& d = *dom;
  ASSERT_NO_FATAL_FAILURE(start_and_wait_for_agent(d));

  // The agent stops itself: guest-exec without polling its status (the agent will be gone).
  const size_t from = events_->size();
  auto reply = d.agent_command(
      R"({"execute":"guest-exec","arguments":{"path":"/bin/systemctl","arg":["stop","qemu-guest-agent"]}})",
      kCommandTimeout);
  ASSERT_TRUE(reply.ok()) << reply.error().describe();
  EXPECT_NE(reply->find("\"pid\""), std::string::npos) << *reply;
  ASSERT_TRUE(events_->wait_for(d.uuid(), LifecycleKind::agent_disconnected, from, 60s))
      << "no agent-disconnected event; events: " << events_->describe();
  auto connected = d.guest_agent_connected();
  ASSERT_TRUE(connected.ok()) << connected.error().describe();
  EXPECT_FALSE(*connected);

  const auto t0 = Clock::now();
  auto ping = d.guest_ping(3s);
  const auto took = Clock::now() - t0;
  ASSERT_FALSE(ping.ok()) << "the agent is stopped";
  std::cerr << "ping after the agent stopped: " << ping.error().describe() << "\n";
  EXPECT_TRUE(ping.condition() == Condition::transient || ping.condition() == Condition::timeout)
      << ping.error().describe();
  EXPECT_NE(ping.error().message.find("not connected"), std::string::npos) << ping.error().message;
  EXPECT_LT(took, 5s) << "the ping is bounded by its timeout";
  EXPECT_EQ(d.state().value(), DomainState::running) << "the guest itself runs on";
}

TEST_F(GuestAgentRealVm, TheBuiltInGuestHasNoAgentAndThePingSaysNotConnected) {
  auto img = testbed::find_image(testbed::default_images_dir(), "v1");
  ASSERT_TRUE(img.ok()) << img.error().describe();
  auto spec = testbed::guest_spec("builtin-0", root_ + "/vm", *img);
  ASSERT_TRUE(spec.ok()) << spec.error().describe();
  spec->guest_agent = true;
  auto d = conn_->define(*spec);
  ASSERT_TRUE(d.ok()) << d.error().describe();
  ASSERT_OK(d->start());
  // The OS is up (its own heartbeat on the integration channel), and yet no agent answers.
  auto link = agent::GuestLink::connect(spec->channel_socket, 10s);
  ASSERT_TRUE(link.ok()) << link.error().describe();
  auto hb = (*link)->wait_for_heartbeat(90s);
  ASSERT_TRUE(hb.ok()) << hb.error().describe();

  const auto t0 = Clock::now();
  auto ping = d->guest_ping(5s);
  const auto took = Clock::now() - t0;
  ASSERT_FALSE(ping.ok());
  std::cerr << "ping of the built-in guest: " << ping.error().describe() << "\n";
  EXPECT_EQ(ping.condition(), Condition::transient) << ping.error().describe();
  EXPECT_NE(ping.error().message.find("not connected"), std::string::npos) << ping.error().message;
  EXPECT_LT(took, 6s) << "within its timeout";
  auto connected = d->guest_agent_connected();
  ASSERT_TRUE(connected.ok()) << connected.error().describe();
  EXPECT_FALSE(*connected);
  auto exec = d->guest_exec({"/bin/true"}, 5s);
  EXPECT_EQ(exec.condition(), Condition::transient) << "guest-exec needs the agent too";
}

}  // namespace
}  // namespace fabriclab
