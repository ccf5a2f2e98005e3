// Guest health (docs/report.md): what the report says about an instance's OS and app after its
// restart, its boot, and its data check (report.hpp).
//
// Two kinds of signal tell that a guest is up. The OS side: the built-in guest heartbeats over
// its integration channel, any other guest with qemu-guest-agent answers guest-ping; the agent
// records which of them the guest offered and whether one held after the restart (os_up). The
// app side: the load balancer's probe (app_up: the instance was UP in it after its restart). An
// instance is judged on what it offered: a guest without a guest agent is judged on its probe
// alone, a service without an endpoint on its OS signal alone. A guest that offered nothing is
// not healthy, since there is nothing to prove it; an agent that did not report the OS signals
// (an older one) leaves that side unjudged rather than guessed.
//
// A data check's rule is judged here again from the two outputs, not taken from the agent's
// verdict alone: the report shows the outputs, and what it concludes must follow from what it
// shows. The agent's verdict still counts: an error (the command failed, the guest agent did not
// answer) fails the check even if the outputs happen to compare well.

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fabriclab/common/json_get.hpp"
#include "report_internal.hpp"

namespace fabriclab::orchestrator {
namespace {

constexpr size_t kMaxOutputShown = 40;  // characters of a data-check output in a check's detail

// A data check as the agent's job records it (agent/src/guest_health.cpp); nullopt when absent.
std::optional<ReportDataCheck> data_check_of(const json::object& g) {
  auto* v = g.if_contains("data_check");
  if (!v || !v->is_object()) return std::nullopt;
  const auto& o = v->as_object();
  ReportDataCheck c;
  if (auto* cmd = o.if_contains("command"); cmd && cmd->is_array()) {
    for (const auto& a : cmd->as_array()) {
      if (a.is_string()) c.command.emplace_back(a.as_string());
    }
  }
  c.rule = json_get::str(o, "rule");
  // The agent writes "" for an output it did not get: no output is no proof, for either rule.
  if (auto b = json_get::str(o, "before"); !b.empty()) c.before = std::move(b);
  if (auto a = json_get::str(o, "after"); !a.empty()) c.after = std::move(a);
  c.ok = json_get::flag(o, "ok");
  c.error = json_get::str(o, "error");
  return c;
}

struct RestartHealth {
  bool judged = false;   // something was there to judge it by
  bool healthy = false;  // what was judged held
  std::string
      text;  // what held and what failed, e.g. "guest agent answered after restart; app probe UP"
};

// The OS side: {held, text}; not judged (held) when the agent did not report the signals.
std::pair<bool, std::string> os_side(const ReportInstance& i) {
  if (!i.signals_reported) return {true, "OS signals not reported"};
  if (!i.heartbeat && !i.guest_agent) return {true, "no OS signal (no heartbeat, no guest agent)"};
  if (i.os_up) {
    return {true,
            i.heartbeat ? "heartbeat seen after restart" : "guest agent answered after restart"};
  }
  if (i.heartbeat && i.guest_agent)
    return {false, "neither heartbeat nor guest agent after restart"};
  return {false,
          i.heartbeat ? "no heartbeat after restart" : "guest agent did not answer after restart"};
}

std::pair<bool, std::string> app_side(const ReportInstance& i) {
  if (!i.app_probe) return {true, "no app probe"};
  return {i.app_up, i.app_up ? "app probe UP" : "app probe not UP after restart"};
}

RestartHealth assess(const ReportInstance& i) {
  RestartHealth h;
  if (!i.restarted) return h;
  const bool os_signal = i.signals_reported && (i.heartbeat || i.guest_agent);
  auto [os_ok, os_text] = os_side(i);
  auto [app_ok, app_text] = app_side(i);
  h.text = os_text + "; " + app_text;
  if (!os_signal && !i.app_probe) {
    // Nothing offered: not healthy, unless the agent did not say (then nothing to judge).
    h.judged = i.signals_reported;
    if (h.judged) h.text = "no signal tells it is up (no heartbeat, no guest agent, no app probe)";
    return h;
  }
  h.judged = true;
  h.healthy = os_ok && app_ok;
  return h;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// The integer an output starts with ("123", "-4", "130 bytes"), after leading whitespace, as the
// agent reads it; nullopt when it starts with anything else or does not fit 64 bits.
std::optional<int64_t> number_of(std::string_view text) {
  std::string_view t = trim(text);
  int64_t v = 0;
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  (void)end;  // what follows the integer is the app's business ("130 bytes")
  if (ec != std::errc()) return std::nullopt;  // no digits (or '+', or out of range)
  return v;
}

// An output as a check's detail quotes it: trimmed, control characters as '?', cut short.
std::string shown(const std::optional<std::string>& out) {
  if (!out) return "none";
  std::string s(trim(*out));
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  if (s.size() > kMaxOutputShown) s = s.substr(0, kMaxOutputShown) + "...";
  return "'" + s + "'";
}

json::value text_or_null(const std::optional<std::string>& s) {
  if (!s) return nullptr;
  return json::value(*s);
}

json::object data_check_json(const ReportDataCheck& c) {
  json::array command;
  for (const auto& a : c.command) command.emplace_back(a);
  return json::object{
      {"command", std::move(command)},  {"rule", c.rule}, {"before", text_or_null(c.before)},
      {"after", text_or_null(c.after)}, {"ok", c.ok},     {"error", c.error},
      {"held", data_check_held(c)}};
}

// Why the data check of `i` did not hold, as the check's detail names it.
std::string data_check_failure(const ReportInstance& i) {
  if (!i.data_check) {
    return fmt::format("{}: no data check result ({})", i.name,
                       i.restarted ? "the agent did not report one" : "the walk did not reach it");
  }
  const ReportDataCheck& c = *i.data_check;
  const std::string why = c.error.empty() ? std::string() : ": " + c.error;
  if (!c.before) return fmt::format("{}: no output before the notice{}", i.name, why);
  if (!c.after)
    return fmt::format("{}: no output after the restart (before {}){}", i.name, shown(c.before),
                       why);
  if (!c.error.empty() || !c.ok) {
    return fmt::format("{}: {} failed: before {}, after {}{}", i.name, c.rule, shown(c.before),
                       shown(c.after), why.empty() ? ": the agent says not ok" : why);
  }
  if (c.rule == "not_less" && (!number_of(*c.before) || !number_of(*c.after))) {
    return fmt::format("{}: not_less needs numbers: before {}, after {}", i.name, shown(c.before),
                       shown(c.after));
  }
  if (c.rule != "equal" && c.rule != "not_less") {
    return fmt::format("{}: unknown rule '{}'", i.name, c.rule);
  }
  return fmt::format("{}: {} did not hold: before {}, after {}", i.name, c.rule, shown(c.before),
                     shown(c.after));
}

bool declares_data_check(const ReportInput& in, const std::string& service) {
  for (const ReportService& s : in.services) {
    if (s.name == service) return s.data_check;
  }
  return false;
}

void add_restart_check(const ReportInput& in, json::array& checks) {
  std::vector<std::string> failed, unjudged;
  std::map<std::string, std::vector<std::string>> by_signals;  // signals text -> instances
  size_t restarted = 0;
  for (const ReportInstance& i : in.instances) {
    if (!i.restarted) continue;
    ++restarted;
    RestartHealth h = assess(i);
    by_signals[signals_text(i)].push_back(i.name);
    if (!h.judged) {
      unjudged.push_back(i.name);
    } else if (!h.healthy) {
      failed.push_back(fmt::format("{}: {}", i.name, h.text));
    }
  }
  if (restarted == 0) return;
  std::string signals;
  for (const auto& [text, names] : by_signals) {
    signals +=
        fmt::format("{}{}: {}", signals.empty() ? "" : "; ", report_detail::name_list(names), text);
  }
  const size_t judged = restarted - unjudged.size();
  std::string detail;
  if (!failed.empty()) {
    detail = fmt::format("not healthy after restart: {}", report_detail::name_list(failed));
  } else if (judged == 0) {
    detail = "nothing to judge by";
  } else if (judged == restarted) {
    detail = fmt::format("all {} restarted instances healthy", restarted);
  } else {
    detail = fmt::format("all {} judged of {} restarted instances healthy", judged, restarted);
  }
  if (!unjudged.empty()) {
    detail +=
        fmt::format("; not judged (no signal reported): {}", report_detail::name_list(unjudged));
  }
  detail += "; signals: " + signals;
  checks.emplace_back(
      report_detail::check("guests healthy after restart", failed.empty(), std::move(detail)));
}

void add_data_check(const ReportInput& in, json::array& checks) {
  std::vector<std::string> failed, held, healed;
  bool applies = false;
  for (const ReportInstance& i : in.instances) {
    const bool declared = declares_data_check(in, i.service);
    if (!declared && !i.data_check) continue;
    applies = true;
    if (!i.data_check && i.healed) {
      healed.push_back(i.name);  // a new VM on a new host: its old data is gone with the host
    } else if (i.data_check && data_check_held(*i.data_check)) {
      held.push_back(fmt::format("{} {} -> {}", i.name, shown(i.data_check->before),
                                 shown(i.data_check->after)));
    } else {
      failed.push_back(data_check_failure(i));
    }
  }
  if (!applies) return;
  std::string detail = failed.empty() ? fmt::format("{} instance(s) kept their data: {}",
                                                    held.size(), report_detail::name_list(held))
                                      : fmt::format("data not kept or not proven: {}",
                                                    report_detail::name_list(failed));
  if (!healed.empty()) {
    detail += fmt::format("; healed on a new host (new VM, no result): {}",
                          report_detail::name_list(healed));
  }
  checks.emplace_back(
      report_detail::check("data kept (data check)", failed.empty(), std::move(detail)));
}

}  // namespace

void read_guest_record(const json::object& g, ReportInstance& ri) {
  ri.restarted = true;
  ri.notice_ms = json_get::int_or(g, "notice_ms", -1);
  ri.ack_ms = json_get::int_or(g, "ack_ms", -1);
  ri.stop_method = json_get::str(g, "stop_method");
  ri.agent_down_ms = json_get::int_or(g, "down_ms", -1);
  if (auto* ok = g.if_contains("ok"); ok && ok->is_bool()) ri.ok = ok->as_bool();
  ri.error = json_get::str(g, "error");
  if (auto* sig = g.if_contains("signals"); sig && sig->is_object()) {
    ri.signals_reported = true;
    ri.heartbeat = json_get::flag(sig->as_object(), "heartbeat");
    ri.guest_agent = json_get::flag(sig->as_object(), "guest_agent");
  }
  ri.os_up = json_get::flag(g, "os_up");
  ri.boot_id_before = json_get::str(g, "boot_id_before");
  ri.boot_id_after = json_get::str(g, "boot_id_after");
  ri.boot_id_source = json_get::str(g, "boot_id_source");
  ri.data_check = data_check_of(g);
}

std::string signals_text(const ReportInstance& i) {
  std::vector<std::string> parts;
  if (i.signals_reported && i.heartbeat) parts.emplace_back("heartbeat");
  if (i.signals_reported && i.guest_agent) parts.emplace_back("guest agent");
  if (i.app_probe) parts.emplace_back("app probe");
  const std::string suffix = i.signals_reported ? "" : " (OS signals not reported)";
  if (parts.empty()) return i.signals_reported ? "none" : "none reported";
  if (parts.size() == 1) return parts[0] + " only" + suffix;
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out + suffix;
}

std::string restart_health_problem(const ReportInstance& i) {
  RestartHealth h = assess(i);
  return h.judged && !h.healthy ? h.text : std::string();
}

bool data_check_held(const ReportDataCheck& c) {
  if (!c.ok || !c.error.empty() || !c.before || !c.after) return false;
  if (c.rule == "equal") return *c.before == *c.after;
  if (c.rule == "not_less") {
    auto b = number_of(*c.before), a = number_of(*c.after);
    return a && b && *a >= *b;
  }
  return false;
}

std::string boot_verdict(const ReportInstance& i) {
  if (i.boot_id_before.empty() || i.boot_id_after.empty()) return "";
  return i.boot_id_before == i.boot_id_after ? "memory kept" : "rebooted";
}

namespace report_detail {

void add_guest_fields(const ReportInstance& i, json::object& o) {
  const RestartHealth h = assess(i);
  const bool os_signal = i.signals_reported && (i.heartbeat || i.guest_agent);
  o["restarted"] = i.restarted;
  o["signals"] = json::object{{"heartbeat", i.signals_reported && i.heartbeat},
                              {"guest_agent", i.signals_reported && i.guest_agent},
                              {"app_probe", i.app_probe},
                              {"reported", i.signals_reported},
                              {"text", signals_text(i)}};
  o["os_up"] = i.restarted && os_signal ? json::value(i.os_up) : nullptr;
  o["app_up"] = i.restarted && i.app_probe ? json::value(i.app_up) : nullptr;
  o["health_after_restart"] = h.text;
  o["healthy_after_restart"] = h.judged ? json::value(h.healthy) : nullptr;
  o["boot_id_before"] = i.boot_id_before;
  o["boot_id_after"] = i.boot_id_after;
  o["boot_id_source"] = i.boot_id_source;
  o["boot"] = boot_verdict(i);
  o["data_check"] = i.data_check ? json::value(data_check_json(*i.data_check)) : nullptr;
}

void add_guest_checks(const ReportInput& in, json::array& checks) {
  add_restart_check(in, checks);
  add_data_check(in, checks);
}

}  // namespace report_detail
}  // namespace fabriclab::orchestrator
