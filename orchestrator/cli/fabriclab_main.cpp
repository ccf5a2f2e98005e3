// fabriclab: the command-line tool.
//   plan    the dry run of a walk: places the services on a rack (or reads a cluster with its
//           placement), computes the walk and prints, as the seeds draw it, the UD x FD placement
//           table, the batches, the lower bound beside the batch count, and per service the
//           predicted worst case.
//   drill   a drill spec on a local rack (agents + orchestrator processes it starts and stops) or
//           against a running orchestrator; live progress, report JSON/HTML.
//   lab     up | down | status of a local rack.
//   image   add | list | remove guest OS disk images in the user's image library (checked, copied
//           read-only), which every local rack's agents are given.
//   status  the grid and the latest drill; watch: the same, live from the websocket feed.
//   chaos   a campaign of drills with random faults, each checked from outside (chaos_cmd.hpp).
//
// Exit codes: 0 ok (a drill passed), 1 the drill failed, 2 bad input, 3 no placement (plan) or a
// lab/orchestrator error, 130 interrupted.

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <optional>
#include <thread>
#include <tuple>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <stop_token>

#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/orchestrator/placement.hpp"
#include "fabriclab/orchestrator/planner.hpp"
#include "fabriclab/orchestrator/report.hpp"
#include "fabriclab/rack/drill.hpp"
#include "fabriclab/rack/image_library.hpp"
#include "fabriclab/rack/lab.hpp"
#include "fabriclab/rack/terminal.hpp"
#include "fabriclab/rack/watch.hpp"
#include "chaos_cmd.hpp"

using namespace fabriclab;
using namespace fabriclab::orchestrator;

namespace {

constexpr int kBadInput = 2;
constexpr int kRefused = 3;

int fail(int code, const std::string& what) {
  std::cerr << "fabriclab: " << what << "\n";
  return code;
}

// "web:2" or "web:2:5" (name:instances[:udCount]).
Result<Service> parse_service(const std::string& s, int default_uds) {
  Service svc;
  std::stringstream in(s);
  std::string name, count, uds;
  std::getline(in, name, ':');
  std::getline(in, count, ':');
  std::getline(in, uds, ':');
  try {
    svc.name = name;
    svc.instance_count = count.empty() ? 1 : std::stoi(count);
    svc.ud_count = uds.empty() ? default_uds : std::stoi(uds);
  } catch (const std::exception&) {
    return make_error(Condition::invalid_argument, "--service '" + s + "' must be NAME:INSTANCES[:UD_COUNT]");
  }
  if (svc.name.empty() || svc.instance_count < 1 || svc.instance_count > 1000 || svc.ud_count < 1 ||
      svc.ud_count > 20) {
    return make_error(Condition::invalid_argument,
                      "--service '" + s + "': need a name, 1..1000 instances and a UD count in 1..20");
  }
  svc.image = "v1";
  return svc;
}

void print_table(const Cluster& c) {
  std::vector<int> fds = c.fault_domains();
  int max_ud = 0;
  for (const auto& i : c.instances) max_ud = std::max(max_ud, i.ud);
  std::cout << "placement (rows: update domains, columns: fault domains)\n" << std::left << std::setw(6) << "";
  for (int fd : fds) std::cout << std::setw(34) << ("FD" + std::to_string(fd));
  std::cout << "\n";
  for (int ud = 0; ud <= max_ud; ++ud) {
    std::cout << std::setw(6) << ("UD" + std::to_string(ud));
    for (int fd : fds) {
      std::string cell;
      for (const auto& i : c.instances) {
        if (i.ud == ud && i.fd == fd) {
          cell += (cell.empty() ? "" : " ") + i.service + "#" + std::to_string(i.index) + "@" + i.host;
        }
      }
      std::cout << std::setw(34) << (cell.empty() ? "." : cell);
    }
    std::cout << "\n";
  }
}

}  // namespace

struct PlanArgs {
  std::string rack = "3x2", cluster_file;
  int capacity = 8, ud_count = 5, max_parallel = 0;
  std::vector<std::string> services = {"hello:1", "web:2", "worker:3"};
  bool json_out = false;
};

int run_plan(const PlanArgs& a) {
  const auto& [rack, cluster_file, capacity, ud_count, max_parallel, services, json_out] =
      std::tie(a.rack, a.cluster_file, a.capacity, a.ud_count, a.max_parallel, a.services, a.json_out);

  Cluster cluster;
  if (!cluster_file.empty()) {
    std::ifstream in(cluster_file);
    if (!in) return fail(kBadInput, "cannot read " + cluster_file);
    std::stringstream ss;
    ss << in.rdbuf();
    auto obj = parse_json_object(ss.str(), 64 << 20, 32, cluster_file);
    if (!obj.ok()) return fail(kBadInput, obj.error().message);
    auto c = cluster_from_json(*obj);
    if (!c.ok()) return fail(kBadInput, cluster_file + ": " + c.error().message);
    cluster = std::move(c).value();
  } else {
    int fds = 0, per_fd = 0;
    char x = 0;
    std::stringstream in(rack);
    if (!(in >> fds >> x >> per_fd) || x != 'x' || fds < 1 || per_fd < 1 || fds * per_fd > 10000) {
      return fail(kBadInput, "--rack '" + rack + "' must be FAULT_DOMAINSxHOSTS_PER_FD, e.g. 3x2");
    }
    for (int fd = 0; fd < fds; ++fd) {
      for (int h = 0; h < per_fd; ++h) {
        Host host;
        host.id = "fd" + std::to_string(fd) + "-h" + std::to_string(h);
        host.fault_domain = fd;
        host.capacity = capacity;
        cluster.hosts.push_back(host);
      }
    }
    std::vector<Service> svcs;
    for (const auto& s : services) {
      auto svc = parse_service(s, ud_count);
      if (!svc.ok()) return fail(kBadInput, svc.error().message);
      svcs.push_back(*svc);
    }
    auto placed = place_services(cluster, svcs);
    if (!placed.ok()) return fail(kRefused, "placement refused: " + placed.error().message);
  }
  auto walk = plan_walk(cluster, {.max_parallel_hosts = max_parallel});
  if (!walk.ok()) return fail(kRefused, "no walk: " + walk.error().message);
  if (auto v = validate_plan(cluster, *walk, max_parallel); !v.ok()) {
    return fail(kRefused, "internal: the plan does not validate: " + v.error().message);
  }
  auto predicted = forecast(cluster, *walk);
  if (json_out) {
    json::array fc;
    for (const auto& f : predicted) fc.push_back(to_json(f));
    std::cout << json::serialize(json::object{{"cluster", to_json(cluster)}, {"plan", to_json(*walk)},
                                              {"forecast", std::move(fc)}})
              << "\n";
    return 0;
  }
  print_table(cluster);
  std::cout << "\nwalk: " << walk->batches.size() << " batches (lower bound " << walk->lower_bound
            << ", method " << walk->method << ")\n";
  for (size_t b = 0; b < walk->batches.size(); ++b) {
    std::cout << "  batch " << b + 1 << ":";
    for (const auto& h : walk->batches[b]) {
      std::cout << " " << h << "[";
      std::string down;
      for (const auto* i : cluster.instances_on(h)) {
        down += (down.empty() ? "" : " ") + i->service + "#" + std::to_string(i->index);
      }
      std::cout << down << "]";
    }
    std::cout << "\n";
  }
  std::cout << "\nper service (predicted worst case):\n";
  for (const auto& f : predicted) {
    std::cout << "  " << std::setw(12) << f.service << " instances " << f.instances << ", UDs " << f.uds_occupied
              << ", most down at once " << f.max_instances_down << " instance(s) in " << f.max_uds_down
              << " UD(s): " << (f.keeps_serving ? "keeps serving" : "goes dark during its batch (no SLA: single instance)")
              << "\n";
  }
  return 0;
}

// ---- drill, lab, status, watch -----------------------------------------------------------------

namespace {

constexpr int kFailed = 1;
constexpr int kLabError = 3;
constexpr int kInterrupted = 130;


std::string read_token_file(const std::string& path) {
  std::ifstream in(path);
  std::string t;
  std::getline(in, t);
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  return t;
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

struct Target {
  std::string url, token_file, lab_dir = "/tmp/flab";
};

// The orchestrator to talk to: --orchestrator URL + --token-file, else the local lab's.
Result<rack::OrchestratorClient> connect_target(const Target& t) {
  if (!t.url.empty()) {
    std::string token = t.token_file.empty() ? "" : read_token_file(t.token_file);
    if (!t.token_file.empty() && token.empty()) {
      return make_error(Condition::invalid_argument, "--token-file " + t.token_file + " is empty or unreadable");
    }
    return rack::OrchestratorClient::from_url(t.url, token);
  }
  FL_ASSIGN_OR_RETURN(auto lab, rack::Lab::attach(t.lab_dir));
  return rack::OrchestratorClient::from_url(lab.orchestrator_url(), lab.control_token());
}

int exit_for(const Error& e) {
  switch (e.condition) {
    case Condition::invalid_argument:
    case Condition::not_found:
    case Condition::already_exists:
    case Condition::unauthenticated:
    case Condition::permission_denied:
      return kBadInput;
    case Condition::cancelled:
      return kInterrupted;
    default:
      return kLabError;
  }
}

void print_summary(const json::object& report, std::ostream& out) {
  auto str = [](const json::object& o, std::string_view k) {
    auto* v = o.if_contains(k);
    return v && v->is_string() ? std::string(v->as_string()) : std::string();
  };
  if (auto* svcs = report.if_contains("services"); svcs && svcs->is_array()) {
    out << "services:\n";
    for (const auto& v : svcs->as_array()) {
      const auto& s = v.as_object();
      auto number = [&s](std::string_view k) {
        auto* v = s.if_contains(k);
        return v && v->is_number() ? v->to_number<double>() : 0.0;
      };
      out << fmt::format("  {:<12} {:<40} availability {:.3f}%  most UDs down at once {}\n", str(s, "name"),
                         str(s, "verdict"), number("availability_percent"), number("max_uds_down"));
    }
  }
  // What the services' clients saw (docs/clients.md), or why it was not measured.
  if (auto* traffic = report.if_contains("traffic"); traffic && traffic->is_object()) {
    const auto& t = traffic->as_object();
    auto* measured = t.if_contains("measured");
    if (measured && measured->is_bool() && !measured->as_bool()) {
      out << "clients: not measured (" << str(t, "reason") << ")\n";
    } else if (auto* svcs = report.if_contains("services"); svcs && svcs->is_array()) {
      out << "clients:\n";
      for (const auto& v : svcs->as_array()) {
        const auto& s = v.as_object();
        auto* tv = s.if_contains("traffic");
        if (!tv || !tv->is_object()) continue;
        const auto& st = tv->as_object();
        auto num = [&st](std::string_view k) {
          auto* v = st.if_contains(k);
          return v && v->is_number() ? v->to_number<double>() : -1.0;
        };
        out << fmt::format("  {:<12} {:>6.0f} requests, {:.0f} failed ({:.2f}% served), longest failure run {:.1f} s, "
                           "p50 {:.0f} ms, p99 {:.0f} ms{}\n",
                           str(s, "name"), num("requests"), num("failed"), num("success_percent"),
                           num("longest_failure_run_s"), num("p50_ms"), num("p99_ms"),
                           str(s, "traffic_note").empty() ? "" : "; " + str(s, "traffic_note"));
        // What failed requests got, for a checked service (a short list: the report has them all).
        if (!json_get::flag(st, "checked")) continue;
        size_t shown = 0;
        for (const auto& run : json_get::arr(st, "failure_runs")) {
          if (!run.is_object() || ++shown > 5) break;
          std::string causes;
          for (const auto& c : json_get::arr(run, "causes")) {
            causes += fmt::format("{}{} x{}", causes.empty() ? "" : ", ", json_get::str(c, "what"),
                                  json_get::int_or(c, "count", 0));
          }
          out << fmt::format("    failed {:.1f}-{:.1f} s: {}\n", json_get::number(run, "from_s").value_or(0),
                             json_get::number(run, "to_s").value_or(0), causes);
        }
      }
    }
  }
  if (auto* checks = report.if_contains("checks"); checks && checks->is_array()) {
    out << "checks:\n";
    for (const auto& v : checks->as_array()) {
      const auto& c = v.as_object();
      bool ok = c.at("passed").as_bool();
      out << "  " << (ok ? "ok   " : "FAIL ") << str(c, "name") << ": " << str(c, "detail") << "\n";
    }
  }
  out << "result: " << str(report, "result") << "\n";
}

// The rack's network, as lab.hpp describes it, in one line.
std::string network_line(const rack::Lab& lab) {
  const auto& agents = lab.agents();
  std::string first = agents.empty() ? "" : agents.front().address, last = agents.empty() ? "" : agents.back().address;
  if (lab.network() == "netns") {
    return fmt::format("network netns: each host in its own network namespace ({}..{}, {}..{}), joined by bridge br0 "
                       "(198.18.0.1/24) in {}; the orchestrator stays on {} (ip netns list shows them)",
                       agents.empty() ? "" : agents.front().netns, agents.empty() ? "" : agents.back().name, first, last,
                       lab.agent_netns(), lab.orchestrator().address);
  }
  return fmt::format("network loopback ({}..{}; network namespaces not used: {})", first, last,
                     lab.network_reason().empty() ? "--network loopback" : lab.network_reason());
}

// What clients of the guests reach, in one line (docs/clients.md).
std::string guest_network_line(const rack::Lab& lab) {
  if (lab.guest_network()) {
    return fmt::format("guest network: bridge gbr0 per host (198.19.N.0/24, DHCP by dnsmasq, IMDS at "
                       "169.254.169.254), HAProxy on the VIPs 198.18.1.0/24 in {}; client traffic measured",
                       lab.agent_netns());
  }
  return "guest network: none (" + lab.guest_network_reason() + "); client traffic not measured";
}

struct DrillArgs {
  std::string spec_file, hypervisor, report_file, html_file, images, orchestrator_url, token_file;
  std::vector<std::string> image_dirs;  // --image-dir, repeatable
  std::string image_library;            // --image-library; "": the default library
  std::string network = "auto";
  std::string lab_dir = "/tmp/flab";
  int port = 0;
  bool keep = false, json_out = false;
};

// --report and --html. One update: its report, and the orchestrator's page for it, as they are.
// Several: rack::series_report, and every drill on one page (render_reports_html).
void write_drill_reports(const DrillArgs& a, const rack::OrchestratorClient& api, const rack::DrillFileSpec& spec,
                         const rack::DrillSeries& series) {
  if (!a.report_file.empty() && !write_file(a.report_file, json::serialize(rack::series_report(spec, series)) + "\n")) {
    std::cerr << "fabriclab: cannot write " << a.report_file << "\n";
  }
  if (a.html_file.empty()) return;
  Result<std::string> html = std::string();
  if (spec.updates.size() == 1 && series.drills[0].report.contains("faults")) {
    html = render_report_html(series.drills[0].report);  // with the rack's fault rows
  } else if (spec.updates.size() == 1) {
    std::string id = series.drills[0].drill.at("id").as_string().c_str();
    html = api.get_text("/v1/drills/" + id + "/report.html");
  } else {
    std::vector<json::object> reports;
    for (const auto& d : series.drills) reports.push_back(d.report);
    html = render_reports_html(reports);
  }
  if (!html.ok() || !write_file(a.html_file, *html)) {
    std::cerr << "fabriclab: cannot write " << a.html_file << (html.ok() ? "" : ": " + html.error().message) << "\n";
  }
}

// The summary of every drill that ran; with several updates, which ran and the overall result.
void print_series(const rack::DrillFileSpec& spec, const rack::DrillSeries& series, std::ostream& out) {
  const size_t n = spec.updates.size();
  for (size_t k = 0; k < series.drills.size(); ++k) {
    if (n > 1) out << fmt::format("\ndrill {}/{}: {} -> {}\n", k + 1, n, spec.updates[k].kind, spec.updates[k].target);
    print_summary(series.drills[k].report, out);
  }
  if (n == 1) return;
  out << "\nupdates:\n";
  for (size_t k = 0; k < n; ++k) {
    std::string r = k < series.drills.size() ? (series.drills[k].passed ? "passed" : "failed") : "not run";
    out << fmt::format("  {}/{} {} -> {}: {}\n", k + 1, n, spec.updates[k].kind, spec.updates[k].target, r);
  }
  out << "result (all " << n << " drills): " << (series.passed() ? "passed" : "failed") << "\n";
}

int run_drill_cmd(const DrillArgs& a) {
  auto spec = a.spec_file.empty() ? Result<rack::DrillFileSpec>(rack::default_spec()) : rack::load_spec(a.spec_file);
  if (!spec.ok()) return fail(kBadInput, spec.error().message);
  if (!a.hypervisor.empty()) spec->hypervisor = a.hypervisor;
  rack::install_interrupt_handlers();
  std::ostream& out = a.json_out ? std::cerr : std::cout;
  const bool tty = !a.json_out && isatty(STDOUT_FILENO);

  std::optional<rack::Lab> lab;
  auto finish = [&](int code) {
    if (lab) {
      if (a.keep && !rack::interrupted()) {
        out << "rack kept up in " << lab->dir() << ": dashboard " << lab->orchestrator_url() << "/?token="
            << lab->control_token() << "\n  fabriclab lab down --lab-dir " << lab->dir() << " stops it\n";
      } else {
        out << "stopping the rack (VMs, agents, orchestrator, network namespaces)...\n";
        if (auto st = lab->down(false); !st.ok()) {
          std::cerr << "fabriclab: " << st.error().message << "\n";
          return code == 0 ? kLabError : code;
        }
        out << "rack stopped; logs kept in " << lab->dir() << "\n";
      }
    }
    return code;
  };

  std::optional<rack::OrchestratorClient> api;
  if (!a.orchestrator_url.empty()) {
    auto c = connect_target({a.orchestrator_url, a.token_file, a.lab_dir});
    if (!c.ok()) return fail(exit_for(c.error()), c.error().message);
    api = *c;
  } else {
    rack::LabOptions lo;
    lo.dir = a.lab_dir;
    lo.bin_dir = rack::self_dir();
    lo.images_dir = rack::images_dir(a.images);
    lo.image_dirs = a.image_dirs;
    lo.image_library = a.image_library.empty() ? rack::default_image_library() : a.image_library;
    lo.orchestrator_port = a.port;
    lo.network = a.network;
    if (spec->hypervisor == "qemu") lo.start_timeout = std::chrono::seconds(60);
    out << fmt::format("rack: {} hosts in {} fault domains, hypervisor {}, lab dir {}\n", spec->hosts,
                       spec->fault_domains,
                       spec->hypervisor == "qemu" ? "qemu (embedded driver, real VMs)" : "test (simulated guests)",
                       lo.dir);
    auto up = rack::Lab::up(*spec, lo);
    if (!up.ok()) return fail(exit_for(up.error()) == kBadInput ? kBadInput : kLabError, "lab up: " + up.error().message);
    lab = std::move(up).value();
    out << "rack " << network_line(*lab) << "\n" << guest_network_line(*lab) << "\n";
    out << "orchestrator " << lab->orchestrator_url() << "  dashboard " << lab->orchestrator_url()
        << "/?token=" << lab->control_token() << "\n";
    out << "creating services and waiting for every guest to heartbeat...\n" << std::flush;
    auto pop = lab->populate(*spec, std::chrono::seconds(spec->hypervisor == "qemu" ? 300 : 60));
    if (!pop.ok()) {
      std::cerr << "fabriclab: " << pop.error().message << "\n";
      return finish(pop.error().condition == Condition::cancelled ? kInterrupted : kLabError);
    }
    auto c = rack::OrchestratorClient::from_url(lab->orchestrator_url(), lab->control_token());
    if (!c.ok()) return finish(fail(kLabError, c.error().message));
    api = *c;
  }
  rack::DrillView view{&out, tty, [] { return rack::terminal_size(STDOUT_FILENO); }};
  auto series = rack::run_drills(*api, *spec, lab ? &*lab : nullptr, view);
  if (series.error) std::cerr << "fabriclab: drill: " << series.error->message << "\n";
  if (series.drills.empty()) {
    return finish(rack::interrupted() ? kInterrupted : exit_for(series.error.value_or(Error{})));
  }
  write_drill_reports(a, *api, *spec, series);
  print_series(*spec, series, out);
  if (!a.report_file.empty()) out << "report: " << a.report_file << "\n";
  if (!a.html_file.empty()) out << "html report: " << a.html_file << "\n";
  if (a.json_out) std::cout << json::serialize(rack::series_report(*spec, series)) << "\n";
  int code = series.interrupted() || rack::interrupted() ? kInterrupted
             : series.passed()                           ? 0
             : series.error                              ? exit_for(*series.error)
                                                         : kFailed;
  return finish(code);
}

int run_lab_up(const DrillArgs& a) {
  auto spec = a.spec_file.empty() ? Result<rack::DrillFileSpec>(rack::default_spec()) : rack::load_spec(a.spec_file);
  if (!spec.ok()) return fail(kBadInput, spec.error().message);
  if (!a.hypervisor.empty()) spec->hypervisor = a.hypervisor;
  rack::install_interrupt_handlers();
  rack::LabOptions lo;
  lo.dir = a.lab_dir;
  lo.bin_dir = rack::self_dir();
  lo.images_dir = rack::images_dir(a.images);
  lo.image_dirs = a.image_dirs;
  lo.image_library = a.image_library.empty() ? rack::default_image_library() : a.image_library;
  lo.orchestrator_port = a.port;
  lo.network = a.network;
  auto up = rack::Lab::up(*spec, lo);
  if (!up.ok()) return fail(exit_for(up.error()) == kBadInput ? kBadInput : kLabError, "lab up: " + up.error().message);
  auto pop = up->populate(*spec, std::chrono::seconds(spec->hypervisor == "qemu" ? 300 : 60));
  if (!pop.ok()) {
    std::string msg = "lab up: " + pop.error().message;
    if (auto st = up->down(false); !st.ok()) msg += " (and while stopping: " + st.error().message + ")";
    return fail(kLabError, msg);
  }
  std::cout << "lab up in " << up->dir() << ": orchestrator " << up->orchestrator_url() << ", dashboard "
            << up->orchestrator_url() << "/?token=" << up->control_token() << "\n"
            << "rack " << network_line(*up) << "\n"
            << guest_network_line(*up) << "\n";
  return 0;
}

int run_lab_down(const std::string& dir) {
  auto lab = rack::Lab::attach(dir);
  if (!lab.ok()) return fail(kBadInput, lab.error().message);
  if (auto st = lab->down(false); !st.ok()) return fail(kLabError, st.error().message);
  std::cout << "lab in " << dir << " stopped (VMs, agents, orchestrator, network namespaces)\n";
  return 0;
}

int run_lab_status(const std::string& dir) {
  auto lab = rack::Lab::attach(dir);
  if (!lab.ok()) return fail(kBadInput, lab.error().message);
  std::cout << json::serialize(lab->status_json()) << "\n";
  return 0;
}

int run_status(const Target& t, bool json_out) {
  auto api = connect_target(t);
  if (!api.ok()) return fail(exit_for(api.error()), api.error().message);
  auto hosts = api->get("/v1/hosts");
  auto inst = hosts.ok() ? api->get("/v1/instances") : hosts;
  auto drills = inst.ok() ? api->get("/v1/drills") : inst;
  if (!drills.ok()) return fail(kLabError, drills.error().message);
  if (json_out) {
    std::cout << json::serialize(json::object{{"hosts", *hosts}, {"instances", *inst}, {"drills", *drills}}) << "\n";
    return 0;
  }
  std::cout << rack::render_grid(inst->as_array(), hosts->as_array());
  const auto& ds = drills->as_array();
  if (ds.empty()) {
    std::cout << "no drill yet\n";
  } else {
    std::cout << rack::render_drill(ds.back().as_object());
  }
  return 0;
}

// The live grid from the websocket: the snapshot, then every delta applied to it (WatchModel),
// redrawn in place on a terminal (LiveRegion). While the drill waits out a window with a deadline
// a ticker redraws the countdown each second; the feed and the ticker share the model under `mu`.
int run_watch(const Target& t, bool once) {
  auto api = connect_target(t);
  if (!api.ok()) return fail(exit_for(api.error()), api.error().message);
  const bool tty = isatty(STDOUT_FILENO);
  rack::WatchModel model;
  rack::LiveRegion region(std::cout, tty, [] { return rack::terminal_size(STDOUT_FILENO); });
  std::mutex mu;
  std::jthread ticker;  // declared last: stopped and joined before what it draws goes
  if (tty && !once) {
    ticker = std::jthread([&](std::stop_token stop) {
      std::condition_variable_any cv;  // nothing notifies it: a sleep that a stop ends early
      std::unique_lock lock(mu);
      for (;;) {
        cv.wait_for(lock, stop, std::chrono::seconds(1), [] { return false; });
        if (stop.stop_requested()) return;
        if (model.counting_down()) region.draw(model.render(unix_now_ms()));
      }
    });
  }
  for (int attempt = 0;; ++attempt) {
    int64_t since = model.last_seq();
    std::string target =
        "/v1/events" + (since >= 0 ? "?since=" + std::to_string(since) : std::string());
    auto ws = http::WsClient::connect(api->host(), api->port(), target, api->token());
    if (!ws.ok()) {
      if (attempt > 30) return fail(kLabError, ws.error().message);
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    attempt = 0;
    for (;;) {
      auto msg = (*ws)->read(std::chrono::hours(24));
      if (!msg.ok()) break;  // reconnect with ?since=
      auto ev = parse_json_object(*msg, 64 << 20, 64, "event");
      if (!ev.ok()) continue;
      std::lock_guard lock(mu);
      model.apply(*ev);
      region.draw(model.render(unix_now_ms()));
      if (once) return 0;
    }
  }
}

// ---- image add | list | remove -------------------------------------------------------------------

struct ImageArgs {
  rack::ImageAddRequest add;
  std::string library;
  bool json_out = false;
};

std::string human_bytes(uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.1f} GiB", static_cast<double>(b) / (1ull << 30));
  if (b >= (1ull << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1ull << 20));
  return fmt::format("{} bytes", b);
}

Result<std::string> library_dir(const ImageArgs& a) {
  std::string dir = a.library.empty() ? rack::default_image_library() : a.library;
  if (dir.empty()) {
    return make_error(Condition::invalid_argument,
                      "no image library: give --library DIR or set FABRICLAB_IMAGE_LIBRARY (HOME is not set)");
  }
  dir = std::filesystem::absolute(dir).lexically_normal().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

int run_image_add(const ImageArgs& a) {
  auto dir = library_dir(a);
  if (!dir.ok()) return fail(kBadInput, dir.error().message);
  std::cout << "image " << a.add.name << ": checking " << a.add.disk << ", then copying it into " << *dir
            << "...\n" << std::flush;
  auto g = rack::add_image(*dir, a.add);
  if (!g.ok()) return fail(exit_for(g.error()), "image add: " + g.error().message);
  std::cout << "image " << g->version << " added to " << *dir << " (read-only)\n"
            << "  boot    " << g->boot << (g->cmdline.empty() ? "" : " (cmdline: " + g->cmdline + ")") << "\n"
            << "  disk    " << g->disk << "\n"
            << "          format " << g->disk_format << ", virtual size " << human_bytes(g->disk_virtual_size) << " ("
            << g->disk_virtual_size << " bytes), file " << human_bytes(g->disk_bytes) << "\n"
            << "          sha256 " << g->sha256_disk << "\n";
  if (g->boot == "kernel") {
    std::cout << "  kernel  " << g->kernel << "\n          sha256 " << g->sha256_kernel << "\n"
              << "  initrd  " << g->initrd << "\n          sha256 " << g->sha256_initrd << "\n";
  }
  std::cout << "a drill spec's service uses it with image: " << g->version
            << " (fabriclab drill and lab up offer the library to every agent)\n";
  return 0;
}

int run_image_list(const ImageArgs& a) {
  auto dir = library_dir(a);
  if (!dir.ok()) return fail(kBadInput, dir.error().message);
  auto images = rack::list_images(*dir);
  if (!images.ok()) {
    return fail(exit_for(images.error()), "image list: " + images.error().message +
                                              "\n(fabriclab image remove NAME --library " + *dir + " removes an image)");
  }
  if (a.json_out) {
    json::array arr;
    for (const auto& g : *images) arr.push_back(agent::to_json(g));
    std::cout << json::serialize(json::object{{"library", *dir}, {"images", std::move(arr)}}) << "\n";
    return 0;
  }
  std::cout << "image library " << *dir << "\n";
  if (images->empty()) {
    std::cout << "no images (fabriclab image add NAME --disk FILE ... adds one)\n";
  } else {
    std::cout << fmt::format("{:<20} {:<7} {:<6} {:>10} {:>10}  {}\n", "NAME", "BOOT", "FORMAT", "VIRTUAL", "FILE",
                             "DISK SHA256");
    for (const auto& g : *images) {
      std::cout << fmt::format("{:<20} {:<7} {:<6} {:>10} {:>10}  {}\n", g.version, g.boot, g.disk_format,
                               human_bytes(g.disk_virtual_size), human_bytes(g.disk_bytes), g.sha256_disk);
    }
  }
  const std::string builtin = std::filesystem::path(rack::images_dir("")).lexically_normal().string();
  if (auto b = agent::GuestImageStore::open(builtin); b.ok()) {
    std::string names;
    for (const auto& g : b->list()) names += (names.empty() ? "" : ", ") + g.version;
    std::cout << "built-in guests (" << builtin << "): " << names << "\n";
  }
  return 0;
}

int run_image_remove(const ImageArgs& a) {
  auto dir = library_dir(a);
  if (!dir.ok()) return fail(kBadInput, dir.error().message);
  if (auto st = rack::remove_image(*dir, a.add.name); !st.ok())
    return fail(exit_for(st.error()), "image remove: " + st.error().message);
  std::cout << "image " << a.add.name << " removed from " << *dir << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fabriclab: planned host maintenance rehearsed on real VMs.\n"
               "Exit codes: 0 ok (a drill: passed), 1 drill failed, 2 bad input, 3 lab/orchestrator error "
               "(plan: no placement), 130 interrupted."};
  app.require_subcommand(1);

  PlanArgs pa;
  auto* plan = app.add_subcommand("plan", "Dry run: place the services, compute the walk, predict each service's worst case");
  plan->add_option("--rack", pa.rack, "FAULT_DOMAINSxHOSTS_PER_FD")->capture_default_str();
  plan->add_option("--capacity", pa.capacity, "Instances per host")->check(CLI::Range(1, 1000))->capture_default_str();
  plan->add_option("--service", pa.services, "NAME:INSTANCES[:UD_COUNT], repeatable (default: the seeds' hello:1 web:2 worker:3)");
  plan->add_option("--ud-count", pa.ud_count, "Default UD count per service (1..20)")->check(CLI::Range(1, 20))->capture_default_str();
  plan->add_option("--max-parallel", pa.max_parallel, "At most this many hosts per batch (0: no cap)")->check(CLI::Range(0, 100000));
  plan->add_option("--cluster", pa.cluster_file, "A cluster JSON with hosts, services and placed instances (instead of --rack/--service)");
  plan->add_flag("--json", pa.json_out, "Print one JSON object");

  DrillArgs da;
  auto* drill = app.add_subcommand("drill",
      "Run a drill: without --orchestrator, start a local rack (one agent process per host, one orchestrator), "
      "run the spec's update walk on it, write the report, stop the rack. Default spec: 6 hosts in 3 FDs, "
      "hello(1) web(2) worker(3), host-os update to host-v2, on real VMs.");
  drill->add_option("--spec", da.spec_file, "YAML drill spec (testbed/specs/*.yaml); default: the default drill");
  drill->add_option("--hypervisor", da.hypervisor, "qemu (real VMs, embedded QEMU driver) or test (simulation)")
      ->check(CLI::IsMember({"qemu", "test"}));
  drill->add_flag("--keep", da.keep, "Leave the rack up after the drill (fabriclab lab down stops it)");
  drill->add_option("--report", da.report_file, "Write the report JSON here");
  drill->add_option("--html", da.html_file, "Write the report as a self-contained HTML page here");
  drill->add_option("--lab-dir", da.lab_dir, "The local rack's directory (state, logs, lab.json)")->capture_default_str();
  const std::string image_dir_help =
      "Another guest image directory (its manifest.json: e.g. testbed/build-debian-image.sh's output), repeatable; "
      "the agents get the built-in images, these, then the image library";
  const std::string image_library_help =
      "The image library to offer (fabriclab image add; default: $FABRICLAB_IMAGE_LIBRARY, else "
      "$XDG_DATA_HOME/fabriclab/images, else ~/.local/share/fabriclab/images; used when it has images)";
  drill->add_option("--images", da.images,
                    "The built-in guest images (v1, v2, v3-broken; default: FABRICLAB_IMAGES_DIR or the build's images/)");
  drill->add_option("--image-dir", da.image_dirs, image_dir_help);
  drill->add_option("--image-library", da.image_library, image_library_help);
  drill->add_option("--port", da.port, "The orchestrator's port on 127.0.0.1 (0: any free port)")->check(CLI::Range(0, 65535));
  drill->add_option("--orchestrator", da.orchestrator_url, "Run against this orchestrator (http://HOST:PORT) instead of a local rack");
  drill->add_option("--token-file", da.token_file, "Control token file for --orchestrator");
  drill->add_option("--network", da.network,
                    "auto: a network namespace per host where permitted (else loopback), netns, or loopback")
      ->check(CLI::IsMember({"auto", "netns", "loopback"}))
      ->capture_default_str();
  drill->add_flag("--json", da.json_out, "Print the report JSON on stdout (progress goes to stderr)");

  auto* lab = app.add_subcommand("lab", "Manage a local rack explicitly");
  lab->require_subcommand(1);
  DrillArgs la;
  auto* lab_up = lab->add_subcommand("up", "Start a rack and create the spec's services (then: fabriclab drill --orchestrator ...)");
  lab_up->add_option("--spec", la.spec_file, "YAML drill spec (its rack and services)");
  lab_up->add_option("--hypervisor", la.hypervisor, "qemu or test")->check(CLI::IsMember({"qemu", "test"}));
  lab_up->add_option("--lab-dir", la.lab_dir, "The rack's directory")->capture_default_str();
  lab_up->add_option("--images", la.images, "The built-in guest images (as for drill)");
  lab_up->add_option("--image-dir", la.image_dirs, image_dir_help);
  lab_up->add_option("--image-library", la.image_library, image_library_help);
  lab_up->add_option("--port", la.port, "The orchestrator's port (0: any)")->check(CLI::Range(0, 65535));
  lab_up->add_option("--network", la.network, "auto, netns or loopback (as for drill)")
      ->check(CLI::IsMember({"auto", "netns", "loopback"}))
      ->capture_default_str();
  std::string lab_dir = "/tmp/flab";
  auto* lab_down = lab->add_subcommand("down", "Stop a rack: VMs destroyed, agents and orchestrator stopped, network namespaces removed");
  lab_down->add_option("--lab-dir", lab_dir, "The rack's directory")->capture_default_str();
  auto* lab_status = lab->add_subcommand("status", "The rack's processes (JSON)");
  lab_status->add_option("--lab-dir", lab_dir, "The rack's directory")->capture_default_str();

  ImageArgs ia;
  auto* image = app.add_subcommand("image", "Guest OS disk images: the image library the racks' agents are given");
  image->require_subcommand(1);
  const std::string library_help =
      "The image library (default: $FABRICLAB_IMAGE_LIBRARY, else $XDG_DATA_HOME/fabriclab/images, else "
      "~/.local/share/fabriclab/images)";
  auto* image_add = image->add_subcommand(
      "add", "Check an OS disk (qcow2 or raw; no backing file; a partition table or file system) and its boot files, "
             "then copy them read-only into the library; nothing is created when a check fails");
  image_add->add_option("NAME", ia.add.name, "The image's name, as drill specs use it ([A-Za-z0-9._-], not v1/v2/v3-broken)")
      ->required();
  image_add->add_option("--disk", ia.add.disk, "The OS disk image (qcow2 or raw)")->required();
  image_add->add_option("--kernel", ia.add.kernel, "boot: kernel: the guest's kernel (vmlinuz)");
  image_add->add_option("--initrd", ia.add.initrd, "boot: kernel: the guest's initrd");
  image_add->add_option("--cmdline", ia.add.cmdline, "boot: kernel: the kernel command line (e.g. \"root=/dev/vda rw console=ttyS0\")");
  image_add->add_option("--boot", ia.add.boot, "kernel (QEMU boots --kernel/--initrd) or disk (the disk's own bootloader); "
                                               "default: kernel when --kernel, --initrd or --cmdline is given")
      ->check(CLI::IsMember({"kernel", "disk"}));
  image_add->add_option("--library", ia.library, library_help);
  auto* image_list = image->add_subcommand("list", "The library's images (each disk checked again) and the built-in guests");
  image_list->add_option("--library", ia.library, library_help);
  image_list->add_flag("--json", ia.json_out, "Print JSON");
  auto* image_remove = image->add_subcommand("remove", "Remove an image from the library (its files included)");
  image_remove->add_option("NAME", ia.add.name, "The image's name")->required();
  image_remove->add_option("--library", ia.library, library_help);

  Target st;
  bool status_json = false;
  auto* status = app.add_subcommand("status", "The cluster's UD x FD grid, hosts and the latest drill");
  status->add_option("--orchestrator", st.url, "http://HOST:PORT (default: the local lab's)");
  status->add_option("--token-file", st.token_file, "Token file for --orchestrator");
  status->add_option("--lab-dir", st.lab_dir, "The local lab's directory")->capture_default_str();
  status->add_flag("--json", status_json, "Print JSON");
  Target wt;
  bool once = false;
  auto* watch = app.add_subcommand("watch", "Live UD x FD grid and walk progress from the websocket feed (Ctrl-C ends)");
  watch->add_option("--orchestrator", wt.url, "http://HOST:PORT (default: the local lab's)");
  watch->add_option("--token-file", wt.token_file, "Token file for --orchestrator");
  watch->add_option("--lab-dir", wt.lab_dir, "The local lab's directory")->capture_default_str();
  watch->add_flag("--once", once, "Print the first view (the snapshot) and exit");

  auto chaos = fabriclab::cli::add_chaos_command(app);

  CLI11_PARSE(app, argc, argv);
  if (int code = chaos(); code >= 0) return code;
  if (*plan) return run_plan(pa);
  if (*drill) return run_drill_cmd(da);
  if (*lab_up) return run_lab_up(la);
  if (*lab_down) return run_lab_down(lab_dir);
  if (*lab_status) return run_lab_status(lab_dir);
  if (*image_add) return run_image_add(ia);
  if (*image_list) return run_image_list(ia);
  if (*image_remove) return run_image_remove(ia);
  if (*status) return run_status(st, status_json);
  if (*watch) return run_watch(wt, once);
  return kBadInput;
}
