// The terminal renderers (render.hpp).
#include "fabriclab/client/render.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <map>
#include <set>

#include "fabriclab/common/json_get.hpp"

namespace fabriclab::client {

namespace {

using json_get::arr;
using json_get::int_or;
using json_get::str;

std::string bar(size_t done, size_t total, int width) {
  int full = total ? static_cast<int>(done * width / total) : width;
  std::string s = "[";
  for (int i = 0; i < width; ++i) s += i < full ? "#" : "-";
  return s + "]";
}

// " (N s left)" against now_ms, " (until T)" without it, "" when the drill gives no deadline.
std::string waiting_left(const json::object& d, std::optional<int64_t> now_ms) {
  std::string until = str(d, "waiting_until");
  auto until_ms = parse_rfc3339_ms(until);
  if (!until_ms) return "";
  if (!now_ms) return " (until " + until + ")";
  int64_t left_ms = std::max<int64_t>(0, *until_ms - *now_ms);
  return fmt::format(" ({} s left)", (left_ms + 999) / 1000);
}

}  // namespace

std::string render_drill(const json::object& d, int width, std::optional<int64_t> now_ms) {
  std::map<std::string, std::string> host_status;
  for (const auto& h : arr(d, "hosts")) {
    if (h.is_object()) host_status[str(h.as_object(), "host")] = str(h.as_object(), "status");
  }
  const auto& batches = arr(d, "batches");
  std::string out = fmt::format("drill {} {}: {} -> {}, {} batches (lower bound {})", str(d, "id"),
                                str(d, "state"), str(d, "kind"), str(d, "target"), batches.size(),
                                int_or(d, "lower_bound", 0));
  if (auto r = str(d, "reason"); !r.empty()) out += "\n  reason: " + r;
  out += "\n";
  for (const auto& bv : batches) {
    if (!bv.is_object()) continue;
    const auto& b = bv.as_object();
    size_t done = 0, total = 0;
    std::string hosts;
    for (const auto& h : arr(b, "hosts")) {
      if (!h.is_string()) continue;
      std::string id(h.as_string());
      std::string st = host_status[id];
      ++total;
      if (st == "done" || st == "skipped") ++done;
      hosts += " " + id + (st.empty() || st == "pending" ? "" : ":" + st);
    }
    out +=
        fmt::format("  batch {:>2}/{} {} {}/{} {:<8}{}\n", int_or(b, "index", 0) + 1,
                    batches.size(), bar(done, total, width), done, total, str(b, "status"), hosts);
  }
  for (const auto& n : arr(d, "notes")) {
    if (n.is_string()) out += "  note: " + std::string(n.as_string()) + "\n";
  }
  if (auto w = str(d, "waiting_for"); !w.empty()) {
    out += "  waiting: " + w + waiting_left(d, now_ms) + "\n";
  }
  return out;
}

std::string render_grid(const json::array& instances, const json::array& hosts) {
  std::map<std::string, std::string> host_state;
  for (const auto& h : hosts) {
    if (h.is_object()) host_state[str(h.as_object(), "id")] = str(h.as_object(), "state");
  }
  std::set<int64_t> fds;
  int64_t max_ud = -1;
  std::map<std::pair<int64_t, int64_t>, std::string> cells;
  for (const auto& v : instances) {
    if (!v.is_object()) continue;
    const auto& o = v.as_object();
    int64_t ud = int_or(o, "ud", 0), fd = int_or(o, "fd", 0);
    fds.insert(fd);
    max_ud = std::max(max_ud, ud);
    auto* hv = o.if_contains("healthy");
    bool healthy = hv && hv->is_bool() && hv->as_bool();
    std::string mark = healthy ? "+" : "!";
    std::string& c = cells[{ud, fd}];
    c += (c.empty() ? "" : " ") + mark + str(o, "name") + "@" + str(o, "host");
  }
  for (const auto& h : hosts) {
    if (h.is_object()) fds.insert(int_or(h.as_object(), "fd", 0));
  }
  size_t w = 14;
  for (const auto& [k, c] : cells) w = std::max(w, c.size() + 2);
  w = std::min<size_t>(w, 48);
  std::string out = fmt::format("{:<6}", "");
  for (int64_t fd : fds) out += fmt::format("{:<{}}", "FD" + std::to_string(fd), w);
  out += "\n";
  for (int64_t ud = 0; ud <= max_ud; ++ud) {
    out += fmt::format("{:<6}", "UD" + std::to_string(ud));
    for (int64_t fd : fds) {
      auto it = cells.find({ud, fd});
      std::string c = it == cells.end() ? "." : it->second;
      if (c.size() > w - 1) c = c.substr(0, w - 2) + "~";
      out += fmt::format("{:<{}}", c, w);
    }
    out += "\n";
  }
  out += "hosts:";
  for (const auto& h : hosts) {
    if (!h.is_object()) continue;
    const auto& o = h.as_object();
    out += fmt::format(" {}(FD{} {} {})", str(o, "id"), int_or(o, "fd", 0), str(o, "state"),
                       str(o, "host_image"));
  }
  out += "\n(+ healthy, ! not healthy)\n";
  return out;
}

}  // namespace fabriclab::client
