// The terminal renderers of the orchestrator's views: a drill's progress (its batches as a bar,
// its hosts, what it waits for) and the UD x FD grid of instances, as plain text. Pure functions
// of the JSON the REST API and the event feed give (GET /v1/drills/{id}, /v1/instances,
// /v1/hosts); used by `fabriclab drill`, `fabriclab status` and `fabriclab watch`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "fabriclab/common/json.hpp"

namespace fabriclab::client {

// A drill's progress: state, batch bar `width` wide, current step, hosts; while the walk waits
// with a deadline (`waiting_until`) it says how long is left against `now_ms` (Unix ms).
std::string render_drill(const json::object& drill, int width = 24,
                         std::optional<int64_t> now_ms = std::nullopt);

// The UD x FD grid: one cell per update domain and fault domain with its instances.
std::string render_grid(const json::array& instances, const json::array& hosts);

}  // namespace fabriclab::client
