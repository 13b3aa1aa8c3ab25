#include <gtest/gtest.h>

#include "mvcc_map.h"

namespace flotilla::store_local {
namespace {

std::vector<std::string> keys_of(const std::vector<KeyValue> &kvs) {
  std::vector<std::string> out;
  for (const auto &kv : kvs) out.push_back(kv.key);
  return out;
}

// One change per revision, as a plain put would make it.
int64_t put(MvccMap &m, const std::string &k, const std::string &v, int64_t lease = 0) {
  int64_t rev = m.revision() + 1;
  m.put(k, v, lease, rev, 0);
  m.set_revision(rev);
  return rev;
}

int64_t del(MvccMap &m, const std::string &k) {
  int64_t rev = m.revision() + 1;
  int64_t old = 0;
  EXPECT_TRUE(m.remove(k, rev, 0, &old));
  m.set_revision(rev);
  return rev;
}

TEST(KeyRange, PrefixEndIncrementsLastByteBelowFF) {
  KeyRange r = KeyRange::prefix("/a/");
  EXPECT_EQ(r.begin, "/a/");
  EXPECT_EQ(r.end, "/a0");
  EXPECT_TRUE(r.contains("/a/"));
  EXPECT_TRUE(r.contains("/a/zzz"));
  EXPECT_FALSE(r.contains("/a0"));
  EXPECT_FALSE(r.contains("/a"));

  KeyRange ff = KeyRange::prefix(std::string("a\xff\xff", 3));
  EXPECT_EQ(ff.end, "b");
  EXPECT_TRUE(ff.contains(std::string("a\xff\xff\x01", 4)));

  EXPECT_TRUE(KeyRange::prefix("").unbounded);
  EXPECT_TRUE(KeyRange::prefix(std::string("\xff", 1)).unbounded);
}

TEST(KeyRange, ExactAndBetween) {
  KeyRange e = KeyRange::exact("k");
  EXPECT_TRUE(e.contains("k"));
  EXPECT_FALSE(e.contains(std::string("k\0", 2)));
  EXPECT_FALSE(e.contains("ka"));
  EXPECT_TRUE(e.is_single_key());

  KeyRange b = KeyRange::between("b", "d");
  EXPECT_FALSE(b.contains("a"));
  EXPECT_TRUE(b.contains("b"));
  EXPECT_TRUE(b.contains("czz"));
  EXPECT_FALSE(b.contains("d"));
  EXPECT_TRUE(KeyRange::between("b", std::string("\0", 1)).unbounded);
}

TEST(MvccMap, NewStoreIsAtRevisionOne) {
  MvccMap m;
  EXPECT_EQ(m.revision(), 1);
  EXPECT_EQ(m.compact_revision(), 0);
}

TEST(MvccMap, PutTracksCreateModAndVersion) {
  MvccMap m;
  int64_t r1 = put(m, "a", "1");
  int64_t r2 = put(m, "a", "2");
  const auto *e = m.latest("a");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->value, "2");
  EXPECT_EQ(e->create_revision, r1);
  EXPECT_EQ(e->mod_revision, r2);
  EXPECT_EQ(e->version, 2);

  del(m, "a");
  EXPECT_EQ(m.latest("a"), nullptr);
  int64_t r4 = put(m, "a", "3");
  e = m.latest("a");
  EXPECT_EQ(e->create_revision, r4) << "a key re-created after a delete starts a new life";
  EXPECT_EQ(e->version, 1);
  EXPECT_EQ(m.live_keys(), 1u);
}

TEST(MvccMap, RangeAtOlderRevisionSeesThePast) {
  MvccMap m;
  int64_t r1 = put(m, "a", "a1");
  int64_t r2 = put(m, "b", "b1");
  put(m, "a", "a2");
  del(m, "b");
  bool more = true;
  auto now = m.range(KeyRange::prefix(""), m.revision(), 0, &more);
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now[0].value, "a2");
  EXPECT_FALSE(more);

  auto then = m.range(KeyRange::prefix(""), r2, 0, &more);
  ASSERT_EQ(then.size(), 2u);
  EXPECT_EQ(then[0].value, "a1");
  EXPECT_EQ(then[1].value, "b1");
  auto first = m.range(KeyRange::prefix(""), r1, 0, &more);
  EXPECT_EQ(keys_of(first), std::vector<std::string>{"a"});
}

TEST(MvccMap, LimitSetsMoreOnlyWhenSomethingWasLeftOut) {
  MvccMap m;
  for (const char *k : {"k1", "k2", "k3"}) put(m, k, "v");
  bool more = false;
  auto two = m.range(KeyRange::prefix("k"), m.revision(), 2, &more);
  EXPECT_EQ(keys_of(two), (std::vector<std::string>{"k1", "k2"}));
  EXPECT_TRUE(more);
  auto three = m.range(KeyRange::prefix("k"), m.revision(), 3, &more);
  EXPECT_EQ(three.size(), 3u);
  EXPECT_FALSE(more);
  // Deleted keys do not count against the limit.
  del(m, "k3");
  auto after = m.range(KeyRange::prefix("k"), m.revision(), 2, &more);
  EXPECT_EQ(after.size(), 2u);
  EXPECT_FALSE(more);
}

TEST(MvccMap, EventsComeGroupedByRevisionInChangeOrder) {
  MvccMap m;
  // One revision with three changes made in the order c, a, b.
  int64_t rev = m.revision() + 1;
  m.put("c", "3", 0, rev, 0);
  m.put("a", "1", 0, rev, 1);
  m.put("b", "2", 0, rev, 2);
  m.set_revision(rev);
  int64_t r2 = del(m, "a");
  auto groups = m.events(KeyRange::prefix(""), rev, r2);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].revision, rev);
  ASSERT_EQ(groups[0].events.size(), 3u);
  EXPECT_EQ(groups[0].events[0].kv.key, "c");
  EXPECT_EQ(groups[0].events[1].kv.key, "a");
  EXPECT_EQ(groups[0].events[2].kv.key, "b");
  EXPECT_EQ(groups[1].revision, r2);
  ASSERT_EQ(groups[1].events.size(), 1u);
  EXPECT_TRUE(groups[1].events[0].deleted);
  EXPECT_EQ(groups[1].events[0].kv.mod_revision, r2);
  EXPECT_EQ(groups[1].events[0].kv.value, "");
}

TEST(MvccMap, CompactionKeepsWhatReadsAtOrAfterItNeed) {
  MvccMap m;
  put(m, "a", "a1");               // 2
  put(m, "b", "b1");               // 3
  int64_t r4 = put(m, "a", "a2");  // 4
  int64_t r5 = del(m, "b");        // 5
  int64_t r6 = put(m, "c", "c1");  // 6
  m.compact(r5);
  EXPECT_EQ(m.compact_revision(), r5);
  // a keeps only a2; b's deletion exactly at the compaction point stays so a
  // watch from r5 still sees it.
  EXPECT_EQ(m.histories().at("a").size(), 1u);
  ASSERT_EQ(m.histories().count("b"), 1u);
  auto groups = m.events(KeyRange::prefix(""), r5, r6);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_TRUE(groups[0].events[0].deleted);
  bool more = false;
  auto at5 = m.range(KeyRange::prefix(""), r5, 0, &more);
  ASSERT_EQ(at5.size(), 1u);
  EXPECT_EQ(at5[0].key, "a");
  EXPECT_EQ(at5[0].mod_revision, r4);
  // The next compaction drops b completely.
  m.compact(r6);
  EXPECT_EQ(m.histories().count("b"), 0u);
  EXPECT_EQ(m.histories().size(), 2u);
}

TEST(MvccMap, CompactionBelowTheCurrentPointDoesNothing) {
  MvccMap m;
  put(m, "a", "1");
  put(m, "a", "2");
  m.compact(3);
  m.compact(2);
  EXPECT_EQ(m.compact_revision(), 3);
}

TEST(MvccMap, RestoreRebuildsCompactionQueue) {
  MvccMap m;
  put(m, "a", "1");
  put(m, "a", "2");
  put(m, "b", "1");
  del(m, "b");
  MvccMap copy;
  for (const auto &[k, h] : m.histories()) copy.restore_key(k, h);
  copy.finish_restore(m.revision(), m.compact_revision());
  EXPECT_EQ(copy.live_keys(), 1u);
  copy.compact(copy.revision());
  EXPECT_EQ(copy.histories().count("b"), 1u) << "deletion at the compaction point stays";
  EXPECT_EQ(copy.histories().at("a").size(), 1u);
}

}  // namespace
}  // namespace flotilla::store_local
