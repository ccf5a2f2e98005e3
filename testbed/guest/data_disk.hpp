#pragma once
// The guest app's durable state: one 512-byte record at offset 0 of the raw data disk.
//
//   offset  size  field
//        0     8  magic "FLABCNT1"
//        8     8  counter          (uint64, little endian)
//       16     8  boots            (uint64, little endian)
//       24     4  clean_shutdown   (uint32, 1 = the last boot powered off cleanly)
//       28     4  reserved (0)
//       32    32  last boot_id     (ASCII hex, the boot that wrote the record)
//       64     8  FNV-1a 64 of bytes 0..63
//
// Every change is pwrite + fdatasync before it is acknowledged to the caller, so a value the
// guest reports is a value on the disk. A disk without the magic starts at counter 0; a record
// whose checksum does not match is reported loudly and restarted (the data was lost, not hidden).

#include <cstdint>
#include <string>

namespace fabriclab::guest {

struct DiskRecord {
  std::uint64_t counter = 0;
  std::uint64_t boots = 0;
  bool clean_shutdown = false;
  std::string last_boot_id;
};

class DataDisk {
 public:
  static constexpr std::size_t kRecordSize = 512;

  DataDisk() = default;
  DataDisk(const DataDisk&) = delete;
  DataDisk& operator=(const DataDisk&) = delete;
  ~DataDisk();

  enum class OpenResult { opened, not_yet, unusable };
  // One attempt to open the device and read the record. `not_yet` (silent) while the node does
  // not exist, so the caller can retry on a timer; `unusable` (logged) when it exists but cannot be
  // used. Without a disk the guest reports counter -1.
  OpenResult try_open(const std::string& path);
  bool is_open() const { return fd_ >= 0; }

  // A new boot: boots + 1, clean_shutdown = false, last_boot_id = boot_id. Durable on return.
  bool begin_boot(const std::string& boot_id);
  // Stores `value` durably; on failure the record keeps the previous durable value.
  bool commit_counter(std::uint64_t value);
  // Marks the clean shutdown durably (pwrite + fsync).
  bool mark_clean();

  const DiskRecord& record() const { return record_; }
  // The last durable counter, or -1 without a disk.
  std::int64_t reported_counter() const;

 private:
  bool write_record(const DiskRecord& record, bool full_fsync);
  // Writes `next` and, once it is durable, makes it the record in memory; false leaves both.
  bool replace_record(const DiskRecord& next, bool full_fsync);

  int fd_ = -1;
  std::string path_;
  DiskRecord record_;
};

}  // namespace fabriclab::guest
