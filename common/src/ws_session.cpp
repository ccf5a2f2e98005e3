// One websocket on an EventFeed. Runs on the connection's strand.
//
// Outgoing: `out_` holds what is to be sent next (first the snapshot or backlog, then batches
// taken from the subscription). We only take the next batch when `out_` is empty, so what a
// session holds is bounded by the subscription's queue (Limits::max_ws_queue) plus one batch;
// a consumer that cannot keep up overflows the subscription and is closed with reason
// "slow consumer". The publisher only appends to that bounded queue and posts a wake-up.
//
// Cost per delivery is what limits a feed with a thousand subscribers. Beast does the handshake,
// reads the client's frames and writes the control frames (pong, close); the events themselves
// are written as prepared text frames: RFC 6455's server frame is a 2-10 byte header before the
// unmasked payload, and every subscriber sends the same shared payload. Frames are appended to a
// CoalescingStream (coalescing_stream.hpp), which Beast's own writes go through too, each whole
// and in order, so nothing interleaves. A wake-up appends everything queued and hands it to the
// socket in one write: a burst, or a subscriber catching up, costs one send and wakes the peer
// once; a single event on a quiet feed still leaves at once. Beast's per-message write (a
// composed operation and several handler hops per event) was the largest cost before.
//
// The session takes no more events while more than kHighWater bytes wait for the socket; a
// subscriber that stops reading then fills its bounded subscription queue and is cut off. A
// write to a peer that reads nothing for Limits::write_timeout closes the connection (Beast has
// no write timeout): rather than a timer per write (a timer-queue update, often a syscall, per
// event per subscriber), one watchdog tick per session and second checks how long the write in
// flight has waited. Closing sends a close frame and gives the peer a short grace period (an
// exact deadline on the same timer) before the socket is cut.

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <deque>

#include "coalescing_stream.hpp"
#include "fabriclab/common/json.hpp"
#include "http_internal.hpp"

namespace fabriclab::http {
namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;
using boost::system::error_code;
using Message = Subscription::Message;

namespace {

constexpr auto kCloseGrace = std::chrono::milliseconds(500);
// How often a session checks its write in flight against Limits::write_timeout.
constexpr auto kWatchdogTick = std::chrono::seconds(1);
// Bytes waiting for the socket above which a session takes no more events until a write ends.
constexpr size_t kHighWater = 64 * 1024;

// The header of an unmasked, unfragmented text frame carrying `size` bytes (RFC 6455, 5.2).
std::string_view text_frame_header(size_t size, char (&buf)[10]) {
  buf[0] = static_cast<char>(0x81);  // FIN + opcode 1 (text)
  if (size < 126) {
    buf[1] = static_cast<char>(size);
    return {buf, 2};
  }
  if (size <= 0xffff) {
    buf[1] = 126;
    buf[2] = static_cast<char>(size >> 8);
    buf[3] = static_cast<char>(size);
    return {buf, 4};
  }
  buf[1] = 127;
  for (int i = 0; i < 8; ++i) buf[2 + i] = static_cast<char>(uint64_t(size) >> (56 - 8 * i));
  return {buf, 10};
}

const Message& pong_message() {
  static const Message m = std::make_shared<const std::string>(R"({"type":"pong"})");
  return m;
}

class WsSession : public Session, public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(Server::Impl& srv, tcp::socket socket, std::shared_ptr<EventFeed> feed,
            std::optional<uint64_t> since, std::string remote)
      : srv_(srv),
        ws_(std::move(socket)),
        timer_(ws_.get_executor()),
        feed_(std::move(feed)),
        since_(since),
        remote_(std::move(remote)) {}

  ~WsSession() override { srv_.remove(id_); }

  void run(BeastRequest req) {
    id_ = srv_.add(weak_from_this());
    if (id_ == 0) return;  // stopping or full: dropping the socket closes it
    net::dispatch(ws_.get_executor(), [self = shared_from_this(), req = std::move(req)]() mutable {
      self->do_accept(std::move(req));
    });
  }

  void shutdown() override {
    net::post(ws_.get_executor(), [self = shared_from_this()] {
      self->do_close(websocket::close_code::going_away, "server shutting down");
    });
  }

  void detach() override {
    if (sub_) sub_->cancel();
  }

 private:
  void do_accept(BeastRequest req) {
    error_code ignored;
    ws_.next_layer().next_layer().set_option(
        net::socket_base::send_buffer_size(srv_.limits.ws_send_buffer), ignored);
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(beast::http::field::server, "fabriclab"); }));
    ws_.read_message_max(srv_.limits.max_ws_message);
    ws_.async_accept(req, beast::bind_front_handler(&WsSession::on_accept, shared_from_this()));
  }

  void on_accept(error_code ec) {
    if (ec) {
      srv_.log->debug("{}: websocket handshake failed: {}", remote_, ec.message());
      return;
    }
    if (closing_) return;  // shutdown() arrived during the handshake
    // The wake-up holds only a weak reference and never runs session code on the publisher's
    // thread: it posts to our strand.
    EventFeed::Subscribed subscribed;
    try {
      subscribed = feed_->subscribe(since_, srv_.limits.max_ws_queue,
                                    [w = weak_from_this(), ex = ws_.get_executor()] {
                                      net::post(ex, [w] {
                                        if (auto self = w.lock()) self->pump();
                                      });
                                    });
    } catch (const std::exception& e) {  // the owner's snapshot function failed
      srv_.log->error("{}: websocket snapshot failed: {}", remote_, e.what());
      return do_close(websocket::close_code::internal_error, "snapshot failed");
    }
    sub_ = std::move(subscribed.subscription);
    ws_.next_layer().on_flushed([w = weak_from_this()] {
      if (auto self = w.lock()) self->pump();
    });
    out_.assign(subscribed.initial.begin(), subscribed.initial.end());
    watchdog();
    srv_.log->debug("{}: websocket subscribed ({}; {} initial messages)", remote_,
                    since_ ? (subscribed.resync ? "resync" : "resume") : "snapshot", out_.size());
    do_read();
    pump();
  }

  void do_read() {
    ws_.async_read(rbuf_, beast::bind_front_handler(&WsSession::on_read, shared_from_this()));
  }

  void on_read(error_code ec, std::size_t) {
    if (ec) {
      if (ec == websocket::error::message_too_big) {
        srv_.log->info("{}: websocket closed: message larger than {} bytes", remote_,
                       srv_.limits.max_ws_message);
      } else if (ec != websocket::error::closed && ec != net::error::operation_aborted) {
        srv_.log->debug("{}: websocket read ended: {}", remote_, ec.message());
      }
      return finish();
    }
    std::string text = beast::buffers_to_string(rbuf_.data());
    rbuf_.consume(rbuf_.size());
    // Client messages are untrusted; anything but a well-formed ping is ignored.
    auto msg =
        parse_json_object(text, srv_.limits.max_ws_message, srv_.limits.max_json_depth, "message");
    const json::value* type = msg ? msg->if_contains("type") : nullptr;
    if (type && type->is_string() && type->get_string() == "ping") {
      out_.push_back(pong_message());
      // A client that floods pings without reading the answers is a slow consumer too.
      if (out_.size() > srv_.limits.max_ws_queue * 2) return drop_slow();
      pump();
    }
    do_read();
  }

  // Appends every queued event to the stream as a frame and lets it go out in one write; at the
  // high-water mark, lets that much go first and goes on once it is below the mark again.
  void pump() {
    CoalescingStream& out = ws_.next_layer();
    if (out.failed()) return finish();  // the peer is gone; its read ends too, but maybe not soon
    while (!closing_ && sub_) {
      out.hold(true);
      bool more = true;
      while (more && out.pending() < kHighWater) {
        if (out_.empty()) {
          bool overflowed = false;
          out_ = sub_->take(&overflowed);
          if (overflowed) {
            out.hold(false);
            return drop_slow();
          }
          if (out_.empty()) more = false;
          continue;
        }
        char header[10];
        const std::string& payload = *out_.front();
        out.append(text_frame_header(payload.size(), header), payload);
        out_.pop_front();
      }
      out.hold(false);  // the socket takes what it can now, an async write the rest
      if (!more || out.pending() >= kHighWater) return;  // then on_flushed calls again
    }
  }

  // Once a second while open: a write in flight for longer than Limits::write_timeout means the
  // peer stopped reading (its window is closed) and the connection is cut.
  void watchdog() {
    timer_.expires_after(kWatchdogTick);
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec == net::error::operation_aborted || self->closing_) return;
      if (self->ws_.next_layer().stuck_for() > self->srv_.limits.write_timeout) {
        self->srv_.log->warn("{}: closing websocket: write deadline passed", self->remote_);
        return self->finish();
      }
      self->watchdog();
    });
  }

  void drop_slow() {
    srv_.log->warn("{}: closing websocket: slow consumer ({} events behind)", remote_,
                   srv_.limits.max_ws_queue);
    do_close(websocket::close_code::policy_error, "slow consumer");
  }

  void do_close(websocket::close_code code, const char* reason) {
    if (closing_) return;
    closing_ = true;
    if (sub_) sub_->cancel();
    ws_.next_layer().hold(false);
    // The grace deadline replaces the watchdog: after it the socket is cut, close frame or not.
    timer_.expires_after(kCloseGrace);
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec == net::error::operation_aborted) return;
      error_code ignored;
      beast::get_lowest_layer(self->ws_).close(ignored);
    });
    if (!ws_.is_open()) return;  // not accepted yet: the timer cuts the socket
    // Allowed while a write is in flight: Beast sends the close frame after it.
    ws_.async_close(websocket::close_reason(code, reason),
                    [self = shared_from_this()](error_code) { self->finish(); });
  }

  // The connection is done: stop receiving events, release the timer.
  void finish() {
    closing_ = true;
    if (sub_) sub_->cancel();
    timer_.cancel();
    error_code ignored;
    beast::get_lowest_layer(ws_).close(ignored);
  }

  Server::Impl& srv_;
  uint64_t id_ = 0;
  websocket::stream<CoalescingStream> ws_;
  net::steady_timer timer_;
  std::shared_ptr<EventFeed> feed_;
  std::optional<uint64_t> since_;
  std::string remote_;
  std::shared_ptr<Subscription> sub_;
  std::deque<Message> out_;
  beast::flat_buffer rbuf_;
  bool closing_ = false;
};

}  // namespace

void start_ws_session(Server::Impl& srv, tcp::socket socket, BeastRequest req,
                      std::shared_ptr<EventFeed> feed, std::optional<uint64_t> since,
                      std::string remote) {
  std::make_shared<WsSession>(srv, std::move(socket), std::move(feed), since, std::move(remote))
      ->run(std::move(req));
}

}  // namespace fabriclab::http
