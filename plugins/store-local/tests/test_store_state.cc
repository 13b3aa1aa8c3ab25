#include <gtest/gtest.h>

#include "snapshot_file.h"
#include "store_state.h"

namespace flotilla::store_local {
namespace {

const Clock::time_point kT0{};

int64_t put(StoreState &s, const std::string &k, const std::string &v, int64_t lease = 0) {
  s.apply(s.plan_put(k, v, lease), kT0);
  return s.revision();
}

int64_t grant(StoreState &s, int64_t ttl) {
  Record r = s.plan_lease_grant(ttl);
  s.apply(r, kT0);
  return r.lease;
}

Compare cmp(const std::string &key, int t, int op, int64_t n, const std::string &v = "") {
  Compare c;
  c.key = key;
  c.target = t;
  c.op = op;
  c.number = n;
  c.value = v;
  return c;
}

Op op_put(const std::string &k, const std::string &v, int64_t lease = 0) {
  Op o;
  o.type = FLOTILLA_OP_PUT;
  o.key = k;
  o.value = v;
  o.lease = lease;
  return o;
}

Op op_del(const std::string &k, bool prefix = false) {
  Op o;
  o.type = FLOTILLA_OP_DELETE;
  o.key = k;
  o.prefix = prefix;
  return o;
}

TEST(StoreState, CompareTargetsAndOperators) {
  StoreState s;
  int64_t lease = grant(s, 60);
  int64_t created = put(s, "k", "m");
  int64_t modified = put(s, "k", "m", lease);
  struct Case {
    Compare c;
    bool holds;
  } cases[] = {
      {cmp("k", FLOTILLA_CMP_VERSION, FLOTILLA_CMP_EQUAL, 2), true},
      {cmp("k", FLOTILLA_CMP_VERSION, FLOTILLA_CMP_NOT_EQUAL, 2), false},
      {cmp("k", FLOTILLA_CMP_VERSION, FLOTILLA_CMP_LESS, 3), true},
      {cmp("k", FLOTILLA_CMP_VERSION, FLOTILLA_CMP_GREATER, 2), false},
      {cmp("k", FLOTILLA_CMP_CREATE, FLOTILLA_CMP_EQUAL, created), true},
      {cmp("k", FLOTILLA_CMP_MOD, FLOTILLA_CMP_EQUAL, modified), true},
      {cmp("k", FLOTILLA_CMP_MOD, FLOTILLA_CMP_GREATER, created), true},
      {cmp("k", FLOTILLA_CMP_LEASE, FLOTILLA_CMP_EQUAL, lease), true},
      {cmp("k", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, "m"), true},
      {cmp("k", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_LESS, 0, "n"), true},
      {cmp("k", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_GREATER, 0, "l"), true},
      {cmp("k", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_GREATER, 0, "m"), false},
      // A missing key has version, revisions and lease 0 and an empty value.
      {cmp("nope", FLOTILLA_CMP_VERSION, FLOTILLA_CMP_EQUAL, 0), true},
      {cmp("nope", FLOTILLA_CMP_CREATE, FLOTILLA_CMP_EQUAL, 0), true},
      {cmp("nope", FLOTILLA_CMP_MOD, FLOTILLA_CMP_LESS, 1), true},
      {cmp("nope", FLOTILLA_CMP_LEASE, FLOTILLA_CMP_EQUAL, 0), true},
      {cmp("nope", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, ""), true},
  };
  for (const auto &c : cases) {
    auto plan = s.plan_txn({c.c}, {}, {});
    EXPECT_EQ(plan.succeeded, c.holds)
        << "target " << c.c.target << " op " << c.c.op << " key " << c.c.key;
    EXPECT_FALSE(plan.record) << "no ops: nothing to write";
  }
}

TEST(StoreState, TxnAppliesTheChosenBranchInOneRevision) {
  StoreState s;
  put(s, "/x/1", "a");
  put(s, "/x/2", "b");
  const int64_t before = s.revision();
  auto plan = s.plan_txn({cmp("/x/1", FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, "a")},
                         {op_put("/y", "new"), op_del("/x/", true)}, {op_put("/z", "no")});
  ASSERT_TRUE(plan.succeeded);
  ASSERT_TRUE(plan.record);
  EXPECT_EQ(plan.record->changes.size(), 3u);
  RevisionEvents ev = s.apply(*plan.record, kT0);
  EXPECT_EQ(s.revision(), before + 1);
  EXPECT_EQ(ev.revision, before + 1);
  ASSERT_EQ(ev.events.size(), 3u);
  EXPECT_EQ(ev.events[0].kv.key, "/y");
  EXPECT_TRUE(ev.events[1].deleted);
  EXPECT_EQ(s.map().latest("/z"), nullptr);
  EXPECT_EQ(s.map().latest("/x/1"), nullptr);
}

TEST(StoreState, TxnThatDeletesNothingMakesNoRevision) {
  StoreState s;
  auto plan = s.plan_txn({}, {op_del("/none"), op_del("/nothing/", true)}, {});
  EXPECT_TRUE(plan.succeeded);
  EXPECT_FALSE(plan.record);
}

TEST(StoreState, TxnWithUnknownLeaseIsRefusedWhole) {
  StoreState s;
  try {
    s.plan_txn({}, {op_put("/a", "1"), op_put("/b", "2", 99)}, {});
    FAIL() << "expected NOT_FOUND";
  } catch (const StoreError &e) {
    EXPECT_EQ(e.status(), FLOTILLA_E_NOT_FOUND);
  }
  // The failure branch's leases do not matter when the success branch runs.
  EXPECT_NO_THROW(s.plan_txn({}, {op_put("/a", "1")}, {op_put("/b", "2", 99)}));
}

TEST(StoreState, CheckOpsRefusesAmbiguousBranches) {
  auto refused = [](const std::vector<Op> &ops) {
    try {
      StoreState::check_ops(ops, "txn success");
    } catch (const StoreError &e) {
      EXPECT_EQ(e.status(), FLOTILLA_E_INVALID);
      return true;
    }
    return false;
  };
  EXPECT_TRUE(refused({op_put("a", "1"), op_put("a", "2")}));
  EXPECT_TRUE(refused({op_put("/p/a", "1"), op_del("/p/", true)}));
  EXPECT_TRUE(refused({op_put("a", "1"), op_del("a")}));
  EXPECT_TRUE(refused({op_put("", "1")}));
  EXPECT_TRUE(refused({op_del("")}));
  Op bad = op_put("a", "1");
  bad.type = 7;
  EXPECT_TRUE(refused({bad}));
  EXPECT_FALSE(refused({op_put("a", "1"), op_del("b"), op_del("b"), op_del("c/", true)}));
  EXPECT_TRUE(refused({op_put("a", "1"), op_del("", true)})) << "the empty prefix covers every key";
}

TEST(StoreState, PutUnderUnknownLeaseIsNotFound) {
  StoreState s;
  try {
    s.plan_put("k", "v", 12345);
    FAIL();
  } catch (const StoreError &e) {
    EXPECT_EQ(e.status(), FLOTILLA_E_NOT_FOUND);
  }
}

TEST(StoreState, RevokeDeletesAttachedKeysInOneRevision) {
  StoreState s;
  int64_t lease = grant(s, 10);
  put(s, "/n/1", "a", lease);
  put(s, "/n/2", "b", lease);
  put(s, "/n/3", "c", lease);
  put(s, "/n/3", "c2");  // re-put without the lease detaches it
  const int64_t before = s.revision();
  Record r = s.plan_lease_revoke(lease);
  RevisionEvents ev = s.apply(r, kT0);
  EXPECT_EQ(ev.revision, before + 1);
  EXPECT_EQ(ev.events.size(), 2u);
  EXPECT_EQ(s.map().latest("/n/1"), nullptr);
  ASSERT_NE(s.map().latest("/n/3"), nullptr);
  EXPECT_FALSE(s.leases().contains(lease));
}

TEST(StoreState, RevokingALeaseWithoutKeysMakesNoRevision) {
  StoreState s;
  int64_t lease = grant(s, 10);
  const int64_t before = s.revision();
  RevisionEvents ev = s.apply(s.plan_lease_revoke(lease), kT0);
  EXPECT_EQ(ev.revision, 0);
  EXPECT_EQ(s.revision(), before);
}

TEST(StoreState, LeaseIdsAreNeverReused) {
  StoreState s;
  int64_t a = grant(s, 10);
  s.apply(s.plan_lease_revoke(a), kT0);
  int64_t b = grant(s, 10);
  EXPECT_NE(a, b);
}

TEST(StoreState, LeaseExpiryFollowsTheClock) {
  StoreState s;
  int64_t lease = grant(s, 5);
  EXPECT_TRUE(s.leases().expired(kT0 + std::chrono::seconds(4)).empty());
  EXPECT_TRUE(s.keepalive(lease, kT0 + std::chrono::seconds(4)));
  EXPECT_TRUE(s.leases().expired(kT0 + std::chrono::seconds(8)).empty());
  EXPECT_EQ(s.leases().expired(kT0 + std::chrono::seconds(9)), std::vector<int64_t>{lease});
}

TEST(StoreState, CompactRefusesFutureAndAlreadyCompacted) {
  StoreState s;
  put(s, "a", "1");
  put(s, "a", "2");
  EXPECT_THROW(s.plan_compact(s.revision() + 1), StoreError);
  s.apply(s.plan_compact(s.revision()), kT0);
  try {
    s.plan_compact(s.revision());
    FAIL();
  } catch (const StoreError &e) {
    EXPECT_EQ(e.status(), FLOTILLA_E_COMPACTED);
  }
}

TEST(StoreState, ReplayedRecordMustFollowTheState) {
  StoreState s;
  Record r = s.plan_put("a", "1", 0);
  r.revision += 5;
  EXPECT_THROW(s.apply(r, kT0), StoreError);
}

TEST(StoreState, SnapshotRoundTripsHistoryLeasesAndCompaction) {
  StoreState s;
  int64_t lease = grant(s, 30);
  put(s, "a", "1");
  put(s, "a", "2");
  put(s, std::string("bin\0\xff", 5), std::string("\0\x01\x02", 3), lease);
  s.apply(s.plan_delete(KeyRange::exact("a")).value(), kT0);
  put(s, "c", std::string(100000, 'x'));
  s.apply(s.plan_compact(3), kT0);
  std::string file = encode_snapshot_file(42, s);

  StoreState restored;
  EXPECT_EQ(decode_snapshot_file(file, restored, kT0), 42u);
  EXPECT_EQ(restored.revision(), s.revision());
  EXPECT_EQ(restored.map().compact_revision(), 3);
  EXPECT_EQ(restored.leases().next_id(), s.leases().next_id());
  ASSERT_TRUE(restored.leases().contains(lease));
  EXPECT_EQ(restored.leases().find(lease)->keys.size(), 1u);
  EXPECT_EQ(encode_snapshot_file(42, restored), file) << "restore must lose nothing";
}

TEST(StoreState, SnapshotOfTombstonesAndEmptyValuesRoundTrips) {
  StoreState s;
  for (int i = 0; i < 20; ++i) put(s, "k" + std::to_string(i), "");
  s.apply(s.plan_delete(KeyRange::prefix("k")).value(), kT0);
  std::string file = encode_snapshot_file(3, s);
  StoreState restored;
  decode_snapshot_file(file, restored, kT0);
  EXPECT_EQ(encode_snapshot_file(3, restored), file);
}

TEST(StoreState, DamagedSnapshotIsRefusedAndLeavesStateAlone) {
  StoreState s;
  put(s, "a", "1");
  std::string file = encode_snapshot_file(7, s);
  StoreState other;
  put(other, "keep", "me");
  for (size_t i = 0; i < file.size(); i += 3) {
    std::string bad = file;
    bad[i] ^= 0x20;
    EXPECT_THROW(decode_snapshot_file(bad, other, kT0), DecodeError) << "byte " << i;
  }
  EXPECT_THROW(decode_snapshot_file(file.substr(0, file.size() - 1), other, kT0), DecodeError);
  ASSERT_NE(other.map().latest("keep"), nullptr);
}

}  // namespace
}  // namespace flotilla::store_local
