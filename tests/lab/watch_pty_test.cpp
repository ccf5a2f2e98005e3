// `fabriclab watch` in a terminal: the real CLI under a pseudo-terminal 140 x 40 (the issue's
// tmux window) follows a simulated drill (a local rack on libvirt's test driver, started with
// `fabriclab lab up`, walked with `fabriclab drill --orchestrator`); what it writes is replayed
// through the screen model (tests/screen_model.hpp), as the terminal would show it. At no moment
// may the grid's header show twice, at the end the whole grid and the finished drill are there,
// and while the walk waits out a recovery window the view says so with a countdown.

#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "../screen_model.hpp"
#include "fabriclab/common/process.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;
using fabriclab::testing::ScreenModel;

constexpr int kColumns = 140;
constexpr int kRows = 40;
const std::string kHeader = "      FD0";

// The default rack and services on the test driver, with recovery windows of 4 s (4000 s at
// time scale 1/1000) so that the countdown is on the screen for a few redraws.
constexpr const char* kSpec =
    "name: watch-pty\n"
    "hypervisor: test\n"
    "rack: {hosts: 6, fault_domains: 3, capacity: 4}\n"
    "services:\n"
    "  - {name: hello, instances: 1, ud_count: 5, image: v1}\n"
    "  - {name: web, instances: 2, ud_count: 5, image: v1}\n"
    "  - {name: worker, instances: 3, ud_count: 5, image: v1}\n"
    "update: {kind: host-os, target: host-v2}\n"
    "policies: {time_scale: 0.001, recovery_s: 4000, notice_s: 900, healthy_timeout_s: 600}\n";

fabriclab::CommandResult cli(std::vector<std::string> args, std::chrono::milliseconds timeout) {
  args.insert(args.begin(), FABRICLAB_CLI_BIN);
  auto r = fabriclab::run_command(args, timeout);
  if (!r.ok()) return {-1, fabriclab::describe_command(args) + ": " + r.error().message, false};
  return *r;
}

// `fabriclab watch` on a new pseudo-terminal of kColumns x kRows; the child's pid and the
// terminal's master side.
struct PtyChild {
  pid_t pid = -1;
  int master = -1;
};

PtyChild start_watch(const std::string& lab_dir) {
  winsize ws{};
  ws.ws_col = kColumns;
  ws.ws_row = kRows;
  PtyChild c;
  c.pid = forkpty(&c.master, nullptr, nullptr, &ws);
  if (c.pid == 0) {
    setenv("TERM", "xterm", 1);
    execl(FABRICLAB_CLI_BIN, FABRICLAB_CLI_BIN, "watch", "--lab-dir", lab_dir.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  return c;
}

void stop(PtyChild& c) {
  if (c.pid > 0) {
    kill(c.pid, SIGTERM);
    for (int i = 0; i < 50 && waitpid(c.pid, nullptr, WNOHANG) == 0; ++i)
      std::this_thread::sleep_for(100ms);
    if (kill(c.pid, 0) == 0) {
      kill(c.pid, SIGKILL);
      waitpid(c.pid, nullptr, 0);
    }
    c.pid = -1;
  }
  if (c.master >= 0) close(c.master);
  c.master = -1;
}

class WatchPty : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fabriclab::testing::make_temp_dir("flwp");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
    std::ofstream(dir_ + "/spec.yaml") << kSpec;
  }
  void TearDown() override {
    stop(watch_);
    if (fs::exists(dir_ + "/lab/lab.json")) cli({"lab", "down", "--lab-dir", dir_ + "/lab"}, 60s);
    if (!HasFailure()) fs::remove_all(dir_);
  }

  std::vector<std::string> images_args() const {
    const char* images = std::getenv("FABRICLAB_IMAGES_DIR");
    if (!images || !*images) return {};
    return {"--images", images};
  }

  std::string dir_;
  PtyChild watch_;
};

TEST_F(WatchPty, AWalkRedrawsTheGridInPlaceAndCountsTheRecoveryWindowDown) {
  std::vector<std::string> up = {"lab",       "up",         "--spec", dir_ + "/spec.yaml",
                                 "--lab-dir", dir_ + "/lab"};
  for (const auto& a : images_args()) up.push_back(a);
  auto upped = cli(up, 120s);
  ASSERT_EQ(upped.exit_code, 0) << upped.output;
  auto status = cli({"lab", "status", "--lab-dir", dir_ + "/lab"}, 30s);
  ASSERT_EQ(status.exit_code, 0) << status.output;
  std::string url(json::parse(status.output).at("orchestrator_url").as_string());

  watch_ = start_watch(dir_ + "/lab");
  ASSERT_GT(watch_.pid, 0);
  ScreenModel screen(kColumns, kRows);
  std::string raw;
  // Reads what the terminal received for up to `d`, replaying it; true while the watch runs.
  int most_headers = 0;
  bool saw_countdown = false;
  std::string countdown_screen;
  auto pump = [&](std::chrono::milliseconds d) {
    auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{watch_.master, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      ssize_t n = read(watch_.master, buf, sizeof buf);
      if (n <= 0) return false;  // EIO: the watch ended
      raw.append(buf, static_cast<size_t>(n));
      screen.feed(std::string_view(buf, static_cast<size_t>(n)));
      most_headers = std::max(most_headers, screen.rows_starting_with(kHeader));
      if (!saw_countdown && screen.rows_containing("waiting: recovery window after batch") == 1 &&
          screen.rows_containing(" s left)") == 1) {
        saw_countdown = true;
        countdown_screen = screen.text();
      }
    }
    return true;
  };
  // The snapshot first: the grid of the rack before the walk.
  for (int i = 0; i < 100 && screen.rows_containing("no drill") == 0; ++i)
    ASSERT_TRUE(pump(100ms)) << raw;
  ASSERT_EQ(screen.rows_containing("no drill"), 1) << screen.text();

  auto drill = std::async(std::launch::async, [&] {
    return cli({"drill", "--spec", dir_ + "/spec.yaml", "--orchestrator", url, "--token-file",
                dir_ + "/lab/token"},
               180s);
  });
  while (drill.wait_for(0s) != std::future_status::ready) ASSERT_TRUE(pump(200ms)) << screen.text();
  auto drilled = drill.get();
  ASSERT_EQ(drilled.exit_code, 0) << drilled.output;
  // The last events reach the watch within a moment of the drill's end.
  for (int i = 0; i < 50 && screen.rows_containing(" Completed: host-os -> host-v2") == 0; ++i)
    pump(100ms);
  pump(500ms);

  EXPECT_EQ(most_headers, 1) << "the grid's header was on the screen more than once:\n"
                             << screen.text();
  EXPECT_EQ(screen.rows_starting_with(kHeader), 1) << screen.text();
  for (const char* row :
       {"UD0   +hello-0@h0", "UD1", "UD2", "hosts: h0(FD0 Ready host-v2)", "  batch  3/3 [#####"}) {
    EXPECT_EQ(screen.rows_starting_with(row), 1) << row << "\n" << screen.text();
  }
  EXPECT_EQ(screen.rows_containing(" Completed: host-os -> host-v2, 3 batches"), 1)
      << screen.text();
  EXPECT_EQ(screen.rows_containing("waiting:"), 0) << "no wait once the walk is over:\n"
                                                   << screen.text();
  EXPECT_TRUE(saw_countdown)
      << "no 'waiting: recovery window after batch N (K s left)' was ever on the screen";
  EXPECT_TRUE(screen.unknown().empty()) << screen.unknown().front();
  // The countdown's own frame was whole too.
  EXPECT_NE(countdown_screen.find("UD2"), std::string::npos) << countdown_screen;
}

}  // namespace
