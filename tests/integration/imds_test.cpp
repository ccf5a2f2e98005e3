// The guest network's agent side and the Instance Metadata Service, end to end on libvirt's test
// driver: a HostAgent with `--guest-subnet 127.77.0.0/24` (no bridge: the simulated guests have
// no NIC, but they get addresses) and an IMDS server on 127.0.0.1:0 wired as agent/main.cpp
// does. The test's HTTP client binds its source address to an instance's address (loopback
// accepts any 127/8 source), so IMDS knows which VM is asking, exactly as it would know a guest
// on the bridge. Every rule of docs/clients.md "IMDS" is walked here.

#include "fabriclab/agent/imds.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fabriclab/agent/guest_network.hpp"
#include "fabriclab/agent/host_agent.hpp"
#include "fabriclab/agent/image_store.hpp"
#include "fabriclab/common/event_feed.hpp"
#include "fabriclab/common/http_server.hpp"
#include "fabriclab/hypervisor/connection.hpp"
#include "fabriclab/testbed/images.hpp"
#include "fabriclab/testbed/lab_vm.hpp"
#include "status_matchers.hpp"

namespace fabriclab::agent {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kSubnet = "127.77.0.0/24";
constexpr const char* kEvents = "/metadata/scheduledevents?api-version=2020-07-01";
constexpr const char* kCompute = "/metadata/instance/compute?api-version=2021-02-01";

const std::regex kGuid("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  json::value json() const {
    boost::system::error_code ec;
    json::value v = json::parse(body, ec);
    if (ec) ADD_FAILURE() << "not JSON: " << body;
    return v;
  }
};

// One HTTP/1.1 request over a fresh TCP connection whose source address is `source`.
// Transport failures are test failures (status 0).
Reply raw_request(const std::string& source, uint16_t port, const std::string& method,
                  const std::string& target, const std::vector<std::string>& headers,
                  const std::string& body = {}) {
  Reply out;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ADD_FAILURE() << "socket: " << std::strerror(errno);
    return out;
  }
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in src{};
  src.sin_family = AF_INET;
  ::inet_pton(AF_INET, source.c_str(), &src.sin_addr);
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
    ADD_FAILURE() << "connect from " << source << ": " << std::strerror(errno);
    ::close(fd);
    return out;
  }
  std::string req =
      method + " " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n";
  for (const auto& h : headers) req += h + "\r\n";
  if (!body.empty() || method == "POST") {
    req +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  for (size_t off = 0; off < req.size();) {
    ssize_t w = ::send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  std::string in;
  char buf[4096];
  for (;;) {
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r <= 0) break;
    in.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  auto head_end = in.find("\r\n\r\n");
  if (in.rfind("HTTP/1.1 ", 0) != 0 || head_end == std::string::npos) {
    ADD_FAILURE() << method << " " << target << " from " << source << ": no HTTP response: " << in;
    return out;
  }
  out.status = std::stoi(in.substr(9, 3));
  std::istringstream head(in.substr(0, head_end));
  std::string line;
  std::getline(head, line);
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    out.headers[name] = line.substr(colon + 1 + (line[colon + 1] == ' ' ? 1 : 0));
  }
  out.body = in.substr(head_end + 4);
  return out;
}

// RFC 1123 ("Mon, 19 Sep 2016 18:29:47 GMT") -> system time; nullopt if it is not that format.
std::optional<std::chrono::system_clock::time_point> parse_rfc1123(const std::string& s) {
  std::tm tm{};
  std::istringstream in(s);
  in.imbue(std::locale::classic());
  in >> std::get_time(&tm, "%a, %d %b %Y %H:%M:%S GMT");
  if (in.fail() || s.size() != 29) return std::nullopt;
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

class ImdsTest : public ::testing::Test {
 protected:
  virtual void Configure(AgentOptions& o) { (void)o; }

  void SetUp() override {
    auto dir = testbed::make_short_tmpdir("fl-imds-");
    ASSERT_OK(dir);
    dir_ = *dir;
    auto node = hypervisor::write_test_node(dir_);
    ASSERT_OK(node);
    opt_.host_id = "host-0";
    opt_.hypervisor_uri = *node;
    opt_.state_dir = dir_ + "/st";
    opt_.guest_images_dirs = {testbed::default_images_dir()};
    opt_.heartbeat_period = 100ms;
    opt_.drain = 20ms;
    opt_.guest_subnet = kSubnet;
    opt_.dhcp_hosts_dir = dir_ + "/dhcp";
    // The emulated host reboot takes a while, so Started stays observable through polling.
    opt_.boot_delay = 3000ms;
    Configure(opt_);
    start_agent();
  }

  void start_agent() {
    feed_ = std::make_shared<EventFeed>([this] { return json::object{}; });
    auto agent = HostAgent::create(opt_, feed_);
    ASSERT_OK(agent);
    agent_ = std::move(agent).value();
    // As agent/main.cpp wires it.
    http::Limits limits;
    limits.max_body = 4096;
    limits.max_json_depth = 4;
    imds_ = std::make_unique<http::Server>("imds", http::Tokens{}, limits);
    install_imds(*imds_, *agent_);
    auto port = imds_->start("127.0.0.1", 0);
    ASSERT_OK(port);
    port_ = *port;
  }

  void stop_agent() {
    if (imds_) imds_->stop();
    imds_.reset();
    if (agent_) {
      EXPECT_TRUE(agent_->wait_idle(30s)) << "an operation was still running";
    }
    agent_.reset();
  }

  void TearDown() override {
    stop_agent();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Creates an instance and waits until it is Healthy; returns its JSON.
  json::object create(const std::string& name, int ud, int fd, bool drain = true,
                      int64_t drain_ms = 0) {
    InstanceSpec s;
    s.name = name;
    s.meta = {"web", static_cast<int>(created_++), ud, fd, "v1"};
    s.drain = drain;
    s.drain_ms = drain_ms;
    auto r = agent_->create_instance(s);
    EXPECT_OK(r);
    wait_for("instance " + name + " Healthy", 10s, [&] {
      auto i = agent_->instance_json(name);
      return i.ok() && i->at("status") == "Healthy";
    });
    return r.ok() ? *r : json::object{};
  }

  std::string address_of(const std::string& name) {
    auto i = agent_->instance_json(name);
    return i.ok() ? std::string(i->at("address").as_string()) : "";
  }

  // A paced IMDS request from `source` (with Metadata: true unless other headers are given):
  // never more than 5 in a sliding second per source, counted from when each answer arrived
  // (later than when the server admitted it), so only the 429 test ever meets the limit.
  Reply imds(const std::string& source, const std::string& method, const std::string& target,
             const std::string& body = {}, std::vector<std::string> headers = {"Metadata: true"}) {
    auto& times = sent_[source];
    while (times.size() >= 5) {
      auto wait = times.front() + 1s + 5ms - Clock::now();
      if (wait > 0s) std::this_thread::sleep_for(wait);
      times.pop_front();
    }
    Reply r = raw_request(source, port_, method, target, headers, body);
    times.push_back(Clock::now());
    return r;
  }
  Reply get(const std::string& source, const std::string& target) {
    return imds(source, "GET", target);
  }

  void wait_for(const std::string& what, std::chrono::milliseconds timeout,
                const std::function<bool()>& cond) {
    const auto deadline = Clock::now() + timeout;
    while (!cond()) {
      if (Clock::now() > deadline) {
        ADD_FAILURE() << "timed out after " << timeout.count() << " ms waiting for " << what;
        return;
      }
      std::this_thread::sleep_for(20ms);
    }
  }

  // Polls the scheduled events `source` sees until `pred` holds; returns the last document.
  json::object poll_events(const std::string& source, const std::string& what,
                           std::chrono::milliseconds timeout,
                           const std::function<bool(const json::object&)>& pred) {
    json::object doc;
    wait_for(what, timeout, [&] {
      auto r = get(source, kEvents);
      if (r.status != 200) return false;
      doc = r.json().as_object();
      return pred(doc);
    });
    return doc;
  }

  std::string job_step() {
    auto h = agent_->host_json();
    return std::string(h["step"].as_string());
  }

  std::vector<json::object> feed_events(const std::string& type) {
    std::vector<json::object> out;
    for (auto& e : feed_->since(0)) {
      if (e["type"] == type.c_str()) out.push_back(e);
    }
    return out;
  }

  void stage_host_image(const std::string& version) {
    const std::string file = dir_ + "/" + version + ".img";
    auto sha = write_synthetic_host_image(file, version);
    ASSERT_OK(sha);
    ASSERT_OK(agent_->stage_host_image(version, file, *sha));
  }

  std::string dir_;
  AgentOptions opt_;
  std::shared_ptr<EventFeed> feed_;
  std::unique_ptr<HostAgent> agent_;
  std::unique_ptr<http::Server> imds_;
  uint16_t port_ = 0;
  size_t created_ = 0;
  std::map<std::string, std::deque<Clock::time_point>> sent_;
};

size_t events_count(const json::object& doc) { return doc.at("Events").as_array().size(); }
uint64_t incarnation(const json::object& doc) {
  return doc.at("DocumentIncarnation").to_number<uint64_t>();
}
const json::object& first_event(const json::object& doc) {
  return doc.at("Events").as_array().at(0).as_object();
}

// ---------------------------------------------------------------------------------------------
// Addressing (pure)

TEST(GuestNetwork, SubnetGivesSlotAddressesAndRackUniqueMacs) {
  auto s = GuestSubnet::parse("198.19.3.0/24");
  ASSERT_OK(s);
  EXPECT_EQ(s->gateway(), "198.19.3.1");
  EXPECT_EQ(s->address(0), "198.19.3.10");
  EXPECT_EQ(s->mac(0), "52:54:00:c6:03:0a");
  EXPECT_EQ(s->address(240), "198.19.3.250");
  EXPECT_EQ(s->mac(240), "52:54:00:c6:03:fa");
  EXPECT_EQ(s->slot_of("198.19.3.11"), 1);
  EXPECT_EQ(s->slot_of("198.19.3.9"), std::nullopt);
  EXPECT_EQ(s->slot_of("198.19.3.251"), std::nullopt);
  EXPECT_EQ(s->slot_of("198.19.4.10"), std::nullopt);
  EXPECT_EQ(GuestSubnet::parse("198.19.12.0/24")->mac(5), "52:54:00:c6:0c:0f");
  for (const char* bad : {"198.19.3.1/24", "198.19.3.0/16", "198.19.3.0", "198.19.256.0/24",
                          "198.019.3.0/24", "198.19.0/24", "a.b.c.0/24", "", "198.19.3.0/24 "}) {
    auto r = GuestSubnet::parse(bad, "--guest-subnet");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find("--guest-subnet must be A.B.C.0/24"), std::string::npos)
        << r.error().message;
  }
}

TEST(GuestNetwork, LowestFreeSlotAndGuids) {
  EXPECT_EQ(*lowest_free_slot({}), 0);
  EXPECT_EQ(*lowest_free_slot({0, 1, 3}), 2);
  std::set<int> full;
  for (int k = 0; k < kGuestSlots; ++k) full.insert(k);
  EXPECT_EQ(lowest_free_slot(full).condition(), Condition::invalid_state);
  auto a = new_guid(), b = new_guid();
  EXPECT_TRUE(std::regex_match(a, kGuid)) << a;
  EXPECT_NE(a, b);
}

TEST(GuestNetwork, CreateInstanceValidatesDrainFieldsNamingThem) {
  json::object o{{"service", "web"}, {"index", 0}, {"ud", 0}, {"fd", 0}, {"image", "v1"}};
  auto s = instance_spec_from_json(o);
  ASSERT_OK(s);
  EXPECT_TRUE(s->drain);
  EXPECT_EQ(s->drain_ms, 0);
  o["drain"] = false;
  o["drain_ms"] = 600000;
  s = instance_spec_from_json(o);
  ASSERT_OK(s);
  EXPECT_FALSE(s->drain);
  EXPECT_EQ(s->drain_ms, 600000);
  for (auto [field, value] : std::vector<std::pair<std::string, json::value>>{{"drain_ms", 600001},
                                                                              {"drain_ms", -1},
                                                                              {"drain_ms", "5"},
                                                                              {"drain", "yes"},
                                                                              {"drain", 1}}) {
    json::object bad = o;
    bad[field] = value;
    auto r = instance_spec_from_json(bad);
    ASSERT_FALSE(r.ok()) << field << "=" << json::serialize(value);
    EXPECT_NE(r.error().message.find("'" + field + "'"), std::string::npos) << r.error().message;
  }
}

// ---------------------------------------------------------------------------------------------
// Addresses, MACs and dnsmasq host files on the agent

TEST_F(ImdsTest, InstancesGetTheLowestFreeAddressAHostFileAndKeepThemAcrossARestart) {
  auto a = create("web-0", 0, 0);
  auto b = create("web-1", 1, 1);
  EXPECT_EQ(a["address"], "127.77.0.10");
  EXPECT_EQ(a["mac"], "52:54:00:c6:00:0a");
  EXPECT_EQ(b["address"], "127.77.0.11");
  EXPECT_EQ(b["mac"], "52:54:00:c6:00:0b");
  EXPECT_TRUE(std::regex_match(std::string(a["vm_id"].as_string()), kGuid)) << a;
  auto read = [&](const std::string& f) {
    std::ifstream in(opt_.dhcp_hosts_dir + "/" + f);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  EXPECT_EQ(read("web-0.conf"), "52:54:00:c6:00:0a,127.77.0.10,web-0\n");
  EXPECT_EQ(read("web-1.conf"), "52:54:00:c6:00:0b,127.77.0.11,web-1\n");
  // Nothing but the host files (no temp file left behind for dnsmasq to read).
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(opt_.dhcp_hosts_dir)) {
    ++files;
    EXPECT_TRUE(e.path().extension() == ".conf") << e.path();
  }
  EXPECT_EQ(files, 2u);

  ASSERT_OK(agent_->delete_instance("web-0"));
  EXPECT_FALSE(std::filesystem::exists(opt_.dhcp_hosts_dir + "/web-0.conf"))
      << "released on delete";
  auto c = create("web-2", 2, 0);
  EXPECT_EQ(c["address"], "127.77.0.10") << "the lowest free slot is reused";
  EXPECT_EQ(c["mac"], "52:54:00:c6:00:0a");

  const std::string vm_id(agent_->instance_json("web-1")->at("vm_id").as_string());
  stop_agent();
  std::filesystem::remove(opt_.dhcp_hosts_dir + "/web-1.conf");
  start_agent();
  auto b2 = agent_->instance_json("web-1");
  ASSERT_OK(b2);
  EXPECT_EQ(b2->at("address"), "127.77.0.11") << "persisted with the instance";
  EXPECT_EQ(b2->at("mac"), "52:54:00:c6:00:0b");
  EXPECT_EQ(b2->at("vm_id"), vm_id.c_str());
  EXPECT_EQ(read("web-1.conf"), "52:54:00:c6:00:0b,127.77.0.11,web-1\n") << "rewritten at start";
  EXPECT_EQ(agent_->instance_at("127.77.0.11"), "web-1");
  EXPECT_EQ(agent_->instance_at("127.77.0.12"), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Request rules

TEST_F(ImdsTest, EveryRequestNeedsTheMetadataHeader) {
  create("web-0", 0, 0);
  const auto src = address_of("web-0");
  for (auto headers :
       std::vector<std::vector<std::string>>{{}, {"Metadata: false"}, {"Metadata: yes"}}) {
    for (const char* target : {kEvents, kCompute}) {
      auto r = imds(src, "GET", target, {}, headers);
      EXPECT_EQ(r.status, 400) << target;
      EXPECT_EQ(r.json(),
                (json::value{{"error", "Bad request. Required metadata header not specified"}}));
    }
  }
  EXPECT_EQ(imds(src, "POST", kEvents, R"({"StartRequests": []})", {}).status, 400);
  EXPECT_EQ(imds(src, "GET", kEvents, {}, {"metadata: TRUE"}).status, 200)
      << "names and value are case-blind";
}

TEST_F(ImdsTest, XForwardedForIsRefusedWith403) {
  create("web-0", 0, 0);
  const auto src = address_of("web-0");
  for (const char* target : {kEvents, kCompute}) {
    auto r = imds(src, "GET", target, {}, {"Metadata: true", "X-Forwarded-For: 10.0.0.1"});
    EXPECT_EQ(r.status, 403) << target << ": " << r.body;
    EXPECT_TRUE(r.json().as_object().contains("error"));
  }
}

TEST_F(ImdsTest, MissingOrUnknownApiVersionIs400WithTheNewestVersions) {
  create("web-0", 0, 0);
  const auto src = address_of("web-0");
  auto missing = get(src, "/metadata/scheduledevents");
  ASSERT_EQ(missing.status, 400);
  EXPECT_EQ(missing.json(),
            (json::value{{"error",
                          "Bad request. api-version was not specified in the request. For more "
                          "information refer to aka.ms/azureimds"},
                         {"newest-versions", {"2020-07-01", "2019-08-01", "2019-01-01"}}}));
  auto unknown = get(src, "/metadata/scheduledevents?api-version=2099-01-01");
  ASSERT_EQ(unknown.status, 400);
  EXPECT_EQ(unknown.json().at("newest-versions"),
            (json::value{"2020-07-01", "2019-08-01", "2019-01-01"}));
  EXPECT_NE(std::string(unknown.json().at("error").as_string()).find("api-version"),
            std::string::npos);
  auto compute = get(src, "/metadata/instance/compute");
  ASSERT_EQ(compute.status, 400);
  EXPECT_EQ(compute.json().at("newest-versions").as_array().size(), 3u);
  EXPECT_EQ(get(src, "/metadata/instance/compute?api-version=2020-07-01x").status, 400);
  EXPECT_EQ(imds(src, "POST", "/metadata/scheduledevents", R"({"StartRequests": []})").status, 400);
  for (const char* v :
       {"2017-03-01", "2017-08-01", "2017-11-01", "2019-01-01", "2019-08-01", "2020-07-01"}) {
    EXPECT_EQ(get(src, std::string("/metadata/scheduledevents?api-version=") + v).status, 200) << v;
  }
}

TEST_F(ImdsTest, TheSixthRequestWithinASecondFromOneVmIs429) {
  create("web-0", 0, 0);
  create("web-1", 1, 1);
  const auto a = address_of("web-0"), b = address_of("web-1");
  // Six back-to-back requests normally take a few ms; on a starved machine they may not fit in a
  // second, then the burst is tried again (the limit is about one second, not about speed).
  bool measured = false;
  for (int attempt = 0; attempt < 5 && !measured; ++attempt) {
    std::this_thread::sleep_for(1100ms);  // a fresh window: pacing, not a wait for a condition
    std::vector<int> statuses;
    const auto t0 = Clock::now();
    for (int i = 0; i < 6; ++i)
      statuses.push_back(raw_request(a, port_, "GET", kEvents, {"Metadata: true"}).status);
    if (Clock::now() - t0 >= 900ms) continue;
    measured = true;
    EXPECT_EQ(statuses, (std::vector<int>{200, 200, 200, 200, 200, 429}));
    // The limit is per VM: another one is served at the same moment.
    EXPECT_EQ(raw_request(b, port_, "GET", kEvents, {"Metadata: true"}).status, 200);
  }
  ASSERT_TRUE(measured) << "six requests never fitted in a second";
  auto again = Clock::now();
  wait_for("web-0 served again", 3s,
           [&] { return raw_request(a, port_, "GET", kEvents, {"Metadata: true"}).status == 200; });
  EXPECT_LT(Clock::now() - again, 1500ms) << "served again once the window moved on";
}

TEST_F(ImdsTest, AnUnknownSourceAddressIs403) {
  create("web-0", 0, 0);
  for (const char* src : {"127.77.0.200", "127.0.0.1", "127.77.0.11"}) {
    auto r = raw_request(src, port_, "GET", kEvents, {"Metadata: true"});
    EXPECT_EQ(r.status, 403) << src << ": " << r.body;
    EXPECT_NE(std::string(r.json().at("error").as_string()).find(src), std::string::npos) << r.body;
  }
  EXPECT_EQ(get("127.77.0.10", kEvents).status, 200);
}

TEST_F(ImdsTest, UnknownPathsAre404) {
  create("web-0", 0, 0);
  const auto src = address_of("web-0");
  for (const char* target :
       {"/metadata/nothing?api-version=2021-02-01",
        "/metadata/instance/compute/nothing?api-version=2021-02-01&format=text",
        "/metadata/instance/compute/name/x?api-version=2021-02-01", "/?api-version=2021-02-01"}) {
    EXPECT_EQ(get(src, target).status, 404) << target;
  }
}

TEST_F(ImdsTest, ComputeMetadataHasStringsAndLeavesComeAsText) {
  create("web-0", 0, 0);
  auto made = create("web-1", 3, 1);
  const auto src = address_of("web-1");
  auto r = get(src, kCompute);
  ASSERT_EQ(r.status, 200) << r.body;
  auto c = r.json().as_object();
  EXPECT_EQ(c["name"], "web-1");
  EXPECT_EQ(c["vmId"], made["vm_id"]);
  EXPECT_EQ(c["platformUpdateDomain"], "3") << "numbers as strings, as Azure sends them";
  EXPECT_EQ(c["platformFaultDomain"], "1");
  EXPECT_EQ(c["location"], "fabriclab");
  EXPECT_EQ(c["osType"], "Linux");
  EXPECT_NE(std::string(c["resourceId"].as_string()).find("/virtualMachines/web-1"),
            std::string::npos);
  for (const char* f : {"vmSize", "vmId", "resourceId"}) {
    EXPECT_TRUE(c[f].is_string() && !c[f].as_string().empty()) << f;
  }
  for (auto& [k, v] : c) EXPECT_TRUE(v.is_string()) << k << " is not a string";

  auto name = get(src, "/metadata/instance/compute/name?api-version=2021-02-01&format=text");
  EXPECT_EQ(name.status, 200);
  EXPECT_EQ(name.body, "web-1");
  EXPECT_EQ(name.headers["content-type"].rfind("text/plain", 0), 0u)
      << name.headers["content-type"];
  auto ud = get(
      src, "/metadata/instance/compute/platformUpdateDomain?api-version=2021-02-01&format=text");
  EXPECT_EQ(ud.body, "3");
  EXPECT_EQ(get(src, "/metadata/instance/compute?api-version=2021-02-01&format=text").status, 400)
      << "text is for leaves only";

  auto all = get(src, "/metadata/instance?api-version=2021-02-01");
  ASSERT_EQ(all.status, 200) << all.body;
  EXPECT_EQ(all.json().at("compute").at("name"), "web-1");
  EXPECT_EQ(all.json()
                .at("network")
                .at("interface")
                .at(0)
                .at("ipv4")
                .at("ipAddress")
                .at(0)
                .at("privateIpAddress"),
            "127.77.0.11");
  EXPECT_EQ(all.json().at("network").at("interface").at(0).at("macAddress"), "525400C6000B");
  // The other VM sees itself.
  EXPECT_EQ(
      get("127.77.0.10", "/metadata/instance/compute/name?api-version=2021-02-01&format=text").body,
      "web-0");
}

TEST_F(ImdsTest, StartRequestsWithAMalformedBodyOrAnUnknownEventIdAre400) {
  create("web-0", 0, 0);
  const auto src = address_of("web-0");
  for (const std::string& body : std::vector<std::string>{
           "", "not json", "[]", R"({"StartRequests": {}})",
           R"({"StartRequests": [{"EventId": 7}]})", R"({"StartRequests": [{}]})",
           R"({"StartRequests": ["x"]})", R"({"Other": []})",
           R"({"StartRequests": [{"EventId": ""}]})", R"({"StartRequests": [[[[[[1]]]]]]})",
           R"({"StartRequests": [{"EventId": ")" + std::string(65, 'a') + R"("}]})"}) {
    auto r = imds(src, "POST", kEvents, body);
    EXPECT_EQ(r.status, 400) << body << " -> " << r.body;
    if (r.status == 400) {
      EXPECT_TRUE(r.json().as_object().contains("error")) << r.body;
    }
  }
  auto unknown =
      imds(src, "POST", kEvents,
           R"({"StartRequests": [{"EventId": "f00f0000-0000-4000-8000-000000000000"}]})");
  EXPECT_EQ(unknown.status, 400);
  EXPECT_NE(unknown.body.find("f00f0000"), std::string::npos) << unknown.body;
  EXPECT_EQ(imds(src, "POST", kEvents, R"({"StartRequests": []})").status, 200)
      << "nothing to approve is fine";
  EXPECT_EQ(imds(src, "POST", kEvents, std::string(5000, ' ')).status, 413) << "the body limit";
}

// ---------------------------------------------------------------------------------------------
// Scheduled events

// The whole life of one event: Scheduled (stable EventId, every affected guest in Resources,
// NotBefore RFC 1123) -> approved by every guest through IMDS (the simulated guests' own channel
// drain is 10 minutes, so only IMDS can release the host) -> Started with NotBefore "" -> gone,
// DocumentIncarnation growing at each change; a stopped instance (not affected) sees nothing.
TEST_F(ImdsTest, OneEventFromScheduledToStartedToGoneApprovedThroughImds) {
  create("web-0", 0, 0, true, 600000);
  create("web-1", 1, 1, true, 600000);
  create("web-2", 2, 0, true, 600000);
  ASSERT_OK(agent_->stop_instance("web-2"));
  stage_host_image("host-2");
  const auto a = address_of("web-0"), b = address_of("web-1"), c = address_of("web-2");
  const auto before = get(a, kEvents).json().as_object();
  EXPECT_EQ(events_count(before), 0u);
  const uint64_t inc0 = incarnation(before);

  OperationRequest req{OperationKind::host_os, "host-2", false, 20000};
  const auto t0 = Clock::now();
  const auto wall0 = std::chrono::system_clock::now();
  auto job = agent_->start_operation(req);
  ASSERT_OK(job);
  const std::string job_id(job->at("id").as_string());
  const std::string event_id(job->at("event_id").as_string());
  EXPECT_TRUE(std::regex_match(event_id, kGuid)) << event_id;

  auto doc = poll_events(a, "web-0 sees the event", 5s,
                         [](const json::object& d) { return events_count(d) == 1; });
  ASSERT_EQ(events_count(doc), 1u) << doc;
  const uint64_t inc1 = incarnation(doc);
  EXPECT_GT(inc1, inc0);
  const auto& ev = first_event(doc);
  EXPECT_EQ(ev.at("EventId"), event_id.c_str());
  EXPECT_EQ(ev.at("EventType"), "Reboot");
  EXPECT_EQ(ev.at("ResourceType"), "VirtualMachine");
  EXPECT_EQ(ev.at("Resources"), (json::value{"web-0", "web-1"}))
      << "every guest the operation affects";
  EXPECT_EQ(ev.at("EventStatus"), "Scheduled");
  EXPECT_EQ(ev.at("EventSource"), "Platform");
  EXPECT_EQ(ev.at("DurationInSeconds"), -1);
  EXPECT_FALSE(ev.at("Description").as_string().empty());
  auto nb = parse_rfc1123(std::string(ev.at("NotBefore").as_string()));
  ASSERT_TRUE(nb.has_value()) << ev.at("NotBefore");
  EXPECT_GE(*nb, wall0 + 19s);
  EXPECT_LE(*nb, wall0 + 22s);

  // Stable across polls and the same for the other affected VM; invisible to the stopped one.
  auto again = get(a, kEvents).json().as_object();
  EXPECT_EQ(again, doc) << "nothing changed, nothing differs";
  auto other = get(b, kEvents).json().as_object();
  EXPECT_EQ(first_event(other).at("EventId"), event_id.c_str());
  EXPECT_EQ(incarnation(other), inc1);
  auto stopped = get(c, kEvents).json().as_object();
  EXPECT_EQ(events_count(stopped), 0u) << "web-2 is not in Resources";
  EXPECT_EQ(
      imds(c, "POST", kEvents, R"({"StartRequests": [{"EventId": ")" + event_id + R"("}]})").status,
      400)
      << "an event a VM does not see is unknown to it";

  // One approval is not enough; both are.
  const std::string approve = R"({"StartRequests": [{"EventId": ")" + event_id + R"("}]})";
  EXPECT_EQ(imds(a, "POST", kEvents, approve).status, 200);
  EXPECT_EQ(imds(a, "POST", kEvents, approve).status, 200) << "approving twice is fine";
  EXPECT_EQ(job_step(), "Notifying") << "web-1 has not approved yet";
  EXPECT_EQ(imds(b, "POST", kEvents, approve).status, 200);
  wait_for("StoppingGuests", 10s, [&] { return job_step() != "Notifying"; });
  EXPECT_LT(Clock::now() - t0, 15s) << "the approvals released the host well before NotBefore";

  doc = poll_events(b, "Started", 5s, [&](const json::object& d) {
    return events_count(d) == 1 && first_event(d).at("EventStatus") == "Started";
  });
  ASSERT_EQ(events_count(doc), 1u);
  EXPECT_EQ(first_event(doc).at("EventId"), event_id.c_str());
  EXPECT_EQ(first_event(doc).at("NotBefore"), "");
  const uint64_t inc2 = incarnation(doc);
  EXPECT_GT(inc2, inc1);

  doc = poll_events(b, "the event removed", 30s,
                    [](const json::object& d) { return events_count(d) == 0; });
  EXPECT_GT(incarnation(doc), inc2);
  ASSERT_TRUE(agent_->wait_idle(30s));
  auto done = agent_->job_json(job_id);
  ASSERT_OK(done);
  EXPECT_EQ(done->at("status"), "succeeded") << *done;
  EXPECT_EQ(done->at("event_id"), event_id.c_str());
  for (const auto& g : done->at("guests").as_array()) {
    EXPECT_GE(g.at("ack_ms").as_int64(), 0) << g;
    EXPECT_LT(g.at("ack_ms").as_int64(), 15000) << g;
  }
  // The feed has every change, in order, with growing incarnations.
  std::vector<std::string> statuses;
  uint64_t last = 0;
  for (auto& e : feed_events("imds.event")) {
    statuses.emplace_back(e["status"].as_string());
    EXPECT_EQ(e["event_id"], event_id.c_str());
    EXPECT_GT(e["incarnation"].to_number<uint64_t>(), last);
    last = e["incarnation"].to_number<uint64_t>();
  }
  EXPECT_EQ(statuses, (std::vector<std::string>{"Scheduled", "Started", "Removed"}));
  EXPECT_EQ(feed_events("instance.ack").size(), 2u) << "one approval per guest, through IMDS";
}

// Without any approval (drain off: the guests never ack) the host waits for NotBefore, then goes.
TEST_F(ImdsTest, WithoutApprovalTheHostStartsAtNotBefore) {
  create("web-0", 0, 0, false);
  create("web-1", 1, 1, false);
  stage_host_image("host-2");
  const auto t0 = Clock::now();
  auto job = agent_->start_operation({OperationKind::host_os, "host-2", false, 3000});
  ASSERT_OK(job);
  auto doc = poll_events(address_of("web-0"), "Scheduled", 2s,
                         [](const json::object& d) { return events_count(d) == 1; });
  ASSERT_EQ(events_count(doc), 1u);
  EXPECT_EQ(first_event(doc).at("EventStatus"), "Scheduled");
  wait_for("StoppingGuests", 10s, [&] { return job_step() != "Notifying"; });
  EXPECT_GE(Clock::now() - t0, 2900ms) << "nobody approved: the host waited for NotBefore";
  ASSERT_TRUE(agent_->wait_idle(30s));
  auto done = agent_->job_json(std::string(job->at("id").as_string()));
  ASSERT_OK(done);
  EXPECT_EQ(done->at("status"), "succeeded") << *done;
  for (const auto& g : done->at("guests").as_array()) EXPECT_EQ(g.at("ack_ms"), -1) << g;
}

// The channel carries the same event: the simulated guests (drain 20 ms) ack it over their
// channel with the EventId IMDS shows, and that releases the host just the same.
TEST_F(ImdsTest, ChannelAcksOfTheSameEventIdReleaseTheHost) {
  create("web-0", 0, 0);
  create("web-1", 1, 1);
  auto job = agent_->start_operation({OperationKind::freeze, "", false, 20000, 500});
  ASSERT_OK(job);
  const std::string event_id(job->at("event_id").as_string());
  ASSERT_TRUE(agent_->wait_idle(15s)) << "the acks should have released the 20 s notice";
  auto done = agent_->job_json(std::string(job->at("id").as_string()));
  ASSERT_OK(done);
  EXPECT_EQ(done->at("status"), "succeeded") << *done;
  for (const auto& g : done->at("guests").as_array()) {
    EXPECT_GE(g.at("ack_ms").as_int64(), 0) << g;
    EXPECT_LT(g.at("ack_ms").as_int64(), 5000) << g;
  }
  auto acks = feed_events("instance.ack");
  ASSERT_EQ(acks.size(), 2u);
  for (auto& a : acks) {
    EXPECT_EQ(a["event_id"], event_id.c_str());
    EXPECT_EQ(a["via"], "channel");
    EXPECT_EQ(a["known"], true);
  }
  auto posted = feed_events("imds.event");
  ASSERT_FALSE(posted.empty());
  EXPECT_EQ(posted[0]["event_type"], "Freeze");
  EXPECT_EQ(events_count(get(address_of("web-0"), kEvents).json().as_object()), 0u)
      << "gone at the end";
}

// A restarted agent shows the same EventId (it is in the persisted operation), as Started.
TEST_F(ImdsTest, ARestartedAgentShowsTheSameEventIdStarted) {
  create("web-0", 0, 0);
  create("web-1", 1, 1);
  stage_host_image("host-2");
  const uint64_t inc_before = incarnation(get("127.77.0.10", kEvents).json().as_object());
  stop_agent();
  // The state file as a SIGKILL after the guests were stopped leaves it (rolled forward).
  auto st = load_state(opt_.state_dir + "/state.json");
  ASSERT_OK(st);
  st->state = HostState::updating;
  OperationRecord op;
  op.id = "host-0-job-9";
  op.request = {OperationKind::host_os, "host-2", false, 20000};
  op.step = UpdateStep::swapping_image;
  op.running_before = {"web-0", "web-1"};
  op.stopped = {"web-0", "web-1"};
  op.event_id = new_guid();
  st->operation = op;
  ASSERT_OK(save_state(opt_.state_dir + "/state.json", *st));
  start_agent();
  auto doc = poll_events("127.77.0.11", "the resumed event", 5s,
                         [](const json::object& d) { return events_count(d) == 1; });
  ASSERT_EQ(events_count(doc), 1u);
  EXPECT_EQ(first_event(doc).at("EventId"), op.event_id.c_str());
  EXPECT_EQ(first_event(doc).at("EventStatus"), "Started");
  EXPECT_EQ(first_event(doc).at("NotBefore"), "");
  EXPECT_GT(incarnation(doc), inc_before) << "the incarnation never goes back";
  EXPECT_EQ(agent_->job_json("host-0-job-9")->at("event_id"), op.event_id.c_str());
  ASSERT_TRUE(agent_->wait_idle(30s));
  EXPECT_EQ(agent_->job_json("host-0-job-9")->at("status"), "succeeded");
  EXPECT_EQ(events_count(get("127.77.0.11", kEvents).json().as_object()), 0u);
}

// With a guest bridge the test driver takes the NIC too (it needs no real bridge): the guest runs.
class ImdsBridgeTest : public ImdsTest {
 protected:
  void Configure(AgentOptions& o) override { o.guest_bridge = "gbr0"; }
};

TEST_F(ImdsBridgeTest, AGuestWithANicOnTheBridgeRuns) {
  auto a = create("web-0", 0, 0);
  EXPECT_EQ(a["address"], "127.77.0.10");
  EXPECT_EQ(agent_->instance_json("web-0")->at("status"), "Healthy");
}

TEST(ImdsOptions, BadNetworkOptionsAreRefusedNamingThem) {
  auto dir = testbed::make_short_tmpdir("fl-imo-");
  ASSERT_OK(dir);
  auto node = hypervisor::write_test_node(*dir);
  ASSERT_OK(node);
  auto try_with = [&](std::function<void(AgentOptions&)> f) -> std::string {
    AgentOptions o;
    o.hypervisor_uri = *node;
    o.state_dir = *dir + "/st";
    o.guest_images_dirs = {testbed::default_images_dir()};
    f(o);
    auto a = HostAgent::create(o, nullptr);
    return a.ok() ? "" : a.error().message;
  };
  // Each bad setting, and the option its refusal must name.
  const std::pair<std::function<void(AgentOptions&)>, std::string> refused[] = {
      {[](AgentOptions& o) { o.guest_subnet = "10.0.0.0/8"; }, "guest_subnet"},
      {[](AgentOptions& o) {
         o.guest_subnet = kSubnet;
         o.guest_bridge = "bad bridge";
       },
       "guest_bridge"},
      {[](AgentOptions& o) { o.guest_bridge = "gbr0"; }, "guest_subnet"},
      {[](AgentOptions& o) {
         o.guest_subnet = kSubnet;
         o.dhcp_hosts_dir = "rel";
       },
       "dhcp_hosts_dir"},
  };
  for (const auto& [set, named] : refused) {
    const std::string message = try_with(set);
    EXPECT_NE(message.find(named), std::string::npos) << named << ": '" << message << "'";
  }
  EXPECT_EQ(try_with([](auto& o) { o.guest_subnet = kSubnet; }), "");
  std::filesystem::remove_all(*dir);
}

}  // namespace
}  // namespace fabriclab::agent
