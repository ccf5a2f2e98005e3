// spawn_child, wait_listening and the stop functions (child_process.hpp) against real programs
// (/bin/sh, sleep): what a caller of each sees when the child listens, says nothing, dies,
// cannot be executed, ignores SIGTERM or is started again on the same output file.

#include "fabriclab/common/child_process.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "process_helpers.hpp"
#include "temp_dir.hpp"
#include "wait_until.hpp"

namespace fabriclab {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using testing::contains;
using testing::no_children;

class ChildProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fabriclab::testing::make_temp_dir("flcp");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  SpawnOptions options(const std::string& name) {
    SpawnOptions o;
    o.name = name;
    o.stdout_path = dir_ + "/" + name + ".out";
    o.stderr_path = dir_ + "/" + name + ".log";
    o.die_with_parent = true;
    return o;
  }
  Result<ChildProcess> sh(const std::string& script, const SpawnOptions& o) {
    return spawn_child({"/bin/sh", "-c", script}, o);
  }

  std::string dir_;
};

TEST_F(ChildProcessTest, WaitListeningReturnsTheAddressTheProgramPrinted) {
  auto c = sh("echo starting; echo 'listening 127.0.0.1:4321'; exec sleep 30", options("svc"));
  ASSERT_TRUE(c.ok()) << c.error().describe();
  auto at = wait_listening(*c, 10s);
  ASSERT_TRUE(at.ok()) << at.error().describe();
  EXPECT_EQ(at->host, "127.0.0.1");
  EXPECT_EQ(at->port, 4321);
  EXPECT_EQ(at->str(), "127.0.0.1:4321");
  EXPECT_TRUE(process_alive(c->pid));
  stop_process(c->pid, 5s);
  EXPECT_FALSE(process_alive(c->pid));
  EXPECT_TRUE(no_children()) << "stopped children are reaped";
}

TEST_F(ChildProcessTest, AnotherProgramsListeningLineIsNotOurs) {
  // The agent prints "imds listening ..." too; only a line that begins with "listening " counts,
  // and a bad endpoint is no answer.
  auto c =
      sh("echo 'imds listening 169.254.169.254:80'; echo 'listening nowhere'; "
         "echo 'listening 10.0.0.1:99999'; echo 'listening [::1]:8080'; exec sleep 30",
         options("svc"));
  ASSERT_TRUE(c.ok());
  auto at = wait_listening(*c, 10s);
  ASSERT_TRUE(at.ok()) << at.error().describe();
  EXPECT_EQ(at->host, "[::1]");
  EXPECT_EQ(at->port, 8080);
  kill_process(c->pid);
}

TEST_F(ChildProcessTest, AProgramThatExitsFirstIsNamedWithItsExitCodeAndWhatItPrinted) {
  auto c = sh("echo 'loading config'; echo 'bad flag --x' >&2; exit 3", options("orchestrator"));
  ASSERT_TRUE(c.ok());
  auto at = wait_listening(*c, 10s);
  ASSERT_FALSE(at.ok());
  EXPECT_EQ(at.error().condition, Condition::internal);
  const std::string& m = at.error().message;
  EXPECT_TRUE(
      contains(m, "orchestrator exited (exit code 3) before it printed 'listening HOST:PORT'"))
      << m;
  EXPECT_TRUE(contains(m, "loading config")) << m;
  EXPECT_TRUE(contains(m, "bad flag --x")) << m;
  EXPECT_TRUE(no_children());
}

TEST_F(ChildProcessTest, AProgramThatSaysNothingTimesOutAndIsLeftToItsCaller) {
  auto c = sh("exec sleep 30", options("quiet"));
  ASSERT_TRUE(c.ok());
  auto start = Clock::now();
  auto at = wait_listening(*c, 300ms);
  ASSERT_FALSE(at.ok());
  EXPECT_EQ(at.error().condition, Condition::timeout);
  EXPECT_TRUE(
      contains(at.error().message, "quiet did not print 'listening HOST:PORT' within 300 ms"))
      << at.error().message;
  EXPECT_TRUE(contains(at.error().message, "printed nothing")) << at.error().message;
  EXPECT_GE(Clock::now() - start, 300ms);
  EXPECT_TRUE(process_alive(c->pid));
  kill_process(c->pid);
  EXPECT_FALSE(process_alive(c->pid));
  EXPECT_TRUE(no_children());
}

TEST_F(ChildProcessTest, CancelledEndsTheWait) {
  auto c = sh("exec sleep 30", options("quiet"));
  ASSERT_TRUE(c.ok());
  int polls = 0;
  auto at = wait_listening(*c, 30s, [&] { return ++polls > 2; });
  ASSERT_FALSE(at.ok());
  EXPECT_EQ(at.error().condition, Condition::cancelled);
  kill_process(c->pid);
}

TEST_F(ChildProcessTest, AProgramThatCannotBeExecutedSaysSoOnItsStderr) {
  auto c = spawn_child({dir_ + "/no-such-program", "--flag"}, options("ghost"));
  ASSERT_TRUE(c.ok()) << c.error().describe();
  auto at = wait_listening(*c, 10s);
  ASSERT_FALSE(at.ok());
  EXPECT_TRUE(contains(at.error().message, "exit code 127")) << at.error().message;
  EXPECT_TRUE(contains(at.error().message, "cannot execute " + dir_ + "/no-such-program"))
      << at.error().message;
}

TEST_F(ChildProcessTest, ARestartAppendingToTheSameFileReadsItsOwnLine) {
  auto o = options("agent");
  o.append_stdout = true;
  auto first = sh("echo 'listening 127.0.0.1:1111'", o);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(wait_listening(*first, 10s).ok());
  while (process_alive(first->pid)) std::this_thread::sleep_for(10ms);
  auto second = sh("sleep 0.2; echo 'listening 127.0.0.1:2222'; exec sleep 30", o);
  ASSERT_TRUE(second.ok());
  EXPECT_GT(second->stdout_offset, 0u);
  auto at = wait_listening(*second, 10s);
  ASSERT_TRUE(at.ok()) << at.error().describe();
  EXPECT_EQ(at->port, 2222) << "not the first run's line";
  kill_process(second->pid);
}

TEST_F(ChildProcessTest, TheChildGetsNoDescriptorOfOursAndNoBlockedSignal) {
  // No O_CLOEXEC: exec alone would pass it on. A high number, apart from the descriptor the
  // shell's glob opens to read the directory.
  int opened = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(opened, 0);
  const int leaked = ::dup2(opened, 100);
  ::close(opened);
  ASSERT_EQ(leaked, 100);
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &term, &old), 0);
  auto c =
      sh("echo /proc/$$/fd/*; grep SigBlk /proc/$$/status; echo 'listening 127.0.0.1:1'; exec "
         "sleep 30",
         options("probe"));
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::close(leaked);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(wait_listening(*c, 10s).ok());
  std::ifstream in(dir_ + "/probe.out");
  std::string fds, blocked;
  std::getline(in, fds);
  std::getline(in, blocked);
  const std::string p = "/proc/" + std::to_string(c->pid) + "/fd/";
  EXPECT_TRUE(fds.starts_with(p + "0 " + p + "1 " + p + "2")) << fds;
  EXPECT_FALSE(contains(fds, p + "100")) << fds;
  EXPECT_TRUE(contains(blocked, "0000000000000000")) << blocked;
  // SIGTERM ends it at once: it is not blocked (a blocked one would wait for the SIGKILL).
  auto start = Clock::now();
  stop_process(c->pid, 5s);
  EXPECT_LT(Clock::now() - start, 4s);
  EXPECT_FALSE(process_alive(c->pid));
}

TEST_F(ChildProcessTest, StopProcessesEscalatesToSigkillAfterTheGrace) {
  // An ignored signal stays ignored across exec: this sleep ignores SIGTERM.
  std::vector<pid_t> pids;
  for (int i = 0; i < 3; ++i) {
    auto c = sh(i == 0 ? "trap '' TERM; exec sleep 30" : "exec sleep 30",
                options("s" + std::to_string(i)));
    ASSERT_TRUE(c.ok());
    pids.push_back(c->pid);
  }
  std::this_thread::sleep_for(100ms);  // the trap is set before the SIGTERM arrives
  auto start = Clock::now();
  stop_processes(pids, 500ms);
  EXPECT_GE(Clock::now() - start, 500ms) << "waited out the grace for the one that ignores SIGTERM";
  for (pid_t p : pids) EXPECT_FALSE(process_alive(p));
  EXPECT_TRUE(no_children());
  // Stopping again, or a pid that is no process, does nothing.
  stop_processes(pids, 500ms);
  stop_process(-1, 1s);
  kill_process(0);
}

TEST_F(ChildProcessTest, MissingInputsAndANamespaceThatDoesNotExistAreErrors) {
  EXPECT_EQ(spawn_child({}, options("x")).error().condition, Condition::invalid_argument);
  SpawnOptions no_out;
  EXPECT_EQ(spawn_child({"/bin/true"}, no_out).error().condition, Condition::invalid_argument);
  auto o = options("ns");
  o.netns_path = "/run/netns/flab-no-such-namespace";
  auto c = spawn_child({"/bin/true"}, o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().condition, Condition::not_found);
  EXPECT_TRUE(contains(c.error().message, "/run/netns/flab-no-such-namespace"))
      << c.error().message;
  EXPECT_TRUE(no_children());
}

TEST_F(ChildProcessTest, FileTailGivesTheLastLines) {
  std::ofstream(dir_ + "/f") << "one\ntwo\nthree\nfour\n";
  EXPECT_EQ(file_tail(dir_ + "/f", 2), "three\nfour\n");
  EXPECT_EQ(file_tail(dir_ + "/f", 10), "one\ntwo\nthree\nfour\n");
  EXPECT_EQ(file_tail(dir_ + "/missing", 2), "");
}

TEST_F(ChildProcessTest, ProcessesMatchingFindsByNameAndEveryWordOfTheCommandLine) {
  // Two processes that differ by one argument (their state dir, as QEMU's command line names it).
  // tail -f keeps following /dev/null after it failed to open the directory.
  auto a = spawn_child({"/usr/bin/tail", "-f", "/dev/null", dir_ + "/h1/"}, options("a"));
  auto b = spawn_child({"/usr/bin/tail", "-f", "/dev/null", dir_ + "/h2/"}, options("b"));
  // The exec may not have happened yet: until then the child is a copy of this test.
  auto found = [&](const std::vector<std::string>& needles) {
    std::vector<pid_t> out;
    testing::wait_until([&] { return !(out = processes_matching("tail", needles)).empty(); }, 5s);
    return out;
  };
  EXPECT_EQ(found({dir_ + "/h1/"}), std::vector<pid_t>{a->pid});
  EXPECT_EQ(found({"-f", dir_ + "/h2/"}), std::vector<pid_t>{b->pid});
  auto both = found({dir_ + "/"});
  std::sort(both.begin(), both.end());
  auto want = std::vector<pid_t>{a->pid, b->pid};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(both, want);
  EXPECT_TRUE(processes_matching("tail", {dir_ + "/h1/", dir_ + "/h2/"}).empty())
      << "every needle must be in one command line";
  EXPECT_TRUE(processes_matching("qemu", {dir_ + "/"}).empty()) << "the name counts too";
  const auto all = process_ids();
  EXPECT_NE(std::find(all.begin(), all.end(), a->pid), all.end());
  EXPECT_EQ(std::find(all.begin(), all.end(), ::getpid()), all.end()) << "this process is left out";
  stop_processes({a->pid, b->pid}, 5s);
  EXPECT_TRUE(processes_matching("tail", {dir_ + "/"}).empty()) << "stopped ones are gone";
}

}  // namespace
}  // namespace fabriclab
