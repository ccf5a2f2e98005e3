#pragma once
// Records an orchestrator's event feed (docs/events.md) on a thread of its own, for the fault
// executor (what the system did about a fault) and the chaos checkers (which trust the feed, not
// the orchestrator's conclusions). It reconnects with ?since=LAST after the connection drops (an
// orchestrator killed and restarted on the same port), so nothing published while it was up is
// lost; a resync snapshot after a gap is recorded like any event.
//
// Bounded: at most `max_events` events are kept (later ones are counted in dropped()).

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/json.hpp"

namespace fabriclab::rack {

class FeedRecorder {
 public:
  explicit FeedRecorder(const client::OrchestratorClient& api, size_t max_events = 200000);
  ~FeedRecorder();
  FeedRecorder(const FeedRecorder&) = delete;
  FeedRecorder& operator=(const FeedRecorder&) = delete;

  // Connects (the first message is the snapshot) and records until stop(). False when the first
  // connection is not up within 10 s (the thread keeps trying).
  bool start();
  // Waits up to `settle` for events published before now to arrive, then stops.
  void stop(std::chrono::milliseconds settle = std::chrono::milliseconds(500));

  std::vector<json::object> events() const;
  size_t dropped() const { return dropped_.load(); }
  int connections() const { return connections_.load(); }

 private:
  void run();
  client::OrchestratorClient api_;
  size_t max_events_;
  mutable std::mutex mu_;
  std::vector<json::object> events_;
  int64_t last_seq_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::atomic<size_t> dropped_{0};
  std::thread thread_;
};

}  // namespace fabriclab::rack
