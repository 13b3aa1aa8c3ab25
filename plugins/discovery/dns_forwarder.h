// Forwarding of names outside the zone to the host's upstream resolvers.
//
// Every query is its own exchange: its own socket (so its own random source
// port), its own random id and its own timeout, so a slow upstream answer
// never holds up another query (no head-of-line blocking). The upstreams
// are tried in order, each for forward_timeout_ms; a SERVFAIL or REFUSED
// moves on to the next; after the last the client gets SERVFAIL. A query
// that came over TCP goes upstream over TCP, one over UDP over UDP (a
// truncated upstream reply is relayed as is, so the client retries over
// TCP, which is then forwarded over TCP).
#pragma once

#include <flotilla/host.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "discovery_config.h"
#include "dns_answer.h"

namespace flotilla::discovery {

class Forwarder {
 public:
  // [loop-thread] Called once per forwarded query with the reply to send
  // (the client's id restored), valid only during the call.
  using ReplyFn = std::function<void(const uint8_t *reply, size_t len)>;

  struct Settings {
    std::vector<SocketAddress> upstreams;
    uint32_t timeout_ms = 1500;
    uint32_t max_inflight = 1024;
  };

  Forwarder(const flotilla_host *host, Settings settings);
  ~Forwarder();  // ends every exchange without calling its ReplyFn
  Forwarder(const Forwarder &) = delete;
  Forwarder &operator=(const Forwarder &) = delete;

  void forward(const uint8_t *query, size_t len, Transport transport, ReplyFn reply);
  size_t inflight() const { return exchanges_.size(); }
  uint64_t failures() const { return failures_; }

  struct Exchange;  // one query in flight (dns_forwarder.cc)

 private:
  friend struct Exchange;
  void attempt(Exchange &x);
  void finish(Exchange &x, const uint8_t *reply, size_t len);
  void fail(Exchange &x);
  void next_upstream(Exchange &x);
  void on_readable(Exchange &x);
  void on_writable(Exchange &x);
  void close_socket(Exchange &x);
  static void fd_event(void *user, int fd, uint32_t events);  // host callbacks
  static void timeout(void *user);

  const flotilla_host *host_;
  Settings settings_;
  std::mt19937 rng_;
  uint64_t next_id_ = 1;
  uint64_t failures_ = 0;
  std::map<uint64_t, std::unique_ptr<Exchange>> exchanges_;
};

}  // namespace flotilla::discovery
