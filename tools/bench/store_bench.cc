// store_bench: what store-local costs, measured through the real plugin host
// on the disk it will run on.
//
//   store_bench [--dir DIR] [--plugin PATH] [--seconds S]
//
// Prints, with fsync on and off:
//   - write latency p50/p99: one put at a time, call to acknowledgement;
//   - watch latency p50/p99: put call to the watch callback that reports it;
//   - throughput: puts per second with 256 in flight, and how many records
//     each log write carried (group commit);
// and the baseline: write() + fdatasync() of a same-size record appended to
// a file in the same directory.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "log.h"
#include "plugin_host.h"
#include "store_client.h"

namespace {

using Clock = std::chrono::steady_clock;
using flotilla::KeyValue;
using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::StoreClient;
using flotilla::StoreEvent;
using flotilla::StoreResult;

constexpr size_t kValueBytes = 200;  // a typical small JSON record

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
  std::fprintf(stderr, "store_bench: %s\n", why.c_str());
  std::exit(1);
}

// write() + fdatasync() of one record-sized buffer, appended, n times.
Percentiles raw_fdatasync(const std::string &dir, size_t record, int n) {
  const std::string path = dir + "/raw-baseline.log";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) die("cannot create " + path + ": " + std::strerror(errno));
  std::string buf(record, 'r');
  std::vector<double> lat;
  for (int i = 0; i < n; ++i) {
    auto t = Clock::now();
    if (::write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size()) ||
        ::fdatasync(fd) != 0)
      die(std::string("baseline write failed: ") + std::strerror(errno));
    lat.push_back(us_since(t));
  }
  ::close(fd);
  ::unlink(path.c_str());
  return percentiles(std::move(lat));
}

// One store-local instance on its own loop and data directory.
class Bench {
 public:
  Bench(const std::string &plugin, const std::string &dir, bool fsync) {
    uv_loop_init(&loop_);
    PluginHost::Options opts;
    opts.node_name = "bench";
    opts.data_dir = dir;
    opts.config_path = "(store_bench)";
    host_ = std::make_unique<PluginHost>(&loop_, opts);
    PluginSettings s;
    s.name = "store-local";
    s.path = plugin;
    s.config = {{"fsync", fsync}};
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

  void run_until(const std::function<bool()> &done) {
    while (!done()) uv_run(&loop_, UV_RUN_ONCE);
  }

  void put_or_die(const std::string &key, const std::string &value,
                  std::function<void(int64_t)> then) {
    client_->put(key, value, [then = std::move(then)](StoreResult r, int64_t rev) {
      if (!r.ok()) die("put failed: " + r.message);
      then(rev);
    });
  }

  // One put at a time; latency from call to acknowledgement.
  Percentiles write_latency(int n, double seconds) {
    std::vector<double> lat;
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    std::string value(kValueBytes, 'v');
    for (int i = 0; i < n && Clock::now() < deadline; ++i) {
      bool done = false;
      auto t = Clock::now();
      put_or_die("/bench/lat/" + std::to_string(i % 1000), value, [&](int64_t) {
        lat.push_back(us_since(t));
        done = true;
      });
      run_until([&] { return done; });
    }
    return percentiles(std::move(lat));
  }

  // One put at a time; latency from the put call to the watch callback.
  Percentiles watch_latency(int n, double seconds) {
    std::vector<double> lat;
    Clock::time_point t;
    bool seen = false;
    auto w = client_->watch("/bench/watch/", true, 0,
                            [&](StoreResult r, const std::vector<StoreEvent> &, int64_t) {
                              if (!r.ok()) die("watch failed: " + r.message);
                              lat.push_back(us_since(t));
                              seen = true;
                            });
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    std::string value(kValueBytes, 'w');
    for (int i = 0; i < n && Clock::now() < deadline; ++i) {
      seen = false;
      bool acked = false;
      t = Clock::now();
      put_or_die("/bench/watch/" + std::to_string(i % 1000), value, [&](int64_t) { acked = true; });
      run_until([&] { return seen && acked; });
    }
    w.reset();
    return percentiles(std::move(lat));
  }

  struct Throughput {
    double writes_per_second = 0;
    double records_per_log_write = 0;
    size_t writes = 0;
  };
  // Keep `in_flight` puts outstanding for `seconds`.
  Throughput throughput(int in_flight, double seconds) {
    const double writes_before = metric("flotilla_store_local_wal_writes_total");
    const double records_before = metric("flotilla_store_local_wal_records_total");
    std::string value(kValueBytes, 't');
    size_t issued = 0, acked = 0;
    int outstanding = 0;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds);
    std::function<void()> issue = [&] {
      while (outstanding < in_flight && Clock::now() < deadline) {
        ++outstanding;
        put_or_die("/bench/tp/" + std::to_string(issued++ % 10000), value, [&](int64_t) {
          --outstanding;
          ++acked;
          issue();
        });
      }
    };
    issue();
    run_until([&] { return outstanding == 0 && Clock::now() >= deadline; });
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    Throughput t;
    t.writes = acked;
    t.writes_per_second = static_cast<double>(acked) / elapsed;
    const double writes = metric("flotilla_store_local_wal_writes_total") - writes_before;
    const double records = metric("flotilla_store_local_wal_records_total") - records_before;
    t.records_per_log_write = writes > 0 ? records / writes : 0;
    return t;
  }

 private:
  double metric(const std::string &name) const {
    const std::string text = host_->metrics().render_prometheus();
    const std::string needle = "\n" + name + " ";
    size_t at = ("\n" + text).find(needle);
    if (at == std::string::npos) return 0;
    return std::strtod(text.c_str() + at + needle.size() - 1, nullptr);
  }

  uv_loop_t loop_{};
  std::unique_ptr<PluginHost> host_;
  std::unique_ptr<StoreClient> client_;
};

}  // namespace

int main(int argc, char **argv) {
  std::string plugin = STORE_LOCAL_PLUGIN_PATH;
  std::string base = std::filesystem::temp_directory_path().string();
  double seconds = 2.0;  // per throughput run; the whole run stays under ~30 s
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) {
      base = argv[++i];
    } else if (a == "--plugin" && i + 1 < argc) {
      plugin = argv[++i];
    } else if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--dir DIR] [--plugin PATH] [--seconds S]\n", argv[0]);
      return 2;
    }
  }
  flotilla::log::configure(flotilla::log::Level::warn, flotilla::log::Format::text);
  std::string tmpl = base + "/flotilla-store-bench-XXXXXX";
  if (!::mkdtemp(tmpl.data())) die("cannot create a directory under " + base);
  const std::string dir = tmpl;

  // The record store-local frames for such a put: header, seq, type,
  // revision, key and value.
  const size_t record = 8 + 8 + 1 + 8 + 8 + 1 + 4 + 16 + 4 + kValueBytes + 8;
  std::printf("store-local benchmark in %s (%zu-byte values, %zu-byte log records)\n\n",
              dir.c_str(), kValueBytes, record);
  // The disk is shared and noisy: take the baseline before and after.
  Percentiles raw_before = raw_fdatasync(dir, record, 300);

  struct Row {
    const char *name;
    Percentiles write, watch;
    Bench::Throughput one, many;
  };
  std::vector<Row> rows;
  for (bool fsync : {true, false}) {
    const std::string sub = dir + (fsync ? "/fsync-on" : "/fsync-off");
    Bench b(plugin, sub, fsync);
    Row r{fsync ? "fsync on" : "fsync off", {}, {}, {}, {}};
    r.write = b.write_latency(2000, 4.0);
    r.watch = b.watch_latency(2000, 4.0);
    r.one = b.throughput(1, seconds);
    r.many = b.throughput(256, seconds);
    rows.push_back(r);
  }

  Percentiles raw_after = raw_fdatasync(dir, record, 300);

  std::printf("%-34s %12s %12s\n", "", "p50 (us)", "p99 (us)");
  for (const auto &[name, raw] : {std::pair{"write()+fdatasync(), before", raw_before},
                                  std::pair{"write()+fdatasync(), after", raw_after}})
    std::printf("%-34s %12.1f %12.1f   (n=%zu)\n", name, raw.p50, raw.p99, raw.n);
  for (const auto &r : rows) {
    std::printf("%-34s %12.1f %12.1f   (n=%zu)\n", (std::string("put -> ack, ") + r.name).c_str(),
                r.write.p50, r.write.p99, r.write.n);
    std::printf("%-34s %12.1f %12.1f   (n=%zu)\n",
                (std::string("put -> watch event, ") + r.name).c_str(), r.watch.p50, r.watch.p99,
                r.watch.n);
  }
  std::printf("\n%-34s %12s %18s\n", "", "writes/s", "records per sync");
  for (const auto &r : rows) {
    std::printf("%-34s %12.0f %18.1f\n", (std::string("1 in flight, ") + r.name).c_str(),
                r.one.writes_per_second, r.one.records_per_log_write);
    std::printf("%-34s %12.0f %18.1f\n", (std::string("256 in flight, ") + r.name).c_str(),
                r.many.writes_per_second, r.many.records_per_log_write);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
