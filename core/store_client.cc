#include "store_client.h"

#include "plugin_host.h"

namespace flotilla {

namespace {

// Each request carries its std::function on the heap; the trampoline takes
// ownership back and frees it after the call.
template <class Cb>
struct Pending {
  Cb cb;
};

StoreResult result_of(flotilla_status status) {
  StoreResult r;
  r.status = status;
  if (status != FLOTILLA_OK) {
    r.message = PluginHost::last_error();
    if (r.message.empty()) r.message = "store request failed";
  }
  return r;
}

KeyValue to_kv(const flotilla_kv &kv) {
  KeyValue out;
  out.key.assign(kv.key ? kv.key : "", kv.key_len);
  out.value.assign(kv.value ? kv.value : "", kv.value_len);
  out.create_revision = kv.create_revision;
  out.mod_revision = kv.mod_revision;
  out.version = kv.version;
  out.lease = kv.lease;
  return out;
}

flotilla_key_range make_range(std::string_view key, bool prefix) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = key.data();
  r.key_len = key.size();
  r.prefix = prefix ? 1 : 0;
  return r;
}

// Call `start` with a heap-held callback; if the plugin refuses the request
// synchronously, run the callback right away with that status.
template <class Cb, class Start, class Fail>
void dispatch(Cb cb, Start start, Fail fail) {
  auto *p = new Pending<Cb>{std::move(cb)};
  PluginHost::clear_last_error();
  flotilla_status st = start(p);
  if (st != FLOTILLA_OK) {
    std::unique_ptr<Pending<Cb>> owned(p);
    fail(owned->cb, result_of(st));
  }
}

}  // namespace

void StoreClient::get(std::string_view key, GetCb cb) {
  flotilla_key_range r = make_range(key, false);
  dispatch(
      std::move(cb),
      [&](Pending<GetCb> *p) {
        return vt_->range(
            self_, &r, 0, 1,
            [](void *user, flotilla_status st, const flotilla_kv *kvs, size_t n, int64_t rev,
               int) {
              std::unique_ptr<Pending<GetCb>> owned(static_cast<Pending<GetCb> *>(user));
              std::optional<KeyValue> kv;
              if (st == FLOTILLA_OK && n > 0) kv = to_kv(kvs[0]);
              owned->cb(result_of(st), std::move(kv), rev);
            },
            p);
      },
      [](GetCb &c, StoreResult r) { c(std::move(r), std::nullopt, 0); });
}

void StoreClient::list(std::string_view prefix, ListCb cb, int64_t revision, int64_t limit) {
  flotilla_key_range r = make_range(prefix, true);
  dispatch(
      std::move(cb),
      [&](Pending<ListCb> *p) {
        return vt_->range(
            self_, &r, revision, limit,
            [](void *user, flotilla_status st, const flotilla_kv *kvs, size_t n, int64_t rev,
               int) {
              std::unique_ptr<Pending<ListCb>> owned(static_cast<Pending<ListCb> *>(user));
              std::vector<KeyValue> out;
              if (st == FLOTILLA_OK) {
                out.reserve(n);
                for (size_t i = 0; i < n; ++i) out.push_back(to_kv(kvs[i]));
              }
              owned->cb(result_of(st), std::move(out), rev);
            },
            p);
      },
      [](ListCb &c, StoreResult r) { c(std::move(r), {}, 0); });
}

void StoreClient::put(std::string_view key, std::string_view value, WriteCb cb, int64_t lease) {
  dispatch(
      std::move(cb),
      [&](Pending<WriteCb> *p) {
        return vt_->put(
            self_, key.data(), key.size(), value.data(), value.size(), lease,
            [](void *user, flotilla_status st, int64_t rev) {
              std::unique_ptr<Pending<WriteCb>> owned(static_cast<Pending<WriteCb> *>(user));
              owned->cb(result_of(st), rev);
            },
            p);
      },
      [](WriteCb &c, StoreResult r) { c(std::move(r), 0); });
}

void StoreClient::remove(std::string_view key, bool prefix, DeleteCb cb) {
  flotilla_key_range r = make_range(key, prefix);
  dispatch(
      std::move(cb),
      [&](Pending<DeleteCb> *p) {
        return vt_->delete_range(
            self_, &r,
            [](void *user, flotilla_status st, int64_t rev, int64_t deleted) {
              std::unique_ptr<Pending<DeleteCb>> owned(static_cast<Pending<DeleteCb> *>(user));
              owned->cb(result_of(st), rev, deleted);
            },
            p);
      },
      [](DeleteCb &c, StoreResult r) { c(std::move(r), 0, 0); });
}

void StoreClient::txn(const std::vector<StoreCompare> &compares,
                      const std::vector<StoreOp> &success, const std::vector<StoreOp> &failure,
                      TxnCb cb) {
  std::vector<flotilla_compare> cmp(compares.size());
  for (size_t i = 0; i < compares.size(); ++i) {
    const StoreCompare &c = compares[i];
    cmp[i] = flotilla_compare{sizeof(flotilla_compare), c.key.data(), c.key.size(), c.target,
                              c.op, c.number, c.value.data(), c.value.size()};
  }
  auto to_ops = [](const std::vector<StoreOp> &ops) {
    std::vector<flotilla_op> out(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      const StoreOp &o = ops[i];
      out[i] = flotilla_op{sizeof(flotilla_op), o.type, o.key.data(), o.key.size(),
                           o.value.data(), o.value.size(), o.lease, o.prefix ? 1 : 0};
    }
    return out;
  };
  std::vector<flotilla_op> ok_ops = to_ops(success), fail_ops = to_ops(failure);
  dispatch(
      std::move(cb),
      [&](Pending<TxnCb> *p) {
        return vt_->txn(
            self_, cmp.data(), cmp.size(), ok_ops.data(), ok_ops.size(), fail_ops.data(),
            fail_ops.size(),
            [](void *user, flotilla_status st, int succeeded, int64_t rev) {
              std::unique_ptr<Pending<TxnCb>> owned(static_cast<Pending<TxnCb> *>(user));
              owned->cb(result_of(st), succeeded != 0, rev);
            },
            p);
      },
      [](TxnCb &c, StoreResult r) { c(std::move(r), false, 0); });
}

StoreClient::Watch::~Watch() { cancel(); }

void StoreClient::Watch::cancel() {
  if (!active_) return;
  active_ = false;
  vt_->watch_cancel(self_, id_);
}

std::unique_ptr<StoreClient::Watch> StoreClient::watch(std::string_view key, bool prefix,
                                                       int64_t start_revision, WatchCb cb) {
  std::unique_ptr<Watch> w(new Watch);
  w->vt_ = vt_;
  w->self_ = self_;
  w->cb_ = std::move(cb);
  flotilla_key_range r = make_range(key, prefix);
  PluginHost::clear_last_error();
  flotilla_status st = vt_->watch(
      self_, &r, start_revision,
      [](void *user, flotilla_status status, const flotilla_watch_event *events, size_t n,
         int64_t rev) {
        auto *self = static_cast<Watch *>(user);
        std::vector<StoreEvent> out;
        out.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          StoreEvent e;
          e.type = events[i].type == FLOTILLA_EVENT_DELETE ? StoreEvent::Type::remove
                                                           : StoreEvent::Type::put;
          e.kv = to_kv(events[i].kv);
          out.push_back(std::move(e));
        }
        // A failed status ends the watch: the plugin will not call again.
        if (status != FLOTILLA_OK) self->active_ = false;
        // Call a copy: the callback may destroy the Watch (and cb_) itself.
        WatchCb cb = self->cb_;
        cb(result_of(status), out, rev);
      },
      w.get(), &w->id_);
  if (st != FLOTILLA_OK) {
    w->cb_(result_of(st), {}, 0);
    return nullptr;
  }
  w->active_ = true;
  return w;
}

void StoreClient::lease_grant(int64_t ttl_seconds, LeaseCb cb) {
  dispatch(
      std::move(cb),
      [&](Pending<LeaseCb> *p) {
        return vt_->lease_grant(
            self_, ttl_seconds,
            [](void *user, flotilla_status st, flotilla_lease_id lease, int64_t ttl) {
              std::unique_ptr<Pending<LeaseCb>> owned(static_cast<Pending<LeaseCb> *>(user));
              owned->cb(result_of(st), lease, ttl);
            },
            p);
      },
      [](LeaseCb &c, StoreResult r) { c(std::move(r), 0, 0); });
}

void StoreClient::lease_keepalive(int64_t lease, LeaseCb cb) {
  dispatch(
      std::move(cb),
      [&](Pending<LeaseCb> *p) {
        return vt_->lease_keepalive(
            self_, lease,
            [](void *user, flotilla_status st, flotilla_lease_id id, int64_t ttl) {
              std::unique_ptr<Pending<LeaseCb>> owned(static_cast<Pending<LeaseCb> *>(user));
              owned->cb(result_of(st), id, ttl);
            },
            p);
      },
      [](LeaseCb &c, StoreResult r) { c(std::move(r), 0, 0); });
}

void StoreClient::lease_revoke(int64_t lease, DoneCb cb) {
  dispatch(
      std::move(cb),
      [&](Pending<DoneCb> *p) {
        return vt_->lease_revoke(
            self_, lease,
            [](void *user, flotilla_status st) {
              std::unique_ptr<Pending<DoneCb>> owned(static_cast<Pending<DoneCb> *>(user));
              owned->cb(result_of(st));
            },
            p);
      },
      [](DoneCb &c, StoreResult r) { c(std::move(r)); });
}

}  // namespace flotilla
