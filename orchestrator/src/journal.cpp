// The journal on SQLite.
//
// Durability is SQLite's, configured rather than reinvented. In WAL mode a commit appends the
// transaction's pages to the -wal file and, with synchronous=FULL, fsyncs it before COMMIT
// returns; a process killed at any instant leaves either the whole transaction in the WAL (it is
// replayed by the next open) or a torn tail that recovery discards. So "a method returned ok"
// means "on disk", and a write that had not returned is either entirely there or entirely absent.
// Each public write is one statement (atomic by itself) or runs inside `atomically`, which is
// BEGIN IMMEDIATE ... COMMIT at the outermost level and a SAVEPOINT when nested. IMMEDIATE takes
// the write lock up front: a deferred transaction that reads first and then writes can fail with
// SQLITE_BUSY_SNAPSHOT, which the busy timeout does not retry.
//
// Concurrency: one connection, one recursive mutex. Recursive because `transaction`'s function
// calls this Journal's own methods on the same thread, and they must join the open transaction
// rather than deadlock; other threads block on the mutex until the transaction ends, so their
// writes never leak into someone else's transaction. The lock also covers reading
// sqlite3_errmsg right after a failure, which is per connection.
//
// Event numbers: the highest seq ever appended lives in `meta`, not as MAX(seq) over `events`,
// because retention may delete every event and a restarted orchestrator must still not reuse a
// number a client has already seen.
//
// Opening never alters a database it refuses: the application id and schema version are read
// (the first read is also what detects a file that is not a database) before WAL mode is set or
// the schema created. Creation happens inside BEGIN IMMEDIATE and re-checks the version, so two
// processes opening a fresh file at once create the schema once.
//
// Stored JSON is checked on the way in (size, depth) so that everything written can be parsed
// back with the same limits; a stored document that does not parse is corruption (internal).

#include "fabriclab/orchestrator/journal.hpp"

#include <fmt/format.h>
#include <sqlite3.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <cerrno>
#include <limits>
#include <mutex>
#include <utility>

#include "fabriclab/common/logging.hpp"
#include "journal_sqlite.hpp"

namespace fabriclab::orchestrator {
namespace {

constexpr int kBusyTimeoutMs = 5000;
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

constexpr const char* kSchema = R"sql(
CREATE TABLE meta(
  key   TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('last_event_seq', 0);
CREATE TABLE docs(
  key        TEXT PRIMARY KEY,
  value      TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE TABLE drills(
  ord        INTEGER PRIMARY KEY AUTOINCREMENT,
  id         TEXT NOT NULL UNIQUE,
  state      TEXT NOT NULL,
  doc        TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE TABLE host_progress(
  drill      TEXT NOT NULL REFERENCES drills(id) ON DELETE CASCADE,
  host       TEXT NOT NULL,
  batch      INTEGER NOT NULL,
  status     TEXT NOT NULL,
  job        TEXT NOT NULL,
  detail     TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  PRIMARY KEY (drill, host)
) WITHOUT ROWID;
CREATE TABLE events(
  seq   INTEGER PRIMARY KEY,
  type  TEXT NOT NULL,
  event TEXT NOT NULL
);
)sql";

using journal_sqlite::DbPtr;
using journal_sqlite::sql_error;
using journal_sqlite::Stmt;

Error bad(std::string message) {
  return make_error(Condition::invalid_argument, std::move(message));
}

Status check_name(std::string_view v, std::string_view what, bool allow_empty = false) {
  if (v.empty() && !allow_empty) return bad(fmt::format("journal: {} must not be empty", what));
  if (v.size() > Journal::kMaxNameBytes) {
    return bad(fmt::format("journal: {} must be at most {} bytes", what, Journal::kMaxNameBytes));
  }
  return {};
}

// True when `v` nests objects/arrays more than `budget` levels deep. Stops descending at the
// budget, so the recursion is bounded too.
bool deeper_than(const json::value& v, int budget) {
  if (v.is_object()) {
    if (budget == 0) return true;
    for (const auto& kv : v.get_object()) {
      if (deeper_than(kv.value(), budget - 1)) return true;
    }
  } else if (v.is_array()) {
    if (budget == 0) return true;
    for (const auto& e : v.get_array()) {
      if (deeper_than(e, budget - 1)) return true;
    }
  }
  return false;
}

Result<std::string> serialize_doc(const json::object& o, std::string_view what) {
  if (deeper_than(json::value(o), Journal::kMaxDocDepth)) {
    return bad(fmt::format("journal: {} nested deeper than {}", what, Journal::kMaxDocDepth));
  }
  std::string s = json::serialize(o);
  if (s.size() > Journal::kMaxDocBytes) {
    return bad(fmt::format("journal: {} larger than {} bytes", what, Journal::kMaxDocBytes));
  }
  return s;
}

Result<json::object> parse_stored(std::string_view text, std::string_view what) {
  auto r = parse_json_object(text, Journal::kMaxDocBytes, Journal::kMaxDocDepth, what);
  if (!r.ok()) {
    return make_error(Condition::internal, fmt::format("journal: stored {}", r.error().message));
  }
  return std::move(r).value();
}

bool is_host_status(std::string_view s) {
  return s == "pending" || s == "running" || s == "done" || s == "failed" || s == "skipped";
}

}  // namespace

struct Journal::Impl {
  std::string path;
  DbPtr db;
  mutable std::recursive_mutex mu;

  Result<Stmt> prepare(const char* sql, std::string_view op) const {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db.get(), sql, -1, &stmt, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt);
      return sql_error(db.get(), rc, op);
    }
    return Stmt(db.get(), stmt, op);
  }

  // Statements without parameters (pragmas, BEGIN, the schema).
  Status exec(const char* sql, std::string_view op) const {
    int rc = sqlite3_exec(db.get(), sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return sql_error(db.get(), rc, op);
    return {};
  }

  // The single value of a one-row query such as "PRAGMA user_version".
  Result<int64_t> query_int(const char* sql, std::string_view op) const {
    FL_ASSIGN_OR_RETURN(auto st, prepare(sql, op));
    FL_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) return make_error(Condition::internal, fmt::format("journal: {}: no row", op));
    return st.int64(0);
  }

  // Runs one statement with ?1, ?2, ... bound to `args`; `op` names it in errors.
  template <class... Args>
  Status run_bound(const char* sql, const std::string& op, const Args&... args) const {
    std::lock_guard lock(mu);
    FL_ASSIGN_OR_RETURN(auto st, prepare(sql, op));
    st.bind_all(args...);
    return st.run();
  }

  // The stored JSON object in the one column of `sql` (keyed by ?1 = key), if there is a row;
  // `what` ("doc", "drill") names it in errors, as "doc 'KEY'", and `op` prefixes the statement's.
  Result<std::optional<json::object>> stored_object(const char* sql, std::string_view key,
                                                    std::string_view what,
                                                    std::string_view op) const {
    std::lock_guard lock(mu);
    FL_ASSIGN_OR_RETURN(auto st, prepare(sql, fmt::format("{} '{}'", op, key)));
    st.bind(1, key);
    FL_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) return std::optional<json::object>();
    FL_ASSIGN_OR_RETURN(auto doc, parse_stored(st.text(0), fmt::format("{} '{}'", what, key)));
    return std::optional<json::object>(std::move(doc));
  }

  bool in_transaction() const { return sqlite3_get_autocommit(db.get()) == 0; }

  // Undoes what `atomically` began. SQLite itself rolls the whole transaction back after some
  // errors (I/O, full disk); then there is nothing left to undo.
  void undo(bool outer) const {
    if (!in_transaction()) return;
    if (outer) {
      sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    } else {
      sqlite3_exec(db.get(), "ROLLBACK TO fl_nested; RELEASE fl_nested", nullptr, nullptr, nullptr);
    }
  }

  // Runs fn in a transaction (outermost) or savepoint (nested). Caller holds `mu`.
  Status atomically(std::string_view op, const std::function<Status()>& fn) {
    const bool outer = !in_transaction();
    FL_RETURN_IF_ERROR(exec(outer ? "BEGIN IMMEDIATE" : "SAVEPOINT fl_nested", op));
    Status st;
    try {
      st = fn();
    } catch (...) {
      undo(outer);
      throw;
    }
    if (st.ok()) st = exec(outer ? "COMMIT" : "RELEASE fl_nested", op);
    if (!st.ok()) undo(outer);
    return st;
  }

  Result<uint64_t> last_event_seq() const {
    FL_ASSIGN_OR_RETURN(int64_t v, query_int("SELECT value FROM meta WHERE key = 'last_event_seq'",
                                             "last_event_seq"));
    return static_cast<uint64_t>(v);
  }

  Result<DrillRow> drill_row(const Stmt& st) const {
    DrillRow row;
    row.id = std::string(st.text(0));
    row.state = std::string(st.text(1));
    FL_ASSIGN_OR_RETURN(row.doc, parse_stored(st.text(2), fmt::format("drill '{}'", row.id)));
    row.created_at = std::string(st.text(3));
    row.updated_at = std::string(st.text(4));
    return row;
  }

  // Refuses databases that are not ours or newer; true when the schema must still be created.
  Result<bool> check_schema() const {
    const std::string op = fmt::format("open {}: read schema", path);
    FL_ASSIGN_OR_RETURN(int64_t app, query_int("PRAGMA application_id", op));
    FL_ASSIGN_OR_RETURN(int64_t version, query_int("PRAGMA user_version", op));
    FL_ASSIGN_OR_RETURN(int64_t tables, query_int("SELECT count(*) FROM sqlite_master", op));
    if (version == 0 && app == 0 && tables == 0) return true;
    if (app != kApplicationId) {
      return make_error(Condition::invalid_state,
                        fmt::format("journal {}: not a fabriclab journal (application_id {:#x}, "
                                    "schema version {})",
                                    path, static_cast<uint32_t>(app), version));
    }
    if (version > kSchemaVersion) {
      return make_error(Condition::invalid_state,
                        fmt::format("journal {}: schema version {} is newer than this build's {}; "
                                    "open it with a newer fabriclab",
                                    path, version, kSchemaVersion));
    }
    if (version != kSchemaVersion) {
      return make_error(Condition::invalid_state,
                        fmt::format("journal {}: unknown schema version {} (this build reads {})",
                                    path, version, kSchemaVersion));
    }
    return false;
  }

  Status create_schema() {
    const std::string op = fmt::format("open {}: create schema", path);
    return atomically(op, [&]() -> Status {
      // Another process may have created it between our check and BEGIN IMMEDIATE.
      FL_ASSIGN_OR_RETURN(bool fresh, check_schema());
      if (!fresh) return {};
      FL_RETURN_IF_ERROR(exec(kSchema, op));
      // Pragmas take no bound parameters; these are compile-time constants, not input.
      FL_RETURN_IF_ERROR(
          exec(fmt::format("PRAGMA application_id = {}", kApplicationId).c_str(), op));
      return exec(fmt::format("PRAGMA user_version = {}", kSchemaVersion).c_str(), op);
    });
  }
};

Journal::Journal(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Journal::~Journal() = default;

Result<std::unique_ptr<Journal>> Journal::open(const std::string& path) {
  if (path.empty()) return bad("journal: path must not be empty");
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  const std::string op = fmt::format("open {}", path);

  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  impl->db.reset(raw);
  if (rc != SQLITE_OK) return sql_error(raw, rc, op);
  sqlite3* db = raw;
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);

  // The first read: a file that is not a database fails here, before anything is written.
  FL_ASSIGN_OR_RETURN(bool fresh, impl->check_schema());

  {
    FL_ASSIGN_OR_RETURN(auto st, impl->prepare("PRAGMA journal_mode = WAL", op + ": set WAL"));
    FL_ASSIGN_OR_RETURN(bool row, st.step());
    std::string mode = row ? std::string(st.text(0)) : std::string();
    if (mode != "wal") {
      return make_error(
          Condition::unsupported,
          fmt::format("journal {}: WAL mode refused (journal_mode is '{}')", path, mode));
    }
  }
  FL_RETURN_IF_ERROR(impl->exec("PRAGMA synchronous = FULL", op + ": set synchronous"));
  FL_RETURN_IF_ERROR(impl->exec("PRAGMA foreign_keys = ON", op + ": set foreign_keys"));
  FL_ASSIGN_OR_RETURN(int64_t fk, impl->query_int("PRAGMA foreign_keys", op));
  if (fk != 1) {
    return make_error(Condition::unsupported,
                      fmt::format("journal {}: this SQLite has no foreign keys", path));
  }
  if (fresh) FL_RETURN_IF_ERROR(impl->create_schema());

  FL_ASSIGN_OR_RETURN(uint64_t last, impl->last_event_seq());  // also proves the schema reads
  logger("orchestrator")
      ->info("journal {} open ({}, schema v{}, last event seq {})", path,
             fresh ? "created" : "existing", kSchemaVersion, last);
  return std::unique_ptr<Journal>(new Journal(std::move(impl)));
}

std::string Journal::path() const { return impl_->path; }

Result<std::string> Journal::journal_mode() const {
  std::lock_guard lock(impl_->mu);
  FL_ASSIGN_OR_RETURN(auto st, impl_->prepare("PRAGMA journal_mode", "journal_mode"));
  FL_ASSIGN_OR_RETURN(bool row, st.step());
  if (!row) return make_error(Condition::internal, "journal: journal_mode: no row");
  return std::string(st.text(0));
}

Status Journal::put_doc(std::string_view key, const json::object& value) {
  FL_RETURN_IF_ERROR(check_name(key, "doc key"));
  FL_ASSIGN_OR_RETURN(std::string text, serialize_doc(value, fmt::format("doc '{}'", key)));
  return impl_->run_bound(
      "INSERT INTO docs(key, value, updated_at) VALUES (?1, ?2, ?3) "
      "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
      "updated_at = excluded.updated_at",
      fmt::format("put_doc '{}'", key), key, text, rfc3339_now());
}

Result<std::optional<json::object>> Journal::get_doc(std::string_view key) const {
  return impl_->stored_object("SELECT value FROM docs WHERE key = ?1", key, "doc", "get_doc");
}

Status Journal::save_drill(std::string_view id, std::string_view state, const json::object& doc) {
  FL_RETURN_IF_ERROR(check_name(id, "drill id"));
  FL_RETURN_IF_ERROR(check_name(state, "drill state"));
  FL_ASSIGN_OR_RETURN(std::string text, serialize_doc(doc, fmt::format("drill '{}'", id)));
  return impl_->run_bound(
      "INSERT INTO drills(id, state, doc, created_at, updated_at) "
      "VALUES (?1, ?2, ?3, ?4, ?4) "
      "ON CONFLICT(id) DO UPDATE SET state = excluded.state, "
      "doc = excluded.doc, updated_at = excluded.updated_at",
      fmt::format("save_drill '{}'", id), id, state, text, rfc3339_now());
}

Result<std::optional<json::object>> Journal::get_drill(std::string_view id) const {
  return impl_->stored_object("SELECT doc FROM drills WHERE id = ?1", id, "drill", "get_drill");
}

Result<std::vector<Journal::DrillRow>> Journal::drills() const {
  std::lock_guard lock(impl_->mu);
  FL_ASSIGN_OR_RETURN(auto st, impl_->prepare("SELECT id, state, doc, created_at, updated_at "
                                              "FROM drills ORDER BY ord",
                                              "drills"));
  std::vector<DrillRow> out;
  for (;;) {
    FL_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    FL_ASSIGN_OR_RETURN(auto r, impl_->drill_row(st));
    out.push_back(std::move(r));
  }
  return out;
}

Result<std::optional<Journal::DrillRow>> Journal::latest_drill_in(
    const std::vector<std::string>& states) const {
  std::lock_guard lock(impl_->mu);
  // Newest first, filtered here: a handful of drills, and no SQL built from the list's length.
  // Only the matching row's document is parsed.
  FL_ASSIGN_OR_RETURN(auto st, impl_->prepare("SELECT id, state, doc, created_at, updated_at "
                                              "FROM drills ORDER BY ord DESC",
                                              "latest_drill_in"));
  for (;;) {
    FL_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) return std::optional<DrillRow>();
    std::string_view state = st.text(1);
    for (const auto& s : states) {
      if (s == state) {
        FL_ASSIGN_OR_RETURN(auto r, impl_->drill_row(st));
        return std::optional<DrillRow>(std::move(r));
      }
    }
  }
}

Status Journal::set_host_progress(std::string_view drill, const HostProgress& p) {
  FL_RETURN_IF_ERROR(check_name(drill, "drill id"));
  FL_RETURN_IF_ERROR(check_name(p.host, "host"));
  FL_RETURN_IF_ERROR(check_name(p.job, "job id", /*allow_empty=*/true));
  if (p.batch < 0) return bad(fmt::format("journal: host '{}': batch must be >= 0", p.host));
  if (!is_host_status(p.status)) {
    return bad(
        fmt::format("journal: host '{}': status '{}' is not one of pending, running, "
                    "done, failed, skipped",
                    p.host, p.status));
  }
  FL_ASSIGN_OR_RETURN(std::string detail,
                      serialize_doc(p.detail, fmt::format("host '{}' detail", p.host)));
  std::lock_guard lock(impl_->mu);
  const std::string op = fmt::format("set_host_progress drill '{}' host '{}'", drill, p.host);
  FL_ASSIGN_OR_RETURN(
      auto st,
      impl_->prepare("INSERT INTO host_progress(drill, host, batch, status, job, detail, "
                     "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) "
                     "ON CONFLICT(drill, host) DO UPDATE SET batch = excluded.batch, "
                     "status = excluded.status, job = excluded.job, detail = excluded.detail, "
                     "updated_at = excluded.updated_at",
                     op));
  st.bind_all(drill, p.host, int64_t{p.batch}, p.status, p.job, detail, rfc3339_now());
  auto r = st.run();
  if (!r.ok() && sqlite3_extended_errcode(impl_->db.get()) == SQLITE_CONSTRAINT_FOREIGNKEY) {
    return make_error(Condition::not_found,
                      fmt::format("journal: {}: no drill '{}' in the journal", op, drill));
  }
  return r;
}

Result<std::vector<Journal::HostProgress>> Journal::host_progress(std::string_view drill) const {
  std::lock_guard lock(impl_->mu);
  FL_ASSIGN_OR_RETURN(auto st, impl_->prepare("SELECT host, batch, status, job, detail, updated_at "
                                              "FROM host_progress WHERE drill = ?1 "
                                              "ORDER BY batch, host",
                                              fmt::format("host_progress '{}'", drill)));
  st.bind(1, drill);
  std::vector<HostProgress> out;
  for (;;) {
    FL_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    HostProgress p;
    p.host = std::string(st.text(0));
    p.batch = static_cast<int>(st.int64(1));
    p.status = std::string(st.text(2));
    p.job = std::string(st.text(3));
    FL_ASSIGN_OR_RETURN(
        p.detail,
        parse_stored(st.text(4), fmt::format("drill '{}' host '{}' detail", drill, p.host)));
    p.updated_at = std::string(st.text(5));
    out.push_back(std::move(p));
  }
  return out;
}

Status Journal::append_event(uint64_t seq, std::string_view type, std::string_view event_json) {
  if (seq == 0 || seq > static_cast<uint64_t>(kInt64Max)) {
    return bad(fmt::format("journal: event seq {} must be in 1..{}", seq, kInt64Max));
  }
  FL_RETURN_IF_ERROR(check_name(type, "event type"));
  if (event_json.empty()) return bad("journal: event must not be empty");
  if (event_json.size() > kMaxDocBytes) {
    return bad(fmt::format("journal: event {} larger than {} bytes", seq, kMaxDocBytes));
  }
  std::lock_guard lock(impl_->mu);
  const std::string op = fmt::format("append_event {}", seq);
  return impl_->atomically(op, [&]() -> Status {
    FL_ASSIGN_OR_RETURN(uint64_t last, impl_->last_event_seq());
    if (seq <= last) {
      return bad(
          fmt::format("journal: event seq {} is not above the last appended seq {}", seq, last));
    }
    {
      FL_ASSIGN_OR_RETURN(
          auto st, impl_->prepare("INSERT INTO events(seq, type, event) VALUES (?1, ?2, ?3)", op));
      st.bind_all(static_cast<int64_t>(seq), type, event_json);
      FL_RETURN_IF_ERROR(st.run());
    }
    FL_ASSIGN_OR_RETURN(
        auto st, impl_->prepare("UPDATE meta SET value = ?1 WHERE key = 'last_event_seq'", op));
    st.bind(1, static_cast<int64_t>(seq));
    return st.run();
  });
}

Result<uint64_t> Journal::last_event_seq() const {
  std::lock_guard lock(impl_->mu);
  return impl_->last_event_seq();
}

Result<std::vector<std::string>> Journal::events_since(uint64_t seq, size_t limit) const {
  std::vector<std::string> out;
  if (limit == 0 || seq >= static_cast<uint64_t>(kInt64Max)) return out;
  std::lock_guard lock(impl_->mu);
  FL_ASSIGN_OR_RETURN(auto st, impl_->prepare("SELECT event FROM events WHERE seq > ?1 "
                                              "ORDER BY seq LIMIT ?2",
                                              fmt::format("events_since {}", seq)));
  st.bind(1, static_cast<int64_t>(seq));
  st.bind(2, static_cast<int64_t>(std::min<uint64_t>(limit, static_cast<uint64_t>(kInt64Max))));
  for (;;) {
    FL_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    out.emplace_back(st.text(0));
  }
  return out;
}

Result<int64_t> Journal::prune_events(uint64_t before_seq) {
  if (before_seq == 0) return int64_t{0};
  std::lock_guard lock(impl_->mu);
  FL_ASSIGN_OR_RETURN(auto st, impl_->prepare("DELETE FROM events WHERE seq <= ?1",
                                              fmt::format("prune_events {}", before_seq)));
  st.bind(1, static_cast<int64_t>(std::min<uint64_t>(before_seq, kInt64Max)));
  FL_RETURN_IF_ERROR(st.run());
  return static_cast<int64_t>(sqlite3_changes64(impl_->db.get()));
}

Status Journal::transaction(const std::function<Status()>& fn) {
  std::lock_guard lock(impl_->mu);
  return impl_->atomically("transaction", fn);
}

}  // namespace fabriclab::orchestrator
