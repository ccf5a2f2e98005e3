#include "fabriclab/agent/guest_protocol.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>

namespace fabriclab::agent {
namespace {

TEST(GuestProtocol, ParsesEveryGuestMessage) {
  auto hb = parse_guest_line(
      R"({"type":"heartbeat","seq":3,"boot_id":"ab12","image":"v1","counter":7,"uptime_ms":3000,"mode":"normal"})");
  ASSERT_TRUE(hb.ok()) << hb.error().describe();
  auto& h = std::get<Heartbeat>(*hb);
  EXPECT_EQ(h.seq, 3u);
  EXPECT_EQ(h.image, "v1");
  EXPECT_EQ(h.counter, 7);

  auto ack = parse_guest_line(R"({"type":"ack","EventId":"e-1"})");
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(std::get<Ack>(*ack).event_id, "e-1");

  auto ia = parse_guest_line(
      R"({"type":"instance_ack","service":"web","index":1,"platformUpdateDomain":1,"platformFaultDomain":1})");
  ASSERT_TRUE(ia.ok());
  EXPECT_EQ(std::get<InstanceAck>(*ia).update_domain, 1);

  auto fin = parse_guest_line(R"({"type":"final","boot_id":"ab12","counter":9,"clean":true})");
  ASSERT_TRUE(fin.ok());
  EXPECT_TRUE(std::get<Final>(*fin).clean);
}

TEST(GuestProtocol, RejectsBadLinesNamingTheProblem) {
  struct Case {
    std::string line;
    std::string expect;
  } cases[] = {
      {"not json", "not JSON"},
      {"[1,2]", "not a JSON object"},
      {R"({"seq":1})", "message.type is missing"},
      {R"({"type":"heartbeat","seq":-1,"boot_id":"a","image":"v1","counter":1,"uptime_ms":1})",
       "heartbeat.seq"},
      {R"({"type":"heartbeat","seq":1,"boot_id":"a","image":"v1","counter":"x","uptime_ms":1})",
       "heartbeat.counter"},
      {R"({"type":"heartbeat","seq":1,"boot_id":"","image":"v1","counter":1,"uptime_ms":1})",
       "heartbeat.boot_id"},
      {R"({"type":"ack"})", "ack.EventId is missing"},
      {R"({"type":"instance_ack","service":"w","index":0,"platformUpdateDomain":99,"platformFaultDomain":0})",
       "platformUpdateDomain"},
      {R"({"type":"final","boot_id":"a","counter":1})", "final.clean"},
      {R"({"type":"ack","EventId":"x","deep":[[[[[[[[[[1]]]]]]]]]]})", "not JSON"},
  };
  for (const auto& c : cases) {
    auto r = parse_guest_line(c.line);
    ASSERT_FALSE(r.ok()) << c.line;
    EXPECT_EQ(r.condition(), Condition::invalid_argument);
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos)
        << c.line << " -> " << r.error().message;
  }
  // A well-formed line of a type the host does not know is dropped too, with its own condition.
  auto bogus = parse_guest_line(R"({"type":"bogus"})");
  ASSERT_FALSE(bogus.ok());
  EXPECT_EQ(bogus.condition(), Condition::unsupported);
  EXPECT_NE(bogus.error().message.find("'bogus' is unknown"), std::string::npos);
  std::string huge = R"({"type":"error","message":")" + std::string(70000, 'x') + "\"}";
  EXPECT_NE(parse_guest_line(huge).error().message.find("64 KiB"), std::string::npos);
}

TEST(GuestProtocol, HostLinesFollowTheAzureShapes) {
  namespace json = boost::json;
  auto inst =
      json::parse(guestproto::to_line(InstanceIdentity{"web", 1, 1, 1, "host-a"})).as_object();
  EXPECT_EQ(inst["type"].as_string(), "instance");
  EXPECT_EQ(inst["platformUpdateDomain"].as_int64(), 1);
  EXPECT_EQ(inst["platformFaultDomain"].as_int64(), 1);

  ScheduledEvent e;
  e.event_id = "E1";
  e.resources = {"web-1"};
  e.not_before = "Mon, 19 Sep 2016 18:29:47 GMT";
  auto doc = json::parse(guestproto::to_line(ScheduledEventsDoc{4, {e}})).as_object();
  EXPECT_EQ(doc["DocumentIncarnation"].as_int64(), 4);
  auto& ev = doc["Events"].as_array()[0].as_object();
  EXPECT_EQ(ev["EventType"].as_string(), "Reboot");
  EXPECT_EQ(ev["ResourceType"].as_string(), "VirtualMachine");
  EXPECT_EQ(ev["EventStatus"].as_string(), "Scheduled");
  EXPECT_EQ(ev["EventSource"].as_string(), "Platform");
  EXPECT_EQ(ev["Resources"].as_array()[0].as_string(), "web-1");
}

}  // namespace
}  // namespace fabriclab::agent
