// The plugin host: opens plugin shared objects, checks their entry against
// the ABI rules, starts them in dependency order and serves each one its
// flotilla_host table (abi/flotilla/host.h). Everything here runs on the
// loop thread unless a comment says otherwise.
#pragma once

#include <flotilla/entry.h>
#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"
#include "error.h"

namespace flotilla {

// Counters and gauges from the core and plugins; [any-thread].
class MetricsRegistry {
 public:
  void counter_add(std::string_view name, double delta);
  void gauge_set(std::string_view name, double value);
  // Prometheus text exposition format, names prefixed "flotilla_".
  std::string render_prometheus() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, double, std::less<>> counters_, gauges_;
};

// Topic-prefix publish/subscribe between plugins and the core. Delivery is
// deferred to a later loop iteration, in order of publication.
class EventBus {
 public:
  using Callback = std::function<void(const std::string &topic, const std::string &json)>;
  explicit EventBus(uv_loop_t *loop);
  ~EventBus();
  EventBus(const EventBus &) = delete;
  EventBus &operator=(const EventBus &) = delete;

  void publish(std::string topic, std::string json);
  uint64_t subscribe(std::string topic_prefix, Callback cb);
  void unsubscribe(uint64_t id);

 private:
  static void on_async(uv_async_t *handle);
  void deliver();
  uv_async_t *async_;  // closed (and freed) asynchronously in the destructor
  std::vector<std::pair<std::string, std::string>> queue_;
  std::map<uint64_t, std::pair<std::string, Callback>> subs_;
  uint64_t next_id_ = 1;
};

struct PluginInfo {
  std::string name;  // [plugin.<name>]
  std::string id;    // reverse-DNS id from the entry
  std::string version;
  std::string description;
  std::string path;
  std::string sha256;  // of the file as loaded
  std::vector<std::string> provides, depends_on;
  uint32_t abi_major = 0, abi_minor = 0;  // as built; abi_minor agreed = min(host, plugin)
};

// The config problems of every plugin, found before any started; what()
// lists them one a line.
class PluginConfigError : public Error {
 public:
  explicit PluginConfigError(std::vector<std::string> problems)
      : Error(FLOTILLA_E_INVALID, join_lines(problems)), problems_(std::move(problems)) {}
  const std::vector<std::string> &problems() const { return problems_; }

 private:
  static std::string join_lines(const std::vector<std::string> &v) {
    std::string out;
    for (const auto &s : v) out += (out.empty() ? "" : "\n") + s;
    return out;
  }
  std::vector<std::string> problems_;
};

class PluginHost {
 public:
  struct Options {
    std::string node_name;
    std::string data_dir;     // each plugin gets <data_dir>/plugins/<name>
    std::string config_path;  // for messages that point at a line
  };

  PluginHost(uv_loop_t *loop, Options options);
  ~PluginHost();  // stop()
  PluginHost(const PluginHost &) = delete;
  PluginHost &operator=(const PluginHost &) = delete;

  // Open every enabled plugin, check it, order by depends_on, init in that
  // order. Throws flotilla::Error whose message names the file and the fix;
  // plugins already initialised are deinitialised again before it throws.
  void start(const std::vector<PluginSettings> &plugins);

  // Open and check every enabled plugin and their start order, as start()
  // does, and run every plugin's check_config (ABI 1.2) with
  // FLOTILLA_CHECK_ALL, but initialise nothing (flotillad --check-config).
  // Throws like start(); config problems of all plugins together as
  // PluginConfigError.
  void check(const std::vector<PluginSettings> &plugins);

  // deinit every plugin in reverse start order, then dlclose. Idempotent.
  void stop();

  // A vtable serving interface_id, from the plugin named plugin_name or, if
  // empty, the first started plugin that provides it; nullptr if none.
  const void *find_interface(std::string_view interface_id, void **self_out,
                             std::string_view plugin_name = {}) const;
  template <class T>
  const T *find(std::string_view interface_id, void **self_out,
                std::string_view plugin_name = {}) const {
    return static_cast<const T *>(find_interface(interface_id, self_out, plugin_name));
  }
  // Names of started plugins that provide interface_id, in start order.
  std::vector<std::string> providers(std::string_view interface_id) const;

  std::vector<PluginInfo> list() const;  // started plugins, in start order

  uv_loop_t *loop() const { return loop_; }
  const Options &options() const { return options_; }
  MetricsRegistry &metrics() { return metrics_; }
  EventBus &events() { return events_; }

  // [any-thread] The message a plugin last gave set_error on this thread;
  // read it in the callback that carries the failed status.
  static std::string last_error();
  static void clear_last_error();

  struct Loaded;  // one opened plugin; defined in plugin_host.cc

 private:
  std::vector<std::shared_ptr<Loaded>> open_all(const std::vector<PluginSettings> &plugins);
  // Each plugin's check_config; every problem, each naming file, line and key.
  std::vector<std::string> check_configs(const std::vector<std::shared_ptr<Loaded>> &opened,
                                         uint32_t flags);

  uv_loop_t *loop_;
  Options options_;
  MetricsRegistry metrics_;
  EventBus events_;
  std::vector<std::shared_ptr<Loaded>> started_;  // in init order
};

// SHA-256 of a file as lowercase hex. Throws flotilla::Error.
std::string sha256_file(const std::string &path);

}  // namespace flotilla
