// The drill report page's timelines (report_html.cpp renders the rest of the page).
//
// Timelines: one SVG per service, rows ordered by UD then index with the UD written beside its
// first row; all SVGs share one scale (the drill's duration over the same width), batch windows
// are shaded behind the bars, and each bar has a <title> tooltip. A timeline that starts after 0
// (or is empty) is unknown until its first entry, drawn in a pale red: unknown counts as down.
// A service whose clients were measured gets one more row, "clients": a pale lane with a dark red
// mark over each run of failed requests (at least 2 px wide, so a single failure shows), on the
// same axis, so a failure lines up with the instance that was down or draining at that moment.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "fabriclab/common/json_get.hpp"
#include "fabriclab/orchestrator/report.hpp"
#include "report_html_internal.hpp"

namespace fabriclab::orchestrator {

using namespace report_html_detail;

namespace {

constexpr double kLabelWidth = 220, kPlotWidth = 740, kRowHeight = 20, kBarHeight = 14,
                 kAxisHeight = 26;

// A tick step of 1, 2 or 5 times a power of ten giving at most about eight ticks.
double tick_step(double duration) {
  const double raw = duration / 8;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (m * mag >= raw) return m * mag;
  }
  return 10 * mag;
}

struct Row {
  const json::object* instance;
  int ud;
  int index;
};

void service_timeline(std::string& out, std::string_view service, std::vector<Row> rows,
                      double duration, const json::array& batches,
                      const json::object* client_traffic) {
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return std::tie(a.ud, a.index) < std::tie(b.ud, b.index);
  });
  auto x = [&](double t) {
    return kLabelWidth + std::clamp(t, 0.0, duration) / duration * kPlotWidth;
  };
  const size_t lanes = rows.size() + (client_traffic ? 1 : 0);
  const double height = kAxisHeight + kRowHeight * static_cast<double>(lanes) + 4;
  out += fmt::format("<h3>{}</h3><svg class=\"timeline\" width=\"{}\" height=\"{}\" role=\"img\">",
                     esc(service), decimal(kLabelWidth + kPlotWidth + 24, 0), decimal(height, 0));
  for (const json::value& b : batches) {
    const json::object& o = as_object(b);
    auto from = number(o, "start_s"), to = number(o, "end_s");
    if (!from) continue;
    const double x0 = x(*from), x1 = x(to.value_or(duration));
    out += fmt::format(
        "<rect class=\"batch\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>batch {}</title>"
        "</rect><text x=\"{}\" y=\"{}\">B{}</text>",
        decimal(x0, 1), decimal(kAxisHeight - 4, 0), decimal(std::max(x1 - x0, 1.0), 1),
        decimal(height - kAxisHeight + 4, 0), number_or_dash(number(o, "index"), 0),
        decimal(x0 + 2, 1), decimal(kAxisHeight - 6, 0), number_or_dash(number(o, "index"), 0));
  }
  const double step = tick_step(duration);
  for (double t = 0; t <= duration + step * 1e-9; t += step) {
    out += fmt::format(
        "<line class=\"tick\" x1=\"{0}\" x2=\"{0}\" y1=\"10\" y2=\"{1}\"/>"
        "<text x=\"{0}\" y=\"9\" text-anchor=\"middle\">{2}s</text>",
        decimal(x(t), 1), decimal(height, 0), decimal(t));
  }
  int last_ud = -1;
  for (size_t k = 0; k < rows.size(); ++k) {
    const json::object& o = *rows[k].instance;
    const double y = kAxisHeight + kRowHeight * static_cast<double>(k);
    if (rows[k].ud != last_ud) {
      if (k > 0) {
        out += fmt::format("<line class=\"sep\" x1=\"0\" x2=\"{0}\" y1=\"{1}\" y2=\"{1}\"/>",
                           decimal(kLabelWidth + kPlotWidth, 0), decimal(y, 1));
      }
      out += fmt::format("<text x=\"2\" y=\"{}\">UD{}</text>", decimal(y + 14, 1), rows[k].ud);
      last_ud = rows[k].ud;
    }
    const std::string name = esc(str(o, "name"));
    out += fmt::format("<text x=\"44\" y=\"{}\">{}</text>", decimal(y + 14, 1), name);
    // (t_s, healthy) pairs; unknown (pale) before the first one.
    std::vector<std::pair<double, bool>> entries;
    for (const json::value& e : arr(o, "timeline")) {
      const json::object& eo = as_object(e);
      if (auto t = number(eo, "t_s"))
        entries.emplace_back(*t, boolean(eo, "healthy").value_or(false));
    }
    auto bar = [&](double from, double to, std::string_view cls, std::string_view what) {
      if (to <= from) return;
      out += fmt::format(
          "<rect class=\"{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{}: {} from {} s "
          "to {} s</title></rect>",
          cls, decimal(x(from), 2), decimal(y + (kRowHeight - kBarHeight) / 2, 1),
          decimal(std::max(x(to) - x(from), 0.5), 2), decimal(kBarHeight, 0), name, what,
          decimal(from), decimal(to));
    };
    bar(0, entries.empty() ? duration : entries.front().first, "unk", "unknown (counted as down)");
    for (size_t e = 0; e < entries.size(); ++e) {
      const double to = e + 1 < entries.size() ? entries[e + 1].first : duration;
      bar(entries[e].first, to, entries[e].second ? "ok" : "down",
          entries[e].second ? "healthy" : "down");
    }
  }
  if (client_traffic) {
    const double y = kAxisHeight + kRowHeight * static_cast<double>(rows.size());
    const double bar_y = y + (kRowHeight - kBarHeight) / 2;
    out += fmt::format(
        "<line class=\"sep\" x1=\"0\" x2=\"{0}\" y1=\"{1}\" y2=\"{1}\"/><text x=\"2\" "
        "y=\"{2}\">clients</text><rect class=\"lane\" x=\"{3}\" y=\"{4}\" width=\"{5}\" "
        "height=\"{6}\"><title>{7} clients: {8} requests, {9} failed</title></rect>",
        decimal(kLabelWidth + kPlotWidth, 0), decimal(y, 1), decimal(y + 14, 1), decimal(x(0), 2),
        decimal(bar_y, 1), decimal(kPlotWidth, 0), decimal(kBarHeight, 0), esc(service),
        number_or_dash(number(*client_traffic, "requests"), 0),
        number_or_dash(number(*client_traffic, "failed"), 0));
    for (const json::value& run : arr(*client_traffic, "failure_runs")) {
      const json::object& ro = as_object(run);
      auto from = number(ro, "from_s"), to = number(ro, "to_s");
      if (!from || !to || *to < 0 || *from > duration) continue;  // outside the window
      const double x0 = x(*from), x1 = x(*to);
      std::string causes;
      for (const json::value& c : arr(ro, "causes")) {
        const json::object& co = as_object(c);
        causes += fmt::format("{} {} x{}", causes.empty() ? ":" : ",", str(co, "what"),
                              number_or_dash(number(co, "count"), 0));
      }
      out += fmt::format(
          "<rect class=\"fail\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{} clients: {} "
          "failed from {} s to {} s{}</title></rect>",
          decimal(x0, 2), decimal(bar_y, 1), decimal(std::max(x1 - x0, 2.0), 2),
          decimal(kBarHeight, 0), esc(service), number_or_dash(number(ro, "count"), 0),
          decimal(*from), decimal(*to), esc(causes));
    }
  }
  out += "</svg>\n";
}

}  // namespace

void report_html_detail::timelines(std::string& out, const json::object& r) {
  out +=
      "<section id=\"timelines\"><h2>Timelines</h2><p class=\"legend\"><span style=\""
      "background:#2e9d4f\"></span>healthy<span style=\"background:#d64545\"></span>down"
      "<span style=\"background:#eeb0b0\"></span>unknown (counted as down)<span style=\""
      "background:#dde7f5\"></span>batch<span style=\"background:#8e1016\"></span>failed client "
      "requests</p>";
  const double duration = number(obj(r, "drill"), "duration_s").value_or(0);
  if (!(duration > 0)) {
    out += "<p class=\"muted\">Zero-length window: nothing to draw.</p></section>\n";
    return;
  }
  // Services in report order, then any only the instances name.
  std::vector<std::string> order;
  std::map<std::string, const json::object*, std::less<>> client_traffic;
  for (const json::value& s : arr(r, "services")) {
    order.emplace_back(str(s, "name"));
    if (const json::object* t = field(s, "traffic").if_object()) client_traffic[order.back()] = t;
  }
  std::map<std::string, std::vector<Row>, std::less<>> rows;
  for (const json::value& i : arr(r, "instances")) {
    const json::object& o = as_object(i);
    std::string service(str(o, "service"));
    if (std::find(order.begin(), order.end(), service) == order.end()) order.push_back(service);
    rows[service].push_back(Row{&o, static_cast<int>(number(o, "ud").value_or(0)),
                                static_cast<int>(number(o, "index").value_or(0))});
  }
  const json::array& batches = arr(obj(r, "walk"), "batch_list");
  for (const std::string& service : order) {
    auto it = rows.find(service);
    auto t = client_traffic.find(service);
    if (it != rows.end()) {
      service_timeline(out, service, it->second, duration, batches,
                       t == client_traffic.end() ? nullptr : t->second);
    }
  }
  out += "</section>\n";
}

}  // namespace fabriclab::orchestrator
