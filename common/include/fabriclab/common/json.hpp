#pragma once
// Checked JSON input and a couple of output helpers, over Boost.JSON.
//
// Everything that arrives from outside (request bodies, websocket messages, spec files, guest
// lines) is untrusted: parse it with `parse_json` (size and depth limits) and read fields with the
// getters below, which check type and range and name the field in their error, e.g.
// "field 'memory_mib' must be an integer in 32..65536". All failures are
// Condition::invalid_argument.

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "fabriclab/common/result.hpp"

namespace fabriclab {

namespace json = boost::json;

// Parses one JSON document. `what` names the input in errors: "body is not JSON: ...",
// "body larger than N bytes", "body nested deeper than N".
Result<json::value> parse_json(std::string_view text, size_t max_bytes, int max_depth,
                               std::string_view what = "body");

// Like parse_json, and the document must be an object ("body must be a JSON object").
Result<json::object> parse_json_object(std::string_view text, size_t max_bytes, int max_depth,
                                       std::string_view what = "body");

// Fields. A missing required field: "field 'x' is required". A field that is present with
// JSON null counts as missing.

// A string of at most `max_len` bytes. When not required and missing: "".
Result<std::string> get_string(const json::object& o, std::string_view field, size_t max_len,
                               bool required = true);
Result<std::optional<std::string>> get_optional_string(const json::object& o,
                                                       std::string_view field, size_t max_len);

// An integer in lo..hi (inclusive). Doubles are refused, even 2.0.
Result<int64_t> get_int(const json::object& o, std::string_view field, int64_t lo, int64_t hi);
Result<int64_t> get_int_or(const json::object& o, std::string_view field, int64_t lo, int64_t hi,
                           int64_t fallback);
Result<std::optional<int64_t>> get_optional_int(const json::object& o, std::string_view field,
                                                int64_t lo, int64_t hi);

// A number (integer or double) in lo..hi.
Result<double> get_number(const json::object& o, std::string_view field, double lo, double hi);
Result<double> get_number_or(const json::object& o, std::string_view field, double lo, double hi,
                             double fallback);

Result<bool> get_bool(const json::object& o, std::string_view field);
Result<bool> get_bool_or(const json::object& o, std::string_view field, bool fallback);

// Pointers into `o` (valid while `o` is); the optional variants give nullptr when missing.
Result<const json::object*> get_object(const json::object& o, std::string_view field);
Result<const json::object*> get_optional_object(const json::object& o, std::string_view field);
// An array of at most `max_items` elements.
Result<const json::array*> get_array(const json::object& o, std::string_view field,
                                     size_t max_items = SIZE_MAX);
Result<const json::array*> get_optional_array(const json::object& o, std::string_view field,
                                              size_t max_items = SIZE_MAX);

// The position of `s` among `names` (an enum's spellings, in the enum's order); otherwise
// "field 'FIELD' must be one of A, B, C" (the names in that order).
Result<size_t> index_of_name(std::span<const std::string_view> names, std::string_view s,
                             std::string_view field);
// The enum value whose spelling `s` is, for an enum numbered 0.. in the order of `names`.
template <class E>
Result<E> enum_from_name(std::span<const std::string_view> names, std::string_view s,
                         std::string_view field) {
  FL_ASSIGN_OR_RETURN(size_t i, index_of_name(names, s, field));
  return static_cast<E>(i);
}

// Schema check: "unknown field 'x'" for the first key not in `allowed`.
Status check_fields(const json::object& o, std::initializer_list<std::string_view> allowed);

// UTC with milliseconds: 2026-11-24T18:00:00.123Z
std::string rfc3339(std::chrono::system_clock::time_point t);
std::string rfc3339_now();
// Now, as unix milliseconds (the unit parse_rfc3339_ms gives).
int64_t unix_now_ms();
// The inverse, to unix milliseconds: "2026-11-24T18:00:00.123Z" (fraction optional, at most its
// first 3 digits used); nullopt for anything else.
std::optional<int64_t> parse_rfc3339_ms(std::string_view text);

// RFC 1123 (HTTP-date), as Azure writes NotBefore: "Mon, 19 Sep 2016 18:29:47 GMT".
std::string rfc1123(std::chrono::system_clock::time_point t);

}  // namespace fabriclab
