// The Responder's answer cache (dns_answer_cache.h): a hit must be the
// reply the full path would have written, byte for byte, for this query
// and this generation of the zone.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "dns_answer.h"
#include "dns_test_support.h"

namespace flotilla::discovery {
namespace {

using test::make_query;
using test::parse_reply;
using test::Reply;

using test::ep;

AnswerSettings uncached(AnswerSettings s = {}) {
  s.cache_slots = 0;
  return s;
}

// A query whose name keeps the letter case given (make_query lowercases):
// resolvers that use 0x20 randomise it and check the reply echoes it.
std::vector<uint8_t> cased_query(const std::string &name, uint16_t type, uint16_t edns = 0) {
  auto q = make_query(name, type, edns);
  uint8_t wire[KNOT_DNAME_MAXLEN];
  if (!knot_dname_from_str(wire, name.c_str(), sizeof wire)) return q;
  std::memcpy(q.data() + KNOT_WIRE_HEADER_SIZE, wire, knot_dname_size(wire));
  return q;
}

// The question's bytes of a message (name, type, class), as sent.
std::vector<uint8_t> question_of(const uint8_t *msg, size_t len) {
  const uint8_t *name = msg + KNOT_WIRE_HEADER_SIZE;
  const int n = knot_dname_wire_check(name, msg + len, nullptr);
  if (n <= 0) return {};
  return std::vector<uint8_t>(name, name + n + 4);
}

class DnsAnswerCache : public ::testing::Test {
 protected:
  DnsAnswerCache() : zone(Zone::Settings{}), responder(zone, AnswerSettings{}) {
    responder.seed(7);  // the same rotations every run
  }

  std::vector<uint8_t> raw(std::vector<uint8_t> q, Transport t = Transport::udp) {
    std::vector<uint8_t> out(65535);
    Answer a = responder.answer(q.data(), q.size(), t, out.data(), out.size());
    if (a.kind != Answer::reply) return {};
    out.resize(a.size);
    return out;
  }
  Reply ask(std::vector<uint8_t> q, Transport t = Transport::udp) {
    auto out = raw(std::move(q), t);
    return parse_reply(out.data(), out.size());
  }

  Zone zone;
  Responder responder;
};

// Every kind of query, each asked many times in a row and interleaved, to
// a cached and an uncached Responder with the same random numbers: the
// replies, what each call returned and the counters must be the same.
void expect_same_as_uncached(Zone &zone, AnswerSettings settings) {
  Responder cached(zone, settings), plain(zone, uncached(settings));
  cached.seed(42);
  plain.seed(42);
  std::vector<std::vector<uint8_t>> queries = {
      make_query("web.service.flotilla.", KNOT_RRTYPE_A),
      cased_query("WeB.SeRvIcE.FlOtIlLa.", KNOT_RRTYPE_A),
      cased_query("WEB.service.flotilla.", KNOT_RRTYPE_A, 1232),
      cased_query("_WEB._tcp.service.flotilla.", KNOT_RRTYPE_SRV),
      cased_query("NotHere.service.flotilla.", KNOT_RRTYPE_A),
      make_query("web.service.flotilla.", KNOT_RRTYPE_A, 1232),
      make_query("web.service.flotilla.", KNOT_RRTYPE_AAAA),
      make_query("web.service.flotilla.", KNOT_RRTYPE_ANY),
      make_query("v1.web.service.flotilla.", KNOT_RRTYPE_A),
      make_query("_web._tcp.service.flotilla.", KNOT_RRTYPE_SRV),
      make_query("_web._tcp.service.flotilla.", KNOT_RRTYPE_SRV, 4096),
      make_query("big.service.flotilla.", KNOT_RRTYPE_A),
      make_query("big.service.flotilla.", KNOT_RRTYPE_A, 4096),
      make_query("one.service.flotilla.", KNOT_RRTYPE_A),
      make_query("a1.alloc.flotilla.", KNOT_RRTYPE_A),
      make_query("5.1.42.10.in-addr.arpa.", KNOT_RRTYPE_PTR),
      make_query("down.service.flotilla.", KNOT_RRTYPE_A),
      make_query("nothere.service.flotilla.", KNOT_RRTYPE_A),
      make_query("flotilla.", KNOT_RRTYPE_SOA),
      make_query("example.com.", KNOT_RRTYPE_A),
  };
  {  // EDNS version 1: BADVERS
    auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A, 1232);
    q[q.size() - 5] = 1;  // the OPT TTL's version byte
    queries.push_back(q);
  }
  {  // without RD, with CD
    auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
    knot_wire_clear_rd(q.data());
    knot_wire_set_cd(q.data());
    queries.push_back(q);
  }
  {  // malformed: question cut short, trailing byte, other opcode
    auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
    queries.push_back(std::vector<uint8_t>(q.begin(), q.end() - 1));
    auto t = q;
    t.push_back(0);
    queries.push_back(t);
    auto op = q;
    knot_wire_set_opcode(op.data(), 2);
    queries.push_back(op);
  }
  std::vector<uint8_t> a(65535), b(65535);
  uint16_t id = 1;
  for (int round = 0; round < 12; ++round) {
    for (Transport t : {Transport::udp, Transport::tcp}) {
      for (auto q : queries) {
        knot_wire_set_id(q.data(), id++);
        auto q2 = q;
        Answer ra = cached.answer(q.data(), q.size(), t, a.data(), a.size());
        Answer rb = plain.answer(q2.data(), q2.size(), t, b.data(), b.size());
        ASSERT_EQ(ra.kind, rb.kind) << "query " << id;
        ASSERT_EQ(ra.size, rb.size) << "query " << id;
        ASSERT_EQ(0, std::memcmp(a.data(), b.data(), ra.size)) << "query " << id;
      }
    }
  }
  const AnswerStats &x = cached.stats(), &y = plain.stats();
  EXPECT_EQ(x.queries, y.queries);
  EXPECT_EQ(x.answers, y.answers);
  EXPECT_EQ(x.nxdomain, y.nxdomain);
  EXPECT_EQ(x.nodata, y.nodata);
  EXPECT_EQ(x.forwarded, y.forwarded);
  EXPECT_EQ(x.refused, y.refused);
  EXPECT_EQ(x.formerr, y.formerr);
  EXPECT_EQ(x.truncated, y.truncated);
  EXPECT_EQ(x.limited, y.limited);
  EXPECT_EQ(x.dropped, y.dropped);
  // Not a vacuous pass: most of those were answered from the cache.
  EXPECT_GT(cached.stats().cached, x.queries / 2);
  EXPECT_EQ(plain.stats().cached, 0u);
}

void fill(Zone &zone) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5", "fd00::1:5"}, "passing", 8080, {"v1"}));
  zone.put_endpoint(ep("web", "a2", {"10.42.2.5", "fd00::2:5"}, "passing", 8081));
  zone.put_endpoint(ep("web", "a3", {"10.42.3.5"}, "passing", 8082, {"v1"}));
  zone.put_endpoint(ep("one", "o1", {"10.42.9.1"}));
  zone.put_endpoint(ep("down", "d1", {"10.42.9.2"}, "critical"));
  for (int i = 0; i < 80; ++i)
    zone.put_endpoint(ep("big", "b" + std::to_string(i), {"10.42.8." + std::to_string(i)}));
  zone.commit();
}

TEST_F(DnsAnswerCache, HitsAreTheRepliesTheFullPathWrites) {
  fill(zone);
  expect_same_as_uncached(zone, AnswerSettings{});
}

TEST_F(DnsAnswerCache, HitsAreTheRepliesTheFullPathWritesWithAnAnswerLimit) {
  fill(zone);
  AnswerSettings s;
  s.answer_limit = 2;
  expect_same_as_uncached(zone, s);
  s.answer_limit = 0;
  s.forward = false;
  s.edns_udp_size = 512;
  expect_same_as_uncached(zone, s);
}

TEST_F(DnsAnswerCache, ARecordChangeIsAnsweredAtOnce) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  zone.commit();
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  EXPECT_EQ(ask(q).answer, std::vector<std::string>{"A 10.42.1.5"});
  EXPECT_EQ(ask(q).answer, std::vector<std::string>{"A 10.42.1.5"});
  EXPECT_EQ(responder.stats().cached, 1u);

  // A new address: the next query sees it, not the kept reply.
  zone.put_endpoint(ep("web", "a1", {"10.42.1.6"}));
  EXPECT_EQ(ask(q).answer, std::vector<std::string>{"A 10.42.1.5"});  // not committed yet
  zone.commit();
  EXPECT_EQ(ask(q).answer, std::vector<std::string>{"A 10.42.1.6"});
  EXPECT_EQ(ask(q).answer, std::vector<std::string>{"A 10.42.1.6"});

  // Critical: NODATA; gone: NXDOMAIN; after a full re-list: back.
  zone.put_endpoint(ep("web", "a1", {"10.42.1.6"}, "critical"));
  zone.commit();
  Reply r = ask(q);
  EXPECT_EQ(r.rcode, KNOT_RCODE_NOERROR);
  EXPECT_TRUE(r.answer.empty());
  zone.remove_endpoint("web", "a1");
  zone.commit();
  EXPECT_EQ(ask(q).rcode, KNOT_RCODE_NXDOMAIN);
  EXPECT_EQ(ask(q).rcode, KNOT_RCODE_NXDOMAIN);
  zone.clear();
  zone.put_endpoint(ep("web", "a9", {"10.42.1.9"}));
  zone.commit();
  EXPECT_EQ(ask(q).answer, std::vector<std::string>{"A 10.42.1.9"});
  zone.clear();  // a re-list under way: find() already sees the empty zone
  EXPECT_EQ(ask(q).rcode, KNOT_RCODE_NXDOMAIN);
}

TEST_F(DnsAnswerCache, EdnsAndPlainQueriesDoNotShareAReply) {
  for (int i = 0; i < 3; ++i)
    zone.put_endpoint(ep("web", "a" + std::to_string(i), {"10.42.1." + std::to_string(i)}));
  // 40 A records: 684 bytes, over 512 and under 1232 (too many rotations
  // to be kept, so this one also checks the full path beside the cache).
  for (int i = 0; i < 40; ++i)
    zone.put_endpoint(ep("big", "b" + std::to_string(i), {"10.42.2." + std::to_string(i)}));
  zone.commit();
  for (int i = 0; i < 10; ++i) {
    Reply e = ask(make_query("web.service.flotilla.", KNOT_RRTYPE_A, 1232));
    EXPECT_TRUE(e.edns);
    EXPECT_EQ(e.edns_payload, 1232);
    EXPECT_EQ(e.answer.size(), 3u);
    Reply p = ask(make_query("web.service.flotilla.", KNOT_RRTYPE_A));
    EXPECT_FALSE(p.edns);
    EXPECT_EQ(p.answer.size(), 3u);
    Reply other = ask(make_query("web.service.flotilla.", KNOT_RRTYPE_A, 4096));
    EXPECT_TRUE(other.edns);

    Reply be = ask(make_query("big.service.flotilla.", KNOT_RRTYPE_A, 1232));
    EXPECT_FALSE(be.tc);
    EXPECT_EQ(be.answer.size(), 40u);
    Reply bp = ask(make_query("big.service.flotilla.", KNOT_RRTYPE_A));
    EXPECT_TRUE(bp.tc);
    EXPECT_TRUE(bp.answer.empty());
    // The client's payload counts too: 512 is what it can take.
    Reply small = ask(make_query("big.service.flotilla.", KNOT_RRTYPE_A, 512));
    EXPECT_TRUE(small.edns);
    EXPECT_TRUE(small.tc);
    // TCP carries everything, and UDP after it still truncates.
    Reply t = ask(make_query("big.service.flotilla.", KNOT_RRTYPE_A), Transport::tcp);
    EXPECT_FALSE(t.tc);
    EXPECT_EQ(t.answer.size(), 40u);
  }
  EXPECT_GE(responder.stats().cached, 12u);
}

TEST_F(DnsAnswerCache, UdpAndTcpDoNotShareAReply) {
  // 8 SRV records with their targets' addresses: over 512 bytes, so UDP
  // without EDNS truncates and TCP does not.
  for (int i = 0; i < 8; ++i)
    zone.put_endpoint(ep("web", "alloc-with-a-long-name-" + std::to_string(i),
                         {"10.42.1." + std::to_string(i), "fd00::" + std::to_string(i)}));
  zone.commit();
  auto q = make_query("_web._tcp.service.flotilla.", KNOT_RRTYPE_SRV);
  for (int i = 0; i < 10; ++i) {
    Reply t = ask(q, Transport::tcp);
    EXPECT_FALSE(t.tc);
    EXPECT_EQ(t.answer.size(), 8u);
    EXPECT_EQ(t.additional.size(), 16u);
    Reply u = ask(q);
    EXPECT_LE(raw(q).size(), 512u);
    EXPECT_LT(u.additional.size(), 16u);
  }
  EXPECT_GE(responder.stats().cached, 10u);
}

TEST_F(DnsAnswerCache, TheReplyEchoesTheQuestionsLetterCase) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  zone.commit();
  for (const char *name :
       {"web.service.flotilla.", "WeB.sErViCe.FlOtIlLa.", "web.service.flotilla.",
        "WEB.SERVICE.FLOTILLA.", "WeB.sErViCe.FlOtIlLa."}) {
    for (int i = 0; i < 2; ++i) {  // the second one is a hit
      auto q = cased_query(name, KNOT_RRTYPE_A);
      ASSERT_EQ(q[KNOT_WIRE_HEADER_SIZE + 1], name[0]);
      auto out = raw(q);
      ASSERT_GT(out.size(), q.size());
      EXPECT_EQ(question_of(out.data(), out.size()), question_of(q.data(), q.size())) << name;
      EXPECT_EQ(parse_reply(out.data(), out.size()).answer,
                std::vector<std::string>{"A 10.42.1.5"});
    }
  }
  EXPECT_GE(responder.stats().cached, 5u);
}

TEST_F(DnsAnswerCache, EachHitCarriesItsQuerysIdAndFlags) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  zone.commit();
  for (uint16_t id : {0x0001, 0xbeef, 0x1234, 0xffff}) {
    auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A, 0, id);
    Reply r = ask(q);
    EXPECT_EQ(r.id, id);
    EXPECT_TRUE(r.qr);
  }
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  knot_wire_clear_rd(q.data());
  auto out = raw(q);
  EXPECT_FALSE(knot_wire_get_rd(out.data()));
  out = raw(make_query("web.service.flotilla.", KNOT_RRTYPE_A));
  EXPECT_TRUE(knot_wire_get_rd(out.data()));
  EXPECT_GE(responder.stats().cached, 4u);
}

TEST_F(DnsAnswerCache, EveryRotationIsServed) {
  for (int i = 0; i < 3; ++i)
    zone.put_endpoint(ep("web", "a" + std::to_string(i), {"10.42.1." + std::to_string(i)}));
  zone.commit();
  std::set<std::string> firsts;
  for (int i = 0; i < 60; ++i) {
    Reply r = ask(make_query("web.service.flotilla.", KNOT_RRTYPE_A));
    ASSERT_EQ(r.answer.size(), 3u);
    firsts.insert(r.answer[0]);
  }
  EXPECT_EQ(firsts.size(), 3u);
  EXPECT_GE(responder.stats().cached, 50u);
}

TEST_F(DnsAnswerCache, AMalformedQueryIsNeverAnsweredFromTheCache) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  zone.commit();
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  ask(q);
  ask(q);
  for (size_t cut = 1; cut < q.size() - KNOT_WIRE_HEADER_SIZE; ++cut) {
    std::vector<uint8_t> t(q.begin(), q.end() - static_cast<std::ptrdiff_t>(cut));
    Reply r = ask(t);
    EXPECT_EQ(r.rcode, KNOT_RCODE_FORMERR) << "cut " << cut;
    EXPECT_TRUE(r.answer.empty());
  }
  auto response = q;
  knot_wire_set_qr(response.data());
  EXPECT_TRUE(raw(response).empty());  // a response is dropped, cached or not
}

}  // namespace
}  // namespace flotilla::discovery
