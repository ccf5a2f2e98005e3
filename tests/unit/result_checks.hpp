#pragma once
// ok_value(r): the value of a Result the test expects to succeed, for comparing it in one line
// (EXPECT_EQ(ok_value(j->last_event_seq()), 2u)). On an error the test fails there, naming the
// error, and gets T{} to go on with.

#include <gtest/gtest.h>

#include <source_location>
#include <utility>

#include "fabriclab/common/result.hpp"

namespace fabriclab::testing {

template <class T>
T ok_value(Result<T> r, std::source_location where = std::source_location::current()) {
  if (r.ok()) return std::move(r).value();
  ADD_FAILURE_AT(where.file_name(), static_cast<int>(where.line())) << r.error().describe();
  return T{};
}

}  // namespace fabriclab::testing
