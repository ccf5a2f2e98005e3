// fabriclab-demo: the maintenance pause on real VMs, before the orchestrator exists.
//
// Boots an availability set of N guests (one per update domain) on v1, then walks them one update
// domain at a time, as the seeds' update engine does: scheduled event (Reboot) with a notice, the
// guest's early ack, ACPI stop through the shutdown ladder, image swap to v2, start, wait for the
// heartbeat. Because only one UD is down at a time, the service always has a live instance; the
// demo checks that from the heartbeats and that no durable counter value was lost.

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/logging.hpp"
#include "fabriclab/testbed/lab_guest.hpp"

using namespace fabriclab;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::atomic<bool> g_interrupted{false};

struct Row {
  std::string name;
  int ud = 0;
  double ack_s = -1;
  std::string stop_method;
  double stop_s = 0;
  double down_s = 0;
  std::string image_before, image_after;
  int64_t counter_before = 0, counter_after = 0;
  bool ok = false;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Real-VM maintenance demo: boot an availability set, walk it one update domain at "
      "a time through stop -> image swap -> start, and prove every guest came back"};
  int guests = 2;
  std::string images = testbed::default_images_dir(), from = "v1", to = "v2";
  int notice_s = 5;
  bool keep = false;
  app.add_option("-g,--guests", guests, "Instances of the service (one per UD)")
      ->check(CLI::Range(1, 5));
  app.add_option("--from", from, "Guest image the instances boot first");
  app.add_option("--to", to, "Guest image the walk swaps to");
  app.add_option("--notice", notice_s, "Scheduled event notice in seconds (an ack starts early)")
      ->check(CLI::Range(0, 900));
  app.add_option("--images", images, "Guest images directory (manifest.json)");
  app.add_flag("--keep", keep, "Leave the VMs and their files in place");
  CLI11_PARSE(app, argc, argv);
  std::signal(SIGINT, [](int) { g_interrupted = true; });
  std::signal(SIGTERM, [](int) { g_interrupted = true; });
  auto log = logger("demo");

  auto img_from = testbed::find_image(images, from);
  auto img_to = testbed::find_image(images, to);
  if (!img_from.ok() || !img_to.ok()) {
    std::cerr << (img_from.ok() ? img_to : img_from).error().describe() << "\n";
    return 2;
  }
  auto root = testbed::make_short_tmpdir("fld-");
  if (!root.ok()) return 2;
  auto conn = hypervisor::Connection::open("qemu:///embed?root=" + *root);
  if (!conn.ok()) {
    std::cerr << conn.error().describe() << "\n";
    return 2;
  }
  log->info("rack of one host: {} ({} guests, domain type {})", *root, guests,
            (*conn)->domain_type());

  std::vector<testbed::LabGuest> set;
  std::vector<Row> rows(guests);
  int rc = 0;
  auto fail = [&](const std::string& why) {
    log->error("{}", why);
    rc = 1;
  };
  for (int i = 0; i < guests && rc == 0; ++i) {
    auto g = testbed::LabGuest::create(**conn, "web-" + std::to_string(i), *root + "/vm", *img_from,
                                       {}, hypervisor::InstanceMetadata{"web", i, i, i, from});
    if (!g.ok())
      fail(g.error().describe());
    else
      set.push_back(std::move(g).value());
  }
  for (auto& g : set) {
    if (rc || g_interrupted) break;
    auto up = g.start_and_wait(120s);
    if (!up.ok()) {
      fail(up.error().describe());
      break;
    }
    log->info("{} up on {} after {:.1f} s", g.name(), from, up->count() / 1000.0);
    const int idx = &g - set.data();
    (void)g.link()->send_line(
        guestproto::to_line(agent::InstanceIdentity{"web", idx, idx, idx, "host-0"}));
  }

  // The walk: one update domain at a time.
  for (size_t i = 0; i < set.size() && rc == 0 && !g_interrupted; ++i) {
    auto& g = set[i];
    Row& r = rows[i];
    r.name = g.name();
    r.ud = static_cast<int>(i);
    log->info("UD {}: {} gets a Reboot scheduled event ({} s notice)", i, g.name(), notice_s);
    agent::ScheduledEvent ev;
    ev.event_id = "reboot-" + g.name();
    ev.resources = {g.name()};
    ev.not_before = rfc1123(std::chrono::system_clock::now() + std::chrono::seconds(notice_s));
    ev.description = "Host OS update (fabriclab demo)";
    ev.duration_seconds = 30;
    const auto t_notice = Clock::now();
    (void)g.link()->send_line(
        guestproto::to_line(agent::ScheduledEventsDoc{static_cast<std::int64_t>(i + 1), {ev}}));
    auto ack = g.link()->wait_for(
        [&](const agent::GuestMessage& m) {
          auto* a = std::get_if<agent::Ack>(&m);
          return a && a->event_id == ev.event_id;
        },
        std::chrono::seconds(notice_s));
    if (ack.ok()) r.ack_s = std::chrono::duration<double>(ack->at - t_notice).count();
    const auto before = g.last_heartbeat();
    const auto last_hb_at = g.link()->last_heartbeat()->at;
    r.image_before = before->image;
    auto stop = g.stop({10s, 250ms});
    if (!stop.ok()) {
      fail(stop.error().describe());
      break;
    }
    r.stop_method = std::string(hypervisor::to_string(stop->method));
    r.stop_s = stop->elapsed.count() / 1000.0;
    r.counter_before = g.last_heartbeat()->counter;
    if (auto s = g.set_next_image(*img_to); !s.ok()) {
      fail(s.error().describe());
      break;
    }
    (void)g.domain().set_metadata({"web", r.ud, r.ud, r.ud, to});
    auto up = g.start_and_wait(120s);
    if (!up.ok()) {
      fail(up.error().describe());
      break;
    }
    auto after = g.link()->last_heartbeat();
    r.down_s = std::chrono::duration<double>(after->at - last_hb_at).count();
    r.image_after = g.last_heartbeat()->image;
    r.counter_after = g.last_heartbeat()->counter;
    r.ok = r.image_after == to && r.counter_after >= r.counter_before;
    if (!r.ok) fail(g.name() + " did not come back on " + to + " with its counter");
    log->info("UD {}: {} back on {} ({} stop in {:.1f} s, down {:.1f} s)", i, g.name(),
              r.image_after, r.stop_method, r.stop_s, r.down_s);
  }
  if (g_interrupted) fail("interrupted");

  std::cout << "\n"
            << std::left << std::setw(8) << "guest" << std::setw(4) << "UD" << std::setw(8)
            << "ack_s" << std::setw(11) << "stop" << std::setw(8) << "stop_s" << std::setw(8)
            << "down_s" << std::setw(12) << "image"
            << "counter\n";
  for (const auto& r : rows) {
    std::cout << std::setw(8) << r.name << std::setw(4) << r.ud << std::setw(8)
              << std::setprecision(2) << std::fixed << r.ack_s << std::setw(11) << r.stop_method
              << std::setw(8) << r.stop_s << std::setw(8) << r.down_s << std::setw(12)
              << (r.image_before + "->" + r.image_after) << r.counter_before << "->"
              << r.counter_after << (r.ok ? "  ok" : "  FAILED") << "\n";
  }
  std::cout << (rc == 0 ? "result: passed" : "result: failed") << "\n";

  if (!keep) {
    for (auto& g : set) {
      (void)g.domain().destroy();
      (void)g.domain().undefine();
    }
    set.clear();
    conn->reset();
    std::filesystem::remove_all(*root);
  } else {
    std::cout << "kept: qemu:///embed?root=" << *root << "\n";
  }
  return rc;
}
