#pragma once
// The orchestrator's REST + websocket API over a Controller (the routes are listed in README.md,
// "Orchestrator API"). Same rules as the agent's API: bearer tokens (read / control), body and
// depth limits, errors as {"error": {"code", "message"}} naming the field.

#include <memory>

#include "fabriclab/common/http_server.hpp"
#include "fabriclab/orchestrator/controller.hpp"

namespace fabriclab::orchestrator {

void install_controller_api(http::Server& server, Controller& controller,
                            std::shared_ptr<EventFeed> feed, const http::Limits& limits);

}  // namespace fabriclab::orchestrator
