// The journal's SQLite plumbing (private to orchestrator/src): an owning connection pointer,
// errors that name the operation and map SQLite's result codes onto our conditions, and a
// prepared statement that finalizes itself. Nothing here knows the journal's tables.
//
// Errors: sql_error must be called right after the failing call and under the caller's lock
// (sqlite3_errmsg is per connection). Stmt keeps the first binding error and reports it from the
// next step(), so call sites bind without checking each call.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "fabriclab/common/result.hpp"

namespace fabriclab::orchestrator::journal_sqlite {

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

// The condition a caller branches on for an SQLite result code (a busy or full database is
// transient, a foreign file invalid_state, a missing directory not_found, ...).
Condition condition_of(sqlite3* db, int rc);

// "journal: <op>: <sqlite message>". Call right after the failing call, under the lock.
Error sql_error(sqlite3* db, int rc, std::string_view op);

// A prepared statement; finalized on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, sqlite3_stmt* stmt, std::string_view op) : db_(db), stmt_(stmt), op_(op) {}
  Stmt(Stmt&& o) noexcept
      : db_(o.db_),
        stmt_(std::exchange(o.stmt_, nullptr)),
        op_(std::move(o.op_)),
        bind_rc_(o.bind_rc_) {}
  Stmt& operator=(Stmt&&) = delete;
  Stmt(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(stmt_); }

  // Text binds copy (SQLITE_TRANSIENT); an empty view binds "" (not NULL).
  void bind(int i, std::string_view v);
  void bind(int i, int64_t v) { note(sqlite3_bind_int64(stmt_, i, v)); }
  // Binds ?1, ?2, ... to `args`, in order.
  template <class... Args>
  void bind_all(const Args&... args) {
    int i = 0;
    (bind(++i, args), ...);
  }

  // One step: true when a row is available, false when done.
  Result<bool> step();
  // Runs a statement that returns no rows of interest.
  Status run();

  // Column `col` of the current row; valid until the next step.
  std::string_view text(int col) const;
  int64_t int64(int col) const { return sqlite3_column_int64(stmt_, col); }

 private:
  void note(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  std::string op_;
  int bind_rc_ = SQLITE_OK;
};

}  // namespace fabriclab::orchestrator::journal_sqlite
