// The C ABI boundary of store-local: the exported entry and the
// flotilla.store/1 vtable. Arguments are checked and copied into C++ types
// here; every exception is caught here and becomes a status code plus a
// message through host->set_error.
#include <flotilla/entry.h>
#include <flotilla/store.h>

#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "local_store.h"
#include "store_config.h"

namespace flotilla::store_local {
namespace {

LocalStore *as_store(void *self) {
  return static_cast<LocalStore *>(self);
}

// Run fn; turn what it throws into a status and a message for set_error.
template <class Fn>
flotilla_status guarded(void *self, const char *what, Fn fn) {
  LocalStore *store = as_store(self);
  if (!store) return FLOTILLA_E_INVALID;
  try {
    fn(*store);
    return FLOTILLA_OK;
  } catch (const StoreError &e) {
    store->report(e.what());
    return e.status();
  } catch (const std::bad_alloc &) {
    store->report(std::string(what) + ": out of memory");
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    store->report(std::string(what) + ": internal error: " + e.what());
    return FLOTILLA_E_INTERNAL;
  } catch (...) {
    store->report(std::string(what) + ": internal error");
    return FLOTILLA_E_INTERNAL;
  }
}

StoreError invalid(const std::string &message) {
  return StoreError(FLOTILLA_E_INVALID, message);
}

// A C enum field read as the int it holds: a C caller may store any value,
// and loading an out-of-range value as a C++ enum is undefined behaviour.
template <class E>
int raw_enum(const E &field) {
  static_assert(sizeof(E) == sizeof(int));
  int v;
  std::memcpy(&v, &field, sizeof v);
  return v;
}

// Every struct received must be at least as large as ABI 1.0 made it.
template <class T>
void check_struct(const T *p, size_t size_1_0, const std::string &what) {
  if (!p) throw invalid(what + " is NULL");
  if (p->struct_size < size_1_0)
    throw invalid(what + ": struct_size " + std::to_string(p->struct_size) +
                  " is smaller than ABI 1.0's " + std::to_string(size_1_0));
}

std::string bytes(const char *p, size_t len, const std::string &what) {
  if (!p && len) throw invalid(what + " is NULL but its length is " + std::to_string(len));
  return p ? std::string(p, len) : std::string();
}

KeyRange to_range(const flotilla_key_range *r, const char *what) {
  check_struct(r, offsetof(flotilla_key_range, prefix) + sizeof(int),
               std::string(what) + ": key range");
  std::string key = bytes(r->key, r->key_len, std::string(what) + ": key");
  if (key.size() > kMaxKeyBytes)
    throw invalid(std::string(what) + ": the key is " + std::to_string(key.size()) +
                  " bytes; keys must be at most " + std::to_string(kMaxKeyBytes) + " bytes");
  const bool has_end = r->range_end && r->range_end_len > 0;
  if (r->prefix) {
    if (has_end) throw invalid(std::string(what) + ": set either prefix or range_end, not both");
    return KeyRange::prefix(key);
  }
  if (has_end) {
    if (key.empty())
      throw invalid(std::string(what) +
                    ": the range starts at the empty key; use "
                    "prefix = 1 with an empty key to cover every key");
    return KeyRange::between(key, std::string(r->range_end, r->range_end_len));
  }
  StoreState::check_key(key, what);
  return KeyRange::exact(key);
}

Op to_op(const flotilla_op &op, const char *what) {
  check_struct(&op, offsetof(flotilla_op, prefix) + sizeof(int), what);
  Op out;
  out.type = raw_enum(op.type);
  out.key = bytes(op.key, op.key_len, std::string(what) + " key");
  out.value = bytes(op.value, op.value_len, std::string(what) + " value");
  out.lease = op.lease;
  out.prefix = op.prefix != 0;
  return out;
}

std::vector<Op> to_ops(const flotilla_op *ops, size_t n, const char *what) {
  if (!ops && n)
    throw invalid(std::string(what) + " ops are NULL but their count is " + std::to_string(n));
  std::vector<Op> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(to_op(ops[i], what));
  return out;
}

flotilla_status store_range(void *self, const flotilla_key_range *range, int64_t revision,
                            int64_t limit, flotilla_store_range_cb cb, void *user) {
  return guarded(self, "range", [&](LocalStore &s) {
    if (!cb) throw invalid("range: a callback is required");
    if (revision < 0) throw invalid("range: revision " + std::to_string(revision) + " is negative");
    if (limit < 0) throw invalid("range: limit " + std::to_string(limit) + " is negative");
    s.range(to_range(range, "range"), revision, limit, cb, user);
  });
}

flotilla_status store_put(void *self, const char *key, size_t key_len, const char *value,
                          size_t value_len, flotilla_lease_id lease, flotilla_store_write_cb cb,
                          void *user) {
  return guarded(self, "put", [&](LocalStore &s) {
    if (lease < 0) throw invalid("put: lease " + std::to_string(lease) + " is negative");
    s.put(bytes(key, key_len, "put: key"), bytes(value, value_len, "put: value"), lease, cb, user);
  });
}

flotilla_status store_delete_range(void *self, const flotilla_key_range *range,
                                   flotilla_store_delete_cb cb, void *user) {
  return guarded(self, "delete_range",
                 [&](LocalStore &s) { s.delete_range(to_range(range, "delete_range"), cb, user); });
}

flotilla_status store_txn(void *self, const flotilla_compare *compares, size_t n_compares,
                          const flotilla_op *success, size_t n_success, const flotilla_op *failure,
                          size_t n_failure, flotilla_store_txn_cb cb, void *user) {
  return guarded(self, "txn", [&](LocalStore &s) {
    if (!compares && n_compares)
      throw invalid("txn: compares are NULL but their count is " + std::to_string(n_compares));
    std::vector<Compare> cmps;
    cmps.reserve(n_compares);
    for (size_t i = 0; i < n_compares; ++i) {
      const flotilla_compare &c = compares[i];
      check_struct(&c, offsetof(flotilla_compare, value_len) + sizeof(size_t), "txn compare");
      Compare out;
      out.key = bytes(c.key, c.key_len, "txn compare key");
      out.target = raw_enum(c.target);
      out.op = raw_enum(c.op);
      out.number = c.number;
      out.value = bytes(c.value, c.value_len, "txn compare value");
      cmps.push_back(std::move(out));
    }
    s.txn(cmps, to_ops(success, n_success, "txn success"),
          to_ops(failure, n_failure, "txn failure"), cb, user);
  });
}

flotilla_status store_watch(void *self, const flotilla_key_range *range, int64_t start_revision,
                            flotilla_store_watch_cb cb, void *user,
                            flotilla_store_watch_id *id_out) {
  return guarded(self, "watch", [&](LocalStore &s) {
    if (!cb) throw invalid("watch: a callback is required");
    if (!id_out) throw invalid("watch: id_out is NULL");
    if (start_revision < 0)
      throw invalid("watch: start revision " + std::to_string(start_revision) + " is negative");
    *id_out = s.watch(to_range(range, "watch"), start_revision, cb, user);
  });
}

void store_watch_cancel(void *self, flotilla_store_watch_id id) {
  guarded(self, "watch_cancel", [&](LocalStore &s) { s.watch_cancel(id); });
}

flotilla_status store_lease_grant(void *self, int64_t ttl_seconds, flotilla_lease_cb cb,
                                  void *user) {
  return guarded(self, "lease_grant", [&](LocalStore &s) { s.lease_grant(ttl_seconds, cb, user); });
}

flotilla_status store_lease_keepalive(void *self, flotilla_lease_id lease, flotilla_lease_cb cb,
                                      void *user) {
  return guarded(self, "lease_keepalive",
                 [&](LocalStore &s) { s.lease_keepalive(lease, cb, user); });
}

flotilla_status store_lease_revoke(void *self, flotilla_lease_id lease, flotilla_done_cb cb,
                                   void *user) {
  return guarded(self, "lease_revoke", [&](LocalStore &s) { s.lease_revoke(lease, cb, user); });
}

flotilla_status store_compact(void *self, int64_t revision, flotilla_done_cb cb, void *user) {
  return guarded(self, "compact", [&](LocalStore &s) { s.compact(revision, cb, user); });
}

const flotilla_store_v1 kStoreV1 = {
    sizeof(flotilla_store_v1), store_range,       store_put,
    store_delete_range,        store_txn,         store_watch,
    store_watch_cancel,        store_lease_grant, store_lease_keepalive,
    store_lease_revoke,        store_compact,
};

// Every bad key goes to host->config_error; false if there was one.
bool read_config(const flotilla_host *host, StoreConfig &config) {
  std::vector<ConfigProblem> problems;
  config = parse_store_config(host->config_json(host->host_ctx), problems);
  for (const auto &p : problems) host->config_error(host->host_ctx, p.key().c_str(), p.what());
  return problems.empty();
}

flotilla_status plugin_check_config(const flotilla_host *host, uint32_t) {
  try {
    StoreConfig config;
    return read_config(host, config) ? FLOTILLA_OK : FLOTILLA_E_INVALID;
  } catch (...) {
    host->set_error(host->host_ctx, "store-local: cannot check its config");
    return FLOTILLA_E_INTERNAL;
  }
}

flotilla_status plugin_init(const flotilla_host *host, void **instance_out) {
  if (!host || !instance_out) return FLOTILLA_E_INVALID;
  auto error = [host](const std::string &message) {
    host->set_error(host->host_ctx, message.c_str());
  };
  if (host->struct_size < offsetof(flotilla_host, metric_gauge_set) + sizeof(void *)) {
    error("store-local needs the host table of ABI 1.0; this host's is smaller");
    return FLOTILLA_E_UNSUPPORTED;
  }
  try {
    StoreConfig config;
    if (!read_config(host, config)) return FLOTILLA_E_INVALID;
    auto store = std::make_unique<LocalStore>(host, config);
    *instance_out = store.release();
    return FLOTILLA_OK;
  } catch (const StoreError &e) {
    error(e.what());
    return e.status();
  } catch (const std::bad_alloc &) {
    error("store-local: out of memory while opening the store");
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    error(std::string("store-local: cannot open the store: ") + e.what());
    return FLOTILLA_E_INTERNAL;
  } catch (...) {
    error("store-local: cannot open the store");
    return FLOTILLA_E_INTERNAL;
  }
}

void plugin_deinit(void *instance) {
  std::unique_ptr<LocalStore> store(as_store(instance));
  if (!store) return;
  try {
    store->close();
  } catch (const std::exception &e) {
    store->log(FLOTILLA_LOG_ERROR, std::string("shutdown: ") + e.what());
  } catch (...) {
    store->log(FLOTILLA_LOG_ERROR, "shutdown failed");
  }
}

const void *plugin_get_interface(void *, const char *interface_id) {
  if (interface_id && std::string_view(interface_id) == FLOTILLA_STORE_INTERFACE_ID)
    return &kStoreV1;
  return nullptr;
}

const char *const kProvides[] = {FLOTILLA_STORE_INTERFACE_ID, nullptr};
const char *const kDependsOn[] = {nullptr};

}  // namespace
}  // namespace flotilla::store_local

extern "C" {
FLOTILLA_PLUGIN_EXPORT extern const flotilla_entry flotilla_plugin_entry;
const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.store-local",
    "0.1.0",
    "embedded single-host state store: write-ahead log, snapshots, watches, leases",
    flotilla::store_local::kProvides,
    flotilla::store_local::kDependsOn,
    flotilla::store_local::plugin_init,
    flotilla::store_local::plugin_deinit,
    flotilla::store_local::plugin_get_interface,
    flotilla::store_local::plugin_check_config,
};
}
