// The multi-version key map: every key keeps the versions it had since the
// compaction revision, so that reads at an older revision and watches that
// start in the past can be answered. Pure in-memory data structure; no I/O,
// no clock, single-threaded (the loop thread).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store_types.h"

namespace flotilla::store_local {

class MvccMap {
 public:
  // One version of a key. A tombstone records the deletion at mod_revision.
  struct Entry {
    int64_t mod_revision = 0;
    int64_t create_revision = 0;
    int64_t version = 0;
    int64_t lease = 0;
    uint32_t sub = 0;  // position of the change within its revision
    bool tombstone = false;
    std::string value;
  };
  using History = std::vector<Entry>;  // ascending mod_revision

  // The revision of the latest change; an empty store is at revision 1, as
  // etcd's is.
  int64_t revision() const { return revision_; }
  // Reads below this revision are refused; 0 until the first compaction.
  int64_t compact_revision() const { return compact_revision_; }
  size_t live_keys() const { return live_keys_; }

  // The current version of key, or nullptr when it does not exist.
  const Entry *latest(std::string_view key) const;

  // Keys that exist now within range, in order.
  std::vector<std::string> live_keys_in(const KeyRange &range) const;

  // The map as it was at revision rev (compact_revision() <= rev <=
  // revision(), checked by the caller), sorted by key. limit 0: no limit;
  // *more tells whether limit cut the result short.
  std::vector<KeyValue> range(const KeyRange &range, int64_t rev, int64_t limit, bool *more) const;

  // Every change within range with from <= revision <= to, grouped by
  // revision in ascending order (compact_revision() <= from, checked by the
  // caller).
  std::vector<RevisionEvents> events(const KeyRange &range, int64_t from, int64_t to) const;

  // Mutations, applied at revision rev (revision() + 1 for the first change
  // of a revision, then the same rev for the rest of it). sub orders the
  // changes within one revision. put returns the lease the key had before
  // (0: none or the key did not exist); remove returns false if the key
  // did not exist, and otherwise fills *old_lease.
  int64_t put(const std::string &key, std::string value, int64_t lease, int64_t rev, uint32_t sub);
  bool remove(const std::string &key, int64_t rev, uint32_t sub, int64_t *old_lease);
  // Move to revision rev after its changes are in (or without changes, for
  // a restored snapshot).
  void set_revision(int64_t rev) { revision_ = rev; }

  // Forget every version that no read at a revision >= rev can see. rev
  // must not exceed revision(); a rev at or below compact_revision() does
  // nothing.
  void compact(int64_t rev);

  // For snapshots: every key with its retained history, in key order.
  const std::map<std::string, History, std::less<>> &histories() const { return keys_; }
  // Restore a key's history (snapshot load); call finish_restore() after
  // the last key.
  void restore_key(std::string key, History history);
  void finish_restore(int64_t revision, int64_t compact_revision);

 private:
  // The entry that was current at rev, or nullptr.
  static const Entry *at_revision(const History &h, int64_t rev);
  // Drop what compaction at rev makes unreachable; true when a deletion
  // made exactly at rev had to stay.
  bool prune(const std::string &key, int64_t rev);
  template <class Fn>
  void for_each_in(const KeyRange &range, Fn fn) const;

  std::map<std::string, History, std::less<>> keys_;
  // (revision, key): at that revision the key got a newer version or was
  // deleted, so compaction at or past it can drop older versions. Ascending
  // revision; lets compaction touch only keys with something to drop.
  std::deque<std::pair<int64_t, std::string>> superseded_;
  int64_t revision_ = 1;
  int64_t compact_revision_ = 0;
  size_t live_keys_ = 0;
};

}  // namespace flotilla::store_local
