#pragma once
// The lab's network namespaces (private to the rack library; lab.hpp describes the layout).
//
//   rack namespace  flab-ID-rack   lo up, bridge br0 198.18.0.1/24, the host ends h0, h1, ... of
//                                  every veth pair enslaved to br0
//   host namespace  flab-ID-hN     lo up, eth0 198.18.0.(N+2)/24, the other end of its veth pair
//
// With a guest network (docs/clients.md), also:
//   rack namespace  routes 198.19.N.0/24 via 198.18.0.(N+2) for every host N; a local route for
//                   the VIPs 198.18.1.0/24 (HAProxy binds any of them)
//   host namespace  bridge gbr0 198.19.N.1/24 + 169.254.169.254/32 (the guests' gateway, DHCP
//                   server and IMDS), IPv4 forwarding on (rack <-> guests)
//
// Both ends of every veth pair are created inside namespaces (`ip -n HOST link add eth0 type veth
// peer name hN netns RACK`): no interface or 198.18 address ever appears in the namespace the lab
// was started from. Everything goes through the `ip` binary of iproute2, run as a child with its
// exit code checked and its output carried in the error.

#include <string>
#include <vector>

#include "fabriclab/common/result.hpp"

namespace fabriclab::rack::netns {

inline constexpr const char* kBridgeAddress = "198.18.0.1";
inline constexpr int kMaxHosts = 250;  // 198.18.0.2 .. 198.18.0.251

inline constexpr const char* kGuestBridge = "gbr0";
inline constexpr const char* kImdsAddress = "169.254.169.254";
inline constexpr const char* kVipRange = "198.18.1.0/24";
inline constexpr const char* kLbHealthBind = "198.18.1.1:8404";

// Host N's address inside its namespace: 198.18.0.(N+2).
std::string host_address(int n);
// Host N's guest subnet 198.19.N.0/24 and its gateway 198.19.N.1 (on gbr0).
std::string guest_subnet(int n);
std::string guest_gateway(int n);

// A fresh lab id: 8 hex digits (namespace names flab-ID-rack, flab-ID-hN).
std::string new_id();
std::string rack_name(const std::string& id);
std::string host_name(const std::string& id, int n);

// True for the names this module makes (flab-<8 hex>-rack, flab-<8 hex>-h<N>): the only names it
// ever removes.
bool is_lab_name(const std::string& name);

// Creates the rack namespace and `hosts` host namespaces of lab `id`. Each namespace is appended
// to `created` the moment `ip netns add` made it, so after a failure part way the caller removes
// exactly what exists (and never a namespace of the same name it did not make: `ip netns add`
// refuses an existing name). Errors: not_found (no `ip`), permission_denied (EPERM: not root),
// otherwise the failing command and what `ip` printed.
// With `guest_network`, also the guest bridges, forwarding and routes above.
Status create(const std::string& id, int hosts, std::vector<std::string>& created,
              bool guest_network);

// Sets eth0 of lab namespace `name` (a host's link to the rack) down or up again: a partition.
// Errors as create's.
Status set_link(const std::string& name, bool up);

// Removes the named namespaces, last first (hosts before their rack). Names that are not lab
// names are refused; names already gone are fine. The error lists what could not be removed.
Status remove(const std::vector<std::string>& names);

// The processes whose network namespace is `name` (same namespace inode as /run/netns/NAME), this
// process left out.
std::vector<int> pids(const std::string& name);

// "/run/netns/NAME".
std::string path_of(const std::string& name);
bool exists(const std::string& name);

}  // namespace fabriclab::rack::netns
