#pragma once
// The host agent's image stores.
//
// HostImageStore keeps the versioned "host OS images" of the emulated Hyper-V host; a host-os
// update stages a new version, verifies it, and activates it (the seeds' host OS image swap).
// GuestImageStore reads the guest OS versions (kernel + initramfs) that the testbed builds, as
// described by build/images/manifest.json.
//
// Neither store is thread safe: the agent serialises calls on one host (its host strand). The
// host store assumes a single writer process per root.

#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fabriclab/common/result.hpp"

namespace fabriclab::agent {

// Lower-case hex SHA-256 of a file, read in 64 KiB chunks. not_found if the file does not exist,
// transient for other I/O errors; messages name the file.
Result<std::string> sha256_file(const std::string& path);

// True for a valid image version name: [A-Za-z0-9._-]{1,64}, except "." and "..".
bool valid_image_version(const std::string& version);

struct HostImage {
  std::string version;
  std::string sha256;  // lower-case hex
  uint64_t size = 0;   // bytes
  std::string path;    // absolute path of the staged image file
};

// Layout under root:
//   <root>/versions/<version>/image          the image bytes
//   <root>/versions/<version>/manifest.json  {"version","sha256","size","file":"image","staged_at"}
//   <root>/current, <root>/previous          symlinks to versions/<version> (relative)
//   <root>/.staging/                         work area; anything here is a crash leftover
class HostImageStore {
 public:
  // Creates root (and versions/) if needed, removes crash leftovers, and checks that current and
  // previous, when present, are symlinks to staged versions (invalid_state otherwise).
  static Result<HostImageStore> open(const std::string& root);

  // Copies `source_file` in as `version`, hashing while copying, and keeps it only if the sha256
  // equals `expected_sha256` (64 hex digits, any case). Errors: a bad version name or checksum ->
  // invalid_argument; missing source -> not_found; checksum mismatch -> invalid_argument naming
  // expected and actual (nothing is left behind); `version` already staged with a different
  // checksum -> already_exists. Restaging with the same checksum is idempotent and returns the
  // staged image without reading the source, unless the staged copy fails verification, in which
  // case the source is copied in again (a repair).
  Result<HostImage> stage(const std::string& version, const std::string& source_file,
                          const std::string& expected_sha256);

  // Re-hashes the staged file and compares size and checksum with its manifest. Callers run this
  // BEFORE touching any guest. Unknown version -> not_found; a missing, truncated or modified
  // image, or an unreadable manifest -> invalid_state naming the version and what is wrong.
  Result<HostImage> verify(const std::string& version) const;

  // Verifies `version`, then points previous at the old current and current at `version`, each
  // switch atomic. Activating the current version is a no-op; on any error current is unchanged.
  Result<HostImage> activate(const std::string& version);

  // Verifies previous, then swaps: current -> old previous, previous -> old current.
  // not_found if there is no previous. Returns the new current.
  Result<HostImage> rollback();

  // The images current / previous point at; nullopt if the link is absent or broken.
  std::optional<HostImage> current() const;
  std::optional<HostImage> previous() const;

  // Every staged version (from the manifests, not re-hashed), sorted by version name.
  Result<std::vector<HostImage>> list() const;

  const std::string& root() const { return root_; }

 private:
  explicit HostImageStore(std::string root) : root_(std::move(root)) {}
  std::optional<HostImage> link_target(const char* name) const;

  std::string root_;  // absolute
};

// Writes a small synthetic host image ("fabriclab host image <version>\n" plus a few KiB of bytes
// derived from the version, so versions differ) and returns its sha256.
Result<std::string> write_synthetic_host_image(const std::string& path, const std::string& version);

struct GuestImageInfo {
  std::string version;  // "v1", "v2", "v3-broken"
  std::string kernel;   // absolute paths (relative ones in the manifest are resolved against it)
  std::string initrd;
  std::string sha256_kernel;  // lower-case hex
  std::string sha256_initrd;
};

class GuestImageStore {
 public:
  // Reads <manifest_dir>/manifest.json. Missing manifest or image file -> not_found naming it;
  // invalid JSON, a missing or ill-typed field, a bad checksum, a duplicate version ->
  // invalid_argument naming the field ("images[1].sha256_initrd is missing").
  static Result<GuestImageStore> open(const std::string& manifest_dir);

  // not_found naming the version and listing the known ones.
  Result<GuestImageInfo> get(const std::string& version) const;

  // Re-hashes kernel and initrd; a mismatch -> invalid_argument
  // ("guest image v2: initrd checksum mismatch (expected ..., actual ...)").
  Result<GuestImageInfo> verify(const std::string& version) const;

  // In manifest order.
  std::vector<GuestImageInfo> list() const { return images_; }

 private:
  explicit GuestImageStore(std::vector<GuestImageInfo> images) : images_(std::move(images)) {}
  std::vector<GuestImageInfo> images_;
};

boost::json::object to_json(const HostImage& image);
boost::json::object to_json(const GuestImageInfo& image);

}  // namespace fabriclab::agent
