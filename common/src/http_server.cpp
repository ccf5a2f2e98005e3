// The server: acceptor, routing table, auth, and orderly start/stop. Sessions live in
// http_session.cpp (plain HTTP, keep-alive) and ws_session.cpp (the event stream).
//
// Threads: `threads` io threads run one io_context. The acceptor has its own strand, each
// connection another (the socket is accepted onto it), so a session's handlers never run
// concurrently. Routes and tokens are fixed before start() and only read afterwards.
//
// Stop: close the acceptor on its strand, ask every session to finish (websockets send a close
// frame), wait a short grace period for them to go, then stop the io_context and join. Sessions
// still alive at that point are detached from their feeds so no publisher posts into a dead
// io_context.

#include "fabriclab/common/http_server.hpp"

#include <fmt/format.h>
#include <pthread.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <boost/url/parse.hpp>
#include <fstream>
#include <sstream>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/logging.hpp"
#include "http_internal.hpp"

namespace fabriclab::http {
namespace bhttp = boost::beast::http;

namespace {

constexpr auto kStopGrace = std::chrono::seconds(2);

// Compares without an early exit, so the time taken does not reveal how much of a guess matched.
bool ct_equal(std::string_view a, std::string_view b) {
  size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

std::vector<std::string> split_pattern(std::string_view pattern) {
  std::vector<std::string> out;
  if (!pattern.empty() && pattern.front() == '/') pattern.remove_prefix(1);
  while (true) {
    auto slash = pattern.find('/');
    out.emplace_back(pattern.substr(0, slash));
    if (slash == std::string_view::npos) break;
    pattern.remove_prefix(slash + 1);
  }
  return out;
}

bool is_param(const std::string& seg) {
  return seg.size() >= 2 && seg.front() == '{' && seg.back() == '}';
}

bool matches(const Route& r, const std::vector<std::string>& segs,
             std::map<std::string, std::string>* params) {
  if (r.segments.size() != segs.size()) return false;
  for (size_t i = 0; i < segs.size(); ++i) {
    if (is_param(r.segments[i])) {
      if (segs[i].empty()) return false;
      if (params) (*params)[r.segments[i].substr(1, r.segments[i].size() - 2)] = segs[i];
    } else if (r.segments[i] != segs[i]) {
      return false;
    }
  }
  return true;
}

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return {};
  auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

Result<std::string> read_token(const std::string& file) {
  if (file.empty()) return std::string();
  std::ifstream in(file);
  if (!in) return make_error(Condition::not_found, fmt::format("token file '{}' not found", file));
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string token = trim(ss.str());
  if (token.empty()) {
    return make_error(Condition::invalid_argument, fmt::format("token file '{}' is empty", file));
  }
  return token;
}

}  // namespace

// Responses

Response json_response(int status, const boost::json::value& v) {
  Response r;
  r.status = status;
  r.body = boost::json::serialize(v);
  return r;
}

Response error_response(int status, std::string_view code, std::string_view message) {
  json::object err;
  err["code"] = code;
  err["message"] = message;
  json::object body;
  body["error"] = std::move(err);
  return json_response(status, body);
}

int status_for(Condition c) {
  switch (c) {
    case Condition::invalid_argument:
      return 400;
    case Condition::not_found:
      return 404;
    case Condition::already_exists:
      return 409;
    case Condition::invalid_state:
      return 409;
    case Condition::unsupported:
      return 501;
    case Condition::timeout:
      return 504;
    case Condition::transient:
      return 503;
    case Condition::cancelled:
      return 409;
    case Condition::unauthenticated:
      return 401;
    case Condition::permission_denied:
      return 403;
    case Condition::internal:
      return 500;
  }
  return 500;
}

Response error_response(const Error& e) {
  Response r = error_response(status_for(e.condition), to_string(e.condition), e.message);
  if (e.condition == Condition::unauthenticated)
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

Result<boost::json::value> parse_body(const Request& req, const Limits& limits) {
  if (req.body.empty()) return make_error(Condition::invalid_argument, "body is required");
  return parse_json(req.body, limits.max_body, limits.max_json_depth, "body");
}

Result<boost::json::object> parse_object_body(const Request& req, const Limits& limits) {
  FL_ASSIGN_OR_RETURN(auto body, parse_body(req, limits));
  if (!body.is_object()) {
    return make_error(Condition::invalid_argument, "body must be a JSON object");
  }
  return std::move(body.as_object());
}

Result<Tokens> load_tokens(const std::string& control_file, const std::string& read_file) {
  Tokens t;
  FL_ASSIGN_OR_RETURN(t.control, read_token(control_file));
  FL_ASSIGN_OR_RETURN(t.read, read_token(read_file));
  return t;
}

// Helpers shared with the sessions

Result<Target> parse_target(std::string_view target) {
  auto u = boost::urls::parse_origin_form(target);
  if (!u) {
    return make_error(Condition::invalid_argument,
                      fmt::format("request target is not a valid path: {}", u.error().message()));
  }
  Target t;
  t.path = u->path();
  for (auto seg : u->segments()) t.segments.push_back(seg);
  if (t.segments.empty()) t.segments.emplace_back();  // "/" is one empty segment
  for (auto p : u->params()) t.query[p.key] = p.value;
  return t;
}

std::string bearer_token(const BeastRequest& req) {
  auto it = req.find(bhttp::field::authorization);
  if (it == req.end()) return {};
  std::string_view v(it->value().data(), it->value().size());
  if (v.size() < 7) return {};
  std::string scheme(v.substr(0, 7));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), ::tolower);
  if (scheme != "bearer ") return {};
  return trim(std::string(v.substr(7)));
}

bhttp::response<bhttp::string_body> to_beast(const Response& res, unsigned version,
                                             bool keep_alive) {
  bhttp::response<bhttp::string_body> out{static_cast<bhttp::status>(res.status), version};
  out.set(bhttp::field::server, "fabriclab");
  out.set(bhttp::field::content_type, res.content_type);
  out.set(bhttp::field::cache_control, "no-store");
  for (const auto& [k, v] : res.headers) out.insert(k, v);
  out.body() = res.body;
  out.keep_alive(keep_alive);
  out.prepare_payload();
  return out;
}

// Server::Impl

Server::Impl::Impl(std::string n, Tokens t, Limits l)
    : name(std::move(n)), log(logger(name)), tokens(std::move(t)), limits(l) {}

std::string Server::Impl::role_of(std::string_view token) const {
  if (token.empty()) return {};
  // Evaluate both comparisons always: which one matched should not show in the timing.
  bool control = !tokens.control.empty() && ct_equal(token, tokens.control);
  bool read = !tokens.read.empty() && ct_equal(token, tokens.read);
  if (control) return "control";
  if (read) return "read";
  return {};
}

std::optional<Response> Server::Impl::deny(Access access, std::string_view token,
                                           const std::string& role) const {
  if (access == Access::open) return std::nullopt;
  if (role.empty()) {
    return error_response(Error{Condition::unauthenticated,
                                token.empty() ? "missing bearer token" : "unknown bearer token"});
  }
  if (access == Access::control && role != "control") {
    return error_response(
        Error{Condition::permission_denied, "this endpoint needs the control token"});
  }
  return std::nullopt;
}

const EventsRoute* Server::Impl::find_events(const std::string& path) const {
  for (const auto& e : event_routes) {
    if (e.path == path) return &e;
  }
  return nullptr;
}

Response Server::Impl::handle(Request& req, const Target& target, std::string_view token) {
  req.role = role_of(token);
  const Route* route = nullptr;
  std::string allow;
  for (const auto& r : routes) {
    if (!matches(r, target.segments, nullptr)) continue;
    if (r.method == req.method) {
      route = &r;
      break;
    }
    if (allow.find(r.method) == std::string::npos)
      allow += allow.empty() ? r.method : ", " + r.method;
  }
  if (!route) {
    if (find_events(req.path)) {
      return error_response(426, "upgrade_required", "this path is a websocket endpoint");
    }
    if (allow.empty()) {
      return error_response(404, "not_found", fmt::format("no such path: {}", req.path));
    }
    Response r = error_response(
        405, "method_not_allowed",
        fmt::format("{} is not allowed on {} (allowed: {})", req.method, req.path, allow));
    r.headers.emplace_back("Allow", allow);
    return r;
  }
  if (auto denied = deny(route->access, token, req.role)) return *denied;
  matches(*route, target.segments, &req.params);
  try {
    return route->handler(req);
  } catch (const std::exception& e) {
    log->error("handler for {} {} threw: {}", req.method, route->pattern, e.what());
    return error_response(500, "internal", fmt::format("handler failed: {}", e.what()));
  } catch (...) {
    log->error("handler for {} {} threw a non-exception", req.method, route->pattern);
    return error_response(500, "internal", "handler failed");
  }
}

uint64_t Server::Impl::add(std::weak_ptr<Session> s) {
  std::lock_guard lock(mu);
  if (stopping || sessions.size() >= limits.max_connections) return 0;
  uint64_t id = next_id++;
  sessions.emplace(id, std::move(s));
  return id;
}

void Server::Impl::remove(uint64_t id) {
  if (id == 0) return;
  std::lock_guard lock(mu);
  sessions.erase(id);
  cv.notify_all();
}

void Server::Impl::do_accept() {
  acceptor->async_accept(net::make_strand(ioc),
                         [this](boost::system::error_code ec, tcp::socket socket) {
                           if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
                           if (ec) {
                             // EMFILE and friends: keep accepting; the next attempt may succeed.
                             log->warn("accept failed: {}", ec.message());
                           } else if (stopping) {
                             socket.close(ec);
                           } else {
                             start_http_session(*this, std::move(socket));
                           }
                           do_accept();
                         });
}

// Server

Server::Server(std::string name, Tokens tokens, Limits limits)
    : impl_(std::make_unique<Impl>(std::move(name), std::move(tokens), limits)) {}

Server::~Server() { stop(); }

void Server::route(std::string method, std::string pattern, Access access, Handler handler) {
  Route r{std::move(method), std::move(pattern), {}, access, std::move(handler)};
  r.segments = split_pattern(r.pattern);
  impl_->routes.push_back(std::move(r));
}

void Server::events(std::string path, std::shared_ptr<EventFeed> feed) {
  impl_->event_routes.push_back(EventsRoute{std::move(path), std::move(feed)});
}

Result<uint16_t> Server::start(const std::string& address, uint16_t port, int threads) {
  Impl& s = *impl_;
  if (s.started) return make_error(Condition::invalid_state, "server already started");
  boost::system::error_code ec;
  auto addr = net::ip::make_address(address, ec);
  if (ec) {
    return make_error(Condition::invalid_argument,
                      fmt::format("'{}' is not an IP address: {}", address, ec.message()));
  }
  tcp::endpoint ep(addr, port);
  s.acceptor.emplace(net::make_strand(s.ioc));
  auto fail = [&](std::string_view what) -> Error {
    s.acceptor.reset();
    return make_error(Condition::transient,
                      fmt::format("cannot {} {}:{}: {}", what, address, port, ec.message()));
  };
  if (s.acceptor->open(ep.protocol(), ec)) return fail("open a socket for");
  if (s.acceptor->set_option(net::socket_base::reuse_address(true), ec)) return fail("configure");
  if (s.acceptor->bind(ep, ec)) return fail("bind");
  if (s.acceptor->listen(net::socket_base::max_listen_connections, ec)) return fail("listen on");
  s.port = s.acceptor->local_endpoint(ec).port();
  s.started = true;
  s.work.emplace(s.ioc.get_executor());
  net::post(s.acceptor->get_executor(), [&s] { s.do_accept(); });
  for (int i = 0; i < std::max(threads, 1); ++i) {
    s.threads.emplace_back([&s] {
      pthread_setname_np(pthread_self(), "http-io");  // for top -H, perf, gdb
      // Handlers catch their own failures; an exception reaching here is a bug, but not a
      // reason to stop serving: log it and run on.
      for (;;) {
        try {
          s.ioc.run();
          return;
        } catch (const std::exception& e) {
          s.log->error("exception escaped an io handler: {}", e.what());
        } catch (...) {
          s.log->error("non-exception escaped an io handler");
        }
      }
    });
  }
  s.log->info("listening on {}:{}", address, s.port);
  return s.port;
}

void Server::stop() {
  Impl& s = *impl_;
  if (!s.started || s.stopped) return;
  s.stopped = true;
  s.stopping = true;
  net::post(s.acceptor->get_executor(), [&s] {
    boost::system::error_code ec;
    s.acceptor->close(ec);
  });
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(s.mu);
    for (auto& [id, w] : s.sessions) {
      if (auto p = w.lock()) live.push_back(std::move(p));
    }
  }
  for (auto& p : live) p->shutdown();
  live.clear();  // the sessions' handlers own them now
  {
    std::unique_lock lock(s.mu);
    s.cv.wait_for(lock, kStopGrace, [&] { return s.sessions.empty(); });
    if (!s.sessions.empty()) s.log->warn("{} sessions still open at stop", s.sessions.size());
  }
  s.work.reset();
  s.ioc.stop();
  for (auto& t : s.threads) t.join();
  s.threads.clear();
  {
    std::lock_guard lock(s.mu);
    for (auto& [id, w] : s.sessions) {
      if (auto p = w.lock()) live.push_back(std::move(p));
    }
  }
  for (auto& p : live) p->detach();
  s.log->info("stopped (port {})", s.port);
}

uint16_t Server::port() const { return impl_->port; }

size_t Server::connections() const {
  std::lock_guard lock(impl_->mu);
  return impl_->sessions.size();
}

}  // namespace fabriclab::http
