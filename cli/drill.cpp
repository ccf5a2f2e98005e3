// fabriclab drill: a drill spec on a local rack (agents + orchestrator processes it starts and
// stops) or against a running orchestrator; live progress, a summary, report JSON/HTML.
#include "fabriclab/rack/drill.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <iostream>
#include <optional>

#include "commands.hpp"
#include "fabriclab/client/terminal.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/orchestrator/report.hpp"

namespace fabriclab::cli {

namespace {

using json_get::str;

void print_summary(const json::object& report, std::ostream& out) {
  if (auto* svcs = report.if_contains("services"); svcs && svcs->is_array()) {
    out << "services:\n";
    for (const auto& v : svcs->as_array()) {
      const auto& s = v.as_object();
      auto number = [&s](std::string_view k) { return json_get::number(s, k).value_or(0); };
      out << fmt::format("  {:<12} {:<40} availability {:.3f}%  most UDs down at once {}\n",
                         str(s, "name"), str(s, "verdict"), number("availability_percent"),
                         number("max_uds_down"));
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
        auto num = [&st](std::string_view k) { return json_get::number(st, k).value_or(-1.0); };
        out << fmt::format(
            "  {:<12} {:>6.0f} requests, {:.0f} failed ({:.2f}% served), longest failure run "
            "{:.1f} s, "
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
          out << fmt::format("    failed {:.1f}-{:.1f} s: {}\n",
                             json_get::number(run, "from_s").value_or(0),
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

// --report and --html. One update: its report, and the orchestrator's page for it, as they are.
// Several: rack::series_report, and every drill on one page (render_reports_html).
void write_drill_reports(const DrillArgs& a, const client::OrchestratorClient& api,
                         const rack::DrillFileSpec& spec, const rack::DrillSeries& series) {
  if (!a.report_file.empty() &&
      !write_file(a.report_file, json::serialize(rack::series_report(spec, series)) + "\n")) {
    std::cerr << "fabriclab: cannot write " << a.report_file << "\n";
  }
  if (a.html_file.empty()) return;
  Result<std::string> html = std::string();
  if (spec.updates.size() == 1 && series.drills[0].report.contains("faults")) {
    html = orchestrator::render_report_html(series.drills[0].report);  // with the rack's fault rows
  } else if (spec.updates.size() == 1) {
    std::string id = series.drills[0].drill.at("id").as_string().c_str();
    html = api.get_text("/v1/drills/" + id + "/report.html");
  } else {
    std::vector<json::object> reports;
    for (const auto& d : series.drills) reports.push_back(d.report);
    html = orchestrator::render_reports_html(reports);
  }
  if (!html.ok() || !write_file(a.html_file, *html)) {
    std::cerr << "fabriclab: cannot write " << a.html_file
              << (html.ok() ? "" : ": " + html.error().message) << "\n";
  }
}

// The summary of every drill that ran; with several updates, which ran and the overall result.
void print_series(const rack::DrillFileSpec& spec, const rack::DrillSeries& series,
                  std::ostream& out) {
  const size_t n = spec.updates.size();
  for (size_t k = 0; k < series.drills.size(); ++k) {
    if (n > 1)
      out << fmt::format("\ndrill {}/{}: {} -> {}\n", k + 1, n, spec.updates[k].kind,
                         spec.updates[k].target);
    print_summary(series.drills[k].report, out);
  }
  if (n == 1) return;
  out << "\nupdates:\n";
  for (size_t k = 0; k < n; ++k) {
    std::string r =
        k < series.drills.size() ? (series.drills[k].passed ? "passed" : "failed") : "not run";
    out << fmt::format("  {}/{} {} -> {}: {}\n", k + 1, n, spec.updates[k].kind,
                       spec.updates[k].target, r);
  }
  out << "result (all " << n << " drills): " << (series.passed() ? "passed" : "failed") << "\n";
}

}  // namespace

// The rack's network, as lab.hpp describes it, in one line.
std::string network_line(const rack::Lab& lab) {
  const auto& agents = lab.agents();
  std::string first = agents.empty() ? "" : agents.front().address,
              last = agents.empty() ? "" : agents.back().address;
  if (lab.network() == "netns") {
    return fmt::format(
        "network netns: each host in its own network namespace ({}..{}, {}..{}), joined by bridge "
        "br0 "
        "(198.18.0.1/24) in {}; the orchestrator stays on {} (ip netns list shows them)",
        agents.empty() ? "" : agents.front().netns, agents.empty() ? "" : agents.back().name, first,
        last, lab.agent_netns(), lab.orchestrator().address);
  }
  return fmt::format("network loopback ({}..{}; network namespaces not used: {})", first, last,
                     lab.network_reason().empty() ? "--network loopback" : lab.network_reason());
}

// What clients of the guests reach, in one line (docs/clients.md).
std::string guest_network_line(const rack::Lab& lab) {
  if (lab.guest_network()) {
    return fmt::format(
        "guest network: bridge gbr0 per host (198.19.N.0/24, DHCP by dnsmasq, IMDS at "
        "169.254.169.254), HAProxy on the VIPs 198.18.1.0/24 in {}; client traffic measured",
        lab.agent_netns());
  }
  return "guest network: none (" + lab.guest_network_reason() + "); client traffic not measured";
}

int run_drill_cmd(const DrillArgs& a) {
  auto spec = drill_file_spec(a);
  if (!spec.ok()) return fail(kBadInput, spec.error().message);
  client::install_interrupt_handlers();
  std::ostream& out = a.json_out ? std::cerr : std::cout;
  const bool tty = !a.json_out && isatty(STDOUT_FILENO);

  std::optional<rack::Lab> lab;
  auto finish = [&](int code) {
    if (lab) {
      if (a.keep && !client::interrupted()) {
        out << "rack kept up in " << lab->dir() << ": dashboard " << lab->orchestrator_url()
            << "/?token=" << lab->control_token() << "\n  fabriclab lab down --lab-dir "
            << lab->dir() << " stops it\n";
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

  std::optional<client::OrchestratorClient> api;
  if (!a.orchestrator_url.empty()) {
    auto c = connect_target({a.orchestrator_url, a.token_file, a.lab_dir});
    if (!c.ok()) return fail(exit_for(c.error()), c.error().message);
    api = *c;
  } else {
    rack::LabOptions lo = lab_options(a);
    if (spec->hypervisor == "qemu") lo.start_timeout = std::chrono::seconds(60);
    out << fmt::format(
        "rack: {} hosts in {} fault domains, hypervisor {}, lab dir {}\n", spec->hosts,
        spec->fault_domains,
        spec->hypervisor == "qemu" ? "qemu (embedded driver, real VMs)" : "test (simulated guests)",
        lo.dir);
    auto up = rack::Lab::up(*spec, lo);
    if (!up.ok())
      return fail(exit_for(up.error()) == kBadInput ? kBadInput : kLabError,
                  "lab up: " + up.error().message);
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
    auto c = client::OrchestratorClient::from_url(lab->orchestrator_url(), lab->control_token());
    if (!c.ok()) return finish(fail(kLabError, c.error().message));
    api = *c;
  }
  rack::DrillView view{&out, tty, [] { return client::terminal_size(STDOUT_FILENO); }};
  auto series = rack::run_drills(*api, *spec, lab ? &*lab : nullptr, view);
  if (series.error) std::cerr << "fabriclab: drill: " << series.error->message << "\n";
  if (series.drills.empty()) {
    return finish(client::interrupted() ? kInterrupted : exit_for(series.error.value_or(Error{})));
  }
  write_drill_reports(a, *api, *spec, series);
  print_series(*spec, series, out);
  if (!a.report_file.empty()) out << "report: " << a.report_file << "\n";
  if (!a.html_file.empty()) out << "html report: " << a.html_file << "\n";
  if (a.json_out) std::cout << json::serialize(rack::series_report(*spec, series)) << "\n";
  int code = series.interrupted() || client::interrupted() ? kInterrupted
             : series.passed()                             ? 0
             : series.error                                ? exit_for(*series.error)
                                                           : kFailed;
  return finish(code);
}

}  // namespace fabriclab::cli
