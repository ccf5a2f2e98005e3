#include "fabriclab/common/http_server.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <stdexcept>
#include <thread>

#include "fabriclab/common/http_client.hpp"
#include "status_matchers.hpp"
#include "wait_until.hpp"

namespace fabriclab::http {
namespace {

namespace json = boost::json;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

constexpr const char* kControl = "control-secret";
constexpr const char* kRead = "read-secret";
constexpr const char* kHost = "127.0.0.1";

json::object as_object(const std::string& text) { return json::parse(text).as_object(); }

std::string error_code_of(const ClientResponse& r) {
  return std::string(as_object(r.body).at("error").at("code").as_string());
}

int64_t seq_of(const std::string& text) { return as_object(text).at("seq").as_int64(); }

// A blocking TCP connection for what the client will not send: malformed or oversize requests,
// a raw websocket upgrade that then never reads.
class RawConn {
 public:
  explicit RawConn(uint16_t port, int rcvbuf = 0) : socket_(ioc_) {
    socket_.open(tcp::v4());
    if (rcvbuf > 0) socket_.set_option(net::socket_base::receive_buffer_size(rcvbuf));
    timeval tv{5, 0};  // reads give up after 5 s rather than hang the test
    setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    socket_.connect(tcp::endpoint(net::ip::make_address(kHost), port));
  }
  void send(std::string_view bytes) {
    net::write(socket_, net::buffer(bytes.data(), bytes.size()));
  }
  // Everything until the server closes (or 5 s of silence).
  std::string read_all() {
    std::string out;
    char buf[4096];
    boost::system::error_code ec;
    while (true) {
      size_t n = socket_.read_some(net::buffer(buf), ec);
      if (ec) break;
      out.append(buf, n);
    }
    return out;
  }
  std::string read_until_blank_line() {
    std::string out;
    char c;
    while (out.find("\r\n\r\n") == std::string::npos) {
      boost::system::error_code ec;
      if (socket_.read_some(net::buffer(&c, 1), ec) != 1) break;
      out += c;
    }
    return out;
  }

 private:
  net::io_context ioc_;
  tcp::socket socket_;
};

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override { limits_.max_body = 1024; }

  void start() {
    server_ = std::make_unique<Server>("http-test", Tokens{kControl, kRead}, limits_);
    server_->route("GET", "/healthz", Access::open, [](const Request&) {
      return json_response(200, json::object{{"ok", true}});
    });
    server_->route("GET", "/v1/instances/{name}", Access::read, [](const Request& r) {
      return json_response(200, json::object{{"name", r.params.at("name")}, {"role", r.role}});
    });
    server_->route("POST", "/v1/instances/{name}/restart", Access::control, [](const Request& r) {
      return json_response(202, json::object{{"restarting", r.params.at("name")}});
    });
    server_->route("POST", "/v1/echo", Access::control, [this](const Request& r) {
      auto body = parse_body(r, limits_);
      if (!body.ok()) return error_response(body.error());
      return json_response(200, *body);
    });
    server_->route("GET", "/v1/boom", Access::read,
                   [](const Request&) -> Response { throw std::runtime_error("kaboom"); });
    server_->route("GET", "/v1/block", Access::read, [this](const Request&) {
      entered_.set_value();
      release_.get_future().wait();
      return json_response(200, json::object{});
    });
    server_->events("/v1/events", feed_);
    auto port = server_->start(kHost, 0);
    ASSERT_OK(port);
    port_ = *port;
  }

  Result<ClientResponse> get(std::string_view target, std::string_view token = {}) {
    return request(kHost, port_, "GET", target, {}, token, 5s);
  }

  // The answer's status; -1, after a failure naming the error, when there was no answer.
  static int status_of(const Result<ClientResponse>& r) {
    if (r.ok()) return r->status;
    ADD_FAILURE() << "no answer: " << r.error().describe();
    return -1;
  }

  Result<std::unique_ptr<WsClient>> ws(std::string_view target, std::string_view token = kRead) {
    return WsClient::connect(kHost, port_, target, token, 5s);
  }

  // A client of /v1/events that has read its snapshot; null, after a failure, when it could not.
  std::unique_ptr<WsClient> subscribed() {
    auto c = ws("/v1/events");
    EXPECT_OK(c);
    if (!c.ok()) return nullptr;
    auto snapshot = (*c)->read(5s);
    EXPECT_OK(snapshot);
    return snapshot.ok() ? std::move(*c) : nullptr;
  }

  Limits limits_;
  int64_t state_ = 7;
  std::shared_ptr<EventFeed> feed_ = std::make_shared<EventFeed>(
      [this] {
        return json::object{{"state", state_}};
      },
      50);
  std::unique_ptr<Server> server_;
  uint16_t port_ = 0;
  std::promise<void> entered_, release_;
};

TEST_F(HttpServerTest, RoutesWithParamsAndReportsUnknownPathsAndMethods) {
  start();
  auto r = get("/v1/instances/web%2D0", kRead);
  ASSERT_OK(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->headers["content-type"], "application/json");
  EXPECT_EQ(as_object(r->body).at("name").as_string(), "web-0");
  EXPECT_EQ(as_object(r->body).at("role").as_string(), "read");

  auto missing = get("/v1/nothing", kControl);
  ASSERT_OK(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(error_code_of(*missing), "not_found");
  EXPECT_NE(as_object(missing->body).at("error").at("message").as_string().find("/v1/nothing"),
            json::string::npos);

  auto wrong_method = request(kHost, port_, "DELETE", "/v1/instances/a", {}, kControl, 5s);
  ASSERT_OK(wrong_method);
  EXPECT_EQ(wrong_method->status, 405);
  EXPECT_EQ(wrong_method->headers["allow"], "GET");
  EXPECT_EQ(error_code_of(*wrong_method), "method_not_allowed");

  // A param segment does not match an empty segment.
  EXPECT_EQ(status_of(get("/v1/instances/", kRead)), 404);
}

TEST_F(HttpServerTest, TokensGateRoutesByAccessLevel) {
  start();
  EXPECT_EQ(status_of(get("/healthz")), 200);

  auto none = get("/v1/instances/a");
  ASSERT_OK(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(none->headers["www-authenticate"], "Bearer");
  EXPECT_EQ(error_code_of(*none), "unauthenticated");

  EXPECT_EQ(status_of(get("/v1/instances/a", "read-secreT")), 401);

  EXPECT_EQ(status_of(get("/v1/instances/a", "read")), 401);

  auto read_on_control = request(kHost, port_, "POST", "/v1/instances/a/restart", {}, kRead, 5s);
  ASSERT_OK(read_on_control);
  EXPECT_EQ(read_on_control->status, 403);
  EXPECT_EQ(error_code_of(*read_on_control), "permission_denied");

  auto control = request(kHost, port_, "POST", "/v1/instances/a/restart", {}, kControl, 5s);
  ASSERT_OK(control);
  EXPECT_EQ(control->status, 202);

  auto control_reads = get("/v1/instances/a", kControl);
  ASSERT_OK(control_reads);
  EXPECT_EQ(control_reads->status, 200);
  EXPECT_EQ(as_object(control_reads->body).at("role").as_string(), "control");
}

TEST_F(HttpServerTest, DisabledRoleTokenIsRefused) {
  server_ = std::make_unique<Server>("http-test", Tokens{kControl, ""}, limits_);
  server_->route("GET", "/x", Access::read, [](const Request&) { return Response{}; });
  auto port = server_->start(kHost, 0);
  ASSERT_OK(port);
  EXPECT_EQ(status_of(request(kHost, *port, "GET", "/x", {}, "", 5s)), 401);
}

TEST_F(HttpServerTest, BodyOverLimitIs413AndBadJsonIs400) {
  start();
  auto big = request(kHost, port_, "POST", "/v1/echo", std::string(4096, 'x'), kControl, 5s);
  ASSERT_OK(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_EQ(error_code_of(*big), "body_too_large");

  auto bad = request(kHost, port_, "POST", "/v1/echo", "{not json", kControl, 5s);
  ASSERT_OK(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(error_code_of(*bad), "invalid_argument");

  auto good = request(kHost, port_, "POST", "/v1/echo", R"({"a":1})", kControl, 5s);
  ASSERT_OK(good);
  EXPECT_EQ(good->status, 200);
  EXPECT_EQ(good->body, R"({"a":1})");
}

TEST_F(HttpServerTest, HeaderOverLimitIs431) {
  start();
  RawConn c(port_);
  c.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(16 * 1024, 'a') + "\r\n\r\n");
  std::string res = c.read_all();
  EXPECT_EQ(res.rfind("HTTP/1.1 431", 0), 0u) << res.substr(0, 200);
  EXPECT_NE(res.find("header_too_large"), std::string::npos);
}

TEST_F(HttpServerTest, MalformedHttpIs400AndClosed) {
  start();
  RawConn c(port_);
  c.send("THIS IS NOT HTTP\r\n\r\n");
  std::string res = c.read_all();  // returns because the server closes
  EXPECT_EQ(res.rfind("HTTP/1.1 400", 0), 0u) << res;
  EXPECT_NE(res.find("\"code\":\"bad_request\""), std::string::npos) << res;
}

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  start();
  RawConn c(port_);
  c.send(
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string res = c.read_all();
  size_t first = res.find("HTTP/1.1 200");
  ASSERT_NE(first, std::string::npos) << res;
  EXPECT_NE(res.find("HTTP/1.1 200", first + 1), std::string::npos) << res;
}

TEST_F(HttpServerTest, HandlerExceptionIs500AndTheServerKeepsServing) {
  start();
  auto boom = get("/v1/boom", kRead);
  ASSERT_OK(boom);
  EXPECT_EQ(boom->status, 500);
  EXPECT_EQ(error_code_of(*boom), "internal");
  EXPECT_NE(boom->body.find("kaboom"), std::string::npos);
  EXPECT_EQ(status_of(get("/healthz")), 200);
}

TEST_F(HttpServerTest, ConnectionsOverTheCapAreRefusedWith503) {
  limits_.max_connections = 1;
  start();
  RawConn idle(port_);  // holds the only slot (keep-alive, no request yet)
  testing::wait_until([&] { return server_->connections() >= 1; }, 5s, 1ms);
  ASSERT_EQ(server_->connections(), 1u) << "the server never counted the idle connection";
  EXPECT_EQ(status_of(get("/healthz")), 503);
}

TEST_F(HttpServerTest, ErrorResponseMapsConditionsToStatuses) {
  EXPECT_EQ(error_response(Error{Condition::invalid_argument, "x"}).status, 400);
  EXPECT_EQ(error_response(Error{Condition::not_found, "x"}).status, 404);
  EXPECT_EQ(error_response(Error{Condition::already_exists, "x"}).status, 409);
  EXPECT_EQ(error_response(Error{Condition::invalid_state, "x"}).status, 409);
  EXPECT_EQ(error_response(Error{Condition::unsupported, "x"}).status, 501);
  EXPECT_EQ(error_response(Error{Condition::timeout, "x"}).status, 504);
  EXPECT_EQ(error_response(Error{Condition::transient, "x"}).status, 503);
  EXPECT_EQ(error_response(Error{Condition::cancelled, "x"}).status, 409);
  EXPECT_EQ(error_response(Error{Condition::unauthenticated, "x"}).status, 401);
  EXPECT_EQ(error_response(Error{Condition::permission_denied, "x"}).status, 403);
  auto r = error_response(Error{Condition::internal, "it broke"});
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.body, R"({"error":{"code":"internal","message":"it broke"}})");
}

TEST(LoadTokens, TrimsAndNamesMissingOrEmptyFiles) {
  auto dir = std::filesystem::temp_directory_path() / ("fl-tokens-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "control") << "  abc123\n";
  std::ofstream(dir / "empty") << " \n";
  auto t = load_tokens((dir / "control").string(), "");
  ASSERT_OK(t);
  EXPECT_EQ(t->control, "abc123");
  EXPECT_EQ(t->read, "");
  auto missing = load_tokens((dir / "nope").string(), "");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.condition(), Condition::not_found);
  EXPECT_NE(missing.error().message.find("nope"), std::string::npos);
  auto empty = load_tokens((dir / "control").string(), (dir / "empty").string());
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.condition(), Condition::invalid_argument);
  std::filesystem::remove_all(dir);
}

// Websocket event stream

TEST_F(HttpServerTest, WebsocketStartsWithSnapshotThenDeltas) {
  start();
  for (int i = 0; i < 3; ++i) feed_->publish("tick", json::object{{"n", i}});
  auto c = ws("/v1/events");
  ASSERT_OK(c);
  auto snap = (*c)->read(5s);
  ASSERT_OK(snap);
  auto o = as_object(*snap);
  EXPECT_EQ(o.at("type").as_string(), "snapshot");
  EXPECT_EQ(o.at("seq").as_int64(), 3);
  EXPECT_EQ(o.at("state").at("state").as_int64(), 7);
  EXPECT_TRUE(o.contains("time"));
  feed_->publish("instance.changed", json::object{{"name", "web-0"}});
  auto delta = (*c)->read(5s);
  ASSERT_OK(delta);
  auto d = as_object(*delta);
  EXPECT_EQ(d.at("seq").as_int64(), 4);
  EXPECT_EQ(d.at("type").as_string(), "instance.changed");
  EXPECT_EQ(d.at("name").as_string(), "web-0");
}

TEST_F(HttpServerTest, WebsocketResumeWithSinceHasNoGapAndNoDuplicateWhilePublishing) {
  feed_ = std::make_shared<EventFeed>([] { return json::object{}; }, 10000);
  start();
  constexpr int kEvents = 3000;
  std::atomic<bool> go{false};
  std::atomic<int64_t> client_at{-1};  // -1: not connected yet
  std::thread publisher([&] {
    for (int i = 1; i <= kEvents; ++i) {
      feed_->publish("tick", json::object{{"n", i}});
      if (i == 500) go = true;
      if (i % 10 == 0) std::this_thread::sleep_for(100us);
      // Publish while the client connects and catches up, but never so far ahead that a loaded
      // machine (sanitizers) turns it into a slow consumer.
      for (int w = 0; w < 100 && client_at >= 0 && i - client_at > 256; ++w) {
        std::this_thread::sleep_for(1ms);
      }
    }
  });
  while (!go) std::this_thread::sleep_for(1ms);
  uint64_t since = feed_->last_seq() - 5;
  auto c = ws("/v1/events?since=" + std::to_string(since));
  client_at = static_cast<int64_t>(since);
  std::vector<json::object> got;
  while (c.ok() && (got.empty() || got.back().at("seq").as_int64() < kEvents)) {
    auto m = (*c)->read(10s);
    if (!m.ok()) {
      ADD_FAILURE() << m.error().describe();
      break;
    }
    got.push_back(as_object(*m));
    client_at = got.back().at("seq").as_int64();
  }
  publisher.join();
  ASSERT_OK(c);
  int64_t expect = static_cast<int64_t>(since) + 1;
  for (const auto& o : got) {
    ASSERT_NE(o.at("type").as_string(), "snapshot");
    ASSERT_EQ(o.at("seq").as_int64(), expect) << "gap or duplicate";
    ++expect;
  }
  EXPECT_EQ(expect, kEvents + 1);
}

TEST_F(HttpServerTest, WebsocketSinceOutsideTheRingGetsAResyncSnapshot) {
  start();  // the fixture's feed keeps 50 events
  for (int i = 0; i < 100; ++i) feed_->publish("tick", json::object{{"n", i}});
  for (std::string since : {"10", "101"}) {
    auto c = ws("/v1/events?since=" + since);
    ASSERT_OK(c);
    auto snap = (*c)->read(5s);
    ASSERT_OK(snap);
    auto o = as_object(*snap);
    EXPECT_EQ(o.at("type").as_string(), "snapshot") << since;
    EXPECT_TRUE(o.at("resync").as_bool());
    EXPECT_EQ(o.at("seq").as_int64(), 100);
  }
  // Caught up exactly: nothing until the next event.
  auto c = ws("/v1/events?since=100");
  ASSERT_OK(c);
  feed_->publish("tick", json::object{});
  auto next = (*c)->read(5s);
  ASSERT_OK(next);
  EXPECT_EQ(seq_of(*next), 101);

  EXPECT_EQ(status_of(request(kHost, port_, "GET", "/v1/events?since=abc", {}, kRead, 5s)),
            426);  // not an upgrade: the since check comes with the upgrade
}

TEST_F(HttpServerTest, WebsocketNeedsReadTokenInHeaderOrAccessTokenQuery) {
  start();
  auto none = ws("/v1/events", "");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.condition(), Condition::unauthenticated) << none.error().message;
  auto wrong = ws("/v1/events", "nope");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.condition(), Condition::unauthenticated);
  auto wrong_query = ws("/v1/events?access_token=nope", "");
  ASSERT_FALSE(wrong_query.ok());
  EXPECT_EQ(wrong_query.condition(), Condition::unauthenticated);
  auto query = ws(std::string("/v1/events?access_token=") + kRead, "");
  ASSERT_OK(query);
  EXPECT_OK((*query)->read(5s));
  auto header = ws("/v1/events", kControl);
  ASSERT_OK(header);
  EXPECT_OK((*header)->read(5s));
  auto elsewhere = ws("/v1/instances/a", kRead);
  ASSERT_FALSE(elsewhere.ok());
  EXPECT_EQ(elsewhere.condition(), Condition::not_found);
  auto bad_since = ws("/v1/events?since=-1", kRead);
  ASSERT_FALSE(bad_since.ok());
  EXPECT_EQ(bad_since.condition(), Condition::invalid_argument);
}

TEST_F(HttpServerTest, WebsocketAnswersPingWithPongAndIgnoresOtherMessages) {
  start();
  auto c = subscribed();
  ASSERT_TRUE(c);
  ASSERT_OK(c->write("not json"));
  ASSERT_OK(c->write(R"({"type":"hello"})"));
  ASSERT_OK(c->write(R"({"type":"ping"})"));
  auto pong = c->read(5s);
  ASSERT_OK(pong);
  EXPECT_EQ(*pong, R"({"type":"pong"})");
}

// The server coalesces a session's queued events into few socket writes, and Beast writes its own
// control frames (pongs here) through the same path: bursts of small and large events, with the
// client pinging at the websocket level all the while, must arrive whole, in order, each event
// its own message, and every ping must be answered.
TEST_F(HttpServerTest, BurstsArriveWholeAndInOrderWhileTheClientPings) {
  limits_.max_ws_queue = 100000;
  start();
  net::io_context ioc;
  boost::beast::websocket::stream<tcp::socket> ws(ioc);
  ws.next_layer().connect(tcp::endpoint(net::ip::make_address(kHost), port_));
  ws.set_option(
      boost::beast::websocket::stream_base::decorator([](boost::beast::websocket::request_type& r) {
        r.set(boost::beast::http::field::authorization, std::string("Bearer ") + kRead);
      }));
  ws.handshake(kHost, "/v1/events");
  int pongs = 0;
  ws.control_callback([&](boost::beast::websocket::frame_type kind, boost::beast::string_view) {
    if (kind == boost::beast::websocket::frame_type::pong) ++pongs;
  });
  boost::beast::flat_buffer buf;
  ws.read(buf);  // snapshot
  buf.consume(buf.size());

  constexpr int kBursts = 20, kPerBurst = 150;
  // Read before the publisher starts: read after, it raced the first bursts (seen: 39 for 1).
  int64_t expect_seq = feed_->last_seq() + 1;
  std::thread publisher([&] {
    for (int b = 0; b < kBursts; ++b) {
      for (int i = 0; i < kPerBurst; ++i) {
        // Every 37th event is 100 KB: more than the server lets wait for the socket at once.
        size_t size = i % 37 == 0 ? 100000 : 20 + i;
        feed_->publish("tick", json::object{{"b", b}, {"i", i}, {"pad", std::string(size, 'x')}});
      }
      std::this_thread::sleep_for(5ms);
    }
  });
  // A failed assertion returns early: join the publisher first, or std::thread terminates.
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join_publisher{publisher};
  int pings = 0;
  for (int n = 0; n < kBursts * kPerBurst; ++n) {
    if (n % 50 == 0) {
      ws.ping({});
      ++pings;
    }
    ws.read(buf);
    auto text = boost::beast::buffers_to_string(buf.data());
    buf.consume(buf.size());
    auto event = as_object(text);  // throws (fails the test) on a torn or merged message
    ASSERT_EQ(event.at("seq").as_int64(), expect_seq) << "message " << n;
    ++expect_seq;
    int b = n / kPerBurst, i = n % kPerBurst;
    EXPECT_EQ(event.at("b").as_int64(), b);
    EXPECT_EQ(event.at("i").as_int64(), i);
    EXPECT_EQ(event.at("pad").as_string().size(), i % 37 == 0 ? 100000u : 20u + i);
  }
  publisher.join();
  // The last pongs may still be on their way: a tick published later comes after them.
  for (int tries = 0; pongs < pings && tries < 50; ++tries) {
    std::this_thread::sleep_for(100ms);
    feed_->publish("tick", json::object{});
    ws.read(buf);
    buf.consume(buf.size());
  }
  EXPECT_EQ(pongs, pings);
}

TEST_F(HttpServerTest, OversizedClientMessageClosesTheWebsocket) {
  limits_.max_ws_message = 1024;
  start();
  auto c = subscribed();
  ASSERT_TRUE(c);
  ASSERT_OK(c->write(std::string(4096, 'x')));
  auto r = c->read(5s);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.condition(), Condition::timeout) << r.error().message;
  // The server still serves others.
  EXPECT_EQ(status_of(get("/healthz")), 200);
}

// The io thread is held in a handler while events pile up, so the overflow is certain and the
// socket is healthy: the client sees the close frame and its reason.
TEST_F(HttpServerTest, WebsocketQueueOverflowClosesWithReasonSlowConsumer) {
  limits_.max_ws_queue = 4;
  start();
  auto c = subscribed();
  ASSERT_TRUE(c);
  std::thread blocked([&] { (void)get("/v1/block", kRead); });
  entered_.get_future().wait();
  for (int i = 0; i < 10; ++i) feed_->publish("tick", json::object{{"n", i}});
  release_.set_value();
  blocked.join();
  auto r = c->read(5s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::cancelled) << r.error().message;
  EXPECT_EQ(c->close_reason(), "slow consumer");
  EXPECT_EQ(feed_->stats().dropped_slow, 1u);
  EXPECT_EQ(feed_->stats().subscribers, 0u);
}

TEST_F(HttpServerTest, NeverReadingClientIsCutOffWhilePublisherAndFastClientCarryOn) {
  limits_.max_ws_queue = 256;
  start();
  // The slow client: a tiny receive window, upgrades, then never reads.
  RawConn slow(port_, 4096);
  slow.send(std::string("GET /v1/events?access_token=") + kRead +
            " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
  ASSERT_EQ(slow.read_until_blank_line().rfind("HTTP/1.1 101", 0), 0u);

  constexpr int kEvents = 5000;
  auto fast = ws("/v1/events");
  ASSERT_OK(fast);
  std::vector<int64_t> seen;
  std::atomic<int64_t> fast_at{0};
  std::atomic<bool> reader_done{false};
  std::thread reader([&] {
    while (seen.empty() || seen.back() < kEvents) {
      auto m = (*fast)->read(10s);
      if (!m.ok()) break;
      seen.push_back(seq_of(*m));
      fast_at = seen.back();
    }
    reader_done = true;
  });
  while (feed_->stats().subscribers < 2) std::this_thread::sleep_for(1ms);

  const std::string payload(1024, 'p');
  auto slowest = std::chrono::steady_clock::duration::zero();
  for (int i = 1; i <= kEvents; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    feed_->publish("tick", json::object{{"payload", payload}});
    slowest = std::max(slowest, std::chrono::steady_clock::now() - t0);
    // Keep the healthy client well inside its queue whatever the machine's load; the slow one
    // falls further behind than that regardless.
    for (int w = 0; w < 5000 && !reader_done && i - fast_at > 64; ++w) {
      std::this_thread::sleep_for(1ms);
    }
  }
  reader.join();
  EXPECT_LT(slowest, 100ms) << "publish blocked on a consumer";
  for (int i = 0; i < 500 && feed_->stats().dropped_slow == 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(feed_->stats().dropped_slow, 1u);
  EXPECT_EQ(feed_->stats().subscribers, 1u);
  ASSERT_EQ(seen.size(), size_t(kEvents) + 1);  // snapshot + every event
  for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], int64_t(i));
  // The server hangs up on the slow client: reading what was buffered ends at the close.
  std::string rest = slow.read_all();
  EXPECT_LT(rest.size(), size_t(kEvents) * 1024);
}

TEST_F(HttpServerTest, SnapshotFailureClosesThatWebsocketAndTheServerCarriesOn) {
  feed_ =
      std::make_shared<EventFeed>([]() -> json::object { throw std::runtime_error("no state"); });
  start();
  auto c = ws("/v1/events");
  ASSERT_OK(c);
  auto r = (*c)->read(5s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ((*c)->close_reason(), "snapshot failed");
  EXPECT_EQ(status_of(get("/healthz")), 200);
}

TEST_F(HttpServerTest, StopClosesWebsocketsPromptly) {
  start();
  auto c = subscribed();
  ASSERT_TRUE(c);
  auto t0 = std::chrono::steady_clock::now();
  server_->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  auto r = c->read(5s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.condition(), Condition::cancelled) << r.error().message;
  EXPECT_EQ(c->close_reason(), "server shutting down");
  feed_->publish("after", json::object{});  // nobody left to post to
  EXPECT_EQ(feed_->stats().subscribers, 0u);
}

}  // namespace
}  // namespace fabriclab::http
