// The hypervisor layer's contract on libvirt's test driver. Every test opens its own node file,
// so each has a private, empty hypervisor (test:///default would be shared).

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/testbed/lab_vm.hpp"
#include "status_matchers.hpp"
#include "wait_until.hpp"

namespace fabriclab::hypervisor {
namespace {

using namespace std::chrono_literals;

class TestDriver : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = testbed::make_short_tmpdir("fl-drv-");
    ASSERT_TRUE(dir.ok());
    dir_ = *dir;
    auto node = write_test_node(dir_);
    ASSERT_TRUE(node.ok()) << node.error().describe();
    auto c = Connection::open(*node);
    ASSERT_TRUE(c.ok()) << c.error().describe();
    conn_ = std::move(c).value();
  }
  void TearDown() override {
    conn_.reset();
    std::filesystem::remove_all(dir_);
  }

  DomainSpec spec(const std::string& name) {
    DomainSpec s;
    s.name = name;
    s.boot = {"/images/vmlinuz", "/images/v1/initrd.img", "console=ttyS0"};
    s.data_disk = dir_ + "/" + name + ".raw";
    s.channel_socket = dir_ + "/" + name + ".sock";
    s.metadata = InstanceMetadata{"web", 1, 1, 0, "v1"};
    return s;
  }

  std::string dir_;
  std::unique_ptr<Connection> conn_;
};

TEST_F(TestDriver, OpensWithTheTestDomainType) {
  EXPECT_EQ(conn_->domain_type(), "test");
  auto list = conn_->list();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty()) << "a private node file starts empty";
}

TEST_F(TestDriver, LifecycleDefineStartSuspendResumeStopUndefine) {
  auto d = conn_->define(spec("web-1"));
  ASSERT_TRUE(d.ok()) << d.error().describe();
  EXPECT_EQ(*d->state(), DomainState::shut_off);
  ASSERT_OK(d->start());
  EXPECT_EQ(*d->state(), DomainState::running);
  ASSERT_OK(d->suspend());
  EXPECT_EQ(*d->state(), DomainState::paused);
  ASSERT_OK(d->resume());
  EXPECT_EQ(*d->state(), DomainState::running);

  auto stop = d->shutdown_ladder({5s, 50ms});
  ASSERT_TRUE(stop.ok()) << stop.error().describe();
  EXPECT_EQ(stop->method, StopMethod::graceful);
  EXPECT_EQ(*d->state(), DomainState::shut_off);
  auto again = d->shutdown_ladder({5s, 50ms});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->method, StopMethod::already_off);

  auto list = conn_->list();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "web-1");
  EXPECT_TRUE((*list)[0].persistent);

  ASSERT_OK(d->undefine());
  EXPECT_EQ(conn_->lookup("web-1").condition(), Condition::not_found);
}

TEST_F(TestDriver, ErrorPathsCarryConditions) {
  auto unknown = conn_->lookup("nope");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.condition(), Condition::not_found);
  EXPECT_NE(unknown.error().message.find("nope"), std::string::npos);

  auto d = conn_->define(spec("web-1"));
  ASSERT_TRUE(d.ok());
  ASSERT_OK(d->start());
  auto twice = d->start();
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.condition(), Condition::invalid_state);
  EXPECT_NE(twice.error().message.find("web-1"), std::string::npos);

  ASSERT_OK(d->destroy());
  EXPECT_EQ(d->destroy().condition(), Condition::invalid_state);
  EXPECT_EQ(d->resume().condition(), Condition::invalid_state);

  auto bad_xml = conn_->define_xml("<domain type='test'><name>x</name>");
  ASSERT_FALSE(bad_xml.ok());
  EXPECT_EQ(bad_xml.condition(), Condition::invalid_argument) << bad_xml.error().describe();

  auto bad_spec = spec("bad name!");
  EXPECT_EQ(conn_->define(bad_spec).condition(), Condition::invalid_argument);
}

TEST(HypervisorUri, BadUrisAreRefusedWithConditions) {
  auto empty = Connection::open("");
  EXPECT_EQ(empty.condition(), Condition::invalid_argument);
  auto garbage = Connection::open("not a uri");
  EXPECT_EQ(garbage.condition(), Condition::invalid_argument);
  auto missing = Connection::open("test:///no/such/node.xml");
  EXPECT_EQ(missing.condition(), Condition::not_found);
  EXPECT_NE(missing.error().message.find("/no/such/node.xml"), std::string::npos);
  auto driver = Connection::open("bogusdriver:///x");
  ASSERT_FALSE(driver.ok());
  EXPECT_EQ(driver.condition(), Condition::unsupported) << driver.error().describe();
  auto relative_root = Connection::open("qemu:///embed?root=relative");
  EXPECT_EQ(relative_root.condition(), Condition::invalid_argument);
}

TEST_F(TestDriver, MetadataRoundTripsLiveAndConfig) {
  auto s = spec("worker-2");
  s.metadata.reset();
  auto d = conn_->define(s);
  ASSERT_TRUE(d.ok());
  auto none = d->metadata();
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.condition(), Condition::not_found);

  InstanceMetadata m{"worker", 2, 2, 0, "v1"};
  ASSERT_OK(d->set_metadata(m));  // inactive: CONFIG only
  EXPECT_EQ(*d->metadata(), m);
  ASSERT_OK(d->start());
  m.image = "v2";
  ASSERT_OK(d->set_metadata(m));  // running: LIVE|CONFIG
  EXPECT_EQ(*d->metadata(), m);
  ASSERT_OK(d->destroy());
  auto persisted = d->metadata();
  ASSERT_TRUE(persisted.ok()) << persisted.error().describe();
  EXPECT_EQ(persisted->image, "v2") << "a LIVE-only change would be lost at the next boot";

  auto defined = conn_->define(spec("web-1"));
  ASSERT_TRUE(defined.ok());
  EXPECT_EQ(defined->metadata()->service, "web");
}

TEST_F(TestDriver, LifecycleEventsArriveAsPlainValuesInOrder) {
  std::mutex mu;
  std::vector<LifecycleEvent> seen;
  int id = conn_->subscribe([&](const LifecycleEvent& e) {
    std::lock_guard lock(mu);
    seen.push_back(e);
  });
  std::shared_ptr<void> unsubscribe(nullptr, [&](void*) { conn_->unsubscribe(id); });
  auto d = conn_->define(spec("web-1"));
  ASSERT_TRUE(d.ok());
  ASSERT_OK(d->start());
  ASSERT_OK(d->suspend());
  ASSERT_OK(d->resume());
  ASSERT_OK(d->destroy());
  std::vector<LifecycleKind> want = {LifecycleKind::defined, LifecycleKind::started,
                                     LifecycleKind::suspended, LifecycleKind::resumed,
                                     LifecycleKind::stopped};
  testing::wait_until(
      [&] {
        std::lock_guard lock(mu);
        return seen.size() >= want.size();
      },
      2s, 20ms);
  std::lock_guard lock(mu);
  ASSERT_EQ(seen.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(seen[i].kind, want[i]) << "event " << i << " was " << to_string(seen[i].kind);
    EXPECT_EQ(seen[i].domain, "web-1");
    EXPECT_EQ(seen[i].uuid, d->uuid());
    if (i > 0) {
      EXPECT_GT(seen[i].seq, seen[i - 1].seq);
    }
  }
}

TEST_F(TestDriver, BootImageChangesOnlyTheNextBoot) {
  auto d = conn_->define(spec("web-1"));
  ASSERT_TRUE(d.ok());
  ASSERT_OK(d->start());
  BootImage v2{"/images/vmlinuz", "/images/v2/initrd.img", "console=ttyS0 fabriclab.mode=normal"};
  ASSERT_OK(d->set_boot_image(v2));
  auto next = d->boot_image();
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->initrd, "/images/v2/initrd.img");
  EXPECT_EQ(next->cmdline, v2.cmdline);
  auto live = d->xml(false);
  ASSERT_TRUE(live.ok());
  EXPECT_NE(live->find("/images/v1/initrd.img"), std::string::npos) << "the running guest keeps v1";

  ASSERT_OK(d->set_disk_source("vda", dir_ + "/other.raw"));
  EXPECT_NE(d->xml(true)->find(dir_ + "/other.raw"), std::string::npos);
  EXPECT_EQ(d->set_disk_source("vdz", "/x.raw").condition(), Condition::not_found);
  EXPECT_EQ(d->set_boot_image({"relative", "", ""}).condition(), Condition::invalid_argument);
}

TEST_F(TestDriver, ManagedSaveStopsAndStartRestores) {
  auto d = conn_->define(spec("web-1"));
  ASSERT_TRUE(d.ok());
  ASSERT_OK(d->start());
  ASSERT_OK(d->managed_save());
  EXPECT_EQ(*d->state(), DomainState::shut_off);
  EXPECT_TRUE(*d->has_managed_save());
  ASSERT_OK(d->start());
  EXPECT_EQ(*d->state(), DomainState::running);
  EXPECT_FALSE(*d->has_managed_save());
}

}  // namespace
}  // namespace fabriclab::hypervisor
