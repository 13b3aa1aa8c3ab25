// One store-local instance: the state machine, its write-ahead log with
// group commit on the host's thread pool, snapshots, watches and lease
// expiry. Every method runs on the loop thread.
//
// Durability: a write is applied to memory when it arrives, framed into
// the log buffer, and acknowledged only after the batch holding it was
// written and fdatasync'ed by a worker. While one batch syncs, the next
// accumulates, so one fdatasync covers every write that arrived meanwhile.
//
// Visibility: reads, watches and revisions handed to callers never go past
// the *durable* revision. A write that is applied but not yet synced is
// invisible to reads and watchers, so nobody can observe a state that a
// crash would take back. Writes (txn compares, deletes) are evaluated
// against the applied state, which is the order the log will have; their
// answers are held back until that state is durable.
#pragma once

#include <flotilla/host.h>
#include <flotilla/store.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "store_config.h"
#include "store_state.h"
#include "unique_fd.h"

namespace flotilla::store_local {

class LocalStore {
 public:
  // Recover the store from host->data_dir. Throws StoreError.
  LocalStore(const flotilla_host *host, StoreConfig config);
  ~LocalStore();
  LocalStore(const LocalStore &) = delete;
  LocalStore &operator=(const LocalStore &) = delete;

  // flotilla.store/1, after the ABI layer converted the arguments. A
  // StoreError thrown here is a refusal: its status is returned and the
  // callback is not called. Otherwise the callback runs exactly once,
  // later. Callbacks of writes may be null.
  void range(const KeyRange &range, int64_t revision, int64_t limit, flotilla_store_range_cb cb,
             void *user);
  void put(std::string key, std::string value, int64_t lease, flotilla_store_write_cb cb,
           void *user);
  void delete_range(const KeyRange &range, flotilla_store_delete_cb cb, void *user);
  void txn(const std::vector<Compare> &compares, const std::vector<Op> &success,
           const std::vector<Op> &failure, flotilla_store_txn_cb cb, void *user);
  flotilla_store_watch_id watch(const KeyRange &range, int64_t start_revision,
                                flotilla_store_watch_cb cb, void *user);
  void watch_cancel(flotilla_store_watch_id id);
  void lease_grant(int64_t ttl_seconds, flotilla_lease_cb cb, void *user);
  void lease_keepalive(int64_t lease, flotilla_lease_cb cb, void *user);
  void lease_revoke(int64_t lease, flotilla_done_cb cb, void *user);
  void compact(int64_t revision, flotilla_done_cb cb, void *user);

  // Finish for deinit: wait for the worker, make pending writes durable
  // and acknowledge them, deliver what is queued, end every watch with
  // FLOTILLA_E_CANCELLED. Blocks the loop thread; only for shutdown.
  void close();

  // set_error with a message prefixed by the plugin's name.
  void report(const std::string &message) const;
  void log(flotilla_log_level level, const std::string &message) const;

  int64_t durable_revision() const { return durable_revision_; }

 private:
  struct Segment;
  struct Chunk;
  struct FlushJob;
  struct SnapshotJob;
  class JobTracker;
  struct Watcher {
    KeyRange range;
    int64_t next_revision = 0;  // the next revision this watcher must see
    flotilla_store_watch_cb cb = nullptr;
    void *user = nullptr;
  };
  using Completion = std::function<void(flotilla_status)>;

  // -- start-up
  void lock_directory();
  void recover();
  std::shared_ptr<Segment> open_segment_for_append(const std::string &path, uint64_t first_seq,
                                                   bool create);

  // -- requests
  void check_open(bool writing) const;
  void check_request_size(size_t bytes, const char *what) const;
  // Log, apply and buffer one record; returns the revision the store is at.
  int64_t commit(Record record);
  // Run done(OK) once everything committed so far is durable (or done(error)
  // if the log fails first).
  void when_durable(Completion done);
  // Run fn later on the loop thread, never inside the current call.
  void post(std::function<void()> fn);
  void post_error(const StoreError &error, Completion done);
  void run_deferred();
  static void on_deferred_timer(void *user);

  // -- the log
  void kick_flush();
  void start_flush();
  static void flush_work(void *user);
  static void flush_after(void *user, flotilla_status status);
  void flush_done(std::unique_ptr<FlushJob> job);
  void fail(const std::string &message);
  void maybe_snapshot();
  void start_snapshot();
  static void snapshot_work(void *user);
  static void snapshot_after(void *user, flotilla_status status);
  void snapshot_done(std::unique_ptr<SnapshotJob> job);
  void auto_compact();

  // -- watches
  void catch_up(flotilla_store_watch_id id);
  void dispatch(const RevisionEvents &group);
  void deliver(flotilla_store_watch_id id, const RevisionEvents &group);
  void end_watch(flotilla_store_watch_id id, flotilla_status status, const std::string &message);

  // -- leases
  void arm_lease_timer();
  static void on_lease_timer(void *user);
  void expire_leases();

  void publish_metrics();

  const flotilla_host *host_;
  StoreConfig config_;
  StoreState state_;
  std::string dir_;
  UniqueFd dir_fd_;
  UniqueFd lock_fd_;

  // The log: segments oldest first; appends go to the last one.
  std::vector<std::shared_ptr<Segment>> segments_;
  std::string snapshot_path_;                    // the snapshot the segments start from, "" if none
  std::vector<std::unique_ptr<Chunk>> pending_;  // framed, not yet handed to a worker
  uint64_t last_seq_ = 0;                        // last record framed
  uint64_t durable_seq_ = 0;                     // last record known durable
  int64_t durable_revision_ = 1;                 // what readers and watchers may see
  int64_t pending_revision_ = 1;                 // revision of the last record framed
  std::deque<std::pair<uint64_t, Completion>> acks_;  // by seq, ascending
  std::deque<RevisionEvents> undelivered_;            // applied, waiting for durability
  std::unique_ptr<FlushJob> flush_job_;               // the batch being synced
  std::unique_ptr<SnapshotJob> snapshot_job_;
  std::shared_ptr<JobTracker> jobs_;
  bool flush_kick_posted_ = false;
  uint64_t records_since_snapshot_ = 0;
  uint64_t bytes_since_snapshot_ = 0;
  std::string failed_;  // set when the log failed: writes are refused from then on
  bool closing_ = false;

  std::vector<std::function<void()>> deferred_;
  flotilla_handle deferred_timer_ = 0;

  std::map<flotilla_store_watch_id, Watcher> watchers_;
  flotilla_store_watch_id next_watch_id_ = 1;

  flotilla_handle lease_timer_ = 0;
  std::optional<Clock::time_point> lease_timer_due_;
};

}  // namespace flotilla::store_local
