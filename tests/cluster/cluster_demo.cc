// cluster_demo up|down|status: the harness's cluster left running for a
// person to try (tools/cluster-demo.sh calls this). `up` builds three hosts
// with etcd as the tests do and exits, leaving them running; the dir of the
// cluster is kept in kStateFile; `down` removes everything its manifest
// lists; `status` shows each host and the cluster's nodes.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cluster.h"

using flotilla::cluster::Cluster;
using flotilla::cluster::ClusterOptions;
namespace fs = std::filesystem;

namespace {

constexpr const char *kStateFile = "/var/tmp/flotilla-cluster-demo.current";
constexpr const char *kDirPrefix = "/var/tmp/flotilla-cluster-demo-";

std::string current() {
  std::ifstream in(kStateFile);
  std::string dir;
  std::getline(in, dir);
  return dir;
}

std::string cli() {
  return flotilla::e2e::build_dir() + "/tools/flotilla/flotilla";
}

std::vector<std::string> sockets(const std::string &dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(dir, ec))
    if (fs::exists(e.path() / "api.sock")) out.push_back((e.path() / "api.sock").string());
  std::sort(out.begin(), out.end());
  return out;
}

int up(int hosts) {
  if (!current().empty() && fs::exists(current())) {
    std::cerr << "cluster-demo: a demo cluster is up already (" << current()
              << "); run `tools/cluster-demo.sh down` first\n";
    return 1;
  }
  ClusterOptions o;
  o.hosts = hosts;
  o.etcd_members = 1;
  o.lease_ttl_s = 10;
  o.dir_prefix = kDirPrefix;
  o.keep = true;
  std::string why = Cluster::cannot_run(o);
  if (!why.empty()) {
    o.containers = false;
    if (!Cluster::cannot_run(o).empty()) {
      std::cerr << "cluster-demo: cannot build a cluster here: " << why << "\n";
      return 1;
    }
    std::cerr << "cluster-demo: without containers (" << why << "): nodes join and elect a "
              << "leader, jobs stay unplaced\n";
  }
  try {
    Cluster c(o);
    std::ofstream(kStateFile, std::ios::trunc) << c.dir() << "\n";
    std::cout << "cluster up: " << c.size() << " hosts, etcd on " << c.etcd().endpoint(0)
              << " (in network namespace " << c.underlay_netns() << ")\n";
    for (int i = 0; i < c.size(); ++i)
      std::cout << "  " << c.host(i).name() << "  " << c.host(i).ip() << "  netns "
                << c.host(i).netns() << "  " << cli() << " --socket " << c.host(i).socket()
                << " node status\n";
    std::cout << "logs: " << c.dir()
              << "/*/flotillad.log; stop it all: tools/cluster-demo.sh down\n";
  } catch (const std::exception &e) {
    std::cerr << "cluster-demo: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

int down() {
  std::string dir = current();
  if (dir.empty() || !fs::exists(dir)) {
    std::cout << "no demo cluster is up\n";
    ::unlink(kStateFile);
    return 0;
  }
  Cluster::remove(dir);
  ::unlink(kStateFile);
  std::cout << "removed " << dir << " and everything it ran\n";
  return 0;
}

int status() {
  std::string dir = current();
  if (dir.empty() || !fs::exists(dir)) {
    std::cout << "no demo cluster is up (tools/cluster-demo.sh up starts one)\n";
    return 3;
  }
  auto socks = sockets(dir);
  int answering = 0;
  for (const auto &s : socks) {
    bool ok = flotilla::e2e::http(s, "GET", "/v1/health").status == 200;
    answering += ok;
    std::cout << (ok ? "up    " : "DOWN  ") << s << "\n";
  }
  for (const auto &s : socks)
    if (flotilla::e2e::http(s, "GET", "/v1/health").status == 200) {
      std::cout << flotilla::e2e::run({cli(), "--socket", s, "node", "status"}).output;
      break;
    }
  return answering == static_cast<int>(socks.size()) && !socks.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char **argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (geteuid() != 0 && cmd != "") {
    std::cerr << "cluster-demo: needs root (network namespaces, cgroups)\n";
    return 1;
  }
  if (cmd == "up") return up(argc > 2 ? std::atoi(argv[2]) : 3);
  if (cmd == "down") return down();
  if (cmd == "status") return status();
  std::cerr << "usage: cluster_demo up [HOSTS] | down | status\n";
  return 2;
}
