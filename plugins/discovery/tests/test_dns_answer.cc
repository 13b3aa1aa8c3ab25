// The record store (dns_zone) and the packet path (dns_answer): names,
// health filtering, negative answers with SOA, EDNS0, TC and the answer
// limit, and malformed packets.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "dns_answer.h"
#include "dns_test_support.h"

namespace flotilla::discovery {
namespace {

using test::make_query;
using test::parse_reply;
using test::Reply;

using test::ep;

class DnsAnswer : public ::testing::Test {
 protected:
  DnsAnswer() : zone(Zone::Settings{}), responder(zone, AnswerSettings{}) {}

  Reply ask(const std::string &name, uint16_t type, Transport t = Transport::udp,
            uint16_t edns = 0) {
    auto q = make_query(name, type, edns);
    return send(q, t);
  }
  Reply send(std::vector<uint8_t> q, Transport t = Transport::udp) {
    std::vector<uint8_t> out(65535);
    Answer a = responder.answer(q.data(), q.size(), t, out.data(), out.size());
    last_kind = a.kind;
    last_size = a.size;
    if (a.kind != Answer::reply) return Reply{};
    return parse_reply(out.data(), a.size);
  }
  static std::multiset<std::string> set(const std::vector<std::string> &v) {
    return {v.begin(), v.end()};
  }

  Zone zone;
  Responder responder;
  Answer::Kind last_kind = Answer::drop;
  size_t last_size = 0;
};

TEST_F(DnsAnswer, ServiceNameAnswersOnlyPassingEndpoints) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  zone.put_endpoint(ep("web", "a2", {"10.42.2.5"}));
  zone.put_endpoint(ep("web", "a3", {"10.42.3.5"}, "critical"));
  zone.put_endpoint(ep("web", "a4", {"10.42.4.5"}, "starting"));
  zone.commit();
  Reply r = ask("web.service.flotilla.", KNOT_RRTYPE_A);
  EXPECT_EQ(r.rcode, KNOT_RCODE_NOERROR);
  EXPECT_TRUE(r.aa);
  EXPECT_EQ(set(r.answer), (std::multiset<std::string>{"A 10.42.1.5", "A 10.42.2.5"}));
  ASSERT_FALSE(r.answer_ttls.empty());
  EXPECT_EQ(r.answer_ttls[0], 5u);
}

TEST_F(DnsAnswer, NamesAreCaseInsensitive) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  zone.commit();
  Reply r = ask("WeB.SERVICE.Flotilla.", KNOT_RRTYPE_A);
  EXPECT_EQ(set(r.answer), (std::multiset<std::string>{"A 10.42.1.5"}));
}

TEST_F(DnsAnswer, AnswersAreShuffled) {
  for (int i = 0; i < 5; ++i)
    zone.put_endpoint(ep("web", "a" + std::to_string(i), {"10.42.1." + std::to_string(10 + i)}));
  zone.commit();
  std::set<std::string> firsts;
  for (int i = 0; i < 200; ++i) {
    Reply r = ask("web.service.flotilla.", KNOT_RRTYPE_A);
    ASSERT_EQ(r.answer.size(), 5u);
    firsts.insert(r.answer[0]);
  }
  EXPECT_EQ(firsts.size(), 5u) << "every endpoint comes first sometimes";
}

TEST_F(DnsAnswer, AaaaAndTagNames) {
  Endpoint e = ep("web", "a1", {"10.42.1.5"}, "passing", 80, {"v2", "canary"});
  e.addresses.push_back("fd00::5");
  zone.put_endpoint(e);
  zone.put_endpoint(ep("web", "a2", {"10.42.2.5"}, "passing", 80, {"v1"}));
  zone.put_endpoint(ep("web", "a3", {"10.42.3.5"}, "critical", 80, {"v1"}));
  zone.commit();
  EXPECT_EQ(set(ask("web.service.flotilla.", KNOT_RRTYPE_AAAA).answer),
            (std::multiset<std::string>{"AAAA fd00::5"}));
  EXPECT_EQ(set(ask("v2.web.service.flotilla.", KNOT_RRTYPE_A).answer),
            (std::multiset<std::string>{"A 10.42.1.5"}));
  EXPECT_EQ(set(ask("v1.web.service.flotilla.", KNOT_RRTYPE_A).answer),
            (std::multiset<std::string>{"A 10.42.2.5"}));
  // a tag whose only instances are not passing: NODATA, not NXDOMAIN
  zone.remove_endpoint("web", "a2");
  zone.commit();
  Reply r = ask("v1.web.service.flotilla.", KNOT_RRTYPE_A);
  EXPECT_EQ(r.rcode, KNOT_RCODE_NOERROR);
  EXPECT_TRUE(r.answer.empty());
  EXPECT_EQ(r.authority.size(), 1u);
}

TEST_F(DnsAnswer, SrvWithTargetsInAdditional) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}, "passing", 8080));
  zone.put_endpoint(ep("web", "a2", {"10.42.2.5"}, "passing", 9090));
  zone.put_endpoint(ep("web", "a3", {"10.42.3.5"}, "critical", 9090));
  zone.commit();
  Reply r = ask("_web._tcp.service.flotilla.", KNOT_RRTYPE_SRV);
  EXPECT_EQ(set(r.answer), (std::multiset<std::string>{"SRV 1 1 8080 a1.alloc.flotilla.",
                                                       "SRV 1 1 9090 a2.alloc.flotilla."}));
  EXPECT_EQ(set(r.additional), (std::multiset<std::string>{"A 10.42.1.5", "A 10.42.2.5"}));
}

TEST_F(DnsAnswer, AllocNamesAndPtr) {
  Endpoint e = ep("web", "a1", {"10.42.1.5"});
  e.addresses.push_back("fd00::1:5");
  zone.put_endpoint(e);
  zone.put_endpoint(ep("db", "a1", {"10.42.1.5"}, "critical"));
  zone.commit();
  EXPECT_EQ(set(ask("a1.alloc.flotilla.", KNOT_RRTYPE_A).answer),
            (std::multiset<std::string>{"A 10.42.1.5"}));
  EXPECT_EQ(set(ask("5.1.42.10.in-addr.arpa.", KNOT_RRTYPE_PTR).answer),
            (std::multiset<std::string>{"PTR a1.alloc.flotilla."}));
  EXPECT_EQ(set(ask(reverse_name("fd00::1:5"), KNOT_RRTYPE_PTR).answer),
            (std::multiset<std::string>{"PTR a1.alloc.flotilla."}));
  // the alloc stays while any service has it
  zone.remove_endpoint("web", "a1");
  zone.commit();
  EXPECT_EQ(ask("a1.alloc.flotilla.", KNOT_RRTYPE_A).answer.size(), 1u);
  zone.remove_endpoint("db", "a1");
  zone.commit();
  EXPECT_EQ(ask("a1.alloc.flotilla.", KNOT_RRTYPE_A).rcode, KNOT_RCODE_NXDOMAIN);
  // an unknown reverse name is not ours: forwarded
  ask("5.1.42.10.in-addr.arpa.", KNOT_RRTYPE_PTR);
  EXPECT_EQ(last_kind, Answer::forward);
}

TEST_F(DnsAnswer, VipName) {
  zone.put_vip("web", "10.43.0.7");
  zone.commit();
  EXPECT_EQ(set(ask("web.vip.flotilla.", KNOT_RRTYPE_A).answer),
            (std::multiset<std::string>{"A 10.43.0.7"}));
  zone.remove_vip("web");
  zone.commit();
  EXPECT_EQ(ask("web.vip.flotilla.", KNOT_RRTYPE_A).rcode, KNOT_RCODE_NXDOMAIN);
}

TEST_F(DnsAnswer, NxdomainAndNodataCarryTheSoaWithTheNegativeTtl) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}, "critical"));
  zone.commit();
  Reply nx = ask("nope.service.flotilla.", KNOT_RRTYPE_A);
  EXPECT_EQ(nx.rcode, KNOT_RCODE_NXDOMAIN);
  EXPECT_TRUE(nx.aa);
  EXPECT_EQ(nx.authority, (std::vector<std::string>{"SOA 1"}));
  Reply nodata = ask("web.service.flotilla.", KNOT_RRTYPE_A);
  EXPECT_EQ(nodata.rcode, KNOT_RCODE_NOERROR);
  EXPECT_TRUE(nodata.answer.empty());
  EXPECT_EQ(nodata.authority, (std::vector<std::string>{"SOA 1"}));
  // an A-only service asked for AAAA, and empty non-terminals
  EXPECT_EQ(ask("service.flotilla.", KNOT_RRTYPE_A).rcode, KNOT_RCODE_NOERROR);
  EXPECT_EQ(ask("_tcp.service.flotilla.", KNOT_RRTYPE_SRV).rcode, KNOT_RCODE_NOERROR);
  Reply apex = ask("flotilla.", KNOT_RRTYPE_SOA);
  EXPECT_EQ(apex.answer, (std::vector<std::string>{"SOA"}));
}

TEST_F(DnsAnswer, NegativeTtlIsConfigurable) {
  Zone::Settings s;
  s.negative_ttl = 7;
  s.ttl = 30;
  s.domain = "cluster.example";
  Zone z(s);
  z.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  z.commit();
  Responder r(z, AnswerSettings{});
  std::vector<uint8_t> out(65535);
  auto q = make_query("x.cluster.example.", KNOT_RRTYPE_A);
  Answer a = r.answer(q.data(), q.size(), Transport::udp, out.data(), out.size());
  EXPECT_EQ(parse_reply(out.data(), a.size).authority, (std::vector<std::string>{"SOA 7"}));
  q = make_query("web.service.cluster.example.", KNOT_RRTYPE_A);
  a = r.answer(q.data(), q.size(), Transport::udp, out.data(), out.size());
  EXPECT_EQ(parse_reply(out.data(), a.size).answer_ttls, (std::vector<uint32_t>{30}));
  // the default domain is now someone else's: forwarded
  q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  EXPECT_EQ(r.answer(q.data(), q.size(), Transport::udp, out.data(), out.size()).kind,
            Answer::forward);
}

TEST_F(DnsAnswer, ForeignNamesAreForwardedOrRefused) {
  ask("example.com.", KNOT_RRTYPE_A);
  EXPECT_EQ(last_kind, Answer::forward);
  AnswerSettings s;
  s.forward = false;
  Responder r(zone, s);
  std::vector<uint8_t> out(65535);
  auto q = make_query("example.com.", KNOT_RRTYPE_A);
  Answer a = r.answer(q.data(), q.size(), Transport::udp, out.data(), out.size());
  ASSERT_EQ(a.kind, Answer::reply);
  EXPECT_EQ(parse_reply(out.data(), a.size).rcode, KNOT_RCODE_REFUSED);
}

TEST_F(DnsAnswer, Edns0EchoesOurPayloadAndRejectsOtherVersions) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  zone.commit();
  Reply r = ask("web.service.flotilla.", KNOT_RRTYPE_A, Transport::udp, 4096);
  EXPECT_TRUE(r.edns);
  EXPECT_EQ(r.edns_payload, 1232);
  EXPECT_EQ(ask("web.service.flotilla.", KNOT_RRTYPE_A).edns, false);

  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A, 4096);
  // OPT's TTL field: ext-rcode, version, flags; set version 1
  // OPT RR: root(1) type(2) class(2) ext-rcode(1) version(1) flags(2) rdlen(2)
  q[q.size() - 11 + 6] = 1;
  Reply bad = send(q);
  EXPECT_TRUE(bad.edns);
  EXPECT_EQ(bad.ext_rcode, KNOT_EDNS_RCODE_HI(KNOT_RCODE_BADVERS));
  EXPECT_TRUE(bad.answer.empty());
}

TEST_F(DnsAnswer, TooBigForUdpSetsTcAndTcpCarriesEverything) {
  for (int i = 0; i < 100; ++i)
    zone.put_endpoint(ep("big", "a" + std::to_string(i), {"10.42.9." + std::to_string(i)}));
  zone.commit();
  Reply udp = ask("big.service.flotilla.", KNOT_RRTYPE_A);  // 512 bytes: no room for 100
  EXPECT_TRUE(udp.tc);
  EXPECT_TRUE(udp.answer.empty()) << "a set is sent whole or not at all";
  Reply tcp = ask("big.service.flotilla.", KNOT_RRTYPE_A, Transport::tcp);
  EXPECT_FALSE(tcp.tc);
  EXPECT_EQ(tcp.answer.size(), 100u);
  Reply edns = ask("big.service.flotilla.", KNOT_RRTYPE_A, Transport::udp, 4096);
  EXPECT_TRUE(edns.tc) << "100 A records (16 bytes each) do not fit in 1232 bytes";
  for (int i = 60; i < 100; ++i) zone.remove_endpoint("big", "a" + std::to_string(i));
  zone.commit();
  edns = ask("big.service.flotilla.", KNOT_RRTYPE_A, Transport::udp, 4096);
  EXPECT_FALSE(edns.tc) << "60 do";
  EXPECT_EQ(edns.answer.size(), 60u);
}

TEST_F(DnsAnswer, AnswerLimitNeverDropsSilently) {
  for (int i = 0; i < 10; ++i)
    zone.put_endpoint(ep("web", "a" + std::to_string(i), {"10.42.9." + std::to_string(i)}));
  zone.commit();
  AnswerSettings s;
  s.answer_limit = 3;
  Responder r(zone, s);
  std::vector<uint8_t> out(65535);
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
    Answer a = r.answer(q.data(), q.size(), Transport::udp, out.data(), out.size());
    Reply rep = parse_reply(out.data(), a.size);
    EXPECT_EQ(rep.answer.size(), 3u);
    EXPECT_TRUE(rep.tc) << "a limited answer says so";
    seen.insert(rep.answer.begin(), rep.answer.end());
  }
  EXPECT_EQ(seen.size(), 10u) << "the window rotates over every endpoint";
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  Answer a = r.answer(q.data(), q.size(), Transport::tcp, out.data(), out.size());
  Reply tcp = parse_reply(out.data(), a.size);
  EXPECT_EQ(tcp.answer.size(), 10u);
  EXPECT_FALSE(tcp.tc);
  EXPECT_GT(r.stats().limited, 0u);
}

TEST_F(DnsAnswer, ServiceChangesAreVisibleAfterCommitOnly) {
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}));
  EXPECT_EQ(ask("web.service.flotilla.", KNOT_RRTYPE_A).rcode, KNOT_RCODE_NXDOMAIN);
  zone.commit();
  EXPECT_EQ(ask("web.service.flotilla.", KNOT_RRTYPE_A).answer.size(), 1u);
  zone.put_endpoint(ep("web", "a1", {"10.42.1.5"}, "critical"));
  zone.commit();
  EXPECT_TRUE(ask("web.service.flotilla.", KNOT_RRTYPE_A).answer.empty());
  zone.remove_endpoint("web", "a1");
  zone.commit();
  EXPECT_EQ(ask("web.service.flotilla.", KNOT_RRTYPE_A).rcode, KNOT_RCODE_NXDOMAIN);
  EXPECT_EQ(ask("_web._tcp.service.flotilla.", KNOT_RRTYPE_SRV).rcode, KNOT_RCODE_NXDOMAIN);
  EXPECT_EQ(zone.node_count(), 5u) << "only the structural names are left";
}

// ---- malformed packets ----------------------------------------------------

TEST_F(DnsAnswer, ShortPacketsAndResponsesAreDropped) {
  std::vector<uint8_t> tiny = {0x12, 0x34, 0x01};
  send(tiny);
  EXPECT_EQ(last_kind, Answer::drop);
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  knot_wire_set_qr(q.data());
  send(q);
  EXPECT_EQ(last_kind, Answer::drop) << "never answer a response";
}

TEST_F(DnsAnswer, TruncatedQuestionIsFormerr) {
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  for (size_t cut = KNOT_WIRE_HEADER_SIZE; cut < q.size(); ++cut) {
    std::vector<uint8_t> t(q.begin(), q.begin() + cut);
    Reply r = send(t);
    ASSERT_EQ(last_kind, Answer::reply) << "cut at " << cut;
    EXPECT_EQ(r.rcode, KNOT_RCODE_FORMERR) << "cut at " << cut;
    EXPECT_EQ(r.id, 0x1234);
  }
}

TEST_F(DnsAnswer, CompressionLoopIsFormerr) {
  // header, then a question name that is a pointer to itself
  std::vector<uint8_t> q = {0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0,    0,    0,
                            0,    0,    0,    0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01};
  Reply r = send(q);
  ASSERT_EQ(last_kind, Answer::reply);
  EXPECT_EQ(r.rcode, KNOT_RCODE_FORMERR);
  // a loop through two pointers in the additional section
  auto good = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  std::vector<uint8_t> loop = good;
  knot_wire_set_arcount(loop.data(), 1);
  const uint16_t here = static_cast<uint16_t>(loop.size());
  loop.push_back(0xc0 | static_cast<uint8_t>((here + 2) >> 8));
  loop.push_back(static_cast<uint8_t>((here + 2) & 0xff));
  loop.push_back(0xc0 | static_cast<uint8_t>(here >> 8));
  loop.push_back(static_cast<uint8_t>(here & 0xff));
  loop.insert(loop.end(), {0, 1, 0, 1, 0, 0, 0, 0, 0, 0});
  r = send(loop);
  ASSERT_EQ(last_kind, Answer::reply);
  EXPECT_EQ(r.rcode, KNOT_RCODE_FORMERR);
}

TEST_F(DnsAnswer, HugeCountsAreFormerr) {
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  for (auto set_count : {&knot_wire_set_qdcount, &knot_wire_set_ancount, &knot_wire_set_nscount,
                         &knot_wire_set_arcount}) {
    std::vector<uint8_t> h = q;
    set_count(h.data(), 0xffff);
    Reply r = send(h);
    ASSERT_EQ(last_kind, Answer::reply);
    EXPECT_EQ(r.rcode, KNOT_RCODE_FORMERR);
  }
}

TEST_F(DnsAnswer, OtherOpcodesAreNotImplemented) {
  auto q = make_query("web.service.flotilla.", KNOT_RRTYPE_A);
  knot_wire_set_opcode(q.data(), KNOT_OPCODE_UPDATE);
  EXPECT_EQ(send(q).rcode, KNOT_RCODE_NOTIMPL);
}

TEST(ErrorReply, KeepsIdAndQuestion) {
  auto q = make_query("example.com.", KNOT_RRTYPE_A, 0, 0x4242);
  std::vector<uint8_t> out(512);
  size_t n = error_reply(q.data(), q.size(), KNOT_RCODE_SERVFAIL, out.data(), out.size());
  ASSERT_GT(n, 0u);
  Reply r = parse_reply(out.data(), n);
  EXPECT_EQ(r.rcode, KNOT_RCODE_SERVFAIL);
  EXPECT_EQ(r.id, 0x4242);
  EXPECT_TRUE(r.qr);
  std::vector<uint8_t> broken(q.begin(), q.begin() + 14);
  EXPECT_EQ(error_reply(broken.data(), broken.size(), 2, out.data(), out.size()), 0u);
}

TEST(Names, LabelsAndReverseNames) {
  EXPECT_TRUE(is_dns_label("web-1"));
  EXPECT_FALSE(is_dns_label("-web"));
  EXPECT_FALSE(is_dns_label("Web"));
  EXPECT_FALSE(is_dns_label("a.b"));
  EXPECT_FALSE(is_dns_label(std::string(64, 'a')));
  EXPECT_EQ(reverse_name("10.42.1.5"), "5.1.42.10.in-addr.arpa.");
  EXPECT_EQ(reverse_name("not-an-ip"), "");
  EXPECT_EQ(reverse_name("::1").substr(0, 4), "1.0.");
}

}  // namespace
}  // namespace flotilla::discovery

namespace flotilla::discovery {
namespace {

// Found by the fuzzer: an SRV answer whose additional records run out of
// room at a 1079-byte EDNS payload hung inside libknot (a stale compression
// suffix after a failed put).
TEST(DnsAnswerRegression, SrvAdditionalsThatDoNotFitEndTheReply) {
  Zone zone(Zone::Settings{});
  for (int i = 0; i < 30; ++i) {
    Endpoint e;
    e.service = "web";
    e.alloc = "alloc" + std::to_string(i);
    e.addresses = {"10.42.0." + std::to_string(i), "fd00::" + std::to_string(i)};
    e.port = static_cast<uint16_t>(8000 + i);
    e.health = i % 5 ? "passing" : "critical";
    zone.put_endpoint(e);
  }
  zone.commit();
  Responder r(zone, AnswerSettings{});
  std::vector<uint8_t> out(65535);
  auto q = test::make_query("_web._tcp.service.flotilla.", KNOT_RRTYPE_SRV, 1079);
  Answer a = r.answer(q.data(), q.size(), Transport::udp, out.data(), out.size());
  ASSERT_EQ(a.kind, Answer::reply);
  test::Reply rep = test::parse_reply(out.data(), a.size);
  EXPECT_EQ(rep.answer.size(), 24u);
  EXPECT_FALSE(rep.tc);
  EXPECT_LT(rep.additional.size(), 48u) << "not every target fits, and that is no truncation";
  EXPECT_TRUE(rep.edns);
}

}  // namespace
}  // namespace flotilla::discovery
