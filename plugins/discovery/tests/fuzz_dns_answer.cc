// libFuzzer target for the packet path (dns_answer.cc over dns_zone.cc):
// every input is answered once as UDP and once as TCP against a zone with
// a few services. Besides the sanitizers' checks it traps when a reply is
// larger than the transport allows or is not a reply to the same id, and
// when a Responder with its answer cache and one without (same random
// numbers) answer the same input twice in a row differently.
// Built and run by fuzz.sh (clang-14, -fsanitize=fuzzer,address,undefined).
#include <cstdint>
#include <cstring>
#include <vector>

#include "dns_answer.h"

using namespace flotilla::discovery;

namespace {

Zone &zone() {
  static Zone *z = [] {
    auto *zone = new Zone(Zone::Settings{});
    for (int i = 0; i < 40; ++i) {
      Endpoint e;
      e.service = i < 30 ? "web" : "db";
      e.alloc = "alloc" + std::to_string(i);
      e.addresses = {"10.42.0." + std::to_string(i), "fd00::" + std::to_string(i)};
      e.port = static_cast<uint16_t>(8000 + i);
      e.tags = {i % 2 ? "odd" : "even"};
      e.health = i % 5 ? "passing" : "critical";
      zone->put_endpoint(e);
    }
    zone->put_vip("web", "10.43.0.1");
    zone->commit();
    return zone;
  }();
  return *z;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static Responder *limited = [] {
    AnswerSettings s;
    s.answer_limit = 4;
    return new Responder(zone(), s);
  }();
  static Responder plain(zone(), AnswerSettings{});
  static Responder *uncached = [] {
    AnswerSettings s;
    s.cache_slots = 0;
    return new Responder(zone(), s);
  }();
  static std::vector<uint8_t> out(65535), other(65535);
  for (Responder *r : {&plain, limited}) {
    for (Transport t : {Transport::udp, Transport::tcp}) {
      std::vector<uint8_t> in(data, data + size);
      Answer a = r->answer(in.data(), in.size(), t, out.data(), out.size());
      if (a.kind != Answer::reply) continue;
      if (a.size < 12 || a.size > out.size()) __builtin_trap();
      if (t == Transport::udp && a.size > 1232) __builtin_trap();
      if (std::memcmp(out.data(), data, 2) != 0) __builtin_trap();  // id
      if (!(out[2] & 0x80)) __builtin_trap();                       // QR
    }
  }
  // The second of each pair may come from the cache: it must be the full
  // path's reply, byte for byte.
  for (Transport t : {Transport::udp, Transport::tcp}) {
    for (int i = 0; i < 2; ++i) {
      plain.seed(99);
      uncached->seed(99);
      std::vector<uint8_t> in(data, data + size), in2(data, data + size);
      Answer a = plain.answer(in.data(), in.size(), t, out.data(), out.size());
      Answer b = uncached->answer(in2.data(), in2.size(), t, other.data(), other.size());
      if (a.kind != b.kind || a.size != b.size) __builtin_trap();
      if (a.kind == Answer::reply && std::memcmp(out.data(), other.data(), a.size) != 0)
        __builtin_trap();
    }
  }
  return 0;
}
