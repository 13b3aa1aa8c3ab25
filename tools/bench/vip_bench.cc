// vip_bench: latency of one endpoint change to the kernel holding the new
// VIP map, at 1k and 10k services.
//
//   vip_bench [--services N[,N...]] [--trials T]     (root: a network namespace)
//
// The process moves into a network namespace of its own (unshare), so its
// nftables table and everything in it go with the process. In it, for each
// size N (default 1000,10000): store-local and the discovery plugin (with
// vip_cidr) through the real plugin host, N services of 2 passing
// instances, each with a VIP record; once the table is built, T times
// (default 100): one instance of a random service turns critical or
// passing again (a put of its registry record), and the time runs from
// that put to the kernel's commit of the batch that carries it: the
// NFT_MSG_NEWGEN message nftables multicasts after every committed batch
// (NFNLGRP_NFTABLES, as `nft monitor` reads), on a netlink socket watched
// by the same loop (lib/nft's CommitWatch). p50, p99 and max. The put →
// watch step of store-local is inside the figure. Baseline in the same
// run, on the same table: T changes of the same elements applied with
// `nft -f`, from the spawn to the commit.
#include <sched.h>
#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "nft.h"
#include "plugin_host.h"
#include "store_client.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::StoreClient;
using flotilla::StoreResult;

[[noreturn]] void die(const std::string &why) {
  std::fprintf(stderr, "vip_bench: %s\n", why.c_str());
  std::exit(1);
}

std::string ip_of(uint32_t n) {  // 10.x.y.z from n
  return "10." + std::to_string((n >> 16) & 255) + "." + std::to_string((n >> 8) & 255) + "." +
         std::to_string(n & 255);
}

// Commits of nftables batches in this namespace, as the kernel announces
// them (lib/nft's CommitWatch), read on the same loop.
struct GenWatch {
  std::unique_ptr<flotilla::nft::CommitWatch> watch;
  uv_poll_t poll{};
  uint64_t generations = 0;
  Clock::time_point last{};

  void open(uv_loop_t *loop) {
    try {
      watch = std::make_unique<flotilla::nft::CommitWatch>();
    } catch (const std::exception &e) {
      die(e.what());
    }
    uv_poll_init(loop, &poll, watch->fd());
    poll.data = this;
    uv_poll_start(&poll, UV_READABLE,
                  [](uv_poll_t *p, int, int) { static_cast<GenWatch *>(p->data)->drain(); });
  }
  void drain() {
    if (uint64_t n = watch->drain()) {
      generations += n;
      last = Clock::now();
    }
  }
  void close_it() {
    uv_poll_stop(&poll);
    uv_close(reinterpret_cast<uv_handle_t *>(&poll), nullptr);
  }
};

void run_size(int services, int trials, const std::string &dir) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  uv_loop_t loop;
  uv_loop_init(&loop);
  GenWatch gens;
  gens.open(&loop);
  PluginHost::Options opts;
  opts.node_name = "bench";
  opts.data_dir = dir;
  opts.config_path = "(vip_bench)";
  auto host = std::make_unique<PluginHost>(&loop, opts);
  PluginSettings store;
  store.name = "store-local";
  store.path = STORE_LOCAL_PLUGIN_PATH;
  store.config = {{"fsync", false}};
  PluginSettings disc;
  disc.name = "discovery";
  disc.path = DISCOVERY_PLUGIN_PATH;
  disc.config = {{"listen", {"127.0.0.1:53"}},  // our own namespace: no clash
                 {"forward", false},
                 {"vip_cidr", "10.200.0.0/16"},
                 {"vip_table", "flotilla_vip_bench"}};
  try {
    host->start({store, disc});
  } catch (const std::exception &e) {
    die(std::string("plugins did not start: ") + e.what());
  }
  void *self = nullptr;
  auto *vt = host->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self);
  if (!vt) die("no store");
  StoreClient client(vt, self);

  auto record = [](int s, int i, const char *health) {
    const std::string name = "svc-" + std::to_string(s);
    return json{
        {"service", name},  {"alloc", name + "-a" + std::to_string(i)},
        {"node", "bench"},  {"addresses", {ip_of(0x2a0000u + static_cast<uint32_t>(s) * 2 + i)}},
        {"port", 8080},     {"tags", json::array()},
        {"health", health}, {"output", ""}}
        .dump();
  };
  int pending = 0;
  auto put = [&](const std::string &k, const std::string &v) {
    ++pending;
    client.put(k, v, [&](StoreResult r, int64_t) {
      if (!r.ok()) die("put: " + r.message);
      --pending;
    });
  };
  auto setup_start = Clock::now();
  for (int s = 0; s < services; ++s) {
    const std::string name = "svc-" + std::to_string(s);
    put("/flotilla/vips/" + name,
        json{{"address", ip_of(0xc80000u + static_cast<uint32_t>(s) + 1)}}.dump());
    for (int i = 0; i < 2; ++i)
      put("/flotilla/services/" + name + "/" + name + "-a" + std::to_string(i),
          record(s, i, "passing"));
    while (pending > 256) uv_run(&loop, UV_RUN_ONCE);
  }
  while (pending > 0) uv_run(&loop, UV_RUN_ONCE);
  // Built once no batch has been committed for 3 s.
  auto quiet_since = Clock::now();
  uint64_t seen = gens.generations;
  while (Clock::now() - quiet_since < std::chrono::seconds(3)) {
    uv_run(&loop, UV_RUN_NOWAIT);
    if (gens.generations != seen) {
      seen = gens.generations;
      quiet_since = Clock::now();
    }
    usleep(1000);
  }
  const double setup_s = std::chrono::duration<double>(gens.last - setup_start).count();

  std::mt19937 rng(42);
  std::vector<bool> critical(static_cast<size_t>(services), false);
  std::vector<double> lat;
  for (int t = 0; t < trials; ++t) {
    int s = static_cast<int>(rng() % static_cast<uint32_t>(services));
    critical[s] = !critical[s];
    const std::string name = "svc-" + std::to_string(s);
    const uint64_t before = gens.generations;
    auto t0 = Clock::now();
    put("/flotilla/services/" + name + "/" + name + "-a1",
        record(s, 1, critical[s] ? "critical" : "passing"));
    auto guard = t0 + std::chrono::seconds(30);
    while (gens.generations == before && Clock::now() < guard) uv_run(&loop, UV_RUN_ONCE);
    if (gens.generations == before) die("no batch within 30 s of a change");
    lat.push_back(std::chrono::duration<double, std::milli>(gens.last - t0).count());
    // Let the loop settle (the put's callback, a trailing batch) before the next.
    auto settle = Clock::now() + std::chrono::milliseconds(20);
    while (Clock::now() < settle) {
      uv_run(&loop, UV_RUN_NOWAIT);
      usleep(500);
    }
  }
  // Baseline, same table, same kind of change: the nft command line
  // (`nft -f`) applying the elements the plugin's batch holds when
  // instance a1 of a service turns critical or passing again (VipMap's
  // slots: a0 in slot 0, a1 in slot 1), timed from the spawn to the
  // kernel's commit. The plugin is idle meanwhile (no store change).
  std::vector<double> base;
  const std::string file = dir + "/change.nft";
  for (int t = 0; t < trials; ++t) {
    int s = static_cast<int>(rng() % static_cast<uint32_t>(services));
    critical[s] = !critical[s];
    const std::string vip = ip_of(0xc80000u + static_cast<uint32_t>(s) + 1);
    const std::string a1 = ip_of(0x2a0000u + static_cast<uint32_t>(s) * 2 + 1);
    const std::string tb = "ip flotilla_vip_bench ";
    std::string text;
    if (critical[s])
      text = "delete element " + tb + "svc-n2 { " + vip + " . 8080 }\n" + "delete element " + tb +
             "backends { " + vip + " . 8080 . 1 }\n" + "delete element " + tb + "hairpin { " + a1 +
             " . " + a1 + " }\n" + "add element " + tb + "svc-n1 { " + vip + " . 8080 }\n";
    else
      text = "delete element " + tb + "svc-n1 { " + vip + " . 8080 }\n" + "add element " + tb +
             "svc-n2 { " + vip + " . 8080 }\n" + "add element " + tb + "backends { " + vip +
             " . 8080 . 1 : " + a1 + " . 8080 }\n" + "add element " + tb + "hairpin { " + a1 +
             " . " + a1 + " }\n";
    std::FILE *f = std::fopen(file.c_str(), "w");
    if (!f) die("cannot write " + file);
    std::fputs(text.c_str(), f);
    std::fclose(f);
    const uint64_t before = gens.generations;
    auto t0 = Clock::now();
    if (std::system(("/usr/sbin/nft -f " + file).c_str()) != 0) die("nft -f refused:\n" + text);
    auto guard = Clock::now() + std::chrono::seconds(30);
    while (gens.generations == before && Clock::now() < guard) uv_run(&loop, UV_RUN_NOWAIT);
    if (gens.generations == before) die("nft -f: no commit seen");
    base.push_back(std::chrono::duration<double, std::milli>(gens.last - t0).count());
  }

  auto report = [&](const char *what, std::vector<double> &v) {
    std::sort(v.begin(), v.end());
    auto pct = [&](double p) {
      return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
    };
    std::printf("%6d services  %-28s %4zu changes  p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms\n",
                services, what, v.size(), pct(0.50), pct(0.99), v.back());
  };
  // The slowest changes by their place in the sequence (is the tail one
  // kind of change, such as the first that needs a new rule?).
  std::vector<size_t> order(lat.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lat[a] > lat[b]; });
  std::string slowest;
  for (size_t i = 0; i < std::min<size_t>(3, order.size()); ++i) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%s#%zu %.2f ms", i ? ", " : "", order[i] + 1, lat[order[i]]);
    slowest += buf;
  }
  report("flotilla (store -> kernel)", lat);
  std::printf("%6d services  slowest changes: %s\n", services, slowest.c_str());
  report("baseline nft -f (same elems)", base);
  std::printf("%6d services  table built in %.1f s\n", services, setup_s);
  std::fflush(stdout);
  host->stop();
  host.reset();
  gens.close_it();
  for (int i = 0; i < 100 && uv_loop_close(&loop) == UV_EBUSY; ++i) uv_run(&loop, UV_RUN_NOWAIT);
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char **argv) {
  std::vector<int> sizes = {1000, 10000};
  int trials = 100;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) die("usage: vip_bench [--services N[,N...]] [--trials T]");
    if (a == "--services") {
      sizes.clear();
      std::stringstream ss(argv[++i]);
      for (std::string n; std::getline(ss, n, ',');) sizes.push_back(std::atoi(n.c_str()));
    } else if (a == "--trials") {
      trials = std::atoi(argv[++i]);
    } else {
      die("unknown argument " + a);
    }
  }
  if (geteuid() != 0) die("needs root (a network namespace of its own, nftables)");
  if (unshare(CLONE_NEWNET) != 0) die("unshare(CLONE_NEWNET) failed");
  // lo up, for the DNS listener on 127.0.0.1.
  if (std::system("/usr/sbin/ip link set lo up") != 0) die("cannot bring lo up");
  // Dirs of earlier runs that were killed (their pid is gone) go first.
  std::error_code ec;
  for (const auto &e : std::filesystem::directory_iterator("/tmp", ec)) {
    const std::string name = e.path().filename().string();
    const std::string stem = "flotilla-vip-bench-";
    if (name.rfind(stem, 0) != 0) continue;
    const int pid = std::atoi(name.c_str() + stem.size());
    if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) std::filesystem::remove_all(e.path(), ec);
  }
  const std::string dir = "/tmp/flotilla-vip-bench-" + std::to_string(getpid());
  std::printf(
      "vip_bench: one endpoint change -> kernel commit (NFT_MSG_NEWGEN), %d changes per "
      "size, own network namespace; load average %s",
      trials, [] {
        std::FILE *f = std::fopen("/proc/loadavg", "r");
        static char buf[64] = "?\n";
        if (f) {
          if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
          std::fclose(f);
        }
        return buf;
      }());
  for (int n : sizes) {
    if (n < 1 || n > 60000) die("--services: 1 to 60000");
    run_size(n, trials, dir);
  }
  return 0;
}
