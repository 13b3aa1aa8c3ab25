// Replies already written, keyed on the query's bytes: the Responder's fast
// path (Knot DNS and NSD prepare answers ahead; this keeps the ones asked
// for). An entry holds, for one query message less its ID, the finished
// reply for each rotation of the answer's record set (a set of N records is
// shown from a random start, so N replies), filled as they are first
// written. A hit copies one and writes the query's ID into it.
//
// The key is every byte of the query after the ID (flags, question with the
// client's letter case, EDNS record and all), the transport and the room
// the caller gave: two queries share an entry only when the full path would
// answer them alike. Entries carry the zone's generation (Zone::generation,
// bumped by every commit and clear) and a stale one is never served.
//
// Fixed size (slots of kSlotBytes, allocated at the first insert): a reply
// that does not fit is not kept and goes the full path every time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace flotilla::discovery {

class AnswerCache {
 public:
  static constexpr size_t kMaxVariants = 8;  // larger sets are not cached
  static constexpr size_t kSlotBytes = 448;  // key and replies of one entry
  static constexpr size_t kMaxKey = 256;     // longer queries are not cached

  // What the full path did besides writing the reply, replayed on a hit
  // so that the metrics count the same.
  enum StatBit : uint16_t {
    kAnswer = 1,
    kNxdomain = 2,
    kNodata = 4,
    kTruncated = 8,
    kLimited = 16,
  };

  // slots: entries kept (rounded up to a power of two); 0: no cache.
  explicit AnswerCache(size_t slots);
  ~AnswerCache();
  AnswerCache(const AnswerCache &) = delete;
  AnswerCache &operator=(const AnswerCache &) = delete;

  bool enabled() const { return want_ != 0; }

  struct Entry;
  // The entry of this query in this generation, or nullptr.
  // query: the whole message (len >= 12); cap: the caller's out_cap.
  const Entry *find(const uint8_t *query, size_t len, uint8_t transport, size_t cap,
                    uint64_t generation) const;
  // How many rotations the entry has, and whether a hit must draw one from
  // the Responder's random numbers (as the full path would).
  static uint16_t variants(const Entry &e);
  static bool draws(const Entry &e);
  // Copies rotation v into out (with the query's ID); 0 when that
  // rotation has not been written yet. *stats gets its StatBits.
  static size_t copy(const Entry &e, uint16_t v, const uint8_t *query, uint8_t *out, size_t out_cap,
                     uint16_t *stats);

  // Keeps a reply the full path wrote: rotation v of `variants` (variants
  // 1 and draws false for an answer without a rotated set). Replaces the
  // entry of another query or generation in the slot it picks.
  void insert(const uint8_t *query, size_t len, uint8_t transport, size_t cap, uint64_t generation,
              uint16_t variants, bool draws, uint16_t v, const uint8_t *reply, size_t reply_len,
              uint16_t stats);

 private:
  Entry *slot_for(const uint8_t *query, size_t len, uint8_t transport, size_t cap, uint64_t hash,
                  uint64_t generation, bool for_insert) const;

  struct Free {
    void operator()(Entry *e) const;
  };
  size_t want_ = 0;  // slots to allocate at the first insert
  size_t mask_ = 0;
  std::unique_ptr<Entry, Free> slots_;
};

}  // namespace flotilla::discovery
