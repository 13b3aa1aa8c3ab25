#include "api/http_server.h"

#include <grp.h>
#include <http_parser.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "error.h"
#include "log.h"
#include "openssl_errors.h"

namespace flotilla::http {

// Outside the anonymous namespace: Server::State and Connection, which have
// external linkage, hold these (GCC's -Wsubobject-linkage, in unity builds).
struct SslCtxFree {
  void operator()(SSL_CTX *ctx) const { SSL_CTX_free(ctx); }
};
struct SslFree {
  void operator()(SSL *ssl) const { SSL_free(ssl); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using SslPtr = std::unique_ptr<SSL, SslFree>;

namespace {

constexpr std::string_view kLog = "api";
// Input buffered beyond this while a request is being answered stops
// reading from that client until it is consumed.
constexpr size_t kMaxPendingInput = 256 * 1024;

using tls::openssl_errors;

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; '+' means space in a query. False on a broken escape.
bool percent_decode(std::string_view in, bool plus_is_space, std::string &out) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return true;
}

// Split an origin-form target into the decoded path and query map.
bool parse_target(const std::string &target, std::string &path,
                  std::vector<std::string> &segments, std::map<std::string, std::string> &query,
                  std::string &why) {
  if (target.empty() || target[0] != '/') {
    why = "the request target must be a path starting with '/'";
    return false;
  }
  size_t q = target.find('?');
  std::string_view raw_path = std::string_view(target).substr(0, q);
  size_t hash = raw_path.find('#');
  if (hash != std::string_view::npos) raw_path = raw_path.substr(0, hash);
  if (!percent_decode(raw_path, false, path) || path.find('\0') != std::string::npos) {
    why = "the request path has a broken percent escape";
    return false;
  }
  segments.clear();
  for (size_t i = 1; i <= raw_path.size();) {
    size_t slash = raw_path.find('/', i);
    if (slash == std::string_view::npos) slash = raw_path.size();
    std::string seg;
    percent_decode(raw_path.substr(i, slash - i), false, seg);  // checked above
    segments.push_back(std::move(seg));
    i = slash + 1;
  }
  query.clear();
  if (q == std::string::npos) return true;
  std::string_view rest = std::string_view(target).substr(q + 1);
  hash = rest.find('#');
  if (hash != std::string_view::npos) rest = rest.substr(0, hash);
  while (!rest.empty()) {
    size_t amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string key, value;
    if (!percent_decode(pair.substr(0, eq), true, key) ||
        (eq != std::string_view::npos && !percent_decode(pair.substr(eq + 1), true, value))) {
      why = "the query string has a broken percent escape";
      return false;
    }
    query[key] = value;
  }
  return true;
}

std::string status_line(int status) {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) + "\r\n";
}

double seconds_since(uint64_t start_ns) {
  return static_cast<double>(uv_hrtime() - start_ns) / 1e9;
}

}  // namespace

// ---- small public helpers ----------------------------------------------

const std::string *Request::header(std::string_view name) const {
  for (const auto &[k, v] : headers)
    if (k == name) return &v;
  return nullptr;
}

Response Response::json(int status, const nlohmann::json &j) {
  Response r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "application/json");
  r.body = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  r.body += '\n';
  return r;
}

Response error_response(int status, std::string_view code, std::string_view message) {
  return Response::json(status, {{"error", {{"code", code}, {"message", message}}}});
}

const char *reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 410:
      return "Gone";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
  }
  return "Unknown";
}

// ---- Timer ----------------------------------------------------------------

struct Timer::Handle {
  uv_timer_t timer{};
  std::function<void()> cb;
};

Timer::Timer(uv_loop_t *loop) : handle_(std::make_unique<Handle>().release()) {
  uv_timer_init(loop, &handle_->timer);
  handle_->timer.data = handle_;
}

Timer::~Timer() {
  uv_close(reinterpret_cast<uv_handle_t *>(&handle_->timer),
           [](uv_handle_t *h) { std::unique_ptr<Handle> owned(static_cast<Handle *>(h->data)); });
}

void Timer::start(uint64_t timeout_ms, uint64_t repeat_ms, std::function<void()> cb) {
  handle_->cb = std::move(cb);
  uv_timer_start(
      &handle_->timer,
      [](uv_timer_t *t) {
        // A copy: the callback may restart or destroy this timer.
        auto cb = static_cast<Handle *>(t->data)->cb;
        if (cb) cb();
      },
      timeout_ms, repeat_ms);
}

void Timer::stop() {
  uv_timer_stop(&handle_->timer);
}

// ---- server state ---------------------------------------------------------

struct Connection;

struct Listener {
  union {
    uv_pipe_t pipe;
    uv_tcp_t tcp;
  } h{};
  bool tls = false;
  std::string unix_path;  // removed at close when it is still our socket
  dev_t dev = 0;
  ino_t ino = 0;
  std::shared_ptr<Server::State> state;

  uv_handle_t *handle() { return reinterpret_cast<uv_handle_t *>(&h); }
  uv_stream_t *stream() { return reinterpret_cast<uv_stream_t *>(&h); }
};

struct Server::State : std::enable_shared_from_this<Server::State> {
  uv_loop_t *loop;
  Limits limits;
  Handler handler;
  Observer observer;
  std::vector<Listener *> listeners;  // open; each frees itself when closed
  size_t listeners_closing = 0;
  std::map<Connection *, std::shared_ptr<Connection>> connections;
  SslCtxPtr ssl_ctx;
  int tls_port = 0;
  bool shutting_down = false;
  std::function<void()> shutdown_done;
  std::unique_ptr<Timer> sweep_timer, shutdown_timer, resume_timer;
  std::vector<std::weak_ptr<Connection>> resume_queue;
  char read_buffer[64 * 1024];  // reads are consumed synchronously, one at a time

  State(uv_loop_t *l, Limits lim, Handler h, Observer o)
      : loop(l), limits(lim), handler(std::move(h)), observer(std::move(o)) {}

  void observe(std::string_view method, std::string_view path, int status, double seconds) {
    if (observer) observer(method, path, status, seconds);
  }
  void add_listener(std::unique_ptr<Listener> l);
  void close_listener(Listener *l);
  void stop_accepting();
  void schedule_resume(const std::shared_ptr<Connection> &c);
  void sweep();
  void maybe_finish_shutdown();
  void close_all();
};

// One answer in progress; shared by the Responder copies the handler holds.
struct Exchange {
  enum class Phase { waiting, streaming, done };
  std::weak_ptr<Connection> conn;
  Phase phase = Phase::waiting;
  bool keep_alive = true;
  bool http10 = false;
  bool chunked = false;
  bool cancelled = false;
  int status = 0;
  std::string method, path;
  uint64_t start_ns = 0;
  std::function<void()> cancel_cb;
  Headers extra_headers;  // Responder::add_header, put on whatever answer is sent

  ~Exchange();
  void cancel() {
    if (cancelled) return;
    cancelled = true;
    auto cb = std::move(cancel_cb);  // the callback may destroy this exchange
    if (cb) cb();
  }
};

struct Connection : std::enable_shared_from_this<Connection> {
  std::shared_ptr<Server::State> state;
  union {
    uv_pipe_t pipe;
    uv_tcp_t tcp;
  } h{};
  bool tls = false;
  std::string peer = "unix";

  // TLS over memory BIOs: ciphertext from the socket goes into rbio,
  // whatever OpenSSL wants to send comes out of wbio.
  SslPtr ssl;
  BIO *rbio = nullptr, *wbio = nullptr;  // owned by ssl
  bool handshake_done = false;

  http_parser parser{};
  Request req;               // the request being parsed
  std::string field, value;  // the header being parsed
  bool last_was_value = false;
  size_t header_bytes = 0;
  bool in_message = false;
  bool keep_alive = true;
  int error_status = 0;  // a limit hit inside a parser callback
  std::string error_code, error_message;

  std::string inbuf;  // received, not yet parsed
  size_t inpos = 0;
  Exchange *active = nullptr;  // the request being answered; owned by Responders
  bool processing = false;
  bool closing = false;
  bool eof = false;
  bool no_more_requests = false;
  bool reading = false;
  bool close_when_flushed = false;
  size_t writes_in_flight = 0;
  uint64_t last_activity_ms = 0;

  explicit Connection(std::shared_ptr<Server::State> s) : state(std::move(s)) {}

  uv_handle_t *handle() { return reinterpret_cast<uv_handle_t *>(&h); }
  uv_stream_t *stream() { return reinterpret_cast<uv_stream_t *>(&h); }

  static const http_parser_settings &settings();
  void start(bool use_tls, SSL_CTX *ctx);
  void start_reading();
  void on_data(const char *data, size_t len);
  void on_tls_data(const char *data, size_t len);
  void on_eof();
  void process_input();
  void dispatch();
  void fail(int status, std::string_view code, std::string_view message);
  void send_response(Exchange &ex, Response r);
  void begin_stream(Exchange &ex, int status, Headers headers);
  void write_chunk(Exchange &ex, std::string chunk, std::function<void(bool)> written);
  void end_stream(Exchange &ex);
  void finish_exchange(Exchange &ex);
  void write_plain(std::string data, std::function<void(bool)> done = {});
  void write_wire(std::string data, std::function<void(bool)> done = {});
  void flush_tls();
  void close_after_flush();
  void close();

  // http-parser callbacks
  int on_message_begin();
  int on_url(const char *at, size_t len);
  int on_header_field(const char *at, size_t len);
  int on_header_value(const char *at, size_t len);
  int on_headers_complete();
  int on_body(const char *at, size_t len);
  int on_message_complete();
  void commit_header();
  int limit_hit(int status, std::string_view code, std::string message);
};

Exchange::~Exchange() {
  if (phase == Phase::done) return;
  auto c = conn.lock();
  if (!c || c->active != this || c->closing) return;
  if (phase == Phase::waiting) {
    log::error(kLog, "a handler dropped a request without answering it",
               {{"method", method}, {"path", path}});
    phase = Phase::done;
    status = 500;
    c->send_response(*this, error_response(500, "internal", "the request was not answered"));
  } else {
    // A half-sent stream cannot be completed honestly; cut the connection.
    c->active = nullptr;
    c->close();
  }
}

// ---- parser callbacks ---------------------------------------------------

const http_parser_settings &Connection::settings() {
  static const http_parser_settings s = [] {
    http_parser_settings st{};
    http_parser_settings_init(&st);
    st.on_message_begin = [](http_parser *p) {
      return static_cast<Connection *>(p->data)->on_message_begin();
    };
    st.on_url = [](http_parser *p, const char *at, size_t n) {
      return static_cast<Connection *>(p->data)->on_url(at, n);
    };
    st.on_header_field = [](http_parser *p, const char *at, size_t n) {
      return static_cast<Connection *>(p->data)->on_header_field(at, n);
    };
    st.on_header_value = [](http_parser *p, const char *at, size_t n) {
      return static_cast<Connection *>(p->data)->on_header_value(at, n);
    };
    st.on_headers_complete = [](http_parser *p) {
      return static_cast<Connection *>(p->data)->on_headers_complete();
    };
    st.on_body = [](http_parser *p, const char *at, size_t n) {
      return static_cast<Connection *>(p->data)->on_body(at, n);
    };
    st.on_message_complete = [](http_parser *p) {
      return static_cast<Connection *>(p->data)->on_message_complete();
    };
    return st;
  }();
  return s;
}

int Connection::limit_hit(int status, std::string_view code, std::string message) {
  error_status = status;
  error_code = code;
  error_message = std::move(message);
  return 1;  // stops the parser
}

int Connection::on_message_begin() {
  req = Request{};
  field.clear();
  value.clear();
  last_was_value = false;
  header_bytes = 0;
  in_message = true;
  return 0;
}

int Connection::on_url(const char *at, size_t len) {
  req.target.append(at, len);
  if (req.target.size() > state->limits.max_url_bytes)
    return limit_hit(414, "uri_too_long",
                     "the request target is longer than " +
                         std::to_string(state->limits.max_url_bytes) + " bytes");
  return 0;
}

void Connection::commit_header() {
  if (!field.empty() || !value.empty()) req.headers.emplace_back(lower(field), value);
  field.clear();
  value.clear();
}

int Connection::on_header_field(const char *at, size_t len) {
  if (last_was_value) commit_header();
  last_was_value = false;
  field.append(at, len);
  header_bytes += len;
  if (header_bytes > state->limits.max_header_bytes)
    return limit_hit(431, "headers_too_large",
                     "the request headers are larger than " +
                         std::to_string(state->limits.max_header_bytes) + " bytes");
  return 0;
}

int Connection::on_header_value(const char *at, size_t len) {
  last_was_value = true;
  value.append(at, len);
  header_bytes += len + 4;  // ": " and CRLF
  if (header_bytes > state->limits.max_header_bytes)
    return limit_hit(431, "headers_too_large",
                     "the request headers are larger than " +
                         std::to_string(state->limits.max_header_bytes) + " bytes");
  return 0;
}

int Connection::on_headers_complete() {
  commit_header();
  req.method = http_method_str(static_cast<http_method>(parser.method));
  req.http_major = parser.http_major;
  req.http_minor = parser.http_minor;
  std::string why;
  if (!parse_target(req.target, req.path, req.segments, req.query, why)) {
    limit_hit(400, "invalid", why);
    http_parser_pause(&parser, 1);
    return 0;
  }
  if ((parser.flags & F_CONTENTLENGTH) && parser.content_length > state->limits.max_body_bytes) {
    limit_hit(413, "too_large",
              "the request body is larger than " + std::to_string(state->limits.max_body_bytes) +
                  " bytes");
    http_parser_pause(&parser, 1);
    return 0;
  }
  const std::string *expect = req.header("expect");
  if (expect && lower(*expect) == "100-continue" && req.http_minor >= 1)
    write_plain("HTTP/1.1 100 Continue\r\n\r\n");
  return 0;
}

int Connection::on_body(const char *at, size_t len) {
  req.body.append(at, len);
  if (req.body.size() > state->limits.max_body_bytes)
    return limit_hit(413, "too_large",
                     "the request body is larger than " +
                         std::to_string(state->limits.max_body_bytes) + " bytes");
  return 0;
}

int Connection::on_message_complete() {
  in_message = false;
  keep_alive = http_should_keep_alive(&parser) != 0;
  // Stop here; the next pipelined request is parsed once this one is answered.
  http_parser_pause(&parser, 1);
  return 0;
}

// ---- connection life ----------------------------------------------------

void Connection::start(bool use_tls, SSL_CTX *ctx) {
  http_parser_init(&parser, HTTP_REQUEST);
  parser.data = this;
  last_activity_ms = uv_now(state->loop);
  tls = use_tls;
  if (tls) {
    ssl.reset(SSL_new(ctx));
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (!ssl || !rbio || !wbio) {
      BIO_free(rbio);
      BIO_free(wbio);
      log::error(kLog, "cannot set up TLS for a connection: " + openssl_errors());
      close();
      return;
    }
    SSL_set_bio(ssl.get(), rbio, wbio);
    SSL_set_accept_state(ssl.get());
  }
  start_reading();
}

void Connection::start_reading() {
  if (reading || closing) return;
  int r = uv_read_start(
      stream(),
      [](uv_handle_t *h, size_t, uv_buf_t *buf) {
        auto *c = static_cast<Connection *>(h->data);
        *buf = uv_buf_init(c->state->read_buffer, sizeof c->state->read_buffer);
      },
      [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
        auto *c = static_cast<Connection *>(s->data);
        auto keep = c->shared_from_this();
        if (n > 0) {
          c->last_activity_ms = uv_now(c->state->loop);
          c->on_data(buf->base, static_cast<size_t>(n));
        } else if (n == UV_EOF) {
          c->on_eof();
        } else if (n < 0) {
          log::debug(kLog,
                     std::string("read from client failed: ") + uv_strerror(static_cast<int>(n)),
                     {{"peer", c->peer}});
          c->close();
        }
      });
  if (r == 0) {
    reading = true;
  } else {
    close();
  }
}

void Connection::on_data(const char *data, size_t len) {
  if (closing) return;
  if (tls) {
    on_tls_data(data, len);
    return;
  }
  if (no_more_requests) return;
  inbuf.append(data, len);
  process_input();
  if (active && inbuf.size() - inpos > kMaxPendingInput && reading) {
    uv_read_stop(stream());
    reading = false;
  }
}

void Connection::on_tls_data(const char *data, size_t len) {
  ERR_clear_error();
  BIO_write(rbio, data, static_cast<int>(len));
  if (!handshake_done) {
    int r = SSL_do_handshake(ssl.get());
    if (r != 1) {
      int e = SSL_get_error(ssl.get(), r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        flush_tls();
        return;
      }
      std::string why = openssl_errors();
      long verify = SSL_get_verify_result(ssl.get());
      if (verify != X509_V_OK) why += std::string("; ") + X509_verify_cert_error_string(verify);
      log::info(kLog, "TLS handshake refused: " + why, {{"peer", peer}});
      flush_tls();  // the alert
      no_more_requests = true;
      close_after_flush();
      return;
    }
    handshake_done = true;
    if (X509 *cert = SSL_get1_peer_certificate(ssl.get())) {
      char cn[256] = "";
      X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
      peer += std::string(" cn=") + cn;
      X509_free(cert);
    }
  }
  char buf[16 * 1024];
  for (;;) {
    int n = SSL_read(ssl.get(), buf, sizeof buf);
    if (n > 0) {
      if (!no_more_requests) inbuf.append(buf, static_cast<size_t>(n));
      continue;
    }
    int e = SSL_get_error(ssl.get(), n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      flush_tls();
      process_input();
      on_eof();
      return;
    }
    log::info(kLog, "TLS error: " + openssl_errors(), {{"peer", peer}});
    close();
    return;
  }
  flush_tls();
  process_input();
  if (active && inbuf.size() - inpos > kMaxPendingInput && reading) {
    uv_read_stop(stream());
    reading = false;
  }
}

void Connection::on_eof() {
  eof = true;
  if (reading) {
    uv_read_stop(stream());
    reading = false;
  }
  if (active) {
    // A client that hangs up on a stream is gone; a plain answer still
    // goes out (the client may only have shut down its sending side).
    if (active->phase == Exchange::Phase::streaming) close();
    return;
  }
  process_input();
}

void Connection::process_input() {
  if (processing) return;  // the loop below continues where it was
  processing = true;
  while (!closing && !active && !no_more_requests && inpos < inbuf.size()) {
    size_t len = inbuf.size() - inpos;
    size_t n = http_parser_execute(&parser, &settings(), inbuf.data() + inpos, len);
    inpos += n;
    auto err = HTTP_PARSER_ERRNO(&parser);
    if (error_status != 0) {
      fail(error_status, error_code, error_message);
      break;
    }
    if (err == HPE_PAUSED) {
      http_parser_pause(&parser, 0);
      if (in_message) continue;  // paused by an error path that already failed
      dispatch();
      continue;
    }
    if (err != HPE_OK) {
      fail(400, "invalid",
           std::string("malformed HTTP request: ") +
               http_errno_description(static_cast<http_errno>(err)));
      break;
    }
    if (n < len) {  // an upgrade request left bytes that are not HTTP
      no_more_requests = true;
      break;
    }
  }
  if (inpos == inbuf.size()) {
    inbuf.clear();
    inpos = 0;
  } else if (inpos > 64 * 1024) {
    inbuf.erase(0, inpos);
    inpos = 0;
  }
  processing = false;
  if (closing || active) return;
  if (no_more_requests || eof) {
    close_after_flush();
  } else if (!reading) {
    start_reading();
  }
}

void Connection::dispatch() {
  auto ex = std::make_shared<Exchange>();
  ex->conn = weak_from_this();
  ex->method = req.method;
  ex->path = req.path;
  ex->start_ns = uv_hrtime();
  ex->http10 = req.http_major == 1 && req.http_minor == 0;
  ex->keep_alive = keep_alive && !parser.upgrade && !state->shutting_down;
  if (!ex->keep_alive) no_more_requests = true;
  active = ex.get();
  req.peer = peer;
  Responder responder(ex);
  ex.reset();
  if (!state->handler) {
    responder.send(error_response(503, "unavailable", "the server is shutting down"));
    return;
  }
  try {
    state->handler(std::move(req), responder);
  } catch (const std::exception &e) {
    log::error(kLog, std::string("request handler failed: ") + e.what());
    responder.send(error_response(500, "internal", e.what()));
  }
}

void Connection::fail(int status, std::string_view code, std::string_view message) {
  no_more_requests = true;
  Response r = error_response(status, code, message);
  std::string out = status_line(status);
  for (const auto &[k, v] : r.headers) out += k + ": " + v + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\nConnection: close\r\n\r\n";
  out += r.body;
  write_plain(std::move(out));
  state->observe(req.method, req.target, status, 0);
  log::debug(kLog, "refused a request: " + std::string(message), {{"peer", peer}});
  close_after_flush();
}

void Connection::send_response(Exchange &ex, Response r) {
  ex.status = r.status;
  std::string out = status_line(r.status);
  for (const auto &[k, v] : r.headers) out += k + ": " + v + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  if (!ex.keep_alive) {
    out += "Connection: close\r\n";
  } else if (ex.http10) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  out += r.body;
  write_plain(std::move(out));
  ex.phase = Exchange::Phase::done;
  finish_exchange(ex);
}

void Connection::begin_stream(Exchange &ex, int status, Headers headers) {
  ex.status = status;
  ex.chunked = !ex.http10;
  if (ex.http10) ex.keep_alive = false;  // the end of the body is the end of the connection
  std::string out = status_line(status);
  for (const auto &[k, v] : headers) out += k + ": " + v + "\r\n";
  if (ex.chunked) out += "Transfer-Encoding: chunked\r\n";
  if (!ex.keep_alive) out += "Connection: close\r\n";
  out += "\r\n";
  write_plain(std::move(out));
  ex.phase = Exchange::Phase::streaming;
}

void Connection::write_chunk(Exchange &ex, std::string chunk, std::function<void(bool)> written) {
  if (chunk.empty()) {  // an empty chunk would end the body
    if (written) written(true);
    return;
  }
  if (ex.chunked) {
    char size[24];
    snprintf(size, sizeof size, "%zx\r\n", chunk.size());
    chunk.insert(0, size);
    chunk += "\r\n";
  }
  write_plain(std::move(chunk), std::move(written));
}

void Connection::end_stream(Exchange &ex) {
  if (ex.chunked) write_plain("0\r\n\r\n");
  ex.phase = Exchange::Phase::done;
  finish_exchange(ex);
}

void Connection::finish_exchange(Exchange &ex) {
  state->observe(ex.method, ex.path, ex.status, seconds_since(ex.start_ns));
  if (active == &ex) active = nullptr;
  last_activity_ms = uv_now(state->loop);
  if (!ex.keep_alive) no_more_requests = true;
  if (processing) return;  // process_input's loop picks up from here
  if (no_more_requests) {
    close_after_flush();
  } else {
    state->schedule_resume(shared_from_this());
  }
}

struct WriteReq {
  uv_write_t req{};
  std::string data;
  std::function<void(bool)> done;
  Connection *conn = nullptr;
};

void Connection::write_plain(std::string data, std::function<void(bool)> done) {
  if (closing) return;
  if (!tls) {
    write_wire(std::move(data), std::move(done));
    return;
  }
  ERR_clear_error();
  if (SSL_write(ssl.get(), data.data(), static_cast<int>(data.size())) <= 0) {
    log::info(kLog, "TLS write failed: " + openssl_errors(), {{"peer", peer}});
    close();
    return;
  }
  std::string out;
  char buf[16 * 1024];
  int n;
  while ((n = BIO_read(wbio, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  write_wire(std::move(out), std::move(done));
}

void Connection::flush_tls() {
  std::string out;
  char buf[16 * 1024];
  int n;
  while ((n = BIO_read(wbio, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  if (!out.empty()) write_wire(std::move(out));
}

void Connection::write_wire(std::string data, std::function<void(bool)> done) {
  if (closing || data.empty()) return;
  auto w = std::make_unique<WriteReq>();
  w->data = std::move(data);
  w->done = std::move(done);
  w->conn = this;
  w->req.data = w.get();
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int r = uv_write(&w->req, stream(), &buf, 1, [](uv_write_t *req, int status) {
    std::unique_ptr<WriteReq> w(static_cast<WriteReq *>(req->data));
    Connection *c = w->conn;
    --c->writes_in_flight;
    if (w->done) w->done(status == 0);
    if (status < 0) {
      if (status != UV_ECANCELED)
        log::debug(kLog, std::string("write to client failed: ") + uv_strerror(status),
                   {{"peer", c->peer}});
      c->close();
    } else if (c->close_when_flushed && c->writes_in_flight == 0) {
      c->close();
    }
  });
  if (r != 0) {
    log::debug(kLog, std::string("write to client failed: ") + uv_strerror(r), {{"peer", peer}});
    close();
    return;
  }
  ++writes_in_flight;
  w.release();  // owned by the write request until its callback
}

void Connection::close_after_flush() {
  if (closing) return;
  if (writes_in_flight == 0) {
    close();
  } else {
    close_when_flushed = true;
  }
}

void Connection::close() {
  if (closing) return;
  closing = true;
  if (Exchange *ex = active) {
    active = nullptr;
    ex->cancel();  // may destroy ex
  }
  if (reading) uv_read_stop(stream());
  reading = false;
  uv_close(handle(), [](uv_handle_t *h) {
    auto *c = static_cast<Connection *>(h->data);
    std::shared_ptr<Server::State> s = c->state;
    auto it = s->connections.find(c);
    if (it != s->connections.end()) {
      std::shared_ptr<Connection> owned = std::move(it->second);
      s->connections.erase(it);
      owned.reset();
    }
    s->maybe_finish_shutdown();
  });
}

// ---- Responder ------------------------------------------------------------

bool Responder::open() const {
  if (!ex_ || ex_->phase == Exchange::Phase::done) return false;
  auto c = ex_->conn.lock();
  return c && !c->closing && c->active == ex_.get();
}

void Responder::send(Response response) {
  if (!ex_ || ex_->phase != Exchange::Phase::waiting) return;
  auto c = ex_->conn.lock();
  if (!c || c->closing || c->active != ex_.get()) {
    ex_->phase = Exchange::Phase::done;
    return;
  }
  for (auto &h : ex_->extra_headers) response.headers.push_back(std::move(h));
  ex_->extra_headers.clear();
  c->send_response(*ex_, std::move(response));
}

void Responder::begin_stream(int status, Headers headers) {
  if (!ex_ || ex_->phase != Exchange::Phase::waiting) return;
  auto c = ex_->conn.lock();
  if (!c || c->closing || c->active != ex_.get()) return;
  for (auto &h : ex_->extra_headers) headers.push_back(std::move(h));
  ex_->extra_headers.clear();
  c->begin_stream(*ex_, status, std::move(headers));
}

void Responder::add_header(std::string name, std::string value) {
  if (!ex_ || ex_->phase != Exchange::Phase::waiting) return;
  for (auto &h : ex_->extra_headers)
    if (h.first == name) {
      h.second = std::move(value);
      return;
    }
  ex_->extra_headers.emplace_back(std::move(name), std::move(value));
}

void Responder::write(std::string chunk, std::function<void(bool)> written) {
  if (!ex_ || ex_->phase != Exchange::Phase::streaming) return;
  auto c = ex_->conn.lock();
  if (!c || c->closing || c->active != ex_.get()) return;
  c->write_chunk(*ex_, std::move(chunk), std::move(written));
}

void Responder::end() {
  if (!ex_ || ex_->phase != Exchange::Phase::streaming) return;
  auto c = ex_->conn.lock();
  if (!c || c->closing || c->active != ex_.get()) {
    ex_->phase = Exchange::Phase::done;
    return;
  }
  c->end_stream(*ex_);
}

void Responder::on_cancel(std::function<void()> cb) {
  if (!ex_) return;
  if (ex_->cancelled || !open()) {
    ex_->cancelled = true;
    if (cb) cb();
    return;
  }
  ex_->cancel_cb = std::move(cb);
}

// ---- listeners ------------------------------------------------------------

namespace {

// Whether some process accepts connections on the Unix socket at path.
bool unix_socket_answers(const std::string &path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int r = connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr);
  int err = errno;
  ::close(fd);
  // EAGAIN: a listener whose backlog is full is still a listener.
  return r == 0 || err == EAGAIN || err == EINPROGRESS;
}

gid_t group_id(const std::string &group, const std::string &path) {
  std::vector<char> buf(16 * 1024);
  struct group grp {};
  struct group *found = nullptr;
  int r;
  while ((r = getgrnam_r(group.c_str(), &grp, buf.data(), buf.size(), &found)) == ERANGE)
    buf.resize(buf.size() * 2);
  if (r != 0)
    throw Error(FLOTILLA_E_IO, "api.socket_group \"" + group + "\" for " + path +
                                   ": cannot look the group up: " + strerror(r));
  if (!found)
    throw Error(FLOTILLA_E_INVALID,
                "api.socket_group \"" + group + "\" for " + path +
                    ": no such group on this host; create it or remove the key");
  return grp.gr_gid;
}

void make_parent_dirs(const std::string &path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return;
  std::string dir = path.substr(0, slash);
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i != dir.size() && dir[i] != '/') continue;
    std::string part = dir.substr(0, i);
    if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
      throw Error(FLOTILLA_E_IO, "api.socket " + path + ": cannot create directory " + part + ": " +
                                     strerror(errno));
  }
}

void on_new_connection(uv_stream_t *server, int status);

}  // namespace

void Server::State::add_listener(std::unique_ptr<Listener> l) {
  l->state = shared_from_this();
  listeners.push_back(l.release());
  if (!sweep_timer) {
    sweep_timer = std::make_unique<Timer>(loop);
    uint64_t every = std::clamp<uint64_t>(limits.idle_timeout_ms / 4, 10, 1000);
    sweep_timer->start(every, every, [this] { sweep(); });
  }
}

void Server::State::close_listener(Listener *l) {
  if (!l->unix_path.empty()) {
    struct stat st {};
    if (lstat(l->unix_path.c_str(), &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
      unlink(l->unix_path.c_str());
  }
  ++listeners_closing;
  uv_close(l->handle(), [](uv_handle_t *h) {
    std::unique_ptr<Listener> owned(static_cast<Listener *>(h->data));
    std::shared_ptr<Server::State> s = owned->state;
    owned.reset();
    --s->listeners_closing;
    s->maybe_finish_shutdown();
  });
}

void Server::State::stop_accepting() {
  for (Listener *l : listeners) close_listener(l);
  listeners.clear();
}

void Server::State::schedule_resume(const std::shared_ptr<Connection> &c) {
  resume_queue.push_back(c);
  if (!resume_timer) resume_timer = std::make_unique<Timer>(loop);
  resume_timer->start(0, 0, [this] {
    auto queue = std::move(resume_queue);
    resume_queue.clear();
    for (auto &w : queue)
      if (auto c = w.lock()) c->process_input();
  });
}

void Server::State::sweep() {
  uint64_t now = uv_now(loop);
  std::vector<std::shared_ptr<Connection>> idle;
  for (auto &[raw, c] : connections)
    if (!c->closing && !c->active && now - c->last_activity_ms >= limits.idle_timeout_ms)
      idle.push_back(c);
  for (auto &c : idle) {
    bool talking_http = !c->tls || c->handshake_done;
    if (c->in_message && talking_http)
      c->fail(408, "request_timeout", "the request was not completed in time");
    else
      c->close();
  }
}

void Server::State::maybe_finish_shutdown() {
  if (!shutting_down || !shutdown_done || !connections.empty() || !listeners.empty() ||
      listeners_closing != 0)
    return;
  auto keep = shared_from_this();  // done() may destroy the Server
  shutdown_timer.reset();
  sweep_timer.reset();
  auto done = std::move(shutdown_done);
  shutdown_done = nullptr;
  done();
}

void Server::State::close_all() {
  shutting_down = true;
  handler = nullptr;
  observer = nullptr;
  shutdown_done = nullptr;
  stop_accepting();
  std::vector<std::shared_ptr<Connection>> all;
  for (auto &[raw, c] : connections) all.push_back(c);
  for (auto &c : all) c->close();
  sweep_timer.reset();
  shutdown_timer.reset();
  resume_timer.reset();
}

namespace {

void on_new_connection(uv_stream_t *server, int status) {
  auto *l = static_cast<Listener *>(server->data);
  std::shared_ptr<Server::State> s = l->state;
  if (status < 0) {
    log::warn(kLog, std::string("accept failed: ") + uv_strerror(status));
    return;
  }
  auto c = std::make_shared<Connection>(s);
  if (l->tls) {
    uv_tcp_init(s->loop, &c->h.tcp);
  } else {
    uv_pipe_init(s->loop, &c->h.pipe, 0);
  }
  c->handle()->data = c.get();
  s->connections[c.get()] = c;
  if (uv_accept(server, c->stream()) != 0) {
    c->close();
    return;
  }
  if (s->shutting_down || s->connections.size() > s->limits.max_connections) {
    log::warn(kLog, "too many connections; closing a new one",
              {{"limit", std::to_string(s->limits.max_connections)}});
    c->close();
    return;
  }
  if (l->tls) {
    uv_tcp_nodelay(&c->h.tcp, 1);
    sockaddr_storage addr{};
    int len = sizeof addr;
    char host[INET6_ADDRSTRLEN] = "?";
    if (uv_tcp_getpeername(&c->h.tcp, reinterpret_cast<sockaddr *>(&addr), &len) == 0) {
      if (addr.ss_family == AF_INET6)
        uv_ip6_name(reinterpret_cast<sockaddr_in6 *>(&addr), host, sizeof host);
      else
        uv_ip4_name(reinterpret_cast<sockaddr_in *>(&addr), host, sizeof host);
    }
    c->peer = std::string("tls ") + host;
  }
  c->start(l->tls, s->ssl_ctx.get());
}

}  // namespace

// ---- Server -----------------------------------------------------------------

Server::Server(uv_loop_t *loop, Limits limits, Handler handler, Observer observer)
    : state_(std::make_shared<State>(loop, limits, std::move(handler), std::move(observer))) {}

Server::~Server() {
  state_->close_all();
}

void Server::listen_unix(const UnixListenOptions &o) {
  const std::string &path = o.path;
  if (path.empty()) throw Error(FLOTILLA_E_INVALID, "api.socket is empty");
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    throw Error(FLOTILLA_E_INVALID, "api.socket " + path + ": longer than " +
                                        std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                                        " bytes, the limit for a Unix socket path");
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw Error(FLOTILLA_E_EXISTS, "api.socket " + path +
                                         ": exists and is not a socket; remove it or "
                                         "choose another path");
    if (unix_socket_answers(path))
      throw Error(FLOTILLA_E_EXISTS,
                  "api.socket " + path +
                      ": another process (a running flotillad?) is listening there; stop it "
                      "or choose another path");
    if (unlink(path.c_str()) != 0 && errno != ENOENT)
      throw Error(FLOTILLA_E_IO,
                  "api.socket " + path + ": cannot remove the stale socket: " + strerror(errno));
    log::info(kLog, "removed a stale socket nobody listened on", {{"path", path}});
  } else if (errno != ENOENT) {
    throw Error(FLOTILLA_E_IO, "api.socket " + path + ": " + strerror(errno));
  } else {
    make_parent_dirs(path);
  }

  auto l = std::make_unique<Listener>();
  uv_pipe_init(state_->loop, &l->h.pipe, 0);
  l->handle()->data = l.get();
  auto give_up = [&](const std::string &message, flotilla_status status) {
    if (!l->unix_path.empty()) unlink(l->unix_path.c_str());
    l->unix_path.clear();
    l->state = state_;
    state_->close_listener(l.release());
    throw Error(status, message);
  };
  if (int r = uv_pipe_bind(&l->h.pipe, path.c_str()); r != 0)
    give_up("api.socket " + path + ": cannot bind: " + uv_strerror(r), FLOTILLA_E_IO);
  l->unix_path = path;
  if (chmod(path.c_str(), o.mode) != 0)
    give_up("api.socket " + path + ": cannot set mode: " + strerror(errno), FLOTILLA_E_IO);
  if (!o.group.empty()) {
    gid_t gid = 0;
    try {
      gid = group_id(o.group, path);
    } catch (const Error &e) {
      give_up(e.what(), e.status());
    }
    if (chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0)
      give_up("api.socket " + path + ": cannot give the socket to group \"" + o.group +
                  "\": " + strerror(errno),
              FLOTILLA_E_PERMISSION);
  }
  if (lstat(path.c_str(), &st) == 0) {
    l->dev = st.st_dev;
    l->ino = st.st_ino;
  }
  if (int r = uv_listen(l->stream(), 128, on_new_connection); r != 0)
    give_up("api.socket " + path + ": cannot listen: " + uv_strerror(r), FLOTILLA_E_IO);
  state_->add_listener(std::move(l));
  log::info(kLog, "listening", {{"socket", path}});
}

void Server::listen_tls(const TlsListenOptions &o) {
  if (o.cert_file.empty() || o.key_file.empty() || o.client_ca_file.empty())
    throw Error(FLOTILLA_E_INVALID,
                "api.tcp_listen " + o.address +
                    " needs api.tls_cert, api.tls_key and api.tls_client_ca: the TCP listener "
                    "only serves clients with a certificate signed by that CA");
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) throw Error(FLOTILLA_E_INTERNAL, "cannot create a TLS context: " + openssl_errors());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), o.cert_file.c_str()) != 1)
    throw Error(FLOTILLA_E_INVALID, "api.tls_cert " + o.cert_file + ": " + openssl_errors());
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), o.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      throw Error(FLOTILLA_E_INVALID,
                  "api.tls_key " + o.key_file + " does not belong to api.tls_cert " + o.cert_file);
    }
    throw Error(FLOTILLA_E_INVALID, "api.tls_key " + o.key_file + ": " + openssl_errors());
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    throw Error(FLOTILLA_E_INVALID,
                "api.tls_key " + o.key_file + " does not belong to api.tls_cert " + o.cert_file);
  if (SSL_CTX_load_verify_locations(ctx.get(), o.client_ca_file.c_str(), nullptr) != 1)
    throw Error(FLOTILLA_E_INVALID, "api.tls_client_ca " + o.client_ca_file + ": " + openssl_errors());
  if (STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o.client_ca_file.c_str()))
    SSL_CTX_set_client_CA_list(ctx.get(), names);  // takes ownership
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  static const unsigned char kSessionContext[] = "flotilla-api";
  SSL_CTX_set_session_id_context(ctx.get(), kSessionContext, sizeof kSessionContext - 1);

  // "host:port" or "[v6]:port"
  std::string host, port;
  const std::string &a = o.address;
  if (!a.empty() && a[0] == '[') {
    size_t close = a.find("]:");
    if (close != std::string::npos) {
      host = a.substr(1, close - 1);
      port = a.substr(close + 2);
    }
  } else if (size_t colon = a.rfind(':'); colon != std::string::npos) {
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
  }
  char *end = nullptr;
  long port_num = port.empty() ? -1 : strtol(port.c_str(), &end, 10);
  if (host.empty() || port_num < 0 || port_num > 65535 || (end && *end))
    throw Error(FLOTILLA_E_INVALID,
                "api.tcp_listen \"" + a + "\" is not host:port (e.g. 0.0.0.0:4646 or [::1]:4646)");

  sockaddr_storage addr{};
  if (uv_ip4_addr(host.c_str(), static_cast<int>(port_num),
                  reinterpret_cast<sockaddr_in *>(&addr)) != 0 &&
      uv_ip6_addr(host.c_str(), static_cast<int>(port_num),
                  reinterpret_cast<sockaddr_in6 *>(&addr)) != 0) {
    // A host name: resolved once, at start-up, before the loop serves anyone.
    uv_getaddrinfo_t req{};
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (int r = uv_getaddrinfo(state_->loop, &req, nullptr, host.c_str(), port.c_str(), &hints);
        r != 0 || !req.addrinfo)
      throw Error(FLOTILLA_E_INVALID,
                  "api.tcp_listen \"" + a + "\": cannot resolve " + host + ": " + uv_strerror(r));
    memcpy(&addr, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    uv_freeaddrinfo(req.addrinfo);
  }

  auto l = std::make_unique<Listener>();
  l->tls = true;
  uv_tcp_init(state_->loop, &l->h.tcp);
  l->handle()->data = l.get();
  int r = uv_tcp_bind(&l->h.tcp, reinterpret_cast<sockaddr *>(&addr), 0);
  if (r == 0) r = uv_listen(l->stream(), 128, on_new_connection);
  if (r != 0) {
    l->state = state_;
    state_->close_listener(l.release());
    throw Error(FLOTILLA_E_IO, "api.tcp_listen \"" + a + "\": cannot listen: " + uv_strerror(r));
  }
  sockaddr_storage bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(&l->h.tcp, reinterpret_cast<sockaddr *>(&bound), &len);
  state_->tls_port =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
  state_->ssl_ctx = std::move(ctx);
  state_->add_listener(std::move(l));
  log::info(kLog, "listening with TLS client certificates required",
            {{"address", a}, {"port", std::to_string(state_->tls_port)}});
}

int Server::tls_port() const {
  return state_->tls_port;
}

void Server::stop_accepting() {
  state_->stop_accepting();
}

void Server::shutdown(uint64_t timeout_ms, std::function<void()> done) {
  auto s = state_;
  s->stop_accepting();
  s->shutting_down = true;
  s->shutdown_done = std::move(done);
  std::vector<std::shared_ptr<Connection>> all;
  for (auto &[raw, c] : s->connections) all.push_back(c);
  for (auto &c : all) {
    c->no_more_requests = true;
    if (!c->active) {
      c->close_after_flush();
    } else {
      c->active->keep_alive = false;
      c->active->cancel();  // streams end; plain answers still go out
    }
  }
  s->shutdown_timer = std::make_unique<Timer>(s->loop);
  s->shutdown_timer->start(timeout_ms, 0, [raw = s.get()] {
    std::vector<std::shared_ptr<Connection>> left;
    for (auto &[p, c] : raw->connections) left.push_back(c);
    if (!left.empty())
      log::warn(kLog, "closing connections still busy at the shutdown deadline",
                {{"count", std::to_string(left.size())}});
    for (auto &c : left) c->close();
  });
  s->maybe_finish_shutdown();
}

size_t Server::connection_count() const {
  return state_->connections.size();
}

}  // namespace flotilla::http
