// common's lenient JSON readers (json_get.hpp): each type, each fallback, and a value that is not
// an object.

#include "fabriclab/common/json_get.hpp"

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>

namespace fabriclab {
namespace {

using namespace json_get;

json::value doc() {
  return json::parse(
      R"({"s": "text", "i": -7, "u": 18446744073709551615, "big": 9223372036854775807,
                         "d": 2.9, "nd": -2.9, "huge": 1e300, "t": true, "f": false, "n": null,
                         "a": [1, 2], "o": {"k": "v"}})");
}

TEST(JsonGet, StrReadsAStringAndEverythingElseIsEmpty) {
  auto v = doc();
  const auto& o = v.as_object();
  EXPECT_EQ(str(o, "s"), "text");
  for (const char* k : {"i", "t", "n", "a", "o", "missing"}) EXPECT_EQ(str(o, k), "") << k;
  EXPECT_EQ(str(v, "s"), "text");
  EXPECT_EQ(str(json::value(42), "s"), "") << "a value that is not an object has no fields";
}

TEST(JsonGet, IntOrReadsIntegersTruncatesDoublesAndFallsBackOtherwise) {
  auto v = doc();
  const auto& o = v.as_object();
  EXPECT_EQ(int_or(o, "i", 0), -7);
  EXPECT_EQ(int_or(o, "big", 0), INT64_MAX);
  EXPECT_EQ(int_or(o, "d", 0), 2);
  EXPECT_EQ(int_or(o, "nd", 0), -2);
  // Callers differ in what "absent" means: each gives its own fallback.
  EXPECT_EQ(int_or(o, "u", -1), -1) << "a uint64 above INT64_MAX does not fit";
  EXPECT_EQ(int_or(o, "huge", -1), -1) << "a double outside int64's range does not fit";
  EXPECT_EQ(int_or(o, "s", 0), 0);
  EXPECT_EQ(int_or(o, "n", -1), -1);
  EXPECT_EQ(int_or(o, "missing", 5), 5);
  EXPECT_EQ(int_or(v, "i", 0), -7);
  EXPECT_EQ(int_or(json::value("x"), "i", 9), 9);
}

TEST(JsonGet, NumberReadsAnyNumberAsADouble) {
  auto v = doc();
  const auto& o = v.as_object();
  EXPECT_EQ(number(o, "i"), -7.0);
  EXPECT_DOUBLE_EQ(*number(o, "d"), 2.9);
  EXPECT_EQ(number(o, "s"), std::nullopt);
  EXPECT_EQ(number(o, "t"), std::nullopt);
  EXPECT_EQ(number(o, "missing"), std::nullopt);
  EXPECT_EQ(number(v, "i"), -7.0);
}

TEST(JsonGet, FlagIsTrueOnlyForTrue) {
  auto v = doc();
  const auto& o = v.as_object();
  EXPECT_TRUE(flag(o, "t"));
  EXPECT_FALSE(flag(o, "f"));
  EXPECT_FALSE(flag(o, "i")) << "1 is not true";
  EXPECT_FALSE(flag(o, "s"));
  EXPECT_FALSE(flag(o, "missing"));
  EXPECT_TRUE(flag(v, "t"));
}

TEST(JsonGet, NumberOfAValueAndBooleanTellAbsentFromFalse) {
  auto v = doc();
  const auto& o = v.as_object();
  EXPECT_EQ(number(o.at("i")), -7.0);
  EXPECT_EQ(number(o.at("s")), std::nullopt);
  EXPECT_EQ(boolean(o, "t"), true);
  EXPECT_EQ(boolean(o, "f"), false) << "false is a value, not an absence";
  EXPECT_EQ(boolean(o, "n"), std::nullopt);
  EXPECT_EQ(boolean(o, "i"), std::nullopt) << "1 is not a boolean";
  EXPECT_EQ(boolean(o, "missing"), std::nullopt);
  EXPECT_EQ(boolean(v, "f"), false);
  EXPECT_EQ(&as_object(o.at("o")), &o.at("o").as_object()) << "a reference into the document";
  EXPECT_TRUE(as_object(o.at("a")).empty());
}

TEST(JsonGet, ArrObjAndFieldReferToTheDocumentOrToAnEmptyValue) {
  auto v = doc();
  const auto& o = v.as_object();
  EXPECT_EQ(arr(o, "a").size(), 2u);
  EXPECT_EQ(&arr(o, "a"), &o.at("a").as_array()) << "a reference into the document, not a copy";
  EXPECT_TRUE(arr(o, "o").empty());
  EXPECT_TRUE(arr(o, "missing").empty());
  EXPECT_EQ(str(obj(o, "o"), "k"), "v");
  EXPECT_TRUE(obj(o, "a").empty());
  EXPECT_TRUE(obj(v, "missing").empty());
  EXPECT_EQ(field(o, "i"), json::value(-7));
  EXPECT_TRUE(field(o, "missing").is_null());
  EXPECT_TRUE(field(json::value(1), "i").is_null());
  // Chained reads through missing levels stay safe.
  EXPECT_EQ(str(obj(obj(o, "x"), "y"), "z"), "");
  EXPECT_EQ(int_or(field(v, "o"), "k", 3), 3);
}

}  // namespace
}  // namespace fabriclab
