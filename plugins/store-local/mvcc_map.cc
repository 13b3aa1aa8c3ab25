#include "mvcc_map.h"

#include <algorithm>
#include <tuple>

namespace flotilla::store_local {

template <class Fn>
void MvccMap::for_each_in(const KeyRange &range, Fn fn) const {
  for (auto it = keys_.lower_bound(range.begin); it != keys_.end(); ++it) {
    if (!range.unbounded && it->first >= range.end) break;
    if (!fn(it->first, it->second)) break;
  }
}

const MvccMap::Entry *MvccMap::at_revision(const History &h, int64_t rev) {
  auto it = std::upper_bound(h.begin(), h.end(), rev,
                             [](int64_t r, const Entry &e) { return r < e.mod_revision; });
  if (it == h.begin()) return nullptr;
  --it;
  return it->tombstone ? nullptr : &*it;
}

const MvccMap::Entry *MvccMap::latest(std::string_view key) const {
  auto it = keys_.find(key);
  if (it == keys_.end() || it->second.empty() || it->second.back().tombstone) return nullptr;
  return &it->second.back();
}

std::vector<std::string> MvccMap::live_keys_in(const KeyRange &range) const {
  std::vector<std::string> out;
  for_each_in(range, [&](const std::string &key, const History &h) {
    if (!h.empty() && !h.back().tombstone) out.push_back(key);
    return true;
  });
  return out;
}

std::vector<KeyValue> MvccMap::range(const KeyRange &range, int64_t rev, int64_t limit,
                                     bool *more) const {
  std::vector<KeyValue> out;
  bool cut = false;
  for_each_in(range, [&](const std::string &key, const History &h) {
    const Entry *e = at_revision(h, rev);
    if (!e) return true;
    if (limit > 0 && static_cast<int64_t>(out.size()) == limit) {
      cut = true;
      return false;
    }
    out.push_back(
        KeyValue{key, e->value, e->create_revision, e->mod_revision, e->version, e->lease});
    return true;
  });
  if (more) *more = cut;
  return out;
}

std::vector<RevisionEvents> MvccMap::events(const KeyRange &range, int64_t from, int64_t to) const {
  struct Found {
    int64_t rev;
    uint32_t sub;
    const std::string *key;
    const Entry *entry;
  };
  std::vector<Found> found;
  for_each_in(range, [&](const std::string &key, const History &h) {
    auto it = std::lower_bound(h.begin(), h.end(), from,
                               [](const Entry &e, int64_t r) { return e.mod_revision < r; });
    for (; it != h.end() && it->mod_revision <= to; ++it)
      found.push_back(Found{it->mod_revision, it->sub, &key, &*it});
    return true;
  });
  std::sort(found.begin(), found.end(), [](const Found &a, const Found &b) {
    return std::tie(a.rev, a.sub) < std::tie(b.rev, b.sub);
  });
  std::vector<RevisionEvents> out;
  for (const Found &f : found) {
    if (out.empty() || out.back().revision != f.rev) out.push_back(RevisionEvents{f.rev, {}});
    Event ev;
    ev.deleted = f.entry->tombstone;
    ev.kv.key = *f.key;
    ev.kv.mod_revision = f.rev;
    if (!ev.deleted) {
      ev.kv.value = f.entry->value;
      ev.kv.create_revision = f.entry->create_revision;
      ev.kv.version = f.entry->version;
      ev.kv.lease = f.entry->lease;
    }
    out.back().events.push_back(std::move(ev));
  }
  return out;
}

int64_t MvccMap::put(const std::string &key, std::string value, int64_t lease, int64_t rev,
                     uint32_t sub) {
  auto [it, inserted] = keys_.try_emplace(key);
  History &h = it->second;
  Entry e;
  e.mod_revision = rev;
  e.lease = lease;
  e.sub = sub;
  e.value = std::move(value);
  int64_t old_lease = 0;
  if (!h.empty() && !h.back().tombstone) {
    e.create_revision = h.back().create_revision;
    e.version = h.back().version + 1;
    old_lease = h.back().lease;
  } else {
    e.create_revision = rev;
    e.version = 1;
    ++live_keys_;
  }
  if (!h.empty()) superseded_.emplace_back(rev, key);
  h.push_back(std::move(e));
  return old_lease;
}

bool MvccMap::remove(const std::string &key, int64_t rev, uint32_t sub, int64_t *old_lease) {
  auto it = keys_.find(key);
  if (it == keys_.end() || it->second.empty() || it->second.back().tombstone) return false;
  if (old_lease) *old_lease = it->second.back().lease;
  Entry e;
  e.mod_revision = rev;
  e.sub = sub;
  e.tombstone = true;
  it->second.push_back(std::move(e));
  superseded_.emplace_back(rev, key);
  --live_keys_;
  return true;
}

bool MvccMap::prune(const std::string &key, int64_t rev) {
  auto it = keys_.find(key);
  if (it == keys_.end()) return false;
  History &h = it->second;
  // Keep the version current at rev (reads at rev need it) and all newer
  // ones. A deletion current at rev is dropped too when it happened before
  // rev; one made exactly at rev is kept, because a watch may start at rev
  // and must see it.
  auto keep = std::upper_bound(h.begin(), h.end(), rev,
                               [](int64_t r, const Entry &e) { return r < e.mod_revision; });
  if (keep == h.begin()) return false;
  --keep;
  bool kept_tombstone = false;
  if (keep->tombstone) {
    if (keep->mod_revision < rev)
      ++keep;
    else
      kept_tombstone = true;
  }
  h.erase(h.begin(), keep);
  if (h.empty()) keys_.erase(it);
  return kept_tombstone;
}

void MvccMap::compact(int64_t rev) {
  if (rev <= compact_revision_) return;
  std::vector<std::string> revisit;
  while (!superseded_.empty() && superseded_.front().first <= rev) {
    if (prune(superseded_.front().second, rev)) revisit.push_back(superseded_.front().second);
    superseded_.pop_front();
  }
  // A deletion kept because it sits exactly at rev goes at the next
  // compaction; everything left in the queue is at rev + 1 or later.
  for (auto &key : revisit) superseded_.emplace_front(rev + 1, std::move(key));
  compact_revision_ = rev;
}

void MvccMap::restore_key(std::string key, History history) {
  if (history.empty()) return;
  if (!history.back().tombstone) ++live_keys_;
  for (size_t i = 0; i < history.size(); ++i)
    if (i > 0 || history[i].tombstone) superseded_.emplace_back(history[i].mod_revision, key);
  keys_.insert_or_assign(std::move(key), std::move(history));
}

void MvccMap::finish_restore(int64_t revision, int64_t compact_revision) {
  std::stable_sort(superseded_.begin(), superseded_.end(),
                   [](const auto &a, const auto &b) { return a.first < b.first; });
  revision_ = revision;
  compact_revision_ = compact_revision;
}

}  // namespace flotilla::store_local
