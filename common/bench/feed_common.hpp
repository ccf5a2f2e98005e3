// fabriclab-bench-feed, internal: what the client side shares (names, clock, the client io threads'
// CPU), the drill simulator that feeds the publisher, and die(). Header only.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fabriclab::bench_feed {

namespace net = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

inline constexpr char kToken[] = "bench-read-token";
inline constexpr char kPath[] = "/v1/events";

[[noreturn]] inline void die(const std::string& what) {
  std::cerr << "fabriclab-bench-feed: " << what << "\n";
  std::exit(1);
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// The process's CPU seconds so far (user + system).
double cpu_seconds();
// The client io threads' CPU seconds so far (threads registered with add_client_thread).
double client_cpu_seconds();
void add_client_thread(pid_t tid);

// A drill over a small cluster, as the orchestrator would narrate it: per batch of hosts,
// drill.batch started, each host draining with its instances stopping/stopped, updating, back,
// instances starting/healthy, drill.batch finished.
class DrillSim {
 public:
  static constexpr int kHosts = 48, kPerHost = 6, kFds = 4, kBatch = 4;

  static json::object snapshot() {
    json::array hosts;
    for (int h = 0; h < 8; ++h) {
      hosts.push_back(json::object{{"name", host(h)},
                                   {"fault_domain", h % kFds},
                                   {"state", "healthy"},
                                   {"instances", kPerHost}});
    }
    return json::object{
        {"drill", "drill-bench"}, {"phase", "running"}, {"hosts", hosts}, {"host_count", kHosts}};
  }

  // The next event of the drill: type and fields (without t_ns).
  std::pair<std::string, json::object> next() {
    if (steps_.empty()) plan_batch();
    auto e = std::move(steps_.front());
    steps_.erase(steps_.begin());
    return e;
  }

 private:
  static std::string host(int h) { return "host-" + std::to_string(1000 + h); }
  static std::string instance(int h, int i) {
    return "svc-" + std::to_string((h * kPerHost + i) % 37) + "-inst-" + std::to_string(h * 10 + i);
  }

  void host_state(int h, const char* from, const char* to, const char* reason) {
    steps_.push_back({"host.state", json::object{{"drill", "drill-bench"},
                                                 {"batch", batch_},
                                                 {"host", host(h)},
                                                 {"fault_domain", h % kFds},
                                                 {"from", from},
                                                 {"to", to},
                                                 {"reason", reason},
                                                 {"image", "host-os-2024.06.1"}}});
  }
  void instance_state(int h, int i, const char* from, const char* to) {
    steps_.push_back({"instance.state", json::object{{"drill", "drill-bench"},
                                                     {"batch", batch_},
                                                     {"host", host(h)},
                                                     {"instance", instance(h, i)},
                                                     {"service", "svc-" + std::to_string(i % 37)},
                                                     {"update_domain", i % 5},
                                                     {"from", from},
                                                     {"to", to}}});
  }
  void batch_event(const char* state, const std::vector<int>& hs) {
    json::array names;
    for (int h : hs) names.push_back(json::string(host(h)));
    steps_.push_back({"drill.batch", json::object{{"drill", "drill-bench"},
                                                  {"batch", batch_},
                                                  {"state", state},
                                                  {"hosts", names},
                                                  {"fault_domain", hs.front() % kFds},
                                                  {"done_hosts", batch_ * kBatch},
                                                  {"total_hosts", kHosts}}});
  }

  void plan_batch() {
    ++batch_;
    std::vector<int> hs;
    for (int k = 0; k < kBatch; ++k) hs.push_back((next_host_++) % kHosts);
    batch_event("started", hs);
    for (int h : hs) {
      host_state(h, "healthy", "draining", "planned maintenance");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "running", "stopping");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "stopping", "stopped");
      host_state(h, "draining", "updating", "host-os update");
      host_state(h, "updating", "healthy", "verified");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "stopped", "starting");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "starting", "healthy");
    }
    batch_event("finished", hs);
  }

  std::vector<std::pair<std::string, json::object>> steps_;
  int batch_ = 0;
  int next_host_ = 0;
};
}  // namespace fabriclab::bench_feed
