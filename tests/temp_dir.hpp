#pragma once
// A fresh directory for one test: "/tmp/<prefix>-XXXXXX", made by mkdtemp (mode 0700, a name no
// other run can hold). Returns "" when mkdtemp fails; callers ASSERT on it in SetUp so that a test
// never runs in a directory it does not own.

#include <stdlib.h>

#include <string>

namespace fabriclab::testing {

inline std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  return ::mkdtemp(tmpl.data()) != nullptr ? tmpl : std::string();
}

}  // namespace fabriclab::testing
