// fabriclab-bench-agent: what a host-os update costs the guests, against the raw cycle.
//
// One host agent (in-process, real QEMU through the embedded driver, emulated boot delay 0) runs G
// guests. First the raw cycle is measured through the agent's own primitives: all G guests are
// stopped at once (the ladder), then all started at once, and each guest's heartbeat gap (its
// last heartbeat before to its first after) is its raw cycle. That is the honest floor for a host
// update, which must have every guest off before the host reboots and then boots them all on the
// same CPUs: G guests booting at once on two cores take longer than one. Then a host-os update
// runs (scheduled event with notice 0, stop, host image swap, hypervisor reconnect, start,
// verify) and each guest's down time is the same heartbeat gap. The ratio is the overhead of the
// maintenance machinery over the unavoidable stop + boot.

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/testbed/lab_guest.hpp"

using namespace fabriclab;
using namespace std::chrono_literals;
namespace json = boost::json;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::cerr << "fabriclab-bench-agent: " << what << "\n";
  std::exit(1);
}

json::object wait_healthy(agent::HostAgent& a, const std::string& name, uint64_t after_seq) {
  for (int i = 0; i < 2400; ++i) {
    auto j = a.instance_json(name);
    if (j.ok() && j->at("status").as_string() == "Healthy" && j->contains("last_heartbeat") &&
        (after_seq == 0 || j->at("heartbeats").to_number<uint64_t>() > after_seq)) {
      return *j;
    }
    std::this_thread::sleep_for(50ms);
  }
  die(name + " never became healthy");
}

// Runs `fn` on every guest at once and returns when all are done; dies naming the first failure.
void on_all(const std::vector<std::string>& names,
            const std::function<Status(const std::string&)>& fn) {
  std::vector<Status> results(names.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < names.size(); ++i)
    threads.emplace_back([&, i] { results[i] = fn(names[i]); });
  for (auto& t : threads) t.join();
  for (auto& r : results) {
    if (!r.ok()) die(r.error().describe());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Per-guest down time of a host-os update on real VMs, divided by the raw "
      "stop + start + first-heartbeat cycle of the same guest in the same run"};
  int guests = 1, rounds = 3, parallel = agent::AgentOptions{}.parallel_guests;
  bool json_out = false;
  std::string images = testbed::default_images_dir();
  app.add_option("-g,--guests", guests, "Guests on the host")->check(CLI::Range(1, 4));
  app.add_option("-n,--rounds", rounds, "Raw cycles and host-os updates each")
      ->check(CLI::Range(1, 20));
  app.add_option("-p,--parallel-guests", parallel,
                 "Guests the agent stops and starts at once in an update")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--images", images, "Guest images directory");
  app.add_flag("--json", json_out, "Print one JSON object");
  CLI11_PARSE(app, argc, argv);

  auto dir = testbed::make_short_tmpdir("flba-");
  if (!dir.ok()) die(dir.error().describe());
  agent::AgentOptions o;
  o.host_id = "bench";
  o.state_dir = *dir + "/st";
  o.guest_images_dirs = {images};
  o.boot_delay = 0ms;
  o.parallel_guests = parallel;
  auto feed = std::make_shared<EventFeed>([] { return json::object{}; });
  auto created = agent::HostAgent::create(o, feed);
  if (!created.ok()) die(created.error().describe());
  auto& a = **created;

  std::vector<std::string> names;
  for (int i = 0; i < guests; ++i) {
    agent::InstanceSpec s;
    s.name = "bench-" + std::to_string(i);
    s.meta = {"bench", i, i, 0, "v1"};
    if (auto r = a.create_instance(s); !r.ok()) die(r.error().describe());
    names.push_back(s.name);
  }
  for (auto& n : names) wait_healthy(a, n, 0);

  // Rounds alternate a raw cycle of all guests at once (the heartbeat gaps of a plain stop of
  // every guest, then a start of every guest, through the agent) with a host-os update (whose
  // report gives each guest's down time from the same heartbeats), so that both see the same
  // machine load.
  std::vector<double> raw, down;
  // Each round's own ratio (its median down time over its median raw cycle): the two are measured
  // a minute apart, so a machine whose load swings between rounds (shared CPUs) skews it less.
  std::vector<double> round_ratio;
  using Beat = std::pair<std::chrono::steady_clock::time_point, std::string>;  // when, boot id
  auto newest_heartbeat = [&](const std::string& n) -> Beat {
    auto j = a.instance_json(n);
    if (!j.ok() || !j->contains("last_heartbeat")) return {};
    const auto& hb = j->at("last_heartbeat").as_object();
    return {
        std::chrono::steady_clock::now() - std::chrono::milliseconds(hb.at("age_ms").as_int64()),
        std::string(hb.at("boot_id").as_string())};
  };
  for (int r = 0; r < rounds; ++r) {
    for (auto& n : names) wait_healthy(a, n, 0);
    std::map<std::string, Beat> before, after;
    std::mutex mu;
    on_all(names, [&](const std::string& n) {
      auto b = newest_heartbeat(n);
      {
        std::lock_guard lock(mu);
        before[n] = b;
      }
      return a.stop_instance(n);
    });
    on_all(names, [&](const std::string& n) { return a.start_instance(n); });
    // Each guest's first heartbeat of its new boot, polled every 20 ms (heartbeats come every
    // second), so the age read with it dates it.
    on_all(names, [&](const std::string& n) -> Status {
      for (int i = 0; i < 6000; ++i) {
        auto b = newest_heartbeat(n);
        if (!b.second.empty() && b.second != before[n].second) {
          std::lock_guard lock(mu);
          after[n] = b;
          return {};
        }
        std::this_thread::sleep_for(20ms);
      }
      return make_error(Condition::timeout, n + " sent no heartbeat from a new boot within 120 s");
    });
    for (auto& n : names) {
      raw.push_back(std::chrono::duration<double>(after[n].first - before[n].first).count());
      std::cerr << "raw cycle " << n << ": " << raw.back() << " s\n";
    }
    const std::string version = "host-" + std::to_string(r + 2);
    const std::string file = *dir + "/" + version + ".img";
    auto sha = agent::write_synthetic_host_image(file, version);
    if (!sha.ok()) die(sha.error().describe());
    if (auto s = a.stage_host_image(version, file, *sha); !s.ok()) die(s.error().describe());
    for (auto& n : names) wait_healthy(a, n, 0);
    auto job = a.start_operation({agent::OperationKind::host_os, version, false, 0});
    if (!job.ok()) die(job.error().describe());
    if (!a.wait_idle(600s)) die("host-os update did not finish");
    auto done = a.job_json(std::string(job->at("id").as_string()));
    if (!done.ok() || done->at("status").as_string() != "succeeded") {
      die("host-os update failed: " +
          (done.ok() ? json::serialize(*done) : done.error().describe()));
    }
    std::vector<double> round_raw(raw.end() - guests, raw.end()), round_down;
    for (auto& g : done->at("guests").as_array()) {
      down.push_back(g.as_object().at("down_ms").as_int64() / 1000.0);
      round_down.push_back(down.back());
      std::cerr << "host-os down " << g.as_object().at("name").as_string() << ": " << down.back()
                << " s\n";
    }
    round_ratio.push_back(testbed::median(round_down) / testbed::median(round_raw));
  }
  for (auto& n : names) (void)a.delete_instance(n);
  created->reset();
  std::filesystem::remove_all(*dir);

  json::object out{{"guests", guests},
                   {"parallel_guests", parallel},
                   {"rounds", rounds},
                   {"guest_downtime_p50_s", testbed::median(down)},
                   {"raw_cycle_p50_s", testbed::median(raw)},
                   {"ratio", testbed::median(down) / testbed::median(raw)},
                   {"ratio_rounds_p50", testbed::median(round_ratio)}};
  if (json_out) {
    std::cout << json::serialize(out) << "\n";
  } else {
    for (auto& [k, v] : out) std::cout << k << ": " << json::serialize(v) << "\n";
  }
  return 0;
}
