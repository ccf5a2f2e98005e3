#pragma once
// ASSERT_OK / EXPECT_OK print the error's condition and message when a Status/Result fails.

#include <gtest/gtest.h>

#define FL_OK_IMPL(expr, fail)                                              \
  do {                                                                      \
    const auto& fl_r_ = (expr);                                             \
    if (!fl_r_.ok()) fail() << #expr << " -> " << fl_r_.error().describe(); \
  } while (0)
#define ASSERT_OK(expr) FL_OK_IMPL(expr, FAIL)
#define EXPECT_OK(expr) FL_OK_IMPL(expr, ADD_FAILURE)
