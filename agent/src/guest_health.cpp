// Health and data for any guest (docs/own-image.md): the signals an operation reads besides our own
// channel's heartbeats. A guest that runs qemu-guest-agent (the libvirt convention) tells the
// agent that its OS is up (agent lifecycle events, guest-ping), gives its boot id and runs the
// service's data check (guest-exec). Whether its app is up is the load balancer's probe, which
// the orchestrator reads; a guest with neither heartbeats nor a guest agent relies on the probe
// alone, and the job's report says which signals there were.

#include <algorithm>
#include <cctype>
#include <set>
#include <thread>

#include "agent_impl.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/logging.hpp"
#include "instance_files.hpp"

namespace fabriclab::agent {

namespace {

constexpr milliseconds kPingTimeout{3000};
constexpr milliseconds kExecTimeout{30000};
// Reading the boot id is a guest-exec (fork and exec of cat inside the guest): a TCG guest on a
// loaded host can take several seconds for it, longer than a ping may.
constexpr milliseconds kBootIdTimeout{20000};
constexpr milliseconds kRetry{500};

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// The leading integer of a data check's output ("1234\n", "1234 writes"); nullopt otherwise.
std::optional<int64_t> leading_integer(const std::string& s) {
  const std::string t = trim(s);
  size_t i = (!t.empty() && t[0] == '-') ? 1 : 0;
  if (i >= t.size() || !std::isdigit(static_cast<unsigned char>(t[i]))) return std::nullopt;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i;
  if (i > 19) return std::nullopt;
  return std::stoll(t.substr(0, i));
}

// Whether `rule` holds from before to after; the error says why not.
Status rule_holds(const DataCheck& c, const std::string& before, const std::string& after) {
  if (c.rule == "equal") {
    if (before == after) return {};
    return make_error(Condition::invalid_state, "the output changed (rule equal): before '" +
                                                    trim(before) + "', after '" + trim(after) +
                                                    "'");
  }
  auto b = leading_integer(before), a = leading_integer(after);
  if (!b || !a) {
    return make_error(Condition::invalid_state,
                      std::string("rule not_less needs an integer, got ") +
                          (!b ? "before '" + trim(before) + "'" : "after '" + trim(after) + "'"));
  }
  if (*a >= *b) return {};
  return make_error(Condition::invalid_state, "the data went backwards: " + std::to_string(*b) +
                                                  " before, " + std::to_string(*a) +
                                                  " after (rule not_less)");
}

}  // namespace

bool HostAgent::Impl::builtin_locked(const std::string& name) const {
  for (const auto& r : state.instances) {
    if (r.name != name) continue;
    auto img = guest_store->get(r.meta.image);
    return !img.ok() || img->builtin();
  }
  return true;
}

void HostAgent::Impl::on_agent_lifecycle(const hypervisor::LifecycleEvent& e) {
  // libvirt's event thread: record and return.
  const bool up = e.kind == hypervisor::LifecycleKind::agent_connected;
  {
    std::lock_guard lock(mu);
    auto it = slots.find(e.domain);
    if (it == slots.end()) return;
    it->second.agent_connected = up;
    if (up) {
      it->second.agent_seen = true;
      it->second.agent_connected_at = e.at;
    }
  }
  cv.notify_all();
  publish("instance.guest_agent", {{"name", e.domain}, {"connected", up}});
}

// Runs the instance's data check through the guest agent: its stdout, or why it failed.
static Result<std::string> run_data_check(hypervisor::Domain& d, const DataCheck& c) {
  FL_ASSIGN_OR_RETURN(auto r, d.guest_exec(c.command, kExecTimeout));
  if (r.exit_code != 0) {
    return make_error(Condition::invalid_state,
                      "'" + c.command[0] + "' exited with " + std::to_string(r.exit_code) +
                          (r.err.empty() ? "" : ": " + trim(r.err).substr(0, 200)));
  }
  return r.out;
}

Result<std::string> HostAgent::data_check(const std::string& name) {
  auto& p = *impl_;
  std::optional<DataCheck> check;
  {
    std::lock_guard lock(p.mu);
    auto* rec = p.record_locked(name);
    if (!rec) return make_error(Condition::not_found, "no instance '" + name + "'");
    check = rec->data_check;
  }
  if (!check) return make_error(Condition::invalid_argument, name + " declares no data check");
  std::lock_guard lv(p.lv_mu);
  FL_ASSIGN_OR_RETURN(auto d, p.domain(name));
  return run_data_check(d, *check);
}

void HostAgent::Impl::capture_before(Job& job, const std::vector<std::string>& guests) {
  for (const auto& name : guests) {
    GuestReport* r = nullptr;
    std::optional<DataCheck> check;
    bool builtin = true, seen = false;
    {
      std::lock_guard lock(mu);
      r = report_of(job, name);
      builtin = builtin_locked(name);
      auto& slot = slots[name];
      seen = slot.agent_seen;
      r->signal_heartbeat = builtin && slot.heartbeats > 0;
      if (auto* rec = record_locked(name)) check = rec->data_check;
    }
    std::lock_guard lv(lv_mu);
    auto d = domain(name);
    if (!d.ok()) continue;
    // An agent restarted since the guest's agent connected has seen no event: ask it.
    if (!seen && d->guest_ping(kPingTimeout).ok()) {
      seen = true;
      std::lock_guard lock(mu);
      slots[name].agent_seen = true;
      slots[name].agent_connected = true;
    }
    r->signal_guest_agent = seen;
    if (seen && !builtin) {
      if (auto id = d->guest_boot_id(kBootIdTimeout); id.ok()) {
        r->boot_id_before = *id;
        r->boot_id_source = "guest_agent";
      } else {
        logger("agent")->warn("[host:{}] {}: no boot id before the notice: {}", opt.host_id, name,
                              id.error().message);
      }
    }
    if (check) {
      r->data_check = DataCheckReport{*check};
      if (!seen) {
        r->data_check->error = "no guest agent answered: the data check cannot run";
      } else if (auto out = run_data_check(*d, *check); out.ok()) {
        r->data_check->before = *out;
      } else {
        r->data_check->error = "before: " + out.error().message;
      }
    }
  }
}

void HostAgent::Impl::capture_after(GuestReport& r, const std::string& name) {
  bool builtin = true;
  {
    std::lock_guard lock(mu);
    builtin = builtin_locked(name);
    if (builtin) r.os_up = slots[name].first_hb_since_start.has_value();
    if (!r.boot_id_before.empty() && r.boot_id_source.empty()) r.boot_id_source = "heartbeat";
  }
  if (builtin && !r.data_check) return;
  std::lock_guard lv(lv_mu);
  auto d = domain(name);
  if (!d.ok()) return;
  const bool agent = d->guest_ping(kPingTimeout).ok();
  if (!builtin) r.os_up = agent || !r.signal_guest_agent;
  if (agent && !builtin) {
    if (auto id = d->guest_boot_id(kBootIdTimeout); id.ok()) {
      r.boot_id_after = *id;
      r.boot_id_source = "guest_agent";
    } else {
      logger("agent")->warn("[host:{}] {}: no boot id after the restart: {}", opt.host_id, name,
                            id.error().message);
    }
  }
  if (!r.data_check || !r.data_check->error.empty()) return;
  auto& dc = *r.data_check;
  if (!agent) {
    dc.error = "after: no guest agent answered after the restart";
    return;
  }
  // The guest agent answers before the app has mounted its data and started: while the command
  // fails (a missing file, a non-zero exit) it is run again, up to the boot timeout. Once it
  // succeeds its first output is judged: retrying a rule that does not hold would let a counter
  // that restarted from zero count its way past the old value.
  const auto deadline = Clock::now() + opt.boot_timeout;
  auto out = run_data_check(*d, dc.check);
  while (!out.ok() && Clock::now() < deadline && !stopping) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    out = run_data_check(*d, dc.check);
  }
  if (!out.ok()) {
    dc.error = "after: " + out.error().message;
    return;
  }
  dc.after = *out;
  auto held = rule_holds(dc.check, dc.before, dc.after);
  dc.ok = held.ok();
  if (!held.ok()) dc.error = held.error().message;
}

Status HostAgent::Impl::wait_os_up(const std::string& name, Clock::time_point, milliseconds timeout,
                                   bool expect_agent, const std::string& expect_boot_id) {
  const auto deadline = Clock::now() + timeout;
  bool os_up = false;
  while (Clock::now() < deadline && !stopping && !os_up) {
    {
      std::lock_guard lock(mu);
      auto& s = slots[name];
      if (s.status == InstanceStatus::failed &&
          s.domain_state == hypervisor::DomainState::shut_off) {
        return make_error(Condition::invalid_state, name + ": the VM stopped");
      }
      os_up =
          !expect_agent && s.expect_running && s.domain_state == hypervisor::DomainState::running;
    }
    if (expect_agent) {
      std::lock_guard lv(lv_mu);
      auto d = domain(name);
      if (d.ok() && d->guest_ping(kPingTimeout).ok()) {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
        auto id = expect_boot_id.empty()
                      ? Result<std::string>(expect_boot_id)
                      : d->guest_boot_id(std::clamp(left, milliseconds(1000), kBootIdTimeout));
        if (id.ok() && *id != expect_boot_id) {
          return make_error(Condition::invalid_state,
                            name +
                                ": the guest rebooted (boot_id changed) when its "
                                "memory should have been preserved");
        }
        os_up = id.ok();
      }
    }
    if (!os_up) {
      std::unique_lock lock(mu);
      wait_until(lock, Clock::now() + kRetry, [] { return false; });
    }
  }
  if (!os_up) {
    return make_error(Condition::timeout,
                      name +
                          (expect_agent ? ": the guest agent did not answer within "
                                        : ": the VM did not run within ") +
                          std::to_string(timeout.count()) + " ms after the start");
  }
  logger("agent")->info(
      "[host:{}] {}: OS up ({}) {} ms into the wait", opt.host_id, name,
      expect_agent ? "guest agent answered" : "VM running, no guest agent",
      std::chrono::duration_cast<milliseconds>(Clock::now() - (deadline - timeout)).count());
  return wait_app_probe(name, deadline);
}

Status HostAgent::Impl::wait_app_probe(const std::string& name, Clock::time_point deadline) {
  std::string address;
  AppProbe probe;
  {
    std::lock_guard lock(mu);
    if (auto* r = record_locked(name)) {
      address = r->address;
      probe = r->probe;
    }
  }
  if (probe.port == 0 || address.empty()) return {};  // no probe, or no network to run it on
  const std::string url = "http://" + address + ":" + std::to_string(probe.port) + probe.path;
  std::string last = "no answer";
  while (Clock::now() < deadline && !stopping) {
    auto r = http::request(address, static_cast<uint16_t>(probe.port), "GET", probe.path, {}, {},
                           kPingTimeout);
    if (r.ok() && r->status >= 200 && r->status < 400) return {};
    last = r.ok() ? "HTTP " + std::to_string(r->status) : r.error().message;
    std::unique_lock lock(mu);
    wait_until(lock, Clock::now() + kRetry, [] { return false; });
  }
  return make_error(Condition::timeout, name + ": the OS is up but the app probe GET " + url +
                                            " did not answer 2xx/3xx in time (last: " + last + ")");
}

void HostAgent::Impl::drop_unused_files(const std::string& name) {
  std::set<std::string> keep;
  std::string dir = instance_files_dir(vm_dir(), name);
  {
    std::lock_guard lock(mu);
    auto* r = record_locked(name);
    if (!r) return;
    keep = {r->os_disk, dir + "/boot-" + r->meta.image};
  }
  remove_unused_files(dir, keep);
}

}  // namespace fabriclab::agent
