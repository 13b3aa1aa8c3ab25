#include "dns_server.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace flotilla::discovery {

namespace {

constexpr size_t kBatch = 32;          // datagrams per recvmmsg/sendmmsg
constexpr size_t kBatchesPerWake = 8;  // then back to the loop, so TCP and timers run
constexpr size_t kUdpIn = 4096;        // a larger query is no query of ours
constexpr size_t kUdpOut = 4096;       // edns_udp_size is at most 4096

}  // namespace

struct DnsServer::Listener {
  DnsServer *owner = nullptr;
  int fd = -1;
  bool udp = true;
  flotilla_handle watch = 0;
  // UDP batch buffers
  std::vector<uint8_t> in, out;
  std::vector<mmsghdr> rmsgs, smsgs;
  std::vector<iovec> riov, siov;
  std::vector<sockaddr_storage> peers;
};

struct DnsServer::Conn {
  DnsServer *owner = nullptr;
  uint64_t id = 0;
  int fd = -1;
  flotilla_handle watch = 0;
  uint32_t watching = 0;
  std::vector<uint8_t> in, out;
  size_t out_off = 0;
  size_t pending = 0;  // forwarded queries not answered yet
  bool eof = false;
  bool reading = false;  // in conn_read: replies are queued, written after
  uint64_t last_active = 0;
};

DnsServer::DnsServer(const flotilla_host *host, Responder &responder, Forwarder &forwarder,
                     Settings settings)
    : host_(host),
      responder_(responder),
      forwarder_(forwarder),
      settings_(std::move(settings)),
      tcp_out_(KNOT_WIRE_MAX_PKTSIZE) {}

DnsServer::~DnsServer() {
  if (sweep_) host_->timer_stop(host_->host_ctx, sweep_);
  while (!conns_.empty()) conn_close(*conns_.begin()->second);
  for (auto &l : listeners_) {
    if (l->watch) host_->fd_unwatch(host_->host_ctx, l->watch);
    if (l->fd >= 0) close(l->fd);
  }
}

bool DnsServer::start(std::string &error) {
  for (const SocketAddress &addr : settings_.listen) {
    SocketAddress actual = addr;
    for (bool udp : {true, false}) {
      auto l = std::make_unique<Listener>();
      l->owner = this;
      l->udp = udp;
      l->fd = socket(addr.ss.ss_family,
                     (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (l->fd < 0) {
        error = "listen " + addr.text() + ": socket: " + std::strerror(errno);
        return false;
      }
      int one = 1;
      setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (addr.ss.ss_family == AF_INET6)
        setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      // TCP binds the port UDP got, so "port 0" means one port for both.
      if (bind(l->fd, reinterpret_cast<const sockaddr *>(&actual.ss), actual.len) < 0) {
        error =
            "listen " + actual.text() + (udp ? " (udp)" : " (tcp)") + ": " + std::strerror(errno);
        close(l->fd);
        return false;
      }
      if (udp) {
        socklen_t len = sizeof actual.ss;
        getsockname(l->fd, reinterpret_cast<sockaddr *>(&actual.ss), &len);
        actual.len = len;
        l->in.resize(kBatch * kUdpIn);
        l->out.resize(kBatch * kUdpOut);
        l->rmsgs.resize(kBatch);
        l->smsgs.resize(kBatch);
        l->riov.resize(kBatch);
        l->siov.resize(kBatch);
        l->peers.resize(kBatch);
        l->watch = host_->fd_watch(host_->host_ctx, l->fd, FLOTILLA_FD_READABLE, on_udp, l.get());
      } else {
        if (listen(l->fd, 128) < 0) {
          error = "listen " + actual.text() + " (tcp): " + std::strerror(errno);
          close(l->fd);
          return false;
        }
        l->watch =
            host_->fd_watch(host_->host_ctx, l->fd, FLOTILLA_FD_READABLE, on_accept, l.get());
      }
      if (!l->watch) {
        error = "listen " + actual.text() + ": the host could not watch the socket";
        close(l->fd);
        return false;
      }
      listeners_.push_back(std::move(l));
    }
    bound_.push_back(actual);
  }
  const uint64_t tick = std::min<uint64_t>(1000, settings_.tcp_idle_timeout_ms / 2);
  sweep_ = host_->timer_start(host_->host_ctx, tick, tick, on_sweep, this);
  return true;
}

// ---- UDP -------------------------------------------------------------------

void DnsServer::on_udp(void *user, int, uint32_t) {
  auto *l = static_cast<Listener *>(user);
  l->owner->udp_batch(*l);
}

void DnsServer::udp_batch(Listener &l) {
  for (size_t round = 0; round < kBatchesPerWake; ++round) {
    for (size_t i = 0; i < kBatch; ++i) {
      l.riov[i] = {l.in.data() + i * kUdpIn, kUdpIn};
      std::memset(&l.rmsgs[i], 0, sizeof(mmsghdr));
      l.rmsgs[i].msg_hdr.msg_iov = &l.riov[i];
      l.rmsgs[i].msg_hdr.msg_iovlen = 1;
      l.rmsgs[i].msg_hdr.msg_name = &l.peers[i];
      l.rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage);
    }
    int n = recvmmsg(l.fd, l.rmsgs.data(), kBatch, MSG_DONTWAIT, nullptr);
    if (n <= 0) return;  // EAGAIN, or an error the next wake-up sees again
    size_t replies = 0;
    for (int i = 0; i < n; ++i) {
      mmsghdr &m = l.rmsgs[i];
      if (m.msg_hdr.msg_flags & MSG_TRUNC) continue;
      uint8_t *q = l.in.data() + i * kUdpIn;
      uint8_t *out = l.out.data() + replies * kUdpOut;
      Answer a = responder_.answer(q, m.msg_len, Transport::udp, out, kUdpOut);
      if (a.kind == Answer::reply) {
        l.siov[replies] = {out, a.size};
        std::memset(&l.smsgs[replies], 0, sizeof(mmsghdr));
        l.smsgs[replies].msg_hdr.msg_iov = &l.siov[replies];
        l.smsgs[replies].msg_hdr.msg_iovlen = 1;
        l.smsgs[replies].msg_hdr.msg_name = &l.peers[i];
        l.smsgs[replies].msg_hdr.msg_namelen = m.msg_hdr.msg_namelen;
        ++replies;
      } else if (a.kind == Answer::forward) {
        sockaddr_storage peer = l.peers[i];
        socklen_t peer_len = m.msg_hdr.msg_namelen;
        int fd = l.fd;
        forwarder_.forward(
            q, m.msg_len, Transport::udp, [fd, peer, peer_len](const uint8_t *r, size_t len) {
              sendto(fd, r, len, MSG_DONTWAIT, reinterpret_cast<const sockaddr *>(&peer), peer_len);
            });
      }
    }
    size_t sent = 0;
    while (sent < replies) {
      int k = sendmmsg(l.fd, l.smsgs.data() + sent, static_cast<unsigned>(replies - sent),
                       MSG_DONTWAIT);
      if (k <= 0) break;  // a full socket buffer drops replies, as UDP may
      sent += static_cast<size_t>(k);
    }
    if (static_cast<size_t>(n) < kBatch) return;
  }
}

// ---- TCP -------------------------------------------------------------------

void DnsServer::on_accept(void *user, int, uint32_t) {
  auto *l = static_cast<Listener *>(user);
  DnsServer &s = *l->owner;
  for (;;) {
    int fd = accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (s.conns_.size() >= s.settings_.tcp_max_connections) {
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->owner = &s;
    c->id = s.next_conn_++;
    c->fd = fd;
    c->last_active = s.now_ms_;
    Conn &ref = *c;
    s.conns_.emplace(c->id, std::move(c));
    s.conn_watch(ref);
    if (!ref.watch) s.conn_close(ref);
  }
}

void DnsServer::conn_watch(Conn &c) {
  uint32_t want = 0;
  if (!c.eof) want |= FLOTILLA_FD_READABLE;
  if (c.out_off < c.out.size()) want |= FLOTILLA_FD_WRITABLE;
  if (want == c.watching && c.watch) return;
  if (c.watch) host_->fd_unwatch(host_->host_ctx, c.watch);
  c.watch = 0;
  c.watching = want;
  if (want) c.watch = host_->fd_watch(host_->host_ctx, c.fd, want, on_conn, &c);
}

void DnsServer::on_conn(void *user, int, uint32_t events) {
  auto *c = static_cast<Conn *>(user);
  DnsServer &s = *c->owner;
  const uint64_t id = c->id;
  if (events & FLOTILLA_FD_WRITABLE) {
    s.conn_write(*c);
    if (!s.conns_.count(id)) return;
  }
  if (events & FLOTILLA_FD_READABLE) s.conn_read(*c);
}

void DnsServer::conn_read(Conn &c) {
  uint8_t buf[16384];
  for (;;) {
    ssize_t n = recv(c.fd, buf, sizeof buf, 0);
    if (n == 0) {
      c.eof = true;
      break;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return conn_close(c);
    }
    c.in.insert(c.in.end(), buf, buf + n);
    c.last_active = now_ms_;
    if (c.in.size() > 4 * 65537) break;  // answer what we have first
  }
  size_t off = 0;
  c.reading = true;
  while (c.in.size() - off >= 2) {
    const size_t len = knot_wire_read_u16(c.in.data() + off);
    if (c.in.size() - off - 2 < len) break;
    uint8_t *q = c.in.data() + off + 2;
    Answer a = responder_.answer(q, len, Transport::tcp, tcp_out_.data(), tcp_out_.size());
    if (a.kind == Answer::reply) {
      conn_queue(c.id, tcp_out_.data(), a.size);
    } else if (a.kind == Answer::forward) {
      ++c.pending;
      const uint64_t id = c.id;
      DnsServer *self = this;
      forwarder_.forward(q, len, Transport::tcp, [self, id](const uint8_t *r, size_t rlen) {
        auto it = self->conns_.find(id);
        if (it == self->conns_.end()) return;  // the client went away
        --it->second->pending;
        self->conn_queue(id, r, rlen);
      });
    } else if (len == 0) {
      return conn_close(c);  // a zero-length frame: nothing sensible follows
    }
    off += 2 + len;
  }
  c.reading = false;
  c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(off));
  if (c.eof && c.out_off == c.out.size() && c.pending == 0) return conn_close(c);
  conn_write(c);
}

void DnsServer::conn_queue(uint64_t id, const uint8_t *reply, size_t len) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn &c = *it->second;
  uint8_t prefix[2];
  knot_wire_write_u16(prefix, static_cast<uint16_t>(len));
  c.out.insert(c.out.end(), prefix, prefix + 2);
  c.out.insert(c.out.end(), reply, reply + len);
  if (!c.reading) conn_write(c);
}

void DnsServer::conn_write(Conn &c) {
  while (c.out_off < c.out.size()) {
    ssize_t n = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return conn_close(c);
    }
    c.out_off += static_cast<size_t>(n);
    c.last_active = now_ms_;
  }
  if (c.out_off == c.out.size()) {
    c.out.clear();
    c.out_off = 0;
    if (c.eof && c.pending == 0) return conn_close(c);
  }
  conn_watch(c);
}

void DnsServer::conn_close(Conn &c) {
  if (c.watch) host_->fd_unwatch(host_->host_ctx, c.watch);
  if (c.fd >= 0) close(c.fd);
  conns_.erase(c.id);
}

void DnsServer::on_sweep(void *user) {
  auto *s = static_cast<DnsServer *>(user);
  s->now_ms_ += std::min<uint64_t>(1000, s->settings_.tcp_idle_timeout_ms / 2);
  std::vector<Conn *> idle;
  for (auto &[id, c] : s->conns_)
    if (c->pending == 0 && s->now_ms_ - c->last_active >= s->settings_.tcp_idle_timeout_ms)
      idle.push_back(c.get());
  for (Conn *c : idle) s->conn_close(*c);
}

}  // namespace flotilla::discovery
