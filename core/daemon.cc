#include "daemon.h"

#include <flotilla/network.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "node/confine.h"
#include "error.h"
#include "flotilla_build_config.h"
#include "keyspace.h"
#include "log.h"
#include "rfc3339.h"

namespace flotilla {

namespace {

constexpr uint64_t kShutdownGraceMs = 10000;

// Total CPU in MHz as the scheduler counts it: cores x nominal clock.
int64_t cpu_mhz_total() {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  double mhz = 0;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("cpu MHz", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) mhz = std::atof(line.c_str() + colon + 1);
      break;
    }
  }
  if (mhz <= 0) mhz = 1000;  // some virtual machines do not say
  return static_cast<int64_t>(cores > 0 ? cores : 1) * static_cast<int64_t>(mhz);
}

}  // namespace

Daemon::Daemon(DaemonConfig config) : config_(std::move(config)) {
  uv_loop_init(&loop_);
}

Daemon::~Daemon() {
  evaluator_.reset();
  reconciler_.reset();
  runtime_.reset();
  api_.reset();
  store_.reset();
  plugins_.reset();
  // Let close callbacks run so every handle is freed.
  uv_run(&loop_, UV_RUN_NOWAIT);
  if (uv_loop_close(&loop_) != 0) log::debug("core", "event loop closed with handles still open");
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void Daemon::check(const DaemonConfig &config) {
  // Opening checks files, pins, entries and start order; nothing is
  // initialised, so a temporary loop is enough.
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    PluginHost host(&loop, {config.node.name, config.node.data_dir, config.path});
    host.check(config.plugins);
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
}

void Daemon::lock_data_dir() {
  std::error_code ec;
  std::filesystem::create_directories(config_.node.data_dir, ec);
  if (ec)
    throw Error(FLOTILLA_E_IO, "cannot create node.data_dir " + config_.node.data_dir + ": " +
                                   ec.message());
  ::chmod(config_.node.data_dir.c_str(), 0700);
  std::string lock_path = config_.node.data_dir + "/flotillad.lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0)
    throw Error(FLOTILLA_E_IO, "cannot open " + lock_path + ": " + std::strerror(errno));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    std::string pid;
    std::ifstream(lock_path) >> pid;
    throw Error(FLOTILLA_E_EXISTS,
                "another flotillad (pid " + (pid.empty() ? std::string("?") : pid) +
                    ") is using node.data_dir " + config_.node.data_dir +
                    "; stop it first, or give this one its own data_dir");
  }
  std::string me = std::to_string(getpid()) + "\n";
  if (ftruncate(lock_fd_, 0) == 0 && ::write(lock_fd_, me.data(), me.size()) < 0)
    log::warn("core", "cannot write pid to " + lock_path);
}

std::string Daemon::node_record() const {
  struct sysinfo si{};
  sysinfo(&si);
  struct statvfs vfs{};
  statvfs(config_.node.data_dir.c_str(), &vfs);
  struct utsname un{};
  uname(&un);
  nlohmann::json attrs = {{"os", "linux"},
                          {"arch", un.machine},
                          {"kernel", un.release},
                          {"datacenter", config_.node.datacenter}};
  for (const auto &[k, v] : config_.node.attributes) attrs[k] = v;
  nlohmann::json plugins = nlohmann::json::array();
  for (const auto &p : plugins_->list()) plugins.push_back({{"name", p.name}, {"id", p.id}, {"version", p.version}});
  nlohmann::json j = {
      {"name", config_.node.name},
      {"datacenter", config_.node.datacenter},
      {"status", "ready"},
      {"eligible", runtime_ != nullptr},
      {"version", FLOTILLA_VERSION},
      {"started_at", rfc3339_now()},
      {"resources",
       {{"cpu_mhz", cpu_mhz_total()},
        {"memory_mb", static_cast<int64_t>(si.totalram * si.mem_unit / (1024 * 1024))},
        {"disk_mb", static_cast<int64_t>(vfs.f_bavail * vfs.f_frsize / (1024 * 1024))}}},
      {"attributes", attrs},
      {"plugins", plugins},
  };
  // Devices the scheduler may hand out by count ([task.resources] devices).
  nlohmann::json devices = nlohmann::json::object();
  for (const auto &[name, count] : config_.node.devices) devices[name] = count;
  j["devices"] = devices;
  return j.dump();
}

// The node record lives under a lease: if this daemon dies, the record
// disappears after the TTL and the cluster knows the node is gone.
void Daemon::register_node() {
  store_->lease_grant(config_.cluster.lease_ttl_ms / 1000, [this](StoreResult r, int64_t lease, int64_t) {
    if (stopping_) return;
    if (!r.ok()) {
      log::error("core", "cannot register node: lease grant failed: " + r.message +
                             "; retrying");
      return;  // the heartbeat timer retries
    }
    lease_ = lease;
    store_->put(keyspace::kNodes + config_.node.name, node_record(),
                [this](StoreResult r, int64_t rev) {
                  if (!r.ok()) {
                    log::error("core", "cannot write node record: " + r.message);
                    lease_ = 0;
                    return;
                  }
                  log::info("core", "node registered",
                            {{"node", config_.node.name}, {"revision", std::to_string(rev)}});
                  write_heartbeat();
                },
                lease_);
  });
}

// When this node last renewed its lease, for `flotilla node status`: the
// store interface cannot tell another node's lease's remaining TTL, so each
// node says it, in a small key of its own under the same lease (gone with
// it), once per renewal. Apart from the node record so that nothing that
// watches nodes (the scheduler's placement, blocking queries on nodes)
// reads the whole record again for it. The write load: core/README.md.
void Daemon::write_heartbeat() {
  if (stopping_ || lease_ == 0 || heartbeat_in_flight_) return;
  heartbeat_in_flight_ = true;
  auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  nlohmann::json hb = {{"at", rfc3339_now(true)},
                       {"at_ms", now_ms},
                       {"every_ms", config_.cluster.lease_ttl_ms / 3},
                       {"ttl_ms", config_.cluster.lease_ttl_ms}};
  store_->put(
      keyspace::kHeartbeats + config_.node.name, hb.dump(),
      [this](StoreResult r, int64_t) {
        heartbeat_in_flight_ = false;
        if (!r.ok() && r.status != FLOTILLA_E_UNAVAILABLE && !stopping_)
          log::warn("core", "cannot write the node's heartbeat: " + r.message);
      },
      lease_);
}

void Daemon::keep_node_alive() {
  if (stopping_) return;
  if (lease_ == 0) {
    register_node();
    return;
  }
  store_->lease_keepalive(lease_, [this](StoreResult r, int64_t, int64_t) {
    if (stopping_) return;
    if (r.ok()) {
      if (store_trouble_) log::info("core", "node lease renewed again: the store answers");
      store_trouble_ = false;
      write_heartbeat();
      return;
    }
    if (r.status != FLOTILLA_E_NOT_FOUND) {
      // The store is away (or slow): the lease may well outlive this (etcd
      // extends every lease when it comes back), so keep renewing it rather
      // than registering again under a new one.
      if (!store_trouble_)
        log::warn("core", "cannot renew the node lease (" + r.message + "); retrying");
      store_trouble_ = true;
      return;
    }
    log::warn("core", "node lease expired (" + r.message + "); registering again");
    lease_ = 0;
    register_node();
  });
}

void Daemon::start() {
  // Before any plugin runs and before libuv's thread pool starts: the
  // capability drop is per thread, and both are inherited by every child.
  if (config_.security.confine_daemon) {
    ConfineResult c = confine_daemon();
    std::string caps, calls;
    for (const auto &n : c.dropped_caps) caps += (caps.empty() ? "" : ",") + n;
    for (const auto &n : c.denied_syscalls) calls += (calls.empty() ? "" : ",") + n;
    log::info("core", "flotillad confined itself",
              {{"dropped_caps", caps}, {"denied_syscalls", calls}});
  }
  lock_data_dir();
  plugins_ = std::make_unique<PluginHost>(
      &loop_, PluginHost::Options{config_.node.name, config_.node.data_dir, config_.path});
  plugins_->start(config_.plugins);

  // Exactly one store: the one named in [store] plugin, or the only one.
  std::vector<std::string> stores = plugins_->providers(FLOTILLA_STORE_INTERFACE_ID);
  std::string chosen = config_.store_plugin;
  if (chosen.empty()) {
    if (stores.empty())
      throw Error(FLOTILLA_E_NOT_FOUND,
                  "config " + config_.path + ": no plugin provides " FLOTILLA_STORE_INTERFACE_ID
                  "; add a [plugin.store-local] table (one host) or [plugin.store-etcd] (a cluster)");
    if (stores.size() > 1) {
      std::string names;
      for (const auto &s : stores) names += (names.empty() ? "" : ", ") + s;
      throw Error(FLOTILLA_E_INVALID, "config " + config_.path + ": several plugins provide " +
                                          FLOTILLA_STORE_INTERFACE_ID + " (" + names +
                                          "); choose one with [store] plugin = \"<name>\"");
    }
    chosen = stores.front();
  }
  void *self = nullptr;
  auto *vt = plugins_->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self, chosen);
  if (!vt)
    throw Error(FLOTILLA_E_NOT_FOUND, "config " + config_.path + ": store.plugin \"" + chosen +
                                          "\" is not a loaded plugin that provides " +
                                          FLOTILLA_STORE_INTERFACE_ID);
  store_ = std::make_unique<StoreClient>(vt, self);

  ApiServer::Context api_ctx;
  api_ctx.loop = &loop_;
  api_ctx.plugins = plugins_.get();
  api_ctx.store = store_.get();
  api_ctx.config = &config_;
  api_ = std::make_unique<ApiServer>(std::move(api_ctx));
  api_->listen();

  // A node without a runtime plugin takes part in the cluster (store,
  // scheduling) but runs no allocations: it says so in its record.
  void *rt_self = nullptr;
  if (auto *rt = plugins_->find<flotilla_runtime_v1>(FLOTILLA_RUNTIME_INTERFACE_ID, &rt_self)) {
    runtime_ = std::make_unique<RuntimeClient>(rt, rt_self);
    reconciler_ = std::make_unique<Reconciler>(&loop_, store_.get(), runtime_.get(), plugins_.get(),
                                               config_.node.name);
    reconciler_->set_gc(config_.gc.terminal_after_ms, config_.gc.max_terminal);
    reconciler_->start();
  } else {
    log::info("core", "no plugin provides " FLOTILLA_RUNTIME_INTERFACE_ID
                      "; this node runs no allocations (add [plugin.runtime-runc])");
  }
  register_node();
  evaluator_ = std::make_unique<Evaluator>(&loop_, store_.get(), plugins_.get(), config_.node.name,
                                           config_.cluster.lease_ttl_ms,
                                           config_.cluster.leader_lease_ttl_ms);
  evaluator_->start();
  // The lease is renewed every third of its TTL: two renewals may be lost
  // before it expires.
  const uint64_t heartbeat_ms = static_cast<uint64_t>(config_.cluster.lease_ttl_ms / 3);
  uv_timer_init(&loop_, &heartbeat_);
  heartbeat_.data = this;
  uv_timer_start(
      &heartbeat_, [](uv_timer_t *t) { static_cast<Daemon *>(t->data)->keep_node_alive(); },
      heartbeat_ms, heartbeat_ms);

  for (auto [sig, signo] : {std::pair{&sig_term_, SIGTERM}, {&sig_int_, SIGINT}, {&sig_hup_, SIGHUP}}) {
    uv_signal_init(&loop_, sig);
    sig->data = this;
    uv_signal_start(sig, [](uv_signal_t *s, int n) { static_cast<Daemon *>(s->data)->on_signal(n); },
                    signo);
  }
  started_ms_ = uv_now(&loop_);
  plugins_->metrics().gauge_set("daemon_start_time_seconds", static_cast<double>(time(nullptr)));
  log::info("core", "flotillad ready", {{"node", config_.node.name},
                                        {"version", FLOTILLA_VERSION},
                                        {"api", config_.api.socket}});
}

void Daemon::on_signal(int signo) {
  if (signo == SIGHUP) {
    reload();
    return;
  }
  if (stopping_) {
    log::warn("core", "second stop signal: exiting now");
    _exit(1);
  }
  log::info("core", std::string("received ") + (signo == SIGTERM ? "SIGTERM" : "SIGINT") +
                        ": stopping (containers keep running)");
  begin_shutdown();
}

void Daemon::reload() {
  DaemonConfig next;
  try {
    next = load_config(config_.path);
  } catch (const ConfigError &e) {
    log::error("core", std::string("reload refused, the running configuration stays: ") + e.what());
    return;
  }
  std::vector<std::string> applied, not_applied;
  if (next.log.level != config_.log.level || next.log.format != config_.log.format) {
    log::configure(log::parse_level(next.log.level), log::parse_format(next.log.format));
    config_.log = next.log;
    applied.push_back("log");
  }
  if (next.node.attributes != config_.node.attributes) {
    config_.node.attributes = next.node.attributes;
    applied.push_back("node.attributes");
    if (lease_ != 0)
      store_->put(keyspace::kNodes + config_.node.name, node_record(),
                  [](StoreResult r, int64_t) {
                    if (!r.ok()) log::error("core", "cannot update node record: " + r.message);
                  },
                  lease_);
  }
  if (next.gc.terminal_after_ms != config_.gc.terminal_after_ms ||
      next.gc.max_terminal != config_.gc.max_terminal) {
    config_.gc = next.gc;
    if (reconciler_) reconciler_->set_gc(config_.gc.terminal_after_ms, config_.gc.max_terminal);
    applied.push_back("gc");
  }
  auto differs = [](const nlohmann::json &a, const nlohmann::json &b) { return a != b; };
  if (next.node.name != config_.node.name || next.node.data_dir != config_.node.data_dir ||
      next.node.datacenter != config_.node.datacenter)
    not_applied.push_back("node (name, data_dir, datacenter)");
  if (next.api.socket != config_.api.socket || next.api.tcp_listen != config_.api.tcp_listen ||
      next.api.socket_mode != config_.api.socket_mode ||
      next.api.socket_group != config_.api.socket_group || next.api.tls_cert != config_.api.tls_cert ||
      next.api.tls_key != config_.api.tls_key || next.api.tls_client_ca != config_.api.tls_client_ca)
    not_applied.push_back("api");
  if (next.plugin_dir != config_.plugin_dir || next.store_plugin != config_.store_plugin ||
      next.plugins.size() != config_.plugins.size())
    not_applied.push_back("plugins");
  else
    for (size_t i = 0; i < next.plugins.size(); ++i) {
      const auto &a = next.plugins[i], &b = config_.plugins[i];
      if (a.name != b.name || a.path != b.path || a.sha256 != b.sha256 || a.enabled != b.enabled ||
          differs(a.config, b.config))
        not_applied.push_back("plugin." + a.name);
    }
  if (next.security.confine_daemon != config_.security.confine_daemon)
    not_applied.push_back("security");
  std::string msg = "reloaded " + config_.path + ": ";
  msg += applied.empty() ? "nothing to apply" : "applied";
  for (const auto &a : applied) msg += " " + a;
  log::info("core", msg);
  if (!not_applied.empty()) {
    std::string what;
    for (const auto &n : not_applied) what += (what.empty() ? "" : ", ") + n;
    log::warn("core", "changed but not reloadable, restart flotillad to apply: " + what);
  }
}

void Daemon::begin_shutdown() {
  stopping_ = true;
  uv_timer_stop(&heartbeat_);
  api_->stop_accepting();
  api_->shutdown(kShutdownGraceMs, [this] {
    // Runs from inside a store callback: plugins are stopped on a later
    // loop turn, once the store's own code has returned.
    auto finish = [this] {
      auto *later = new uv_timer_t;
      uv_timer_init(&loop_, later);
      later->data = this;
      uv_timer_start(
          later,
          [](uv_timer_t *t) {
            static_cast<Daemon *>(t->data)->stop_plugins();
            uv_close(reinterpret_cast<uv_handle_t *>(t),
                     [](uv_handle_t *h) { delete reinterpret_cast<uv_timer_t *>(h); });
          },
          0, 0);
    };
    evaluator_->stop([this, finish] {
      if (lease_ == 0) return finish();
      // The node record goes with its lease, so the cluster sees this node
      // leave now rather than after the TTL.
      store_->lease_revoke(lease_, [finish](StoreResult r) {
        if (!r.ok()) log::warn("core", "cannot revoke node lease: " + r.message);
        finish();
      });
    });
  });
}

void Daemon::stop_plugins() {
  evaluator_.reset();
  reconciler_.reset();  // containers keep running
  runtime_.reset();
  plugins_->stop();
  uv_close(reinterpret_cast<uv_handle_t *>(&heartbeat_), nullptr);
  for (uv_signal_t *s : {&sig_term_, &sig_int_, &sig_hup_})
    uv_close(reinterpret_cast<uv_handle_t *>(s), nullptr);
  log::info("core", "flotillad stopped");
}

// The network plugin is asked through the event bus (docs/abi-json.md,
// "network.cleanup"): it answers once everything it made is gone.
int Daemon::cleanup_network() {
  lock_data_dir();
  plugins_ = std::make_unique<PluginHost>(
      &loop_, PluginHost::Options{config_.node.name, config_.node.data_dir, config_.path});
  plugins_->start(config_.plugins);
  void *self = nullptr;
  if (!plugins_->find<flotilla_network_v1>(FLOTILLA_NETWORK_INTERFACE_ID, &self)) {
    log::error("core", "--cleanup-network: no plugin provides " FLOTILLA_NETWORK_INTERFACE_ID
                       " in " + config_.path + "; nothing to clean up");
    plugins_->stop();
    return 1;
  }
  bool done = false, ok = false;
  uint64_t sub = plugins_->events().subscribe(
      "network.cleanup.result", [&](const std::string &, const std::string &payload) {
        nlohmann::json r = nlohmann::json::parse(payload, nullptr, false);
        done = true;
        ok = r.is_object() && r.value("ok", false);
        if (!ok)
          log::error("core", "--cleanup-network failed: " +
                                 (r.is_object() ? r.value("error", "") : std::string("?")));
      });
  plugins_->events().publish("network.cleanup.request", "{}");
  uv_timer_t guard;
  uv_timer_init(&loop_, &guard);
  guard.data = &done;
  uv_timer_start(
      &guard,
      [](uv_timer_t *t) {
        log::error("core", "--cleanup-network: the network plugin did not answer in 60 s");
        *static_cast<bool *>(t->data) = true;
      },
      60000, 0);
  while (!done && uv_run(&loop_, UV_RUN_ONCE) != 0) {
  }
  uv_close(reinterpret_cast<uv_handle_t *>(&guard), nullptr);
  plugins_->events().unsubscribe(sub);
  if (ok) log::info("core", "--cleanup-network: the network plugin removed what it made");
  plugins_->stop();
  uv_run(&loop_, UV_RUN_NOWAIT);
  return ok ? 0 : 1;
}

int Daemon::run() {
  start();
  uv_run(&loop_, UV_RUN_DEFAULT);
  return 0;
}

}  // namespace flotilla
