#include "drill_cpu.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

namespace fabriclab::bench_drill {

namespace {

static std::string slurp(const std::string& path, size_t max = 1 << 16) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return {};
  std::string s(max, '\0');
  size_t n = std::fread(s.data(), 1, max, f);
  std::fclose(f);
  s.resize(n);
  return s;
}

}  // namespace

CpuSampler::CpuSampler(std::string lab_dir, const std::set<pid_t>& agent_pids,
                       pid_t orchestrator_pid)
    : dir_(std::move(lab_dir)), agents_(agent_pids), orchestrator_(orchestrator_pid) {
  hz_ = static_cast<double>(sysconf(_SC_CLK_TCK));
  sample();
  thread_ = std::thread([this] {
    while (!stop_) {
      for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(100ms);
      sample();
    }
  });
}

void CpuSampler::finish() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

json::object CpuSampler::window(int64_t a, int64_t b,
                                const std::vector<std::string>& busy_hosts) const {
  std::lock_guard lock(mu_);
  const CpuSample* x = nullptr;
  const CpuSample* y = nullptr;
  int foreign = 0;
  for (const auto& s : samples_) {
    if (s.t_ms <= a) x = &s;
    if (!y && s.t_ms >= b) y = &s;
    if (s.t_ms >= a && s.t_ms <= b) foreign = std::max(foreign, s.foreign_qemu);
  }
  if (!x && !samples_.empty()) x = &samples_.front();
  if (!y && !samples_.empty()) y = &samples_.back();
  if (!x || !y || y->t_ms <= x->t_ms) return json::object{};
  const double wall = secs(y->t_ms - x->t_ms);
  double batch_q = 0, other_q = 0, lab = 0, bench = 0, foreign_q = 0, other = 0;
  json::object per_host;
  std::vector<std::pair<double, std::string>> others;
  for (const auto& [c, v] : y->cat_s) {
    double before = x->cat_s.count(c) ? x->cat_s.at(c) : 0.0;
    double d = std::max(0.0, v - before) / wall;
    if (c.rfind("qemu:", 0) == 0) {
      std::string h = c.substr(5);
      per_host[h] = round3(d);
      bool busy = std::find(busy_hosts.begin(), busy_hosts.end(), h) != busy_hosts.end();
      (busy ? batch_q : other_q) += d;
    } else if (c.rfind("lab:", 0) == 0) {
      lab += d;
    } else if (c == "bench") {
      bench += d;
    } else if (c == "foreign-qemu") {
      foreign_q += d;
    } else {
      other += d;
      if (d >= 0.01) others.emplace_back(d, c.substr(6));
    }
  }
  std::sort(others.rbegin(), others.rend());
  json::array top;
  for (size_t i = 0; i < others.size() && i < 5; ++i) {
    top.push_back(json::object{{"name", others[i].second}, {"cores", round3(others[i].first)}});
  }
  const double total = y->total_s - x->total_s;
  const double busy = total > 0 ? (y->busy_s - x->busy_s) / total * cores() : 0.0;
  return json::object{
      {"wall_s", round3(wall)},
      {"machine_busy_cores", round3(busy)},
      {"qemu_cores_batch_hosts", round3(batch_q)},
      {"qemu_cores_other_hosts", round3(other_q)},
      {"lab_processes_cores", round3(lab)},
      {"bench_cores", round3(bench)},
      {"foreign_qemu_cores", round3(foreign_q)},
      {"other_processes_cores", round3(other)},
      {"unaccounted_cores", round3(busy - batch_q - other_q - lab - bench - foreign_q - other)},
      {"top_other_processes", std::move(top)},
      {"qemu_cores_per_host", std::move(per_host)},
      {"foreign_qemu_max", foreign}};
}

int CpuSampler::foreign_max() const {
  std::lock_guard lock(mu_);
  int m = 0;
  for (const auto& s : samples_) m = std::max(m, s.foreign_qemu);
  return m;
}

void CpuSampler::sample() {
  CpuSample s;
  s.t_ms = now_ms();
  {
    std::istringstream in(slurp("/proc/stat", 4096));
    std::string cpu;
    double v[8] = {};
    in >> cpu;
    for (double& x : v) in >> x;
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    const double idle = v[3] + v[4];
    const double all = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    s.busy_s = (all - idle) / hz_;
    s.total_s = all / hz_;
  }
  const pid_t self = getpid();
  std::map<pid_t, std::pair<std::string, double>> now;  // pid -> category, CPU seconds so far
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::isdigit(static_cast<unsigned char>(n[0]))) continue;
    const pid_t pid = static_cast<pid_t>(std::atol(n.c_str()));
    std::string stat = slurp("/proc/" + n + "/stat", 4096);
    auto lp = stat.find('('), rp = stat.rfind(')');
    if (lp == std::string::npos || rp == std::string::npos || rp + 2 >= stat.size()) continue;
    const std::string comm = stat.substr(lp + 1, rp - lp - 1);
    const char state = stat[rp + 2];
    std::istringstream in(stat.substr(rp + 2));
    std::string field;
    double ut = 0, st = 0;
    for (int i = 3; i <= 15 && in >> field; ++i) {
      if (i == 14) ut = std::atof(field.c_str());
      if (i == 15) st = std::atof(field.c_str());
    }
    std::string cat;
    if (comm.rfind("qemu", 0) == 0) {
      std::string cmd = slurp("/proc/" + n + "/cmdline");
      auto pos = cmd.find(dir_ + "/h");
      if (pos == std::string::npos) {
        if (state != 'Z') ++s.foreign_qemu;
        cat = "foreign-qemu";
      } else {
        size_t a = pos + dir_.size() + 1, z = cmd.find('/', a);
        cat = "qemu:" + cmd.substr(a, z == std::string::npos ? std::string::npos : z - a);
      }
    } else if (pid == self) {
      cat = "bench";
    } else if (agents_.count(pid)) {
      cat = "lab:agents";
    } else if (pid == orchestrator_) {
      cat = "lab:orchestrator";
    } else {
      cat = "other:" + comm;
    }
    now[pid] = {cat, (ut + st) / hz_};
  }
  std::lock_guard lock(mu_);
  // Cumulative per category: the previous totals plus each live pid's growth (a pid first seen
  // counts whole, except in the first sample, which is the baseline).
  std::map<std::string, double> acc =
      samples_.empty() ? std::map<std::string, double>{} : samples_.back().cat_s;
  const bool baseline = samples_.empty();
  for (const auto& [pid, cv] : now) {
    auto it = last_.find(pid);
    double prev = it != last_.end() ? it->second : (baseline ? cv.second : 0.0);
    acc[cv.first] += std::max(0.0, cv.second - prev);
  }
  last_.clear();
  for (const auto& [pid, cv] : now) last_[pid] = cv.second;
  s.cat_s = std::move(acc);
  samples_.push_back(std::move(s));
}
}  // namespace fabriclab::bench_drill
