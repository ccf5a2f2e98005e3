#include "fabriclab/testbed/images.hpp"

#include <boost/json.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

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

Result<std::vector<GuestImage>> load_images(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  std::ifstream in(path);
  if (!in) {
    return make_error(Condition::not_found,
                      "no guest images at " + path + " (build them: cmake --build build --target guest-images)");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  boost::system::error_code ec;
  json::value v = json::parse(ss.str(), ec);
  if (ec || !v.is_object()) return make_error(Condition::invalid_argument, path + ": not a JSON object");
  auto* images = v.as_object().if_contains("images");
  if (!images || !images->is_array()) return make_error(Condition::invalid_argument, path + ": images must be an array");
  std::vector<GuestImage> out;
  for (const auto& item : images->as_array()) {
    if (!item.is_object()) return make_error(Condition::invalid_argument, path + ": images[] must be objects");
    const auto& o = item.as_object();
    auto str = [&](const char* k) -> std::string {
      auto* f = o.if_contains(k);
      return (f && f->is_string()) ? std::string(f->as_string()) : std::string();
    };
    GuestImage g{str("version"), str("kernel"), str("initrd"), str("sha256_kernel"), str("sha256_initrd")};
    if (g.version.empty() || g.kernel.empty() || g.initrd.empty()) {
      return make_error(Condition::invalid_argument, path + ": an image lacks version, kernel or initrd");
    }
    for (const auto& f : {g.kernel, g.initrd}) {
      if (!std::filesystem::exists(f)) return make_error(Condition::not_found, path + ": missing file " + f);
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
  return make_error(Condition::not_found, "guest image '" + version + "' not in " + dir + "/manifest.json");
}

}  // namespace fabriclab::testbed
