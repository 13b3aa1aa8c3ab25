// C++ face of a flotilla.store/1 vtable for the core: owned strings in,
// std::function callbacks out. [loop-thread] throughout; every callback
// runs on the loop thread. If the plugin refuses a request synchronously,
// the callback runs before the method returns.
#pragma once

#include <flotilla/store.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla {

struct StoreResult {
  flotilla_status status = FLOTILLA_OK;
  std::string message;  // from the plugin's set_error when status != OK
  bool ok() const { return status == FLOTILLA_OK; }
};

struct KeyValue {
  std::string key, value;
  int64_t create_revision = 0, mod_revision = 0, version = 0, lease = 0;
};

struct StoreEvent {
  enum class Type { put, remove } type = Type::put;
  KeyValue kv;
};

struct StoreCompare {
  std::string key;
  flotilla_compare_target target = FLOTILLA_CMP_VERSION;
  flotilla_compare_op op = FLOTILLA_CMP_EQUAL;
  int64_t number = 0;
  std::string value;

  // Helpers for the common cases.
  static StoreCompare absent(std::string key) { return {std::move(key), FLOTILLA_CMP_VERSION, FLOTILLA_CMP_EQUAL, 0, {}}; }
  static StoreCompare mod_revision_is(std::string key, int64_t rev) {
    return {std::move(key), FLOTILLA_CMP_MOD, FLOTILLA_CMP_EQUAL, rev, {}};
  }
};

struct StoreOp {
  flotilla_op_type type = FLOTILLA_OP_PUT;
  std::string key, value;
  int64_t lease = 0;
  bool prefix = false;

  static StoreOp put(std::string key, std::string value, int64_t lease = 0) {
    return {FLOTILLA_OP_PUT, std::move(key), std::move(value), lease, false};
  }
  static StoreOp remove(std::string key, bool prefix = false) {
    return {FLOTILLA_OP_DELETE, std::move(key), {}, 0, prefix};
  }
};

class StoreClient {
 public:
  StoreClient(const flotilla_store_v1 *vtable, void *self) : vt_(vtable), self_(self) {}

  using GetCb = std::function<void(StoreResult, std::optional<KeyValue>, int64_t revision)>;
  using ListCb = std::function<void(StoreResult, std::vector<KeyValue>, int64_t revision)>;
  using WriteCb = std::function<void(StoreResult, int64_t revision)>;
  using DeleteCb = std::function<void(StoreResult, int64_t revision, int64_t deleted)>;
  using TxnCb = std::function<void(StoreResult, bool succeeded, int64_t revision)>;
  using WatchCb =
      std::function<void(StoreResult, const std::vector<StoreEvent> &events, int64_t revision)>;
  using LeaseCb = std::function<void(StoreResult, int64_t lease, int64_t ttl_seconds)>;
  using DoneCb = std::function<void(StoreResult)>;

  void get(std::string_view key, GetCb cb);
  void list(std::string_view prefix, ListCb cb, int64_t revision = 0, int64_t limit = 0);
  void put(std::string_view key, std::string_view value, WriteCb cb, int64_t lease = 0);
  void remove(std::string_view key, bool prefix, DeleteCb cb);
  void txn(const std::vector<StoreCompare> &compares, const std::vector<StoreOp> &success,
           const std::vector<StoreOp> &failure, TxnCb cb);

  // A running watch; destroying it cancels the watch.
  class Watch {
   public:
    ~Watch();
    Watch(const Watch &) = delete;
    Watch &operator=(const Watch &) = delete;
    void cancel();

   private:
    friend class StoreClient;
    Watch() = default;
    const flotilla_store_v1 *vt_ = nullptr;
    void *self_ = nullptr;
    flotilla_store_watch_id id_ = 0;
    bool active_ = false;
    WatchCb cb_;
  };
  // Returns nullptr (after calling cb with the error) if the watch could
  // not be started. The callback may destroy the Watch.
  std::unique_ptr<Watch> watch(std::string_view key, bool prefix, int64_t start_revision,
                               WatchCb cb);

  void lease_grant(int64_t ttl_seconds, LeaseCb cb);
  void lease_keepalive(int64_t lease, LeaseCb cb);
  void lease_revoke(int64_t lease, DoneCb cb);

  const flotilla_store_v1 *vtable() const { return vt_; }
  void *self() const { return self_; }

 private:
  const flotilla_store_v1 *vt_;
  void *self_;
};

}  // namespace flotilla
