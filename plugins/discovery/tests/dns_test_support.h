// Queries built and replies read with libknot, for the discovery tests.
#pragma once

#include <arpa/inet.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dns_zone.h"
#include "knot_wire.h"

namespace flotilla::discovery::test {

struct PktFree {
  void operator()(knot_pkt_t *p) const { knot_pkt_free(p); }
};
using Pkt = std::unique_ptr<knot_pkt_t, PktFree>;

// A query for name/type; edns_payload 0: no OPT record.
inline std::vector<uint8_t> make_query(const std::string &name, uint16_t type,
                                       uint16_t edns_payload = 0, uint16_t id = 0x1234) {
  std::vector<uint8_t> buf(512);
  Pkt p(knot_pkt_new(buf.data(), static_cast<uint16_t>(buf.size()), nullptr));
  knot_pkt_clear(p.get());
  knot_wire_set_id(p->wire, id);
  knot_wire_set_rd(p->wire);
  auto qname = dname_from_text(name);
  knot_pkt_put_question(p.get(), qname.data(), KNOT_CLASS_IN, type);
  if (edns_payload) {
    knot_rrset_t opt;
    knot_rrset_init_empty(&opt);
    knot_edns_init(&opt, edns_payload, 0, 0, nullptr);
    knot_pkt_begin(p.get(), KNOT_ADDITIONAL);
    knot_pkt_put(p.get(), KNOT_COMPR_HINT_NONE, &opt, KNOT_PF_FREE);
  }
  buf.resize(p->size);
  return buf;
}

// A parsed reply: rcode, flags and the records of each section as text.
struct Reply {
  int rcode = -1;
  bool tc = false, aa = false, qr = false;
  uint16_t id = 0;
  bool edns = false;
  uint16_t edns_payload = 0;
  uint16_t ext_rcode = 0;
  std::vector<std::string> answer;      // "A 10.0.0.1", "SRV 1 1 80 x.alloc.flotilla."
  std::vector<std::string> authority;   // "SOA <ttl>"
  std::vector<std::string> additional;  // excluding OPT
  std::vector<uint32_t> answer_ttls;
};

inline std::string rdata_text(uint16_t type, const knot_rdata_t *rd) {
  char buf[INET6_ADDRSTRLEN];
  switch (type) {
    case KNOT_RRTYPE_A:
      inet_ntop(AF_INET, rd->data, buf, sizeof buf);
      return std::string("A ") + buf;
    case KNOT_RRTYPE_AAAA:
      inet_ntop(AF_INET6, rd->data, buf, sizeof buf);
      return std::string("AAAA ") + buf;
    case KNOT_RRTYPE_SRV: {
      const uint8_t *d = rd->data;
      return "SRV " + std::to_string(knot_wire_read_u16(d)) + " " +
             std::to_string(knot_wire_read_u16(d + 2)) + " " +
             std::to_string(knot_wire_read_u16(d + 4)) + " " + dname_to_text(d + 6);
    }
    case KNOT_RRTYPE_PTR:
      return "PTR " + dname_to_text(rd->data);
    case KNOT_RRTYPE_SOA:
      return "SOA";
    default:
      return "TYPE" + std::to_string(type);
  }
}

inline Reply parse_reply(const uint8_t *data, size_t len) {
  Reply r;
  std::vector<uint8_t> copy(data, data + len);
  Pkt p(knot_pkt_new(copy.data(), static_cast<uint16_t>(copy.size()), nullptr));
  if (!p || knot_pkt_parse(p.get(), 0) != KNOT_EOK) return r;
  r.rcode = knot_wire_get_rcode(p->wire);
  r.tc = knot_wire_get_tc(p->wire);
  r.aa = knot_wire_get_aa(p->wire);
  r.qr = knot_wire_get_qr(p->wire);
  r.id = knot_wire_get_id(p->wire);
  if (p->opt_rr) {
    r.edns = true;
    r.edns_payload = knot_edns_get_payload(p->opt_rr);
    r.ext_rcode = knot_edns_get_ext_rcode(p->opt_rr);
  }
  auto section = [&](knot_section_t s, std::vector<std::string> &out, bool ttls) {
    const knot_pktsection_t *sec = knot_pkt_section(p.get(), s);
    for (uint16_t i = 0; i < sec->count; ++i) {
      const knot_rrset_t *rr = knot_pkt_rr(sec, i);
      if (rr->type == KNOT_RRTYPE_OPT) continue;
      knot_rdata_t *rd = rr->rrs.rdata;
      for (uint16_t j = 0; j < rr->rrs.count; ++j) {
        out.push_back(rdata_text(rr->type, rd));
        if (ttls) r.answer_ttls.push_back(rr->ttl);
        if (s == KNOT_AUTHORITY && rr->type == KNOT_RRTYPE_SOA)
          out.back() += " " + std::to_string(rr->ttl);
        rd = knot_rdataset_next(rd);
      }
    }
  };
  section(KNOT_ANSWER, r.answer, true);
  section(KNOT_AUTHORITY, r.authority, false);
  section(KNOT_ADDITIONAL, r.additional, false);
  return r;
}

// An endpoint record of node n1, for the zone's tests.
inline Endpoint ep(const std::string &svc, const std::string &alloc,
                   std::vector<std::string> addrs, const std::string &health = "passing",
                   uint16_t port = 8080, std::vector<std::string> tags = {}) {
  Endpoint e;
  e.service = svc;
  e.alloc = alloc;
  e.node = "n1";
  e.addresses = std::move(addrs);
  e.port = port;
  e.tags = std::move(tags);
  e.health = health;
  return e;
}

}  // namespace flotilla::discovery::test
