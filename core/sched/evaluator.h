// The scheduler driver: on the node that holds the scheduler leadership
// (/flotilla/leader/scheduler, under a lease), turn jobs into allocations.
// It reads jobs, nodes and allocations at one store revision, asks the
// flotilla.scheduler/1 plugin where missing allocations go, and writes the
// changes in compare-and-swap transactions within etcd's limits, each of
// which fails if its jobs, the leadership or the placement epoch changed
// meanwhile (evaluator.cc, write_chunks). [loop-thread] throughout.
#pragma once

#include <flotilla/scheduler.h>
#include <uv.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "plugin_host.h"
#include "store_client.h"

namespace flotilla {

class Evaluator {
 public:
  // node_lease_ttl_ms: the node lease ([cluster] lease_ttl): a new leader,
  // or one whose store was away, judges no node lost until one of it has
  // passed. leader_lease_ttl_ms: the leadership lease ([cluster]
  // leader_lease_ttl, at most the node lease), renewed every third of it.
  Evaluator(uv_loop_t *loop, StoreClient *store, PluginHost *plugins, std::string node_name,
            int64_t node_lease_ttl_ms = 10000, int64_t leader_lease_ttl_ms = 5000);
  ~Evaluator();
  Evaluator(const Evaluator &) = delete;
  Evaluator &operator=(const Evaluator &) = delete;

  void start();
  // Give up leadership (revoke the lease) and stop; done runs after.
  void stop(std::function<void()> done);

  bool is_leader() const { return leader_; }

  // The pure part, exposed for tests: given the cluster as JSON objects
  // keyed by name/id, the changes one evaluation makes. Deterministic
  // except for new allocation ids, which come from `new_id`.
  struct Plan {
    // New records, without "spec": each one's is specs[job], added when
    // it is written (copying a spec into 100,000 records is most of the
    // cost of planning a job that large).
    std::vector<nlohmann::json> new_allocs;
    nlohmann::json specs = nlohmann::json::object();  // job -> spec (no mod_revision)
    std::vector<nlohmann::json> updated_allocs;     // full records with desired_status changed
    nlohmann::json failures = nlohmann::json::object();  // job -> explanation
    // When a failed allocation's reschedule delay ends (ms since the epoch),
    // or 0: evaluate again then.
    int64_t next_evaluation_ms = 0;
    // Job specs to write back (auto_revert of a failed rolling update).
    std::vector<nlohmann::json> job_updates;
    // Allocations on nodes without a record were left alone because
    // judge_lost_nodes was false: evaluate again once nodes may be judged.
    bool lost_nodes_unjudged = false;
  };
  // now_ms: wall clock in ms since the epoch (-1: now), for reschedule delays.
  // judge_lost_nodes false: a node without a record is not (yet) taken for
  // lost; its allocations stay as they are (a new leader, or one whose store
  // was away, first lets every node renew its lease).
  static Plan plan(const nlohmann::json &jobs, const nlohmann::json &nodes,
                   const nlohmann::json &allocs, const nlohmann::json &statuses,
                   const flotilla_scheduler_v1 *scheduler, void *scheduler_self,
                   const std::function<std::string(const std::string &job, int index)> &new_id,
                   int64_t now_ms = -1, bool judge_lost_nodes = true);
  // Whether a change under /flotilla/alloc-status/ wakes an evaluation: not
  // a report of "pending", which plans as no report does (a test holds
  // plan() to that).
  static bool status_wakes_evaluation(const StoreEvent &e);

 private:
  void campaign();
  void keepalive();
  // After winning the election: learn the key's create_revision (the fence
  // every write compares), then lead.
  void confirm_leadership();
  void become_leader();
  // A write was refused: still leading? If the key is another's, stop.
  void check_leadership();
  // The store did not answer: nodes are not judged lost until one TTL after
  // it answers again.
  void store_trouble();
  void lose_leadership(const std::string &why);
  // Evaluate after delay_ms (0: in the next loop iteration).
  void request_evaluation(uint64_t delay_ms = 0);
  void evaluate();
  void schedule_retry(int64_t at_ms);

  uv_loop_t *loop_;
  StoreClient *store_;
  PluginHost *plugins_;
  std::string node_;
  int64_t node_ttl_ms_;    // the node lease: how long a node may go unrenewed
  int64_t leader_ttl_ms_;  // the leadership lease
  int64_t lease_ = 0;
  int64_t leader_create_rev_ = 0;  // the leader key's create_revision while leading
  bool leader_ = false;
  uint64_t judge_after_ = 0;  // loop time from which nodes without a record are lost
  bool evaluate_when_store_answers_ = false;
  bool stopping_ = false;
  bool warned_lease_raised_ = false;  // the store granted a longer leader lease (said once)
  bool eval_running_ = false, eval_again_ = false;
  uv_timer_t *keepalive_timer_ = nullptr;  // closed asynchronously
  uv_timer_t *eval_timer_ = nullptr;
  uv_timer_t *retry_timer_ = nullptr;  // reschedule delays
  uint64_t eval_due_ = 0;              // loop time eval_timer_ fires
  uint64_t retry_due_ = 0;             // loop time retry_timer_ fires
  std::unique_ptr<StoreClient::Watch> leader_watch_, cluster_watch_;
};

}  // namespace flotilla
