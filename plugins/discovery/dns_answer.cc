#include "dns_answer.h"

#include <cstring>
#include <random>

namespace flotilla::discovery {

namespace {

// A reply of the header alone: for a query whose question cannot be read.
size_t header_reply(const uint8_t *query, uint8_t rcode, uint8_t *out) {
  std::memcpy(out, query, KNOT_WIRE_HEADER_SIZE);
  knot_wire_set_qr(out);
  knot_wire_clear_aa(out);
  knot_wire_clear_tc(out);
  knot_wire_clear_ad(out);
  knot_wire_clear_z(out);
  knot_wire_set_qdcount(out, 0);
  knot_wire_set_ancount(out, 0);
  knot_wire_set_nscount(out, 0);
  knot_wire_set_arcount(out, 0);
  knot_wire_set_rcode(out, rcode);
  return KNOT_WIRE_HEADER_SIZE;
}

// knot_pkt_put, and after a failure pointing the packet's compression
// suffix back at the question: libknot 3.2 leaves it at the partly written
// record, and a later put that compresses against those bytes can follow
// garbage pointers forever (found by the fuzzer).
int put_rr(knot_pkt_t *pkt, uint16_t hint, const knot_rrset_t *rr, uint16_t flags) {
  int ret = knot_pkt_put(pkt, hint, rr, flags);
  if (ret != KNOT_EOK) {
    pkt->compr.suffix.pos = KNOT_WIRE_HEADER_SIZE;
    pkt->compr.suffix.labels =
        static_cast<uint8_t>(knot_dname_labels(pkt->wire + KNOT_WIRE_HEADER_SIZE, pkt->wire));
  }
  return ret;
}

}  // namespace

void Responder::PktFree::operator()(knot_pkt_t *p) const {
  knot_pkt_free(p);
}

Responder::Responder(const Zone &zone, AnswerSettings settings)
    : zone_(zone),
      settings_(settings),
      rng_(std::random_device{}() | 1),
      cache_(settings.cache_slots) {
  // One query and one reply packet for every answer: each is pointed at the
  // datagram's bytes in turn, so the query path allocates nothing (the RR
  // arrays libknot grows stay).
  q_.reset(knot_pkt_new(scratch_, sizeof scratch_, nullptr));
  r_.reset(knot_pkt_new(scratch_, sizeof scratch_, nullptr));
  if (!q_ || !r_) throw std::bad_alloc();
  if (settings_.edns_udp_size < KNOT_EDNS_MIN_UDP_PAYLOAD)
    settings_.edns_udp_size = KNOT_EDNS_MIN_UDP_PAYLOAD;
  knot_rrset_init_empty(&opt_);
  if (knot_edns_init(&opt_, settings_.edns_udp_size, 0, KNOT_EDNS_VERSION, nullptr) != KNOT_EOK)
    throw std::bad_alloc();
}

Responder::~Responder() {
  knot_rrset_clear(&opt_, nullptr);
}

uint64_t Responder::next_random() {
  // xorshift64*: shuffling answers needs speed, not secrecy.
  rng_ ^= rng_ >> 12;
  rng_ ^= rng_ << 25;
  rng_ ^= rng_ >> 27;
  return rng_ * 2685821657736338717ull;
}

uint16_t Responder::pick_start(uint16_t count) {
  const bool first = draws_++ == 0;
  if (first) draw_count_ = count;
  const uint16_t start = first && forced_start_ >= 0 ? static_cast<uint16_t>(forced_start_ % count)
                                                     : static_cast<uint16_t>(next_random() % count);
  if (first) draw_start_ = start;
  return start;
}

Answer Responder::answer(uint8_t *query, size_t len, Transport transport, uint8_t *out,
                         size_t out_cap) {
  Answer result;
  if (len < KNOT_WIRE_HEADER_SIZE || len > KNOT_WIRE_MAX_PKTSIZE ||
      out_cap < KNOT_WIRE_MIN_PKTSIZE || knot_wire_get_qr(query)) {
    // Too short to echo, or a response: answering a response can loop.
    ++stats_.dropped;
    return result;
  }
  ++stats_.queries;
  if (!cache_.enabled()) return answer_full(query, len, transport, out, out_cap);

  // A query asked before, in this generation of the zone: its reply as the
  // full path wrote it, with this query's ID. The rotation is drawn from
  // the same random numbers the full path would use.
  const uint8_t tkey = transport == Transport::udp ? 0 : 1;
  const uint64_t generation = zone_.generation();
  forced_start_ = -1;
  if (const AnswerCache::Entry *e = cache_.find(query, len, tkey, out_cap, generation)) {
    uint16_t v = 0;
    if (AnswerCache::draws(*e))
      v = static_cast<uint16_t>(next_random() % AnswerCache::variants(*e));
    uint16_t bits = 0;
    if (size_t n = AnswerCache::copy(*e, v, query, out, out_cap, &bits)) {
      ++stats_.cached;
      if (bits & AnswerCache::kAnswer) ++stats_.answers;
      if (bits & AnswerCache::kNxdomain) ++stats_.nxdomain;
      if (bits & AnswerCache::kNodata) ++stats_.nodata;
      if (bits & AnswerCache::kTruncated) ++stats_.truncated;
      if (bits & AnswerCache::kLimited) ++stats_.limited;
      result.kind = Answer::reply;
      result.size = n;
      return result;
    }
    // That rotation is not written yet: the full path writes it, from the
    // start just drawn.
    if (AnswerCache::draws(*e)) forced_start_ = v;
  }
  const AnswerStats before = stats_;
  draws_ = 0;
  finished_ = false;
  result = answer_full(query, len, transport, out, out_cap);
  forced_start_ = -1;
  // Only a normal answer with at most one rotated set is kept: error
  // replies (FORMERR, REFUSED, ...) and forwards are not.
  if (!finished_ || result.kind != Answer::reply || draws_ > 1) return result;
  uint16_t bits = 0;
  if (stats_.answers != before.answers) bits |= AnswerCache::kAnswer;
  if (stats_.nxdomain != before.nxdomain) bits |= AnswerCache::kNxdomain;
  if (stats_.nodata != before.nodata) bits |= AnswerCache::kNodata;
  if (stats_.truncated != before.truncated) bits |= AnswerCache::kTruncated;
  if (stats_.limited != before.limited) bits |= AnswerCache::kLimited;
  const bool drew = draws_ == 1;
  cache_.insert(query, len, tkey, out_cap, generation, drew ? draw_count_ : 1, drew,
                drew ? draw_start_ : 0, out, result.size, bits);
  return result;
}

Answer Responder::answer_full(uint8_t *query, size_t len, Transport transport, uint8_t *out,
                              size_t out_cap) {
  Answer result;

  // The query packet over the caller's bytes until we return; then over our
  // scratch header again, so that clearing it (which frees what parsing
  // allocated, e.g. EDNS options) never writes into the caller's buffer,
  // which the forwarder may still send upstream.
  knot_pkt_t *q = q_.get();
  struct Release {
    knot_pkt_t *q;
    uint8_t *scratch;
    size_t size;
    ~Release() {
      q->wire = scratch;
      q->size = q->max_size = size;
      knot_pkt_clear(q);
      q->qname_size = 0;
    }
  } release{q, scratch_, sizeof scratch_};
  q->wire = query;
  q->size = q->max_size = len;
  q->parsed = 0;
  q->qname_size = 0;
  const int parsed = knot_pkt_parse(q, 0);
  const bool has_question = q->qname_size > 0 && knot_wire_get_qdcount(query) == 1;
  auto fail = [&](uint8_t rcode) {
    if (rcode == KNOT_RCODE_FORMERR) ++stats_.formerr;
    if (rcode == KNOT_RCODE_REFUSED) ++stats_.refused;
    result.kind = Answer::reply;
    result.size = has_question ? error_reply(query, len, rcode, out, out_cap) : 0;
    if (result.size == 0) result.size = header_reply(query, rcode, out);
    return result;
  };
  if (parsed != KNOT_EOK || !has_question) return fail(KNOT_RCODE_FORMERR);
  if (knot_wire_get_opcode(query) != KNOT_OPCODE_QUERY) return fail(KNOT_RCODE_NOTIMPL);
  // Only the question counts: a query with answers or authority records is
  // malformed for our purposes (and TSIG is not served).
  if (knot_wire_get_ancount(query) != 0 || knot_wire_get_nscount(query) != 0 ||
      knot_pkt_has_tsig(q))
    return fail(KNOT_RCODE_FORMERR);

  const uint8_t *qname = knot_pkt_qname(q);
  const uint16_t qtype = knot_pkt_qtype(q);
  const uint16_t qclass = knot_pkt_qclass(q);
  const ZoneNode *node = zone_.find(qname);
  const bool ours = node != nullptr || zone_.in_zone(qname);
  if (!ours) {
    if (!settings_.forward) return fail(KNOT_RCODE_REFUSED);
    ++stats_.forwarded;
    result.kind = Answer::forward;
    return result;
  }
  if (qclass != KNOT_CLASS_IN && qclass != KNOT_CLASS_ANY) return fail(KNOT_RCODE_REFUSED);
  if (qtype == KNOT_RRTYPE_AXFR || qtype == KNOT_RRTYPE_IXFR) return fail(KNOT_RCODE_REFUSED);

  // The reply's size: 512 without EDNS, the smaller of the client's and our
  // payload with it, everything over TCP.
  size_t limit = KNOT_WIRE_MIN_PKTSIZE;
  const bool edns = knot_pkt_has_edns(q);
  bool badvers = false;
  if (edns) {
    badvers = knot_edns_get_version(q->opt_rr) != KNOT_EDNS_VERSION;
    size_t client = knot_edns_get_payload(q->opt_rr);
    if (client < KNOT_EDNS_MIN_UDP_PAYLOAD) client = KNOT_EDNS_MIN_UDP_PAYLOAD;
    limit = std::min<size_t>(client, settings_.edns_udp_size);
  }
  if (transport == Transport::tcp) limit = KNOT_WIRE_MAX_PKTSIZE;
  if (limit > out_cap) limit = out_cap;

  // The reply packet, pointed at out, with a fresh compression context.
  knot_pkt_t *r = r_.get();
  r->wire = out;
  r->size = 0;
  r->max_size = std::min<size_t>(out_cap, KNOT_WIRE_MAX_PKTSIZE);
  r->flags = 0;
  r->compr.wire = out;
  r->compr.rrinfo = nullptr;
  r->compr.suffix.pos = 0;
  r->compr.suffix.labels = 0;
  if (knot_pkt_init_response(r, q) != KNOT_EOK) return fail(KNOT_RCODE_SERVFAIL);
  r->max_size = limit;
  knot_wire_set_aa(r->wire);
  if (settings_.forward) knot_wire_set_ra(r->wire);
  knot_wire_clear_z(r->wire);

  knot_rrset_t opt = opt_;
  uint16_t reserved = 0;
  if (edns) {
    if (badvers) knot_edns_set_ext_rcode(&opt, KNOT_EDNS_RCODE_HI(KNOT_RCODE_BADVERS));
    reserved = static_cast<uint16_t>(knot_edns_wire_size(&opt));
    if (knot_pkt_reserve(r, reserved) != KNOT_EOK) return fail(KNOT_RCODE_SERVFAIL);
  }

  bool answered = false;
  bool space = true;
  bool limited = false;
  uint16_t srv_start = 0, srv_n = 0;
  auto put = [&](const PreparedSet &set, uint16_t type, uint16_t *start_out, uint16_t *n_out) {
    if (set.empty() || !space) return;
    uint16_t n = set.count();
    if (transport == Transport::udp && settings_.answer_limit > 0 && n > settings_.answer_limit) {
      n = settings_.answer_limit;
      limited = true;
    }
    const uint16_t start = pick_start(set.count());
    knot_rrset_t rr = set.view(node->owner.data(), type, zone_.ttl(), start, n);
    int ret = put_rr(r, KNOT_COMPR_HINT_QNAME, &rr, 0);
    if (ret == KNOT_EOK) {
      answered = true;
      if (start_out) *start_out = start;
      if (n_out) *n_out = n;
    } else {
      space = false;  // knot set TC: the rest comes over TCP
    }
  };

  if (badvers) {
    // RFC 6891 6.1.3: BADVERS with no answer.
  } else if (!node) {
    knot_wire_set_rcode(r->wire, KNOT_RCODE_NXDOMAIN);
    ++stats_.nxdomain;
  } else {
    const bool any = qtype == KNOT_RRTYPE_ANY;
    if (node->apex && (any || qtype == KNOT_RRTYPE_SOA))
      put(zone_.soa(), KNOT_RRTYPE_SOA, nullptr, nullptr);
    if (any || qtype == KNOT_RRTYPE_A) put(node->a, KNOT_RRTYPE_A, nullptr, nullptr);
    if (any || qtype == KNOT_RRTYPE_AAAA) put(node->aaaa, KNOT_RRTYPE_AAAA, nullptr, nullptr);
    if (any || qtype == KNOT_RRTYPE_SRV) put(node->srv, KNOT_RRTYPE_SRV, &srv_start, &srv_n);
    if (any || qtype == KNOT_RRTYPE_PTR) put(node->ptr, KNOT_RRTYPE_PTR, nullptr, nullptr);
    if (!answered && space) ++stats_.nodata;
  }

  if (!answered && space && !badvers) {
    // NXDOMAIN or NODATA: the SOA lets resolvers cache the negative answer
    // for the negative TTL (RFC 2308).
    knot_pkt_begin(r, KNOT_AUTHORITY);
    knot_rrset_t soa = zone_.soa().view(zone_.apex(), KNOT_RRTYPE_SOA, zone_.negative_ttl(), 0, 1);
    put_rr(r, KNOT_COMPR_HINT_NONE, &soa, 0);
  }

  knot_pkt_begin(r, KNOT_ADDITIONAL);
  if (srv_n > 0 && space) {
    // The SRV targets' addresses; dropping these when they do not fit is
    // not truncation (RFC 2181 9), so no TC for them.
    const uint16_t count = node->srv.count();
    for (uint16_t i = 0; i < srv_n; ++i) {
      const SrvTarget &t = node->srv_targets[(srv_start + i) % count];
      knot_rrset_t a = t.a.view(t.owner.data(), KNOT_RRTYPE_A, zone_.ttl(), 0, t.a.count());
      knot_rrset_t aaaa =
          t.aaaa.view(t.owner.data(), KNOT_RRTYPE_AAAA, zone_.ttl(), 0, t.aaaa.count());
      if (!t.a.empty() && put_rr(r, KNOT_COMPR_HINT_NONE, &a, KNOT_PF_NOTRUNC) != KNOT_EOK) break;
      if (!t.aaaa.empty() && put_rr(r, KNOT_COMPR_HINT_NONE, &aaaa, KNOT_PF_NOTRUNC) != KNOT_EOK)
        break;
    }
  }
  if (edns) {
    knot_pkt_reclaim(r, reserved);
    if (put_rr(r, KNOT_COMPR_HINT_NONE, &opt, 0) != KNOT_EOK) return fail(KNOT_RCODE_SERVFAIL);
  }
  if (limited) {
    knot_wire_set_tc(r->wire);
    ++stats_.limited;
  }
  if (knot_wire_get_tc(r->wire)) ++stats_.truncated;
  ++stats_.answers;
  finished_ = true;
  result.kind = Answer::reply;
  result.size = r->size;
  return result;
}

size_t error_reply(const uint8_t *query, size_t len, uint8_t rcode, uint8_t *out, size_t out_cap) {
  if (len < KNOT_WIRE_HEADER_SIZE || out_cap < KNOT_WIRE_HEADER_SIZE) return 0;
  // The question's length, read without trusting anything after it.
  if (knot_wire_get_qdcount(query) != 1) return 0;
  const uint8_t *name = query + KNOT_WIRE_HEADER_SIZE;
  const int name_len = knot_dname_wire_check(name, query + len, nullptr);
  if (name_len <= 0) return 0;
  const size_t qlen = KNOT_WIRE_HEADER_SIZE + static_cast<size_t>(name_len) + 4;
  if (qlen > len || qlen > out_cap) return 0;
  std::memcpy(out, query, qlen);
  knot_wire_set_qr(out);
  knot_wire_clear_aa(out);
  knot_wire_clear_tc(out);
  knot_wire_clear_ad(out);
  knot_wire_clear_z(out);
  knot_wire_set_ra(out);
  knot_wire_set_ancount(out, 0);
  knot_wire_set_nscount(out, 0);
  knot_wire_set_arcount(out, 0);
  knot_wire_set_rcode(out, rcode);
  return qlen;
}

}  // namespace flotilla::discovery
