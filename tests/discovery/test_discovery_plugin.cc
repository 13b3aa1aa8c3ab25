// The discovery plugin through the real plugin host, on the real
// store-local plugin, answering over real UDP and TCP sockets on loopback:
// the store watch keeps DNS current, health checks move instances in and
// out of DNS, negative answers, TC then TCP, malformed packets, and
// forwarding to a real dnsmasq on loopback.
#include <arpa/inet.h>
#include <flotilla/discovery.h>
#include <flotilla/store.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config.h"
#include "dns_test_support.h"
#include "grpc_test_server.h"
#include "loopback_port.h"
#include "nft.h"
#include "plugin_host.h"
#include "store_client.h"
#include "test_certs.h"

extern char **environ;

namespace {

using json = nlohmann::json;
using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::StoreClient;
using flotilla::StoreResult;
namespace dt = flotilla::discovery::test;
using Clock = std::chrono::steady_clock;

// A loopback port free for both UDP and TCP right now. The plugin binds the
// DNS port on both, so a port the kernel handed out for UDP alone could be a
// live TCP connection's local port by the time the plugin binds it (CI runs
// tests in parallel); loopback_port.h draws it below the ephemeral range
// and tries it on both protocols.
uint16_t free_port() {
  uint16_t port =
      flotilla::testing::free_port_below_ephemeral(flotilla::testing::PortUse::tcp_and_udp);
  if (port == 0) ADD_FAILURE() << "no loopback port in 20000-32000 is free for UDP and TCP";
  return port;
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return a;
}

// A TCP listener the health checks connect to; closing it fails them.
class Listener {
 public:
  Listener() : port_(free_port()) { open(); }
  ~Listener() { close_it(); }
  void open() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a = loopback(port_);
    if (bind(fd_, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || listen(fd_, 64) != 0)
      ADD_FAILURE() << "listener on " << port_ << ": " << std::strerror(errno);
  }
  void close_it() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  uint16_t port() const { return port_; }

 private:
  uint16_t port_;
  int fd_ = -1;
};

class DiscoveryPlugin : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/flotilla-discovery-test-" + std::to_string(getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    uv_loop_init(&loop_);
    dns_port_ = free_port();
  }

  void TearDown() override {
    store_.reset();
    if (host_) host_->stop();
    for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    host_.reset();
    // The host's handles close asynchronously: run their close callbacks
    // until the loop is empty, so a handle left open is a failure here and
    // not a leak report at exit.
    int closed = UV_EBUSY;
    for (int i = 0; i < 100 && (closed = uv_loop_close(&loop_)) == UV_EBUSY; ++i)
      uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(closed, 0) << "handles still open on the test loop after the host stopped";
    if (dnsmasq_pid_ > 0) {
      kill(dnsmasq_pid_, SIGTERM);
      waitpid(dnsmasq_pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }

  void start(json extra = json::object()) {
    PluginSettings store;
    store.name = "store-local";
    store.path = STORE_LOCAL_PLUGIN_PATH;
    PluginSettings disc;
    disc.name = "discovery";
    disc.path = DISCOVERY_PLUGIN_PATH;
    disc.config = {{"listen", {"127.0.0.1:" + std::to_string(dns_port_)}},
                   {"lease_ttl", 2},
                   {"forward_timeout_ms", 300},
                   {"upstreams", json::array()},
                   {"resolv_conf", dir_ + "/no-resolv.conf"}};
    for (auto it = extra.begin(); it != extra.end(); ++it) disc.config[it.key()] = it.value();
    PluginHost::Options opts;
    opts.node_name = "node-a";
    opts.data_dir = dir_;
    opts.config_path = "(test)";
    host_ = std::make_unique<PluginHost>(&loop_, opts);
    host_->start({store, disc});
    void *s = nullptr;
    auto *vt = host_->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &s);
    ASSERT_TRUE(vt);
    store_ = std::make_unique<StoreClient>(vt, s);
    disc_ = host_->find<flotilla_discovery_v1>(FLOTILLA_DISCOVERY_INTERFACE_ID, &disc_self_);
    ASSERT_TRUE(disc_);
  }

  // Runs the loop until done() or the guard (a hang guard, not a timing
  // assertion) runs out.
  bool run_until(const std::function<bool()> &done, double guard_s = 20) {
    auto end = Clock::now() + std::chrono::duration<double>(guard_s);
    while (!done()) {
      if (Clock::now() > end) return false;
      uv_run(&loop_, UV_RUN_NOWAIT);
      usleep(1000);
    }
    return true;
  }

  void put(const std::string &key, const json &value) {
    bool done = false;
    store_->put(key, value.dump(), [&](StoreResult r, int64_t) {
      EXPECT_TRUE(r.ok()) << r.message;
      done = true;
    });
    ASSERT_TRUE(run_until([&] { return done; }));
  }
  void remove(const std::string &key) {
    bool done = false;
    store_->remove(key, false, [&](StoreResult, int64_t, int64_t) { done = true; });
    ASSERT_TRUE(run_until([&] { return done; }));
  }

  // One query over UDP to the plugin; the loop runs while we wait.
  std::optional<dt::Reply> udp(const std::vector<uint8_t> &q, uint16_t port = 0,
                               double wait_s = 5) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    sockaddr_in a = loopback(port ? port : dns_port_);
    sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr *>(&a), sizeof a);
    std::vector<uint8_t> buf(65535);
    ssize_t n = -1;
    run_until([&] { return (n = recv(fd, buf.data(), buf.size(), 0)) >= 0; }, wait_s);
    close(fd);
    if (n < 0) return std::nullopt;
    return dt::parse_reply(buf.data(), static_cast<size_t>(n));
  }
  std::optional<dt::Reply> udp(const std::string &name, uint16_t type, uint16_t edns = 0) {
    return udp(dt::make_query(name, type, edns));
  }

  std::optional<dt::Reply> tcp(const std::string &name, uint16_t type) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(dns_port_);
    // connect() to loopback completes in the kernel without our loop.
    if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
      close(fd);
      return std::nullopt;
    }
    auto q = dt::make_query(name, type);
    std::vector<uint8_t> frame = {static_cast<uint8_t>(q.size() >> 8),
                                  static_cast<uint8_t>(q.size() & 0xff)};
    frame.insert(frame.end(), q.begin(), q.end());
    send(fd, frame.data(), frame.size(), 0);
    std::vector<uint8_t> in;
    uint8_t buf[65536];
    run_until(
        [&] {
          ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
          if (n > 0) in.insert(in.end(), buf, buf + n);
          return in.size() >= 2 && in.size() >= 2u + ((in[0] << 8) | in[1]);
        },
        5);
    close(fd);
    if (in.size() < 2) return std::nullopt;
    return dt::parse_reply(in.data() + 2, in.size() - 2);
  }

  static json endpoint(const std::string &addr, const std::string &health = "passing",
                       int port = 8080) {
    return {{"node", "node-b"}, {"addresses", {addr}}, {"port", port}, {"health", health}};
  }

  void register_alloc(const std::string &alloc, const json &doc) {
    std::optional<flotilla_status> st;
    auto cb = [](void *user, flotilla_status s) {
      *static_cast<std::optional<flotilla_status> *>(user) = s;
    };
    ASSERT_EQ(disc_->register_alloc(disc_self_, alloc.c_str(), doc.dump().c_str(), cb, &st),
              FLOTILLA_OK)
        << PluginHost::last_error();
    ASSERT_TRUE(run_until([&] { return st.has_value(); }));
    EXPECT_EQ(*st, FLOTILLA_OK);
  }

  std::multiset<std::string> a_records(const std::string &name) {
    auto r = udp(dt::make_query(name, KNOT_RRTYPE_A), 0, 1);
    if (!r) return {"(no reply)"};
    return {r->answer.begin(), r->answer.end()};
  }

  void start_dnsmasq(uint16_t port) {
    if (access("/usr/sbin/dnsmasq", X_OK) != 0) GTEST_SKIP() << "SKIPPED: dnsmasq is not installed";
    std::vector<std::string> args = {"dnsmasq",
                                     "--keep-in-foreground",
                                     "--conf-file=/dev/null",
                                     "--no-resolv",
                                     "--no-hosts",
                                     "--bind-interfaces",
                                     "--listen-address=127.0.0.1",
                                     "--port=" + std::to_string(port),
                                     "--address=/external.test/192.0.2.7",
                                     "--pid-file=" + dir_ + "/dnsmasq.pid"};
    if (getuid() == 0) args.push_back("--user=root");
    std::vector<char *> argv;
    for (auto &a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ASSERT_EQ(
        posix_spawn(&dnsmasq_pid_, "/usr/sbin/dnsmasq", nullptr, nullptr, argv.data(), environ), 0);
    // Ready once it answers.
    auto probe = dt::make_query("external.test.", KNOT_RRTYPE_A);
    bool up = run_until([&] { return udp(probe, port, 0.2).has_value(); }, 10);
    ASSERT_TRUE(up) << "dnsmasq did not answer on 127.0.0.1:" << port;
  }

  std::string dir_;
  uv_loop_t loop_{};
  uint16_t dns_port_ = 0;
  std::unique_ptr<PluginHost> host_;
  std::unique_ptr<StoreClient> store_;
  const flotilla_discovery_v1 *disc_ = nullptr;
  void *disc_self_ = nullptr;
  pid_t dnsmasq_pid_ = -1;
};

TEST_F(DiscoveryPlugin, ANewServiceResolvesWithinOneSecondOfItsRecord) {
  start();
  auto nx = udp("web.service.flotilla.", KNOT_RRTYPE_A);
  ASSERT_TRUE(nx);
  EXPECT_EQ(nx->rcode, KNOT_RCODE_NXDOMAIN);
  const auto t0 = Clock::now();
  put("/flotilla/services/web/alloc1", endpoint("10.42.1.5"));
  ASSERT_TRUE(run_until([&] { return a_records("web.service.flotilla.").count("A 10.42.1.5"); }));
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  RecordProperty("new_service_resolves_ms", std::to_string(ms));
  EXPECT_LT(ms, 1000.0);
}

TEST_F(DiscoveryPlugin, ExactlyThePassingBackendsAndTheirSrv) {
  start();
  put("/flotilla/services/web/b1", endpoint("10.42.2.5", "passing", 8080));
  put("/flotilla/services/web/c1", endpoint("10.42.3.5", "passing", 9090));
  put("/flotilla/services/web/c2", endpoint("10.42.3.6", "critical", 9090));
  ASSERT_TRUE(run_until([&] {
    return a_records("web.service.flotilla.") ==
           std::multiset<std::string>{"A 10.42.2.5", "A 10.42.3.5"};
  }));
  auto srv = udp("_web._tcp.service.flotilla.", KNOT_RRTYPE_SRV);
  ASSERT_TRUE(srv);
  EXPECT_EQ(std::multiset<std::string>(srv->answer.begin(), srv->answer.end()),
            (std::multiset<std::string>{"SRV 1 1 8080 b1.alloc.flotilla.",
                                        "SRV 1 1 9090 c1.alloc.flotilla."}));
  // the last passing one goes critical: NODATA with the SOA, not a timeout
  put("/flotilla/services/web/b1", endpoint("10.42.2.5", "critical"));
  put("/flotilla/services/web/c1", endpoint("10.42.3.5", "critical"));
  ASSERT_TRUE(run_until([&] { return a_records("web.service.flotilla.").empty(); }));
  auto nodata = udp("web.service.flotilla.", KNOT_RRTYPE_A);
  ASSERT_TRUE(nodata);
  EXPECT_EQ(nodata->rcode, KNOT_RCODE_NOERROR);
  EXPECT_EQ(nodata->authority, (std::vector<std::string>{"SOA 1"}));
  // removed entirely: NXDOMAIN
  remove("/flotilla/services/web/b1");
  remove("/flotilla/services/web/c1");
  remove("/flotilla/services/web/c2");
  ASSERT_TRUE(run_until([&] {
    auto r = udp("web.service.flotilla.", KNOT_RRTYPE_A);
    return r && r->rcode == KNOT_RCODE_NXDOMAIN;
  }));
}

TEST_F(DiscoveryPlugin, TruncatedOverUdpCompleteOverTcp) {
  start();
  for (int i = 0; i < 80; ++i)
    put("/flotilla/services/big/a" + std::to_string(i), endpoint("10.42.7." + std::to_string(i)));
  ASSERT_TRUE(run_until([&] {
    auto r = tcp("big.service.flotilla.", KNOT_RRTYPE_A);
    return r && r->answer.size() == 80;
  }));
  auto u = udp("big.service.flotilla.", KNOT_RRTYPE_A);
  ASSERT_TRUE(u);
  EXPECT_TRUE(u->tc);
  auto t = tcp("big.service.flotilla.", KNOT_RRTYPE_A);
  ASSERT_TRUE(t);
  EXPECT_FALSE(t->tc);
  EXPECT_EQ(t->answer.size(), 80u);
}

TEST_F(DiscoveryPlugin, MalformedPacketsNeitherCrashNorStall) {
  start();
  put("/flotilla/services/web/a1", endpoint("10.42.1.5"));
  std::vector<std::vector<uint8_t>> junk = {
      {},
      {0x12},
      {0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1},
      {0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
      std::vector<uint8_t>(4000, 0x3f),
  };
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a = loopback(dns_port_);
  for (int round = 0; round < 50; ++round)
    for (const auto &j : junk)
      sendto(fd, j.data(), j.size(), 0, reinterpret_cast<sockaddr *>(&a), sizeof a);
  close(fd);
  ASSERT_TRUE(run_until([&] { return a_records("web.service.flotilla.").count("A 10.42.1.5"); }))
      << "the server still answers";
}

// A burst from one socket is read in one batch, and its replies of one size
// leave as one segmented send (UDP GSO, dns_server.cc): every reply must
// still arrive as a datagram of its own, carrying its query's ID.
TEST_F(DiscoveryPlugin, ABurstFromOneSocketGetsEveryReplyAsItsOwnDatagram) {
  start();
  put("/flotilla/services/web/a1", endpoint("10.42.1.5"));
  put("/flotilla/services/web/a2", endpoint("10.42.1.6"));
  put("/flotilla/services/web/a3", endpoint("10.42.1.7"));
  ASSERT_TRUE(run_until([&] { return a_records("web.service.flotilla.").size() == 3; }));
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  int big = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  sockaddr_in a = loopback(dns_port_);
  constexpr int kQueries = 150;
  // Two of every three ask web (one reply size), the rest a name that does
  // not exist, of two lengths (NXDOMAIN, other sizes).
  for (int i = 0; i < kQueries; ++i) {
    const std::string name = i % 3 != 2 ? "web.service.flotilla."
                             : i % 2    ? "nothere.service.flotilla."
                                        : "x.service.flotilla.";
    auto q = dt::make_query(name, KNOT_RRTYPE_A, 0, static_cast<uint16_t>(i + 1));
    ASSERT_EQ(sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr *>(&a), sizeof a),
              static_cast<ssize_t>(q.size()));
  }
  std::set<uint16_t> ids;
  int bad = 0;
  std::vector<uint8_t> buf(65535);
  run_until(
      [&] {
        for (;;) {
          ssize_t n = recv(fd, buf.data(), buf.size(), 0);
          if (n < 0) break;
          dt::Reply r = dt::parse_reply(buf.data(), static_cast<size_t>(n));
          const int i = r.id - 1;
          const bool web = i % 3 != 2;
          if (r.rcode != (web ? KNOT_RCODE_NOERROR : KNOT_RCODE_NXDOMAIN) ||
              r.answer.size() != (web ? 3u : 0u) || !ids.insert(r.id).second)
            ++bad;
        }
        return ids.size() == kQueries;
      },
      10);
  close(fd);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kQueries));
  EXPECT_EQ(bad, 0);
}

TEST_F(DiscoveryPlugin, HealthChecksMoveAnInstanceOutOfDnsAndBack) {
  start();
  Listener healthy;
  const uint32_t interval = 200, failures = 2;
  json doc = {{"addresses", {"127.0.0.1"}},
              {"services",
               {{{"name", "api"},
                 {"port", healthy.port()},
                 {"tags", {"v1"}},
                 {"checks",
                  {{{"type", "tcp"},
                    {"interval_ms", interval},
                    {"timeout_ms", 100},
                    {"failures_before_critical", failures}}}}}}}};
  register_alloc("alloc-api-1", doc);
  ASSERT_TRUE(run_until([&] { return a_records("api.service.flotilla.").count("A 127.0.0.1"); }));
  EXPECT_EQ(a_records("v1.api.service.flotilla."), std::multiset<std::string>{"A 127.0.0.1"});

  // the check fails: out of DNS within interval × failures + 1 s
  healthy.close_it();
  const auto t0 = Clock::now();
  ASSERT_TRUE(run_until([&] { return a_records("api.service.flotilla.").empty(); }));
  const double out_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  RecordProperty("withdrawn_ms", std::to_string(out_ms));
  EXPECT_LT(out_ms, interval * failures + 1000.0);
  auto nodata = udp("api.service.flotilla.", KNOT_RRTYPE_A);
  ASSERT_TRUE(nodata);
  EXPECT_EQ(nodata->rcode, KNOT_RCODE_NOERROR) << "known but not healthy: NODATA";

  // the record says why
  std::optional<json> rec;
  store_->get("/flotilla/services/api/alloc-api-1",
              [&](StoreResult, std::optional<flotilla::KeyValue> kv, int64_t) {
                rec = kv ? json::parse(kv->value) : json();
              });
  ASSERT_TRUE(run_until([&] { return rec.has_value(); }));
  EXPECT_EQ(rec->value("health", ""), "critical");
  EXPECT_NE(rec->value("output", "").find("connect"), std::string::npos) << rec->dump();

  // it passes again: back
  healthy.open();
  ASSERT_TRUE(run_until([&] { return a_records("api.service.flotilla.").count("A 127.0.0.1"); }));

  // lookup() serves the healthy endpoints
  std::optional<std::string> eps;
  auto cb = [](void *user, flotilla_status, const char *j) {
    *static_cast<std::optional<std::string> *>(user) = j;
  };
  ASSERT_EQ(disc_->lookup(disc_self_, "api", cb, &eps), FLOTILLA_OK);
  ASSERT_TRUE(run_until([&] { return eps.has_value(); }));
  EXPECT_EQ(json::parse(*eps).size(), 1u) << *eps;

  // deregistered: gone
  std::optional<flotilla_status> st;
  auto done = [](void *user, flotilla_status s) {
    *static_cast<std::optional<flotilla_status> *>(user) = s;
  };
  ASSERT_EQ(disc_->deregister_alloc(disc_self_, "alloc-api-1", done, &st), FLOTILLA_OK);
  ASSERT_TRUE(run_until([&] {
    auto r = udp("api.service.flotilla.", KNOT_RRTYPE_A);
    return r && r->rcode == KNOT_RCODE_NXDOMAIN;
  }));
}

// A grpc check on the daemon's loop against a real gRPC server: SERVING
// puts the instance in DNS, NOT_SERVING takes it out with the status as the
// check's output, SERVING brings it back.
TEST_F(DiscoveryPlugin, GrpcChecksFollowARealServersHealthStatus) {
  start();
  dt::GrpcServer grpc;
  ASSERT_TRUE(grpc.up()) << "grpc++ could not listen on 127.0.0.1";
  grpc.set("api.v1.Orders", false);
  json doc = {{"addresses", {"127.0.0.1"}},
              {"services",
               {{{"name", "orders"},
                 {"port", grpc.port()},
                 {"checks",
                  {{{"type", "grpc"},
                    {"grpc_service", "api.v1.Orders"},
                    {"interval_ms", 200},
                    {"timeout_ms", 150}}}}}}}};
  register_alloc("alloc-orders-1", doc);
  auto record = [&] {
    std::optional<json> rec;
    store_->get("/flotilla/services/orders/alloc-orders-1",
                [&](StoreResult, std::optional<flotilla::KeyValue> kv, int64_t) {
                  rec = kv ? json::parse(kv->value) : json::object();
                });
    run_until([&] { return rec.has_value(); });
    return rec.value_or(json::object());
  };
  // NOT_SERVING from the start: never served, and the record says why.
  ASSERT_TRUE(run_until([&] { return record().value("output", "") == "NOT_SERVING"; }))
      << record().dump();
  EXPECT_TRUE(a_records("orders.service.flotilla.").empty());

  grpc.set("api.v1.Orders", true);
  ASSERT_TRUE(run_until([&] { return a_records("orders.service.flotilla.").count("A 127.0.0.1"); }));
  EXPECT_EQ(record().value("output", ""), "SERVING");

  grpc.set("api.v1.Orders", false);
  ASSERT_TRUE(run_until([&] { return a_records("orders.service.flotilla.").empty(); }));
  EXPECT_EQ(record().value("health", ""), "critical");
  EXPECT_EQ(record().value("output", ""), "NOT_SERVING");
}

// TLS for the checks, with certificates made by openssl here: a CA, and a
// server certificate it signed for the name check.test and the address
// 127.0.0.1. Returns "" or why they could not be made.
std::string make_certs(const std::string &dir) {
  const std::string cmd =
      flotilla::testing::ca_and_server_cert_command(dir, "DNS:check.test,IP:127.0.0.1");
  return std::system(cmd.c_str()) == 0 ? "" : "failed: " + cmd;
}

std::string slurp(const std::string &path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `openssl s_server -www` on a loopback port: answers GET over TLS with
// 200 and a status page. Killed by pid.
class HttpsServer {
 public:
  HttpsServer(const std::string &dir) : port_(free_port()) {
    std::vector<std::string> args = {"openssl", "s_server", "-quiet", "-www", "-accept",
                                     "127.0.0.1:" + std::to_string(port_), "-cert",
                                     dir + "/srv.pem", "-key", dir + "/srv.key"};
    std::vector<char *> argv;
    for (auto &a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawnp(&pid_, "openssl", nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
  }
  ~HttpsServer() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Listening yet (a hang guard, not a timing assertion).
  bool wait_up() {
    for (int i = 0; i < 500 && pid_ > 0; ++i) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a = loopback(port_);
      bool ok = connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0;
      close(fd);
      if (ok) return true;
      usleep(10000);
    }
    return false;
  }
  uint16_t port() const { return port_; }

 private:
  uint16_t port_;
  pid_t pid_ = -1;
};

class DiscoveryTls : public DiscoveryPlugin {
 protected:
  void SetUp() override {
    DiscoveryPlugin::SetUp();
    if (access("/usr/bin/openssl", X_OK) != 0) GTEST_SKIP() << "SKIPPED: openssl is not installed";
    const std::string e = make_certs(dir_);
    ASSERT_EQ(e, "") << e;
    // Making the keys took about a second on this thread, and the loop's
    // clock is its cached time (libuv): brought up to date, or the checks'
    // first timeouts would be measured from before the keys were made.
    uv_update_time(&loop_);
  }
  json check_record(const std::string &svc, const std::string &alloc) {
    std::optional<json> rec;
    store_->get("/flotilla/services/" + svc + "/" + alloc,
                [&](StoreResult, std::optional<flotilla::KeyValue> kv, int64_t) {
                  rec = kv ? json::parse(kv->value) : json::object();
                });
    run_until([&] { return rec.has_value(); });
    return rec.value_or(json::object());
  }
  // Registers one service with one check on 127.0.0.1:port and runs the
  // loop until its record's output holds `want` (a hang guard, not a
  // timing assertion); returns the record. A TLS handshake under the
  // sanitizers on a loaded machine can take a while: a generous timeout.
  json checked(const std::string &svc, int port, const json &check, const std::string &want) {
    json c = check;
    c["interval_ms"] = 1500;
    c["timeout_ms"] = 1000;
    json doc = {{"addresses", {"127.0.0.1"}},
                {"services", {{{"name", svc}, {"port", port}, {"checks", {c}}}}}};
    register_alloc("alloc-" + svc, doc);
    json rec;
    run_until([&] {
      rec = check_record(svc, "alloc-" + svc);
      return rec.value("output", "").find(want) != std::string::npos;
    });
    return rec;
  }
};

// With the CA configured, an https check verifies the server's certificate
// against the address it connects to, or against tls_server_name (SNI and
// the name checked); a name the certificate does not hold fails, and so
// does a plaintext check of a TLS port.
TEST_F(DiscoveryTls, HttpsChecksVerifyTheServerAgainstTheConfiguredCa) {
  HttpsServer https(dir_);
  ASSERT_TRUE(https.wait_up()) << "openssl s_server did not listen";
  start({{"check_ca_file", dir_ + "/ca.pem"}});
  json by_ip = checked("web-ip", https.port(), {{"type", "http"}, {"tls", true}}, "HTTP 200 over TLS");
  EXPECT_EQ(by_ip.value("output", ""), "HTTP 200 over TLS") << by_ip.dump();
  EXPECT_EQ(by_ip.value("health", ""), "passing") << by_ip.dump();
  json by_name = checked("web-name", https.port(),
                         {{"type", "http"}, {"tls", true}, {"tls_server_name", "check.test"}},
                         "HTTP 200 over TLS");
  EXPECT_EQ(by_name.value("output", ""), "HTTP 200 over TLS") << by_name.dump();
  json wrong = checked("web-wrong", https.port(),
                       {{"type", "http"}, {"tls", true}, {"tls_server_name", "other.test"}},
                       "certificate verify failed");
  EXPECT_NE(wrong.value("output", "").find("certificate verify failed"), std::string::npos)
      << wrong.dump();
  EXPECT_EQ(wrong.value("health", ""), "critical") << wrong.dump();
  json plain = checked("web-plain", https.port(), {{"type", "http"}}, "closed before an HTTP status line");
  EXPECT_EQ(plain.value("health", ""), "critical") << plain.dump();
  EXPECT_TRUE(a_records("web-ip.service.flotilla.").count("A 127.0.0.1"));
  EXPECT_TRUE(a_records("web-wrong.service.flotilla.").empty());
}

// Without check_ca_file the system's bundle is used, which does not hold
// the test's CA: the check fails and says why; tls_skip_verify accepts
// the certificate.
TEST_F(DiscoveryTls, AnUnknownIssuerFailsUnlessVerificationIsSkipped) {
  HttpsServer https(dir_);
  ASSERT_TRUE(https.wait_up()) << "openssl s_server did not listen";
  start();
  json strict = checked("strict", https.port(), {{"type", "http"}, {"tls", true}},
                        "certificate verify failed");
  EXPECT_NE(strict.value("output", "").find("certificate verify failed"), std::string::npos)
      << strict.dump();
  json lax = checked("lax", https.port(),
                     {{"type", "http"}, {"tls", true}, {"tls_skip_verify", true}}, "HTTP 200");
  EXPECT_EQ(lax.value("output", ""), "HTTP 200 over TLS") << lax.dump();
}

// A grpc check over TLS (ALPN h2) against grpc++'s own TLS server.
TEST_F(DiscoveryTls, GrpcChecksOverTlsFollowTheServersStatus) {
  dt::GrpcServer grpc(slurp(dir_ + "/srv.pem"), slurp(dir_ + "/srv.key"));
  ASSERT_TRUE(grpc.up()) << "grpc++ could not listen with TLS on 127.0.0.1";
  start({{"check_ca_file", dir_ + "/ca.pem"}});
  grpc.set("api.v1.Orders", true);
  json rec = checked("orders", grpc.port(),
                     {{"type", "grpc"}, {"grpc_service", "api.v1.Orders"}, {"tls", true}}, "SERVING");
  EXPECT_EQ(rec.value("output", ""), "SERVING") << rec.dump();
  EXPECT_EQ(rec.value("health", ""), "passing") << rec.dump();
  json cleartext = checked("orders-h2c", grpc.port(),
                           {{"type", "grpc"}, {"grpc_service", "api.v1.Orders"}}, "closed");
  EXPECT_EQ(cleartext.value("health", ""), "critical") << cleartext.dump();
}

TEST_F(DiscoveryTls, AnUnreadableCaFileIsAConfigError) {
  try {
    start({{"check_ca_file", dir_ + "/no-such-ca.pem"}});
    FAIL() << "started with an unreadable check_ca_file";
  } catch (const std::exception &e) {
    std::string m = e.what();
    EXPECT_NE(m.find("check_ca_file"), std::string::npos) << m;
  }
}

// check_restart: once a check failed `limit` times in a row past the
// grace, discovery asks (once) for the task's restart on the event bus; a
// passing run resets the count, and failures within the grace do not count.
TEST_F(DiscoveryPlugin, CheckRestartAsksForTheTasksRestartOnceAfterTheLimit) {
  start();
  std::vector<json> asked;
  host_->events().subscribe(
      "discovery.check_restart",
      [&](const std::string &, const std::string &j) { asked.push_back(json::parse(j)); });
  Listener down;
  down.close_it();  // nothing listens: every run fails
  auto doc = [&](uint64_t grace_ms) {
    return json{{"addresses", {"127.0.0.1"}},
                {"services",
                 {{{"name", "flaky"},
                   {"port", down.port()},
                   {"task", "srv"},
                   {"check_restart", {{"limit", 3}, {"grace_ms", grace_ms}}},
                   {"checks", {{{"type", "tcp"}, {"interval_ms", 100}, {"timeout_ms", 50}}}}}}}};
  };
  register_alloc("alloc-cr-1", doc(0));
  ASSERT_TRUE(run_until([&] { return !asked.empty(); }, 10));
  EXPECT_EQ(asked[0]["alloc"], "alloc-cr-1");
  EXPECT_EQ(asked[0]["task"], "srv");
  EXPECT_EQ(asked[0]["service"], "flaky");
  EXPECT_EQ(asked[0]["failures"], 3);
  EXPECT_NE(asked[0]["reason"].get<std::string>().find("failed 3 times in a row"),
            std::string::npos)
      << asked[0].dump();
  // Not again while the same registration keeps failing.
  const auto t1 = Clock::now();
  run_until([&] { return Clock::now() - t1 > std::chrono::milliseconds(600); });
  EXPECT_EQ(asked.size(), 1u);

  // Within a 5 s grace, nothing.
  register_alloc("alloc-cr-2", doc(5000));
  const auto t2 = Clock::now();
  run_until([&] { return Clock::now() - t2 > std::chrono::milliseconds(700); });
  EXPECT_EQ(asked.size(), 1u) << asked.back().dump();

  // A bad check_restart is refused with the field.
  json bad = doc(0);
  bad["services"][0]["check_restart"]["limit"] = 0;
  auto cb = [](void *, flotilla_status) {};
  EXPECT_EQ(disc_->register_alloc(disc_self_, "a-bad", bad.dump().c_str(), cb, nullptr),
            FLOTILLA_E_INVALID);
  EXPECT_NE(PluginHost::last_error().find("services[0].check_restart.limit"), std::string::npos)
      << PluginHost::last_error();
}

TEST_F(DiscoveryPlugin, BadRegistrationsAreRefusedWithTheField) {
  start();
  json doc = {{"addresses", {"127.0.0.1"}}, {"services", {{{"name", "Bad_Name"}, {"port", 80}}}}};
  auto cb = [](void *, flotilla_status) {};
  EXPECT_EQ(disc_->register_alloc(disc_self_, "a1", doc.dump().c_str(), cb, nullptr),
            FLOTILLA_E_INVALID);
  EXPECT_NE(PluginHost::last_error().find("services[0].name"), std::string::npos)
      << PluginHost::last_error();
  doc = {{"addresses", {"127.0.0.1"}},
         {"services", {{{"name", "web"}, {"port", 80}, {"checks", {{{"type", "smoke"}}}}}}}};
  EXPECT_EQ(disc_->register_alloc(disc_self_, "a1", doc.dump().c_str(), cb, nullptr),
            FLOTILLA_E_INVALID);
  EXPECT_NE(PluginHost::last_error().find("checks[0].type"), std::string::npos)
      << PluginHost::last_error();
  // No runtime plugin is loaded here: an exec check is refused, saying so.
  json exec = {{"type", "exec"}, {"command", "true"}};
  doc = {
      {"addresses", {"127.0.0.1"}},
      {"services", {{{"name", "web"}, {"port", 80}, {"container", "a1.web"}, {"checks", {exec}}}}}};
  EXPECT_EQ(disc_->register_alloc(disc_self_, "a1", doc.dump().c_str(), cb, nullptr),
            FLOTILLA_E_UNSUPPORTED);
  EXPECT_NE(PluginHost::last_error().find("checks[0]: exec checks need a runtime plugin"),
            std::string::npos)
      << PluginHost::last_error();
  doc["services"][0].erase("container");
  EXPECT_EQ(disc_->register_alloc(disc_self_, "a1", doc.dump().c_str(), cb, nullptr),
            FLOTILLA_E_INVALID);
  EXPECT_NE(PluginHost::last_error().find("services[0].container"), std::string::npos)
      << PluginHost::last_error();
}

TEST_F(DiscoveryPlugin, OtherNamesGoToTheUpstreamDnsmasq) {
  const uint16_t up = free_port();
  start_dnsmasq(up);
  if (HasFatalFailure() || IsSkipped()) return;
  // The first upstream answers nothing (no one listens): the second does.
  start({{"upstreams",
          {"127.0.0.1:" + std::to_string(free_port()), "127.0.0.1:" + std::to_string(up)}}});
  auto r = udp("external.test.", KNOT_RRTYPE_A);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcode, KNOT_RCODE_NOERROR);
  EXPECT_EQ(r->answer, (std::vector<std::string>{"A 192.0.2.7"}));
  EXPECT_EQ(r->id, 0x1234) << "the client's id, not ours";
  auto t = tcp("external.test.", KNOT_RRTYPE_A);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->answer, (std::vector<std::string>{"A 192.0.2.7"}));
  // many at once, none waits for another
  std::vector<int> fds;
  sockaddr_in a = loopback(dns_port_);
  for (int i = 0; i < 50; ++i) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    auto q = dt::make_query("n" + std::to_string(i) + ".external.test.", KNOT_RRTYPE_A, 0,
                            static_cast<uint16_t>(i));
    sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr *>(&a), sizeof a);
    fds.push_back(fd);
  }
  std::set<int> answered;
  ASSERT_TRUE(run_until([&] {
    uint8_t buf[4096];
    for (size_t i = 0; i < fds.size(); ++i)
      if (recv(fds[i], buf, sizeof buf, 0) > 0) answered.insert(static_cast<int>(i));
    return answered.size() == fds.size();
  }));
  for (int fd : fds) close(fd);
}

TEST_F(DiscoveryPlugin, WithoutUpstreamsForeignNamesGetServfailAtOnce) {
  start();
  auto r = udp("example.com.", KNOT_RRTYPE_A);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcode, KNOT_RCODE_SERVFAIL);
}

// net-overlay announces the bridge ("network.bridge.ready"); discovery
// answers on each gateway's port 53 and announces that back
// ("discovery.dns.ready", with ndots:1) for the containers' resolv.conf.
// A loopback address of this run stands in for the gateway.
TEST_F(DiscoveryPlugin, AnswersOnTheBridgeGatewayOnceNetOverlayAnnouncesIt) {
  if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (port 53)";
  start();
  std::vector<json> announced;
  host_->events().subscribe("discovery.dns.", [&](const std::string &, const std::string &j) {
    announced.push_back(json::parse(j));
  });
  const std::string gw = "127.53." + std::to_string(getpid() % 250 + 1) + ".1";
  host_->events().publish(
      "network.bridge.ready",
      json{{"node", "node-a"}, {"bridge", "flt0"}, {"gateways", {gw, "bogus"}}}.dump());
  ASSERT_TRUE(run_until([&] { return !announced.empty(); }, 5));
  EXPECT_EQ(announced[0]["nameservers"], json::array({gw}));
  EXPECT_EQ(announced[0]["options"], json::array({"ndots:1"}));
  register_alloc("alloc-g1", {{"addresses", {"10.42.7.5"}},
                              {"services", {{{"name", "gwsvc"}, {"port", 8080}}}}});
  // Over UDP and TCP on gw:53.
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(53);
  inet_pton(AF_INET, gw.c_str(), &a.sin_addr);
  std::optional<dt::Reply> r;
  ASSERT_TRUE(run_until(
      [&] {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        auto q = dt::make_query("gwsvc.service.flotilla.", KNOT_RRTYPE_A);
        sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr *>(&a), sizeof a);
        std::vector<uint8_t> buf(4096);
        ssize_t n = -1;
        run_until([&] { return (n = recv(fd, buf.data(), buf.size(), 0)) >= 0; }, 1);
        close(fd);
        if (n > 0) r = dt::parse_reply(buf.data(), static_cast<size_t>(n));
        return r && r->answer == std::vector<std::string>{"A 10.42.7.5"};
      },
      5));
  int tfd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_EQ(connect(tfd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0)
      << "TCP on the gateway: " << std::strerror(errno);
  close(tfd);
  // Announced again (a restarted net-overlay): the same server, announced again.
  host_->events().publish("network.bridge.ready", json{{"gateways", {gw}}}.dump());
  ASSERT_TRUE(run_until([&] { return announced.size() == 2; }, 5));
  EXPECT_EQ(announced[1]["nameservers"], json::array({gw}));
}

TEST_F(DiscoveryPlugin, WithContainerDnsOffTheBridgeIsNotServed) {
  start({{"container_dns", false}});
  int announced = 0;
  host_->events().subscribe("discovery.dns.",
                            [&](const std::string &, const std::string &) { ++announced; });
  host_->events().publish("network.bridge.ready", json{{"gateways", {"127.0.0.1"}}}.dump());
  bool ticked = false;
  host_->events().publish("test.tick", "{}");
  host_->events().subscribe("test.",
                            [&](const std::string &, const std::string &) { ticked = true; });
  ASSERT_TRUE(run_until([&] { return ticked; }, 5));
  EXPECT_EQ(announced, 0);
}

TEST_F(DiscoveryPlugin, BadConfigNamesEveryKey) {
  try {
    start({{"ttl", "five"}, {"listen", {"nowhere"}}});
    FAIL() << "started with a bad config";
  } catch (const std::exception &e) {
    // Each problem is reported through config_error (and logged) as it is
    // found; the exception carries the last.
    std::string m = e.what();
    EXPECT_NE(m.find("plugin.discovery.listen[0]"), std::string::npos) << m;
  }
}

}  // namespace

namespace {

TEST_F(DiscoveryPlugin, AVipIsAllocatedServedAndMappedInTheKernel) {
  if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (nftables)";
  const std::string table = "fltvipt" + std::to_string(getpid());
  struct DropTable {
    std::string t;
    ~DropTable() {
      try {
        flotilla::nft::Context().apply(flotilla::nft::Batch().delete_table_if_exists("ip", t));
      } catch (...) {
      }
    }
  } drop{table};
  start({{"vip_cidr", "10.243.0.0/24"}, {"vip_table", table}});
  register_alloc("alloc-v1",
                 {{"addresses", {"10.42.9.5"}}, {"services", {{{"name", "api"}, {"port", 8080}}}}});
  register_alloc("alloc-v2",
                 {{"addresses", {"10.42.9.6"}}, {"services", {{{"name", "api"}, {"port", 8080}}}}});
  ASSERT_TRUE(run_until([&] { return a_records("api.vip.flotilla.").size() == 1; }));
  EXPECT_EQ(a_records("api.vip.flotilla."), std::multiset<std::string>{"A 10.243.0.1"});
  flotilla::nft::Context ctx;
  auto elements = [&](const char *set) -> size_t {
    try {
      return flotilla::nft::set_elements(ctx.list_json("table ip " + table), set).size();
    } catch (const flotilla::nft::Error &) {
      return 0;  // the table is set up on the work queue: not there yet
    }
  };
  // VIP . port in the set of services with 2 endpoints, one slot each in
  // map backends (plugins/discovery/vip_map.h)
  ASSERT_TRUE(run_until([&] { return elements("svc-n2") == 1 && elements("backends") == 2; }));
  // one gone: the VIP moves to the set of services with 1 endpoint
  std::optional<flotilla_status> st;
  auto done = [](void *user, flotilla_status s) {
    *static_cast<std::optional<flotilla_status> *>(user) = s;
  };
  disc_->deregister_alloc(disc_self_, "alloc-v1", done, &st);
  ASSERT_TRUE(run_until([&] {
    return elements("svc-n1") == 1 && elements("svc-n2") == 0 && elements("backends") == 1;
  }));
}

}  // namespace
