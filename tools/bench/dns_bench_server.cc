// dns_bench_server: the discovery plugin's DNS with a registry of a given
// size, for tools/bench/dns_bench.sh. It loads store-local and the
// discovery plugin through the real plugin host (as flotillad does), writes
// SERVICES services of INSTANCES passing instances each under
// /flotilla/services/, waits until its own DNS answers the last of them,
// writes the same A records as a hosts file (for dnsmasq, the baseline)
// and a dnsperf query file, prints "ready" and answers until SIGTERM.
//
//   dns_bench_server --dir DIR --port PORT [--services N] [--instances M]
//
// The loop runs on the main thread: pin the process (taskset) to give the
// server one core.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "plugin_host.h"
#include "store_client.h"

namespace {

using json = nlohmann::json;
using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::StoreClient;
using flotilla::StoreResult;

[[noreturn]] void die(const std::string &why) {
  std::fprintf(stderr, "dns_bench_server: %s\n", why.c_str());
  std::exit(1);
}

std::string address_of(int service, int instance) {
  // 10.42.0.0/16 and up: service-major, so each service's set is distinct.
  int n = service * 64 + instance + 1;
  return "10." + std::to_string(42 + n / 65536) + "." + std::to_string((n / 256) % 256) + "." +
         std::to_string(n % 256);
}

// Whether our own DNS answers name with NOERROR and an answer.
bool answers(uint16_t port, const std::string &name) {
  std::vector<uint8_t> q = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    q.push_back(static_cast<uint8_t>(dot - start));
    q.insert(q.end(), name.begin() + static_cast<long>(start),
             name.begin() + static_cast<long>(dot));
    start = dot + 1;
  }
  q.insert(q.end(), {0, 0, 1, 0, 1});  // root, type A, class IN
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr *>(&a), sizeof a);
  pollfd p{fd, POLLIN, 0};
  uint8_t buf[4096];
  ssize_t n = poll(&p, 1, 200) == 1 ? recv(fd, buf, sizeof buf, 0) : -1;
  close(fd);
  // rcode 0 and ancount > 0
  return n >= 12 && (buf[3] & 0x0f) == 0 && (buf[6] << 8 | buf[7]) > 0;
}

}  // namespace

int main(int argc, char **argv) {
  std::string dir;
  int port = 0, services = 1000, instances = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--dir")
      dir = next();
    else if (a == "--port")
      port = std::atoi(next().c_str());
    else if (a == "--services")
      services = std::atoi(next().c_str());
    else if (a == "--instances")
      instances = std::atoi(next().c_str());
    else
      die("unknown argument " + a);
  }
  if (dir.empty() || port <= 0 || port > 65535 || services < 1 || instances < 1 || instances > 64)
    die("usage: dns_bench_server --dir DIR --port PORT [--services N] [--instances 1..64]");
  std::filesystem::create_directories(dir + "/data");

  uv_loop_t loop;
  uv_loop_init(&loop);
  PluginHost::Options opts;
  opts.node_name = "bench";
  opts.data_dir = dir + "/data";
  opts.config_path = "(dns_bench_server)";
  auto host = std::make_unique<PluginHost>(&loop, opts);
  PluginSettings store;
  store.name = "store-local";
  store.path = STORE_LOCAL_PLUGIN_PATH;
  store.config = {{"fsync", false}};
  PluginSettings disc;
  disc.name = "discovery";
  disc.path = DISCOVERY_PLUGIN_PATH;
  disc.config = {{"listen", {"127.0.0.1:" + std::to_string(port)}}, {"forward", false}, {"ttl", 5}};
  try {
    host->start({store, disc});
  } catch (const std::exception &e) {
    die(std::string("plugins did not start: ") + e.what());
  }
  void *self = nullptr;
  auto *vt = host->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self);
  if (!vt) die("store-local serves no flotilla.store/1");
  StoreClient client(vt, self);

  std::ofstream hosts(dir + "/hosts"), queries(dir + "/queries");
  int pending = 0;
  for (int s = 0; s < services; ++s) {
    const std::string name = "svc-" + std::to_string(s);
    for (int i = 0; i < instances; ++i) {
      const std::string alloc = name + "-a" + std::to_string(i);
      const std::string ip = address_of(s, i);
      json rec = {{"service", name},     {"alloc", alloc},   {"node", "bench"},
                  {"addresses", {ip}},   {"port", 8080},     {"tags", json::array()},
                  {"health", "passing"}, {"output", "bench"}};
      ++pending;
      client.put("/flotilla/services/" + name + "/" + alloc, rec.dump(),
                 [&](StoreResult r, int64_t) {
                   if (!r.ok()) die("put failed: " + r.message);
                   --pending;
                 });
      hosts << ip << " " << name << ".service.flotilla\n";
    }
    queries << name << ".service.flotilla A\n";
  }
  hosts.close();
  queries.close();
  while (pending > 0) uv_run(&loop, UV_RUN_ONCE);

  // Ready once the watch brought the last service into the zone.
  const std::string last = "svc-" + std::to_string(services - 1) + ".service.flotilla";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::atomic<bool> ready{false};
  // A prober thread asks; the server answers only while the loop runs here.
  std::atomic<bool> done{false};
  std::thread prober([&] {
    while (!done && std::chrono::steady_clock::now() < deadline) {
      if (answers(static_cast<uint16_t>(port), last)) {
        ready = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    done = true;
  });
  while (!done) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(500);
  }
  prober.join();
  if (!ready) die("the DNS did not answer " + last + " within 30 s");

  // Until SIGTERM or SIGINT.
  uv_signal_t term, intr;
  uv_signal_init(&loop, &term);
  uv_signal_init(&loop, &intr);
  auto stop = [](uv_signal_t *s, int) { uv_stop(s->loop); };
  uv_signal_start(&term, stop, SIGTERM);
  uv_signal_start(&intr, stop, SIGINT);
  std::printf("ready %d services x %d instances on 127.0.0.1:%d\n", services, instances, port);
  std::fflush(stdout);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_signal_stop(&term);
  uv_signal_stop(&intr);
  uv_close(reinterpret_cast<uv_handle_t *>(&term), nullptr);
  uv_close(reinterpret_cast<uv_handle_t *>(&intr), nullptr);
  host->stop();
  for (int i = 0; i < 10; ++i) uv_run(&loop, UV_RUN_NOWAIT);
  return 0;
}
