// HTTP/1.1 server on libuv streams, parsed with nodejs http-parser.
//
// One server serves a Unix socket and optionally one TCP listener that
// speaks only TLS with mandatory client certificates (mutual TLS). Requests
// on a connection are answered strictly in order: the next pipelined
// request is parsed only after the previous response was handed over, so a
// slow handler never reorders responses. Limits, malformed input and idle
// connections are handled here with JSON error bodies, before any handler
// sees a request.
//
// [loop-thread] throughout: every method, handler and callback runs on the
// thread that runs the loop.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flotilla::http {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method;                        // "GET", "POST", ...
  std::string target;                        // as received: path and query
  std::string path;                          // percent-decoded path, without the query
  // The path split at '/' before decoding, each part decoded: an escaped
  // slash (%2F) stays inside its segment. "/v1/images/a%2Fb" -> {"v1",
  // "images", "a/b"}.
  std::vector<std::string> segments;
  std::map<std::string, std::string> query;  // decoded; a repeated key keeps its last value
  Headers headers;                           // names lower-cased, in the order received
  std::string body;
  unsigned http_major = 1, http_minor = 1;
  std::string peer;  // "unix" or "tls <address> cn=<client certificate CN>", for logs

  // The first header with this (lower-case) name, or nullptr.
  const std::string *header(std::string_view name) const;
};

struct Response {
  int status = 200;
  Headers headers;  // Content-Length and Connection are added by the server
  std::string body;

  // body = j as compact JSON (invalid UTF-8 replaced), Content-Type application/json.
  static Response json(int status, const nlohmann::json &j);
};

// "OK", "Not Found", ...; "Unknown" for codes it does not know.
const char *reason_phrase(int status);

// {"error":{"code":code,"message":message}} with the given HTTP status.
Response error_response(int status, std::string_view code, std::string_view message);

struct Exchange;  // one request's answer in progress; defined in http_server.cc

// The answering side of one request, handed to the handler. Copies share
// the same exchange. Answer exactly once: send(), or begin_stream() then
// any number of write() and one end(). Every method is a no-op once the
// client is gone. If the last copy is destroyed without an answer, the
// server answers 500 so that the connection does not hang.
class Responder {
 public:
  Responder() = default;

  // Whether the client is still there and no answer was completed.
  bool open() const;

  void send(Response response);

  // A streamed answer: chunked transfer encoding for HTTP/1.1 clients; for
  // HTTP/1.0 the body runs until the connection closes.
  void begin_stream(int status, Headers headers);
  // written(true) once the chunk left for the kernel, written(false) when
  // the client went away first. Use it to pace a producer.
  void write(std::string chunk, std::function<void(bool ok)> written = {});
  void end();

  // cb runs once when the handler should stop producing: the client went
  // away or the server is shutting down (then call end() soon). It runs at
  // once if that already happened.
  void on_cancel(std::function<void()> cb);

  // A header for the answer not sent yet, whichever way it is sent (a
  // second call with the same name replaces the value). What a read
  // learned on the way (X-Flotilla-Index) reaches every answer, 404s too.
  void add_header(std::string name, std::string value);

 private:
  friend struct Exchange;
  friend struct Connection;
  explicit Responder(std::shared_ptr<Exchange> ex) : ex_(std::move(ex)) {}
  std::shared_ptr<Exchange> ex_;
};

struct Limits {
  size_t max_header_bytes = 16 * 1024;      // all header lines together -> 431
  size_t max_url_bytes = 8 * 1024;          // request target -> 414
  size_t max_body_bytes = 4 * 1024 * 1024;  // -> 413
  uint64_t idle_timeout_ms = 60'000;        // no request in flight and nothing received
  size_t max_connections = 1024;            // further connections are closed at once
};

struct UnixListenOptions {
  std::string path;
  unsigned mode = 0660;
  std::string group;  // empty: leave the daemon's group
};

struct TlsListenOptions {
  std::string address;  // "host:port", "[v6]:port"; port 0 picks a free one
  std::string cert_file, key_file, client_ca_file;
};

class Server {
 public:
  // Called once per request; answer through the responder, now or later.
  using Handler = std::function<void(Request request, Responder responder)>;
  // Called when an answer is complete (also for errors the server answers
  // itself), for metrics. seconds: from the end of the request to the end
  // of the answer.
  using Observer = std::function<void(std::string_view method, std::string_view path, int status,
                                      double seconds)>;

  Server(uv_loop_t *loop, Limits limits, Handler handler, Observer observer = {});
  // Closes every handle at once (callbacks complete asynchronously on the
  // loop; nothing here is touched after that). Prefer shutdown() first.
  ~Server();
  Server(const Server &) = delete;
  Server &operator=(const Server &) = delete;

  // Throw flotilla::Error naming the socket path or address and the reason.
  // A stale Unix socket is removed only when nothing answers on it.
  void listen_unix(const UnixListenOptions &options);
  void listen_tls(const TlsListenOptions &options);

  // The bound TCP port, 0 without a TLS listener.
  int tls_port() const;

  // Close the listeners (and remove the socket file this server made).
  void stop_accepting();

  // stop_accepting(); close idle connections; cancel streams; let in-flight
  // requests finish for at most timeout_ms; then close everything and call
  // done once every handle is closed.
  void shutdown(uint64_t timeout_ms, std::function<void()> done);

  size_t connection_count() const;

  struct State;  // shared with connections, which may outlive the Server object

 private:
  std::shared_ptr<State> state_;
};

// A one-handle libuv timer with RAII: the destructor closes the handle,
// whose memory is released by the loop after the close completes.
class Timer {
 public:
  explicit Timer(uv_loop_t *loop);
  ~Timer();
  Timer(const Timer &) = delete;
  Timer &operator=(const Timer &) = delete;
  void start(uint64_t timeout_ms, uint64_t repeat_ms, std::function<void()> cb);
  void stop();

 private:
  struct Handle;
  Handle *handle_;  // owned; freed by the close callback
};

}  // namespace flotilla::http
