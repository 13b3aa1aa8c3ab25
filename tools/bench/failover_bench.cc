// failover_bench: node-loss detection time and scheduler leader failover
// time, as distributions, on the multi-host harness (tests/cluster/: real
// flotillad daemons in network namespaces, one real etcd member):
//
//   failover_bench [--trials N] [--ttl S] [--hosts H]
//
// Node loss: SIGKILL a daemon that does not lead; the time until its node
// record is gone from the cluster (its lease expired in etcd), as another
// host's API shows it (polled every 20 ms). Leader failover: SIGKILL the
// scheduling leader; the time until another host holds the leader key
// (etcdctl in the underlay, polled every 20 ms). Each trial starts the
// killed daemon again and waits until it is back before the next one.
//
// Printed beside Kubernetes' published defaults: a node is NotReady about
// 40-50 s after it stops (node-monitor-grace-period 40 s plus the 5 s
// monitor period), and a control-plane leader lease of 15 s. Targets: node
// loss p99 <= TTL + 2 s, failover p99 <= TTL. Needs root (namespaces).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cluster.h"

namespace {

using Clock = std::chrono::steady_clock;
using flotilla::cluster::Cluster;
using flotilla::cluster::ClusterOptions;
using flotilla::cluster::wait_until;

struct Dist {
  double p50 = 0, p99 = 0, min = 0, max = 0;
};

Dist dist(std::vector<double> v) {
  Dist d;
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  d.p50 = v[v.size() / 2];
  // p99 of 20 samples is the largest one.
  d.p99 = v[std::min(v.size() - 1, (v.size() * 99 + 99) / 100 - 1)];
  d.min = v.front();
  d.max = v.back();
  return d;
}

bool has_node(Cluster &c, int via, const std::string &name) {
  nlohmann::json j = c.host(via).get("/v1/nodes");
  if (!j.is_object() || !j.contains("nodes")) return true;  // no answer: not judged gone
  for (const auto &n : j["nodes"])
    if (n.value("name", "") == name) return true;
  return false;
}

}  // namespace

int main(int argc, char **argv) {
  int trials = 20, ttl = 3, hosts = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--trials" && i + 1 < argc)
      trials = std::atoi(argv[++i]);
    else if (a == "--ttl" && i + 1 < argc)
      ttl = std::atoi(argv[++i]);
    else if (a == "--hosts" && i + 1 < argc)
      hosts = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--trials N] [--ttl S] [--hosts H >= 3]\n", argv[0]);
      return 2;
    }
  }
  if (hosts < 3 || ttl < 1 || trials < 1) {
    std::fprintf(stderr, "failover_bench: --hosts >= 3, --ttl >= 1, --trials >= 1\n");
    return 2;
  }
  ClusterOptions o;
  o.hosts = hosts;
  o.lease_ttl_s = ttl;
  o.containers = false;  // membership and leadership only
  if (std::string why = Cluster::cannot_run(o); !why.empty()) {
    std::fprintf(stderr, "failover_bench: cannot run here: %s\n", why.c_str());
    return 77;
  }
  Cluster::remove_stale(o.dir_prefix);
  std::printf(
      "failover benchmark: %d hosts, [cluster] lease_ttl = %d s (renewed every %.2f s), "
      "%d trials each\n",
      hosts, ttl, ttl / 3.0, trials);
  std::fflush(stdout);
  std::vector<double> loss, failover;
  try {
    Cluster c(o);
    const auto back_within = std::chrono::seconds(ttl * 3 + 15);
    auto all_back = [&] {
      for (int i = 0; i < c.size(); ++i)
        if (!has_node(c, 0, c.host(i).name())) return false;
      return !c.leader().empty();
    };
    if (!wait_until(all_back, back_within)) throw std::runtime_error("the cluster did not form");

    for (int t = 0; t < trials; ++t) {
      std::string leader = c.leader();
      // A host that does not lead, in turn.
      int victim = -1;
      for (int k = 0; k < c.size() && victim < 0; ++k) {
        int i = (t + k) % c.size();
        if (c.host(i).name() != leader) victim = i;
      }
      int via = (victim + 1) % c.size();
      if (c.host(via).name() == leader) via = (victim + 2) % c.size();
      auto t0 = Clock::now();
      c.host(victim).kill();
      auto gone = wait_until([&] { return !has_node(c, via, c.host(victim).name()); },
                             std::chrono::seconds(ttl * 3 + 10), std::chrono::milliseconds(20));
      if (!gone) throw std::runtime_error("node loss not seen in trial " + std::to_string(t));
      loss.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      if (!c.host(victim).start()) throw std::runtime_error("cannot restart a host");
      if (!wait_until(all_back, back_within)) throw std::runtime_error("host did not come back");
      std::printf("  node loss %2d: %.2f s\n", t + 1, loss.back());
      std::fflush(stdout);
    }
    for (int t = 0; t < trials; ++t) {
      std::string leader = c.leader();
      flotilla::cluster::Host *h = c.host_named(leader);
      if (!h) throw std::runtime_error("no leader host named \"" + leader + "\"");
      auto t0 = Clock::now();
      h->kill();
      auto moved = wait_until(
          [&] {
            std::string now = c.leader();
            return !now.empty() && now != leader;
          },
          std::chrono::seconds(ttl * 3 + 10), std::chrono::milliseconds(20));
      if (!moved) throw std::runtime_error("no failover in trial " + std::to_string(t));
      failover.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      if (!h->start()) throw std::runtime_error("cannot restart the old leader");
      if (!wait_until(all_back, back_within)) throw std::runtime_error("host did not come back");
      std::printf("  failover  %2d: %.2f s\n", t + 1, failover.back());
      std::fflush(stdout);
    }
  } catch (const std::exception &e) {
    std::fprintf(stderr, "failover_bench: %s\n", e.what());
    return 1;
  }
  Dist l = dist(loss), f = dist(failover);
  std::printf("\n%-46s %8s %8s %8s %8s %8s\n", "", "p50 (s)", "p99 (s)", "min", "max", "target");
  std::printf("%-46s %8.2f %8.2f %8.2f %8.2f %8s\n", "Flotilla node loss (record gone)", l.p50,
              l.p99, l.min, l.max, ("<= " + std::to_string(ttl + 2)).c_str());
  std::printf("%-46s %8s %8s\n", "Kubernetes node NotReady (published default)", "40-50", "40-50");
  std::printf("%-46s %8.2f %8.2f %8.2f %8.2f %8s\n", "Flotilla leader failover (new leader key)",
              f.p50, f.p99, f.min, f.max, ("<= " + std::to_string(ttl)).c_str());
  std::printf("%-46s %8s %8s\n", "Kubernetes leader lease (published default)", "15", "15");
  return 0;
}
