#pragma once
// The Instance Metadata Service a host serves its guests (docs/clients.md "IMDS"), following
// Azure's published contract so an app written for Azure runs unchanged:
//
//   GET  /metadata/scheduledevents?api-version=V     {"DocumentIncarnation", "Events"} for the
//   caller POST /metadata/scheduledevents?api-version=V     {"StartRequests": [{"EventId": "..."}]}
//   GET  /metadata/instance?api-version=V            {"compute": {...}, "network": {...}}
//   GET  /metadata/instance/compute?api-version=V    compute metadata (numbers as strings)
//   GET  /metadata/instance/compute/LEAF?api-version=V&format=text   the bare value
//   GET  /metadata/versions                          {"apiVersions": [...]} (no api-version needed)
//
// Every request, in this order: an `X-Forwarded-For` header -> 403; no `Metadata: true` -> 400;
// a source address that is no instance's guest address -> 403; more than 5 requests within any
// sliding second from one VM -> 429 (refused requests do not count, so a client that backs off
// gets through again one second after its fifth); no api-version -> 400, an api-version the path
// does not know -> 400, both with the path's three newest versions in "newest-versions". Errors
// are {"error": "..."} as Azure's. Unknown paths: 404 (the server's JSON error). Bodies are
// untrusted: at most 4 KiB, depth 4, 16 StartRequests, EventIds of at most 64 characters.
//
// The caller is known by its source address (the agent's lease table: HostAgent::instance_at),
// so the server must be reachable from the guests only directly (no proxy, no NAT).

#include <memory>

#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/common/http_server.hpp"

namespace fabriclab::agent {

inline constexpr int kImdsRequestsPerSecond = 5;

// Installs the routes (Access::open) on `server`; `agent` must outlive it. Give the server its
// own Tokens{} (no token is ever needed) and bind it where the guests reach it.
void install_imds(http::Server& server, HostAgent& agent);

}  // namespace fabriclab::agent
