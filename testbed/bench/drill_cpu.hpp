// fabriclab-bench-drill, internal: where the machine's CPU went during each phase.
// CPU: a sampler thread reads /proc every second: the machine's busy time (/proc/stat) and the
// CPU time of every process, in categories: the lab's QEMU processes per host (command lines
// name LAB/hN/), the lab's agents and orchestrator, this bench, QEMU processes that are not the
// lab's (another run on the machine distorts the figures), and everything else by command name.
// A process that ends between two samples loses its last second; what no category holds is
// reported as unaccounted (kernel threads, processes that ended).
//
// CpuSampler starts sampling when constructed; window(a, b) reads any interval of the samples so
// far, in cores. finish() (or the destructor) stops the thread; the samples stay readable.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "drill_util.hpp"

namespace fabriclab::bench_drill {

struct CpuSample {
  int64_t t_ms = 0;
  double busy_s = 0, total_s = 0;       // the machine (all cores)
  std::map<std::string, double> cat_s;  // cumulative CPU seconds per category
  int foreign_qemu = 0;                 // live (not zombie) QEMU processes not of the lab
};

class CpuSampler {
 public:
  CpuSampler(std::string lab_dir, const std::set<pid_t>& agent_pids, pid_t orchestrator_pid);
  ~CpuSampler() { finish(); }
  CpuSampler(const CpuSampler&) = delete;
  CpuSampler& operator=(const CpuSampler&) = delete;
  void finish();

  // Over [a, b], in cores (CPU seconds per wall second): the machine, the lab's QEMU processes
  // of `busy_hosts` and of the others, the lab's agents + orchestrator, this bench, foreign QEMU,
  // other processes (the top five by name) and what no category holds.
  json::object window(int64_t a, int64_t b, const std::vector<std::string>& busy_hosts) const;
  // The most QEMU processes not of the lab seen in one sample.
  int foreign_max() const;
  static double cores() { return static_cast<double>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))); }

 private:
  void sample();

  std::string dir_;
  std::set<pid_t> agents_;
  pid_t orchestrator_ = 0;
  double hz_ = 100;
  mutable std::mutex mu_;
  std::vector<CpuSample> samples_;
  std::map<pid_t, double> last_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};
}  // namespace fabriclab::bench_drill
