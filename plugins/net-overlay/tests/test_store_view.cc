// StoreView against a fake flotilla.store/1 table: a watch's callback is
// freed when the watch is cancelled (also from inside its own callback),
// when it ends, and with the view; every request's callback runs once and
// the view tells its owner when none is left. Run under ASan+UBSan in CI.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <vector>

#include "store_view.h"

namespace ov = flotilla::overlay;

namespace {

// Keeps what the view hands it; the test delivers callbacks by hand.
struct FakeStore {
  struct W {
    flotilla_store_watch_cb cb;
    void *user;
  };
  std::map<flotilla_store_watch_id, W> watches;
  std::vector<flotilla_store_watch_id> cancelled;
  std::vector<std::pair<flotilla_store_range_cb, void *>> ranges;
  std::vector<std::pair<flotilla_store_txn_cb, void *>> txns;
  flotilla_store_watch_id next = 1;
  flotilla_store_v1 vt{};

  FakeStore() {
    vt.struct_size = sizeof vt;
    vt.range = [](void *self, const flotilla_key_range *, int64_t, int64_t,
                  flotilla_store_range_cb cb, void *user) {
      static_cast<FakeStore *>(self)->ranges.push_back({cb, user});
      return FLOTILLA_OK;
    };
    vt.txn = [](void *self, const flotilla_compare *, size_t, const flotilla_op *, size_t,
                const flotilla_op *, size_t, flotilla_store_txn_cb cb, void *user) {
      static_cast<FakeStore *>(self)->txns.push_back({cb, user});
      return FLOTILLA_OK;
    };
    vt.watch = [](void *self, const flotilla_key_range *, int64_t, flotilla_store_watch_cb cb,
                  void *user, flotilla_store_watch_id *id) {
      auto *s = static_cast<FakeStore *>(self);
      *id = s->next++;
      s->watches[*id] = {cb, user};
      return FLOTILLA_OK;
    };
    vt.watch_cancel = [](void *self, flotilla_store_watch_id id) {
      auto *s = static_cast<FakeStore *>(self);
      s->watches.erase(id);
      s->cancelled.push_back(id);
    };
  }
  // One event batch (or the end, with a non-OK status) to watch id.
  void deliver(flotilla_store_watch_id id, flotilla_status st = FLOTILLA_OK) {
    W w = watches.at(id);
    if (st != FLOTILLA_OK) watches.erase(id);
    w.cb(w.user, st, nullptr, 0, 7);
  }
};

TEST(StoreView, ACancelledWatchFreesItsCallbackEveryReList) {
  FakeStore fake;
  ov::StoreView view(&fake.vt, &fake);
  auto token = std::make_shared<int>(0);
  // What the mesh does at every re-list: cancel the old watch, open a new one.
  flotilla_store_watch_id id = 0;
  for (int i = 0; i < 100; ++i) {
    if (id) view.cancel(id);
    ASSERT_EQ(
        view.watch(
            "/p/", 0, [token](flotilla_status, const flotilla_watch_event *, size_t) { ++*token; },
            &id),
        FLOTILLA_OK);
  }
  fake.deliver(id);
  EXPECT_EQ(*token, 1);
  EXPECT_EQ(view.watches(), 1u);
  EXPECT_EQ(token.use_count(), 2);  // the open watch's callback holds it
  view.cancel(id);
  EXPECT_EQ(view.watches(), 0u);
  EXPECT_EQ(token.use_count(), 1);  // every callback freed
  EXPECT_TRUE(fake.watches.empty());
}

TEST(StoreView, AWatchThatEndsIsFreedAfterItsLastCall) {
  FakeStore fake;
  ov::StoreView view(&fake.vt, &fake);
  auto token = std::make_shared<int>(0);
  flotilla_status last = FLOTILLA_OK;
  flotilla_store_watch_id id = 0;
  ASSERT_EQ(view.watch(
                "/p/", 0,
                [token, &last](flotilla_status s, const flotilla_watch_event *, size_t) {
                  last = s;
                  ++*token;
                },
                &id),
            FLOTILLA_OK);
  fake.deliver(id, FLOTILLA_E_COMPACTED);
  EXPECT_EQ(last, FLOTILLA_E_COMPACTED);
  EXPECT_EQ(*token, 1);
  EXPECT_EQ(view.watches(), 0u);
  EXPECT_EQ(token.use_count(), 1);
}

TEST(StoreView, CancelledFromInsideItsOwnCallbackAndANewOneOpened) {
  FakeStore fake;
  ov::StoreView view(&fake.vt, &fake);
  auto token = std::make_shared<int>(0);
  flotilla_store_watch_id id = 0, next = 0;
  ASSERT_EQ(view.watch(
                "/p/", 0,
                [&, token](flotilla_status, const flotilla_watch_event *, size_t) {
                  ++*token;
                  view.cancel(id);  // the callback being run: freed on return
                  view.watch(
                      "/p/", 8, [](flotilla_status, const flotilla_watch_event *, size_t) {},
                      &next);
                },
                &id),
            FLOTILLA_OK);
  fake.deliver(id);
  EXPECT_EQ(*token, 1);
  EXPECT_EQ(view.watches(), 1u);
  EXPECT_EQ(token.use_count(), 1);
  EXPECT_NE(next, id);
}

TEST(StoreView, TheViewCancelsWhatIsStillOpen) {
  FakeStore fake;
  auto token = std::make_shared<int>(0);
  flotilla_store_watch_id id = 0;
  {
    ov::StoreView view(&fake.vt, &fake);
    view.watch(
        "/p/", 0, [token](flotilla_status, const flotilla_watch_event *, size_t) {}, &id);
  }
  EXPECT_EQ(fake.cancelled, std::vector<flotilla_store_watch_id>{id});
  EXPECT_EQ(token.use_count(), 1);
}

TEST(StoreView, RequestsRunOnceAndTheLastTellsTheOwner) {
  FakeStore fake;
  ov::StoreView view(&fake.vt, &fake);
  int lists = 0, txns = 0, idle = 0;
  view.list("/p/", [&](flotilla_status s, std::vector<ov::Kv> kvs, int64_t rev) {
    EXPECT_EQ(s, FLOTILLA_OK);
    ASSERT_EQ(kvs.size(), 1u);
    EXPECT_EQ(kvs[0].key, "/p/a");
    EXPECT_EQ(kvs[0].value, "1");
    EXPECT_EQ(rev, 9);
    ++lists;
  });
  view.txn({{"/p/a", "2", 1, 0}}, [&](flotilla_status, bool ok) {
    EXPECT_TRUE(ok);
    ++txns;
  });
  EXPECT_EQ(view.pending(), 2);
  view.on_idle = [&] { ++idle; };
  flotilla_kv kv{};
  kv.struct_size = sizeof kv;
  kv.key = "/p/a";
  kv.key_len = 4;
  kv.value = "1";
  kv.value_len = 1;
  fake.ranges[0].first(fake.ranges[0].second, FLOTILLA_OK, &kv, 1, 9, 0);
  EXPECT_EQ(idle, 0);
  fake.txns[0].first(fake.txns[0].second, FLOTILLA_OK, 1, 10);
  EXPECT_EQ(lists, 1);
  EXPECT_EQ(txns, 1);
  EXPECT_EQ(view.pending(), 0);
  EXPECT_EQ(idle, 1);
}

}  // namespace
