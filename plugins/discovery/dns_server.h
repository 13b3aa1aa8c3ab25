// The DNS listeners on the daemon's loop: UDP (recvmmsg/sendmmsg in
// batches, the replies of one size to one peer as one UDP GSO send) and
// TCP (RFC 7766: pipelined queries, replies in any order, idle connections
// closed), each on every configured address.
#pragma once

#include <flotilla/host.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "discovery_config.h"
#include "dns_answer.h"
#include "dns_forwarder.h"

namespace flotilla::discovery {

class DnsServer {
 public:
  struct Settings {
    std::vector<SocketAddress> listen;
    uint32_t tcp_idle_timeout_ms = 10000;
    uint32_t tcp_max_connections = 512;
  };

  DnsServer(const flotilla_host *host, Responder &responder, Forwarder &forwarder,
            Settings settings);
  ~DnsServer();
  DnsServer(const DnsServer &) = delete;
  DnsServer &operator=(const DnsServer &) = delete;

  // Binds every address (UDP and TCP); false with a message naming the
  // address when one cannot be bound.
  bool start(std::string &error);
  // The addresses bound, in listen order (a port 0 resolved to the real one).
  const std::vector<SocketAddress> &bound() const { return bound_; }
  size_t tcp_connections() const { return conns_.size(); }

  struct Listener;
  struct Conn;

 private:
  static void on_udp(void *user, int fd, uint32_t events);
  static void on_accept(void *user, int fd, uint32_t events);
  static void on_conn(void *user, int fd, uint32_t events);
  static void on_sweep(void *user);
  void udp_batch(Listener &l);
  void udp_send(Listener &l);
  void conn_read(Conn &c);
  void conn_write(Conn &c);
  void conn_queue(uint64_t id, const uint8_t *reply, size_t len);
  void conn_close(Conn &c);
  void conn_watch(Conn &c);

  const flotilla_host *host_;
  Responder &responder_;
  Forwarder &forwarder_;
  Settings settings_;
  std::vector<SocketAddress> bound_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;
  uint64_t next_conn_ = 1;
  flotilla_handle sweep_ = 0;
  uint64_t now_ms_ = 0;  // advanced by the sweep timer, for idle timeouts
  std::vector<uint8_t> tcp_out_;
};

}  // namespace flotilla::discovery
