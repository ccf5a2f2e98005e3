#include "power_button.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/input.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "boot_env.hpp"

namespace fabriclab::guest {
namespace {

constexpr const char* kInputDir = "/dev/input";
constexpr std::string_view kPowerButtonName = "Power Button";

}  // namespace

PowerButtonWatcher::~PowerButtonWatcher() {
  for (auto& device : devices_) ::close(device.fd);
}

int PowerButtonWatcher::rescan() {
  DIR* dir = ::opendir(kInputDir);
  if (dir == nullptr) return 0;
  int added = 0;
  while (dirent* entry = ::readdir(dir)) {
    std::string_view file = entry->d_name;
    if (!file.starts_with("event")) continue;
    std::string node = std::string(kInputDir) + "/" + entry->d_name;
    bool known = std::any_of(devices_.begin(), devices_.end(),
                             [&](const Device& d) { return d.node == node; });
    if (known) continue;
    int fd = ::open(node.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    auto name = read_text_file("/sys/class/input/" + std::string(file) + "/device/name", 256);
    Device device{fd, node, name ? trim(*name) : std::string("?")};
    log("input: watching %s (%s)", device.node.c_str(), device.name.c_str());
    devices_.push_back(std::move(device));
    ++added;
  }
  ::closedir(dir);
  return added;
}

bool PowerButtonWatcher::has_power_button() const {
  return std::any_of(devices_.begin(), devices_.end(),
                     [](const Device& d) { return d.name == kPowerButtonName; });
}

void PowerButtonWatcher::append_pollfds(std::vector<pollfd>& fds) const {
  for (const auto& device : devices_) fds.push_back(pollfd{device.fd, POLLIN, 0});
}

bool PowerButtonWatcher::on_ready(int fd, short revents) {
  auto it =
      std::find_if(devices_.begin(), devices_.end(), [fd](const Device& d) { return d.fd == fd; });
  if (it == devices_.end() || revents == 0) return false;
  const std::size_t index = static_cast<std::size_t>(it - devices_.begin());
  bool pressed = false;
  input_event events[32];
  for (;;) {
    ssize_t n = ::read(fd, events, sizeof events);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {
      log("input: %s gone (%s)", it->node.c_str(), n < 0 ? std::strerror(errno) : "EOF");
      close_device(index);
      break;
    }
    std::size_t count = static_cast<std::size_t>(n) / sizeof(input_event);
    for (std::size_t i = 0; i < count; ++i) {
      if (events[i].type == EV_KEY && events[i].code == KEY_POWER && events[i].value == 1) {
        log("input: KEY_POWER pressed on %s (%s)", it->node.c_str(), it->name.c_str());
        pressed = true;
      }
    }
  }
  return pressed;
}

void PowerButtonWatcher::close_device(std::size_t index) {
  ::close(devices_[index].fd);
  devices_.erase(devices_.begin() + static_cast<std::ptrdiff_t>(index));
}

}  // namespace fabriclab::guest
