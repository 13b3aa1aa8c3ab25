// net-overlay on one host, end to end: the daemon, the reconciler, runc
// and the plugin, with real netlink and nftables. The test process first
// moves into a network namespace of its own that stands in for the host
// (every daemon it starts inherits it), joined by a veth to a second one
// that stands in for "outside": the machine's own links, sysctls and nft
// tables are never touched, and both namespaces go when the test ends.
//
//   container (10.42.x.y) -- flotilla0 -- [test host ns] uplink 198.51.100.1
//                                                |       2001:db8:100::1
//                                   [outside ns] eth0 198.51.100.2, 2001:db8:100::2
//                                   (no route to the cluster's addresses: only
//                                   NAT gets replies back)
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "alloc_status.h"
#include "container_daemon.h"
#include "daemon_harness.h"
#include "netlink.h"

using nlohmann::json;
namespace e2e = flotilla::e2e;
namespace nl = flotilla::netlink;
namespace fs = std::filesystem;

namespace {

std::string g_skip;     // why every test is skipped, "" when the namespaces are up
std::string g_dir;      // this run's own directory
std::string g_outside;  // the pinned "outside" namespace

std::string cli() { return e2e::build_dir() + "/tools/flotilla/flotilla"; }

// The namespaces, made before any thread exists.
void make_world() {
  if (::geteuid() != 0) {
    g_skip = "SKIPPED: needs root (network namespaces, nftables, runc)";
    return;
  }
  if (access("/usr/sbin/runc", X_OK) != 0 && access("/usr/bin/runc", X_OK) != 0) {
    g_skip = "SKIPPED: runc is not installed";
    return;
  }
  if (::unshare(CLONE_NEWNET) != 0) {
    g_skip = std::string("SKIPPED: cannot make a network namespace: ") + std::strerror(errno);
    return;
  }
  g_dir = "/tmp/flotilla-nete2e-" + std::to_string(::getpid());
  fs::create_directories(g_dir);
  g_outside = g_dir + "/outside";
  nl::netns::create_pinned(g_outside);
  auto host = nl::Socket::open();
  host.set_up("lo");
  auto fd = nl::netns::open(g_outside);
  host.add_veth("uplink", "eth0", 1500, fd.get());
  host.add_address("uplink", "198.51.100.1/24");
  host.set_up("uplink");
  auto out = nl::Socket::open_in(g_outside);
  out.set_up("lo");
  out.add_address("eth0", "198.51.100.2/24");
  out.set_up("eth0");
  host.add_route("default", "198.51.100.2", "uplink");
  // IPv6 too, for the dual-stack test: the outside again has no route to
  // the cluster's addresses.
  host.add_address("uplink", "2001:db8:100::1/64");
  out.add_address("eth0", "2001:db8:100::2/64");
  host.add_route("default", "2001:db8:100::2", "uplink");
}

void remove_world() {
  if (g_dir.empty()) return;
  std::error_code ec;
  for (const auto &e : fs::recursive_directory_iterator(g_dir, ec))
    if (nl::netns::is_pinned(e.path().string())) nl::netns::remove_pinned(e.path().string());
  fs::remove_all(g_dir, ec);
}

// A TCP server inside the "outside" namespace: answers every connection
// with `page` and remembers the address it came from.
class OutsideServer {
 public:
  explicit OutsideServer(int port) {
    nl::netns::run_in(g_outside, [&] {
      fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      ::bind(fd_, reinterpret_cast<sockaddr *>(&a), sizeof a);
      ::listen(fd_, 16);
    });
    thread_ = std::thread([this] {
      while (!stop_) {
        sockaddr_in peer{};
        socklen_t len = sizeof peer;
        int c = ::accept(fd_, reinterpret_cast<sockaddr *>(&peer), &len);
        if (c < 0) continue;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
        {
          std::lock_guard<std::mutex> g(mu_);
          peers_.insert(ip);
        }
        char buf[1024];
        ssize_t ignored = ::read(c, buf, sizeof buf);
        (void)ignored;
        const std::string reply =
            "HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\noutside-page";
        ignored = ::write(c, reply.data(), reply.size());
        ::close(c);
      }
    });
  }
  ~OutsideServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  std::set<std::string> peers() {
    std::lock_guard<std::mutex> g(mu_);
    return peers_;
  }

 private:
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::set<std::string> peers_;
};

// One HTTP GET to ip:port from the calling thread's namespace, or from the
// namespace at netns; the body, "" when nothing answered.
std::string http_get(const std::string &ip, int port, const std::string &netns = "") {
  std::string body;
  auto get = [&] {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0) {
      const std::string req = "GET / HTTP/1.0\r\nHost: x\r\n\r\n";
      if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
        char buf[4096];
        ssize_t n;
        std::string all;
        while ((n = ::read(fd, buf, sizeof buf)) > 0) all.append(buf, static_cast<size_t>(n));
        auto at = all.find("\r\n\r\n");
        if (at != std::string::npos) body = all.substr(at + 4);
      }
    }
    ::close(fd);
  };
  if (netns.empty())
    get();
  else
    nl::netns::run_in(netns, get);
  return body;
}

class Network : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!g_skip.empty()) GTEST_SKIP() << g_skip;
    d_ = std::make_unique<e2e::Daemon>();
    d_->write_config(config());
  }
  void TearDown() override {
    if (!d_) return;
    e2e::remove_everything(*d_, cgroup_parent());
    // What the plugin made in the test's host namespace goes with it; the
    // pinned namespaces under the daemon's dir are unpinned here.
    std::error_code ec;
    for (const auto &e : fs::directory_iterator(netns_dir(), ec))
      nl::netns::remove_pinned(e.path().string());
    d_.reset();
  }
  static std::string cgroup_parent() { return "flotilla-nete2e-" + std::to_string(getpid()); }
  std::string netns_dir() const { return d_->dir() + "/netns"; }

  std::string config(const std::string &overlay_keys = "") const {
    return e2e::container_plugins_config(*d_, cgroup_parent()) +
           "\n[plugin.net-overlay]\npath = \"" NET_OVERLAY_PATH "\"\nnetns_dir = \"" + netns_dir() +
           "\"\n" +
           // One host: no mesh (tests/cluster/test_mesh.cc has it), so no
           // wireguard-go would hold the test's namespace.
           "wireguard = \"off\"\n" + overlay_keys;
  }

  void start_and_import() {
    ASSERT_TRUE(d_->start()) << d_->log();
    std::string image = d_->dir() + "/busybox-oci";
    auto mk = e2e::run({e2e::source_dir() + "/tools/mkimage-busybox", image});
    ASSERT_EQ(mk.exit_code, 0) << mk.output;
    auto imp = flotilla({"image", "import", image, "--tag", "busybox:latest"});
    ASSERT_EQ(imp.exit_code, 0) << imp.output << d_->log();
  }

  e2e::RunResult flotilla(std::vector<std::string> args) {
    args.insert(args.begin(), {cli(), "--socket", d_->socket()});
    return e2e::run(args);
  }
  json allocs(const std::string &job) {
    json j = json::parse(d_->get("/v1/jobs/" + job).body, nullptr, false);
    if (!j.is_object()) return json::array();
    for (const char *k : {"allocations", "allocs"})
      if (j.contains(k)) return j[k];
    return json::array();
  }
  json wait_for(const std::string &job, std::initializer_list<const char *> states) {
    for (int i = 0; i < 600; ++i) {
      json a = allocs(job);
      if (a.is_array() && !a.empty())
        for (const char *s : states)
          if (e2e::alloc_status(a[0]) == s) return a[0];
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "job " << job << " never reached the expected state: " << allocs(job).dump()
                  << "\n"
                  << d_->log();
    return json::object();
  }
  void run_job(const std::string &toml) {
    std::string file = d_->dir() + "/job.toml";
    std::ofstream(file, std::ios::trunc) << toml;
    auto r = flotilla({"job", "run", "--detach", file});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  // The container's IPv4 address on eth0 of the allocation's namespace.
  std::string address_of(const std::string &alloc) {
    try {
      auto s = nl::Socket::open_in(netns_dir() + "/" + alloc);
      for (const auto &a : s.addresses("eth0"))
        if (a.find(':') == std::string::npos) return a;
    } catch (const std::exception &e) {
      return std::string("(") + e.what() + ")";
    }
    return "";
  }
  // The container's global IPv6 address on eth0 ("" when none).
  std::string address6_of(const std::string &alloc) {
    try {
      auto s = nl::Socket::open_in(netns_dir() + "/" + alloc);
      for (const auto &a : s.addresses("eth0"))
        if (a.find(':') != std::string::npos && a.rfind("fe80", 0) != 0) return a;
    } catch (const std::exception &) {
    }
    return "";
  }
  std::string wait_log(const std::string &alloc, const std::string &task,
                       const std::string &marker) {
    std::string out;
    for (int i = 0; i < 150; ++i) {
      out = flotilla({"alloc", "logs", alloc, "--task", task}).output;
      if (out.find(marker) != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return out;
  }
  std::vector<nl::Link> our_veths() {
    std::vector<nl::Link> out;
    for (const auto &l : nl::Socket::open().links())
      if (l.kind == "veth" && l.name.rfind("flv", 0) == 0) out.push_back(l);
    return out;
  }

  std::unique_ptr<e2e::Daemon> d_;
};

const char *kWebJob = R"(name = "web"
type = "service"
[[task]]
name = "httpd"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "echo bridge-page > /tmp/index.html && exec httpd -f -p 8090 -h /tmp"]
network = "bridge"
[task.resources]
ports = [8090, { name = "alt", host = 8091, to = 8090 }]
[[task]]
name = "probe"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "ping -c1 -W3 10.42.0.1 >/dev/null && echo GATEWAY-OK; until wget -qO- http://198.51.100.2:8099/; do sleep 0.2; done; echo; echo OUTSIDE-DONE; until wget -qO- http://127.0.0.1:8090/; do sleep 0.2; done; echo SIBLING-OK; exec sleep 3600"]
network = "bridge"
)";

}  // namespace

// An address, the gateway, the outside through NAT, a sibling task on
// localhost, a mapped port (and a named mapping to another container port)
// from the host itself and from outside; then the
// daemon stops (nothing is torn down) and comes back to the same address.
TEST_F(Network, BridgeContainerHasAddressEgressAndAMappedPort) {
  start_and_import();
  OutsideServer outside(8099);
  run_job(kWebJob);
  json a = wait_for("web", {"running", "failed"});
  ASSERT_EQ(e2e::alloc_status(a), "running") << a.dump() << d_->log();
  const std::string id = a.value("id", "");

  const std::string addr = address_of(id);
  EXPECT_EQ(addr.rfind("10.42.", 0), 0u) << addr;
  EXPECT_NE(addr.find("/24"), std::string::npos) << addr;
  auto br = nl::Socket::open().link("flotilla0");
  ASSERT_TRUE(br) << "no bridge";
  EXPECT_EQ(br->mtu, 1440u) << "the uplink's 1500 less WireGuard's 60";

  std::string probe = wait_log(id, "probe", "SIBLING-OK");
  EXPECT_NE(probe.find("GATEWAY-OK"), std::string::npos) << probe;
  EXPECT_NE(probe.find("outside-page"), std::string::npos) << probe;
  EXPECT_NE(probe.find("SIBLING-OK"), std::string::npos) << probe;
  // The outside saw the host's address: the container's was masqueraded.
  EXPECT_EQ(outside.peers(), (std::set<std::string>{"198.51.100.1"}));

  // The mapped port, from the host itself and from outside.
  std::string page;
  for (int i = 0; i < 50 && page.empty(); ++i) {
    page = http_get("127.0.0.1", 8090);
    if (page.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(page, "bridge-page\n");
  EXPECT_EQ(http_get("198.51.100.1", 8090), "bridge-page\n");
  EXPECT_EQ(http_get("198.51.100.1", 8090, g_outside), "bridge-page\n");
  // A named mapping moves the port: host 8091 to the container's 8090.
  EXPECT_EQ(http_get("198.51.100.1", 8091, g_outside), "bridge-page\n");

  // Stopped, the daemon leaves the network as it is.
  d_->signal(SIGTERM);
  ASSERT_EQ(d_->wait_exit(), 0) << d_->log();
  EXPECT_EQ(http_get("198.51.100.1", 8090, g_outside), "bridge-page\n")
      << "the mapping must keep working while the daemon is down";
  ASSERT_TRUE(d_->start()) << d_->log();
  a = wait_for("web", {"running"});
  EXPECT_EQ(address_of(id), addr) << "a restart must keep the address";
  EXPECT_EQ(our_veths().size(), 1u);
  EXPECT_EQ(http_get("198.51.100.1", 8090, g_outside), "bridge-page\n");

  // Stopping the job removes its veth, namespace and mapping.
  ASSERT_EQ(flotilla({"job", "stop", "web"}).exit_code, 0);
  for (int i = 0; i < 100 && (!our_veths().empty() || fs::exists(netns_dir() + "/" + id)); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(our_veths().empty());
  EXPECT_FALSE(fs::exists(netns_dir() + "/" + id));
  EXPECT_EQ(http_get("198.51.100.1", 8090, g_outside), "");

  // --cleanup-network takes away the bridge and the nft table too.
  std::string again = kWebJob;
  again.replace(again.find("\"web\""), 5, "\"web2\"");
  run_job(again);
  ASSERT_EQ(e2e::alloc_status(wait_for("web2", {"running", "failed"})), "running") << d_->log();
  d_->signal(SIGTERM);
  ASSERT_EQ(d_->wait_exit(), 0) << d_->log();
  auto clean = e2e::run({e2e::build_dir() + "/core/flotillad", "--config", d_->config_path(),
                         "--cleanup-network"});
  EXPECT_EQ(clean.exit_code, 0) << clean.output;
  EXPECT_FALSE(nl::Socket::open().link("flotilla0")) << clean.output;
  EXPECT_TRUE(our_veths().empty()) << clean.output;
  EXPECT_NE(clean.output.find("nft table inet flotilla"), std::string::npos) << clean.output;
  EXPECT_NE(clean.output.find("released"), std::string::npos) << clean.output;
}

// kill -9 between the veth's creation and the end of the attach: after a
// restart the allocation runs with the address it had reserved, one veth,
// and the next allocation gets another address.
TEST_F(Network, KillDashNineDuringAttachLeaksNoVethAndNoAddress) {
  ::setenv("FLOTILLA_NET_OVERLAY_FAILPOINT", "after-veth", 1);
  ASSERT_TRUE(d_->start()) << d_->log();
  ::unsetenv("FLOTILLA_NET_OVERLAY_FAILPOINT");
  std::string image = d_->dir() + "/busybox-oci";
  ASSERT_EQ(e2e::run({e2e::source_dir() + "/tools/mkimage-busybox", image}).exit_code, 0);
  ASSERT_EQ(flotilla({"image", "import", image, "--tag", "busybox:latest"}).exit_code, 0);
  run_job(R"(name = "one"
type = "service"
[[task]]
name = "t"
image = "busybox:latest"
command = "/bin/sleep"
args = ["3600"]
network = "bridge"
)");
  EXPECT_EQ(d_->wait_exit(), 128 + SIGKILL) << "the failpoint did not fire: " << d_->log();
  EXPECT_EQ(our_veths().size(), 1u) << "the half-made attachment";

  ASSERT_TRUE(d_->start()) << d_->log();
  json a = wait_for("one", {"running", "failed"});
  ASSERT_EQ(e2e::alloc_status(a), "running") << a.dump() << d_->log();
  const std::string first = address_of(a.value("id", ""));
  EXPECT_EQ(first.rfind("10.42.", 0), 0u) << first;
  EXPECT_EQ(our_veths().size(), 1u) << "a veth leaked";

  run_job(R"(name = "two"
type = "service"
[[task]]
name = "t"
image = "busybox:latest"
command = "/bin/sleep"
args = ["3600"]
network = "bridge"
)");
  json b = wait_for("two", {"running", "failed"});
  ASSERT_EQ(e2e::alloc_status(b), "running") << b.dump();
  const std::string second = address_of(b.value("id", ""));
  EXPECT_EQ(second.rfind("10.42.", 0), 0u) << second;
  EXPECT_NE(first, second) << "two allocations on one address";
  EXPECT_EQ(our_veths().size(), 2u);
}

// Every problem at once, each with the file, the line and the key.
TEST_F(Network, MalformedConfigIsRefusedWithFileLineAndKey) {
  d_->write_config(config("cluster_cidr = \"10.42.0.0/33\"\ncluster_cidr_v6 = \"fd42::/48\"\n"
                          "mtu = 1200\nbridge = \"a-name-that-is-too-long\"\n"));
  EXPECT_FALSE(d_->start());
  const std::string log = d_->log();
  const std::string file = d_->config_path();
  for (const char *key : {"cluster_cidr:", "mtu:", "bridge:"})
    EXPECT_NE(log.find(std::string("plugin.net-overlay.") + key), std::string::npos)
        << key << "\n"
        << log;
  EXPECT_NE(log.find("config " + file + " line "), std::string::npos) << log;
  EXPECT_NE(log.find("prefix longer than 32"), std::string::npos) << log;
  EXPECT_NE(log.find("below 1280"), std::string::npos) << log;

  // A cluster CIDR that overlaps a network the host has.
  d_->write_config(config("cluster_cidr = \"198.51.100.0/24\"\n"));
  EXPECT_FALSE(d_->start());
  EXPECT_NE(d_->log().find("overlaps the host's address 198.51.100.1/24 on uplink"),
            std::string::npos)
      << d_->log();
}

int main(int argc, char **argv) {
  make_world();  // before gtest (or anything) starts a thread
  ::testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  remove_world();
  return rc;
}

// Dual stack (cluster_cidr_v6): each container gets an address of the
// node's /64 besides its IPv4 one; two containers reach each other over
// IPv6 (ping and TCP), the host reaches them, they reach the outside
// through the ip6 masquerade, and a port mapping answers on the host's
// IPv6 address from outside.
TEST_F(Network, DualStackContainersReachEachOtherOverIpv6) {
  d_->write_config(config("cluster_cidr_v6 = \"fd42:e2e::/48\"\n"));
  start_and_import();
  const char *job = R"(name = "NAME"
type = "service"
[[task]]
name = "httpd"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "echo v6-page-NAME > /tmp/index.html && exec httpd -f -p 8091 -h /tmp"]
network = "bridge"
PORTS)";
  auto job_named = [&](const std::string &name, const std::string &ports) {
    std::string t = job;
    for (size_t at; (at = t.find("NAME")) != std::string::npos;) t.replace(at, 4, name);
    t.replace(t.find("PORTS"), 5, ports);
    return t;
  };
  run_job(job_named("six-a", "[task.resources]\nports = [8091]\n"));
  run_job(job_named("six-b", ""));
  json a = wait_for("six-a", {"running", "failed"});
  json b = wait_for("six-b", {"running", "failed"});
  ASSERT_EQ(e2e::alloc_status(a), "running") << a.dump() << d_->log();
  ASSERT_EQ(e2e::alloc_status(b), "running") << b.dump() << d_->log();
  const std::string ns_a = netns_dir() + "/" + a.value("id", "");
  const std::string ns_b = netns_dir() + "/" + b.value("id", "");

  const std::string a6 = address6_of(a.value("id", "")), b6 = address6_of(b.value("id", ""));
  ASSERT_EQ(a6.rfind("fd42:e2e:", 0), 0u) << a6;
  ASSERT_NE(a6.find("/64"), std::string::npos) << a6;
  ASSERT_EQ(b6.rfind("fd42:e2e:", 0), 0u) << b6;
  EXPECT_NE(a6, b6);
  const std::string ip_a = a6.substr(0, a6.find('/')), ip_b = b6.substr(0, b6.find('/'));
  // Both in the node's one /64, whose first address is the bridge's.
  json net = json::parse(d_->get("/v1/nodes/" + d_->options().node_name + "/network").body, nullptr, false);
  ASSERT_TRUE(net.is_object());
  std::string subnet6;
  for (const auto &sn : net.value("subnets", json::array()))
    if (sn.get<std::string>().find(':') != std::string::npos) subnet6 = sn.get<std::string>();
  ASSERT_NE(subnet6.find("/64"), std::string::npos) << net.dump();
  const std::string base = subnet6.substr(0, subnet6.find("::"));
  EXPECT_EQ(ip_a.rfind(base + ":", 0), 0u) << ip_a << " in " << subnet6;
  EXPECT_EQ(ip_b.rfind(base + ":", 0), 0u) << ip_b << " in " << subnet6;
  bool gw = false;
  for (const auto &addr : nl::Socket::open().addresses("flotilla0"))
    if (addr == base + "::1/64") gw = true;
  EXPECT_TRUE(gw) << "the bridge holds " << base << "::1/64";
  EXPECT_EQ(e2e::read_text("/proc/sys/net/ipv6/conf/all/forwarding").substr(0, 1), "1");

  const std::string busybox = "/usr/bin/busybox";
  auto ping6 = [&](const std::string &ns, const std::string &ip) {
    bool ok = false;
    for (int i = 0; i < 30 && !ok; ++i)
      ok = e2e::run({busybox, "ping", "-c", "1", "-W", "1", ip}, ns).exit_code == 0;
    return ok;
  };
  auto get6 = [&](const std::string &ns, const std::string &ip) {
    std::string out;
    for (int i = 0; i < 30 && out.find("v6-page") == std::string::npos; ++i) {
      out = e2e::run({"/usr/bin/timeout", "5", busybox, "wget", "-q", "-O", "-",
                      "http://[" + ip + "]:8091/"},
                     ns)
                .output;
      if (out.find("v6-page") == std::string::npos)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return out;
  };
  EXPECT_TRUE(ping6(ns_a, ip_b)) << "a -> b over IPv6";
  EXPECT_TRUE(ping6(ns_b, ip_a)) << "b -> a over IPv6";
  EXPECT_EQ(get6(ns_a, ip_b), "v6-page-six-b\n");
  EXPECT_EQ(get6(ns_b, ip_a), "v6-page-six-a\n");
  EXPECT_TRUE(ping6("", ip_a)) << "the host -> a over IPv6";
  // The outside has no route to fd42:e2e::/48: only the masquerade brings
  // the reply back.
  EXPECT_TRUE(ping6(ns_a, "2001:db8:100::2")) << "a -> outside through the ip6 masquerade";
  // A's mapped port on the host's IPv6 address, from outside.
  EXPECT_EQ(get6(g_outside, "2001:db8:100::1"), "v6-page-six-a\n");
}
