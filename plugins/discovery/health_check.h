// Health checks on the daemon's loop: no thread per check. A tcp check is a
// non-blocking connect; an http check a GET whose status line is read; a
// grpc check one grpc.health.v1 Check call over HTTP/2 (grpc_health.h);
// http and grpc checks may run over TLS (tls_session.h, memory BIOs: the
// socket stays the check's own); an exec check a command run by the
// runtime plugin; each run has its own timeout timer and the next run
// starts `interval` after the previous one began. The threshold logic
// (starting → passing after success_before_passing successes; → critical
// after failures_before_critical failures in a row) lives in CheckState,
// which the unit tests drive without sockets.
#pragma once

#include <flotilla/host.h>
#include <flotilla/runtime.h>
#include <flotilla/version.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "discovery_config.h"
#include "grpc_health.h"
#include "tls_session.h"

namespace flotilla::discovery {

struct CheckSpec {
  std::string type;  // "tcp" | "http" | "exec" | "grpc"
  uint32_t interval_ms = 10000;
  uint32_t timeout_ms = 2000;
  uint32_t success_before_passing = 1;
  uint32_t failures_before_critical = 1;
  std::string path = "/";  // http
  int expect_status = 0;   // http: 0 means any 2xx
  std::string grpc_service;  // grpc: "" asks about the whole server
  bool tls = false;               // http, grpc: over TLS (tls_session.h)
  bool tls_skip_verify = false;   // accept any certificate
  std::string tls_server_name;    // SNI and the name to verify; "" = the address
  std::string tls_ca_file;        // the plugin's check_ca_file; "" = the system's
  std::string address;     // filled from the endpoint
  uint16_t port = 0;
  std::vector<std::string> argv;  // exec: command, then args
  std::string container;          // exec: the runtime's container id
};

// exec checks run through flotilla.runtime/1 exec (ABI 1.3).
struct ExecRuntime {
  const flotilla_runtime_v1 *rt = nullptr;
  void *self = nullptr;
};
// Output of an exec check kept per run (the runtime reads and drops the rest).
constexpr uint64_t kExecOutputLimit = 4096;

// The runtime plugin that runs exec checks, or "" and a message saying why
// there is none: no runtime loaded, or one whose vtable predates ABI 1.3.
std::string find_exec_runtime(const flotilla_host *host, ExecRuntime &out);

// Reads one check from the registration JSON; "" or a message naming the
// field. An exec check's container comes from the service, not the check.
std::string parse_check(const nlohmann::json &j, CheckSpec &out);

enum class Health { starting, passing, critical };
const char *health_name(Health h);

class CheckState {
 public:
  explicit CheckState(const CheckSpec &spec) : spec_(spec) {}
  // One result; true when the health changed.
  bool record(bool ok);
  Health health() const { return health_; }
  uint32_t consecutive_failures() const { return failures_; }

 private:
  const CheckSpec &spec_;
  Health health_ = Health::starting;
  uint32_t successes_ = 0, failures_ = 0;
};

class HealthCheck {
 public:
  // [loop-thread] Called after every run, with its output ("connected",
  // "HTTP 200", "timed out after 2000 ms", ...).
  using ResultFn = std::function<void(bool ok, const std::string &output)>;

  // runtime: used by exec checks only (find_exec_runtime).
  HealthCheck(const flotilla_host *host, CheckSpec spec, ResultFn on_result,
              ExecRuntime runtime = {});
  ~HealthCheck();  // stops the timers and closes a run in progress
  HealthCheck(const HealthCheck &) = delete;
  HealthCheck &operator=(const HealthCheck &) = delete;

  void start();  // first run at once
  const CheckSpec &spec() const { return spec_; }

 private:
  static void on_interval(void *user);
  static void on_timeout(void *user);
  static void on_fd(void *user, int fd, uint32_t events);
  void run();
  void end(bool ok, const std::string &output);
  void close_run();
  void on_event(uint32_t events);
  void on_grpc_event(uint32_t events);
  void watch(uint32_t events);
  bool send_pending(std::string &error);
  bool receive(std::string &plain, bool &eof, std::string &error);
  void queue(const std::string &plain);
  void run_exec();
  static void on_exec(void *user, flotilla_status status, const flotilla_exec_result *result);
  bool running() const { return fd_ >= 0 || exec_id_ != 0; }

  const flotilla_host *host_;
  CheckSpec spec_;
  ResultFn on_result_;
  SocketAddress target_;
  bool target_ok_ = false;
  flotilla_handle interval_ = 0, timeout_ = 0, watch_ = 0;
  uint32_t watched_ = 0;  // the events watch_ is for
  int fd_ = -1;
  bool connected_ = false;
  std::string http_request_;       // http: the GET, in plaintext
  std::string request_, response_;  // request_: bytes for the socket (TLS records with tls)
  size_t sent_ = 0;
  std::string authority_;                // grpc: host:port
  std::unique_ptr<GrpcHealthCall> grpc_;  // grpc: the call in flight
  std::shared_ptr<TlsContext> tls_ctx_;    // tls: made once
  std::string tls_ctx_error_;              // tls: why there is no context
  std::unique_ptr<TlsSession> tls_;        // tls: the run's session
  ExecRuntime runtime_;
  uint64_t exec_id_ = 0;  // an exec in flight
};

}  // namespace flotilla::discovery
