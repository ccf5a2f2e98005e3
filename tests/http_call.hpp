#pragma once
// One HTTP request from a test to a server it started: a transport failure (refused, timed out)
// is a test failure naming the request, and gives an empty response (status 0) so that the
// test's own status assertion fails next to it.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "fabriclab/common/http_client.hpp"

namespace fabriclab::testing {

inline http::ClientResponse call_or_fail(const std::string& host, uint16_t port,
                                         std::string_view method, std::string_view target,
                                         std::string_view body, std::string_view token,
                                         std::chrono::milliseconds timeout) {
  auto r = http::request(host, port, method, target, body, token, timeout);
  if (!r.ok()) {
    ADD_FAILURE() << method << " " << target << ": " << r.error().describe();
    return {};
  }
  return std::move(r).value();
}

}  // namespace fabriclab::testing
