// lib/netlink against the real kernel, inside two namespaces this test
// pins under a directory of its own (the host's links are never touched);
// both are removed at the end, also when a check fails. SKIPPED without
// root.
#include <gtest/gtest.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "netlink.h"

namespace nl = flotilla::netlink;

namespace {

class Namespaces : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces)";
    dir_ = std::filesystem::temp_directory_path() /
           ("flnltest-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    a_ = (dir_ / "a").string();
    b_ = (dir_ / "b").string();
    ASSERT_TRUE(nl::netns::create_pinned(a_));
    ASSERT_TRUE(nl::netns::create_pinned(b_));
  }
  void TearDown() override {
    if (dir_.empty()) return;
    // a and b, and whatever else a test pinned here.
    std::error_code ec;
    for (const auto &e : std::filesystem::directory_iterator(dir_, ec))
      nl::netns::remove_pinned(e.path().string());
    std::filesystem::remove_all(dir_);
  }
  std::filesystem::path dir_;
  std::string a_, b_;
};

bool has(const std::vector<std::string> &v, const std::string &x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}


TEST_F(Namespaces, PinnedNamespaceIsKeptAndRemoved) {
  EXPECT_TRUE(nl::netns::is_pinned(a_));
  EXPECT_FALSE(nl::netns::create_pinned(a_)) << "a second create must find the first";
  EXPECT_FALSE(nl::netns::is_pinned((dir_ / "nothing").string()));
  // A fresh namespace has only loopback, down.
  auto s = nl::Socket::open_in(a_);
  auto links = s.links();
  ASSERT_EQ(links.size(), 1u);
  EXPECT_EQ(links[0].name, "lo");
  EXPECT_FALSE(links[0].up);
}

TEST_F(Namespaces, PinnedRunsInsideInTheNewNamespace) {
  const std::string c = (dir_ / "c").string();
  ASSERT_TRUE(nl::netns::create_pinned(c, [] { nl::Socket::open().set_up("lo"); }));
  EXPECT_TRUE(nl::netns::is_pinned(c));
  auto links = nl::Socket::open_in(c).links();
  ASSERT_EQ(links.size(), 1u);
  EXPECT_TRUE(links[0].up) << "inside ran in the new namespace, not in the caller's";
  EXPECT_FALSE(nl::netns::create_pinned(c, [] { FAIL() << "not again"; }));
  // What inside throws is rethrown; the namespace stays pinned.
  const std::string d = (dir_ / "d").string();
  EXPECT_THROW(nl::netns::create_pinned(d, [] { throw nl::Error("inside failed"); }), nl::Error);
  EXPECT_TRUE(nl::netns::is_pinned(d));
  nl::netns::remove_pinned(c);
  nl::netns::remove_pinned(d);
  EXPECT_FALSE(nl::netns::is_pinned(c));
}

TEST_F(Namespaces, BridgeVethAddressesRoutes) {
  auto sa = nl::Socket::open_in(a_);
  auto sb = nl::Socket::open_in(b_);
  ASSERT_TRUE(sa.add_bridge("flbr0", 1340));
  EXPECT_FALSE(sa.add_bridge("flbr0", 1340)) << "exists already";
  sa.set_up("flbr0");
  EXPECT_TRUE(sa.add_address("flbr0", "10.77.1.1/24"));
  EXPECT_FALSE(sa.add_address("flbr0", "10.77.1.1/24"));
  EXPECT_TRUE(sa.add_address("flbr0", "fd77:1::1/64"));

  nl::UniqueFd bfd = nl::netns::open(b_);
  ASSERT_TRUE(sa.add_veth("flv0", "eth0", 1340, bfd.get()));
  EXPECT_FALSE(sa.add_veth("flv0", "eth0", 1340, bfd.get()));
  sa.set_master("flv0", "flbr0");
  sa.set_up("flv0");

  auto host_side = sa.link("flv0");
  ASSERT_TRUE(host_side);
  EXPECT_EQ(host_side->kind, "veth");
  EXPECT_EQ(host_side->mtu, 1340u);
  EXPECT_EQ(host_side->master, sa.link("flbr0")->index);
  EXPECT_FALSE(sa.link("eth0")) << "the peer must be in the other namespace";

  auto peer = sb.link("eth0");
  ASSERT_TRUE(peer);
  EXPECT_EQ(peer->mtu, 1340u);
  sb.set_up("lo");
  sb.set_up("eth0");
  EXPECT_TRUE(sb.add_address("eth0", "10.77.1.5/24"));
  EXPECT_TRUE(sb.add_address("eth0", "fd77:1::5/64"));
  EXPECT_TRUE(sb.add_route("default", "10.77.1.1", "eth0"));
  EXPECT_FALSE(sb.add_route("default", "10.77.1.1", "eth0"));
  EXPECT_TRUE(sb.add_route("default", "fd77:1::1", "eth0"));
  EXPECT_TRUE(has(sb.addresses("eth0"), "10.77.1.5/24"));
  EXPECT_TRUE(has(sb.addresses("eth0"), "fd77:1::5/64"));
  // The kernel's flags come with each address: ours skip DAD and were
  // configured, not learnt.
  bool seen6 = false;
  for (const auto &a : sb.addresses_with_flags("eth0"))
    if (a.cidr == "fd77:1::5/64") {
      seen6 = true;
      EXPECT_TRUE(a.flags & IFA_F_NODAD) << std::hex << a.flags;
      EXPECT_TRUE(a.flags & IFA_F_PERMANENT) << std::hex << a.flags;
      EXPECT_FALSE(a.flags & (IFA_F_TENTATIVE | IFA_F_DEPRECATED)) << std::hex << a.flags;
    }
  EXPECT_TRUE(seen6);
  EXPECT_TRUE(sb.link("lo")->up);

  auto def = sb.default_route_link(AF_INET);
  ASSERT_TRUE(def);
  EXPECT_EQ(def->name, "eth0");
  EXPECT_TRUE(sb.default_route_link(AF_INET6));
  EXPECT_FALSE(sa.default_route_link(AF_INET)) << "namespace a has no default route";

  // A route to another subnet, on-link, and its removal.
  EXPECT_TRUE(sa.add_route("10.77.2.0/24", "", "flbr0"));
  EXPECT_TRUE(sa.add_route("10.77.3.0/24", "", "flbr0"));
  auto has_route = [&](const std::string &dst) {
    auto r = sa.routes("flbr0");  // with the link's own connected ones
    return std::find(r.begin(), r.end(), dst) != r.end();
  };
  EXPECT_TRUE(has_route("10.77.2.0/24"));
  EXPECT_TRUE(has_route("10.77.3.0/24"));
  EXPECT_TRUE(sa.delete_route("10.77.3.0/24", "flbr0"));
  EXPECT_FALSE(has_route("10.77.3.0/24"));
  EXPECT_TRUE(sa.routes("nosuchlink0").empty());
  // A link by kind name (bridge here: this kernel may lack dummy).
  EXPECT_TRUE(sa.add_link("fladd0", "bridge", 1400));
  EXPECT_FALSE(sa.add_link("fladd0", "bridge", 1400));
  EXPECT_EQ(sa.link("fladd0")->kind, "bridge");
  EXPECT_EQ(sa.link("fladd0")->mtu, 1400u);
  EXPECT_TRUE(sa.delete_link("fladd0"));
  EXPECT_TRUE(sa.delete_route("10.77.2.0/24", "flbr0"));
  EXPECT_FALSE(sa.delete_route("10.77.2.0/24", "flbr0"));

  sa.set_mtu("flbr0", 1300);
  EXPECT_EQ(sa.link("flbr0")->mtu, 1300u);

  // Deleting one end removes both.
  EXPECT_TRUE(sa.delete_link("flv0"));
  EXPECT_FALSE(sa.delete_link("flv0"));
  EXPECT_FALSE(sb.link("eth0"));
  EXPECT_TRUE(sa.delete_link("flbr0"));
}

TEST_F(Namespaces, ErrorsNameTheThing) {
  auto sa = nl::Socket::open_in(a_);
  try {
    sa.set_up("nosuchlink0");
    ADD_FAILURE() << "no error";
  } catch (const nl::Error &e) {
    EXPECT_NE(std::string(e.what()).find("nosuchlink0"), std::string::npos) << e.what();
  }
  try {
    sa.add_address("lo", "10.1.2.300/24");
    ADD_FAILURE() << "no error";
  } catch (const nl::Error &e) {
    EXPECT_NE(std::string(e.what()).find("10.1.2.300/24"), std::string::npos) << e.what();
  }
  EXPECT_THROW(nl::netns::open((dir_ / "nothing").string()), nl::Error);
}

TEST_F(Namespaces, SysctlInsideNamespace) {
  // A new namespace's IPv4 settings start as the host's (ip_forward may be
  // 1 there): a is set to the opposite of what b has, and b must keep it.
  auto read = [](const std::string &ns) {
    std::string v;
    nl::netns::run_in(ns, [&] {
      FILE *f = std::fopen("/proc/sys/net/ipv4/ip_forward", "r");
      if (!f) return;
      v = std::string(1, static_cast<char>(std::fgetc(f)));
      std::fclose(f);
    });
    return v;
  };
  const std::string before = read(b_);
  ASSERT_TRUE(before == "0" || before == "1") << before;
  const std::string other = before == "0" ? "1" : "0";
  nl::netns::run_in(a_, [&] { nl::netns::write_sysctl("net/ipv4/ip_forward", other); });
  EXPECT_EQ(read(a_), other) << "the write in a";
  EXPECT_EQ(read(b_), before) << "the write in a must not show in b";
}

}  // namespace
