#include "fabriclab/testbed/images.hpp"

#include <boost/json.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fabriclab/common/json_get.hpp"

namespace fabriclab::testbed {
namespace json = boost::json;

std::string default_images_dir() {
  if (const char* env = std::getenv("FABRICLAB_IMAGES_DIR"); env && *env) return env;
#ifdef FABRICLAB_DEFAULT_IMAGES_DIR
  return FABRICLAB_DEFAULT_IMAGES_DIR;
#else
  return "build/images";
#endif
}

namespace {

// The places debian_images_dir() looks, in order; empty entries are skipped.
std::vector<std::string> debian_images_candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("FABRICLAB_DEBIAN_IMAGES"); env && *env) out.emplace_back(env);
#ifdef FABRICLAB_DEFAULT_DEBIAN_IMAGES_DIR
  out.emplace_back(FABRICLAB_DEFAULT_DEBIAN_IMAGES_DIR);
#else
  out.emplace_back("build/debian-images");
#endif
#ifdef FABRICLAB_DEBIAN_IMAGES_CACHE_DIR
  out.emplace_back(FABRICLAB_DEBIAN_IMAGES_CACHE_DIR);
#endif
  return out;
}

// A finished build: the builder writes manifest.json after every version's files, so a
// directory still being built (the cache of a running build) does not count.
bool has_debian_images(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::is_regular_file(dir + "/manifest.json", ec) &&
         std::filesystem::is_regular_file(dir + "/debian-v1/disk.qcow2", ec);
}

}  // namespace

std::string debian_images_dir() {
  for (const auto& dir : debian_images_candidates()) {
    if (!dir.empty() && has_debian_images(dir)) return dir;
  }
  return "";
}

std::string debian_images_missing_message() {
  std::string looked;
  for (const auto& dir : debian_images_candidates()) looked += (looked.empty() ? "" : ", ") + dir;
  return "no Debian guest images (manifest.json and debian-v1/disk.qcow2) in any of: " + looked +
         ". Build them with ./fabriclab.sh test (it runs testbed/build-debian-image.sh "
         "/var/cache/fabriclab/debian-images/$(testbed/build-debian-image.sh --stamp) and exports "
         "FABRICLAB_DEBIAN_IMAGES), or point FABRICLAB_DEBIAN_IMAGES at a built directory";
}

Result<std::vector<GuestImage>> load_images(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  std::ifstream in(path);
  if (!in) {
    return make_error(
        Condition::not_found,
        "no guest images at " + path + " (build them: cmake --build build --target guest-images)");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  boost::system::error_code ec;
  json::value v = json::parse(ss.str(), ec);
  if (ec || !v.is_object())
    return make_error(Condition::invalid_argument, path + ": not a JSON object");
  auto* images = v.as_object().if_contains("images");
  if (!images || !images->is_array())
    return make_error(Condition::invalid_argument, path + ": images must be an array");
  std::vector<GuestImage> out;
  for (const auto& item : images->as_array()) {
    if (!item.is_object())
      return make_error(Condition::invalid_argument, path + ": images[] must be objects");
    const auto& o = item.as_object();
    using json_get::str;
    GuestImage g{str(o, "version"), str(o, "kernel"), str(o, "initrd"), str(o, "sha256_kernel"),
                 str(o, "sha256_initrd")};
    if (g.version.empty() || g.kernel.empty() || g.initrd.empty()) {
      return make_error(Condition::invalid_argument,
                        path + ": an image lacks version, kernel or initrd");
    }
    for (const auto& f : {g.kernel, g.initrd}) {
      if (!std::filesystem::exists(f))
        return make_error(Condition::not_found, path + ": missing file " + f);
    }
    out.push_back(std::move(g));
  }
  return out;
}

Result<GuestImage> find_image(const std::string& dir, const std::string& version) {
  FL_ASSIGN_OR_RETURN(auto images, load_images(dir));
  for (auto& g : images) {
    if (g.version == version) return g;
  }
  return make_error(Condition::not_found,
                    "guest image '" + version + "' not in " + dir + "/manifest.json");
}

}  // namespace fabriclab::testbed
