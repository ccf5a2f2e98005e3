// The orchestrator's feed, recorded (feed_recorder.hpp).
//
// A WsClient read that times out leaves the connection unusable (Beast cannot resume a cancelled
// read), so the reader uses short reads and reconnects with ?since= after every quiet second: the
// feed's resume contract makes that lossless, and stop() is never held up for long.
#include "fabriclab/rack/feed_recorder.hpp"

#include <boost/json.hpp>

#include "fabriclab/common/http_client.hpp"

namespace fabriclab::rack {

using namespace std::chrono_literals;

FeedRecorder::FeedRecorder(const client::OrchestratorClient& api, size_t max_events)
    : api_(api), max_events_(max_events) {}

FeedRecorder::~FeedRecorder() { stop(0ms); }

bool FeedRecorder::start() {
  thread_ = std::thread([this] { run(); });
  for (int i = 0; i < 1000; ++i) {
    if (connections_.load() > 0) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

void FeedRecorder::stop(std::chrono::milliseconds settle) {
  if (!thread_.joinable()) return;
  std::this_thread::sleep_for(settle);
  stopping_ = true;
  thread_.join();
}

std::vector<json::object> FeedRecorder::events() const {
  std::lock_guard lock(mu_);
  return events_;
}

void FeedRecorder::run() {
  while (!stopping_) {
    int64_t since;
    {
      std::lock_guard lock(mu_);
      since = last_seq_;
    }
    std::string target =
        "/v1/events" + (since >= 0 ? "?since=" + std::to_string(since) : std::string());
    auto ws = http::WsClient::connect(api_.host(), api_.port(), target, api_.token(), 2s);
    if (!ws.ok()) {
      std::this_thread::sleep_for(100ms);  // the orchestrator is down (a fault) or restarting
      continue;
    }
    ++connections_;
    while (!stopping_) {
      auto msg = (*ws)->read(1s);
      if (!msg.ok()) break;  // quiet, closed or gone: reconnect with ?since=
      auto ev = parse_json_object(*msg, 64 << 20, 64, "event");
      if (!ev.ok()) continue;
      std::lock_guard lock(mu_);
      if (auto* s = ev->if_contains("seq"); s && s->is_int64()) last_seq_ = s->as_int64();
      if (events_.size() < max_events_) {
        events_.push_back(std::move(*ev));
      } else {
        ++dropped_;
      }
    }
    (*ws)->close();
  }
}

}  // namespace fabriclab::rack
