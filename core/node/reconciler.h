// The node reconciler: watches the allocations placed on this node and
// drives each one's tasks through the runtime plugin — create, start,
// restart by the job's restart policy, stop — and reports what really
// happened to /flotilla/alloc-status/<alloc>. Idempotent: after a crash it
// adopts the containers the runtime still knows (they outlive the daemon),
// takes exits that happened meanwhile into account and does nothing twice.
// [loop-thread] throughout.
#pragma once

#include <flotilla/network.h>
#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "plugin_host.h"
#include "node/runtime_client.h"
#include "store_client.h"

namespace flotilla {

class Reconciler {
 public:
  Reconciler(uv_loop_t *loop, StoreClient *store, RuntimeClient *runtime, PluginHost *plugins,
             std::string node_name);
  ~Reconciler();
  Reconciler(const Reconciler &) = delete;
  Reconciler &operator=(const Reconciler &) = delete;

  void start();
  // Stop watching and cancel pending restarts. Containers keep running.
  void stop();

  // [gc] (docs/config.md): the containers, and so the logs, of allocations
  // that ended (complete or failed) are removed after_ms after the node saw
  // them end, or sooner, oldest first, while more than max_terminal (0: no
  // limit) are kept. The records stay until their job is purged. May be
  // called again (SIGHUP reload).
  void set_gc(int64_t after_ms, int64_t max_terminal);

  // A task's pull progress is written to its status at most once per
  // kPullReportIntervalMs of this clock (ms); uv_now of the loop unless a
  // test sets another, to count writes without waiting.
  static constexpr uint64_t kPullReportIntervalMs = 1000;
  void set_progress_clock(std::function<uint64_t()> now_ms) { progress_clock_ = std::move(now_ms); }

  // Container id of an allocation's task: "<alloc>.<task>".
  static std::string container_id(const std::string &alloc, const std::string &task);

  struct Task;
  struct Alloc;

 private:
  // Read every allocation and watch from there; again (after a pause) when
  // the read fails or the watch ends (its start revision compacted, the
  // store lost): what changed meanwhile is found by comparing.
  void sync_allocs(bool first);
  void sync_allocs_later(bool first);
  void on_alloc_put(const nlohmann::json &record, int64_t mod_revision);
  void on_alloc_deleted(const std::string &id);
  void run_task(Alloc &a, Task &t);     // pulls the image as the task says, then create_task
  void create_task(Alloc &a, Task &t);  // security profile, create, start
  std::string add_security(nlohmann::json &task_json);
  const flotilla_network_v1 *network(void **self) const;
  bool wants_network(const Alloc &a) const;
  void attach_network(Alloc &a);
  void detach_network(const std::string &alloc, std::function<void()> then);
  void on_task_exit(const std::string &container, int64_t exit_code, int signal,
                    const std::string &finished_at);
  void task_failed_to_start(Alloc &a, Task &t, const std::string &why);
  void register_services(Alloc &a, Task &t);
  void deregister_services(Alloc &a);
  void apply_restart_policy(Alloc &a, Task &t);
  // discovery's "discovery.check_restart" (a service's check_restart
  // limit reached): the task is stopped, and its exit restarts it by the
  // job's [restart] policy.
  void on_check_restart(const std::string &alloc, const std::string &task,
                        const std::string &reason);
  void stop_alloc(Alloc &a, const std::string &why, bool purge);
  void collect_if_job_gone(Alloc &a);
  void gc_sweep();
  void schedule_gc_sweep(bool soon);
  void report(Alloc &a);
  std::string aggregate_status(const Alloc &a) const;
  Alloc *find_alloc(const std::string &id);

  uv_loop_t *loop_;
  StoreClient *store_;
  RuntimeClient *runtime_;
  PluginHost *plugins_;
  std::string node_;
  bool stopped_ = false;
  uint64_t exit_sub_ = 0;
  uint64_t check_restart_sub_ = 0;
  nlohmann::json containers_ = nlohmann::json::object();  // runtime list at start: id -> state
  nlohmann::json previous_ = nlohmann::json::object();    // alloc-status at start: id -> status
  std::map<std::string, std::unique_ptr<Alloc>> allocs_;
  std::unique_ptr<StoreClient::Watch> watch_;
  int64_t gc_after_ms_ = 4 * 3600 * 1000;
  int64_t gc_max_terminal_ = 50;
  uv_timer_t *gc_timer_ = nullptr;
  uv_timer_t *sync_timer_ = nullptr;
  bool sync_first_ = true;  // the pending sync is the first one
  std::function<uint64_t()> progress_clock_;  // empty: uv_now(loop_)
  // Plugin callbacks that come after the reconciler is gone find false.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace flotilla
