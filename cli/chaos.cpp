// `fabriclab chaos` (chaos.hpp): options, the campaign, the table, the JSON summary.
#include "chaos.hpp"

#include <fmt/format.h>

#include <boost/json.hpp>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "fabriclab/common/cli_range.hpp"
#include "fabriclab/rack/chaos.hpp"
#include "fabriclab/rack/image_library.hpp"

namespace fabriclab::cli {

namespace {

struct ChaosArgs {
  int drills = 10;
  uint64_t seed = 1;
  int from = 1;
  std::string hypervisor, spec_file, kinds, lab_dir = "/tmp/flab-chaos", images, summary_file,
                                            network = "auto";
  int deadline_s = 0;
  double max_outage_s = 0;
  bool json_only = false;
};

std::vector<std::string> split_kinds(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string k; std::getline(in, k, ',');) {
    if (!k.empty()) out.push_back(k);
  }
  return out;
}

int run(const ChaosArgs& a) {
  rack::ChaosOptions o;
  o.drills = a.drills;
  o.seed = a.seed;
  o.first = a.from;
  const std::string hv = a.hypervisor.empty() ? "test" : a.hypervisor;
  if (!a.spec_file.empty()) {
    auto s = rack::load_spec(a.spec_file);
    if (!s.ok()) {
      std::cerr << "fabriclab: " << s.error().message << "\n";
      return 2;
    }
    o.base = *s;
    if (!a.hypervisor.empty()) o.base.hypervisor = a.hypervisor;
  } else {
    o.base = rack::chaos_base_spec(hv);
  }
  o.base.faults.clear();
  for (const auto& k : split_kinds(a.kinds)) {
    const auto& all = rack::fault_kinds();
    if (std::find(all.begin(), all.end(), k) == all.end()) {
      std::cerr << "fabriclab: --kinds: '" << k << "' is not a fault kind ("
                << fmt::format("{}", fmt::join(all, ", ")) << ")\n";
      return 2;
    }
    o.kinds.push_back(k);
  }
  if (o.base.kind != "host-os" && o.kinds.size() == 1 && o.kinds[0] == "corrupt-host-image") {
    std::cerr << "fabriclab: --kinds corrupt-host-image needs a host-os update\n";
    return 2;
  }
  const bool qemu = o.base.hypervisor == "qemu";
  o.max_outage_s = a.max_outage_s;
  o.drill_deadline = std::chrono::seconds(a.deadline_s > 0 ? a.deadline_s : qemu ? 900 : 180);
  o.lab.dir = a.lab_dir;
  o.lab.bin_dir = rack::self_dir();
  o.lab.images_dir = rack::images_dir(a.images);
  o.lab.image_library = rack::default_image_library();
  o.lab.network = a.network;
  if (qemu) o.lab.start_timeout = std::chrono::seconds(60);
  std::ostream& out = a.json_only ? std::cerr : std::cout;
  o.out = &out;
  client::install_interrupt_handlers();
  out << fmt::format(
             "chaos: {} drills from #{} with seed {} on {} ({} hosts in {} fault domains, {} -> "
             "{}); kinds: {}\n",
             a.drills, a.from, a.seed, qemu ? "real VMs" : "simulated guests", o.base.hosts,
             o.base.fault_domains, o.base.kind, o.base.target,
             o.kinds.empty() ? std::string("all") : a.kinds)
      << std::flush;
  auto c = rack::run_chaos(o);
  out << "\n" << rack::chaos_table(c);
  auto summary = c.summary();
  const std::string text = boost::json::serialize(summary);
  if (!a.summary_file.empty()) std::ofstream(a.summary_file) << text << "\n";
  std::cout << text << "\n";
  if (const auto* v = c.first_violation()) {
    std::string check;
    for (const auto& ch : v->checks) {
      if (!ch.passed && check.empty()) check = ch.name + ": " + ch.detail;
    }
    std::string again =
        fmt::format("fabriclab chaos --seed {} --from {} --drills 1", a.seed, v->number);
    if (!a.hypervisor.empty()) again += " --hypervisor " + a.hypervisor;
    if (!a.spec_file.empty()) again += " --spec " + a.spec_file;
    if (!a.kinds.empty()) again += " --kinds " + a.kinds;
    if (a.max_outage_s > 0) again += fmt::format(" --max-outage {:g}", a.max_outage_s);
    std::cerr << "fabriclab: chaos: violation in drill " << v->number << " (seed " << a.seed
              << "): " << check << "\n  reproduce: " << again << "\n";
    return 1;
  }
  if (c.error) {
    std::cerr << "fabriclab: chaos: " << c.error->message << "\n";
    return c.error->condition == Condition::cancelled ? 130 : 3;
  }
  out << fmt::format("chaos: {} drills, no violation\n", c.drills.size());
  return 0;
}

}  // namespace

std::function<int()> add_chaos_command(CLI::App& app) {
  auto a = std::make_shared<ChaosArgs>();
  auto* cmd = app.add_subcommand("chaos",
                                 "A campaign: N drills, each on a fresh local rack with faults "
                                 "drawn at random (repeatable with --seed), each "
                                 "checked from outside: the UD rule from the feed and the agents' "
                                 "jobs, no instance on two hosts, data counters "
                                 "kept, a terminal state and a report that agrees. Prints a table "
                                 "and a JSON summary; exit 1 on a violation.");
  add_ranged_option(*cmd, "--drills", a->drills, "How many drills", 1, rack::kMaxChaosDrills);
  cmd->add_option("--seed", a->seed, "The campaign's seed (the same seed draws the same faults)")
      ->capture_default_str();
  add_ranged_option(*cmd, "--from", a->from,
                    "The first drill's number (replay drill K: --from K --drills 1)", 1,
                    rack::kMaxChaosDrills);
  cmd->add_option("--hypervisor", a->hypervisor,
                  "test (simulated guests, default) or qemu (real VMs)")
      ->check(CLI::IsMember({"qemu", "test"}));
  cmd->add_option("--spec", a->spec_file,
                  "Base drill spec (its rack, services, update, policies; its faults are ignored)");
  cmd->add_option("--kinds", a->kinds, "Fault kinds to draw from, comma-separated (default: all)");
  cmd->add_option("--lab-dir", a->lab_dir, "Where each drill's rack lives (DIR/dK)")
      ->capture_default_str();
  cmd->add_option("--images", a->images, "The built-in guest images (as for drill)");
  cmd->add_option("--network", a->network, "auto, netns or loopback (as for drill)")
      ->check(CLI::IsMember({"auto", "netns", "loopback"}))
      ->capture_default_str();
  cmd->add_option("--deadline", a->deadline_s,
                  "Abort a drill still running after this many seconds (default 180, qemu 900)")
      ->check(CLI::Range(10, 86400));
  cmd->add_option("--max-outage", a->max_outage_s,
                  "Cap drawn agent outages (restarted kill-agent) and partitions at this many real "
                  "seconds (0: up to 6 "
                  "and 8 s); below the orchestrator's 3 s Unhealthy threshold no healing starts")
      ->check(CLI::Range(0.0, 3600.0));
  cmd->add_option("--summary", a->summary_file, "Also write the JSON summary here");
  cmd->add_flag("--json", a->json_only,
                "Progress and table on stderr; only the JSON summary on stdout");
  return [cmd, a]() -> int { return *cmd ? run(*a) : -1; };
}

}  // namespace fabriclab::cli
