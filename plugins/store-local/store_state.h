// The store's state machine: the versioned key map plus the leases, and
// the rules of the etcd v3 model. Requests are first *planned* against the
// current state, which yields the log Record they would write (or an
// error), and then *applied*. Replay after a restart applies the same
// records, so the state after recovery is the state before the crash.
// No I/O, no clock of its own; loop thread only.
#pragma once

#include <flotilla/store.h>

#include <optional>
#include <string>
#include <vector>

#include "byte_codec.h"
#include "lease_table.h"
#include "mvcc_map.h"
#include "store_types.h"
#include "wal_record.h"

namespace flotilla::store_local {

// Enumerations arrive from C callers as any int, so they are kept as int
// until check_compare / check_ops accepted them (an out-of-range value in a
// C++ enum variable would be undefined behaviour).
struct Compare {
  std::string key;
  int target = FLOTILLA_CMP_VERSION;  // flotilla_compare_target
  int op = FLOTILLA_CMP_EQUAL;        // flotilla_compare_op
  int64_t number = 0;
  std::string value;
};

struct Op {
  int type = FLOTILLA_OP_PUT;  // flotilla_op_type
  std::string key;
  std::string value;
  int64_t lease = 0;
  bool prefix = false;
};

// Longest TTL a lease may ask for (etcd's limit).
constexpr int64_t kMaxLeaseTtlSeconds = 9'000'000'000;

class StoreState {
 public:
  const MvccMap &map() const { return map_; }
  const LeaseTable &leases() const { return leases_; }
  int64_t revision() const { return map_.revision(); }

  // Argument checks that need no state; throw StoreError(E_INVALID).
  static void check_key(std::string_view key, const char *what);
  static void check_compare(const Compare &c);
  // One branch of a transaction: valid ops, no key put twice, no key both
  // put and deleted (etcd refuses those too: their order would be moot).
  static void check_ops(const std::vector<Op> &ops, const char *branch);

  // Planning against the current state. They throw StoreError for a
  // request the state refuses (unknown lease: E_NOT_FOUND).
  Record plan_put(std::string key, std::string value, int64_t lease) const;
  // nullopt: nothing to delete (no revision is made).
  std::optional<Record> plan_delete(const KeyRange &range) const;
  struct TxnPlan {
    bool succeeded = false;
    std::optional<Record> record;  // nullopt: the chosen ops write nothing
  };
  TxnPlan plan_txn(const std::vector<Compare> &compares, const std::vector<Op> &success,
                   const std::vector<Op> &failure) const;
  Record plan_lease_grant(int64_t ttl_seconds) const;
  // Revoking deletes the lease's keys in one revision (none if it has none).
  Record plan_lease_revoke(int64_t lease) const;
  Record plan_compact(int64_t revision) const;

  // Apply a planned or replayed record; returns the events it made
  // (revision 0 and no events for records that change no key). Throws
  // StoreError(E_IO) when a replayed record does not follow the state.
  RevisionEvents apply(Record record, Clock::time_point now);

  // Automatic compaction: forget history before rev without a log record
  // (snapshots carry the compaction point; recovery trims again).
  void trim_history(int64_t rev) { map_.compact(rev); }

  // Restart a lease's TTL; false if unknown.
  bool keepalive(int64_t lease, Clock::time_point now) { return leases_.keepalive(lease, now); }

  // Snapshots: the whole retained state, history included. restore
  // replaces this state; leases start a fresh TTL at now. Throws
  // DecodeError.
  void encode_snapshot(ByteWriter &w) const;
  void restore_snapshot(ByteReader &r, Clock::time_point now);

 private:
  bool compare_holds(const Compare &c) const;
  void apply_changes(const std::vector<Change> &changes, int64_t revision, RevisionEvents &ev);

  MvccMap map_;
  LeaseTable leases_;
};

}  // namespace flotilla::store_local
