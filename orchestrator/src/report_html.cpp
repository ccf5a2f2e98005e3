// The drill report as one self-contained HTML page (orchestrator/report.hpp).
//
// The page is read long after the drill, often from a CI artefact or a mail attachment, so it
// carries everything inline: CSS in a <style>, the timelines as inline SVG (HTML5 puts <svg> in
// the SVG namespace without an xmlns, so the page names no URL at all), and no script.
//
// It renders the report JSON, not the ReportInput, so a stored report renders the same as a fresh
// one. It reads that JSON defensively: a missing or mistyped field renders as empty or "—", and
// loops are bounded by the arrays they walk (the one count the page trusts, update_domains, is
// capped), so a damaged report still gives a page.
//
// Escaping: every string from the report goes through `esc`, which also escapes '/' (OWASP's
// rule for HTML text), so no instance name or event line can open a tag or spell out a URL.
//
// Timelines are drawn in report_html_timeline.cpp.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "fabriclab/common/escape.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/orchestrator/report.hpp"
#include "report_html_internal.hpp"

namespace fabriclab::orchestrator {

std::string report_html_detail::esc(std::string_view s) {
  static constexpr CharEntity kHtml[] = {{'&', "&amp;"},  {'<', "&lt;"},   {'>', "&gt;"},
                                         {'"', "&quot;"}, {'\'', "&#39;"}, {'/', "&#47;"}};
  return escape_chars(s, kHtml);
}

std::string report_html_detail::decimal(double v, int decimals) {
  std::string s = fmt::format("{:.{}f}", v, decimals);
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  return s == "-0" ? "0" : s;
}
std::string report_html_detail::number_or_dash(std::optional<double> v, int decimals) {
  return v ? decimal(*v, decimals) : std::string("—");
}
namespace {

using namespace report_html_detail;

constexpr int kMaxUdRows = 1000;

constexpr std::string_view kStyle = R"css(
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 48px;
  color:#1d232a}
h1{margin:0;font-size:28px}h2{margin:28px 0 8px;font-size:19px;border-bottom:1px solid #d5dae0}
h3{margin:16px 0 4px;font-size:15px}
.banner{margin:16px 0;padding:14px 18px;border-radius:6px;color:#fff}
.banner.pass{background:#2e8b4f}.banner.fail{background:#c0392b}
.banner ul{margin:6px 0 0;padding-left:20px}
table{border-collapse:collapse;margin:4px 0;font-size:13px}
th,td{border:1px solid #d5dae0;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f1f3f5}
table.kv th{width:140px}
table.grid td{min-width:90px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#1e7a3d}.bad{color:#b52a1c;font-weight:600}.muted{color:#6b7580}
svg{display:block;margin:2px 0 10px}
svg text{font:11px system-ui,sans-serif;fill:#1d232a}
svg .ok{fill:#2e9d4f}svg .down{fill:#d64545}svg .unk{fill:#eeb0b0}
svg .batch{fill:#dde7f5}svg .tick{stroke:#c8ced5}svg .sep{stroke:#8a949e}
svg .lane{fill:#d9efe0}svg .fail{fill:#8e1016}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-2px}
)css";

// "<section id=..><h2>title</h2>": every section of the page opens so.
void open_section(std::string& out, std::string_view id, std::string_view title) {
  out += fmt::format("<section id=\"{}\"><h2>{}</h2>", id, title);
}

// A table and its header row; `id` names the table when it is not empty.
void table_head(std::string& out, std::initializer_list<std::string_view> columns,
                std::string_view id = {}) {
  out += id.empty() ? std::string("<table>") : fmt::format("<table id=\"{}\">", id);
  out += "<tr>";
  for (std::string_view c : columns) out += fmt::format("<th>{}</th>", c);
  out += "</tr>";
}

std::string text_or_dash(std::string_view s) { return s.empty() ? std::string("—") : esc(s); }

// A table cell holding `html` (already escaped), with a class when `cls` is not empty.
std::string td(std::string_view html, std::string_view cls = {}) {
  if (cls.empty()) return fmt::format("<td>{}</td>", html);
  return fmt::format("<td class=\"{}\">{}</td>", cls, html);
}

// A number's cell (right-aligned), with `cls` beside "num" when it is not empty.
std::string num(std::string_view html, std::string_view cls = {}) {
  return td(html, cls.empty() ? std::string("num") : fmt::format("num {}", cls));
}

// A table row of cells (td, num and the verdict cells below).
std::string row(std::initializer_list<std::string> cells) {
  std::string out = "<tr>";
  for (const std::string& c : cells) out += c;
  return out + "</tr>";
}

// A yes/no verdict cell: yes is good, no is bad.
std::string yes_no(std::optional<bool> b) {
  if (!b) return td("—");
  return td(*b ? "yes" : "no", *b ? "good" : "bad");
}

// A yes/no that is information, not a verdict (a service without SLA may be down).
std::string muted_yes_no(std::optional<bool> b) {
  if (!b) return td("—");
  return td(*b ? "yes" : "no", "muted");
}

// "a → b", or just "a" when nothing changed.
std::string change(std::string_view before, std::string_view after) {
  if (before == after) return text_or_dash(after);
  return text_or_dash(before) + " → " + text_or_dash(after);
}

void banner(std::string& out, const json::object& r) {
  const bool passed = str(r, "result") == "passed";
  const json::object& drill = obj(r, "drill");
  out += fmt::format("<header class=\"banner {}\"><h1>{}</h1><div>drill {} · {} → {} · {}</div>",
                     passed ? "pass" : "fail", passed ? "PASSED" : "FAILED", esc(str(drill, "id")),
                     esc(str(drill, "kind")), esc(str(drill, "target")), esc(str(drill, "state")));
  std::string failed;
  for (const json::value& c : arr(r, "checks")) {
    const json::object& o = as_object(c);
    if (boolean(o, "passed").value_or(false)) continue;
    failed += fmt::format("<li><b>{}</b>: {}</li>", esc(str(o, "name")), esc(str(o, "detail")));
  }
  if (!failed.empty()) out += "<ul class=\"failed-checks\">" + failed + "</ul>";
  out += "</header>\n";
}

void checks(std::string& out, const json::object& r) {
  open_section(out, "checks", "Checks");
  table_head(out, {"Check", "Passed", "Detail"});
  for (const json::value& c : arr(r, "checks")) {
    const json::object& o = as_object(c);
    out += row({td(esc(str(o, "name"))), yes_no(boolean(o, "passed").value_or(false)),
                td(esc(str(o, "detail")))});
  }
  out += "</table></section>\n";
}

void drill_summary(std::string& out, const json::object& r) {
  const json::object& d = obj(r, "drill");
  auto kv = [&](std::string_view k, const std::string& v) {
    out += fmt::format("<tr><th>{}</th>{}</tr>", k, td(v));
  };
  out += "<section id=\"drill\"><h2>Drill</h2><table class=\"kv\">";
  kv("ID", text_or_dash(str(d, "id")));
  kv("Kind", text_or_dash(str(d, "kind")));
  kv("Target", text_or_dash(str(d, "target")));
  kv("State", text_or_dash(str(d, "state")));
  kv("Reason", text_or_dash(str(d, "reason")));
  kv("Started", text_or_dash(str(d, "started_at")));
  kv("Finished", text_or_dash(str(d, "finished_at")));
  kv("Duration", number_or_dash(number(d, "duration_s")) + " s");
  kv("SLA", number_or_dash(number(d, "sla_percent"), 4) + " %");
  out += "</table></section>\n";
}

void walk(std::string& out, const json::object& r) {
  const json::object& w = obj(r, "walk");
  out += fmt::format(
      "<section id=\"walk\"><h2>Walk</h2><p>{} batches (lower bound {})</p><table><tr><th>Batch"
      "</th><th>Hosts</th><th>Started</th><th>Finished</th><th>Duration s</th><th>Status</th></tr>",
      number_or_dash(number(w, "batches"), 0), number_or_dash(number(w, "lower_bound"), 0));
  for (const json::value& b : arr(w, "batch_list")) {
    const json::object& o = as_object(b);
    std::string hosts;
    for (const json::value& h : arr(o, "hosts")) {
      if (!hosts.empty()) hosts += ", ";
      if (h.is_string()) hosts += esc(h.get_string());
    }
    const std::string status = str(o, "status");
    out += row({num(number_or_dash(number(o, "index"), 0)), td(hosts),
                td(text_or_dash(str(o, "started_at"))), td(text_or_dash(str(o, "finished_at"))),
                num(number_or_dash(number(o, "duration_s"))),
                td(text_or_dash(status),
                   status == "failed" ? "bad" : (status == "done" ? "good" : "muted"))});
  }
  out += "</table></section>\n";
}

void placement(std::string& out, const json::object& r) {
  const json::object& p = obj(r, "placement");
  std::vector<int> fds;
  for (const json::value& f : arr(p, "fault_domains")) {
    if (auto v = number(f)) fds.push_back(static_cast<int>(*v));
  }
  const int uds =
      std::clamp(static_cast<int>(number(p, "update_domains").value_or(0)), 0, kMaxUdRows);
  std::map<std::pair<int, int>, std::string> cells;
  for (const json::value& c : arr(p, "cells")) {
    const json::object& o = as_object(c);
    std::string names;
    for (const json::value& n : arr(o, "instances")) {
      if (n.is_string()) names += "<div>" + esc(n.get_string()) + "</div>";
    }
    cells[{static_cast<int>(number(o, "ud").value_or(-1)),
           static_cast<int>(number(o, "fd").value_or(-1))}] += names;
  }
  out +=
      "<section id=\"placement\"><h2>Placement (UD × FD)</h2>"
      "<table class=\"grid\" id=\"placement-table\"><tr><th></th>";
  for (int fd : fds) out += fmt::format("<th>FD{}</th>", fd);
  out += "</tr>";
  for (int ud = 0; ud < uds; ++ud) {
    out += fmt::format("<tr><th>UD{}</th>", ud);
    for (int fd : fds) {
      auto it = cells.find({ud, fd});
      out += "<td>" + (it == cells.end() ? std::string() : it->second) + "</td>";
    }
    out += "</tr>";
  }
  out += "</table></section>\n";
}

void hosts(std::string& out, const json::object& r) {
  open_section(out, "hosts", "Hosts");
  table_head(out, {"Host", "FD", "Host image", "State"});
  for (const json::value& h : arr(r, "hosts")) {
    const json::object& o = as_object(h);
    out += row({td(esc(str(o, "id"))), num(number_or_dash(number(o, "fd"), 0)),
                td(change(str(o, "image_before"), str(o, "image_after"))),
                td(text_or_dash(str(o, "state")))});
  }
  out += "</table></section>\n";
}

void services(std::string& out, const json::object& r) {
  open_section(out, "services", "Services");
  table_head(out, {"Service", "Instances", "SLA", "Always available", "Availability %",
                   "Unavailable s", "Max UDs down", "Max instances down", "Error budget s / month",
                   "Budget used s", "Budget used %", "Verdict"});
  for (const json::value& s : arr(r, "services")) {
    const json::object& o = as_object(s);
    const bool sla = boolean(o, "sla_applies").value_or(false);
    const bool kept = boolean(o, "always_available").value_or(false);
    out += row({td(esc(str(o, "name"))), num(number_or_dash(number(o, "instances"), 0)),
                td(sla ? "yes" : "none"),
                sla ? yes_no(boolean(o, "always_available"))
                    : muted_yes_no(boolean(o, "always_available")),
                num(number_or_dash(number(o, "availability_percent"), 4)),
                num(number_or_dash(number(o, "unavailable_s"))),
                num(number_or_dash(number(o, "max_uds_down"), 0)),
                num(number_or_dash(number(o, "max_instances_down"), 0)),
                num(number_or_dash(number(o, "error_budget_s_per_month"))),
                num(number_or_dash(number(o, "error_budget_used_s"))),
                num(number_or_dash(number(o, "error_budget_used_percent"), 2)),
                td(esc(str(o, "verdict")), !sla ? "muted" : (kept ? "good" : "bad"))});
  }
  out += "</table></section>\n";
}

// "web-0: 120, web-1: 118"
std::string served_by_cell(const json::object& t) {
  std::string out;
  const json::object* by = field(t, "served_by").if_object();
  if (!by) return "—";
  for (const auto& [instance, n] : *by) {
    if (!out.empty()) out += ", ";
    out += esc(instance) + ": " + number_or_dash(number(n), 0);
  }
  return out.empty() ? std::string("—") : out;
}

void traffic(std::string& out, const json::object& r) {
  const json::object& t = obj(r, "traffic");
  open_section(out, "traffic", "Client traffic");
  if (!boolean(t, "measured").value_or(false)) {
    out += fmt::format(
        "<p class=\"muted\" id=\"traffic-not-measured\">client traffic not measured: {}</p>",
        text_or_dash(str(t, "reason")));
    out += "</section>\n";
    return;
  }
  table_head(out,
             {"Service", "Requests", "Failed", "Success %", "Longest failure run s", "p50 ms",
              "p99 ms", "Served by", "Failure runs", "Clients"},
             "traffic-table");
  for (const json::value& s : arr(r, "services")) {
    const json::object& o = as_object(s);
    const json::object* traffic = field(o, "traffic").if_object();
    if (!traffic) {
      out += fmt::format(
          "<tr><td>{}</td><td colspan=\"9\" class=\"muted\">no endpoint: no client traffic</td>"
          "</tr>",
          esc(str(o, "name")));
      continue;
    }
    const json::object& st = *traffic;
    const double failed = number(st, "failed").value_or(0);
    // Failures are a verdict only where "clients kept served" judges them.
    const bool judged = boolean(st, "checked").value_or(true);
    const std::string note = str(o, "traffic_note");
    const char* cls = failed == 0 ? "good" : (judged ? "bad" : "muted");
    out += row({td(esc(str(o, "name"))), num(number_or_dash(number(st, "requests"), 0)),
                num(number_or_dash(number(st, "failed"), 0), cls),
                num(number_or_dash(number(st, "success_percent"), 4)),
                num(number_or_dash(number(st, "longest_failure_run_s"))),
                num(number_or_dash(number(st, "p50_ms"), 0)),
                num(number_or_dash(number(st, "p99_ms"), 0)), td(served_by_cell(st)),
                num(number_or_dash(number(st, "failure_runs_total"), 0)),
                td(text_or_dash(note), cls)});
  }
  out += "</table></section>\n";
}

std::string counter_cell(const json::object& o) {
  return number_or_dash(number(o, "counter_before"), 0) + " → " +
         number_or_dash(number(o, "counter_after"), 0);
}

void instances(std::string& out, const json::object& r) {
  open_section(out, "instances", "Instances");
  table_head(out, {"Instance", "Service", "UD", "FD", "Host", "Down s", "Agent down s", "Notice s",
                   "Ack s", "Stop", "Image", "Host image", "Counter", "Counter kept",
                   "Healthy at end", "On target", "Agent"});
  for (const json::value& i : arr(r, "instances")) {
    const json::object& o = as_object(i);
    const std::string before = str(o, "host_before"), after = str(o, "host");
    const bool ok = boolean(o, "ok").value_or(false);
    out += row({td(esc(str(o, "name"))), td(esc(str(o, "service"))),
                num(number_or_dash(number(o, "ud"), 0)), num(number_or_dash(number(o, "fd"), 0)),
                td(change(before.empty() ? after : before, after)),
                num(number_or_dash(number(o, "down_s"))),
                num(number_or_dash(number(o, "agent_down_s"))),
                num(number_or_dash(number(o, "notice_s"))), num(number_or_dash(number(o, "ack_s"))),
                td(text_or_dash(str(o, "stop_method"))),
                td(change(str(o, "image_before"), str(o, "image_after"))),
                td(change(str(o, "host_image_before"), str(o, "host_image_after"))),
                num(counter_cell(o)), yes_no(boolean(o, "counter_kept")),
                yes_no(boolean(o, "healthy_at_end")), yes_no(boolean(o, "on_target")),
                td(ok ? std::string("ok") : "error: " + text_or_dash(str(o, "error")),
                   ok ? "good" : "bad")});
  }
  out += "</table></section>\n";
}

// "yes" / "no" / "—" for an after-restart signal (null: not judged by it).
std::string signal_cell(const json::object& o, std::string_view key, std::string_view up) {
  std::optional<bool> b = boolean(o, key);
  if (!b) return td("—", "muted");
  return td(*b ? up : "no", *b ? "good" : "bad");
}

// The data check's cells: rule and command, before, after, held.
std::string data_check_cells(const json::object* dc) {
  if (!dc) return "<td class=\"muted\" colspan=\"4\">none</td>";
  std::string command;
  for (const json::value& a : arr(*dc, "command")) {
    if (a.is_string()) command += (command.empty() ? "" : " ") + esc(a.get_string());
  }
  auto output = [&](std::string_view key) {
    const json::value& v = field(*dc, key);
    return v.is_string() ? "<code>" + text_or_dash(v.get_string()) + "</code>"
                         : std::string("<span class=\"bad\">none</span>");
  };
  std::string held = yes_no(boolean(*dc, "held"));
  if (!str(*dc, "error").empty()) {
    held.insert(held.size() - 5, "<br><span class=\"muted\">" + esc(str(*dc, "error")) + "</span>");
  }
  return fmt::format("<td>{} <code>{}</code></td><td>{}</td><td>{}</td>{}",
                     text_or_dash(str(*dc, "rule")), command, output("before"), output("after"),
                     held);
}

// Guest health (docs/report.md): per instance, the signals it had, whether its OS and app came
// back after the restart, its boot, and its data check.
void guest_health(std::string& out, const json::object& r) {
  open_section(out, "guest-health", "Guest health");
  table_head(out, {"Instance", "Signals", "OS up after restart", "App up after restart",
                   "Healthy after restart", "Boot", "Data check", "Before", "After", "Held"});
  for (const json::value& i : arr(r, "instances")) {
    const json::object& o = as_object(i);
    const json::object& sig = obj(o, "signals");
    std::string healthy = muted_yes_no(std::nullopt);
    if (auto h = boolean(o, "healthy_after_restart")) {
      healthy = td(text_or_dash(str(o, "health_after_restart")), *h ? "good" : "bad");
    } else if (!boolean(o, "restarted").value_or(false)) {
      healthy = "<td class=\"muted\">not restarted</td>";
    }
    std::string boot = text_or_dash(str(o, "boot"));
    if (!str(o, "boot_id_source").empty())
      boot += " <span class=\"muted\">(" + esc(str(o, "boot_id_source")) + ")</span>";
    out += row({td(esc(str(o, "name"))), td(text_or_dash(str(sig, "text"))),
                signal_cell(o, "os_up", "yes"), signal_cell(o, "app_up", "UP"), healthy, td(boot),
                data_check_cells(field(o, "data_check").if_object())});
  }
  out += "</table></section>\n";
}

void events(std::string& out, const json::object& r) {
  out += "<section id=\"events\"><h2>Events</h2>";
  const json::array& list = arr(r, "events");
  if (list.empty()) {
    out += "<p class=\"muted\">No events.</p>";
  } else {
    out += "<ol>";
    for (const json::value& e : list) {
      if (e.is_string()) out += "<li>" + esc(e.get_string()) + "</li>";
    }
    out += "</ol>";
  }
  out += "</section>\n";
}

// The rack's fault schedule as it went (docs/faults.md): a row per fault, when the report has any.
void faults(std::string& out, const json::object& r) {
  const json::array& list = arr(r, "faults");
  if (list.empty()) return;
  open_section(out, "faults", "Faults");
  table_head(out, {"Fault", "Target", "Scheduled", "Status", "Fired", "What the rack did",
                   "What the system did"});
  for (const json::value& v : list) {
    if (!v.is_object()) continue;
    const auto& f = v.as_object();
    auto s = [&f](std::string_view k) { return td(esc(str(f, k))); };
    out += row(
        {s("kind"), s("target"), s("scheduled"), s("status"), s("at"), s("detail"), s("outcome")});
  }
  out += "</table></section>\n";
}

std::string page_head(std::string_view title) {
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
      "<title>{}</title><style>{}</style></head><body>\n",
      title, kStyle);
}

// One report's sections, banner first.
void report_body(std::string& out, const json::object& report) {
  banner(out, report);
  checks(out, report);
  drill_summary(out, report);
  walk(out, report);
  placement(out, report);
  hosts(out, report);
  services(out, report);
  traffic(out, report);
  instances(out, report);
  guest_health(out, report);
  timelines(out, report);
  faults(out, report);
  events(out, report);
}

// Prefixes every element id of `body` with `prefix`. Safe as plain text replacement: every
// string from a report goes through esc, which escapes '"', so `id="` only comes from our markup.
std::string prefix_ids(std::string body, std::string_view prefix) {
  const std::string needle = "id=\"";
  for (size_t at = body.find(needle); at != std::string::npos; at = body.find(needle, at)) {
    at += needle.size();
    body.insert(at, prefix);
    at += prefix.size();
  }
  return body;
}

}  // namespace

std::string render_report_html(const json::object& report) {
  const json::object& drill = obj(report, "drill");
  const bool passed = str(report, "result") == "passed";
  std::string out;
  out.reserve(64 * 1024);
  out += page_head(
      fmt::format("fabriclab drill {}: {}", esc(str(drill, "id")), passed ? "PASSED" : "FAILED"));
  report_body(out, report);
  out += "</body></html>\n";
  return out;
}

std::string render_reports_html(const std::vector<json::object>& reports) {
  bool passed = !reports.empty();
  std::string list;
  for (size_t k = 0; k < reports.size(); ++k) {
    const bool ok = str(reports[k], "result") == "passed";
    const json::object& drill = obj(reports[k], "drill");
    passed = passed && ok;
    list += fmt::format("<li><a href=\"#d{}-drill\">drill {} · {} → {}</a>: <b>{}</b></li>", k + 1,
                        esc(str(drill, "id")), esc(str(drill, "kind")), esc(str(drill, "target")),
                        ok ? "passed" : "failed");
  }
  std::string out;
  out.reserve(64 * 1024 * (reports.size() + 1));
  out += page_head(
      fmt::format("fabriclab: {} drills: {}", reports.size(), passed ? "PASSED" : "FAILED"));
  out += fmt::format(
      "<header class=\"banner {}\" id=\"all-drills\"><h1>{}</h1><div>{} drills, one after the "
      "other on one rack</div><ol>{}</ol></header>\n",
      passed ? "pass" : "fail", passed ? "ALL PASSED" : "FAILED", reports.size(), list);
  for (size_t k = 0; k < reports.size(); ++k) {
    std::string body;
    report_body(body, reports[k]);
    out += fmt::format(
        "<article class=\"drill\" id=\"drill-{}\"><h2>Drill {} of {}</h2>\n{}</article>\n", k + 1,
        k + 1, reports.size(), prefix_ids(std::move(body), fmt::format("d{}-", k + 1)));
  }
  out += "</body></html>\n";
  return out;
}

}  // namespace fabriclab::orchestrator
