#include "network.hpp"

#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "boot_env.hpp"

namespace fabriclab::guest {
namespace {

constexpr std::int64_t kInterfaceWarnMs = 5000;

sockaddr_in make_sockaddr(std::uint32_t address) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(address);
  return sa;
}

void copy_name(char (&dest)[IFNAMSIZ], const std::string& name) {
  std::memset(dest, 0, IFNAMSIZ);
  std::memcpy(dest, name.data(), std::min<std::size_t>(name.size(), IFNAMSIZ - 1));
}

}  // namespace

std::optional<std::uint32_t> parse_ipv4(std::string_view text) {
  std::uint32_t result = 0;
  const char* p = text.data();
  const char* end = text.data() + text.size();
  for (int part = 0; part < 4; ++part) {
    if (part > 0) {
      if (p == end || *p != '.') return std::nullopt;
      ++p;
    }
    // Decimal only, 1-3 digits, no leading zeros (inet_aton would read "010" as octal).
    const char* start = p;
    unsigned value = 0;
    auto [next, ec] = std::from_chars(p, end, value);
    if (ec != std::errc{} || next == start || next - start > 3 || value > 255) return std::nullopt;
    if (next - start > 1 && *start == '0') return std::nullopt;
    result = (result << 8) | value;
    p = next;
  }
  if (p != end) return std::nullopt;
  return result;
}

std::uint32_t netmask_of(int prefix) {
  return prefix <= 0 ? 0 : prefix >= 32 ? 0xffffffffu : ~((1u << (32 - prefix)) - 1);
}

std::string ipv4_to_string(std::uint32_t address) {
  return std::to_string(address >> 24) + "." + std::to_string((address >> 16) & 255) + "." +
         std::to_string((address >> 8) & 255) + "." + std::to_string(address & 255);
}

std::optional<Ipv4Cidr> parse_ipv4_cidr(std::string_view text) {
  auto slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto address = parse_ipv4(text.substr(0, slash));
  std::string_view prefix_text = text.substr(slash + 1);
  int prefix = 0;
  auto [end, ec] =
      std::from_chars(prefix_text.data(), prefix_text.data() + prefix_text.size(), prefix);
  if (!address || ec != std::errc{} || end != prefix_text.data() + prefix_text.size() ||
      prefix_text.empty() || prefix_text.size() > 2 || prefix < 1 || prefix > 30) {
    return std::nullopt;
  }
  const std::uint32_t mask = netmask_of(prefix);
  const std::uint32_t host = *address & ~mask;
  if (host == 0 || host == ~mask) return std::nullopt;  // network or broadcast address
  const std::uint32_t first = *address >> 24;
  if (first == 0 || first == 127 || first >= 224) return std::nullopt;
  return Ipv4Cidr{*address, prefix};
}

std::optional<NetConfig> make_net_config(std::string_view ip, std::string_view gw,
                                         std::string& error) {
  error.clear();
  if (ip.empty() && gw.empty()) return std::nullopt;
  if (ip.empty() || gw.empty()) {
    error = ip.empty() ? "fabriclab.gw given without fabriclab.ip"
                       : "fabriclab.ip given without fabriclab.gw";
    return std::nullopt;
  }
  auto cidr = parse_ipv4_cidr(ip);
  if (!cidr) {
    error = "fabriclab.ip must be A.B.C.D/NN (NN 1..30, a unicast host address)";
    return std::nullopt;
  }
  auto gateway = parse_ipv4(gw);
  const std::uint32_t mask = netmask_of(cidr->prefix);
  if (!gateway || (*gateway & mask) != (cidr->address & mask) || *gateway == cidr->address ||
      (*gateway & ~mask) == 0 || (*gateway & ~mask) == ~mask) {
    error =
        "fabriclab.gw must be a host address in the subnet of fabriclab.ip, not the address "
        "itself";
    return std::nullopt;
  }
  return NetConfig{cidr->address, cidr->prefix, *gateway, "eth0"};
}

NetworkBringUp::~NetworkBringUp() {
  if (sock_ >= 0) ::close(sock_);
}

bool NetworkBringUp::fail(const char* what, int err) {
  // Log a failing step once per distinct (stage, errno), not on every retry.
  if (last_failed_stage_ != stage_ || last_errno_ != err) {
    log("network: %s failed: %s (will retry)", what, std::strerror(err));
    last_failed_stage_ = stage_;
    last_errno_ = err;
  }
  return false;
}

bool NetworkBringUp::set_flags_up(const char* name) {
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (::ioctl(sock_, SIOCGIFFLAGS, &ifr) != 0) return false;
  if (ifr.ifr_flags & IFF_UP) return true;
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  return ::ioctl(sock_, SIOCSIFFLAGS, &ifr) == 0;
}

bool NetworkBringUp::step(std::int64_t now_ms) {
  if (stage_ == Stage::done) return true;
  if (sock_ < 0) {
    sock_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock_ < 0) return fail("socket(AF_INET)", errno);
  }
  if (stage_ == Stage::loopback) {
    if (!set_flags_up("lo")) return fail("bringing lo up", errno);
    log("network: lo up");
    stage_ = Stage::wait_interface;
  }
  const std::string& name = config_.interface;
  if (stage_ == Stage::wait_interface) {
    ifreq ifr{};
    copy_name(ifr.ifr_name, name);
    if (::ioctl(sock_, SIOCGIFINDEX, &ifr) != 0) {
      if (first_wait_ms_ < 0) first_wait_ms_ = now_ms;
      if (!wait_logged_ && now_ms - first_wait_ms_ >= kInterfaceWarnMs) {
        log("network: %s has not appeared after %lld ms (is there a virtio NIC?); still waiting",
            name.c_str(), static_cast<long long>(now_ms - first_wait_ms_));
        wait_logged_ = true;
      }
      return false;
    }
    log("network: %s present (ifindex %d)", name.c_str(), ifr.ifr_ifindex);
    stage_ = Stage::address;
  }
  if (stage_ == Stage::address) {
    ifreq ifr{};
    copy_name(ifr.ifr_name, name);
    sockaddr_in sa = make_sockaddr(config_.address);
    std::memcpy(&ifr.ifr_addr, &sa, sizeof sa);
    if (::ioctl(sock_, SIOCSIFADDR, &ifr) != 0) return fail("SIOCSIFADDR", errno);
    sa = make_sockaddr(netmask_of(config_.prefix));
    std::memcpy(&ifr.ifr_netmask, &sa, sizeof sa);
    if (::ioctl(sock_, SIOCSIFNETMASK, &ifr) != 0) return fail("SIOCSIFNETMASK", errno);
    if (!set_flags_up(name.c_str())) return fail("bringing the interface up", errno);
    log("network: %s up with %s/%d", name.c_str(), ipv4_to_string(config_.address).c_str(),
        config_.prefix);
    stage_ = Stage::route;
  }
  if (stage_ == Stage::route) {
    rtentry route{};
    sockaddr_in any = make_sockaddr(0);
    sockaddr_in gateway = make_sockaddr(config_.gateway);
    std::memcpy(&route.rt_dst, &any, sizeof any);
    std::memcpy(&route.rt_genmask, &any, sizeof any);
    std::memcpy(&route.rt_gateway, &gateway, sizeof gateway);
    route.rt_flags = RTF_UP | RTF_GATEWAY;
    char device[IFNAMSIZ];
    copy_name(device, name);
    route.rt_dev = device;
    if (::ioctl(sock_, SIOCADDRT, &route) != 0 && errno != EEXIST) {
      return fail("adding the default route", errno);
    }
    log("network: default route via %s dev %s; network ready",
        ipv4_to_string(config_.gateway).c_str(), name.c_str());
    stage_ = Stage::done;
    ::close(sock_);
    sock_ = -1;
  }
  return true;
}

}  // namespace fabriclab::guest
