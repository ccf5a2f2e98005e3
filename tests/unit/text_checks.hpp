#pragma once
// Checks on rendered text (configuration files, XML, reports, error messages) for the unit tests:
// the pieces a text must hold and the ones it must not. EXPECT_TRUE(contains_all(text, {...}))
// fails naming every missing piece and showing the whole text, so one call stands for a chain of
// find() checks and still says what each of them would have said.

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>

namespace fabriclab::testing {

inline ::testing::AssertionResult contains_all(std::string_view text,
                                               std::initializer_list<std::string_view> pieces) {
  std::string missing;
  for (std::string_view piece : pieces) {
    if (text.find(piece) == std::string_view::npos)
      missing += "\n  missing '" + std::string(piece) + "'";
  }
  if (missing.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << missing << "\nin:\n" << text;
}

inline ::testing::AssertionResult contains_none(std::string_view text,
                                                std::initializer_list<std::string_view> pieces) {
  std::string present;
  for (std::string_view piece : pieces) {
    if (text.find(piece) != std::string_view::npos)
      present += "\n  unwanted '" + std::string(piece) + "'";
  }
  if (present.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << present << "\nin:\n" << text;
}

}  // namespace fabriclab::testing
