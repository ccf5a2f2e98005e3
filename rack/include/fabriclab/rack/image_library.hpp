#pragma once
// The user's guest image library, behind `fabriclab image add|list|remove`, and the set of image
// directories a rack's agents are given.
//
// A library is a directory in the layout of testbed/build-debian-image.sh's output, so the agent
// reads it with the same GuestImageStore code:
//   DIR/manifest.json   {"library":"fabriclab image","images":[{"name","boot","firmware","cmdline",
//                        "disk":{"path":"NAME/disk.qcow2","format","virtual_size","bytes","sha256"},
//                        "kernel":{"path","sha256"},"initrd":{"path","sha256"},"added_at","source"}]}
//   DIR/NAME/disk.qcow2 | disk.raw, vmlinuz, initrd.img   read-only (0444) copies
//   DIR/.lock           flock'ed by add and remove (one writer at a time, across processes)
// add checks everything it is given before it creates anything, copies into a hidden staging
// directory (hashing while copying), checks the copy again, and publishes it with rename(2), then
// the manifest (temporary file, fsync, rename). A refused or failed add leaves the library as it
// was; a crash leaves at most an unlisted directory, which the next add or remove clears.

#include <string>
#include <vector>

#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::rack {

// $FABRICLAB_IMAGE_LIBRARY, else $XDG_DATA_HOME/fabriclab/images, else
// $HOME/.local/share/fabriclab/images ("" if none of them is set).
std::string default_image_library();

// v1, v2, v3-broken: the built-in guests' names, which a library image may not take.
bool is_builtin_image_name(const std::string& name);

struct ImageAddRequest {
  std::string name;     // a valid image version name (agent::valid_image_version), not built-in
  std::string disk;     // the OS disk (qcow2 or raw; hypervisor::check_os_disk)
  std::string kernel;   // boot: kernel only: a Linux bzImage
  std::string initrd;   // boot: kernel only
  std::string cmdline;  // boot: kernel only: at most 1024 printable ASCII bytes, one line
  std::string boot;     // "kernel" | "disk"; "": kernel when a kernel, initrd or cmdline is given
  std::string
      firmware;  // "bios" | "efi" (UEFI, OVMF: a disk whose bootloader is an EFI program); "": bios
};

// Limits on the kernel and initrd files.
inline constexpr uint64_t kMaxBootFileBytes = 1ull << 30;

// Adds an image to `library` (created if needed) and returns it as the agent will read it.
// Errors, each before anything is created: a bad or built-in name, a bad boot kind, firmware or
// cmdline, a kernel/initrd/cmdline missing for boot: kernel or given for boot: disk ->
// invalid_argument naming it; a file that does not exist -> not_found naming it; a disk
// check_os_disk refuses -> invalid_argument with its reason; a kernel that is not a bzImage, or an
// empty or oversized kernel/initrd -> invalid_argument; the name already in the library ->
// already_exists (remove it first). A malformed library manifest -> invalid_state naming it (it is
// not overwritten).
Result<agent::GuestImageInfo> add_image(const std::string& library, const ImageAddRequest& request);

// The library's images as the agent reads them (every disk checked, nothing hashed). A library
// that does not exist yet, or has no manifest, is empty; any image the agent would refuse makes
// this an error naming the image (`image remove NAME` still works then).
Result<std::vector<agent::GuestImageInfo>> list_images(const std::string& library);

// Removes NAME from the manifest, then its files. Unknown name -> not_found listing the names.
Status remove_image(const std::string& library, const std::string& name);

// The --guest-images directories for a rack's agents: `builtin` (must have a manifest.json), each
// of `extra` (must have one too), then `library` when it has one; absolute, each directory once.
// They are opened together as the agents will (agent::GuestImageStore), so a version defined in two
// of them or a refused disk fails here, before any agent starts.
Result<std::vector<std::string>> guest_image_dirs(const std::string& builtin,
                                                  const std::vector<std::string>& extra,
                                                  const std::string& library);

}  // namespace fabriclab::rack
