#include "boot_env.hpp"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <utility>
#include <vector>

namespace fabriclab::guest {
namespace {

std::int64_t clock_ms(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

void write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

void mount_one(const char* source, const char* target, const char* type) {
  ::mkdir(target, 0755);
  if (::mount(source, target, type, MS_NOSUID | MS_NOEXEC, nullptr) != 0 && errno != EBUSY) {
    log("mount %s on %s failed: %s", type, target, std::strerror(errno));
  }
}

std::optional<std::int64_t> parse_int(std::string_view text, std::int64_t lo, std::int64_t hi) {
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value < lo || value > hi) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

void apply_cmdline(GuestConfig& config, std::string_view cmdline) {
  // An integer parameter in [lo, hi]; a bad value keeps the one the field had.
  auto set_int = [](std::string_view key, std::string_view value, std::int64_t lo, std::int64_t hi,
                    std::int64_t& field) {
    if (auto v = parse_int(value, lo, hi)) {
      field = *v;
      return;
    }
    log("cmdline: bad %.*s (%lld..%lld), keeping %lld", static_cast<int>(key.size()), key.data(),
        static_cast<long long>(lo), static_cast<long long>(hi), static_cast<long long>(field));
  };
  std::string_view ip;
  std::string_view gw;
  std::size_t pos = 0;
  while (pos < cmdline.size()) {
    while (pos < cmdline.size() && (cmdline[pos] == ' ' || cmdline[pos] == '\n')) ++pos;
    std::size_t end = cmdline.find_first_of(" \n", pos);
    if (end == std::string_view::npos) end = cmdline.size();
    std::string_view word = cmdline.substr(pos, end - pos);
    pos = end;
    auto eq = word.find('=');
    if (eq == std::string_view::npos || !word.starts_with("fabriclab.")) continue;
    std::string_view key = word.substr(0, eq);
    std::string_view value = word.substr(eq + 1);
    if (key == "fabriclab.mode") {
      if (auto mode = parse_mode(value)) {
        config.mode = *mode;
      } else {
        log("cmdline: bad fabriclab.mode '%.*s' (normal|ignore-power|fail-app), ignored",
            static_cast<int>(value.size()), value.data());
      }
    } else if (key == "fabriclab.drain_ms") {
      set_int(key, value, 0, 3'600'000, config.drain_ms);
    } else if (key == "fabriclab.hb_ms") {
      set_int(key, value, 50, 600'000, config.heartbeat_ms);
    } else if (key == "fabriclab.ip") {
      ip = value;
    } else if (key == "fabriclab.gw") {
      gw = value;
    } else if (key == "fabriclab.drain") {
      if (value == "1" || value == "0") {
        config.drain = value == "1";
      } else {
        log("cmdline: bad fabriclab.drain (1|0), keeping %d", config.drain ? 1 : 0);
      }
    } else if (key == "fabriclab.disk") {
      if (value.starts_with("/dev/") && value.size() < 64) {
        config.disk = std::string(value);
      } else {
        log("cmdline: bad fabriclab.disk, keeping %s", config.disk.c_str());
      }
    } else {
      log("cmdline: unknown parameter %.*s ignored", static_cast<int>(key.size()), key.data());
    }
  }
  std::string error;
  config.net = make_net_config(ip, gw, error);
  if (!error.empty()) {
    log("cmdline: %s (fabriclab.ip='%.*s' fabriclab.gw='%.*s'): network off", error.c_str(),
        static_cast<int>(std::min<std::size_t>(ip.size(), 64)), ip.data(),
        static_cast<int>(std::min<std::size_t>(gw.size(), 64)), gw.data());
  }
}

void log(const char* format, ...) {
  char buffer[1024];
  std::int64_t up = uptime_ms();
  int prefix = std::snprintf(buffer, sizeof buffer, "[guest] %lld.%03lld ",
                             static_cast<long long>(up / 1000), static_cast<long long>(up % 1000));
  va_list args;
  va_start(args, format);
  int body = std::vsnprintf(buffer + prefix, sizeof buffer - prefix - 1, format, args);
  va_end(args);
  std::size_t size = static_cast<std::size_t>(prefix) +
                     std::min<std::size_t>(body < 0 ? 0 : body, sizeof buffer - prefix - 2);
  buffer[size++] = '\n';
  write_all(STDOUT_FILENO, buffer, size);
}

std::int64_t monotonic_ms() { return clock_ms(CLOCK_MONOTONIC); }
std::int64_t uptime_ms() { return clock_ms(CLOCK_BOOTTIME); }

void mount_basics() {
  mount_one("proc", "/proc", "proc");
  mount_one("sysfs", "/sys", "sysfs");
  ::mkdir("/dev", 0755);
  if (::mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") != 0 && errno != EBUSY) {
    log("mount devtmpfs on /dev failed: %s", std::strerror(errno));
  }
  // The kernel opens /dev/console for init only if the initramfs has the node; the builder may
  // not have been able to create it (no root), so point fds 0-2 at the devtmpfs console now.
  if (::fcntl(STDOUT_FILENO, F_GETFD) < 0) {
    int fd = ::open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd >= 0) {
      for (int target = 0; target <= 2; ++target) {
        if (fd != target) ::dup2(fd, target);
      }
      if (fd > 2) ::close(fd);
    }
  }
}

int load_modules(const std::string& list_path) {
  auto list = read_text_file(list_path, std::size_t{64} * 1024);
  if (!list) {
    log("no module list at %s: %s", list_path.c_str(), std::strerror(errno));
    return 0;
  }
  int failures = 0;
  int loaded = 0;
  std::size_t pos = 0;
  while (pos < list->size()) {
    std::size_t end = list->find('\n', pos);
    if (end == std::string::npos) end = list->size();
    std::string path = trim(std::string_view(*list).substr(pos, end - pos));
    pos = end + 1;
    if (path.empty() || path[0] == '#') continue;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      log("module %s: open failed: %s", path.c_str(), std::strerror(errno));
      ++failures;
      continue;
    }
    long rc = ::syscall(SYS_finit_module, fd, "", 0);
    int err = errno;
    ::close(fd);
    if (rc != 0 && err != EEXIST) {
      log("module %s: finit_module failed: %s", path.c_str(), std::strerror(err));
      ++failures;
    } else {
      ++loaded;
    }
  }
  log("modules: %d loaded, %d failed", loaded, failures);
  return failures;
}

std::optional<std::string> read_text_file(const std::string& path, std::size_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string text;
  char chunk[4096];
  while (text.size() < max_bytes) {
    ssize_t n = ::read(fd, chunk, std::min(sizeof chunk, max_bytes - text.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

std::string trim(std::string_view text) {
  const char* kSpace = " \t\r\n";
  auto first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  auto last = text.find_last_not_of(kSpace);
  return std::string(text.substr(first, last - first + 1));
}

namespace {

// Each mode and the word that names it (in /etc/fabriclab/mode, fabriclab.mode= and heartbeats).
constexpr std::pair<Mode, std::string_view> kModeNames[] = {
    {Mode::normal, "normal"}, {Mode::ignore_power, "ignore-power"}, {Mode::fail_app, "fail-app"}};

}  // namespace

std::string_view to_string(Mode mode) {
  for (const auto& [m, name] : kModeNames) {
    if (m == mode) return name;
  }
  return "normal";
}

std::optional<Mode> parse_mode(std::string_view text) {
  for (const auto& [m, name] : kModeNames) {
    if (name == text) return m;
  }
  return std::nullopt;
}

GuestConfig load_config() {
  GuestConfig config;
  const std::string dir(kConfigDir);
  if (auto image = read_text_file(dir + "/image", 256)) {
    std::string value = trim(*image);
    if (!value.empty() && value.find_first_of("\"\\") == std::string::npos) config.image = value;
  } else {
    log("no %s/image; image version is 'unknown'", dir.c_str());
  }
  if (auto mode_text = read_text_file(dir + "/mode", 256)) {
    std::string value = trim(*mode_text);
    if (auto mode = parse_mode(value)) {
      config.mode = *mode;
    } else {
      log("%s/mode: bad value '%s', using normal", dir.c_str(), value.c_str());
    }
  }
  if (auto patch = read_text_file(dir + "/patch", 4096)) {
    std::string text = trim(*patch);
    config.patch = text.substr(0, text.find('\n'));
  }
  if (auto cmdline = read_text_file("/proc/cmdline", 8192)) {
    apply_cmdline(config, *cmdline);
  } else {
    log("cannot read /proc/cmdline: %s", std::strerror(errno));
  }
  return config;
}

std::string make_boot_id() {
  unsigned char bytes[16] = {};
  ssize_t got = ::getrandom(bytes, sizeof bytes, GRND_NONBLOCK);
  if (got != static_cast<ssize_t>(sizeof bytes)) {
    // GRND_INSECURE (Linux 5.6+) never blocks, even before the pool is initialised.
    constexpr unsigned kGrndInsecure = 0x0004;
    got = ::getrandom(bytes, sizeof bytes, kGrndInsecure);
  }
  if (got != static_cast<ssize_t>(sizeof bytes)) {
    log("getrandom failed (%s); boot id from the clock", std::strerror(errno));
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    std::uint64_t seed = static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'007ULL ^ ts.tv_nsec;
    for (auto& b : bytes) {
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      b = static_cast<unsigned char>(seed >> 56);
    }
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  for (unsigned char b : bytes) {
    id.push_back(kHex[b >> 4]);
    id.push_back(kHex[b & 15]);
  }
  return id;
}

void halt_forever(const char* why) {
  log("FATAL: %s; halting (PID 1 never exits)", why);
  for (;;) ::pause();
}

}  // namespace fabriclab::guest
