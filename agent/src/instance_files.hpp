#pragma once
// Private: the files an instance owns in the agent's state directory.
//
//   <vm_dir>/<name>.data.raw              its data disk (kept across every update; deleted with it)
//   <vm_dir>/<name>.console.log           its serial console
//   <vm_dir>/<name>.d/boot-<image>/       its own copies of the image's kernel and initrd
//   <vm_dir>/<name>.d/os-<image>-<gen>.qcow2   its OS disk: a qcow2 overlay on the (read-only)
//                                         image; a reimage makes a new generation
//   <vm_dir>/<name>.d/efivars.fd          its UEFI variable store (images with firmware: efi): a
//                                         copy of the firmware's VARS template made when it is
//                                         first defined, kept across updates and reimages
//
// Why copies of kernel and initrd: libvirt's DAC driver remembers a file's owner in
// trusted.libvirt.security.* xattrs while a domain uses it, and a domain destroyed without its
// labels restored (an embedded driver whose process was killed) leaves the reference behind.
// A shared image file then refuses every other domain ("Setting different DAC user or group on
// ... which is already in use"). A file only one domain ever uses cannot be shared that way.
// The OS disk's backing image is never remembered by libvirt (only the top of a chain is), so an
// overlay is enough there.

#include <cstdint>
#include <set>
#include <string>

#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/hypervisor/domain_spec.hpp"

namespace fabriclab::agent {

// The data disk of a built-in guest (its counter needs a sector) and of a guest that brings its
// own OS disk (it makes a file system on it: ext4 needs a few MiB, 64 leaves room for data).
inline constexpr uint64_t kBuiltinDataDiskBytes = 1ull << 20;
inline constexpr uint64_t kDefaultDataDiskBytes = 64ull << 20;

std::string instance_files_dir(const std::string& vm_dir, const std::string& name);

// Copies `image`'s kernel and initrd into <dir>/boot-<version>/ (again when a copy's size
// differs from the image's) and returns their paths; cmdline is left empty.
Result<hypervisor::BootImage> private_boot_files(const std::string& dir,
                                                 const GuestImageInfo& image);

// Creates <dir>/os-<version>-<gen>.qcow2 backed by image.disk: already_exists if it is there,
// unless `replace_stale` (a reimage redone after a crash: no guest ever ran on that overlay).
Result<std::string> create_os_overlay(const std::string& dir, const GuestImageInfo& image, int gen,
                                      bool replace_stale = false);

// The firmware an instance of `image` starts: BIOS (empty) unless image.firmware is "efi"; then
// `code` and `vars_template` (OVMF) must be regular files, else not_found naming the missing path
// and the image. check_firmware only checks (before anything of an instance is made);
// instance_firmware also copies the template to <dir>/efivars.fd unless that file is there (the
// guest's own variables are never overwritten).
Status check_firmware(const GuestImageInfo& image, const std::string& code,
                      const std::string& vars_template);
Result<hypervisor::Firmware> instance_firmware(const std::string& dir, const GuestImageInfo& image,
                                               const std::string& code,
                                               const std::string& vars_template);

// Creates a sparse data disk of `bytes`, or grows a smaller one (never shrinks, never rewrites).
Status ensure_data_disk(const std::string& path, uint64_t bytes);

// What a new instance (or a reimage) on `image` may take from the disk: its data disk (when it
// does not exist yet), its kernel and initrd copies, and the OS overlay at its largest (the
// image's virtual size).
uint64_t bytes_needed(const GuestImageInfo& image, uint64_t data_disk_bytes, bool data_disk_exists);

// Refuses (invalid_state) when taking `need` bytes from the file system
// of `dir` would leave less than `reserve` free; the message gives free, need and reserve in MiB.
Status check_disk_reserve(const std::string& dir, uint64_t need, uint64_t reserve);

// Removes every boot-* directory and os-*.qcow2 in `dir` whose path is not in `keep`.
void remove_unused_files(const std::string& dir, const std::set<std::string>& keep);

}  // namespace fabriclab::agent
