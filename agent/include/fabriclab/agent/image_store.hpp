#pragma once
// The host agent's image stores.
//
// HostImageStore keeps the versioned "host OS images" of the emulated Hyper-V host; a host-os
// update stages a new version, verifies it, and activates it (the seeds' host OS image swap).
// GuestImageStore reads the guest OS versions: the testbed's built-in guests (kernel + initramfs,
// build/images/manifest.json) and OS disk images (the Debian builder's output, the user's image
// library), from one or more image directories.
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

// Copies `src` to `dst` (created, mode 0644; an existing dst -> already_exists), hashing the bytes
// as they are copied, so the checksum is the copy's; fsynced. Runs of zero bytes become holes (a
// sparse raw disk stays sparse). Returns the lower-case hex SHA-256. Errors name the file; a
// failed copy is removed.
Result<std::string> copy_file_sha256(const std::string& src, const std::string& dst);

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
  std::string version;            // "v1", "debian-v1", ...
  std::string boot = "kernel";    // "kernel" (direct kernel boot) | "disk" (its own bootloader)
  std::string firmware = "bios";  // "bios" (SeaBIOS) | "efi" (UEFI: OVMF, a per-instance NVRAM)
  std::string kernel;             // absolute paths (relative ones in a manifest are resolved
  std::string initrd;             // against its directory); "" when boot: disk gives none
  std::string sha256_kernel;      // lower-case hex
  std::string sha256_initrd;
  std::string disk;         // OS disk, absolute; "" = the built-in guest (initramfs only)
  std::string disk_format;  // "qcow2" | "raw" (from qemu-img info, not trusted from the file)
  uint64_t disk_virtual_size = 0;
  uint64_t disk_bytes = 0;  // the file's size as recorded (0: not recorded)
  std::string sha256_disk;
  std::string cmdline;       // the image's kernel command line ("" for the built-in guest)
  std::string manifest_dir;  // absolute: the directory whose manifest.json defines the image
  bool builtin() const { return disk.empty(); }
};

// Kernel command lines: at most this many bytes, printable ASCII (no newline).
inline constexpr size_t kMaxCmdline = 1024;
// "" if `cmdline` is acceptable, else why not.
std::string cmdline_problem(const std::string& cmdline);

// The guest OS versions an agent may boot, read from one or more image directories. Two manifest
// layouts are accepted, entry by entry (an entry with "version" is the first, with "name" the
// second):
//  - the built-in guests (testbed/build-images.sh, build/images/manifest.json):
//      {"images":[{"version","kernel","initrd","sha256_kernel","sha256_initrd"}]}
//  - OS disk images (testbed/build-debian-image.sh, and the `fabriclab image` library):
//      {"images":[{"name","boot":"kernel"|"disk","firmware":"bios"|"efi"?,"cmdline",
//                  "disk":{"path","format":"qcow2"|"raw","sha256","virtual_size"?,"bytes"?},
//                  "kernel":{"path","sha256"}?,"initrd":{"path","sha256"}?}]}
//    boot: kernel needs kernel, initrd and a cmdline; boot: disk needs neither. firmware (default
//    bios) is what the VM starts: an image whose bootloader is an EFI program needs "efi".
// open() checks every OS disk with hypervisor::check_os_disk (format, no backing chain, qcow2
// integrity, looks like a disk) and compares the recorded format and virtual size with what
// qemu-img finds, but hashes nothing (a disk is large): verify() does, before an image is used.
class GuestImageStore {
 public:
  // Reads <manifest_dir>/manifest.json. Missing manifest or image file -> not_found naming it;
  // invalid JSON, a missing or ill-typed field, a bad checksum, a duplicate version ->
  // invalid_argument naming the field ("images[1].sha256_initrd is missing"); an image whose
  // parts do not fit its boot kind, or whose disk is refused or differs from the manifest ->
  // invalid_argument naming the image ("image debian-v1: boot: kernel needs a kernel").
  static Result<GuestImageStore> open(const std::string& manifest_dir);

  // The union of several directories, in order. No directory -> invalid_argument; a version
  // defined in two of them -> invalid_argument naming the version and both directories.
  static Result<GuestImageStore> open(const std::vector<std::string>& manifest_dirs);

  // not_found naming the version and listing the known ones.
  Result<GuestImageInfo> get(const std::string& version) const;

  // Re-hashes kernel, initrd and disk (those the image has); a mismatch -> invalid_argument
  // ("guest image v2: initrd checksum mismatch (expected ..., actual ...)"), a missing file ->
  // not_found naming it.
  Result<GuestImageInfo> verify(const std::string& version) const;

  // In manifest order (directories in the order given).
  std::vector<GuestImageInfo> list() const { return images_; }

 private:
  explicit GuestImageStore(std::vector<GuestImageInfo> images) : images_(std::move(images)) {}
  std::vector<GuestImageInfo> images_;
};

boost::json::object to_json(const HostImage& image);
boost::json::object to_json(const GuestImageInfo& image);

}  // namespace fabriclab::agent
