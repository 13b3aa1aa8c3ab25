#include "tls_session.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "openssl_errors.h"

namespace flotilla::discovery {

using tls::openssl_errors;

std::shared_ptr<TlsContext> TlsContext::make(const TlsOptions &options, std::string &error) {
  ERR_clear_error();
  std::shared_ptr<TlsContext> c(new TlsContext());
  c->options_ = options;
  c->ctx_ = SSL_CTX_new(TLS_client_method());
  if (!c->ctx_) {
    error = "TLS: cannot make a context: " + openssl_errors();
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(c->ctx_, TLS1_2_VERSION);
  if (options.skip_verify) {
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_NONE, nullptr);
  } else {
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_PEER, nullptr);
    const int ok = options.ca_file.empty()
                       ? SSL_CTX_set_default_verify_paths(c->ctx_)
                       : SSL_CTX_load_verify_locations(c->ctx_, options.ca_file.c_str(), nullptr);
    if (ok != 1) {
      error = (options.ca_file.empty() ? std::string("TLS: cannot load the system's CA certificates: ")
                                       : "TLS: cannot load the CA file " + options.ca_file + ": ") +
              openssl_errors();
      return nullptr;
    }
  }
  if (!options.alpn.empty()) {
    std::string wire;  // length-prefixed protocol names
    for (const auto &p : options.alpn) {
      wire += static_cast<char>(p.size());
      wire += p;
    }
    // 0 is success here, unlike the rest of OpenSSL.
    if (SSL_CTX_set_alpn_protos(c->ctx_, reinterpret_cast<const unsigned char *>(wire.data()),
                                static_cast<unsigned>(wire.size())) != 0) {
      error = "TLS: cannot set ALPN: " + openssl_errors();
      return nullptr;
    }
  }
  return c;
}

TlsContext::~TlsContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

std::unique_ptr<TlsSession> TlsSession::make(std::shared_ptr<TlsContext> ctx, std::string &error) {
  ERR_clear_error();
  std::unique_ptr<TlsSession> s(new TlsSession());
  s->ctx_ = std::move(ctx);
  s->ssl_ = SSL_new(s->ctx_->get());
  s->in_ = BIO_new(BIO_s_mem());
  s->out_ = BIO_new(BIO_s_mem());
  if (!s->ssl_ || !s->in_ || !s->out_) {
    // Not attached to the session yet: freed here; the session (if any)
    // by the destructor.
    if (s->in_) BIO_free(s->in_);
    if (s->out_) BIO_free(s->out_);
    error = "TLS: cannot make a session: " + openssl_errors();
    return nullptr;
  }
  BIO_set_mem_eof_return(s->in_, -1);  // nothing buffered yet: retry, not end of stream
  SSL_set_bio(s->ssl_, s->in_, s->out_);
  SSL_set_connect_state(s->ssl_);
  const TlsOptions &o = s->ctx_->options();
  bool ok = true;
  if (!o.server_name.empty()) {
    ok = SSL_set_tlsext_host_name(s->ssl_, o.server_name.c_str()) == 1;
    if (ok && !o.skip_verify) ok = SSL_set1_host(s->ssl_, o.server_name.c_str()) == 1;
  } else if (!o.verify_ip.empty() && !o.skip_verify) {
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl_), o.verify_ip.c_str()) == 1;
  }
  if (!ok) {
    error = "TLS: cannot set the name to verify: " + openssl_errors();
    return nullptr;
  }
  s->pump();  // the ClientHello
  if (s->failed()) {
    error = s->error_;
    return nullptr;
  }
  return s;
}

TlsSession::~TlsSession() {
  if (ssl_) SSL_free(ssl_);  // frees both BIOs
}

bool TlsSession::handshake_done() const {
  return SSL_is_init_finished(ssl_) == 1;
}

void TlsSession::write(const std::string &plain) {
  pending_ += plain;
  pump();
}

bool TlsSession::feed(const uint8_t *data, size_t n) {
  if (failed()) return false;
  if (n > 0 && BIO_write(in_, data, static_cast<int>(n)) != static_cast<int>(n)) {
    error_ = "TLS: cannot buffer " + std::to_string(n) + " bytes";
    return false;
  }
  pump();
  return !failed();
}

void TlsSession::closed() {
  if (failed()) return;
  if (!handshake_done()) {
    error_ = "TLS handshake: the connection closed before it finished (is the port serving TLS?)";
    return;
  }
  peer_finished_ = true;
}

std::string TlsSession::take_wire() {
  std::string out;
  char buf[4096];
  while (BIO_ctrl_pending(out_) > 0) {
    int n = BIO_read(out_, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string TlsSession::take_plain() {
  std::string out;
  out.swap(plain_);
  return out;
}

void TlsSession::fail(const char *what, int ssl_error) {
  std::string why;
  const long verify = SSL_get_verify_result(ssl_);
  if (ssl_error == SSL_ERROR_SSL && verify != X509_V_OK) {
    why = std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
    ERR_clear_error();
  } else if (ssl_error == SSL_ERROR_SSL) {
    why = openssl_errors() + (handshake_done() ? "" : " (is the port serving TLS?)");
  } else if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) {
    why = "the connection closed";
    ERR_clear_error();
  } else {
    why = "OpenSSL error " + std::to_string(ssl_error);
    ERR_clear_error();
  }
  error_ = std::string("TLS ") + what + ": " + why;
}

// Moves the session on as far as the bytes at hand allow: the handshake,
// then pending plaintext out, then whatever plaintext came in.
void TlsSession::pump() {
  if (failed()) return;
  ERR_clear_error();
  if (!handshake_done()) {
    int r = SSL_do_handshake(ssl_);
    if (r != 1) {
      int e = SSL_get_error(ssl_, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) fail("handshake", e);
      return;
    }
  }
  while (!pending_.empty()) {
    int n = SSL_write(ssl_, pending_.data(), static_cast<int>(pending_.size()));
    if (n <= 0) {
      int e = SSL_get_error(ssl_, n);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) return fail("write", e);
      break;
    }
    pending_.erase(0, static_cast<size_t>(n));
  }
  char buf[4096];
  while (!peer_finished_) {
    int n = SSL_read(ssl_, buf, sizeof buf);
    if (n > 0) {
      plain_.append(buf, static_cast<size_t>(n));
      continue;
    }
    int e = SSL_get_error(ssl_, n);
    if (e == SSL_ERROR_ZERO_RETURN) peer_finished_ = true;  // close_notify
    else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) fail("read", e);
    break;
  }
}

}  // namespace flotilla::discovery
