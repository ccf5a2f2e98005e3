// `fabriclab image add|list|remove` end to end: the real CLI binary on real disk images made here
// with mkfs.ext4 and qemu-img, a library in a temporary directory. Every assertion is about what
// a user sees: the exit code, the message, the files in the library, and what a rack's agents are
// then given. Fails, never skips, without qemu-img or mkfs.ext4.

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "cli_runner.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/process.hpp"
#include "fabriclab/rack/image_library.hpp"
#include "process_helpers.hpp"
#include "temp_dir.hpp"

namespace fabriclab {
namespace {
namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

using testing::CliEnv;
using testing::contains;
using testing::run_cli;
using testing::slurp;
using Cli = testing::CliRun;

class ImageCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fabriclab::testing::make_temp_dir("fl-image-cli");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
    lib_ = dir_ + "/lib";
    src_ = dir_ + "/src";
    fs::create_directories(src_);
  }
  void TearDown() override {
    if (fs::exists(dir_ + "/lab/lab.json")) cli({"lab", "down", "--lab-dir", dir_ + "/lab"});
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Runs the CLI with its output in DIR/cli.log and `env` changing its environment.
  Cli cli(const std::vector<std::string>& args, const CliEnv& env = {}) {
    return run_cli(args, dir_ + "/cli.log", {}, env);
  }
  Cli add(const std::string& name, const std::vector<std::string>& more) {
    std::vector<std::string> args = {"image", "add", name, "--library", lib_};
    args.insert(args.end(), more.begin(), more.end());
    return cli(args);
  }

  void run(const std::vector<std::string>& argv) {
    auto r = run_command(argv, 60s);
    ASSERT_TRUE(r.ok()) << r.error().describe();
    ASSERT_EQ(r->exit_code, 0) << describe_command(argv) << ": " << r->output;
  }
  std::string raw_ext4(const std::string& name) {
    std::string p = src_ + "/" + name;
    run({"truncate", "-s", "8M", p});
    run({"mkfs.ext4", "-q", "-F", p});
    return p;
  }
  std::string qcow2_ext4(const std::string& name) {
    std::string p = src_ + "/" + name;
    run({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw_ext4(name + ".raw"), p});
    return p;
  }
  // A stand-in kernel: what the CLI checks of one is the x86 boot header ("HdrS" at 0x202).
  std::string kernel() {
    std::string k(8192, '\x11');
    k.replace(0x202, 4, "HdrS");
    std::ofstream(src_ + "/vmlinuz", std::ios::binary) << k;
    std::ofstream(src_ + "/initrd.img", std::ios::binary) << "an initrd";
    return src_ + "/vmlinuz";
  }
  std::vector<std::string> kernel_args() {
    return {"--kernel",           kernel(),    "--initrd",
            src_ + "/initrd.img", "--cmdline", "root=/dev/vda rw console=ttyS0"};
  }
  // Every path under the library with its size and mode, and the manifest's text.
  std::string snapshot() {
    std::ostringstream s;
    std::error_code ec;
    if (!fs::exists(lib_)) return "(no library)";
    for (const auto& e : fs::recursive_directory_iterator(lib_, ec)) {
      s << e.path().string() << " " << (e.is_regular_file() ? fs::file_size(e.path()) : 0) << " "
        << static_cast<int>(fs::status(e.path()).permissions()) << "\n";
    }
    return s.str() + slurp(lib_ + "/manifest.json");
  }

  std::string dir_, lib_, src_;
};

TEST_F(ImageCli, AddListsReadOnlyRefusesTheSameNameAndRemoves) {
  const std::string disk = qcow2_ext4("disk.qcow2");
  const std::string sha = *agent::sha256_file(disk);
  auto kargs = kernel_args();
  std::vector<std::string> args = {"--disk", disk};
  args.insert(args.end(), kargs.begin(), kargs.end());
  Cli a = add("mine-v1", args);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_TRUE(contains(a.output, "image mine-v1 added to " + lib_)) << a.output;
  EXPECT_TRUE(contains(a.output, "format qcow2, virtual size 8.0 MiB (8388608 bytes)")) << a.output;
  EXPECT_TRUE(contains(a.output, "sha256 " + sha)) << a.output;

  for (const char* f : {"disk.qcow2", "vmlinuz", "initrd.img"}) {
    const std::string p = lib_ + "/mine-v1/" + f;
    ASSERT_TRUE(fs::exists(p)) << p;
    EXPECT_EQ(fs::status(p).permissions() &
                  (fs::perms::owner_write | fs::perms::group_write | fs::perms::others_write),
              fs::perms::none)
        << p << " is writable";
  }
  EXPECT_EQ(*agent::sha256_file(lib_ + "/mine-v1/disk.qcow2"), sha);

  Cli l = cli({"image", "list", "--library", lib_});
  ASSERT_EQ(l.exit_code, 0) << l.output;
  EXPECT_TRUE(contains(l.output, "mine-v1")) << l.output;
  EXPECT_TRUE(contains(l.output, "qcow2")) << l.output;
  EXPECT_TRUE(contains(l.output, "8.0 MiB")) << l.output;
  EXPECT_TRUE(contains(l.output, sha)) << l.output;
  Cli lj = cli({"image", "list", "--library", lib_, "--json"});
  ASSERT_EQ(lj.exit_code, 0) << lj.output;
  auto j = json::parse(lj.output).as_object();
  ASSERT_EQ(j.at("images").as_array().size(), 1u);
  const auto& img = j.at("images").as_array()[0].as_object();
  EXPECT_EQ(img.at("version").as_string(), "mine-v1");
  EXPECT_EQ(img.at("boot").as_string(), "kernel");
  EXPECT_EQ(img.at("disk_format").as_string(), "qcow2");
  EXPECT_EQ(img.at("disk_virtual_size").to_number<uint64_t>(), 8u << 20);
  EXPECT_EQ(img.at("sha256_disk").as_string(), sha);
  EXPECT_EQ(img.at("cmdline").as_string(), "root=/dev/vda rw console=ttyS0");

  // The agent reads the library with its own store, and the copy verifies.
  auto store = agent::GuestImageStore::open(lib_);
  ASSERT_TRUE(store.ok()) << store.error().describe();
  EXPECT_TRUE(store->verify("mine-v1").ok());

  const std::string before = snapshot();
  Cli again = add("mine-v1", args);
  EXPECT_EQ(again.exit_code, 2) << again.output;
  EXPECT_TRUE(contains(again.output, "'mine-v1' is already in the library")) << again.output;
  EXPECT_TRUE(contains(again.output, "fabriclab image remove mine-v1")) << again.output;
  EXPECT_EQ(snapshot(), before);

  Cli rm = cli({"image", "remove", "mine-v1", "--library", lib_});
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  EXPECT_FALSE(fs::exists(lib_ + "/mine-v1"));
  Cli empty = cli({"image", "list", "--library", lib_});
  EXPECT_TRUE(contains(empty.output, "no images")) << empty.output;
  Cli gone = cli({"image", "remove", "mine-v1", "--library", lib_});
  EXPECT_EQ(gone.exit_code, 2);
  EXPECT_TRUE(contains(gone.output, "no image 'mine-v1'")) << gone.output;
}

TEST_F(ImageCli, EveryRefusalNamesTheProblemAndCreatesNothing) {
  // A library that already holds an image, and one that does not exist yet.
  ASSERT_EQ(add("kept", {"--disk", raw_ext4("kept.raw")}).exit_code, 0);
  const std::string before = snapshot();

  const std::string cut = qcow2_ext4("cut.qcow2");
  fs::resize_file(cut, 100000);
  std::ofstream(src_ + "/notes.txt") << "this is a text file, not a disk\n";
  const std::string base = qcow2_ext4("base.qcow2");
  const std::string top = src_ + "/top.qcow2";
  run({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top});
  const std::string good = qcow2_ext4("good.qcow2");
  kernel();
  const std::string initrd = src_ + "/initrd.img";

  struct Case {
    std::string what;
    std::vector<std::string> args;
    std::vector<std::string> expect;  // substrings of the message
  };
  const std::vector<Case> cases = {
      {"corrupt qcow2", {"--disk", cut}, {cut, "corrupt"}},
      {"not a disk",
       {"--disk", src_ + "/notes.txt"},
       {src_ + "/notes.txt", "not a disk image: no partition table or file system found"}},
      {"backing chain", {"--disk", top}, {"a backing chain is not accepted", "backed by " + base}},
      {"boot: kernel without a kernel",
       {"--disk", good, "--initrd", initrd, "--cmdline", "root=/dev/vda"},
       {"boot: kernel needs a kernel"}},
      {"a kernel that does not exist",
       {"--disk", good, "--kernel", src_ + "/nope", "--initrd", initrd, "--cmdline",
        "root=/dev/vda"},
       {"kernel " + src_ + "/nope", "No such file"}},
      {"a kernel that is not one",
       {"--disk", good, "--kernel", initrd, "--initrd", initrd, "--cmdline", "root=/dev/vda"},
       {"not a Linux kernel image"}},
      {"a missing disk", {"--disk", src_ + "/nope.qcow2"}, {src_ + "/nope.qcow2"}},
      {"a two-line cmdline",
       {"--disk", good, "--kernel", src_ + "/vmlinuz", "--initrd", initrd, "--cmdline", "a\nb"},
       {"one line"}},
  };
  for (const auto& c : cases) {
    for (const std::string& lib : {lib_, dir_ + "/fresh-lib"}) {
      std::vector<std::string> args = {"image", "add", "x", "--library", lib};
      args.insert(args.end(), c.args.begin(), c.args.end());
      Cli r = cli(args);
      EXPECT_EQ(r.exit_code, 2) << c.what << ": " << r.output;
      for (const auto& e : c.expect)
        EXPECT_TRUE(contains(r.output, e))
            << c.what << ": " << r.output << " (wanted: " << e << ")";
    }
    EXPECT_EQ(snapshot(), before) << c.what << " changed the library";
    EXPECT_FALSE(fs::exists(dir_ + "/fresh-lib")) << c.what << " created the library";
  }
  for (const std::string name : {"v1", "v3-broken", "../x", "a b"}) {
    Cli r = add(name, {"--disk", good});
    EXPECT_EQ(r.exit_code, 2) << name << ": " << r.output;
    EXPECT_TRUE(contains(r.output, "image name '" + name + "'")) << r.output;
  }
  EXPECT_EQ(snapshot(), before);
}

TEST_F(ImageCli, ARawDiskThatBootsItselfStaysSparse) {
  const std::string disk = raw_ext4("big.raw");
  run({"truncate", "-s", "512M", disk});  // a mostly empty disk, as raw images usually are
  Cli a = add("own-loader", {"--disk", disk});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_TRUE(contains(a.output, "boot    disk")) << a.output;
  const std::string copy = lib_ + "/own-loader/disk.raw";
  struct stat st {};
  ASSERT_EQ(::stat(copy.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 512u << 20);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 64u << 20)
      << "the copy of a sparse disk should stay sparse";
  EXPECT_FALSE(fs::exists(lib_ + "/own-loader/vmlinuz"));
  Cli l = cli({"image", "list", "--library", lib_});
  EXPECT_TRUE(contains(l.output, "own-loader")) << l.output;
  EXPECT_TRUE(contains(l.output, "raw")) << l.output;
}

// firmware: bios unless --firmware efi (a disk whose bootloader is an EFI program); the agent reads
// it from the manifest, and image list --json shows it.
TEST_F(ImageCli, FirmwareEfiIsRecordedForTheAgentAndAnythingElseIsRefused) {
  const std::string disk = qcow2_ext4("efi.qcow2");
  Cli bad = add("efi-app", {"--disk", disk, "--firmware", "uefi"});
  EXPECT_NE(bad.exit_code, 0) << bad.output;
  EXPECT_TRUE(contains(bad.output, "firmware")) << bad.output;
  EXPECT_FALSE(fs::exists(lib_ + "/efi-app"));

  Cli a = add("efi-app", {"--disk", disk, "--firmware", "efi"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_TRUE(contains(a.output, "boot    disk, firmware efi")) << a.output;
  Cli b = add("bios-app", {"--disk", disk});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_TRUE(contains(b.output, "firmware bios")) << b.output;
  Cli l = cli({"image", "list", "--json", "--library", lib_});
  ASSERT_EQ(l.exit_code, 0) << l.output;
  EXPECT_TRUE(contains(l.output, R"("version":"efi-app","boot":"disk","firmware":"efi")"))
      << l.output;
  EXPECT_TRUE(contains(l.output, R"("version":"bios-app","boot":"disk","firmware":"bios")"))
      << l.output;
}

TEST_F(ImageCli, TheDefaultLibraryComesFromTheEnvironment) {
  const std::string disk = raw_ext4("d.raw");
  auto add_default = [&](const std::string& name, const CliEnv& env) {
    return cli({"image", "add", name, "--disk", disk}, env);
  };
  Cli a = add_default("a", {{"FABRICLAB_IMAGE_LIBRARY", dir_ + "/envlib"}});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_TRUE(fs::exists(dir_ + "/envlib/a/disk.raw"));
  Cli b = add_default("b", {{"FABRICLAB_IMAGE_LIBRARY", ""}, {"XDG_DATA_HOME", dir_ + "/xdg"}});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_TRUE(fs::exists(dir_ + "/xdg/fabriclab/images/b/disk.raw"));
  Cli c = add_default(
      "c", {{"FABRICLAB_IMAGE_LIBRARY", ""}, {"XDG_DATA_HOME", ""}, {"HOME", dir_ + "/home"}});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_TRUE(fs::exists(dir_ + "/home/.local/share/fabriclab/images/c/disk.raw"));
  Cli l = cli({"image", "list"}, {{"FABRICLAB_IMAGE_LIBRARY", dir_ + "/envlib"}});
  EXPECT_TRUE(contains(l.output, "image library " + dir_ + "/envlib")) << l.output;
}

TEST_F(ImageCli, ConcurrentAddsBothLand) {
  const std::string disk = qcow2_ext4("d.qcow2");
  std::vector<std::pair<pid_t, std::string>> runs;
  for (const std::string name : {"p1", "p2", "p3"}) {
    const std::string log = dir_ + "/" + name + ".log";
    runs.emplace_back(
        testing::start_cli({"image", "add", name, "--disk", disk, "--library", lib_}, log), log);
  }
  for (const auto& [pid, log] : runs) {
    auto r = testing::wait_cli(pid, log);
    EXPECT_EQ(r.exit_code, 0) << log << ": " << r.output;
  }
  auto store = agent::GuestImageStore::open(lib_);
  ASSERT_TRUE(store.ok()) << store.error().describe();
  EXPECT_EQ(store->list().size(), 3u) << slurp(lib_ + "/manifest.json");
}

TEST_F(ImageCli, TheRacksAgentsGetTheBuiltInImagesExtraDirectoriesAndTheLibrary) {
  const char* builtin = std::getenv("FABRICLAB_IMAGES_DIR");
  ASSERT_TRUE(builtin && *builtin)
      << "FABRICLAB_IMAGES_DIR must name the built-in images (ctest sets it)";
  ASSERT_EQ(add("mine", {"--disk", raw_ext4("m.raw")}).exit_code, 0);
  // Another image directory in the Debian builder's layout: a copy of a library.
  const std::string extra = dir_ + "/extra";
  ASSERT_EQ(
      cli({"image", "add", "theirs", "--disk", raw_ext4("t.raw"), "--library", extra}).exit_code,
      0);

  auto dirs = rack::guest_image_dirs(builtin, {extra, lib_ + "/"}, lib_);
  ASSERT_TRUE(dirs.ok()) << dirs.error().describe();
  ASSERT_EQ(dirs->size(), 3u) << "the library named twice is given once";
  EXPECT_EQ((*dirs)[0], fs::canonical(builtin).string());
  EXPECT_EQ((*dirs)[1], extra);
  EXPECT_EQ((*dirs)[2], lib_);
  auto no_lib = rack::guest_image_dirs(builtin, {}, dir_ + "/no-such-library");
  ASSERT_TRUE(no_lib.ok()) << "a library without a manifest is left out";
  EXPECT_EQ(no_lib->size(), 1u);

  std::ofstream(dir_ + "/spec.yaml")
      << "name: images\nhypervisor: test\nrack: {hosts: 2, fault_domains: 2, capacity: 4}\n"
         "services:\n  - {name: web, instances: 1, ud_count: 1, image: v1}\n"
         "update: {kind: host-os, target: host-v2}\n";
  // The same name in two directories: refused before any agent starts, naming both.
  ASSERT_EQ(
      cli({"image", "add", "mine", "--disk", raw_ext4("dup.raw"), "--library", extra}).exit_code,
      0);
  Cli dup = cli({"lab", "up", "--spec", dir_ + "/spec.yaml", "--network", "loopback", "--lab-dir",
                 dir_ + "/lab", "--image-dir", extra, "--image-library", lib_});
  EXPECT_EQ(dup.exit_code, 2) << dup.output;
  EXPECT_TRUE(contains(dup.output, "'mine' is defined twice: in " + extra + " and in " + lib_))
      << dup.output;
  EXPECT_FALSE(fs::exists(dir_ + "/lab/lab.json"));
  ASSERT_EQ(cli({"image", "remove", "mine", "--library", extra}).exit_code, 0);

  Cli up = cli({"lab", "up", "--spec", dir_ + "/spec.yaml", "--network", "loopback", "--lab-dir",
                dir_ + "/lab", "--image-dir", extra, "--image-library", lib_});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  auto lab = json::parse(slurp(dir_ + "/lab/lab.json")).as_object();
  const auto& recorded = lab.at("image_dirs").as_array();
  ASSERT_EQ(recorded.size(), 3u);
  EXPECT_EQ(recorded[2].as_string(), lib_);
  const std::string token = [&] {
    std::string t = slurp(dir_ + "/lab/token");
    return t.substr(0, t.find('\n'));
  }();
  for (const auto& av : lab.at("agents").as_array()) {
    const auto& ag = av.as_object();
    auto r = http::request(std::string(ag.at("address").as_string()),
                           static_cast<uint16_t>(ag.at("port").as_int64()), "GET",
                           "/v1/images/guest", {}, token);
    ASSERT_TRUE(r.ok()) << r.error().describe();
    std::string names;
    json::value images = json::parse(r->body);
    for (const auto& g : images.as_array()) names += std::string(g.at("version").as_string()) + " ";
    EXPECT_EQ(names, "v1 v2 v3-broken theirs mine ") << "agent " << ag.at("name").as_string();
  }
  Cli down = cli({"lab", "down", "--lab-dir", dir_ + "/lab"});
  EXPECT_EQ(down.exit_code, 0) << down.output;
}

}  // namespace
}  // namespace fabriclab
