// GuestApp (guest_app.hpp): the network, the HTTP server clients and the balancer see, and IMDS.

#include <poll.h>
#include <sys/reboot.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "guest_app.hpp"

namespace fabriclab::guest {

void GuestApp::network_timers(std::int64_t now) {
  if (!http_.listening() && now >= next_http_start_ms_) {
    // INADDR_ANY: listening needs no address yet, so the first probe after eth0 is up works.
    if (!http_.start(kHttpPort)) next_http_start_ms_ = now + kHttpRetryMs;
  }
  http_.expire(now);
  if (!net_->up()) {
    if (now >= next_net_ms_) {
      if (net_->step(now)) {
        next_imds_poll_ms_ = now;
      } else {
        next_net_ms_ = now + (now - start_ms_ < kFastScanWindowMs ? kNetFastMs : kNetSlowMs);
      }
    }
    if (!net_->up()) return;
  }
  imds_->expire(now);
  if (auto result = imds_->take_result()) on_imds_result(std::move(*result), now);
  if (imds_->busy()) return;
  if (auto event_id = drain_.take_due_approval(now)) {
    log("imds: approving %s: POST StartRequests", event_id->c_str());
    imds_request_ = ImdsRequest::approve;
    approving_id_ = *event_id;
    imds_->start("POST", kImdsEventsTarget, start_requests_body(*event_id), now);
    return;
  }
  if (now < next_imds_poll_ms_) return;
  next_imds_poll_ms_ = now + kImdsPollMs;
  if (imds_name_.empty() && (fallback_name_.empty() || now >= next_compute_ms_)) {
    imds_request_ = ImdsRequest::compute;
    imds_->start("GET", kImdsComputeTarget, {}, now);
  } else {
    imds_request_ = ImdsRequest::events;
    imds_->start("GET", kImdsEventsTarget, {}, now);
  }
}

void GuestApp::imds_trouble(Trouble& trouble, const char* what, const std::string& detail) {
  ++trouble.streak;
  if (trouble.streak == 1 || detail != trouble.last || trouble.streak % kImdsErrorLogEvery == 0) {
    log("imds: %s: %s (%llu failures in a row)", what, detail.c_str(),
        static_cast<unsigned long long>(trouble.streak));
  }
  trouble.last = detail;
}

void GuestApp::imds_fine(Trouble& trouble, const char* what) {
  if (trouble.streak > 0) {
    log("imds: %s answering again after %llu failures", what,
        static_cast<unsigned long long>(trouble.streak));
  }
  trouble = Trouble{};
}

std::string GuestApp::status_detail(const ImdsResult& result) {
  if (!result.ok) return result.error;
  std::string body = result.body.substr(0, 160);
  std::replace_if(
      body.begin(), body.end(), [](char c) { return c < 0x20 || c >= 0x7f; }, '?');
  return "HTTP " + std::to_string(result.status) + " " + body;
}

void GuestApp::on_imds_result(ImdsResult result, std::int64_t now) {
  const ImdsRequest request = std::exchange(imds_request_, ImdsRequest::none);
  switch (request) {
    case ImdsRequest::none:
      return;
    case ImdsRequest::compute: {
      if (!result.ok || result.status != 200) {
        imds_trouble(compute_trouble_, "compute metadata", status_detail(result));
        if (!fallback_name_.empty()) next_compute_ms_ = now + kComputeRetryWithFallbackMs;
        return;
      }
      std::string error;
      if (auto name = parse_imds_compute_name(result.body, error)) {
        imds_fine(compute_trouble_, "compute metadata");
        imds_name_ = *name;
        log("imds: this VM is '%s' (compute metadata)%s%s", imds_name_.c_str(),
            fallback_name_.empty() || fallback_name_ == imds_name_ ? "" : "; channel said ",
            fallback_name_ == imds_name_ ? "" : fallback_name_.c_str());
        next_imds_poll_ms_ = now;  // first scheduled-events poll right away
      } else {
        imds_trouble(compute_trouble_, "compute metadata ignored", error);
        if (!fallback_name_.empty()) next_compute_ms_ = now + kComputeRetryWithFallbackMs;
      }
      return;
    }
    case ImdsRequest::events: {
      if (!result.ok || result.status != 200) {
        imds_trouble(events_trouble_, "scheduled events", status_detail(result));
        return;
      }
      std::string error;
      auto doc = parse_imds_scheduled_events(result.body, error);
      if (!doc) {
        imds_trouble(events_trouble_, "scheduled events document ignored", error);
        return;
      }
      imds_fine(events_trouble_, "scheduled events");
      if (!events_seen_ || doc->incarnation != last_incarnation_) {
        log("imds: scheduled events incarnation %lld, %zu event(s)%s",
            static_cast<long long>(doc->incarnation), doc->events.size(),
            events_seen_ ? "" : " (first poll)");
        events_seen_ = true;
        last_incarnation_ = doc->incarnation;
      }
      drain_.on_document(*doc, vm_name(), now);
      return;
    }
    case ImdsRequest::approve: {
      DrainPolicy::Outcome outcome = DrainPolicy::Outcome::retry;
      if (result.ok && result.status == 200) {
        outcome = DrainPolicy::Outcome::accepted;
      } else if (result.ok && result.status >= 400 && result.status < 500 && result.status != 403 &&
                 result.status != 429) {
        outcome = DrainPolicy::Outcome::refused;
      }
      if (outcome != DrainPolicy::Outcome::accepted) {
        log("imds: approval of %s: %s", approving_id_.c_str(), status_detail(result).c_str());
      }
      drain_.approval_result(approving_id_, outcome, now);
      return;
    }
  }
}

HttpResponse GuestApp::on_http_request(const HttpRequest& request) {
  AppView view;
  view.health = config_.mode == Mode::fail_app ? AppView::Health::app_failed
                : drain_.draining()            ? AppView::Health::draining
                                               : AppView::Health::serving;
  view.instance = vm_name();
  view.image = config_.image;
  view.boot_id = boot_id_;
  view.counter = disk_.reported_counter();
  HttpResponse response = route(request, view);
  if (!first_request_logged_) {
    first_request_logged_ = true;
    log("http: first request served: %s %s -> %d", request.method.c_str(),
        request.path.substr(0, 64).c_str(), response.status);
  }
  return response;
}

}  // namespace fabriclab::guest
