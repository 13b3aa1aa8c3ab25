// The C ABI boundary of store-etcd: the exported entry and the
// flotilla.store/1 vtable. Arguments are checked and copied into C++ types
// here, by the same rules as store-local; every exception is caught here
// and becomes a status code plus a message through host->set_error.
#include <flotilla/entry.h>
#include <flotilla/store.h>

#include <cstring>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "etcd_config.h"
#include "etcd_store.h"

namespace flotilla::store_etcd {
namespace {

EtcdStore *as_store(void *self) {
  return static_cast<EtcdStore *>(self);
}

template <class Fn>
flotilla_status guarded(void *self, const char *what, Fn fn) {
  EtcdStore *store = as_store(self);
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

// A C enum field read as the int it holds (any value may come from C).
template <class E>
int raw_enum(const E &field) {
  static_assert(sizeof(E) == sizeof(int));
  int v;
  std::memcpy(&v, &field, sizeof v);
  return v;
}

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

void check_key(const std::string &key, const std::string &what) {
  if (key.empty())
    throw invalid(what + ": the key is empty; keys must be 1 to " + std::to_string(kMaxKeyBytes) +
                  " bytes");
  if (key.size() > kMaxKeyBytes)
    throw invalid(what + ": the key is " + std::to_string(key.size()) +
                  " bytes; keys must be at most " + std::to_string(kMaxKeyBytes) + " bytes");
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
    return prefix_range(key);
  }
  if (has_end) {
    if (key.empty())
      throw invalid(std::string(what) +
                    ": the range starts at the empty key; use prefix = 1 with an empty key to "
                    "cover every key");
    return KeyRange{key, std::string(r->range_end, r->range_end_len)};
  }
  check_key(key, what);
  return KeyRange{key, ""};
}

bool in_range(const Op &del, const std::string &key) {
  if (!del.prefix) return key == del.key;
  return key.compare(0, del.key.size(), del.key) == 0;
}

std::vector<Op> to_ops(const flotilla_op *ops, size_t n, const char *branch) {
  if (!ops && n)
    throw invalid(std::string(branch) + " ops are NULL but their count is " + std::to_string(n));
  std::vector<Op> out;
  out.reserve(n);
  std::set<std::string> puts;
  for (size_t i = 0; i < n; ++i) {
    check_struct(&ops[i], offsetof(flotilla_op, prefix) + sizeof(int), branch);
    Op op;
    op.type = raw_enum(ops[i].type);
    op.key = bytes(ops[i].key, ops[i].key_len, std::string(branch) + " key");
    op.value = bytes(ops[i].value, ops[i].value_len, std::string(branch) + " value");
    op.lease = ops[i].lease;
    op.prefix = ops[i].prefix != 0;
    if (op.type == FLOTILLA_OP_PUT) {
      check_key(op.key, branch);
      if (op.lease < 0) throw invalid(std::string(branch) + ": negative lease id");
      if (!puts.insert(op.key).second)
        throw invalid(std::string(branch) + ": a key is put twice in one transaction; put it once");
    } else if (op.type == FLOTILLA_OP_DELETE) {
      if (!op.prefix || op.key.size() > kMaxKeyBytes) check_key(op.key, branch);
    } else {
      throw invalid(std::string(branch) + ": unknown op type " + std::to_string(op.type) +
                    "; use PUT or DELETE");
    }
    out.push_back(std::move(op));
  }
  for (const Op &d : out) {
    if (d.type != FLOTILLA_OP_DELETE) continue;
    for (const auto &k : puts)
      if (in_range(d, k))
        throw invalid(std::string(branch) +
                      ": a key is both put and deleted in one transaction; keep one of the two");
  }
  return out;
}

flotilla_status store_range(void *self, const flotilla_key_range *range, int64_t revision,
                            int64_t limit, flotilla_store_range_cb cb, void *user) {
  return guarded(self, "range", [&](EtcdStore &s) {
    if (!cb) throw invalid("range: a callback is required");
    if (revision < 0) throw invalid("range: revision " + std::to_string(revision) + " is negative");
    if (limit < 0) throw invalid("range: limit " + std::to_string(limit) + " is negative");
    s.range(to_range(range, "range"), revision, limit, cb, user);
  });
}

flotilla_status store_put(void *self, const char *key, size_t key_len, const char *value,
                          size_t value_len, flotilla_lease_id lease, flotilla_store_write_cb cb,
                          void *user) {
  return guarded(self, "put", [&](EtcdStore &s) {
    if (!cb) throw invalid("put: a callback is required");
    if (lease < 0) throw invalid("put: lease " + std::to_string(lease) + " is negative");
    std::string k = bytes(key, key_len, "put: key");
    check_key(k, "put");
    s.put(std::move(k), bytes(value, value_len, "put: value"), lease, cb, user);
  });
}

flotilla_status store_delete_range(void *self, const flotilla_key_range *range,
                                   flotilla_store_delete_cb cb, void *user) {
  return guarded(self, "delete_range", [&](EtcdStore &s) {
    if (!cb) throw invalid("delete_range: a callback is required");
    s.delete_range(to_range(range, "delete_range"), cb, user);
  });
}

flotilla_status store_txn(void *self, const flotilla_compare *compares, size_t n_compares,
                          const flotilla_op *success, size_t n_success, const flotilla_op *failure,
                          size_t n_failure, flotilla_store_txn_cb cb, void *user) {
  return guarded(self, "txn", [&](EtcdStore &s) {
    if (!cb) throw invalid("txn: a callback is required");
    if (!compares && n_compares)
      throw invalid("txn: compares are NULL but their count is " + std::to_string(n_compares));
    std::vector<Compare> cmps;
    cmps.reserve(n_compares);
    for (size_t i = 0; i < n_compares; ++i) {
      const flotilla_compare &c = compares[i];
      check_struct(&c, offsetof(flotilla_compare, value_len) + sizeof(size_t), "txn compare");
      Compare out;
      out.key = bytes(c.key, c.key_len, "txn compare key");
      check_key(out.key, "txn compare");
      out.target = raw_enum(c.target);
      out.op = raw_enum(c.op);
      if (out.target < FLOTILLA_CMP_VERSION || out.target > FLOTILLA_CMP_LEASE)
        throw invalid("txn compare: unknown target " + std::to_string(out.target) +
                      "; use VERSION, CREATE, MOD, VALUE or LEASE");
      if (out.op < FLOTILLA_CMP_EQUAL || out.op > FLOTILLA_CMP_GREATER)
        throw invalid("txn compare: unknown operator " + std::to_string(out.op) +
                      "; use EQUAL, NOT_EQUAL, LESS or GREATER");
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
  return guarded(self, "watch", [&](EtcdStore &s) {
    if (!cb) throw invalid("watch: a callback is required");
    if (!id_out) throw invalid("watch: id_out is NULL");
    if (start_revision < 0)
      throw invalid("watch: start revision " + std::to_string(start_revision) + " is negative");
    *id_out = s.watch(to_range(range, "watch"), start_revision, cb, user);
  });
}

void store_watch_cancel(void *self, flotilla_store_watch_id id) {
  guarded(self, "watch_cancel", [&](EtcdStore &s) { s.watch_cancel(id); });
}

flotilla_status store_lease_grant(void *self, int64_t ttl_seconds, flotilla_lease_cb cb,
                                  void *user) {
  return guarded(self, "lease_grant", [&](EtcdStore &s) {
    if (!cb) throw invalid("lease_grant: a callback is required");
    s.lease_grant(ttl_seconds, cb, user);
  });
}

flotilla_status store_lease_keepalive(void *self, flotilla_lease_id lease, flotilla_lease_cb cb,
                                      void *user) {
  return guarded(self, "lease_keepalive", [&](EtcdStore &s) {
    if (!cb) throw invalid("lease_keepalive: a callback is required");
    if (lease <= 0)
      throw invalid("lease_keepalive: lease " + std::to_string(lease) + " is not a lease id");
    s.lease_keepalive(lease, cb, user);
  });
}

flotilla_status store_lease_revoke(void *self, flotilla_lease_id lease, flotilla_done_cb cb,
                                   void *user) {
  return guarded(self, "lease_revoke", [&](EtcdStore &s) {
    if (!cb) throw invalid("lease_revoke: a callback is required");
    if (lease <= 0)
      throw invalid("lease_revoke: lease " + std::to_string(lease) + " is not a lease id");
    s.lease_revoke(lease, cb, user);
  });
}

flotilla_status store_compact(void *self, int64_t revision, flotilla_done_cb cb, void *user) {
  return guarded(self, "compact", [&](EtcdStore &s) {
    if (!cb) throw invalid("compact: a callback is required");
    if (revision <= 0)
      throw invalid("compact: revision " + std::to_string(revision) + " must be positive");
    s.compact(revision, cb, user);
  });
}

const flotilla_store_v1 kStoreV1 = {
    sizeof(flotilla_store_v1), store_range,       store_put,
    store_delete_range,        store_txn,         store_watch,
    store_watch_cancel,        store_lease_grant, store_lease_keepalive,
    store_lease_revoke,        store_compact,
};

flotilla_status plugin_init(const flotilla_host *host, void **instance_out) {
  if (!host || !instance_out) return FLOTILLA_E_INVALID;
  auto error = [host](const std::string &message) {
    host->set_error(host->host_ctx, message.c_str());
  };
  if (host->struct_size < offsetof(flotilla_host, metric_gauge_set) + sizeof(void *)) {
    error("store-etcd needs the host table of ABI 1.0; this host's is smaller");
    return FLOTILLA_E_UNSUPPORTED;
  }
  try {
    std::vector<ConfigProblem> problems;
    EtcdConfig config = parse_etcd_config(host->config_json(host->host_ctx), problems);
    if (!problems.empty()) {
      // Every problem is reported, each with its file, line and key.
      for (const auto &p : problems)
        host->config_error(host->host_ctx, p.key.c_str(), p.message.c_str());
      return FLOTILLA_E_INVALID;
    }
    auto store = std::make_unique<EtcdStore>(host, std::move(config));
    *instance_out = store.release();
    return FLOTILLA_OK;
  } catch (const StoreError &e) {
    error(e.what());
    return e.status();
  } catch (const std::bad_alloc &) {
    error("store-etcd: out of memory");
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    error(std::string("store-etcd: cannot start: ") + e.what());
    return FLOTILLA_E_INTERNAL;
  } catch (...) {
    error("store-etcd: cannot start");
    return FLOTILLA_E_INTERNAL;
  }
}

void plugin_deinit(void *instance) {
  std::unique_ptr<EtcdStore> store(as_store(instance));
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
}  // namespace flotilla::store_etcd

extern "C" {
FLOTILLA_PLUGIN_EXPORT extern const flotilla_entry flotilla_plugin_entry;
const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.store-etcd",
    "0.1.0",
    "etcd v3 state store over gRPC: one channel, multiplexed watches and keepalives, failover",
    flotilla::store_etcd::kProvides,
    flotilla::store_etcd::kDependsOn,
    flotilla::store_etcd::plugin_init,
    flotilla::store_etcd::plugin_deinit,
    flotilla::store_etcd::plugin_get_interface,
    nullptr,  // check_config (ABI 1.2): not yet; its keys are checked by init
};
}
