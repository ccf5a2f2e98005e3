#pragma once
// The guest's own network: `fabriclab.ip=A.B.C.D/NN fabriclab.gw=A.B.C.1` on the kernel command
// line (set by the agent from its lease table) become an address on eth0, the virtio NIC, and a
// default route. No DHCP client: the built-in guest knows its address before it boots.
//
// Bring-up is a small state machine driven from the poll loop (`step`), never a blocking wait:
// `lo` first, then eth0 once virtio_net has probed it, then address, netmask, up and the default
// route, each with the classic SIOCS* ioctls on an AF_INET datagram socket. A step that fails
// (no eth0 yet, gateway not reachable yet) is retried on the next call.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fabriclab::guest {

struct NetConfig {
  std::uint32_t address = 0;  // host byte order
  int prefix = 0;             // 1..30
  std::uint32_t gateway = 0;  // host byte order, inside address/prefix
  std::string interface = "eth0";
};

// "A.B.C.D/NN" with NN in 1..30 and an address that is neither the subnet's network nor its
// broadcast address. nullopt on anything else.
struct Ipv4Cidr {
  std::uint32_t address = 0;
  int prefix = 0;
};
std::optional<Ipv4Cidr> parse_ipv4_cidr(std::string_view text);
std::optional<std::uint32_t> parse_ipv4(std::string_view text);
std::uint32_t netmask_of(int prefix);
std::string ipv4_to_string(std::uint32_t address);

// Both values, consistent (gateway in the subnet, distinct from the address); `error` says why
// not. Either missing -> nullopt with an empty error (no network requested).
std::optional<NetConfig> make_net_config(std::string_view ip, std::string_view gw,
                                         std::string& error);

class NetworkBringUp {
 public:
  explicit NetworkBringUp(NetConfig config) : config_(std::move(config)) {}
  NetworkBringUp(const NetworkBringUp&) = delete;
  NetworkBringUp& operator=(const NetworkBringUp&) = delete;
  ~NetworkBringUp();

  // Advances as far as it can now; logs each step and each first failure. True once configured.
  bool step(std::int64_t now_ms);
  bool up() const { return stage_ == Stage::done; }
  const NetConfig& config() const { return config_; }

 private:
  enum class Stage { loopback, wait_interface, address, route, done };
  bool set_flags_up(const char* name);
  bool fail(const char* what, int err);

  NetConfig config_;
  Stage stage_ = Stage::loopback;
  int sock_ = -1;
  std::int64_t first_wait_ms_ = -1;
  bool wait_logged_ = false;
  int last_errno_ = 0;
  Stage last_failed_stage_ = Stage::done;
};

}  // namespace fabriclab::guest
