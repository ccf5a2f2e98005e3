#include "http.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <charconv>
#include <optional>

namespace fabriclab::guest {
namespace {

constexpr std::size_t kMaxResponseHeadBytes = 8 * 1024;

bool is_tchar(char c) {
  if (std::isalnum(static_cast<unsigned char>(c))) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_token(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), is_tchar);
}

// Field values: visible ASCII, obs-text, space and tab; no other control characters.
bool is_field_value(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) {
                       auto u = static_cast<unsigned char>(c);
                       return u == '\t' || u >= 0x20;
                     }) &&
         text.find('\x7f') == std::string_view::npos;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim_ows(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// Position just past the empty line that ends a head (CRLF or bare LF line ends), or npos.
// `first_line_start` skips leading empty lines (RFC 9112 2.2).
std::size_t find_head_end(std::string_view data, std::size_t& first_line_start) {
  std::size_t pos = 0;
  while (pos < data.size() && (data[pos] == '\r' || data[pos] == '\n')) ++pos;
  first_line_start = pos;
  while (pos < data.size()) {
    std::size_t nl = data.find('\n', pos);
    if (nl == std::string_view::npos) return std::string_view::npos;
    std::string_view line = data.substr(pos, nl - pos);
    if (line.empty() || line == "\r") return nl + 1;
    pos = nl + 1;
  }
  return std::string_view::npos;
}

// Splits the head [start, end) into lines without their line ends; calls `f(line)` per line
// until it returns false.
template <typename F>
bool for_each_line(std::string_view head, F&& f) {
  std::size_t pos = 0;
  while (pos < head.size()) {
    std::size_t nl = head.find('\n', pos);
    if (nl == std::string_view::npos) nl = head.size();
    std::string_view line = head.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = nl + 1;
    if (line.empty()) break;
    if (!f(line)) return false;
  }
  return true;
}

RequestParse bad(std::string error) {
  RequestParse result;
  result.kind = RequestParse::Kind::bad;
  result.error = std::move(error);
  return result;
}

ResponseParse bad_response(std::string error) {
  ResponseParse result;
  result.kind = ResponseParse::Kind::bad;
  result.error = std::move(error);
  return result;
}

HttpResponse text(int status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  return response;
}

// Decodes a chunked body from `data`. kind: complete (body set), incomplete, or bad.
ResponseParse decode_chunked(std::string_view data, std::size_t max_bytes) {
  ResponseParse result;
  std::size_t pos = 0;
  for (;;) {
    std::size_t nl = data.find('\n', pos);
    if (nl == std::string_view::npos) {
      if (data.size() - pos > 64) return bad_response("chunk size line too long");
      return result;  // incomplete
    }
    std::string_view line = data.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    line = line.substr(0, line.find(';'));  // chunk extensions are ignored
    line = trim_ows(line);
    std::size_t size = 0;
    auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), size, 16);
    if (line.empty() || line.size() > 8 || ec != std::errc{} || end != line.data() + line.size()) {
      return bad_response("bad chunk size");
    }
    pos = nl + 1;
    if (size == 0) {  // last chunk; trailers are not needed (the server closes)
      result.kind = ResponseParse::Kind::complete;
      return result;
    }
    if (result.body.size() + size > max_bytes) return bad_response("chunked body too large");
    if (data.size() - pos < size + 1) return result;  // incomplete (data + at least LF)
    result.body.append(data.substr(pos, size));
    pos += size;
    if (data[pos] == '\r') {
      if (data.size() - pos < 2) return result;
      ++pos;
    }
    if (data[pos] != '\n') return bad_response("chunk not followed by CRLF");
    ++pos;
  }
}

}  // namespace

RequestParse parse_http_request(std::string_view data, std::size_t max_head_bytes) {
  std::size_t start = 0;
  std::size_t end = find_head_end(data, start);
  if (end == std::string_view::npos) {
    if (data.size() > max_head_bytes) {
      RequestParse result;
      result.kind = RequestParse::Kind::too_large;
      result.error = "request head larger than " + std::to_string(max_head_bytes) + " bytes";
      return result;
    }
    return {};
  }
  if (end > max_head_bytes) {
    RequestParse result;
    result.kind = RequestParse::Kind::too_large;
    result.error = "request head larger than " + std::to_string(max_head_bytes) + " bytes";
    return result;
  }
  std::string_view head = data.substr(start, end - start);
  RequestParse result;
  std::string error;
  bool first = true;
  for_each_line(head, [&](std::string_view line) {
    if (first) {
      first = false;
      std::size_t sp1 = line.find(' ');
      std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
      if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
        error = "request line is not METHOD TARGET VERSION";
        return false;
      }
      std::string_view method = line.substr(0, sp1);
      std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
      std::string_view version = line.substr(sp2 + 1);
      if (!is_token(method) || method.size() > 32) {
        error = "bad method";
        return false;
      }
      if (target.empty() || target.size() > kMaxTargetBytes || target.front() != '/' ||
          !std::all_of(target.begin(), target.end(), [](char c) {
            auto u = static_cast<unsigned char>(c);
            return u > 0x20 && u < 0x7f;
          })) {
        error = "bad request target";
        return false;
      }
      if (version != "HTTP/1.1" && version != "HTTP/1.0") {
        error = "unsupported HTTP version";
        return false;
      }
      result.request.method = std::string(method);
      result.request.path = std::string(target.substr(0, target.find('?')));
      return true;
    }
    if (line.front() == ' ' || line.front() == '\t') {
      error = "obsolete header folding";
      return false;
    }
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon)) ||
        !is_field_value(line.substr(colon + 1))) {
      error = "malformed header line";
      return false;
    }
    return true;
  });
  if (first && error.empty()) error = "empty request";
  if (!error.empty()) return bad(std::move(error));
  result.kind = RequestParse::Kind::complete;
  return result;
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

std::string format_response(const HttpResponse& response, bool head_only) {
  std::string out = "HTTP/1.1 " + std::to_string(response.status) + " " +
                    std::string(reason_phrase(response.status)) + "\r\n";
  out += "Content-Type: " + response.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
  if (!response.allow.empty()) out += "Allow: " + response.allow + "\r\n";
  out += "Cache-Control: no-store\r\nConnection: close\r\nServer: fabriclab-guest\r\n\r\n";
  if (!head_only) out += response.body;
  return out;
}

HttpResponse route(const HttpRequest& request, const AppView& view) {
  if (request.method != "GET" && request.method != "HEAD") {
    HttpResponse response = text(405, "method not allowed\n");
    response.allow = "GET, HEAD";
    return response;
  }
  if (request.path == "/health") {
    switch (view.health) {
      case AppView::Health::serving:
        return text(200, "ok\n");
      case AppView::Health::draining:
        return text(503, "draining\n");
      case AppView::Health::app_failed:
        return text(503, "app failed\n");
    }
  }
  if (request.path == "/") {
    if (view.health == AppView::Health::app_failed) return text(503, "app failed\n");
    boost::json::object object;
    object["instance"] = view.instance;
    object["image"] = view.image;
    object["boot_id"] = view.boot_id;
    object["counter"] = view.counter;
    HttpResponse response = text(200, boost::json::serialize(object) + "\n");
    response.content_type = "application/json";
    return response;
  }
  return text(404, "not found\n");
}

HttpResponse bad_request_response(const RequestParse& parse) {
  if (parse.kind == RequestParse::Kind::too_large) return text(431, parse.error + "\n");
  return text(400, "bad request: " + parse.error + "\n");
}

ResponseParse parse_http_response(std::string_view data, bool eof, std::size_t max_bytes) {
  if (data.size() > max_bytes) {
    return bad_response("response larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::size_t start = 0;
  std::size_t end = find_head_end(data, start);
  if (end == std::string_view::npos) {
    if (data.size() > kMaxResponseHeadBytes) return bad_response("response head too large");
    if (eof)
      return bad_response(data.empty() ? "connection closed without a response"
                                       : "connection closed inside the response head");
    return {};
  }
  if (end > kMaxResponseHeadBytes) return bad_response("response head too large");
  std::string_view head = data.substr(start, end - start);
  int status = 0;
  bool first = true;
  bool chunked = false;
  std::optional<std::size_t> content_length;
  std::string error;
  for_each_line(head, [&](std::string_view line) {
    if (first) {
      first = false;
      if (line.size() < 12 || !(line.starts_with("HTTP/1.1 ") || line.starts_with("HTTP/1.0 ")) ||
          (line.size() > 12 && line[12] != ' ')) {
        error = "bad status line";
        return false;
      }
      auto [p, ec] = std::from_chars(line.data() + 9, line.data() + 12, status);
      if (ec != std::errc{} || p != line.data() + 12 || status < 100 || status > 599) {
        error = "bad status code";
        return false;
      }
      return true;
    }
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) {
      error = "malformed header line";
      return false;
    }
    std::string_view name = line.substr(0, colon);
    std::string_view value = trim_ows(line.substr(colon + 1));
    if (iequals(name, "Content-Length")) {
      std::size_t length = 0;
      auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), length);
      if (value.empty() || ec != std::errc{} || p != value.data() + value.size() ||
          (content_length && *content_length != length)) {
        error = "bad Content-Length";
        return false;
      }
      content_length = length;
    } else if (iequals(name, "Transfer-Encoding")) {
      if (!iequals(value, "chunked")) {
        error = "unsupported Transfer-Encoding";
        return false;
      }
      chunked = true;
    }
    return true;
  });
  if (!error.empty()) return bad_response(std::move(error));
  if (chunked && content_length) return bad_response("both Content-Length and chunked");
  std::string_view rest = data.substr(end);
  ResponseParse result;
  result.status = status;
  if (status < 200 || status == 204 || status == 304) {
    if (status < 200) return bad_response("interim responses are not expected");
    result.kind = ResponseParse::Kind::complete;
    return result;
  }
  if (chunked) {
    ResponseParse body = decode_chunked(rest, max_bytes);
    if (body.kind == ResponseParse::Kind::incomplete && eof) {
      return bad_response("connection closed inside a chunked body");
    }
    body.status = status;
    return body;
  }
  if (content_length) {
    if (*content_length > max_bytes) return bad_response("Content-Length too large");
    if (rest.size() < *content_length) {
      if (eof) return bad_response("connection closed before Content-Length bytes");
      return result;
    }
    result.body = std::string(rest.substr(0, *content_length));
    result.kind = ResponseParse::Kind::complete;
    return result;
  }
  if (!eof) return result;  // close-delimited
  result.body = std::string(rest);
  result.kind = ResponseParse::Kind::complete;
  return result;
}

std::string format_imds_request(std::string_view method, std::string_view target,
                                std::string_view host, std::string_view json_body) {
  std::string out;
  out.append(method).append(" ").append(target).append(" HTTP/1.1\r\n");
  out.append("Host: ").append(host).append("\r\n");
  out += "Metadata: true\r\nUser-Agent: fabriclab-guest\r\nConnection: close\r\n";
  if (!json_body.empty() || method == "POST") {
    out += "Content-Type: application/json\r\nContent-Length: " + std::to_string(json_body.size()) +
           "\r\n";
  }
  out += "\r\n";
  out.append(json_body);
  return out;
}

}  // namespace fabriclab::guest
