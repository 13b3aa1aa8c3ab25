// The HTTP/JSON API: a Unix socket (always) and optionally TCP with TLS
// client certificates. Versioned paths under /v1. Every bad request gets a
// 4xx with a JSON body {"error":{"code":..., "message":..., ...}} and changes
// nothing. [loop-thread] throughout.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "config.h"
#include "plugin_host.h"
#include "store_client.h"

namespace flotilla {

class ApiServer {
 public:
  struct Context {
    uv_loop_t *loop = nullptr;
    PluginHost *plugins = nullptr;
    StoreClient *store = nullptr;
    const DaemonConfig *config = nullptr;
  };

  explicit ApiServer(Context ctx);
  ~ApiServer();
  ApiServer(const ApiServer &) = delete;
  ApiServer &operator=(const ApiServer &) = delete;

  // Bind and listen on the configured Unix socket (mode, group) and, if
  // configured, the TLS TCP listener. Throws flotilla::Error naming the
  // socket path or address and the reason.
  void listen();

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
