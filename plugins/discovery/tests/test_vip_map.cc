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
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <random>
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

using Elems = std::map<std::string, std::vector<std::string>>;

TEST(VipMap, NewServiceWithBackends) {
  VipMap m("fltvip", 0x4000);
  m.setup(0);  // no count made ahead: the first service of 2 adds its rule
  auto s = svc({{"10.42.2.5", 8080}, {"10.42.1.5", 8080}});
  VipChange c;
  VipService placed = m.update(nullptr, &s, c);
  // the set and the two rules for services of 2 endpoints, once
  ASSERT_EQ(c.prelude.size(), 3u);
  EXPECT_EQ(c.prelude[0], "add set ip fltvip svc-n2 { type ipv4_addr . inet_service; }");
  EXPECT_NE(c.prelude[1].find("meta l4proto tcp ip daddr . tcp dport @svc-n2 dnat ip addr . port "
                              "to ip daddr . tcp dport . numgen random mod 2 map @backends"),
            std::string::npos)
      << c.prelude[1];
  EXPECT_NE(c.prelude[2].find("meta l4proto udp"), std::string::npos);
  EXPECT_TRUE(c.del.empty());
  EXPECT_EQ(
      c.add,
      (Elems{{"svc-n2", {"10.43.0.1 . 80"}},
             {"backends",
              {"10.43.0.1 . 80 . 0 : 10.42.1.5 . 8080", "10.43.0.1 . 80 . 1 : 10.42.2.5 . 8080"}},
             {"hairpin", {"10.42.1.5 . 10.42.1.5", "10.42.2.5 . 10.42.2.5"}}}));
  EXPECT_EQ(placed.backends.size(), 2u);
  // a second service of 2 endpoints needs no new rule
  auto t = svc({{"10.42.3.5", 8080}, {"10.42.4.5", 8080}}, "10.43.0.2");
  VipChange c2;
  m.update(nullptr, &t, c2);
  EXPECT_TRUE(c2.prelude.empty());
  EXPECT_EQ(c2.elements(), 5u);
}

// The set-up makes the sets and rules of K = 1..kPresetCounts, so that
// an endpoint change within them touches elements only; past them, the
// first service of a new K adds its set and rules, once.
TEST(VipMap, SetupMakesTheSmallCountsAhead) {
  VipMap m("fltvip", 0x4000);
  const auto cmds = m.setup();
  for (size_t k = 1; k <= VipMap::kPresetCounts; ++k) {
    const std::string set = VipMap::count_set(k);
    EXPECT_NE(std::find(cmds.begin(), cmds.end(),
                        "add set ip fltvip " + set + " { type ipv4_addr . inet_service; }"),
              cmds.end())
        << set;
    EXPECT_EQ(std::count_if(cmds.begin(), cmds.end(),
                            [&](const std::string &c) {
                              return c.find("dport @" + set + " dnat") != std::string::npos &&
                                     c.find("numgen random mod " + std::to_string(k) + " map") !=
                                         std::string::npos;
                            }),
              2)
        << "a tcp and a udp rule for " << set;
  }
  std::vector<VipBackend> backends;
  for (int i = 0; i < static_cast<int>(VipMap::kPresetCounts); ++i)
    backends.push_back({"10.42.1." + std::to_string(i + 2), 8080});
  auto full = svc(backends);
  VipChange c;
  VipService applied = m.update(nullptr, &full, c);
  EXPECT_TRUE(c.prelude.empty()) << c.prelude.front();
  backends.push_back({"10.42.1.100", 8080});
  auto more = svc(backends);
  VipChange c2;
  m.update(&applied, &more, c2);
  ASSERT_EQ(c2.prelude.size(), 3u);
  EXPECT_EQ(c2.prelude[0], "add set ip fltvip " + VipMap::count_set(VipMap::kPresetCounts + 1) +
                               " { type ipv4_addr . inet_service; }");
}

TEST(VipMap, OnlyTheChangedElementsAreTouched) {
  VipMap m("fltvip", 0x4000);
  m.setup(0);  // svc-n2's rule is made by the change below (commands' order)
  auto three = svc({{"10.42.1.5", 8080}, {"10.42.2.5", 8080}, {"10.42.3.5", 8080}});
  VipChange c0;
  VipService applied = m.update(nullptr, &three, c0);
  VipChange same;
  m.update(&applied, &three, same);
  EXPECT_TRUE(same.empty()) << "nothing changed: no batch";

  // The first backend goes: the last one moves into its slot, the last slot
  // goes, the VIP moves from svc-n3 to svc-n2, one hairpin address goes.
  auto two = svc({{"10.42.2.5", 8080}, {"10.42.3.5", 8080}});
  VipChange c;
  VipService next = m.update(&applied, &two, c);
  EXPECT_EQ(c.del, (Elems{{"svc-n3", {"10.43.0.1 . 80"}},
                          {"backends", {"10.43.0.1 . 80 . 0", "10.43.0.1 . 80 . 2"}},
                          {"hairpin", {"10.42.1.5 . 10.42.1.5"}}}));
  EXPECT_EQ(c.add, (Elems{{"svc-n2", {"10.43.0.1 . 80"}},
                          {"backends", {"10.43.0.1 . 80 . 0 : 10.42.3.5 . 8080"}}}));
  ASSERT_EQ(next.backends.size(), 2u);
  EXPECT_EQ(next.backends[1].address, "10.42.2.5") << "kept its slot";

  // A new backend takes the free slot; nothing else moves.
  auto again = svc({{"10.42.2.5", 8080}, {"10.42.3.5", 8080}, {"10.42.9.5", 8080}});
  VipChange c2;
  m.update(&next, &again, c2);
  EXPECT_TRUE(c2.prelude.empty()) << "svc-n3 exists";
  EXPECT_EQ(c2.del, (Elems{{"svc-n2", {"10.43.0.1 . 80"}}}));
  EXPECT_EQ(c2.add, (Elems{{"svc-n3", {"10.43.0.1 . 80"}},
                           {"backends", {"10.43.0.1 . 80 . 2 : 10.42.9.5 . 8080"}},
                           {"hairpin", {"10.42.9.5 . 10.42.9.5"}}}));

  // Commands: the prelude, every delete, then every add.
  auto cmds = c.commands("fltvip");
  ASSERT_FALSE(cmds.empty());
  EXPECT_EQ(cmds.front().rfind("add set ip fltvip svc-n2", 0), 0u) << cmds.front();
  size_t last_del = 0, first_add = cmds.size();
  for (size_t i = 0; i < cmds.size(); ++i) {
    if (cmds[i].rfind("delete element", 0) == 0) last_del = i;
    if (cmds[i].rfind("add element", 0) == 0) first_add = std::min(first_add, i);
  }
  EXPECT_LT(last_del, first_add);
}

TEST(VipMap, NoEndpointsMovesTheVipToTheRejectSetAndBack) {
  VipMap m("fltvip", 0x4000);
  m.setup();
  auto a = svc({{"10.42.1.5", 8080}});
  VipChange c0;
  VipService applied = m.update(nullptr, &a, c0);
  auto none = svc({});
  VipChange c;
  VipService empty = m.update(&applied, &none, c);
  EXPECT_EQ(c.del, (Elems{{"svc-n1", {"10.43.0.1 . 80"}},
                          {"backends", {"10.43.0.1 . 80 . 0"}},
                          {"hairpin", {"10.42.1.5 . 10.42.1.5"}}}));
  EXPECT_EQ(c.add, (Elems{{"no-endpoints", {"10.43.0.1 . tcp . 80", "10.43.0.1 . udp . 80"}}}));
  VipChange back;
  applied = m.update(&empty, &a, back);
  EXPECT_EQ(back.del, (Elems{{"no-endpoints", {"10.43.0.1 . tcp . 80", "10.43.0.1 . udp . 80"}}}));
  EXPECT_TRUE(back.prelude.empty());
  VipChange gone;
  m.update(&applied, nullptr, gone);
  EXPECT_TRUE(gone.add.empty());
  EXPECT_EQ(gone.elements(), 3u);
}

TEST(VipMap, HairpinAddressesAreCountedAcrossServices) {
  VipMap m("fltvip", 0x4000);
  m.setup();
  auto a = svc({{"10.42.1.5", 8080}}, "10.43.0.1");
  auto b = svc({{"10.42.1.5", 9090}}, "10.43.0.2");
  VipChange c1, c2, c3;
  VipService pa = m.update(nullptr, &a, c1);
  m.update(nullptr, &b, c2);
  EXPECT_EQ(c1.add.count("hairpin"), 1u);
  EXPECT_EQ(c2.add.count("hairpin"), 0u) << "already there for the first service";
  m.update(&pa, nullptr, c3);
  EXPECT_EQ(c3.del.count("hairpin"), 0u) << "the second service still uses it";
}

TEST(VipMap, ABigChangeIsChunked) {
  VipChange c;
  for (int i = 0; i < 4500; ++i) c.add["backends"].push_back("e" + std::to_string(i));
  auto cmds = c.commands("fltvip", 2000);
  EXPECT_EQ(cmds.size(), 3u);
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

// An element of nft's JSON listing as the text VipChange writes it.
std::string text(const nlohmann::json &j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_number()) return std::to_string(j.get<long long>());
  if (j.is_array() && j.size() == 2) return text(j[0]) + " : " + text(j[1]);
  if (j.is_object() && j.contains("concat")) {
    std::string out;
    for (const auto &part : j["concat"]) out += (out.empty() ? "" : " . ") + text(part);
    return out;
  }
  if (j.is_object() && j.contains("elem")) return text(j["elem"]["val"]);
  return j.dump();
}

// The elements of one set or map in a listing of the table.
std::set<std::string> elements(const nlohmann::json &table, const std::string &set) {
  std::set<std::string> out;
  for (const auto &e : nft::set_elements(table, set)) out.insert(text(e));
  return out;
}

std::set<std::string> elements(nft::Context &ctx, const std::string &set) {
  return elements(ctx.list_json("table ip fltvip"), set);
}

// Applies one service's change through VipMap to the kernel.
VipService apply(nft::Context &ctx, VipMap &m, const VipService *before, const VipService *after) {
  VipChange c;
  VipService placed = m.update(before, after, c);
  nft::Batch b;
  for (auto &cmd : c.commands("fltvip")) b.add(cmd);
  ctx.apply(b);
  return placed;
}

void set_up_table(nft::Context &ctx, VipMap &m, size_t preset_counts = VipMap::kPresetCounts) {
  nft::Batch setup;
  for (auto &c : m.setup(preset_counts)) setup.add(c);
  ctx.apply(setup);
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
      set_up_table(ctx, m);

      auto two = svc({{"10.42.1.5", 8080}, {"10.42.2.5", 8080}});
      VipService applied = apply(ctx, m, nullptr, &two);
      if (elements(ctx, "svc-n2") != std::set<std::string>{"10.43.0.1 . 80"})
        failure += "svc-n2 does not hold the VIP; ";
      if (elements(ctx, "backends").size() != 2) failure += "backends map has not 2 elements; ";

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
      int flushed =
          flush_udp_conntrack({{"10.43.0.1", "10.42.1.5"}, {"10.43.0.1", "10.42.2.5"}}, ct_err);
      if (flushed < 1) failure += "no UDP conntrack entry flushed (" + ct_err + "); ";

      // one backend goes: only the other is reached
      auto one = svc({{"10.42.2.5", 8080}});
      applied = apply(ctx, m, &applied, &one);
      for (int i = 0; i < 10; ++i) connect_to("10.43.0.1", 80);
      usleep(50000);
      n1 = accept_all(l1);
      n2 = accept_all(l2);
      if (n1 != 0 || n2 != 10)
        failure += "after removal: " + std::to_string(n1) + "/" + std::to_string(n2) + "; ";

      // none: refused at once, not a timeout
      auto none = svc({});
      applied = apply(ctx, m, &applied, &none);
      int err = connect_to("10.43.0.1", 80);
      if (err != ECONNREFUSED) failure += std::string("no endpoints: ") + std::strerror(err) + "; ";
      if (elements(ctx, "no-endpoints").size() != 2) failure += "no-endpoints set wrong; ";

      apply(ctx, m, &applied, nullptr);
      for (const char *set : {"svc-n1", "svc-n2", "backends", "no-endpoints", "hairpin"})
        if (!elements(ctx, set).empty()) failure += std::string(set) + " not empty after removal; ";
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

// After every change of a random sequence (backends coming and going,
// services appearing, losing every endpoint and going), the kernel's sets
// and map hold exactly the desired state.
TEST_F(VipKernel, AfterASequenceOfChangesTheKernelHoldsTheDesiredSet) {
  std::string failure;
  in_ns([&] {
    try {
      nft::Context ctx;
      VipMap m("fltvip", 0x4000);
      // K = 1..3 made ahead, 4 and 5 by the changes that first need them.
      set_up_table(ctx, m, 3);
      std::mt19937 rng(7);
      std::map<std::string, VipService> applied;  // by name, slot order
      for (int step = 0; step < 120 && failure.empty(); ++step) {
        const int id = static_cast<int>(rng() % 6);
        const std::string name = "s" + std::to_string(id);
        std::optional<VipService> want;
        if (rng() % 8 != 0) {  // else the service goes
          VipService s;
          s.name = name;
          s.vip = "10.43.0." + std::to_string(id + 1);
          s.port = static_cast<uint16_t>(80 + id % 2);
          for (int b = 0; b < 5; ++b)
            if (rng() % 2) s.backends.push_back({"10.42.0." + std::to_string(b + 1), 8080});
          want = s;
        }
        auto it = applied.find(name);
        const VipService *before = it == applied.end() ? nullptr : &it->second;
        if (!before && !want) continue;
        VipService placed = apply(ctx, m, before, want ? &*want : nullptr);
        if (want)
          applied[name] = placed;
        else
          applied.erase(name);

        // What the kernel should hold, from the desired state alone.
        std::map<std::string, std::set<std::string>> expect;
        std::map<std::string, std::set<std::string>> want_backends;  // vip . port → endpoints
        for (const auto &[n, s] : applied) {
          const std::string key = s.vip + " . " + std::to_string(s.port);
          if (s.backends.empty()) {
            expect["no-endpoints"].insert(s.vip + " . tcp . " + std::to_string(s.port));
            expect["no-endpoints"].insert(s.vip + " . udp . " + std::to_string(s.port));
            continue;
          }
          expect["svc-n" + std::to_string(s.backends.size())].insert(key);
          for (const auto &b : s.backends) {
            want_backends[key].insert(b.address + " . " + std::to_string(b.port));
            expect["hairpin"].insert(b.address + " . " + b.address);
          }
        }
        for (int k = 1; k <= 5; ++k) expect["svc-n" + std::to_string(k)];
        for (const char *set : {"no-endpoints", "hairpin"}) expect[set];
        // One listing per step: under the sanitizers each listing and its
        // JSON parse cost tens of milliseconds.
        const nlohmann::json table = ctx.list_json("table ip fltvip");
        for (const auto &[set, elems] : expect) {
          const std::set<std::string> got = elements(table, set);
          if (got != elems)
            failure += "step " + std::to_string(step) + ": " + set + " holds " +
                       std::to_string(got.size()) + " elements, want " +
                       std::to_string(elems.size()) + "; ";
        }
        // map backends: every slot 0..K-1 of every VIP, and exactly its endpoints
        std::map<std::string, std::set<std::string>> got_backends;
        std::map<std::string, std::set<int>> slots;
        for (const auto &e : elements(table, "backends")) {
          // "vip . port . slot : addr . port"
          const size_t colon = e.find(" : ");
          const std::string key = e.substr(0, colon);
          const size_t last = key.rfind(" . ");
          got_backends[key.substr(0, last)].insert(e.substr(colon + 3));
          slots[key.substr(0, last)].insert(std::stoi(key.substr(last + 3)));
        }
        if (got_backends != want_backends)
          failure += "step " + std::to_string(step) + ": map backends differs; ";
        for (const auto &[key, s] : slots)
          if (s.size() != want_backends[key].size() ||
              *s.rbegin() + 1 != static_cast<int>(s.size()))
            failure += "step " + std::to_string(step) + ": slots of " + key + " not 0..K-1; ";
      }
    } catch (const std::exception &e) {
      failure += std::string("exception: ") + e.what();
    }
  });
  EXPECT_EQ(failure, "");
}

}  // namespace
}  // namespace flotilla::discovery
