#include "fabriclab/common/result.hpp"

#include <gtest/gtest.h>

namespace fabriclab {
namespace {

Result<int> parse_positive(int x) {
  if (x <= 0) return make_error(Condition::invalid_argument, "x must be positive");
  return x;
}

Result<int> doubled(int x) {
  FL_ASSIGN_OR_RETURN(int v, parse_positive(x));
  return v * 2;
}

Status check(int x) {
  FL_RETURN_IF_ERROR(parse_positive(x));
  return {};
}

TEST(Result, CarriesValueOrConditionAndMessage) {
  auto ok = doubled(21);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 42);
  auto bad = doubled(-1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.condition(), Condition::invalid_argument);
  EXPECT_EQ(bad.error().describe(), "invalid_argument: x must be positive");
  EXPECT_TRUE(check(1).ok());
  EXPECT_EQ(check(0).condition(), Condition::invalid_argument);
}

}  // namespace
}  // namespace fabriclab
