#pragma once
// The guest network's addressing (docs/clients.md "Addresses"): a host's guests live in one /24,
// `A.B.C.0/24`, with the gateway (the host's bridge, also the DHCP server) at `.1`. Guest slot k
// (0-based, the lowest free one at creation) gets `A.B.C.(10+k)` and the MAC
// `52:54:00:c6:CC:KK` with CC = C and KK = 10+k in hex, so MACs are unique across a rack whose
// hosts have distinct third octets. Slots run .10 .. .250.
//
// The DHCP side: one dnsmasq host file per instance (`NAME.conf`, one line `MAC,IP,NAME`) in a
// directory that dnsmasq watches (`--dhcp-hostsdir`); written atomically so dnsmasq never reads a
// half-written file.

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "fabriclab/common/result.hpp"

namespace fabriclab::agent {

inline constexpr int kFirstGuestHost = 10;  // .10 is slot 0
inline constexpr int kGuestSlots = 241;     // .10 .. .250

class GuestSubnet {
 public:
  // Accepts exactly "A.B.C.0/24" (decimal octets without leading zeros); the error names
  // `field` ("--guest-subnet must be A.B.C.0/24: '10.0.0.0/16'").
  static Result<GuestSubnet> parse(std::string_view text, std::string_view field = "guest_subnet");

  std::string network() const;  // "A.B.C.0"
  std::string gateway() const;  // "A.B.C.1"
  std::string text() const;     // "A.B.C.0/24"
  // Slot k's address and MAC; k in 0..kGuestSlots-1.
  std::string address(int slot) const;
  std::string mac(int slot) const;
  // The slot of an address of this subnet (nullopt for anything else).
  std::optional<int> slot_of(std::string_view address) const;

 private:
  GuestSubnet(int a, int b, int c) : a_(a), b_(b), c_(c) {}
  int a_, b_, c_;
};

// The lowest slot not in `used`; invalid_state when all kGuestSlots are taken.
Result<int> lowest_free_slot(const std::set<int>& used);

// A random (version 4) GUID in lower case, "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".
std::string new_guid();

// Writes `dir`/`name`.conf = "MAC,IP,NAME\n" atomically (temp file, fsync, rename).
Status write_dhcp_host_file(const std::string& dir, const std::string& name, const std::string& mac,
                            const std::string& address);
// Removes `dir`/`name`.conf; a file that is not there is fine.
Status remove_dhcp_host_file(const std::string& dir, const std::string& name);

}  // namespace fabriclab::agent
