// The client traffic generator (traffic.hpp).
//
// One io thread runs everything: the per-target schedule timers, every request's connect, write
// and read, and the bookkeeping. The only state shared with other threads is `State` (records
// and counters), under one mutex; callers' records()/stats_json() copy out of it.
//
// Namespace: the io thread enters `options.netns` with setns(2) once, first thing, and stays
// there; every socket it opens (socket(2) runs on this thread, inside async_connect's initiation)
// therefore lives in that namespace. start() waits for the thread's verdict, so a namespace that
// cannot be entered is start()'s error, not a stream of failed requests. Addresses are dotted
// IPv4, parsed up front: nothing is resolved (Asio's resolver would run on a thread of its own,
// outside the namespace).
//
// Schedule (open loop): target i sends its k-th request at t0 + k / rps, whatever happened to
// the earlier ones. When the thread lags (a loaded machine), a timer firing late sends every
// request whose time has passed, at once, so the rate over the run is kept; a request that is
// already more than request_timeout late is not sent but recorded as failed "client lagged" (it
// would have counted as a timeout anyway, and a burst after a long stall would load the service
// in a way no client did). `sent_ms` is the scheduled time; `latency_ms` runs from the moment the
// request was actually started.
//
// Records keep send order: a slot is reserved when a request starts and filled when it ends;
// records() returns finished slots only, so a request in flight never reads as failed.
//
// Bounds: at most max_in_flight requests at once (more fail at once, "client overloaded"); at
// most max_records slots per service (later requests only count); each request has one deadline
// over connect + write + read (beast::tcp_stream's expiry covers every operation started after
// it is set); a response header of 8 KiB and a body of 1 MiB at most. stop() therefore returns
// within about request_timeout.

#include "fabriclab/orchestrator/traffic.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address_v4.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::orchestrator {
namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

auto log() { return logger("traffic"); }

constexpr size_t kMaxBody = 1 << 20;
constexpr size_t kMaxHeader = 8 * 1024;
constexpr size_t kMaxServedBy = 128;
constexpr size_t kMaxError = 200;

int64_t unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

Error bad_target(size_t i, const TrafficTarget& t, std::string_view why) {
  std::string name =
      t.service.empty() ? fmt::format("#{}", i) : "'" + t.service.substr(0, 64) + "'";
  return make_error(Condition::invalid_argument, fmt::format("traffic target {}: {}", name, why));
}

bool printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) > 0x20 && c != 0x7f; });
}

Status validate(const std::vector<TrafficTarget>& targets, const TrafficOptions& o) {
  std::set<std::string> seen;
  for (size_t i = 0; i < targets.size(); ++i) {
    const TrafficTarget& t = targets[i];
    if (t.service.empty() || t.service.size() > 128 || !printable(t.service))
      return bad_target(i, t, "field 'service' must be 1..128 printable characters");
    if (!seen.insert(t.service).second) return bad_target(i, t, "field 'service' is listed twice");
    error_code ec;
    net::ip::make_address_v4(t.address, ec);
    if (ec || t.address.size() > 15)
      return bad_target(i, t,
                        fmt::format("field 'address' must be a dotted IPv4 address, got '{}'",
                                    t.address.substr(0, 64)));
    if (t.port == 0) return bad_target(i, t, "field 'port' must be 1..65535");
    if (t.path.empty() || t.path.front() != '/' || t.path.size() > 1024 || !printable(t.path))
      return bad_target(
          i, t, "field 'path' must start with '/' and have no spaces or controls (at most 1024)");
    if (!std::isfinite(t.rps) || t.rps < 0.1 || t.rps > 1000)
      return bad_target(i, t, fmt::format("field 'rps' must be in 0.1..1000, got {}", t.rps));
  }
  if (o.request_timeout < std::chrono::milliseconds(1) ||
      o.request_timeout > std::chrono::minutes(1))
    return make_error(Condition::invalid_argument,
                      "traffic option 'request_timeout' must be 1 ms..60 s");
  if (o.max_in_flight < 1)
    return make_error(Condition::invalid_argument,
                      "traffic option 'max_in_flight' must be at least 1");
  if (!o.netns.empty()) FL_RETURN_IF_ERROR(http::netns_path(o.netns));
  return {};
}

// One request's slot while it is in flight or after.
struct Slot {
  RequestRecord rec;
  bool done = false;
};

// Everything other threads read, per target.
struct Counters {
  std::vector<Slot> slots;    // send order, at most max_records
  size_t finished_slots = 0;  // slots with done (so records() can reserve)
  int64_t completed = 0, failed = 0, in_flight = 0;
  std::string last_error;
  std::deque<int64_t> recent_sends;  // unix ms of sends in the last second (for "rps")
};

}  // namespace

struct TrafficGenerator::Impl {
  struct Target {
    TrafficTarget spec;
    tcp::endpoint endpoint;
    std::string host_header;
    Clock::duration interval{};
    int64_t next = 0;  // index of the next request
    std::unique_ptr<net::steady_timer> timer;
  };

  // One request on its own connection.
  struct Call : std::enable_shared_from_this<Call> {
    Impl* impl;
    size_t target;
    int64_t slot;  // -1: not recorded
    int64_t sent_ms;
    Clock::time_point started;
    beast::tcp_stream stream;
    bhttp::request<bhttp::empty_body> req;
    beast::flat_buffer buffer;
    bhttp::response_parser<bhttp::string_body> parser;

    Call(Impl* i, size_t t, int64_t s, int64_t sent)
        : impl(i), target(t), slot(s), sent_ms(sent), started(Clock::now()), stream(i->ioc) {
      parser.header_limit(kMaxHeader);
      parser.body_limit(kMaxBody);
    }

    void run() {
      const Target& t = impl->targets[target];
      req.method(bhttp::verb::get);
      req.target(t.spec.path);
      req.version(11);
      req.set(bhttp::field::host, t.host_header);
      req.set(bhttp::field::connection, "close");
      req.set(bhttp::field::user_agent, "fabriclab-traffic");
      error_code ec;
      stream.socket().open(t.endpoint.protocol(), ec);  // on the io thread: inside the namespace
      if (ec) return finish("socket", ec);
      stream.expires_after(impl->options.request_timeout);
      stream.async_connect(t.endpoint, [self = shared_from_this()](error_code ec) {
        if (ec) return self->finish("connect", ec);
        bhttp::async_write(self->stream, self->req, [self](error_code ec, size_t) {
          if (ec) return self->finish("write", ec);
          bhttp::async_read(self->stream, self->buffer, self->parser,
                            [self](error_code ec, size_t) { self->finish("read", ec); });
        });
      });
    }

    void finish(std::string_view phase, error_code ec) {
      RequestRecord r;
      r.sent_ms = sent_ms;
      r.latency_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
      if (ec == beast::error::timeout) {
        r.error = "timeout";
      } else if (ec) {
        r.error = fmt::format("{}: {}", phase, ec.message()).substr(0, kMaxError);
      } else {
        const auto& res = parser.get();
        r.status = static_cast<int>(res.result_int());
        auto it = res.find("X-Served-By");
        if (it != res.end()) r.served_by = std::string(it->value().substr(0, kMaxServedBy));
      }
      error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream.close();
      impl->complete(target, slot, std::move(r), true);
    }
  };

  TrafficOptions options;
  net::io_context ioc{1};  // before `targets`: their timers must go first
  std::vector<Target> targets;
  std::thread thread;
  Clock::time_point t0;
  int64_t wall0_ms = 0;
  bool stopping = false;  // io thread only
  int64_t in_flight = 0;  // io thread only
  bool joined = false;    // stop() callers only (under stop_mu)
  std::mutex stop_mu;

  mutable std::mutex mu;
  std::vector<Counters> counters;  // by target, under mu

  Clock::time_point due(const Target& t, int64_t k) const {
    return t0 + std::chrono::duration_cast<Clock::duration>(
                    std::chrono::duration<double>(static_cast<double>(k) / t.spec.rps));
  }

  int64_t due_unix_ms(const Target& t, int64_t k) const {
    return wall0_ms + std::chrono::duration_cast<std::chrono::milliseconds>(due(t, k) - t0).count();
  }

  // A request begins: reserve its slot (or not, past max_records). Io thread.
  int64_t begin(size_t target, int64_t sent_ms, int64_t now_ms) {
    std::lock_guard lock(mu);
    Counters& c = counters[target];
    c.in_flight++;
    c.recent_sends.push_back(now_ms);
    while (!c.recent_sends.empty() && c.recent_sends.front() <= now_ms - 1000)
      c.recent_sends.pop_front();
    if (c.slots.size() >= options.max_records) return -1;
    c.slots.push_back(Slot{RequestRecord{sent_ms, 0, "", -1, ""}, false});
    return static_cast<int64_t>(c.slots.size()) - 1;
  }

  // A request ended (or failed before it was sent). Io thread.
  void complete(size_t target, int64_t slot, RequestRecord r, bool was_in_flight) {
    if (was_in_flight) in_flight--;
    {
      std::lock_guard lock(mu);
      Counters& c = counters[target];
      c.in_flight--;
      c.completed++;
      if (r.failed()) {
        c.failed++;
        c.last_error = r.error.empty() ? fmt::format("HTTP {}", r.status) : r.error;
      }
      if (slot >= 0) {
        c.slots[static_cast<size_t>(slot)] = Slot{std::move(r), true};
        c.finished_slots++;
      }
    }
  }

  // Fails a request without sending it (lagged, overloaded).
  void fail_unsent(size_t target, int64_t sent_ms, int64_t now_ms, std::string why) {
    int64_t slot = begin(target, sent_ms, now_ms);
    RequestRecord r;
    r.sent_ms = sent_ms;
    r.error = std::move(why);
    r.latency_ms = 0;
    complete(target, slot, std::move(r), false);
  }

  void schedule(size_t i) {
    Target& t = targets[i];
    t.timer->expires_at(due(t, t.next));
    t.timer->async_wait([this, i](error_code ec) {
      if (ec || stopping) return;
      on_due(i);
    });
  }

  // Sends every request of target i whose time has come. Io thread.
  void on_due(size_t i) {
    Target& t = targets[i];
    const Clock::time_point now = Clock::now();
    const int64_t now_ms = unix_ms(std::chrono::system_clock::now());
    for (; due(t, t.next) <= now; ++t.next) {
      const int64_t sent_ms = due_unix_ms(t, t.next);
      if (now - due(t, t.next) > options.request_timeout) {
        fail_unsent(i, sent_ms, now_ms, "client lagged");
      } else if (static_cast<size_t>(in_flight) >= options.max_in_flight) {
        fail_unsent(i, sent_ms, now_ms, "client overloaded");
      } else {
        int64_t slot = begin(i, sent_ms, now_ms);
        in_flight++;
        std::make_shared<Call>(this, i, slot, sent_ms)->run();
      }
    }
    schedule(i);
  }

  // The io thread: enter the namespace, report, run until stopped and drained.
  void main(std::promise<Status> ready) {
    pthread_setname_np(pthread_self(), "flab-traffic");
    if (!options.netns.empty()) {
      Status s = enter_netns(options.netns);
      if (!s.ok()) {
        ready.set_value(s);
        return;
      }
    }
    t0 = Clock::now();
    wall0_ms = unix_ms(std::chrono::system_clock::now());
    for (size_t i = 0; i < targets.size(); ++i) {
      targets[i].timer = std::make_unique<net::steady_timer>(ioc);
      schedule(i);
    }
    ready.set_value(Status{});
    try {
      ioc.run();
    } catch (const std::exception& e) {
      log()->error("traffic generator stopped by an exception: {}", e.what());
    }
  }

  static Status enter_netns(const std::string& netns) {
    FL_ASSIGN_OR_RETURN(std::string path, http::netns_path(netns));
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      Condition c = err == ENOENT                   ? Condition::not_found
                    : err == EPERM || err == EACCES ? Condition::permission_denied
                                                    : Condition::transient;
      return make_error(
          c, fmt::format("network namespace {}: cannot open: {}", path, std::strerror(err)));
    }
    int rc = ::setns(fd, CLONE_NEWNET);
    int err = errno;
    ::close(fd);
    if (rc != 0) {
      Condition c = err == EPERM ? Condition::permission_denied : Condition::transient;
      return make_error(
          c, fmt::format("network namespace {}: cannot enter: {}", path, std::strerror(err)));
    }
    return {};
  }
};

Result<std::unique_ptr<TrafficGenerator>> TrafficGenerator::start(
    std::vector<TrafficTarget> targets, TrafficOptions options) {
  FL_RETURN_IF_ERROR(validate(targets, options));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->counters.resize(targets.size());
  for (auto& spec : targets) {
    Impl::Target t;
    t.endpoint = tcp::endpoint(net::ip::make_address_v4(spec.address), spec.port);
    t.host_header = spec.port == 80 ? spec.address : fmt::format("{}:{}", spec.address, spec.port);
    t.spec = std::move(spec);
    impl->targets.push_back(std::move(t));
  }
  std::promise<Status> ready;
  auto verdict = ready.get_future();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw, p = std::move(ready)]() mutable { raw->main(std::move(p)); });
  Status s = verdict.get();
  if (!s.ok()) {
    impl->thread.join();
    return s.error();
  }
  log()->info("client traffic: {} target(s){}", impl->targets.size(),
              options.netns.empty() ? "" : " from network namespace " + options.netns);
  return std::unique_ptr<TrafficGenerator>(new TrafficGenerator(std::move(impl)));
}

TrafficGenerator::TrafficGenerator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TrafficGenerator::~TrafficGenerator() { stop(); }

void TrafficGenerator::stop() {
  std::lock_guard lock(impl_->stop_mu);
  if (impl_->joined) return;
  Impl* impl = impl_.get();
  // Cancel the schedule; requests in flight end by their own deadline, then run() runs out of
  // work and returns.
  net::post(impl->ioc, [impl] {
    impl->stopping = true;
    for (auto& t : impl->targets) t.timer->cancel();
  });
  if (impl->thread.joinable()) impl->thread.join();
  impl_->joined = true;
}

std::map<std::string, std::vector<RequestRecord>> TrafficGenerator::records() const {
  std::map<std::string, std::vector<RequestRecord>> out;
  std::lock_guard lock(impl_->mu);
  for (size_t i = 0; i < impl_->targets.size(); ++i) {
    const Counters& c = impl_->counters[i];
    auto& v = out[impl_->targets[i].spec.service];
    v.reserve(c.finished_slots);
    for (const Slot& s : c.slots)
      if (s.done) v.push_back(s.rec);
  }
  return out;
}

json::object TrafficGenerator::stats_json() const {
  json::object services;
  const int64_t now_ms = unix_ms(std::chrono::system_clock::now());
  std::lock_guard lock(impl_->mu);
  for (size_t i = 0; i < impl_->targets.size(); ++i) {
    const Counters& c = impl_->counters[i];
    int64_t recent = std::count_if(c.recent_sends.begin(), c.recent_sends.end(),
                                   [&](int64_t t) { return t > now_ms - 1000; });
    services[impl_->targets[i].spec.service] = json::object{
        {"requests", c.completed}, {"failed", c.failed},         {"in_flight", c.in_flight},
        {"rps", recent},           {"last_error", c.last_error},
    };
  }
  return json::object{{"services", std::move(services)}};
}

}  // namespace fabriclab::orchestrator
