#include "store_view.h"

#include <memory>
#include <optional>

namespace flotilla::overlay {

StoreView::~StoreView() {
  for (auto &[raw, w] : watches_) vt_->watch_cancel(self_, w->id);
}

void StoreView::done_one() {
  if (--pending_ == 0 && on_idle) {
    auto idle = std::move(on_idle);
    idle();  // may delete this
  }
}

template <typename Cb, typename Issue>
flotilla_status StoreView::request(Cb cb, Issue issue) {
  auto call = std::make_unique<Call<Cb>>(Call<Cb>{this, std::move(cb)});
  flotilla_status st = issue(static_cast<void *>(call.get()));
  if (st == FLOTILLA_OK) {
    call.release();  // finish() frees it
    pending_++;
  }
  return st;
}

template <typename Cb, typename... Args>
void StoreView::finish(void *user, Args &&...args) {
  std::unique_ptr<Call<Cb>> c(static_cast<Call<Cb> *>(user));
  StoreView *view = c->view;
  c->cb(std::forward<Args>(args)...);
  c.reset();
  view->done_one();
}

flotilla_status StoreView::list(const std::string &prefix, RangeCb cb) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = prefix.data();
  r.key_len = prefix.size();
  r.prefix = 1;
  return request(std::move(cb), [&](void *user) {
    return vt_->range(
        self_, &r, 0, 0,
        [](void *u, flotilla_status status, const flotilla_kv *kvs, size_t n, int64_t rev, int) {
          std::vector<Kv> out;
          if (status == FLOTILLA_OK)
            for (size_t i = 0; i < n; ++i)
              out.push_back({std::string(kvs[i].key, kvs[i].key_len),
                             std::string(kvs[i].value, kvs[i].value_len), kvs[i].mod_revision,
                             kvs[i].version});
          finish<RangeCb>(u, status, std::move(out), rev);
        },
        user);
  });
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
  return request(std::move(cb), [&](void *user) {
    return vt_->txn(
        self_, cmps.data(), cmps.size(), puts.data(), puts.size(), nullptr, 0,
        [](void *u, flotilla_status status, int succeeded, int64_t) {
          finish<TxnCb>(u, status, succeeded != 0);
        },
        user);
  });
}

void StoreView::on_watch(void *user, flotilla_status status, const flotilla_watch_event *evs,
                         size_t n, int64_t) {
  // No callback runs after watch_cancel or after the ending one, and the
  // context is freed only then: w is alive.
  auto *w = static_cast<Watch *>(user);
  StoreView *view = w->view;
  if (status != FLOTILLA_OK) {
    // The watch ended: it goes once its callback ran.
    std::unique_ptr<Watch> last = std::move(view->watches_[w]);
    view->watches_.erase(w);
    last->cb(status, evs, n);
    return;
  }
  w->running = true;
  w->cb(status, evs, n);
  w->running = false;
  if (w->cancelled) view->watches_.erase(w);
}

flotilla_status StoreView::watch(const std::string &prefix, int64_t start_revision, WatchCb cb,
                                 flotilla_store_watch_id *id) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = prefix.data();
  r.key_len = prefix.size();
  r.prefix = 1;
  auto w = std::make_unique<Watch>(Watch{this, std::move(cb)});
  Watch *raw = w.get();
  watches_[raw] = std::move(w);
  flotilla_store_watch_id got = 0;
  flotilla_status st = vt_->watch(self_, &r, start_revision, &StoreView::on_watch, raw, &got);
  if (st != FLOTILLA_OK) {
    watches_.erase(raw);
    return st;
  }
  raw->id = got;
  if (id) *id = got;
  return st;
}

void StoreView::cancel(flotilla_store_watch_id id) {
  vt_->watch_cancel(self_, id);
  // No callback of it runs after watch_cancel (store.h): its context goes
  // now, or once its callback returns when cancelled from inside it.
  for (auto it = watches_.begin(); it != watches_.end(); ++it) {
    if (it->second->id != id) continue;
    if (it->second->running)
      it->second->cancelled = true;
    else
      watches_.erase(it);
    return;
  }
}

flotilla_status StoreView::lease_grant(int64_t ttl_seconds, LeaseCb cb) {
  return request(std::move(cb), [&](void *user) {
    return vt_->lease_grant(
        self_, ttl_seconds,
        [](void *u, flotilla_status status, flotilla_lease_id lease, int64_t) {
          finish<LeaseCb>(u, status, lease);
        },
        user);
  });
}

flotilla_status StoreView::lease_keepalive(flotilla_lease_id lease, LeaseCb cb) {
  return request(std::move(cb), [&](void *user) {
    return vt_->lease_keepalive(
        self_, lease,
        [](void *u, flotilla_status status, flotilla_lease_id id, int64_t) {
          finish<LeaseCb>(u, status, id);
        },
        user);
  });
}

flotilla_status StoreView::lease_revoke(flotilla_lease_id lease,
                                        std::function<void(flotilla_status)> cb) {
  using DoneCb = std::function<void(flotilla_status)>;
  return request(std::move(cb), [&](void *user) {
    return vt_->lease_revoke(
        self_, lease, [](void *u, flotilla_status status) { finish<DoneCb>(u, status); }, user);
  });
}

}  // namespace flotilla::overlay
