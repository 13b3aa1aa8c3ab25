// Test harness for store plugins: a libuv loop the tests drive, a store
// plugin loaded through the real flotilla::PluginHost, and blocking helpers
// over flotilla::StoreClient (and the raw vtable where StoreClient has no
// call). Used by the conformance suite, the store-local tests and the
// durability test.
#pragma once

#include <flotilla/store.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "plugin_host.h"
#include "store_client.h"

namespace flotilla::store_test {

// A private directory, removed with everything in it when destroyed.
class TempDir {
 public:
  explicit TempDir(const std::string &tag);
  ~TempDir();
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  const std::string &path() const { return path_; }

 private:
  std::string path_;
};

// A libuv loop that tests run until a condition holds.
class TestLoop {
 public:
  TestLoop();
  ~TestLoop();
  TestLoop(const TestLoop &) = delete;
  TestLoop &operator=(const TestLoop &) = delete;
  uv_loop_t *get() { return &loop_; }

  // Run the loop until done() holds. A guard of several minutes stops a
  // broken backend from hanging the suite: it fails the test with `what`.
  // It is a hang guard, not a timing assertion.
  bool run_until(const std::function<bool()> &done, const std::string &what);
  // Let every callback that is already due run (a few loop turns).
  void settle();

 private:
  uv_loop_t loop_{};
};

// The settings that load store-local from the build tree.
PluginSettings store_local_settings(nlohmann::json config = nlohmann::json::object());
// The settings that load store-etcd from the build tree (empty path when
// the build has no store-etcd).
PluginSettings store_etcd_settings(nlohmann::json config);

// One store plugin started by a real PluginHost; stopped on destruction.
class LoadedStore {
 public:
  // data_dir: the daemon's data directory (the plugin gets
  // <data_dir>/plugins/<name>). Throws flotilla::Error when start fails.
  LoadedStore(TestLoop &loop, const PluginSettings &settings, const std::string &data_dir);
  ~LoadedStore();
  LoadedStore(const LoadedStore &) = delete;
  LoadedStore &operator=(const LoadedStore &) = delete;

  StoreClient &client() { return *client_; }
  const flotilla_store_v1 *vt() const { return vt_; }
  void *self() const { return self_; }
  PluginHost &host() { return *host_; }

 private:
  TestLoop &loop_;
  std::unique_ptr<PluginHost> host_;
  const flotilla_store_v1 *vt_ = nullptr;
  void *self_ = nullptr;
  std::unique_ptr<StoreClient> client_;
};

// Blocking calls: each starts a request, runs the loop until its callback
// came, and fails the test if a successful callback ran inside the call.
class SyncStore {
 public:
  SyncStore(TestLoop &loop, LoadedStore &store) : loop_(loop), store_(store) {}

  struct Write {
    StoreResult result;
    int64_t revision = 0;
  };
  struct Get {
    StoreResult result;
    std::optional<KeyValue> kv;
    int64_t revision = 0;
  };
  struct List {
    StoreResult result;
    std::vector<KeyValue> kvs;
    int64_t revision = 0;
    bool more = false;
    std::vector<std::string> keys() const;
  };
  struct Delete {
    StoreResult result;
    int64_t revision = 0;
    int64_t deleted = 0;
  };
  struct Txn {
    StoreResult result;
    bool succeeded = false;
    int64_t revision = 0;
  };
  struct Lease {
    StoreResult result;
    int64_t id = 0;
    int64_t ttl = 0;
  };

  Write put(std::string_view key, std::string_view value, int64_t lease = 0);
  Get get(std::string_view key);
  // Raw vtable range: prefix read, or [key, range_end) when range_end is set.
  List list(std::string_view prefix, int64_t revision = 0, int64_t limit = 0);
  List range(std::string_view key, std::string_view range_end, int64_t revision = 0,
             int64_t limit = 0);
  List range_exact(std::string_view key, int64_t revision = 0);
  Delete remove(std::string_view key, bool prefix = false);
  Txn txn(const std::vector<StoreCompare> &compares, const std::vector<StoreOp> &success,
          const std::vector<StoreOp> &failure = {});
  Lease grant(int64_t ttl_seconds);
  Lease keepalive(int64_t lease);
  StoreResult revoke(int64_t lease);
  StoreResult compact(int64_t revision);
  // The store's current revision, from a read.
  int64_t revision();

 private:
  List raw_range(const flotilla_key_range &r, int64_t revision, int64_t limit);
  template <class T>
  T wait(std::optional<T> &slot, const char *what);
  TestLoop &loop_;
  LoadedStore &store_;
};

// Records what a watch delivers.
struct WatchLog {
  struct Batch {
    int64_t revision = 0;
    std::vector<StoreEvent> events;
  };
  std::vector<Batch> batches;
  std::optional<StoreResult> ended;  // the one non-OK status, if any
  size_t events() const;
};

std::unique_ptr<StoreClient::Watch> watch_into(StoreClient &client, std::string_view key,
                                               bool prefix, int64_t start_revision, WatchLog &log);

}  // namespace flotilla::store_test
