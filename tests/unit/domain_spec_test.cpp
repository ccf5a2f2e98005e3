#include "fabriclab/hypervisor/domain_spec.hpp"

#include <gtest/gtest.h>

#include "text_checks.hpp"

namespace fabriclab::hypervisor {
namespace {

using fabriclab::testing::contains_all;
using fabriclab::testing::contains_none;

DomainSpec sample() {
  DomainSpec s;
  s.name = "web-0";
  s.boot = {"/img/vmlinuz", "/img/v1/initrd.img", "console=ttyS0 panic=-1"};
  s.console_log = "/lab/web-0.log";
  s.data_disk = "/lab/web-0.raw";
  s.channel_socket = "/lab/web-0.sock";
  s.metadata = InstanceMetadata{"web", 0, 0, 1, "v1"};
  return s;
}

TEST(DomainSpec, RendersEveryPartTheGuestNeeds) {
  auto xml = render_domain_xml(sample(), "qemu");
  ASSERT_TRUE(xml.ok()) << xml.error().describe();
  for (const char* needle :
       {"<domain type='qemu'>", "<name>web-0</name>", "<kernel>/img/vmlinuz</kernel>",
        "<initrd>/img/v1/initrd.img</initrd>", "<acpi/>", "append='on'",
        "name='org.fabriclab.integration.0'", "<source file='/lab/web-0.raw'/>",
        "xmlns:fabriclab='https://fabriclab.dev/xmlns/instance/1'", "service='web'", "fd='1'"}) {
    EXPECT_NE(xml->find(needle), std::string::npos) << "missing " << needle << " in\n" << *xml;
  }
}

TEST(DomainSpec, RejectsBadFieldsNamingThem) {
  auto s = sample();
  s.name = "bad name";
  auto r = render_domain_xml(s, "qemu");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::invalid_argument);
  EXPECT_NE(r.error().message.find("name"), std::string::npos);

  s = sample();
  s.boot.kernel = "relative/vmlinuz";
  EXPECT_NE(validate(s).error().message.find("boot.kernel"), std::string::npos);

  s = sample();
  s.channel_socket = "/" + std::string(120, 'x');
  EXPECT_NE(validate(s).error().message.find("channel_socket"), std::string::npos);

  s = sample();
  s.memory_mib = 1;
  EXPECT_NE(validate(s).error().message.find("memory_mib"), std::string::npos);

  EXPECT_EQ(render_domain_xml(sample(), "xen").condition(), Condition::invalid_argument);
}

TEST(DomainSpec, EscapesUntrustedStrings) {
  auto s = sample();
  s.boot.cmdline = "a='<x>'&b";
  s.metadata->service = "we'b<";
  auto xml = render_domain_xml(s, "kvm");
  ASSERT_TRUE(xml.ok());
  EXPECT_NE(xml->find("a=&apos;&lt;x&gt;&apos;&amp;b"), std::string::npos);
  EXPECT_EQ(xml->find("we'b<"), std::string::npos);
}

TEST(DomainSpec, HasNoNicUnlessOneIsGiven) {
  auto xml = render_domain_xml(sample(), "qemu");
  ASSERT_TRUE(xml.ok());
  EXPECT_EQ(xml->find("<interface"), std::string::npos) << *xml;
}

TEST(DomainSpec, RendersAVirtioNicOnTheBridge) {
  auto s = sample();
  s.nic = NicSpec{"52:54:00:c6:03:0a", "gbr0"};
  for (const char* type : {"qemu", "test"}) {
    auto xml = render_domain_xml(s, type);
    ASSERT_TRUE(xml.ok()) << xml.error().describe();
    EXPECT_TRUE(
        contains_all(*xml, {"<interface type='bridge'>\n      <mac address='52:54:00:c6:03:0a'/>\n"
                            "      <source bridge='gbr0'/>\n      <model type='virtio'/>\n"
                            "    </interface>"}));
  }
}

TEST(DomainSpec, RejectsABadMacOrBridgeNamingTheField) {
  for (const char* mac : {"", "52:54:00:c6:03", "52:54:00:c6:03:0g", "52-54-00-c6-03-0a",
                          "01:00:5e:00:00:01" /* multicast */, "52:54:00:c6:03:0a:"}) {
    auto s = sample();
    s.nic = NicSpec{mac, "gbr0"};
    auto st = validate(s);
    ASSERT_FALSE(st.ok()) << mac;
    EXPECT_NE(st.error().message.find("nic.mac"), std::string::npos) << st.error().message;
  }
  for (const char* bridge : {"", "a-bridge-name-16c", "br 0", "br'0", "br/0", ".."}) {
    auto s = sample();
    s.nic = NicSpec{"52:54:00:c6:03:0a", bridge};
    auto st = validate(s);
    ASSERT_FALSE(st.ok()) << bridge;
    EXPECT_NE(st.error().message.find("nic.bridge"), std::string::npos) << st.error().message;
  }
  auto s = sample();
  s.nic = NicSpec{"52:54:00:C6:03:0A", "gbr_0.x-1"};
  EXPECT_TRUE(validate(s).ok()) << "upper-case hex and every allowed character";
}

// A Debian-style guest: its own OS disk (qcow2 overlay) booted with its kernel, a data disk, the
// guest agent channel.
DomainSpec os_disk_sample() {
  auto s = sample();
  s.boot = {"/img/debian-v1/vmlinuz", "/img/debian-v1/initrd.img",
            "root=/dev/vda rw console=ttyS0"};
  s.os_disk = "/lab/web-0.os.qcow2";
  s.guest_agent = true;
  return s;
}

TEST(DomainSpec, WithoutAnOsDiskTheDataDiskIsVdaAsForTheBuiltInGuest) {
  auto xml = render_domain_xml(sample(), "qemu");
  ASSERT_TRUE(xml.ok()) << xml.error().describe();
  EXPECT_TRUE(contains_all(
      *xml, {"<driver name='qemu' type='raw'/>\n      <source file='/lab/web-0.raw'/>\n"
             "      <target dev='vda' bus='virtio'/>"}));
  // No agent channel unless asked.
  EXPECT_TRUE(contains_none(*xml, {"vdb", "org.qemu.guest_agent.0", "<boot dev="}));
  EXPECT_EQ(os_disk_target(sample()), "");
  EXPECT_EQ(data_disk_target(sample()), "vda");
}

TEST(DomainSpec, AnOsDiskIsVdaInItsFormatAndTheDataDiskMovesToVdb) {
  auto s = os_disk_sample();
  auto xml = render_domain_xml(s, "qemu");
  ASSERT_TRUE(xml.ok()) << xml.error().describe();
  const auto os = xml->find(
      "<driver name='qemu' type='qcow2'/>\n      <source file='/lab/web-0.os.qcow2'/>\n"
      "      <target dev='vda' bus='virtio'/>");
  const auto data = xml->find(
      "<driver name='qemu' type='raw'/>\n      <source file='/lab/web-0.raw'/>\n"
      "      <target dev='vdb' bus='virtio'/>");
  ASSERT_NE(os, std::string::npos) << *xml;
  ASSERT_NE(data, std::string::npos) << *xml;
  EXPECT_LT(os, data) << "the OS disk comes first";
  EXPECT_TRUE(contains_all(*xml, {"<kernel>/img/debian-v1/vmlinuz</kernel>",
                                  "<cmdline>root=/dev/vda rw console=ttyS0</cmdline>"}));
  EXPECT_EQ(os_disk_target(s), "vda");
  EXPECT_EQ(data_disk_target(s), "vdb");

  s.os_disk_format = "raw";
  xml = render_domain_xml(s, "qemu");
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(contains_all(
      *xml, {"<driver name='qemu' type='raw'/>\n      <source file='/lab/web-0.os.qcow2'/>"}));

  s.data_disk.clear();
  xml = render_domain_xml(s, "qemu");
  ASSERT_TRUE(xml.ok());
  EXPECT_EQ(xml->find("vdb"), std::string::npos) << *xml;
  EXPECT_EQ(data_disk_target(s), "");
}

TEST(DomainSpec, AnEmptyKernelBootsFromTheOsDisk) {
  auto s = os_disk_sample();
  s.boot = {};
  for (const char* type : {"qemu", "test"}) {
    auto xml = render_domain_xml(s, type);
    ASSERT_TRUE(xml.ok()) << xml.error().describe();
    EXPECT_TRUE(contains_all(
        *xml, {"<os>\n    <type arch='x86_64'", ">hvm</type>\n    <boot dev='hd'/>\n  </os>"}));
    EXPECT_TRUE(contains_none(*xml, {"<kernel>", "<initrd>", "<cmdline>"}));
  }
}

TEST(DomainSpec, RendersTheGuestAgentChannelWithALibvirtManagedSocket) {
  auto s = os_disk_sample();
  auto xml = render_domain_xml(s, "qemu");
  ASSERT_TRUE(xml.ok()) << xml.error().describe();
  // Beside, not instead of, our own integration channel.
  EXPECT_TRUE(contains_all(*xml, {"    <channel type='unix'>\n"
                                  "      <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
                                  "    </channel>\n",
                                  "name='org.fabriclab.integration.0'",
                                  "<source mode='bind' path='/lab/web-0.sock'/>"}));

  s.channel_socket.clear();
  xml = render_domain_xml(s, "test");
  ASSERT_TRUE(xml.ok());
  EXPECT_TRUE(contains_all(*xml, {"name='org.qemu.guest_agent.0'"}));
  EXPECT_TRUE(contains_none(*xml, {"org.fabriclab.integration.0"}));
}

TEST(DomainSpec, RejectsBadOsDiskSettingsNamingTheField) {
  auto expect_refused = [](const DomainSpec& s, const std::string& field) {
    auto st = validate(s);
    ASSERT_FALSE(st.ok()) << "accepted, expected an error naming " << field;
    EXPECT_EQ(st.condition(), Condition::invalid_argument);
    EXPECT_NE(st.error().message.find(field), std::string::npos) << st.error().message;
    EXPECT_FALSE(render_domain_xml(s, "qemu").ok()) << "render validates too";
  };
  auto s = os_disk_sample();
  s.os_disk = "relative/os.qcow2";
  expect_refused(s, "os_disk");

  s = os_disk_sample();
  s.os_disk = "/lab/\nos.qcow2";
  expect_refused(s, "os_disk");

  s = os_disk_sample();
  s.os_disk_format = "vmdk";
  expect_refused(s, "os_disk_format");

  s = os_disk_sample();
  s.data_disk = s.os_disk;
  expect_refused(s, "data_disk");

  // Booting from the disk needs a disk, and takes no initrd or command line.
  s = sample();
  s.boot = {};
  expect_refused(s, "os_disk");
  expect_refused(s, "boot.kernel");
  s = os_disk_sample();
  s.boot = {"", "/img/initrd.img", ""};
  expect_refused(s, "boot.initrd");
  s = os_disk_sample();
  s.boot = {"", "", "root=/dev/vda"};
  expect_refused(s, "boot.cmdline");

  s = os_disk_sample();
  s.boot = {};
  s.os_disk_format = "raw";
  EXPECT_TRUE(validate(s).ok()) << "a raw OS disk with its own bootloader";
}

// A disk with its own bootloader under UEFI: OVMF's code read-only from the firmware package, the
// variable store the VM's own file.
TEST(DomainSpec, UefiRendersTheReadOnlyLoaderAndTheVmsOwnNvramBeforeTheBootDevice) {
  auto s = os_disk_sample();
  s.boot = {};
  s.firmware = {"/usr/share/OVMF/OVMF_CODE_4M.fd", "/lab/web-0.d/efivars.fd"};
  for (const char* type : {"qemu", "test"}) {
    auto xml = render_domain_xml(s, type);
    ASSERT_TRUE(xml.ok()) << xml.error().describe();
    EXPECT_NE(
        xml->find(
            ">hvm</type>\n"
            "    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\n"
            "    <nvram>/lab/web-0.d/efivars.fd</nvram>\n"
            "    <boot dev='hd'/>\n  </os>"),
        std::string::npos)
        << *xml;
  }
  // Direct kernel boot under UEFI works too (OVMF loads the kernel QEMU hands it).
  s = os_disk_sample();
  s.firmware = {"/fw/code.fd", "/lab/vars.fd"};
  auto xml = render_domain_xml(s, "qemu");
  ASSERT_TRUE(xml.ok()) << xml.error().describe();
  EXPECT_NE(xml->find("<nvram>/lab/vars.fd</nvram>\n    <kernel>/img/debian-v1/vmlinuz</kernel>"),
            std::string::npos)
      << *xml;
  // BIOS: no loader at all (QEMU's SeaBIOS).
  xml = render_domain_xml(os_disk_sample(), "qemu");
  ASSERT_TRUE(xml.ok());
  EXPECT_EQ(xml->find("<loader"), std::string::npos) << *xml;
  EXPECT_EQ(xml->find("<nvram"), std::string::npos) << *xml;
}

TEST(DomainSpec, RejectsHalfAFirmwareNamingTheField) {
  auto refused = [](const Firmware& f, const std::string& field) {
    auto s = os_disk_sample();
    s.firmware = f;
    auto st = validate(s);
    ASSERT_FALSE(st.ok()) << "accepted, expected an error naming " << field;
    EXPECT_EQ(st.condition(), Condition::invalid_argument);
    EXPECT_NE(st.error().message.find(field), std::string::npos) << st.error().message;
  };
  refused({"/fw/code.fd", ""}, "firmware.nvram");
  refused({"", "/lab/vars.fd"}, "firmware.loader");
  refused({"fw/code.fd", "/lab/vars.fd"}, "firmware.loader");
  refused({"/fw/code.fd", "lab/vars.fd"}, "firmware.nvram");
  refused({"/fw/code.fd", "/fw/code.fd"}, "firmware.nvram");
  refused({"/fw/co\nde.fd", "/lab/vars.fd"}, "firmware.loader");
}

TEST(InstanceMetadata, RoundTripsThroughXml) {
  InstanceMetadata m{"wo'rker", 2, 2, 0, "v2"};
  auto back = parse_metadata_xml(render_metadata_xml(m));
  ASSERT_TRUE(back.ok()) << back.error().describe();
  EXPECT_EQ(*back, m);
  auto bare = parse_metadata_xml(render_metadata_xml(m, false));
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(*bare, m);
}

TEST(InstanceMetadata, RejectsForeignOrBrokenElements) {
  EXPECT_EQ(parse_metadata_xml("<other/>").condition(), Condition::invalid_argument);
  auto r = parse_metadata_xml("<instance service='a' index='x' ud='0' fd='0' image='v1'/>");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("index"), std::string::npos);
  EXPECT_EQ(
      parse_metadata_xml("<instance service='a' index='1' ud='25' fd='0' image='v1'/>").condition(),
      Condition::invalid_argument);
}

}  // namespace
}  // namespace fabriclab::hypervisor
