#include "store_state.h"

#include <set>

namespace flotilla::store_local {

namespace {

StoreError invalid(const std::string &message) {
  return StoreError(FLOTILLA_E_INVALID, message);
}

// Printable form of a key for messages: bytes outside printable ASCII
// become \xNN, and long keys are cut.
std::string show(std::string_view key) {
  static const char *hex = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < key.size() && i < 80; ++i) {
    unsigned char c = static_cast<unsigned char>(key[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (key.size() > 80) out += "...";
  return out + "\"";
}

}  // namespace

void StoreState::check_key(std::string_view key, const char *what) {
  if (key.empty())
    throw invalid(std::string(what) + ": the key is empty; keys must be 1 to " +
                  std::to_string(kMaxKeyBytes) + " bytes");
  if (key.size() > kMaxKeyBytes)
    throw invalid(std::string(what) + ": the key is " + std::to_string(key.size()) +
                  " bytes; keys must be at most " + std::to_string(kMaxKeyBytes) + " bytes");
}

void StoreState::check_compare(const Compare &c) {
  check_key(c.key, "txn compare");
  if (c.target < FLOTILLA_CMP_VERSION || c.target > FLOTILLA_CMP_LEASE)
    throw invalid("txn compare on " + show(c.key) + ": unknown target " + std::to_string(c.target) +
                  "; use VERSION, CREATE, MOD, VALUE or LEASE");
  if (c.op < FLOTILLA_CMP_EQUAL || c.op > FLOTILLA_CMP_GREATER)
    throw invalid("txn compare on " + show(c.key) + ": unknown operator " + std::to_string(c.op) +
                  "; use EQUAL, NOT_EQUAL, LESS or GREATER");
}

void StoreState::check_ops(const std::vector<Op> &ops, const char *branch) {
  std::set<std::string_view> puts;
  for (const Op &op : ops) {
    if (op.type == FLOTILLA_OP_PUT) {
      check_key(op.key, branch);
      if (op.lease < 0)
        throw invalid(std::string(branch) + ": negative lease id for " + show(op.key));
      if (!puts.insert(op.key).second)
        throw invalid(std::string(branch) + ": key " + show(op.key) +
                      " is put twice in one transaction; put it once");
    } else if (op.type == FLOTILLA_OP_DELETE) {
      if (!op.prefix)
        check_key(op.key, branch);
      else if (op.key.size() > kMaxKeyBytes)
        check_key(op.key, branch);
    } else {
      throw invalid(std::string(branch) + ": unknown op type " + std::to_string(op.type) +
                    "; use PUT or DELETE");
    }
  }
  for (const Op &op : ops) {
    if (op.type != FLOTILLA_OP_DELETE) continue;
    KeyRange r = op.prefix ? KeyRange::prefix(op.key) : KeyRange::exact(op.key);
    for (std::string_view k : puts)
      if (r.contains(k))
        throw invalid(std::string(branch) + ": key " + show(k) +
                      " is both put and deleted in one transaction; keep one of the two");
  }
}

Record StoreState::plan_put(std::string key, std::string value, int64_t lease) const {
  if (lease != 0 && !leases_.contains(lease))
    throw StoreError(FLOTILLA_E_NOT_FOUND, "put " + show(key) + ": lease " + std::to_string(lease) +
                                               " does not exist (expired or revoked?); "
                                               "grant a new lease");
  Record r;
  r.type = Record::Type::changes;
  r.revision = revision() + 1;
  r.changes.push_back(Change{false, std::move(key), std::move(value), lease});
  return r;
}

std::optional<Record> StoreState::plan_delete(const KeyRange &range) const {
  std::vector<std::string> keys = map_.live_keys_in(range);
  if (keys.empty()) return std::nullopt;
  Record r;
  r.type = Record::Type::changes;
  r.revision = revision() + 1;
  r.changes.reserve(keys.size());
  for (auto &k : keys) r.changes.push_back(Change{true, std::move(k), {}, 0});
  return r;
}

bool StoreState::compare_holds(const Compare &c) const {
  const MvccMap::Entry *e = map_.latest(c.key);
  int cmp = 0;
  if (c.target == FLOTILLA_CMP_VALUE) {
    std::string_view actual = e ? std::string_view(e->value) : std::string_view();
    int r = actual.compare(c.value);
    cmp = r < 0 ? -1 : r > 0 ? 1 : 0;
  } else {
    int64_t actual = 0;
    if (e) {
      switch (c.target) {
        case FLOTILLA_CMP_VERSION:
          actual = e->version;
          break;
        case FLOTILLA_CMP_CREATE:
          actual = e->create_revision;
          break;
        case FLOTILLA_CMP_MOD:
          actual = e->mod_revision;
          break;
        case FLOTILLA_CMP_LEASE:
          actual = e->lease;
          break;
        case FLOTILLA_CMP_VALUE:
          break;
      }
    }
    cmp = actual < c.number ? -1 : actual > c.number ? 1 : 0;
  }
  switch (c.op) {
    case FLOTILLA_CMP_EQUAL:
      return cmp == 0;
    case FLOTILLA_CMP_NOT_EQUAL:
      return cmp != 0;
    case FLOTILLA_CMP_LESS:
      return cmp < 0;
    case FLOTILLA_CMP_GREATER:
      return cmp > 0;
  }
  return false;
}

StoreState::TxnPlan StoreState::plan_txn(const std::vector<Compare> &compares,
                                         const std::vector<Op> &success,
                                         const std::vector<Op> &failure) const {
  TxnPlan plan;
  plan.succeeded = true;
  for (const Compare &c : compares)
    if (!compare_holds(c)) {
      plan.succeeded = false;
      break;
    }
  const std::vector<Op> &ops = plan.succeeded ? success : failure;
  for (const Op &op : ops)
    if (op.type == FLOTILLA_OP_PUT && op.lease != 0 && !leases_.contains(op.lease))
      throw StoreError(FLOTILLA_E_NOT_FOUND,
                       "txn put " + show(op.key) + ": lease " + std::to_string(op.lease) +
                           " does not exist (expired or revoked?); nothing was applied");
  Record r;
  r.type = Record::Type::changes;
  r.revision = revision() + 1;
  std::set<std::string> removed;
  for (const Op &op : ops) {
    if (op.type == FLOTILLA_OP_PUT) {
      r.changes.push_back(Change{false, op.key, op.value, op.lease});
    } else {
      KeyRange range = op.prefix ? KeyRange::prefix(op.key) : KeyRange::exact(op.key);
      for (auto &k : map_.live_keys_in(range))
        if (removed.insert(k).second) r.changes.push_back(Change{true, std::move(k), {}, 0});
    }
  }
  if (!r.changes.empty()) plan.record = std::move(r);
  return plan;
}

Record StoreState::plan_lease_grant(int64_t ttl_seconds) const {
  if (ttl_seconds <= 0 || ttl_seconds > kMaxLeaseTtlSeconds)
    throw invalid("lease_grant: TTL " + std::to_string(ttl_seconds) +
                  " s is out of range; use 1 to " + std::to_string(kMaxLeaseTtlSeconds) + " s");
  Record r;
  r.type = Record::Type::lease_grant;
  r.lease = leases_.next_id();
  r.ttl_seconds = ttl_seconds;
  return r;
}

Record StoreState::plan_lease_revoke(int64_t lease) const {
  const LeaseTable::Lease *l = leases_.find(lease);
  if (!l)
    throw StoreError(FLOTILLA_E_NOT_FOUND,
                     "lease " + std::to_string(lease) + " does not exist (expired or revoked?)");
  Record r;
  r.type = Record::Type::lease_revoke;
  r.lease = lease;
  if (!l->keys.empty()) {
    r.revision = revision() + 1;
    for (const std::string &k : l->keys) r.changes.push_back(Change{true, k, {}, 0});
  }
  return r;
}

Record StoreState::plan_compact(int64_t rev) const {
  if (rev <= 0) throw invalid("compact: revision " + std::to_string(rev) + " must be positive");
  if (rev > revision())
    throw invalid("compact: revision " + std::to_string(rev) + " is in the future (current " +
                  std::to_string(revision()) + ")");
  if (rev <= map_.compact_revision())
    throw StoreError(FLOTILLA_E_COMPACTED, "compact: revision " + std::to_string(rev) +
                                               " is already compacted (compacted up to " +
                                               std::to_string(map_.compact_revision()) + ")");
  Record r;
  r.type = Record::Type::compact;
  r.revision = rev;
  return r;
}

void StoreState::apply_changes(const std::vector<Change> &changes, int64_t rev,
                               RevisionEvents &ev) {
  if (rev != revision() + 1)
    throw StoreError(FLOTILLA_E_IO, "log record for revision " + std::to_string(rev) +
                                        " does not follow revision " + std::to_string(revision()));
  ev.revision = rev;
  ev.events.reserve(changes.size());
  uint32_t sub = 0;
  for (const Change &c : changes) {
    Event e;
    e.kv.key = c.key;
    e.kv.mod_revision = rev;
    if (c.remove) {
      int64_t old_lease = 0;
      if (!map_.remove(c.key, rev, sub, &old_lease))
        throw StoreError(FLOTILLA_E_IO, "log record for revision " + std::to_string(rev) +
                                            " deletes " + show(c.key) + ", which does not exist");
      if (old_lease) leases_.detach(old_lease, c.key);
      e.deleted = true;
    } else {
      int64_t old_lease = map_.put(c.key, c.value, c.lease, rev, sub);
      if (old_lease && old_lease != c.lease) leases_.detach(old_lease, c.key);
      if (c.lease) leases_.attach(c.lease, c.key);
      const MvccMap::Entry *now = map_.latest(c.key);
      e.kv.value = c.value;
      e.kv.create_revision = now->create_revision;
      e.kv.version = now->version;
      e.kv.lease = c.lease;
    }
    ev.events.push_back(std::move(e));
    ++sub;
  }
  map_.set_revision(rev);
}

RevisionEvents StoreState::apply(Record record, Clock::time_point now) {
  RevisionEvents ev;
  switch (record.type) {
    case Record::Type::changes:
      apply_changes(record.changes, record.revision, ev);
      break;
    case Record::Type::lease_grant:
      if (record.lease <= 0 || record.ttl_seconds <= 0)
        throw StoreError(FLOTILLA_E_IO, "log record grants an invalid lease");
      leases_.grant(record.lease, record.ttl_seconds, now);
      break;
    case Record::Type::lease_revoke:
      leases_.revoke(record.lease);
      if (record.revision != 0) apply_changes(record.changes, record.revision, ev);
      break;
    case Record::Type::compact:
      if (record.revision > revision())
        throw StoreError(FLOTILLA_E_IO, "log record compacts revision " +
                                            std::to_string(record.revision) +
                                            ", which is in the future");
      map_.compact(record.revision);
      break;
  }
  return ev;
}

// Snapshot body (the file framing is in local_store.cc):
//   i64 revision, i64 compact_revision, i64 next_lease_id
//   u64 n_leases, n x (i64 id, i64 ttl_seconds)
//   u64 n_keys, n x (bytes key, u64 n_entries,
//                    n x (i64 mod, i64 create, i64 version, i64 lease, u32 sub,
//                         u8 tombstone, bytes value))
void StoreState::encode_snapshot(ByteWriter &w) const {
  w.i64(map_.revision());
  w.i64(map_.compact_revision());
  w.i64(leases_.next_id());
  w.u64(leases_.all().size());
  for (const auto &[id, l] : leases_.all()) {
    w.i64(id);
    w.i64(l.ttl_seconds);
  }
  w.u64(map_.histories().size());
  for (const auto &[key, history] : map_.histories()) {
    w.bytes(key);
    w.u64(history.size());
    for (const MvccMap::Entry &e : history) {
      w.i64(e.mod_revision);
      w.i64(e.create_revision);
      w.i64(e.version);
      w.i64(e.lease);
      w.u32(e.sub);
      w.u8(e.tombstone ? 1 : 0);
      w.bytes(e.value);
    }
  }
}

void StoreState::restore_snapshot(ByteReader &r, Clock::time_point now) {
  MvccMap map;
  LeaseTable leases;
  const int64_t revision = r.i64();
  const int64_t compact_revision = r.i64();
  const int64_t next_lease = r.i64();
  if (revision < 1 || compact_revision < 0 || compact_revision > revision || next_lease < 1)
    throw DecodeError("snapshot header out of range");
  uint64_t n_leases = r.count(16);
  for (uint64_t i = 0; i < n_leases; ++i) {
    int64_t id = r.i64();
    int64_t ttl = r.i64();
    if (id <= 0 || ttl <= 0) throw DecodeError("snapshot holds an invalid lease");
    leases.grant(id, ttl, now);
  }
  leases.set_next_id(std::max(leases.next_id(), next_lease));
  uint64_t n_keys = r.count(12);
  for (uint64_t i = 0; i < n_keys; ++i) {
    std::string key(r.bytes());
    uint64_t n = r.count(41);  // 4 x i64, u32, u8, empty value
    MvccMap::History h;
    h.reserve(n);
    for (uint64_t j = 0; j < n; ++j) {
      MvccMap::Entry e;
      e.mod_revision = r.i64();
      e.create_revision = r.i64();
      e.version = r.i64();
      e.lease = r.i64();
      e.sub = r.u32();
      e.tombstone = r.u8() != 0;
      e.value = r.bytes();
      if (e.mod_revision < 1 || e.mod_revision > revision ||
          (!h.empty() && e.mod_revision <= h.back().mod_revision))
        throw DecodeError("snapshot history of a key is out of order");
      h.push_back(std::move(e));
    }
    if (!h.empty() && !h.back().tombstone && h.back().lease) leases.attach(h.back().lease, key);
    map.restore_key(std::move(key), std::move(h));
  }
  if (!r.done()) throw DecodeError("trailing bytes after the snapshot");
  map.finish_restore(revision, compact_revision);
  map_ = std::move(map);
  leases_ = std::move(leases);
}

}  // namespace flotilla::store_local
