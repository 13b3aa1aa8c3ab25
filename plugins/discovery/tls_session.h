// TLS for health checks, on the daemon's loop: an OpenSSL client session
// over memory BIOs. The check keeps its own non-blocking socket and moves
// bytes: what it receives goes in with feed(), what the session wants sent
// comes out of take_wire(), and the plaintext is written with write() and
// read with take_plain(). The session never touches the socket, so it
// never blocks and needs no thread.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace flotilla::discovery {

struct TlsOptions {
  bool skip_verify = false;  // accept any certificate (tls_skip_verify)
  std::string server_name;   // SNI, and the name the certificate must hold
  std::string verify_ip;     // without a server_name: the IP it must hold
  std::string ca_file;       // "" = the system's CA bundle
  std::vector<std::string> alpn;  // e.g. {"h2"} for gRPC
};

// One SSL_CTX per check, made once: loading the CA bundle costs a few
// milliseconds, a run must not pay that every interval.
class TlsContext {
 public:
  // nullptr and a message when the context cannot be made (a CA file that
  // cannot be read, say).
  static std::shared_ptr<TlsContext> make(const TlsOptions &options, std::string &error);
  ~TlsContext();
  TlsContext(const TlsContext &) = delete;
  TlsContext &operator=(const TlsContext &) = delete;
  SSL_CTX *get() const { return ctx_; }
  const TlsOptions &options() const { return options_; }

 private:
  TlsContext() = default;
  SSL_CTX *ctx_ = nullptr;
  TlsOptions options_;
};

class TlsSession {
 public:
  // The ClientHello is ready in take_wire() at once. nullptr and a message
  // when OpenSSL cannot make a session.
  static std::unique_ptr<TlsSession> make(std::shared_ptr<TlsContext> ctx, std::string &error);
  ~TlsSession();
  TlsSession(const TlsSession &) = delete;
  TlsSession &operator=(const TlsSession &) = delete;

  // Plaintext to send: written once the handshake is done.
  void write(const std::string &plain);
  // Bytes from the peer; false once the session failed (error() says why).
  bool feed(const uint8_t *data, size_t n);
  // The peer closed the connection.
  void closed();

  std::string take_wire();   // bytes to send to the peer
  std::string take_plain();  // plaintext received so far
  bool failed() const { return !error_.empty(); }
  const std::string &error() const { return error_; }
  bool handshake_done() const;
  bool peer_finished() const { return peer_finished_; }  // close_notify or EOF

 private:
  TlsSession() = default;
  void pump();
  void fail(const char *what, int ssl_error);

  std::shared_ptr<TlsContext> ctx_;
  SSL *ssl_ = nullptr;
  BIO *in_ = nullptr, *out_ = nullptr;  // owned by ssl_
  std::string pending_, plain_, error_;
  bool peer_finished_ = false;
};

}  // namespace flotilla::discovery
