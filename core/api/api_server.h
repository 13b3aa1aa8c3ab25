// The HTTP/JSON API: a Unix socket (always) and optionally TCP with TLS
// client certificates. Versioned paths under /v1. Every bad request gets a
// 4xx with a JSON body {"error":{"code":..., "message":..., ...}} and changes
// nothing. [loop-thread] throughout. docs/api.md describes every route.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"
#include "api/http_server.h"
#include "plugin_host.h"
#include "store_client.h"

namespace flotilla {

// One plugin's vtable for an interface, as PluginHost::find_interface gives it.
struct PluginRef {
  std::string plugin;  // the operator's name for it, [plugin.<name>]
  const void *vtable = nullptr;
  void *self = nullptr;
};

class ApiServer {
 public:
  struct Context {
    uv_loop_t *loop = nullptr;
    PluginHost *plugins = nullptr;  // may be null: no plugin routes, no admission
    StoreClient *store = nullptr;   // may be null: store-backed routes answer 503
    const DaemonConfig *config = nullptr;
    http::Limits limits;  // request size limits and the idle timeout

    // Test seams, for fakes that are not loaded through a PluginHost. When
    // set, they replace `plugins` for finding the plugins that serve an
    // interface (security admission, runtime logs) and for reading the
    // message a plugin gave set_error.
    std::function<std::vector<PluginRef>(std::string_view interface_id)> find_providers;
    std::function<std::string()> plugin_error;
  };

  explicit ApiServer(Context ctx);
  ~ApiServer();
  ApiServer(const ApiServer &) = delete;
  ApiServer &operator=(const ApiServer &) = delete;

  // Bind and listen on the configured Unix socket (mode, group) and, if
  // configured, the TLS TCP listener. Throws flotilla::Error naming the
  // socket path or address and the reason.
  void listen();

  // The bound TCP port when api.tcp_listen is set (useful with port 0), else 0.
  int tls_port() const;

  // Stop accepting new connections (SIGTERM, first step).
  void stop_accepting();

  // Let in-flight requests finish (at most timeout_ms), then close every
  // connection and call done.
  void shutdown(uint64_t timeout_ms, std::function<void()> done);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla
