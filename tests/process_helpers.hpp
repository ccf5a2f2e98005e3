#pragma once
// Small checks the process tests share: whether a text holds a part (a child's output, an error
// message) and whether this test process has any child left to reap.

#include <sys/wait.h>

#include <cerrno>
#include <string>

namespace fabriclab::testing {

inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// True when this process has no child left (reaped or never started).
inline bool no_children() { return ::waitpid(-1, nullptr, WNOHANG) < 0 && errno == ECHILD; }

}  // namespace fabriclab::testing
