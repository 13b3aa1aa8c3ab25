// The VIP map builder: the commands of each change (no kernel), then the
// same batches applied to the real kernel inside a network namespace of
// this run's own, with TCP connections through the VIP reaching both
// backends and a service without endpoints refused at once.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "conntrack_flush.h"
#include "netlink.h"
#include "nft.h"
#include "vip_map.h"

namespace flotilla::discovery {
namespace {

namespace nl = flotilla::netlink;

VipService svc(std::vector<VipBackend> backends, std::string vip = "10.43.0.1",
               uint16_t port = 80) {
  VipService s;
  s.name = "web";
  s.vip = std::move(vip);
  s.port = port;
  s.backends = std::move(backends);
  std::sort(s.backends.begin(), s.backends.end());
  return s;
}

bool has(const std::vector<std::string> &cmds, const std::string &needle) {
  return std::any_of(cmds.begin(), cmds.end(),
                     [&](const std::string &c) { return c.find(needle) != std::string::npos; });
}

TEST(VipMap, NewServiceWithBackends) {
  VipMap m("fltvip", 0x4000);
  auto s = svc({{"10.42.1.5", 8080}, {"10.42.2.5", 8080}});
  auto cmds = m.update(nullptr, &s);
  EXPECT_TRUE(has(cmds, "add chain ip fltvip ep-web-0a2a0105-8080"));
  EXPECT_TRUE(has(cmds, "dnat ip to 10.42.2.5:8080"));
  EXPECT_TRUE(has(cmds, "ip saddr 10.42.1.5 jump mark-for-masquerade"));
  EXPECT_TRUE(has(cmds,
                  "numgen random mod 2 vmap { 0 : goto ep-web-0a2a0105-8080, 1 : goto "
                  "ep-web-0a2a0205-8080 }"));
  EXPECT_TRUE(has(cmds,
                  "add element ip fltvip services { 10.43.0.1 . tcp . 80 : goto svc-web, "
                  "10.43.0.1 . udp . 80 : goto svc-web }"));
  EXPECT_FALSE(has(cmds, "no-endpoints"));
}

TEST(VipMap, OnlyWhatChangedIsTouched) {
  VipMap m("fltvip", 0x4000);
  auto a = svc({{"10.42.1.5", 8080}, {"10.42.2.5", 8080}});
  EXPECT_TRUE(m.update(&a, &a).empty()) << "nothing changed: no batch";
  auto b = svc({{"10.42.1.5", 8080}});
  auto cmds = m.update(&a, &b);
  EXPECT_TRUE(has(cmds, "flush chain ip fltvip svc-web"));
  EXPECT_TRUE(has(cmds, "numgen random mod 1 vmap { 0 : goto ep-web-0a2a0105-8080 }"));
  EXPECT_TRUE(has(cmds, "delete chain ip fltvip ep-web-0a2a0205-8080"));
  EXPECT_FALSE(has(cmds, "add chain ip fltvip ep-web-0a2a0105-8080")) << "kept as it was";
  EXPECT_FALSE(has(cmds, "element")) << "the map still points at the same chain";
  // the flush and the new rule come before the chain they stop jumping to goes
  auto flush = std::find_if(cmds.begin(), cmds.end(),
                            [](auto &c) { return c.find("flush chain") != std::string::npos; });
  auto del = std::find_if(cmds.begin(), cmds.end(),
                          [](auto &c) { return c.find("delete chain") != std::string::npos; });
  EXPECT_LT(flush, del);
}

TEST(VipMap, NoEndpointsMovesTheVipToTheRejectMapAndBack) {
  VipMap m("fltvip", 0x4000);
  auto a = svc({{"10.42.1.5", 8080}});
  auto none = svc({});
  auto cmds = m.update(&a, &none);
  EXPECT_TRUE(has(cmds, "delete element ip fltvip services { 10.43.0.1 . tcp . 80"));
  EXPECT_TRUE(has(cmds,
                  "add element ip fltvip no-endpoints { 10.43.0.1 . tcp . 80 : goto "
                  "reject-chain, 10.43.0.1 . udp . 80 : goto reject-chain }"));
  cmds = m.update(&none, &a);
  EXPECT_TRUE(has(cmds, "delete element ip fltvip no-endpoints"));
  EXPECT_TRUE(has(cmds, "add element ip fltvip services"));
  cmds = m.update(&a, nullptr);
  EXPECT_TRUE(has(cmds, "delete chain ip fltvip svc-web"));
  EXPECT_TRUE(has(cmds, "delete chain ip fltvip ep-web-0a2a0105-8080"));
}

// ---- the real kernel, in a namespace of this run ------------------------

class VipKernel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (network namespaces, nftables)";
    path_ = "/run/flotilla-test/netns-vip-" + std::to_string(getpid());
    ::mkdir("/run/flotilla-test", 0700);
    if (!nl::netns::create_pinned(path_)) GTEST_SKIP() << "SKIPPED: cannot create a netns";
    made_ = true;
  }
  void TearDown() override {
    if (made_) nl::netns::remove_pinned(path_);
  }
  // Runs fn inside the namespace, where the table and sockets live.
  void in_ns(const std::function<void()> &fn) { nl::netns::run_in(path_, fn); }

  std::string path_;
  bool made_ = false;
};

std::vector<nlohmann::json> elements(nft::Context &ctx, const char *map) {
  return nft::set_elements(ctx.list_json("table ip fltvip"), map);
}

int listen_on(const std::string &addr, uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, addr.c_str(), &a.sin_addr);
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || listen(fd, 128) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Connects to addr:port; 0 on success, else errno.
int connect_to(const std::string &addr, uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, addr.c_str(), &a.sin_addr);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int rc = connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
  int err = rc == 0 ? 0 : errno;
  close(fd);
  return err;
}

int accept_all(int lfd) {
  int n = 0;
  for (;;) {
    int c = accept(lfd, nullptr, nullptr);
    if (c < 0) return n;
    close(c);
    ++n;
  }
}

TEST_F(VipKernel, BatchesApplyAndTrafficReachesBothBackends) {
  std::string failure;
  in_ns([&] {
    try {
      auto s = nl::Socket::open_in(path_);
      s.set_up("lo");
      // Backends and the VIP range on lo: everything is local to the namespace.
      s.add_address("lo", "10.42.1.5/32");
      s.add_address("lo", "10.42.2.5/32");
      s.add_address("lo", "10.43.0.254/16");
      nft::Context ctx;
      VipMap m("fltvip", 0x4000);
      nft::Batch setup;
      for (auto &c : m.setup()) setup.add(c);
      ctx.apply(setup);

      auto two = svc({{"10.42.1.5", 8080}, {"10.42.2.5", 8080}});
      nft::Batch b1;
      for (auto &c : m.update(nullptr, &two)) b1.add(c);
      ctx.apply(b1);
      if (elements(ctx, "services").size() != 2) failure += "services map has not 2 elements; ";

      int l1 = listen_on("10.42.1.5", 8080), l2 = listen_on("10.42.2.5", 8080);
      if (l1 < 0 || l2 < 0) throw std::runtime_error("cannot listen on the backends");
      int refused = 0;
      for (int i = 0; i < 40; ++i) refused += connect_to("10.43.0.1", 80) != 0;
      usleep(50000);
      int n1 = accept_all(l1), n2 = accept_all(l2);
      if (refused) failure += std::to_string(refused) + " of 40 connections failed; ";
      if (n1 == 0 || n2 == 0)
        failure +=
            "not both backends reached: " + std::to_string(n1) + "/" + std::to_string(n2) + "; ";

      // a UDP flow through the VIP leaves a conntrack entry; removing its
      // backend deletes it
      int u = socket(AF_INET, SOCK_DGRAM, 0);
      sockaddr_in vip{};
      vip.sin_family = AF_INET;
      vip.sin_port = htons(80);
      inet_pton(AF_INET, "10.43.0.1", &vip.sin_addr);
      for (int i = 0; i < 4; ++i)
        sendto(u, "x", 1, 0, reinterpret_cast<sockaddr *>(&vip), sizeof vip);
      close(u);
      std::string ct_err;
      int flushed = flush_udp_conntrack("10.43.0.1", "10.42.1.5", ct_err) +
                    flush_udp_conntrack("10.43.0.1", "10.42.2.5", ct_err);
      if (flushed < 1) failure += "no UDP conntrack entry flushed (" + ct_err + "); ";

      // one backend goes: only the other is reached
      auto one = svc({{"10.42.2.5", 8080}});
      nft::Batch b2;
      for (auto &c : m.update(&two, &one)) b2.add(c);
      ctx.apply(b2);
      for (int i = 0; i < 10; ++i) connect_to("10.43.0.1", 80);
      usleep(50000);
      n1 = accept_all(l1);
      n2 = accept_all(l2);
      if (n1 != 0 || n2 != 10)
        failure += "after removal: " + std::to_string(n1) + "/" + std::to_string(n2) + "; ";

      // none: refused at once, not a timeout
      auto none = svc({});
      nft::Batch b3;
      for (auto &c : m.update(&one, &none)) b3.add(c);
      ctx.apply(b3);
      int err = connect_to("10.43.0.1", 80);
      if (err != ECONNREFUSED) failure += std::string("no endpoints: ") + std::strerror(err) + "; ";
      if (elements(ctx, "no-endpoints").size() != 2) failure += "no-endpoints map wrong; ";

      nft::Batch b4;
      for (auto &c : m.update(&none, nullptr)) b4.add(c);
      ctx.apply(b4);
      if (!elements(ctx, "services").empty() || !elements(ctx, "no-endpoints").empty())
        failure += "maps not empty after removal; ";
      close(l1);
      close(l2);
      nft::Batch down;
      for (auto &c : m.teardown()) down.add(c);
      ctx.apply(down);
    } catch (const std::exception &e) {
      failure += std::string("exception: ") + e.what();
    }
  });
  EXPECT_EQ(failure, "");
}

}  // namespace
}  // namespace flotilla::discovery
