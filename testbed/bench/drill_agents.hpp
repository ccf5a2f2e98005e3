// fabriclab-bench-drill, internal: the rack's agents as the bench reads them. Raw REST calls
// (`Agents::call`), each agent's event history (`agent_events`), and what a history says about a
// drill: one host's job and step times (`host_steps`), one guest's stop -> first heartbeat of the
// new boot (`guest_drill`). Also `keep_consoles`, which saves the VMs' console logs before a
// teardown removes them.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "drill_util.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/lab.hpp"

namespace fabriclab::bench_drill {

struct AgentRef {
  std::string name, address;
  uint16_t port = 0;
};

class Agents {
 public:
  // The agents' addresses exist only in the lab's rack namespace when it has one.
  Agents(const rack::Lab& lab) : token_(lab.control_token()), netns_(lab.agent_netns()) {
    for (const auto& a : lab.agents())
      agents_[a.name] = {a.name, a.address, static_cast<uint16_t>(a.port)};
  }
  const AgentRef* find(const std::string& host) const {
    auto it = agents_.find(host);
    return it == agents_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, AgentRef>& all() const { return agents_; }
  const std::string& token() const { return token_; }
  const std::string& netns() const { return netns_; }

  // One REST call to an agent, its answer parsed; a non-2xx answer is an error naming the call.
  Result<json::value> call(const AgentRef& a, std::string_view method, const std::string& target,
                           std::chrono::milliseconds timeout = 10s) const;

 private:
  std::string token_;
  std::string netns_;
  std::map<std::string, AgentRef> agents_;
};

struct Event {
  int64_t t_ms = 0;
  std::string type;
  json::object o;
};

// The agent's event history up to `until_ms` (its websocket backlog from seq 0). `complete` is
// false when the ring no longer held the start (the server then sends a snapshot first).
Result<std::vector<Event>> agent_events(const Agents& agents, const AgentRef& a, int64_t until_ms,
                                        bool& complete);

// Copies every VM's console log (LAB/hN/vm/*.console.log) to LAB/consoles/ before the teardown
// removes the state directories.
void keep_consoles(const std::string& dir);

// The drill's own timings from the agents' event histories.

struct HostSteps {
  std::string host, job;
  int64_t started = -1, done = -1;
  std::map<std::string, int64_t> step_at;  // first time each step was entered
  std::string status;
  int64_t step_ms(const std::string& from, const std::string& to) const {
    auto a = step_at.find(from);
    int64_t b = -1;
    if (to == "done") {
      b = done;
    } else if (auto it = step_at.find(to); it != step_at.end()) {
      b = it->second;
    }
    return a == step_at.end() || b < 0 ? -1 : b - a->second;
  }
  int64_t job_ms() const { return started < 0 || done < 0 ? -1 : done - started; }
};

inline const std::vector<std::pair<std::string, std::string>> kStepSpans = {
    {"Notifying", "StoppingGuests"}, {"StoppingGuests", "SwappingImage"},
    {"SwappingImage", "Rebooting"},  {"Rebooting", "StartingGuests"},
    {"StartingGuests", "Verifying"}, {"Verifying", "done"}};
inline const std::vector<std::string> kStepNames = {"notify", "stop",  "swap",
                                                    "reboot", "start", "verify"};

// One host's job in [from_ms, to_ms] (1 s of slack each side): its start, steps and end.
HostSteps host_steps(const std::string& host, const std::vector<Event>& ev, int64_t from_ms,
                     int64_t to_ms);

// One guest's drill cycle as the agent's events show it: stop begun -> first heartbeat of the
// new boot.
struct GuestDrill {
  int64_t last_hb_before = -1, stopping = -1, stopped = -1, starting = -1, first_hb = -1;
};

GuestDrill guest_drill(const std::string& name, const std::vector<Event>& ev, int64_t from_ms,
                       int64_t to_ms);

}  // namespace fabriclab::bench_drill
