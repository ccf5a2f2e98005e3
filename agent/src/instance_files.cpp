// Per-instance files: see instance_files.hpp.

#include "instance_files.hpp"

#include <sys/statvfs.h>

#include <filesystem>
#include <fstream>

#include "fabriclab/hypervisor/disk_image.hpp"

namespace fabriclab::agent {
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kMiB = 1ull << 20;

uint64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  auto n = fs::file_size(path, ec);
  return ec ? 0 : n;
}

Status copy_if_changed(const std::string& from, const std::string& to) {
  std::error_code ec;
  const auto want = fs::file_size(from, ec);
  if (ec) return make_error(Condition::not_found, "cannot read " + from + ": " + ec.message());
  if (fs::exists(to, ec) && file_size_or_zero(to) == want) return {};
  // Copy to a temporary name and rename, so a crash never leaves a short kernel behind.
  const std::string tmp = to + ".tmp";
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(tmp, to, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return make_error(Condition::transient,
                      "cannot copy " + from + " to " + to + ": " + ec.message());
  }
  return {};
}

}  // namespace

std::string instance_files_dir(const std::string& vm_dir, const std::string& name) {
  return vm_dir + "/" + name + ".d";
}

Result<hypervisor::BootImage> private_boot_files(const std::string& dir,
                                                 const GuestImageInfo& image) {
  if (image.kernel.empty()) return hypervisor::BootImage{};  // boot: disk
  const std::string boot_dir = dir + "/boot-" + image.version;
  std::error_code ec;
  fs::create_directories(boot_dir, ec);
  if (ec)
    return make_error(Condition::transient, "cannot create " + boot_dir + ": " + ec.message());
  hypervisor::BootImage boot{boot_dir + "/vmlinuz", boot_dir + "/initrd.img", ""};
  FL_RETURN_IF_ERROR(copy_if_changed(image.kernel, boot.kernel));
  if (!image.initrd.empty()) {
    FL_RETURN_IF_ERROR(copy_if_changed(image.initrd, boot.initrd));
  } else {
    boot.initrd.clear();
  }
  return boot;
}

Result<std::string> create_os_overlay(const std::string& dir, const GuestImageInfo& image, int gen,
                                      bool replace_stale) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(Condition::transient, "cannot create " + dir + ": " + ec.message());
  const std::string path = dir + "/os-" + image.version + "-" + std::to_string(gen) + ".qcow2";
  if (replace_stale) fs::remove(path, ec);
  FL_RETURN_IF_ERROR(hypervisor::create_overlay(image.disk, image.disk_format, path));
  return path;
}

Status check_firmware(const GuestImageInfo& image, const std::string& code,
                      const std::string& vars_template) {
  if (image.firmware != "efi") return {};
  for (const auto& [what, path] :
       {std::pair{"code", &code}, {"variable store template", &vars_template}}) {
    std::error_code ec;
    if (path->empty() || !fs::is_regular_file(*path, ec)) {
      return make_error(Condition::not_found,
                        "image " + image.version + " needs UEFI firmware, but its " + what + " " +
                            (path->empty() ? "(no path given)" : *path) +
                            " is not there (Debian package ovmf; testbed/setup.sh installs it)");
    }
  }
  return {};
}

Result<hypervisor::Firmware> instance_firmware(const std::string& dir, const GuestImageInfo& image,
                                               const std::string& code,
                                               const std::string& vars_template) {
  if (image.firmware != "efi") return hypervisor::Firmware{};
  FL_RETURN_IF_ERROR(check_firmware(image, code, vars_template));
  const std::string nvram = dir + "/efivars.fd";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(Condition::transient, "cannot create " + dir + ": " + ec.message());
  if (!fs::exists(nvram, ec)) {
    // A temporary name and rename: a crash never leaves a short variable store behind.
    const std::string tmp = nvram + ".tmp";
    fs::copy_file(vars_template, tmp, fs::copy_options::overwrite_existing, ec);
    if (!ec) fs::permissions(tmp, fs::perms::owner_read | fs::perms::owner_write, ec);
    if (!ec) fs::rename(tmp, nvram, ec);
    if (ec) {
      fs::remove(tmp, ec);
      return make_error(Condition::transient, "cannot copy the UEFI variable store " +
                                                  vars_template + " to " + nvram + ": " +
                                                  ec.message());
    }
  }
  return hypervisor::Firmware{code, nvram};
}

Status ensure_data_disk(const std::string& path, uint64_t bytes) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    std::ofstream f(path, std::ios::binary);
    if (!f) return make_error(Condition::transient, "cannot create data disk " + path);
  }
  if (file_size_or_zero(path) >= bytes) return {};
  fs::resize_file(path, bytes, ec);  // sparse: no block is written
  if (ec)
    return make_error(Condition::transient, "cannot size data disk " + path + ": " + ec.message());
  return {};
}

uint64_t bytes_needed(const GuestImageInfo& image, uint64_t data_disk_bytes,
                      bool data_disk_exists) {
  uint64_t need = data_disk_exists ? 0 : data_disk_bytes;
  need += file_size_or_zero(image.kernel) + file_size_or_zero(image.initrd);
  need += image.disk_virtual_size;
  return need;
}

Status check_disk_reserve(const std::string& dir, uint64_t need, uint64_t reserve) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) {
    return make_error(Condition::transient, "cannot read the free space of " + dir);
  }
  const uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  if (free_bytes < need + reserve) {
    return make_error(Condition::invalid_state, "not enough disk space in " + dir + ": " +
                                                    std::to_string(free_bytes / kMiB) +
                                                    " MiB free, the instance may take " +
                                                    std::to_string((need + kMiB - 1) / kMiB) +
                                                    " MiB and " + std::to_string(reserve / kMiB) +
                                                    " MiB must stay free (--disk-reserve-mib)");
  }
  return {};
}

void remove_unused_files(const std::string& dir, const std::set<std::string>& keep) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string path = e.path().string();
    const std::string file = e.path().filename().string();
    const bool ours = file.rfind("boot-", 0) == 0 ||
                      (file.rfind("os-", 0) == 0 && e.path().extension() == ".qcow2");
    bool kept = keep.count(path) > 0;
    for (const auto& k : keep)
      kept = kept || k.rfind(path + "/", 0) == 0;  // a file in a kept boot-*
    if (ours && !kept) fs::remove_all(e.path(), ec);
  }
}

}  // namespace fabriclab::agent
