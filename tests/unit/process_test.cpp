// run_command against real programs (sh, cat, sleep, head from coreutils/dash).

#include "fabriclab/common/process.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdlib>

#include "process_helpers.hpp"

namespace fabriclab {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using testing::contains;
using testing::no_children;

TEST(RunCommand, CapturesStdoutAndStderrInOrderAndTheExitCode) {
  auto r = run_command({"sh", "-c", "echo out; echo err >&2; echo more; exit 3"}, 10s);
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->output, "out\nerr\nmore\n");
  EXPECT_FALSE(r->truncated);
  EXPECT_TRUE(no_children());
}

TEST(RunCommand, StdinIsDevNullSoAReaderEndsAtOnce) {
  // A cat reading an open pipe would still be waiting when the timeout kills it.
  auto r = run_command({"cat"}, 5s);
  ASSERT_TRUE(r.ok()) << "cat did not see end of input: " << r.error().describe();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->output, "");
}

TEST(RunCommand, AMissingProgramIsNotFoundAndNamed) {
  auto r = run_command({"fabriclab-no-such-program", "x"}, 5s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::not_found);
  EXPECT_TRUE(contains(r.error().message, "fabriclab-no-such-program")) << r.error().message;
  auto empty = run_command({}, 5s);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.condition(), Condition::invalid_argument);
}

TEST(RunCommand, AProgramPastItsTimeoutIsKilledReapedAndNamed) {
  auto start = Clock::now();
  auto r = run_command({"sleep", "30"}, 300ms);
  auto took = Clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::timeout);
  EXPECT_TRUE(contains(r.error().message, "sleep 30")) << r.error().message;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 3s);
  EXPECT_TRUE(no_children()) << "the killed child must be reaped";
}

TEST(RunCommand, ASignalledProgramReads128PlusTheSignal) {
  auto r = run_command({"sh", "-c", "echo before; kill -TERM $$"}, 10s);
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->exit_code, 128 + 15);
  EXPECT_EQ(r->output, "before\n");
}

TEST(RunCommand, OutputBeyondTheCapIsDroppedWithoutBlockingTheProgram) {
  // 4 MiB: far more than a pipe holds, so a reader that stopped reading would hang the child.
  auto r = run_command({"head", "-c", "4194304", "/dev/zero"}, 20s, 1000);
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->output.size(), 1000u);
  EXPECT_TRUE(r->truncated);
  auto small = run_command({"sh", "-c", "printf 12345"}, 10s, 5);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->output, "12345");
  EXPECT_FALSE(small->truncated) << "exactly the cap is not truncated";
}

TEST(RunCommand, ABackgroundProcessHoldingThePipeDoesNotDelayTheResult) {
  // The background sleep holds the output pipe for longer than the timeout: a result that waited
  // for the pipe to close would be a timeout. It prints its pid so that the test can end it.
  auto r = run_command({"sh", "-c", "sleep 60 & echo $!"}, 5s);
  ASSERT_TRUE(r.ok()) << "waited for the background process to let go of the pipe: "
                      << r.error().describe();
  EXPECT_EQ(r->exit_code, 0);
  const pid_t sleeper = static_cast<pid_t>(std::atol(r->output.c_str()));
  ASSERT_GT(sleeper, 1) << "no pid in the output: '" << r->output << "'";
  EXPECT_EQ(::kill(sleeper, SIGKILL), 0) << "the background sleep was not running any more";
}

TEST(RunCommand, DescribeQuotesWordsThatNeedIt) {
  EXPECT_EQ(describe_command({"qemu-img", "info", "/a/b.qcow2"}), "qemu-img info /a/b.qcow2");
  EXPECT_EQ(describe_command({"sh", "-c", "echo hi"}), "sh -c 'echo hi'");
  EXPECT_LE(describe_command({std::string(500, 'x')}).size(), 200u);
}

}  // namespace
}  // namespace fabriclab
