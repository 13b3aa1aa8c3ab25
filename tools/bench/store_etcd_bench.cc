// store_etcd_bench: what store-etcd costs against a real etcd started here
// (one member, loopback, a temporary data directory; killed at the end).
//
//   store_etcd_bench [--seconds S] [--etcd /usr/bin/etcd]
//
// Prints:
//   - put -> ack and put -> watch event latency, p50/p99, one at a time;
//   - throughput with 1 and 256 puts in flight;
//   - baselines from the same run, on the same etcd: the same puts made
//     directly with gRPC (no plugin, no ordering: 256 really concurrent), and
//     `etcdctl put` run once per put (the official client, process start
//     included); etcd's own WAL fsync p50/p99 from its /metrics;
//   - TCP connections to etcd and threads of this process with 0, 1, 10 and
//     100 watches open.
#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "etcd_fixture.h"
#include "etcd_rpc.grpc.pb.h"
#include "log.h"
#include "plugin_host.h"
#include "store_client.h"

namespace {

using Clock = std::chrono::steady_clock;
using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::StoreClient;
using flotilla::StoreEvent;
using flotilla::StoreResult;

constexpr size_t kValueBytes = 200;  // a typical small JSON record, as store_bench

double us_since(Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}

struct Percentiles {
  double p50 = 0, p99 = 0;
  size_t n = 0;
};

Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  p.p50 = v[v.size() / 2];
  p.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  return p;
}

[[noreturn]] void die(const std::string &why) {
  std::fprintf(stderr, "store_etcd_bench: %s\n", why.c_str());
  std::exit(1);
}

int threads_now() {
  int n = 0;
  if (DIR *d = ::opendir("/proc/self/task")) {
    while (dirent *e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

// Established TCP connections from this process to port.
int connections_to(int port) {
  std::set<unsigned long> mine;
  for (const auto &e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    std::string t = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && t.rfind("socket:[", 0) == 0) mine.insert(std::stoul(t.substr(8)));
  }
  int n = 0;
  for (const char *file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    FILE *f = std::fopen(file, "r");
    if (!f) continue;
    char line[512];
    if (std::fgets(line, sizeof line, f))
      while (std::fgets(line, sizeof line, f)) {
        unsigned lp = 0, rp = 0, st = 0;
        unsigned long inode = 0;
        if (std::sscanf(line, "%*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x %*s %*s %*s %*s %*s %lu",
                        &lp, &rp, &st, &inode) == 4 &&
            rp == static_cast<unsigned>(port) && st == 1 && mine.count(inode))
          ++n;
      }
    std::fclose(f);
  }
  return n;
}

std::string capture(const std::string &cmd) {
  std::string out;
  if (FILE *p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
  }
  return out;
}

// p50/p99 of a Prometheus histogram from etcd's /metrics (bucket bounds).
Percentiles histogram(const std::string &metrics, const std::string &name) {
  std::vector<std::pair<double, double>> buckets;  // le, cumulative count
  size_t at = 0;
  const std::string prefix = name + "_bucket{le=\"";
  while ((at = metrics.find(prefix, at)) != std::string::npos) {
    at += prefix.size();
    double le =
        metrics.compare(at, 4, "+Inf") == 0 ? 1e9 : std::strtod(metrics.c_str() + at, nullptr);
    size_t sp = metrics.find(' ', at);
    buckets.emplace_back(le, std::strtod(metrics.c_str() + sp + 1, nullptr));
  }
  Percentiles p;
  if (buckets.empty() || buckets.back().second == 0) return p;
  const double total = buckets.back().second;
  p.n = static_cast<size_t>(total);
  for (auto &[le, c] : buckets) {
    if (p.p50 == 0 && c >= total * 0.5) p.p50 = le * 1e6;
    if (p.p99 == 0 && c >= total * 0.99) p.p99 = le * 1e6;
  }
  return p;
}

class Bench {
 public:
  Bench(const std::string &plugin, const std::string &dir, const nlohmann::json &config) {
    uv_loop_init(&loop_);
    PluginHost::Options opts;
    opts.node_name = "bench";
    opts.data_dir = dir;
    opts.config_path = "(store_etcd_bench)";
    host_ = std::make_unique<PluginHost>(&loop_, opts);
    PluginSettings s;
    s.name = "store-etcd";
    s.path = plugin;
    s.config = config;
    host_->start({s});
    void *self = nullptr;
    auto *vt = host_->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self);
    if (!vt) die("the plugin serves no flotilla.store/1");
    client_ = std::make_unique<StoreClient>(vt, self);
  }
  ~Bench() {
    client_.reset();
    host_->stop();
    for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    host_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
  StoreClient &client() { return *client_; }
  void run_until(const std::function<bool()> &done) {
    while (!done()) uv_run(&loop_, UV_RUN_ONCE);
  }
  void put_or_die(const std::string &key, const std::string &value, std::function<void()> then) {
    client_->put(key, value, [then = std::move(then)](StoreResult r, int64_t) {
      if (!r.ok()) die("put failed: " + r.message);
      then();
    });
  }
  Percentiles write_latency(int n) {
    std::vector<double> lat;
    std::string value(kValueBytes, 'v');
    for (int i = 0; i < n; ++i) {
      bool done = false;
      auto t = Clock::now();
      put_or_die("/bench/lat/" + std::to_string(i % 1000), value, [&] {
        lat.push_back(us_since(t));
        done = true;
      });
      run_until([&] { return done; });
    }
    return percentiles(std::move(lat));
  }
  Percentiles watch_latency(int n) {
    std::vector<double> lat;
    Clock::time_point t;
    bool seen = false;
    auto w = client_->watch("/bench/watch/", true, 0,
                            [&](StoreResult r, const std::vector<StoreEvent> &, int64_t) {
                              if (!r.ok()) die("watch failed: " + r.message);
                              lat.push_back(us_since(t));
                              seen = true;
                            });
    std::string value(kValueBytes, 'w');
    for (int i = 0; i < n; ++i) {
      seen = false;
      bool acked = false;
      t = Clock::now();
      put_or_die("/bench/watch/" + std::to_string(i % 1000), value, [&] { acked = true; });
      run_until([&] { return seen && acked; });
    }
    return percentiles(std::move(lat));
  }
  double throughput(int in_flight, double seconds) {
    std::string value(kValueBytes, 't');
    size_t issued = 0, acked = 0;
    int outstanding = 0;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds);
    std::function<void()> issue = [&] {
      while (outstanding < in_flight && Clock::now() < deadline) {
        ++outstanding;
        put_or_die("/bench/tp/" + std::to_string(issued++ % 10000), value, [&] {
          --outstanding;
          ++acked;
          issue();
        });
      }
    };
    issue();
    run_until([&] { return outstanding == 0 && Clock::now() >= deadline; });
    return static_cast<double>(acked) / std::chrono::duration<double>(Clock::now() - start).count();
  }

 private:
  uv_loop_t loop_{};
  std::unique_ptr<PluginHost> host_;
  std::unique_ptr<StoreClient> client_;
};

// The same puts straight over gRPC: sync for latency, async with n in
// flight (no ordering) for throughput.
struct RawGrpc {
  explicit RawGrpc(const std::string &target)
      : channel(grpc::CreateChannel(target, grpc::InsecureChannelCredentials())),
        kv(etcdserverpb::KV::NewStub(channel)) {}
  Percentiles latency(int n) {
    std::vector<double> lat;
    for (int i = 0; i < n; ++i) {
      etcdserverpb::PutRequest req;
      req.set_key("/bench/raw/" + std::to_string(i % 1000));
      req.set_value(std::string(kValueBytes, 'r'));
      etcdserverpb::PutResponse resp;
      grpc::ClientContext ctx;
      auto t = Clock::now();
      if (!kv->Put(&ctx, req, &resp).ok()) die("raw gRPC put failed");
      lat.push_back(us_since(t));
    }
    return percentiles(std::move(lat));
  }
  double throughput(int in_flight, double seconds) {
    grpc::CompletionQueue cq;
    struct Call {
      grpc::ClientContext ctx;
      etcdserverpb::PutResponse resp;
      grpc::Status status;
      std::unique_ptr<grpc::ClientAsyncResponseReader<etcdserverpb::PutResponse>> r;
    };
    size_t issued = 0, acked = 0;
    int outstanding = 0;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds);
    auto issue = [&] {
      auto *c = new Call;
      etcdserverpb::PutRequest req;
      req.set_key("/bench/rawtp/" + std::to_string(issued++ % 10000));
      req.set_value(std::string(kValueBytes, 't'));
      c->r = kv->AsyncPut(&c->ctx, req, &cq);
      c->r->Finish(&c->resp, &c->status, c);
      ++outstanding;
    };
    for (int i = 0; i < in_flight; ++i) issue();
    void *tag;
    bool ok;
    while (outstanding > 0 && cq.Next(&tag, &ok)) {
      std::unique_ptr<Call> c(static_cast<Call *>(tag));
      --outstanding;
      if (!c->status.ok()) die("raw gRPC put failed: " + c->status.error_message());
      ++acked;
      if (Clock::now() < deadline) issue();
    }
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return static_cast<double>(acked) / std::chrono::duration<double>(Clock::now() - start).count();
  }
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<etcdserverpb::KV::Stub> kv;
};

}  // namespace

int main(int argc, char **argv) {
  double seconds = 3.0;
  std::string etcd_bin = "/usr/bin/etcd";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc)
      seconds = std::atof(argv[++i]);
    else if (a == "--etcd" && i + 1 < argc)
      etcd_bin = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--seconds S] [--etcd PATH]\n", argv[0]);
      return 2;
    }
  }
  flotilla::log::configure(flotilla::log::Level::warn, flotilla::log::Format::text);
  if (auto why = flotilla::test::EtcdCluster::skip_reason(etcd_bin); !why.empty()) die(why);
  flotilla::test::EtcdOptions o;
  o.etcd = etcd_bin;
  o.heartbeat_ms = 100;  // etcd's defaults: the benchmark is about steady state
  o.election_ms = 1000;
  flotilla::test::EtcdCluster etcd(o);
  const std::string url = etcd.client_url(0);
  const int port = std::stoi(url.substr(url.rfind(':') + 1));
  std::printf("store-etcd benchmark: etcd %s, data in %s, %zu-byte values\n\n", url.c_str(),
              etcd.dir().c_str(), kValueBytes);

  const int threads_before = threads_now();
  std::string dir = etcd.dir() + "/plugin";
  std::filesystem::create_directories(dir);
  Percentiles write, watch;
  double one = 0, many = 0;
  std::vector<std::pair<int, std::pair<int, int>>> watch_cost;  // watches → (connections, threads)
  int threads_loaded = 0;
  {
    Bench b(STORE_ETCD_PLUGIN_PATH, dir, etcd.plugin_config());
    threads_loaded = threads_now();
    write = b.write_latency(1000);
    watch = b.watch_latency(1000);
    one = b.throughput(1, seconds);
    many = b.throughput(256, seconds);
    std::vector<std::unique_ptr<StoreClient::Watch>> watches;
    for (int target : {1, 10, 100}) {
      while (static_cast<int>(watches.size()) < target)
        watches.push_back(
            b.client().watch("/bench/w/" + std::to_string(watches.size()), false, 0,
                             [](StoreResult, const std::vector<StoreEvent> &, int64_t) {}));
      bool done = false;
      b.put_or_die("/bench/w/sync", "v", [&] { done = true; });  // every create answered
      b.run_until([&] { return done; });
      watch_cost.push_back({target, {connections_to(port), threads_now()}});
    }
  }

  RawGrpc raw("ipv4:127.0.0.1:" + std::to_string(port));
  Percentiles raw_lat = raw.latency(1000);
  double raw_one = raw.throughput(1, seconds);
  double raw_many = raw.throughput(256, seconds);

  std::vector<double> ctl;
  for (int i = 0; i < 100; ++i) {
    auto t = Clock::now();
    std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + url + " put /bench/ctl/" +
                      std::to_string(i) + " " + std::string(kValueBytes, 'c') + " >/dev/null";
    if (std::system(cmd.c_str()) != 0) die("etcdctl put failed");
    ctl.push_back(us_since(t));
  }
  Percentiles ctl_lat = percentiles(ctl);
  Percentiles fsync =
      histogram(capture("curl -s " + url + "/metrics"), "etcd_disk_wal_fsync_duration_seconds");

  std::printf("%-44s %12s %12s\n", "", "p50 (us)", "p99 (us)");
  auto row = [](const char *name, const Percentiles &p) {
    std::printf("%-44s %12.1f %12.1f   (n=%zu)\n", name, p.p50, p.p99, p.n);
  };
  row("store-etcd put -> ack", write);
  row("store-etcd put -> watch event", watch);
  row("raw gRPC Put (baseline)", raw_lat);
  row("etcdctl put, one process per put (baseline)", ctl_lat);
  row("etcd WAL fsync (its /metrics, bucket bounds)", fsync);
  std::printf("\n%-44s %12s\n", "", "writes/s");
  std::printf("%-44s %12.0f\n", "store-etcd, 1 in flight", one);
  std::printf("%-44s %12.0f\n", "store-etcd, 256 in flight (sent in order)", many);
  std::printf("%-44s %12.0f\n", "raw gRPC, 1 in flight (baseline)", raw_one);
  std::printf("%-44s %12.0f\n", "raw gRPC, 256 in flight, unordered (baseline)", raw_many);
  std::printf("\nthreads of this process: %d before the plugin, %d with it loaded\n",
              threads_before, threads_loaded);
  for (auto &[n, ct] : watch_cost)
    std::printf("%3d watches open: %d TCP connection(s) to etcd, %d threads\n", n, ct.first,
                ct.second);
  return 0;
}
