#include "feed_phase.hpp"

#include <algorithm>
#include <cstdio>
#include <thread>

namespace fabriclab::bench_feed {

PhaseResult run_phase(const Options& o, EventFeed& feed, DrillSim& drill,
                      const std::vector<std::shared_ptr<Subscriber>>& readers,
                      const std::function<bool()>& stalled_dropped) {
  PhaseResult r;
  double cpu0 = cpu_seconds(), client0 = client_cpu_seconds();
  auto start = Clock::now();
  auto period = std::chrono::duration<double>(1.0 / o.rate);
  auto stalled_attached = [&] {
    return stalled_dropped && r.cut_off_after_s < 0 &&
           std::chrono::duration<double>(Clock::now() - start).count() < o.stall_max_s;
  };
  for (int i = 0; i < o.events || stalled_attached(); i += o.burst) {
    // A burst of `burst` events in one publish call, as the orchestrator publishes what one poll
    // of an agent revealed; bursts spaced so the mean rate holds.
    std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(period * i));
    std::vector<std::pair<std::string, json::object>> burst;
    int64_t t = now_ns();
    for (int k = 0; k < o.burst; ++k) {
      auto [type, fields] = drill.next();
      json::object ev;
      ev.reserve(fields.size() + 1);
      ev["t_ns"] = t;
      for (auto& kv : fields) ev[kv.key()] = std::move(kv.value());
      burst.emplace_back(std::move(type), std::move(ev));
    }
    uint64_t seq = feed.publish(std::move(burst));
    if (i == 0) r.first_seq = seq - o.burst + 1;
    r.last_seq = seq;
    r.events = static_cast<uint64_t>(i + o.burst);
    if (stalled_dropped && r.cut_off_after_s < 0 && stalled_dropped()) {
      r.cut_off_after_s = std::chrono::duration<double>(Clock::now() - start).count();
      r.cut_off_after_events = i + o.burst;
    }
  }
  auto published = Clock::now();
  r.publish_s = std::chrono::duration<double>(published - start).count();
  auto deadline = published + 5s;
  for (;;) {
    bool all = std::all_of(readers.begin(), readers.end(), [&](const auto& s) {
      return s->state != 1 ||
             s->last_seq.load(std::memory_order_acquire) >= static_cast<int64_t>(r.last_seq);
    });
    if (all || Clock::now() > deadline) break;
    std::this_thread::sleep_for(1ms);
  }
  auto end = Clock::now();
  r.drain_ms = std::chrono::duration<double, std::milli>(end - published).count();
  double wall = std::chrono::duration<double>(end - start).count();
  r.cpu_s = cpu_seconds() - cpu0;
  r.cpu_cores = r.cpu_s / wall;
  r.client_cores = (client_cpu_seconds() - client0) / wall;
  if (stalled_dropped && r.cut_off_after_s < 0 && stalled_dropped()) {
    r.cut_off_after_s = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return r;
}

// Latency and loss of the readers over the phase's seq range (after the client threads ended).
void score(PhaseResult& r, const std::vector<std::shared_ptr<Subscriber>>& readers) {
  std::vector<uint32_t> lat;
  lat.reserve(readers.size() * (r.last_seq - r.first_seq + 1));
  for (const auto& s : readers) {
    int64_t prev = -1;
    for (const auto& x : s->samples) {
      if (x.seq < r.first_seq || x.seq > r.last_seq) continue;
      if (static_cast<int64_t>(x.seq) <= prev) {
        ++r.misordered;
        continue;
      }
      prev = x.seq;
      lat.push_back(x.latency_us);
    }
  }
  r.expected = readers.size() * (r.last_seq - r.first_seq + 1);
  r.received = lat.size();
  if (r.received > 0) r.us_per_delivery = r.cpu_s * 1e6 / static_cast<double>(r.received);
  if (lat.empty()) return;
  auto pct = [&](double p) {
    size_t k = std::min(lat.size() - 1, static_cast<size_t>(p * (lat.size() - 1) + 0.5));
    std::nth_element(lat.begin(), lat.begin() + k, lat.end());
    return lat[k] / 1000.0;
  };
  r.p50_ms = pct(0.50);
  r.p99_ms = pct(0.99);
  r.max_ms = *std::max_element(lat.begin(), lat.end()) / 1000.0;
}

json::object figures(const PhaseResult& r) {
  return json::object{{"p50_latency_ms", round3(r.p50_ms)},
                      {"p99_latency_ms", round3(r.p99_ms)},
                      {"max_latency_ms", round3(r.max_ms)},
                      {"lost", r.expected - r.received},
                      {"misordered", r.misordered},
                      {"events", r.events},
                      {"readers_closed", r.readers_ended},
                      {"cpu_cores", round3(r.cpu_cores)},
                      {"client_cpu_cores", round3(r.client_cores)},
                      {"cpu_us_per_delivery", round3(r.us_per_delivery)}};
}

void print_phase(const char* name, const PhaseResult& r) {
  std::printf(
      "%s: p50 %.2f ms, p99 %.2f ms, max %.2f ms; received %llu of %llu (lost %llu, "
      "misordered %llu); readers closed %d\n",
      name, r.p50_ms, r.p99_ms, r.max_ms, static_cast<unsigned long long>(r.received),
      static_cast<unsigned long long>(r.expected),
      static_cast<unsigned long long>(r.expected - r.received),
      static_cast<unsigned long long>(r.misordered), r.readers_ended);
  std::printf(
      "  %llu events published in %.2f s, readers caught up %.1f ms later; process CPU "
      "%.2f cores (client io threads %.2f), %.1f us per delivery\n",
      static_cast<unsigned long long>(r.events), r.publish_s, r.drain_ms, r.cpu_cores,
      r.client_cores, r.us_per_delivery);
}
}  // namespace fabriclab::bench_feed
