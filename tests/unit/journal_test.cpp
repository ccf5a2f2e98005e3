#include "fabriclab/orchestrator/journal.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <thread>

#include "fabriclab/orchestrator/controller.hpp"
#include "result_checks.hpp"

namespace fabriclab::orchestrator {
namespace {

namespace fs = std::filesystem;
using fabriclab::testing::ok_value;

// A fresh directory under /tmp per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/fabriclab-journal-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::unique_ptr<Journal> open_ok(const std::string& path) {
  auto j = Journal::open(path);
  if (!j.ok()) throw std::runtime_error(j.error().describe());
  return std::move(j).value();
}

std::string event_json(uint64_t seq, const std::string& type = "host_state") {
  return json::serialize(json::object{
      {"seq", seq}, {"time", "2026-11-24T18:00:00.123Z"}, {"type", type}, {"host", "h1"}});
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Writes a big-endian 32-bit value into the database header (SQLite file format: user_version at
// offset 60, application_id at 68). Only valid while no -wal file holds newer pages.
void patch_header_u32(const std::string& path, long offset, uint32_t v) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good());
  f.seekp(offset);
  std::array<char, 4> b = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                           static_cast<char>(v >> 8), static_cast<char>(v)};
  f.write(b.data(), b.size());
  ASSERT_TRUE(f.good());
}

// Runs `child` in a forked process; returns the raw wait status.
template <class F>
int run_in_child(F child) {
  pid_t pid = fork();
  if (pid == 0) {
    child();
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

// Opens the journal at `path` in a forked child and runs `writes` on it there: the child exits
// with 2 when the open fails, else with the code `writes` returns (without closing the journal:
// _exit runs no destructor), unless it is killed first. Returns the raw wait status.
int write_in_child(const std::string& path, const std::function<int(Journal&)>& writes) {
  return run_in_child([&] {
    auto j = Journal::open(path);
    if (!j.ok()) _exit(2);
    _exit(writes(**j));
  });
}

Journal::HostProgress progress(const std::string& host, int batch, const std::string& status,
                               const std::string& job = "") {
  Journal::HostProgress p;
  p.host = host;
  p.batch = batch;
  p.status = status;
  p.job = job;
  p.detail = json::object{{"host", host}, {"exit", 0}};
  return p;
}

TEST(Journal, DocsRoundTripAndUpsert) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  json::object cluster{{"hosts", json::array{"h1", "h2"}}, {"fds", 2}};
  ASSERT_TRUE(j->put_doc("cluster", cluster).ok());
  auto got = j->get_doc("cluster");
  ASSERT_TRUE(got.ok()) << got.error().describe();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ(**got, cluster);

  ASSERT_TRUE(j->put_doc("cluster", json::object{{"fds", 3}}).ok());
  got = j->get_doc("cluster");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((**got).at("fds").as_int64(), 3);
  EXPECT_FALSE((**got).contains("hosts"));

  EXPECT_FALSE(ok_value(j->get_doc("settings")).has_value());

  auto empty_key = j->put_doc("", cluster);
  ASSERT_FALSE(empty_key.ok());
  EXPECT_EQ(empty_key.condition(), Condition::invalid_argument);
}

TEST(Journal, DrillsListOldestFirstAndSavingAgainKeepsTheirPlace) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  ASSERT_TRUE(j->save_drill("d1", "Planned", json::object{{"batch", 0}}).ok());
  ASSERT_TRUE(j->save_drill("d2", "Running", json::object{{"batch", 1}}).ok());
  auto before = j->drills();
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before->size(), 2u);
  const std::string d1_created = (*before)[0].created_at;
  EXPECT_EQ(d1_created.size(), 24u);  // 2026-11-24T18:00:00.123Z

  ASSERT_TRUE(j->save_drill("d1", "Running", json::object{{"batch", 2}}).ok());
  auto rows = j->drills();
  ASSERT_TRUE(rows.ok()) << rows.error().describe();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].id, "d1");
  EXPECT_EQ((*rows)[0].state, "Running");
  EXPECT_EQ((*rows)[0].doc.at("batch").as_int64(), 2);
  EXPECT_EQ((*rows)[0].created_at, d1_created);
  EXPECT_EQ((*rows)[1].id, "d2");

  auto doc = j->get_drill("d2");
  ASSERT_TRUE(doc.ok() && doc->has_value());
  EXPECT_EQ((**doc).at("batch").as_int64(), 1);
  EXPECT_FALSE(ok_value(j->get_drill("d3")).has_value());
}

TEST(Journal, LatestDrillInPicksTheNewestMatchingState) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  ASSERT_TRUE(j->save_drill("a", "Running", json::object{{"n", 1}}).ok());
  ASSERT_TRUE(j->save_drill("b", "Completed", json::object{{"n", 2}}).ok());
  ASSERT_TRUE(j->save_drill("c", "Paused", json::object{{"n", 3}}).ok());
  ASSERT_TRUE(j->save_drill("d", "Completed", json::object{{"n", 4}}).ok());

  auto latest = j->latest_drill_in({"Running", "Paused"});
  ASSERT_TRUE(latest.ok()) << latest.error().describe();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->id, "c");
  EXPECT_EQ((*latest)->state, "Paused");
  EXPECT_EQ((*latest)->doc.at("n").as_int64(), 3);

  // c finishes: the older running drill is now the one to resume.
  ASSERT_TRUE(j->save_drill("c", "Completed", json::object{{"n", 3}}).ok());
  latest = j->latest_drill_in({"Running", "Paused"});
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->id, "a");

  latest = j->latest_drill_in({"Failed"});
  ASSERT_TRUE(latest.ok());
  EXPECT_FALSE(latest->has_value());
  latest = j->latest_drill_in({});
  ASSERT_TRUE(latest.ok());
  EXPECT_FALSE(latest->has_value());
}

TEST(Journal, HostProgressRoundTripsOrderedByBatchThenHost) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  ASSERT_TRUE(j->save_drill("d1", "Running", {}).ok());
  ASSERT_TRUE(j->save_drill("d2", "Running", {}).ok());
  ASSERT_TRUE(j->set_host_progress("d1", progress("h3", 1, "pending")).ok());
  ASSERT_TRUE(j->set_host_progress("d1", progress("h2", 0, "running", "job-7")).ok());
  ASSERT_TRUE(j->set_host_progress("d1", progress("h1", 1, "pending")).ok());
  ASSERT_TRUE(j->set_host_progress("d2", progress("h9", 0, "done")).ok());
  // Upsert: h2's job finished.
  auto done = progress("h2", 0, "done", "job-7");
  done.detail = json::object{{"image_after", "v2"}, {"downtime_ms", 1234}};
  ASSERT_TRUE(j->set_host_progress("d1", done).ok());

  auto rows = j->host_progress("d1");
  ASSERT_TRUE(rows.ok()) << rows.error().describe();
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[0].host, "h2");
  EXPECT_EQ((*rows)[0].status, "done");
  EXPECT_EQ((*rows)[0].job, "job-7");
  EXPECT_EQ((*rows)[0].detail, done.detail);
  EXPECT_EQ((*rows)[0].updated_at.size(), 24u);
  EXPECT_EQ((*rows)[1].host, "h1");
  EXPECT_EQ((*rows)[1].batch, 1);
  EXPECT_EQ((*rows)[2].host, "h3");

  EXPECT_TRUE(ok_value(j->host_progress("nope")).empty());
}

TEST(Journal, HostProgressRefusesUnknownDrillStatusAndBatch) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  auto no_drill = j->set_host_progress("ghost", progress("h1", 0, "pending"));
  ASSERT_FALSE(no_drill.ok());
  EXPECT_EQ(no_drill.condition(), Condition::not_found);
  EXPECT_NE(no_drill.error().message.find("ghost"), std::string::npos);

  ASSERT_TRUE(j->save_drill("d1", "Running", {}).ok());
  auto bad_status = j->set_host_progress("d1", progress("h1", 0, "finished"));
  ASSERT_FALSE(bad_status.ok());
  EXPECT_EQ(bad_status.condition(), Condition::invalid_argument);
  EXPECT_NE(bad_status.error().message.find("finished"), std::string::npos);
  auto bad_batch = j->set_host_progress("d1", progress("h1", -1, "pending"));
  ASSERT_FALSE(bad_batch.ok());
  EXPECT_EQ(bad_batch.condition(), Condition::invalid_argument);
  EXPECT_TRUE(ok_value(j->host_progress("d1")).empty());
}

TEST(Journal, EventsRoundTripFromASeqWithALimit) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  auto last = j->last_event_seq();
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last, 0u);
  for (uint64_t seq : {1u, 2u, 5u, 9u}) {
    ASSERT_TRUE(j->append_event(seq, "host_state", event_json(seq)).ok()) << seq;
  }
  last = j->last_event_seq();
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last, 9u);

  auto all = j->events_since(0, 100);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0], event_json(1));
  EXPECT_EQ((*all)[3], event_json(9));

  auto some = j->events_since(2, 2);
  ASSERT_TRUE(some.ok());
  ASSERT_EQ(some->size(), 2u);
  EXPECT_EQ((*some)[0], event_json(5));
  EXPECT_EQ((*some)[1], event_json(9));

  auto none = j->events_since(9, 100);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  none = j->events_since(0, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(Journal, AppendEventRefusesANonIncreasingSeq) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  ASSERT_TRUE(j->append_event(10, "a", event_json(10)).ok());
  for (uint64_t seq : {10u, 3u, 0u}) {
    auto r = j->append_event(seq, "a", event_json(seq));
    ASSERT_FALSE(r.ok()) << seq;
    EXPECT_EQ(r.condition(), Condition::invalid_argument);
  }
  auto huge = j->append_event(uint64_t{1} << 63, "a", "{}");
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.condition(), Condition::invalid_argument);
  EXPECT_EQ(ok_value(j->events_since(0, 100)).size(), 1u);
  EXPECT_TRUE(j->append_event(11, "a", event_json(11)).ok());
}

TEST(Journal, PruneRemovesOldEventsButNeverLowersTheLastSeq) {
  TempDir dir;
  const auto path = dir.file("j.db");
  {
    auto j = open_ok(path);
    for (uint64_t seq = 1; seq <= 5; ++seq)
      ASSERT_TRUE(j->append_event(seq, "t", event_json(seq)).ok());
    auto removed = j->prune_events(3);
    ASSERT_TRUE(removed.ok());
    EXPECT_EQ(*removed, 3);
    auto rest = j->events_since(0, 100);
    ASSERT_TRUE(rest.ok());
    ASSERT_EQ(rest->size(), 2u);
    EXPECT_EQ((*rest)[0], event_json(4));
    removed = j->prune_events(100);
    ASSERT_TRUE(removed.ok());
    EXPECT_EQ(*removed, 2);
  }
  // Every event is gone, and a restarted orchestrator still may not reuse 1..5.
  auto j = open_ok(path);
  EXPECT_EQ(ok_value(j->last_event_seq()), 5u);
  EXPECT_FALSE(j->append_event(5, "t", event_json(5)).ok());
  EXPECT_TRUE(j->append_event(6, "t", event_json(6)).ok());
}

TEST(Journal, ReopenAfterCloseKeepsEverything) {
  TempDir dir;
  const auto path = dir.file("j.db");
  {
    auto j = open_ok(path);
    ASSERT_TRUE(j->put_doc("endpoints", json::object{{"h1", "127.0.0.1:7001"}}).ok());
    ASSERT_TRUE(j->save_drill("d1", "Running", json::object{{"current_batch", 2}}).ok());
    ASSERT_TRUE(j->set_host_progress("d1", progress("h1", 0, "done", "j1")).ok());
    ASSERT_TRUE(j->append_event(1, "drill_state", event_json(1)).ok());
    ASSERT_TRUE(j->append_event(2, "host_state", event_json(2)).ok());
  }
  auto j = open_ok(path);
  EXPECT_EQ(j->path(), path);
  auto doc = j->get_doc("endpoints");
  ASSERT_TRUE(doc.ok() && doc->has_value());
  EXPECT_EQ((**doc).at("h1").as_string(), "127.0.0.1:7001");
  auto latest = j->latest_drill_in({"Running"});
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->doc.at("current_batch").as_int64(), 2);
  auto hosts = j->host_progress("d1");
  ASSERT_TRUE(hosts.ok());
  ASSERT_EQ(hosts->size(), 1u);
  EXPECT_EQ((*hosts)[0].status, "done");
  EXPECT_EQ((*hosts)[0].job, "j1");
  EXPECT_EQ(ok_value(j->last_event_seq()), 2u);
  EXPECT_EQ(ok_value(j->events_since(0, 10)).size(), 2u);
}

TEST(Journal, WalModeIsActuallyOn) {
  TempDir dir;
  const auto path = dir.file("j.db");
  {
    auto j = open_ok(path);
    auto mode = j->journal_mode();
    ASSERT_TRUE(mode.ok()) << mode.error().describe();
    EXPECT_EQ(*mode, "wal");
    ASSERT_TRUE(j->put_doc("k", json::object{{"v", 1}}).ok());
    // Commits go to the write-ahead log next to the database.
    EXPECT_TRUE(fs::exists(path + "-wal"));
  }
  // Persisted in the file: header bytes 18 and 19 (write/read format version) are 2 for WAL.
  std::string header = read_file(path).substr(0, 20);
  ASSERT_EQ(header.size(), 20u);
  EXPECT_EQ(header[18], 2);
  EXPECT_EQ(header[19], 2);
}

TEST(Journal, RecordsOfAChildThatExitsWithoutClosingSurvive) {
  TempDir dir;
  const auto path = dir.file("j.db");
  // No destructor: the connection is never closed, nothing is checkpointed.
  int status = write_in_child(path, [](Journal& j) {
    if (!j.save_drill("d1", "Running", json::object{{"current_batch", 1}}).ok()) return 3;
    if (!j.append_event(1, "drill_state", event_json(1)).ok()) return 4;
    return 0;
  });
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  auto j = open_ok(path);
  auto doc = j->get_drill("d1");
  ASSERT_TRUE(doc.ok() && doc->has_value());
  EXPECT_EQ((**doc).at("current_batch").as_int64(), 1);
  EXPECT_EQ(ok_value(j->last_event_seq()), 1u);
}

TEST(Journal, RecordsWrittenBeforeSigkillSurvive) {
  TempDir dir;
  const auto path = dir.file("j.db");
  int status = write_in_child(path, [](Journal& j) {
    if (!j.save_drill("d1", "Running", json::object{{"current_batch", 3}}).ok()) return 3;
    if (!j.set_host_progress("d1", progress("h1", 0, "done", "job-1")).ok()) return 4;
    for (uint64_t seq = 1; seq <= 20; ++seq) {
      if (!j.append_event(seq, "host_state", event_json(seq)).ok()) return 5;
    }
    raise(SIGKILL);
    return 6;
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  ASSERT_EQ(WTERMSIG(status), SIGKILL);
  // The records are in the WAL only; the fresh open recovers them from it.
  ASSERT_TRUE(fs::exists(path + "-wal"));
  EXPECT_GT(fs::file_size(path + "-wal"), 0u);

  auto j = open_ok(path);
  auto latest = j->latest_drill_in({"Running", "Paused"});
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->id, "d1");
  EXPECT_EQ((*latest)->doc.at("current_batch").as_int64(), 3);
  auto hosts = j->host_progress("d1");
  ASSERT_TRUE(hosts.ok());
  ASSERT_EQ(hosts->size(), 1u);
  EXPECT_EQ((*hosts)[0].status, "done");
  EXPECT_EQ(ok_value(j->last_event_seq()), 20u);
  EXPECT_EQ(ok_value(j->events_since(0, 100)).size(), 20u);
  // And the restarted orchestrator carries on numbering.
  EXPECT_FALSE(j->append_event(20, "t", event_json(20)).ok());
  EXPECT_TRUE(j->append_event(21, "t", event_json(21)).ok());
}

TEST(Journal, SigkillInsideATransactionLeavesNoneOfIt) {
  TempDir dir;
  const auto path = dir.file("j.db");
  int status = write_in_child(path, [](Journal& journal) {
    if (!journal.save_drill("d1", "Running", json::object{{"current_batch", 0}}).ok()) return 3;
    (void)journal.transaction([&]() -> Status {
      FL_RETURN_IF_ERROR(journal.save_drill("d1", "Running", json::object{{"current_batch", 1}}));
      FL_RETURN_IF_ERROR(journal.set_host_progress("d1", progress("h1", 0, "done")));
      FL_RETURN_IF_ERROR(journal.append_event(1, "host_state", event_json(1)));
      raise(SIGKILL);
      return {};
    });
    return 4;
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  ASSERT_EQ(WTERMSIG(status), SIGKILL);

  auto j = open_ok(path);
  auto doc = j->get_drill("d1");
  ASSERT_TRUE(doc.ok() && doc->has_value());
  EXPECT_EQ((**doc).at("current_batch").as_int64(), 0);
  EXPECT_TRUE(ok_value(j->host_progress("d1")).empty());
  EXPECT_EQ(ok_value(j->last_event_seq()), 0u);
  // The killed writer's lock is gone: the journal takes writes again.
  EXPECT_TRUE(j->append_event(1, "host_state", event_json(1)).ok());
}

TEST(Journal, TransactionRollsBackEverythingWhenFnFails) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  auto r = j->transaction([&]() -> Status {
    FL_RETURN_IF_ERROR(j->put_doc("cluster", json::object{{"hosts", 3}}));
    FL_RETURN_IF_ERROR(j->save_drill("d1", "Running", {}));
    FL_RETURN_IF_ERROR(j->set_host_progress("d1", progress("h1", 0, "running")));
    FL_RETURN_IF_ERROR(j->append_event(1, "drill_state", event_json(1)));
    // Reads inside the transaction see its own writes.
    auto inside = j->last_event_seq();
    if (!inside.ok() || *inside != 1) return make_error(Condition::internal, "not visible");
    return make_error(Condition::cancelled, "agent h1 refused the job");
  });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::cancelled);
  EXPECT_EQ(r.error().message, "agent h1 refused the job");

  EXPECT_FALSE(ok_value(j->get_doc("cluster")).has_value());
  auto drills = j->drills();
  ASSERT_TRUE(drills.ok());
  EXPECT_TRUE(drills->empty());
  EXPECT_EQ(ok_value(j->last_event_seq()), 0u);
  EXPECT_TRUE(ok_value(j->events_since(0, 10)).empty());
}

TEST(Journal, TransactionRollsBackWhenFnThrows) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  EXPECT_THROW((void)j->transaction([&]() -> Status {
    FL_RETURN_IF_ERROR(j->put_doc("k", json::object{{"v", 1}}));
    throw std::runtime_error("boom");
  }),
               std::runtime_error);
  EXPECT_FALSE(ok_value(j->get_doc("k")).has_value());
  // The connection is out of the transaction: a new one works.
  EXPECT_TRUE(j->transaction([&] { return j->put_doc("k", json::object{{"v", 2}}); }).ok());
}

TEST(Journal, NestedTransactionFailureUndoesOnlyItsOwnWrites) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  auto r = j->transaction([&]() -> Status {
    FL_RETURN_IF_ERROR(j->put_doc("outer", json::object{{"v", 1}}));
    auto inner = j->transaction([&]() -> Status {
      FL_RETURN_IF_ERROR(j->put_doc("inner", json::object{{"v", 2}}));
      return make_error(Condition::invalid_state, "inner fails");
    });
    if (inner.ok()) return make_error(Condition::internal, "inner should have failed");
    return j->transaction([&] { return j->put_doc("inner2", json::object{{"v", 3}}); });
  });
  ASSERT_TRUE(r.ok()) << r.error().describe();
  auto outer = j->get_doc("outer");
  auto inner = j->get_doc("inner");
  auto inner2 = j->get_doc("inner2");
  ASSERT_TRUE(outer.ok() && inner.ok() && inner2.ok());
  EXPECT_TRUE(outer->has_value());
  EXPECT_FALSE(inner->has_value());
  EXPECT_TRUE(inner2->has_value());
}

TEST(Journal, TransactionsFromManyThreadsAreSerialized) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        // Reading the last seq and appending the next is only safe if no other thread's
        // writes can interleave inside the transaction.
        auto r = j->transaction([&]() -> Status {
          FL_ASSIGN_OR_RETURN(uint64_t last, j->last_event_seq());
          std::this_thread::yield();
          FL_RETURN_IF_ERROR(j->append_event(last + 1, "t", event_json(last + 1)));
          return j->put_doc("t" + std::to_string(t) + "-" + std::to_string(i),
                            json::object{{"seq", last + 1}});
        });
        if (!r.ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(ok_value(j->last_event_seq()), uint64_t{kThreads * kPerThread});
  EXPECT_EQ(ok_value(j->events_since(0, 1000)).size(), size_t{kThreads * kPerThread});
}

TEST(Journal, OpeningAGarbageFileFailsNamingThePath) {
  TempDir dir;
  const auto path = dir.file("not-a-db.db");
  std::string garbage;
  for (int i = 0; i < 256; ++i) garbage += "this is not an SQLite database\n";
  { std::ofstream(path, std::ios::binary) << garbage; }
  auto j = Journal::open(path);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.condition(), Condition::invalid_state);
  EXPECT_NE(j.error().message.find(path), std::string::npos) << j.error().message;
  EXPECT_EQ(read_file(path), garbage);  // refused, not altered
}

TEST(Journal, OpeningInAMissingDirectoryFailsNamingThePath) {
  TempDir dir;
  const auto path = dir.file("no/such/dir/j.db");
  auto j = Journal::open(path);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.condition(), Condition::not_found);
  EXPECT_NE(j.error().message.find(path), std::string::npos) << j.error().message;
}

TEST(Journal, OpeningANewerSchemaIsRefusedNamingTheVersion) {
  TempDir dir;
  const auto path = dir.file("j.db");
  {
    auto j = open_ok(path);
    ASSERT_TRUE(j->put_doc("k", json::object{{"v", 1}}).ok());
  }
  ASSERT_FALSE(fs::exists(path + "-wal"));  // checkpointed on close: the header is current
  patch_header_u32(path, 60, 7);            // PRAGMA user_version = 7
  const std::string before = read_file(path);
  auto j = Journal::open(path);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.condition(), Condition::invalid_state);
  EXPECT_NE(j.error().message.find("schema version 7"), std::string::npos) << j.error().message;
  EXPECT_NE(j.error().message.find(path), std::string::npos);
  EXPECT_EQ(read_file(path), before);
}

TEST(Journal, OpeningAnotherApplicationsDatabaseIsRefused) {
  TempDir dir;
  const auto path = dir.file("j.db");
  { open_ok(path); }
  ASSERT_FALSE(fs::exists(path + "-wal"));
  patch_header_u32(path, 68, 0x12345678);  // PRAGMA application_id
  auto j = Journal::open(path);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.condition(), Condition::invalid_state);
  EXPECT_NE(j.error().message.find("not a fabriclab journal"), std::string::npos)
      << j.error().message;
}

json::object nested(int depth) {
  json::object o{{"leaf", 1}};
  for (int i = 1; i < depth; ++i) o = json::object{{"in", std::move(o)}};
  return o;
}

TEST(Journal, DocumentsThatCouldNotBeReadBackAreRefusedOnWrite) {
  TempDir dir;
  auto j = open_ok(dir.file("j.db"));
  ASSERT_TRUE(j->put_doc("deep", nested(Journal::kMaxDocDepth)).ok());
  auto back = j->get_doc("deep");
  ASSERT_TRUE(back.ok()) << back.error().describe();
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ(**back, nested(Journal::kMaxDocDepth));

  auto too_deep = j->put_doc("deeper", nested(Journal::kMaxDocDepth + 1));
  ASSERT_FALSE(too_deep.ok());
  EXPECT_EQ(too_deep.condition(), Condition::invalid_argument);

  json::object big{{"blob", std::string(Journal::kMaxDocBytes, 'x')}};
  auto too_big = j->save_drill("d1", "Running", big);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.condition(), Condition::invalid_argument);
}

double events_per_second(const std::string& path, bool one_transaction, int n) {
  auto j = open_ok(path);
  auto start = std::chrono::steady_clock::now();
  auto append_all = [&]() -> Status {
    for (int i = 1; i <= n; ++i) {
      FL_RETURN_IF_ERROR(j->append_event(i, "host_state", event_json(i)));
    }
    return {};
  };
  Status st = one_transaction ? j->transaction(append_all) : append_all();
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!st.ok()) throw std::runtime_error(st.error().describe());
  auto last = j->last_event_seq();
  if (!last.ok() || *last != static_cast<uint64_t>(n)) throw std::runtime_error("events missing");
  return n / secs;
}

// A figure for the README, not an assertion on time: what synchronous=FULL costs per commit.
TEST(Journal, ThroughputOfAppendingEventsIsReported) {
  TempDir dir;
  constexpr int kEvents = 2000;
  double batched = events_per_second(dir.file("batched.db"), true, kEvents);
  double single = events_per_second(dir.file("single.db"), false, kEvents);
  std::printf(
      "journal throughput (WAL, synchronous=FULL, %d events, %s): "
      "one transaction %.0f events/s; one transaction per event %.0f events/s\n",
      kEvents, "/tmp", batched, single);
  RecordProperty("events_per_s_one_transaction", static_cast<int>(batched));
  RecordProperty("events_per_s_per_event", static_cast<int>(single));
}

}  // namespace
}  // namespace fabriclab::orchestrator

// The drill states the journal stores are the API's words, read back into the same state; a word
// this build does not know is refused with the field named.
TEST(DrillStateNames, RoundTripAndAnUnknownOneIsRefused) {
  using fabriclab::orchestrator::DrillState;
  for (auto s : {DrillState::planned, DrillState::running, DrillState::paused,
                 DrillState::completed, DrillState::failed, DrillState::aborted}) {
    auto back = fabriclab::orchestrator::parse_drill_state(fabriclab::orchestrator::to_string(s));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, s);
  }
  EXPECT_EQ(fabriclab::orchestrator::to_string(DrillState::aborted), "Aborted");
  EXPECT_TRUE(fabriclab::orchestrator::is_finished(DrillState::failed));
  EXPECT_FALSE(fabriclab::orchestrator::is_finished(DrillState::paused));
  EXPECT_TRUE(fabriclab::orchestrator::is_resumable(DrillState::paused));
  auto bad = fabriclab::orchestrator::parse_drill_state("running", "drills.state");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("field 'drills.state' must be one of Planned, Running"),
            std::string::npos)
      << bad.error().message;
}
