// fabriclab watch: the grid and the drill, live from the websocket event feed.
#include "fabriclab/client/watch.hpp"

#include <unistd.h>

#include <boost/json.hpp>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <stop_token>
#include <thread>

#include "commands.hpp"
#include "fabriclab/client/terminal.hpp"
#include "fabriclab/common/http_client.hpp"

namespace fabriclab::cli {

// The live grid from the websocket: the snapshot, then every delta applied to it (WatchModel),
// redrawn in place on a terminal (LiveRegion). While the drill waits out a window with a deadline
// a ticker redraws the countdown each second; the feed and the ticker share the model under `mu`.
int run_watch(const Target& t, bool once) {
  auto api = connect_target(t);
  if (!api.ok()) return fail(exit_for(api.error()), api.error().message);
  const bool tty = isatty(STDOUT_FILENO);
  client::WatchModel model;
  client::LiveRegion region(std::cout, tty, [] { return client::terminal_size(STDOUT_FILENO); });
  std::mutex mu;
  std::jthread ticker;  // declared last: stopped and joined before what it draws goes
  if (tty && !once) {
    ticker = std::jthread([&](std::stop_token stop) {
      std::condition_variable_any cv;  // nothing notifies it: a sleep that a stop ends early
      std::unique_lock lock(mu);
      for (;;) {
        cv.wait_for(lock, stop, std::chrono::seconds(1), [] { return false; });
        if (stop.stop_requested()) return;
        if (model.counting_down()) region.draw(model.render(unix_now_ms()));
      }
    });
  }
  for (int attempt = 0;; ++attempt) {
    int64_t since = model.last_seq();
    std::string target =
        "/v1/events" + (since >= 0 ? "?since=" + std::to_string(since) : std::string());
    auto ws = http::WsClient::connect(api->host(), api->port(), target, api->token());
    if (!ws.ok()) {
      if (attempt > 30) return fail(kLabError, ws.error().message);
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    attempt = 0;
    for (;;) {
      auto msg = (*ws)->read(std::chrono::hours(24));
      if (!msg.ok()) break;  // reconnect with ?since=
      auto ev = parse_json_object(*msg, 64 << 20, 64, "event");
      if (!ev.ok()) continue;
      std::lock_guard lock(mu);
      model.apply(*ev);
      region.draw(model.render(unix_now_ms()));
      if (once) return 0;
    }
  }
}

}  // namespace fabriclab::cli
