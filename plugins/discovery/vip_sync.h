// Keeps the kernel's VIP table equal to what the registry says, one batch
// per round: after each change of the view the plugin hands over the
// desired services; the difference to what the kernel holds becomes one
// nft batch (only the services that changed), applied off the loop
// (queue_work), then the UDP conntrack entries of removed backends are
// deleted. One batch is in flight at a time; changes that arrive meanwhile
// are folded into the next.
#pragma once

#include <flotilla/host.h>

#include <chrono>
#include <map>
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

  // [loop-thread] Replaces a leftover table and sets up the base chains:
  // blocking, at start only. False with a message when nftables refuses.
  bool start(std::string &error);
  // [loop-thread] The services as they should be now (by name).
  void want(std::map<std::string, VipService> desired);

  // For tests and metrics.
  uint64_t batches() const { return batches_; }
  double last_apply_ms() const { return last_apply_ms_; }
  bool idle() const { return !in_flight_ && desired_ == applied_; }

  struct Job;

 private:
  void schedule();
  static void work(void *user);
  static void after(void *user, flotilla_status status);

  const flotilla_host *host_;
  VipMap map_;
  std::map<std::string, VipService> desired_, applied_;
  bool in_flight_ = false;
  Job *job_ = nullptr;     // the job in flight
  uint64_t batches_ = 0;
  double last_apply_ms_ = 0;
  std::chrono::steady_clock::time_point changed_at_{};
};

}  // namespace flotilla::discovery
