#pragma once
// Finding one entry in a list the REST API answers (GET /v1/instances, /v1/hosts, a lab.json's
// agents): the element whose "name" is the one asked for.

#include <boost/json.hpp>
#include <string_view>

namespace fabriclab::testing {

// The element of `list` whose "name" is `name`; nullptr when `list` is not an array or holds none.
inline const boost::json::value* find_named(const boost::json::value& list, std::string_view name) {
  if (!list.is_array()) return nullptr;
  for (const auto& e : list.as_array()) {
    const auto* o = e.if_object();
    const auto* n = o ? o->if_contains("name") : nullptr;
    if (n && n->is_string() && n->as_string() == name) return &e;
  }
  return nullptr;
}

}  // namespace fabriclab::testing
