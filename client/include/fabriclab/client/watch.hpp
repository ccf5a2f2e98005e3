#pragma once
// What `fabriclab watch` shows, kept from the orchestrator's event feed (GET /v1/events): the
// "snapshot" event's hosts, instances and drill, then each delta applied to them (instance.state,
// host.state, host.registered, drill.state, drill.host, drill.batch; other types only move the
// feed's position). Pure: no I/O, so the view can be tested event by event.

#include <cstdint>
#include <string>

#include "fabriclab/common/json.hpp"

namespace fabriclab::client {

class WatchModel {
 public:
  // Applies one event. An event that lacks what its type needs is skipped, never thrown on.
  void apply(const json::object& event);

  // The view: the UD x FD grid (render_grid), the drill (render_drill, counting down against
  // `now_ms`, Unix ms) or "no drill", and a last line with the feed's position.
  std::string render(int64_t now_ms) const;

  // The last event's sequence number (-1: none yet), for ?since= when the feed reconnects.
  int64_t last_seq() const { return last_seq_; }

  // The drill waits with a deadline: the view changes each second without an event.
  bool counting_down() const;

 private:
  json::array hosts_, instances_;
  json::object drill_;
  int64_t last_seq_ = -1;
  std::string last_type_;
};

}  // namespace fabriclab::client
