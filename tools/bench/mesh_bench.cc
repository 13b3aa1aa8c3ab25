// mesh_bench: the WireGuard mesh's figures, each against a baseline of the
// same run, on hosts of the multi-host harness (tests/cluster/cluster.h):
//
//  - throughput (iperf3 TCP, container -> container across two hosts
//    through Flotilla's mesh) and RTT (ping p50/p99), against bare
//    wireguard-go between two namespaces set up by hand (`wg`-style UAPI,
//    same MTU), and the plain veth/bridge underlay between the same two
//    namespaces; --rounds rounds, each printed with the load average;
//  - convergence after a join: a host leaves (its daemon and its
//    wireguard-go killed, its key and lease removed: it comes back as a
//    new WireGuard node under the same name), its peer goes everywhere,
//    then its daemon starts; from its record's PUT in etcd (etcdctl watch
//    in the underlay) until every other host pings its bridge through the
//    mesh (the address containers route through: same allowed-ips and
//    route), each host pinging on a thread of its own.
//
// Not a test: figures are printed, nothing is asserted. Usage:
//   mesh_bench [--seconds S] [--hosts N] [--rounds R] [--only throughput|convergence]
// Needs root, etcd, wireguard-go, iperf3. Everything it makes carries the
// cluster's per-run prefix and goes with the cluster (by pid).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>
#include <fstream>
#include <filesystem>

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

// Every wireguard-go the daemons started, and their UAPI sockets, go with
// the cluster.
void record_wireguard_gos(Cluster &c, std::set<int> &seen) {
  for (int i = 0; i < c.size(); ++i) {
    int pid = ov::wireguard_go_pid(plugin_dir(c.host(i)) + "/wireguard", c.host(i).wg_interface());
    if (pid > 0 && seen.insert(pid).second) {
      c.record_pid(pid);
      c.record("dir", ov::UapiWg().socket_path(c.host(i).wg_interface()));
    }
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

// "load 3.12 2.80 2.41" from /proc/loadavg: the machine is shared.
std::string load() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return "load " + a + " " + b + " " + c;
}

// CPU seconds (user + system) the given processes have used so far, from
// /proc/<pid>/stat; a process that is gone counts 0.
double cpu_seconds(const std::set<int> &pids) {
  static const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  double total = 0;
  for (int pid : pids) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(in, line)) continue;
    auto close = line.rfind(')');  // the command name may hold spaces
    if (close == std::string::npos) continue;
    std::istringstream f(line.substr(close + 2));
    std::string field;
    // After the name: state is field 3; utime and stime are fields 14, 15.
    for (int i = 3; i < 14 && f >> field; ++i) {
    }
    double ut = 0, st = 0;
    f >> ut >> st;
    total += (ut + st) / tick;
  }
  return total;
}

// One iperf3 measurement and the CPU the tunnel's two wireguard-go
// processes spent on it: Gbit/s, and Gbit per wireguard-go CPU second
// (the cost of a byte through the device, whatever share of the machine's
// two cores the processes got).
struct Leg {
  double gbit_s = 0;
  double gbit_per_cpu_s = 0;
};

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

int throughput(int seconds, int rounds) {
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
  // h1's bridge gateway: the same tunnel from host to host, without the
  // containers' veths, bridge and forwarding (where a gap comes from).
  std::string gw1;
  for (const auto &addr : nl::Socket::open_in(c.host(1).netns_path()).addresses("flotilla0"))
    if (addr.find(':') == std::string::npos) gw1 = addr.substr(0, addr.find('/'));
  const std::set<int> flotilla_wg = pids;  // the daemons' wireguard-go processes
  auto [a, b] = bare_pair(c, pids);
  std::set<int> bare_wg;
  for (int pid : pids)
    if (!flotilla_wg.count(pid)) bare_wg.insert(pid);
  auto leg = [&](const std::string &server_ns, const std::string &client_ns,
                 const std::string &ip, const std::set<int> &wg) {
    Leg l;
    const double before = cpu_seconds(wg);
    l.gbit_s = iperf(server_ns, client_ns, ip, seconds, c.dir(), c);
    const double used = cpu_seconds(wg) - before;
    if (used > 0) l.gbit_per_cpu_s = l.gbit_s * seconds / used;
    return l;
  };
  wait_until(
      [&] {
        return run({kBusybox, "ping", "-c1", "-W1", "10.99.0.2"}, a).exit_code == 0;
      },
      10s);

  std::printf("throughput, iperf3 TCP %d s, one stream; RTT of 200 pings 10 ms apart:\n",
              seconds);
  for (int round = 0; round < rounds; ++round) {
    const std::string l = load();
    // Alternate which goes first: whatever else the machine does weighs alike.
    Leg f, w;
    if (round % 2 == 0) {
      f = leg(cs["h1"].first, cs["h0"].first, cs["h1"].second, flotilla_wg);
      w = leg(b, a, "10.99.0.2", bare_wg);
    } else {
      w = leg(b, a, "10.99.0.2", bare_wg);
      f = leg(cs["h1"].first, cs["h0"].first, cs["h1"].second, flotilla_wg);
    }
    Leg hh = leg(c.host(1).netns_path(), c.host(0).netns_path(), gw1, flotilla_wg);
    // Bare wireguard-go again with conntrack on in both namespaces (a nat
    // chain, as Flotilla's table has on every host): what tracking every
    // packet, inner and outer, costs.
    for (const auto &n : {a, b})
      must(run({"/usr/sbin/nft", "add table inet mbct ; add chain inet mbct post { type nat hook "
                                 "postrouting priority srcnat ; }"},
               n),
           "nft");
    Leg wct = leg(b, a, "10.99.0.2", bare_wg);
    for (const auto &n : {a, b}) run({"/usr/sbin/nft", "delete table inet mbct"}, n);
    double p = iperf(b, a, "10.88.0.201", seconds, c.dir(), c);
    auto fr = rtt(cs["h0"].first, cs["h1"].second, 200);
    auto wr = rtt(a, "10.99.0.2", 200);
    auto pr = rtt(a, "10.88.0.201", 200);
    std::printf(
        "  round %d (%s): flotilla mesh %.2f Gbit/s | bare wireguard-go %.2f Gbit/s (ratio "
        "%.2f) | plain veth/bridge %.2f Gbit/s | flotilla's tunnel host -> host %.2f Gbit/s | "
        "bare wireguard-go with conntrack %.2f Gbit/s\n"
        "    per wireguard-go CPU second (both ends), Gbit: flotilla mesh %.3f | bare %.3f (ratio "
        "%.2f) | flotilla host -> host %.3f | bare with conntrack %.3f\n"
        "    RTT p50/p99 ms: flotilla mesh %.3f / %.3f | bare wireguard-go %.3f / %.3f | plain "
        "%.3f / %.3f\n",
        round + 1, l.c_str(), f.gbit_s, w.gbit_s, w.gbit_s > 0 ? f.gbit_s / w.gbit_s : 0.0, p,
        hh.gbit_s, wct.gbit_s, f.gbit_per_cpu_s, w.gbit_per_cpu_s,
        w.gbit_per_cpu_s > 0 ? f.gbit_per_cpu_s / w.gbit_per_cpu_s : 0.0, hh.gbit_per_cpu_s,
        wct.gbit_per_cpu_s, fr.first, fr.second, wr.first, wr.second, pr.first, pr.second);
    std::fflush(stdout);
  }
  return 0;
}

// The times etcd delivers PUTs of one key: `etcdctl watch KEY` in the
// underlay, its output read on a thread of its own.
class PutWatch {
 public:
  PutWatch(Cluster &c, const std::string &key) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    std::vector<std::string> args = {"/usr/bin/etcdctl", "--endpoints=" + c.etcd().endpoint(0),
                                     "watch", key};
    std::vector<char *> av;
    for (auto &a : args) av.push_back(a.data());
    av.push_back(nullptr);
    if (flotilla::e2e::spawn_in_netns(c.underlay_netns_path(), av.data(), p[1], &pid_) != 0)
      throw std::runtime_error("etcdctl watch");
    ::close(p[1]);
    c.record_pid(pid_);
    fd_ = p[0];
    thread_ = std::thread([this] {
      std::string buf;
      char chunk[4096];
      ssize_t n;
      while ((n = ::read(fd_, chunk, sizeof chunk)) > 0) {
        const auto now = std::chrono::steady_clock::now();
        buf.append(chunk, static_cast<size_t>(n));
        size_t at;
        while ((at = buf.find('\n')) != std::string::npos) {
          if (buf.compare(0, at, "PUT") == 0) {
            std::lock_guard<std::mutex> g(mu_);
            puts_.push_back(now);
          }
          buf.erase(0, at + 1);
        }
      }
    });
    std::this_thread::sleep_for(500ms);  // the watch is open
  }
  ~PutWatch() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    thread_.join();
    ::close(fd_);
  }
  // The first PUT after t, waiting for it up to timeout.
  std::optional<std::chrono::steady_clock::time_point> first_after(
      std::chrono::steady_clock::time_point t, std::chrono::milliseconds timeout) {
    std::optional<std::chrono::steady_clock::time_point> out;
    wait_until(
        [&] {
          std::lock_guard<std::mutex> g(mu_);
          for (auto p : puts_)
            if (p >= t) {
              out = p;
              return true;
            }
          return false;
        },
        timeout, 5ms);
    return out;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::chrono::steady_clock::time_point> puts_;
};

int convergence(int hosts, int rounds) {
  const auto t_build = std::chrono::steady_clock::now();
  Cluster c(options(hosts, false));
  std::set<int> pids;
  std::set<int> all;
  for (int i = 0; i < hosts; ++i) all.insert(i);
  if (!wait_until(
          [&] {
            record_wireguard_gos(c, pids);
            return converged(c, all);
          },
          120s))
    throw std::runtime_error("the mesh never converged:\n" + c.logs());
  std::printf("convergence after a join, %d hosts (daemons with store-etcd and net-overlay only, "
              "no runtime; cluster up and converged in %.1f s; %s):\n",
              hosts,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count(),
              load().c_str());
  Host &j = c.host(hosts - 1);
  // Its bridge's gateway: the first address of its subnet.
  std::string gw;
  for (const auto &a : nl::Socket::open_in(j.netns_path()).addresses("flotilla0"))
    if (a.find(':') == std::string::npos) gw = a.substr(0, a.find('/'));
  std::set<int> rest = all;
  rest.erase(hosts - 1);
  PutWatch puts(c, "/flotilla/net/nodes/" + j.name());
  std::vector<double> ms, gauge_ms;
  for (int r = 0; r < rounds; ++r) {
    // It leaves: daemon and wireguard-go gone, its key and lease removed.
    j.kill();
    const std::string wgdir = plugin_dir(j) + "/wireguard";
    int wpid = ov::wireguard_go_pid(wgdir, j.wg_interface());
    if (wpid > 0 && pids.count(wpid)) {
      ::kill(wpid, SIGKILL);
      pids.erase(wpid);
    }
    std::filesystem::remove(wgdir + "/key.json");
    std::filesystem::remove(wgdir + "/lease");
    // Gone everywhere (the lease ran out).
    if (!wait_until(
            [&] {
              for (int i : rest) {
                auto d = ov::UapiWg().get(c.host(i).wg_interface());
                if (d.peers.size() != rest.size() - 1) return false;
              }
              return true;
            },
            30s))
      throw std::runtime_error("the leaving host's peer stayed:\n" + c.logs());
    const std::string l = load();
    const auto before = std::chrono::steady_clock::now();
    if (!j.start()) throw std::runtime_error("restart: " + j.log());
    record_wireguard_gos(c, pids);
    // Every other host pings it, each on a thread of its own, from the
    // moment the daemon was started; the clock starts at the PUT.
    std::vector<std::chrono::steady_clock::time_point> reached(hosts);
    std::vector<std::thread> pingers;
    for (int i : rest)
      pingers.emplace_back([&, i] {
        const auto deadline = before + 30s;
        while (std::chrono::steady_clock::now() < deadline) {
          if (run({kBusybox, "ping", "-c1", "-W1", gw}, c.host(i).netns_path()).exit_code == 0) {
            reached[i] = std::chrono::steady_clock::now();
            return;
          }
          std::this_thread::sleep_for(5ms);
        }
      });
    for (auto &t : pingers) t.join();
    // The new wireguard-go runs by now (the others reached it): recorded.
    record_wireguard_gos(c, pids);
    auto put = puts.first_after(before, 1000ms);
    if (!put) throw std::runtime_error("no PUT of the record seen:\n" + j.log());
    auto last = *put;
    int missing = 0;
    for (int i : rest) {
      if (reached[i] == std::chrono::steady_clock::time_point{})
        missing++;
      else
        last = std::max(last, reached[i]);
    }
    if (missing) throw std::runtime_error(std::to_string(missing) + " hosts never reached it");
    ms.push_back(std::chrono::duration<double, std::milli>(last - *put).count());
    double worst_gauge = 0;
    for (int i : rest) {
      std::string m = c.host(i).api("GET", "/v1/metrics").body;
      auto p = m.find("\nflotilla_net_overlay_wg_convergence_seconds ");
      if (p != std::string::npos) worst_gauge = std::max(worst_gauge, std::atof(m.c_str() + p + 45));
    }
    gauge_ms.push_back(worst_gauge * 1000);
    std::printf(
        "  join %d (%s): record PUT -> all %d others ping it: %.0f ms (daemon start -> PUT %.0f "
        "ms); slowest record-seen -> device-changed on the others %.1f ms\n",
        r + 1, l.c_str(), static_cast<int>(rest.size()), ms.back(),
        std::chrono::duration<double, std::milli>(*put - before).count(), gauge_ms.back());
    std::fflush(stdout);
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  auto at = [&](double q) {
    return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()))];
  };
  std::printf("convergence after a join, %d hosts, %d joins: p50 %.0f ms, p99 %.0f ms, max %.0f ms "
              "(target p99 <= 1000 ms)\n",
              hosts, rounds, at(0.5), at(0.99), sorted.back());
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  int seconds = 5, hosts = 3, rounds = 3;
  std::string only;
  for (int i = 1; i < argc; i += 2) {
    std::string k = argv[i];
    if (i + 1 == argc) {
      // An option without its value, or --help: usage, and run nothing.
      std::cerr << "usage: mesh_bench [--seconds S] [--hosts N] [--rounds R] "
                   "[--only throughput|convergence]\n";
      return 2;
    }
    if (k == "--seconds")
      seconds = std::atoi(argv[i + 1]);
    else if (k == "--hosts")
      hosts = std::atoi(argv[i + 1]);
    else if (k == "--rounds")
      rounds = std::atoi(argv[i + 1]);
    else if (k == "--only")
      only = argv[i + 1];
    else {
      std::cerr << "mesh_bench: unknown option " << k << "\n";
      return 2;
    }
  }
  if (::geteuid() != 0) {
    std::cerr << "mesh_bench: needs root\n";
    return 1;
  }
  std::string why = Cluster::cannot_run(options(2, only != "convergence"));
  if (!why.empty()) {
    std::cerr << "mesh_bench: " << why << "\n";
    return 1;
  }
  try {
    if (only.empty() || only == "throughput") throughput(seconds, rounds);
    if (only.empty() || only == "convergence") convergence(hosts, rounds);
  } catch (const std::exception &e) {
    std::cerr << "mesh_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
