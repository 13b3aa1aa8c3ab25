// The multi-host harness itself: the underlay really connects the hosts to
// etcd, cutting a link really cuts it, kill / pause / restart act on the
// host's own daemon, and destroying a cluster leaves nothing behind. The
// daemons here keep their own store-local (store_config returns nothing),
// so these tests need neither store-etcd nor runc.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "cluster.h"

namespace fs = std::filesystem;
using flotilla::cluster::Cluster;
using flotilla::cluster::ClusterOptions;
using flotilla::cluster::wait_until;
using namespace std::chrono_literals;

namespace {

ClusterOptions smoke_options() {
  ClusterOptions o;
  o.hosts = 2;
  o.etcd_members = 1;
  o.lease_ttl_s = 0;
  o.containers = false;
  o.store_config = [](const Cluster &, const flotilla::cluster::Host &) { return std::string(); };
  return o;
}

char process_state(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() ? '?' : stat[paren + 2];
}

std::string netns_list() {
  return flotilla::e2e::run({"/usr/sbin/ip", "netns", "list"}).output;
}

class Harness : public flotilla::cluster::ClusterTest {
 protected:
  ClusterOptions options() const override { return smoke_options(); }
};

bool etcd_reachable_from(const flotilla::cluster::Host &h, const std::string &endpoint) {
  return h.exec({"/usr/bin/etcdctl", "--endpoints=" + endpoint, "--dial-timeout=1s",
                 "--command-timeout=1s", "endpoint", "health"})
             .exit_code == 0;
}

}  // namespace

TEST_F(Harness, EveryHostReachesEtcdOverTheUnderlayFromItsOwnNamespace) {
  for (int i = 0; i < cluster().size(); ++i) {
    auto &h = cluster().host(i);
    EXPECT_EQ(h.api("GET", "/v1/health").status, 200) << h.log();
    EXPECT_TRUE(etcd_reachable_from(h, cluster().etcd().endpoint(0))) << h.name();
    // The host's address is on its own eth0, and only there.
    auto addr = h.exec({"/usr/sbin/ip", "-o", "addr", "show", "dev", "eth0"});
    EXPECT_NE(addr.output.find(h.ip() + "/24"), std::string::npos) << addr.output;
  }
  EXPECT_EQ(flotilla::e2e::run({"/usr/sbin/ip", "link", "show", "br0"}).exit_code, 1)
      << "the bridge must live in the underlay namespace, not in the test's";
  EXPECT_NE(cluster().host(0).wg_interface(), cluster().host(1).wg_interface());
  EXPECT_LE(cluster().host(0).wg_interface().size(), 15u);
}

TEST_F(Harness, ACutLinkDropsTrafficUntilItIsRestored) {
  auto &h = cluster().host(1);
  const std::string ep = cluster().etcd().endpoint(0);
  h.cut_link();
  EXPECT_FALSE(etcd_reachable_from(h, ep));
  EXPECT_TRUE(etcd_reachable_from(cluster().host(0), ep)) << "only h1's link is cut";
  h.restore_link();
  EXPECT_TRUE(wait_until([&] { return etcd_reachable_from(h, ep); }, 10s));
}

TEST_F(Harness, KillPauseAndRestartActOnTheHostsOwnDaemon) {
  auto &h0 = cluster().host(0);
  auto &h1 = cluster().host(1);
  const int pid0 = h0.daemon().pid();
  h0.pause();
  EXPECT_TRUE(wait_until([&] { return process_state(pid0) == 'T'; }, 5s));
  EXPECT_EQ(h1.api("GET", "/v1/health").status, 200);
  h0.resume();
  EXPECT_TRUE(wait_until([&] { return process_state(pid0) != 'T'; }, 5s));
  EXPECT_EQ(h0.api("GET", "/v1/health").status, 200);

  h0.kill();
  EXPECT_FALSE(h0.running());
  EXPECT_EQ(h0.api("GET", "/v1/health").status, 0);
  ASSERT_TRUE(h0.start()) << h0.log();
  EXPECT_NE(h0.daemon().pid(), pid0);
  // Its data dir survived: its own node record is there again.
  EXPECT_TRUE(wait_until([&] { return h0.api("GET", "/v1/nodes/h0").status == 200; }, 10s));

  cluster().etcd().kill(0);
  EXPECT_FALSE(etcd_reachable_from(h1, cluster().etcd().endpoint(0)));
  ASSERT_TRUE(cluster().etcd().start(0)) << cluster().etcd().log(0);
  EXPECT_TRUE(
      wait_until([&] { return etcd_reachable_from(h1, cluster().etcd().endpoint(0)); }, 20s));
}

// Not through the fixture: the test destroys a cluster itself and then looks
// for anything it left.
TEST(HarnessCleanup, DestroyingAClusterLeavesNoNamespaceProcessOrDir) {
  ClusterOptions o = smoke_options();
  std::string why = Cluster::cannot_run(o);
  if (!why.empty()) GTEST_SKIP() << "SKIPPED: " << why;
  std::string prefix, dir;
  std::vector<int> pids;
  {
    Cluster c(o);
    prefix = c.prefix();
    dir = c.dir();
    for (int i = 0; i < c.size(); ++i) pids.push_back(c.host(i).daemon().pid());
    // A paused daemon and a cut link must not stop the clean-up.
    c.host(0).pause();
    c.host(1).cut_link();
    ASSERT_NE(netns_list().find(prefix + "-ul"), std::string::npos);
  }
  EXPECT_EQ(netns_list().find(prefix), std::string::npos) << netns_list();
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(fs::exists("/dev/shm/" + prefix + "-etcd"));
  for (int pid : pids) EXPECT_NE(::kill(pid, 0), 0) << "pid " << pid << " still runs";
}

// A run that died half-way (its pid gone) is removed by the next one.
TEST(HarnessCleanup, ARunThatCrashedIsRemovedByTheNext) {
  ClusterOptions o = smoke_options();
  std::string why = Cluster::cannot_run(o);
  if (!why.empty()) GTEST_SKIP() << "SKIPPED: " << why;
  // A fake crashed run: a manifest with a namespace, under a pid that is
  // gone (a child that has exited).
  pid_t gone = fork();
  if (gone == 0) _exit(0);
  waitpid(gone, nullptr, 0);
  std::string dir = o.dir_prefix + std::to_string(gone) + "-0";
  std::string ns = "flc" + std::to_string(gone) + "x0-stale";
  fs::create_directories(dir);
  std::ofstream(dir + "/manifest") << "netns " << ns << "\n";
  ASSERT_EQ(flotilla::e2e::run({"/usr/sbin/ip", "netns", "add", ns}).exit_code, 0);
  Cluster::remove_stale(o.dir_prefix);
  EXPECT_EQ(netns_list().find(ns), std::string::npos) << netns_list();
  EXPECT_FALSE(fs::exists(dir));
}
