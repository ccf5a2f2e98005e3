#pragma once
// Guest OS disk images on the host: what a file must be to be booted as a guest's OS disk, and
// the per-instance qcow2 overlay an instance actually runs on (its image stays untouched).
//
// Everything here runs Debian's `qemu-img` (qemu-utils) and blocks the calling thread for as long
// as it takes (info: milliseconds; check: up to seconds for a large image); run it off any
// io_context strand. No libvirt. Errors name the file and, for a refused image, the reason, in
// words a user can act on.

#include <cstdint>
#include <string>

#include "fabriclab/common/result.hpp"

namespace fabriclab::hypervisor {

struct DiskImageInfo {
  std::string format;         // as qemu-img detects it ("qcow2", "raw", ...), not by name
  uint64_t virtual_size = 0;  // bytes the guest sees
  uint64_t actual_size = 0;   // bytes allocated on the host
  std::string backing_file;   // "" when the image has no backing file
};

// `qemu-img info --output=json -U PATH` (-U: readable while a VM holds the image open).
// Errors: no such file -> not_found; qemu-img cannot open it (a broken header) -> invalid_argument
// with qemu-img's reason; qemu-img missing -> not_found saying so; it hangs -> timeout.
Result<DiskImageInfo> qemu_img_info(const std::string& path);

// Limits on an OS disk's virtual size.
inline constexpr uint64_t kMinOsDiskBytes = 1ull << 20;  // 1 MiB
inline constexpr uint64_t kMaxOsDiskBytes = 1ull << 40;  // 1 TiB

// What makes a file acceptable as a guest OS disk, checked before anything boots it or copies it:
//  - a regular file (symlinks followed);
//  - format qcow2 or raw;
//  - no backing file ("a backing chain is not accepted: X is backed by Y"), no external data file,
//    not encrypted: the image must be complete in itself;
//  - a qcow2 passes `qemu-img check` (leaked clusters are harmless and accepted; corruption is
//    refused and the error says the image is corrupt);
//  - the first 128 KiB the guest would see hold an MBR or GPT partition table or an ext2/3/4, xfs
//    or btrfs superblock (to qemu-img any file is "raw", a text file included: "not a disk image:
//    no partition table or file system found");
//  - virtual size within [kMinOsDiskBytes, kMaxOsDiskBytes].
// Every refusal is invalid_argument naming the path (not_found when it does not exist).
Result<DiskImageInfo> check_os_disk(const std::string& path);

// `qemu-img create -f qcow2 -F BACKING_FORMAT -b ABS_BACKING OVERLAY`: a new, empty qcow2 whose
// reads fall through to `backing` (recorded by absolute path) and whose writes stay in it; same
// virtual size as the backing image. backing_format must be "qcow2" or "raw" (qemu-img then never
// probes the backing file's format). Errors: an existing overlay -> already_exists (it is never
// overwritten: the name is claimed with O_EXCL first); backing or the overlay's parent directory
// missing -> not_found; a bad format -> invalid_argument. On failure no overlay is left behind.
Status create_overlay(const std::string& backing, const std::string& backing_format,
                      const std::string& overlay);

}  // namespace fabriclab::hypervisor
