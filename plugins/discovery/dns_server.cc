#include "dns_server.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>

namespace flotilla::discovery {

namespace {

constexpr size_t kBatch = 32;          // datagrams per recvmmsg/sendmmsg
constexpr size_t kBatchesPerWake = 8;  // then back to the loop, so TCP and timers run
constexpr size_t kUdpIn = 4096;        // a larger query is no query of ours
constexpr size_t kUdpOut = 4096;       // edns_udp_size is at most 4096
// UDP GSO (UDP_SEGMENT): replies of one size to one peer leave as one
// datagram that the kernel cuts into the same replies, so a batch pays the
// send path (route, skb, loopback or device queue) once per group, not per
// reply (measured: the send path was 63% of the server's CPU time under
// dnsperf, README "Benchmarks"). The kernel takes at most 64 segments
// (UDP_MAX_SEGMENTS of older kernels; a batch is 32) and 64 KiB in one send.
constexpr size_t kGsoMaxSegments = 64;
constexpr size_t kGsoMaxBytes = 65000;
// A segment must fit the route's MTU or the send fails; replies larger
// than this go alone (edns_udp_size's default, 1232, fits a 1280 MTU).
constexpr size_t kGsoMaxSegment = 1232;

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
  // One reply of the batch: its buffer, size and peer (index into peers).
  struct Reply {
    uint8_t *data;
    uint16_t size;
    uint16_t peer;
    uint16_t group;
  };
  std::vector<Reply> replies;
  // Per message: UDP_SEGMENT control data.
  std::vector<std::array<uint8_t, CMSG_SPACE(sizeof(uint16_t))>> cmsgs;
  // Off after the kernel refused a segmented send (no UDP_SEGMENT, a
  // device without checksum offload, an MTU below a segment): every reply
  // then goes as its own datagram, as before.
  bool gso = true;
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
        l->replies.reserve(kBatch);
        l->cmsgs.resize(kBatch);
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
    l.replies.clear();
    for (int i = 0; i < n; ++i) {
      mmsghdr &m = l.rmsgs[i];
      if (m.msg_hdr.msg_flags & MSG_TRUNC) continue;
      uint8_t *q = l.in.data() + i * kUdpIn;
      uint8_t *out = l.out.data() + l.replies.size() * kUdpOut;
      Answer a = responder_.answer(q, m.msg_len, Transport::udp, out, kUdpOut);
      if (a.kind == Answer::reply) {
        l.replies.push_back({out, static_cast<uint16_t>(a.size), static_cast<uint16_t>(i), 0});
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
    udp_send(l);
    if (static_cast<size_t>(n) < kBatch) return;
  }
}

// Sends the batch's replies: with GSO, one message per group of replies of
// the same size to the same peer; without, one per reply. Replies to
// different queries may leave in any order (UDP has none to keep).
void DnsServer::udp_send(Listener &l) {
  const size_t count = l.replies.size();
  if (count == 0) return;
  struct Group {
    uint16_t peer, size, first, n;
  };
  Group groups[kBatch];
  size_t ngroups = 0;
  for (size_t r = 0; r < count; ++r) {
    Listener::Reply &rep = l.replies[r];
    const mmsghdr &from = l.rmsgs[rep.peer];
    size_t g = ngroups;
    if (l.gso && rep.size <= kGsoMaxSegment) {
      for (g = 0; g < ngroups; ++g) {
        const Group &gr = groups[g];
        if (gr.size != rep.size || gr.n >= kGsoMaxSegments ||
            static_cast<size_t>(gr.n + 1) * rep.size > kGsoMaxBytes)
          continue;
        const mmsghdr &other = l.rmsgs[gr.peer];
        if (other.msg_hdr.msg_namelen == from.msg_hdr.msg_namelen &&
            std::memcmp(&l.peers[gr.peer], &l.peers[rep.peer], from.msg_hdr.msg_namelen) == 0)
          break;
      }
    }
    if (g == ngroups) groups[ngroups++] = {rep.peer, rep.size, 0, 0};
    rep.group = static_cast<uint16_t>(g);
    ++groups[g].n;
  }
  // Lay the iovecs out group by group.
  uint16_t at = 0;
  for (size_t g = 0; g < ngroups; ++g) {
    groups[g].first = at;
    at = static_cast<uint16_t>(at + groups[g].n);
    groups[g].n = 0;
  }
  for (size_t r = 0; r < count; ++r) {
    Group &gr = groups[l.replies[r].group];
    l.siov[gr.first + gr.n++] = {l.replies[r].data, l.replies[r].size};
  }
  for (size_t g = 0; g < ngroups; ++g) {
    const Group &gr = groups[g];
    mmsghdr &m = l.smsgs[g];
    std::memset(&m, 0, sizeof m);
    m.msg_hdr.msg_iov = &l.siov[gr.first];
    m.msg_hdr.msg_iovlen = gr.n;
    m.msg_hdr.msg_name = &l.peers[gr.peer];
    m.msg_hdr.msg_namelen = l.rmsgs[gr.peer].msg_hdr.msg_namelen;
    if (gr.n > 1) {
      m.msg_hdr.msg_control = l.cmsgs[g].data();
      m.msg_hdr.msg_controllen = l.cmsgs[g].size();
      cmsghdr *c = CMSG_FIRSTHDR(&m.msg_hdr);
      c->cmsg_level = SOL_UDP;
      c->cmsg_type = UDP_SEGMENT;
      c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      const uint16_t segment = gr.size;
      std::memcpy(CMSG_DATA(c), &segment, sizeof segment);
    }
  }
  size_t sent = 0;
  while (sent < ngroups) {
    int k =
        sendmmsg(l.fd, l.smsgs.data() + sent, static_cast<unsigned>(ngroups - sent), MSG_DONTWAIT);
    if (k > 0) {
      sent += static_cast<size_t>(k);
      continue;
    }
    // A full socket buffer drops replies, as UDP may. A segmented send the
    // kernel refuses for any other reason turns GSO off for this socket,
    // and the rest of the batch goes one reply at a time.
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || !l.gso ||
        l.smsgs[sent].msg_hdr.msg_iovlen < 2)
      break;
    l.gso = false;
    // Rebuild from the iovecs of the unsent groups, one message each.
    size_t m = 0;
    for (size_t g = sent; g < ngroups; ++g) {
      const Group &gr = groups[g];
      for (uint16_t i = 0; i < gr.n; ++i) {
        iovec &v = l.siov[gr.first + i];
        l.replies[m] = {static_cast<uint8_t *>(v.iov_base), static_cast<uint16_t>(v.iov_len),
                        gr.peer, 0};
        ++m;
      }
    }
    l.replies.resize(m);
    return udp_send(l);
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
