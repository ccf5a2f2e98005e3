// The guest channel's round trip: every message kind written by one side parses on the other side
// to an equal message, and bad lines are refused with an error naming the problem. Built the way
// the guest program is (Boost.JSON header-only, testbed/guest/protocol.cpp compiled in), so the
// guest's own entry points (heartbeat_line, parse_host_line, ...) are exercised against the
// library the host agent and the simulated guest use (fabriclab/guestproto).

#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>
#include <string>
#include <variant>
#include <vector>

#include "fabriclab/guestproto/protocol.hpp"
#include "protocol.hpp"  // testbed/guest

namespace fabriclab::guestproto {

namespace {

ScheduledEvent event(std::string id, std::string status, std::vector<std::string> resources) {
  ScheduledEvent e;
  e.event_id = std::move(id);
  e.event_type = "Freeze";
  e.event_status = std::move(status);
  e.resources = std::move(resources);
  e.not_before = "Mon, 19 Sep 2016 18:29:47 GMT";
  e.description = "Host OS update (memory-preserving): the VM is paused and resumed";
  e.duration_seconds = 9;
  return e;
}

// What the guest writes, at the limits where a limit exists.
std::vector<GuestMessage> guest_messages() {
  return {
      Heartbeat{7, "0123456789abcdef0123456789abcdef", "v2", 41, 123456, "normal"},
      Heartbeat{1, std::string(kMaxNameBytes, 'b'), std::string(kMaxNameBytes, 'i'), -1, 0,
                "fail-app"},
      Heartbeat{static_cast<std::uint64_t>(INT64_MAX), "b", "", INT64_MAX,
                static_cast<std::uint64_t>(INT64_MAX), ""},
      Ack{"602d9444-d2cd-49c7-8624-8643e7171297"},
      Ack{std::string(kMaxEventIdBytes, 'e')},
      InstanceAck{"web", 3, 2, 1},
      InstanceAck{std::string(kMaxNameBytes, 's'), static_cast<int>(kMaxIndex),
                  static_cast<int>(kMaxUpdateDomain), static_cast<int>(kMaxFaultDomain)},
      Final{"b0", 12, true},
      Final{"b0", -1, false},
      GuestError{"app failed to start (fail-app mode)"},
      GuestError{std::string(kMaxTextBytes, 'm')},
  };
}

// What the host writes.
std::vector<HostMessage> host_messages() {
  ScheduledEvent defaults;  // Reboot, Scheduled, no NotBefore, DurationInSeconds -1
  defaults.event_id = "E0";
  return {
      InstanceIdentity{"web", 3, 2, 1, "host-a"},
      InstanceIdentity{"db", static_cast<int>(kMaxIndex), static_cast<int>(kMaxUpdateDomain),
                       static_cast<int>(kMaxFaultDomain), std::string(kMaxHostBytes, 'h')},
      ScheduledEventsDoc{1, {}},
      ScheduledEventsDoc{4, {defaults}},
      ScheduledEventsDoc{INT64_MAX,
                         {event("E1", "Scheduled", {"web-0", "web-1"}), event("E2", "Started", {}),
                          event(std::string(kMaxEventIdBytes, 'e'), "Scheduled",
                                {std::string(kMaxNameBytes, 'r')})}},
  };
}

TEST(GuestChannel, EveryGuestMessageRoundTripsToTheHost) {
  for (const GuestMessage& sent : guest_messages()) {
    const std::string line = to_line(sent);
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
    auto got = parse_guest_line(line);
    ASSERT_TRUE(got.ok()) << line << " -> " << got.error().message;
    EXPECT_EQ(type_name(*got), type_name(sent)) << line;
    EXPECT_TRUE(*got == sent) << line;
  }
}

TEST(GuestChannel, EveryHostMessageRoundTripsToTheGuest) {
  for (const HostMessage& sent : host_messages()) {
    const std::string line = to_line(sent);
    auto got = parse_host_line(line);
    ASSERT_TRUE(got.ok()) << line << " -> " << got.error().message;
    EXPECT_EQ(type_name(*got), type_name(sent)) << line;
    EXPECT_TRUE(*got == sent) << line;
  }
}

// The guest program's own entry points write what the host reads, and read what the host writes.
TEST(GuestChannel, TheGuestProgramsLinesAreTheLibrarysLines) {
  const std::string boot_id = "cafe", image = "v1";
  auto hb = parse_guest_line(guest::heartbeat_line({9, boot_id, image, 5, 1500, "normal"}));
  ASSERT_TRUE(hb.ok()) << hb.error().message;
  EXPECT_TRUE(std::get<Heartbeat>(*hb) == (Heartbeat{9, "cafe", "v1", 5, 1500, "normal"}));

  auto ack = parse_guest_line(guest::ack_line("E1"));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(std::get<Ack>(*ack).event_id, "E1");

  auto fin = parse_guest_line(guest::final_line("cafe", 6, true));
  ASSERT_TRUE(fin.ok());
  EXPECT_TRUE(std::get<Final>(*fin) == (Final{"cafe", 6, true}));

  auto err = parse_guest_line(guest::error_line("no app"));
  ASSERT_TRUE(err.ok());
  EXPECT_EQ(std::get<GuestError>(*err).message, "no app");

  const InstanceIdentity identity{"web", 4, 3, 999, "host-b"};
  guest::HostMessage read = guest::parse_host_line(to_line(identity));
  ASSERT_TRUE(std::holds_alternative<guest::InstanceInfo>(read));
  EXPECT_TRUE(std::get<guest::InstanceInfo>(read) == identity);
  auto iack = parse_guest_line(guest::instance_ack_line(std::get<guest::InstanceInfo>(read)));
  ASSERT_TRUE(iack.ok());
  EXPECT_TRUE(std::get<InstanceAck>(*iack) == acknowledge(identity));

  const ScheduledEventsDoc doc{3, {event("E1", "Scheduled", {"web-4"})}};
  read = guest::parse_host_line(to_line(doc));
  ASSERT_TRUE(std::holds_alternative<ScheduledEventsDoc>(read));
  EXPECT_TRUE(std::get<ScheduledEventsDoc>(read) == doc);

  // IMDS serves the same document without "type"; the guest app reads it with the same rules.
  std::string error;
  auto imds = guest::parse_imds_scheduled_events(boost::json::serialize(to_json(doc)), error);
  ASSERT_TRUE(imds.has_value()) << error;
  EXPECT_TRUE(*imds == doc);
}

struct BadLine {
  std::string line;
  std::string expect;  // a part of the error message
};

void expect_refused(const std::vector<BadLine>& cases, bool guest_to_host) {
  for (const BadLine& c : cases) {
    std::string message;
    if (guest_to_host) {
      auto r = parse_guest_line(c.line);
      ASSERT_FALSE(r.ok()) << c.line;
      EXPECT_EQ(r.condition(), Condition::invalid_argument) << c.line;
      message = r.error().message;
    } else {
      auto r = parse_host_line(c.line);
      ASSERT_FALSE(r.ok()) << c.line;
      EXPECT_EQ(r.condition(), Condition::invalid_argument) << c.line;
      message = r.error().message;
    }
    EXPECT_NE(message.find(c.expect), std::string::npos) << c.line << " -> " << message;
  }
}

TEST(GuestChannel, TheHostRefusesBadGuestLinesNamingTheField) {
  const std::string hb = R"({"type":"heartbeat","seq":1,"boot_id":"b","image":"v1","counter":1,)";
  expect_refused(
      {
          {"", "line is not JSON"},
          {"[1]", "line is not a JSON object"},
          {R"({"type":7})", "message.type must be a string"},
          {R"({"type":")" + std::string(kMaxTypeBytes + 1, 't') + R"("})",
           "message.type is longer than 32 bytes"},
          {hb + R"("uptime_ms":-5})", "heartbeat.uptime_ms is out of range 0.."},
          {hb + R"("uptime_ms":1.5})", "heartbeat.uptime_ms must be an integer"},
          {hb + R"("uptime_ms":1,"mode":")" + std::string(kMaxWordBytes + 1, 'm') + "\"}",
           "heartbeat.mode is longer than 32 bytes"},
          {R"({"type":"heartbeat","seq":1,"boot_id":"b","counter":-2,"image":"v","uptime_ms":1})",
           "heartbeat.counter is out of range -1.."},
          {R"({"type":"heartbeat","seq":1,"counter":1,"image":"v","uptime_ms":1})",
           "heartbeat.boot_id is missing"},
          {R"({"type":"ack","EventId":""})", "ack.EventId is empty"},
          {R"({"type":"ack","EventId":")" + std::string(kMaxEventIdBytes + 1, 'e') + "\"}",
           "ack.EventId is longer than 128 bytes"},
          {R"({"type":"instance_ack","service":"","index":0,"platformUpdateDomain":0,)"
           R"("platformFaultDomain":0})",
           "instance_ack.service is empty"},
          {R"({"type":"instance_ack","service":"w","index":0,"platformUpdateDomain":0,)"
           R"("platformFaultDomain":1001})",
           "instance_ack.platformFaultDomain is out of range 0..1000"},
          {R"({"type":"final","boot_id":"b","counter":1,"clean":"yes"})",
           "final.clean must be a boolean"},
          {R"({"type":"error"})", "error.message is missing"},
      },
      true);
  // A type the host does not know is its own condition (the guest program logs host lines of
  // unknown types; the host drops guest lines of unknown types).
  auto unknown = parse_guest_line(R"({"type":"instance"})");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.condition(), Condition::unsupported);
  EXPECT_EQ(unknown.error().message, "message.type 'instance' is unknown");
}

TEST(GuestChannel, TheGuestRefusesBadHostLinesNamingTheField) {
  const std::string doc = R"({"type":"scheduled_events","DocumentIncarnation":1,"Events":)";
  const std::string ev = doc + R"([{"EventId":"E","EventStatus":"Scheduled",)";
  expect_refused(
      {
          {"{" + std::string(kMaxLineBytes, ' ') + "}", "line is longer than 64 KiB"},
          {R"({"type":"instance","service":"w","index":0,"platformUpdateDomain":20,)"
           R"("platformFaultDomain":0})",
           "instance.platformUpdateDomain is out of range 0..19"},
          {R"({"type":"instance","service":"w","index":100001,"platformUpdateDomain":0,)"
           R"("platformFaultDomain":0})",
           "instance.index is out of range 0..100000"},
          {R"({"type":"instance","index":0,"platformUpdateDomain":0,"platformFaultDomain":0})",
           "instance.service is missing"},
          {R"({"type":"instance","service":"w","index":0,"platformUpdateDomain":0,)"
           R"("platformFaultDomain":0,"host":5})",
           "instance.host must be a string"},
          {R"({"type":"scheduled_events","Events":[]})",
           "scheduled_events.DocumentIncarnation is missing"},
          {doc + R"("x"})", "scheduled_events.Events must be an array"},
          {doc + "[1]}", "scheduled_events.Events[0] must be an object"},
          {doc + R"([{"EventId":"E"}]})", "scheduled_events.Events[0].EventStatus is missing"},
          {ev + R"("Resources":[1]}]})",
           "scheduled_events.Events[0].Resources must hold strings of at most 64 bytes"},
          {ev + R"("DurationInSeconds":-2}]})",
           "scheduled_events.Events[0].DurationInSeconds is out of range -1.."},
          {ev + R"("Description":")" + std::string(kMaxTextBytes + 1, 'd') + R"("}]})",
           "scheduled_events.Events[0].Description is longer than 1024 bytes"},
          {doc + "[" + std::string(kMaxDepth, '[') + std::string(kMaxDepth, ']') + "]}",
           "line is not JSON"},
      },
      false);
  std::string many = doc + "[";
  for (std::size_t i = 0; i <= kMaxEvents; ++i) {
    many += std::string(i ? "," : "") + R"({"EventId":"E","EventStatus":"Scheduled"})";
  }
  expect_refused({{many + "]}", "scheduled_events.Events holds more than 256 events"}}, false);
}

// The guest program sorts what it cannot use: not a message (dropped and counted), bad fields of
// a known type (answered with an error line the host can read), an unknown type (logged).
TEST(GuestChannel, TheGuestProgramSortsTheLinesItCannotUse) {
  auto bad = guest::parse_host_line("{\"type\":");
  ASSERT_TRUE(std::holds_alternative<guest::BadLine>(bad));
  EXPECT_NE(std::get<guest::BadLine>(bad).reason.find("not JSON"), std::string::npos);
  EXPECT_TRUE(std::holds_alternative<guest::BadLine>(guest::parse_host_line(R"({"a":1})")));

  auto fields = guest::parse_host_line(
      R"({"type":"instance","service":"w","index":-1,"platformUpdateDomain":0,)"
      R"("platformFaultDomain":0})");
  ASSERT_TRUE(std::holds_alternative<guest::BadFields>(fields));
  const std::string& why = std::get<guest::BadFields>(fields).message;
  EXPECT_EQ(why, "instance.index is out of range 0..100000");
  auto answer = parse_guest_line(guest::error_line(why));
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(std::get<GuestError>(*answer).message, why);

  auto other = guest::parse_host_line(R"({"type":"resize","cpus":4})");
  ASSERT_TRUE(std::holds_alternative<guest::OtherType>(other));
  EXPECT_EQ(std::get<guest::OtherType>(other).type, "resize");
}

}  // namespace
}  // namespace fabriclab::guestproto
