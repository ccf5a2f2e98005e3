// fabriclab-bench-feed: event latency on the websocket feed with many subscribers, one of them
// stalled on purpose.
//
// One http::Server (127.0.0.1, port 0, 2 io threads by default) serves an EventFeed at
// /v1/events. N subscribers (default 1000) connect over real loopback TCP websockets from one
// client io_context (one or two threads, each socket on its own strand) and read for ever.
// Beast does each handshake and reads the snapshot; then, by default (--client raw), a reader
// splits the server's frames out of large socket reads itself, so that one read takes every
// event the server sent in one write (with --client beast it reads one message per
// websocket::stream::async_read, which costs the client about as much as the server per event).
// A publisher thread plays a simulated drill: batches of hosts drained, updated and brought back,
// their instances stopped and started, emitted as drill.batch / host.state / instance.state
// events of a few hundred bytes at a mean rate, --burst events per publish call: 1 is an even
// stream; 7 is how the orchestrator narrates a host of six instances (what one poll of its agent
// revealed goes out in one publish call). Each event carries "t_ns", the steady_clock time just
// before publish(); a subscriber's latency is its receipt time minus t_ns (one process, one
// clock).
//
// Two phases in one run, the same number of events each:
//   (a) all subscribers reading;
//   (b) the same, plus one more subscriber that completes the upgrade and never reads (a small
//       SO_RCVBUF, so its window closes quickly). The server must cut it off without the others
//       noticing: "slow consumer" after Limits::max_ws_queue events behind, or the write
//       deadline (Limits::write_timeout) when a write makes no progress, whichever comes first.
//       The TCP buffers (the server caps its send buffer, Limits::ws_send_buffer) absorb
//       several hundred events first, so when the phase's events are published and the stalled
//       one is still attached, (b) goes on publishing at the same rate until the server drops
//       it (at most --stall-max-s): the figures of (b) then really cover a server holding a
//       stalled subscriber, up to and past its cut-off.
// For the readers we report p50/p99/max latency and loss (events published in the phase that a
// reader never got, counting each seq once per reader: a duplicate or a reordering is not a
// receipt), how many readers the server closed and why; for the stalled one whether and when
// (seconds and events into the phase) the server cut it off, and how its stream ended.
//
// Client and server share the machine: the client's own cost and scheduling delay are part of
// the latency, so the figures are an upper bound on what the server adds. We print the CPU the
// whole process used per phase (in cores, and how much of it the client io threads took) and
// that CPU divided by the events the readers received (microseconds per delivery, server +
// client): with it, subscribers x rate x cost says how many cores a load needs, which shows when
// the machine, not the server's design, is the limit.

#include <CLI/CLI.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/http_server.hpp"
#include "fabriclab/common/logging.hpp"

using namespace fabriclab;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;
namespace json = boost::json;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

namespace {

constexpr char kToken[] = "bench-read-token";
constexpr char kPath[] = "/v1/events";
constexpr double kTargetP99Ms = 20;

[[noreturn]] void die(const std::string& what) {
  std::cerr << "fabriclab-bench-feed: " << what << "\n";
  std::exit(1);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

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

double client_cpu_seconds() {
  std::lock_guard lock(g_tids_mu);
  double sum = 0;
  for (pid_t t : g_client_tids) sum += thread_cpu_seconds(t);
  return sum;
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

// A drill over a small cluster, as the orchestrator would narrate it: per batch of hosts,
// drill.batch started, each host draining with its instances stopping/stopped, updating, back,
// instances starting/healthy, drill.batch finished.
class DrillSim {
 public:
  static constexpr int kHosts = 48, kPerHost = 6, kFds = 4, kBatch = 4;

  static json::object snapshot() {
    json::array hosts;
    for (int h = 0; h < 8; ++h) {
      hosts.push_back(json::object{{"name", host(h)}, {"fault_domain", h % kFds},
                                   {"state", "healthy"}, {"instances", kPerHost}});
    }
    return json::object{{"drill", "drill-bench"}, {"phase", "running"}, {"hosts", hosts},
                        {"host_count", kHosts}};
  }

  // The next event of the drill: type and fields (without t_ns).
  std::pair<std::string, json::object> next() {
    if (steps_.empty()) plan_batch();
    auto e = std::move(steps_.front());
    steps_.erase(steps_.begin());
    return e;
  }

 private:
  static std::string host(int h) { return "host-" + std::to_string(1000 + h); }
  static std::string instance(int h, int i) {
    return "svc-" + std::to_string((h * kPerHost + i) % 37) + "-inst-" + std::to_string(h * 10 + i);
  }

  void host_state(int h, const char* from, const char* to, const char* reason) {
    steps_.push_back({"host.state", json::object{{"drill", "drill-bench"},
                                                 {"batch", batch_},
                                                 {"host", host(h)},
                                                 {"fault_domain", h % kFds},
                                                 {"from", from},
                                                 {"to", to},
                                                 {"reason", reason},
                                                 {"image", "host-os-2024.06.1"}}});
  }
  void instance_state(int h, int i, const char* from, const char* to) {
    steps_.push_back({"instance.state", json::object{{"drill", "drill-bench"},
                                                     {"batch", batch_},
                                                     {"host", host(h)},
                                                     {"instance", instance(h, i)},
                                                     {"service", "svc-" + std::to_string(i % 37)},
                                                     {"update_domain", i % 5},
                                                     {"from", from},
                                                     {"to", to}}});
  }
  void batch_event(const char* state, const std::vector<int>& hs) {
    json::array names;
    for (int h : hs) names.push_back(json::string(host(h)));
    steps_.push_back({"drill.batch", json::object{{"drill", "drill-bench"},
                                                  {"batch", batch_},
                                                  {"state", state},
                                                  {"hosts", names},
                                                  {"fault_domain", hs.front() % kFds},
                                                  {"done_hosts", batch_ * kBatch},
                                                  {"total_hosts", kHosts}}});
  }

  void plan_batch() {
    ++batch_;
    std::vector<int> hs;
    for (int k = 0; k < kBatch; ++k) hs.push_back((next_host_++) % kHosts);
    batch_event("started", hs);
    for (int h : hs) {
      host_state(h, "healthy", "draining", "planned maintenance");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "running", "stopping");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "stopping", "stopped");
      host_state(h, "draining", "updating", "host-os update");
      host_state(h, "updating", "healthy", "verified");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "stopped", "starting");
      for (int i = 0; i < kPerHost; ++i) instance_state(h, i, "starting", "healthy");
    }
    batch_event("finished", hs);
  }

  std::vector<std::pair<std::string, json::object>> steps_;
  int batch_ = 0;
  int next_host_ = 0;
};

// One websocket client on its own strand of the shared client io_context. A reader records
// (seq, latency) for every event; a stalled one completes the upgrade and then reads nothing
// until drain() at the end.
class Subscriber : public std::enable_shared_from_this<Subscriber> {
 public:
  struct Sample {
    uint32_t seq;
    uint32_t latency_us;
  };

  // One client thread needs no strand (its dispatch is client cost counted in the latency).
  Subscriber(net::io_context& ioc, bool strand, bool stalled, bool raw, int rcvbuf)
      : ws_(strand ? net::any_io_executor(net::make_strand(ioc)) : net::any_io_executor(ioc.get_executor())),
        timer_(ws_.get_executor()), stalled_(stalled), raw_(raw),
        rcvbuf_(rcvbuf) {
  }

  void start(tcp::endpoint ep) {
    net::dispatch(ws_.get_executor(), [self = shared_from_this(), ep] { self->do_connect(ep); });
  }

  // Stalled only: reads what the kernel buffered until the stream ends or `timeout` passes.
  void drain(std::chrono::milliseconds timeout) {
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

  void close() {
    net::post(ws_.get_executor(), [self = shared_from_this()] {
      self->timer_.cancel();
      error_code ignored;
      self->ws_.next_layer().close(ignored);
    });
  }

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
  void do_connect(tcp::endpoint ep) {
    auto& sock = ws_.next_layer();
    error_code ec;
    sock.open(tcp::v4(), ec);
    // Set before connect so the advertised window is small from the start.
    if (!ec && rcvbuf_ > 0) sock.set_option(net::socket_base::receive_buffer_size(rcvbuf_), ec);
    if (ec) return fail("socket", ec);
    // Loopback connects at once or is refused; the handshake has its own timeout.
    sock.async_connect(
        ep, [self = shared_from_this(), ep](error_code ec) {
          if (ec) return self->fail("connect", ec);
          self->ws_.set_option(
              websocket::stream_base::timeout::suggested(beast::role_type::client));
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

  void do_read() {
    ws_.async_read(buf_, [self = shared_from_this()](error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(error_code ec) {
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

  void record(std::string_view text, int64_t t) {
    int64_t sent = find_uint(text, "\"t_ns\":");
    if (sent < 0) return;
    int64_t seq = find_uint(text, "\"seq\":");
    int64_t us = std::max<int64_t>(0, (t - sent) / 1000);
    samples.push_back({static_cast<uint32_t>(seq), static_cast<uint32_t>(std::min<int64_t>(us, UINT32_MAX))});
    last_seq.store(seq, std::memory_order_release);
  }

  // The raw reader (--client raw). Beast did the handshake and reads the snapshot, which the
  // server sends before any event (no event is published until every reader is subscribed), so
  // Beast holds no bytes of ours after it; from then on the socket is read in large chunks and
  // the server's frames are split here: RFC 6455's server frames are unmasked, and ours are
  // unfragmented. One read then takes every event the server sent in one write, where Beast
  // makes one read operation (and one handler) per message: on a 2-core machine that also runs
  // the server, the client's cost per message is what the latency measures otherwise.
  void read_snapshot_then_raw() {
    ws_.async_read(buf_, [self = shared_from_this()](error_code ec, size_t) {
      if (ec) return self->fail("snapshot", ec);
      self->buf_.consume(self->buf_.size());
      self->raw_buf_.resize(64 * 1024);
      self->state = 1;
      self->raw_read();
    });
  }

  void raw_read() {
    ws_.next_layer().async_read_some(
        net::buffer(raw_buf_.data() + raw_len_, raw_buf_.size() - raw_len_),
        [self = shared_from_this()](error_code ec, size_t n) { self->on_raw(ec, n); });
  }

  void on_raw(error_code ec, size_t n) {
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

  void protocol_error(const char* what) {
    end_reason = std::string("protocol: ") + what;
    state = 2;
    error_code ignored;
    ws_.next_layer().close(ignored);
  }

  void fail(const char* what, error_code ec) {
    end_reason = std::string(what) + ": " + ec.message();
    state = -1;
  }

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

struct PhaseResult {
  uint64_t first_seq = 0, last_seq = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
  uint64_t expected = 0, received = 0;
  int readers_ended = 0;      // readers the server closed during the phase (should be 0)
  uint64_t events = 0;        // published in the phase
  uint64_t misordered = 0;    // samples whose seq was not above the reader's previous one
  double publish_s = 0;       // wall time of the publishing loop
  double cpu_cores = 0;       // process CPU / wall over the phase
  double client_cores = 0;    // ... of which the client io threads
  double cpu_s = 0;           // process CPU over the phase
  double us_per_delivery = 0; // process CPU per event received by a reader (server + client)
  double drain_ms = 0;        // after the last publish, until every reader had the last event
  double cut_off_after_s = -1;  // stalled phase: when the feed dropped the stalled subscription
  int64_t cut_off_after_events = -1;  // ... and how many events into the phase
};

double round3(double x) { return std::round(x * 1000) / 1000; }

struct Options {
  int subscribers = 1000;
  int events = 1500;
  double rate = 200;  // events/s: above the ~90/s a 500-host, 5000-instance walk publishes
  int burst = 7;      // events per publish call, as the orchestrator narrates a host
  int server_threads = 2;
  int client_threads = 1;
  std::string client = "raw";
  size_t ws_queue = http::Limits{}.max_ws_queue;
  int stall_rcvbuf = 4096;
  double stall_max_s = 120;
  bool json = false;
};

// Publishes `n` drill events at `rate`, then waits (bounded) until every live reader has the last
// one. With `stalled_dropped` it watches for the stalled subscription's drop.
PhaseResult run_phase(const Options& o, EventFeed& feed, DrillSim& drill,
                      const std::vector<std::shared_ptr<Subscriber>>& readers,
                      const std::function<bool()>& stalled_dropped) {
  PhaseResult r;
  double cpu0 = cpu_seconds(), client0 = client_cpu_seconds();
  auto start = Clock::now();
  auto period = std::chrono::duration<double>(1.0 / o.rate);
  auto stalled_attached = [&] {
    return stalled_dropped && r.cut_off_after_s < 0 &&
           std::chrono::duration<double>(Clock::now() - start).count() < o.stall_max_s;
  };
  for (int i = 0; i < o.events || stalled_attached(); i += o.burst) {
    // A burst of `burst` events in one publish call, as the orchestrator publishes what one poll
    // of an agent revealed; bursts spaced so the mean rate holds.
    std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(period * i));
    std::vector<std::pair<std::string, json::object>> burst;
    int64_t t = now_ns();
    for (int k = 0; k < o.burst; ++k) {
      auto [type, fields] = drill.next();
      json::object ev;
      ev.reserve(fields.size() + 1);
      ev["t_ns"] = t;
      for (auto& kv : fields) ev[kv.key()] = std::move(kv.value());
      burst.emplace_back(std::move(type), std::move(ev));
    }
    uint64_t seq = feed.publish(std::move(burst));
    if (i == 0) r.first_seq = seq - o.burst + 1;
    r.last_seq = seq;
    r.events = static_cast<uint64_t>(i + o.burst);
    if (stalled_dropped && r.cut_off_after_s < 0 && stalled_dropped()) {
      r.cut_off_after_s = std::chrono::duration<double>(Clock::now() - start).count();
      r.cut_off_after_events = i + o.burst;
    }
  }
  auto published = Clock::now();
  r.publish_s = std::chrono::duration<double>(published - start).count();
  auto deadline = published + 5s;
  for (;;) {
    bool all = std::all_of(readers.begin(), readers.end(), [&](const auto& s) {
      return s->state != 1 || s->last_seq.load(std::memory_order_acquire) >=
                                  static_cast<int64_t>(r.last_seq);
    });
    if (all || Clock::now() > deadline) break;
    std::this_thread::sleep_for(1ms);
  }
  auto end = Clock::now();
  r.drain_ms = std::chrono::duration<double, std::milli>(end - published).count();
  double wall = std::chrono::duration<double>(end - start).count();
  r.cpu_s = cpu_seconds() - cpu0;
  r.cpu_cores = r.cpu_s / wall;
  r.client_cores = (client_cpu_seconds() - client0) / wall;
  if (stalled_dropped && r.cut_off_after_s < 0 && stalled_dropped()) {
    r.cut_off_after_s = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return r;
}

// Latency and loss of the readers over the phase's seq range (after the client threads ended).
void score(PhaseResult& r, const std::vector<std::shared_ptr<Subscriber>>& readers) {
  std::vector<uint32_t> lat;
  lat.reserve(readers.size() * (r.last_seq - r.first_seq + 1));
  for (const auto& s : readers) {
    int64_t prev = -1;
    for (const auto& x : s->samples) {
      if (x.seq < r.first_seq || x.seq > r.last_seq) continue;
      if (static_cast<int64_t>(x.seq) <= prev) {
        ++r.misordered;
        continue;
      }
      prev = x.seq;
      lat.push_back(x.latency_us);
    }
  }
  r.expected = readers.size() * (r.last_seq - r.first_seq + 1);
  r.received = lat.size();
  if (r.received > 0) r.us_per_delivery = r.cpu_s * 1e6 / static_cast<double>(r.received);
  if (lat.empty()) return;
  auto pct = [&](double p) {
    size_t k = std::min(lat.size() - 1, static_cast<size_t>(p * (lat.size() - 1) + 0.5));
    std::nth_element(lat.begin(), lat.begin() + k, lat.end());
    return lat[k] / 1000.0;
  };
  r.p50_ms = pct(0.50);
  r.p99_ms = pct(0.99);
  r.max_ms = *std::max_element(lat.begin(), lat.end()) / 1000.0;
}

json::object figures(const PhaseResult& r) {
  return json::object{{"p50_latency_ms", round3(r.p50_ms)},
                      {"p99_latency_ms", round3(r.p99_ms)},
                      {"max_latency_ms", round3(r.max_ms)},
                      {"lost", r.expected - r.received},
                      {"misordered", r.misordered},
                      {"events", r.events},
                      {"readers_closed", r.readers_ended},
                      {"cpu_cores", round3(r.cpu_cores)},
                      {"client_cpu_cores", round3(r.client_cores)},
                      {"cpu_us_per_delivery", round3(r.us_per_delivery)}};
}

void print_phase(const char* name, const PhaseResult& r) {
  std::printf("%s: p50 %.2f ms, p99 %.2f ms, max %.2f ms; received %llu of %llu (lost %llu, "
              "misordered %llu); readers closed %d\n",
              name, r.p50_ms, r.p99_ms, r.max_ms, static_cast<unsigned long long>(r.received),
              static_cast<unsigned long long>(r.expected),
              static_cast<unsigned long long>(r.expected - r.received),
              static_cast<unsigned long long>(r.misordered), r.readers_ended);
  std::printf("  %llu events published in %.2f s, readers caught up %.1f ms later; process CPU "
              "%.2f cores (client io threads %.2f), %.1f us per delivery\n",
              static_cast<unsigned long long>(r.events), r.publish_s, r.drain_ms, r.cpu_cores,
              r.client_cores, r.us_per_delivery);
}

// The command line into `o`; false (and `code` set) when the program ends here (--help, an error).
bool parse_options(int argc, char** argv, Options& o, int& code) {
  CLI::App app{"Websocket feed latency: N loopback subscribers while a simulated drill publishes, "
               "without and then with one subscriber that never reads"};
  app.add_option("-s,--subscribers", o.subscribers, "Reading subscribers")
      ->check(CLI::Range(1, 5000));
  app.add_option("-n,--events", o.events, "Events published in each of the two phases")
      ->check(CLI::Range(10, 1000000));
  app.add_option("-r,--rate", o.rate, "Events per second")->check(CLI::Range(1.0, 100000.0));
  app.add_option("-b,--burst", o.burst,
                 "Events per publish call, the calls spaced so the mean rate holds: 1 is an even "
                 "stream; 7 is how the orchestrator narrates a host of 6 instances (one poll of "
                 "its agent: the host's state and its instances')")
      ->check(CLI::Range(1, 10000));
  app.add_option("--server-threads", o.server_threads, "Server io threads")
      ->check(CLI::Range(1, 16));
  app.add_option("--client", o.client,
                 "How the readers read after the handshake and the snapshot: 'raw' splits the "
                 "server's frames out of large socket reads; 'beast' reads one message per "
                 "websocket::stream::async_read")
      ->check(CLI::IsMember({"raw", "beast"}));
  app.add_option("--client-threads", o.client_threads, "Client io threads")
      ->check(CLI::Range(1, 16));
  app.add_option("--ws-queue", o.ws_queue, "Server Limits::max_ws_queue (events behind before "
                                           "a subscriber is cut off)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--stall-rcvbuf", o.stall_rcvbuf, "SO_RCVBUF of the stalled subscriber")
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--stall-max-s", o.stall_max_s,
                 "Phase (b) goes on past --events until the stalled subscriber is cut off, at most "
                 "this long")
      ->check(CLI::Range(0.0, 3600.0));
  app.add_flag("--json", o.json, "Print one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    code = app.exit(e);
    return false;
  }
  return true;
}

// The client side: one io_context run by `threads` threads (their ids recorded for the CPU
// figures), kept alive until stop().
class ClientIo {
 public:
  explicit ClientIo(int threads) : work_(net::make_work_guard(ioc_)) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "bench-client");
        {
          std::lock_guard lock(g_tids_mu);
          g_client_tids.push_back(static_cast<pid_t>(::gettid()));
        }
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
    std::printf("%d subscribers connected in %.2f s; server io threads %d, client io threads %d; "
                "%d events per phase at %.0f/s in bursts of %d; max_ws_queue %zu\n",
                o.subscribers, connect_s, o.server_threads, o.client_threads, o.events, o.rate,
                o.burst, o.ws_queue);
    std::fflush(stdout);
  }
  return readers;
}

// The subscriber that completes the upgrade and never reads (phase b), connected.
std::shared_ptr<Subscriber> connect_stalled(const Options& o, net::io_context& cioc,
                                            const tcp::endpoint& ep) {
  auto stalled = std::make_shared<Subscriber>(cioc, o.client_threads > 1, true, false, o.stall_rcvbuf);
  stalled->start(ep);
  for (auto deadline = Clock::now() + 10s; stalled->state == 0;) {
    if (Clock::now() > deadline) die("the stalled subscriber did not connect");
    std::this_thread::sleep_for(1ms);
  }
  if (stalled->state != 1) die("the stalled subscriber failed: " + stalled->end_reason);
  return stalled;
}

// FEED_BENCH_TIMELINE=1: every 10th event, min/median/max latency over the readers, on stderr.
void print_timeline(const PhaseResult& a, const PhaseResult& b,
                    const std::vector<std::shared_ptr<Subscriber>>& readers) {
  std::vector<std::vector<uint32_t>> by(b.last_seq + 1);
  for (auto& s : readers) {
    for (auto& x : s->samples) {
      if (x.seq <= b.last_seq) by[x.seq].push_back(x.latency_us);
    }
  }
  for (uint64_t q = a.first_seq; q <= b.last_seq; q += 10) {
    auto& v = by[q];
    if (v.empty()) continue;
    std::sort(v.begin(), v.end());
    std::fprintf(stderr, "seq %llu min %.1f med %.1f max %.1f ms\n",
                 static_cast<unsigned long long>(q), v.front() / 1e3, v[v.size() / 2] / 1e3,
                 v.back() / 1e3);
  }
}

// What the two phases measured, ready to print.
struct Outcome {
  PhaseResult a, b;
  bool cut_off = false;
  std::string stalled_end;
  size_t stalled_buffered = 0;
  std::map<std::string, int> closed_reasons;  // why readers ended before the end
  bool target_met = false;
};

void print_json(const Options& o, const Outcome& r) {
  json::object stalled_json = figures(r.b);
  stalled_json["stalled_cut_off"] = r.cut_off;
  stalled_json["cut_off_after_s"] = round3(r.b.cut_off_after_s);
  stalled_json["cut_off_after_events"] = r.b.cut_off_after_events;
  stalled_json["stalled_end"] = r.stalled_end;
  stalled_json["stalled_buffered_messages"] = r.stalled_buffered;
  json::object out{{"subscribers", o.subscribers}};
  for (auto& kv : figures(r.a)) out[kv.key()] = kv.value();
  out["stalled"] = std::move(stalled_json);
  out["target_p99_ms"] = kTargetP99Ms;
  out["rate"] = o.rate;
  out["burst"] = o.burst;
  out["client"] = o.client;
  out["server_threads"] = o.server_threads;
  out["client_threads"] = o.client_threads;
  json::object reasons;
  for (const auto& [why, n] : r.closed_reasons) reasons[why] = n;
  out["closed_reasons"] = std::move(reasons);
  out["target_met"] = r.target_met;
  std::cout << json::serialize(out) << "\n";
}

void print_text(const Outcome& r) {
  print_phase("(a) all reading", r.a);
  print_phase("(b) one stalled", r.b);
  std::printf("  stalled subscriber: %s", r.cut_off ? "cut off" : "NOT cut off");
  if (r.b.cut_off_after_s >= 0) {
    std::printf(" by the feed %.2f s (%lld events) into the phase", r.b.cut_off_after_s,
                static_cast<long long>(r.b.cut_off_after_events));
  }
  std::printf("; its stream ended with '%s' after %zu buffered messages\n", r.stalled_end.c_str(),
              r.stalled_buffered);
  for (const auto& [why, n] : r.closed_reasons) {
    std::printf("  %d readers ended early: %s\n", n, why.c_str());
  }
  std::printf("target p99 <= %.0f ms with and without the stalled one, no loss: %s\n",
              kTargetP99Ms, r.target_met ? "met" : "NOT met");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (int code = 0; !parse_options(argc, argv, o, code)) return code;

  setup_logging({"error", false});  // the expected "slow consumer" warning is not news here

  auto feed = std::make_shared<EventFeed>(&DrillSim::snapshot, 1000);
  http::Limits limits;
  limits.max_connections = static_cast<size_t>(o.subscribers) + 16;
  limits.max_ws_queue = o.ws_queue;
  http::Server server("feed-bench", http::Tokens{"", kToken}, limits);
  server.events(kPath, feed);
  auto port = server.start("127.0.0.1", 0, o.server_threads);
  if (!port.ok()) die(port.error().describe());
  tcp::endpoint ep(net::ip::make_address("127.0.0.1"), *port);

  ClientIo client(o.client_threads);
  std::vector<std::shared_ptr<Subscriber>> readers = connect_readers(o, client.ioc(), ep);

  // Phase (a): every subscriber reads.
  Outcome r;
  DrillSim drill;
  auto count_ended = [&] {
    return static_cast<int>(
        std::count_if(readers.begin(), readers.end(), [](auto& s) { return s->state != 1; }));
  };
  r.a = run_phase(o, *feed, drill, readers, nullptr);
  r.a.readers_ended = count_ended();

  // Phase (b): the same plus one stalled subscriber.
  auto stalled = connect_stalled(o, client.ioc(), ep);
  // The stalled one is gone when the feed holds fewer subscriptions than the readers still
  // reading plus it: cut off for its full queue ("slow consumer") or by the write deadline
  // (Limits::write_timeout), whichever comes first. A reader the feed dropped ends soon after,
  // when it reads the close frame; until then this errs towards "not yet".
  auto stalled_dropped = [&] {
    int64_t live_readers = static_cast<int64_t>(readers.size()) - count_ended();
    return static_cast<int64_t>(feed->stats().subscribers) < live_readers + 1;
  };
  r.b = run_phase(o, *feed, drill, readers, stalled_dropped);
  r.b.readers_ended = count_ended() - r.a.readers_ended;

  // Whatever the server did to the stalled socket, reading it now shows how its stream ended.
  stalled->drain(3s);
  for (auto deadline = Clock::now() + 5s; stalled->state == 1 && Clock::now() < deadline;) {
    std::this_thread::sleep_for(5ms);
  }
  // Cut off: the server ended its stream (a close frame, or the socket closed at the write
  // deadline) before we stopped it, which drain() tells from its own timeout.
  bool server_ended_it = stalled->state == 2 && !stalled->timed_out;

  server.stop();
  for (auto& s : readers) s->close();
  stalled->close();
  client.stop();
  r.cut_off = server_ended_it;
  // The live estimate can fire on a reader the feed dropped before its close frame arrived.
  if (!r.cut_off) r.b.cut_off_after_s = -1, r.b.cut_off_after_events = -1;
  r.stalled_end = stalled->end_reason;
  r.stalled_buffered = stalled->drained;

  score(r.a, readers);
  score(r.b, readers);
  // Why readers ended before the end (the client threads are joined: end_reason is safe to read).
  for (const auto& s : readers) {
    if (s->state != 1) ++r.closed_reasons[s->end_reason];
  }
  bool lossless = r.a.expected == r.a.received && r.b.expected == r.b.received;
  // The target: p99 <= 20 ms for the readers, with and without the stalled one, and no
  // loss. Whether the server cut the stalled one off is reported beside it.
  r.target_met = r.a.p99_ms <= kTargetP99Ms && r.b.p99_ms <= kTargetP99Ms && lossless;
  if (std::getenv("FEED_BENCH_TIMELINE")) print_timeline(r.a, r.b, readers);

  if (o.json) {
    print_json(o, r);
  } else {
    print_text(r);
  }
  return 0;
}
