#pragma once
// Private to the agent: the file and manifest helpers that the host image store
// (image_store.cpp) and the guest image store (guest_image_store.cpp) share.

#include <boost/json.hpp>
#include <string>

#include "fabriclab/common/result.hpp"

namespace fabriclab::agent::image_detail {

// The whole file at `path`, at most 1 MiB (a manifest); invalid_argument when it is larger.
Result<std::string> read_small_file(const std::string& path);
// `text` as a JSON object (depth at most 16); `what` names it in the error.
Result<boost::json::object> parse_object(const std::string& text, const std::string& what);
// Whether `s` is 64 hex digits (either case).
bool is_sha256_hex(const std::string& s);
std::string lower(std::string s);

}  // namespace fabriclab::agent::image_detail
