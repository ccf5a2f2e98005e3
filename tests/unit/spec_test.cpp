// Drill specs (rack/ spec.hpp) and the service's data check on the orchestrator's side
// (cluster.hpp): what a user writes, what is refused and with which key named, and what goes on
// the wire. The shipped specs must load, debian-web with its two updates and its data check.

#include "fabriclab/rack/spec.hpp"

#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>
#include <string>
#include <utility>
#include <vector>

#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab {
namespace {

using rack::parse_spec;

// The error of a spec that must be refused ("" when it was accepted).
std::string refusal(const std::string& yaml) {
  auto s = parse_spec(yaml);
  return s.ok() ? std::string() : s.error().message;
}

std::string with_service(const std::string& extra) {
  return "services:\n  - {name: web, instances: 2, endpoint: {port: 80}" + extra + "}\n";
}

TEST(SpecDataCheck, IsReadWithItsDefaultRuleAndSentAsTheOrchestratorsWireForm) {
  auto s = parse_spec(with_service(", data_check: {command: [/bin/cat, /data/counter]}"));
  ASSERT_TRUE(s.ok()) << s.error().message;
  ASSERT_TRUE(s->services[0].data_check.has_value());
  EXPECT_EQ(s->services[0].data_check->command,
            (std::vector<std::string>{"/bin/cat", "/data/counter"}));
  EXPECT_EQ(s->services[0].data_check->rule, "not_less");
  json::object body = rack::service_body(s->services[0], s->time_scale);
  EXPECT_EQ(json::serialize(body.at("data_check")),
            R"({"command":["/bin/cat","/data/counter"],"rule":"not_less"})");
  // The orchestrator reads the same body back into its service.
  auto svc = orchestrator::service_from_json(body);
  ASSERT_TRUE(svc.ok()) << svc.error().message;
  ASSERT_TRUE(svc->data_check.has_value());
  EXPECT_EQ(svc->data_check->command, s->services[0].data_check->command);
  EXPECT_EQ(svc->data_check->rule, "not_less");

  s = parse_spec(
      with_service(", data_check: {command: [/usr/bin/sha256sum, /data/file], rule: equal}"));
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->services[0].data_check->rule, "equal");
  EXPECT_FALSE(parse_spec(with_service(""))->services[0].data_check.has_value());
  EXPECT_FALSE(
      rack::service_body(parse_spec(with_service(""))->services[0], 0.001).contains("data_check"));
}

TEST(SpecDataCheck, BadChecksAreRefusedNamingTheKeyPath) {
  const std::string long_arg(257, 'a');
  for (auto [extra, key] : std::vector<std::pair<std::string, std::string>>{
           {", data_check: {rule: equal}", "services[0].data_check.command: is required"},
           {", data_check: {command: []}",
            "services[0].data_check.command: must be a list of 1..16 strings"},
           {", data_check: {command: /bin/cat}", "services[0].data_check.command: must be a list"},
           {", data_check: {command: [a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]}",
            "services[0].data_check.command: must be"},
           {", data_check: {command: [cat, /data/counter]}",
            "services[0].data_check.command[0]: must be an absolute path"},
           {", data_check: {command: [/bin/cat, \"\"]}",
            "services[0].data_check.command[1]: must be 1..256 characters"},
           {", data_check: {command: [/bin/cat, " + long_arg + "]}",
            "services[0].data_check.command[1]: must be 1..256"},
           {", data_check: {command: [/bin/cat, \"a\\nb\"]}",
            "services[0].data_check.command[1]: must not hold NUL or a newline"},
           {", data_check: {command: [/bin/cat, \"a\\0b\"]}",
            "services[0].data_check.command[1]: must not hold NUL"},
           {", data_check: {command: [/bin/cat, [x]]}",
            "services[0].data_check.command[1]: must be a string"},
           {", data_check: {command: [/bin/cat], rule: bigger}",
            "services[0].data_check.rule: must be one of equal, not_less"},
           {", data_check: {command: [/bin/cat], shell: true}",
            "services[0].data_check.shell: unknown key"},
       }) {
    std::string why = refusal(with_service(extra));
    EXPECT_NE(why.find(key), std::string::npos) << extra << " -> " << why;
  }
}

TEST(SpecUpdates, SeveralUpdatesRunInOrderAndFaultsGoWithTheFirst) {
  auto s = parse_spec(
      "updates:\n  - {kind: host-os, target: host-v2}\n  - {kind: guest-os, target: debian-v2}\n"
      "  - {kind: guest-os}\n  - {kind: freeze}\nfaults: [{kind: kill-fault-domain, fault_domain: "
      "0}]\n");
  ASSERT_TRUE(s.ok()) << s.error().message;
  ASSERT_EQ(s->updates.size(), 4u);
  EXPECT_EQ(s->kind, "host-os");
  EXPECT_EQ(s->target, "host-v2");
  EXPECT_EQ(s->updates[1].target, "debian-v2");
  EXPECT_EQ(s->updates[2].target, "v2");  // guest-os's default target
  EXPECT_EQ(s->updates[3].target, "");
  auto second = rack::for_update(*s, 1);
  EXPECT_EQ(second.kind, "guest-os");
  EXPECT_EQ(second.target, "debian-v2");
  EXPECT_TRUE(second.faults.empty());
  EXPECT_EQ(rack::for_update(*s, 0).faults.size(), 1u);
  // One update: the old form, one entry.
  s = parse_spec("update: {kind: guest-os, target: v2}\n");
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->updates.size(), 1u);
  EXPECT_EQ(s->updates[0].kind, "guest-os");
  EXPECT_EQ(rack::default_spec().updates.size(), 1u);
  EXPECT_EQ(rack::default_spec().updates[0].target, "host-v2");
}

TEST(SpecUpdates, BadUpdatesAreRefusedNamingTheKey) {
  for (auto [yaml, key] : std::vector<std::pair<std::string, std::string>>{
           {"update: {kind: host-os}\nupdates: [{kind: guest-os}]\n",
            "updates: give either update or updates, not both"},
           {"updates: []\n", "updates: must be a list of 1..4 updates"},
           {"updates: {kind: host-os}\n", "updates: must be a list"},
           {"updates: [{kind: host-os}, {kind: host-os}, {kind: host-os}, {kind: host-os}, {kind: "
            "host-os}]\n",
            "updates: must be a list of 1..4"},
           {"updates: [{kind: host-os}, {target: v2}]\n", "updates[1].kind: is required"},
           {"updates: [{kind: host-os}, {kind: reboot}]\n", "updates[1].kind: must be one of"},
           {"updates: [{kind: host-os, target: \"a b\"}]\n", "updates[0].target: may hold only"},
           {"updates: [{kind: host-os, when: now}]\n", "updates[0].when: unknown key"},
           {"updates: [host-os]\n", "updates[0]: must be a mapping"},
       }) {
    std::string why = refusal(yaml);
    EXPECT_NE(why.find(key), std::string::npos) << yaml << " -> " << why;
  }
}

TEST(SpecShipped, DebianWebRunsAHostOsThenAGuestOsDrillWithADataCheck) {
  auto s = rack::load_spec(std::string(FABRICLAB_SPECS_DIR) + "/debian-web.yaml");
  ASSERT_TRUE(s.ok()) << s.error().message;
  ASSERT_EQ(s->updates.size(), 2u);
  EXPECT_EQ(s->updates[0].kind, "host-os");
  EXPECT_EQ(s->updates[0].target, "host-v2");
  EXPECT_EQ(s->updates[1].kind, "guest-os");
  EXPECT_EQ(s->updates[1].target, "debian-v2");
  ASSERT_EQ(s->services.size(), 1u);
  const auto& web = s->services[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.instances, 2);
  EXPECT_EQ(web.image, "debian-v1");
  ASSERT_TRUE(web.endpoint.has_value());
  EXPECT_EQ(web.endpoint->port, 80);
  EXPECT_EQ(web.endpoint->probe_path, "/health");
  EXPECT_TRUE(web.drain);
  ASSERT_TRUE(web.data_check.has_value());
  EXPECT_EQ(web.data_check->command, (std::vector<std::string>{"/bin/cat", "/data/counter"}));
  EXPECT_EQ(web.data_check->rule, "not_less");
  EXPECT_EQ(s->hosts, 2);
  EXPECT_EQ(s->fault_domains, 2);
  EXPECT_EQ(s->hypervisor, "qemu");
}

TEST(SpecShipped, EveryShippedSpecLoads) {
  for (const char* name :
       {"host-os", "guest-os", "broken-patch", "fd-failure", "no-drain", "debian-web"}) {
    auto s = rack::load_spec(std::string(FABRICLAB_SPECS_DIR) + "/" + name + ".yaml");
    EXPECT_TRUE(s.ok()) << name << ": " << (s.ok() ? "" : s.error().message);
  }
}

// POST /v1/services checks the data check with the same limits and names the field in full.
TEST(ServiceDataCheck, TheOrchestratorRefusesABadOneNamingTheField) {
  auto service = [](json::value data_check) {
    return json::object{{"name", "web"},
                        {"instance_count", 2},
                        {"image", "v1"},
                        {"data_check", std::move(data_check)}};
  };
  json::array too_many;
  for (int i = 0; i < 17; ++i) too_many.emplace_back("/x");
  for (auto [dc, key] : std::vector<std::pair<json::value, std::string>>{
           {json::object{{"rule", "equal"}}, "data_check.command is required"},
           {json::object{{"command", json::array{}}}, "data_check.command must hold 1..16 strings"},
           {json::object{{"command", too_many}}, "data_check.command must have at most 16 items"},
           {json::object{{"command", json::array{"cat"}}},
            "data_check.command[0] must be an absolute path"},
           {json::object{{"command", json::array{"/bin/cat", 5}}},
            "data_check.command[1] must be a string"},
           {json::object{{"command", json::array{"/bin/cat", std::string(257, 'a')}}},
            "data_check.command[1] must be 1..256 bytes"},
           {json::object{{"command", json::array{"/bin/cat", "a\nb"}}},
            "data_check.command[1] must not hold NUL or a newline"},
           {json::object{{"command", json::array{"/bin/cat"}}, {"rule", "more"}},
            "data_check.rule must be one of equal, not_less"},
           {json::object{{"command", json::array{"/bin/cat"}}, {"shell", true}},
            "data_check: unknown field 'shell'"},
           {json::value("cat"), "field 'data_check' must be an object"},
       }) {
    auto r = orchestrator::service_from_json(service(dc));
    ASSERT_FALSE(r.ok()) << json::serialize(dc);
    EXPECT_NE(r.error().message.find(key), std::string::npos)
        << json::serialize(dc) << " -> " << r.error().message;
  }
  // Journaled with the cluster document: to_json and back give the same check.
  auto ok = orchestrator::service_from_json(service(
      json::object{{"command", json::array{"/bin/cat", "/data/counter"}}, {"rule", "equal"}}));
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  auto again = orchestrator::service_from_json(orchestrator::to_json(*ok));
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->data_check, ok->data_check);
  EXPECT_EQ(again->data_check->rule, "equal");
}

}  // namespace
}  // namespace fabriclab
