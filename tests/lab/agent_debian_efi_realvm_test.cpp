// A guest that boots through its OWN bootloader (label `realvm`): the Debian image's EFI variant
// (testbed/build-debian-image.sh -> debian-efi-v1/v2: a GPT disk whose EFI system partition holds
// GRUB, the kernel and the initrd; no kernel beside the image) added with boot: disk, firmware:
// efi. The agent gives it OVMF and its own NVRAM; the guest proves through the guest agent that it
// runs under UEFI on the command line its GRUB set, and keeps doing so across a host-os update
// and a guest-os reimage (v1 -> v2) that keep its data disk.

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "agent_fixture.hpp"
#include "fabriclab/hypervisor/disk_image.hpp"
#include "wait_until.hpp"

namespace fabriclab::testing {
namespace {

namespace fs = std::filesystem;
using agent::OperationKind;

constexpr auto kUp = 300s;  // OVMF under TCG, beside other helpers' guests
const std::string kOvmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const std::string kOvmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd";

// Through guest-exec, before and after every operation: the counter on /data, but only from a
// guest that runs under UEFI (/sys/firmware/efi) on the kernel command line our GRUB passes;
// anything else prints a word the not_less rule refuses, so the data check fails and says why.
const std::vector<std::string> kEfiCounter = {
    "/bin/sh", "-c",
    "if test -d /sys/firmware/efi && grep -qw fabriclab.boot=grub-efi /proc/cmdline; "
    "then cat /data/counter; else echo not-booted-by-grub-under-uefi; fi"};

class AgentOnDebianEfi : public AgentFixture {
 protected:
  void SetUp() override {
    debian_ = testbed::debian_images_dir();
    ASSERT_FALSE(debian_.empty()) << testbed::debian_images_missing_message();
    for (const char* v : {"debian-efi-v1", "debian-efi-v2"}) {
      ASSERT_TRUE(fs::exists(debian_ + "/" + v + "/disk.qcow2"))
          << debian_ << " has no " << v
          << " (an image set built before the EFI variants): rebuild it with "
          << "testbed/build-debian-image.sh DIR, or run ./fabriclab.sh test";
    }
    for (const auto& f : {kOvmfCode, kOvmfVars}) {
      ASSERT_TRUE(fs::is_regular_file(f))
          << f << " is missing: the ovmf package (testbed/setup.sh installs it)";
    }
  }
  void TearDown() override {
    delete_instances();
    AgentFixture::TearDown();
  }

  void open_real_agent(agent::AgentOptions o = {}) {
    o.stop_timeout = 60s;
    o.boot_timeout = 240s;
    o.guest_images_dirs = {testbed::default_images_dir(), debian_};
    open_agent(true, o);
  }

  agent::InstanceSpec efi_guest(int index, const std::string& image = "debian-efi-v1") {
    auto s = spec("web", index, image);
    s.memory_mib = 384;
    s.data_check = agent::DataCheck{kEfiCounter, "not_less"};
    return s;
  }

  // Waits until the guest's `boot`-th boot has reached its serial login prompt (the guest agent
  // answers earlier: on a loaded machine systemd may still be starting logind, which handles the
  // ACPI power button, and mounting /data), then until its data check reads a counter the app
  // has written (through the guest agent, as the operations read it before they stop the guest).
  void wait_booted(const std::string& name, size_t boot) {
    const auto deadline = std::chrono::steady_clock::now() + kUp;
    auto left = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
    };
    wait_until([&] { return count(console(name), "login: ") >= boot; }, left(), 500ms);
    ASSERT_GE(count(console(name), "login: "), boot)
        << name << ": boot " << boot << " never reached its login prompt\n"
        << console_tail(name);
    std::string last;
    const bool written = wait_until(
        [&] {
          auto out = agent_->data_check(name);
          last = out.ok() ? "'" + *out + "'" : out.error().describe();
          return out.ok() && std::atoll(out->c_str()) > 0;
        },
        left(), 1s);
    ASSERT_TRUE(written) << name << ": the data check never read a counter: " << last;
  }

  // Waits until the guest agent answers; returns how long that took from `since`.
  std::chrono::milliseconds wait_guest_agent(const std::string& name,
                                             std::chrono::steady_clock::time_point since) {
    json::object last;
    if (poll_instance(name, std::chrono::steady_clock::now() + kUp, guest_agent_up, last, 200ms)) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - since);
    }
    ADD_FAILURE() << name << ": the guest agent never connected: " << json::serialize(last)
                  << "\nconsole:\n"
                  << console_tail(name);
    return {};
  }

  std::string vm_dir() const { return dir_ + "/st/vm"; }

  std::vector<std::string> instance_files(const std::string& name) {
    std::vector<std::string> out;
    for (auto& e : fs::directory_iterator(vm_dir() + "/" + name + ".d"))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  std::string console(const std::string& name) {
    std::ifstream in(vm_dir() + "/" + name + ".console.log", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::string console_tail(const std::string& name) {
    auto c = console(name);
    return c.size() > 3000 ? c.substr(c.size() - 3000) : c;
  }
  size_t count(const std::string& hay, const std::string& needle) {
    size_t n = 0;
    for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
    return n;
  }

  std::string debian_;
};

int64_t counter_of(const json::value& out) {
  const std::string s(out.as_string());
  try {
    return std::stoll(s);
  } catch (...) {
    ADD_FAILURE() << "not a counter: '" << s << "'";
    return -1;
  }
}

// The data check's outputs prove, from inside the guest, that it booted through GRUB under UEFI.
void expect_efi_data_kept(const json::object& g, const std::string& what) {
  auto& dc = g.at("data_check").as_object();
  EXPECT_TRUE(dc.at("ok").as_bool()) << what << ": " << json::serialize(dc);
  EXPECT_GT(counter_of(dc.at("before")), 0) << what;
  EXPECT_GE(counter_of(dc.at("after")), counter_of(dc.at("before")))
      << what << ": the counter on /data survived";
}

TEST_F(AgentOnDebianEfi, BootsThroughItsOwnGrubUnderOvmfAndKeepsItsDataAcrossHostOsAndReimage) {
  open_real_agent();
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_OK(agent_->create_instance(efi_guest(0)));
  const auto up = wait_guest_agent("web-0", t0);
  std::cout << "[figure] debian-efi-v1: create -> guest agent answering " << up.count()
            << " ms (TCG, OVMF)\n";
  RecordProperty("efi_boot_to_guest_agent_ms", std::to_string(up.count()));
  wait_booted("web-0", 1);

  // No kernel of the image was copied (there is none): the instance has its overlay and its own
  // UEFI variable store, and its definition names OVMF and that store, with no <kernel>.
  EXPECT_EQ(instance_files("web-0"),
            (std::vector<std::string>{"efivars.fd", "os-debian-efi-v1-1.qcow2"}));
  EXPECT_EQ(fs::file_size(vm_dir() + "/web-0.d/efivars.fd"), fs::file_size(kOvmfVars));
  auto xml = agent_->domain_xml("web-0");
  ASSERT_TRUE(xml.ok()) << xml.error().describe();
  EXPECT_NE(xml->find("<loader readonly='yes' type='pflash'>" + kOvmfCode + "</loader>"),
            std::string::npos)
      << *xml;
  EXPECT_NE(xml->find("<nvram>" + vm_dir() + "/web-0.d/efivars.fd</nvram>"), std::string::npos)
      << *xml;
  EXPECT_EQ(xml->find("<kernel>"), std::string::npos) << *xml;
  // The serial console shows the firmware handing over to the disk's GRUB, and GRUB's own line.
  const std::string grub_line = "fabriclab: booting the kernel from (hd0,gpt1)";
  auto c = console("web-0");
  EXPECT_NE(c.find("BdsDxe: starting Boot"), std::string::npos) << console_tail("web-0");
  EXPECT_EQ(count(c, grub_line), 1u) << console_tail("web-0");

  stage_host_image("host-2");
  auto job = run_job({OperationKind::host_os, "host-2", false, 1000}, 600s);
  ASSERT_EQ(job["status"].as_string(), "succeeded") << json::serialize(job) << "\n"
                                                    << console_tail("web-0");
  {
    auto& g = job["guests"].as_array().at(0).as_object();
    EXPECT_TRUE(g.at("ok").as_bool()) << json::serialize(g);
    EXPECT_EQ(g.at("stop_method").as_string(), "graceful")
        << "systemd powers off on the ACPI button under UEFI too";
    EXPECT_EQ(g.at("boot_id_source").as_string(), "guest_agent");
    EXPECT_EQ(g.at("boot_id_before").as_string().size(), 36u);
    EXPECT_NE(g.at("boot_id_after"), g.at("boot_id_before"))
        << "a host-os update reboots the guest";
    expect_efi_data_kept(g, "host-os");
  }
  EXPECT_EQ(count(console("web-0"), grub_line), 2u) << "booted again through its GRUB\n"
                                                    << console_tail("web-0");
  EXPECT_EQ(instance_files("web-0"),
            (std::vector<std::string>{"efivars.fd", "os-debian-efi-v1-1.qcow2"}))
      << "a host-os update keeps the overlay and the NVRAM";

  wait_booted("web-0", 2);
  auto reimage = run_job({OperationKind::guest_os, "debian-efi-v2", false, 1000}, 600s);
  ASSERT_EQ(reimage["status"].as_string(), "succeeded") << json::serialize(reimage) << "\n"
                                                        << console_tail("web-0");
  expect_efi_data_kept(reimage["guests"].as_array().at(0).as_object(), "guest-os");
  EXPECT_EQ(agent_->instance_json("web-0")->at("image").as_string(), "debian-efi-v2");
  EXPECT_EQ(count(console("web-0"), grub_line), 3u) << console_tail("web-0");
  // Verified on the new overlay (backed by debian-efi-v2's disk): the old one is gone.
  EXPECT_EQ(instance_files("web-0"),
            (std::vector<std::string>{"efivars.fd", "os-debian-efi-v2-2.qcow2"}));
  auto info = hypervisor::qemu_img_info(vm_dir() + "/web-0.d/os-debian-efi-v2-2.qcow2");
  ASSERT_TRUE(info.ok()) << info.error().describe();
  EXPECT_NE(info->backing_file.find("debian-efi-v2/disk.qcow2"), std::string::npos)
      << info->backing_file;

  // Deleting the instance removes its NVRAM with its other files.
  ASSERT_OK(agent_->delete_instance("web-0"));
  EXPECT_FALSE(fs::exists(vm_dir() + "/web-0.d"));
}

// A machine without the firmware: creating an EFI instance is refused before anything is made,
// naming the missing file; a BIOS image on the same agent is unaffected.
TEST_F(AgentOnDebianEfi, MissingOvmfIsRefusedAtCreationNamingThePathAndNothingIsMade) {
  agent::AgentOptions o;
  o.ovmf_code = "/nonexistent/OVMF_CODE_4M.fd";
  open_real_agent(o);
  auto r = agent_->create_instance(efi_guest(0));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::not_found);
  EXPECT_NE(r.error().message.find("/nonexistent/OVMF_CODE_4M.fd"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("debian-efi-v1"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("ovmf"), std::string::npos) << r.error().message;
  EXPECT_TRUE(agent_->instances_json().empty());
  EXPECT_FALSE(fs::exists(vm_dir() + "/web-0.d"));
  EXPECT_FALSE(fs::exists(vm_dir() + "/web-0.data.raw"));
}

}  // namespace
}  // namespace fabriclab::testing
