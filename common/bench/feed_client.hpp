// fabriclab-bench-feed, internal: the client side. A Subscriber is one websocket client on its
// own strand (or the one client thread) of a shared io_context: a reader records (seq, latency)
// for every event; a stalled one completes the upgrade and then reads nothing until drain().
// ClientIo runs the client io_context; connect_readers and connect_stalled connect them (and die
// when they cannot: a bench without its subscribers measures nothing).
#pragma once

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>
#include <memory>
#include <thread>

#include "feed_common.hpp"

namespace fabriclab::bench_feed {

namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;

struct Options;

class Subscriber : public std::enable_shared_from_this<Subscriber> {
 public:
  struct Sample {
    uint32_t seq;
    uint32_t latency_us;
  };

  // One client thread needs no strand (its dispatch is client cost counted in the latency).
  Subscriber(net::io_context& ioc, bool strand, bool stalled, bool raw, int rcvbuf)
      : ws_(strand ? net::any_io_executor(net::make_strand(ioc))
                   : net::any_io_executor(ioc.get_executor())),
        timer_(ws_.get_executor()),
        stalled_(stalled),
        raw_(raw),
        rcvbuf_(rcvbuf) {}

  void start(tcp::endpoint ep);

  // Stalled only: reads what the kernel buffered until the stream ends or `timeout` passes.
  void drain(std::chrono::milliseconds timeout);

  void close();

  // Written on the strand; read by main after the client threads are joined, except the atomics.
  // A deque: growing never copies (a vector's reallocation in a thousand readers at about the
  // same moment stalled the client thread for 100+ ms when phase (b) ran past its reserve).
  std::deque<Sample> samples;
  std::atomic<int> state{0};  // 0 connecting, 1 subscribed, 2 ended, -1 failed
  std::atomic<int64_t> last_seq{-1};
  std::string end_reason;
  size_t drained = 0;      // messages read by drain()
  bool timed_out = false;  // drain() gave up: the server had not ended the stream

 private:
  void do_connect(tcp::endpoint ep);

  void do_read();

  void on_read(error_code ec);

  void record(std::string_view text, int64_t t);

  // The raw reader (--client raw). Beast did the handshake and reads the snapshot, which the
  // server sends before any event (no event is published until every reader is subscribed), so
  // Beast holds no bytes of ours after it; from then on the socket is read in large chunks and
  // the server's frames are split here: RFC 6455's server frames are unmasked, and ours are
  // unfragmented. One read then takes every event the server sent in one write, where Beast
  // makes one read operation (and one handler) per message: on a 2-core machine that also runs
  // the server, the client's cost per message is what the latency measures otherwise.
  void read_snapshot_then_raw();

  void raw_read();

  void on_raw(error_code ec, size_t n);

  void protocol_error(const char* what);

  void fail(const char* what, error_code ec);

  // On the plain socket: beast::tcp_stream's timeout bookkeeping per read would be client cost
  // counted in the latency, and the suggested websocket timeouts already cover a dead server.
  websocket::stream<tcp::socket> ws_;
  net::steady_timer timer_;
  beast::flat_buffer buf_;
  std::string raw_buf_;  // --client raw: bytes read and not yet split into frames
  size_t raw_len_ = 0;
  bool stalled_;
  bool raw_;
  int rcvbuf_;
};

// The client side: one io_context run by `threads` threads (their ids recorded for the CPU
// figures), kept alive until stop().
class ClientIo {
 public:
  explicit ClientIo(int threads) : work_(net::make_work_guard(ioc_)) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "bench-client");
        add_client_thread(static_cast<pid_t>(::gettid()));
        ioc_.run();
      });
    }
  }
  net::io_context& ioc() { return ioc_; }
  void stop() {
    work_.reset();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  net::io_context ioc_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
};

// Connects the readers, a few hundred handshakes in flight at a time; dies when one fails or
// they are not all connected within 30 s. Prints the connect line (text output).
std::vector<std::shared_ptr<Subscriber>> connect_readers(const Options& o, net::io_context& cioc,
                                                         const tcp::endpoint& ep);

// The subscriber that completes the upgrade and never reads (phase b), connected.
std::shared_ptr<Subscriber> connect_stalled(const Options& o, net::io_context& cioc,
                                            const tcp::endpoint& ep);

}  // namespace fabriclab::bench_feed
