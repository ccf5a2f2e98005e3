// fabriclab image add | list | remove: guest OS disk images in the user's image library (checked,
// copied read-only), which every local rack's agents are given.
#include <fmt/format.h>

#include <boost/json.hpp>
#include <filesystem>
#include <iostream>

#include "commands.hpp"

namespace fabriclab::cli {

namespace {

std::string human_bytes(uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.1f} GiB", static_cast<double>(b) / (1ull << 30));
  if (b >= (1ull << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1ull << 20));
  return fmt::format("{} bytes", b);
}

Result<std::string> library_dir(const ImageArgs& a) {
  std::string dir = a.library.empty() ? rack::default_image_library() : a.library;
  if (dir.empty()) {
    return make_error(
        Condition::invalid_argument,
        "no image library: give --library DIR or set FABRICLAB_IMAGE_LIBRARY (HOME is not set)");
  }
  dir = std::filesystem::absolute(dir).lexically_normal().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

}  // namespace

int run_image_add(const ImageArgs& a) {
  auto dir = library_dir(a);
  if (!dir.ok()) return fail(kBadInput, dir.error().message);
  std::cout << "image " << a.add.name << ": checking " << a.add.disk << ", then copying it into "
            << *dir << "...\n"
            << std::flush;
  auto g = rack::add_image(*dir, a.add);
  if (!g.ok()) return fail(exit_for(g.error()), "image add: " + g.error().message);
  std::cout << "image " << g->version << " added to " << *dir << " (read-only)\n"
            << "  boot    " << g->boot
            << (g->cmdline.empty() ? "" : " (cmdline: " + g->cmdline + ")") << ", firmware "
            << g->firmware << "\n"
            << "  disk    " << g->disk << "\n"
            << "          format " << g->disk_format << ", virtual size "
            << human_bytes(g->disk_virtual_size) << " (" << g->disk_virtual_size << " bytes), file "
            << human_bytes(g->disk_bytes) << "\n"
            << "          sha256 " << g->sha256_disk << "\n";
  if (g->boot == "kernel") {
    std::cout << "  kernel  " << g->kernel << "\n          sha256 " << g->sha256_kernel << "\n"
              << "  initrd  " << g->initrd << "\n          sha256 " << g->sha256_initrd << "\n";
  }
  std::cout << "a drill spec's service uses it with image: " << g->version
            << " (fabriclab drill and lab up offer the library to every agent)\n";
  return 0;
}

int run_image_list(const ImageArgs& a) {
  auto dir = library_dir(a);
  if (!dir.ok()) return fail(kBadInput, dir.error().message);
  auto images = rack::list_images(*dir);
  if (!images.ok()) {
    return fail(exit_for(images.error()), "image list: " + images.error().message +
                                              "\n(fabriclab image remove NAME --library " + *dir +
                                              " removes an image)");
  }
  if (a.json_out) {
    json::array arr;
    for (const auto& g : *images) arr.push_back(agent::to_json(g));
    std::cout << json::serialize(json::object{{"library", *dir}, {"images", std::move(arr)}})
              << "\n";
    return 0;
  }
  std::cout << "image library " << *dir << "\n";
  if (images->empty()) {
    std::cout << "no images (fabriclab image add NAME --disk FILE ... adds one)\n";
  } else {
    std::cout << fmt::format("{:<20} {:<7} {:<6} {:>10} {:>10}  {}\n", "NAME", "BOOT", "FORMAT",
                             "VIRTUAL", "FILE", "DISK SHA256");
    for (const auto& g : *images) {
      std::cout << fmt::format("{:<20} {:<7} {:<6} {:>10} {:>10}  {}\n", g.version, g.boot,
                               g.disk_format, human_bytes(g.disk_virtual_size),
                               human_bytes(g.disk_bytes), g.sha256_disk);
    }
  }
  const std::string builtin =
      std::filesystem::path(rack::images_dir("")).lexically_normal().string();
  if (auto b = agent::GuestImageStore::open(builtin); b.ok()) {
    std::string names;
    for (const auto& g : b->list()) names += (names.empty() ? "" : ", ") + g.version;
    std::cout << "built-in guests (" << builtin << "): " << names << "\n";
  }
  return 0;
}

int run_image_remove(const ImageArgs& a) {
  auto dir = library_dir(a);
  if (!dir.ok()) return fail(kBadInput, dir.error().message);
  if (auto st = rack::remove_image(*dir, a.add.name); !st.ok())
    return fail(exit_for(st.error()), "image remove: " + st.error().message);
  std::cout << "image " << a.add.name << " removed from " << *dir << "\n";
  return 0;
}

}  // namespace fabriclab::cli
