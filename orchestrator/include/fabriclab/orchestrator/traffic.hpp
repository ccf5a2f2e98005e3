#pragma once
// Client traffic: an open-loop generator that sends HTTP requests to each service's VIP at a
// steady rate while a drill runs, and records every request (send time, status or error,
// latency, the instance that answered). "Open loop": a request is sent on schedule whether or not
// earlier ones have answered, so an outage shows up as failed requests, not as a slower sender.
//
// The generator runs its own io thread. When `netns` is set, that thread enters the namespace
// once (setns(2)) before any socket exists, so every connection it opens lives in the namespace:
// the local rack's VIPs (198.18.1.0/24) exist only in its rack namespace.
//
// Requests: `GET path HTTP/1.1`, `Connection: close` (one connection per request, so the load
// balancer picks a backend per request, as it does per flow), with a per-request deadline.
// The instance that answered is taken from the response header `X-Served-By` (the load balancer
// sets it to its server name, which is the instance name).

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fabriclab/common/json.hpp"
#include "fabriclab/common/result.hpp"

namespace fabriclab::orchestrator {

// One service's stream of requests.
struct TrafficTarget {
  std::string service;
  std::string address;  // the VIP, dotted IPv4
  uint16_t port = 80;
  std::string path = "/";
  double rps = 20;  // requests per second, evenly spaced; 0.1..1000
};

struct TrafficOptions {
  std::string netns;  // namespace name or path (http_client.hpp netns_path); empty: our own
  std::chrono::milliseconds request_timeout{2000};  // connect + send + whole response
  size_t max_in_flight = 512;      // per generator; a request over it fails ("client overloaded")
  size_t max_records = 1'000'000;  // per service; later requests are counted, not recorded
};

// One request as the client saw it.
struct RequestRecord {
  int64_t sent_ms = 0;      // unix ms when it was sent (scheduled)
  int status = 0;           // HTTP status; 0 when there was no response (see error)
  std::string error;        // "" for a response; else e.g. "connect: Connection refused", "timeout"
  int64_t latency_ms = -1;  // until the whole response (or the error)
  std::string served_by;    // X-Served-By, "" when absent
  bool failed() const { return status < 200 || status >= 400; }
};

class TrafficGenerator {
 public:
  // Validates the targets (names, dotted IPv4, rps range; the error names the target) and starts
  // sending at once.
  static Result<std::unique_ptr<TrafficGenerator>> start(std::vector<TrafficTarget> targets,
                                                         TrafficOptions options = {});
  ~TrafficGenerator();  // stop()
  TrafficGenerator(const TrafficGenerator&) = delete;
  TrafficGenerator& operator=(const TrafficGenerator&) = delete;

  // Sends nothing new, waits for requests in flight (bounded by their deadline), joins the
  // thread. Idempotent.
  void stop();

  // Every request recorded so far, per service, in send order (a copy).
  std::map<std::string, std::vector<RequestRecord>> records() const;

  // Live counters for the feed's `traffic.stats` event:
  // {"services": {"web": {"requests": n, "failed": n, "in_flight": n, "rps": r,
  //                       "last_error": "..."}}}   (requests counts completed ones)
  json::object stats_json() const;

  struct Impl;

 private:
  explicit TrafficGenerator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fabriclab::orchestrator
