// The store (flotilla.store/1) with C++ callbacks, for this plugin: the
// few calls IPAM and the mesh need. [loop-thread] throughout; every
// callback runs later on the loop thread.
#pragma once

#include <flotilla/store.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace flotilla::overlay {

struct Kv {
  std::string key, value;
  int64_t mod_revision = 0;
  int64_t version = 0;
};

// One put (value set) or delete (value unset) of a transaction, guarded by
// "the key's version is expect_version" when expect_version >= 0.
struct TxnOp {
  std::string key;
  std::optional<std::string> value;
  int64_t expect_version = -1;
  flotilla_lease_id lease = 0;
};

class StoreView {
 public:
  StoreView(const flotilla_store_v1 *vt, void *self) : vt_(vt), self_(self) {}
  // Cancels the watches still open (their callbacks never run again).
  ~StoreView();
  StoreView(const StoreView &) = delete;
  StoreView &operator=(const StoreView &) = delete;

  using RangeCb = std::function<void(flotilla_status, std::vector<Kv>, int64_t revision)>;
  using TxnCb = std::function<void(flotilla_status, bool succeeded)>;
  using WatchCb = std::function<void(flotilla_status, const flotilla_watch_event *, size_t)>;

  // Every key under prefix. Returns non-OK when the store refused the call
  // (the callback then never runs).
  flotilla_status list(const std::string &prefix, RangeCb cb);
  // All ops atomically if every guard holds; succeeded says whether they did.
  flotilla_status txn(const std::vector<TxnOp> &ops, TxnCb cb);
  // Changes under prefix from start_revision on; *id for cancel. The
  // callback is kept until the watch ends (a non-OK status) or is
  // cancelled; cancel may be called from inside it.
  flotilla_status watch(const std::string &prefix, int64_t start_revision, WatchCb cb,
                        flotilla_store_watch_id *id);
  void cancel(flotilla_store_watch_id id);
  // Watches open (their callbacks held).
  size_t watches() const { return watches_.size(); }

  using LeaseCb = std::function<void(flotilla_status, flotilla_lease_id)>;
  flotilla_status lease_grant(int64_t ttl_seconds, LeaseCb cb);
  flotilla_status lease_keepalive(flotilla_lease_id lease, LeaseCb cb);
  flotilla_status lease_revoke(flotilla_lease_id lease, std::function<void(flotilla_status)> cb);

  // Requests whose callback has not run yet. The owner, when it stops,
  // frees itself from on_idle once none is left (their callbacks still
  // run, and must find it).
  int pending() const { return pending_; }
  std::function<void()> on_idle;

 private:
  template <typename Cb>
  struct Call {
    StoreView *view;
    Cb cb;
  };
  // A request's callback, freed and counted done once it has run.
  template <typename Cb, typename Issue>
  flotilla_status request(Cb cb, Issue issue);
  template <typename Cb, typename... Args>
  static void finish(void *user, Args &&...args);
  struct Watch {
    StoreView *view;
    WatchCb cb;
    flotilla_store_watch_id id = 0;
    bool running = false;    // its callback is on the stack
    bool cancelled = false;  // cancelled from inside it: freed on return
  };
  static void on_watch(void *user, flotilla_status status, const flotilla_watch_event *evs,
                       size_t n, int64_t revision);
  void done_one();
  int pending_ = 0;
  // By their own address: the store's callback carries it, and the id is
  // known only once watch() returned.
  std::map<const Watch *, std::unique_ptr<Watch>> watches_;
  const flotilla_store_v1 *vt_;
  void *self_;
};

}  // namespace flotilla::overlay
