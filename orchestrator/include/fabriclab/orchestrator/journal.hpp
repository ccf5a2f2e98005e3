#pragma once
// The fabric controller's journal: what a restarted orchestrator needs to resume a drill without
// redoing finished hosts (docs/architecture.md "A drill, step by step", step 7).
//
// One SQLite database file in WAL mode, written with synchronous=FULL: once a write method has
// returned ok, the record survives SIGKILL of the process and loss of power. Everything the
// journal keeps:
//   - named JSON documents (the cluster model, host endpoints, settings);
//   - drills: one row each (id, state, the whole drill document), in creation order;
//   - per-host progress within a drill (batch, status, agent job, the job's result);
//   - the events published on the feed, with their sequence numbers, and the highest sequence
//     number ever appended (kept when old events are pruned, so numbers are never reused).
//
// The schema is versioned (PRAGMA user_version) and the file is marked as ours (PRAGMA
// application_id); a database with a newer or unknown schema is refused, never altered.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::orchestrator {

// Thread safe: one connection behind one recursive mutex, so every method may be called from any
// thread, and calls made from inside `transaction`'s function on the same thread join that
// transaction. Durability: journal_mode=WAL, synchronous=FULL, busy_timeout 5 s, foreign_keys on.
//
// Errors: every SQLite failure becomes an Error naming the operation and SQLite's message.
// Conditions: bad arguments -> invalid_argument; a database that is not ours, is newer, or is
// corrupt -> invalid_state; busy/locked/full/I-O -> transient; no permission -> permission_denied;
// a missing directory -> not_found; a stored document that no longer parses -> internal.
class Journal {
 public:
  // The schema this build writes and reads (PRAGMA user_version).
  static constexpr int kSchemaVersion = 1;
  // Marks a journal file (PRAGMA application_id): "FLBJ".
  static constexpr int32_t kApplicationId = 0x464C424A;
  // Largest serialized JSON document (doc, drill document, progress detail) and deepest nesting
  // the journal stores; larger or deeper ones are refused on write so everything written can be
  // read back.
  static constexpr size_t kMaxDocBytes = 16u << 20;
  static constexpr int kMaxDocDepth = 64;
  // Longest key, drill id, state, host name, job id or event type, in bytes.
  static constexpr size_t kMaxNameBytes = 256;

  // Opens the journal at `path`, creating the file and the schema if missing (the directory must
  // exist). Errors name the path: a file that is not an SQLite database (invalid_state), a
  // database of another application or with a newer schema version (invalid_state, naming the
  // version), a filesystem without WAL support (unsupported).
  static Result<std::unique_ptr<Journal>> open(const std::string& path);

  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Named JSON documents: upsert / read (nullopt when `key` was never written).
  Status put_doc(std::string_view key, const json::object& value);
  Result<std::optional<json::object>> get_doc(std::string_view key) const;

  // One drill as stored. `created_at` is set on the first save, `updated_at` on every save (both
  // RFC 3339, UTC, by the journal).
  struct DrillRow {
    std::string id, state;
    json::object doc;
    std::string created_at, updated_at;
  };

  // Upserts the drill `id` with its `state` (e.g. "Running") and whole document (spec, plan,
  // current batch...). A new id is the newest drill; saving again keeps its place.
  Status save_drill(std::string_view id, std::string_view state, const json::object& doc);
  // The drill's document; nullopt when there is no such drill.
  Result<std::optional<json::object>> get_drill(std::string_view id) const;
  // All drills, oldest (first saved) first.
  Result<std::vector<DrillRow>> drills() const;
  // The newest drill whose state is one of `states` (e.g. {"Running", "Paused"}); nullopt when
  // none matches (or `states` is empty).
  Result<std::optional<DrillRow>> latest_drill_in(const std::vector<std::string>& states) const;

  // Progress of one host within a drill.
  struct HostProgress {
    std::string host;
    int batch = 0;           // index of the host's batch in the walk, >= 0
    std::string status;      // "pending" | "running" | "done" | "failed" | "skipped"
    std::string job;         // the agent's job id; may be empty
    json::object detail;     // the agent's job result
    std::string updated_at;  // set by the journal on write (ignored in set_host_progress)
  };

  // Upserts (drill, p.host). The drill must have been saved first (not_found otherwise); an
  // unknown status or a negative batch is invalid_argument.
  Status set_host_progress(std::string_view drill, const HostProgress& p);
  // Every host of `drill`, ordered by batch then host; empty for an unknown drill.
  Result<std::vector<HostProgress>> host_progress(std::string_view drill) const;

  // Appends one event as published on the feed: `seq` assigned by the caller, strictly above
  // every seq ever appended (pruned ones included), else invalid_argument; at most INT64_MAX.
  // `event_json` is stored as given (the feed's serialized event).
  Status append_event(uint64_t seq, std::string_view type, std::string_view event_json);
  // The highest seq ever appended; 0 when none. Pruning does not lower it.
  Result<uint64_t> last_event_seq() const;
  // The serialized events with seq > `seq`, oldest first, at most `limit` of them.
  Result<std::vector<std::string>> events_since(uint64_t seq, size_t limit) const;
  // Retention: deletes the events with seq <= `before_seq`; returns how many were removed.
  Result<int64_t> prune_events(uint64_t before_seq);

  // Runs `fn` atomically: inside BEGIN IMMEDIATE ... COMMIT, holding the journal's lock, so other
  // threads wait until it ends. `fn` may call this Journal's methods on the same thread (they join
  // the transaction), including `transaction` itself (a savepoint: its failure undoes only its
  // own writes). When `fn` returns an error (or throws), everything it wrote is rolled back and
  // the error returned (rethrown). `fn` must not wait for another thread that uses this Journal.
  Status transaction(const std::function<Status()>& fn);

  // The path given to open.
  std::string path() const;
  // The connection's journal mode as SQLite reports it ("wal").
  Result<std::string> journal_mode() const;

 private:
  struct Impl;
  explicit Journal(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fabriclab::orchestrator
