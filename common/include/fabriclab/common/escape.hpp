#pragma once
// Escaping by a table of characters and their replacements: one loop for the markup dialects
// (libvirt's domain XML, the report's HTML), which differ only in their tables (HTML also escapes
// '/', and writes ' as &#39; where XML has &apos;).

#include <span>
#include <string>
#include <string_view>

namespace fabriclab {

struct CharEntity {
  char c;
  std::string_view entity;
};

// `s` with every character found in `table` replaced by its entity; other bytes as they are.
inline std::string escape_chars(std::string_view s, std::span<const CharEntity> table) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const CharEntity* hit = nullptr;
    for (const CharEntity& e : table) {
      if (e.c == c) hit = &e;
    }
    if (hit) {
      out += hit->entity;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace fabriclab
