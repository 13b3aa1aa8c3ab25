#include "lease_table.h"

#include <algorithm>

namespace flotilla::store_local {

const LeaseTable::Lease *LeaseTable::find(int64_t id) const {
  auto it = leases_.find(id);
  return it == leases_.end() ? nullptr : &it->second;
}

void LeaseTable::grant(int64_t id, int64_t ttl_seconds, Clock::time_point now) {
  revoke(id);  // a replayed grant replaces nothing in practice; keeps the index sound
  Lease l;
  l.ttl_seconds = ttl_seconds;
  l.deadline = now + std::chrono::seconds(ttl_seconds);
  deadlines_.emplace(l.deadline, id);
  leases_.emplace(id, std::move(l));
  next_id_ = std::max(next_id_, id + 1);
}

bool LeaseTable::keepalive(int64_t id, Clock::time_point now) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return false;
  deadlines_.erase({it->second.deadline, id});
  it->second.deadline = now + std::chrono::seconds(it->second.ttl_seconds);
  deadlines_.emplace(it->second.deadline, id);
  return true;
}

std::set<std::string> LeaseTable::revoke(int64_t id) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return {};
  deadlines_.erase({it->second.deadline, id});
  std::set<std::string> keys = std::move(it->second.keys);
  leases_.erase(it);
  return keys;
}

void LeaseTable::attach(int64_t id, const std::string &key) {
  if (auto it = leases_.find(id); it != leases_.end()) it->second.keys.insert(key);
}

void LeaseTable::detach(int64_t id, const std::string &key) {
  if (auto it = leases_.find(id); it != leases_.end()) it->second.keys.erase(key);
}

std::vector<int64_t> LeaseTable::expired(Clock::time_point now) const {
  std::vector<int64_t> out;
  for (const auto &[deadline, id] : deadlines_) {
    if (deadline > now) break;
    out.push_back(id);
  }
  return out;
}

std::optional<Clock::time_point> LeaseTable::next_deadline() const {
  if (deadlines_.empty()) return std::nullopt;
  return deadlines_.begin()->first;
}

}  // namespace flotilla::store_local
