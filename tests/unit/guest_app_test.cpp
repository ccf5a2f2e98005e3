// The built-in guest's pure parts, compiled straight from testbed/guest (the guest is a static
// program, not a library): HTTP request/response parsing and routing, the kernel command line's
// network keys, IMDS document parsing and the drain/approve decisions.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "boot_env.hpp"
#include "drain.hpp"
#include "http.hpp"
#include "network.hpp"
#include "protocol.hpp"

namespace fabriclab::guest {
namespace {

using Kind = RequestParse::Kind;

TEST(GuestHttp, ParsesACompleteRequestHeadAndDropsTheQuery) {
  auto parse = parse_http_request("GET /health?x=1 HTTP/1.1\r\nHost: a\r\nMetadata: true\r\n\r\n");
  ASSERT_EQ(parse.kind, Kind::complete) << parse.error;
  EXPECT_EQ(parse.request.method, "GET");
  EXPECT_EQ(parse.request.path, "/health");
  EXPECT_EQ(parse_http_request("HEAD / HTTP/1.0\n\n").kind, Kind::complete);
}

TEST(GuestHttp, WaitsForTheEndOfTheHeadAndBoundsIt) {
  EXPECT_EQ(parse_http_request("GET /health HTTP/1.1\r\nHost: a\r\n").kind, Kind::incomplete);
  EXPECT_EQ(parse_http_request("").kind, Kind::incomplete);
  std::string big = "GET / HTTP/1.1\r\nX: " + std::string(9000, 'a');
  EXPECT_EQ(parse_http_request(big).kind, Kind::too_large);
  EXPECT_EQ(parse_http_request(big + "\r\n\r\n").kind, Kind::too_large);
  EXPECT_EQ(bad_request_response(parse_http_request(big)).status, 431);
}

TEST(GuestHttp, RejectsGarbage) {
  for (const std::string& bad : std::vector<std::string>{
           "garbage\r\n\r\n", "GET /health\r\n\r\n", "GET health HTTP/1.1\r\n\r\n",
           "GET /a b HTTP/1.1\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "PRI * HTTP/2.0\r\n\r\n",
           "GET / HTTP/1.1\r\nno colon\r\n\r\n", "GET / HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n",
           std::string("GET / HTTP/1.1\r\nX: a\x01"
                       "b\r\n\r\n"),
           std::string("G\0T / HTTP/1.1\r\n\r\n", 19)}) {
    auto parse = parse_http_request(bad);
    EXPECT_EQ(parse.kind, Kind::bad) << bad;
    EXPECT_EQ(bad_request_response(parse).status, 400) << bad;
  }
}

TEST(GuestHttp, HealthFollowsTheAppState) {
  AppView view{.instance = "web-0", .image = "v1", .boot_id = "b1", .counter = 7};
  HttpRequest health{"GET", "/health"};
  const struct {
    AppView::Health health;
    int status;
    std::string_view body;
  } cases[] = {{AppView::Health::serving, 200, "ok\n"},
               {AppView::Health::draining, 503, "draining\n"},
               {AppView::Health::app_failed, 503, "app failed\n"}};
  for (const auto& c : cases) {
    view.health = c.health;
    EXPECT_EQ(route(health, view).status, c.status) << c.body;
    EXPECT_EQ(route(health, view).body, c.body);
  }
}

TEST(GuestHttp, RootIsJsonOtherPathsAre404OtherMethods405) {
  AppView view{.instance = "web-\"0", .image = "v2", .boot_id = "abc", .counter = 42};
  HttpResponse root = route({"GET", "/"}, view);
  EXPECT_EQ(root.status, 200);
  EXPECT_EQ(root.content_type, "application/json");
  EXPECT_EQ(root.body,
            "{\"instance\":\"web-\\\"0\",\"image\":\"v2\",\"boot_id\":\"abc\",\"counter\":42}\n");
  view.health = AppView::Health::draining;  // draining still answers clients
  EXPECT_EQ(route({"GET", "/"}, view).status, 200);
  EXPECT_EQ(route({"GET", "/nope"}, view).status, 404);
  HttpResponse post = route({"POST", "/health"}, view);
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.allow, "GET, HEAD");
  std::string head = format_response(route({"HEAD", "/health"}, view), true);
  EXPECT_NE(head.find("Content-Length: 9\r\n"), std::string::npos);
  EXPECT_TRUE(head.ends_with("\r\n\r\n"));
  EXPECT_NE(head.find("Connection: close"), std::string::npos);
}

TEST(GuestHttp, ParsesResponsesByLengthChunksOrClose) {
  using R = ResponseParse::Kind;
  std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
  EXPECT_EQ(parse_http_response(head + "abc", false, 1024).kind, R::incomplete);
  EXPECT_EQ(parse_http_response(head + "abc", true, 1024).kind, R::bad);
  auto done = parse_http_response(head + "abcde", false, 1024);
  ASSERT_EQ(done.kind, R::complete);
  EXPECT_EQ(done.status, 200);
  EXPECT_EQ(done.body, "abcde");

  std::string chunked =
      "HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n";
  EXPECT_EQ(parse_http_response(chunked, false, 1024).kind, R::incomplete);
  auto dechunked = parse_http_response(chunked + "0\r\n\r\n", false, 1024);
  ASSERT_EQ(dechunked.kind, R::complete) << dechunked.error;
  EXPECT_EQ(dechunked.status, 400);
  EXPECT_EQ(dechunked.body, "abcde");

  std::string close_delimited = "HTTP/1.0 200 OK\r\n\r\n{}";
  EXPECT_EQ(parse_http_response(close_delimited, false, 1024).kind, R::incomplete);
  EXPECT_EQ(parse_http_response(close_delimited, true, 1024).body, "{}");
}

TEST(GuestHttp, RejectsHostileResponses) {
  using R = ResponseParse::Kind;
  for (std::string bad : {"SSH-2.0-OpenSSH\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n",
                          "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                          "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                          "HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
                          "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\n",
                          "HTTP/1.1 100 Continue\r\n\r\n"}) {
    EXPECT_EQ(parse_http_response(bad, false, 4096).kind, R::bad) << bad;
  }
  EXPECT_EQ(parse_http_response(std::string(5000, 'x'), false, 4096).kind, R::bad);
  EXPECT_EQ(parse_http_response(std::string(9000, 'x'), false, 65536).kind, R::bad);  // head
  EXPECT_EQ(parse_http_response("", true, 4096).kind, R::bad);
}

TEST(GuestHttp, ImdsRequestsCarryTheMetadataHeader) {
  std::string get = format_imds_request("GET", "/metadata/x?api-version=1", "169.254.169.254", "");
  EXPECT_TRUE(
      get.starts_with("GET /metadata/x?api-version=1 HTTP/1.1\r\nHost: 169.254.169.254\r\n"));
  EXPECT_NE(get.find("Metadata: true\r\n"), std::string::npos);
  EXPECT_EQ(get.find("Content-Length"), std::string::npos);
  std::string post = format_imds_request("POST", "/m", "h", start_requests_body("E-1"));
  EXPECT_NE(post.find("Content-Type: application/json\r\n"), std::string::npos);
  EXPECT_TRUE(post.ends_with("\r\n\r\n{\"StartRequests\":[{\"EventId\":\"E-1\"}]}"));
}

TEST(GuestNetwork, ParsesTheCommandLineKeys) {
  GuestConfig config;
  apply_cmdline(config,
                "console=ttyS0 fabriclab.ip=198.19.2.11/24 fabriclab.gw=198.19.2.1 "
                "fabriclab.drain=0 fabriclab.drain_ms=1500\n");
  ASSERT_TRUE(config.net.has_value());
  EXPECT_EQ(ipv4_to_string(config.net->address), "198.19.2.11");
  EXPECT_EQ(config.net->prefix, 24);
  EXPECT_EQ(ipv4_to_string(config.net->gateway), "198.19.2.1");
  EXPECT_EQ(config.net->interface, "eth0");
  EXPECT_FALSE(config.drain);
  EXPECT_EQ(config.drain_ms, 1500);

  GuestConfig none;
  apply_cmdline(none, "console=ttyS0 fabriclab.drain=yes");
  EXPECT_FALSE(none.net.has_value());
  EXPECT_TRUE(none.drain);  // bad value: default kept
}

TEST(GuestNetwork, BadAddressesLeaveTheNetworkOff) {
  for (auto [ip, gw] : std::initializer_list<std::pair<const char*, const char*>>{
           {"198.19.0.10/24", ""},
           {"", "198.19.0.1"},
           {"198.19.0.10", "198.19.0.1"},
           {"198.19.0.10/33", "198.19.0.1"},
           {"198.19.0.10/0", "198.19.0.1"},
           {"198.19.0.256/24", "198.19.0.1"},
           {"198.19.0.010/24", "198.19.0.1"},
           {"198.19.0.0/24", "198.19.0.1"},
           {"198.19.0.255/24", "198.19.0.1"},
           {"198.19.0.10/24", "198.19.1.1"},
           {"198.19.0.10/24", "198.19.0.10"},
           {"198.19.0.10/24", "198.19.0.255"},
           {"127.0.0.2/8", "127.0.0.1"},
           {"198.19.0.10/24x", "198.19.0.1"},
           {" 198.19.0.10/24", "198.19.0.1"},
           {"198.19.0.10/24", "gw"}}) {
    std::string error;
    EXPECT_FALSE(make_net_config(ip, gw, error).has_value()) << ip << " " << gw;
    EXPECT_FALSE(error.empty()) << ip << " " << gw;
  }
  std::string error;
  EXPECT_FALSE(make_net_config("", "", error).has_value());
  EXPECT_TRUE(error.empty());
  auto ok = make_net_config("10.0.0.5/30", "10.0.0.6", error);
  ASSERT_TRUE(ok.has_value()) << error;
  EXPECT_EQ(netmask_of(ok->prefix), 0xfffffffcu);
}

TEST(GuestImds, ParsesAzureDocumentsAndRejectsHostileOnes) {
  std::string error;
  auto doc = parse_imds_scheduled_events(
      R"({"DocumentIncarnation": 3, "Events": [{"EventId": "E1", "EventType": "Freeze",
          "ResourceType": "VirtualMachine", "Resources": ["web-0", "web-1"],
          "EventStatus": "Scheduled", "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
          "Description": "", "EventSource": "Platform", "DurationInSeconds": 9}]})",
      error);
  ASSERT_TRUE(doc.has_value()) << error;
  EXPECT_EQ(doc->incarnation, 3);
  ASSERT_EQ(doc->events.size(), 1u);
  EXPECT_EQ(doc->events[0].resources, (std::vector<std::string>{"web-0", "web-1"}));
  for (const char* bad :
       {"", "[]", "{", R"({"Events": []})", R"({"DocumentIncarnation": 1, "Events": "x"})",
        R"({"DocumentIncarnation": 1, "Events": [{"EventId": "E"}]})",
        R"({"DocumentIncarnation": 1, "Events": [{"EventId": "E",
                              "EventStatus": "Scheduled", "Resources": [1]}]})"}) {
    error.clear();
    EXPECT_FALSE(parse_imds_scheduled_events(bad, error).has_value()) << bad;
    EXPECT_FALSE(error.empty()) << bad;
  }
  std::string deep(100, '[');
  EXPECT_FALSE(parse_imds_scheduled_events("{\"a\":" + deep, error).has_value());

  auto name = parse_imds_compute_name(R"({"name": "web-0", "platformUpdateDomain": "0"})", error);
  ASSERT_TRUE(name.has_value()) << error;
  EXPECT_EQ(*name, "web-0");
  for (const char* bad : {R"({"name": ""})", R"({"name": 5})", R"({"vmId": "x"})",
                          R"({"name": "a b"})", R"({"name": "a\nb"})", "null"}) {
    EXPECT_FALSE(parse_imds_compute_name(bad, error).has_value()) << bad;
  }
}

ScheduledEventsDoc doc_with(std::string status, std::vector<std::string> resources,
                            std::string id = "E1") {
  ScheduledEventsDoc doc;
  doc.incarnation = 1;
  doc.events.push_back(
      ScheduledEvent{std::move(id), "Reboot", std::move(status), std::move(resources)});
  return doc;
}

TEST(GuestDrain, DrainsAtOnceApprovesAfterDrainMsAndServesWhenTheEventIsGone) {
  DrainPolicy policy(true, 800);
  policy.on_document(doc_with("Scheduled", {"web-0", "web-1"}), "web-0", 1000);
  EXPECT_TRUE(policy.draining());
  EXPECT_EQ(policy.next_deadline(), 1800);
  EXPECT_FALSE(policy.take_due_approval(1799).has_value());
  auto due = policy.take_due_approval(1800);
  ASSERT_TRUE(due.has_value());
  EXPECT_EQ(*due, "E1");
  EXPECT_FALSE(policy.take_due_approval(1801).has_value());  // in flight
  policy.approval_result("E1", DrainPolicy::Outcome::accepted, 1850);
  policy.on_document(doc_with("Scheduled", {"web-0", "web-1"}), "web-0", 2000);
  EXPECT_FALSE(policy.take_due_approval(5000).has_value());  // approved once only
  policy.on_document(doc_with("Started", {"web-0", "web-1"}), "web-0", 3000);
  EXPECT_TRUE(policy.draining());  // still listed
  policy.on_document(ScheduledEventsDoc{}, "web-0", 4000);
  EXPECT_FALSE(policy.draining());
}

TEST(GuestDrain, IgnoresEventsForOthersStartedOnesAndEverythingWithDrainOff) {
  DrainPolicy policy(true, 0);
  policy.on_document(doc_with("Scheduled", {"db-0"}), "web-0", 0);
  EXPECT_FALSE(policy.draining());
  policy.on_document(doc_with("Started", {"web-0"}, "E2"), "web-0", 0);
  EXPECT_FALSE(policy.draining());  // a fresh boot after the host went ahead: serve

  DrainPolicy off(false, 0);
  off.on_document(doc_with("Scheduled", {"web-0"}), "web-0", 0);
  EXPECT_FALSE(off.draining());
  EXPECT_FALSE(off.take_due_approval(100000).has_value());
}

TEST(GuestDrain, ReconsidersEventsWhenTheNameChanges) {
  DrainPolicy policy(true, 0);
  policy.on_document(doc_with("Scheduled", {"web-0"}), "svc-0", 0);  // fallback name
  EXPECT_FALSE(policy.draining());
  policy.on_document(doc_with("Scheduled", {"web-0"}), "web-0", 10);  // IMDS name learned
  EXPECT_TRUE(policy.draining());
}

TEST(GuestDrain, RetriesFailedApprovalsAndDropsThemWhenStartedOrGone) {
  DrainPolicy policy(true, 100);
  policy.on_document(doc_with("Scheduled", {"web-0"}), "web-0", 0);
  ASSERT_TRUE(policy.take_due_approval(100).has_value());
  policy.approval_result("E1", DrainPolicy::Outcome::retry, 150);
  EXPECT_EQ(policy.next_deadline(), 150 + DrainPolicy::kApprovalRetryMs);
  ASSERT_TRUE(policy.take_due_approval(150 + DrainPolicy::kApprovalRetryMs).has_value());
  policy.on_document(doc_with("Started", {"web-0"}), "web-0", 1200);  // platform went ahead
  policy.approval_result("E1", DrainPolicy::Outcome::retry, 1300);    // late answer: ignored
  EXPECT_FALSE(policy.take_due_approval(100000).has_value());
  EXPECT_TRUE(policy.draining());

  DrainPolicy refused(true, 0);
  refused.on_document(doc_with("Scheduled", {"web-0"}), "web-0", 0);
  ASSERT_TRUE(refused.take_due_approval(0).has_value());
  refused.approval_result("E1", DrainPolicy::Outcome::refused, 10);
  EXPECT_FALSE(refused.take_due_approval(100000).has_value());
}

}  // namespace
}  // namespace fabriclab::guest
