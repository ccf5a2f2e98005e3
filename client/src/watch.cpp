// What `fabriclab watch` shows, from the event feed (watch.hpp).
#include "fabriclab/client/watch.hpp"

#include <fmt/format.h>

#include <boost/json.hpp>

#include "fabriclab/client/render.hpp"
#include "fabriclab/common/json_get.hpp"

namespace fabriclab::client {

namespace {

using json_get::field;
using json_get::str;

// Merges `item` into the element of `list` whose `key` equals item's, or appends it.
void replace_by(json::array& list, std::string_view key, const json::object& item) {
  auto* k = item.if_contains(key);
  if (!k) return;
  for (auto& v : list) {
    if (v.is_object() && v.as_object().if_contains(key) && v.as_object().at(key) == *k) {
      for (const auto& kv : item) v.as_object()[kv.key()] = kv.value();
      return;
    }
  }
  list.push_back(item);
}

// The event's own fields without the feed's envelope (seq, time, type) and those in `skip`.
json::object payload(const json::object& ev, std::initializer_list<std::string_view> skip = {}) {
  json::object out;
  for (const auto& kv : ev) {
    std::string_view k = kv.key();
    if (k == "seq" || k == "time" || k == "type") continue;
    if (std::find(skip.begin(), skip.end(), k) != skip.end()) continue;
    out[k] = kv.value();
  }
  return out;
}

}  // namespace

void WatchModel::apply(const json::object& ev) {
  std::string type = str(ev, "type");
  if (type.empty()) return;
  last_type_ = type;
  if (auto* s = ev.if_contains("seq"); s && s->is_int64()) last_seq_ = s->as_int64();
  if (type == "snapshot") {
    const json::object* st = field(ev, "state").if_object();
    if (!st) return;
    if (auto* h = st->if_contains("hosts"); h && h->is_array()) hosts_ = h->as_array();
    if (auto* i = st->if_contains("instances"); i && i->is_array()) instances_ = i->as_array();
    if (auto* d = field(*st, "drill").if_object()) drill_ = *d;
  } else if (type == "instance.state") {
    if (auto* i = field(ev, "instance").if_object()) replace_by(instances_, "name", *i);
  } else if (type == "host.state") {
    json::object h = payload(ev, {"host"});
    if (auto* id = ev.if_contains("host")) h["id"] = *id;
    replace_by(hosts_, "id", h);
  } else if (type == "host.registered") {
    if (auto* h = field(ev, "host").if_object()) replace_by(hosts_, "id", *h);
  } else if (type == "drill.state") {
    if (auto* d = field(ev, "drill").if_object()) drill_ = *d;
  } else if (type == "drill.host" && !drill_.empty()) {
    auto* host = ev.if_contains("host");
    auto* status = ev.if_contains("status");
    if (!host || !status) return;
    json::object hp{{"host", *host}, {"status", *status}};
    if (auto* b = ev.if_contains("batch")) hp["batch"] = *b;
    if (auto* d = drill_.if_contains("hosts"); d && d->is_array())
      replace_by(d->as_array(), "host", hp);
  } else if (type == "drill.batch" && !drill_.empty()) {
    if (auto* d = drill_.if_contains("batches"); d && d->is_array()) {
      replace_by(d->as_array(), "index", payload(ev, {"drill"}));
    }
  }
}

std::string WatchModel::render(int64_t now_ms) const {
  std::string view = render_grid(instances_, hosts_);
  view += drill_.empty() ? std::string("no drill\n") : render_drill(drill_, 24, now_ms);
  view += fmt::format("seq {}  last event {}\n", last_seq_, last_type_);
  return view;
}

bool WatchModel::counting_down() const {
  return !str(drill_, "waiting_for").empty() &&
         parse_rfc3339_ms(str(drill_, "waiting_until")).has_value();
}

}  // namespace fabriclab::client
