#pragma once
// CoalescingStream: the layer under a server websocket (websocket::stream<CoalescingStream>) that
// turns many small writes into few socket writes.
//
// Why: a feed with a thousand subscribers spends its time per delivery, and on a virtual machine
// the largest part of that is the send system call (and, on loopback, the peer's receive path
// run inside it). Beast writes one message per async_write, so a session with five events queued
// made five sendmsg calls and woke its peer five times.
//
// How: async_write_some (Beast's writes) and append (the owner's prepared frames) copy the bytes
// into a pending buffer; async_write_some then completes at once (posted, as Asio requires).
// The pending bytes go out as soon as no write is in flight and the owner is not holding: first
// straight to the socket (a socket with room in its buffer takes them all, with no operation to
// complete later), and what it does not take in an async_write; what arrives while that write
// is in flight goes out together in the next one. So the first event of a quiet stream leaves
// immediately, and a burst (or a subscriber catching up) leaves in one write. Every write Beast
// makes passes through here in the order Beast issues it (its own pong and close frames too)
// and each is appended whole, so frames never interleave.
//
// The owner bounds memory: it stops writing while pending() is above its high-water mark and
// resumes from on_flushed. A flush that makes no progress for long is the owner's watchdog's
// business (stuck_for()). All members are used on the socket's strand only.

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/role.hpp>
#include <boost/beast/websocket/teardown.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace fabriclab::http {

class CoalescingStream {
 public:
  using tcp = boost::asio::ip::tcp;
  using error_code = boost::system::error_code;
  using executor_type = tcp::socket::executor_type;
  using next_layer_type = tcp::socket;

  explicit CoalescingStream(tcp::socket socket)
      : core_(std::make_shared<Core>(std::move(socket))) {}

  executor_type get_executor() noexcept { return core_->socket.get_executor(); }
  tcp::socket& next_layer() noexcept { return core_->socket; }

  template <class MutableBufferSequence, class ReadToken>
  auto async_read_some(const MutableBufferSequence& buffers, ReadToken&& token) {
    return core_->socket.async_read_some(buffers, std::forward<ReadToken>(token));
  }

  template <class ConstBufferSequence, class WriteToken>
  auto async_write_some(const ConstBufferSequence& buffers, WriteToken&& token) {
    return boost::asio::async_initiate<WriteToken, void(error_code, std::size_t)>(
        [core = core_](auto handler, const ConstBufferSequence& buffers) {
          error_code ec = core->error;
          std::size_t n = 0;
          if (!ec) {
            n = boost::asio::buffer_size(buffers);
            size_t at = core->pending.size();
            core->pending.resize(at + n);
            boost::asio::buffer_copy(boost::asio::buffer(core->pending.data() + at, n), buffers);
            core->flush();
          }
          auto ex = boost::asio::get_associated_executor(handler, core->socket.get_executor());
          boost::asio::post(ex, boost::beast::bind_front_handler(std::move(handler), ec, n));
        },
        token, buffers);
  }

  // Appends bytes of the owner's own (a prepared frame: header and payload) after everything
  // written so far; they go out with the next flush.
  void append(std::string_view a, std::string_view b) {
    core_->pending.append(a);
    core_->pending.append(b);
    core_->flush();
  }
  // While held, appended bytes wait (the owner is about to write more); releasing flushes.
  void hold(bool on) {
    core_->held = on;
    if (!on) core_->flush();
  }
  // A socket write failed: nothing more will be sent.
  bool failed() const noexcept { return static_cast<bool>(core_->error); }
  // Bytes accepted and not yet handed to the socket (the write in flight not included).
  size_t pending() const noexcept { return core_->pending.size(); }
  // How long the write in flight has been waiting for the peer; zero when none is.
  std::chrono::steady_clock::duration stuck_for() const {
    return core_->flushing ? std::chrono::steady_clock::now() - core_->flush_started
                           : std::chrono::steady_clock::duration::zero();
  }
  // Called on the strand after each async socket write completes (successfully or not): the
  // owner waiting for pending() to fall resumes from here.
  void on_flushed(std::function<void()> fn) { core_->on_flushed = std::move(fn); }

 private:
  // Shared with the write in flight, which may complete after the stream is gone.
  struct Core : std::enable_shared_from_this<Core> {
    explicit Core(tcp::socket s) : socket(std::move(s)) {}
    tcp::socket socket;
    std::string pending, sending;
    bool held = false, flushing = false;
    error_code error;  // the first write error; every later write fails with it
    std::chrono::steady_clock::time_point flush_started;
    std::function<void()> on_flushed;

    void flush() {
      if (held || flushing || pending.empty() || error) return;
      // First at once: a socket with room takes it all, with no operation to complete later.
      // (The socket is non-blocking for us; Asio's own operations do not mind.)
      error_code ec;
      if (!socket.non_blocking()) socket.non_blocking(true, ec);
      size_t n = ec ? 0 : socket.write_some(boost::asio::buffer(pending), ec);
      if (ec && ec != boost::asio::error::would_block && ec != boost::asio::error::try_again) {
        error = ec;
        return;
      }
      if (n == pending.size()) {
        pending.clear();
        return;
      }
      pending.erase(0, n);
      flushing = true;
      flush_started = std::chrono::steady_clock::now();
      sending.swap(pending);
      boost::asio::async_write(socket, boost::asio::buffer(sending),
                               [self = shared_from_this()](error_code ec, std::size_t) {
                                 self->flushing = false;
                                 self->sending.clear();
                                 if (ec && !self->error) self->error = ec;
                                 if (self->on_flushed) self->on_flushed();
                                 self->flush();
                               });
    }
  };

  std::shared_ptr<Core> core_;
};

// Beast's websocket close ends with a teardown of the next layer; ours is the socket's.
inline void teardown(boost::beast::role_type role, CoalescingStream& stream,
                     boost::system::error_code& ec) {
  boost::beast::websocket::teardown(role, stream.next_layer(), ec);
}

template <class TeardownHandler>
void async_teardown(boost::beast::role_type role, CoalescingStream& stream,
                    TeardownHandler&& handler) {
  boost::beast::websocket::async_teardown(role, stream.next_layer(),
                                          std::forward<TeardownHandler>(handler));
}

}  // namespace fabriclab::http
