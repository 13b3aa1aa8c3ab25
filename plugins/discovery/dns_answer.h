// The packet path: one DNS query in wire form → the reply, or "forward it
// upstream", or "drop it". Pure: no sockets, no clock; the server, the unit
// tests and the fuzzer all call it the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "dns_answer_cache.h"
#include "dns_zone.h"

namespace flotilla::discovery {

enum class Transport { udp, tcp };

struct AnswerSettings {
  // Largest UDP reply we send to an EDNS client (DNS flag day 2020: 1232);
  // a client without EDNS gets 512 bytes.
  uint16_t edns_udp_size = 1232;
  // Most records of one set in a UDP reply; 0: as many as fit. A reply cut
  // by this limit carries the TC bit, so the client asks again over TCP and
  // gets every record: nothing is dropped silently.
  uint16_t answer_limit = 0;
  // Names outside the zone go to the upstream resolvers; false: REFUSED.
  bool forward = true;
  // Replies kept for queries asked again (dns_answer_cache.h), about
  // 0.5 KiB each, allocated at the first answer; 0: every query is
  // answered from the zone.
  uint32_t cache_slots = 4096;
};

struct AnswerStats {
  uint64_t queries = 0, answers = 0, nxdomain = 0, nodata = 0, forwarded = 0, refused = 0,
           formerr = 0, truncated = 0, limited = 0, dropped = 0;
  uint64_t cached = 0;  // of the answers, those copied from the answer cache
};

struct Answer {
  enum Kind { reply, forward, drop } kind = drop;
  size_t size = 0;  // bytes written to out, for reply
};

class Responder {
 public:
  Responder(const Zone &zone, AnswerSettings settings);
  ~Responder();
  Responder(const Responder &) = delete;
  Responder &operator=(const Responder &) = delete;

  // query: a message as received (the buffer may be modified); out: room
  // for the reply, at least 512 bytes (65535 for TCP answers in full).
  // A query asked before in this generation of the zone is answered from
  // the answer cache (dns_answer_cache.h) with the same bytes.
  Answer answer(uint8_t *query, size_t len, Transport transport, uint8_t *out, size_t out_cap);

  const AnswerStats &stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }
  void seed(uint64_t s) { rng_ = s ? s : 1; }

 private:
  uint64_t next_random();
  // The full path: the zone's records through libknot.
  Answer answer_full(uint8_t *query, size_t len, Transport transport, uint8_t *out, size_t out_cap);
  // The start of a rotated record set of `count` items: random, or the
  // one a cache hit drew (forced_start_) for the first set.
  uint16_t pick_start(uint16_t count);

  const Zone &zone_;
  AnswerSettings settings_;
  AnswerStats stats_;
  uint64_t rng_;
  knot_rrset_t opt_;  // our OPT RR template (payload = edns_udp_size)
  struct PktFree {
    void operator()(knot_pkt_t *p) const;
  };
  // Reused by every answer (see answer()); they point at scratch_ between.
  std::unique_ptr<knot_pkt_t, PktFree> q_, r_;
  uint8_t scratch_[KNOT_WIRE_HEADER_SIZE] = {};
  AnswerCache cache_;
  // Of the answer in progress: the sets rotated (how many starts drawn),
  // the first one's size and start, whether it ended as a normal answer
  // (not an error reply: those are never cached).
  int forced_start_ = -1;
  uint16_t draws_ = 0, draw_count_ = 0, draw_start_ = 0;
  bool finished_ = false;
};

// A header-and-question reply with rcode (SERVFAIL when every upstream
// failed, REFUSED when too many queries are in flight); 0 when the query is
// too broken to answer.
size_t error_reply(const uint8_t *query, size_t len, uint8_t rcode, uint8_t *out, size_t out_cap);

}  // namespace flotilla::discovery
