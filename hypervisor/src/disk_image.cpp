// OS disk checks and overlays (disk_image.hpp), on Debian's qemu-img.
//
// Why each check exists:
//  - qemu-img probes the format from the content; we pass the detected format back to every later
//    call (-f), so a raw image whose first bytes happen to look like a qcow2 header is never
//    re-probed as something else. Paths are made absolute first: qemu-img reads "nbd:x" or
//    "json:{...}" as a protocol, an absolute path never.
//  - A backing file (or a qcow2 external data file) makes the image depend on another file that
//    nobody checked, hashed or stored read-only; and a crafted header can point it at any file on
//    the host. Refused outright: a user flattens such an image with `qemu-img convert` first.
//  - `qemu-img check` walks a qcow2's metadata; a truncated or overwritten image fails it (exit 2)
//    or fails to open at all. Exit 3 is leaked clusters only: wasted space, not damage.
//  - Every file is "raw" to qemu-img, so a raw image must at least look like a disk: a partition
//    table or a file system at the start. The same look is taken at a qcow2's content (its first
//    128 KiB, read with `qemu-img dd`), so an empty qcow2 is not taken for an OS either.

#include "fabriclab/hypervisor/disk_image.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "fabriclab/common/process.hpp"

namespace fabriclab::hypervisor {
namespace {
namespace fs = std::filesystem;
namespace json = boost::json;

constexpr auto kInfoTimeout = std::chrono::seconds(30);
constexpr auto kCheckTimeout = std::chrono::seconds(600);  // a large, fragmented qcow2
constexpr size_t kHeadBytes = 128 * 1024;                  // btrfs' superblock is at 64 KiB

Error refused(const std::string& path, const std::string& why) {
  return make_error(Condition::invalid_argument, path + ": " + why);
}

std::string last_line(std::string out) {
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  auto nl = out.rfind('\n');
  std::string line = nl == std::string::npos ? out : out.substr(nl + 1);
  if (line.starts_with("qemu-img: ")) line = line.substr(10);
  return line.size() > 300 ? line.substr(0, 300) + "..." : line;
}

Result<std::string> absolute_regular_file(const std::string& path) {
  if (path.empty()) return make_error(Condition::invalid_argument, "no disk image path given");
  std::error_code ec;
  std::string abs = fs::absolute(path, ec).lexically_normal().string();
  if (ec) return make_error(Condition::invalid_argument, path + ": " + ec.message());
  struct stat st {};
  if (::stat(abs.c_str(), &st) != 0) {
    return make_error(errno == ENOENT ? Condition::not_found : Condition::transient,
                      path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return refused(path, "not a regular file");
  return abs;
}

uint64_t u64(const json::object& o, std::string_view key) {
  auto* v = o.if_contains(key);
  if (v && v->is_uint64()) return v->as_uint64();
  if (v && v->is_int64() && v->as_int64() >= 0) return static_cast<uint64_t>(v->as_int64());
  return 0;
}

bool has_magic(const std::string& head, size_t at, std::string_view magic) {
  return head.size() >= at + magic.size() && head.compare(at, magic.size(), magic) == 0;
}

// What the start of a disk holds, or "" if nothing we recognise.
std::string disk_signature(const std::string& head) {
  if (has_magic(head, 512, "EFI PART")) return "GPT partition table";
  if (has_magic(head, 1024 + 56, "\x53\xef")) return "ext2/3/4 file system";
  if (has_magic(head, 0, "XFSB")) return "xfs file system";
  if (has_magic(head, 65536 + 64, "_BHRfS_M")) return "btrfs file system";
  if (has_magic(head, 510, "\x55\xaa")) {
    // An MBR: at least one partition entry with a type, each entry's boot flag 0x00 or 0x80. A
    // FAT or NTFS boot sector carries 0x55aa too; so does a bootloader's.
    bool any = false;
    for (size_t e = 446; e < 510; e += 16) {
      auto flag = static_cast<unsigned char>(head[e]);
      if (flag != 0x00 && flag != 0x80) return "";
      any = any || head[e + 4] != 0;
    }
    return any ? "MBR partition table" : "";
  }
  return "";
}

// The first kHeadBytes of what the guest sees.
Result<std::string> read_head(const std::string& path, const std::string& format) {
  std::string src = path, tmpdir;
  if (format != "raw") {
    std::string tmpl = (fs::temp_directory_path() / "fl-disk-head-XXXXXX").string();
    if (!::mkdtemp(tmpl.data()))
      return make_error(Condition::transient, "cannot create a temporary directory: " +
                                                  std::string(std::strerror(errno)));
    tmpdir = tmpl;
    src = tmpdir + "/head.raw";
    auto r = run_command({"qemu-img", "dd", "-U", "-f", format, "-O", "raw", "bs=65536",
                          "count=" + std::to_string(kHeadBytes / 65536), "if=" + path, "of=" + src},
                         kInfoTimeout, 64 << 10);
    if (!r.ok() || r->exit_code != 0) {
      std::error_code ec;
      fs::remove_all(tmpdir, ec);
      if (!r.ok()) return r.error();
      return refused(path, "cannot read its content (qemu-img dd: " + last_line(r->output) + ")");
    }
  }
  std::string head(kHeadBytes, '\0');
  int fd = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  ssize_t n = fd < 0 ? -1 : ::pread(fd, head.data(), head.size(), 0);
  int err = errno;
  if (fd >= 0) ::close(fd);
  if (!tmpdir.empty()) {
    std::error_code ec;
    fs::remove_all(tmpdir, ec);
  }
  if (n < 0)
    return make_error(Condition::transient, "cannot read " + src + ": " + std::strerror(err));
  head.resize(static_cast<size_t>(n));
  return head;
}

// qemu-img check's own words: "N errors were found on the image" and its first ERROR line.
std::string check_summary(const std::string& output) {
  std::string summary, first_error;
  size_t start = 0;
  while (start < output.size()) {
    size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    std::string line = output.substr(start, end - start);
    if (line.find("errors were found") != std::string::npos && summary.empty()) summary = line;
    if (line.starts_with("ERROR") && first_error.empty()) first_error = line.substr(0, 200);
    start = end + 1;
  }
  if (summary.empty() && first_error.empty()) return last_line(output);
  if (summary.empty() || first_error.empty()) return summary + first_error;
  return summary + "; " + first_error;
}

Status check_qcow2(const std::string& path, const std::string& abs) {
  auto r = run_command({"qemu-img", "check", "-U", "-f", "qcow2", abs}, kCheckTimeout, 64 << 10);
  if (!r.ok()) return r.error();
  if (r->exit_code == 0 || r->exit_code == 3) return {};  // 3: leaked clusters only
  if (r->exit_code == 2) {
    return refused(path, "the qcow2 image is corrupt (qemu-img check: " + check_summary(r->output) +
                             "); repair it with qemu-img check -r all, or rebuild it");
  }
  return refused(path, "the qcow2 image is corrupt or unreadable (qemu-img check exit " +
                           std::to_string(r->exit_code) + ": " + check_summary(r->output) + ")");
}

std::string size_text(uint64_t bytes) {
  return bytes >= (1u << 20) ? std::to_string(bytes >> 20) + " MiB"
                             : std::to_string(bytes) + " bytes";
}

}  // namespace

namespace {

bool qcow2_magic(const std::string& abs) {
  char magic[4] = {};
  int fd = ::open(abs.c_str(), O_RDONLY | O_CLOEXEC);
  bool yes = fd >= 0 && ::pread(fd, magic, 4, 0) == 4 && std::memcmp(magic, "QFI\xfb", 4) == 0;
  if (fd >= 0) ::close(fd);
  return yes;
}

struct Probed {
  DiskImageInfo info;
  json::object raw;  // qemu-img's whole answer
};

Result<Probed> probe(const std::string& path, const std::string& abs) {
  FL_ASSIGN_OR_RETURN(CommandResult r, run_command({"qemu-img", "info", "--output=json", "-U", abs},
                                                   kInfoTimeout, 1 << 20));
  if (r.exit_code != 0) {
    if (qcow2_magic(abs))
      return refused(path, "the qcow2 image is corrupt: " + last_line(r.output));
    return refused(path, "qemu-img cannot open it: " + last_line(r.output));
  }
  if (r.truncated) return refused(path, "qemu-img info printed more than 1 MiB");
  boost::system::error_code ec;
  json::parse_options opt;
  opt.max_depth = 32;
  json::value v = json::parse(r.output, ec, json::storage_ptr(), opt);
  if (ec || !v.is_object()) {
    return make_error(Condition::internal,
                      "qemu-img info " + abs + ": unexpected output: " + last_line(r.output));
  }
  Probed p;
  p.raw = std::move(v.as_object());
  if (auto* f = p.raw.if_contains("format"); f && f->is_string())
    p.info.format = f->as_string().c_str();
  p.info.virtual_size = u64(p.raw, "virtual-size");
  p.info.actual_size = u64(p.raw, "actual-size");
  for (const char* key : {"full-backing-filename", "backing-filename"}) {
    auto* b = p.raw.if_contains(key);
    if (b && b->is_string() && p.info.backing_file.empty())
      p.info.backing_file = b->as_string().c_str();
  }
  if (p.info.format.empty())
    return make_error(Condition::internal, "qemu-img info " + abs + ": no format in its output");
  return p;
}

// An encrypted image, an external data file or the header's corrupt bit (qcow2 only).
Status check_qcow2_header(const std::string& path, const json::object& o) {
  if (auto* e = o.if_contains("encrypted"); e && e->is_bool() && e->as_bool())
    return refused(path, "an encrypted image is not accepted");
  const json::value* data = nullptr;
  if (auto* fsd = o.if_contains("format-specific"); fsd && fsd->is_object())
    data = fsd->as_object().if_contains("data");
  if (!data || !data->is_object()) return {};
  const auto& d = data->as_object();
  if (auto* df = d.if_contains("data-file"); df && df->is_string()) {
    return refused(path, "an external data file is not accepted: " + path + " keeps its data in " +
                             std::string(df->as_string()));
  }
  if (auto* c = d.if_contains("corrupt"); c && c->is_bool() && c->as_bool())
    return refused(path, "the qcow2 image is corrupt (marked corrupt in its header)");
  return {};
}

}  // namespace

Result<DiskImageInfo> qemu_img_info(const std::string& path) {
  FL_ASSIGN_OR_RETURN(std::string abs, absolute_regular_file(path));
  FL_ASSIGN_OR_RETURN(Probed p, probe(path, abs));
  return p.info;
}

Result<DiskImageInfo> check_os_disk(const std::string& path) {
  FL_ASSIGN_OR_RETURN(std::string abs, absolute_regular_file(path));
  FL_ASSIGN_OR_RETURN(Probed p, probe(path, abs));
  const DiskImageInfo& info = p.info;
  if (info.format != "qcow2" && info.format != "raw")
    return refused(path, "format " + info.format + " is not accepted (qcow2 or raw)");
  if (!info.backing_file.empty()) {
    return refused(path, "a backing chain is not accepted: " + path + " is backed by " +
                             info.backing_file + " (flatten it: qemu-img convert -O qcow2 " + path +
                             " NEW.qcow2)");
  }
  if (info.format == "qcow2") FL_RETURN_IF_ERROR(check_qcow2_header(path, p.raw));
  if (info.format == "qcow2") FL_RETURN_IF_ERROR(check_qcow2(path, abs));
  FL_ASSIGN_OR_RETURN(std::string head, read_head(abs, info.format));
  if (disk_signature(head).empty()) {
    return refused(path, "not a disk image: no partition table or file system found (" +
                             info.format + ", " + size_text(info.virtual_size) +
                             ": no MBR, GPT, ext2/3/4, xfs or btrfs at its start)");
  }
  if (info.virtual_size < kMinOsDiskBytes || info.virtual_size > kMaxOsDiskBytes) {
    return refused(path, "virtual size " + std::to_string(info.virtual_size) +
                             " bytes is outside 1 MiB..1 TiB");
  }
  return info;
}

Status create_overlay(const std::string& backing, const std::string& backing_format,
                      const std::string& overlay) {
  if (backing_format != "qcow2" && backing_format != "raw") {
    return make_error(Condition::invalid_argument,
                      "backing format '" + backing_format + "' is not qcow2 or raw");
  }
  FL_ASSIGN_OR_RETURN(std::string abs_backing, absolute_regular_file(backing));
  if (overlay.empty()) return make_error(Condition::invalid_argument, "no overlay path given");
  std::string abs_overlay = fs::absolute(overlay).lexically_normal().string();
  std::error_code ec;
  const fs::path parent = fs::path(abs_overlay).parent_path();
  if (!fs::is_directory(parent, ec)) {
    return make_error(Condition::not_found,
                      "cannot create overlay " + overlay + ": no directory " + parent.string());
  }
  // Claim the name first: qemu-img create would silently replace an existing file.
  int fd = ::open(abs_overlay.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    int err = errno;
    if (err == EEXIST)
      return make_error(Condition::already_exists, "overlay " + overlay + " already exists");
    return make_error(Condition::transient,
                      "cannot create overlay " + overlay + ": " + std::strerror(err));
  }
  ::close(fd);
  auto r = run_command({"qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b",
                        abs_backing, abs_overlay},
                       kInfoTimeout, 64 << 10);
  if (!r.ok() || r->exit_code != 0) {
    ::unlink(abs_overlay.c_str());
    if (!r.ok()) return r.error();
    return make_error(Condition::invalid_argument, "cannot create overlay " + overlay + " on " +
                                                       backing + ": " + last_line(r->output));
  }
  return {};
}

}  // namespace fabriclab::hypervisor
