// mesh_bench: the WireGuard mesh's figures, each against a baseline of the
// same run, on hosts of the multi-host harness (tests/cluster/cluster.h):
//
//  - throughput (iperf3 TCP, container -> container across two hosts
//    through Flotilla's mesh) and RTT (ping p50/p99), against bare
//    wireguard-go between two namespaces set up by hand (`wg`), and the
//    plain veth/bridge underlay between the same two namespaces;
//  - convergence after a join: a host's daemon killed, its peer gone
//    everywhere, the daemon started again; from its API answering until
//    every other host pings its bridge through the mesh (the record is
//    written within that time), and the plugin's own record-seen ->
//    device-changed gauge on the others.
//
// Not a test: figures are printed, nothing is asserted. Usage:
//   mesh_bench [--seconds S] [--hosts N] [--rounds R]
// Needs root, etcd, wireguard-go, wg, iperf3. Everything it makes carries
// the cluster's per-run prefix and goes with the cluster (by pid).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
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
using flotilla::e2e::run;
using nlohmann::json;
using namespace std::chrono_literals;
namespace ov = flotilla::overlay;
namespace nl = flotilla::netlink;

namespace {

const char *kBusybox = "/usr/bin/busybox";
const char *kIperf = "/usr/bin/iperf3";
const char *kIp = "/usr/sbin/ip";

std::string netns_dir(const Host &h) {
  return h.dir() + "/netns";
}
std::string plugin_dir(const Host &h) {
  return h.dir() + "/data/plugins/net-overlay";
}

ClusterOptions options(int hosts, bool containers) {
  ClusterOptions o;
  o.hosts = hosts;
  o.lease_ttl_s = 3;
  o.containers = containers;
  o.host_config = [](const Cluster &, const Host &h) {
    return "[plugin.net-overlay]\npath = \"" NET_OVERLAY_PATH "\"\nnetns_dir = \"" + netns_dir(h) +
           "\"\nwireguard = \"userspace\"\nwg_interface = \"" + h.wg_interface() +
           "\"\nunderlay_interface = \"eth0\"\nnode_lease_ttl = 3\n";
  };
  return o;
}

void record_wireguard_gos(Cluster &c, std::set<int> &seen) {
  for (int i = 0; i < c.size(); ++i) {
    int pid = ov::wireguard_go_pid(plugin_dir(c.host(i)) + "/wireguard", c.host(i).wg_interface());
    if (pid > 0 && seen.insert(pid).second) c.record_pid(pid);
  }
}

bool converged(Cluster &c, const std::set<int> &live) {
  for (int i : live) {
    try {
      auto d = ov::UapiWg().get(c.host(i).wg_interface());
      if (d.peers.size() != live.size() - 1) return false;
    } catch (const std::exception &) {
      return false;
    }
  }
  return true;
}

// iperf3 from client_ns to server_ip (a server started in server_ns):
// Gbit/s received.
double iperf(const std::string &server_ns, const std::string &client_ns,
             const std::string &server_ip, int seconds, const std::string &dir, Cluster &c) {
  const std::string log = dir + "/iperf-server.log";
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  std::vector<std::string> sargs = {kIperf, "-s", "-1", "-p", "5201"};
  std::vector<char *> sv;
  for (auto &a : sargs) sv.push_back(a.data());
  sv.push_back(nullptr);
  pid_t server = -1;
  flotilla::e2e::spawn_in_netns(server_ns, sv.data(), fd, &server);
  ::close(fd);
  c.record_pid(server);
  std::this_thread::sleep_for(300ms);
  auto r =
      run({kIperf, "-c", server_ip, "-p", "5201", "-t", std::to_string(seconds), "-J"}, client_ns);
  ::kill(server, SIGKILL);
  ::waitpid(server, nullptr, 0);
  json j = json::parse(r.output, nullptr, false);
  if (!j.is_object() || !j.contains("end")) {
    std::cerr << "iperf3 failed: " << r.output.substr(0, 400) << "\n";
    return 0;
  }
  return j["end"]["sum_received"].value("bits_per_second", 0.0) / 1e9;
}

// ping p50 and p99 in ms over n pings.
std::pair<double, double> rtt(const std::string &from_ns, const std::string &ip, int n) {
  auto r = run({kBusybox, "ping", "-c", std::to_string(n), "-i", "0.01", ip}, from_ns);
  std::vector<double> ms;
  std::istringstream in(r.output);
  std::string line;
  while (std::getline(in, line)) {
    auto p = line.find("time=");
    if (p != std::string::npos) ms.push_back(std::atof(line.c_str() + p + 5));
  }
  if (ms.empty()) return {0, 0};
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) {
    return ms[std::min(ms.size() - 1, static_cast<size_t>(q * ms.size()))];
  };
  return {at(0.5), at(0.99)};
}

void must(const flotilla::e2e::RunResult &r, const std::string &what) {
  if (r.exit_code != 0) throw std::runtime_error(what + ": " + r.output);
}

// Two namespaces on the underlay bridge, joined by a wireguard-go tunnel
// configured by hand with `wg`: the baseline. Returns (ns a, ns b).
std::pair<std::string, std::string> bare_pair(Cluster &c, std::set<int> &pids) {
  std::vector<std::string> ns;
  for (int i = 0; i < 2; ++i) {
    const std::string n = c.prefix() + "-b" + std::to_string(i);
    const std::string ip = "10.88.0." + std::to_string(200 + i);
    c.record("netns", n);
    must(run({kIp, "netns", "add", n}), "netns " + n);
    must(run({kIp, "link", "add", "eth0", "netns", n, "type", "veth", "peer", "name",
              "b" + std::to_string(i), "netns", c.underlay_netns()}),
         "veth");
    must(run({kIp, "-n", c.underlay_netns(), "link", "set", "b" + std::to_string(i), "master",
              "br0", "up"}),
         "bridge port");
    must(run({kIp, "-n", n, "addr", "add", ip + "/24", "dev", "eth0"}), "addr");
    must(run({kIp, "-n", n, "link", "set", "eth0", "up"}), "up");
    must(run({kIp, "-n", n, "link", "set", "lo", "up"}), "lo");
    ns.push_back("/run/netns/" + n);
  }
  std::vector<ov::WgKey> keys = {ov::generate_private_key(), ov::generate_private_key()};
  for (int i = 0; i < 2; ++i) {
    const std::string ifname = "wb" + std::to_string(i) + "-" + c.prefix().substr(3, 8);
    c.record("dir", ov::UapiWg().socket_path(ifname));
    std::vector<std::string> args = {"/usr/bin/wireguard-go", "-f", ifname};
    std::vector<char *> av;
    for (auto &a : args) av.push_back(a.data());
    av.push_back(nullptr);
    int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_t pid = -1;
    flotilla::e2e::spawn_in_netns(ns[i], av.data(), devnull, &pid);
    ::close(devnull);
    c.record_pid(pid);
    pids.insert(pid);
    ov::UapiWg wg;
    wait_until([&] { return wg.running(ifname); }, 5s);
    ov::WgDevice d;
    d.private_key = keys[i];
    d.listen_port = 51821;
    ov::PeerChange add;
    add.kind = ov::PeerChange::Kind::add;
    add.peer.public_key = ov::key_to_base64(ov::public_key_of(keys[1 - i]));
    add.peer.endpoint = "10.88.0." + std::to_string(201 - i) + ":51821";
    add.peer.allowed_ips = {"10.99.0." + std::to_string(2 - i) + "/32"};
    add.set_endpoint = true;
    add.replace_allowed_ips = true;
    wg.set(ifname, d, {add});
    // The same MTU as Flotilla's device: the underlay's 1500 less 60.
    must(run({kIp, "-n", ns[i].substr(11), "link", "set", ifname, "mtu", "1440", "up"}), "wg up");
    must(run({kIp, "-n", ns[i].substr(11), "addr", "add",
              "10.99.0." + std::to_string(i + 1) + "/24", "dev", ifname}),
         "wg addr");
  }
  return {ns[0], ns[1]};
}

int throughput(int seconds) {
  Cluster c(options(2, true));
  std::set<int> pids;
  if (!wait_until(
          [&] {
            record_wireguard_gos(c, pids);
            return converged(c, {0, 1});
          },
          30s))
    throw std::runtime_error("the mesh never converged:\n" + c.logs());
  auto r = c.host(0).run_job(R"(name = "bench"
type = "system"
[[task]]
name = "sleep"
image = "busybox:latest"
command = "/bin/sleep"
args = ["3600"]
network = "bridge"
[task.resources]
cpu = 10
memory = 8
)");
  if (r.exit_code != 0) throw std::runtime_error("job run: " + r.output);
  std::map<std::string, std::pair<std::string, std::string>> cs;  // node -> ns, ip
  wait_until(
      [&] {
        json j = c.host(0).get("/v1/allocs?job=bench");
        cs.clear();
        if (!j.is_object() || !j.contains("allocs")) return false;
        for (const auto &a : j["allocs"]) {
          if (flotilla::e2e::alloc_status(a) != "running") continue;
          Host *h = c.host_named(a.value("node", ""));
          const std::string ns = netns_dir(*h) + "/" + a.value("id", "");
          try {
            for (const auto &addr : nl::Socket::open_in(ns).addresses("eth0"))
              if (addr.find(':') == std::string::npos)
                cs[h->name()] = {ns, addr.substr(0, addr.find('/'))};
          } catch (const std::exception &) {
          }
        }
        return cs.size() == 2;
      },
      60s);
  if (cs.size() != 2) throw std::runtime_error("the bench job never ran:\n" + c.logs());
  wait_until(
      [&] {
        return run({kBusybox, "ping", "-c1", "-W1", cs["h1"].second}, cs["h0"].first).exit_code ==
               0;
      },
      10s);
  auto [a, b] = bare_pair(c, pids);
  wait_until(
      [&] {
        return run({kBusybox, "ping", "-c1", "-W1", "10.99.0.2"}, a).exit_code == 0;
      },
      10s);

  std::printf("throughput, iperf3 TCP %d s, one stream (machine shared with other builds):\n",
              seconds);
  for (int round = 0; round < 2; ++round) {
    double f = iperf(cs["h1"].first, cs["h0"].first, cs["h1"].second, seconds, c.dir(), c);
    double w = iperf(b, a, "10.99.0.2", seconds, c.dir(), c);
    double p = iperf(b, a, "10.88.0.201", seconds, c.dir(), c);
    std::printf(
        "  round %d: flotilla mesh %.2f Gbit/s | bare wireguard-go %.2f Gbit/s (ratio "
        "%.2f) | plain veth/bridge %.2f Gbit/s\n",
        round + 1, f, w, w > 0 ? f / w : 0.0, p);
  }
  auto fr = rtt(cs["h0"].first, cs["h1"].second, 200);
  auto wr = rtt(a, "10.99.0.2", 200);
  auto pr = rtt(a, "10.88.0.201", 200);
  std::printf(
      "RTT, 200 pings: flotilla mesh p50 %.3f p99 %.3f ms | bare wireguard-go p50 %.3f "
      "p99 %.3f ms | plain p50 %.3f p99 %.3f ms\n",
      fr.first, fr.second, wr.first, wr.second, pr.first, pr.second);
  return 0;
}

int convergence(int hosts, int rounds) {
  Cluster c(options(hosts, false));
  std::set<int> pids;
  std::set<int> all;
  for (int i = 0; i < hosts; ++i) all.insert(i);
  if (!wait_until(
          [&] {
            record_wireguard_gos(c, pids);
            return converged(c, all);
          },
          60s))
    throw std::runtime_error("the mesh never converged:\n" + c.logs());
  Host &j = c.host(hosts - 1);
  // Its bridge's gateway: the first address of its subnet.
  std::string gw;
  for (const auto &a : nl::Socket::open_in(j.netns_path()).addresses("flotilla0"))
    if (a.find(':') == std::string::npos) gw = a.substr(0, a.find('/'));
  std::vector<double> ms;
  for (int r = 0; r < rounds; ++r) {
    j.kill();
    std::set<int> rest = all;
    rest.erase(hosts - 1);
    // Gone everywhere (the lease ran out); then it joins again.
    wait_until(
        [&] {
          for (int i : rest) {
            auto d = ov::UapiWg().get(c.host(i).wg_interface());
            if (d.peers.size() != rest.size() - 1) return false;
          }
          return true;
        },
        15s);
    if (!j.start()) throw std::runtime_error("restart: " + j.log());
    auto t0 = std::chrono::steady_clock::now();
    auto ok = wait_until(
        [&] {
          for (int i : rest)
            if (run({kBusybox, "ping", "-c1", "-W1", gw}, c.host(i).netns_path()).exit_code != 0)
              return false;
          return true;
        },
        20s, 10ms);
    if (!ok) throw std::runtime_error("no convergence after a join:\n" + c.logs());
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    std::string gauges;
    for (int i : rest) {
      std::string m = c.host(i).api("GET", "/v1/metrics").body;
      auto p = m.find("\nflotilla_net_overlay_wg_convergence_seconds ");
      if (p != std::string::npos)
        gauges += " " + c.host(i).name() + "=" +
                  std::to_string(std::atof(m.c_str() + p + 45) * 1000).substr(0, 6) + "ms";
    }
    std::printf(
        "  join %d: every other host pings %s %.0f ms after the daemon answered; record "
        "seen -> device changed:%s\n",
        r + 1, j.name().c_str(), ms.back(), gauges.c_str());
  }
  std::sort(ms.begin(), ms.end());
  std::printf(
      "convergence after a join, %d hosts, %d rounds: p50 %.0f ms, max %.0f ms (machine "
      "shared with other builds; the daemon's own start-up after /v1/health is included)\n",
      hosts, rounds, ms[ms.size() / 2], ms.back());
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  int seconds = 5, hosts = 3, rounds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--seconds")
      seconds = std::atoi(argv[i + 1]);
    else if (k == "--hosts")
      hosts = std::atoi(argv[i + 1]);
    else if (k == "--rounds")
      rounds = std::atoi(argv[i + 1]);
  }
  if (::geteuid() != 0) {
    std::cerr << "mesh_bench: needs root\n";
    return 1;
  }
  std::string why = Cluster::cannot_run(options(2, true));
  if (!why.empty()) {
    std::cerr << "mesh_bench: " << why << "\n";
    return 1;
  }
  try {
    throughput(seconds);
    convergence(hosts, rounds);
  } catch (const std::exception &e) {
    std::cerr << "mesh_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
