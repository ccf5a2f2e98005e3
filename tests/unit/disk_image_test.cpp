// OS disk checks and overlays on real images made here with Debian's qemu-img and mkfs.ext4
// (qemu-utils, e2fsprogs). Fails, never skips, when they are missing.

#include "fabriclab/hypervisor/disk_image.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "fabriclab/common/process.hpp"
#include "process_helpers.hpp"

namespace fabriclab::hypervisor {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

using testing::contains;

void patch(const std::string& path, size_t at, const std::string& bytes) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(at));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class DiskImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "fl-disk-image-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  void run(const std::vector<std::string>& argv) {
    auto r = run_command(argv, 60s);
    ASSERT_TRUE(r.ok()) << r.error().describe();
    ASSERT_EQ(r->exit_code, 0) << describe_command(argv) << ": " << r->output;
  }
  // A sparse raw file holding an ext4 file system, as a whole-disk root (root=/dev/vda).
  std::string raw_ext4(const std::string& name, const std::string& size = "8M") {
    std::string p = path(name);
    run({"truncate", "-s", size, p});
    run({"mkfs.ext4", "-q", "-F", "-L", "flroot", p});
    return p;
  }
  std::string qcow2_ext4(const std::string& name) {
    std::string raw = raw_ext4(name + ".src.raw");
    std::string p = path(name);
    run({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, p});
    return p;
  }
  // What check_os_disk says of p, which it must accept (an empty answer after a failure).
  DiskImageInfo accepted(const std::string& p) {
    auto r = check_os_disk(p);
    EXPECT_TRUE(r.ok()) << p << ": " << (r.ok() ? "" : r.error().describe());
    return r.ok() ? *r : DiskImageInfo{};
  }
  Error refusal(const std::string& p) {
    auto r = check_os_disk(p);
    EXPECT_FALSE(r.ok()) << p << " was accepted as " << (r.ok() ? r->format : "");
    return r.ok() ? Error{} : r.error();
  }

  std::string dir_;
};

TEST_F(DiskImageTest, AQcow2HoldingAFileSystemIsAnOsDisk) {
  auto info = accepted(qcow2_ext4("good.qcow2"));
  EXPECT_EQ(info.format, "qcow2");
  EXPECT_EQ(info.virtual_size, 8u << 20);
  EXPECT_GT(info.actual_size, 0u);
  EXPECT_EQ(info.backing_file, "");
}

TEST_F(DiskImageTest, ARawExt4FileIsAnOsDisk) {
  auto info = accepted(raw_ext4("root.raw"));
  EXPECT_EQ(info.format, "raw");
  EXPECT_EQ(info.virtual_size, 8u << 20);
}

TEST_F(DiskImageTest, RawDisksWithAPartitionTableAreOsDisks) {
  // MBR: one bootable Linux partition; GPT: the header signature in LBA 1.
  auto mbr = path("mbr.raw");
  run({"truncate", "-s", "4M", mbr});
  patch(mbr, 446, std::string("\x80\0\0\0\x83", 5));
  patch(mbr, 510, "\x55\xaa");
  accepted(mbr);
  auto gpt = path("gpt.raw");
  run({"truncate", "-s", "4M", gpt});
  patch(gpt, 512, "EFI PART");
  EXPECT_TRUE(check_os_disk(gpt).ok());
  // 0x55aa alone, with no partition entry, is a boot sector, not a partition table.
  auto bare = path("bare.raw");
  run({"truncate", "-s", "4M", bare});
  patch(bare, 510, "\x55\xaa");
  EXPECT_TRUE(contains(refusal(bare).message, "not a disk image"));
}

TEST_F(DiskImageTest, ATextFileIsNotADiskImage) {
  for (size_t size : {size_t(40), size_t(3 << 20)}) {
    auto p = path("notes-" + std::to_string(size) + ".txt");
    std::ofstream out(p);
    while (static_cast<size_t>(out.tellp()) < size) out << "just some text, not a disk\n";
    out.close();
    Error e = refusal(p);
    EXPECT_EQ(e.condition, Condition::invalid_argument);
    EXPECT_TRUE(contains(e.message, "not a disk image: no partition table or file system found"))
        << e.message;
    EXPECT_TRUE(contains(e.message, p)) << e.message;
  }
}

TEST_F(DiskImageTest, AnEmptyQcow2IsNotADiskImage) {
  auto p = path("empty.qcow2");
  run({"qemu-img", "create", "-q", "-f", "qcow2", p, "64M"});
  EXPECT_TRUE(contains(refusal(p).message, "not a disk image")) << refusal(p).message;
}

TEST_F(DiskImageTest, ABackingChainIsRefusedAndNamesTheBackingFile) {
  auto base = qcow2_ext4("base.qcow2");
  auto top = path("top.qcow2");
  run({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top});
  Error e = refusal(top);
  EXPECT_EQ(e.condition, Condition::invalid_argument);
  EXPECT_TRUE(contains(e.message, "a backing chain is not accepted")) << e.message;
  EXPECT_TRUE(contains(e.message, "is backed by " + base)) << e.message;
}

TEST_F(DiskImageTest, ATruncatedQcow2IsRefusedAsCorrupt) {
  auto p = qcow2_ext4("cut.qcow2");
  fs::resize_file(p, 100000);  // metadata past the end of the file
  Error e = refusal(p);
  EXPECT_EQ(e.condition, Condition::invalid_argument);
  EXPECT_TRUE(contains(e.message, "corrupt")) << e.message;
  EXPECT_TRUE(contains(e.message, p)) << e.message;
}

TEST_F(DiskImageTest, AQcow2WithAnOverwrittenHeaderIsRefusedAsCorrupt) {
  auto p = qcow2_ext4("header.qcow2");
  patch(p, 48, "\xff\xff\xff\xff");  // refcount table offset
  Error e = refusal(p);
  EXPECT_EQ(e.condition, Condition::invalid_argument);
  EXPECT_TRUE(contains(e.message, "corrupt")) << e.message;
}

TEST_F(DiskImageTest, OtherFormatsAndSizesAreRefused) {
  auto raw = raw_ext4("src.raw");
  auto vmdk = path("disk.vmdk");
  run({"qemu-img", "convert", "-f", "raw", "-O", "vmdk", raw, vmdk});
  EXPECT_TRUE(contains(refusal(vmdk).message, "format vmdk is not accepted"))
      << refusal(vmdk).message;
  auto huge = qcow2_ext4("huge.qcow2");
  run({"qemu-img", "resize", "-q", huge, "2T"});
  EXPECT_TRUE(contains(refusal(huge).message, "outside 1 MiB..1 TiB")) << refusal(huge).message;
}

TEST_F(DiskImageTest, MissingFilesAndDirectoriesAreNamed) {
  auto missing = check_os_disk(path("nope.qcow2"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.condition(), Condition::not_found);
  EXPECT_TRUE(contains(missing.error().message, "nope.qcow2"));
  EXPECT_TRUE(contains(refusal(dir_).message, "not a regular file"));
  EXPECT_EQ(qemu_img_info(path("nope.qcow2")).condition(), Condition::not_found);
}

TEST_F(DiskImageTest, AnOverlayIsBackedByItsImageAndNeverReplaced) {
  auto base = qcow2_ext4("base.qcow2");
  fs::create_directories(path("inst"));
  auto overlay = path("inst/os.qcow2");
  auto made = create_overlay(base, "qcow2", overlay);
  ASSERT_TRUE(made.ok()) << made.error().describe();
  auto info = qemu_img_info(overlay);
  ASSERT_TRUE(info.ok()) << info.error().describe();
  EXPECT_EQ(info->format, "qcow2");
  EXPECT_EQ(info->backing_file, base);
  EXPECT_EQ(info->virtual_size, 8u << 20);
  // The overlay is not itself an acceptable image (it is a chain).
  EXPECT_TRUE(contains(refusal(overlay).message, "backed by " + base));

  auto again = create_overlay(base, "qcow2", overlay);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.condition(), Condition::already_exists);
  EXPECT_EQ(qemu_img_info(overlay)->backing_file, base) << "the existing overlay is untouched";

  auto no_dir = create_overlay(base, "qcow2", path("missing/os.qcow2"));
  EXPECT_EQ(no_dir.condition(), Condition::not_found);
  EXPECT_TRUE(contains(no_dir.error().message, path("missing")));
  EXPECT_EQ(create_overlay(path("nope.qcow2"), "qcow2", path("inst/b.qcow2")).condition(),
            Condition::not_found);
  EXPECT_EQ(create_overlay(base, "vmdk", path("inst/c.qcow2")).condition(),
            Condition::invalid_argument);
  // A wrong backing format makes qemu-img fail; nothing is left behind.
  auto raw = raw_ext4("plain.raw");
  auto wrong = create_overlay(raw, "qcow2", path("inst/d.qcow2"));
  EXPECT_FALSE(wrong.ok());
  EXPECT_FALSE(fs::exists(path("inst/d.qcow2")));
}

TEST_F(DiskImageTest, AnOverlayOnARawImageAndARelativeBackingPath) {
  auto raw = raw_ext4("root.raw");
  fs::current_path(dir_);
  auto made = create_overlay("root.raw", "raw", "ov.qcow2");
  ASSERT_TRUE(made.ok()) << made.error().describe();
  auto info = qemu_img_info(path("ov.qcow2"));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->backing_file, raw) << "recorded absolute, whatever the working directory";
  fs::current_path("/");
}

}  // namespace
}  // namespace fabriclab::hypervisor
