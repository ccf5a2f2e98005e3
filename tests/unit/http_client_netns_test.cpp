// The HTTP client's `netns`: a server listening on an address that exists only inside a network
// namespace of the test's own making is reached with it, and not without it; the calling thread
// is back in its own namespace after every call. Needs root and iproute2's `ip` (skipped without).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstdlib>
#include <string>

#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/http_client.hpp"
#include "fabriclab/common/http_server.hpp"
#include "status_matchers.hpp"
#include "test_netns.hpp"

namespace fabriclab::http {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

// 198.18.0.0/15 is reserved for network tests: it exists nowhere else here.
constexpr const char* kAddress = "198.18.0.1";

std::string own_netns() {
  char buf[64] = {};
  ssize_t n = readlink("/proc/thread-self/ns/net", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

class HttpClientNetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::can_make_netns()) GTEST_SKIP() << "needs root and /usr/sbin/ip";
    name_ = "flabtest-" + std::to_string(getpid());
    ASSERT_TRUE(netns_.make(name_, kAddress));
    // The server's listening socket is opened inside the namespace.
    Result<uint16_t> port = make_error(Condition::internal, "the server was not started");
    ASSERT_TRUE(netns_.run_inside([&] {
      server_ = std::make_unique<Server>("netns-test", Tokens{"c", "r"}, Limits{});
      server_->route("GET", "/healthz", Access::open, [](const Request&) {
        return json_response(200, json::object{{"ok", true}});
      });
      server_->events("/v1/events", feed_);
      port = server_->start(kAddress, 0);
    }));
    ASSERT_OK(port);
    port_ = *port;
  }
  void TearDown() override {
    if (server_) server_->stop();
  }

  std::string name_;
  testing::TestNetns netns_;
  std::shared_ptr<EventFeed> feed_ = std::make_shared<EventFeed>(
      [] {
        return json::object{{"state", 1}};
      },
      50);
  std::unique_ptr<Server> server_;
  uint16_t port_ = 0;
};

TEST_F(HttpClientNetnsTest, ReachesAnAddressThatExistsOnlyInsideTheNamespace) {
  const std::string before = own_netns();
  auto outside = request(kAddress, port_, "GET", "/healthz", {}, {}, 1s);
  EXPECT_FALSE(outside.ok());
  auto by_name = request(kAddress, port_, "GET", "/healthz", {}, {}, 5s, name_);
  ASSERT_OK(by_name);
  EXPECT_EQ(by_name->status, 200);
  auto by_path = request(kAddress, port_, "GET", "/healthz", {}, {}, 5s, "/run/netns/" + name_);
  ASSERT_OK(by_path);
  EXPECT_EQ(by_path->status, 200);
  auto ws = WsClient::connect(kAddress, port_, "/v1/events", "r", 5s, name_);
  ASSERT_OK(ws);
  auto first = (*ws)->read(5s);
  ASSERT_OK(first);
  EXPECT_NE(first->find("\"state\":1"), std::string::npos) << *first;
  // Still in our own namespace: the next plain socket is ours.
  EXPECT_EQ(own_netns(), before);
}

TEST_F(HttpClientNetnsTest, AMissingOrMalformedNamespaceIsAnErrorNamingIt) {
  auto missing =
      request(kAddress, port_, "GET", "/healthz", {}, {}, 1s, "flabtest-no-such-namespace");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().condition, Condition::not_found);
  EXPECT_NE(missing.error().message.find("/run/netns/flabtest-no-such-namespace"),
            std::string::npos)
      << missing.error().message;
  auto spaced = request(kAddress, port_, "GET", "/healthz", {}, {}, 1s, "two words");
  ASSERT_FALSE(spaced.ok());
  EXPECT_EQ(spaced.error().condition, Condition::invalid_argument);
}

TEST(NetnsPath, NamesGoUnderRunNetnsAndPathsAreChecked) {
  EXPECT_EQ(netns_path("flab-1a2b3c4d-rack").value(), "/run/netns/flab-1a2b3c4d-rack");
  EXPECT_EQ(netns_path("/proc/1/ns/net").value(), "/proc/1/ns/net");
  for (const char* bad :
       {"", ".hidden", "a/b", "two words", "/run/netns/../x", "/run/netns/a b", "x\n"}) {
    auto p = netns_path(bad);
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.error().condition, Condition::invalid_argument) << bad;
  }
  EXPECT_FALSE(netns_path(std::string(65, 'a')).ok());
}

}  // namespace
}  // namespace fabriclab::http
