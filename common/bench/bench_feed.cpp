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
//
// The code: feed_client (the subscribers and their io threads), feed_phase (one phase: publish,
// wait, score), feed_common (the drill simulator and small shared pieces); this file the command
// line, the two phases in order and the output.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/http_server.hpp"
#include "fabriclab/common/logging.hpp"
#include "feed_client.hpp"
#include "feed_phase.hpp"

using namespace fabriclab;
using namespace fabriclab::bench_feed;

namespace {

constexpr double kTargetP99Ms = 20;

// The command line into `o`; false (and `code` set) when the program ends here (--help, an error).
bool parse_options(int argc, char** argv, Options& o, int& code) {
  CLI::App app{
      "Websocket feed latency: N loopback subscribers while a simulated drill publishes, "
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
  app.add_option("--ws-queue", o.ws_queue,
                 "Server Limits::max_ws_queue (events behind before "
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
  out["closed_reasons"] = json::value_from(r.closed_reasons);
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
  std::printf("target p99 <= %.0f ms with and without the stalled one, no loss: %s\n", kTargetP99Ms,
              r.target_met ? "met" : "NOT met");
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