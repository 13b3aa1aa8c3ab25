// The WireGuard mesh's parts without a daemon: keys, the diff engine, the
// kernel backend's generic netlink messages (built and read back in the
// layout of <linux/wireguard.h>, 1,000 peers split across messages: this
// kernel has no WireGuard module, so no kernel run), the UAPI text, and the
// userspace backend against a real wireguard-go in a namespace of the
// test's own (SKIPPED without root, /dev/net/tun or wireguard-go).
#include <gtest/gtest.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/wireguard.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "cidr.h"
#include "netlink.h"
#include "wg_device.h"
#include "wg_genl.h"
#include "wg_peer_set.h"
#include "wg_uapi.h"

namespace ov = flotilla::overlay;
namespace nl = flotilla::netlink;

namespace {

ov::WgKey key_n(int n) {
  ov::WgKey k{};
  k[0] = static_cast<uint8_t>(n & 0xff);
  k[1] = static_cast<uint8_t>(n >> 8);
  k[31] = 0x42;
  return k;
}
std::string pub_n(int n) { return ov::key_to_base64(key_n(n)); }

ov::WgPeer peer_n(int n) {
  ov::WgPeer p;
  p.public_key = pub_n(n);
  p.endpoint = "192.0.2." + std::to_string(n % 250 + 1) + ":51820";
  // In the canonical text the kernel's addresses come back in.
  p.allowed_ips = {ov::Cidr::parse("10.42." + std::to_string(n % 256) + ".0/24")->text(),
                   ov::Cidr::parse("fd42:0:" + std::to_string(n) + "::/64")->text()};
  std::sort(p.allowed_ips.begin(), p.allowed_ips.end());
  return p;
}

}  // namespace

TEST(WgKeys, Curve25519AndEncodings) {
  // RFC 7748, section 6.1: Alice's key pair.
  auto priv = ov::key_from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  ASSERT_TRUE(priv);
  EXPECT_EQ(ov::key_to_hex(ov::public_key_of(*priv)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  ov::WgKey k = ov::generate_private_key();
  EXPECT_EQ(k[0] & 7, 0);
  EXPECT_EQ(k[31] & 0xc0, 0x40);
  const std::string b64 = ov::key_to_base64(k);
  EXPECT_EQ(b64.size(), 44u);
  EXPECT_EQ(ov::key_from_base64(b64), k);
  EXPECT_FALSE(ov::key_from_base64("not a key"));
  EXPECT_FALSE(ov::key_from_hex("zz"));
}

TEST(WgDiff, AddUpdateRemoveAndNothingForTheUnchanged) {
  std::vector<ov::WgPeer> have = {peer_n(1), peer_n(2), peer_n(3)};
  std::vector<ov::WgPeer> want = {peer_n(1), peer_n(2), peer_n(4)};
  want[1].allowed_ips.push_back("10.99.0.0/24");
  auto d = ov::diff_peers(want, have);
  ASSERT_EQ(d.size(), 3u);
  std::map<std::string, ov::PeerChange> by;
  for (auto &c : d) by[c.peer.public_key] = c;
  EXPECT_EQ(by[pub_n(3)].kind, ov::PeerChange::Kind::remove);
  EXPECT_EQ(by[pub_n(4)].kind, ov::PeerChange::Kind::add);
  EXPECT_TRUE(by[pub_n(4)].set_endpoint);
  EXPECT_EQ(by[pub_n(2)].kind, ov::PeerChange::Kind::update);
  EXPECT_TRUE(by[pub_n(2)].replace_allowed_ips);
  EXPECT_FALSE(by[pub_n(2)].set_endpoint);
  EXPECT_FALSE(by.count(pub_n(1))) << "an unchanged peer is not touched";
  EXPECT_TRUE(ov::diff_peers(have, have).empty());
}

TEST(WgDiff, RoamedEndpointOfAPeerBehindNatIsKept) {
  ov::WgPeer want = peer_n(7), have = peer_n(7);
  have.endpoint = "198.51.100.9:40000";  // where its packets came from
  EXPECT_EQ(ov::diff_peers({want}, {have}).size(), 1u) << "not behind NAT: the record wins";
  want.behind_nat = true;
  EXPECT_TRUE(ov::diff_peers({want}, {have}).empty()) << "behind NAT: the roamed endpoint stays";
  have.endpoint.clear();
  auto d = ov::diff_peers({want}, {have});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_TRUE(d[0].set_endpoint) << "no endpoint yet: the record's";
}

TEST(WgGenl, ThousandPeersSplitAcrossMessagesInTheKernelsLayout) {
  std::vector<ov::WgPeer> peers;
  for (int i = 0; i < 1000; ++i) peers.push_back(peer_n(i));
  auto changes = ov::diff_peers(peers, {});
  ASSERT_EQ(changes.size(), 1000u);
  ov::WgDevice dev;
  dev.private_key = key_n(9999);
  dev.listen_port = 51820;
  const int family = 0x1d;
  auto msgs = ov::build_set_device(family, "flotilla-wg", dev, changes, 4096);
  ASSERT_GT(msgs.size(), 10u) << "1,000 peers cannot fit one 4 KiB message";
  for (size_t i = 0; i < msgs.size(); ++i) {
    const auto *h = reinterpret_cast<const nlmsghdr *>(msgs[i].data());
    EXPECT_LE(h->nlmsg_len, 4096u);
    EXPECT_EQ(h->nlmsg_type, family);
    EXPECT_TRUE(h->nlmsg_flags & NLM_F_REQUEST);
    const auto *g = reinterpret_cast<const genlmsghdr *>(msgs[i].data() + NLMSG_HDRLEN);
    EXPECT_EQ(g->cmd, WG_CMD_SET_DEVICE);
    EXPECT_EQ(g->version, WG_GENL_VERSION);
    // Device attributes in the first message only.
    auto one = ov::parse_device({msgs[i]});
    EXPECT_EQ(one.private_key.has_value(), i == 0) << "message " << i;
    EXPECT_EQ(one.listen_port, i == 0 ? 51820 : 0) << "message " << i;
  }
  std::vector<std::string> replaced;
  auto back = ov::parse_device(msgs, nullptr, &replaced);
  ASSERT_EQ(back.peers.size(), 1000u);
  EXPECT_EQ(replaced.size(), 1000u);
  std::map<std::string, ov::WgPeer> sent;
  for (const auto &p : peers) sent[p.public_key] = p;
  for (auto p : back.peers) {
    ASSERT_TRUE(sent.count(p.public_key)) << p.public_key;
    const ov::WgPeer &want = sent[p.public_key];
    std::sort(p.allowed_ips.begin(), p.allowed_ips.end());
    EXPECT_EQ(p.endpoint, want.endpoint);
    EXPECT_EQ(p.allowed_ips, want.allowed_ips) << p.public_key;
    sent.erase(p.public_key);
  }
  EXPECT_TRUE(sent.empty()) << "every peer once";
}

TEST(WgGenl, OnePeersLongAllowedIpListIsCutWithReplaceOnlyInItsFirstPart) {
  ov::WgPeer big = peer_n(1);
  big.allowed_ips.clear();
  for (int i = 0; i < 1000; ++i)
    big.allowed_ips.push_back("10." + std::to_string(i / 256) + "." + std::to_string(i % 256) +
                              ".0/24");
  std::sort(big.allowed_ips.begin(), big.allowed_ips.end());
  std::vector<ov::PeerChange> changes = ov::diff_peers({peer_n(0), big, peer_n(2)}, {});
  auto msgs = ov::build_set_device(7, "wg0", {}, changes, 4096);
  ASSERT_GT(msgs.size(), 3u);
  std::vector<std::string> replaced;
  auto back = ov::parse_device(msgs, nullptr, &replaced);
  ASSERT_EQ(back.peers.size(), 3u) << "the cut peer is put back together";
  EXPECT_EQ(std::count(replaced.begin(), replaced.end(), big.public_key), 1)
      << "WGPEER_F_REPLACE_ALLOWEDIPS in the first part only, or the later parts would "
         "drop the earlier ones";
  std::vector<std::string> got;
  for (const auto &p : back.peers)
    if (p.public_key == big.public_key) got = p.allowed_ips;
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, big.allowed_ips);

  // Removal: only the key and WGPEER_F_REMOVE_ME.
  ov::PeerChange rm;
  rm.kind = ov::PeerChange::Kind::remove;
  rm.peer.public_key = pub_n(5);
  std::vector<std::string> removed;
  ov::parse_device(ov::build_set_device(7, "wg0", {}, {rm}), &removed);
  EXPECT_EQ(removed, std::vector<std::string>{pub_n(5)});
  // The kernel family is not here: say so.
  try {
    ov::KernelWg k;
    SUCCEED() << "this kernel has WireGuard";
  } catch (const ov::WgError &e) {
    EXPECT_NE(std::string(e.what()).find("no WireGuard module"), std::string::npos) << e.what();
  }
}

TEST(WgUapi, SetTextAndGetReply) {
  ov::WgDevice dev;
  dev.private_key = key_n(1);
  dev.listen_port = 51900;
  ov::PeerChange add;
  add.peer = peer_n(2);
  add.set_endpoint = add.replace_allowed_ips = true;
  ov::PeerChange rm;
  rm.kind = ov::PeerChange::Kind::remove;
  rm.peer.public_key = pub_n(3);
  const std::string t = ov::uapi_set_text(dev, {add, rm});
  EXPECT_EQ(t.rfind("set=1\nprivate_key=" + ov::key_to_hex(key_n(1)) + "\nlisten_port=51900\n", 0),
            0u)
      << t;
  EXPECT_NE(t.find("public_key=" + ov::key_to_hex(key_n(3)) + "\nremove=true\n"),
            std::string::npos);
  EXPECT_NE(t.find("replace_allowed_ips=true\nallowed_ip="), std::string::npos);
  EXPECT_EQ(t.substr(t.size() - 2), "\n\n");
  auto d = ov::uapi_parse_get("private_key=" + ov::key_to_hex(key_n(1)) +
                              "\nlisten_port=51900\npublic_key=" + ov::key_to_hex(key_n(2)) +
                              "\nendpoint=192.0.2.3:51820\nlast_handshake_time_sec=1700000000\n"
                              "rx_bytes=10\ntx_bytes=20\npersistent_keepalive_interval=25\n"
                              "allowed_ip=10.42.2.0/24\nerrno=0\n\n");
  ASSERT_EQ(d.peers.size(), 1u);
  EXPECT_EQ(d.peers[0].public_key, pub_n(2));
  EXPECT_EQ(d.peers[0].endpoint, "192.0.2.3:51820");
  EXPECT_EQ(d.peers[0].keepalive, 25);
  EXPECT_EQ(d.peers[0].rx_bytes, 10u);
  EXPECT_EQ(d.peers[0].allowed_ips, std::vector<std::string>{"10.42.2.0/24"});
  EXPECT_EQ(d.listen_port, 51900);
}

// The userspace backend against the real wireguard-go, in a namespace of
// the test's own: configure, change one peer by diff, the others untouched.
TEST(WgUapi, RealWireguardGoConvergesByDiff) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  if (::access("/usr/bin/wireguard-go", X_OK) != 0) GTEST_SKIP() << "wireguard-go not installed";
  if (::access("/dev/net/tun", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/net/tun";
  const std::string dir = "/tmp/flwgtest-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string ns = dir + "/ns";
  nl::netns::create_pinned(ns);
  const std::string ifname = "flwgt" + std::to_string(::getpid() % 100000);
  pid_t pid = -1;
  nl::netns::run_in(ns, [&] {
    const char *argv[] = {"wireguard-go", "-f", ifname.c_str(), nullptr};
    posix_spawn(&pid, "/usr/bin/wireguard-go", nullptr, nullptr, const_cast<char **>(argv),
                environ);
  });
  ASSERT_GT(pid, 0);
  struct Guard {
    pid_t pid;
    std::string ns, dir;
    ~Guard() {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
      nl::netns::remove_pinned(ns);
      std::filesystem::remove_all(dir);
    }
  } guard{pid, ns, dir};
  ov::UapiWg wg;
  for (int i = 0; i < 100 && !wg.running(ifname); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(wg.running(ifname)) << "wireguard-go never opened " << wg.socket_path(ifname);

  ov::WgDevice dev;
  dev.private_key = ov::generate_private_key();
  dev.listen_port = 0;
  std::vector<ov::WgPeer> want = {peer_n(1), peer_n(2), peer_n(3)};
  wg.set(ifname, dev, ov::diff_peers(want, wg.get(ifname).peers));
  auto got = wg.get(ifname);
  EXPECT_EQ(got.private_key, dev.private_key);
  ASSERT_EQ(got.peers.size(), 3u);
  EXPECT_TRUE(ov::diff_peers(want, got.peers).empty()) << "converged";

  want.erase(want.begin());            // peer 1 leaves
  want[0].allowed_ips = {"10.77.0.0/16"};  // peer 2 moves
  auto changes = ov::diff_peers(want, got.peers);
  EXPECT_EQ(changes.size(), 2u) << "peer 3 is not touched";
  wg.set(ifname, {}, changes);
  got = wg.get(ifname);
  ASSERT_EQ(got.peers.size(), 2u);
  EXPECT_TRUE(ov::diff_peers(want, got.peers).empty());
}
