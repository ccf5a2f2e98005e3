#pragma once
// The host agent's REST + websocket API (the wire contract the orchestrator's agent client uses).
//
//   GET    /healthz                          open
//   GET    /v1/host                          host info and state
//   GET    /v1/instances                     instances with state and health
//   POST   /v1/instances                     {service, index, ud, fd, image, memory_mib?, name?,
//   mode?,
//                                              drain?, drain_ms?}; instances show address, mac,
//                                              vm_id
//   GET    /v1/instances/{name}
//   POST   /v1/instances/{name}/start | /stop
//   DELETE /v1/instances/{name}
//   POST   /v1/operations                    {kind: host-os|guest-os|freeze, target,
//   memory_preserving?,
//                                              notice_ms?, freeze_ms?}  -> 202 with the job
//   GET    /v1/operations, /v1/operations/{id}
//   POST   /v1/operations/{id}/cancel        (a job shows its scheduled event's event_id)
//   GET    /v1/images/host, POST /v1/images/host {version, path, sha256}   (stage)
//   GET    /v1/images/guest
//   POST   /v1/faults                        {kind, instance, delay_ms?}: fault injection, only
//   with
//                                              --fault-injection (HostAgent::inject_fault)
//   WS     /v1/events[?since=SEQ]            snapshot, then deltas
//
// GETs and the event stream take the read or the control token; everything else the control token.
// The guests' Instance Metadata Service is a separate server without tokens: imds.hpp.

#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/common/http_server.hpp"

namespace fabriclab::agent {

void install_api(http::Server& server, HostAgent& agent, std::shared_ptr<EventFeed> feed,
                 const http::Limits& limits);

}  // namespace fabriclab::agent
