#pragma once
// The guest's view of its own machine: logging to the serial console, the early mounts, kernel
// module loading, the configuration baked into the image plus the kernel command line, clocks and
// the boot id. Everything here is plain POSIX/Linux and never throws on a system-call failure:
// PID 1 logs and carries on.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "network.hpp"

namespace fabriclab::guest {

inline constexpr std::string_view kConfigDir = "/etc/fabriclab";
inline constexpr std::int64_t kDefaultDrainMs = 500;
inline constexpr std::int64_t kDefaultHeartbeatMs = 1000;

// "[guest] 12.345 message\n" on stdout (the serial console), written unbuffered.
void log(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Milliseconds on CLOCK_MONOTONIC (timers) and CLOCK_BOOTTIME (uptime since kernel start).
std::int64_t monotonic_ms();
std::int64_t uptime_ms();

// Mounts /proc, /sys and /dev (devtmpfs) and makes sure fds 0-2 point at /dev/console.
void mount_basics();

// Loads the modules listed one absolute path per line in `list_path` with finit_module.
// Returns the number of modules that failed (EEXIST counts as loaded).
int load_modules(const std::string& list_path);

// Reads a small text file (at most `max_bytes`); nullopt when it cannot be read.
std::optional<std::string> read_text_file(const std::string& path, std::size_t max_bytes = 4096);
std::string trim(std::string_view text);

enum class Mode { normal, ignore_power, fail_app };
std::string_view to_string(Mode mode);
std::optional<Mode> parse_mode(std::string_view text);

struct GuestConfig {
  std::string image = "unknown";            // /etc/fabriclab/image
  Mode mode = Mode::normal;                 // /etc/fabriclab/mode, overridden by fabriclab.mode=
  std::int64_t drain_ms = kDefaultDrainMs;  // fabriclab.drain_ms=
  std::int64_t heartbeat_ms = kDefaultHeartbeatMs;  // fabriclab.hb_ms=
  std::string disk = "/dev/vda";                    // fabriclab.disk=
  std::string patch;  // /etc/fabriclab/patch (first line), informational
  bool drain = true;  // fabriclab.drain=1|0: take part in scheduled events through IMDS
  // fabriclab.ip=A.B.C.D/NN + fabriclab.gw=A.B.C.D; nullopt: no network (channel only)
  std::optional<NetConfig> net;
};

// Image files first, then /proc/cmdline. Bad values are logged and the default kept (a bad
// fabriclab.ip or fabriclab.gw leaves the network off).
GuestConfig load_config();
// The /proc/cmdline part of load_config (exposed for tests).
void apply_cmdline(GuestConfig& config, std::string_view cmdline);

// 128 random bits as 32 lower-case hex digits; never blocks on the entropy pool.
std::string make_boot_id();

// For fatal errors: PID 1 must never exit (the kernel runs with panic=-1).
[[noreturn]] void halt_forever(const char* why);

}  // namespace fabriclab::guest
