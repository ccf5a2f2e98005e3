// The lenient readers of json_get.hpp: every one is a lookup, a type test and a fallback.

#include "fabriclab/common/json_get.hpp"

#include <cmath>

namespace fabriclab::json_get {
const json::object& as_object(const json::value& v) {
  static const json::object kEmpty;
  return v.is_object() ? v.get_object() : kEmpty;
}

const json::value& field(const json::object& o, std::string_view key) {
  static const json::value kNull;
  const json::value* v = o.if_contains(key);
  return v ? *v : kNull;
}
const json::value& field(const json::value& v, std::string_view key) {
  return field(as_object(v), key);
}

std::string str(const json::object& o, std::string_view key) {
  const json::value& v = field(o, key);
  return v.is_string() ? std::string(v.get_string()) : std::string();
}
std::string str(const json::value& v, std::string_view key) { return str(as_object(v), key); }

int64_t int_or(const json::object& o, std::string_view key, int64_t fallback) {
  const json::value& v = field(o, key);
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64() && v.get_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(v.get_uint64());
  }
  // 2^63 is exactly representable; anything below it converts without overflow.
  if (v.is_double() && std::isfinite(v.get_double()) &&
      std::fabs(v.get_double()) < 9223372036854775808.0) {
    return static_cast<int64_t>(v.get_double());
  }
  return fallback;
}
int64_t int_or(const json::value& v, std::string_view key, int64_t fallback) {
  return int_or(as_object(v), key, fallback);
}

std::optional<double> number(const json::value& v) {
  if (!v.is_number()) return std::nullopt;
  return v.to_number<double>();
}
std::optional<double> number(const json::object& o, std::string_view key) {
  return number(field(o, key));
}
std::optional<double> number(const json::value& v, std::string_view key) {
  return number(as_object(v), key);
}

bool flag(const json::object& o, std::string_view key) {
  const json::value& v = field(o, key);
  return v.is_bool() && v.get_bool();
}
bool flag(const json::value& v, std::string_view key) { return flag(as_object(v), key); }

std::optional<bool> boolean(const json::object& o, std::string_view key) {
  const json::value& v = field(o, key);
  if (!v.is_bool()) return std::nullopt;
  return v.get_bool();
}
std::optional<bool> boolean(const json::value& v, std::string_view key) {
  return boolean(as_object(v), key);
}

const json::array& arr(const json::object& o, std::string_view key) {
  static const json::array kEmpty;
  const json::value& v = field(o, key);
  return v.is_array() ? v.get_array() : kEmpty;
}
const json::array& arr(const json::value& v, std::string_view key) {
  return arr(as_object(v), key);
}

const json::object& obj(const json::object& o, std::string_view key) {
  return as_object(field(o, key));
}
const json::object& obj(const json::value& v, std::string_view key) {
  return obj(as_object(v), key);
}

}  // namespace fabriclab::json_get
