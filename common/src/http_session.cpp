// One HTTP connection: read a request (with size limits and a deadline), answer it, repeat while
// keep-alive holds. Everything runs on the connection's strand.
//
// Errors that end the connection (413, 431, 400) are answered and then closed "lingering": we
// shut down our sending side and drain what the client still sends for a moment, because
// closing a socket with unread input makes the kernel send RST, which can destroy the response
// before the client has read it.

#include <fmt/format.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <cctype>

#include "http_internal.hpp"

namespace fabriclab::http {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using boost::system::error_code;

namespace {

constexpr auto kLinger = std::chrono::seconds(1);

std::string remote_of(const tcp::socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "?";
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

class HttpSession : public Session, public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(Server::Impl& srv, tcp::socket socket)
      : srv_(srv), remote_(remote_of(socket)), stream_(std::move(socket)) {}

  ~HttpSession() override { srv_.remove(id_); }

  // False when the server is full or stopping; the caller answers 503.
  bool start() {
    id_ = srv_.add(weak_from_this());
    if (id_ == 0) return false;
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&HttpSession::do_read, shared_from_this()));
    return true;
  }

  // The server is full or stopping: a short canned answer. The socket is fresh, so this small
  // write fits in the kernel buffer and does not block the acceptor.
  void refuse() {
    auto res = to_beast(error_response(503, "unavailable", "too many connections; retry later"), 11,
                        false);
    error_code ec;
    bhttp::write(stream_.socket(), res, ec);
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  void shutdown() override {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      self->stopping_ = true;
      // A response being written finishes first (on_write sees stopping_); an idle read ends now.
      if (!self->writing_) {
        error_code ec;
        self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
        self->stream_.close();
      }
    });
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(srv_.limits.max_body);
    parser_->header_limit(static_cast<std::uint32_t>(srv_.limits.max_header));
    stream_.expires_after(srv_.limits.read_timeout);
    bhttp::async_read(stream_, buffer_, *parser_,
                      beast::bind_front_handler(&HttpSession::on_read, shared_from_this()));
  }

  void on_read(error_code ec, std::size_t) {
    if (ec == bhttp::error::end_of_stream || ec == net::error::operation_aborted) return do_close();
    if (ec == beast::error::timeout) {
      if (parser_->got_some()) {
        return fail(408, "request_timeout", "request not received within the read timeout");
      }
      return do_close();
    }
    if (ec == bhttp::error::body_limit) {
      return fail(413, "body_too_large",
                  fmt::format("request body larger than {} bytes", srv_.limits.max_body));
    }
    if (ec == bhttp::error::header_limit) {
      return fail(431, "header_too_large",
                  fmt::format("request header larger than {} bytes", srv_.limits.max_header));
    }
    if (ec && ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category()) {
      return fail(400, "bad_request", fmt::format("malformed HTTP request: {}", ec.message()));
    }
    if (ec) {
      srv_.log->debug("{}: read failed: {}", remote_, ec.message());
      return do_close();
    }

    BeastRequest req = parser_->release();
    auto target = parse_target(std::string_view(req.target().data(), req.target().size()));
    if (!target) return fail(400, "bad_request", target.error().message);
    std::string token = bearer_token(req);

    if (beast::websocket::is_upgrade(req)) return upgrade(std::move(req), *target, token);

    Request r;
    r.method = std::string(req.method_string());
    r.path = target->path;
    r.query = target->query;
    r.body = std::move(req.body());
    r.remote = remote_;
    for (const auto& field : req) {
      std::string name(field.name_string());
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      std::string value(field.value());
      auto [it, fresh] = r.headers.try_emplace(std::move(name), value);
      if (!fresh) it->second += ", " + value;
    }
    Response res = srv_.handle(r, *target, token);
    srv_.log->debug("{} {} {} -> {}", remote_, r.method, r.path, res.status);
    write(res, req.version(), req.keep_alive() && !stopping_);
  }

  void upgrade(BeastRequest req, const Target& target, std::string token) {
    const EventsRoute* route = srv_.find_events(target.path);
    if (!route) {
      return fail(404, "not_found", fmt::format("no websocket endpoint at {}", target.path));
    }
    std::optional<uint64_t> since;
    if (auto it = target.query.find("since"); it != target.query.end()) {
      const std::string& s = it->second;
      bool digits =
          !s.empty() && s.size() <= 19 && s.find_first_not_of("0123456789") == std::string::npos;
      if (!digits) return fail(400, "invalid_argument", "since must be a sequence number");
      since = std::stoull(s);
    }
    if (token.empty()) {
      if (auto it = target.query.find("access_token"); it != target.query.end()) {
        token = it->second;
      }
    }
    std::string role = srv_.role_of(token);
    if (auto denied = srv_.deny(Access::read, token, role)) {
      srv_.log->debug("{} websocket {} -> {}", remote_, target.path, denied->status);
      return write(*denied, req.version(), false);
    }
    srv_.log->debug("{} websocket {} (role {})", remote_, target.path, role);
    stream_.expires_never();
    start_ws_session(srv_, stream_.release_socket(), std::move(req), route->feed, since, remote_);
  }

  // Answers and closes: the request could not be read, so the connection's framing is lost.
  void fail(int status, std::string_view code, std::string message) {
    srv_.log->debug("{}: {} {}", remote_, status, message);
    write(error_response(status, code, message), 11, false);
  }

  void write(const Response& res, unsigned version, bool keep_alive) {
    res_ =
        std::make_shared<bhttp::response<bhttp::string_body>>(to_beast(res, version, keep_alive));
    writing_ = true;
    stream_.expires_after(srv_.limits.write_timeout);
    bhttp::async_write(
        stream_, *res_,
        beast::bind_front_handler(&HttpSession::on_write, shared_from_this(), res_->keep_alive()));
  }

  void on_write(bool keep_alive, error_code ec, std::size_t) {
    writing_ = false;
    res_.reset();
    if (ec) {
      srv_.log->debug("{}: write failed: {}", remote_, ec.message());
      return stream_.close();
    }
    if (!keep_alive || stopping_) return do_close();
    do_read();
  }

  // Half-close, then drain the client's leftovers until it closes too or kLinger passes.
  void do_close() {
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return stream_.close();
    stream_.expires_after(kLinger);
    linger();
  }

  void linger() {
    stream_.async_read_some(net::buffer(scratch_),
                            [self = shared_from_this()](error_code ec, std::size_t) {
                              if (ec) return self->stream_.close();
                              self->linger();
                            });
  }

  Server::Impl& srv_;
  uint64_t id_ = 0;
  std::string remote_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::shared_ptr<bhttp::response<bhttp::string_body>> res_;
  char scratch_[4096];
  bool writing_ = false;
  bool stopping_ = false;
};

}  // namespace

void start_http_session(Server::Impl& srv, tcp::socket socket) {
  auto session = std::make_shared<HttpSession>(srv, std::move(socket));
  if (session->start()) return;
  if (!srv.stopping) {
    srv.log->warn("refusing a connection: {} connections open", srv.limits.max_connections);
  }
  session->refuse();
}

}  // namespace fabriclab::http
