// The host agent on a real Debian 12 guest (label `realvm`): a guest that brings its own OS disk
// (testbed/build-debian-image.sh) runs on its own overlay, is known to be up through the
// qemu-guest-agent, proves its data through a data check, and is reimaged onto a fresh overlay
// while its data disk is kept.

#include <filesystem>
#include <fstream>

#include "agent_fixture.hpp"
#include "fabriclab/hypervisor/disk_image.hpp"

namespace fabriclab::testing {
namespace {

namespace fs = std::filesystem;
using agent::OperationKind;

constexpr auto kUp = 180s;

class AgentOnDebian : public AgentFixture {
 protected:
  void SetUp() override {
    debian_ = testbed::debian_images_dir();
    ASSERT_FALSE(debian_.empty()) << testbed::debian_images_missing_message();
    // debian-v1-noagent: the same disk and kernel, booted with the guest agent masked — the
    // stand-in for a customer's VM that runs no guest agent.
    auto tmp = testbed::make_short_tmpdir("fld-");
    ASSERT_TRUE(tmp.ok());
    extra_images_ = *tmp;
    write_noagent_manifest();
    agent::AgentOptions o;
    o.stop_timeout = 30s;
    o.boot_timeout = 120s;  // a Debian boot under TCG on a loaded 2-core CI machine took up to 77 s
    o.guest_images_dirs = {testbed::default_images_dir(), debian_, extra_images_};
    open_agent(true, o);
  }
  void TearDown() override {
    delete_instances();
    AgentFixture::TearDown();
    if (!extra_images_.empty()) fs::remove_all(extra_images_);
  }

  void write_noagent_manifest() {
    const std::string v1 = debian_ + "/debian-v1";
    std::ifstream in(v1 + "/cmdline");
    std::string cmdline;
    std::getline(in, cmdline);
    cmdline += " systemd.mask=qemu-guest-agent.service";
    auto sha = [](const std::string& f) { return agent::sha256_file(f).value(); };
    auto info = hypervisor::qemu_img_info(v1 + "/disk.qcow2");
    ASSERT_TRUE(info.ok()) << info.error().describe();
    json::object image{
        {"name", "debian-v1-noagent"},
        {"boot", "kernel"},
        {"cmdline", cmdline},
        {"disk", json::object{{"path", v1 + "/disk.qcow2"},
                              {"format", "qcow2"},
                              {"virtual_size", info->virtual_size},
                              {"sha256", sha(v1 + "/disk.qcow2")}}},
        {"kernel", json::object{{"path", v1 + "/vmlinuz"}, {"sha256", sha(v1 + "/vmlinuz")}}},
        {"initrd",
         json::object{{"path", v1 + "/initrd.img"}, {"sha256", sha(v1 + "/initrd.img")}}}};
    std::ofstream(extra_images_ + "/manifest.json")
        << json::serialize(json::object{{"images", json::array{image}}});
  }

  agent::InstanceSpec debian(int index, const std::string& image = "debian-v1") {
    auto s = spec("web", index, image);
    s.memory_mib = 384;
    s.data_check = agent::DataCheck{{"/bin/cat", "/data/counter"}, "not_less"};
    return s;
  }

  // Waits until the instance's guest agent has answered (its signals say so) and its app has
  // written its counter (on a first boot the guest makes /data's file system first): a drill
  // starts its walk on healthy apps only, and so does this test. The counter is read through the
  // guest agent (the instance's data check).
  void wait_guest_agent(const std::string& name) {
    auto deadline = std::chrono::steady_clock::now() + kUp;
    json::object last;
    ASSERT_TRUE(poll_instance(name, deadline, guest_agent_up, last, 200ms))
        << name << ": the guest agent never connected: " << json::serialize(last);
    std::string why;
    while (std::chrono::steady_clock::now() < deadline) {
      auto out = agent_->data_check(name);
      if (out.ok() && std::atoll(out->c_str()) > 0) return;
      why = out.ok() ? "'" + *out + "'" : out.error().describe();
      std::this_thread::sleep_for(1s);
    }
    FAIL() << name << ": the app never wrote /data/counter: " << why;
  }

  std::vector<std::string> instance_files(const std::string& name) {
    std::vector<std::string> out;
    for (auto& e : fs::directory_iterator(dir_ + "/st/vm/" + name + ".d"))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  std::string debian_, extra_images_;
};

int64_t counter_of(const json::value& out) { return std::stoll(std::string(out.as_string())); }

TEST_F(AgentOnDebian, HostOsUpdateThenReimageKeepTheDataAndDropTheOldOverlayOnlyAfterVerification) {
  ASSERT_OK(agent_->create_instance(debian(0)));
  wait_guest_agent("web-0");
  EXPECT_EQ(instance_files("web-0"),
            (std::vector<std::string>{"boot-debian-v1", "os-debian-v1-1.qcow2"}));

  stage_host_image("host-2");
  auto job = run_job({OperationKind::host_os, "host-2", false, 1000}, 400s);
  ASSERT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  {
    auto& g = job["guests"].as_array().at(0).as_object();
    EXPECT_TRUE(g.at("ok").as_bool()) << json::serialize(g);
    EXPECT_EQ(g.at("stop_method").as_string(), "graceful")
        << "systemd powers off on the ACPI button";
    EXPECT_TRUE(g.at("signals").as_object().at("guest_agent").as_bool());
    EXPECT_FALSE(g.at("signals").as_object().at("heartbeat").as_bool())
        << "no program of ours runs inside";
    EXPECT_TRUE(g.at("os_up").as_bool());
    EXPECT_EQ(g.at("boot_id_source").as_string(), "guest_agent");
    EXPECT_EQ(g.at("boot_id_before").as_string().size(), 36u);
    EXPECT_NE(g.at("boot_id_after"), g.at("boot_id_before"))
        << "a host-os update reboots the guest";
    auto& dc = g.at("data_check").as_object();
    EXPECT_TRUE(dc.at("ok").as_bool()) << json::serialize(dc);
    EXPECT_GE(counter_of(dc.at("after")), counter_of(dc.at("before")))
        << "the counter on /data survived";
    EXPECT_GT(counter_of(dc.at("before")), 0);
  }

  auto reimage = run_job({OperationKind::guest_os, "debian-v2", false, 1000}, 400s);
  ASSERT_EQ(reimage["status"].as_string(), "succeeded") << json::serialize(reimage);
  auto& g = reimage["guests"].as_array().at(0).as_object();
  auto& dc = g.at("data_check").as_object();
  EXPECT_TRUE(dc.at("ok").as_bool()) << json::serialize(dc);
  EXPECT_GE(counter_of(dc.at("after")), counter_of(dc.at("before")))
      << "the reimage kept the data disk";
  EXPECT_EQ(agent_->instance_json("web-0")->at("image").as_string(), "debian-v2");
  // Verified on the new overlay: the old overlay and kernel copy are gone, the new one is backed
  // by debian-v2's disk.
  EXPECT_EQ(instance_files("web-0"),
            (std::vector<std::string>{"boot-debian-v2", "os-debian-v2-2.qcow2"}));
  auto info = hypervisor::qemu_img_info(dir_ + "/st/vm/web-0.d/os-debian-v2-2.qcow2");
  ASSERT_TRUE(info.ok()) << info.error().describe();
  EXPECT_NE(info->backing_file.find("debian-v2/disk.qcow2"), std::string::npos)
      << info->backing_file;
}

TEST_F(AgentOnDebian, AGuestWithoutAGuestAgentRunsOnItsProbeAndOneWhoseAgentVanishesIsRolledBack) {
  // Without a guest agent from the start: nothing to ask, the report says so.
  ASSERT_OK(agent_->create_instance(debian(1, "debian-v1-noagent")));
  wait_status("web-1", "Healthy", kUp);
  stage_host_image("host-2");
  auto job = run_job({OperationKind::host_os, "host-2", false, 0}, 400s);
  ASSERT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job);
  auto& g = job["guests"].as_array().at(0).as_object();
  EXPECT_FALSE(g.at("signals").as_object().at("guest_agent").as_bool());
  EXPECT_EQ(g.at("boot_id_source").as_string(), "");
  auto& dc = g.at("data_check").as_object();
  EXPECT_FALSE(dc.at("ok").as_bool());
  EXPECT_NE(std::string(dc.at("error").as_string()).find("no guest agent"), std::string::npos)
      << json::serialize(dc);
  ASSERT_OK(agent_->delete_instance("web-1"));

  // A guest that had one and comes back without it: the OS signal is missing, the reimage is
  // not verified and the guest goes back to its old overlay.
  ASSERT_OK(agent_->create_instance(debian(0)));
  wait_guest_agent("web-0");
  auto broken = run_job({OperationKind::guest_os, "debian-v1-noagent", false, 0}, 600s);
  EXPECT_EQ(broken["status"].as_string(), "failed") << json::serialize(broken);
  std::string error(broken["error"].as_string());
  EXPECT_NE(error.find("guest agent did not answer"), std::string::npos) << error;
  EXPECT_NE(error.find("rolled back to debian-v1"), std::string::npos) << error;
  EXPECT_EQ(agent_->instance_json("web-0")->at("image").as_string(), "debian-v1");
  EXPECT_EQ(instance_files("web-0"),
            (std::vector<std::string>{"boot-debian-v1", "os-debian-v1-1.qcow2"}))
      << "back on its first overlay; the unverified one is dropped";
}

}  // namespace
}  // namespace fabriclab::testing
