// The synchronous client drives Beast's asynchronous operations on a private io_context, so
// that every step can have a deadline (beast::tcp_stream's timer); the call returns when the
// operation completes or the deadline closes the socket.
//
// A call with a network namespace creates its socket inside it: the calling thread enters the
// namespace (setns), opens the socket, and returns to its own namespace before anything else
// runs on it. Only socket(2) cares which namespace the thread is in; connect, read and write use
// the socket's. A thread that cannot return to its own namespace would open every later socket
// in the wrong one, silently: that is the one fatal error here (abort, naming both).

#include "fabriclab/common/http_client.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace fabriclab::http {
namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace websocket = boost::beast::websocket;
using tcp = net::ip::tcp;
using boost::system::error_code;

namespace {

constexpr size_t kMaxResponseBody = 64 << 20;

// Starts an operation with a completion handler and runs the context until it completes.
template <class Start>
error_code run(net::io_context& ioc, Start&& start) {
  error_code result = net::error::would_block;
  start([&](error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

Error transport(std::string_view what, const std::string& host, uint16_t port, error_code ec) {
  Condition c = ec == beast::error::timeout ? Condition::timeout : Condition::transient;
  return make_error(c, fmt::format("{} {}:{}: {}", what, host, port, ec.message()));
}

Result<tcp::resolver::results_type> resolve(net::io_context& ioc, const std::string& host,
                                            uint16_t port) {
  tcp::resolver resolver(ioc);
  error_code ec;
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec) return transport("cannot resolve", host, port, ec);
  return results;
}

// A file descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Error netns_error(std::string_view what, const std::string& path, int err) {
  Condition c = err == ENOENT                   ? Condition::not_found
                : err == EPERM || err == EACCES ? Condition::permission_denied
                                                : Condition::transient;
  return make_error(c, fmt::format("network namespace {}: {}: {}", path, what, std::strerror(err)));
}

// Opens `socket` for `protocol` inside the network namespace `netns`.
Status open_in_netns(tcp::socket& socket, const tcp& protocol, std::string_view netns) {
  FL_ASSIGN_OR_RETURN(std::string path, netns_path(netns));
  Fd target{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (target.fd < 0) return netns_error("cannot open", path, errno);
  Fd own{::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)};
  if (own.fd < 0)
    return netns_error("cannot open /proc/thread-self/ns/net to come back from", path, errno);
  if (::setns(target.fd, CLONE_NEWNET) != 0) return netns_error("cannot enter", path, errno);
  error_code ec;
  socket.open(protocol, ec);
  if (::setns(own.fd, CLONE_NEWNET) != 0) {
    std::fprintf(stderr,
                 "fabriclab: cannot return from network namespace %s to the thread's own: %s\n",
                 path.c_str(), std::strerror(errno));
    std::abort();
  }
  if (ec)
    return make_error(
        Condition::transient,
        fmt::format("network namespace {}: cannot open a socket: {}", path, ec.message()));
  return {};
}

// Connects `stream` to `host`:`port`. Without a namespace: every resolved endpoint in turn. With
// one: the socket is opened inside it and only the first endpoint is tried (a range connect
// closes and reopens the socket per endpoint, in the thread's own namespace).
Status connect_stream(net::io_context& ioc, beast::tcp_stream& stream, const std::string& host,
                      uint16_t port, std::string_view netns) {
  FL_ASSIGN_OR_RETURN(auto endpoints, resolve(ioc, host, port));
  error_code ec;
  if (netns.empty()) {
    ec = run(ioc, [&](auto h) { stream.async_connect(endpoints, std::move(h)); });
  } else {
    if (endpoints.empty())
      return make_error(Condition::transient, fmt::format("cannot resolve {}:{}", host, port));
    tcp::endpoint ep = endpoints.begin()->endpoint();
    FL_RETURN_IF_ERROR(open_in_netns(stream.socket(), ep.protocol(), netns));
    ec = run(ioc, [&](auto h) { stream.async_connect(ep, std::move(h)); });
  }
  if (!ec) return {};
  Error e = transport("cannot connect to", host, port, ec);
  if (!netns.empty()) e.message += fmt::format(" (from network namespace {})", netns);
  return e;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), ::tolower);
  return out;
}

Condition condition_for_status(int status) {
  switch (status) {
    case 400:
      return Condition::invalid_argument;
    case 401:
      return Condition::unauthenticated;
    case 403:
      return Condition::permission_denied;
    case 404:
      return Condition::not_found;
    default:
      return Condition::transient;
  }
}

}  // namespace

Result<std::string> netns_path(std::string_view netns) {
  auto bad = [&](std::string_view why) {
    return make_error(Condition::invalid_argument,
                      fmt::format("network namespace '{}': {}", netns.substr(0, 80), why));
  };
  if (netns.empty()) return bad("empty");
  if (netns.front() == '/') {
    if (netns.size() > 255) return bad("path longer than 255");
    if (netns.find("..") != std::string_view::npos) return bad("path with '..'");
    for (char c : netns) {
      if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f)
        return bad("whitespace or control character in the path");
    }
    return std::string(netns);
  }
  if (netns.size() > 64) return bad("name longer than 64");
  if (netns.front() == '.') return bad("name starts with '.'");
  for (char c : netns) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return bad("a name is [A-Za-z0-9._-] (or give an absolute path)");
    }
  }
  return "/run/netns/" + std::string(netns);
}

Result<ClientResponse> request(const std::string& host, uint16_t port, std::string_view method,
                               std::string_view target, std::string_view body,
                               std::string_view token, std::chrono::milliseconds timeout,
                               std::string_view netns) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  // One deadline for the whole exchange: tcp_stream's expiry holds until it is changed.
  stream.expires_after(timeout);
  FL_RETURN_IF_ERROR(connect_stream(ioc, stream, host, port, netns));

  bhttp::request<bhttp::string_body> req;
  req.method_string(beast::string_view(method.data(), method.size()));
  req.target(beast::string_view(target.data(), target.size()));
  req.version(11);
  req.set(bhttp::field::host, fmt::format("{}:{}", host, port));
  req.set(bhttp::field::user_agent, "fabriclab");
  req.keep_alive(false);
  if (!token.empty()) req.set(bhttp::field::authorization, fmt::format("Bearer {}", token));
  if (!body.empty()) {
    req.set(bhttp::field::content_type, "application/json");
    req.body() = std::string(body);
  }
  req.prepare_payload();

  auto write_ec = run(ioc, [&](auto h) { bhttp::async_write(stream, req, std::move(h)); });
  // A server that refuses a request early (413) may close before we finish writing; its
  // answer can still be waiting to be read, so try reading before reporting the write error.
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(kMaxResponseBody);
  auto read_ec = run(ioc, [&](auto h) { bhttp::async_read(stream, buffer, parser, std::move(h)); });
  if (read_ec) {
    if (write_ec)
      return transport(fmt::format("cannot send {} {} to", method, target), host, port, write_ec);
    return transport(fmt::format("no answer to {} {} from", method, target), host, port, read_ec);
  }
  auto& res = parser.get();
  ClientResponse out;
  out.status = static_cast<int>(res.result_int());
  out.body = std::move(res.body());
  for (const auto& f : res) out.headers[lower(f.name_string())] = std::string(f.value());
  error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  return out;
}

// WsClient

struct WsClient::Impl {
  explicit Impl(const std::string& h, uint16_t p) : host(h), port(p), ws(ioc) {}
  std::string host;
  uint16_t port;
  net::io_context ioc;
  websocket::stream<beast::tcp_stream> ws;
  beast::flat_buffer buffer;
  std::string close_reason;
};

WsClient::WsClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WsClient::~WsClient() { close(); }

Result<std::unique_ptr<WsClient>> WsClient::connect(const std::string& host, uint16_t port,
                                                    std::string_view target, std::string_view token,
                                                    std::chrono::milliseconds timeout,
                                                    std::string_view netns) {
  auto impl = std::make_unique<Impl>(host, port);
  auto& ioc = impl->ioc;
  auto& ws = impl->ws;
  auto& tcp_layer = beast::get_lowest_layer(ws);
  tcp_layer.expires_after(timeout);
  FL_RETURN_IF_ERROR(connect_stream(ioc, tcp_layer, host, port, netns));
  std::string auth = token.empty() ? std::string() : fmt::format("Bearer {}", token);
  ws.set_option(websocket::stream_base::decorator([auth](websocket::request_type& req) {
    req.set(bhttp::field::user_agent, "fabriclab");
    if (!auth.empty()) req.set(bhttp::field::authorization, auth);
  }));
  websocket::response_type res;
  std::string host_header = fmt::format("{}:{}", host, port);
  auto ec = run(ioc, [&](auto h) {
    ws.async_handshake(res, host_header, beast::string_view(target.data(), target.size()),
                       std::move(h));
  });
  if (ec) {
    if (ec == websocket::error::upgrade_declined) {
      int status = static_cast<int>(res.result_int());
      return make_error(
          condition_for_status(status),
          fmt::format("websocket upgrade to {} refused: HTTP {}: {}", target, status, res.body()));
    }
    return transport("websocket handshake with", host, port, ec);
  }
  tcp_layer.expires_never();
  return std::unique_ptr<WsClient>(new WsClient(std::move(impl)));
}

Result<std::string> WsClient::read(std::chrono::milliseconds timeout) {
  Impl& s = *impl_;
  if (!s.ws.is_open()) return make_error(Condition::invalid_state, "websocket is closed");
  beast::get_lowest_layer(s.ws).expires_after(timeout);
  auto ec = run(s.ioc, [&](auto h) { s.ws.async_read(s.buffer, std::move(h)); });
  beast::get_lowest_layer(s.ws).expires_never();
  // A close frame from the server ends the read with `closed`, or with the error of the close
  // reply when the server has already cut the socket; either way the reason arrived.
  if (ec == websocket::error::closed || (ec && s.ws.reason().code != websocket::close_code::none)) {
    s.close_reason = std::string(s.ws.reason().reason.c_str());
    return make_error(Condition::cancelled,
                      fmt::format("websocket closed by the server (code {}): {}",
                                  static_cast<int>(s.ws.reason().code), s.close_reason));
  }
  if (ec) return transport("websocket read from", s.host, s.port, ec);
  std::string text = beast::buffers_to_string(s.buffer.data());
  s.buffer.consume(s.buffer.size());
  return text;
}

Status WsClient::write(std::string_view text, std::chrono::milliseconds timeout) {
  Impl& s = *impl_;
  if (!s.ws.is_open()) return make_error(Condition::invalid_state, "websocket is closed");
  beast::get_lowest_layer(s.ws).expires_after(timeout);
  s.ws.text(true);
  auto ec = run(s.ioc, [&](auto h) {
    s.ws.async_write(net::buffer(text.data(), text.size()), std::move(h));
  });
  beast::get_lowest_layer(s.ws).expires_never();
  if (ec) return transport("websocket write to", s.host, s.port, ec);
  return {};
}

void WsClient::close() {
  if (!impl_) return;
  Impl& s = *impl_;
  if (s.ws.is_open()) {
    beast::get_lowest_layer(s.ws).expires_after(std::chrono::seconds(1));
    run(s.ioc, [&](auto h) { s.ws.async_close(websocket::close_code::normal, std::move(h)); });
  }
  beast::get_lowest_layer(s.ws).close();
}

std::string WsClient::close_reason() const { return impl_->close_reason; }

}  // namespace fabriclab::http
