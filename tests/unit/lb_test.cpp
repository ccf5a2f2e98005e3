// The load balancer's pure half (lb.hpp) and the service endpoint model (cluster.hpp): HAProxy
// configuration text, validation of everything that reaches it, and the master CLI parsers.

#include "fabriclab/orchestrator/lb.hpp"

#include <gtest/gtest.h>

#include <functional>

#include "fabriclab/orchestrator/cluster.hpp"
#include "text_checks.hpp"

using namespace fabriclab;
using namespace fabriclab::orchestrator;
using fabriclab::testing::contains_all;
using fabriclab::testing::contains_none;

namespace {

json::object obj(std::string_view text) { return parse_json_object(text, 1 << 16, 16).value(); }

LbService web(std::string name = "web") {
  LbService s;
  s.name = std::move(name);
  s.vip = "198.18.1.10";
  s.port = 80;
  s.probe_path = "/health";
  s.interval_ms = 500;
  s.unhealthy_threshold = 2;
  s.backends = {{"web-0", "198.19.0.10", 80}, {"web-1", "198.19.1.10", 80}};
  return s;
}

bool contains(const std::string& text, std::string_view piece) {
  return text.find(piece) != std::string::npos;
}

}  // namespace

// ---- the model ----

TEST(ServiceEndpointJson, ReadsEndpointDrainRpsAndWritesThemBack) {
  auto s = service_from_json(obj(R"({"name": "web", "instance_count": 2, "image": "v1",
      "endpoint": {"port": 8080, "probe": {"path": "/healthz", "interval_ms": 250,
                                           "unhealthy_threshold": 3}},
      "drain": false, "traffic_rps": 2.5})"));
  ASSERT_TRUE(s.ok()) << s.error().message;
  ASSERT_TRUE(s->endpoint.has_value());
  EXPECT_EQ(s->endpoint->port, 8080);
  EXPECT_EQ(s->endpoint->probe.path, "/healthz");
  EXPECT_EQ(s->endpoint->probe.interval_ms, 250);
  EXPECT_EQ(s->endpoint->probe.unhealthy_threshold, 3);
  EXPECT_FALSE(s->drain);
  EXPECT_DOUBLE_EQ(s->traffic_rps, 2.5);
  // 3 failures at 250 ms span 0.75 s: raised to 4 (kMinProbeDetectionMs), plus one interval.
  EXPECT_EQ(s->drain_ms(), 250 * 4 + 250);

  Service withVip = *s;
  withVip.vip = "198.18.1.10";
  auto back = service_from_json(to_json(withVip));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->endpoint, s->endpoint);
  EXPECT_EQ(back->vip, "198.18.1.10");
  EXPECT_FALSE(back->drain);
  EXPECT_DOUBLE_EQ(back->traffic_rps, 2.5);
}

TEST(ServiceEndpointJson, DefaultsAreAzuresProbeDrainOnAndTwentyRps) {
  auto s =
      service_from_json(obj(R"({"name": "web", "instance_count": 2, "endpoint": {"port": 80}})"));
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->endpoint->probe.path, "/health");
  EXPECT_EQ(s->endpoint->probe.interval_ms, 5000);
  EXPECT_EQ(s->endpoint->probe.unhealthy_threshold, 2);
  EXPECT_TRUE(s->drain);
  EXPECT_DOUBLE_EQ(s->traffic_rps, 20);
  EXPECT_TRUE(s->vip.empty());

  auto plain = service_from_json(obj(R"({"name": "batch", "instance_count": 1})"));
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->endpoint.has_value());
  EXPECT_EQ(plain->drain_ms(), 0);
  EXPECT_FALSE(to_json(*plain).contains("endpoint"));
  EXPECT_FALSE(to_json(*plain).contains("vip"));
}

TEST(ServiceEndpointJson, ErrorsNameTheKeyInFull) {
  struct Case {
    const char* body;
    const char* expect;
  };
  const Case cases[] = {
      {R"({"port": 0})", "endpoint.port must be an integer in 1..65535"},
      {R"({"port": 65536})", "endpoint.port must be an integer in 1..65535"},
      {R"({})", "endpoint.port is required"},
      {R"({"port": 80, "probe": {"interval_ms": 199}})",
       "endpoint.probe.interval_ms must be an integer in 200..600000"},
      {R"({"port": 80, "probe": {"interval_ms": 600001}})", "endpoint.probe.interval_ms must be"},
      {R"({"port": 80, "probe": {"interval_ms": 500.5}})", "endpoint.probe.interval_ms must be"},
      {R"({"port": 80, "probe": {"unhealthy_threshold": 0}})",
       "endpoint.probe.unhealthy_threshold must be an integer in 1..10"},
      {R"({"port": 80, "probe": {"unhealthy_threshold": 11}})",
       "endpoint.probe.unhealthy_threshold must be"},
      {R"({"port": 80, "probe": {"path": "health"}})", "endpoint.probe.path must start with '/'"},
      {R"({"port": 80, "probe": {"path": "/a b"}})", "endpoint.probe.path must start with '/'"},
      {R"({"port": 80, "probe": {"path": "/a'b"}})", "endpoint.probe.path must start with '/'"},
      {R"({"port": 80, "probe": {"path": "/a\nb"}})", "endpoint.probe.path must start with '/'"},
      {R"({"port": 80, "probe": {"path": 7}})", "endpoint.probe.path must be a string"},
      {R"({"port": 80, "probe": {"pth": "/"}})", "endpoint.probe: unknown field 'pth'"},
      {R"({"port": 80, "prob": {}})", "endpoint: unknown field 'prob'"},
  };
  for (const auto& c : cases) {
    json::object o{{"name", "web"}, {"instance_count", 2}, {"endpoint", obj(c.body)}};
    auto s = service_from_json(o);
    ASSERT_FALSE(s.ok()) << c.body;
    EXPECT_TRUE(contains(s.error().message, c.expect)) << c.body << " -> " << s.error().message;
  }
  std::string long_path = "/" + std::string(kMaxProbePathBytes, 'a');
  json::object o{
      {"name", "web"},
      {"instance_count", 2},
      {"endpoint", json::object{{"port", 80}, {"probe", json::object{{"path", long_path}}}}}};
  EXPECT_FALSE(service_from_json(o).ok());
  long_path.pop_back();
  o["endpoint"].as_object()["probe"].as_object()["path"] = long_path;
  EXPECT_TRUE(service_from_json(o).ok());
}

TEST(ServiceEndpointJson, RefusesBadRpsVipAndNamesHaproxyCannotCarry) {
  auto rps = service_from_json(obj(R"({"name": "web", "instance_count": 1, "traffic_rps": 0.05})"));
  ASSERT_FALSE(rps.ok());
  EXPECT_TRUE(contains(rps.error().message, "traffic_rps")) << rps.error().message;
  EXPECT_FALSE(
      service_from_json(obj(R"({"name": "web", "instance_count": 1, "traffic_rps": 1001})")).ok());
  auto drain = service_from_json(obj(R"({"name": "web", "instance_count": 1, "drain": "yes"})"));
  ASSERT_FALSE(drain.ok());
  EXPECT_TRUE(contains(drain.error().message, "drain"));
  auto vip =
      service_from_json(obj(R"({"name": "web", "instance_count": 1, "vip": "198.18.1.300"})"));
  ASSERT_FALSE(vip.ok());
  EXPECT_TRUE(contains(vip.error().message, "vip"));
  auto name = service_from_json(
      obj(R"({"name": "web app", "instance_count": 1, "endpoint": {"port": 80}})"));
  ASSERT_FALSE(name.ok());
  EXPECT_TRUE(contains(name.error().message, "'name'")) << name.error().message;
  // Without an endpoint the old, looser rule for names still holds.
  EXPECT_TRUE(service_from_json(obj(R"({"name": "web app", "instance_count": 1})")).ok());
}

TEST(ServiceEndpointJson, ClusterDocKeepsTheVip) {
  Cluster c;
  c.hosts.push_back(Host{"h0", 0, 4, HostState::ready, std::nullopt});
  Service s;
  s.name = "web";
  s.endpoint = ServiceEndpoint{8080, Probe{"/h", 300, 2}};
  s.vip = "198.18.1.10";
  c.services.push_back(s);
  auto back = cluster_from_json(to_json(c));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->services[0].vip, "198.18.1.10");
  EXPECT_EQ(back->services[0].endpoint->port, 8080);
}

TEST(Ipv4, AcceptsDottedQuadsOnly) {
  EXPECT_TRUE(is_ipv4("198.18.1.10"));
  EXPECT_TRUE(is_ipv4("0.0.0.0"));
  EXPECT_TRUE(is_ipv4("255.255.255.255"));
  for (auto bad : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4 ", "a.b.c.d",
                   "1..2.3", "1.2.3.4/24", "1234.1.1.1"}) {
    EXPECT_FALSE(is_ipv4(bad)) << bad;
  }
}

// ---- the renderer ----

TEST(HaproxyConfig, BootstrapHasOnlyTheHealthListener) {
  auto text = render_haproxy_config({}, lb_settings_for("/run/fabriclab/haproxy.cfg"));
  EXPECT_TRUE(contains_all(text, {"frontend lb_health\n  bind 198.18.1.1:8404\n",
                                  "server-state-file '/run/fabriclab/haproxy.cfg.state'\n",
                                  "load-server-state-from-file global\n"}));
  EXPECT_TRUE(contains_none(text, {"backend", "fe_"}));
  // Same input, same text: the orchestrator compares renders to skip reloads.
  EXPECT_EQ(text, render_haproxy_config({}, lb_settings_for("/run/fabriclab/haproxy.cfg")));
}

TEST(HaproxyConfig, OneFrontendAndBackendPerServiceWithAzuresProbeRules) {
  LbSettings settings = lb_settings_for("/tmp/lb.cfg");
  auto text = render_haproxy_config({web()}, settings);
  EXPECT_TRUE(contains_all(
      text,
      {"frontend fe_web\n  bind 198.18.1.10:80\n  default_backend be_web\n", "backend be_web\n",
       "  option httpchk GET '/health'\n", "  http-check expect status 200\n",
       "  default-server inter 500ms fall 2 rise 1\n",
       "  http-response set-header X-Served-By %s\n", "  retries 0\n", "  no option redispatch\n",
       "  timeout connect 1000ms\n",  // a loaded guest's SYN-ACK gets 1 s
       "  timeout check 1000ms\n",    // a loaded guest's answer gets 1 s
       "  server web-0 198.19.0.10:80 check\n  server web-1 198.19.1.10:80 check\n"}));
  EXPECT_TRUE(contains_none(text, {"\n  option redispatch"}));
  // Backends come after their frontend, the health listener first.
  EXPECT_LT(text.find("lb_health"), text.find("fe_web"));
}

TEST(HaproxyConfig, TimeoutsFollowTheIntervalWithinBounds) {
  auto with = [](int interval_ms, int unhealthy_threshold) {
    auto s = web();
    s.interval_ms = interval_ms;
    s.unhealthy_threshold = unhealthy_threshold;
    return render_haproxy_config({s}, {});
  };
  EXPECT_TRUE(contains_all(with(60000, 2), {"timeout connect 2000ms\n", "timeout check 60000ms\n",
                                            "inter 60000ms fall 2"}));
  // Two failed checks at 200 ms would take out a guest stalled for 0.4 s: fall spans 1 s.
  EXPECT_TRUE(contains_all(
      with(200, 2), {"timeout connect 1000ms\n", "inter 200ms fall 5", "timeout check 1000ms\n"}));
  // 6 x 300 ms is already over 1 s: kept.
  EXPECT_TRUE(contains_all(with(300, 6), {"inter 300ms fall 6"}));
}

TEST(HaproxyConfig, NoStateFileMeansNoStateLoading) {
  LbSettings s;
  s.server_state_file = "";
  auto text = render_haproxy_config({web()}, s);
  EXPECT_FALSE(contains(text, "server-state-file"));
  EXPECT_FALSE(contains(text, "load-server-state-from-file"));
}

TEST(HaproxyConfig, ProbePathIsSingleQuotedSoHashAndDollarStayLiteral) {
  auto s = web();
  s.probe_path = "/health?x=$HOME#1";
  ASSERT_TRUE(check_lb_service(s).ok());
  EXPECT_TRUE(contains(render_haproxy_config({s}, {}), "option httpchk GET '/health?x=$HOME#1'\n"));
}

TEST(HaproxyConfig, InvalidServicesAreLeftOutWithoutRepeatingTheirText) {
  auto evil_server = web("api");
  evil_server.backends[1].instance = "x check\nfrontend y";
  auto evil_path = web("img");
  evil_path.probe_path = "/h' X";
  auto evil_addr = web("db");
  evil_addr.backends[0].address = "198.19.0.10:22 check";
  auto text = render_haproxy_config(
      {web("web\n  bind 0.0.0.0:22"), evil_server, evil_path, evil_addr, web("ok")}, {});
  EXPECT_TRUE(contains_none(text, {"0.0.0.0:22", "frontend y", "X'", ":22 check", "fe_api"}));
  EXPECT_TRUE(
      contains_all(text, {"# services[0] left out", "# services[3] left out", "frontend fe_ok\n"}));
}

TEST(HaproxyConfig, CheckNamesTheServiceAndField) {
  const struct {
    std::function<void(LbService&)> spoil;
    std::string_view message;
  } cases[] = {
      {[](LbService& s) { s.vip = "198.18.1"; }, "service 'web': vip"},
      {[](LbService& s) { s.backends.push_back(s.backends[0]); }, "'web-0' is listed twice"},
      {[](LbService& s) { s.interval_ms = 100; }, "interval_ms"},
      {[](LbService& s) { s.unhealthy_threshold = 0; }, "unhealthy_threshold"},
  };
  for (const auto& c : cases) {
    auto s = web();
    c.spoil(s);
    auto checked = check_lb_service(s);
    ASSERT_FALSE(checked.ok()) << c.message;
    EXPECT_TRUE(contains(checked.error().message, c.message)) << checked.error().message;
  }

  LbSettings bad;
  bad.health_bind = "198.18.1.1";
  EXPECT_FALSE(check_lb_settings(bad).ok());
  bad = {};
  bad.server_state_file = "/tmp/a'b";
  EXPECT_FALSE(check_lb_settings(bad).ok());
  bad.server_state_file = "relative/state";
  EXPECT_FALSE(check_lb_settings(bad).ok());
  auto text = render_haproxy_config({}, bad);
  EXPECT_FALSE(contains(text, "relative/state"));
}

// ---- the master CLI parsers ----

namespace {
// Trimmed from HAProxy 2.6.12's real answer (the columns after check_desc removed).
constexpr std::string_view kStat =
    "# "
    "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
    "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,"
    "tracked,"
    "type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,"
    "hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,"
    "comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,"
    "agent_code,agent_duration,check_desc,\n"
    "lb_health,FRONTEND,,,0,0,9979,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,1,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,"
    "0,0,,,"
    "0,0,0,0,,,,,,,,,,,\n"
    "be_web,web-0,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,609,609,,1,3,1,,0,,2,0,,0,L4CON,,0,0,0,"
    "0,0,0,"
    "0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,\n"
    "be_web,web-1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,1,1,609,609,,1,3,1,,0,,2,0,,0,L7OK,200,1,0,0,"
    "0,0,0,"
    "0,,,,0,0,0,,,,,-1,OK,,0,0,0,0,,,,Layer7 check passed,\n"
    "be_web,web-2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/2,1,1,0,1,1,609,609,,1,3,1,,0,,2,0,,0,* "
    "L7STS,503,1,0,0,"
    "0,0,0,0,,,,0,0,0,,,,,-1,HTTP status check returned code <3C>503<3E>,,0,0,0,0,,,,Layer7 wrong "
    "status,\n"
    "be_web,web-3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,1,1,609,609,,1,3,1,,0,,2,0,,0,,,,0,0,0,0,"
    "0,0,"
    "0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,\n"
    "be_web,BACKEND,0,0,0,0,998,0,0,0,0,0,,0,0,0,0,UP,0,0,0,,1,609,609,,1,3,0,,0,,1,0,,0,,,,0,0,0,"
    "0,0,0,,,,"
    "0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,\n"
    "fe_web,FRONTEND,,,0,0,9979,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,"
    "0,,,"
    "0,0,0,0,,,,,,,,,,,\n\n";
}  // namespace

TEST(HaproxyStat, ReadsServerStatesAndChecks) {
  auto r = parse_haproxy_stat(kStat);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->size(), 4u);
  EXPECT_EQ((*r)[0], (LbServerState{"web", "web-0", "DOWN", "L4CON",
                                    "Layer4 connection problem: Connection refused"}));
  EXPECT_EQ((*r)[1].state, "UP");
  EXPECT_EQ((*r)[1].check, "L7OK 200");
  // Going down (1 of 2 failures so far) still serves; the check in progress is unstarred.
  EXPECT_EQ((*r)[2].state, "UP");
  EXPECT_EQ((*r)[2].check, "L7STS 503");
  EXPECT_EQ((*r)[3].state, "MAINT");
  EXPECT_EQ((*r)[3].check, "");
}

TEST(HaproxyStat, AnErrorAnswerIsAnErrorQuotingIt) {
  auto r = parse_haproxy_stat("Unknown command: 'show stats'\n");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.error().message, "Unknown command")) << r.error().message;
  auto empty = parse_haproxy_stat("# pxname,svname,status\n");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(HaproxyShowProc, ReadsReloadsFailuresAndWorkers) {
  constexpr std::string_view kProc =
      "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
      "7233            master          2 [failed: 1]   0d00h10m30s     2.6.12-1+deb12u4\n"
      "# workers\n"
      "1090            worker          0               0d00h00m01s     2.6.12-1+deb12u4\n"
      "# old workers\n"
      "1071            worker          1               0d00h00m13s     2.6.12-1+deb12u4\n"
      "# programs\n\n";
  auto p = parse_haproxy_show_proc(kProc);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->master_pid, 7233);
  EXPECT_EQ(p->reloads, 2);
  EXPECT_EQ(p->failed, 1);
  ASSERT_EQ(p->workers.size(), 1u);
  EXPECT_EQ(p->workers[0].pid, 1090);
  EXPECT_EQ(p->workers[0].reloads, 0);
  ASSERT_EQ(p->old_workers.size(), 1u);
  EXPECT_EQ(p->old_workers[0].pid, 1071);
  EXPECT_FALSE(parse_haproxy_show_proc("Permission denied\n").ok());
}
