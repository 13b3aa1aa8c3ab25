#include <gtest/gtest.h>

#include "byte_codec.h"
#include "crc32c.h"
#include "store_types.h"
#include "wal_record.h"

namespace flotilla::store_local {
namespace {

Record changes(int64_t rev) {
  Record r;
  r.type = Record::Type::changes;
  r.revision = rev;
  r.changes.push_back(Change{false, "/a", std::string("v\0\xff", 3), 7});
  r.changes.push_back(Change{true, "/b", "", 0});
  return r;
}

std::vector<LoggedRecord> scan_all(std::string_view file, size_t *good, std::string *damage) {
  std::vector<LoggedRecord> out;
  *good = scan_frames(
      file, [&](std::string_view payload, size_t) { out.push_back(decode_payload(payload)); },
      damage);
  return out;
}

TEST(Crc32c, KnownVector) {
  EXPECT_EQ(crc32c("123456789"), 0xe3069283u);
  EXPECT_EQ(crc32c(""), 0u);
  std::string long_input(1000, 'q');
  uint32_t whole = crc32c(long_input);
  uint32_t parts = crc32c_extend(crc32c(long_input.substr(0, 333)), long_input.data() + 333, 667);
  EXPECT_EQ(whole, parts);
}

TEST(WalRecord, EveryTypeRoundTrips) {
  std::string log;
  Record grant;
  grant.type = Record::Type::lease_grant;
  grant.lease = 5;
  grant.ttl_seconds = 30;
  Record revoke = changes(9);
  revoke.type = Record::Type::lease_revoke;
  revoke.lease = 5;
  Record compact;
  compact.type = Record::Type::compact;
  compact.revision = 4;
  append_frame(log, 1, changes(2));
  append_frame(log, 2, grant);
  append_frame(log, 3, revoke);
  append_frame(log, 4, compact);
  size_t good = 0;
  std::string damage = "x";
  auto recs = scan_all(log, &good, &damage);
  EXPECT_EQ(good, log.size());
  EXPECT_EQ(damage, "");
  ASSERT_EQ(recs.size(), 4u);
  EXPECT_EQ(recs[0].seq, 1u);
  EXPECT_EQ(recs[0].record.changes[0].value, std::string("v\0\xff", 3));
  EXPECT_EQ(recs[0].record.changes[0].lease, 7);
  EXPECT_TRUE(recs[0].record.changes[1].remove);
  EXPECT_EQ(recs[1].record.ttl_seconds, 30);
  EXPECT_EQ(recs[2].record.type, Record::Type::lease_revoke);
  EXPECT_EQ(recs[2].record.changes.size(), 2u);
  EXPECT_EQ(recs[3].record.revision, 4);
}

// A crash can cut the log anywhere in the last record: every cut must be
// detected and leave exactly the records before it.
TEST(WalRecord, TornTailAtEveryByteKeepsEarlierRecords) {
  std::string log;
  append_frame(log, 1, changes(2));
  const size_t first = log.size();
  append_frame(log, 2, changes(3));
  for (size_t cut = first + 1; cut < log.size(); ++cut) {
    size_t good = 0;
    std::string damage;
    auto recs = scan_all(std::string_view(log).substr(0, cut), &good, &damage);
    EXPECT_EQ(good, first) << "cut at " << cut;
    EXPECT_EQ(recs.size(), 1u);
    EXPECT_FALSE(damage.empty());
  }
}

TEST(WalRecord, FlippedBitOrZeroFilledTailIsDamage) {
  std::string log;
  append_frame(log, 1, changes(2));
  const size_t first = log.size();
  append_frame(log, 2, changes(3));
  for (size_t i = first; i < log.size(); ++i) {
    std::string bad = log;
    bad[i] ^= 0x04;
    size_t good = 0;
    std::string damage;
    auto recs = scan_all(bad, &good, &damage);
    EXPECT_EQ(good, first) << "flip at " << i;
    EXPECT_EQ(recs.size(), 1u);
  }
  std::string zeros = log + std::string(4096, '\0');
  size_t good = 0;
  std::string damage;
  scan_all(zeros, &good, &damage);
  EXPECT_EQ(good, log.size());
  EXPECT_NE(damage.find("zero"), std::string::npos) << damage;
}

TEST(WalRecord, GarbageLengthIsNotTrusted) {
  std::string log =
      "\xff\xff\xff\x7f"
      "abcd"
      "tail";
  size_t good = 1;
  std::string damage;
  scan_all(log, &good, &damage);
  EXPECT_EQ(good, 0u);
  EXPECT_FALSE(damage.empty());
}

TEST(WalRecord, UndecodablePayloadWithGoodCrcThrows) {
  std::string log;
  Record r;
  r.type = static_cast<Record::Type>(99);
  append_frame(log, 1, r);
  size_t good = 0;
  std::string damage;
  EXPECT_THROW(scan_all(log, &good, &damage), DecodeError);
}

}  // namespace
}  // namespace flotilla::store_local
