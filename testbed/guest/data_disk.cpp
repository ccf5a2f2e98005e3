#include "data_disk.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "boot_env.hpp"

namespace fabriclab::guest {
namespace {

constexpr char kMagic[8] = {'F', 'L', 'A', 'B', 'C', 'N', 'T', '1'};
constexpr std::size_t kChecksumOffset = 64;
constexpr std::size_t kBootIdSize = 32;
constexpr std::uint64_t kMinDiskBytes = std::uint64_t{1024} * 1024;

using Block = std::array<unsigned char, DataDisk::kRecordSize>;

void put_u64(Block& block, std::size_t offset, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) block[offset + i] = static_cast<unsigned char>(value >> (8 * i));
}

std::uint64_t get_u64(const Block& block, std::size_t offset) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | block[offset + i];
  return value;
}

std::uint64_t fnv1a(const unsigned char* data, std::size_t size) {
  std::uint64_t hash = 14695981039346656037ULL;
  for (std::size_t i = 0; i < size; ++i) {
    hash ^= data[i];
    hash *= 1099511628211ULL;
  }
  return hash;
}

Block encode(const DiskRecord& record) {
  Block block{};
  std::memcpy(block.data(), kMagic, sizeof kMagic);
  put_u64(block, 8, record.counter);
  put_u64(block, 16, record.boots);
  block[24] = record.clean_shutdown ? 1 : 0;
  std::memcpy(block.data() + 32, record.last_boot_id.data(),
              std::min(record.last_boot_id.size(), kBootIdSize));
  put_u64(block, kChecksumOffset, fnv1a(block.data(), kChecksumOffset));
  return block;
}

}  // namespace

DataDisk::~DataDisk() {
  if (fd_ >= 0) ::close(fd_);
}

DataDisk::OpenResult DataDisk::try_open(const std::string& path) {
  if (fd_ >= 0) return OpenResult::opened;
  path_ = path;
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    if (errno == ENOENT || errno == ENXIO || errno == ENODEV) return OpenResult::not_yet;
    log("data disk %s: open failed (%s): not used", path.c_str(), std::strerror(errno));
    return OpenResult::unusable;
  }
  std::uint64_t size = 0;
  if (::ioctl(fd_, BLKGETSIZE64, &size) == 0 && size < kMinDiskBytes) {
    log("data disk %s is only %llu bytes (want >= 1 MiB); using it anyway", path.c_str(),
        static_cast<unsigned long long>(size));
  }
  Block block{};
  ssize_t n = ::pread(fd_, block.data(), block.size(), 0);
  if (n != static_cast<ssize_t>(block.size())) {
    log("data disk %s: read failed (%s): not used", path.c_str(),
        n < 0 ? std::strerror(errno) : "short read");
    ::close(fd_);
    fd_ = -1;
    return OpenResult::unusable;
  }
  if (std::memcmp(block.data(), kMagic, sizeof kMagic) != 0) {
    log("data disk %s: no record (fresh disk), counter starts at 0", path.c_str());
    record_ = DiskRecord{};
  } else if (get_u64(block, kChecksumOffset) != fnv1a(block.data(), kChecksumOffset)) {
    log("data disk %s: record checksum mismatch: DATA LOST, counter restarts at 0", path.c_str());
    record_ = DiskRecord{};
  } else {
    record_.counter = get_u64(block, 8);
    record_.boots = get_u64(block, 16);
    record_.clean_shutdown = block[24] == 1;
    const char* id = reinterpret_cast<const char*>(block.data() + 32);
    record_.last_boot_id.assign(id, strnlen(id, kBootIdSize));
    log("data disk %s: counter=%llu boots=%llu last_shutdown=%s last_boot=%s", path.c_str(),
        static_cast<unsigned long long>(record_.counter),
        static_cast<unsigned long long>(record_.boots),
        record_.clean_shutdown ? "clean" : "unclean", record_.last_boot_id.c_str());
  }
  return OpenResult::opened;
}

bool DataDisk::begin_boot(const std::string& boot_id) {
  if (fd_ < 0) return false;
  DiskRecord next = record_;
  next.boots += 1;
  next.clean_shutdown = false;
  next.last_boot_id = boot_id;
  return replace_record(next, false);
}

bool DataDisk::commit_counter(std::uint64_t value) {
  if (fd_ < 0) return false;
  DiskRecord next = record_;
  next.counter = value;
  return replace_record(next, false);
}

bool DataDisk::mark_clean() {
  if (fd_ < 0) return false;
  DiskRecord next = record_;
  next.clean_shutdown = true;
  return replace_record(next, true);
}

bool DataDisk::replace_record(const DiskRecord& next, bool full_fsync) {
  if (!write_record(next, full_fsync)) return false;
  record_ = next;
  return true;
}

std::int64_t DataDisk::reported_counter() const {
  return fd_ >= 0 ? static_cast<std::int64_t>(record_.counter) : -1;
}

bool DataDisk::write_record(const DiskRecord& record, bool full_fsync) {
  Block block = encode(record);
  ssize_t n = ::pwrite(fd_, block.data(), block.size(), 0);
  if (n != static_cast<ssize_t>(block.size())) {
    log("data disk %s: pwrite failed (%s)", path_.c_str(), n < 0 ? std::strerror(errno) : "short");
    return false;
  }
  int rc = full_fsync ? ::fsync(fd_) : ::fdatasync(fd_);
  if (rc != 0) {
    log("data disk %s: %s failed (%s)", path_.c_str(), full_fsync ? "fsync" : "fdatasync",
        std::strerror(errno));
    return false;
  }
  return true;
}

}  // namespace fabriclab::guest
