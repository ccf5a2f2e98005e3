#include "fabriclab/common/json.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <boost/json/error.hpp>
#include <boost/json/parse.hpp>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <utility>

namespace fabriclab {
namespace {

Error bad(std::string message) {
  return make_error(Condition::invalid_argument, std::move(message));
}

// The field's value, or nullptr when it is missing or null.
const json::value* find(const json::object& o, std::string_view field) {
  auto it = o.find(field);
  if (it == o.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

Error missing(std::string_view field) { return bad(fmt::format("field '{}' is required", field)); }

Result<int64_t> as_int(const json::value& v, std::string_view field, int64_t lo, int64_t hi) {
  auto out_of_range = [&] {
    return bad(fmt::format("field '{}' must be an integer in {}..{}", field, lo, hi));
  };
  // uint64 only holds values above INT64_MAX, which no int64 range contains; doubles are refused.
  if (!v.is_int64()) return out_of_range();
  int64_t x = v.get_int64();
  if (x < lo || x > hi) return out_of_range();
  return x;
}

Result<double> as_number(const json::value& v, std::string_view field, double lo, double hi) {
  auto out_of_range = [&] {
    return bad(fmt::format("field '{}' must be a number in {}..{}", field, lo, hi));
  };
  if (!v.is_number()) return out_of_range();
  double x = v.to_number<double>();
  if (!std::isfinite(x) || x < lo || x > hi) return out_of_range();
  return x;
}

Result<std::string> as_string(const json::value& v, std::string_view field, size_t max_len) {
  if (!v.is_string()) return bad(fmt::format("field '{}' must be a string", field));
  const auto& s = v.get_string();
  if (s.size() > max_len) {
    return bad(fmt::format("field '{}' must be at most {} bytes", field, max_len));
  }
  return std::string(s.data(), s.size());
}

Result<const json::array*> as_array(const json::value& v, std::string_view field,
                                    size_t max_items) {
  if (!v.is_array()) return bad(fmt::format("field '{}' must be an array", field));
  if (v.get_array().size() > max_items) {
    return bad(fmt::format("field '{}' must have at most {} items", field, max_items));
  }
  return &v.get_array();
}

Result<bool> as_bool(const json::value& v, std::string_view field) {
  if (!v.is_bool()) return bad(fmt::format("field '{}' must be true or false", field));
  return v.get_bool();
}

Result<const json::object*> as_object(const json::value& v, std::string_view field) {
  if (!v.is_object()) return bad(fmt::format("field '{}' must be an object", field));
  return &v.get_object();
}

// `as` (one of the above) applied to the field's value; an error naming the field when the field
// is missing or null.
template <class As>
auto get_required(const json::object& o, std::string_view field, As as)
    -> decltype(as(std::declval<const json::value&>())) {
  const json::value* v = find(o, field);
  if (!v) return missing(field);
  return as(*v);
}

// `as` applied to the field's value, or `absent` when the field is missing or null.
template <class T, class As>
Result<T> get_or(const json::object& o, std::string_view field, T absent, As as) {
  const json::value* v = find(o, field);
  if (!v) return absent;
  FL_ASSIGN_OR_RETURN(auto x, as(*v));
  return T(std::move(x));
}

}  // namespace

Result<json::value> parse_json(std::string_view text, size_t max_bytes, int max_depth,
                               std::string_view what) {
  if (text.size() > max_bytes) return bad(fmt::format("{} larger than {} bytes", what, max_bytes));
  json::parse_options opt;
  opt.max_depth = static_cast<std::size_t>(std::max(max_depth, 1));
  boost::system::error_code ec;
  json::value v = json::parse(json::string_view(text.data(), text.size()), ec, {}, opt);
  if (ec == json::error::too_deep) {
    return bad(fmt::format("{} nested deeper than {}", what, max_depth));
  }
  if (ec) return bad(fmt::format("{} is not JSON: {}", what, ec.message()));
  return v;
}

Result<json::object> parse_json_object(std::string_view text, size_t max_bytes, int max_depth,
                                       std::string_view what) {
  FL_ASSIGN_OR_RETURN(json::value v, parse_json(text, max_bytes, max_depth, what));
  if (!v.is_object()) return bad(fmt::format("{} must be a JSON object", what));
  return std::move(v.get_object());
}

Result<std::string> get_string(const json::object& o, std::string_view field, size_t max_len,
                               bool required) {
  auto as = [&](const json::value& v) { return as_string(v, field, max_len); };
  return required ? get_required(o, field, as) : get_or(o, field, std::string(), as);
}

Result<std::optional<std::string>> get_optional_string(const json::object& o,
                                                       std::string_view field, size_t max_len) {
  return get_or(o, field, std::optional<std::string>(),
                [&](const json::value& v) { return as_string(v, field, max_len); });
}

Result<int64_t> get_int(const json::object& o, std::string_view field, int64_t lo, int64_t hi) {
  return get_required(o, field, [&](const json::value& v) { return as_int(v, field, lo, hi); });
}

Result<int64_t> get_int_or(const json::object& o, std::string_view field, int64_t lo, int64_t hi,
                           int64_t fallback) {
  return get_or(o, field, fallback, [&](const json::value& v) { return as_int(v, field, lo, hi); });
}

Result<std::optional<int64_t>> get_optional_int(const json::object& o, std::string_view field,
                                                int64_t lo, int64_t hi) {
  return get_or(o, field, std::optional<int64_t>(),
                [&](const json::value& v) { return as_int(v, field, lo, hi); });
}

Result<double> get_number(const json::object& o, std::string_view field, double lo, double hi) {
  return get_required(o, field, [&](const json::value& v) { return as_number(v, field, lo, hi); });
}

Result<double> get_number_or(const json::object& o, std::string_view field, double lo, double hi,
                             double fallback) {
  return get_or(o, field, fallback,
                [&](const json::value& v) { return as_number(v, field, lo, hi); });
}

Result<bool> get_bool(const json::object& o, std::string_view field) {
  return get_required(o, field, [&](const json::value& v) { return as_bool(v, field); });
}

Result<bool> get_bool_or(const json::object& o, std::string_view field, bool fallback) {
  return get_or(o, field, fallback, [&](const json::value& v) { return as_bool(v, field); });
}

Result<const json::object*> get_object(const json::object& o, std::string_view field) {
  return get_required(o, field, [&](const json::value& v) { return as_object(v, field); });
}

Result<const json::object*> get_optional_object(const json::object& o, std::string_view field) {
  return get_or(o, field, static_cast<const json::object*>(nullptr),
                [&](const json::value& v) { return as_object(v, field); });
}

Result<const json::array*> get_array(const json::object& o, std::string_view field,
                                     size_t max_items) {
  return get_required(o, field,
                      [&](const json::value& v) { return as_array(v, field, max_items); });
}

Result<const json::array*> get_optional_array(const json::object& o, std::string_view field,
                                              size_t max_items) {
  return get_or(o, field, static_cast<const json::array*>(nullptr),
                [&](const json::value& v) { return as_array(v, field, max_items); });
}

Result<size_t> index_of_name(std::span<const std::string_view> names, std::string_view s,
                             std::string_view field) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == s) return i;
  }
  return bad(fmt::format("field '{}' must be one of {}", field, fmt::join(names, ", ")));
}

Status check_fields(const json::object& o, std::initializer_list<std::string_view> allowed) {
  for (const auto& kv : o) {
    std::string_view key(kv.key().data(), kv.key().size());
    bool known = false;
    for (auto a : allowed) known = known || a == key;
    if (!known) {
      // Bound the echoed key: it is untrusted and may be long.
      return bad(fmt::format("unknown field '{}'", key.substr(0, 64)));
    }
  }
  return {};
}

std::string rfc3339(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  int millis = static_cast<int>(ms % 1000);
  if (millis < 0) {  // before 1970: floor, not truncate
    millis += 1000;
    secs -= 1;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
}

std::string rfc3339_now() { return rfc3339(std::chrono::system_clock::now()); }

int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::optional<int64_t> parse_rfc3339_ms(std::string_view s) {
  std::tm tm{};
  if (s.size() < 20) return std::nullopt;
  std::string t(s);
  if (std::sscanf(t.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6) {
    return std::nullopt;
  }
  int64_t ms = 0;
  if (t.size() > 20 && t[19] == '.') {
    int digits = 0;
    for (size_t i = 20;
         i < t.size() && std::isdigit(static_cast<unsigned char>(t[i])) && digits < 3;
         ++i, ++digits) {
      ms = ms * 10 + (t[i] - '0');
    }
    for (; digits < 3; ++digits) ms *= 10;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<int64_t>(timegm(&tm)) * 1000 + ms;
}

std::string rfc1123(std::chrono::system_clock::time_point t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

}  // namespace fabriclab
