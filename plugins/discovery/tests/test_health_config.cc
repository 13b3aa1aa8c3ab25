// The plugin's config keys, resolv.conf, check specs and the health
// thresholds.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "discovery_config.h"
#include "health_check.h"

namespace flotilla::discovery {
namespace {

using json = nlohmann::json;

TEST(DiscoveryConfig, DefaultsWhenEmpty) {
  DiscoveryConfig c;
  EXPECT_TRUE(parse_config(json::object(), c).empty());
  EXPECT_EQ(c.domain, "flotilla");
  EXPECT_EQ(c.ttl, 5u);
  EXPECT_EQ(c.negative_ttl, 1u);
  EXPECT_EQ(c.edns_udp_size, 1232);
  ASSERT_EQ(c.listen_addrs.size(), 1u);
  EXPECT_EQ(c.listen_addrs[0].text(), "127.0.0.1:8600");
}

TEST(DiscoveryConfig, EveryProblemAtOnceWithItsKey) {
  DiscoveryConfig c;
  json t = {{"domain", "Bad_Domain"},
            {"listen", {"10.0.0.1:53", "nonsense", "[fd00::1]:99999"}},
            {"ttl", -1},
            {"edns_udp_size", 100},
            {"forward", "yes"},
            {"upstreams", {"1.2.3.4", 5}},
            {"colour", "blue"}};
  auto p = parse_config(t, c);
  std::map<std::string, std::string> by_key;
  for (auto &x : p) by_key[x.key] = x.message;
  EXPECT_TRUE(by_key.count("domain"));
  EXPECT_TRUE(by_key.count("listen[1]"));
  EXPECT_TRUE(by_key.count("listen[2]"));
  EXPECT_FALSE(by_key.count("listen[0]"));
  EXPECT_TRUE(by_key.count("ttl"));
  EXPECT_TRUE(by_key.count("edns_udp_size"));
  EXPECT_TRUE(by_key.count("forward"));
  EXPECT_TRUE(by_key.count("upstreams[1]"));
  EXPECT_TRUE(by_key.count("colour"));
  EXPECT_NE(by_key["ttl"].find("-1"), std::string::npos) << by_key["ttl"];
}

TEST(DiscoveryConfig, ContainerDnsKeyAndWhatAListenerCovers) {
  DiscoveryConfig c;
  EXPECT_TRUE(c.container_dns);
  auto p = parse_config(json{{"container_dns", "yes"}}, c);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].key, "container_dns");
  EXPECT_TRUE(parse_config(json{{"container_dns", false}}, c).empty());
  EXPECT_FALSE(c.container_dns);

  auto at = [](const char *text) {
    SocketAddress a;
    EXPECT_TRUE(parse_socket_address(text, 53, a)) << text;
    return a;
  };
  const SocketAddress gw = at("10.42.3.1"), gw6 = at("[fd42::1]");
  EXPECT_TRUE(listen_covers({at("0.0.0.0:53")}, gw));
  EXPECT_TRUE(listen_covers({at("127.0.0.1:8600"), at("10.42.3.1:53")}, gw));
  EXPECT_FALSE(listen_covers({at("0.0.0.0:5353")}, gw));  // another port
  EXPECT_FALSE(listen_covers({at("10.42.3.2:53")}, gw));
  EXPECT_FALSE(listen_covers({at("[::]:53")}, gw));  // another family
  EXPECT_TRUE(listen_covers({at("[::]:53")}, gw6));
  EXPECT_FALSE(listen_covers({}, gw));
}

TEST(DiscoveryConfig, SocketAddresses) {
  SocketAddress a;
  ASSERT_TRUE(parse_socket_address("10.42.1.1", 53, a));
  EXPECT_EQ(a.text(), "10.42.1.1:53");
  ASSERT_TRUE(parse_socket_address("[fd00::1]:5353", 53, a));
  EXPECT_EQ(a.text(), "[fd00::1]:5353");
  EXPECT_FALSE(parse_socket_address("10.42.1.1:x", 53, a));
  EXPECT_FALSE(parse_socket_address("fd00::1]:53", 53, a));
}

TEST(ResolvConf, NameserversWithoutOurselves) {
  char path[] = "/tmp/flotilla-resolv-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << "# comment\nsearch example.com\nnameserver 10.0.0.2\n"
                         "nameserver fd00::53\nnameserver 127.0.0.1\noptions ndots:2\n";
  SocketAddress self;
  ASSERT_TRUE(parse_socket_address("127.0.0.1:53", 53, self));
  std::string err;
  auto ups = read_resolv_conf(path, {self}, err);
  std::remove(path);
  EXPECT_EQ(err, "");
  ASSERT_EQ(ups.size(), 2u);
  EXPECT_EQ(ups[0].text(), "10.0.0.2:53");
  EXPECT_EQ(ups[1].text(), "[fd00::53]:53");
  read_resolv_conf("/nonexistent/resolv.conf", {}, err);
  EXPECT_NE(err.find("/nonexistent/resolv.conf"), std::string::npos);
}

TEST(CheckSpec, ParsesAndNamesTheBadField) {
  CheckSpec s;
  EXPECT_EQ(parse_check({{"type", "http"},
                         {"path", "/health"},
                         {"interval_ms", 500},
                         {"timeout_ms", 200},
                         {"failures_before_critical", 3}},
                        s),
            "");
  EXPECT_EQ(s.path, "/health");
  EXPECT_EQ(s.failures_before_critical, 3u);
  EXPECT_NE(parse_check({{"type", "smoke"}}, s).find("type"), std::string::npos);
  EXPECT_NE(parse_check({{"type", "tcp"}, {"interval_ms", 0}}, s).find("interval_ms"),
            std::string::npos);
  EXPECT_NE(parse_check({{"type", "http"}, {"path", "health"}}, s).find("path"), std::string::npos);
}

TEST(CheckState, StartingPassingCriticalByThresholds) {
  CheckSpec spec;
  spec.success_before_passing = 2;
  spec.failures_before_critical = 3;
  CheckState st(spec);
  EXPECT_EQ(st.health(), Health::starting);
  EXPECT_FALSE(st.record(true));
  EXPECT_EQ(st.health(), Health::starting) << "one success of two";
  EXPECT_TRUE(st.record(true));
  EXPECT_EQ(st.health(), Health::passing);
  EXPECT_FALSE(st.record(false));
  EXPECT_FALSE(st.record(false));
  EXPECT_EQ(st.health(), Health::passing) << "two failures of three";
  EXPECT_TRUE(st.record(false));
  EXPECT_EQ(st.health(), Health::critical);
  EXPECT_FALSE(st.record(true));
  EXPECT_EQ(st.health(), Health::critical);
  EXPECT_TRUE(st.record(true));
  EXPECT_EQ(st.health(), Health::passing);
}

}  // namespace
}  // namespace flotilla::discovery
