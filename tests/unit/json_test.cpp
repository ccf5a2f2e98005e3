#include "fabriclab/common/json.hpp"

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <regex>

#include "status_matchers.hpp"

namespace fabriclab {
namespace {

json::object obj(std::string_view text) { return json::parse(text).as_object(); }

TEST(Json, ParseRejectsNonJsonOversizeAndDeepInputNamingTheProblem) {
  auto bad = parse_json("{nope", 100, 8);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.condition(), Condition::invalid_argument);
  EXPECT_EQ(bad.error().message.rfind("body is not JSON: ", 0), 0u) << bad.error().message;

  auto big = parse_json(std::string(101, ' '), 100, 8);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().message, "body larger than 100 bytes");

  auto deep = parse_json("[[[[[[1]]]]]]", 100, 4);
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(deep.error().message, "body nested deeper than 4");

  auto trailing = parse_json("{} {}", 100, 4);
  EXPECT_FALSE(trailing.ok());

  auto fine = parse_json(R"({"a":[1,2,{"b":null}]})", 100, 4);
  ASSERT_OK(fine);
  EXPECT_TRUE(fine->is_object());
}

TEST(Json, ParseObjectNamesTheInputWhenNotAnObject) {
  auto r = parse_json_object("[1]", 100, 4, "spec");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "spec must be a JSON object");
}

TEST(Json, GetIntChecksPresenceTypeAndRangeNamingTheField) {
  auto o =
      obj(R"({"memory_mib": 16, "ok": 64, "dbl": 64.0, "str": "64", "big": 18446744073709551615})");
  auto low = get_int(o, "memory_mib", 32, 65536);
  ASSERT_FALSE(low.ok());
  EXPECT_EQ(low.condition(), Condition::invalid_argument);
  EXPECT_EQ(low.error().message, "field 'memory_mib' must be an integer in 32..65536");
  EXPECT_EQ(get_int(o, "ok", 32, 65536).value(), 64);
  EXPECT_FALSE(get_int(o, "dbl", 32, 65536).ok());
  EXPECT_FALSE(get_int(o, "str", 32, 65536).ok());
  EXPECT_FALSE(get_int(o, "big", 0, INT64_MAX).ok());
  auto missing = get_int(o, "vcpus", 1, 8);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message, "field 'vcpus' is required");
  EXPECT_EQ(get_int_or(o, "vcpus", 1, 8, 2).value(), 2);
  EXPECT_FALSE(get_int_or(o, "memory_mib", 32, 64, 2).ok());
  EXPECT_FALSE(get_optional_int(o, "vcpus", 1, 8).value().has_value());
  EXPECT_EQ(get_optional_int(o, "ok", 1, 100).value(), 64);
}

TEST(Json, GetStringChecksTypeAndLength) {
  auto o = obj(R"({"name": "web-0", "n": 3, "nul": null})");
  EXPECT_EQ(get_string(o, "name", 16).value(), "web-0");
  auto long_name = get_string(o, "name", 3);
  ASSERT_FALSE(long_name.ok());
  EXPECT_EQ(long_name.error().message, "field 'name' must be at most 3 bytes");
  auto wrong = get_string(o, "n", 16);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().message, "field 'n' must be a string");
  EXPECT_FALSE(get_string(o, "nul", 16).ok());  // null counts as missing
  EXPECT_EQ(get_string(o, "nul", 16, /*required=*/false).value(), "");
  EXPECT_FALSE(get_optional_string(o, "absent", 16).value().has_value());
  EXPECT_EQ(get_optional_string(o, "name", 16).value(), "web-0");
}

TEST(Json, GetBoolNumberObjectArray) {
  auto o = obj(R"({"b": true, "x": 1.5, "i": 2, "o": {"k": 1}, "a": [1, 2, 3], "s": "t"})");
  EXPECT_TRUE(get_bool(o, "b").value());
  EXPECT_FALSE(get_bool(o, "s").ok());
  EXPECT_FALSE(get_bool_or(o, "absent", false).value());
  EXPECT_DOUBLE_EQ(get_number(o, "x", 0, 2).value(), 1.5);
  EXPECT_DOUBLE_EQ(get_number(o, "i", 0, 2).value(), 2.0);
  auto out = get_number(o, "x", 0, 1);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.error().message, "field 'x' must be a number in 0..1");
  EXPECT_DOUBLE_EQ(get_number_or(o, "absent", 0, 1, 0.5).value(), 0.5);
  ASSERT_OK(get_object(o, "o"));
  EXPECT_EQ(get_object(o, "o").value()->size(), 1u);
  EXPECT_FALSE(get_object(o, "a").ok());
  EXPECT_EQ(get_optional_object(o, "absent").value(), nullptr);
  EXPECT_EQ(get_array(o, "a").value()->size(), 3u);
  auto too_many = get_array(o, "a", 2);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.error().message, "field 'a' must have at most 2 items");
  EXPECT_EQ(get_optional_array(o, "absent").value(), nullptr);
}

TEST(Json, CheckFieldsRejectsTheFirstUnknownField) {
  auto o = obj(R"({"name": "a", "colour": "red"})");
  EXPECT_OK(check_fields(o, {"name", "colour"}));
  auto r = check_fields(o, {"name"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "unknown field 'colour'");
}

TEST(Json, Rfc3339IsUtcWithMilliseconds) {
  using namespace std::chrono;
  system_clock::time_point t{milliseconds(1795543200123)};  // 2026-11-24T18:00:00.123Z
  EXPECT_EQ(rfc3339(t), "2026-11-24T18:00:00.123Z");
  EXPECT_EQ(rfc3339(system_clock::time_point{}), "1970-01-01T00:00:00.000Z");
  EXPECT_TRUE(
      std::regex_match(rfc3339_now(), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
}

}  // namespace
}  // namespace fabriclab
