// failover_bench: node-loss detection time and scheduler leader failover
// time, as distributions, on the multi-host harness (tests/cluster/: real
// flotillad daemons in network namespaces, one real etcd member):
//
//   failover_bench [--trials N] [--ttl S] [--leader-ttl S] [--hosts H]
//
// Node loss: SIGKILL a daemon that does not lead; the time until its node
// record is gone from the cluster (its lease expired in etcd), as another
// host's API shows it (polled every 20 ms). Leader failover: SIGKILL the
// scheduling leader; the time until another host holds the leader key
// (etcdctl in the underlay, polled every 20 ms: each poll is an etcdctl
// process, tens of ms on a loaded machine). Each trial starts the killed
// daemon again and waits until it is back before the next one.
//
// Beside the polls, two `etcdctl watch` processes in the underlay (the
// leader key, the node records) timestamp every change as etcd delivers
// it, which splits each figure: kill -> etcd deleted the record or the key
// (the lease expired), and that -> the new leader's put (the campaign) or
// -> the API no longer listing the node.
//
// Printed beside Kubernetes' published defaults: a node is NotReady about
// 40-50 s after it stops (node-monitor-grace-period 40 s plus the 5 s
// monitor period), and a control-plane leader lease of 15 s. Targets: node
// loss p99 <= TTL + 2 s, failover p99 <= TTL. Needs root (namespaces).
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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

// `etcdctl watch` on a key (or a prefix) in the underlay, every event
// timestamped by a thread as its lines arrive (etcdctl writes each event
// unbuffered: the type, the key, the value, a line each).
class EtcdWatch {
 public:
  struct Event {
    Clock::time_point at;
    bool put = false;  // else a delete
    std::string key, value;
  };

  EtcdWatch(Cluster &c, const std::string &key, bool prefix) {
    std::string eps;
    for (const auto &e : c.etcd().endpoints()) eps += (eps.empty() ? "" : ",") + e;
    std::vector<std::string> argv = {"/usr/bin/etcdctl", "--endpoints=" + eps, "watch", key};
    if (prefix) argv.push_back("--prefix");
    std::vector<char *> args;
    for (auto &a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    int rc = flotilla::e2e::spawn_in_netns(c.underlay_netns_path(), args.data(), fds[1], &pid_);
    ::close(fds[1]);
    if (rc != 0) {
      ::close(fds[0]);
      throw std::runtime_error("cannot start etcdctl watch");
    }
    c.record_pid(pid_);
    fd_ = fds[0];
    reader_ = std::thread([this] { read_lines(); });
  }
  ~EtcdWatch() {
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    reader_.join();
    ::close(fd_);
  }

  // The first event after t0 that matches.
  template <class Match>
  std::optional<Event> first_after(Clock::time_point t0, Match match) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Event &e : events_)
      if (e.at >= t0 && match(e)) return e;
    return std::nullopt;
  }

 private:
  void read_lines() {
    std::string buf, line;
    char chunk[4096];
    int field = 0;  // 0: type, 1: key, 2: value
    Event ev;
    for (;;) {
      ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n <= 0) return;
      const auto now = Clock::now();
      buf.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        if (field == 0) {
          if (line != "PUT" && line != "DELETE") continue;
          ev = Event{now, line == "PUT", "", ""};
          field = 1;
        } else if (field == 1) {
          ev.key = line;
          field = 2;
        } else {
          ev.value = line;
          field = 0;
          std::lock_guard<std::mutex> lock(mu_);
          events_.push_back(ev);
        }
      }
    }
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
};

double seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

std::string load_average() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return "?";
  char buf[64];
  snprintf(buf, sizeof buf, "%.2f %.2f %.2f", l[0], l[1], l[2]);
  return buf;
}

void print_row(const char *what, const std::vector<double> &v, const std::string &target) {
  Dist d = dist(v);
  std::printf("%-50s %8.2f %8.2f %8.2f %8.2f %8s\n", what, d.p50, d.p99, d.min, d.max,
              target.c_str());
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
  int trials = 20, ttl = 3, leader_ttl = 0, hosts = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--trials" && i + 1 < argc)
      trials = std::atoi(argv[++i]);
    else if (a == "--ttl" && i + 1 < argc)
      ttl = std::atoi(argv[++i]);
    else if (a == "--leader-ttl" && i + 1 < argc)
      leader_ttl = std::atoi(argv[++i]);
    else if (a == "--hosts" && i + 1 < argc)
      hosts = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: %s [--trials N] [--ttl S] [--leader-ttl S <= TTL, 0: the default] "
                   "[--hosts H >= 3]\n",
                   argv[0]);
      return 2;
    }
  }
  if (hosts < 3 || ttl < 1 || trials < 1 || leader_ttl < 0 || leader_ttl > ttl) {
    std::fprintf(stderr,
                 "failover_bench: --hosts >= 3, --ttl >= 1, --trials >= 1, "
                 "0 <= --leader-ttl <= --ttl\n");
    return 2;
  }
  ClusterOptions o;
  o.hosts = hosts;
  o.lease_ttl_s = ttl;
  o.leader_lease_ttl_s = leader_ttl;
  o.containers = false;  // membership and leadership only
  if (std::string why = Cluster::cannot_run(o); !why.empty()) {
    std::fprintf(stderr, "failover_bench: cannot run here: %s\n", why.c_str());
    return 77;
  }
  Cluster::remove_stale(o.dir_prefix);
  // The daemon's own default when not given (core/config.cc).
  const int leader_s = leader_ttl > 0 ? leader_ttl : std::max(1, (ttl + 1) / 2);
  std::printf(
      "failover benchmark: %d hosts, [cluster] lease_ttl = %d s (renewed every %.2f s), "
      "leader_lease_ttl = %d s%s (renewed every %.2f s), %d trials each; load average %s\n",
      hosts, ttl, ttl / 3.0, leader_s, leader_ttl > 0 ? "" : " (the default)", leader_s / 3.0,
      trials, load_average().c_str());
  std::fflush(stdout);
  // Polled (as before) and from the watches: total, and its two parts.
  std::vector<double> loss, loss_w, loss_expiry, loss_seen;
  std::vector<double> failover, failover_w, failover_expiry, failover_campaign;
  const std::string kLeaderKey = "/flotilla/leader/scheduler";
  try {
    Cluster c(o);
    EtcdWatch leader_watch(c, kLeaderKey, false);
    EtcdWatch node_watch(c, "/flotilla/nodes/", true);
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
      const std::string record = "/flotilla/nodes/" + c.host(victim).name();
      auto t0 = Clock::now();
      c.host(victim).kill();
      auto gone = wait_until([&] { return !has_node(c, via, c.host(victim).name()); },
                             std::chrono::seconds(ttl * 3 + 10), std::chrono::milliseconds(20));
      if (!gone) throw std::runtime_error("node loss not seen in trial " + std::to_string(t));
      auto t_seen = Clock::now();
      loss.push_back(seconds(t0, t_seen));
      std::optional<EtcdWatch::Event> del;
      wait_until(
          [&] {
            del = node_watch.first_after(
                t0, [&](const EtcdWatch::Event &e) { return !e.put && e.key == record; });
            return del.has_value();
          },
          std::chrono::seconds(2), std::chrono::milliseconds(5));
      std::string parts;
      if (del) {
        loss_expiry.push_back(seconds(t0, del->at));
        loss_seen.push_back(seconds(del->at, t_seen));
        char b[96];
        snprintf(b, sizeof b, " (record deleted %.2f s, API %.3f s later)", loss_expiry.back(),
                 loss_seen.back());
        parts = b;
      }
      if (!c.host(victim).start()) throw std::runtime_error("cannot restart a host");
      if (!wait_until(all_back, back_within)) throw std::runtime_error("host did not come back");
      std::printf("  node loss %2d: %.2f s%s\n", t + 1, loss.back(), parts.c_str());
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
      failover.push_back(seconds(t0, Clock::now()));
      std::optional<EtcdWatch::Event> del, put;
      wait_until(
          [&] {
            del = leader_watch.first_after(t0, [](const EtcdWatch::Event &e) { return !e.put; });
            put = leader_watch.first_after(
                t0, [&](const EtcdWatch::Event &e) { return e.put && e.value != leader; });
            return del && put;
          },
          std::chrono::seconds(2), std::chrono::milliseconds(5));
      std::string parts;
      if (put) {
        failover_w.push_back(seconds(t0, put->at));
        char b[128];
        if (del && del->at <= put->at) {
          failover_expiry.push_back(seconds(t0, del->at));
          failover_campaign.push_back(seconds(del->at, put->at));
          snprintf(b, sizeof b, " (watch: %.2f s; key deleted %.2f s, new leader %.3f s later)",
                   failover_w.back(), failover_expiry.back(), failover_campaign.back());
        } else {
          snprintf(b, sizeof b, " (watch: %.2f s)", failover_w.back());
        }
        parts = b;
      }
      if (!h->start()) throw std::runtime_error("cannot restart the old leader");
      if (!wait_until(all_back, back_within)) throw std::runtime_error("host did not come back");
      std::printf("  failover  %2d: %.2f s%s\n", t + 1, failover.back(), parts.c_str());
      std::fflush(stdout);
    }
  } catch (const std::exception &e) {
    std::fprintf(stderr, "failover_bench: %s\n", e.what());
    return 1;
  }
  const std::string loss_target = "<= " + std::to_string(ttl + 2);
  const std::string failover_target = "<= " + std::to_string(ttl);
  std::printf("\nload average at the end %s\n", load_average().c_str());
  std::printf("%-50s %8s %8s %8s %8s %8s\n", "", "p50 (s)", "p99 (s)", "min", "max", "target");
  print_row("Flotilla node loss (record gone, API polled)", loss, loss_target);
  print_row("  kill -> record deleted in etcd (watch)", loss_expiry, "");
  print_row("  record deleted -> gone from the API", loss_seen, "");
  std::printf("%-50s %8s %8s\n", "Kubernetes node NotReady (published default)", "40-50", "40-50");
  print_row("Flotilla leader failover (etcdctl polled)", failover, failover_target);
  print_row("Flotilla leader failover (new leader key, watch)", failover_w, failover_target);
  print_row("  kill -> leader key deleted (lease expired)", failover_expiry, "");
  print_row("  key deleted -> new leader's put (campaign)", failover_campaign, "");
  std::printf("%-50s %8s %8s\n", "Kubernetes leader lease (published default)", "15", "15");
  return 0;
}
