#include "journal_sqlite.hpp"

#include <fmt/format.h>

#include <cerrno>

namespace fabriclab::orchestrator::journal_sqlite {

Condition condition_of(sqlite3* db, int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
      return Condition::transient;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return Condition::invalid_state;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return Condition::permission_denied;
    case SQLITE_CANTOPEN: {
      int e = db != nullptr ? sqlite3_system_errno(db) : 0;
      if (e == ENOENT || e == ENOTDIR) return Condition::not_found;
      if (e == EACCES || e == EPERM || e == EROFS) return Condition::permission_denied;
      return Condition::transient;
    }
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
    case SQLITE_CONSTRAINT:
      return Condition::invalid_argument;
    default:
      return Condition::internal;
  }
}

// "journal: <op>: <sqlite message>". Call right after the failing call, under the lock.
Error sql_error(sqlite3* db, int rc, std::string_view op) {
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return make_error(condition_of(db, rc), fmt::format("journal: {}: {}", op, msg));
}

void Stmt::bind(int i, std::string_view v) {
  // An empty view may have a null data pointer, which SQLite would bind as NULL.
  note(sqlite3_bind_text64(stmt_, i, v.data() != nullptr ? v.data() : "", v.size(),
                           SQLITE_TRANSIENT, SQLITE_UTF8));
}

Result<bool> Stmt::step() {
  if (bind_rc_ != SQLITE_OK) return sql_error(db_, bind_rc_, op_);
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return sql_error(db_, rc, op_);
}

Status Stmt::run() {
  FL_ASSIGN_OR_RETURN(bool row, step());
  while (row) {
    FL_ASSIGN_OR_RETURN(row, step());
  }
  return {};
}

std::string_view Stmt::text(int col) const {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
  int n = sqlite3_column_bytes(stmt_, col);
  return p != nullptr ? std::string_view(p, static_cast<size_t>(n)) : std::string_view();
}

}  // namespace fabriclab::orchestrator::journal_sqlite
