#pragma once
// Lenient JSON readers, for documents this project wrote itself: the orchestrator's answers read
// by the CLI, the benchmarks and the tests, the journal read back by the orchestrator, a manifest
// our own build made. A field that is missing, null or of another type reads as a fallback ("",
// the given number, false, an empty array or object), and so does any field of a value that is
// not an object: the caller decides what an absent field means, without a branch per field.
//
// Input from outside (request bodies, spec files, guest lines) is not read with these: use the
// checked getters of json.hpp, which refuse a wrong type or range and name the field.

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fabriclab::json_get {

namespace json = boost::json;

// The field's value; JSON null when it is missing (or `v` is not an object).
const json::value& field(const json::object& o, std::string_view key);
const json::value& field(const json::value& v, std::string_view key);

// `v` itself as an object; an empty one when it is not an object.
const json::object& as_object(const json::value& v);

// A string field; "" otherwise.
std::string str(const json::object& o, std::string_view key);
std::string str(const json::value& v, std::string_view key);

// An integer field (an int64, a uint64 up to INT64_MAX, or a finite double in int64's range,
// truncated toward zero); `fallback` otherwise.
int64_t int_or(const json::object& o, std::string_view key, int64_t fallback);
int64_t int_or(const json::value& v, std::string_view key, int64_t fallback);

// Any number field as a double; nullopt otherwise.
std::optional<double> number(const json::object& o, std::string_view key);
std::optional<double> number(const json::value& v, std::string_view key);

// `v` itself as a double when it is a number; nullopt otherwise.
std::optional<double> number(const json::value& v);

// True only for a boolean field that is true.
bool flag(const json::object& o, std::string_view key);
bool flag(const json::value& v, std::string_view key);

// A boolean field's value; nullopt when it is missing or not a boolean (for a view that shows
// "unknown" apart from "no").
std::optional<bool> boolean(const json::object& o, std::string_view key);
std::optional<bool> boolean(const json::value& v, std::string_view key);

// An array or object field (a reference into the document); an empty one otherwise.
const json::array& arr(const json::object& o, std::string_view key);
const json::array& arr(const json::value& v, std::string_view key);
const json::object& obj(const json::object& o, std::string_view key);
const json::object& obj(const json::value& v, std::string_view key);

}  // namespace fabriclab::json_get
