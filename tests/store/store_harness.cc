#include "store_harness.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

namespace flotilla::store_test {

// ---- TempDir -----------------------------------------------------------

TempDir::TempDir(const std::string &tag) {
  std::string tmpl =
      (std::filesystem::temp_directory_path() / ("flotilla-" + tag + "-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

// ---- TestLoop ----------------------------------------------------------

TestLoop::TestLoop() {
  uv_loop_init(&loop_);
}

TestLoop::~TestLoop() {
  // Close whatever is left (timers the host closed asynchronously) and let
  // the close callbacks run.
  uv_walk(
      &loop_,
      [](uv_handle_t *h, void *) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

bool TestLoop::run_until(const std::function<bool()> &done, const std::string &what) {
  constexpr uint64_t kGuardMs = 180'000;
  bool expired = false;
  uv_timer_t guard;
  uv_timer_init(&loop_, &guard);
  guard.data = &expired;
  uv_timer_start(
      &guard, [](uv_timer_t *t) { *static_cast<bool *>(t->data) = true; }, kGuardMs, 0);
  while (!done() && !expired) uv_run(&loop_, UV_RUN_ONCE);
  uv_timer_stop(&guard);
  uv_close(reinterpret_cast<uv_handle_t *>(&guard), nullptr);
  uv_run(&loop_, UV_RUN_NOWAIT);  // runs the close callback; guard is on our stack
  if (!done()) {
    ADD_FAILURE() << "gave up waiting for " << what << " (hang guard)";
    return false;
  }
  return true;
}

void TestLoop::settle() {
  for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
}

// ---- LoadedStore -------------------------------------------------------

PluginSettings store_local_settings(nlohmann::json config) {
  PluginSettings s;
  s.name = "store-local";
  s.path = STORE_LOCAL_PLUGIN_PATH;
  s.config = std::move(config);
  return s;
}

PluginSettings store_etcd_settings(nlohmann::json config) {
  PluginSettings s;
  s.name = "store-etcd";
#ifdef STORE_ETCD_PLUGIN_PATH
  s.path = STORE_ETCD_PLUGIN_PATH;
#endif
  s.config = std::move(config);
  return s;
}

LoadedStore::LoadedStore(TestLoop &loop, const PluginSettings &settings,
                         const std::string &data_dir)
    : loop_(loop) {
  PluginHost::Options opts;
  opts.node_name = "test-node";
  opts.data_dir = data_dir;
  opts.config_path = "(test config)";
  host_ = std::make_unique<PluginHost>(loop.get(), opts);
  host_->start({settings});
  vt_ = host_->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self_);
  if (!vt_) throw std::runtime_error("plugin " + settings.name + " serves no flotilla.store/1");
  client_ = std::make_unique<StoreClient>(vt_, self_);
}

LoadedStore::~LoadedStore() {
  client_.reset();
  host_->stop();
  // Work the plugin queued has finished (deinit waits for it), but the
  // host's after-work bookkeeping runs on the loop: let it run before the
  // host and its plugin records go away.
  loop_.settle();
  host_->stop();
}

// ---- SyncStore ---------------------------------------------------------

namespace {

// Fails the test when a successful callback runs before its call returned.
struct CallGuard {
  bool returned = false;
  void check(const StoreResult &r, const char *what) const {
    if (!returned && r.ok()) ADD_FAILURE() << what << ": the callback ran inside the call";
  }
};

StoreResult result_of(flotilla_status st) {
  StoreResult r;
  r.status = st;
  if (st != FLOTILLA_OK) r.message = PluginHost::last_error();
  return r;
}

}  // namespace

std::vector<std::string> SyncStore::List::keys() const {
  std::vector<std::string> out;
  for (const auto &kv : kvs) out.push_back(kv.key);
  return out;
}

template <class T>
T SyncStore::wait(std::optional<T> &slot, const char *what) {
  if (!loop_.run_until([&] { return slot.has_value(); }, what)) return T{};
  return *slot;
}

SyncStore::Write SyncStore::put(std::string_view key, std::string_view value, int64_t lease) {
  std::optional<Write> out;
  CallGuard g;
  store_.client().put(
      key, value,
      [&](StoreResult r, int64_t rev) {
        g.check(r, "put");
        out = Write{std::move(r), rev};
      },
      lease);
  g.returned = true;
  return wait(out, "put");
}

SyncStore::Get SyncStore::get(std::string_view key) {
  std::optional<Get> out;
  CallGuard g;
  store_.client().get(key, [&](StoreResult r, std::optional<KeyValue> kv, int64_t rev) {
    g.check(r, "get");
    out = Get{std::move(r), std::move(kv), rev};
  });
  g.returned = true;
  return wait(out, "get");
}

SyncStore::List SyncStore::raw_range(const flotilla_key_range &r, int64_t revision, int64_t limit) {
  struct Ctx {
    std::optional<List> out;
    CallGuard g;
  } ctx;
  PluginHost::clear_last_error();
  flotilla_status st = store_.vt()->range(
      store_.self(), &r, revision, limit,
      [](void *user, flotilla_status st, const flotilla_kv *kvs, size_t n, int64_t rev, int more) {
        auto *c = static_cast<Ctx *>(user);
        List l;
        l.result = result_of(st);
        c->g.check(l.result, "range");
        for (size_t i = 0; i < n; ++i) {
          KeyValue kv;
          kv.key.assign(kvs[i].key, kvs[i].key_len);
          kv.value.assign(kvs[i].value ? kvs[i].value : "", kvs[i].value_len);
          kv.create_revision = kvs[i].create_revision;
          kv.mod_revision = kvs[i].mod_revision;
          kv.version = kvs[i].version;
          kv.lease = kvs[i].lease;
          l.kvs.push_back(std::move(kv));
        }
        l.revision = rev;
        l.more = more != 0;
        c->out = std::move(l);
      },
      &ctx);
  ctx.g.returned = true;
  if (st != FLOTILLA_OK) {
    List l;
    l.result = result_of(st);
    return l;
  }
  return wait(ctx.out, "range");
}

SyncStore::List SyncStore::list(std::string_view prefix, int64_t revision, int64_t limit) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = prefix.data();
  r.key_len = prefix.size();
  r.prefix = 1;
  return raw_range(r, revision, limit);
}

SyncStore::List SyncStore::range(std::string_view key, std::string_view range_end, int64_t revision,
                                 int64_t limit) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = key.data();
  r.key_len = key.size();
  r.range_end = range_end.data();
  r.range_end_len = range_end.size();
  return raw_range(r, revision, limit);
}

SyncStore::List SyncStore::range_exact(std::string_view key, int64_t revision) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = key.data();
  r.key_len = key.size();
  return raw_range(r, revision, 0);
}

SyncStore::Delete SyncStore::remove(std::string_view key, bool prefix) {
  std::optional<Delete> out;
  CallGuard g;
  store_.client().remove(key, prefix, [&](StoreResult r, int64_t rev, int64_t deleted) {
    g.check(r, "delete");
    out = Delete{std::move(r), rev, deleted};
  });
  g.returned = true;
  return wait(out, "delete");
}

SyncStore::Txn SyncStore::txn(const std::vector<StoreCompare> &compares,
                              const std::vector<StoreOp> &success,
                              const std::vector<StoreOp> &failure) {
  std::optional<Txn> out;
  CallGuard g;
  store_.client().txn(compares, success, failure, [&](StoreResult r, bool ok, int64_t rev) {
    g.check(r, "txn");
    out = Txn{std::move(r), ok, rev};
  });
  g.returned = true;
  return wait(out, "txn");
}

SyncStore::Lease SyncStore::grant(int64_t ttl_seconds) {
  std::optional<Lease> out;
  CallGuard g;
  store_.client().lease_grant(ttl_seconds, [&](StoreResult r, int64_t id, int64_t ttl) {
    g.check(r, "lease_grant");
    out = Lease{std::move(r), id, ttl};
  });
  g.returned = true;
  return wait(out, "lease_grant");
}

SyncStore::Lease SyncStore::keepalive(int64_t lease) {
  std::optional<Lease> out;
  CallGuard g;
  store_.client().lease_keepalive(lease, [&](StoreResult r, int64_t id, int64_t ttl) {
    g.check(r, "lease_keepalive");
    out = Lease{std::move(r), id, ttl};
  });
  g.returned = true;
  return wait(out, "lease_keepalive");
}

StoreResult SyncStore::revoke(int64_t lease) {
  std::optional<StoreResult> out;
  CallGuard g;
  store_.client().lease_revoke(lease, [&](StoreResult r) {
    g.check(r, "lease_revoke");
    out = std::move(r);
  });
  g.returned = true;
  return wait(out, "lease_revoke");
}

StoreResult SyncStore::compact(int64_t revision) {
  struct Ctx {
    std::optional<StoreResult> out;
    CallGuard g;
  } ctx;
  PluginHost::clear_last_error();
  flotilla_status st = store_.vt()->compact(
      store_.self(), revision,
      [](void *user, flotilla_status st) {
        auto *c = static_cast<Ctx *>(user);
        StoreResult r = result_of(st);
        c->g.check(r, "compact");
        c->out = std::move(r);
      },
      &ctx);
  ctx.g.returned = true;
  if (st != FLOTILLA_OK) return result_of(st);
  return wait(ctx.out, "compact");
}

int64_t SyncStore::revision() {
  Get g = get("\x01revision-probe");
  EXPECT_TRUE(g.result.ok()) << g.result.message;
  return g.revision;
}

// ---- watches -----------------------------------------------------------

size_t WatchLog::events() const {
  size_t n = 0;
  for (const auto &b : batches) n += b.events.size();
  return n;
}

std::unique_ptr<StoreClient::Watch> watch_into(StoreClient &client, std::string_view key,
                                               bool prefix, int64_t start_revision, WatchLog &log) {
  return client.watch(key, prefix, start_revision,
                      [&log](StoreResult r, const std::vector<StoreEvent> &events, int64_t rev) {
                        if (!r.ok()) {
                          if (log.ended)
                            ADD_FAILURE() << "a second final status after " << log.ended->message;
                          log.ended = std::move(r);
                          return;
                        }
                        if (log.ended) ADD_FAILURE() << "an event after the final status";
                        log.batches.push_back(WatchLog::Batch{rev, events});
                      });
}

}  // namespace flotilla::store_test
