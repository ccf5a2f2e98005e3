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

}  // namespace fabriclab::testbed
