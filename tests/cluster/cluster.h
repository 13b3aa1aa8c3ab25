// The multi-host harness: N hosts on one machine, each a network namespace
// with its own flotillad, joined by a bridge (the underlay) on which etcd
// runs. The overlay, discovery and cluster tests build on it, and so does
// tools/cluster-demo.sh (through cluster_demo).
//
// What one Cluster makes, every name carrying its per-run prefix
// (flc<pid>x<n>): an underlay namespace <prefix>-ul with bridge br0
// (10.88.0.0/24; etcd member i listens on 10.88.0.<2+i>), one namespace
// <prefix>-h<i> per host whose eth0 (10.88.0.<11+i>) is a veth to the
// bridge (with ipv6_underlay: fd88::/64 instead, fd88::<2+i> and
// fd88::<11+i>, and no IPv4 anywhere on the underlay), etcd's data under
// /dev/shm, and per host a scratch dir with its data dir, OCI root, socket
// and log, a cgroup parent and a WireGuard interface name. Everything made
// is written to a manifest as it is made; the destructor (and cluster_demo
// down, and the next run after a crash) removes it from there: processes by
// pid (checked against their start time), mounts, cgroups, namespaces with
// their veths and bridge, dirs.
//
// [test-thread]: not thread-safe; one test thread drives a Cluster.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "daemon_harness.h"

namespace flotilla::cluster {

using e2e::HttpReply;
using e2e::RunResult;

class Cluster;
class Host;

struct ClusterOptions {
  int hosts = 3;
  // etcd members on the underlay; 0: no etcd, each host keeps its own
  // store-local (a single-host smoke test, or before store-etcd is built).
  int etcd_members = 1;
  // [cluster] lease_ttl of every daemon (node record and scheduler
  // leadership), seconds; 0 leaves the daemon's default (10 s).
  int lease_ttl_s = 0;
  // [cluster] leader_lease_ttl (the scheduler leadership), seconds; 0 leaves
  // the daemon's default (half the lease_ttl, rounded up). Needs lease_ttl_s.
  int leader_lease_ttl_s = 0;
  // store-etcd's request_timeout_ms on every host: short, so that a test
  // of an etcd outage sees the 503 within seconds. A test that kills an
  // etcd member that may be its leader needs room for an election.
  int store_request_timeout_ms = 2000;
  // runtime-runc and scheduler-binpack on every host, and the busybox
  // image imported into each (needs runc and busybox-static).
  bool containers = true;
  // The underlay is IPv6-only: br0, every eth0 and etcd on fd88::/64
  // (Etcd::ip, Host::ip), no IPv4 address on any of them.
  bool ipv6_underlay = false;
  // Runs for every host once its namespace and eth0 are up, before etcd
  // and any daemon start: what a test adds to the host (addresses, routes)
  // that the daemon must find at its start.
  std::function<void(const Cluster &, const Host &)> prepare_host;
  // Appended to every host's flotillad.toml.
  std::string extra_config;
  // Appended after extra_config, per host: what differs between hosts
  // (a plugin's paths under the host's own dir()).
  std::function<std::string(const Cluster &, const Host &)> host_config;
  // The [store] and [plugin.store-*] tables of a host; empty: store-etcd on
  // every etcd member's endpoint (or store-local without etcd).
  std::function<std::string(const Cluster &, const Host &)> store_config;
  // Base of the scratch dirs (tests: /tmp/flotilla-cluster-; the demo keeps
  // its own).
  std::string dir_prefix = "/tmp/flotilla-cluster-";
  // Leave everything running when the Cluster is destroyed (cluster_demo
  // up); remove it later with Cluster::remove(dir).
  bool keep = false;
};

// etcd on the underlay: member i is m<i> on 10.88.0.<2+i> (fd88::<2+i>
// with ipv6_underlay).
class Etcd {
 public:
  int members() const { return static_cast<int>(pids_.size()); }
  std::string ip(int i) const;
  std::string endpoint(int i) const;  // http://10.88.0.2:2379, http://[fd88::2]:2379
  std::vector<std::string> endpoints() const;
  // Start member i (again, on its data dir after stop/kill) and wait until
  // it answers (20 s guard). false with log(i) saying why.
  bool start(int i);
  void kill(int i);  // SIGKILL, reaped
  bool running(int i) const { return pids_[i] > 0; }
  std::string log(int i) const;
  // etcdctl (API v3) against every running member, inside the underlay.
  RunResult ctl(const std::vector<std::string> &args) const;
  // Every put under prefix since revision 1 (not compacted yet), in
  // order, as (key, value): etcdctl watch --rev=1 for a few seconds.
  std::vector<std::pair<std::string, std::string>> ctl_watch_history(
      const std::string &prefix) const;
  // The store's current revision (0 when no member answers).
  int64_t revision() const;
  // Compact the history up to the current revision (physically).
  bool compact();

 private:
  friend class Cluster;
  Cluster *cluster_ = nullptr;
  std::vector<int> pids_;
};

class Host {
 public:
  int index() const { return index_; }
  const std::string &name() const { return name_; }    // node name: h<i>
  const std::string &netns() const { return netns_; }  // ip netns name
  std::string netns_path() const { return "/run/netns/" + netns_; }
  // Its underlay address: 10.88.0.<11+i>, or fd88::<11+i> with
  // ipv6_underlay.
  std::string ip() const;
  const std::string &cgroup_parent() const { return cgroup_parent_; }
  const std::string &wg_interface() const { return wg_interface_; }
  std::string socket() const { return daemon_->socket(); }
  std::string dir() const { return daemon_->dir(); }
  std::string log() const { return daemon_->log(); }
  e2e::Daemon &daemon() { return *daemon_; }

  // Start (or restart after kill) the daemon on its data dir; waits for
  // /v1/health. false with log() saying why.
  bool start();
  void kill();    // SIGKILL its daemon; its containers keep running
  void pause();   // SIGSTOP
  void resume();  // SIGCONT
  bool running() const { return daemon_->running(); }
  bool paused() const { return paused_; }
  // Take its underlay link down (packets dropped both ways) and back up.
  void cut_link();
  void restore_link();
  bool link_cut() const { return link_cut_; }

  HttpReply api(const std::string &method, const std::string &path,
                const std::string &body = "") const;
  // GET, parsed (a discarded json when the answer is not JSON).
  nlohmann::json get(const std::string &path) const;
  // The flotilla CLI against this host's socket.
  RunResult cli(std::vector<std::string> args) const;
  // flotilla job run on a spec written to this host's dir.
  RunResult run_job(const std::string &toml) const;
  // Run a command inside this host's network namespace.
  RunResult exec(const std::vector<std::string> &argv) const;

 private:
  friend class Cluster;
  Cluster *cluster_ = nullptr;
  int index_ = 0;
  std::string name_, netns_, cgroup_parent_, wg_interface_;
  std::unique_ptr<e2e::Daemon> daemon_;
  bool paused_ = false, link_cut_ = false;
};

class Cluster {
 public:
  // Builds everything and starts etcd and every daemon. Throws
  // std::runtime_error saying what failed (with the logs).
  explicit Cluster(ClusterOptions options);
  ~Cluster();
  Cluster(const Cluster &) = delete;
  Cluster &operator=(const Cluster &) = delete;

  // "" when this machine can run such a cluster, else why not (for
  // GTEST_SKIP): root, iproute2, etcd, runc, the plugins.
  static std::string cannot_run(const ClusterOptions &options);
  // Remove everything a cluster's manifest lists (cluster_demo down).
  static void remove(const std::string &dir);
  // Remove what test runs whose process is gone left behind (a crash).
  static void remove_stale(const std::string &dir_prefix);

  const ClusterOptions &options() const { return options_; }
  const std::string &prefix() const { return prefix_; }  // flc<pid>x<n>
  const std::string &dir() const { return dir_; }
  std::string underlay_netns() const { return prefix_ + "-ul"; }
  std::string underlay_netns_path() const { return "/run/netns/" + underlay_netns(); }
  int size() const { return static_cast<int>(hosts_.size()); }
  Host &host(int i) { return *hosts_.at(i); }
  const Host &host(int i) const { return *hosts_.at(i); }
  Host *host_named(const std::string &name);
  Etcd &etcd() { return etcd_; }
  const Etcd &etcd() const { return etcd_; }
  // Any host whose daemon runs, is not paused and has its link.
  Host &any_live_host();

  // The scheduler leader's node name, as the store has it ("" if none).
  std::string leader() const;
  // Every host's log, for failure messages.
  std::string logs() const;
  // The default store tables for host h.
  std::string default_store_config(const Host &h) const;

  // Note a resource in the manifest (for the tests' own extra resources).
  void record(const std::string &kind, const std::string &what);
  // A process the test did not start itself but must go with the cluster
  // (a wireguard-go a daemon started): killed by pid at the end, only while
  // its start time still matches. A "dir" entry may name a file.
  void record_pid(int pid);

 private:
  friend class Etcd;
  friend class Host;
  void build();
  void teardown();
  std::string host_config(const Host &h) const;

  ClusterOptions options_;
  std::string prefix_, dir_, etcd_dir_;
  Etcd etcd_;
  std::vector<std::unique_ptr<Host>> hosts_;
};

// Poll cond every poll until it holds or deadline passes. Returns how long
// it took, or nullopt on timeout.
std::optional<std::chrono::milliseconds> wait_until(
    const std::function<bool()> &cond, std::chrono::milliseconds deadline,
    std::chrono::milliseconds poll = std::chrono::milliseconds(50));

// A gtest fixture: options() says what to build; SetUp skips (with the
// reason) on a machine that cannot run it; TearDown removes everything.
class ClusterTest : public ::testing::Test {
 protected:
  virtual ClusterOptions options() const { return {}; }
  void SetUp() override;
  void TearDown() override;
  Cluster &cluster() { return *cluster_; }
  std::unique_ptr<Cluster> cluster_;
};

}  // namespace flotilla::cluster
