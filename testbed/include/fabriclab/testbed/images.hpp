#pragma once
// The guest images the testbed builds (testbed/build-images.sh): a Debian kernel and one initramfs
// per guest image version, described by OUT_DIR/manifest.json.

#include <string>
#include <vector>

#include "fabriclab/common/result.hpp"

namespace fabriclab::testbed {

struct GuestImage {
  std::string version;  // "v1", "v2", "v3-broken"
  std::string kernel;
  std::string initrd;
  std::string sha256_kernel;
  std::string sha256_initrd;
};

// Reads and checks DIR/manifest.json (every image names existing files).
Result<std::vector<GuestImage>> load_images(const std::string& dir);
Result<GuestImage> find_image(const std::string& dir, const std::string& version);

// Where the build put the images: $FABRICLAB_IMAGES_DIR, else the build-time default.
std::string default_images_dir();

// The Debian guest images (testbed/build-debian-image.sh): $FABRICLAB_DEBIAN_IMAGES, else
// <build>/debian-images, else /var/cache/fabriclab/debian-images/<stamp> (the stamp of this
// source tree when cmake last ran); the first of these holding a finished build (manifest.json
// and debian-v1/disk.qcow2), "" when none does. ./fabriclab.sh test builds them and exports
// FABRICLAB_DEBIAN_IMAGES.
std::string debian_images_dir();
// What a test prints when debian_images_dir() is "": where it looked and how to build them.
std::string debian_images_missing_message();

}  // namespace fabriclab::testbed
