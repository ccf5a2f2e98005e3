// Fault injection for a test rack's fault schedule (host_agent.hpp inject_fault, docs/faults.md).
// Only an agent started with --fault-injection serves it; the rack's fault executor calls it for
// what only the agent can do to a guest: a simulated guest's crash (the test driver has no QEMU
// process to kill), a guest that ignores the power button, a boot that comes late. Each fault is
// logged and published as `instance.fault` on the agent's feed, so nobody mistakes it for a bug.
#include <boost/json.hpp>

#include "agent_impl.hpp"
#include "fabriclab/common/json.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::agent {

inline constexpr int64_t kMaxInjectedBootDelayMs = 600000;

milliseconds HostAgent::Impl::take_boot_delay(const std::string& name) {
  std::lock_guard lock(mu);
  hung.erase(name);  // a fresh boot answers the power button again
  auto it = slow_boot.find(name);
  if (it == slow_boot.end()) return milliseconds(0);
  auto d = it->second;
  slow_boot.erase(it);
  return d;
}

bool HostAgent::Impl::is_hung(const std::string& name) {
  std::lock_guard lock(mu);
  return hung.count(name) > 0;
}

bool HostAgent::fault_injection() const { return impl_->opt.fault_injection; }

Result<json::object> HostAgent::inject_fault(const json::object& body) {
  Impl& p = *impl_;
  if (!p.opt.fault_injection)
    return make_error(Condition::unsupported, "fault injection is off (--fault-injection)");
  FL_RETURN_IF_ERROR(check_fields(body, {"kind", "instance", "delay_ms"}));
  FL_ASSIGN_OR_RETURN(auto kind, get_string(body, "kind", 32));
  FL_ASSIGN_OR_RETURN(auto name, get_string(body, "instance", 128));
  if (kind != "guest-crash" && kind != "guest-hang" && kind != "slow-boot") {
    return make_error(Condition::invalid_argument,
                      "field 'kind' must be guest-crash, guest-hang or slow-boot");
  }
  FL_ASSIGN_OR_RETURN(auto delay, get_optional_int(body, "delay_ms", 1, kMaxInjectedBootDelayMs));
  if (kind == "slow-boot" && !delay)
    return make_error(Condition::invalid_argument, "field 'delay_ms' is required for slow-boot");
  if (kind != "slow-boot" && delay)
    return make_error(Condition::invalid_argument, "field 'delay_ms' applies to slow-boot only");
  {
    std::lock_guard lock(p.mu);
    if (!p.record_locked(name))
      return make_error(Condition::not_found, "instance '" + name + "' is not on this host");
    if (kind == "guest-hang") p.hung[name] = true;
    if (kind == "slow-boot") p.slow_boot[name] = milliseconds(*delay);
  }
  if (kind == "guest-crash") {
    // As a crash: the VM goes away under the agent, which still expects it to run (its monitor
    // reports it failed and starts it again, as for any VM that stopped on its own).
    std::lock_guard lv(p.lv_mu);
    FL_ASSIGN_OR_RETURN(auto d, p.domain(name));
    auto st = d.state();
    if (!st.ok() || *st == hypervisor::DomainState::shut_off) {
      return make_error(Condition::invalid_state, "instance '" + name + "' is not running");
    }
    FL_RETURN_IF_ERROR(d.destroy());
    std::lock_guard lock(p.mu);
    auto& slot = p.slots[name];
    if (slot.sim) slot.sim->power_off(false);
  }
  logger("agent")->warn("[host:{}] injected fault {} on {}", p.opt.host_id, kind, name);
  json::object ev{{"name", name}, {"kind", kind}};
  if (delay) ev["delay_ms"] = *delay;
  p.publish("instance.fault", ev);
  ev["injected"] = true;
  return ev;
}

}  // namespace fabriclab::agent
