// The host's scheduled event: what the guests see of a maintenance operation, through their
// integration channel and through IMDS, and how they approve it.
//
// One operation at a time means at most one event. Its life: post_event (Scheduled, NotBefore
// = now + notice) -> start_event when StoppingGuests begins (Started, NotBefore "") ->
// end_event when the job ends (removed; Azure has no Completed status). Every change bumps the
// persisted DocumentIncarnation, sends the new document to every affected guest that has a
// channel link, and publishes `imds.event`. Approvals (a channel ack or an IMDS StartRequests
// from a guest in Resources) are kept per guest; notify_guests waits on them.

#include <algorithm>

#include "agent_impl.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::agent {

namespace {

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

json::object event_fields(const ScheduledEvent& e, uint64_t incarnation) {
  return {{"event_id", e.event_id},
          {"event_type", e.event_type},
          {"status", e.event_status},
          {"not_before", e.not_before},
          {"resources", json::value_from(e.resources)},
          {"incarnation", incarnation}};
}

}  // namespace

void HostAgent::Impl::send_event_doc_locked(const std::vector<std::string>& guests) {
  ScheduledEventsDoc doc{static_cast<int64_t>(state.imds_incarnation), {}};
  if (event) doc.events.push_back(event->event);
  const std::string line = guestproto::to_line(doc);
  for (const auto& name : guests) {
    auto it = slots.find(name);
    if (it != slots.end() && it->second.link) (void)it->second.link->send_line(line);
  }
}

void HostAgent::Impl::event_changed_locked(const std::vector<std::string>& guests) {
  ++state.imds_incarnation;
  (void)persist_locked();
  send_event_doc_locked(guests);
}

void HostAgent::Impl::announce_event(json::object fields) {
  cv.notify_all();
  publish("imds.event", std::move(fields));
}

void HostAgent::Impl::post_event(ScheduledEvent ev) {
  json::object fields;
  {
    std::lock_guard lock(mu);
    event = EventState{std::move(ev), {}};
    event_changed_locked(event->event.resources);
    fields = event_fields(event->event, state.imds_incarnation);
  }
  announce_event(std::move(fields));
}

void HostAgent::Impl::start_event() {
  json::object fields;
  {
    std::lock_guard lock(mu);
    if (!event || event->event.event_status != "Scheduled") return;
    event->event.event_status = "Started";
    event->event.not_before.clear();
    event_changed_locked(event->event.resources);
    fields = event_fields(event->event, state.imds_incarnation);
  }
  announce_event(std::move(fields));
}

void HostAgent::Impl::resume_event(const OperationRecord& op) {
  if (op.event_id.empty() || op.running_before.empty()) return;
  ScheduledEvent ev;
  ev.event_id = op.event_id;
  ev.resources = op.running_before;
  const bool freeze = op.request.kind == OperationKind::freeze || op.request.memory_preserving;
  ev.event_type = freeze ? "Freeze" : "Reboot";
  ev.event_status = "Started";
  ev.description =
      "fabriclab " + std::string(to_string(op.request.kind)) + " maintenance (resumed)";
  ev.duration_seconds = -1;
  post_event(std::move(ev));
}

void HostAgent::Impl::end_event() {
  json::object fields;
  {
    std::lock_guard lock(mu);
    if (!event) return;
    fields = event_fields(event->event, 0);
    const auto guests = event->event.resources;
    event.reset();
    event_changed_locked(guests);
    fields["status"] = "Removed";
    fields["incarnation"] = state.imds_incarnation;
  }
  announce_event(std::move(fields));
}

bool HostAgent::Impl::approve_locked(const std::string& name, const std::string& event_id,
                                     Clock::time_point at) {
  if (!event || event->event.event_id != event_id || !contains(event->event.resources, name)) {
    return false;
  }
  event->approved.emplace(name, at);  // the first approval counts
  return true;
}

// ---------------------------------------------------------------------------------------------
// The IMDS view

std::optional<std::string> HostAgent::instance_at(const std::string& address) const {
  if (address.empty()) return std::nullopt;
  std::lock_guard lock(impl_->mu);
  for (const auto& r : impl_->state.instances) {
    if (r.address == address) return r.name;
  }
  return std::nullopt;
}

json::object HostAgent::scheduled_events_for(const std::string& name) const {
  std::lock_guard lock(impl_->mu);
  ScheduledEventsDoc doc{static_cast<int64_t>(impl_->state.imds_incarnation), {}};
  if (impl_->event && contains(impl_->event->event.resources, name))
    doc.events.push_back(impl_->event->event);
  return guestproto::to_json(doc);
}

Status HostAgent::approve_events(const std::string& name,
                                 const std::vector<std::string>& event_ids) {
  auto& p = *impl_;
  std::vector<std::string> fresh;  // approvals that are new (published once each)
  {
    std::lock_guard lock(p.mu);
    // All or nothing: check every id before recording any.
    for (const auto& id : event_ids) {
      if (!p.event || p.event->event.event_id != id || !contains(p.event->event.resources, name)) {
        return make_error(Condition::not_found,
                          "EventId '" + id.substr(0, 64) + "' is not a scheduled event of " + name);
      }
    }
    for (const auto& id : event_ids) {
      if (!p.event->approved.count(name)) fresh.push_back(id);
      p.approve_locked(name, id, Clock::now());
    }
  }
  p.cv.notify_all();
  for (const auto& id : fresh)
    p.publish("instance.ack", {{"name", name}, {"event_id", id}, {"via", "imds"}});
  return {};
}

Result<json::object> HostAgent::compute_metadata(const std::string& name) const {
  std::lock_guard lock(impl_->mu);
  const auto* r = impl_->record_locked(name);
  if (!r) return make_error(Condition::not_found, "instance '" + name + "' not found");
  const std::string sub = "00000000-0000-0000-0000-000000000000";
  return json::object{{"azEnvironment", "fabriclab"},
                      {"location", "fabriclab"},
                      {"name", r->name},
                      {"offer", "fabriclab-guest"},
                      {"osType", "Linux"},
                      {"platformFaultDomain", std::to_string(r->meta.fd)},
                      {"platformUpdateDomain", std::to_string(r->meta.ud)},
                      {"publisher", "fabriclab"},
                      {"resourceGroupName", "fabriclab"},
                      {"resourceId", "/subscriptions/" + sub +
                                         "/resourceGroups/fabriclab/providers/"
                                         "Microsoft.Compute/virtualMachines/" +
                                         r->name},
                      {"sku", r->meta.image},
                      {"subscriptionId", sub},
                      {"tags", "service:" + r->meta.service + ";index:" +
                                   std::to_string(r->meta.index) + ";host:" + impl_->opt.host_id},
                      {"version", r->meta.image},
                      {"vmId", r->vm_id},
                      {"vmScaleSetName", ""},
                      {"vmSize", "Fabriclab_" + std::to_string(r->memory_mib) + "MiB"},
                      {"zone", ""}};
}

Result<json::object> HostAgent::network_metadata(const std::string& name) const {
  std::lock_guard lock(impl_->mu);
  const auto* r = impl_->record_locked(name);
  if (!r) return make_error(Condition::not_found, "instance '" + name + "' not found");
  std::string mac;
  for (char c : r->mac) {
    if (c != ':') mac += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  json::array subnet;
  if (impl_->subnet)
    subnet.push_back(json::object{{"address", impl_->subnet->network()}, {"prefix", "24"}});
  json::object ipv4{{"ipAddress", json::array{json::object{{"privateIpAddress", r->address},
                                                           {"publicIpAddress", ""}}}},
                    {"subnet", std::move(subnet)}};
  return json::object{
      {"interface", json::array{json::object{{"ipv4", std::move(ipv4)},
                                             {"ipv6", json::object{{"ipAddress", json::array{}}}},
                                             {"macAddress", mac}}}}};
}

}  // namespace fabriclab::agent
