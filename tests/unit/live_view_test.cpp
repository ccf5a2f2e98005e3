// The terminal views (`fabriclab watch`, the drill command's progress): frames drawn in place
// through LiveRegion, replayed into a screen model (tests/screen_model.hpp) at several terminal
// sizes, must leave the screen showing the last frame once, as a single draw would; and the
// watch reducer (WatchModel) must keep the grid and the drill from the feed's events, with the
// countdown of a recovery window.

#include <gtest/gtest.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../screen_model.hpp"
#include "fabriclab/client/render.hpp"
#include "fabriclab/client/terminal.hpp"
#include "fabriclab/client/watch.hpp"
#include "fabriclab/common/json.hpp"

namespace {

using fabriclab::testing::ScreenModel;
namespace json = boost::json;
namespace client = fabriclab::client;

constexpr int64_t kNow = 1'700'000'000'000;  // Unix ms of the made-up drill
const std::string kHeader = "      FD0";     // the grid's header row starts so
const std::string kPrompt = "$ fabriclab watch\n";

// The default rack (6 hosts in 3 FDs; hello 1, web 2, worker 3) as the feed's snapshot shows it.
json::object snapshot_event() {
  json::array hosts, instances;
  for (int h = 0; h < 6; ++h) {
    hosts.push_back(json::object{{"id", "h" + std::to_string(h)},
                                 {"fd", h % 3},
                                 {"state", "Ready"},
                                 {"host_image", "host-v1"}});
  }
  struct I {
    const char* name;
    const char* host;
    int ud, fd;
  };
  for (const I& i :
       {I{"hello-0", "h0", 0, 0}, I{"worker-0", "h3", 0, 0}, I{"web-0", "h1", 0, 1},
        I{"worker-1", "h4", 1, 1}, I{"web-1", "h2", 1, 2}, I{"worker-2", "h5", 2, 2}}) {
    instances.push_back(json::object{{"name", i.name},
                                     {"host", i.host},
                                     {"ud", i.ud},
                                     {"fd", i.fd},
                                     {"healthy", true},
                                     {"status", "Running"}});
  }
  return {{"type", "snapshot"},
          {"seq", 0},
          {"state", json::object{{"hosts", hosts}, {"instances", instances}}}};
}

const std::vector<std::vector<std::string>> kBatches = {{"h1", "h5"}, {"h2", "h4"}, {"h0", "h3"}};
const std::map<std::string, std::vector<std::string>> kInstancesOn = {
    {"h0", {"hello-0"}},  {"h1", {"web-0"}},    {"h2", {"web-1"}},
    {"h3", {"worker-0"}}, {"h4", {"worker-1"}}, {"h5", {"worker-2"}}};

json::object drill_object(const std::string& state, const std::string& waiting_for,
                          int64_t waiting_until_ms) {
  json::array batches, hosts;
  for (int b = 0; b < static_cast<int>(kBatches.size()); ++b) {
    json::array hs;
    for (const auto& h : kBatches[static_cast<size_t>(b)]) {
      hs.push_back(json::value(h));
      hosts.push_back(json::object{{"host", h}, {"batch", b}, {"status", "pending"}});
    }
    batches.push_back(json::object{{"index", b}, {"hosts", hs}, {"status", "pending"}});
  }
  return {{"id", "d1-4242"},
          {"state", state},
          {"kind", "host-os"},
          {"target", "host-v2"},
          {"lower_bound", 3},
          {"batches", batches},
          {"hosts", hosts},
          {"notes",
           json::array{"notice raised from 0.9 s to 2.1 s so that draining guests leave rotation "
                       "before their host stops"}},
          {"waiting_for", waiting_for},
          {"waiting_until", waiting_until_ms > 0
                                ? fabriclab::rfc3339(std::chrono::system_clock::time_point(
                                      std::chrono::milliseconds(waiting_until_ms)))
                                : ""}};
}

// A host-os walk over the default rack as the feed tells it, event by event (~90 events).
std::vector<json::object> walk_events() {
  std::vector<json::object> ev{snapshot_event()};
  auto add = [&ev](json::object e) {
    e["seq"] = static_cast<int64_t>(ev.size());
    ev.push_back(std::move(e));
  };
  add({{"type", "drill.state"}, {"drill", drill_object("Running", "", 0)}});
  for (int b = 0; b < static_cast<int>(kBatches.size()); ++b) {
    add({{"type", "drill.batch"}, {"drill", "d1-4242"}, {"index", b}, {"status", "running"}});
    for (const char* step : {"notified", "stopping", "updating", "starting", "done"}) {
      for (const auto& h : kBatches[static_cast<size_t>(b)]) {
        add({{"type", "drill.host"},
             {"drill", "d1-4242"},
             {"host", h},
             {"batch", b},
             {"status", step}});
        bool down = std::string(step) != "notified" && std::string(step) != "done";
        add({{"type", "host.state"},
             {"host", h},
             {"state", down ? "Updating" : "Ready"},
             {"host_image", std::string(step) == "done" ? "host-v2" : "host-v1"}});
        for (const auto& i : kInstancesOn.at(h)) {
          add({{"type", "instance.state"},
               {"instance",
                json::object{
                    {"name", i}, {"healthy", !down}, {"status", down ? "Stopped" : "Running"}}}});
        }
      }
    }
    add({{"type", "drill.batch"}, {"drill", "d1-4242"}, {"index", b}, {"status", "done"}});
    if (b + 1 < static_cast<int>(kBatches.size())) {
      add({{"type", "drill.state"},
           {"drill", drill_object("Running", "recovery window after batch " + std::to_string(b + 1),
                                  kNow + 1800)}});
    }
  }
  add({{"type", "drill.state"}, {"drill", drill_object("Completed", "", 0)}});
  return ev;
}

// The frames `fabriclab watch` draws for walk_events().
std::vector<std::string> watch_frames() {
  client::WatchModel model;
  std::vector<std::string> frames;
  for (const auto& e : walk_events()) {
    model.apply(e);
    frames.push_back(model.render(kNow));
  }
  return frames;
}

// A terminal `columns` x `rows` with a prompt on it, on which frames are drawn in place.
struct Terminal {
  ScreenModel screen;
  std::ostringstream out;
  client::TerminalSize size;
  client::LiveRegion region;

  Terminal(int columns, int rows)
      : screen(columns, rows), size{columns, rows}, region(out, true, [this] {
          return std::optional(size);
        }) {
    screen.feed_as_tty(kPrompt);
  }
  void draw(const std::string& frame) {
    out.str("");
    region.draw(frame);
    screen.feed_as_tty(out.str());
  }
};

// What one frame drawn once, after the prompt, shows.
std::string single_draw(const std::string& frame, int columns, int rows) {
  Terminal t(columns, rows);
  t.draw(frame);
  return t.screen.text();
}

TEST(ScreenRows, CountWrappedLinesAndTheTrailingNewline) {
  EXPECT_EQ(client::screen_rows("", 10), 0);
  EXPECT_EQ(client::screen_rows("\n", 10), 1);
  EXPECT_EQ(client::screen_rows("abc\n", 10), 1);
  EXPECT_EQ(client::screen_rows("abc", 10), 1);
  EXPECT_EQ(client::screen_rows(std::string(10, 'x') + "\n", 10), 1);  // the '\n' of a full row
  EXPECT_EQ(client::screen_rows(std::string(11, 'x') + "\n", 10), 2);
  EXPECT_EQ(client::screen_rows(std::string(25, 'x') + "\n\nab\n", 10), 5);
  EXPECT_EQ(client::screen_rows("h\xc3\xa9llo\n", 5), 1);  // UTF-8: 5 columns, not 6 bytes
  EXPECT_EQ(client::screen_rows(std::string(25, 'x') + "\n", 0), 1);  // no width known: no wrapping
}

TEST(ScreenModelCheck, SeesTheHeaderLeftBehindWhenTheCursorGoesUpOneRowPerNewline) {
  // The renderer before the fix: up as many rows as the frame had '\n' (the hosts line of the
  // default rack is 151 columns, two rows at 140). The model must show the bug it is there for.
  auto frames = watch_frames();
  ScreenModel screen(140, 40);
  screen.feed_as_tty(kPrompt);
  int drawn = 0;
  for (size_t k = 0; k < 20; ++k) {
    std::string move = drawn > 0 ? "\x1b[" + std::to_string(drawn) + "F\x1b[J" : "";
    screen.feed_as_tty(move + frames[k]);
    drawn = static_cast<int>(std::count(frames[k].begin(), frames[k].end(), '\n'));
  }
  EXPECT_GE(screen.rows_starting_with(kHeader), 5) << screen.text();
}

TEST(LiveRegion, ManyRedrawsShowTheGridHeaderOnceAtEveryWidth) {
  auto frames = watch_frames();
  ASSERT_GT(frames.size(), 60u);
  // 140: the issue's tmux window (the hosts line wraps); 84 is the grid's own width; 30 wraps
  // every grid row onto three.
  for (int columns : {160, 140, 100, 84, 83, 60, 40, 30}) {
    SCOPED_TRACE("columns " + std::to_string(columns));
    Terminal t(columns, 40);
    for (size_t k = 0; k < frames.size(); ++k) {
      t.draw(frames[k]);
      ASSERT_EQ(t.screen.rows_starting_with(kHeader), 1) << "after frame " << k << ":\n"
                                                         << t.screen.text();
    }
    EXPECT_TRUE(t.screen.unknown().empty()) << t.screen.unknown().front();
    EXPECT_EQ(t.screen.text(), single_draw(frames.back(), columns, 40));
    EXPECT_EQ(t.screen.rows_starting_with("$ fabriclab watch"), 1)
        << "the prompt above the view is kept";
    EXPECT_EQ(t.screen.rows_starting_with("UD2"), 1) << t.screen.text();
    EXPECT_EQ(t.screen.rows_containing("drill d1-4242 Completed"), 1) << t.screen.text();
  }
}

TEST(LiveRegion, AFrameTallerThanTheScreenIsCutAndStillRedrawsInPlace) {
  auto frames = watch_frames();
  for (int columns : {140, 60}) {
    SCOPED_TRACE("columns " + std::to_string(columns));
    Terminal t(columns, 12);
    for (const auto& f : frames) {
      t.draw(f);
      ASSERT_EQ(t.screen.rows_starting_with(kHeader), 1) << t.screen.text();
      bool cut = client::screen_rows(f, columns) > 11;
      ASSERT_EQ(t.screen.rows_starting_with("... "), cut ? 1 : 0) << "a cut says so:\n"
                                                                  << t.screen.text();
    }
    EXPECT_EQ(t.screen.text(), single_draw(frames.back(), columns, 12));
    EXPECT_EQ(t.screen.rows_containing("more lines (a larger terminal shows them)"), 1)
        << t.screen.text();
  }
}

TEST(LiveRegion, ARowNarrowerThanOneLineStillShowsTheHeaderOnce) {
  // 20 x 6: the grid's header alone takes 5 rows; the frame is cut inside its first lines.
  auto frames = watch_frames();
  Terminal t(20, 6);
  for (const auto& f : frames) t.draw(f);
  EXPECT_EQ(t.screen.rows_starting_with(kHeader), 1) << t.screen.text();
  EXPECT_EQ(t.screen.text(), single_draw(frames.back(), 20, 6));
}

TEST(LiveRegion, AResizedWindowIsRedrawnFromTheTop) {
  auto frames = watch_frames();
  Terminal t(140, 40);
  for (size_t k = 0; k < 10; ++k) t.draw(frames[k]);
  for (auto [columns, rows] : {std::pair{100, 40}, std::pair{50, 30}, std::pair{150, 40}}) {
    t.screen.resize(columns, rows);
    t.size = {columns, rows};
    for (size_t k = 10; k < 20; ++k) {
      t.draw(frames[k]);
      ASSERT_EQ(t.screen.rows_starting_with(kHeader), 1) << columns << "x" << rows << ":\n"
                                                         << t.screen.text();
    }
  }
}

TEST(LiveRegion, WithoutATerminalEachFrameFollowsTheLastAndNothingMoves) {
  std::ostringstream out;
  client::LiveRegion region(out, false, nullptr);
  region.draw("a\nb\n");
  region.draw("c");
  EXPECT_EQ(out.str(), "a\nb\nc\n");
}

TEST(WatchModel, KeepsTheGridAndTheWalkFromTheFeed) {
  client::WatchModel model;
  EXPECT_EQ(model.last_seq(), -1);
  auto events = walk_events();
  for (size_t k = 0; k < 4; ++k)
    model.apply(events[k]);  // snapshot, drill, batch 1 running, h1 notified
  std::string v = model.render(kNow);
  EXPECT_NE(v.find("+hello-0@h0 +worker-0@h3"), std::string::npos) << v;
  EXPECT_NE(v.find("drill d1-4242 Running: host-os -> host-v2, 3 batches"), std::string::npos) << v;
  EXPECT_NE(v.find("batch  1/3 [------------------------] 0/2 running  h1:notified h5"),
            std::string::npos)
      << v;
  EXPECT_EQ(model.last_seq(), 3);
  model.apply(
      {{"type", "instance.state"},
       {"seq", 4},
       {"instance", json::object{{"name", "web-0"}, {"healthy", false}, {"status", "Stopped"}}}});
  model.apply({{"type", "host.state"}, {"seq", 5}, {"host", "h1"}, {"state", "Updating"}});
  v = model.render(kNow);
  EXPECT_NE(v.find("!web-0@h1"), std::string::npos) << v;
  EXPECT_NE(v.find("h1(FD1 Updating host-v1)"), std::string::npos) << v;
  EXPECT_NE(v.find("seq 5  last event host.state"), std::string::npos) << v;

  for (const auto& e : events) model.apply(e);
  v = model.render(kNow);
  EXPECT_NE(v.find("drill d1-4242 Completed"), std::string::npos) << v;
  EXPECT_EQ(v.find("waiting:"), std::string::npos) << v;
  EXPECT_NE(v.find("h5(FD2 Ready host-v2)"), std::string::npos) << v;
}

TEST(WatchModel, SaysWhatTheWalkWaitsForAndCountsTheRecoveryWindowDown) {
  client::WatchModel model;
  model.apply(snapshot_event());
  model.apply({{"type", "drill.state"}, {"drill", drill_object("Running", "", 0)}});
  EXPECT_FALSE(model.counting_down());
  model.apply({{"type", "drill.state"},
               {"drill", drill_object("Running", "recovery window after batch 1", kNow + 3500)}});
  EXPECT_TRUE(model.counting_down());
  EXPECT_NE(model.render(kNow).find("  waiting: recovery window after batch 1 (4 s left)\n"),
            std::string::npos)
      << model.render(kNow);
  EXPECT_NE(model.render(kNow + 3000).find("(1 s left)"), std::string::npos);
  EXPECT_NE(model.render(kNow + 9000).find("(0 s left)"), std::string::npos) << "never negative";
  model.apply({{"type", "drill.state"}, {"drill", drill_object("Running", "", 0)}});
  EXPECT_FALSE(model.counting_down());
  EXPECT_EQ(model.render(kNow).find("waiting:"), std::string::npos);
}

TEST(RenderDrill, AWaitWithoutACountdownShowsItsDeadlineAndOneWithoutDeadlineOnlyWhy) {
  auto d = drill_object("Running", "recovery window after batch 2", kNow + 1800);
  std::string v = client::render_drill(d);
  EXPECT_NE(v.find("  waiting: recovery window after batch 2 (until 2023-11-14T22:13:21.800Z)\n"),
            std::string::npos)
      << v;
  auto gate =
      drill_object("Running", "instance web-0 on host 'h1' is DOWN in the load balancer", 0);
  v = client::render_drill(gate, 24, kNow);
  EXPECT_NE(v.find("  waiting: instance web-0 on host 'h1' is DOWN in the load balancer\n"),
            std::string::npos)
      << v;
}

TEST(WatchModel, SkipsEventsThatLackWhatTheirTypeNeeds) {
  client::WatchModel model;
  for (const char* text :
       {R"({"seq":1})", R"({"type":7})", R"({"type":"snapshot"})",
        R"({"type":"snapshot","state":[]})", R"({"type":"instance.state","instance":"web-0"})",
        R"({"type":"drill.state","drill":null})", R"({"type":"drill.host","host":"h0"})",
        R"({"type":"host.state"})"}) {
    model.apply(json::parse(text).as_object());
  }
  model.apply({{"type", "drill.state"}, {"drill", drill_object("Running", "", 0)}});
  model.apply(json::parse(R"({"type":"drill.host","status":"done"})").as_object());
  model.apply(json::parse(R"({"type":"drill.batch","status":"done"})").as_object());
  std::string v = model.render(kNow);
  EXPECT_NE(v.find("drill d1-4242 Running"), std::string::npos) << v;
  EXPECT_NE(v.find("batch  1/3 [------------------------] 0/2 pending"), std::string::npos) << v;
}

}  // namespace
