// The mesh's own parts: the node record, the peers and routes the records
// ask for, the key file, the mesh's config keys; and converge_mesh against
// a real wireguard-go in a namespace of the test's own (started, reattached
// without a restart, drift repaired, a dead one started again, removed):
// SKIPPED without root, /dev/net/tun or wireguard-go.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "mesh.h"
#include "mesh_device.h"
#include "net_config.h"
#include "netlink.h"
#include "wg_uapi.h"

namespace ov = flotilla::overlay;
namespace nl = flotilla::netlink;
namespace fs = std::filesystem;

namespace {

ov::NodeRecord record(const std::string &node, int n, bool nat = false) {
  ov::NodeRecord r;
  r.node = node;
  r.public_key = ov::key_to_base64(ov::public_key_of(ov::generate_private_key()));
  r.endpoint = "10.88.0." + std::to_string(10 + n) + ":51820";
  r.subnets = {"10.42." + std::to_string(n) + ".0/24"};
  r.behind_nat = nat;
  r.backend = "userspace";
  return r;
}

// The device's IPv4 routes (the kernel adds fe80::/64 of its own).
std::vector<std::string> v4_routes(nl::Socket &sock, const std::string &dev) {
  std::vector<std::string> out;
  for (const auto &r : sock.routes(dev))
    if (r.find(':') == std::string::npos) out.push_back(r);
  std::sort(out.begin(), out.end());
  return out;
}

// pid's parent, process group and session: fields 4, 5 and 6 of
// /proc/<pid>/stat, after the command name (which may hold spaces and
// parentheses, hence the last ')').
struct ProcIds {
  int ppid = -1, pgid = -1, sid = -1;
};
ProcIds proc_ids(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ProcIds ids;
  auto close = stat.rfind(')');
  if (close == std::string::npos) return ids;
  std::istringstream rest(stat.substr(close + 1));
  std::string state;
  rest >> state >> ids.ppid >> ids.pgid >> ids.sid;
  return ids;
}

std::string scratch(const std::string &what) {
  std::string d = "/tmp/flmesh-" + std::to_string(::getpid()) + "-" + what;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST(MeshRecord, RoundTripAndBadRecordsIgnored) {
  ov::NodeRecord r = record("h1", 1);
  r.key_generation = 3;
  auto back = ov::NodeRecord::from_json(r.to_json());
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, r);
  EXPECT_FALSE(ov::NodeRecord::from_json("not json"));
  EXPECT_FALSE(ov::NodeRecord::from_json(
      R"({"node":"h1","public_key":"short","subnets":["10.42.1.0/24"]})"));
  ov::NodeRecord no_subnets = r;
  no_subnets.subnets.clear();
  EXPECT_FALSE(ov::NodeRecord::from_json(no_subnets.to_json()));
  ov::NodeRecord bad_subnet = r;
  bad_subnet.subnets = {"10.42.1.0/33"};
  EXPECT_FALSE(ov::NodeRecord::from_json(bad_subnet.to_json()));
}

TEST(MeshRecord, PeersAndRoutesOfTheOtherNodes) {
  std::map<std::string, ov::NodeRecord> recs = {
      {"h0", record("h0", 0)}, {"h1", record("h1", 1)}, {"h2", record("h2", 2, true)}};
  auto peers = ov::desired_peers(recs, "h0", false, 25);
  ASSERT_EQ(peers.size(), 2u) << "not itself";
  EXPECT_EQ(peers[0].public_key, recs["h1"].public_key);
  EXPECT_EQ(peers[0].allowed_ips, std::vector<std::string>{"10.42.1.0/24"});
  EXPECT_EQ(peers[0].endpoint, "10.88.0.11:51820");
  EXPECT_EQ(peers[0].keepalive, 0) << "neither side behind NAT";
  EXPECT_EQ(peers[1].keepalive, 25) << "the peer is behind NAT";
  EXPECT_TRUE(peers[1].behind_nat);
  for (const auto &p : ov::desired_peers(recs, "h0", true, 25))
    EXPECT_EQ(p.keepalive, 25) << "this node is behind NAT: every peer";
  EXPECT_EQ(ov::desired_routes(recs, "h1"),
            (std::vector<std::string>{"10.42.0.0/24", "10.42.2.0/24"}));
}

TEST(MeshRecord, ARotatingNodesNextKeyIsAPeerWithoutAllowedIps) {
  std::map<std::string, ov::NodeRecord> recs = {{"h0", record("h0", 0)}, {"h1", record("h1", 1)}};
  recs["h1"].next_public_key = ov::key_to_base64(ov::public_key_of(ov::generate_private_key()));
  auto back = ov::NodeRecord::from_json(recs["h1"].to_json());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->next_public_key, recs["h1"].next_public_key);
  auto peers = ov::desired_peers(recs, "h0", false, 25);
  ASSERT_EQ(peers.size(), 2u);
  std::map<std::string, ov::WgPeer> by_key;
  for (const auto &p : peers) by_key[p.public_key] = p;
  EXPECT_EQ(by_key[recs["h1"].public_key].allowed_ips, std::vector<std::string>{"10.42.1.0/24"});
  EXPECT_TRUE(by_key[recs["h1"].next_public_key].allowed_ips.empty());
  EXPECT_EQ(by_key[recs["h1"].next_public_key].endpoint, recs["h1"].endpoint);
  // The switch: the new key takes the allowed-ips, the old one goes.
  std::vector<ov::WgPeer> have = peers;
  recs["h1"].public_key = recs["h1"].next_public_key;
  recs["h1"].next_public_key.clear();
  auto changes = ov::diff_peers(ov::desired_peers(recs, "h0", false, 25), have);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].kind, ov::PeerChange::Kind::remove)
      << "the old key's allowed-ips freed first";
  EXPECT_EQ(changes[1].kind, ov::PeerChange::Kind::update);
  EXPECT_TRUE(changes[1].replace_allowed_ips);
}

TEST(MeshKey, MadeOnceMode0600AndKept) {
  const std::string dir = scratch("key");
  ov::NodeKey k = ov::load_or_create_key(dir + "/wireguard");
  struct stat st {};
  ASSERT_EQ(::stat((dir + "/wireguard/key.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(k.generation, 1);
  ov::NodeKey again = ov::load_or_create_key(dir + "/wireguard");
  EXPECT_EQ(again.private_key, k.private_key) << "the same key after a restart";
  EXPECT_EQ(again.public_b64(), k.public_b64());
  ::chmod((dir + "/wireguard/key.json").c_str(), 0644);
  ov::load_or_create_key(dir + "/wireguard");
  ASSERT_EQ(::stat((dir + "/wireguard/key.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "a key readable by others is made private again";
  ov::NodeKey rotating = again;
  rotating.next = ov::generate_private_key();
  ov::save_key(dir + "/wireguard", rotating);
  auto loaded = ov::load_or_create_key(dir + "/wireguard");
  EXPECT_EQ(loaded.next, rotating.next) << "a rotation under way survives a restart";
  ASSERT_EQ(::stat((dir + "/wireguard/key.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ofstream(dir + "/wireguard/key.json", std::ios::trunc) << "garbage";
  try {
    ov::load_or_create_key(dir + "/wireguard");
    ADD_FAILURE() << "a broken key file was accepted";
  } catch (const ov::WgError &e) {
    EXPECT_NE(std::string(e.what()).find("key.json"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(MeshConfig, EveryBadKeyAtOnceAndEndpoints) {
  std::vector<ov::ConfigProblem> problems;
  ov::parse_net_config(R"({"wireguard": "sometimes", "wg_interface": "much-too-long-name0",
      "wg_listen_port": 0, "wg_endpoint": "example:80:90", "wg_behind_nat": "yes",
      "wg_keepalive": -1, "wg_resync_interval": 0, "node_lease_ttl": 1, "wireguard_go": "wg-go"})",
                       problems);
  std::set<std::string> keys;
  for (const auto &p : problems) keys.insert(p.key);
  for (const char *k :
       {"wireguard", "wg_interface", "wg_listen_port", "wg_endpoint", "wg_behind_nat",
        "wg_keepalive", "wg_resync_interval", "node_lease_ttl", "wireguard_go"})
    EXPECT_TRUE(keys.count(k)) << "no problem reported for " << k;
  problems.clear();
  auto c = ov::parse_net_config(R"({"wireguard": "userspace", "wg_interface": "wg7",
      "wg_listen_port": 51900, "wg_endpoint": "192.0.2.7", "node_lease_ttl": 3})",
                                problems);
  EXPECT_TRUE(problems.empty());
  EXPECT_EQ(c.wg_endpoint, "192.0.2.7:51900") << "the listen port when none is given";
  EXPECT_EQ(c.node_lease_ttl, 3);
  problems.clear();
  ov::parse_net_config(R"({"wg_interface": "flotilla0"})", problems);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].key, "wg_interface") << "the bridge's name";
  EXPECT_EQ(ov::parse_endpoint("[2001:db8::7]:51820", 1), "[2001:db8::7]:51820");
  EXPECT_EQ(ov::parse_endpoint("2001:db8::7", 51820), "[2001:db8::7]:51820");
  EXPECT_EQ(ov::parse_endpoint("192.0.2.7:7", 1), "192.0.2.7:7");
  EXPECT_FALSE(ov::parse_endpoint("192.0.2.7:0", 1));
  EXPECT_FALSE(ov::parse_endpoint("host.example:51820", 1));
}

// converge_mesh on a real wireguard-go, in a namespace of the test's own.
TEST(MeshDevice, RealWireguardGoStartedReattachedRepairedRestarted) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  if (::access("/usr/bin/wireguard-go", X_OK) != 0) GTEST_SKIP() << "wireguard-go not installed";
  if (::access("/dev/net/tun", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/net/tun";
  const std::string dir = scratch("dev");
  const std::string ns = dir + "/ns";
  nl::netns::create_pinned(ns);
  ov::MeshSpec spec;
  spec.backend = "userspace";
  spec.ifname = "flwgm" + std::to_string(::getpid() % 100000);
  spec.wireguard_go = "/usr/bin/wireguard-go";
  spec.state_dir = dir + "/wireguard";
  spec.mtu = 1380;
  spec.listen_port = 51999;
  spec.private_key = ov::generate_private_key();
  spec.addresses = {"10.42.0.1/32"};
  spec.cluster = {*ov::Cidr::parse("10.42.0.0/16")};
  std::map<std::string, ov::NodeRecord> recs = {{"h1", record("h1", 1)}, {"h2", record("h2", 2)}};
  spec.peers = ov::desired_peers(recs, "h0", false, 25);
  spec.routes = ov::desired_routes(recs, "h0");
  // Whatever happens, the wireguard-go this test made goes, by its pid.
  struct Guard {
    std::string dir, ns, ifname;
    ~Guard() {
      int pid = ov::wireguard_go_pid(dir + "/wireguard", ifname);
      if (pid > 0) ::kill(pid, SIGKILL);
      ::unlink(ov::UapiWg().socket_path(ifname).c_str());
      if (::testing::Test::HasFailure()) {
        std::ifstream in(dir + "/wireguard/wireguard-go.log");
        std::cerr << "wireguard-go.log:\n" << in.rdbuf() << "\n";
      }
      nl::netns::remove_pinned(ns);
      fs::remove_all(dir);
    }
  } guard{dir, ns, spec.ifname};

  int step = 0;
  auto in_ns = [&](const ov::MeshSpec &s) {
    ov::MeshOutcome out;
    ++step;
    try {
      nl::netns::run_in(ns, [&] {
        auto sock = nl::Socket::open();
        out = ov::converge_mesh(s, sock);
      });
    } catch (const std::exception &e) {
      std::ifstream in(dir + "/wireguard/wireguard-go.log");
      std::stringstream log;
      log << in.rdbuf();
      ADD_FAILURE() << "convergence " << step << ": " << e.what() << "\nwireguard-go.log:\n"
                    << log.str();
    }
    return out;
  };
  auto sock = nl::Socket::open_in(ns);
  ov::MeshOutcome first = in_ns(spec);
  EXPECT_TRUE(first.started);
  ASSERT_GT(first.pid, 0);
  // Reparented (outlives the daemon, never its zombie), a process group of
  // its own (a terminal's or the daemon's group signals miss it), but the
  // daemon's session: a session of its own would be a scheduling autogroup
  // of its own too (sched_autogroup_enabled), which cost the mesh up to
  // half its throughput.
  const ProcIds wg_ids = proc_ids(first.pid);
  EXPECT_NE(wg_ids.ppid, -1) << "no /proc/" << first.pid << "/stat";
  EXPECT_NE(wg_ids.ppid, ::getpid()) << "wireguard-go is the daemon's child";
  EXPECT_EQ(wg_ids.pgid, first.pid) << "wireguard-go leads no process group of its own";
  EXPECT_NE(wg_ids.pgid, ::getpgrp());
  EXPECT_EQ(wg_ids.sid, ::getsid(0)) << "wireguard-go left the daemon's session";
  EXPECT_EQ(first.added, 2);
  EXPECT_EQ(first.routes_changed, 2);
  EXPECT_TRUE(first.key_set);
  ASSERT_EQ(first.device.peers.size(), 2u);
  EXPECT_EQ(first.device.listen_port, 51999);
  auto link = sock.link(spec.ifname);
  ASSERT_TRUE(link);
  EXPECT_EQ(link->mtu, 1380u);
  EXPECT_TRUE(link->up);
  auto addrs = sock.addresses(spec.ifname);
  EXPECT_TRUE(std::find(addrs.begin(), addrs.end(), "10.42.0.1/32") != addrs.end() ||
              std::find(addrs.begin(), addrs.end(), "10.42.0.1") != addrs.end())
      << testing::PrintToString(addrs);
  auto routes = v4_routes(sock, spec.ifname);
  EXPECT_EQ(routes, (std::vector<std::string>{"10.42.1.0/24", "10.42.2.0/24"}));

  // Again (a restarted daemon): the same process, nothing changed.
  ov::MeshOutcome second = in_ns(spec);
  EXPECT_FALSE(second.started);
  EXPECT_TRUE(second.reattached);
  EXPECT_EQ(second.pid, first.pid);
  EXPECT_EQ(second.added + second.updated + second.removed + second.routes_changed, 0);
  EXPECT_FALSE(second.key_set);

  // Drift (a peer and a route removed behind the plugin's back): repaired.
  ov::UapiWg wg;
  ov::PeerChange rm;
  rm.kind = ov::PeerChange::Kind::remove;
  rm.peer.public_key = recs["h1"].public_key;
  wg.set(spec.ifname, {}, {rm});
  ASSERT_TRUE(sock.delete_route("10.42.2.0/24", spec.ifname));
  ov::MeshOutcome third = in_ns(spec);
  EXPECT_EQ(third.added, 1);
  EXPECT_EQ(third.updated + third.removed, 0) << "the untouched peer stays as it is";
  EXPECT_EQ(third.routes_changed, 1);

  // A node leaves, another moves its endpoint.
  recs.erase("h1");
  recs["h2"].endpoint = "10.88.0.99:51820";
  spec.peers = ov::desired_peers(recs, "h0", false, 25);
  spec.routes = ov::desired_routes(recs, "h0");
  ov::MeshOutcome fourth = in_ns(spec);
  EXPECT_EQ(fourth.removed, 1);
  EXPECT_EQ(fourth.updated, 1);
  EXPECT_EQ(fourth.routes_changed, 1);
  ASSERT_EQ(fourth.device.peers.size(), 1u);
  EXPECT_EQ(fourth.device.peers[0].endpoint, "10.88.0.99:51820");
  EXPECT_EQ(v4_routes(sock, spec.ifname), std::vector<std::string>{"10.42.2.0/24"});

  // wireguard-go dies: the next convergence starts another and configures it.
  ::kill(first.pid, SIGKILL);
  for (int i = 0; i < 100 && ov::wireguard_go_pid(spec.state_dir, spec.ifname) > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(ov::wireguard_go_pid(spec.state_dir, spec.ifname), 0);
  ov::MeshOutcome fifth = in_ns(spec);
  EXPECT_TRUE(fifth.started);
  EXPECT_NE(fifth.pid, first.pid);
  EXPECT_EQ(fifth.added, 1);
  EXPECT_EQ(v4_routes(sock, spec.ifname), std::vector<std::string>{"10.42.2.0/24"});

  std::vector<std::string> removed;
  nl::netns::run_in(ns, [&] {
    auto s = nl::Socket::open();
    removed = ov::remove_mesh(spec.state_dir, spec.ifname, s);
  });
  EXPECT_EQ(removed.size(), 2u);
  EXPECT_EQ(ov::wireguard_go_pid(spec.state_dir, spec.ifname), 0);
  EXPECT_FALSE(sock.link(spec.ifname));
}
