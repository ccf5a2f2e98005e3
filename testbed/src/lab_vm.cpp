#include "fabriclab/testbed/lab_vm.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

namespace fabriclab::testbed {

Status create_raw_disk(const std::string& path, uint64_t size_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == size_bytes) return {};
  int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0)
    return make_error(Condition::transient,
                      "cannot create disk " + path + ": " + std::strerror(errno));
  int rc = ::ftruncate(fd, static_cast<off_t>(size_bytes));
  int err = errno;
  ::close(fd);
  if (rc != 0)
    return make_error(Condition::transient, "cannot size disk " + path + ": " + std::strerror(err));
  return {};
}

std::string guest_cmdline(const GuestOptions& o) {
  // A command-line mode overrides the image's own (v3-broken is fail-app by image): only
  // non-default modes go on the line.
  return "console=ttyS0 panic=-1 quiet" +
         (o.mode == "normal" ? std::string() : " fabriclab.mode=" + o.mode) +
         " fabriclab.drain_ms=" + std::to_string(o.drain_ms) +
         " fabriclab.hb_ms=" + std::to_string(o.heartbeat_ms);
}

Result<hypervisor::DomainSpec> guest_spec(const std::string& name, const std::string& dir,
                                          const GuestImage& image, const GuestOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error(Condition::transient, "cannot create " + dir + ": " + ec.message());
  hypervisor::DomainSpec s;
  s.name = name;
  s.memory_mib = options.memory_mib;
  s.boot = {image.kernel, image.initrd, guest_cmdline(options)};
  s.console_log = dir + "/" + name + ".console.log";
  s.data_disk = dir + "/" + name + ".data.raw";
  s.channel_socket = dir + "/" + name + ".sock";
  FL_RETURN_IF_ERROR(create_raw_disk(s.data_disk, 1024 * 1024));
  FL_RETURN_IF_ERROR(hypervisor::validate(s));
  return s;
}

Result<std::string> make_short_tmpdir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) {
    return make_error(Condition::transient, "mkdtemp " + tmpl + ": " + std::strerror(errno));
  }
  return std::string(buf.data());
}

}  // namespace fabriclab::testbed
