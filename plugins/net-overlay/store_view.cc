#include "store_view.h"

#include <memory>
#include <optional>

namespace flotilla::overlay {

void StoreView::done_one() {
  if (--pending_ == 0 && on_idle) {
    auto idle = std::move(on_idle);
    idle();  // may delete this
  }
}

flotilla_status StoreView::list(const std::string &prefix, RangeCb cb) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = prefix.data();
  r.key_len = prefix.size();
  r.prefix = 1;
  auto *ctx = new Call<RangeCb>{this, std::move(cb)};
  flotilla_status st = vt_->range(
      self_, &r, 0, 0,
      [](void *user, flotilla_status status, const flotilla_kv *kvs, size_t n, int64_t rev, int) {
        std::unique_ptr<Call<RangeCb>> c(static_cast<Call<RangeCb> *>(user));
        std::vector<Kv> out;
        if (status == FLOTILLA_OK)
          for (size_t i = 0; i < n; ++i)
            out.push_back({std::string(kvs[i].key, kvs[i].key_len),
                           std::string(kvs[i].value, kvs[i].value_len), kvs[i].mod_revision,
                           kvs[i].version});
        StoreView *view = c->view;
        c->cb(status, std::move(out), rev);
        c.reset();
        view->done_one();
      },
      ctx);
  if (st != FLOTILLA_OK)
    delete ctx;
  else
    pending_++;
  return st;
}

flotilla_status StoreView::txn(const std::vector<TxnOp> &ops, TxnCb cb) {
  std::vector<flotilla_compare> cmps;
  std::vector<flotilla_op> puts;
  for (const auto &o : ops) {
    if (o.expect_version >= 0) {
      flotilla_compare c{};
      c.struct_size = sizeof c;
      c.key = o.key.data();
      c.key_len = o.key.size();
      c.target = FLOTILLA_CMP_VERSION;
      c.op = FLOTILLA_CMP_EQUAL;
      c.number = o.expect_version;
      cmps.push_back(c);
    }
    flotilla_op p{};
    p.struct_size = sizeof p;
    p.key = o.key.data();
    p.key_len = o.key.size();
    if (o.value) {
      p.type = FLOTILLA_OP_PUT;
      p.value = o.value->data();
      p.value_len = o.value->size();
      p.lease = o.lease;
    } else {
      p.type = FLOTILLA_OP_DELETE;
    }
    puts.push_back(p);
  }
  auto *ctx = new Call<TxnCb>{this, std::move(cb)};
  flotilla_status st = vt_->txn(
      self_, cmps.data(), cmps.size(), puts.data(), puts.size(), nullptr, 0,
      [](void *user, flotilla_status status, int succeeded, int64_t) {
        std::unique_ptr<Call<TxnCb>> c(static_cast<Call<TxnCb> *>(user));
        StoreView *view = c->view;
        c->cb(status, succeeded != 0);
        c.reset();
        view->done_one();
      },
      ctx);
  if (st != FLOTILLA_OK)
    delete ctx;
  else
    pending_++;
  return st;
}

flotilla_status StoreView::watch(const std::string &prefix, int64_t start_revision, WatchCb cb,
                                 flotilla_store_watch_id *id) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = prefix.data();
  r.key_len = prefix.size();
  r.prefix = 1;
  // The callback lives as long as the watch: freed when it ends (non-OK).
  auto *ctx = new WatchCb(std::move(cb));
  flotilla_status st = vt_->watch(
      self_, &r, start_revision,
      [](void *user, flotilla_status status, const flotilla_watch_event *evs, size_t n, int64_t) {
        auto *c = static_cast<WatchCb *>(user);
        (*c)(status, evs, n);
        if (status != FLOTILLA_OK) delete c;
      },
      ctx, id);
  if (st != FLOTILLA_OK) delete ctx;
  return st;
}

flotilla_status StoreView::lease_grant(int64_t ttl_seconds, LeaseCb cb) {
  auto *ctx = new Call<LeaseCb>{this, std::move(cb)};
  flotilla_status st = vt_->lease_grant(
      self_, ttl_seconds,
      [](void *user, flotilla_status status, flotilla_lease_id lease, int64_t) {
        std::unique_ptr<Call<LeaseCb>> c(static_cast<Call<LeaseCb> *>(user));
        StoreView *view = c->view;
        c->cb(status, lease);
        c.reset();
        view->done_one();
      },
      ctx);
  if (st != FLOTILLA_OK)
    delete ctx;
  else
    pending_++;
  return st;
}

flotilla_status StoreView::lease_keepalive(flotilla_lease_id lease, LeaseCb cb) {
  auto *ctx = new Call<LeaseCb>{this, std::move(cb)};
  flotilla_status st = vt_->lease_keepalive(
      self_, lease,
      [](void *user, flotilla_status status, flotilla_lease_id id, int64_t) {
        std::unique_ptr<Call<LeaseCb>> c(static_cast<Call<LeaseCb> *>(user));
        StoreView *view = c->view;
        c->cb(status, id);
        c.reset();
        view->done_one();
      },
      ctx);
  if (st != FLOTILLA_OK)
    delete ctx;
  else
    pending_++;
  return st;
}

flotilla_status StoreView::lease_revoke(flotilla_lease_id lease,
                                        std::function<void(flotilla_status)> cb) {
  using DoneCb = std::function<void(flotilla_status)>;
  auto *ctx = new Call<DoneCb>{this, std::move(cb)};
  flotilla_status st = vt_->lease_revoke(
      self_, lease,
      [](void *user, flotilla_status status) {
        std::unique_ptr<Call<DoneCb>> c(static_cast<Call<DoneCb> *>(user));
        StoreView *view = c->view;
        c->cb(status);
        c.reset();
        view->done_one();
      },
      ctx);
  if (st != FLOTILLA_OK)
    delete ctx;
  else
    pending_++;
  return st;
}

void StoreView::cancel(flotilla_store_watch_id id) { vt_->watch_cancel(self_, id); }

}  // namespace flotilla::overlay
