#pragma once
// Private to common/src: the server's shared state and the two session kinds.

#include <spdlog/logger.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/common/http_server.hpp"

namespace fabriclab::http {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using BeastRequest = boost::beast::http::request<boost::beast::http::string_body>;

// What the server knows about a live connection, for shutdown.
class Session {
 public:
  virtual ~Session() = default;
  // Thread safe: asks the session to finish (posts to its strand).
  virtual void shutdown() = 0;
  // Called after the io threads are joined: drop anything that could post into the io_context.
  virtual void detach() {}
};

struct Route {
  std::string method;
  std::string pattern;
  std::vector<std::string> segments;  // "{x}" matches any non-empty segment
  Access access;
  Handler handler;
};

struct EventsRoute {
  std::string path;
  std::shared_ptr<EventFeed> feed;
};

// A request target split by Boost.URL.
struct Target {
  std::string path;
  std::vector<std::string> segments;
  std::map<std::string, std::string> query;
};
Result<Target> parse_target(std::string_view target);

// The token of `Authorization: Bearer <token>`; empty when absent or another scheme.
std::string bearer_token(const BeastRequest& req);

// Writes `res` into a Beast response (keep-alive as given).
boost::beast::http::response<boost::beast::http::string_body> to_beast(const Response& res,
                                                                       unsigned version,
                                                                       bool keep_alive);

struct Server::Impl {
  Impl(std::string name, Tokens tokens, Limits limits);

  // Routing, auth, the handler call (exceptions become 500). Never throws.
  Response handle(Request& req, const Target& target, std::string_view token);
  // "" when the token is not valid, else "control" or "read". Constant time in the token.
  std::string role_of(std::string_view token) const;
  // An error response when `role` (from `token`) may not use `access`.
  std::optional<Response> deny(Access access, std::string_view token,
                               const std::string& role) const;
  const EventsRoute* find_events(const std::string& path) const;

  // Session registry. add() returns 0 when the connection cap is reached or the server stops.
  uint64_t add(std::weak_ptr<Session> s);
  void remove(uint64_t id);

  void do_accept();

  const std::string name;
  const std::shared_ptr<spdlog::logger> log;
  const Tokens tokens;
  const Limits limits;
  std::vector<Route> routes;
  std::vector<EventsRoute> event_routes;

  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, std::weak_ptr<Session>> sessions;
  uint64_t next_id = 1;
  std::atomic<bool> stopping{false};
  bool started = false;
  bool stopped = false;
  uint16_t port = 0;

  // Declared after everything sessions touch: the io_context's destructor destroys the handlers
  // that keep the last sessions alive, and their destructors call remove().
  net::io_context ioc;
  std::optional<tcp::acceptor> acceptor;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::vector<std::thread> threads;
};

// Starts serving an accepted connection.
void start_http_session(Server::Impl& srv, tcp::socket socket);

// Takes over a connection whose request is a websocket upgrade that passed auth.
void start_ws_session(Server::Impl& srv, tcp::socket socket, BeastRequest req,
                      std::shared_ptr<EventFeed> feed, std::optional<uint64_t> since,
                      std::string remote);

}  // namespace fabriclab::http
