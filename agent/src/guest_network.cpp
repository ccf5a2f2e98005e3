#include "fabriclab/agent/guest_network.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "fabriclab/agent/host_state.hpp"

namespace fabriclab::agent {

namespace {

// A decimal octet without leading zeros ("0".."255").
std::optional<int> octet(std::string_view s) {
  if (s.empty() || s.size() > 3 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  if (v > 255) return std::nullopt;
  return v;
}

}  // namespace

Result<GuestSubnet> GuestSubnet::parse(std::string_view text, std::string_view field) {
  auto bad = [&] {
    return make_error(Condition::invalid_argument,
                      fmt::format("{} must be A.B.C.0/24: '{}'", field, text.substr(0, 64)));
  };
  if (text.size() > 18 || !text.ends_with(".0/24")) return bad();
  std::string_view head = text.substr(0, text.size() - 5);
  int parts[3];
  for (int i = 0; i < 3; ++i) {
    auto dot = head.find('.');
    if ((i < 2) != (dot != std::string_view::npos)) return bad();
    auto o = octet(head.substr(0, dot));
    if (!o) return bad();
    parts[i] = *o;
    head = dot == std::string_view::npos ? std::string_view() : head.substr(dot + 1);
  }
  return GuestSubnet(parts[0], parts[1], parts[2]);
}

std::string GuestSubnet::network() const { return fmt::format("{}.{}.{}.0", a_, b_, c_); }
std::string GuestSubnet::gateway() const { return fmt::format("{}.{}.{}.1", a_, b_, c_); }
std::string GuestSubnet::text() const { return network() + "/24"; }

std::string GuestSubnet::address(int slot) const {
  return fmt::format("{}.{}.{}.{}", a_, b_, c_, kFirstGuestHost + slot);
}

std::string GuestSubnet::mac(int slot) const {
  return fmt::format("52:54:00:c6:{:02x}:{:02x}", c_, kFirstGuestHost + slot);
}

std::optional<int> GuestSubnet::slot_of(std::string_view address) const {
  const std::string prefix = fmt::format("{}.{}.{}.", a_, b_, c_);
  if (!address.starts_with(prefix)) return std::nullopt;
  auto host = octet(address.substr(prefix.size()));
  if (!host || *host < kFirstGuestHost || *host >= kFirstGuestHost + kGuestSlots)
    return std::nullopt;
  return *host - kFirstGuestHost;
}

Result<int> lowest_free_slot(const std::set<int>& used) {
  for (int k = 0; k < kGuestSlots; ++k) {
    if (!used.count(k)) return k;
  }
  return make_error(Condition::invalid_state, "no free guest address: all " +
                                                  std::to_string(kGuestSlots) +
                                                  " slots of the guest subnet are taken");
}

std::string new_guid() {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  uint64_t hi = gen(), lo = gen();
  hi = (hi & ~0xF000ULL) | 0x4000ULL;              // version 4
  lo = (lo & ~(0xC0ULL << 56)) | (0x80ULL << 56);  // variant 10xx
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF,
                     hi & 0xFFFF, lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

Status write_dhcp_host_file(const std::string& dir, const std::string& name, const std::string& mac,
                            const std::string& address) {
  return write_file_atomically(dir + "/" + name + ".conf", mac + "," + address + "," + name + "\n");
}

Status remove_dhcp_host_file(const std::string& dir, const std::string& name) {
  const std::string path = dir + "/" + name + ".conf";
  if (::remove(path.c_str()) != 0 && errno != ENOENT) {
    return make_error(Condition::transient, "cannot remove " + path + ": " + std::strerror(errno));
  }
  return {};
}

}  // namespace fabriclab::agent
