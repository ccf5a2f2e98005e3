#include "feed_client.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "feed_phase.hpp"

namespace fabriclab::bench_feed {

namespace {

// The client io threads (the subscribers' side), to split the process CPU into client and
// server + publisher.
std::mutex g_tids_mu;
std::vector<pid_t> g_client_tids;

double thread_cpu_seconds(pid_t tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto rp = text.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream rest(text.substr(rp + 2));
  std::vector<std::string> f;
  for (std::string x; rest >> x;) f.push_back(x);
  if (f.size() < 13) return 0;  // fields from "state" (3) on: utime is 14, stime 15
  return (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The unsigned integer after `"key":` in a serialized event; -1 when absent. The events are ours,
// so a substring search is enough and keeps the client's cost per message small.
int64_t find_uint(std::string_view text, std::string_view key) {
  auto at = text.find(key);
  if (at == std::string_view::npos) return -1;
  int64_t v = 0;
  bool any = false;
  for (size_t i = at + key.size(); i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    v = v * 10 + (text[i] - '0');
    any = true;
  }
  return any ? v : -1;
}

}  // namespace

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double client_cpu_seconds() {
  std::lock_guard lock(g_tids_mu);
  double sum = 0;
  for (pid_t t : g_client_tids) sum += thread_cpu_seconds(t);
  return sum;
}

void add_client_thread(pid_t tid) {
  std::lock_guard lock(g_tids_mu);
  g_client_tids.push_back(tid);
}

void Subscriber::start(tcp::endpoint ep) {
  net::dispatch(ws_.get_executor(), [self = shared_from_this(), ep] { self->do_connect(ep); });
}

void Subscriber::drain(std::chrono::milliseconds timeout) {
  net::dispatch(ws_.get_executor(), [self = shared_from_this(), timeout] {
    self->timer_.expires_after(timeout);
    self->timer_.async_wait([self](error_code ec) {
      if (ec) return;
      self->timed_out = true;
      error_code ignored;
      self->ws_.next_layer().close(ignored);
    });
    self->do_read();
  });
}

void Subscriber::close() {
  net::post(ws_.get_executor(), [self = shared_from_this()] {
    self->timer_.cancel();
    error_code ignored;
    self->ws_.next_layer().close(ignored);
  });
}

void Subscriber::do_connect(tcp::endpoint ep) {
  auto& sock = ws_.next_layer();
  error_code ec;
  sock.open(tcp::v4(), ec);
  // Set before connect so the advertised window is small from the start.
  if (!ec && rcvbuf_ > 0) sock.set_option(net::socket_base::receive_buffer_size(rcvbuf_), ec);
  if (ec) return fail("socket", ec);
  // Loopback connects at once or is refused; the handshake has its own timeout.
  sock.async_connect(ep, [self = shared_from_this(), ep](error_code ec) {
    if (ec) return self->fail("connect", ec);
    self->ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::client));
    self->ws_.set_option(websocket::stream_base::decorator([](websocket::request_type& r) {
      r.set(beast::http::field::authorization, std::string("Bearer ") + kToken);
    }));
    self->ws_.async_handshake("127.0.0.1:" + std::to_string(ep.port()), kPath,
                              [self](error_code ec) {
                                if (ec) return self->fail("handshake", ec);
                                if (self->stalled_ || !self->raw_) {
                                  self->state = 1;
                                  if (!self->stalled_) self->do_read();
                                  return;
                                }
                                self->read_snapshot_then_raw();
                              });
  });
}

void Subscriber::do_read() {
  ws_.async_read(buf_, [self = shared_from_this()](error_code ec, size_t) { self->on_read(ec); });
}

void Subscriber::on_read(error_code ec) {
  if (ec) {
    end_reason = ec == websocket::error::closed
                     ? "close frame: " + std::string(ws_.reason().reason.c_str())
                     : ec.message();
    state = 2;
    timer_.cancel();
    return;
  }
  int64_t t = now_ns();
  auto data = buf_.cdata();
  std::string_view text(static_cast<const char*>(data.data()), data.size());
  if (stalled_) {
    ++drained;
  } else {
    record(text, t);
  }
  buf_.consume(buf_.size());
  do_read();
}

void Subscriber::record(std::string_view text, int64_t t) {
  int64_t sent = find_uint(text, "\"t_ns\":");
  if (sent < 0) return;
  int64_t seq = find_uint(text, "\"seq\":");
  int64_t us = std::max<int64_t>(0, (t - sent) / 1000);
  samples.push_back(
      {static_cast<uint32_t>(seq), static_cast<uint32_t>(std::min<int64_t>(us, UINT32_MAX))});
  last_seq.store(seq, std::memory_order_release);
}

void Subscriber::read_snapshot_then_raw() {
  ws_.async_read(buf_, [self = shared_from_this()](error_code ec, size_t) {
    if (ec) return self->fail("snapshot", ec);
    self->buf_.consume(self->buf_.size());
    self->raw_buf_.resize(64 * 1024);
    self->state = 1;
    self->raw_read();
  });
}

void Subscriber::raw_read() {
  ws_.next_layer().async_read_some(
      net::buffer(raw_buf_.data() + raw_len_, raw_buf_.size() - raw_len_),
      [self = shared_from_this()](error_code ec, size_t n) { self->on_raw(ec, n); });
}

void Subscriber::on_raw(error_code ec, size_t n) {
  if (ec) {
    if (state == 1) {
      end_reason = ec.message();
      state = 2;
    }
    return;
  }
  int64_t t = now_ns();
  raw_len_ += n;
  auto byte = [&](size_t i) { return static_cast<uint8_t>(raw_buf_[i]); };
  size_t at = 0;
  while (raw_len_ - at >= 2) {
    uint8_t b0 = byte(at), b1 = byte(at + 1);
    if ((b1 & 0x80) || !(b0 & 0x80)) return protocol_error("a masked or fragmented frame");
    uint64_t len = b1 & 0x7f;
    size_t header = 2;
    if (len == 126) {
      if (raw_len_ - at < 4) break;
      len = (uint64_t{byte(at + 2)} << 8) | byte(at + 3);
      header = 4;
    } else if (len == 127) {
      if (raw_len_ - at < 10) break;
      len = 0;
      for (size_t i = 0; i < 8; ++i) len = (len << 8) | byte(at + 2 + i);
      header = 10;
    }
    if (len > (64u << 20)) return protocol_error("a frame over 64 MiB");
    if (raw_len_ - at < header + len) {
      if (header + len > raw_buf_.size()) raw_buf_.resize(header + len);
      break;
    }
    std::string_view payload(raw_buf_.data() + at + header, len);
    switch (b0 & 0x0f) {
      case 1:  // text: an event
        record(payload, t);
        break;
      case 8:  // close: the code, then the reason
        end_reason = "close frame: " + std::string(payload.size() > 2 ? payload.substr(2) : "");
        state = 2;
        return;
      case 9: {  // ping: a pong with the same payload, masked with a zero key as a client must
        std::string pong{static_cast<char>(0x8a), static_cast<char>(0x80 | payload.size())};
        pong.append(4, '\0');
        pong.append(payload);
        error_code ignored;
        net::write(ws_.next_layer(), net::buffer(pong), ignored);
        break;
      }
      default:  // pong, or an opcode we do not use: skip
        break;
    }
    at += header + len;
  }
  std::memmove(raw_buf_.data(), raw_buf_.data() + at, raw_len_ - at);
  raw_len_ -= at;
  if (raw_len_ == raw_buf_.size()) raw_buf_.resize(raw_buf_.size() * 2);
  raw_read();
}

void Subscriber::protocol_error(const char* what) {
  end_reason = std::string("protocol: ") + what;
  state = 2;
  error_code ignored;
  ws_.next_layer().close(ignored);
}

void Subscriber::fail(const char* what, error_code ec) {
  end_reason = std::string(what) + ": " + ec.message();
  state = -1;
}

std::vector<std::shared_ptr<Subscriber>> connect_readers(const Options& o, net::io_context& cioc,
                                                         const tcp::endpoint& ep) {
  std::vector<std::shared_ptr<Subscriber>> readers;
  auto t_connect = Clock::now();
  for (int i = 0; i < o.subscribers; ++i) {
    readers.push_back(
        std::make_shared<Subscriber>(cioc, o.client_threads > 1, false, o.client == "raw", 0));
    readers.back()->start(ep);
    while (std::count_if(readers.begin(), readers.end(), [](auto& s) { return s->state == 0; }) >
           200) {
      std::this_thread::sleep_for(1ms);
    }
  }
  auto connect_deadline = Clock::now() + 30s;
  while (std::any_of(readers.begin(), readers.end(), [](auto& s) { return s->state == 0; })) {
    if (Clock::now() > connect_deadline) die("subscribers did not connect within 30 s");
    std::this_thread::sleep_for(5ms);
  }
  for (auto& s : readers) {
    if (s->state != 1) die("a subscriber failed: " + s->end_reason);
  }
  double connect_s = std::chrono::duration<double>(Clock::now() - t_connect).count();
  if (!o.json) {
    std::printf(
        "%d subscribers connected in %.2f s; server io threads %d, client io threads %d; "
        "%d events per phase at %.0f/s in bursts of %d; max_ws_queue %zu\n",
        o.subscribers, connect_s, o.server_threads, o.client_threads, o.events, o.rate, o.burst,
        o.ws_queue);
    std::fflush(stdout);
  }
  return readers;
}

// The subscriber that completes the upgrade and never reads (phase b), connected.
std::shared_ptr<Subscriber> connect_stalled(const Options& o, net::io_context& cioc,
                                            const tcp::endpoint& ep) {
  auto stalled =
      std::make_shared<Subscriber>(cioc, o.client_threads > 1, true, false, o.stall_rcvbuf);
  stalled->start(ep);
  for (auto deadline = Clock::now() + 10s; stalled->state == 0;) {
    if (Clock::now() > deadline) die("the stalled subscriber did not connect");
    std::this_thread::sleep_for(1ms);
  }
  if (stalled->state != 1) die("the stalled subscriber failed: " + stalled->end_reason);
  return stalled;
}
}  // namespace fabriclab::bench_feed
