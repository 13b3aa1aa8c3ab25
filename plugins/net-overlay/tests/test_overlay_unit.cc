// net-overlay's pure parts: CIDR arithmetic, config checking (every
// problem, with its key), the nft table text (and, with root, the kernel's
// parser on it in check mode: nothing is applied), attachment records.
#include <gtest/gtest.h>
#include <linux/if_addr.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "attachment.h"
#include "cidr.h"
#include "firewall.h"
#include "net_config.h"

namespace ov = flotilla::overlay;
using nlohmann::json;

TEST(Cidr, ParseAndArithmetic) {
  auto c = ov::Cidr::parse("10.42.0.0/16");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->text(), "10.42.0.0/16");
  EXPECT_EQ(c->subnet_count(24), 256u);
  EXPECT_EQ(c->subnet(24, 0).text(), "10.42.0.0/24");
  EXPECT_EQ(c->subnet(24, 255).text(), "10.42.255.0/24");
  EXPECT_EQ(c->subnet(24, 3).at(1).text(), "10.42.3.1");
  EXPECT_TRUE(c->contains(*ov::parse_address("10.42.9.9")));
  EXPECT_FALSE(c->contains(*ov::parse_address("10.43.0.1")));
  EXPECT_TRUE(c->overlaps(*ov::Cidr::parse("10.0.0.0/8")));
  EXPECT_FALSE(c->overlaps(*ov::Cidr::parse("10.43.0.0/16")));

  auto v6 = ov::Cidr::parse("fd42::/48");
  ASSERT_TRUE(v6);
  EXPECT_TRUE(v6->v6());
  EXPECT_EQ(v6->subnet(64, 5).text(), "fd42:0:0:5::/64");
  EXPECT_EQ(v6->subnet(64, 5).at(2).text(), "fd42:0:0:5::2");
  EXPECT_EQ(v6->subnet_count(64), 65536u);
  EXPECT_EQ(v6->subnet_count(128), uint64_t{1} << 62);  // capped
  EXPECT_FALSE(v6->contains(*ov::parse_address("10.42.0.1")));

  std::string why;
  EXPECT_FALSE(ov::Cidr::parse("10.42.0.0/33", &why));
  EXPECT_NE(why.find("prefix longer than 32"), std::string::npos) << why;
  EXPECT_FALSE(ov::Cidr::parse("10.42.1.0/16", &why));
  EXPECT_NE(why.find("host bits set; the network is 10.42.0.0/16"), std::string::npos) << why;
  EXPECT_FALSE(ov::Cidr::parse("10.42.0.0", &why));
  EXPECT_FALSE(ov::Cidr::parse("banana/8", &why));
  EXPECT_FALSE(ov::Cidr::parse("10.0.0.0/x", &why));
}

namespace {
std::vector<ov::ConfigProblem> problems_of(const json &j) {
  std::vector<ov::ConfigProblem> p;
  ov::parse_net_config(j.dump(), p);
  return p;
}
bool has_problem(const std::vector<ov::ConfigProblem> &ps, const std::string &key,
                 const std::string &part) {
  for (const auto &p : ps)
    if (p.key == key && p.message.find(part) != std::string::npos) return true;
  return false;
}
}  // namespace

TEST(NetConfig, DefaultsAndValues) {
  std::vector<ov::ConfigProblem> p;
  auto c = ov::parse_net_config("{}", p);
  EXPECT_TRUE(p.empty());
  EXPECT_EQ(c.cluster_cidr.text(), "10.42.0.0/16");
  EXPECT_FALSE(c.cluster_cidr_v6);
  EXPECT_EQ(c.bridge, "flotilla0");
  c = ov::parse_net_config(json({{"cluster_cidr", "10.50.0.0/16"},
                                 {"cluster_cidr_v6", "fd50::/48"},
                                 {"subnet_prefix", 26},
                                 {"mtu", 1400},
                                 {"dns_servers", {"10.0.0.2"}}})
                               .dump(),
                           p);
  EXPECT_TRUE(p.empty());
  EXPECT_EQ(c.subnet_prefix, 26);
  EXPECT_EQ(c.cluster_cidr_v6->text(), "fd50::/48");
  EXPECT_EQ(c.mtu, 1400u);
}

TEST(NetConfig, EveryProblemAtOnceWithItsKey) {
  auto p = problems_of({{"cluster_cidr", "10.42.0.0/33"},
                        {"cluster_cidr_v6", "10.1.0.0/16"},
                        {"bridge", "this-name-is-far-too-long"},
                        {"mtu", 1200},
                        {"dns_servers", {"not-an-ip"}},
                        {"masquerade", "yes"},
                        {"colour", "blue"}});
  EXPECT_TRUE(has_problem(p, "cluster_cidr", "prefix longer than 32")) << p.size();
  EXPECT_TRUE(has_problem(p, "cluster_cidr_v6", "is IPv4"));
  EXPECT_TRUE(has_problem(p, "bridge", "not an interface name"));
  EXPECT_TRUE(has_problem(p, "dns_servers[0]", "not an IP address"));
  EXPECT_TRUE(has_problem(p, "masquerade", "true or false"));
  EXPECT_TRUE(has_problem(p, "colour", "unknown key"));
  EXPECT_EQ(p.size(), 6u) << "one problem per bad key (mtu 1200 is fine for IPv4)";

  // MTU below 1280 with IPv6.
  p = problems_of({{"cluster_cidr_v6", "fd42::/48"}, {"mtu", 1200}});
  EXPECT_TRUE(has_problem(p, "mtu", "below 1280, the least IPv6 allows"));
  // A node subnet larger than the cluster.
  p = problems_of({{"cluster_cidr", "10.42.0.0/24"}, {"subnet_prefix", 16}});
  EXPECT_TRUE(has_problem(p, "subnet_prefix", "must fit inside"));
  p = problems_of({{"subnet_prefix", "24"}});
  EXPECT_TRUE(has_problem(p, "subnet_prefix", "integer"));
}

TEST(NetConfig, MtuAndResolvConf) {
  EXPECT_EQ(ov::overlay_mtu(0, 1500, false), 1440u);
  EXPECT_EQ(ov::overlay_mtu(0, 1500, true), 1420u);
  EXPECT_EQ(ov::overlay_mtu(0, 1400, false), 1340u);
  EXPECT_EQ(ov::overlay_mtu(1300, 1500, false), 1300u);
  auto ns = ov::resolv_nameservers(
      "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\nnameserver ::1\n"
      "nameserver fd00::53\n");
  EXPECT_EQ(ns, (std::vector<std::string>{"10.0.0.2", "fd00::53"}));
}

namespace {

// Addresses as netlink lists them, without flags (learnt, usable).
std::vector<flotilla::netlink::Address> plain(const std::vector<std::string> &cidrs) {
  std::vector<flotilla::netlink::Address> out;
  for (const auto &c : cidrs) out.push_back({c, 0});
  return out;
}

}  // namespace

// The endpoint a node publishes, and WireGuard's overhead with it: the
// tunnel's family, not whether the underlay has IPv6.
TEST(NetConfig, EndpointAndOverheadFollowTheTunnelsFamily) {
  // Dual stack: IPv4 first, wherever it is in the list.
  EXPECT_EQ(ov::underlay_endpoint(plain({"2001:db8::5/64", "10.0.2.15/24", "fe80::5/64"}), 51820),
            "10.0.2.15:51820");
  // IPv6-only: the first global address, never the link-local one (nor
  // loopback); a ULA is global in scope.
  EXPECT_EQ(ov::underlay_endpoint(plain({"fe80::5/64", "2001:db8::5/64", "2001:db8::6/64"}), 51820),
            "[2001:db8::5]:51820");
  EXPECT_EQ(ov::underlay_endpoint(plain({"fe80::5/64", "fd42::5/64"}), 7), "[fd42::5]:7");
  EXPECT_FALSE(ov::underlay_endpoint(plain({"fe80::5/64", "::1/128"}), 51820));
  EXPECT_FALSE(ov::underlay_endpoint({}, 51820));

  // The overhead follows the endpoint: 80 bytes for an IPv6 one even on a
  // dual-stack underlay (wg_endpoint set to it), 60 for an IPv4 one even
  // on an IPv6-only underlay interface (a NAT's public IPv4 address).
  EXPECT_TRUE(ov::tunnel_is_v6("[2001:db8::5]:51820", false));
  EXPECT_FALSE(ov::tunnel_is_v6("192.0.2.7:51820", true));
  // No mesh, no endpoint: the underlay's family.
  EXPECT_TRUE(ov::tunnel_is_v6("", true));
  EXPECT_FALSE(ov::tunnel_is_v6("", false));
  auto mtu_for = [](const std::vector<std::string> &addrs, bool underlay_v6) {
    auto ep = ov::underlay_endpoint(plain(addrs), 51820);
    return ov::overlay_mtu(0, 1500, ov::tunnel_is_v6(ep.value_or(""), underlay_v6));
  };
  EXPECT_EQ(mtu_for({"fe80::5/64", "2001:db8::5/64"}, true), 1420u);
  EXPECT_EQ(mtu_for({"2001:db8::5/64", "10.0.2.15/24"}, false), 1440u);
  EXPECT_EQ(
      ov::overlay_mtu(0, 1500, ov::tunnel_is_v6(*ov::parse_endpoint("2001:db8::7", 51820), false)),
      1420u);
}

// Which IPv6 address an IPv6-only underlay publishes, by the kernel's
// flags: never one still in DAD, one whose DAD failed, a deprecated one or
// a privacy (temporary) one; a configured one before a learnt one.
TEST(NetConfig, EndpointIsAStableGlobalAddress) {
  using A = flotilla::netlink::Address;
  const uint32_t kConfigured = IFA_F_PERMANENT;
  // The kernel lists the newest address first: each unusable one ahead of
  // the stable one is passed over.
  for (uint32_t bad :
       {IFA_F_TENTATIVE, IFA_F_TENTATIVE | IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TEMPORARY,
        IFA_F_TEMPORARY | IFA_F_DEPRECATED, IFA_F_TENTATIVE | IFA_F_OPTIMISTIC}) {
    std::vector<A> addrs = {{"2001:db8::bad/64", bad | kConfigured},
                            {"2001:db8::5/64", kConfigured},
                            {"fe80::5/64", kConfigured}};
    EXPECT_EQ(ov::underlay_endpoint(addrs, 51820), "[2001:db8::5]:51820") << std::hex << bad;
  }
  // SLAAC with privacy extensions: the temporary address (newest, listed
  // first) is passed over for the public one it was made from.
  EXPECT_EQ(ov::underlay_endpoint({{"2001:db8::8c1f:2e3a:11b0:9d4e/64", IFA_F_TEMPORARY},
                                   {"2001:db8::5054:ff:fe12:3456/64", IFA_F_MANAGETEMPADDR},
                                   {"fe80::5054:ff:fe12:3456/64", kConfigured}},
                                  51820),
            "[2001:db8::5054:ff:fe12:3456]:51820");
  // A configured address wins over one learnt from router advertisements,
  // wherever it is in the list; among equals the first.
  EXPECT_EQ(ov::underlay_endpoint({{"2001:db8::5054:ff:fe12:3456/64", 0},
                                   {"fd00::7/64", kConfigured},
                                   {"fd00::8/64", kConfigured}},
                                  51820),
            "[fd00::7]:51820");
  // Nothing stable: the last resorts, tentative before temporary before
  // deprecated, wherever they are listed; a DAD-failed one never.
  EXPECT_EQ(ov::underlay_endpoint({{"2001:db8::6/64", IFA_F_DEPRECATED},
                                   {"2001:db8::7/64", IFA_F_TEMPORARY},
                                   {"2001:db8::5/64", IFA_F_TENTATIVE | kConfigured},
                                   {"fe80::5/64", kConfigured}},
                                  51820),
            "[2001:db8::5]:51820");
  EXPECT_EQ(ov::underlay_endpoint(
                {{"2001:db8::6/64", IFA_F_DEPRECATED}, {"2001:db8::7/64", IFA_F_TEMPORARY}}, 51820),
            "[2001:db8::7]:51820");
  EXPECT_EQ(ov::underlay_endpoint({{"2001:db8::6/64", IFA_F_DEPRECATED}}, 51820),
            "[2001:db8::6]:51820");
  EXPECT_FALSE(ov::underlay_endpoint({{"2001:db8::5/64", IFA_F_TENTATIVE | IFA_F_DADFAILED},
                                      {"fe80::5/64", kConfigured}},
                                     51820));
  // IPv4 is untouched by the IPv6 flags: bit 0 is IFA_F_SECONDARY there,
  // the same bit as IFA_F_TEMPORARY.
  EXPECT_EQ(ov::underlay_endpoint(
                {{"2001:db8::5/64", kConfigured}, {"10.0.2.16/24", IFA_F_SECONDARY | kConfigured}},
                51820),
            "10.0.2.16:51820");

  EXPECT_EQ(ov::unusable_endpoint_flags(kConfigured | IFA_F_NODAD), "");
  EXPECT_EQ(ov::unusable_endpoint_flags(IFA_F_TENTATIVE | IFA_F_DADFAILED), "tentative, dadfailed");
  EXPECT_EQ(ov::unusable_endpoint_flags(IFA_F_DEPRECATED | IFA_F_TEMPORARY),
            "deprecated, temporary");
}

// Operator's dns_servers > the node's discovery DNS (with its ndots:1
// unless dns_options sets ndots) > the host's resolvers.
TEST(NetConfig, ContainersResolveThroughDiscoveryWhenItAnnouncedItself) {
  ov::NetConfig cfg;
  const std::string host = "nameserver 127.0.0.53\nnameserver 10.0.0.2\n";
  ov::DiscoveryDns none, disc{{"10.42.3.1"}, {"ndots:1"}};
  auto d = ov::container_dns(cfg, none, host);
  EXPECT_EQ(d.nameservers, std::vector<std::string>{"10.0.0.2"});
  EXPECT_TRUE(d.options.empty());
  d = ov::container_dns(cfg, disc, host);
  EXPECT_EQ(d.nameservers, std::vector<std::string>{"10.42.3.1"});
  EXPECT_EQ(d.options, std::vector<std::string>{"ndots:1"});
  cfg.dns_options = {"timeout:2"};
  cfg.dns_search = {"corp.example"};
  d = ov::container_dns(cfg, disc, host);
  EXPECT_EQ(d.options, (std::vector<std::string>{"ndots:1", "timeout:2"}));
  EXPECT_EQ(d.search, std::vector<std::string>{"corp.example"});
  cfg.dns_options = {"ndots:3"};
  EXPECT_EQ(ov::container_dns(cfg, disc, host).options, std::vector<std::string>{"ndots:3"});
  cfg.dns_servers = {"192.0.2.53"};
  d = ov::container_dns(cfg, disc, host);
  EXPECT_EQ(d.nameservers, std::vector<std::string>{"192.0.2.53"});
  EXPECT_EQ(d.options, std::vector<std::string>{"ndots:3"});
}

TEST(Attachment, PortsNamesAndRecords) {
  auto ports = ov::parse_ports(json::parse(
      R"({"ports": [8080, {"host": 9090, "to": 80}, {"host": 5353, "protocol": "udp"}]})"));
  ASSERT_EQ(ports.size(), 3u);
  EXPECT_EQ(ports[0], (ov::PortMapping{8080, 8080, "tcp"}));
  EXPECT_EQ(ports[1], (ov::PortMapping{9090, 80, "tcp"}));
  EXPECT_EQ(ports[2], (ov::PortMapping{5353, 5353, "udp"}));
  EXPECT_THROW(ov::parse_ports(json::parse(R"({"ports": [70000]})")), std::invalid_argument);
  EXPECT_THROW(ov::parse_ports(json::parse(R"({"ports": [{"host": 1, "protocol": "sctp"}]})")),
               std::invalid_argument);

  const std::string v = ov::veth_name("flv", "web-0123");
  EXPECT_EQ(v.size(), 11u);
  EXPECT_EQ(v, ov::veth_name("flv", "web-0123"));
  EXPECT_NE(v, ov::veth_name("flv", "web-0124"));

  ov::Attachment a;
  a.alloc = "web-1";
  a.netns = "/run/flotilla/netns/web-1";
  a.netns_pinned = true;
  a.veth = v;
  a.ip4 = "10.42.0.5/24";
  a.gw4 = "10.42.0.1";
  a.ports = ports;
  a.hostnames = {"httpd"};
  auto b = ov::Attachment::from_json(json::parse(a.to_json().dump()));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->to_json(), a.to_json());
  EXPECT_EQ(b->mapped().ip4, "10.42.0.5");
}

TEST(Firewall, TableText) {
  ov::FirewallSpec s{"flotilla", "flotilla0", *ov::Cidr::parse("10.42.0.0/16"), std::nullopt, true};
  ov::MappedAlloc m{"10.42.0.5", "", {{8080, 80, "tcp"}, {5353, 53, "udp"}}};
  const std::string t = ov::full_table(s, {m}).text();
  EXPECT_NE(t.find("add table inet flotilla\ndelete table inet flotilla\nadd table inet flotilla"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("tcp option maxseg size set rt mtu"), std::string::npos);
  EXPECT_NE(t.find("ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 oifname != \"flotilla0\" "
                   "masquerade"),
            std::string::npos);
  EXPECT_NE(t.find("add element inet flotilla ports_tcp { 8080 : 10.42.0.5 . 80 }"),
            std::string::npos);
  EXPECT_NE(t.find("add element inet flotilla ports_udp { 5353 : 10.42.0.5 . 53 }"),
            std::string::npos);
  EXPECT_EQ(t.find("ports6"), std::string::npos) << "no IPv6 maps without cluster_cidr_v6";
  EXPECT_EQ(ov::delete_mappings(s, m).text(),
            "delete element inet flotilla ports_tcp { 8080 }\n"
            "delete element inet flotilla ports_udp { 5353 }\n");

  s.cluster_v6 = *ov::Cidr::parse("fd42::/48");
  s.masquerade = false;
  m.ip6 = "fd42::5";
  const std::string t6 = ov::full_table(s, {m}).text();
  EXPECT_NE(t6.find("add element inet flotilla ports6_tcp { 8080 : fd42::5 . 80 }"),
            std::string::npos);
  size_t masq = 0;
  for (size_t at = t6.find("masquerade"); at != std::string::npos;
       at = t6.find("masquerade", at + 1))
    masq++;
  EXPECT_EQ(masq, 2u) << "only the localhost and hairpin masquerades without masquerade = true";

  // The kernel's own parser, in check mode (nothing is applied).
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for nft --check";
  flotilla::nft::Context ctx;
  EXPECT_NO_THROW(ctx.check(ov::full_table(s, {m}))) << t6;
}
