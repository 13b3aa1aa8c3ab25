// store-local's own behaviour beyond the conformance suite, through the real
// PluginHost: config errors, the data-directory lock, automatic compaction,
// snapshots, read visibility, shutdown and metrics.
#include <gtest/gtest.h>

#include <filesystem>

#include "store_harness.h"

namespace flotilla::store_test {
namespace {

namespace fs = std::filesystem;

#define ASSERT_OK(r) ASSERT_TRUE((r).ok()) << (r).message
#define EXPECT_OK(r) EXPECT_TRUE((r).ok()) << (r).message

class StoreLocal : public ::testing::Test {
 protected:
  std::string data_dir() const { return dir_.path() + "/data"; }
  std::string store_dir() const { return data_dir() + "/plugins/store-local"; }
  std::unique_ptr<LoadedStore> open(nlohmann::json config = nlohmann::json::object()) {
    return std::make_unique<LoadedStore>(loop_, store_local_settings(std::move(config)),
                                         data_dir());
  }
  std::string start_error(nlohmann::json config) {
    try {
      open(std::move(config));
    } catch (const std::exception &e) {
      return e.what();
    }
    return "(started)";
  }
  size_t count_files(const std::string &ext) const {
    size_t n = 0;
    for (const auto &e : fs::directory_iterator(store_dir()))
      if (e.path().extension() == ext) ++n;
    return n;
  }

  TempDir dir_{"store-local"};
  TestLoop loop_;
};

TEST_F(StoreLocal, UnknownConfigKeyStopsStartAndNamesTheKey) {
  std::string e = start_error({{"fsnyc", true}});
  EXPECT_NE(e.find("plugin.store-local.fsnyc"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key"), std::string::npos) << e;
  EXPECT_NE(e.find("snapshot_every"), std::string::npos) << "lists the accepted keys: " << e;
}

TEST_F(StoreLocal, BadConfigValuesSayWhatIsAccepted) {
  std::string e = start_error({{"history", "lots"}});
  EXPECT_NE(e.find("plugin.store-local.history"), std::string::npos) << e;
  EXPECT_NE(e.find("integer"), std::string::npos) << e;
  e = start_error({{"fsync", 1}});
  EXPECT_NE(e.find("true or false"), std::string::npos) << e;
  e = start_error({{"snapshot_every", 0}});
  EXPECT_NE(e.find("from 1"), std::string::npos) << e;
}

TEST_F(StoreLocal, SecondStoreOnTheSameDirectoryIsRefused) {
  auto first = open();
  std::string e = start_error(nlohmann::json::object());
  EXPECT_NE(e.find("in use"), std::string::npos) << e;
}

TEST_F(StoreLocal, AutomaticCompactionKeepsTheConfiguredHistory) {
  auto store = open({{"history", 5}});
  SyncStore s(loop_, *store);
  std::vector<int64_t> revs;
  for (int i = 0; i < 20; ++i) revs.push_back(s.put("/h", std::to_string(i)).revision);
  auto recent = s.list("/h", revs[19] - 4);
  ASSERT_OK(recent.result);
  EXPECT_EQ(recent.kvs.at(0).value, "15");
  auto old = s.list("/h", revs[10]);
  EXPECT_EQ(old.result.status, FLOTILLA_E_COMPACTED);
  WatchLog log;
  auto w = watch_into(store->client(), "/h", false, revs[2], log);
  loop_.run_until([&] { return log.ended.has_value(); }, "the watch to end");
  EXPECT_EQ(log.ended->status, FLOTILLA_E_COMPACTED);
}

TEST_F(StoreLocal, SnapshotsBoundTheLogAndRestartRestoresEverything) {
  nlohmann::json config = {{"snapshot_every", 10}, {"history", 1000}};
  std::vector<int64_t> revs;
  int64_t lease = 0;
  {
    auto store = open(config);
    SyncStore s(loop_, *store);
    lease = s.grant(600).id;
    for (int i = 0; i < 105; ++i)
      revs.push_back(
          s.put("/s/" + std::to_string(i % 7), std::to_string(i), i % 2 ? lease : 0).revision);
    ASSERT_OK(s.remove("/s/3").result);
    // Snapshots are written on the thread pool; wait for the log to shrink.
    loop_.run_until([&] { return count_files(".snap") == 1 && count_files(".log") <= 2; },
                    "a snapshot to replace the old log segments");
  }
  EXPECT_EQ(count_files(".snap"), 1u);
  auto store = open(config);
  SyncStore s(loop_, *store);
  auto now = s.list("/s/");
  ASSERT_OK(now.result);
  EXPECT_EQ(now.kvs.size(), 6u);
  auto then = s.range_exact("/s/0", revs[0]);
  ASSERT_OK(then.result);
  ASSERT_EQ(then.kvs.size(), 1u) << "history survives the snapshot";
  EXPECT_EQ(then.kvs[0].value, "0");
  EXPECT_OK(s.keepalive(lease).result);
  WatchLog log;
  auto w = watch_into(store->client(), "/s/", true, revs[50], log);
  loop_.run_until([&] { return log.events() >= 56; }, "the replay from the snapshot's history");
  EXPECT_EQ(log.batches.front().revision, revs[50]);
}

TEST_F(StoreLocal, ReadsNeverSeeWritesThatAreNotYetDurable) {
  auto store = open();
  SyncStore s(loop_, *store);
  const int64_t before = s.put("/v", "old").revision;
  std::optional<int64_t> acked;
  store->client().put("/v", "new", [&](StoreResult r, int64_t rev) {
    EXPECT_OK(r);
    acked = rev;
  });
  // Issued in the same loop turn as the put: the put is not durable yet, so
  // the read answers from the last durable revision.
  std::optional<std::pair<std::string, int64_t>> read;
  store->client().get("/v", [&](StoreResult r, std::optional<KeyValue> kv, int64_t rev) {
    EXPECT_OK(r);
    read = {kv ? kv->value : "", rev};
  });
  loop_.run_until([&] { return acked && read; }, "the put and the read");
  EXPECT_EQ(read->first, "old");
  EXPECT_EQ(read->second, before);
  EXPECT_EQ(*acked, before + 1);
  EXPECT_EQ(s.get("/v").kv->value, "new");
}

TEST_F(StoreLocal, ShutdownAcknowledgesPendingWritesAndEndsWatches) {
  auto store = open();
  WatchLog log;
  auto w = watch_into(store->client(), "/q/", true, 0, log);
  int acked = 0;
  for (int i = 0; i < 50; ++i)
    store->client().put("/q/" + std::to_string(i), "v", [&](StoreResult r, int64_t) {
      EXPECT_OK(r);
      ++acked;
    });
  store.reset();  // deinit with everything still pending
  EXPECT_EQ(acked, 50) << "a clean stop makes pending writes durable and acknowledges them";
  ASSERT_TRUE(log.ended);
  EXPECT_EQ(log.ended->status, FLOTILLA_E_CANCELLED);
  w.reset();
  store = open();
  SyncStore s(loop_, *store);
  EXPECT_EQ(s.list("/q/").kvs.size(), 50u);
}

TEST_F(StoreLocal, OversizedRequestIsRefusedWithTheConfigKey) {
  auto store = open({{"max_request_bytes", 1024}});
  SyncStore s(loop_, *store);
  auto w = s.put("/big", std::string(2000, 'x'));
  EXPECT_EQ(w.result.status, FLOTILLA_E_INVALID);
  EXPECT_NE(w.result.message.find("max_request_bytes"), std::string::npos) << w.result.message;
  EXPECT_OK(s.put("/small", std::string(500, 'x')).result);
}

TEST_F(StoreLocal, WithoutFsyncWritesStillSurviveARestart) {
  {
    auto store = open({{"fsync", false}});
    SyncStore s(loop_, *store);
    for (int i = 0; i < 10; ++i) ASSERT_OK(s.put("/nf/" + std::to_string(i), "v").result);
  }
  auto store = open({{"fsync", false}});
  SyncStore s(loop_, *store);
  EXPECT_EQ(s.list("/nf/").kvs.size(), 10u);
}

TEST_F(StoreLocal, LeasesComeBackWithAFreshTtlAfterRestart) {
  int64_t lease = 0;
  {
    auto store = open();
    SyncStore s(loop_, *store);
    lease = s.grant(2).id;
    ASSERT_OK(s.put("/l", "v", lease).result);
  }
  auto store = open();
  SyncStore s(loop_, *store);
  auto ka = s.keepalive(lease);
  ASSERT_OK(ka.result);
  EXPECT_EQ(ka.ttl, 2);
  WatchLog log;
  auto w = watch_into(store->client(), "/l", false, 0, log);
  loop_.run_until([&] { return log.events() >= 1; }, "the restored lease to expire");
  EXPECT_EQ(log.batches[0].events[0].type, StoreEvent::Type::remove);
  auto l2 = s.grant(5);
  EXPECT_NE(l2.id, lease) << "lease ids are not reused after a restart";
}

TEST_F(StoreLocal, PublishesMetrics) {
  auto store = open();
  SyncStore s(loop_, *store);
  for (int i = 0; i < 3; ++i) ASSERT_OK(s.put("/m", "v").result);
  std::string text = store->host().metrics().render_prometheus();
  EXPECT_NE(text.find("flotilla_store_local_revision"), std::string::npos) << text;
  EXPECT_NE(text.find("flotilla_store_local_wal_writes_total"), std::string::npos) << text;
}

TEST_F(StoreLocal, ExportsOnlyItsEntry) {
  auto store = open();
  auto plugins = store->host().list();
  ASSERT_EQ(plugins.size(), 1u);
  EXPECT_EQ(plugins[0].id, "org.flotilla.store-local");
  EXPECT_EQ(plugins[0].provides, std::vector<std::string>{"flotilla.store/1"});
  EXPECT_TRUE(plugins[0].depends_on.empty());
}

}  // namespace
}  // namespace flotilla::store_test
