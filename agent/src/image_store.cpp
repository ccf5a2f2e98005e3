// The agent's host image store (image_store.hpp; the guest image store is guest_image_store.cpp).
//
// A host-os update swaps the emulated host's OS image while its guests are down, so the two
// things that must never happen are (a) booting the host back into a half-written or corrupt
// image and (b) taking guests down for an image that then turns out to be unusable. Hence:
//
// * Staging is copy-then-publish. The source is hashed while it is copied into
//   <root>/.staging/<version>, so the bytes we check are exactly the bytes we keep (no window
//   between hashing the source and copying it). Only a verified copy, with its manifest, fsynced,
//   is renamed into versions/<version>; a mismatch or a crash leaves nothing under versions/, and
//   open() clears .staging/.
// * current/previous are symlinks, switched by creating a temporary symlink and rename(2)-ing it
//   over the old one, then fsyncing the directory. rename is atomic, so a reader (or a host that
//   crashes mid-update) sees either the old or the new target, never a missing or partial link.
//   Activation moves previous first and current second: a crash in between leaves current
//   unchanged (previous == current). Rollback moves current first: a crash in between leaves the
//   rollback done. Links are relative ("versions/v2") so the root can be moved or bind-mounted.
// * verify() re-hashes the staged file against its manifest, and activate()/rollback() call it
//   first. The update flow calls verify() before it stops a single guest: a corrupt or missing
//   image is refused while the guests still run, instead of being discovered after the pause.

#include "fabriclab/agent/image_store.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <tuple>

#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/logging.hpp"
#include "image_store_internal.hpp"

namespace fabriclab::agent {
namespace json = boost::json;
namespace fs = std::filesystem;

using image_detail::is_sha256_hex;
using image_detail::lower;
using image_detail::parse_object;
using image_detail::read_small_file;

namespace {

constexpr size_t kChunk = 64 * 1024;
constexpr size_t kMaxManifest = 1024 * 1024;

Error io_error(const std::string& what, const std::string& path, int err) {
  return make_error(err == ENOENT ? Condition::not_found : Condition::transient,
                    what + " " + path + ": " + std::strerror(err));
}

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) ctx_.reset();
  }
  bool ok() const { return ctx_ != nullptr; }
  void update(const void* data, size_t n) { EVP_DigestUpdate(ctx_.get(), data, n); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_.get(), md, &len);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
      out += kHex[md[i] >> 4];
      out += kHex[md[i] & 0xf];
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
};

struct Hashed {
  std::string sha256;
  uint64_t size = 0;
};

// Hashes `src`, writing the same bytes to `dst` (created, fsynced) when dst is non-empty; with
// `exclusive`, an existing dst is an error. Zero chunks become holes in dst.
Result<Hashed> hash_copy(const std::string& src, const std::string& dst, bool exclusive = false,
                         bool* created = nullptr) {
  Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.fd < 0) return io_error("cannot open", src, errno);
  const int create = O_WRONLY | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC);
  Fd out(dst.empty() ? -1 : ::open(dst.c_str(), create, 0644));
  if (!dst.empty() && out.fd < 0) {
    if (errno == EEXIST) return make_error(Condition::already_exists, dst + " already exists");
    return io_error("cannot create", dst, errno);
  }
  if (created) *created = out.fd >= 0;
  Sha256 sha;
  if (!sha.ok()) return make_error(Condition::internal, "OpenSSL cannot create a SHA-256 context");
  std::unique_ptr<char[]> buf(new char[kChunk]);
  Hashed h;
  for (;;) {
    ssize_t n = ::read(in.fd, buf.get(), kChunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return io_error("cannot read", src, errno);
    if (n == 0) break;
    sha.update(buf.get(), static_cast<size_t>(n));
    h.size += static_cast<uint64_t>(n);
    if (out.fd >= 0 && std::all_of(buf.get(), buf.get() + n, [](char c) { return c == 0; })) {
      if (::lseek(out.fd, n, SEEK_CUR) < 0) return io_error("cannot seek in", dst, errno);
      continue;
    }
    for (ssize_t done = 0; out.fd >= 0 && done < n;) {
      ssize_t w = ::write(out.fd, buf.get() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return io_error("cannot write", dst, errno);
      done += w;
    }
  }
  // A trailing hole needs the size set explicitly.
  if (out.fd >= 0 && ::ftruncate(out.fd, static_cast<off_t>(h.size)) != 0)
    return io_error("cannot size", dst, errno);
  if (out.fd >= 0 && ::fsync(out.fd) != 0) return io_error("cannot fsync", dst, errno);
  h.sha256 = sha.hex();
  return h;
}

Status write_file_synced(const std::string& path, const std::string& data) {
  Fd f(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (f.fd < 0) return io_error("cannot create", path, errno);
  if (::write(f.fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
    return io_error("cannot write", path, errno);
  }
  if (::fsync(f.fd) != 0) return io_error("cannot fsync", path, errno);
  return {};
}

Status fsync_dir(const std::string& dir) {
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.fd < 0 || ::fsync(d.fd) != 0) return io_error("cannot fsync directory", dir, errno);
  return {};
}

std::string utc_now() {
  std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string version_dir(const std::string& root, const std::string& v) {
  return root + "/versions/" + v;
}

Error bad_name(const std::string& v) {
  return make_error(
      Condition::invalid_argument,
      "invalid image version '" + v + "': use 1-64 of [A-Za-z0-9._-], not '.' or '..'");
}

// Reads versions/<v>/manifest.json. not_found if the version is not staged; invalid_state if its
// manifest is missing or malformed.
Result<HostImage> read_manifest(const std::string& root, const std::string& v) {
  const std::string dir = version_dir(root, v);
  if (!fs::is_directory(dir))
    return make_error(Condition::not_found, "host image '" + v + "' is not staged");
  const std::string where = "host image " + v + ": " + dir + "/manifest.json";
  auto text = read_small_file(dir + "/manifest.json");
  if (!text.ok())
    return make_error(Condition::invalid_state, "host image " + v + ": " + text.error().message);
  auto obj = parse_object(*text, where);
  if (!obj.ok()) return make_error(Condition::invalid_state, obj.error().message);
  auto str = [&](const char* k) { return json_get::str(*obj, k); };
  auto* size = obj->if_contains("size");
  auto fail = [&](const std::string& why) {
    return make_error(Condition::invalid_state, where + ": " + why);
  };
  if (str("version") != v) return fail("version is missing or is not '" + v + "'");
  if (!is_sha256_hex(str("sha256"))) return fail("sha256 must be 64 hex digits");
  if (!size || !(size->is_uint64() || (size->is_int64() && size->as_int64() >= 0))) {
    return fail("size must be a non-negative integer");
  }
  if (str("file") != "image") return fail("file must be \"image\"");
  uint64_t n = size->is_uint64() ? size->as_uint64() : static_cast<uint64_t>(size->as_int64());
  return HostImage{v, lower(str("sha256")), n, dir + "/image"};
}

Status point_link(const std::string& root, const std::string& name, const std::string& version) {
  const std::string tmp = root + "/." + name + ".tmp";
  const std::string dst = root + "/" + name;
  ::unlink(tmp.c_str());
  if (::symlink(("versions/" + version).c_str(), tmp.c_str()) != 0)
    return io_error("cannot create symlink", tmp, errno);
  if (::rename(tmp.c_str(), dst.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return io_error("cannot switch", dst, err);
  }
  return fsync_dir(root);
}

// The version a link names, if it is a well-formed link into versions/.
std::optional<std::string> link_version(const std::string& path) {
  char buf[512];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
  if (n < 0) return std::nullopt;
  std::string target(buf, static_cast<size_t>(n));
  constexpr std::string_view kPrefix = "versions/";
  if (!target.starts_with(kPrefix)) return std::nullopt;
  std::string v = target.substr(kPrefix.size());
  if (!valid_image_version(v)) return std::nullopt;
  return v;
}

}  // namespace

Result<std::string> image_detail::read_small_file(const std::string& path) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return io_error("cannot open", path, errno);
  std::string data;
  char buf[8192];
  for (ssize_t n; (n = ::read(f.fd, buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return io_error("cannot read", path, errno);
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > kMaxManifest)
      return make_error(Condition::invalid_argument, path + " is too large");
  }
  return data;
}

Result<json::object> image_detail::parse_object(const std::string& text, const std::string& what) {
  json::parse_options opt;
  opt.max_depth = 16;
  boost::system::error_code ec;
  json::value v = json::parse(text, ec, json::storage_ptr(), opt);
  if (ec)
    return make_error(Condition::invalid_argument, what + ": not valid JSON: " + ec.message());
  if (!v.is_object()) return make_error(Condition::invalid_argument, what + ": not a JSON object");
  return std::move(v.as_object());
}

bool image_detail::is_sha256_hex(const std::string& s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isxdigit(c); });
}

std::string image_detail::lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

Result<std::string> sha256_file(const std::string& path) {
  FL_ASSIGN_OR_RETURN(Hashed h, hash_copy(path, ""));
  return h.sha256;
}

Result<std::string> copy_file_sha256(const std::string& src, const std::string& dst) {
  bool created = false;
  auto h = hash_copy(src, dst, /*exclusive=*/true, &created);
  if (!h.ok()) {
    if (created) ::unlink(dst.c_str());  // a partial copy
    return h.error();
  }
  return h->sha256;
}

bool valid_image_version(const std::string& v) {
  if (v.empty() || v.size() > 64 || v == "." || v == "..") return false;
  return std::all_of(v.begin(), v.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '_' || c == '-';
  });
}

Result<HostImageStore> HostImageStore::open(const std::string& root_arg) {
  if (root_arg.empty()) return make_error(Condition::invalid_argument, "image store root is empty");
  std::error_code ec;
  const std::string root = fs::absolute(root_arg, ec).lexically_normal().string();
  if (ec) return make_error(Condition::invalid_argument, "bad image store root '" + root_arg + "'");
  fs::create_directories(root + "/versions", ec);
  if (ec || !fs::is_directory(root + "/versions")) {
    return make_error(Condition::invalid_argument,
                      "cannot create image store at " + root + ": " + ec.message());
  }
  // Crash leftovers: a half-copied stage, a temp symlink that was never renamed.
  fs::remove_all(root + "/.staging", ec);
  fs::create_directories(root + "/.staging", ec);
  if (ec)
    return make_error(Condition::transient, "cannot create " + root + "/.staging: " + ec.message());
  for (const char* name : {"current", "previous"}) {
    const std::string link = root + "/" + name;
    ::unlink((root + "/." + name + ".tmp").c_str());
    struct stat st {};
    if (::lstat(link.c_str(), &st) != 0) {
      if (errno == ENOENT) continue;
      return io_error("cannot stat", link, errno);
    }
    auto v = S_ISLNK(st.st_mode) ? link_version(link) : std::nullopt;
    if (!v)
      return make_error(Condition::invalid_state, link + " is not a symlink to versions/<version>");
    auto m = read_manifest(root, *v);
    if (!m.ok())
      return make_error(Condition::invalid_state, link + " -> " + *v + ": " + m.error().message);
  }
  return HostImageStore(root);
}

Result<HostImage> HostImageStore::stage(const std::string& version, const std::string& source_file,
                                        const std::string& expected_sha256) {
  if (!valid_image_version(version)) return bad_name(version);
  const std::string expected = lower(expected_sha256);
  if (!is_sha256_hex(expected)) {
    return make_error(Condition::invalid_argument,
                      "expected sha256 '" + expected_sha256 + "' is not 64 hex digits");
  }
  const std::string dir = version_dir(root_, version);
  auto mismatch = [&](const std::string& actual) {
    return make_error(Condition::invalid_argument,
                      "host image " + version + ": checksum mismatch for " + source_file +
                          " (expected " + expected + ", actual " + actual + ")");
  };
  if (fs::exists(dir)) {
    FL_ASSIGN_OR_RETURN(HostImage have, read_manifest(root_, version));
    if (have.sha256 != expected) {
      return make_error(Condition::already_exists,
                        "host image " + version + " is already staged with sha256 " + have.sha256 +
                            " (asked for " + expected + ")");
    }
    if (auto ok = verify(version); ok.ok()) return ok;
    // Same version, same checksum, damaged copy: replace the image file atomically.
    const std::string tmp = dir + "/.image.tmp";
    auto h = hash_copy(source_file, tmp);
    if (!h.ok() || h->sha256 != expected) {
      ::unlink(tmp.c_str());
      return h.ok() ? mismatch(h->sha256) : h.error();
    }
    if (::rename(tmp.c_str(), have.path.c_str()) != 0)
      return io_error("cannot replace", have.path, errno);
    FL_RETURN_IF_ERROR(fsync_dir(dir));
    logger("agent")->warn("host image {}: repaired a corrupt staged copy from {}", version,
                          source_file);
    return verify(version);
  }

  const std::string work = root_ + "/.staging/" + version;
  std::error_code ec;
  fs::remove_all(work, ec);
  if (!fs::create_directory(work, ec))
    return make_error(Condition::transient, "cannot create " + work + ": " + ec.message());
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      if (!path.empty()) {
        std::error_code e;
        fs::remove_all(path, e);
      }
    }
  } cleanup{work};

  FL_ASSIGN_OR_RETURN(Hashed h, hash_copy(source_file, work + "/image"));
  if (h.sha256 != expected) return mismatch(h.sha256);
  json::object m{{"version", version},
                 {"sha256", h.sha256},
                 {"size", h.size},
                 {"file", "image"},
                 {"staged_at", utc_now()}};
  FL_RETURN_IF_ERROR(write_file_synced(work + "/manifest.json", json::serialize(m) + "\n"));
  FL_RETURN_IF_ERROR(fsync_dir(work));
  if (::rename(work.c_str(), dir.c_str()) != 0) return io_error("cannot publish", dir, errno);
  cleanup.path.clear();
  FL_RETURN_IF_ERROR(fsync_dir(root_ + "/versions"));
  logger("agent")->info("host image {} staged ({} bytes, sha256 {})", version, h.size, h.sha256);
  return HostImage{version, h.sha256, h.size, dir + "/image"};
}

Result<HostImage> HostImageStore::verify(const std::string& version) const {
  if (!valid_image_version(version)) return bad_name(version);
  FL_ASSIGN_OR_RETURN(HostImage m, read_manifest(root_, version));
  auto h = hash_copy(m.path, "");
  if (!h.ok())
    return make_error(Condition::invalid_state,
                      "host image " + version + " is unusable: " + h.error().message);
  if (h->size != m.size) {
    return make_error(Condition::invalid_state, "host image " + version + " is corrupt: size " +
                                                    std::to_string(h->size) + ", manifest says " +
                                                    std::to_string(m.size));
  }
  if (h->sha256 != m.sha256) {
    return make_error(Condition::invalid_state, "host image " + version + " is corrupt: sha256 " +
                                                    h->sha256 + ", manifest says " + m.sha256);
  }
  return m;
}

Result<HostImage> HostImageStore::activate(const std::string& version) {
  FL_ASSIGN_OR_RETURN(HostImage img, verify(version));
  auto cur = current();
  if (cur && cur->version == version) return img;
  if (cur) FL_RETURN_IF_ERROR(point_link(root_, "previous", cur->version));
  FL_RETURN_IF_ERROR(point_link(root_, "current", version));
  logger("agent")->info("host image {} is now current (previous: {})", version,
                        cur ? cur->version : "none");
  return img;
}

Result<HostImage> HostImageStore::rollback() {
  auto prev = previous();
  if (!prev) return make_error(Condition::not_found, "no previous host image to roll back to");
  FL_ASSIGN_OR_RETURN(HostImage img, verify(prev->version));
  auto cur = current();
  FL_RETURN_IF_ERROR(point_link(root_, "current", prev->version));
  if (cur && cur->version != prev->version) {
    FL_RETURN_IF_ERROR(point_link(root_, "previous", cur->version));
  } else {
    ::unlink((root_ + "/previous").c_str());
    FL_RETURN_IF_ERROR(fsync_dir(root_));
  }
  logger("agent")->info("host image rolled back to {} (from {})", img.version,
                        cur ? cur->version : "none");
  return img;
}

std::optional<HostImage> HostImageStore::link_target(const char* name) const {
  auto v = link_version(root_ + "/" + name);
  if (!v) return std::nullopt;
  auto m = read_manifest(root_, *v);
  if (!m.ok()) return std::nullopt;
  return std::move(m).value();
}

std::optional<HostImage> HostImageStore::current() const { return link_target("current"); }
std::optional<HostImage> HostImageStore::previous() const { return link_target("previous"); }

Result<std::vector<HostImage>> HostImageStore::list() const {
  std::vector<HostImage> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_ + "/versions", ec)) {
    if (!e.is_directory() || !valid_image_version(e.path().filename().string())) continue;
    FL_ASSIGN_OR_RETURN(HostImage m, read_manifest(root_, e.path().filename().string()));
    out.push_back(std::move(m));
  }
  if (ec)
    return make_error(Condition::transient, "cannot list " + root_ + "/versions: " + ec.message());
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.version < b.version; });
  return out;
}

Result<std::string> write_synthetic_host_image(const std::string& path,
                                               const std::string& version) {
  std::string data = "fabriclab host image " + version + "\n";
  uint64_t x = 1469598103934665603ULL;  // FNV-1a of the version seeds a xorshift: stable bytes
  for (unsigned char c : version) x = (x ^ c) * 1099511628211ULL;
  for (int i = 0; i < 4096; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    data += static_cast<char>(x & 0xff);
  }
  FL_RETURN_IF_ERROR(write_file_synced(path, data));
  return sha256_file(path);
}

json::object to_json(const HostImage& i) {
  return {{"version", i.version}, {"sha256", i.sha256}, {"size", i.size}, {"path", i.path}};
}

}  // namespace fabriclab::agent
