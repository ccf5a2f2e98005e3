#pragma once
// Watches every evdev device under /dev/input for KEY_POWER presses. The ACPI power button
// ("Power Button", from the `button` module) is what a host's ACPI shutdown presses; watching all
// event devices also catches a keyboard's power key, which is harmless. Devices appear some time
// after their modules load, so the owner calls `rescan()` on a timer; devices that go away are
// dropped on their first read error.

#include <poll.h>

#include <string>
#include <vector>

namespace fabriclab::guest {

class PowerButtonWatcher {
 public:
  PowerButtonWatcher() = default;
  PowerButtonWatcher(const PowerButtonWatcher&) = delete;
  PowerButtonWatcher& operator=(const PowerButtonWatcher&) = delete;
  ~PowerButtonWatcher();

  // Opens event devices not yet open; returns how many were added.
  int rescan();
  std::size_t device_count() const { return devices_.size(); }
  bool has_power_button() const;

  void append_pollfds(std::vector<pollfd>& fds) const;
  // Reads the events of `fd`; true when a KEY_POWER press was among them.
  bool on_ready(int fd, short revents);

 private:
  struct Device {
    int fd = -1;
    std::string node;  // /dev/input/event0
    std::string name;  // "Power Button"
  };
  void close_device(std::size_t index);

  std::vector<Device> devices_;
};

}  // namespace fabriclab::guest
