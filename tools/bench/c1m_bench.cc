// c1m_bench: Nomad's C1M without the containers. Placement end to end
// through a real etcd started here (one member, loopback, a temporary data
// directory; killed at the end):
//
//   c1m_bench [--nodes N] [--allocs A] [--jobs J] [--etcd /usr/bin/etcd]
//
// N simulated node records (default 10,000), each under a lease of its own
// as a daemon keeps it (no daemons: nothing runs on them), then J jobs
// (default 1; a job allows at most 100,000 allocations) asking for A
// allocations together (default 100,000), submitted at once. The core's
// own Evaluator, with store-etcd and scheduler-binpack loaded by the real
// plugin host, leads, plans and writes the allocations in fenced
// transactions within etcd's limits. The clock runs from the first job put
// until the watch on /flotilla/allocs/ has delivered every allocation
// (so every one is durable in etcd).
//
// Baselines printed beside the figure: Nomad's published C1M (about 3,750
// containers placed and running a second) and C2M (about 1,500 a second),
// and etcd's own client `etcdctl` writing the same number of records of the
// same size, in transactions of the same size, in the same run.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "etcd_fixture.h"
#include "jobspec.h"
#include "log.h"
#include "plugin_host.h"
#include "rfc3339.h"
#include "sched/evaluator.h"
#include "store_client.h"

namespace {

using Clock = std::chrono::steady_clock;
using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::StoreClient;
using flotilla::StoreEvent;
using flotilla::StoreResult;
using nlohmann::json;

[[noreturn]] void die(const std::string &why) {
  std::fprintf(stderr, "c1m_bench: %s\n", why.c_str());
  std::exit(1);
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string node_record(const std::string &name) {
  return json{{"name", name},
              {"datacenter", "dc1"},
              {"status", "ready"},
              {"eligible", true},
              {"version", "bench"},
              {"started_at", flotilla::rfc3339_now()},
              {"resources", {{"cpu_mhz", 32000}, {"memory_mb", 65536}, {"disk_mb", 500000}}},
              {"attributes",
               {{"os", "linux"}, {"arch", "x86_64"}, {"kernel", "6.1"}, {"datacenter", "dc1"}}},
              {"plugins", json::array()},
              {"devices", json::object()}}
      .dump();
}

std::string job_record(const std::string &name, int count) {
  std::string toml = "name = \"" + name + "\"\ncount = " + std::to_string(count) +
                     "\n\n[[task]]\nname = \"server\"\nimage = \"busybox:latest\"\n"
                     "command = \"/bin/httpd\"\n\n[task.resources]\ncpu = 100\n"
                     "memory = 64\n";
  json job = flotilla::parse_jobspec(toml, "(c1m_bench)");
  job["version"] = 1;
  job["submitted_at"] = flotilla::rfc3339_now();
  job["stop"] = false;
  return job.dump();
}

class Loop {
 public:
  Loop() { uv_loop_init(&loop_); }
  ~Loop() {
    for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    uv_loop_close(&loop_);
  }
  uv_loop_t *get() { return &loop_; }
  void run_until(const std::function<bool()> &done, double timeout_s, const char *what) {
    auto start = Clock::now();
    uv_timer_t tick;
    uv_timer_init(&loop_, &tick);
    uv_timer_start(
        &tick, [](uv_timer_t *) {}, 100, 100);  // wake to check the timeout
    while (!done()) {
      if (seconds_since(start) > timeout_s)
        die(std::string("timed out after ") + std::to_string(timeout_s) + " s: " + what);
      uv_run(&loop_, UV_RUN_ONCE);
    }
    uv_close(reinterpret_cast<uv_handle_t *>(&tick), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
  }

 private:
  uv_loop_t loop_{};
};

// etcdctl txn: the same records, the same size, 126 puts a transaction
// (as the evaluator's chunks), one etcdctl process a transaction, `procs`
// of them at a time. The transaction files are written before the clock
// starts.
double etcdctl_baseline(const std::string &url, const std::string &dir, size_t records,
                        size_t value_bytes, int procs, const std::string &tag) {
  const size_t per_txn = 126;
  std::string value(value_bytes, 'v');
  const std::string txdir = dir + "/txn-" + tag;
  std::filesystem::create_directories(txdir);
  size_t files = 0;
  for (size_t done = 0; done < records; done += per_txn, ++files) {
    std::ofstream out(txdir + "/" + std::to_string(files) + ".txt", std::ios::trunc);
    out << "\n";  // no compares; then the success ops, then no failure ops
    for (size_t i = 0; i < per_txn && done + i < records; ++i)
      out << "put /bench/ctl-" << tag << "/" << (done + i) << " " << value << "\n";
    out << "\n\n";
  }
  std::string cmd = "cd " + txdir + " && seq 0 " + std::to_string(files - 1) + " | xargs -P " +
                    std::to_string(procs) + " -I@ sh -c 'ETCDCTL_API=3 etcdctl --endpoints=" +
                    url + " txn < @.txt > /dev/null'";
  auto start = Clock::now();
  if (std::system(cmd.c_str()) != 0) die("etcdctl txn failed");
  double rate = static_cast<double>(records) / seconds_since(start);
  std::filesystem::remove_all(txdir);
  return rate;
}

}  // namespace

int main(int argc, char **argv) {
  int nodes = 10000, allocs = 100000, jobs = 1;
  std::string etcd_bin = "/usr/bin/etcd";
  bool baseline = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--nodes" && i + 1 < argc)
      nodes = std::atoi(argv[++i]);
    else if (a == "--allocs" && i + 1 < argc)
      allocs = std::atoi(argv[++i]);
    else if (a == "--jobs" && i + 1 < argc)
      jobs = std::atoi(argv[++i]);
    else if (a == "--etcd" && i + 1 < argc)
      etcd_bin = argv[++i];
    else if (a == "--no-baseline")
      baseline = false;
    else {
      std::fprintf(stderr,
                   "usage: %s [--nodes N] [--allocs A] [--jobs J] [--etcd PATH] [--no-baseline]\n",
                   argv[0]);
      return 2;
    }
  }
  if (nodes < 1 || jobs < 1 || allocs < jobs || (allocs + jobs - 1) / jobs > 100000)
    die("--allocs / --jobs must be between 1 and 100,000 (a job's count limit), --nodes >= 1");
  flotilla::log::configure(flotilla::log::Level::info, flotilla::log::Format::text);
  if (auto why = flotilla::test::EtcdCluster::skip_reason(etcd_bin); !why.empty()) die(why);
  flotilla::test::EtcdOptions o;
  o.etcd = etcd_bin;
  o.heartbeat_ms = 100;  // etcd's defaults: steady state, not failover
  o.election_ms = 1000;
  o.extra_args = {"--quota-backend-bytes=8589934592", "--max-request-bytes=1572864"};
  flotilla::test::EtcdCluster etcd(o);
  const std::string url = etcd.client_url(0);
  std::printf(
      "C1M without containers: %d node records under leases, %d allocations in %d jobs,\n"
      "etcd %s (data in %s)\n\n",
      nodes, allocs, jobs, url.c_str(), etcd.dir().c_str());
  std::fflush(stdout);

  double rate = 0, plan_first = 0, total = 0, nodes_s = 0;
  size_t value_bytes = 0;
  {
    Loop loop;
    const std::string dir = etcd.dir() + "/host";
    std::filesystem::create_directories(dir);
    PluginHost::Options opts;
    opts.node_name = "bench-leader";
    opts.data_dir = dir;
    opts.config_path = "(c1m_bench)";
    auto host = std::make_unique<PluginHost>(loop.get(), opts);
    PluginSettings store_s;
    store_s.name = "store-etcd";
    store_s.path = STORE_ETCD_PLUGIN_PATH;
    store_s.config = etcd.plugin_config();
    PluginSettings sched_s;
    sched_s.name = "scheduler-binpack";
    sched_s.path = SCHEDULER_BINPACK_PLUGIN_PATH;
    host->start({store_s, sched_s});
    void *self = nullptr;
    auto *vt = host->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self);
    if (!vt) die("store-etcd serves no flotilla.store/1");
    StoreClient store(vt, self);

    // The simulated nodes: a lease each (long: nobody renews them here) and
    // the record under it, 256 at a time.
    auto t_nodes = Clock::now();
    int issued = 0, registered = 0, in_flight = 0;
    std::function<void()> issue = [&] {
      while (in_flight < 256 && issued < nodes) {
        ++in_flight;
        std::string name = "sim-" + std::to_string(issued++);
        store.lease_grant(3600, [&, name](StoreResult r, int64_t lease, int64_t) {
          if (!r.ok()) die("lease grant: " + r.message);
          store.put(
              "/flotilla/nodes/" + name, node_record(name),
              [&](StoreResult w, int64_t) {
                if (!w.ok()) die("node put: " + w.message);
                --in_flight;
                ++registered;
                issue();
              },
              lease);
        });
      }
    };
    issue();
    loop.run_until([&] { return registered == nodes; }, 600, "registering nodes");
    nodes_s = seconds_since(t_nodes);
    std::printf("%d node records under %d leases written in %.1f s\n", nodes, nodes, nodes_s);
    std::fflush(stdout);

    flotilla::Evaluator ev(loop.get(), &store, host.get(), "bench-leader", 60000, 60000);
    ev.start();
    loop.run_until([&] { return ev.is_leader(); }, 60, "becoming the scheduling leader");
    // Let its first evaluation (nothing to place) run.
    bool quiet = false;
    uv_timer_t settle;
    uv_timer_init(loop.get(), &settle);
    settle.data = &quiet;
    uv_timer_start(
        &settle, [](uv_timer_t *t) { *static_cast<bool *>(t->data) = true; }, 500, 0);
    loop.run_until([&] { return quiet; }, 10, "settling");
    uv_close(reinterpret_cast<uv_handle_t *>(&settle), nullptr);

    // Count new allocation records as the store delivers them.
    int64_t start_rev = 0;
    bool listed = false;
    store.list("/flotilla/sched/",
               [&](StoreResult r, std::vector<flotilla::KeyValue>, int64_t rev) {
                 if (!r.ok()) die("list: " + r.message);
                 start_rev = rev;
                 listed = true;
               });
    loop.run_until([&] { return listed; }, 30, "reading the revision");
    int seen = 0;
    size_t bytes = 0;
    Clock::time_point first_alloc{};
    auto watch = store.watch("/flotilla/allocs/", true, start_rev + 1,
                             [&](StoreResult r, const std::vector<StoreEvent> &evs, int64_t) {
                               if (!r.ok()) die("alloc watch: " + r.message);
                               for (const auto &e : evs)
                                 if (e.type == StoreEvent::Type::put && e.kv.version == 1) {
                                   if (seen == 0) first_alloc = Clock::now();
                                   ++seen;
                                   bytes += e.kv.key.size() + e.kv.value.size();
                                 }
                             });

    auto t0 = Clock::now();
    int jobs_written = 0;
    for (int j = 0; j < jobs; ++j) {
      int count = allocs / jobs + (j < allocs % jobs ? 1 : 0);
      store.put("/flotilla/jobs/c1m-" + std::to_string(j),
                job_record("c1m-" + std::to_string(j), count), [&](StoreResult r, int64_t) {
                  if (!r.ok()) die("job put: " + r.message);
                  ++jobs_written;
                });
    }
    loop.run_until([&] { return seen >= allocs; }, 1800, "placing every allocation");
    total = seconds_since(t0);
    plan_first = std::chrono::duration<double>(first_alloc - t0).count();
    rate = allocs / total;
    value_bytes = bytes / static_cast<size_t>(std::max(seen, 1));
    watch.reset();
    {
      // How the writes went: chained (sent before the one before was
      // answered), sent again (arrived early), and sent as siblings (beside
      // others that require the same epoch token).
      std::string m = host->metrics().render_prometheus();
      for (const char *name :
           {"flotilla_store_etcd_chained_total", "flotilla_store_etcd_chain_resends_total",
            "flotilla_store_etcd_siblings_total"}) {
        auto at = m.find(std::string("\n") + name + " ");
        std::printf("%s %s\n", name,
                    at == std::string::npos
                        ? "0"
                        : m.substr(at + 2 + std::strlen(name), m.find('\n', at + 1) - at - 2 -
                                                                   std::strlen(name))
                              .c_str());
      }
    }
    bool stopped = false;
    ev.stop([&] { stopped = true; });
    loop.run_until([&] { return stopped; }, 30, "stopping the evaluator");
    host->stop();
    host.reset();
  }

  std::printf("\n%-58s %10s\n", "", "allocs/s");
  std::printf("%-58s %10.0f   (%.1f s; first allocation durable after %.1f s)\n",
              "Flotilla: submission -> every allocation durable in etcd", rate, total, plan_first);
  std::printf("%-58s %10d\n", "Nomad C1M, published (placed and running)", 3750);
  std::printf("%-58s %10d\n", "Nomad C2M, published (placed and running)", 1500);
  std::printf("%-58s %10d\n", "target", 20000);
  if (baseline) {
    std::fflush(stdout);
    for (int procs : {1, 8}) {
      double ctl = etcdctl_baseline(url, etcd.dir(), static_cast<size_t>(allocs), value_bytes,
                                    procs, std::to_string(procs));
      std::printf("%-58s %10.0f   (%zu-byte records, 126 a txn, one process a txn, %d at a time)\n",
                  procs == 1 ? "etcdctl txn, the same records (baseline, same run)"
                             : "etcdctl txn, 8 processes at once (same run)",
                  ctl, value_bytes, procs);
      std::fflush(stdout);
    }
  }
  return 0;
}
