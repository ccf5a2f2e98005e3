// The user's image library (image_library.hpp).
//
// The order of an add is what makes "a refused image leaves nothing behind" hold:
//   1. check the request and the files where they are (check_os_disk, kernel header, sizes);
//   2. take DIR/.lock, read the manifest, refuse a name it already has;
//   3. copy into DIR/.add-NAME, hashing while copying, so the recorded sha256 is the copy's;
//   4. check the copy again (the source could have changed since step 1) and make it read-only;
//   5. rename DIR/.add-NAME to DIR/NAME, then write the manifest (temp file, fsync, rename).
// Until step 5 the library's manifest and its listed directories are untouched; a failure removes
// the staging directory. Step 5's two renames are not one atomic act: a crash between them leaves
// DIR/NAME unlisted, which is why an add or remove of NAME first removes an unlisted DIR/NAME (and
// any DIR/.add-NAME) while it holds the lock.

#include "fabriclab/rack/image_library.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fabriclab/common/json.hpp"
#include "fabriclab/hypervisor/disk_image.hpp"

namespace fabriclab::rack {
namespace {
namespace fs = std::filesystem;
namespace json = boost::json;

constexpr size_t kMaxManifest = 4 << 20;

class LibraryLock {
 public:
  LibraryLock() = default;
  explicit LibraryLock(int fd) : fd_(fd) {}
  LibraryLock(LibraryLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  LibraryLock& operator=(LibraryLock&&) = delete;
  ~LibraryLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the flock
  }

 private:
  int fd_ = -1;
};

Result<LibraryLock> lock_library(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return make_error(Condition::invalid_argument,
                      "cannot create the image library " + dir + ": " + ec.message());
  const std::string path = dir + "/.lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return make_error(Condition::transient, "cannot open " + path + ": " + std::strerror(errno));
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    int err = errno;
    ::close(fd);
    return make_error(Condition::transient, "cannot lock " + path + ": " + std::strerror(err));
  }
  return LibraryLock(fd);
}

std::string manifest_path(const std::string& dir) { return dir + "/manifest.json"; }

// Absolute, normalised, without a trailing slash ("lib/" and "lib" are one library).
std::string absolute_dir(const std::string& dir) {
  std::string d = fs::absolute(dir).lexically_normal().string();
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d;
}

// The manifest as JSON (an empty library when there is none).
Result<json::object> read_manifest(const std::string& dir) {
  const std::string path = manifest_path(dir);
  std::error_code ec;
  if (!fs::exists(path, ec))
    return json::object{{"library", "fabriclab image"}, {"images", json::array()}};
  auto bad = [&](const std::string& why) {
    return make_error(Condition::invalid_state,
                      path + ": " + why + " (left as it is: fix or move it)");
  };
  if (fs::file_size(path, ec) > kMaxManifest) return bad("larger than 4 MiB");
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return bad("cannot be read");
  json::parse_options opt;
  opt.max_depth = 16;
  boost::system::error_code jec;
  json::value v = json::parse(text.str(), jec, json::storage_ptr(), opt);
  if (jec) return bad("not valid JSON: " + jec.message());
  if (!v.is_object()) return bad("not a JSON object");
  auto* images = v.as_object().if_contains("images");
  if (!images || !images->is_array()) return bad("images is missing or not an array");
  return std::move(v.as_object());
}

std::string entry_name(const json::value& e) {
  if (!e.is_object()) return "";
  for (const char* key : {"name", "version"}) {
    auto* n = e.as_object().if_contains(key);
    if (n && n->is_string()) return n->as_string().c_str();
  }
  return "";
}

Status fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    return make_error(Condition::transient, "cannot fsync " + path + ": " + std::strerror(err));
  }
  ::close(fd);
  return {};
}

Status write_manifest(const std::string& dir, const json::object& manifest) {
  const std::string tmp = dir + "/.manifest.json.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << json::serialize(manifest) << "\n";
    if (!out.flush()) return make_error(Condition::transient, "cannot write " + tmp);
  }
  FL_RETURN_IF_ERROR(fsync_path(tmp, false));
  if (::rename(tmp.c_str(), manifest_path(dir).c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return make_error(Condition::transient,
                      "cannot replace " + manifest_path(dir) + ": " + std::strerror(err));
  }
  return fsync_path(dir, true);
}

// An add's staging directory and an unlisted DIR/NAME: crash leftovers (we hold the lock).
void clear_leftovers(const std::string& dir, const std::string& name, bool listed) {
  std::error_code ec;
  fs::remove_all(dir + "/.add-" + name, ec);
  if (!listed) fs::remove_all(dir + "/" + name, ec);
}

// A kernel or initrd given for boot: kernel: a regular, non-empty file within the size limit; a
// kernel must carry the x86 boot protocol's "HdrS" (a bzImage, what QEMU's -kernel boots).
Status check_boot_file(const char* what, const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return make_error(errno == ENOENT ? Condition::not_found : Condition::transient,
                      std::string(what) + " " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode))
    return make_error(Condition::invalid_argument,
                      std::string(what) + " " + path + ": not a regular file");
  if (st.st_size == 0)
    return make_error(Condition::invalid_argument,
                      std::string(what) + " " + path + ": the file is empty");
  if (static_cast<uint64_t>(st.st_size) > kMaxBootFileBytes)
    return make_error(Condition::invalid_argument,
                      std::string(what) + " " + path + ": larger than 1 GiB");
  if (std::string_view(what) == "kernel") {
    char magic[4] = {};
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    bool ok = fd >= 0 && ::pread(fd, magic, 4, 0x202) == 4 && std::memcmp(magic, "HdrS", 4) == 0;
    if (fd >= 0) ::close(fd);
    if (!ok) {
      return make_error(
          Condition::invalid_argument,
          "kernel " + path +
              ": not a Linux kernel image (no bzImage header; use the guest's vmlinuz)");
    }
  }
  return {};
}

// Everything about the request that needs no file system changes; fills in the boot kind.
Status check_request(ImageAddRequest& r) {
  if (!agent::valid_image_version(r.name)) {
    return make_error(Condition::invalid_argument,
                      "image name '" + r.name + "': use 1-64 of [A-Za-z0-9._-], not '.' or '..'");
  }
  if (is_builtin_image_name(r.name)) {
    return make_error(
        Condition::invalid_argument,
        "image name '" + r.name + "' is a built-in guest's (v1, v2, v3-broken): pick another");
  }
  if (r.disk.empty())
    return make_error(Condition::invalid_argument, "image " + r.name + ": --disk FILE is required");
  // Any boot file or a command line means direct kernel boot; a missing part is then named.
  if (r.boot.empty())
    r.boot = r.kernel.empty() && r.initrd.empty() && r.cmdline.empty() ? "disk" : "kernel";
  if (r.boot != "kernel" && r.boot != "disk")
    return make_error(Condition::invalid_argument, "boot '" + r.boot + "': kernel or disk");
  if (r.firmware.empty()) r.firmware = "bios";
  if (r.firmware != "bios" && r.firmware != "efi")
    return make_error(Condition::invalid_argument,
                      "image " + r.name + ": firmware '" + r.firmware + "': bios or efi");
  if (auto why = agent::cmdline_problem(r.cmdline); !why.empty())
    return make_error(Condition::invalid_argument, "image " + r.name + ": --cmdline " + why);
  const std::pair<const char*, const std::string*> parts[] = {
      {"kernel", &r.kernel}, {"initrd", &r.initrd}, {"cmdline", &r.cmdline}};
  for (auto [what, value] : parts) {
    if (r.boot == "kernel" && value->empty()) {
      return make_error(Condition::invalid_argument, "image " + r.name + ": boot: kernel needs a" +
                                                         (what[0] == 'i' ? "n " : " ") + what +
                                                         " (--" + what + ")");
    }
    if (r.boot == "disk" && !value->empty()) {
      return make_error(Condition::invalid_argument,
                        "image " + r.name + ": --" + what +
                            " is for boot: kernel (boot: disk starts the disk's own bootloader)");
    }
  }
  if (r.boot == "kernel") {
    FL_RETURN_IF_ERROR(check_boot_file("kernel", r.kernel));
    FL_RETURN_IF_ERROR(check_boot_file("initrd", r.initrd));
  }
  return {};
}

struct Copied {
  std::string rel, sha256;
  uint64_t bytes = 0;
};

Result<Copied> copy_in(const std::string& src, const std::string& staging, const std::string& name,
                       const std::string& file) {
  const std::string dst = staging + "/" + file;
  FL_ASSIGN_OR_RETURN(std::string sha, agent::copy_file_sha256(src, dst));
  if (::chmod(dst.c_str(), 0444) != 0)
    return make_error(Condition::transient,
                      "cannot make " + dst + " read-only: " + std::strerror(errno));
  std::error_code ec;
  return Copied{name + "/" + file, sha, fs::file_size(dst, ec)};
}

}  // namespace

std::string default_image_library() {
  if (const char* e = std::getenv("FABRICLAB_IMAGE_LIBRARY"); e && *e) return e;
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x)
    return std::string(x) + "/fabriclab/images";
  if (const char* h = std::getenv("HOME"); h && *h)
    return std::string(h) + "/.local/share/fabriclab/images";
  return "";
}

bool is_builtin_image_name(const std::string& name) {
  return name == "v1" || name == "v2" || name == "v3-broken";
}

Result<agent::GuestImageInfo> add_image(const std::string& library,
                                        const ImageAddRequest& request) {
  if (library.empty())
    return make_error(Condition::invalid_argument, "no image library directory (--library DIR)");
  ImageAddRequest r = request;
  FL_RETURN_IF_ERROR(check_request(r));
  FL_ASSIGN_OR_RETURN(hypervisor::DiskImageInfo disk, hypervisor::check_os_disk(r.disk));

  const std::string dir = absolute_dir(library);
  FL_ASSIGN_OR_RETURN(LibraryLock lock, lock_library(dir));
  FL_ASSIGN_OR_RETURN(json::object manifest, read_manifest(dir));
  for (const auto& e : manifest.at("images").as_array()) {
    if (entry_name(e) == r.name) {
      return make_error(Condition::already_exists,
                        "image '" + r.name + "' is already in the library " + dir +
                            " (fabriclab image remove " + r.name + " first)");
    }
  }
  clear_leftovers(dir, r.name, /*listed=*/false);

  const std::string staging = dir + "/.add-" + r.name, final_dir = dir + "/" + r.name;
  std::error_code ec;
  if (!fs::create_directory(staging, ec) || ec)
    return make_error(Condition::transient,
                      "cannot create " + staging + ": " + (ec ? ec.message() : "exists"));
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code e;
      if (!path.empty()) fs::remove_all(path, e);
    }
  } cleanup{staging};

  const std::string disk_file = "disk." + disk.format;
  FL_ASSIGN_OR_RETURN(Copied d, copy_in(r.disk, staging, r.name, disk_file));
  Copied k, i;
  if (r.boot == "kernel") {
    FL_ASSIGN_OR_RETURN(k, copy_in(r.kernel, staging, r.name, "vmlinuz"));
    FL_ASSIGN_OR_RETURN(i, copy_in(r.initrd, staging, r.name, "initrd.img"));
  }
  FL_ASSIGN_OR_RETURN(hypervisor::DiskImageInfo copy,
                      hypervisor::check_os_disk(staging + "/" + disk_file));
  if (copy.format != disk.format || copy.virtual_size != disk.virtual_size) {
    return make_error(Condition::invalid_state, r.disk + " changed while it was being copied (" +
                                                    disk.format + " -> " + copy.format +
                                                    "); try again");
  }
  FL_RETURN_IF_ERROR(fsync_path(staging, true));
  if (::rename(staging.c_str(), final_dir.c_str()) != 0)
    return make_error(Condition::transient,
                      "cannot publish " + final_dir + ": " + std::strerror(errno));
  cleanup.path = final_dir;
  FL_RETURN_IF_ERROR(fsync_path(dir, true));

  json::object entry{
      {"name", r.name}, {"boot", r.boot}, {"firmware", r.firmware}, {"cmdline", r.cmdline}};
  entry["disk"] = json::object{{"path", d.rel},
                               {"format", copy.format},
                               {"virtual_size", copy.virtual_size},
                               {"bytes", d.bytes},
                               {"sha256", d.sha256}};
  json::object source{{"disk", fs::absolute(r.disk).string()}};
  if (r.boot == "kernel") {
    entry["kernel"] = json::object{{"path", k.rel}, {"sha256", k.sha256}};
    entry["initrd"] = json::object{{"path", i.rel}, {"sha256", i.sha256}};
    source["kernel"] = fs::absolute(r.kernel).string();
    source["initrd"] = fs::absolute(r.initrd).string();
  }
  entry["added_at"] = rfc3339_now();
  entry["source"] = std::move(source);
  manifest["library"] = "fabriclab image";
  manifest["images"].as_array().push_back(std::move(entry));
  FL_RETURN_IF_ERROR(write_manifest(dir, manifest));
  cleanup.path.clear();

  agent::GuestImageInfo g;
  g.version = r.name;
  g.boot = r.boot;
  g.firmware = r.firmware;
  g.cmdline = r.cmdline;
  g.disk = final_dir + "/" + disk_file;
  g.disk_format = copy.format;
  g.disk_virtual_size = copy.virtual_size;
  g.disk_bytes = d.bytes;
  g.sha256_disk = d.sha256;
  if (r.boot == "kernel") {
    g.kernel = final_dir + "/vmlinuz";
    g.initrd = final_dir + "/initrd.img";
    g.sha256_kernel = k.sha256;
    g.sha256_initrd = i.sha256;
  }
  g.manifest_dir = dir;
  return g;
}

Result<std::vector<agent::GuestImageInfo>> list_images(const std::string& library) {
  std::error_code ec;
  if (library.empty() || !fs::exists(manifest_path(library), ec))
    return std::vector<agent::GuestImageInfo>{};
  FL_ASSIGN_OR_RETURN(agent::GuestImageStore store, agent::GuestImageStore::open(library));
  return store.list();
}

Status remove_image(const std::string& library, const std::string& name) {
  if (!agent::valid_image_version(name))
    return make_error(Condition::invalid_argument,
                      "image name '" + name + "': use 1-64 of [A-Za-z0-9._-], not '.' or '..'");
  const std::string dir = absolute_dir(library);
  std::error_code ec;
  if (library.empty() || !fs::exists(manifest_path(dir), ec))
    return make_error(Condition::not_found,
                      "no image '" + name + "' in " + dir + " (the library is empty)");
  FL_ASSIGN_OR_RETURN(LibraryLock lock, lock_library(dir));
  FL_ASSIGN_OR_RETURN(json::object manifest, read_manifest(dir));
  auto& images = manifest.at("images").as_array();
  std::string known;
  bool found = false;
  for (auto it = images.begin(); it != images.end();) {
    if (entry_name(*it) == name) {
      it = images.erase(it);
      found = true;
    } else {
      known += (known.empty() ? "" : ", ") + entry_name(*it);
      ++it;
    }
  }
  if (!found) {
    return make_error(Condition::not_found, "no image '" + name + "' in the library " + dir +
                                                " (it has: " + (known.empty() ? "none" : known) +
                                                ")");
  }
  FL_RETURN_IF_ERROR(write_manifest(dir, manifest));
  clear_leftovers(dir, name, /*listed=*/false);
  if (fs::exists(dir + "/" + name, ec))
    return make_error(
        Condition::transient,
        "removed " + name + " from the manifest but cannot delete " + dir + "/" + name);
  return {};
}

Result<std::vector<std::string>> guest_image_dirs(const std::string& builtin,
                                                  const std::vector<std::string>& extra,
                                                  const std::string& library) {
  std::vector<std::string> dirs;
  auto add = [&](const std::string& d, const std::string& hint) -> Status {
    std::error_code ec;
    if (d.empty() || !fs::exists(manifest_path(d), ec))
      return make_error(Condition::not_found,
                        "no guest images in '" + d + "' (manifest.json missing" + hint + ")");
    std::string canon = fs::weakly_canonical(fs::absolute(d), ec).string();
    if (ec) canon = absolute_dir(d);
    for (const auto& have : dirs) {
      if (have == canon) return {};
    }
    dirs.push_back(canon);
    return {};
  };
  FL_RETURN_IF_ERROR(add(builtin, "; ./fabriclab.sh build makes them"));
  for (const auto& d : extra) FL_RETURN_IF_ERROR(add(d, ""));
  std::error_code ec;
  if (!library.empty() && fs::exists(manifest_path(library), ec))
    FL_RETURN_IF_ERROR(add(library, ""));
  auto store = agent::GuestImageStore::open(dirs);
  if (!store.ok()) return make_error(store.condition(), "guest images: " + store.error().message);
  return dirs;
}

}  // namespace fabriclab::rack
