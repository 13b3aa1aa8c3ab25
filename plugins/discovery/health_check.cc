#include "health_check.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace flotilla::discovery {

using json = nlohmann::json;

const char *health_name(Health h) {
  switch (h) {
    case Health::passing:
      return "passing";
    case Health::critical:
      return "critical";
    default:
      return "starting";
  }
}

std::string parse_check(const json &j, CheckSpec &out) {
  if (!j.is_object()) return "a check must be an object";
  out.type = j.value("type", "");
  if (out.type != "tcp" && out.type != "http" && out.type != "exec" && out.type != "grpc")
    return "type: \"" + out.type +
           "\" is not a check type this plugin runs (tcp, http, exec, grpc)";
  auto num = [&](const char *key, uint32_t &v, uint32_t lo) -> std::string {
    if (!j.contains(key)) return "";
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < lo ||
        j[key].get<int64_t>() > 86400000)
      return std::string(key) + ": must be a whole number >= " + std::to_string(lo);
    v = static_cast<uint32_t>(j[key].get<int64_t>());
    return "";
  };
  for (auto [key, field, lo] :
       {std::tuple{"interval_ms", &out.interval_ms, 10u},
        std::tuple{"timeout_ms", &out.timeout_ms, 1u},
        std::tuple{"success_before_passing", &out.success_before_passing, 1u},
        std::tuple{"failures_before_critical", &out.failures_before_critical, 1u}}) {
    std::string e = num(key, *field, lo);
    if (!e.empty()) return e;
  }
  if (j.contains("path")) {
    if (!j["path"].is_string() || j["path"].get<std::string>().empty() ||
        j["path"].get<std::string>()[0] != '/')
      return "path: must be an absolute HTTP path, e.g. \"/health\"";
    out.path = j["path"].get<std::string>();
  }
  if (j.contains("expect_status")) {
    if (!j["expect_status"].is_number_integer() || j["expect_status"].get<int>() < 100 ||
        j["expect_status"].get<int>() > 599)
      return "expect_status: must be an HTTP status from 100 to 599";
    out.expect_status = j["expect_status"].get<int>();
  }
  if (j.contains("grpc_service")) {
    if (!j["grpc_service"].is_string() || j["grpc_service"].get<std::string>().size() > 256)
      return "grpc_service: must be a gRPC service name of at most 256 characters";
    out.grpc_service = j["grpc_service"].get<std::string>();
  }
  for (auto [key, field] : {std::pair{"tls", &out.tls}, std::pair{"tls_skip_verify", &out.tls_skip_verify}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_boolean()) return std::string(key) + ": must be true or false";
    *field = j[key].get<bool>();
  }
  if (j.contains("tls_server_name")) {
    if (!j["tls_server_name"].is_string() || j["tls_server_name"].get<std::string>().size() > 253)
      return "tls_server_name: must be a host name of at most 253 characters";
    out.tls_server_name = j["tls_server_name"].get<std::string>();
  }
  if (out.tls && out.type != "http" && out.type != "grpc")
    return "tls: only http and grpc checks run over TLS";
  if (out.type == "exec") {
    if (!j.contains("command") || !j["command"].is_string() ||
        j["command"].get<std::string>().empty())
      return "command: an exec check needs the program to run, e.g. \"test\"";
    out.argv = {j["command"].get<std::string>()};
    if (j.contains("args")) {
      if (!j["args"].is_array()) return "args: must be an array of strings";
      for (size_t i = 0; i < j["args"].size(); ++i) {
        if (!j["args"][i].is_string()) return "args[" + std::to_string(i) + "]: must be a string";
        out.argv.push_back(j["args"][i].get<std::string>());
      }
    }
  }
  return "";
}

std::string find_exec_runtime(const flotilla_host *host, ExecRuntime &out) {
  void *self = nullptr;
  auto *rt = static_cast<const flotilla_runtime_v1 *>(
      host->get_interface(host->host_ctx, FLOTILLA_RUNTIME_INTERFACE_ID, &self));
  if (!rt)
    return "exec checks need a runtime plugin (" FLOTILLA_RUNTIME_INTERFACE_ID
           " with exec, ABI 1.3); none is loaded";
  if (!FLOTILLA_HAS_FIELD(rt, flotilla_runtime_v1, exec_cancel) || !rt->exec || !rt->exec_cancel)
    return "exec checks need runtime ABI 1.3: the loaded runtime "
           "plugin's " FLOTILLA_RUNTIME_INTERFACE_ID " has no exec (its vtable is " +
           std::to_string(rt->struct_size) + " bytes, 1.3's is " +
           std::to_string(sizeof(flotilla_runtime_v1)) + "); update the runtime plugin";
  out.rt = rt;
  out.self = self;
  return "";
}

bool CheckState::record(bool ok) {
  const Health before = health_;
  if (ok) {
    failures_ = 0;
    if (++successes_ >= spec_.success_before_passing) health_ = Health::passing;
  } else {
    successes_ = 0;
    if (++failures_ >= spec_.failures_before_critical) health_ = Health::critical;
  }
  return health_ != before;
}

HealthCheck::HealthCheck(const flotilla_host *host, CheckSpec spec, ResultFn on_result,
                         ExecRuntime runtime)
    : host_(host), spec_(std::move(spec)), on_result_(std::move(on_result)), runtime_(runtime) {
  std::string a =
      spec_.address.find(':') != std::string::npos ? "[" + spec_.address + "]" : spec_.address;
  target_ok_ = parse_socket_address(a + ":" + std::to_string(spec_.port), 0, target_);
  authority_ = a + ":" + std::to_string(spec_.port);
  if (spec_.type == "http") {
    const std::string host =
        spec_.tls_server_name.empty() ? authority_ : spec_.tls_server_name + ":" + std::to_string(spec_.port);
    http_request_ = "GET " + spec_.path + " HTTP/1.0\r\nHost: " + host +
                    "\r\nUser-Agent: flotilla-health-check\r\nConnection: close\r\n\r\n";
  }
  if (spec_.tls && (spec_.type == "http" || spec_.type == "grpc")) {
    TlsOptions o;
    o.skip_verify = spec_.tls_skip_verify;
    o.server_name = spec_.tls_server_name;
    if (o.server_name.empty()) o.verify_ip = spec_.address;
    o.ca_file = spec_.tls_ca_file;
    o.alpn = {spec_.type == "grpc" ? "h2" : "http/1.1"};
    tls_ctx_ = TlsContext::make(o, tls_ctx_error_);
  }
}

HealthCheck::~HealthCheck() {
  if (interval_) host_->timer_stop(host_->host_ctx, interval_);
  close_run();
}

void HealthCheck::start() {
  run();
  interval_ =
      host_->timer_start(host_->host_ctx, spec_.interval_ms, spec_.interval_ms, on_interval, this);
}

void HealthCheck::on_interval(void *user) {
  auto *c = static_cast<HealthCheck *>(user);
  // A run still going when the next is due has taken longer than the
  // interval: it ends as a failure, then the next one starts.
  if (c->running()) c->end(false, "still running when the next check was due");
  c->run();
}

void HealthCheck::on_timeout(void *user) {
  auto *c = static_cast<HealthCheck *>(user);
  c->timeout_ = 0;
  c->end(false, "timed out after " + std::to_string(c->spec_.timeout_ms) + " ms");
}

void HealthCheck::on_fd(void *user, int, uint32_t events) {
  static_cast<HealthCheck *>(user)->on_event(events);
}

void HealthCheck::close_run() {
  if (timeout_) host_->timer_stop(host_->host_ctx, timeout_);
  timeout_ = 0;
  if (watch_) host_->fd_unwatch(host_->host_ctx, watch_);
  watch_ = 0;
  watched_ = 0;
  grpc_.reset();
  tls_.reset();
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  // Killed by the runtime; its callback does not come any more.
  if (exec_id_) runtime_.rt->exec_cancel(runtime_.self, exec_id_);
  exec_id_ = 0;
}

void HealthCheck::end(bool ok, const std::string &output) {
  close_run();
  on_result_(ok, output);  // may destroy this check: nothing after it
}

void HealthCheck::run() {
  if (spec_.type == "exec") return run_exec();
  if (!target_ok_) return end(false, "no address to check (\"" + spec_.address + "\")");
  if (spec_.tls && !tls_ctx_) return end(false, tls_ctx_error_);
  fd_ = socket(target_.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return end(false, std::string("socket: ") + std::strerror(errno));
  connected_ = false;
  sent_ = 0;
  response_.clear();
  request_.clear();
  int rc = connect(fd_, reinterpret_cast<const sockaddr *>(&target_.ss), target_.len);
  if (rc < 0 && errno != EINPROGRESS)
    return end(false, "connect " + target_.text() + ": " + std::strerror(errno));
  watch(FLOTILLA_FD_WRITABLE);
  timeout_ = host_->timer_start(host_->host_ctx, spec_.timeout_ms, 0, on_timeout, this);
}

// Sends what is left of request_ until the socket would block; false with
// the error when the send fails.
bool HealthCheck::send_pending(std::string &error) {
  while (sent_ < request_.size()) {
    ssize_t n = send(fd_, request_.data() + sent_, request_.size() - sent_, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN) return true;
      error = std::string("send: ") + std::strerror(errno);
      return false;
    }
    sent_ += static_cast<size_t>(n);
  }
  return true;
}

void HealthCheck::watch(uint32_t events) {
  if (watch_ && watched_ == events) return;
  if (watch_) host_->fd_unwatch(host_->host_ctx, watch_);
  watch_ = host_->fd_watch(host_->host_ctx, fd_, events, on_fd, this);
  watched_ = events;
}

void HealthCheck::on_event(uint32_t events) {
  if (!connected_) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return end(false, "connect " + target_.text() + ": " + std::strerror(err));
    connected_ = true;
    if (spec_.type == "tcp") return end(true, "connected to " + target_.text());
    if (spec_.tls) {
      std::string error;
      tls_ = TlsSession::make(tls_ctx_, error);
      if (!tls_) return end(false, error);
      request_ = tls_->take_wire();  // the ClientHello
    }
    if (spec_.type == "http") queue(http_request_);
  }
  if (spec_.type == "grpc") return on_grpc_event(events);
  std::string error;
  if (events & FLOTILLA_FD_READABLE) {
    std::string plain;
    bool eof = false;
    if (!receive(plain, eof, error)) return end(false, error);
    response_ += plain;
    auto eol = response_.find("\r\n");
    if (eol != std::string::npos) {
      // "HTTP/1.1 200 OK"
      std::string line = response_.substr(0, eol);
      int status = 0;
      auto sp = line.find(' ');
      if (line.rfind("HTTP/", 0) == 0 && sp != std::string::npos)
        status = std::atoi(line.c_str() + sp + 1);
      if (status == 0) return end(false, "not an HTTP status line: " + line.substr(0, 80));
      const bool ok =
          spec_.expect_status ? status == spec_.expect_status : (status >= 200 && status < 300);
      return end(ok, "HTTP " + std::to_string(status) + (spec_.tls ? " over TLS" : ""));
    }
    if (response_.size() > 4096) return end(false, "no HTTP status line");
    if (eof) return end(false, "connection closed before an HTTP status line");
  }
  if (!send_pending(error)) return end(false, error);
  watch(FLOTILLA_FD_READABLE | (sent_ < request_.size() ? FLOTILLA_FD_WRITABLE : 0u));
}

// Plaintext for the peer: as it is, or through the TLS session.
void HealthCheck::queue(const std::string &plain) {
  if (!tls_) {
    request_ += plain;
    return;
  }
  tls_->write(plain);
  request_ += tls_->take_wire();
}

// Reads what the socket holds; the plaintext in plain, eof when the peer
// closed. With TLS, the session's answers (the handshake's) are queued to
// send. False with the error when the read or the TLS session failed.
bool HealthCheck::receive(std::string &plain, bool &eof, std::string &error) {
  uint8_t buf[4096];
  for (;;) {
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      if (!tls_) {
        plain.append(reinterpret_cast<const char *>(buf), static_cast<size_t>(n));
      } else if (!tls_->feed(buf, static_cast<size_t>(n))) {
        error = tls_->error();
        return false;
      }
      continue;
    }
    if (n == 0) {
      eof = true;
    } else if (errno != EAGAIN && errno != EINTR) {
      error = std::string("recv: ") + std::strerror(errno);
      return false;
    }
    break;
  }
  if (tls_) {
    plain += tls_->take_plain();
    if (eof) tls_->closed();
    if (tls_->failed()) {
      error = tls_->error();
      return false;
    }
    if (tls_->peer_finished()) eof = true;
    request_ += tls_->take_wire();
  }
  return true;
}

// One grpc.health.v1 call: the session's bytes go out as the socket takes
// them, what comes in goes to the session, until its stream closes.
void HealthCheck::on_grpc_event(uint32_t events) {
  if (!grpc_) {
    grpc_ = std::make_unique<GrpcHealthCall>(authority_, spec_.grpc_service, spec_.timeout_ms);
    queue(grpc_->output());
  }
  std::string error;
  if (events & FLOTILLA_FD_READABLE) {
    std::string plain;
    bool eof = false;
    if (!receive(plain, eof, error)) return end(false, error);
    if (!plain.empty()) grpc_->input(reinterpret_cast<const uint8_t *>(plain.data()), plain.size());
    if (eof && !grpc_->done()) grpc_->closed();
    if (!grpc_->done()) queue(grpc_->output());
  }
  if (grpc_->done()) {
    // Copied: end() destroys the call before it reports.
    const bool ok = grpc_->passed();
    const std::string output = grpc_->result();
    return end(ok, output);
  }
  if (!send_pending(error)) return end(false, error);
  if (sent_ == request_.size()) {
    request_.clear();
    sent_ = 0;
  }
  watch(FLOTILLA_FD_READABLE | (request_.empty() ? 0u : FLOTILLA_FD_WRITABLE));
}

}  // namespace flotilla::discovery

namespace flotilla::discovery {

// The runtime's message went to its own set_error, which this plugin
// cannot read: the status says enough for a check's output.
std::string exec_status_text(flotilla_status st) {
  switch (st) {
    case FLOTILLA_E_NOT_FOUND:
      return "the runtime has no such container";
    case FLOTILLA_E_CONFLICT:
      return "the container is not running";
    case FLOTILLA_E_UNAVAILABLE:
      return "the runtime is not available (starting, or its binary cannot run)";
    case FLOTILLA_E_INVALID:
      return "the runtime refused the command";
    default:
      return "the runtime failed (status " + std::to_string(static_cast<int>(st)) + ")";
  }
}

// The runtime enforces the timeout (it kills the command); the interval
// timer ends a run the runtime never answered.
void HealthCheck::run_exec() {
  if (!runtime_.rt) return end(false, "no runtime plugin runs exec checks");
  std::vector<const char *> argv;
  for (const auto &a : spec_.argv) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  flotilla_exec_spec es{};
  es.struct_size = sizeof es;
  es.argv = argv.data();
  es.timeout_ms = spec_.timeout_ms;
  es.output_limit = kExecOutputLimit;
  uint64_t id = 0;
  flotilla_status st = runtime_.rt->exec(runtime_.self, spec_.container.c_str(), &es,
                                         &HealthCheck::on_exec, this, &id);
  if (st != FLOTILLA_OK)
    return end(false, "exec in " + spec_.container + ": " + exec_status_text(st));
  exec_id_ = id ? id : 1;
}

void HealthCheck::on_exec(void *user, flotilla_status status, const flotilla_exec_result *r) {
  auto *c = static_cast<HealthCheck *>(user);
  c->exec_id_ = 0;                             // answered: nothing to cancel
  if (status == FLOTILLA_E_CANCELLED) return;  // the runtime is stopping
  if (status != FLOTILLA_OK || !r)
    return c->end(false, "exec in " + c->spec_.container + ": " + exec_status_text(status));
  std::string out(r->output, r->output_len);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (r->output_truncated) out += " [truncated]";
  if (r->timed_out)
    return c->end(false, "timed out after " + std::to_string(c->spec_.timeout_ms) + " ms" +
                             (out.empty() ? "" : ": " + out));
  const std::string head = r->exit_code >= 0 ? "exit " + std::to_string(r->exit_code)
                                             : "killed by signal " + std::to_string(r->term_signal);
  c->end(r->exit_code == 0, head + (out.empty() ? "" : ": " + out));
}

}  // namespace flotilla::discovery
