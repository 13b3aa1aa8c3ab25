// flotillad as a whole: start-up, the node's record in the store, signals,
// reload and orderly shutdown. main.cc only parses arguments.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "api/api_server.h"
#include "config.h"
#include "sched/evaluator.h"
#include "plugin_host.h"
#include "node/reconciler.h"
#include "node/runtime_client.h"
#include "store_client.h"

namespace flotilla {

class Daemon {
 public:
  explicit Daemon(DaemonConfig config);
  ~Daemon();
  Daemon(const Daemon &) = delete;
  Daemon &operator=(const Daemon &) = delete;

  // Start everything and run the loop until SIGTERM/SIGINT finished an
  // orderly stop. Returns the process exit code. Start-up failures throw
  // flotilla::Error / ConfigError with the operator-facing message.
  int run();

  // Check config and plugins (open, entry, pins, start order) without
  // initialising anything. Throws like run().
  static void check(const DaemonConfig &config);

  // `--cleanup-network`: start the plugins (no API, no node record, no
  // reconciler), have the network plugin remove everything it made on this
  // node and give back its leases, stop. 0 when done, 1 otherwise. Refused
  // while a daemon runs on the data dir.
  int cleanup_network();

 private:
  void start();
  void lock_data_dir();
  void register_node();
  void keep_node_alive();
  void write_heartbeat();
  void on_signal(int signo);
  void reload();
  void begin_shutdown();
  void stop_plugins();
  std::string node_record() const;

  DaemonConfig config_;
  uv_loop_t loop_{};
  std::unique_ptr<PluginHost> plugins_;
  std::unique_ptr<StoreClient> store_;
  std::unique_ptr<ApiServer> api_;
  std::unique_ptr<Evaluator> evaluator_;
  std::unique_ptr<RuntimeClient> runtime_;
  std::unique_ptr<Reconciler> reconciler_;
  uv_signal_t sig_term_{}, sig_int_{}, sig_hup_{};
  uv_timer_t heartbeat_{};
  int64_t lease_ = 0;
  bool store_trouble_ = false;  // the last lease renewal failed (store away)
  bool heartbeat_in_flight_ = false;
  int lock_fd_ = -1;
  bool stopping_ = false;
  uint64_t started_ms_ = 0;
};

}  // namespace flotilla
