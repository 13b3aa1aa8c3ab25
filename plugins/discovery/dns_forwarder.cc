#include "dns_forwarder.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

namespace flotilla::discovery {

struct Forwarder::Exchange {
  Forwarder *owner = nullptr;
  uint64_t key = 0;
  std::vector<uint8_t> query;  // with our id
  uint16_t client_id = 0;
  size_t question_len = 0;  // header + question, for matching the reply
  Transport transport = Transport::udp;
  ReplyFn reply;
  size_t upstream = 0;
  int fd = -1;
  flotilla_handle watch = 0;
  flotilla_handle timer = 0;
  // TCP
  bool connected = false;
  size_t sent = 0;
  std::vector<uint8_t> in;
};

namespace {

size_t question_length(const uint8_t *q, size_t len) {
  if (len < KNOT_WIRE_HEADER_SIZE) return 0;
  int n = knot_dname_wire_check(q + KNOT_WIRE_HEADER_SIZE, q + len, nullptr);
  if (n <= 0) return 0;
  size_t total = KNOT_WIRE_HEADER_SIZE + static_cast<size_t>(n) + 4;
  return total <= len ? total : 0;
}

// The reply answers our question: same id, QR set, same question (names
// compared without case).
bool matches(const std::vector<uint8_t> &q, size_t qlen, const uint8_t *r, size_t rlen) {
  if (rlen < qlen || !knot_wire_get_qr(r) || knot_wire_get_id(r) != knot_wire_get_id(q.data()))
    return false;
  if (knot_wire_get_qdcount(r) != 1) return false;
  for (size_t i = KNOT_WIRE_HEADER_SIZE; i < qlen; ++i)
    if (std::tolower(q[i]) != std::tolower(r[i])) return false;
  return true;
}

}  // namespace

Forwarder::Forwarder(const flotilla_host *host, Settings settings)
    : host_(host), settings_(std::move(settings)), rng_(std::random_device{}()) {}

Forwarder::~Forwarder() {
  for (auto &[k, x] : exchanges_) {
    close_socket(*x);
    if (x->timer) host_->timer_stop(host_->host_ctx, x->timer);
  }
}

void Forwarder::forward(const uint8_t *query, size_t len, Transport transport, ReplyFn reply) {
  std::vector<uint8_t> out(KNOT_WIRE_HEADER_SIZE + KNOT_DNAME_MAXLEN + 4);
  const size_t qlen = question_length(query, len);
  auto refuse = [&](uint8_t rcode) {
    size_t n = error_reply(query, len, rcode, out.data(), out.size());
    if (n) reply(out.data(), n);
  };
  if (qlen == 0) return refuse(KNOT_RCODE_FORMERR);
  if (settings_.upstreams.empty() || exchanges_.size() >= settings_.max_inflight) {
    ++failures_;
    return refuse(KNOT_RCODE_SERVFAIL);
  }
  auto x = std::make_unique<Exchange>();
  x->owner = this;
  x->key = next_id_++;
  x->query.assign(query, query + len);
  x->client_id = knot_wire_get_id(query);
  knot_wire_set_id(x->query.data(), static_cast<uint16_t>(rng_()));
  x->question_len = qlen;
  x->transport = transport;
  x->reply = std::move(reply);
  Exchange &ref = *x;
  exchanges_.emplace(x->key, std::move(x));
  attempt(ref);
}

void Forwarder::attempt(Exchange &x) {
  const SocketAddress &up = settings_.upstreams[x.upstream];
  const bool tcp = x.transport == Transport::tcp;
  x.fd =
      socket(up.ss.ss_family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (x.fd < 0) return next_upstream(x);
  x.connected = false;
  x.sent = 0;
  x.in.clear();
  int rc = connect(x.fd, reinterpret_cast<const sockaddr *>(&up.ss), up.len);
  if (rc < 0 && !(tcp && errno == EINPROGRESS)) return next_upstream(x);
  if (!tcp) {
    if (send(x.fd, x.query.data(), x.query.size(), 0) < 0) return next_upstream(x);
    x.watch = host_->fd_watch(host_->host_ctx, x.fd, FLOTILLA_FD_READABLE, fd_event, &x);
  } else {
    x.watch = host_->fd_watch(host_->host_ctx, x.fd, FLOTILLA_FD_WRITABLE, fd_event, &x);
  }
  if (!x.watch) return next_upstream(x);
  x.timer = host_->timer_start(host_->host_ctx, settings_.timeout_ms, 0, timeout, &x);
}

void Forwarder::close_socket(Exchange &x) {
  if (x.watch) host_->fd_unwatch(host_->host_ctx, x.watch);
  x.watch = 0;
  if (x.fd >= 0) close(x.fd);
  x.fd = -1;
}

void Forwarder::next_upstream(Exchange &x) {
  close_socket(x);
  if (x.timer) host_->timer_stop(host_->host_ctx, x.timer);
  x.timer = 0;
  if (++x.upstream >= settings_.upstreams.size()) return fail(x);
  attempt(x);
}

void Forwarder::fail(Exchange &x) {
  ++failures_;
  std::vector<uint8_t> out(x.query.size() + 16);
  size_t n =
      error_reply(x.query.data(), x.query.size(), KNOT_RCODE_SERVFAIL, out.data(), out.size());
  if (n) {
    knot_wire_set_id(out.data(), x.client_id);
    finish(x, out.data(), n);
  } else {
    finish(x, nullptr, 0);
  }
}

void Forwarder::finish(Exchange &x, const uint8_t *reply, size_t len) {
  close_socket(x);
  if (x.timer) host_->timer_stop(host_->host_ctx, x.timer);
  x.timer = 0;
  ReplyFn fn = std::move(x.reply);
  exchanges_.erase(x.key);  // x is gone from here on
  if (reply && len) fn(reply, len);
}

void Forwarder::on_writable(Exchange &x) {
  if (!x.connected) {
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(x.fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) return next_upstream(x);
    x.connected = true;
  }
  // Length-prefixed, as DNS over TCP is framed (RFC 1035 4.2.2).
  std::vector<uint8_t> frame(2 + x.query.size());
  knot_wire_write_u16(frame.data(), static_cast<uint16_t>(x.query.size()));
  std::memcpy(frame.data() + 2, x.query.data(), x.query.size());
  while (x.sent < frame.size()) {
    ssize_t n = send(x.fd, frame.data() + x.sent, frame.size() - x.sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      return next_upstream(x);
    }
    x.sent += static_cast<size_t>(n);
  }
  host_->fd_unwatch(host_->host_ctx, x.watch);
  x.watch = host_->fd_watch(host_->host_ctx, x.fd, FLOTILLA_FD_READABLE, fd_event, &x);
  if (!x.watch) next_upstream(x);
}

void Forwarder::on_readable(Exchange &x) {
  uint8_t buf[65535];
  if (x.transport == Transport::udp) {
    for (;;) {
      ssize_t n = recv(x.fd, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        return next_upstream(x);  // ICMP port unreachable and the like
      }
      const size_t len = static_cast<size_t>(n);
      if (!matches(x.query, x.question_len, buf, len)) continue;  // spoofed or stale
      const uint8_t rcode = knot_wire_get_rcode(buf);
      if ((rcode == KNOT_RCODE_SERVFAIL || rcode == KNOT_RCODE_REFUSED) &&
          x.upstream + 1 < settings_.upstreams.size())
        return next_upstream(x);
      knot_wire_set_id(buf, x.client_id);
      return finish(x, buf, len);
    }
  }
  for (;;) {
    ssize_t n = recv(x.fd, buf, sizeof buf, 0);
    if (n == 0) return next_upstream(x);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return next_upstream(x);
    }
    x.in.insert(x.in.end(), buf, buf + n);
    if (x.in.size() > 2 + 65535) return next_upstream(x);
  }
  if (x.in.size() < 2) return;
  const size_t want = knot_wire_read_u16(x.in.data());
  if (x.in.size() < 2 + want) return;
  uint8_t *r = x.in.data() + 2;
  if (!matches(x.query, x.question_len, r, want)) return next_upstream(x);
  knot_wire_set_id(r, x.client_id);
  std::vector<uint8_t> keep(r, r + want);
  finish(x, keep.data(), keep.size());
}

void Forwarder::fd_event(void *user, int, uint32_t events) {
  auto *x = static_cast<Exchange *>(user);
  if (events & FLOTILLA_FD_WRITABLE)
    x->owner->on_writable(*x);
  else
    x->owner->on_readable(*x);
}

void Forwarder::timeout(void *user) {
  auto *x = static_cast<Exchange *>(user);
  x->timer = 0;  // a one-shot timer's handle is released after it ran
  x->owner->next_upstream(*x);
}

}  // namespace flotilla::discovery
