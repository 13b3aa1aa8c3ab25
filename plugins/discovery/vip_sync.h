// Keeps the kernel's VIP table equal to what the registry says. The plugin
// names each service whose desired state changed (want); the elements that
// differ from what the kernel holds become one nft batch (vip_map.h: only
// set and map elements, never a rule per change), applied off the loop
// (queue_work), then the UDP conntrack entries of removed backends are
// deleted. One batch is in flight at a time; changes that arrive meanwhile
// are folded into the next. The table's set-up is the first batch, on the
// work queue too: nothing here blocks the loop.
#pragma once

#include <flotilla/host.h>

#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "vip_map.h"

namespace flotilla::discovery {

class VipSync {
 public:
  VipSync(const flotilla_host *host, std::string table, uint32_t mark);
  ~VipSync();
  VipSync(const VipSync &) = delete;
  VipSync &operator=(const VipSync &) = delete;

  // [loop-thread] Queues the table's set-up (a leftover table of the same
  // name is replaced) as the first batch. Services wanted before it is done
  // go in the same batch. A refused set-up is logged and tried again with
  // the next change.
  void start();
  // [loop-thread] The desired state of one service (nullopt: none).
  void want(const std::string &name, std::optional<VipService> s);
  // [loop-thread] The desired state of every service (after a full list).
  void want_all(std::map<std::string, VipService> desired);

  // For tests, the benchmark and metrics.
  uint64_t batches() const { return batches_; }
  double last_apply_ms() const { return last_apply_ms_; }
  bool ready() const { return set_up_; }
  bool idle() const { return !in_flight_ && dirty_.empty() && set_up_; }
  const std::string &last_error() const { return last_error_; }

  struct Job;

 private:
  void schedule();
  static void work(void *user);
  static void after(void *user, flotilla_status status);

  const flotilla_host *host_;
  VipMap map_;
  std::map<std::string, VipService> desired_, applied_;  // applied_: slot order
  std::set<std::string> dirty_;  // names whose desired_ may differ from applied_
  bool started_ = false, set_up_ = false, in_flight_ = false;
  Job *job_ = nullptr;  // the job in flight
  uint64_t batches_ = 0;
  double last_apply_ms_ = 0;
  std::string last_error_;
  std::chrono::steady_clock::time_point changed_at_{};
};

}  // namespace flotilla::discovery
