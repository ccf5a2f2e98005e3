// The drill spec's fault schedule (rack/ fault_spec.hpp): every kind with its target, its
// moment and its duration as a user writes them, and what is refused with the entry named.

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "fabriclab/rack/spec.hpp"

namespace fabriclab {
namespace {

using rack::FaultAt;
using rack::parse_spec;

// The default rack (h0..h5, 3 FDs; hello-0, web-0..1, worker-0..2) with `faults`.
std::string with_faults(const std::string& faults) { return "faults:\n" + faults; }

std::string refusal(const std::string& yaml) {
  auto s = parse_spec(yaml);
  return s.ok() ? std::string() : s.error().message;
}

TEST(FaultSchedule, EveryKindIsReadWithItsTargetMomentAndDuration) {
  auto s = parse_spec(with_faults(
      "  - {kind: kill-agent, target: {host: h1}, at: {batch: 2, step: SwappingImage}, duration_s: "
      "5000}\n"
      "  - {kind: kill-orchestrator, at: {after_s: 3000}, duration_s: 2000}\n"
      "  - {kind: partition-host, target: {host: h2}, at: {batch: 1}, duration_s: 8000}\n"
      "  - {kind: kill-fault-domain, target: {fault_domain: 2}, at: {batch: 1, step: Rebooting}}\n"
      "  - {kind: guest-crash, target: {instance: web-0}, at: {after_s: 1000}}\n"
      "  - {kind: guest-hang, target: {instance: worker-1}, at: {batch: 1, step: Notifying}}\n"
      "  - {kind: slow-boot, target: {instance: web-1}, at: {batch: 1}, duration_s: 4000}\n"
      "  - {kind: corrupt-host-image, target: {host: h0}, at: {batch: 1, step: Notifying}}\n"
      "  - {kind: kill-agent, target: {host: h3}, at: {batch: 3}}\n"
      "  - {kind: kill-fault-domain, fault_domain: 0}\n"));
  ASSERT_TRUE(s.ok()) << s.error().message;
  ASSERT_EQ(s->faults.size(), 10u);
  const auto& f = s->faults;
  EXPECT_EQ(f[0].kind, "kill-agent");
  EXPECT_EQ(f[0].target_kind, "host");
  EXPECT_EQ(f[0].target, "h1");
  EXPECT_EQ(f[0].at.kind, FaultAt::Kind::batch);
  EXPECT_EQ(f[0].at.batch, 2);
  EXPECT_EQ(f[0].at.step, "SwappingImage");
  EXPECT_EQ(f[0].duration_s.value_or(-1), 5000);
  EXPECT_EQ(f[0].describe(), "kill-agent h1 at batch 2 SwappingImage for 5000 s");
  EXPECT_EQ(f[1].target_kind, "");
  EXPECT_EQ(f[1].where(), "orchestrator");
  EXPECT_EQ(f[1].at.kind, FaultAt::Kind::after);
  EXPECT_EQ(f[1].at.after_s, 3000);
  EXPECT_EQ(f[2].at.step, "");  // the batch's start
  EXPECT_EQ(f[3].fault_domain, 2);
  EXPECT_EQ(f[3].where(), "fault domain 2");
  EXPECT_EQ(f[4].target, "web-0");
  EXPECT_FALSE(f[5].duration_s.has_value());
  EXPECT_EQ(f[6].duration_s.value_or(-1), 4000);
  EXPECT_FALSE(f[8].duration_s.has_value());  // a killed agent that is never restarted
  // The old form: before the walk starts.
  EXPECT_EQ(f[9].at.kind, FaultAt::Kind::before_walk);
  EXPECT_EQ(f[9].fault_domain, 0);
  EXPECT_EQ(f[9].describe(), "kill-fault-domain fault domain 0 before the walk");
}

TEST(FaultSchedule, BadEntriesAreRefusedNamingTheEntryAndKey) {
  for (auto [yaml, key] : std::vector<std::pair<std::string, std::string>>{
           {"  - {kind: unplug, at: {batch: 1}}\n",
            "faults[0].kind: must be one of kill-agent, kill-orchestrator"},
           {"  - {at: {batch: 1}}\n", "faults[0].kind: is required"},
           {"  - {kind: kill-agent, at: {batch: 1}}\n",
            "faults[0].target: is required: {host: ...}"},
           {"  - {kind: kill-agent, target: {host: h6}, at: {batch: 1}}\n",
            "faults[0].target.host: 'h6' is not a host of the rack (h0..h5)"},
           {"  - {kind: kill-agent, target: {instance: web-0}, at: {batch: 1}}\n",
            "faults[0].target.instance: unknown key"},
           {"  - {kind: guest-crash, target: {instance: web-2}, at: {batch: 1}}\n",
            "faults[0].target.instance: 'web-2' is not an instance"},
           {"  - {kind: kill-fault-domain, target: {fault_domain: 3}, at: {batch: 1}}\n",
            "faults[0].target.fault_domain: must be an integer in 0..2"},
           {"  - {kind: kill-orchestrator, target: {host: h0}, at: {batch: 1}}\n",
            "faults[0].target: does not apply to kill-orchestrator"},
           {"  - {kind: kill-agent, target: {host: h0}}\n", "faults[0].at: is required"},
           {"  - {kind: kill-agent, target: {host: h0}, at: {batch: 0}}\n",
            "faults[0].at.batch: must be an integer in 1..1000"},
           {"  - {kind: kill-agent, target: {host: h0}, at: {batch: 1, step: Sleeping}}\n",
            "faults[0].at.step: must be one of Notifying, StoppingGuests"},
           {"  - {kind: kill-agent, target: {host: h0}, at: {batch: 1, after_s: 3}}\n",
            "faults[0].at: give either after_s or batch"},
           {"  - {kind: kill-agent, target: {host: h0}, at: {step: Notifying}}\n",
            "faults[0].at: needs batch"},
           {"  - {kind: kill-agent, target: {host: h0}, at: {after_s: -1}}\n",
            "faults[0].at.after_s: must be in 0..604800"},
           {"  - {kind: kill-agent, target: {host: h0}, at: {after_s: soon}}\n",
            "faults[0].at.after_s: must be a number"},
           {"  - {kind: kill-agent, target: {host: h0}, at: {when: 1}}\n",
            "faults[0].at.when: unknown key"},
           {"  - {kind: partition-host, target: {host: h0}, at: {batch: 1}}\n",
            "faults[0].duration_s: is required"},
           {"  - {kind: partition-host, target: {host: h0}, at: {batch: 1}, duration_s: 0}\n",
            "faults[0].duration_s: must be more than 0"},
           {"  - {kind: slow-boot, target: {instance: web-0}, at: {batch: 1}, duration_s: 90000}\n",
            "faults[0].duration_s: must be in 0..86400"},
           {"  - {kind: guest-hang, target: {instance: web-0}, at: {batch: 1}, duration_s: 3}\n",
            "faults[0].duration_s: does not apply to guest-hang"},
           {"  - {kind: kill-agent, fault_domain: 0, at: {batch: 1}}\n",
            "faults[0].fault_domain: unknown key"},
           {"  - {kind: kill-fault-domain, fault_domain: 0, target: {fault_domain: 1}}\n",
            "faults[0].fault_domain: give either target or fault_domain"},
           {"  - kill-agent\n", "faults[0]: must be a mapping"},
       }) {
    std::string why = refusal(with_faults(yaml));
    EXPECT_NE(why.find(key), std::string::npos) << yaml << " -> " << why;
  }
  EXPECT_NE(refusal("faults: {kind: kill-agent}\n").find("faults: must be a list"),
            std::string::npos);
  std::string many = "faults:\n";
  for (int i = 0; i < 33; ++i) many += "  - {kind: kill-orchestrator, at: {after_s: 1}}\n";
  EXPECT_NE(refusal(many).find("faults: at most 32 entries"), std::string::npos);
}

TEST(FaultSchedule, HostImageFaultsAndStepsNeedAHostOsUpdate) {
  std::string guest_os = "update: {kind: guest-os, target: v2}\n";
  EXPECT_NE(
      refusal(guest_os +
              with_faults("  - {kind: corrupt-host-image, target: {host: h0}, at: {batch: 1}}\n"))
          .find("faults[0].kind: corrupt-host-image needs a host-os update"),
      std::string::npos);
  EXPECT_NE(
      refusal(guest_os +
              with_faults(
                  "  - {kind: kill-agent, target: {host: h0}, at: {batch: 1, step: Rebooting}}\n"))
          .find("faults[0].at.step: Rebooting happens only in a host-os update"),
      std::string::npos);
  EXPECT_EQ(refusal(guest_os + with_faults("  - {kind: kill-agent, target: {host: h0}, at: {batch: "
                                           "1, step: StartingGuests}}\n")),
            "");
}

}  // namespace
}  // namespace fabriclab
