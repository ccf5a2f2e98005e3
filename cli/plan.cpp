// fabriclab plan: the dry run of a walk. Places the services on a rack (or reads a cluster with
// its placement), computes the walk and prints, as the seeds draw it, the UD x FD placement table,
// the batches, the lower bound beside the batch count, and per service the predicted worst case.
#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <tuple>

#include "commands.hpp"
#include "fabriclab/orchestrator/placement.hpp"
#include "fabriclab/orchestrator/planner.hpp"

using namespace fabriclab::orchestrator;

namespace fabriclab::cli {

namespace {

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
    return make_error(Condition::invalid_argument,
                      "--service '" + s + "' must be NAME:INSTANCES[:UD_COUNT]");
  }
  if (svc.name.empty() || svc.instance_count < 1 || svc.instance_count > 1000 || svc.ud_count < 1 ||
      svc.ud_count > 20) {
    return make_error(
        Condition::invalid_argument,
        "--service '" + s + "': need a name, 1..1000 instances and a UD count in 1..20");
  }
  svc.image = "v1";
  return svc;
}

void print_table(const Cluster& c) {
  std::vector<int> fds = c.fault_domains();
  int max_ud = 0;
  for (const auto& i : c.instances) max_ud = std::max(max_ud, i.ud);
  std::cout << "placement (rows: update domains, columns: fault domains)\n"
            << std::left << std::setw(6) << "";
  for (int fd : fds) std::cout << std::setw(34) << ("FD" + std::to_string(fd));
  std::cout << "\n";
  for (int ud = 0; ud <= max_ud; ++ud) {
    std::cout << std::setw(6) << ("UD" + std::to_string(ud));
    for (int fd : fds) {
      std::string cell;
      for (const auto& i : c.instances) {
        if (i.ud == ud && i.fd == fd) {
          cell +=
              (cell.empty() ? "" : " ") + i.service + "#" + std::to_string(i.index) + "@" + i.host;
        }
      }
      std::cout << std::setw(34) << (cell.empty() ? "." : cell);
    }
    std::cout << "\n";
  }
}

}  // namespace

int run_plan(const PlanArgs& a) {
  const auto& [rack, cluster_file, capacity, ud_count, max_parallel, services, json_out] = std::tie(
      a.rack, a.cluster_file, a.capacity, a.ud_count, a.max_parallel, a.services, a.json_out);

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
    std::cout << json::serialize(json::object{{"cluster", to_json(cluster)},
                                              {"plan", to_json(*walk)},
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
    std::cout << "  " << std::setw(12) << f.service << " instances " << f.instances << ", UDs "
              << f.uds_occupied << ", most down at once " << f.max_instances_down
              << " instance(s) in " << f.max_uds_down << " UD(s): "
              << (f.keeps_serving ? "keeps serving"
                                  : "goes dark during its batch (no SLA: single instance)")
              << "\n";
  }
  return 0;
}

}  // namespace fabriclab::cli
