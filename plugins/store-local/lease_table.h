// Leases: a TTL, a deadline, and the keys attached. Deadlines use the
// monotonic clock and are never persisted: a restored lease starts a fresh
// TTL, as etcd's leases do after a leader change. Loop thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::store_local {

using Clock = std::chrono::steady_clock;

class LeaseTable {
 public:
  struct Lease {
    int64_t ttl_seconds = 0;
    Clock::time_point deadline;
    std::set<std::string> keys;
  };

  bool contains(int64_t id) const { return leases_.count(id) != 0; }
  const Lease *find(int64_t id) const;
  const std::map<int64_t, Lease> &all() const { return leases_; }

  // The id the next grant gets; ids are never reused.
  int64_t next_id() const { return next_id_; }
  void set_next_id(int64_t id) { next_id_ = id; }

  void grant(int64_t id, int64_t ttl_seconds, Clock::time_point now);
  // Restart the TTL; false when the lease does not exist.
  bool keepalive(int64_t id, Clock::time_point now);
  // Remove the lease; returns the keys that were attached.
  std::set<std::string> revoke(int64_t id);

  void attach(int64_t id, const std::string &key);
  void detach(int64_t id, const std::string &key);

  // Leases whose deadline is at or before now, oldest deadline first.
  std::vector<int64_t> expired(Clock::time_point now) const;
  std::optional<Clock::time_point> next_deadline() const;

 private:
  std::map<int64_t, Lease> leases_;
  std::set<std::pair<Clock::time_point, int64_t>> deadlines_;
  int64_t next_id_ = 1;
};

}  // namespace flotilla::store_local
