// The flotilla.store/1 conformance suite. Written once, run against every
// backend: each backend is one StoreBackend value in the instantiation at
// the bottom. The suite loads the backend's real plugin through the core's
// PluginHost and drives it through StoreClient (and the raw vtable where
// StoreClient has no call), on a real libuv loop.
//
// Rules for tests here, so that a shared server (etcd) can run them too:
// every key lives under the test's own prefix (k("...")), and revisions are
// only compared with each other, never with absolute numbers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "etcd_fixture.h"
#include "store_harness.h"

namespace flotilla::store_test {
namespace {

// A running backend for one test.
struct BackendInstance {
  PluginSettings settings;       // loads the backend's plugin
  std::shared_ptr<void> server;  // keeps an external server alive, if any
};

struct StoreBackend {
  std::string name;
  // Start the backend; workdir is an empty directory for this test.
  std::function<BackendInstance(const std::string &workdir)> start;
  // Non-empty: why the backend cannot run here; its tests report SKIPPED.
  std::string skip_reason;
};

void PrintTo(const StoreBackend &b, std::ostream *os) {
  *os << b.name;
}

class StoreConformance : public ::testing::TestWithParam<StoreBackend> {
 protected:
  void SetUp() override {
    if (!GetParam().skip_reason.empty()) GTEST_SKIP() << GetParam().skip_reason;
    dir_ = std::make_unique<TempDir>("store-conformance");
    backend_ = GetParam().start(dir_->path());
    const auto *info = ::testing::UnitTest::GetInstance()->current_test_info();
    prefix_ = std::string("/conformance/") + info->name() + "/";
    start();
  }

  void TearDown() override {
    stop();
    backend_.server.reset();
  }

  void start() {
    store_ = std::make_unique<LoadedStore>(loop_, backend_.settings, dir_->path() + "/data");
    sync_ = std::make_unique<SyncStore>(loop_, *store_);
  }
  void stop() {
    sync_.reset();
    store_.reset();
  }
  void restart() {
    stop();
    start();
  }

  std::string k(const std::string &name) const { return prefix_ + name; }
  SyncStore &s() { return *sync_; }
  StoreClient &client() { return store_->client(); }
  void run_until(const std::function<bool()> &done, const std::string &what) {
    loop_.run_until(done, what);
  }

  TestLoop loop_;
  std::unique_ptr<TempDir> dir_;
  BackendInstance backend_;
  std::string prefix_;
  std::unique_ptr<LoadedStore> store_;
  std::unique_ptr<SyncStore> sync_;
};

#define ASSERT_OK(r) ASSERT_TRUE((r).ok()) << (r).message
#define EXPECT_OK(r) EXPECT_TRUE((r).ok()) << (r).message

// ---- put / get -----------------------------------------------------------

TEST_P(StoreConformance, PutThenGetReturnsValueAndRevisions) {
  auto w = s().put(k("a"), "{\"x\":1}");
  ASSERT_OK(w.result);
  EXPECT_GT(w.revision, 0);
  auto g = s().get(k("a"));
  ASSERT_OK(g.result);
  ASSERT_TRUE(g.kv);
  EXPECT_EQ(g.kv->key, k("a"));
  EXPECT_EQ(g.kv->value, "{\"x\":1}");
  EXPECT_EQ(g.kv->create_revision, w.revision);
  EXPECT_EQ(g.kv->mod_revision, w.revision);
  EXPECT_EQ(g.kv->version, 1);
  EXPECT_EQ(g.kv->lease, 0);
  EXPECT_GE(g.revision, w.revision);
}

TEST_P(StoreConformance, OverwriteBumpsVersionAndModRevisionButKeepsCreate) {
  auto w1 = s().put(k("a"), "1");
  auto w2 = s().put(k("a"), "2");
  auto w3 = s().put(k("a"), "2");  // same value still makes a revision
  ASSERT_OK(w3.result);
  EXPECT_LT(w1.revision, w2.revision);
  EXPECT_LT(w2.revision, w3.revision);
  auto g = s().get(k("a"));
  ASSERT_TRUE(g.kv);
  EXPECT_EQ(g.kv->create_revision, w1.revision);
  EXPECT_EQ(g.kv->mod_revision, w3.revision);
  EXPECT_EQ(g.kv->version, 3);
}

TEST_P(StoreConformance, EachWriteMakesExactlyOneRevision) {
  auto a = s().put(k("a"), "1");
  auto b = s().put(k("b"), "1");
  auto c = s().put(k("c"), "1");
  EXPECT_EQ(b.revision, a.revision + 1);
  EXPECT_EQ(c.revision, b.revision + 1);
  EXPECT_EQ(s().revision(), c.revision);
}

TEST_P(StoreConformance, GetOfMissingKeyFindsNothing) {
  auto w = s().put(k("other"), "x");
  auto g = s().get(k("missing"));
  ASSERT_OK(g.result);
  EXPECT_FALSE(g.kv);
  EXPECT_GE(g.revision, w.revision);
}

TEST_P(StoreConformance, EmptyKeysAreRefused) {
  auto w = s().put("", "v");
  EXPECT_EQ(w.result.status, FLOTILLA_E_INVALID);
  EXPECT_FALSE(w.result.message.empty());
  auto g = s().get("");
  EXPECT_EQ(g.result.status, FLOTILLA_E_INVALID);
  auto d = s().remove("", false);
  EXPECT_EQ(d.result.status, FLOTILLA_E_INVALID);
  auto t = s().txn({}, {StoreOp::put("", "v")});
  EXPECT_EQ(t.result.status, FLOTILLA_E_INVALID);
  auto c = s().txn({StoreCompare::absent("")}, {});
  EXPECT_EQ(c.result.status, FLOTILLA_E_INVALID);
}

TEST_P(StoreConformance, BinaryKeysAndValuesAreKeptExactly) {
  std::string key = k(std::string("bin\0\x01\xff\x7f", 7));
  std::string value;
  for (int i = 0; i < 256; ++i) value.push_back(static_cast<char>(i));
  ASSERT_OK(s().put(key, value).result);
  auto g = s().get(key);
  ASSERT_TRUE(g.kv);
  EXPECT_EQ(g.kv->key, key);
  EXPECT_EQ(g.kv->value, value);
  auto l = s().list(k("bin"));
  ASSERT_EQ(l.kvs.size(), 1u);
  EXPECT_EQ(l.kvs[0].value, value);
}

TEST_P(StoreConformance, LargeValueRoundTrips) {
  std::string value(1 << 20, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>((i * 131) & 0xff);
  ASSERT_OK(s().put(k("big"), value).result);
  auto g = s().get(k("big"));
  ASSERT_TRUE(g.kv);
  EXPECT_TRUE(g.kv->value == value);
}

TEST_P(StoreConformance, EmptyValueIsAValue) {
  ASSERT_OK(s().put(k("empty"), "").result);
  auto g = s().get(k("empty"));
  ASSERT_TRUE(g.kv);
  EXPECT_EQ(g.kv->value, "");
  EXPECT_EQ(g.kv->version, 1);
}

// ---- ranges --------------------------------------------------------------

TEST_P(StoreConformance, PrefixListIsSortedAndStaysInsideThePrefix) {
  for (const char *name : {"a/2", "a/10", "a/1", "a0", "a", "b/1", "a/"})
    ASSERT_OK(s().put(k(name), name).result);
  auto l = s().list(k("a/"));
  ASSERT_OK(l.result);
  EXPECT_EQ(l.keys(), (std::vector<std::string>{k("a/"), k("a/1"), k("a/10"), k("a/2")}));
  EXPECT_FALSE(l.more);
}

TEST_P(StoreConformance, RangeEndIsExclusive) {
  for (const char *name : {"r/a", "r/b", "r/c", "r/d"}) ASSERT_OK(s().put(k(name), "v").result);
  auto l = s().range(k("r/b"), k("r/d"));
  ASSERT_OK(l.result);
  EXPECT_EQ(l.keys(), (std::vector<std::string>{k("r/b"), k("r/c")}));
  auto none = s().range(k("r/c"), k("r/c"));
  ASSERT_OK(none.result);
  EXPECT_TRUE(none.kvs.empty());
  auto exact = s().range_exact(k("r/a"));
  EXPECT_EQ(exact.keys(), std::vector<std::string>{k("r/a")});
}

TEST_P(StoreConformance, LimitCutsAndReportsMore) {
  for (int i = 0; i < 5; ++i) ASSERT_OK(s().put(k("l/" + std::to_string(i)), "v").result);
  auto two = s().list(k("l/"), 0, 2);
  ASSERT_OK(two.result);
  EXPECT_EQ(two.keys(), (std::vector<std::string>{k("l/0"), k("l/1")}));
  EXPECT_TRUE(two.more);
  auto five = s().list(k("l/"), 0, 5);
  EXPECT_EQ(five.kvs.size(), 5u);
  EXPECT_FALSE(five.more);
  auto all = s().list(k("l/"), 0, 0);
  EXPECT_EQ(all.kvs.size(), 5u);
  EXPECT_FALSE(all.more);
  EXPECT_EQ(s().list(k("l/"), 0, -1).result.status, FLOTILLA_E_INVALID);
}

TEST_P(StoreConformance, HistoricReadSeesTheMapAsItWas) {
  auto r1 = s().put(k("h/a"), "a1");
  auto r2 = s().put(k("h/b"), "b1");
  ASSERT_OK(s().put(k("h/a"), "a2").result);
  ASSERT_OK(s().remove(k("h/b")).result);
  auto then = s().list(k("h/"), r2.revision);
  ASSERT_OK(then.result);
  ASSERT_EQ(then.kvs.size(), 2u);
  EXPECT_EQ(then.kvs[0].value, "a1");
  EXPECT_EQ(then.kvs[0].mod_revision, r1.revision);
  EXPECT_EQ(then.kvs[1].value, "b1");
  auto first = s().list(k("h/"), r1.revision);
  EXPECT_EQ(first.keys(), std::vector<std::string>{k("h/a")});
  auto now = s().list(k("h/"));
  ASSERT_EQ(now.kvs.size(), 1u);
  EXPECT_EQ(now.kvs[0].value, "a2");
  auto exact_then = s().range_exact(k("h/b"), r2.revision);
  ASSERT_EQ(exact_then.kvs.size(), 1u);
  EXPECT_EQ(exact_then.kvs[0].value, "b1");
}

TEST_P(StoreConformance, ReadingAFutureRevisionIsRefused) {
  auto w = s().put(k("f"), "v");
  auto l = s().list(k(""), w.revision + 1000);
  EXPECT_EQ(l.result.status, FLOTILLA_E_INVALID) << l.result.message;
  EXPECT_FALSE(l.result.message.empty());
}

// ---- delete --------------------------------------------------------------

TEST_P(StoreConformance, DeleteOneKey) {
  ASSERT_OK(s().put(k("d/a"), "1").result);
  auto w = s().put(k("d/ab"), "1");
  auto d = s().remove(k("d/a"));
  ASSERT_OK(d.result);
  EXPECT_EQ(d.deleted, 1);
  EXPECT_EQ(d.revision, w.revision + 1);
  EXPECT_FALSE(s().get(k("d/a")).kv);
  EXPECT_TRUE(s().get(k("d/ab")).kv) << "an exact delete must not touch longer keys";
}

TEST_P(StoreConformance, DeletePrefixRemovesAllInOneRevision) {
  for (const char *name : {"p/1", "p/2", "p/3", "q"}) ASSERT_OK(s().put(k(name), "v").result);
  const int64_t before = s().revision();
  WatchLog log;
  auto w = watch_into(client(), k(""), true, 0, log);
  auto d = s().remove(k("p/"), true);
  ASSERT_OK(d.result);
  EXPECT_EQ(d.deleted, 3);
  EXPECT_EQ(d.revision, before + 1);
  EXPECT_EQ(s().list(k("")).keys(), std::vector<std::string>{k("q")});
  run_until([&] { return log.events() >= 3; }, "the delete events");
  ASSERT_EQ(log.batches.size(), 1u);
  EXPECT_EQ(log.batches[0].revision, d.revision);
  for (const auto &e : log.batches[0].events) {
    EXPECT_EQ(e.type, StoreEvent::Type::remove);
    EXPECT_EQ(e.kv.mod_revision, d.revision);
    EXPECT_EQ(e.kv.value, "");
  }
}

TEST_P(StoreConformance, DeletingNothingMakesNoRevision) {
  auto w = s().put(k("x"), "v");
  auto d = s().remove(k("nothing"));
  ASSERT_OK(d.result);
  EXPECT_EQ(d.deleted, 0);
  EXPECT_EQ(d.revision, w.revision);
  auto p = s().remove(k("nothing/"), true);
  EXPECT_EQ(p.deleted, 0);
  EXPECT_EQ(s().revision(), w.revision);
}

// ---- transactions ----------------------------------------------------------

StoreCompare cmp(std::string key, flotilla_compare_target t, flotilla_compare_op op, int64_t number,
                 std::string value = "") {
  return StoreCompare{std::move(key), t, op, number, std::move(value)};
}

TEST_P(StoreConformance, TxnComparesEveryTargetWithEveryOperator) {
  auto lease = s().grant(60);
  ASSERT_OK(lease.result);
  auto created = s().put(k("t"), "m");
  auto modified = s().put(k("t"), "m", lease.id);
  const std::string t = k("t"), none = k("none");
  struct Case {
    StoreCompare c;
    bool holds;
  } cases[] = {
      {cmp(t, FLOTILLA_CMP_VERSION, FLOTILLA_CMP_EQUAL, 2), true},
      {cmp(t, FLOTILLA_CMP_VERSION, FLOTILLA_CMP_NOT_EQUAL, 2), false},
      {cmp(t, FLOTILLA_CMP_VERSION, FLOTILLA_CMP_LESS, 3), true},
      {cmp(t, FLOTILLA_CMP_VERSION, FLOTILLA_CMP_GREATER, 2), false},
      {cmp(t, FLOTILLA_CMP_CREATE, FLOTILLA_CMP_EQUAL, created.revision), true},
      {cmp(t, FLOTILLA_CMP_CREATE, FLOTILLA_CMP_LESS, modified.revision), true},
      {cmp(t, FLOTILLA_CMP_MOD, FLOTILLA_CMP_EQUAL, modified.revision), true},
      {cmp(t, FLOTILLA_CMP_MOD, FLOTILLA_CMP_GREATER, created.revision), true},
      {cmp(t, FLOTILLA_CMP_MOD, FLOTILLA_CMP_NOT_EQUAL, modified.revision), false},
      {cmp(t, FLOTILLA_CMP_LEASE, FLOTILLA_CMP_EQUAL, lease.id), true},
      {cmp(t, FLOTILLA_CMP_LEASE, FLOTILLA_CMP_EQUAL, 0), false},
      {cmp(t, FLOTILLA_CMP_VALUE, FLOTILLA_CMP_EQUAL, 0, "m"), true},
      {cmp(t, FLOTILLA_CMP_VALUE, FLOTILLA_CMP_NOT_EQUAL, 0, "m"), false},
      {cmp(t, FLOTILLA_CMP_VALUE, FLOTILLA_CMP_LESS, 0, "n"), true},
      {cmp(t, FLOTILLA_CMP_VALUE, FLOTILLA_CMP_GREATER, 0, "l"), true},
      {cmp(t, FLOTILLA_CMP_VALUE, FLOTILLA_CMP_GREATER, 0, "m"), false},
      {StoreCompare::absent(none), true},
      {StoreCompare::absent(t), false},
      {cmp(none, FLOTILLA_CMP_CREATE, FLOTILLA_CMP_EQUAL, 0), true},
      {cmp(none, FLOTILLA_CMP_MOD, FLOTILLA_CMP_LESS, 1), true},
      {StoreCompare::mod_revision_is(t, modified.revision), true},
  };
  for (const auto &c : cases) {
    auto r = s().txn({c.c}, {}, {});
    ASSERT_OK(r.result);
    EXPECT_EQ(r.succeeded, c.holds) << "target " << c.c.target << " op " << c.c.op << " number "
                                    << c.c.number << " value '" << c.c.value << "' on " << c.c.key;
  }
}

TEST_P(StoreConformance, TxnAppliesAllOpsAtomicallyInOneRevision) {
  ASSERT_OK(s().put(k("x/1"), "old").result);
  ASSERT_OK(s().put(k("x/2"), "old").result);
  const int64_t before = s().revision();
  WatchLog log;
  auto w = watch_into(client(), k(""), true, 0, log);
  auto r = s().txn(
      {StoreCompare::absent(k("lock"))},
      {StoreOp::put(k("lock"), "me"), StoreOp::put(k("y"), "new"), StoreOp::remove(k("x/"), true)},
      {StoreOp::put(k("lost"), "1")});
  ASSERT_OK(r.result);
  EXPECT_TRUE(r.succeeded);
  EXPECT_EQ(r.revision, before + 1);
  auto lock = s().get(k("lock"));
  auto y = s().get(k("y"));
  ASSERT_TRUE(lock.kv && y.kv);
  EXPECT_EQ(lock.kv->mod_revision, r.revision);
  EXPECT_EQ(y.kv->mod_revision, r.revision);
  EXPECT_TRUE(s().list(k("x/")).kvs.empty());
  EXPECT_FALSE(s().get(k("lost")).kv);
  run_until([&] { return log.events() >= 4; }, "the txn's events");
  ASSERT_EQ(log.batches.size(), 1u) << "one revision, one batch";
  EXPECT_EQ(log.batches[0].revision, r.revision);
  ASSERT_EQ(log.batches[0].events.size(), 4u);
  EXPECT_EQ(log.batches[0].events[0].kv.key, k("lock"));
  EXPECT_EQ(log.batches[0].events[1].kv.key, k("y"));
  EXPECT_EQ(log.batches[0].events[2].type, StoreEvent::Type::remove);
}

TEST_P(StoreConformance, TxnRunsTheFailureBranchWhenACompareFails) {
  ASSERT_OK(s().put(k("lock"), "someone").result);
  auto r = s().txn({StoreCompare::absent(k("lock"))}, {StoreOp::put(k("won"), "1")},
                   {StoreOp::put(k("lost"), "1")});
  ASSERT_OK(r.result);
  EXPECT_FALSE(r.succeeded);
  EXPECT_FALSE(s().get(k("won")).kv);
  auto lost = s().get(k("lost"));
  ASSERT_TRUE(lost.kv);
  EXPECT_EQ(lost.kv->mod_revision, r.revision);
}

TEST_P(StoreConformance, TxnThatWritesNothingMakesNoRevision) {
  auto w = s().put(k("a"), "v");
  auto read_only = s().txn({StoreCompare::absent(k("a"))}, {}, {});
  ASSERT_OK(read_only.result);
  EXPECT_FALSE(read_only.succeeded);
  EXPECT_EQ(read_only.revision, w.revision);
  auto deletes_nothing = s().txn({}, {StoreOp::remove(k("nothing"))});
  ASSERT_OK(deletes_nothing.result);
  EXPECT_TRUE(deletes_nothing.succeeded);
  EXPECT_EQ(deletes_nothing.revision, w.revision);
  EXPECT_EQ(s().revision(), w.revision);
}

TEST_P(StoreConformance, TxnWithAnUnknownLeaseAppliesNothing) {
  auto w = s().put(k("a"), "v");
  auto r = s().txn({}, {StoreOp::put(k("b"), "1"), StoreOp::put(k("c"), "1", 987654321)});
  EXPECT_EQ(r.result.status, FLOTILLA_E_NOT_FOUND) << r.result.message;
  EXPECT_FALSE(s().get(k("b")).kv);
  EXPECT_EQ(s().revision(), w.revision);
}

TEST_P(StoreConformance, TxnRefusesTheSameKeyTwice) {
  auto r = s().txn({}, {StoreOp::put(k("a"), "1"), StoreOp::put(k("a"), "2")});
  EXPECT_EQ(r.result.status, FLOTILLA_E_INVALID);
  EXPECT_FALSE(s().get(k("a")).kv);
}

// ---- watches -------------------------------------------------------------

TEST_P(StoreConformance, WatchDeliversChangesInRevisionOrder) {
  WatchLog log;
  auto w = watch_into(client(), k("w/"), true, 0, log);
  auto a = s().put(k("w/a"), "1");
  auto b = s().put(k("w/b"), "2");
  auto d = s().remove(k("w/a"));
  auto t = s().txn({}, {StoreOp::put(k("w/c"), "3"), StoreOp::put(k("w/d"), "4")});
  run_until([&] { return log.events() >= 5; }, "five events");
  ASSERT_EQ(log.batches.size(), 4u);
  EXPECT_EQ(log.batches[0].revision, a.revision);
  EXPECT_EQ(log.batches[1].revision, b.revision);
  EXPECT_EQ(log.batches[2].revision, d.revision);
  EXPECT_EQ(log.batches[3].revision, t.revision);
  const auto &put_a = log.batches[0].events.at(0);
  EXPECT_EQ(put_a.type, StoreEvent::Type::put);
  EXPECT_EQ(put_a.kv.key, k("w/a"));
  EXPECT_EQ(put_a.kv.value, "1");
  EXPECT_EQ(put_a.kv.create_revision, a.revision);
  EXPECT_EQ(put_a.kv.version, 1);
  const auto &del_a = log.batches[2].events.at(0);
  EXPECT_EQ(del_a.type, StoreEvent::Type::remove);
  EXPECT_EQ(del_a.kv.mod_revision, d.revision);
  EXPECT_EQ(log.batches[3].events.size(), 2u);
  for (const auto &b2 : log.batches)
    for (const auto &e : b2.events) EXPECT_EQ(e.kv.mod_revision, b2.revision);
  EXPECT_FALSE(log.ended);
}

TEST_P(StoreConformance, WatchFromAnOldRevisionReplaysHistoryThenGoesLive) {
  std::vector<int64_t> revs;
  for (int i = 0; i < 5; ++i) revs.push_back(s().put(k("h"), std::to_string(i)).revision);
  WatchLog log;
  auto w = watch_into(client(), k("h"), false, revs[1], log);
  EXPECT_TRUE(log.batches.empty()) << "history is delivered later, never inside watch()";
  run_until([&] { return log.events() >= 4; }, "the replayed history");
  ASSERT_EQ(log.batches.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(log.batches[i].revision, revs[i + 1]);
    EXPECT_EQ(log.batches[i].events.at(0).kv.value, std::to_string(i + 1));
  }
  auto live = s().put(k("h"), "live");
  run_until([&] { return log.events() >= 5; }, "the live event");
  EXPECT_EQ(log.batches.back().revision, live.revision);
  EXPECT_EQ(log.batches.back().events.at(0).kv.value, "live");
}

TEST_P(StoreConformance, WatchFromZeroStartsAfterTheCurrentRevision) {
  ASSERT_OK(s().put(k("z"), "before").result);
  WatchLog log;
  auto w = watch_into(client(), k("z"), false, 0, log);
  auto after = s().put(k("z"), "after");
  run_until([&] { return log.events() >= 1; }, "the event after the watch");
  s().get(k("z"));  // one more round trip: nothing else may arrive
  ASSERT_EQ(log.batches.size(), 1u);
  EXPECT_EQ(log.batches[0].revision, after.revision);
}

TEST_P(StoreConformance, WatchSeesOnlyItsRange) {
  WatchLog exact, prefix;
  auto w1 = watch_into(client(), k("key"), false, 0, exact);
  auto w2 = watch_into(client(), k("dir/"), true, 0, prefix);
  for (const char *name : {"key", "keyx", "dir/1", "dir", "dir0", "dir/2/deep"})
    ASSERT_OK(s().put(k(name), "v").result);
  run_until([&] { return exact.events() >= 1 && prefix.events() >= 2; }, "the watched events");
  s().get(k("key"));
  ASSERT_EQ(exact.events(), 1u);
  EXPECT_EQ(exact.batches[0].events[0].kv.key, k("key"));
  ASSERT_EQ(prefix.events(), 2u);
  EXPECT_EQ(prefix.batches[0].events[0].kv.key, k("dir/1"));
  EXPECT_EQ(prefix.batches[1].events[0].kv.key, k("dir/2/deep"));
}

TEST_P(StoreConformance, NoCallbackAfterWatchCancel) {
  WatchLog log;
  auto w = watch_into(client(), k("c"), false, 0, log);
  ASSERT_OK(s().put(k("c"), "1").result);
  run_until([&] { return log.events() >= 1; }, "the first event");
  w->cancel();
  ASSERT_OK(s().put(k("c"), "2").result);
  ASSERT_OK(s().put(k("c"), "3").result);
  loop_.settle();
  s().get(k("c"));
  EXPECT_EQ(log.events(), 1u);
  EXPECT_FALSE(log.ended) << "cancel ends a watch without a final status";
}

TEST_P(StoreConformance, WatchMayBeCancelledFromItsOwnCallback) {
  std::unique_ptr<StoreClient::Watch> w;
  int calls = 0;
  w = client().watch(k("self"), false, 0,
                     [&](StoreResult, const std::vector<StoreEvent> &, int64_t) {
                       ++calls;
                       w->cancel();
                     });
  ASSERT_TRUE(w);
  // Both writes are acknowledged before the loop runs the watch callbacks.
  std::optional<StoreResult> first, second;
  client().put(k("self"), "1", [&](StoreResult r, int64_t) { first = r; });
  client().put(k("self"), "2", [&](StoreResult r, int64_t) { second = r; });
  run_until([&] { return first && second; }, "both writes");
  loop_.settle();
  s().get(k("self"));
  EXPECT_EQ(calls, 1);
}

TEST_P(StoreConformance, WatchCallbackMayWriteToTheStore) {
  std::optional<StoreResult> echoed;
  auto w = client().watch(
      k("ping"), false, 0, [&](StoreResult r, const std::vector<StoreEvent> &ev, int64_t) {
        if (!r.ok() || ev.empty()) return;
        client().put(k("pong"), ev[0].kv.value, [&](StoreResult pr, int64_t) { echoed = pr; });
      });
  ASSERT_OK(s().put(k("ping"), "hello").result);
  run_until([&] { return echoed.has_value(); }, "the echo");
  EXPECT_OK(*echoed);
  auto g = s().get(k("pong"));
  ASSERT_TRUE(g.kv);
  EXPECT_EQ(g.kv->value, "hello");
}

// ---- compaction ------------------------------------------------------------

TEST_P(StoreConformance, CompactedRevisionsAreRefusedForReadsAndWatches) {
  std::vector<int64_t> revs;
  for (int i = 0; i < 4; ++i) revs.push_back(s().put(k("c"), std::to_string(i)).revision);
  ASSERT_OK(s().compact(revs[2]));
  auto old_read = s().list(k("c"), revs[1]);
  EXPECT_EQ(old_read.result.status, FLOTILLA_E_COMPACTED) << old_read.result.message;
  EXPECT_FALSE(old_read.result.message.empty());
  auto at_point = s().list(k("c"), revs[2]);
  ASSERT_OK(at_point.result);
  ASSERT_EQ(at_point.kvs.size(), 1u);
  EXPECT_EQ(at_point.kvs[0].value, "2");

  WatchLog old_watch;
  auto w1 = watch_into(client(), k("c"), false, revs[1], old_watch);
  run_until([&] { return old_watch.ended.has_value(); }, "the compacted watch to end");
  EXPECT_EQ(old_watch.ended->status, FLOTILLA_E_COMPACTED);
  EXPECT_TRUE(old_watch.batches.empty());

  WatchLog ok_watch;
  auto w2 = watch_into(client(), k("c"), false, revs[2], ok_watch);
  run_until([&] { return ok_watch.events() >= 2; }, "the history after the compaction point");
  EXPECT_EQ(ok_watch.batches[0].revision, revs[2]);
  EXPECT_FALSE(ok_watch.ended);

  EXPECT_EQ(s().compact(revs[1]).status, FLOTILLA_E_COMPACTED);
  EXPECT_FALSE(s().compact(revs[3] + 1000).ok()) << "compacting the future";
}

// ---- leases ----------------------------------------------------------------

TEST_P(StoreConformance, LeaseGrantKeepaliveAndRevoke) {
  auto l = s().grant(30);
  ASSERT_OK(l.result);
  EXPECT_GT(l.id, 0);
  EXPECT_EQ(l.ttl, 30);
  auto ka = s().keepalive(l.id);
  ASSERT_OK(ka.result);
  EXPECT_EQ(ka.id, l.id);
  EXPECT_EQ(ka.ttl, 30);
  ASSERT_OK(s().put(k("n/1"), "a", l.id).result);
  ASSERT_OK(s().put(k("n/2"), "b", l.id).result);
  auto g = s().get(k("n/1"));
  ASSERT_TRUE(g.kv);
  EXPECT_EQ(g.kv->lease, l.id);

  WatchLog log;
  auto w = watch_into(client(), k("n/"), true, 0, log);
  const int64_t before = s().revision();
  ASSERT_OK(s().revoke(l.id));
  EXPECT_TRUE(s().list(k("n/")).kvs.empty());
  run_until([&] { return log.events() >= 2; }, "the revoke's deletions");
  ASSERT_EQ(log.batches.size(), 1u) << "revoking deletes the keys in one revision";
  EXPECT_EQ(log.batches[0].revision, before + 1);
  EXPECT_EQ(s().keepalive(l.id).result.status, FLOTILLA_E_NOT_FOUND);
  EXPECT_EQ(s().revoke(l.id).status, FLOTILLA_E_NOT_FOUND);
}

TEST_P(StoreConformance, LeaseExpiryDeletesItsKeysAndTellsWatchers) {
  auto l = s().grant(1);
  ASSERT_OK(l.result);
  ASSERT_OK(s().put(k("e/1"), "a", l.id).result);
  ASSERT_OK(s().put(k("e/2"), "b", l.id).result);
  ASSERT_OK(s().put(k("e/3"), "stays").result);
  WatchLog log;
  auto w = watch_into(client(), k("e/"), true, 0, log);
  run_until([&] { return log.events() >= 2; }, "the lease to expire");
  ASSERT_EQ(log.batches.size(), 1u);
  for (const auto &e : log.batches[0].events) EXPECT_EQ(e.type, StoreEvent::Type::remove);
  EXPECT_EQ(s().list(k("e/")).keys(), std::vector<std::string>{k("e/3")});
  EXPECT_EQ(s().keepalive(l.id).result.status, FLOTILLA_E_NOT_FOUND);
  EXPECT_EQ(s().put(k("e/4"), "x", l.id).result.status, FLOTILLA_E_NOT_FOUND);
}

TEST_P(StoreConformance, PutUnderAnUnknownLeaseIsNotFound) {
  auto w = s().put(k("a"), "v", 424242424242);
  EXPECT_EQ(w.result.status, FLOTILLA_E_NOT_FOUND);
  EXPECT_FALSE(w.result.message.empty());
  EXPECT_FALSE(s().get(k("a")).kv);
  EXPECT_EQ(s().keepalive(424242424242).result.status, FLOTILLA_E_NOT_FOUND);
  EXPECT_EQ(s().revoke(424242424242).status, FLOTILLA_E_NOT_FOUND);
}

TEST_P(StoreConformance, PutWithoutTheLeaseDetachesTheKey) {
  auto l = s().grant(1);
  ASSERT_OK(s().put(k("k"), "leased", l.id).result);
  ASSERT_OK(s().put(k("k"), "free").result);
  ASSERT_OK(s().put(k("marker"), "m", l.id).result);
  WatchLog log;
  auto w = watch_into(client(), k("marker"), false, 0, log);
  run_until([&] { return log.events() >= 1; }, "the lease to expire");
  auto g = s().get(k("k"));
  ASSERT_TRUE(g.kv) << "the key left the lease when it was put without it";
  EXPECT_EQ(g.kv->value, "free");
  EXPECT_EQ(g.kv->lease, 0);
}

TEST_P(StoreConformance, ZeroOrNegativeTtlIsRefused) {
  EXPECT_EQ(s().grant(0).result.status, FLOTILLA_E_INVALID);
  EXPECT_EQ(s().grant(-5).result.status, FLOTILLA_E_INVALID);
}

// ---- ordering, concurrency, persistence -------------------------------------

TEST_P(StoreConformance, ManyWritesInFlightAreAcknowledgedInOrder) {
  constexpr int kWrites = 500;
  WatchLog log;
  auto w = watch_into(client(), k("m/"), true, 0, log);
  std::vector<int64_t> revs(kWrites, 0);
  std::vector<int> ack_order;
  int acked = 0;
  bool in_call = true;
  for (int i = 0; i < kWrites; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "m/%04d", i);
    client().put(k(name), std::to_string(i), [&, i](StoreResult r, int64_t rev) {
      EXPECT_FALSE(in_call) << "callback inside the call";
      EXPECT_OK(r);
      revs[i] = rev;
      ack_order.push_back(i);
      ++acked;
    });
  }
  in_call = false;
  run_until([&] { return acked == kWrites; }, "every write");
  for (int i = 1; i < kWrites; ++i) EXPECT_EQ(revs[i], revs[i - 1] + 1) << "write " << i;
  EXPECT_TRUE(std::is_sorted(ack_order.begin(), ack_order.end()));
  run_until([&] { return log.events() >= kWrites; }, "every watch event");
  ASSERT_EQ(log.batches.size(), static_cast<size_t>(kWrites));
  for (int i = 0; i < kWrites; ++i) EXPECT_EQ(log.batches[i].revision, revs[i]);
  EXPECT_EQ(s().list(k("m/")).kvs.size(), static_cast<size_t>(kWrites));
}

TEST_P(StoreConformance, ReadAfterAcknowledgedWriteSeesIt) {
  for (int i = 0; i < 20; ++i) {
    auto w = s().put(k("rw"), std::to_string(i));
    auto g = s().get(k("rw"));
    ASSERT_TRUE(g.kv);
    EXPECT_EQ(g.kv->value, std::to_string(i));
    EXPECT_GE(g.revision, w.revision);
  }
}

TEST_P(StoreConformance, DataAndLeasesSurviveAPluginRestart) {
  auto l = s().grant(600);
  auto a = s().put(k("p/a"), "1");
  auto b = s().put(k("p/b"), "2", l.id);
  ASSERT_OK(s().remove(k("p/a")).result);
  auto c = s().put(k("p/c"), "3");
  const int64_t rev = s().revision();
  restart();
  EXPECT_EQ(s().revision(), rev);
  auto list = s().list(k("p/"));
  EXPECT_EQ(list.keys(), (std::vector<std::string>{k("p/b"), k("p/c")}));
  ASSERT_EQ(list.kvs.size(), 2u);
  EXPECT_EQ(list.kvs[0].lease, l.id);
  EXPECT_EQ(list.kvs[0].mod_revision, b.revision);
  EXPECT_EQ(list.kvs[1].create_revision, c.revision);
  auto ka = s().keepalive(l.id);
  EXPECT_OK(ka.result);
  auto old = s().list(k("p/"), a.revision);
  ASSERT_OK(old.result);
  EXPECT_EQ(old.keys(), std::vector<std::string>{k("p/a")});
  auto next = s().put(k("p/d"), "4");
  EXPECT_EQ(next.revision, rev + 1);
}

// ---- the raw vtable ------------------------------------------------------------

TEST_P(StoreConformance, MalformedArgumentsAreRefusedAtOnce) {
  const flotilla_store_v1 *vt = store_->vt();
  void *self = store_->self();
  int calls = 0;
  auto range_cb = [](void *user, flotilla_status, const flotilla_kv *, size_t, int64_t, int) {
    ++*static_cast<int *>(user);
  };
  EXPECT_EQ(vt->range(self, nullptr, 0, 0, range_cb, &calls), FLOTILLA_E_INVALID);
  flotilla_key_range tiny{};
  tiny.struct_size = 4;  // older than any ABI
  tiny.key = "x";
  tiny.key_len = 1;
  EXPECT_EQ(vt->range(self, &tiny, 0, 0, range_cb, &calls), FLOTILLA_E_INVALID);
  flotilla_key_range ok{};
  ok.struct_size = sizeof ok;
  ok.key = "x";
  ok.key_len = 1;
  EXPECT_EQ(vt->range(self, &ok, -1, 0, range_cb, &calls), FLOTILLA_E_INVALID);
  EXPECT_EQ(vt->put(self, nullptr, 3, "v", 1, 0, nullptr, nullptr), FLOTILLA_E_INVALID);
  flotilla_store_watch_id id = 0;
  EXPECT_EQ(vt->watch(self, &ok, 0, nullptr, nullptr, &id), FLOTILLA_E_INVALID);
  EXPECT_FALSE(PluginHost::last_error().empty());
  // Enumerations from C may hold any value; the store must refuse them.
  flotilla_compare c{};
  c.struct_size = sizeof c;
  c.key = "x";
  c.key_len = 1;
  const int bogus = 99;
  std::memcpy(&c.target, &bogus, sizeof bogus);
  int txn_calls = 0;
  auto txn_cb = [](void *user, flotilla_status, int, int64_t) { ++*static_cast<int *>(user); };
  EXPECT_EQ(vt->txn(self, &c, 1, nullptr, 0, nullptr, 0, txn_cb, &txn_calls), FLOTILLA_E_INVALID);
  flotilla_op op{};
  op.struct_size = sizeof op;
  op.key = "x";
  op.key_len = 1;
  std::memcpy(&op.type, &bogus, sizeof bogus);
  EXPECT_EQ(vt->txn(self, nullptr, 0, &op, 1, nullptr, 0, txn_cb, &txn_calls), FLOTILLA_E_INVALID);
  loop_.settle();
  EXPECT_EQ(txn_calls, 0);
  EXPECT_EQ(calls, 0) << "a refused request never calls back";
}

// ---- backends ----------------------------------------------------------------

BackendInstance start_store_local(const std::string &) {
  BackendInstance b;
  b.settings = store_local_settings();
  return b;
}

// A real etcd per test (tests/etcd/etcd_fixture.h): no lease, compaction
// or revision of one test can leak into the next.
BackendInstance start_store_etcd(const std::string &) {
  auto etcd = std::make_shared<test::EtcdCluster>();
  BackendInstance b;
  b.settings = store_etcd_settings(etcd->plugin_config());
  b.server = etcd;
  return b;
}

std::string etcd_skip_reason() {
#ifndef STORE_ETCD_PLUGIN_PATH
  return "this build has no store-etcd (-Dplugin-store-etcd=disabled)";
#else
  return test::EtcdCluster::skip_reason();
#endif
}

INSTANTIATE_TEST_SUITE_P(
    Backends, StoreConformance,
    ::testing::Values(StoreBackend{"local", start_store_local, ""},
                      StoreBackend{"etcd", start_store_etcd, etcd_skip_reason()}),
    [](const ::testing::TestParamInfo<StoreBackend> &info) { return info.param.name; });

}  // namespace
}  // namespace flotilla::store_test
