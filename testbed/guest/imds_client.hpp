#pragma once
// One HTTP request at a time to the Instance Metadata Service (169.254.169.254:80), as a
// non-blocking state machine in the guest's poll loop: connect -> send -> read until the
// response is complete or the server closes, all under one deadline. The response is bounded
// (kMaxResponseBytes) and parsed by parse_http_response; what it means is the caller's business.

#include <poll.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fabriclab::guest {

struct ImdsResult {
  bool ok = false;  // a complete HTTP response arrived (any status)
  int status = 0;
  std::string body;
  std::string error;  // when !ok: what went wrong (connect refused, timeout, bad response...)
};

class ImdsClient {
 public:
  static constexpr std::size_t kMaxResponseBytes = 64 * 1024;
  static constexpr std::int64_t kDeadlineMs = 3000;

  ImdsClient(std::uint32_t address, std::uint16_t port) : address_(address), port_(port) {}
  ImdsClient(const ImdsClient&) = delete;
  ImdsClient& operator=(const ImdsClient&) = delete;
  ~ImdsClient();

  bool busy() const { return fd_ >= 0 || result_.has_value(); }
  // Starts `method target` with an optional JSON body. False when busy.
  bool start(const std::string& method, const std::string& target, const std::string& json_body,
             std::int64_t now_ms);

  // At most one pollfd (none when idle).
  void append_pollfds(std::vector<pollfd>& fds) const;
  void on_ready(short revents, std::int64_t now_ms);
  void expire(std::int64_t now_ms);
  std::int64_t next_deadline() const;  // INT64_MAX when idle

  // The finished request's result, once; the client is idle again afterwards.
  std::optional<ImdsResult> take_result();

 private:
  enum class State { idle, connecting, sending, reading };
  void finish(ImdsResult result);
  void fail(std::string error);
  void do_send();
  void do_read();

  std::uint32_t address_;
  std::uint16_t port_;
  int fd_ = -1;
  State state_ = State::idle;
  std::int64_t deadline_ms_ = 0;
  std::string out_;
  std::size_t written_ = 0;
  std::string in_;
  std::optional<ImdsResult> result_;
};

}  // namespace fabriclab::guest
