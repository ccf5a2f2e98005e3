#include "fabriclab/agent/image_store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "fabriclab/common/process.hpp"

namespace fabriclab::agent {
namespace {
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fl-image-store-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(CopyFileSha256, CopiesHashesKeepsHolesAndNeverOverwrites) {
  TempDir dir;
  const std::string src = dir.path() + "/src", dst = dir.path() + "/dst";
  {
    std::ofstream out(src, std::ios::binary);
    out << "head";
    out.seekp(32 << 20);  // a 32 MiB hole
    out << "tail";
  }
  auto sha = copy_file_sha256(src, dst);
  ASSERT_TRUE(sha.ok()) << sha.error().describe();
  EXPECT_EQ(*sha, *sha256_file(src));
  EXPECT_EQ(*sha256_file(dst), *sha);
  EXPECT_EQ(fs::file_size(dst), fs::file_size(src));
  struct stat st {};
  ASSERT_EQ(::stat(dst.c_str(), &st), 0);
  EXPECT_LT(st.st_blocks * 512, 4 << 20) << "the hole is kept";

  write_file(dir.path() + "/other", "other");
  auto again = copy_file_sha256(dir.path() + "/other", dst);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.condition(), Condition::already_exists);
  EXPECT_EQ(*sha256_file(dst), *sha) << "an existing file is left alone";
  auto missing = copy_file_sha256(dir.path() + "/nope", dst);
  EXPECT_EQ(missing.condition(), Condition::not_found);
  EXPECT_TRUE(fs::exists(dst)) << "a failed copy removes only what it created";
  auto fresh = copy_file_sha256(dir.path() + "/nope", dir.path() + "/fresh");
  EXPECT_FALSE(fs::exists(dir.path() + "/fresh"));
}

class HostImageStoreTest : public ::testing::Test {
 protected:
  std::string root() const { return dir_.path() + "/store"; }

  HostImageStore open_store() {
    auto s = HostImageStore::open(root());
    EXPECT_TRUE(s.ok()) << s.error().describe();
    return std::move(s).value();
  }

  // Writes a synthetic image for `version` and returns {path, sha256}.
  std::pair<std::string, std::string> source(const std::string& version) {
    std::string path = dir_.path() + "/src-" + version + ".img";
    auto sha = write_synthetic_host_image(path, version);
    EXPECT_TRUE(sha.ok()) << sha.error().describe();
    return {path, *sha};
  }

  HostImage stage(HostImageStore& store, const std::string& version) {
    auto [path, sha] = source(version);
    auto img = store.stage(version, path, sha);
    EXPECT_TRUE(img.ok()) << img.error().describe();
    return std::move(img).value();
  }

  std::string version_of(const std::optional<HostImage>& img) {
    return img ? img->version : "none";
  }
  // "CURRENT PREVIOUS" of the store's links, "none" for one that is not there.
  std::string current_previous(const HostImageStore& store) {
    return version_of(store.current()) + " " + version_of(store.previous());
  }

  // A store with v1 and v2 staged, then the versions in `activate` activated in that order.
  struct TwoVersions {
    HostImageStore store;
    HostImage v1, v2;
  };
  TwoVersions two_versions(std::initializer_list<const char*> activate) {
    auto store = open_store();
    auto v1 = stage(store, "v1");
    auto v2 = stage(store, "v2");
    for (const char* v : activate) {
      auto a = store.activate(v);
      EXPECT_TRUE(a.ok()) << v << ": " << a.error().describe();
    }
    return {std::move(store), std::move(v1), std::move(v2)};
  }

  // verify and activate both refuse the damaged `version` (invalid_state, the message naming
  // `what`); the current link does not move.
  void expect_refused(HostImageStore& store, const std::string& version, const std::string& what) {
    auto verified = store.verify(version);
    ASSERT_FALSE(verified.ok());
    EXPECT_EQ(verified.condition(), Condition::invalid_state);
    EXPECT_TRUE(contains(verified.error().message, what)) << verified.error().message;
    EXPECT_FALSE(store.activate(version).ok());
  }

  TempDir dir_;
};

TEST(Sha256File, MatchesKnownDigestsAcrossChunkBoundaries) {
  TempDir dir;
  write_file(dir.path() + "/abc", "abc");
  write_file(dir.path() + "/big", std::string(200000, 'a'));  // > 3 chunks of 64 KiB
  auto abc = sha256_file(dir.path() + "/abc");
  ASSERT_TRUE(abc.ok()) << abc.error().describe();
  EXPECT_EQ(*abc, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto big = sha256_file(dir.path() + "/big");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(*big, "2287d207f24a941ff3b56c04c8a25ad56b63e3023207b3bb5b4ac0c9869d74be");
  auto missing = sha256_file(dir.path() + "/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.condition(), Condition::not_found);
  EXPECT_TRUE(contains(missing.error().message, dir.path() + "/nope"));
}

TEST(SyntheticHostImage, IsStablePerVersionAndDiffersBetweenVersions) {
  TempDir dir;
  auto a1 = write_synthetic_host_image(dir.path() + "/a1", "v1");
  auto a2 = write_synthetic_host_image(dir.path() + "/a2", "v1");
  auto b = write_synthetic_host_image(dir.path() + "/b", "v2");
  ASSERT_TRUE(a1.ok() && a2.ok() && b.ok());
  EXPECT_EQ(*a1, *a2);
  EXPECT_NE(*a1, *b);
  EXPECT_TRUE(read_file(dir.path() + "/b").starts_with("fabriclab host image v2\n"));
}

TEST_F(HostImageStoreTest, StagingKeepsAVerifiedCopyWithItsManifest) {
  auto store = open_store();
  auto [path, sha] = source("v1");
  auto img = store.stage("v1", path, sha);
  ASSERT_TRUE(img.ok()) << img.error().describe();
  EXPECT_EQ(img->version, "v1");
  EXPECT_EQ(img->sha256, sha);
  EXPECT_EQ(img->size, fs::file_size(path));
  EXPECT_EQ(img->path, root() + "/versions/v1/image");
  EXPECT_EQ(read_file(img->path), read_file(path));
  const std::string manifest = read_file(root() + "/versions/v1/manifest.json");
  for (const char* key :
       {"\"version\":\"v1\"", "\"file\":\"image\"", "\"staged_at\":", "\"size\":"}) {
    EXPECT_TRUE(contains(manifest, key)) << key << " in " << manifest;
  }
  EXPECT_TRUE(contains(manifest, sha));
  EXPECT_FALSE(store.current().has_value()) << "staging must not activate";
}

TEST_F(HostImageStoreTest, StagingRefusesAChecksumMismatchAndLeavesNothingBehind) {
  auto store = open_store();
  auto [path, sha] = source("v1");
  const std::string wrong(64, 'a');
  auto img = store.stage("v1", path, wrong);
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.condition(), Condition::invalid_argument);
  EXPECT_TRUE(contains(img.error().message, "expected " + wrong));
  EXPECT_TRUE(contains(img.error().message, "actual " + sha));
  EXPECT_FALSE(fs::exists(root() + "/versions/v1"));
  EXPECT_TRUE(fs::is_empty(root() + "/.staging"));
  EXPECT_TRUE(fs::is_empty(root() + "/versions"));
}

TEST_F(HostImageStoreTest, StagingAcceptsAnUpperCaseChecksumAndRejectsANonHexOne) {
  auto store = open_store();
  auto [path, sha] = source("v1");
  std::string upper = sha;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto img = store.stage("v1", path, upper);
  ASSERT_TRUE(img.ok()) << img.error().describe();
  EXPECT_EQ(img->sha256, sha);
  auto bad = store.stage("v2", path, "not-a-checksum");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.condition(), Condition::invalid_argument);
}

TEST_F(HostImageStoreTest, StagingAMissingSourceIsNotFound) {
  auto store = open_store();
  auto img = store.stage("v1", dir_.path() + "/nope.img", std::string(64, '0'));
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.condition(), Condition::not_found);
  EXPECT_TRUE(contains(img.error().message, "nope.img"));
  EXPECT_FALSE(fs::exists(root() + "/versions/v1"));
}

TEST_F(HostImageStoreTest, RestagingTheSameVersionAndChecksumIsIdempotent) {
  auto store = open_store();
  auto first = stage(store, "v1");
  auto [path, sha] = source("v1");
  auto again = store.stage("v1", path, sha);
  ASSERT_TRUE(again.ok()) << again.error().describe();
  EXPECT_EQ(again->sha256, first.sha256);
  auto all = store.list();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1u);
}

TEST_F(HostImageStoreTest, RestagingAVersionWithADifferentChecksumIsRefused) {
  auto store = open_store();
  auto first = stage(store, "v1");
  auto [other_path, other_sha] = source("v2");
  auto img = store.stage("v1", other_path, other_sha);
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.condition(), Condition::already_exists);
  EXPECT_TRUE(contains(img.error().message, first.sha256));
  auto kept = store.verify("v1");
  ASSERT_TRUE(kept.ok()) << kept.error().describe();
  EXPECT_EQ(kept->sha256, first.sha256);
}

TEST_F(HostImageStoreTest, RestagingRepairsACorruptStagedCopy) {
  auto store = open_store();
  auto img = stage(store, "v1");
  write_file(img.path, "garbage");
  ASSERT_FALSE(store.verify("v1").ok());
  auto [path, sha] = source("v1");
  auto again = store.stage("v1", path, sha);
  ASSERT_TRUE(again.ok()) << again.error().describe();
  EXPECT_TRUE(store.verify("v1").ok());
}

TEST_F(HostImageStoreTest, BadVersionNamesAreRefused) {
  auto store = open_store();
  auto [path, sha] = source("v1");
  for (const std::string& name :
       {std::string(), std::string("."), std::string(".."), std::string("a/b"), std::string("../x"),
        std::string("v 1"), std::string("v1\n"), std::string(65, 'a')}) {
    auto img = store.stage(name, path, sha);
    ASSERT_FALSE(img.ok()) << "'" << name << "'";
    EXPECT_EQ(img.condition(), Condition::invalid_argument) << "'" << name << "'";
    EXPECT_EQ(store.verify(name).condition(), Condition::invalid_argument);
    EXPECT_EQ(store.activate(name).condition(), Condition::invalid_argument);
  }
  EXPECT_TRUE(fs::is_empty(root() + "/versions"));
  for (const std::string& name :
       {std::string("v1.2_rc-3"), std::string(64, 'a'), std::string(".x")}) {
    EXPECT_TRUE(store.stage(name, path, sha).ok()) << name;
  }
}

TEST_F(HostImageStoreTest, MissingVersionIsNotFound) {
  auto store = open_store();
  stage(store, "v1");
  for (auto r : {store.verify("v9"), store.activate("v9")}) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.condition(), Condition::not_found);
    EXPECT_TRUE(contains(r.error().message, "v9"));
  }
}

TEST_F(HostImageStoreTest, ActivationSwitchesCurrentAndKeepsPrevious) {
  auto [store, v1_image, v2_image] = two_versions({"v1"});
  EXPECT_EQ(current_previous(store), "v1 none");
  auto v2 = store.activate("v2");
  ASSERT_TRUE(v2.ok()) << v2.error().describe();
  EXPECT_EQ(v2->version, "v2");
  EXPECT_EQ(current_previous(store), "v2 v1");
  // Relative links, so the root can move; no temp links left behind.
  EXPECT_EQ(fs::read_symlink(root() + "/current"), "versions/v2");
  EXPECT_EQ(fs::read_symlink(root() + "/previous"), "versions/v1");
  EXPECT_FALSE(fs::exists(fs::symlink_status(root() + "/.current.tmp")));
  EXPECT_EQ(read_file(root() + "/current/image"), read_file(store.current()->path));
}

TEST_F(HostImageStoreTest, ActivatingTheCurrentVersionIsANoOp) {
  auto [store, v1, v2] = two_versions({"v1", "v2"});
  ASSERT_TRUE(store.activate("v2").ok());
  EXPECT_EQ(current_previous(store), "v2 v1") << "re-activating must not lose previous";
}

TEST_F(HostImageStoreTest, RollbackSwapsCurrentAndPrevious) {
  auto [store, v1, v2] = two_versions({"v1", "v2"});
  auto back = store.rollback();
  ASSERT_TRUE(back.ok()) << back.error().describe();
  EXPECT_EQ(back->version, "v1");
  EXPECT_EQ(current_previous(store), "v1 v2");
  ASSERT_TRUE(store.rollback().ok());
  EXPECT_EQ(current_previous(store), "v2 v1");
}

TEST_F(HostImageStoreTest, RollbackWithoutPreviousIsNotFound) {
  auto store = open_store();
  EXPECT_EQ(store.rollback().condition(), Condition::not_found);
  stage(store, "v1");
  ASSERT_TRUE(store.activate("v1").ok());
  EXPECT_EQ(store.rollback().condition(), Condition::not_found);
  EXPECT_EQ(version_of(store.current()), "v1");
}

TEST_F(HostImageStoreTest, TruncatedImageIsRefusedAndActivateLeavesCurrentUnchanged) {
  auto [store, v1, v2] = two_versions({"v1"});
  fs::resize_file(v2.path, v2.size / 2);
  expect_refused(store, "v2", "v2");
  EXPECT_EQ(current_previous(store), "v1 none");
}

TEST_F(HostImageStoreTest, OverwrittenImageOfTheSameSizeIsRefused) {
  auto [store, v1, v2] = two_versions({"v1"});
  std::string bytes = read_file(v2.path);
  bytes[bytes.size() / 2] ^= 0x01;  // one flipped bit, same size
  write_file(v2.path, bytes);
  expect_refused(store, "v2", "sha256");
  EXPECT_EQ(version_of(store.current()), "v1");
}

TEST_F(HostImageStoreTest, MissingImageFileIsRefusedAndRollbackToItIsRefused) {
  auto [store, v1, v2] = two_versions({"v1", "v2"});
  fs::remove(v1.path);
  EXPECT_EQ(store.verify("v1").condition(), Condition::invalid_state);
  EXPECT_FALSE(store.rollback().ok());
  EXPECT_EQ(current_previous(store), "v2 v1");
}

TEST_F(HostImageStoreTest, ReopeningTheStoreSeesTheSameCurrentAndPrevious) {
  two_versions({"v1", "v2"});
  // Crash leftovers: a half-copied stage and a temp link that was never renamed.
  fs::create_directories(root() + "/.staging/v3");
  write_file(root() + "/.staging/v3/image", "half");
  fs::create_symlink("versions/v1", root() + "/.current.tmp");
  auto store = open_store();
  EXPECT_EQ(current_previous(store), "v2 v1");
  EXPECT_TRUE(fs::is_empty(root() + "/.staging"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(root() + "/.current.tmp")));
  auto all = store.list();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ(store.root(), fs::path(root()).lexically_normal().string());
}

TEST_F(HostImageStoreTest, OpenRefusesACurrentThatIsNotALinkToAStagedVersion) {
  fs::create_directories(root() + "/versions");
  write_file(root() + "/current", "not a link");
  auto s = HostImageStore::open(root());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.condition(), Condition::invalid_state);
  fs::remove(root() + "/current");
  fs::create_symlink("versions/v7", root() + "/current");
  auto dangling = HostImageStore::open(root());
  ASSERT_FALSE(dangling.ok());
  EXPECT_TRUE(contains(dangling.error().message, "v7"));
}

TEST_F(HostImageStoreTest, ListIsSortedByVersion) {
  auto store = open_store();
  for (const char* v : {"v3", "v1", "v2"}) stage(store, v);
  auto all = store.list();
  ASSERT_TRUE(all.ok()) << all.error().describe();
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].version, "v1");
  EXPECT_EQ((*all)[1].version, "v2");
  EXPECT_EQ((*all)[2].version, "v3");
  auto j = to_json((*all)[0]);
  EXPECT_EQ(j.at("version").as_string(), "v1");
  EXPECT_EQ(j.at("sha256").as_string(), (*all)[0].sha256);
  EXPECT_EQ(j.at("size").to_number<uint64_t>(), (*all)[0].size);
}

// ---- guest images -------------------------------------------------------------------------

class GuestImageStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : {"v1", "v2"}) {
      fs::create_directories(dir_.path() + "/" + v);
      write_file(dir_.path() + "/" + std::string(v) + "/vmlinuz", "kernel");
      write_file(dir_.path() + "/" + std::string(v) + "/initrd.img", std::string("initrd ") + v);
    }
  }
  std::string sha(const std::string& rel) { return *sha256_file(dir_.path() + "/" + rel); }
  std::string entry(const std::string& v, const std::string& kernel) {
    return R"({"version":")" + v + R"(","kernel":")" + kernel + R"(","initrd":")" + v +
           R"(/initrd.img","sha256_kernel":")" + sha(v + "/vmlinuz") + R"(","sha256_initrd":")" +
           sha(v + "/initrd.img") + R"("})";
  }
  void write_manifest(const std::string& images) {
    write_file(dir_.path() + "/manifest.json",
               R"({"kernel_version":"6.1","images":[)" + images + "]}");
  }
  void write_good_manifest() {
    // v1 with an absolute kernel path, v2 with paths relative to the manifest.
    write_manifest(entry("v1", dir_.path() + "/v1/vmlinuz") + "," + entry("v2", "v2/vmlinuz"));
  }
  Error open_error() {
    auto s = GuestImageStore::open(dir_.path());
    EXPECT_FALSE(s.ok());
    return s.ok() ? Error{} : s.error();
  }
  TempDir dir_;
};

TEST_F(GuestImageStoreTest, ReadsAManifestAndResolvesRelativePaths) {
  write_good_manifest();
  auto store = GuestImageStore::open(dir_.path());
  ASSERT_TRUE(store.ok()) << store.error().describe();
  auto all = store->list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].version, "v1");
  EXPECT_EQ(all[1].version, "v2");
  auto v2 = store->get("v2");
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->kernel, dir_.path() + "/v2/vmlinuz");
  EXPECT_EQ(v2->initrd, dir_.path() + "/v2/initrd.img");
  EXPECT_EQ(v2->sha256_initrd, sha("v2/initrd.img"));
  EXPECT_TRUE(store->verify("v1").ok());
  EXPECT_TRUE(store->verify("v2").ok());
  auto j = to_json(*v2);
  EXPECT_EQ(j.at("initrd").as_string(), v2->initrd);
  EXPECT_EQ(j.at("sha256_kernel").as_string(), v2->sha256_kernel);
}

TEST_F(GuestImageStoreTest, UnknownVersionIsNotFoundAndListsTheKnownOnes) {
  write_good_manifest();
  auto store = GuestImageStore::open(dir_.path());
  ASSERT_TRUE(store.ok());
  auto g = store->get("v9");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.condition(), Condition::not_found);
  EXPECT_TRUE(contains(g.error().message, "v9"));
  EXPECT_TRUE(contains(g.error().message, "v1, v2"));
  EXPECT_EQ(store->verify("v9").condition(), Condition::not_found);
}

TEST_F(GuestImageStoreTest, VerifyDetectsAModifiedInitrd) {
  write_good_manifest();
  auto store = GuestImageStore::open(dir_.path());
  ASSERT_TRUE(store.ok());
  write_file(dir_.path() + "/v2/initrd.img", "initrd v2 tampered");
  auto v = store->verify("v2");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.condition(), Condition::invalid_argument);
  EXPECT_TRUE(contains(v.error().message, "guest image v2: initrd checksum mismatch"))
      << v.error().message;
  EXPECT_TRUE(store->verify("v1").ok()) << "other versions are unaffected";
  fs::remove(dir_.path() + "/v1/vmlinuz");
  auto gone = store->verify("v1");
  ASSERT_FALSE(gone.ok());
  EXPECT_TRUE(contains(gone.error().message, "kernel"));
}

TEST_F(GuestImageStoreTest, MissingManifestIsNotFound) {
  auto s = GuestImageStore::open(dir_.path());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.condition(), Condition::not_found);
  EXPECT_TRUE(contains(s.error().message, "manifest.json"));
}

TEST_F(GuestImageStoreTest, MalformedManifestErrorsNameTheField) {
  const std::string good = entry("v1", "v1/vmlinuz");
  auto without = [&](const std::string& key) {
    std::string e = good;
    auto at = e.find("\"" + key + "\"");
    auto end = e.find(',', at);
    return e.erase(at, end - at + 1);
  };
  struct Case {
    std::string manifest;  // full text
    std::string expect;    // substring of the error
  };
  const std::vector<Case> cases = {
      {"{not json", "not valid JSON"},
      {"[1,2]", "not a JSON object"},
      {R"({"kernel_version":"6.1"})", "images is missing"},
      {R"({"images":{}})", "images must be an array"},
      {R"({"images":[42]})", "images[0] must be an object"},
      {R"({"images":[)" + good + "," + without("initrd") + "]}", "images[1].initrd is missing"},
      {R"({"images":[)" + without("sha256_kernel") + "]}", "images[0].sha256_kernel is missing"},
      {R"({"images":[{"version":7}]})", "images[0].version must be a non-empty string"},
      {R"({"images":[)" + good + "," + good + "]}", "images[1].version 'v1' is a duplicate"},
  };
  for (const auto& c : cases) {
    write_file(dir_.path() + "/manifest.json", c.manifest);
    Error e = open_error();
    EXPECT_EQ(e.condition, Condition::invalid_argument) << c.manifest;
    EXPECT_TRUE(contains(e.message, c.expect)) << e.message << " (wanted: " << c.expect << ")";
  }
  std::string bad_sha = good;
  bad_sha.replace(bad_sha.find(sha("v1/initrd.img")), 64, "xyz");
  write_manifest(bad_sha);
  EXPECT_TRUE(contains(open_error().message, "images[0].sha256_initrd must be 64 hex digits"));
}

TEST_F(GuestImageStoreTest, ManifestNamingAMissingFileIsNotFound) {
  write_manifest(entry("v1", "v1/vmlinuz") + "," + entry("v2", "v2/nope"));
  Error e = open_error();
  EXPECT_EQ(e.condition, Condition::not_found);
  EXPECT_TRUE(contains(e.message, "images[1].kernel")) << e.message;
  EXPECT_TRUE(contains(e.message, "v2/nope")) << e.message;
}

// ---- OS disk images (the Debian builder's and the image library's manifest layout) ---------
// Real disks, made with mkfs.ext4 and qemu-img (the store runs check_os_disk on them).

class DiskImageManifestTest : public ::testing::Test {
 protected:
  void run(const std::vector<std::string>& argv) {
    auto r = run_command(argv, std::chrono::seconds(60));
    ASSERT_TRUE(r.ok()) << r.error().describe();
    ASSERT_EQ(r->exit_code, 0) << describe_command(argv) << ": " << r->output;
  }
  // DIR/NAME/{disk.qcow2|disk.raw, vmlinuz, initrd.img} as testbed/build-debian-image.sh lays out.
  void make_image(const std::string& dir, const std::string& name,
                  const std::string& format = "qcow2") {
    const std::string d = dir + "/" + name;
    fs::create_directories(d);
    run({"truncate", "-s", "8M", d + "/root.raw"});
    run({"mkfs.ext4", "-q", "-F", d + "/root.raw"});
    if (format == "qcow2") {
      run({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", d + "/root.raw", d + "/disk.qcow2"});
      fs::remove(d + "/root.raw");
    } else {
      fs::rename(d + "/root.raw", d + "/disk.raw");
    }
    write_file(d + "/vmlinuz", "kernel of " + name);
    write_file(d + "/initrd.img", "initrd of " + name);
  }
  std::string disk_of(const std::string& dir, const std::string& name) {
    const std::string d = dir + "/" + name;
    return fs::exists(d + "/disk.qcow2") ? d + "/disk.qcow2" : d + "/disk.raw";
  }
  // One entry of the disk layout, paths relative to `dir`. `omit`: keys to leave out.
  std::string entry(const std::string& dir, const std::string& name,
                    const std::string& boot = "kernel", const std::set<std::string>& omit = {},
                    const std::string& format = "") {
    const std::string disk = disk_of(dir, name);
    const std::string fmt = format.empty() ? (disk.ends_with(".qcow2") ? "qcow2" : "raw") : format;
    const std::string rel = fs::path(disk).lexically_relative(dir).string();
    std::string e = R"({"name": ")" + name + R"(", "boot": ")" + boot + R"(")";
    if (!omit.contains("cmdline")) e += R"(, "cmdline": "root=/dev/vda rw console=ttyS0 quiet")";
    e += R"(, "disk": {"path": ")" + rel + R"(", "format": ")" + fmt +
         R"(", "virtual_size": 8388608, "bytes": )" + std::to_string(fs::file_size(disk)) +
         R"(, "sha256": ")" + *sha256_file(disk) + R"("})";
    for (const std::string f : {"kernel", "initrd"}) {
      if (omit.contains(f)) continue;
      const std::string file = name + (f == "kernel" ? "/vmlinuz" : "/initrd.img");
      e += R"(, ")" + f + R"(": {"path": ")" + file + R"(", "sha256": ")" +
           *sha256_file(dir + "/" + file) + R"("})";
    }
    return e + "}";
  }
  void manifest(const std::string& dir, const std::vector<std::string>& entries) {
    std::string all;
    for (const auto& e : entries) all += (all.empty() ? "" : ",\n") + e;
    write_file(dir + "/manifest.json", R"({"builder": "test", "images": [)" + all + "]}\n");
  }
  Error open_error(const std::string& dir) {
    auto s = GuestImageStore::open(dir);
    EXPECT_FALSE(s.ok());
    return s.ok() ? Error{} : s.error();
  }
  TempDir tmp_;
  const std::string& dir() const { return tmp_.path(); }
};

TEST_F(DiskImageManifestTest, ReadsTheDebianBuildersManifestWithRelativePaths) {
  make_image(dir(), "debian-v1");
  make_image(dir(), "debian-v2", "raw");
  manifest(dir(), {entry(dir(), "debian-v1"), entry(dir(), "debian-v2")});
  auto store = GuestImageStore::open(dir());
  ASSERT_TRUE(store.ok()) << store.error().describe();
  ASSERT_EQ(store->list().size(), 2u);
  auto v1 = store->get("debian-v1");
  ASSERT_TRUE(v1.ok());
  EXPECT_FALSE(v1->builtin());
  EXPECT_EQ(v1->boot, "kernel");
  EXPECT_EQ(v1->disk, dir() + "/debian-v1/disk.qcow2");
  EXPECT_EQ(v1->disk_format, "qcow2");
  EXPECT_EQ(v1->disk_virtual_size, 8u << 20);
  EXPECT_EQ(v1->sha256_disk, *sha256_file(v1->disk));
  EXPECT_EQ(v1->kernel, dir() + "/debian-v1/vmlinuz");
  EXPECT_EQ(v1->initrd, dir() + "/debian-v1/initrd.img");
  EXPECT_EQ(v1->cmdline, "root=/dev/vda rw console=ttyS0 quiet");
  EXPECT_EQ(v1->manifest_dir, dir());
  EXPECT_EQ(store->get("debian-v2")->disk_format, "raw");
  EXPECT_TRUE(store->verify("debian-v1").ok());
  EXPECT_TRUE(store->verify("debian-v2").ok());
  auto j = to_json(*v1);
  EXPECT_EQ(j.at("disk_format").as_string(), "qcow2");
  EXPECT_EQ(j.at("builtin").as_bool(), false);
}

TEST_F(DiskImageManifestTest, BootDiskNeedsNoKernelAndBootKernelDoes) {
  make_image(dir(), "own-loader");
  make_image(dir(), "debian-v1");
  manifest(dir(), {entry(dir(), "own-loader", "disk", {"kernel", "initrd", "cmdline"})});
  auto store = GuestImageStore::open(dir());
  ASSERT_TRUE(store.ok()) << store.error().describe();
  EXPECT_EQ(store->get("own-loader")->boot, "disk");
  EXPECT_EQ(store->get("own-loader")->kernel, "");
  EXPECT_TRUE(store->verify("own-loader").ok());

  const std::vector<std::pair<std::string, std::string>> cases = {
      {"kernel", "image debian-v1: boot: kernel needs a kernel"},
      {"initrd", "image debian-v1: boot: kernel needs an initrd"},
      {"cmdline", "image debian-v1: boot: kernel needs a cmdline"}};
  for (const auto& [omit, expect] : cases) {
    manifest(dir(), {entry(dir(), "debian-v1", "kernel", {omit})});
    Error e = open_error(dir());
    EXPECT_EQ(e.condition, Condition::invalid_argument);
    EXPECT_TRUE(contains(e.message, expect)) << e.message;
  }
  manifest(dir(), {entry(dir(), "debian-v1", "bios")});
  EXPECT_TRUE(contains(open_error(dir()).message, "images[0].boot must be \"kernel\" or \"disk\""));
}

// firmware: what the VM starts; bios unless the entry says efi, and nothing else is accepted.
TEST_F(DiskImageManifestTest, FirmwareIsBiosUnlessTheEntrySaysEfiAndAnythingElseIsRefused) {
  make_image(dir(), "debian-v1");
  make_image(dir(), "debian-efi-v1");
  std::string efi = entry(dir(), "debian-efi-v1", "disk", {"kernel", "initrd", "cmdline"});
  efi.insert(efi.find(R"(, "disk")"), R"(, "firmware": "efi")");
  manifest(dir(), {entry(dir(), "debian-v1"), efi});
  auto store = GuestImageStore::open(dir());
  ASSERT_TRUE(store.ok()) << store.error().describe();
  EXPECT_EQ(store->get("debian-v1")->firmware, "bios");
  EXPECT_EQ(store->get("debian-efi-v1")->firmware, "efi");
  EXPECT_EQ(to_json(*store->get("debian-efi-v1")).at("firmware").as_string(), "efi");

  for (const char* bad : {R"("uefi")", R"("")", "1"}) {
    std::string e = entry(dir(), "debian-efi-v1", "disk", {"kernel", "initrd", "cmdline"});
    e.insert(e.find(R"(, "disk")"), std::string(R"(, "firmware": )") + bad);
    manifest(dir(), {e});
    Error err = open_error(dir());
    EXPECT_EQ(err.condition, Condition::invalid_argument) << bad;
    EXPECT_TRUE(contains(err.message, "images[0].firmware")) << err.message;
  }
}

TEST_F(DiskImageManifestTest, ADiskThatIsRefusedOrDiffersFromTheManifestNamesTheImage) {
  make_image(dir(), "debian-v1");
  manifest(dir(), {entry(dir(), "debian-v1", "kernel", {}, "raw")});
  Error e = open_error(dir());
  EXPECT_TRUE(contains(e.message, "image debian-v1: the manifest says raw but")) << e.message;
  EXPECT_TRUE(contains(e.message, "is qcow2")) << e.message;

  std::string resized = entry(dir(), "debian-v1");
  resized.replace(resized.find("8388608"), 7, "9999999");
  manifest(dir(), {resized});
  EXPECT_TRUE(contains(open_error(dir()).message, "virtual size 9999999"))
      << open_error(dir()).message;

  // A text file where the disk should be.
  fs::create_directories(dir() + "/notes");
  write_file(dir() + "/notes/disk.raw", std::string(2 << 20, 'x'));
  write_file(dir() + "/notes/vmlinuz", "k");
  write_file(dir() + "/notes/initrd.img", "i");
  manifest(dir(), {entry(dir(), "notes")});
  e = open_error(dir());
  EXPECT_EQ(e.condition, Condition::invalid_argument);
  EXPECT_TRUE(contains(e.message, "image notes: ")) << e.message;
  EXPECT_TRUE(contains(e.message, "not a disk image")) << e.message;

  fs::remove(dir() + "/debian-v1/disk.qcow2");
  write_file(dir() + "/manifest.json", R"({"images": [{"name": "debian-v1", "boot": "disk",
      "disk": {"path": "debian-v1/disk.qcow2", "format": "qcow2", "sha256": ")" +
                                           std::string(64, 'a') + R"("}}]})");
  e = open_error(dir());
  EXPECT_EQ(e.condition, Condition::not_found);
  EXPECT_TRUE(contains(e.message, "images[0].disk.path: no such file")) << e.message;
}

TEST_F(DiskImageManifestTest, MalformedDiskEntriesNameTheField) {
  make_image(dir(), "d");
  const std::string sha(64, 'a');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"boot": "disk"})", "images[0].name is missing"},
      {R"({"name": "../x", "boot": "disk"})", "images[0].name '../x' must be"},
      {R"({"name": "d", "boot": "disk"})", "images[0].disk is missing"},
      {R"({"name": "d", "boot": "disk", "disk": "d/disk.qcow2"})",
       "images[0].disk must be an object"},
      {R"({"name": "d", "boot": "disk", "disk": {"path": "d/disk.qcow2", "format": "vmdk", "sha256": ")" +
           sha + R"("}})",
       "images[0].disk.format must be qcow2 or raw"},
      {R"({"name": "d", "boot": "disk", "disk": {"path": "d/disk.qcow2", "format": "qcow2", "sha256": "12"}})",
       "images[0].disk.sha256 must be 64 hex digits"},
      {R"({"name": "d", "boot": "disk", "cmdline": "a\nb", "disk": {"path": "d/disk.qcow2", "format": "qcow2", "sha256": ")" +
           sha + R"("}})",
       "image d: cmdline must be one line"},
      {R"({"name": "d", "boot": "disk", "cmdline": ")" + std::string(1025, 'c') +
           R"(", "disk": {"path": "d/disk.qcow2", "format": "qcow2", "sha256": ")" + sha + R"("}})",
       "at most 1024"},
  };
  for (const auto& [e, expect] : cases) {
    write_file(dir() + "/manifest.json", R"({"images": [)" + e + "]}");
    Error err = open_error(dir());
    EXPECT_EQ(err.condition, Condition::invalid_argument) << e;
    EXPECT_TRUE(contains(err.message, expect)) << err.message << " (wanted: " << expect << ")";
  }
}

TEST_F(DiskImageManifestTest, VerifyDetectsAChangedDiskByte) {
  make_image(dir(), "debian-v1", "raw");
  make_image(dir(), "debian-v2", "raw");
  manifest(dir(), {entry(dir(), "debian-v1"), entry(dir(), "debian-v2")});
  auto store = GuestImageStore::open(dir());
  ASSERT_TRUE(store.ok()) << store.error().describe();
  ASSERT_TRUE(store->verify("debian-v1").ok());
  {
    std::fstream f(dir() + "/debian-v1/disk.raw", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(6 << 20);
    f.put('!');  // one byte, same size, still an ext4 disk
  }
  auto v = store->verify("debian-v1");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.condition(), Condition::invalid_argument);
  EXPECT_TRUE(contains(v.error().message, "guest image debian-v1: disk checksum mismatch"))
      << v.error().message;
  EXPECT_TRUE(store->verify("debian-v2").ok());
  EXPECT_TRUE(GuestImageStore::open(dir()).ok()) << "open does not hash disks";
  fs::resize_file(dir() + "/debian-v2/disk.raw", 9 << 20);
  auto grown = store->verify("debian-v2");
  ASSERT_FALSE(grown.ok());
  EXPECT_TRUE(contains(grown.error().message, "the manifest says 8388608"))
      << grown.error().message;
}

TEST_F(DiskImageManifestTest, SeveralDirectoriesAreOneUnionInOrder) {
  // The built-in layout in one directory, OS disks in two others.
  const std::string builtin = dir() + "/builtin", deb = dir() + "/deb", lib = dir() + "/lib";
  fs::create_directories(builtin + "/v1");
  write_file(builtin + "/v1/vmlinuz", "k");
  write_file(builtin + "/v1/initrd.img", "i");
  write_file(
      builtin + "/manifest.json",
      R"({"images":[{"version":"v1","kernel":"v1/vmlinuz","initrd":"v1/initrd.img","sha256_kernel":")" +
          *sha256_file(builtin + "/v1/vmlinuz") + R"(","sha256_initrd":")" +
          *sha256_file(builtin + "/v1/initrd.img") + R"("}]})");
  make_image(deb, "debian-v1");
  manifest(deb, {entry(deb, "debian-v1")});
  make_image(lib, "mine", "raw");
  manifest(lib, {entry(lib, "mine", "disk", {"kernel", "initrd", "cmdline"})});
  auto store = GuestImageStore::open(std::vector<std::string>{builtin, deb, lib});
  ASSERT_TRUE(store.ok()) << store.error().describe();
  auto all = store->list();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].version, "v1");
  EXPECT_TRUE(all[0].builtin());
  EXPECT_EQ(all[0].manifest_dir, builtin);
  EXPECT_EQ(all[1].version, "debian-v1");
  EXPECT_EQ(all[2].version, "mine");
  EXPECT_EQ(all[2].manifest_dir, lib);
  EXPECT_TRUE(store->verify("v1").ok());

  // debian-v1 added to the library too: the union refuses, naming both directories.
  make_image(lib, "debian-v1");
  manifest(lib,
           {entry(lib, "mine", "disk", {"kernel", "initrd", "cmdline"}), entry(lib, "debian-v1")});
  auto dup = GuestImageStore::open(std::vector<std::string>{builtin, deb, lib});
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.condition(), Condition::invalid_argument);
  EXPECT_TRUE(
      contains(dup.error().message, "'debian-v1' is defined twice: in " + deb + " and in " + lib))
      << dup.error().message;
  EXPECT_EQ(GuestImageStore::open(std::vector<std::string>{}).condition(),
            Condition::invalid_argument);
  auto missing = GuestImageStore::open(std::vector<std::string>{builtin, dir() + "/nope"});
  EXPECT_EQ(missing.condition(), Condition::not_found);
}

}  // namespace
}  // namespace fabriclab::agent
