// The hypervisor layer's behaviours on real QEMU guests (label `realvm`), through the embedded
// driver: each test process has its own root, so ctest may run them in parallel.
//
// These tests skip only where QEMU cannot run at all (no emulator binary), and say why.

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "fabriclab/agent/guest_link.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/testbed/lab_vm.hpp"
#include "status_matchers.hpp"
#include "vm_teardown.hpp"
#include "wait_until.hpp"

namespace fabriclab {
namespace {

using namespace std::chrono_literals;
using agent::GuestLink;
using agent::GuestMessage;
using agent::Heartbeat;
using hypervisor::Connection;
using hypervisor::DomainState;
using hypervisor::StopMethod;

constexpr auto kBootTimeout = 90s;  // TCG on a loaded 2-core machine

Heartbeat heartbeat_of(const agent::ReceivedMessage& m) { return std::get<Heartbeat>(m.message); }

class RealVm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/usr/bin/qemu-system-x86_64", X_OK) != 0) {
      GTEST_SKIP() << "QEMU cannot run here: /usr/bin/qemu-system-x86_64 is missing "
                      "(run testbed/setup.sh)";
    }
    images_dir_ = testbed::default_images_dir();
    auto root = testbed::make_short_tmpdir("flvm-");
    ASSERT_TRUE(root.ok());
    root_ = *root;
    auto c = Connection::open("qemu:///embed?root=" + root_);
    ASSERT_TRUE(c.ok()) << c.error().describe();
    conn_ = std::move(c).value();
  }

  void TearDown() override {
    if (conn_) {
      testing::remove_all_domains(*conn_);
      conn_.reset();
    }
    if (HasFailure()) dump_consoles();
    if (!root_.empty()) std::filesystem::remove_all(root_);
  }

  void dump_consoles() { testing::dump_console_tails(root_ + "/vm", 4000); }

  testbed::GuestImage image(const std::string& version) {
    auto img = testbed::find_image(images_dir_, version);
    EXPECT_TRUE(img.ok()) << img.error().describe();
    return img.ok() ? *img : testbed::GuestImage{};
  }

  hypervisor::Domain define(const std::string& name, const std::string& version,
                            testbed::GuestOptions opts = {}) {
    auto spec = testbed::guest_spec(name, root_ + "/vm", image(version), opts);
    EXPECT_TRUE(spec.ok()) << spec.error().describe();
    spec->metadata = hypervisor::InstanceMetadata{"web", 0, 0, 0, version};
    auto d = conn_->define(*spec);
    EXPECT_TRUE(d.ok()) << d.error().describe();
    return std::move(d).value();
  }

  std::unique_ptr<GuestLink> link_to(const std::string& name) {
    auto link = GuestLink::connect(root_ + "/vm/" + name + ".sock", 10s);
    EXPECT_TRUE(link.ok()) << link.error().describe();
    return link.ok() ? std::move(link).value() : nullptr;
  }

  // Starts `d` (the domain `name`), connects `link` to its guest channel and waits for the boot's
  // first heartbeat (`first`).
  void start_and_link(hypervisor::Domain& d, const std::string& name,
                      std::unique_ptr<GuestLink>& link, Heartbeat& first) {
    ASSERT_OK(d.start());
    link = link_to(name);
    ASSERT_TRUE(link);
    auto hb = link->wait_for_heartbeat(kBootTimeout);
    ASSERT_TRUE(hb.ok()) << hb.error().describe();
    first = heartbeat_of(*hb);
  }

  std::string images_dir_;
  std::string root_;
  std::unique_ptr<Connection> conn_;
};

TEST_F(RealVm, GuestBootsStopsGracefullySwapsToV2AndKeepsItsCounter) {
  auto d = define("web-0", "v1");
  std::unique_ptr<GuestLink> link;
  Heartbeat first;
  ASSERT_NO_FATAL_FAILURE(start_and_link(d, "web-0", link, first));
  EXPECT_EQ(first.image, "v1");
  EXPECT_GE(first.counter, 0) << "the guest has its data disk";

  // The guest answers what the host tells it (instance identity, scheduled events).
  ASSERT_TRUE(
      link->send_line(guestproto::to_line(agent::InstanceIdentity{"web", 0, 0, 0, "host-a"})).ok());
  auto iack = link->wait_for(
      [](const GuestMessage& m) { return std::holds_alternative<agent::InstanceAck>(m); }, 10s);
  ASSERT_TRUE(iack.ok()) << iack.error().describe();
  EXPECT_EQ(std::get<agent::InstanceAck>(iack->message).service, "web");
  agent::ScheduledEvent ev;
  ev.event_id = "evt-1";
  ev.resources = {"web-0"};
  ASSERT_TRUE(link->send_line(guestproto::to_line(agent::ScheduledEventsDoc{1, {ev}})).ok());
  auto ack = link->wait_for(
      [](const GuestMessage& m) {
        auto* a = std::get_if<agent::Ack>(&m);
        return a && a->event_id == "evt-1";
      },
      10s);
  ASSERT_TRUE(ack.ok()) << ack.error().describe();

  // Let the counter move, remember the last durable value reported before the stop.
  auto later = link->wait_for_heartbeat(10s, ack->index);
  ASSERT_TRUE(later.ok());
  const Heartbeat before = heartbeat_of(*link->last_heartbeat());
  EXPECT_GT(before.counter, first.counter);

  auto stop = d.shutdown_ladder({10s, 250ms});
  ASSERT_TRUE(stop.ok()) << stop.error().describe();
  EXPECT_EQ(stop->method, StopMethod::graceful) << stop->note;
  EXPECT_LT(stop->elapsed, 10s);
  auto fin = link->wait_for(
      [](const GuestMessage& m) { return std::holds_alternative<agent::Final>(m); }, 5s);
  EXPECT_TRUE(fin.ok()) << "a clean power-off sends its final record";
  if (fin.ok()) {
    EXPECT_TRUE(std::get<agent::Final>(fin->message).clean);
  }
  const int64_t last_reported = heartbeat_of(*link->last_heartbeat()).counter;
  link.reset();

  // Swap to v2 for the next boot and start again.
  auto v2 = image("v2");
  auto boot = d.boot_image();
  ASSERT_TRUE(boot.ok());
  ASSERT_OK(d.set_boot_image({v2.kernel, v2.initrd, boot->cmdline}));
  Heartbeat hb;
  ASSERT_NO_FATAL_FAILURE(start_and_link(d, "web-0", link, hb));
  EXPECT_EQ(hb.image, "v2");
  EXPECT_NE(hb.boot_id, before.boot_id) << "a new boot";
  EXPECT_GE(hb.counter, last_reported) << "no durable counter value was lost";
}

TEST_F(RealVm, GuestIgnoringThePowerButtonIsDestroyedAfterTheTimeout) {
  testbed::GuestOptions opts;
  opts.mode = "ignore-power";
  auto d = define("stubborn-0", "v1", opts);
  std::unique_ptr<GuestLink> link;
  Heartbeat hb;
  ASSERT_NO_FATAL_FAILURE(start_and_link(d, "stubborn-0", link, hb));
  EXPECT_EQ(hb.mode, "ignore-power");

  auto stop = d.shutdown_ladder({3s, 250ms});
  ASSERT_TRUE(stop.ok()) << stop.error().describe();
  EXPECT_EQ(stop->method, StopMethod::destroyed);
  EXPECT_GE(stop->elapsed, 3s);
  EXPECT_NE(stop->note.find("no power-off"), std::string::npos);
  EXPECT_EQ(*d.state(), DomainState::shut_off);
}

TEST_F(RealVm, MetadataAndLifecycleEventsOnARealGuest) {
  std::mutex mu;
  std::vector<hypervisor::LifecycleKind> kinds;
  const int sub = conn_->subscribe([&](const hypervisor::LifecycleEvent& e) {
    std::lock_guard lock(mu);
    kinds.push_back(e.kind);
  });
  // The handler captures locals: unsubscribe before they go, whichever way the test ends.
  std::shared_ptr<void> unsubscribe(nullptr, [&](void*) { conn_->unsubscribe(sub); });
  auto d = define("meta-0", "v1");
  ASSERT_OK(d.start());
  EXPECT_EQ(*d.state(), DomainState::running);
  hypervisor::InstanceMetadata m{"worker", 2, 2, 1, "v1"};
  ASSERT_OK(d.set_metadata(m));  // running: LIVE|CONFIG
  EXPECT_EQ(*d.metadata(), m);

  ASSERT_OK(d.suspend());
  EXPECT_EQ(*d.state(), DomainState::paused);
  ASSERT_OK(d.resume());
  ASSERT_OK(d.destroy());
  auto persisted = d.metadata();
  ASSERT_TRUE(persisted.ok()) << persisted.error().describe();
  EXPECT_EQ(*persisted, m) << "LIVE|CONFIG survives the stop";

  testing::wait_until(
      [&] {
        std::lock_guard lock(mu);
        return !kinds.empty() && kinds.back() == hypervisor::LifecycleKind::stopped;
      },
      5s);
  std::lock_guard lock(mu);
  auto has = [&](hypervisor::LifecycleKind k) {
    return std::find(kinds.begin(), kinds.end(), k) != kinds.end();
  };
  EXPECT_TRUE(has(hypervisor::LifecycleKind::started));
  EXPECT_TRUE(has(hypervisor::LifecycleKind::suspended));
  EXPECT_TRUE(has(hypervisor::LifecycleKind::resumed));
  EXPECT_TRUE(has(hypervisor::LifecycleKind::stopped));
  EXPECT_EQ(d.start_paused().ok(), true);
  EXPECT_EQ(d.start().condition(), Condition::invalid_state) << "double start";
}

}  // namespace
}  // namespace fabriclab
