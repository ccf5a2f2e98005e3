#include "fabriclab/testbed/lab_guest.hpp"

#include <algorithm>

namespace fabriclab::testbed {

using Clock = std::chrono::steady_clock;

Result<LabGuest> LabGuest::create(hypervisor::Connection& conn, const std::string& name,
                                  const std::string& dir, const GuestImage& image,
                                  const GuestOptions& options,
                                  std::optional<hypervisor::InstanceMetadata> metadata) {
  FL_ASSIGN_OR_RETURN(auto spec, guest_spec(name, dir, image, options));
  spec.metadata = std::move(metadata);
  FL_ASSIGN_OR_RETURN(auto domain, conn.define(spec));
  return LabGuest(std::move(domain), spec.channel_socket);
}

void LabGuest::remember_heartbeat() {
  if (!link_) return;
  if (auto hb = link_->last_heartbeat()) last_heartbeat_ = std::get<agent::Heartbeat>(hb->message);
}

Result<Clock::time_point> LabGuest::connect_and_wait(Clock::time_point deadline) {
  remember_heartbeat();
  link_.reset();
  auto left = [&] {
    return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
                    std::chrono::milliseconds(1));
  };
  FL_ASSIGN_OR_RETURN(link_, agent::GuestLink::connect(socket_path_, left()));
  auto hb = link_->wait_for_heartbeat(left());
  if (!hb.ok()) {
    return make_error(hb.condition(), "guest '" + name() + "': " + hb.error().message);
  }
  last_heartbeat_ = std::get<agent::Heartbeat>(hb->message);
  return hb->at;
}

Result<std::chrono::milliseconds> LabGuest::start_and_wait(std::chrono::milliseconds timeout) {
  const auto t0 = Clock::now();
  FL_RETURN_IF_ERROR(domain_.start());
  FL_ASSIGN_OR_RETURN(auto at, connect_and_wait(t0 + timeout));
  return std::chrono::duration_cast<std::chrono::milliseconds>(at - t0);
}

Result<std::chrono::milliseconds> LabGuest::attach_and_wait(std::chrono::milliseconds timeout) {
  const auto t0 = Clock::now();
  FL_ASSIGN_OR_RETURN(auto at, connect_and_wait(t0 + timeout));
  return std::chrono::duration_cast<std::chrono::milliseconds>(at - t0);
}

Result<hypervisor::ShutdownResult> LabGuest::stop(const hypervisor::ShutdownOptions& options) {
  auto r = domain_.shutdown_ladder(options);
  if (link_) link_->wait_closed(std::chrono::seconds(2));
  remember_heartbeat();
  return r;
}

Status LabGuest::set_next_image(const GuestImage& image) {
  FL_ASSIGN_OR_RETURN(auto boot, domain_.boot_image());
  return domain_.set_boot_image({image.kernel, image.initrd, boot.cmdline});
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace fabriclab::testbed
