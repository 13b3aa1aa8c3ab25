// The WireGuard mesh end to end (issue 11): three hosts of the multi-host
// harness (network namespaces on one underlay bridge, real etcd,
// store-etcd, runc), net-overlay with the userspace backend (a real
// wireguard-go per host, started by the plugin). Containers reach each
// other by overlay address (ping and TCP); a capture on the underlay shows
// only WireGuard, never a marker sent in cleartext inside the overlay; a
// restarted daemon keeps its subnet, addresses, peers and traffic (no ping
// lost); a host that leaves loses its peer on the others within the lease
// TTL and comes back; a key rotation under a TCP stream keeps the stream.
// A sibling runs two hosts on an IPv6-only underlay (issue 11, the IPv6
// underlay): each publishes its stable global IPv6 address (not the
// deprecated or DAD-failed ones listed before it), the tunnels run over
// IPv6 and the devices have the underlay's MTU minus 80.
// Short leases (3 s) keep it quick.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if_addr.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "alloc_status.h"
#include "cluster.h"
#include "container_daemon.h"
#include "mesh_device.h"
#include "netlink.h"
#include "wg_uapi.h"

using flotilla::cluster::Cluster;
using flotilla::cluster::ClusterOptions;
using flotilla::cluster::Host;
using flotilla::cluster::wait_until;
using nlohmann::json;
using namespace std::chrono_literals;
namespace ov = flotilla::overlay;
namespace nl = flotilla::netlink;

namespace {

constexpr int kTtl = 3;
const char *kBusybox = "/usr/bin/busybox";

std::string marker() {
  return "FLOTILLA-CLEARTEXT-" + std::to_string(::getpid()) + "-MARKER";
}

// One allocation per node, each serving the marker over HTTP on 8080. The
// job spec (which crosses the underlay to etcd) spells it in two quoted
// halves the shell joins: the marker itself only ever travels inside the
// overlay.
std::string web_job() {
  const std::string m = marker();
  const std::string split = m.substr(0, 14) + "''" + m.substr(14);
  return R"(name = "mesh"
type = "system"
[[task]]
name = "web"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "echo )" +
         split + R"( > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
network = "bridge"
[task.resources]
cpu = 10
memory = 8
)";
}

std::string plugin_dir(const Host &h) {
  return h.dir() + "/data/plugins/net-overlay";
}
std::string netns_dir(const Host &h) {
  return h.dir() + "/netns";
}

class Mesh : public flotilla::cluster::ClusterTest {
 protected:
  ClusterOptions options() const override {
    ClusterOptions o;
    o.hosts = 3;
    o.lease_ttl_s = kTtl;
    o.host_config = [](const Cluster &, const Host &h) {
      return "[plugin.net-overlay]\npath = \"" NET_OVERLAY_PATH "\"\nnetns_dir = \"" +
             netns_dir(h) + "\"\nwireguard = \"userspace\"\nwg_interface = \"" + h.wg_interface() +
             "\"\nunderlay_interface = \"eth0\"\nnode_lease_ttl = " + std::to_string(kTtl) +
             "\nwg_resync_interval = 5\nstatus_interval = 1\ncluster_cidr_v6 = \"fd42:11::/48\"\n";
    };
    return o;
  }
  void SetUp() override {
    if (::access("/usr/bin/wireguard-go", X_OK) != 0)
      GTEST_SKIP() << "SKIPPED: wireguard-go is not installed";
    if (::access("/dev/net/tun", R_OK | W_OK) != 0) GTEST_SKIP() << "SKIPPED: no /dev/net/tun";
    if (::access("/usr/bin/tcpdump", X_OK) != 0) GTEST_SKIP() << "SKIPPED: no tcpdump";
    if (::access("/usr/bin/iperf3", X_OK) != 0) GTEST_SKIP() << "SKIPPED: no iperf3";
    ClusterTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    for (int i = 0; i < cluster().size(); ++i)
      cluster().record("dir", ov::UapiWg().socket_path(cluster().host(i).wg_interface()));
    ASSERT_TRUE(wait_until([&] { return mesh_converged(); }, 30s)) << state() << cluster().logs();
  }

  // The device of host h as wireguard-go reports it.
  ov::WgDevice device(const Host &h) {
    try {
      return ov::UapiWg().get(h.wg_interface());
    } catch (const std::exception &) {
      return {};
    }
  }
  // Every host's wireguard-go runs (and is in the manifest) and has the
  // others as peers, once each. hosts: those of the cluster when empty.
  bool mesh_converged(std::set<int> hosts = {}) {
    if (hosts.empty())
      for (int i = 0; i < cluster().size(); ++i) hosts.insert(i);
    std::set<std::string> keys;
    for (int i : hosts) {
      const Host &h = cluster().host(i);
      int pid = ov::wireguard_go_pid(plugin_dir(h) + "/wireguard", h.wg_interface());
      if (pid <= 0) return false;
      if (!seen_pids_.count(pid)) {
        seen_pids_.insert(pid);
        cluster().record_pid(pid);
      }
      auto d = device(h);
      if (d.peers.size() != hosts.size() - 1) return false;
      for (const auto &p : d.peers) keys.insert(p.public_key);
    }
    return keys.size() == hosts.size();  // each host's key, as the others know it
  }
  std::string state() {
    std::string out;
    for (int i = 0; i < cluster().size(); ++i) {
      auto d = device(cluster().host(i));
      out += cluster().host(i).name() + ": " + std::to_string(d.peers.size()) + " peers\n";
    }
    return out + cluster().etcd().ctl({"get", "/flotilla/net/nodes/", "--prefix"}).output;
  }

  // containers() once it has n entries, or what it had when timeout ran out.
  std::map<std::string, std::pair<std::string, std::string>> wait_for_containers(
      size_t n, std::chrono::milliseconds timeout) {
    std::map<std::string, std::pair<std::string, std::string>> cs;
    wait_until(
        [&] {
          cs = containers();
          return cs.size() == n;
        },
        timeout);
    return cs;
  }

  // node -> (alloc id, container address) of the mesh job.
  std::map<std::string, std::pair<std::string, std::string>> containers() {
    std::map<std::string, std::pair<std::string, std::string>> out;
    json j = cluster().any_live_host().get("/v1/allocs?job=mesh");
    if (!j.is_object() || !j.contains("allocs")) return out;
    for (const auto &a : j["allocs"]) {
      if (a.value("desired_status", "") != "run" || flotilla::e2e::alloc_status(a) != "running")
        continue;
      Host *h = cluster().host_named(a.value("node", ""));
      if (!h) continue;
      const std::string id = a.value("id", "");
      std::string ip;
      try {
        auto s = nl::Socket::open_in(netns_dir(*h) + "/" + id);
        for (const auto &addr : s.addresses("eth0")) {
          if (addr.find(':') == std::string::npos)
            ip = addr.substr(0, addr.find('/'));
          else if (addr.rfind("fe80", 0) != 0)
            ip6_[h->name()] = addr.substr(0, addr.find('/'));
        }
      } catch (const std::exception &) {
      }
      if (!ip.empty()) out[h->name()] = {id, ip};
    }
    return out;
  }
  std::string ns_of(const std::string &node, const std::string &alloc) {
    return netns_dir(*cluster().host_named(node)) + "/" + alloc;
  }
  bool ping(const std::string &from_ns, const std::string &ip) {
    return flotilla::e2e::run({kBusybox, "ping", "-c", "1", "-W", "2", ip}, from_ns).exit_code == 0;
  }
  std::string http(const std::string &from_ns, const std::string &ip) {
    auto r = flotilla::e2e::run(
        // (busybox 1.35's wget crashes with -T: coreutils' timeout instead.)
        {"/usr/bin/timeout", "5", kBusybox, "wget", "-q", "-O", "-", "http://" + ip + ":8080/"},
        from_ns);
    return r.output + (r.exit_code ? " (exit " + std::to_string(r.exit_code) + ")" : "");
  }

  // A capture on every port of the underlay bridge ("any": traffic between
  // two hosts is forwarded port to port and never reaches br0 itself),
  // into <dir>/underlay.pcap, until stop_capture.
  void start_capture() {
    pcap_ = cluster().dir() + "/underlay.pcap";
    const std::string tlog = cluster().dir() + "/tcpdump.log";
    int out = ::open(tlog.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(out, 0);
    std::vector<std::string> targs = {
        "/usr/bin/tcpdump", "-i", "any", "-U", "--immediate-mode", "-s", "0", "-w", pcap_};
    std::vector<char *> argv;
    for (auto &a : targs) argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc =
        flotilla::e2e::spawn_in_netns(cluster().underlay_netns_path(), argv.data(), out, &tcpdump_);
    ::close(out);
    ASSERT_EQ(rc, 0);
    cluster().record_pid(tcpdump_);
    ASSERT_TRUE(wait_until(
        [&] { return flotilla::e2e::read_text(tlog).find("listening on") != std::string::npos; },
        10s))
        << flotilla::e2e::read_text(tlog);
  }
  // Stops the capture; its bytes.
  std::string stop_capture() {
    ::kill(tcpdump_, SIGINT);
    ::waitpid(tcpdump_, nullptr, 0);
    return flotilla::e2e::read_text(pcap_);
  }
  // Packets of the capture that match a tcpdump filter.
  int captured(const std::string &filter) {
    auto res = flotilla::e2e::run({"/usr/bin/tcpdump", "-nn", "-r", pcap_, filter});
    // Packets only (tcpdump's own notes go to the same output).
    int n = 0;
    std::istringstream in(res.output);
    std::string line;
    while (std::getline(in, line))
      n += line.find(" IP ") != std::string::npos || line.find(" IP6 ") != std::string::npos;
    return n;
  }

  std::set<int> seen_pids_;
  std::map<std::string, std::string> ip6_;  // node -> its container's IPv6 address
  std::string pcap_;
  pid_t tcpdump_ = -1;
};

// Two hosts on an IPv6-only underlay (fd88::/64: no IPv4 on the bridge, on
// any eth0 or for etcd), the same plugin config as above. h1's eth0 also
// has, listed ahead of its stable fd88::12 (the kernel lists the newest
// first), a deprecated address (preferred lifetime 0) and one whose DAD
// fails (the bridge holds it already): an endpoint chosen by order alone
// would be one of those.
const char *kDeprecated = "fd88::98";
const char *kDadFailed = "fd88::99";

class MeshOverIpv6Underlay : public Mesh {
 protected:
  ClusterOptions options() const override {
    ClusterOptions o = Mesh::options();
    o.hosts = 2;
    o.ipv6_underlay = true;
    o.prepare_host = [](const Cluster &c, const Host &h) {
      if (h.index() != 1) return;
      auto ip = [](const std::vector<std::string> &args) {
        std::vector<std::string> argv{"/usr/sbin/ip"};
        argv.insert(argv.end(), args.begin(), args.end());
        auto r = flotilla::e2e::run(argv);
        if (r.exit_code != 0) throw std::runtime_error("ip " + args.back() + ": " + r.output);
      };
      ip({"-n", c.underlay_netns(), "addr", "add", std::string(kDadFailed) + "/64", "dev", "br0",
          "nodad"});
      ip({"-n", h.netns(), "addr", "add", std::string(kDeprecated) + "/64", "dev", "eth0", "nodad",
          "preferred_lft", "0"});
      ip({"-n", h.netns(), "addr", "add", std::string(kDadFailed) + "/64", "dev", "eth0"});
    };
    return o;
  }
  std::string wg_endpoint_of(const Host &h) { return "[" + h.ip() + "]:51820"; }
};

}  // namespace

TEST_F(Mesh, ContainersReachEachOtherEncryptedThroughRestartsAndLeaves) {
  Host &h0 = cluster().host(0);
  auto r = h0.run_job(web_job());
  ASSERT_EQ(r.exit_code, 0) << r.output << cluster().logs();
  auto cs = wait_for_containers(3, 60s);
  ASSERT_EQ(cs.size(), 3u) << cluster().logs();
  std::set<std::string> subnets;
  for (const auto &[node, c] : cs) subnets.insert(c.second.substr(0, c.second.rfind('.')));
  EXPECT_EQ(subnets.size(), 3u) << "each node its own subnet";

  // A capture on the underlay bridge while containers talk.
  start_capture();
  if (HasFatalFailure()) return;

  // Every container reaches every other: ping and TCP, by overlay address.
  for (const auto &[from, c] : cs)
    for (const auto &[to, d] : cs) {
      if (from == to) continue;
      const std::string ns = ns_of(from, c.first);
      bool ok = false;
      // The first packet may wait for the peers' handshake.
      wait_until([&] { return ok = ping(ns, d.second); }, 10s, 100ms);
      EXPECT_TRUE(ok) << from << " -> " << to << " (" << d.second << ") ping\n" << state();
      const std::string page = http(ns, d.second);
      EXPECT_NE(page.find(marker()), std::string::npos)
          << from << " -> " << to << " (" << d.second << ") TCP: " << page;
      // Dual stack: the same over IPv6, through the same tunnels.
      const std::string six = ip6_[to];
      EXPECT_EQ(six.rfind("fd42:11:", 0), 0u) << to << "'s container has no IPv6 address";
      ok = false;
      wait_until([&] { return ok = ping(ns, six); }, 5s, 100ms);
      EXPECT_TRUE(ok) << from << " -> " << to << " (" << six << ") ping over IPv6\n" << state();
      const std::string page6 = http(ns, "[" + six + "]");
      EXPECT_NE(page6.find(marker()), std::string::npos)
          << from << " -> " << to << " (" << six << ") TCP over IPv6: " << page6;
    }

  // Per-peer status: the API, the CLI and the metrics.
  {
    json net = h0.get("/v1/nodes/h0/network");
    ASSERT_TRUE(net.is_object()) << h0.api("GET", "/v1/nodes/h0/network").body;
    EXPECT_EQ(net["wireguard"].value("backend", ""), "userspace");
    std::set<std::string> nodes;
    for (const auto &p : net.value("peers", json::array())) {
      nodes.insert(p.value("node", ""));
      EXPECT_TRUE(p["last_handshake_age_s"].is_number()) << p.dump();
      EXPECT_GT(p.value("rx_bytes", 0), 0) << p.dump();
      EXPECT_EQ(p.value("key_generation", 0), 1) << p.dump();
      EXPECT_EQ(p.value("endpoint", "").rfind("10.88.0.", 0), 0u) << p.dump();
    }
    EXPECT_EQ(nodes, (std::set<std::string>{"h1", "h2"})) << net.dump();
    auto st = h0.cli({"node", "status", "h0"});
    EXPECT_EQ(st.exit_code, 0) << st.output;
    for (const char *want : {"userspace backend", "HANDSHAKE", "h1", "h2", "10.88.0.12:51820"})
      EXPECT_NE(st.output.find(want), std::string::npos) << want << " in\n" << st.output;
    // Another node's, through h0's API: the copy h1 keeps in the store
    // (status_interval = 1), with its peers h0 and h2 as h1 sees them.
    json other;
    EXPECT_TRUE(wait_until(
        [&] {
          other = h0.get("/v1/nodes/h1/network");
          if (!other.is_object() || other.value("source", "") != "store") return false;
          std::set<std::string> ps;
          for (const auto &p : other.value("peers", json::array())) {
            if (!p["last_handshake_age_s"].is_number()) return false;
            ps.insert(p.value("node", ""));
          }
          return ps == std::set<std::string>{"h0", "h2"};
        },
        10s))
        << h0.api("GET", "/v1/nodes/h1/network").body;
    EXPECT_EQ(other.value("node", ""), "h1") << other.dump();
    EXPECT_EQ(other["wireguard"].value("endpoint", ""), "10.88.0.12:51820") << other.dump();
    EXPECT_TRUE(other["age_ms"].is_number() && other["age_ms"].get<int64_t>() < 5000)
        << other.dump();
    auto remote = h0.cli({"node", "status", "h1"});
    EXPECT_EQ(remote.exit_code, 0) << remote.output;
    for (const char *want :
         {"as the node last copied it into the store", "HANDSHAKE", "h0", "h2", "10.88.0.11:51820"})
      EXPECT_NE(remote.output.find(want), std::string::npos) << want << " in\n" << remote.output;
    EXPECT_EQ(h0.api("GET", "/v1/nodes/nosuch/network").status, 404);
    const std::string metrics = h0.api("GET", "/v1/metrics").body;
    EXPECT_NE(metrics.find("flotilla_net_overlay_wg_peers 2"), std::string::npos) << metrics;
    EXPECT_NE(metrics.find("flotilla_net_overlay_wg_peer_adds_total"), std::string::npos);
  }

  const std::string bytes = stop_capture();
  EXPECT_EQ(bytes.find(marker()), std::string::npos)
      << "the marker crossed the underlay in cleartext";
  EXPECT_GE(captured("udp port 51820"), 12) << "WireGuard traffic between the hosts";
  EXPECT_EQ(captured("tcp port 8080 or icmp or ip6 net fd42:11::/48"), 0)
      << "no overlay packet unencrypted on the underlay";
  // The capture does see cleartext when there is some: etcd's gRPC.
  EXPECT_NE(bytes.find("/flotilla/"), std::string::npos) << "the capture saw nothing in cleartext";

  // flotillad is killed and restarted on h1 while h0's container pings
  // h1's: nothing
  // lost, the same subnet and address, the same wireguard-go, no duplicate.
  {
    Host &h1 = cluster().host(1);
    const int pid_before = ov::wireguard_go_pid(plugin_dir(h1) + "/wireguard", h1.wg_interface());
    const std::string ns = ns_of("h0", cs["h0"].first);
    const std::string log = cluster().dir() + "/ping.log";
    int pfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    std::vector<std::string> pargs = {kBusybox, "ping", "-c", "80", "-i", "0.05", cs["h1"].second};
    std::vector<char *> pv;
    for (auto &a : pargs) pv.push_back(a.data());
    pv.push_back(nullptr);
    pid_t pinger = -1;
    ASSERT_EQ(flotilla::e2e::spawn_in_netns(ns, pv.data(), pfd, &pinger), 0);
    ::close(pfd);
    cluster().record_pid(pinger);
    std::this_thread::sleep_for(300ms);
    h1.kill();  // kill -9: the harshest restart
    ASSERT_TRUE(h1.start()) << h1.log();
    int status = 0;
    ::waitpid(pinger, &status, 0);
    const std::string plog = flotilla::e2e::read_text(log);
    EXPECT_NE(plog.find("80 packets received"), std::string::npos) << plog;
    EXPECT_EQ(ov::wireguard_go_pid(plugin_dir(h1) + "/wireguard", h1.wg_interface()), pid_before)
        << "wireguard-go must not be restarted";
    EXPECT_TRUE(wait_until(
        [&] {
          return h1.log().find("reattached to the running wireguard-go") != std::string::npos;
        },
        10s))
        << h1.log();
    ASSERT_TRUE(wait_until([&] { return mesh_converged(); }, 10s)) << state();
    auto after = containers();
    EXPECT_EQ(after["h1"], cs["h1"]) << "the same allocation and address after a restart";
    EXPECT_TRUE(ping(ns, cs["h1"].second));
  }

  // h2 leaves (its daemon killed): its record's lease runs out and the
  // others drop its peer within the TTL. It comes back: the mesh converges.
  {
    Host &h2 = cluster().host(2);
    const auto key2 = ov::key_to_base64(ov::public_key_of(device(h2).private_key.value()));
    auto has_h2 = [&](int i) {
      for (const auto &p : device(cluster().host(i)).peers)
        if (p.public_key == key2) return true;
      return false;
    };
    h2.kill();
    auto gone =
        wait_until([&] { return !has_h2(0) && !has_h2(1); }, std::chrono::seconds(kTtl + 5));
    ASSERT_TRUE(gone) << state();
    std::cout << "[ MEASURED ] a killed host's peer removed on the others after " << gone->count()
              << " ms (lease TTL " << kTtl << " s)\n";
    EXPECT_LE(gone->count(), kTtl * 1000 + 1500);
    EXPECT_FALSE(ping(ns_of("h0", cs["h0"].first), cs["h2"].second)) << "no route to a node gone";
    ASSERT_TRUE(h2.start()) << h2.log();
    auto back = wait_until([&] { return mesh_converged(); }, 15s);
    ASSERT_TRUE(back) << state();
    std::cout << "[ MEASURED ] mesh converged " << back->count()
              << " ms after h2's daemon answered\n";
    // Its allocation may have been replaced while it was gone: ask again.
    cs = wait_for_containers(3, 30s);
    ASSERT_EQ(cs.size(), 3u) << cluster().logs();
    bool ok = false;
    wait_until([&] { return ok = ping(ns_of("h0", cs["h0"].first), cs["h2"].second); }, 10s, 100ms);
    EXPECT_TRUE(ok) << state();
    std::string page;
    wait_until(
        [&] {
          page = http(ns_of("h2", cs["h2"].first), cs["h1"].second);
          return page.find(marker()) != std::string::npos;
        },
        10s, 200ms);
    EXPECT_NE(page.find(marker()), std::string::npos)
        << "h2 -> h1 TCP: " << page
        << "\nping h2 -> h1: " << ping(ns_of("h2", cs["h2"].first), cs["h1"].second)
        << "\nh0 -> h1 TCP: " << http(ns_of("h0", cs["h0"].first), cs["h1"].second)
        << "\nh2 -> h0 TCP: " << http(ns_of("h2", cs["h2"].first), cs["h0"].second) << "\n"
        << json(cs).dump() << "\n"
        << state();
  }

  // h1 rotates its key (flotilla node rotate-key) under a running TCP
  // stream from h0's container to h1's: the stream survives, the others
  // know only the new key, and no peer is left without allowed-ips.
  {
    Host &h1 = cluster().host(1);
    const std::string old_key =
        ov::key_to_base64(ov::public_key_of(device(h1).private_key.value()));
    auto spawn = [&](const std::string &ns, std::vector<std::string> args, const std::string &log) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      std::vector<char *> v;
      for (auto &a : args) v.push_back(a.data());
      v.push_back(nullptr);
      pid_t pid = -1;
      flotilla::e2e::spawn_in_netns(ns, v.data(), fd, &pid);
      ::close(fd);
      cluster().record_pid(pid);
      return pid;
    };
    const std::string slog = cluster().dir() + "/iperf-s.log",
                      clog = cluster().dir() + "/iperf-c.log";
    pid_t server = spawn(ns_of("h1", cs["h1"].first), {"/usr/bin/iperf3", "-s", "-1"}, slog);
    std::this_thread::sleep_for(500ms);
    pid_t client = spawn(ns_of("h0", cs["h0"].first),
                         {"/usr/bin/iperf3", "-c", cs["h1"].second, "-t", "5", "-b", "20M"}, clog);
    std::this_thread::sleep_for(1500ms);
    auto rk = h1.cli({"node", "rotate-key", "h1"});
    EXPECT_EQ(rk.exit_code, 0) << rk.output << h1.log();
    EXPECT_NE(rk.output.find("generation 2"), std::string::npos) << rk.output;
    int status = -1;
    ::waitpid(client, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "the TCP stream broke during the rotation:\n"
        << flotilla::e2e::read_text(clog);
    ::kill(server, SIGKILL);
    ::waitpid(server, nullptr, 0);
    const std::string new_key =
        ov::key_to_base64(ov::public_key_of(device(h1).private_key.value()));
    EXPECT_NE(new_key, old_key);
    ASSERT_TRUE(wait_until([&] { return mesh_converged(); }, 10s)) << state();
    for (int i : {0, 2}) {
      bool has_new = false;
      for (const auto &p : device(cluster().host(i)).peers) {
        EXPECT_NE(p.public_key, old_key) << "a stale peer on " << cluster().host(i).name();
        EXPECT_FALSE(p.allowed_ips.empty()) << "a peer without allowed-ips left on h" << i;
        has_new |= p.public_key == new_key;
      }
      EXPECT_TRUE(has_new) << cluster().host(i).name() << " does not know h1's new key";
    }
    bool ok = false;
    wait_until([&] { return ok = ping(ns_of("h2", cs["h2"].first), cs["h1"].second); }, 10s, 100ms);
    EXPECT_TRUE(ok) << "h2 -> h1 after the rotation\n" << state();
  }
}

// Issue 11 over an IPv6-only underlay: the nodes publish their stable
// global IPv6 addresses, the tunnels run over IPv6 (nothing else could
// carry them), the devices, bridges and veths have the underlay's MTU minus
// WireGuard's 80 bytes over IPv6, and containers on the two hosts reach
// each other, with full-sized packets crossing unfragmented.
TEST_F(MeshOverIpv6Underlay, TunnelsRunOverIpv6FromTheStableAddressWithMtuMinus80) {
  Host &h0 = cluster().host(0), &h1 = cluster().host(1);
  // The underlay really has no IPv4.
  for (int i = 0; i < cluster().size(); ++i)
    for (const auto &a : nl::Socket::open_in(cluster().host(i).netns_path()).addresses("eth0"))
      EXPECT_NE(a.find(':'), std::string::npos) << "IPv4 on h" << i << "'s eth0: " << a;
  for (const auto &a : nl::Socket::open_in(cluster().underlay_netns_path()).addresses("br0"))
    EXPECT_NE(a.find(':'), std::string::npos) << "IPv4 on the underlay bridge: " << a;
  // h1's decoys are there, flagged, and listed ahead of its stable address.
  {
    auto addrs = nl::Socket::open_in(h1.netns_path()).addresses_with_flags("eth0");
    std::map<std::string, std::pair<size_t, uint32_t>> at;
    for (size_t i = 0; i < addrs.size(); ++i)
      at[addrs[i].cidr.substr(0, addrs[i].cidr.find('/'))] = {i, addrs[i].flags};
    ASSERT_TRUE(at.count(h1.ip()) && at.count(kDeprecated) && at.count(kDadFailed));
    EXPECT_TRUE(at[kDeprecated].second & IFA_F_DEPRECATED) << std::hex << at[kDeprecated].second;
    EXPECT_TRUE(at[kDadFailed].second & (IFA_F_DADFAILED | IFA_F_TENTATIVE))
        << std::hex << at[kDadFailed].second;
    EXPECT_LT(at[kDeprecated].first, at[h1.ip()].first);
    EXPECT_LT(at[kDadFailed].first, at[h1.ip()].first);
  }

  // Each node's record in the store has its stable IPv6 endpoint, and each
  // device has the other at it.
  for (int i = 0; i < 2; ++i) {
    const Host &h = cluster().host(i), &other = cluster().host(1 - i);
    auto rec =
        cluster().etcd().ctl({"get", "/flotilla/net/nodes/" + h.name(), "--print-value-only"});
    json j = json::parse(rec.output, nullptr, false);
    EXPECT_EQ(j.is_object() ? j.value("endpoint", "") : rec.output, wg_endpoint_of(h));
    auto d = device(h);
    ASSERT_EQ(d.peers.size(), 1u) << state();
    EXPECT_EQ(d.peers[0].endpoint, wg_endpoint_of(other)) << h.name() << "'s peer";
  }
  // The MTU: the underlay's minus 80 on the device, the bridge (and below,
  // the containers' veths); the status says the same.
  unsigned mtu = 0;
  for (int i = 0; i < 2; ++i) {
    const Host &h = cluster().host(i);
    auto sock = nl::Socket::open_in(h.netns_path());
    const unsigned underlay = sock.link("eth0").value().mtu;
    auto wg = sock.link(h.wg_interface()), br = sock.link("flotilla0");
    ASSERT_TRUE(wg && br) << h.name();
    EXPECT_EQ(wg->mtu, underlay - 80) << h.name() << "'s WireGuard device";
    EXPECT_EQ(br->mtu, underlay - 80) << h.name() << "'s bridge";
    mtu = wg->mtu;
  }
  {
    json net = h0.get("/v1/nodes/h0/network");
    ASSERT_TRUE(net.is_object()) << h0.api("GET", "/v1/nodes/h0/network").body;
    EXPECT_EQ(net.value("mtu", 0u), net["underlay"].value("mtu", 0u) - 80) << net.dump();
    EXPECT_EQ(net["wireguard"].value("endpoint", ""), wg_endpoint_of(h0)) << net.dump();
  }

  auto r = h0.run_job(web_job());
  ASSERT_EQ(r.exit_code, 0) << r.output << cluster().logs();
  auto cs = wait_for_containers(2, 60s);
  ASSERT_EQ(cs.size(), 2u) << cluster().logs();

  start_capture();
  if (HasFatalFailure()) return;
  for (const auto &[from, c] : cs) {
    const std::string to = from == "h0" ? "h1" : "h0";
    const auto &d = cs[to];
    const std::string ns = ns_of(from, c.first);
    EXPECT_EQ(nl::Socket::open_in(ns).link("eth0").value().mtu, mtu) << from << "'s container";
    bool ok = false;
    wait_until([&] { return ok = ping(ns, d.second); }, 10s, 100ms);
    EXPECT_TRUE(ok) << from << " -> " << to << " (" << d.second << ") ping\n" << state();
    const std::string page = http(ns, d.second);
    EXPECT_NE(page.find(marker()), std::string::npos)
        << from << " -> " << to << " (" << d.second << ") TCP: " << page;
    const std::string six = ip6_[to];
    ok = false;
    wait_until([&] { return ok = ping(ns, six); }, 5s, 100ms);
    EXPECT_TRUE(ok) << from << " -> " << to << " (" << six << ") ping over IPv6\n" << state();
    // A packet of the full overlay MTU (ICMP 8 + IPv4 20 bytes of
    // headers): 80 bytes more on the underlay fill its MTU exactly.
    auto big = flotilla::e2e::run(
        {kBusybox, "ping", "-c", "2", "-W", "2", "-s", std::to_string(mtu - 28), d.second}, ns);
    EXPECT_EQ(big.exit_code, 0) << from << " -> " << to << " full-MTU ping: " << big.output;
  }
  const std::string bytes = stop_capture();
  EXPECT_EQ(bytes.find(marker()), std::string::npos)
      << "the marker crossed the underlay in cleartext";
  EXPECT_GE(captured("ip6 and udp port 51820"), 12) << "WireGuard over IPv6 between the hosts";
  EXPECT_EQ(captured("ip"), 0) << "IPv4 on the IPv6-only underlay";
  EXPECT_EQ(captured("ip6 and (ip6[6] == 44)"), 0)
      << "fragments on the underlay: the overlay MTU leaves too little room for WireGuard";
  EXPECT_EQ(captured("tcp port 8080 or icmp or ip6 net fd42:11::/48"), 0)
      << "no overlay packet unencrypted on the underlay";
}

// A renumbering: h1's address is deprecated (its prefix being withdrawn,
// still valid, so its etcd connection stays up) and a new one is added.
// The endpoint moves to the new address: h1's record says so, h0's device
// has h1's peer there, and the tunnel carries traffic.
TEST_F(MeshOverIpv6Underlay, TheEndpointFollowsARenumberedUnderlay) {
  Host &h0 = cluster().host(0), &h1 = cluster().host(1);
  const std::string fresh = "fd88::1:3", want = "[" + fresh + "]:51820";
  for (const std::vector<std::string> &args :
       {std::vector<std::string>{"addr", "change", h1.ip() + "/64", "dev", "eth0", "nodad",
                                 "preferred_lft", "0"},
        std::vector<std::string>{"addr", "add", fresh + "/64", "dev", "eth0", "nodad"}}) {
    std::vector<std::string> argv{"/usr/sbin/ip", "-n", h1.netns()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = flotilla::e2e::run(argv);
    ASSERT_EQ(r.exit_code, 0) << "ip " << args[1] << ": " << r.output;
  }
  auto record = [&] {
    auto rec =
        cluster().etcd().ctl({"get", "/flotilla/net/nodes/" + h1.name(), "--print-value-only"});
    json j = json::parse(rec.output, nullptr, false);
    return j.is_object() ? j : json::object();
  };
  // Checked every 5 s; the record then reaches h0 through its watch.
  EXPECT_TRUE(wait_until([&] { return record().value("endpoint", "") == want; }, 20s))
      << record().dump() << "\n" << h1.log();
  auto peer_endpoint = [&] {
    auto d = device(h0);
    return d.peers.size() == 1 ? d.peers[0].endpoint : "";
  };
  EXPECT_TRUE(wait_until([&] { return peer_endpoint() == want; }, 10s))
      << "h0 has h1 at " << peer_endpoint() << "\n" << state();
  EXPECT_NE(h1.log().find("WireGuard endpoint is now " + want), std::string::npos) << h1.log();
  // Through the tunnel: h0 reaches h1's bridge (its subnet's first address).
  const json subnets = record().value("subnets", json::array());
  ASSERT_FALSE(subnets.empty()) << record().dump();
  std::string gw = subnets[0].get<std::string>();
  gw = gw.substr(0, gw.rfind('.')) + ".1";
  bool ok = false;
  wait_until([&] { return ok = ping(h0.netns_path(), gw); }, 10s, 100ms);
  EXPECT_TRUE(ok) << "h0 -> h1's bridge " << gw << " after the renumbering\n" << state();
}
