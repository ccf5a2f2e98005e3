// The agent's guest image store (image_store.hpp): the manifests of the guest images it may boot.
//
// Guest manifests are read strictly (every field typed, every checksum 64 hex digits, every file
// present) because the agent boots what they say. An OS disk is additionally run through
// check_os_disk at open: a manifest that names a file which is not a usable disk (replaced, or
// damaged since it was built) fails the agent's start, not a drill half way. Hashing waits for
// verify(): the Debian disks are ~80 MB each and an agent start should not read them all.

#include <boost/json.hpp>
#include <filesystem>
#include <string_view>
#include <tuple>

#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/hypervisor/disk_image.hpp"
#include "image_store_internal.hpp"

namespace fabriclab::agent {
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

Error bad_field(const std::string& at, const std::string& key, const std::string& why) {
  return make_error(Condition::invalid_argument, at + "." + key + " " + why);
}

Result<std::string> string_field(const json::object& o, const std::string& at, const char* key,
                                 bool required = true) {
  auto* f = o.if_contains(key);
  if (!f) {
    if (!required) return std::string();
    return bad_field(at, key, "is missing");
  }
  if (!f->is_string() || f->as_string().empty())
    return bad_field(at, key, "must be a non-empty string");
  return std::string(f->as_string());
}

Result<std::string> sha_field(const json::object& o, const std::string& at, const char* key) {
  FL_ASSIGN_OR_RETURN(std::string v, string_field(o, at, key));
  if (!image_detail::is_sha256_hex(v)) return bad_field(at, key, "must be 64 hex digits");
  return image_detail::lower(v);
}

Result<uint64_t> size_field(const json::object& o, const std::string& at, const char* key) {
  auto* f = o.if_contains(key);
  if (!f) return uint64_t{0};
  if (f->is_uint64()) return f->as_uint64();
  if (f->is_int64() && f->as_int64() >= 0) return static_cast<uint64_t>(f->as_int64());
  return bad_field(at, key, "must be a non-negative integer");
}

// A relative path resolved against the manifest's directory; the file must exist.
Result<std::string> resolve_file(const std::string& dir, const std::string& at,
                                 const std::string& field, std::string file) {
  if (fs::path(file).is_relative()) file = (fs::path(dir) / file).lexically_normal().string();
  if (!fs::is_regular_file(file))
    return make_error(Condition::not_found, at + "." + field + ": no such file " + file);
  return file;
}

// {"path","sha256"} objects of the disk layout.
Status file_object(const json::object& entry, const std::string& dir, const std::string& at,
                   const char* key, std::string& path, std::string& sha) {
  auto* f = entry.if_contains(key);
  if (!f) return {};
  if (!f->is_object()) return bad_field(at, key, "must be an object");
  const std::string here = at + "." + key;
  FL_ASSIGN_OR_RETURN(std::string p, string_field(f->as_object(), here, "path"));
  FL_ASSIGN_OR_RETURN(sha, sha_field(f->as_object(), here, "sha256"));
  FL_ASSIGN_OR_RETURN(path, resolve_file(dir, here, "path", p));
  return {};
}

Result<GuestImageInfo> builtin_entry(const json::object& item, const std::string& dir,
                                     const std::string& at) {
  GuestImageInfo g;
  FL_ASSIGN_OR_RETURN(g.version, string_field(item, at, "version"));
  FL_ASSIGN_OR_RETURN(std::string kernel, string_field(item, at, "kernel"));
  FL_ASSIGN_OR_RETURN(std::string initrd, string_field(item, at, "initrd"));
  FL_ASSIGN_OR_RETURN(g.sha256_kernel, sha_field(item, at, "sha256_kernel"));
  FL_ASSIGN_OR_RETURN(g.sha256_initrd, sha_field(item, at, "sha256_initrd"));
  FL_ASSIGN_OR_RETURN(g.kernel, resolve_file(dir, at, "kernel", kernel));
  FL_ASSIGN_OR_RETURN(g.initrd, resolve_file(dir, at, "initrd", initrd));
  return g;
}

// The disk's own fields, then what qemu-img finds compared with them.
Status disk_object(const json::object& item, const std::string& dir, const std::string& at,
                   const std::string& image, GuestImageInfo& g) {
  auto* d = item.if_contains("disk");
  if (!d) return bad_field(at, "disk", "is missing");
  if (!d->is_object()) return bad_field(at, "disk", "must be an object");
  const auto& o = d->as_object();
  const std::string here = at + ".disk";
  FL_ASSIGN_OR_RETURN(std::string path, string_field(o, here, "path"));
  FL_ASSIGN_OR_RETURN(std::string format, string_field(o, here, "format"));
  if (format != "qcow2" && format != "raw")
    return bad_field(here, "format", "must be qcow2 or raw");
  FL_ASSIGN_OR_RETURN(g.sha256_disk, sha_field(o, here, "sha256"));
  FL_ASSIGN_OR_RETURN(uint64_t recorded_size, size_field(o, here, "virtual_size"));
  FL_ASSIGN_OR_RETURN(g.disk_bytes, size_field(o, here, "bytes"));
  FL_ASSIGN_OR_RETURN(g.disk, resolve_file(dir, here, "path", path));
  auto info = hypervisor::check_os_disk(g.disk);
  if (!info.ok())
    return make_error(info.condition(), "image " + image + ": " + info.error().message);
  if (info->format != format) {
    return make_error(Condition::invalid_argument, "image " + image + ": the manifest says " +
                                                       format + " but " + g.disk + " is " +
                                                       info->format);
  }
  if (recorded_size != 0 && recorded_size != info->virtual_size) {
    return make_error(Condition::invalid_argument,
                      "image " + image + ": the manifest says virtual size " +
                          std::to_string(recorded_size) + " but " + g.disk + " has " +
                          std::to_string(info->virtual_size));
  }
  g.disk_format = info->format;
  g.disk_virtual_size = info->virtual_size;
  return {};
}

Result<GuestImageInfo> disk_entry(const json::object& item, const std::string& dir,
                                  const std::string& at) {
  GuestImageInfo g;
  FL_ASSIGN_OR_RETURN(g.version, string_field(item, at, "name"));
  if (!valid_image_version(g.version))
    return bad_field(at, "name",
                     "'" + g.version + "' must be 1-64 of [A-Za-z0-9._-], not '.' or '..'");
  const std::string image = "image " + g.version;
  FL_ASSIGN_OR_RETURN(g.boot, string_field(item, at, "boot"));
  if (g.boot != "kernel" && g.boot != "disk")
    return bad_field(at, "boot", "must be \"kernel\" or \"disk\"");
  if (item.contains("firmware")) {
    FL_ASSIGN_OR_RETURN(g.firmware, string_field(item, at, "firmware"));
    if (g.firmware != "bios" && g.firmware != "efi")
      return bad_field(at, "firmware", "must be \"bios\" or \"efi\"");
  }
  if (auto* c = item.if_contains("cmdline")) {
    if (!c->is_string()) return bad_field(at, "cmdline", "must be a string");
    g.cmdline = c->as_string().c_str();
    if (auto why = cmdline_problem(g.cmdline); !why.empty())
      return make_error(Condition::invalid_argument, image + ": cmdline " + why);
  }
  FL_RETURN_IF_ERROR(file_object(item, dir, at, "kernel", g.kernel, g.sha256_kernel));
  FL_RETURN_IF_ERROR(file_object(item, dir, at, "initrd", g.initrd, g.sha256_initrd));
  if (g.boot == "kernel") {
    for (auto [what, have] : {std::pair{"a kernel", !g.kernel.empty()},
                              {"an initrd", !g.initrd.empty()},
                              {"a cmdline", !g.cmdline.empty()}}) {
      if (!have)
        return make_error(Condition::invalid_argument, image + ": boot: kernel needs " + what);
    }
  }
  FL_RETURN_IF_ERROR(disk_object(item, dir, at, g.version, g));
  return g;
}

}  // namespace

std::string cmdline_problem(const std::string& cmdline) {
  if (cmdline.size() > kMaxCmdline)
    return "is " + std::to_string(cmdline.size()) + " bytes long (at most " +
           std::to_string(kMaxCmdline) + ")";
  for (unsigned char c : cmdline) {
    if (c == '\n' || c == '\r') return "must be one line";
    if (c < 0x20 || c > 0x7e) return "must be printable ASCII";
  }
  return "";
}

Result<GuestImageStore> GuestImageStore::open(const std::string& manifest_dir) {
  const std::string dir = fs::absolute(manifest_dir).lexically_normal().string();
  const std::string path = manifest_dir + "/manifest.json";
  FL_ASSIGN_OR_RETURN(std::string text, image_detail::read_small_file(path));
  FL_ASSIGN_OR_RETURN(json::object root, image_detail::parse_object(text, path));
  auto* images = root.if_contains("images");
  if (!images) return make_error(Condition::invalid_argument, path + ": images is missing");
  if (!images->is_array())
    return make_error(Condition::invalid_argument, path + ": images must be an array");
  std::vector<GuestImageInfo> out;
  for (size_t i = 0; i < images->as_array().size(); ++i) {
    const std::string at = path + ": images[" + std::to_string(i) + "]";
    const auto& item = images->as_array()[i];
    if (!item.is_object())
      return make_error(Condition::invalid_argument, at + " must be an object");
    const auto& o = item.as_object();
    auto g = o.contains("version") ? builtin_entry(o, dir, at) : disk_entry(o, dir, at);
    if (!g.ok()) {
      Error e = g.error();
      if (!e.message.starts_with(path)) e.message = path + ": " + e.message;
      return e;
    }
    for (const auto& other : out) {
      if (other.version == g->version) {
        return make_error(Condition::invalid_argument,
                          at + (o.contains("version") ? ".version '" : ".name '") + g->version +
                              "' is a duplicate");
      }
    }
    g->manifest_dir = dir;
    out.push_back(std::move(g).value());
  }
  return GuestImageStore(std::move(out));
}

Result<GuestImageStore> GuestImageStore::open(const std::vector<std::string>& manifest_dirs) {
  if (manifest_dirs.empty())
    return make_error(Condition::invalid_argument, "no guest image directory given");
  std::vector<GuestImageInfo> all;
  for (const auto& dir : manifest_dirs) {
    FL_ASSIGN_OR_RETURN(GuestImageStore one, open(dir));
    for (auto& g : one.images_) {
      for (const auto& other : all) {
        if (other.version == g.version) {
          return make_error(Condition::invalid_argument,
                            "guest image '" + g.version + "' is defined twice: in " +
                                other.manifest_dir + " and in " + g.manifest_dir);
        }
      }
      all.push_back(std::move(g));
    }
  }
  return GuestImageStore(std::move(all));
}

Result<GuestImageInfo> GuestImageStore::get(const std::string& version) const {
  std::string known;
  for (const auto& g : images_) {
    if (g.version == version) return g;
    known += (known.empty() ? "" : ", ") + g.version;
  }
  return make_error(Condition::not_found, "guest image '" + version + "' not found (known: " +
                                              (known.empty() ? "none" : known) + ")");
}

Result<GuestImageInfo> GuestImageStore::verify(const std::string& version) const {
  FL_ASSIGN_OR_RETURN(GuestImageInfo g, get(version));
  for (auto [what, file, sha] : {std::tuple{"kernel", &g.kernel, &g.sha256_kernel},
                                 {"initrd", &g.initrd, &g.sha256_initrd},
                                 {"disk", &g.disk, &g.sha256_disk}}) {
    if (file->empty()) continue;
    std::error_code ec;
    auto size = fs::file_size(*file, ec);
    if (!ec && std::string_view(what) == "disk" && g.disk_bytes != 0 && size != g.disk_bytes) {
      return make_error(Condition::invalid_argument, "guest image " + version + ": disk " + *file +
                                                         " is " + std::to_string(size) +
                                                         " bytes, the manifest says " +
                                                         std::to_string(g.disk_bytes));
    }
    auto h = sha256_file(*file);
    if (!h.ok())
      return make_error(h.condition(),
                        "guest image " + version + ": " + what + ": " + h.error().message);
    if (*h != *sha) {
      return make_error(Condition::invalid_argument, "guest image " + version + ": " + what +
                                                         " checksum mismatch (expected " + *sha +
                                                         ", actual " + *h + ")");
    }
  }
  return g;
}
json::object to_json(const GuestImageInfo& i) {
  json::object o{{"version", i.version},
                 {"boot", i.boot},
                 {"firmware", i.firmware},
                 {"builtin", i.builtin()},
                 {"kernel", i.kernel},
                 {"initrd", i.initrd},
                 {"sha256_kernel", i.sha256_kernel},
                 {"sha256_initrd", i.sha256_initrd},
                 {"cmdline", i.cmdline},
                 {"manifest_dir", i.manifest_dir}};
  if (!i.builtin()) {
    o["disk"] = i.disk;
    o["disk_format"] = i.disk_format;
    o["disk_virtual_size"] = i.disk_virtual_size;
    o["disk_bytes"] = i.disk_bytes;
    o["sha256_disk"] = i.sha256_disk;
  }
  return o;
}

}  // namespace fabriclab::agent
