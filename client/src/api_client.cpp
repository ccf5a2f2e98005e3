// The orchestrator's REST API from the CLI (api_client.hpp).
#include "fabriclab/client/api_client.hpp"

#include <signal.h>

#include <algorithm>
#include <boost/json.hpp>
#include <thread>

#include "fabriclab/common/http_client.hpp"

namespace fabriclab::client {

namespace {
constexpr size_t kMaxAnswer = 64 << 20;  // a report of a large rack
constexpr int kMaxDepth = 64;
}  // namespace

std::atomic<bool>& interrupted() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace {
void on_interrupt(int) { interrupted() = true; }
}  // namespace

void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
}

bool sleep_unless_interrupted(std::chrono::milliseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!interrupted()) {
    auto now = std::chrono::steady_clock::now();
    if (now >= until) return true;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(until - now, std::chrono::milliseconds(50)));
  }
  return false;
}

Result<OrchestratorClient> OrchestratorClient::from_url(const std::string& url, std::string token) {
  std::string_view t = url;
  if (t.starts_with("http://")) t.remove_prefix(7);
  while (t.ends_with("/")) t.remove_suffix(1);
  auto colon = t.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || t.find('/') != std::string_view::npos) {
    return make_error(Condition::invalid_argument,
                      "orchestrator URL '" + url + "' must be http://HOST:PORT");
  }
  int port = 0;
  try {
    size_t used = 0;
    port = std::stoi(std::string(t.substr(colon + 1)), &used);
    if (used != t.size() - colon - 1) port = 0;
  } catch (const std::exception&) {
    port = 0;
  }
  if (port < 1 || port > 65535) {
    return make_error(Condition::invalid_argument,
                      "orchestrator URL '" + url + "' has no valid port");
  }
  OrchestratorClient c;
  c.host_ = std::string(t.substr(0, colon));
  c.port_ = static_cast<uint16_t>(port);
  c.token_ = std::move(token);
  return c;
}

Result<json::value> OrchestratorClient::get(const std::string& target) const {
  return call("GET", target, "");
}

Result<json::value> OrchestratorClient::post(const std::string& target,
                                             const json::value& body) const {
  return call("POST", target, json::serialize(body));
}

Result<std::string> OrchestratorClient::get_text(const std::string& target) const {
  return call_raw("GET", target, "");
}

Result<std::string> OrchestratorClient::call_raw(std::string_view method, const std::string& target,
                                                 const std::string& body) const {
  const std::string what = std::string(method) + " " + url() + target;
  // A POST may create and boot VMs on the agents (services, healing): give it longer.
  auto timeout =
      method == "POST" ? std::max(timeout_, std::chrono::milliseconds(120000)) : timeout_;
  auto r = http::request(host_, port_, method, target, body, token_, timeout);
  if (!r.ok()) return make_error(r.error().condition, what + ": " + r.error().message);
  if (r->status >= 200 && r->status <= 299) return std::move(r->body);
  std::string msg = "HTTP " + std::to_string(r->status);
  Condition c = r->status == 401   ? Condition::unauthenticated
                : r->status == 404 ? Condition::not_found
                : r->status == 409 ? Condition::invalid_state
                : r->status < 500  ? Condition::invalid_argument
                                   : Condition::internal;
  auto parsed = parse_json(r->body, kMaxAnswer, kMaxDepth, "answer");
  if (parsed.ok() && parsed->is_object()) {
    if (auto* e = parsed->as_object().if_contains("error"); e && e->is_object()) {
      if (auto* m = e->as_object().if_contains("message"); m && m->is_string())
        msg += ": " + std::string(m->as_string());
    }
  }
  return make_error(c, what + ": " + msg);
}

Result<json::value> OrchestratorClient::call(std::string_view method, const std::string& target,
                                             const std::string& body) const {
  FL_ASSIGN_OR_RETURN(auto text, call_raw(method, target, body));
  auto parsed = parse_json(text, kMaxAnswer, kMaxDepth, "answer");
  if (!parsed.ok()) {
    return make_error(Condition::internal,
                      std::string(method) + " " + url() + target + ": " + parsed.error().message);
  }
  return std::move(parsed).value();
}

}  // namespace fabriclab::client
