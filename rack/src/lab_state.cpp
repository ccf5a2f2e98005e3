// A lab's record of itself (lab.hpp): DIR/lab.json, written at each step of `Lab::up` so that a
// `fabriclab lab down` in another process finds every process and namespace, and read back by
// `Lab::attach`.
#include <boost/describe.hpp>
#include <boost/json.hpp>
#include <cctype>
#include <filesystem>
#include <fstream>

#include "fabriclab/rack/lab.hpp"
#include "lab_internal.hpp"
#include "netns.hpp"

namespace fabriclab::rack {

namespace fs = std::filesystem;
using detail::kLabFile;
using detail::read_file;

// lab.json's process records: every field under its own name, in declaration order.
BOOST_DESCRIBE_STRUCT(LabProcess, (), (name, pid, address, port, fault_domain, log, netns, argv))

namespace {

json::object process_json(const LabProcess& p) { return json::value_from(p).as_object(); }

Result<LabProcess> process_from_json(const json::value& v) {
  if (!v.is_object())
    return make_error(Condition::invalid_argument, "lab.json: a process is not an object");
  const auto& o = v.as_object();
  LabProcess p;
  FL_ASSIGN_OR_RETURN(p.name, get_string(o, "name", 64));
  FL_ASSIGN_OR_RETURN(int64_t pid, get_int(o, "pid", 0, 1 << 30));
  p.pid = static_cast<pid_t>(pid);
  FL_ASSIGN_OR_RETURN(p.address, get_string(o, "address", 64, false));
  FL_ASSIGN_OR_RETURN(int64_t port, get_int(o, "port", 0, 65535));
  p.port = static_cast<int>(port);
  FL_ASSIGN_OR_RETURN(int64_t fd, get_int(o, "fault_domain", -1, 1000));
  p.fault_domain = static_cast<int>(fd);
  FL_ASSIGN_OR_RETURN(p.log, get_string(o, "log", 4096, false));
  FL_ASSIGN_OR_RETURN(p.netns, get_string(o, "netns", 64, false));
  FL_ASSIGN_OR_RETURN(auto* argv, get_optional_array(o, "argv", 256));
  if (argv) {
    for (const auto& w : *argv) {
      if (!w.is_string() || w.as_string().size() > 4096) {
        return make_error(Condition::invalid_argument,
                          "lab.json: " + p.name + ": argv holds a word that is not a string");
      }
      p.argv.emplace_back(w.as_string());
    }
  }
  return p;
}

}  // namespace

json::object Lab::to_json(bool with_alive) const {
  auto process = [with_alive](const LabProcess& p) {
    auto j = process_json(p);
    if (with_alive) j["alive"] = process_alive(p.pid);
    return j;
  };
  json::array agents;
  for (const auto& a : agents_) agents.push_back(process(a));
  json::array namespaces;
  for (const auto& n : namespaces_) namespaces.push_back(json::value(n));
  json::array net;
  for (const auto& p : net_procs_) net.push_back(process(p));
  return {{"dir", dir_},
          {"network", network_},
          {"network_reason", network_reason_},
          {"guest_network", guest_network_},
          {"guest_network_reason", guest_network_reason_},
          {"network_processes", std::move(net)},
          {"agent_netns", rack_netns_},
          {"namespaces", std::move(namespaces)},
          {"hypervisor", hypervisor_},
          {"orchestrator_url", orchestrator_url()},
          {"token_file", dir_ + "/token"},
          {"orchestrator", process(orchestrator_)},
          {"agents", std::move(agents)}};
}

Status Lab::save() const {
  json::object o = to_json(false);
  o["image_dirs"] = json::array(image_dirs_.begin(), image_dirs_.end());
  std::string tmp = dir_ + "/" + kLabFile + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << json::serialize(o) << "\n";
    if (!out) return make_error(Condition::transient, "cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, dir_ + "/" + kLabFile, ec);
  if (ec)
    return make_error(Condition::transient,
                      "cannot write " + dir_ + "/" + kLabFile + ": " + ec.message());
  return {};
}

Result<Lab> Lab::attach(const std::string& dir) {
  std::string path = dir + "/" + kLabFile;
  std::error_code ec;
  if (!fs::exists(path, ec))
    return make_error(Condition::not_found, "no lab in " + dir + " (no " + path + ")");
  FL_ASSIGN_OR_RETURN(auto o, parse_json_object(read_file(path), 1 << 20, 16, path));
  Lab lab;
  lab.dir_ = dir;
  FL_ASSIGN_OR_RETURN(lab.network_, get_string(o, "network", 64, false));
  FL_ASSIGN_OR_RETURN(lab.network_reason_, get_string(o, "network_reason", 4096, false));
  FL_ASSIGN_OR_RETURN(lab.rack_netns_, get_string(o, "agent_netns", 64, false));
  FL_ASSIGN_OR_RETURN(auto* namespaces, get_optional_array(o, "namespaces", 1000));
  if (namespaces) {
    for (const auto& n : *namespaces) {
      // Only names of the form this lab makes: lab.json is a file anyone may have edited.
      if (!n.is_string() || !netns::is_lab_name(std::string(n.as_string()))) {
        return make_error(Condition::invalid_argument,
                          path + ": namespaces: " + json::serialize(n) +
                              " is not a lab namespace name (flab-ID-rack, flab-ID-hN)");
      }
      lab.namespaces_.push_back(std::string(n.as_string()));
    }
  }
  if (!lab.rack_netns_.empty() && !netns::is_lab_name(lab.rack_netns_)) {
    return make_error(Condition::invalid_argument,
                      path + ": agent_netns '" + lab.rack_netns_ + "' is not a lab namespace");
  }
  FL_ASSIGN_OR_RETURN(lab.hypervisor_, get_string(o, "hypervisor", 64, false));
  // Read back so a save() by another process (power_on) keeps them.
  FL_ASSIGN_OR_RETURN(auto* image_dirs, get_optional_array(o, "image_dirs", 64));
  if (image_dirs) {
    for (const auto& d : *image_dirs) {
      if (d.is_string()) lab.image_dirs_.emplace_back(d.as_string());
    }
  }
  if (auto* g = o.if_contains("guest_network"); g && g->is_bool())
    lab.guest_network_ = g->as_bool();
  FL_ASSIGN_OR_RETURN(lab.guest_network_reason_,
                      get_string(o, "guest_network_reason", 4096, false));
  FL_ASSIGN_OR_RETURN(auto* net, get_optional_array(o, "network_processes", 1000));
  if (net) {
    for (const auto& v : *net) {
      FL_ASSIGN_OR_RETURN(auto p, process_from_json(v));
      lab.net_procs_.push_back(std::move(p));
    }
  }
  FL_ASSIGN_OR_RETURN(auto* orch, get_object(o, "orchestrator"));
  FL_ASSIGN_OR_RETURN(lab.orchestrator_, process_from_json(*orch));
  FL_ASSIGN_OR_RETURN(auto* agents, get_array(o, "agents", 10000));
  for (const auto& a : *agents) {
    FL_ASSIGN_OR_RETURN(auto p, process_from_json(a));
    lab.agents_.push_back(std::move(p));
  }
  lab.token_ = read_file(dir + "/token", 4096);
  while (!lab.token_.empty() && std::isspace(static_cast<unsigned char>(lab.token_.back())))
    lab.token_.pop_back();
  return lab;
}

json::object Lab::status_json() const { return to_json(true); }

}  // namespace fabriclab::rack
