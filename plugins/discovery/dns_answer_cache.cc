#include "dns_answer_cache.h"

#include <cstdlib>
#include <cstring>

namespace flotilla::discovery {

namespace {

constexpr size_t kId = 2;  // the query's first two bytes are not key

uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

uint64_t hash_of(const uint8_t *query, size_t len, uint8_t transport, size_t cap) {
  uint64_t h = mix(len * 0x9e3779b97f4a7c15ull ^ (uint64_t{transport} << 56) ^ cap);
  size_t i = kId;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    std::memcpy(&w, query + i, 8);
    h = mix(h ^ w);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, query + i, len - i);
  return mix(h ^ tail);
}

}  // namespace

// Trivial, so that zeroed memory is a table of empty entries.
struct AnswerCache::Entry {
  uint64_t hash;
  uint64_t generation;  // 0: empty (the zone's generations start at 1)
  uint32_t cap;
  uint16_t key_len;
  uint8_t transport;
  bool draws;
  uint16_t variants;
  uint16_t used;  // bytes of data: the key, then the replies written
  uint16_t off[kMaxVariants];
  uint16_t len[kMaxVariants];  // 0: not written yet
  uint16_t stats[kMaxVariants];
  uint8_t data[kSlotBytes];

  bool holds(const uint8_t *query, size_t qlen, uint8_t t, size_t c, uint64_t h,
             uint64_t gen) const {
    return generation == gen && hash == h && key_len == qlen - kId && transport == t && cap == c &&
           std::memcmp(data, query + kId, key_len) == 0;
  }
};

AnswerCache::AnswerCache(size_t slots) {
  if (slots == 0) return;
  size_t n = 2;
  while (n < slots) n <<= 1;
  want_ = n;
}

AnswerCache::~AnswerCache() = default;

void AnswerCache::Free::operator()(Entry *e) const {
  std::free(e);
}

AnswerCache::Entry *AnswerCache::slot_for(const uint8_t *query, size_t len, uint8_t transport,
                                          size_t cap, uint64_t hash, uint64_t generation,
                                          bool for_insert) const {
  if (!slots_) return nullptr;
  // Two places an entry may be (two-way, so two hot names that share one
  // slot do not push each other out).
  const size_t a = hash & mask_;
  size_t b = (hash >> 32) & mask_;
  if (b == a) b = a ^ 1;
  Entry *ea = slots_.get() + a, *eb = slots_.get() + b;
  if (ea->holds(query, len, transport, cap, hash, generation)) return ea;
  if (eb->holds(query, len, transport, cap, hash, generation)) return eb;
  if (!for_insert) return nullptr;
  if (ea->generation != generation) return ea;
  if (eb->generation != generation) return eb;
  return (hash >> 63) ? ea : eb;
}

const AnswerCache::Entry *AnswerCache::find(const uint8_t *query, size_t len, uint8_t transport,
                                            size_t cap, uint64_t generation) const {
  if (!slots_ || len > kMaxKey + kId) return nullptr;
  return slot_for(query, len, transport, cap, hash_of(query, len, transport, cap), generation,
                  false);
}

uint16_t AnswerCache::variants(const Entry &e) {
  return e.variants;
}

bool AnswerCache::draws(const Entry &e) {
  return e.draws;
}

size_t AnswerCache::copy(const Entry &e, uint16_t v, const uint8_t *query, uint8_t *out,
                         size_t out_cap, uint16_t *stats) {
  if (v >= e.variants || e.len[v] == 0 || e.len[v] > out_cap) return 0;
  std::memcpy(out, e.data + e.off[v], e.len[v]);
  std::memcpy(out, query, kId);
  *stats = e.stats[v];
  return e.len[v];
}

void AnswerCache::insert(const uint8_t *query, size_t len, uint8_t transport, size_t cap,
                         uint64_t generation, uint16_t variants, bool draws, uint16_t v,
                         const uint8_t *reply, size_t reply_len, uint16_t stats) {
  if (want_ == 0 || len > kMaxKey + kId || len < kId || variants == 0 || variants > kMaxVariants ||
      v >= variants || reply_len == 0)
    return;
  if (!slots_) {
    // Allocated on first use, zeroed by calloc: the pages are the kernel's
    // zero page until an entry lands in them, so an idle daemon pays
    // nothing and a small zone little.
    slots_.reset(static_cast<Entry *>(std::calloc(want_, sizeof(Entry))));
    if (!slots_) return;
    mask_ = want_ - 1;
  }
  const uint64_t hash = hash_of(query, len, transport, cap);
  Entry *e = slot_for(query, len, transport, cap, hash, generation, true);
  const size_t key_len = len - kId;
  if (!e->holds(query, len, transport, cap, hash, generation) || e->variants != variants ||
      e->draws != draws) {
    if (key_len + reply_len > kSlotBytes) return;
    e->hash = hash;
    e->generation = generation;
    e->cap = static_cast<uint32_t>(cap);
    e->key_len = static_cast<uint16_t>(key_len);
    e->transport = transport;
    e->draws = draws;
    e->variants = variants;
    std::memcpy(e->data, query + kId, key_len);
    e->used = static_cast<uint16_t>(key_len);
    for (size_t i = 0; i < kMaxVariants; ++i) e->len[i] = 0;
  }
  if (e->len[v] != 0 || e->used + reply_len > kSlotBytes) return;
  e->off[v] = e->used;
  e->len[v] = static_cast<uint16_t>(reply_len);
  e->stats[v] = stats;
  std::memcpy(e->data + e->used, reply, reply_len);
  e->used = static_cast<uint16_t>(e->used + reply_len);
}

}  // namespace flotilla::discovery
