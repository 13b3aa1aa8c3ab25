// store-etcd's engine: flotilla.store/1 served by an etcd v3 cluster over
// gRPC. [loop-thread] throughout, except the completion-queue thread, which
// only moves finished gRPC operations into a queue and wakes the loop
// through an eventfd (watched with the host's fd_watch). Every gRPC call is
// asynchronous, so the loop never waits on the network.
//
// One connection (one gRPC channel, one HTTP/2 connection) at a time, to
// one endpoint; on a transport failure, or a member that lost its leader,
// the next endpoint. All watches share one Watch stream and all lease
// keepalives one LeaseKeepAlive stream on that connection; both are opened
// again on the next connection and every watch resumes from the revision
// after the last one it delivered.
#pragma once

#include <flotilla/host.h>
#include <flotilla/store.h>
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "etcd_config.h"
#include "etcd_rpc.grpc.pb.h"

namespace flotilla::store_etcd {

namespace pb = ::etcdserverpb;

// A refusal thrown by the engine's entry points: the request was not taken.
class StoreError : public std::runtime_error {
 public:
  StoreError(flotilla_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  flotilla_status status() const { return status_; }

 private:
  flotilla_status status_;
};

constexpr size_t kMaxKeyBytes = 64 * 1024;              // as store-local
constexpr int64_t kMaxLeaseTtlSeconds = 9'000'000'000;  // etcd's MaxLeaseTTL

// [key, end): end empty means exactly key (etcd's convention).
struct KeyRange {
  std::string key, end;
  bool single() const { return end.empty(); }
};
KeyRange prefix_range(const std::string &prefix);

struct Compare {
  std::string key;
  int target = 0, op = 0;
  int64_t number = 0;
  std::string value;
};

struct Op {
  int type = 0;
  std::string key, value;
  int64_t lease = 0;
  bool prefix = false;
};

// A finished gRPC operation, run on the loop thread.
struct Tag {
  virtual ~Tag() = default;
  virtual void complete(bool ok) = 0;
};

// A stream: owned by the store until gRPC handed back all its operations.
struct StreamBase : Tag {
  virtual bool reapable() const = 0;
  virtual void cancel() = 0;
};

class EtcdStore {
 public:
  EtcdStore(const flotilla_host *host, EtcdConfig config);
  ~EtcdStore();
  EtcdStore(const EtcdStore &) = delete;
  EtcdStore &operator=(const EtcdStore &) = delete;

  // Ends every watch and pending request with FLOTILLA_E_CANCELLED, waits
  // for gRPC to hand back every operation, stops the thread.
  void close();

  void range(const KeyRange &r, int64_t revision, int64_t limit, flotilla_store_range_cb cb,
             void *user);
  void put(std::string key, std::string value, int64_t lease, flotilla_store_write_cb cb,
           void *user);
  void delete_range(const KeyRange &r, flotilla_store_delete_cb cb, void *user);
  void txn(const std::vector<Compare> &cmps, const std::vector<Op> &success,
           const std::vector<Op> &failure, flotilla_store_txn_cb cb, void *user);
  flotilla_store_watch_id watch(const KeyRange &r, int64_t start_revision,
                                flotilla_store_watch_cb cb, void *user);
  void watch_cancel(flotilla_store_watch_id id);
  void lease_grant(int64_t ttl, flotilla_lease_cb cb, void *user);
  void lease_keepalive(int64_t lease, flotilla_lease_cb cb, void *user);
  void lease_revoke(int64_t lease, flotilla_done_cb cb, void *user);
  void compact(int64_t revision, flotilla_done_cb cb, void *user);

  void report(const std::string &message) const;
  void log(flotilla_log_level level, const std::string &message) const;
  // [loop-thread] A gRPC operation was started on the completion queue.
  void started_op() { ++outstanding_; }

  // One connection to one endpoint. Calls keep theirs alive while they run.
  struct Conn {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::KV::Stub> kv;
    std::unique_ptr<pb::Watch::Stub> watch;
    std::unique_ptr<pb::Lease::Stub> lease;
    size_t endpoint = 0;
    uint64_t generation = 0;
  };
  struct Request;
  struct WatchState;
  class WatchStream;
  class LeaseStream;
  friend class WatchStream;
  friend class LeaseStream;

 private:
  // ---- completion queue → loop ------------------------------------------
  void cq_main();
  void on_wakeup();
  void drain();

  // ---- connection and failover -------------------------------------------
  std::shared_ptr<Conn> connect(size_t endpoint);
  // A call on `generation` failed in a way that says this endpoint is no
  // good (transport failure, no leader): move to the next one.
  void endpoint_failed(uint64_t generation, const std::string &why);
  bool transport_failure(const grpc::Status &s) const;
  std::string where() const;
  uint64_t now_ms() const;

  // ---- requests ----------------------------------------------------------
  uint64_t add_request(std::unique_ptr<Request> r);
  void pump_writes();
  // May `next` be sent while `prev` (the last one sent) is in flight?
  // Then it is given the compare that makes etcd refuse it before `prev`.
  bool chain_behind(const Request &prev, Request &next);
  // Sibling transactions (pump_writes): `first` was sent with nothing in
  // flight; later ones that keep its head and touch none of the keys the
  // group in flight writes go beside it.
  struct GroupKeys {
    std::vector<std::string> written, compared;
  };
  void open_group(uint64_t id, const Request &first);
  bool join_group(uint64_t id, Request &next);
  void add_member(uint64_t id, GroupKeys keys);
  void leave_group(uint64_t id);
  void deliver_txn(uint64_t id, const pb::TxnResponse &resp);
  void send(uint64_t id);
  void attempt_failed(uint64_t id, const grpc::Status &status, uint64_t generation);
  void retry_later(uint64_t id);
  void fail(uint64_t id, flotilla_status status, const std::string &message);
  void finish(uint64_t id);
  void seen(const pb::ResponseHeader &h);
  template <class Resp, class Start, class Done>
  void unary(Request &r, Start start, Done done);
  void on_range(uint64_t id, pb::RangeResponse &resp);
  void on_txn(uint64_t id, pb::TxnResponse &resp);

  // ---- watches -------------------------------------------------------------
  void ensure_watch_stream();
  void watch_stream_dead(WatchStream *s, const grpc::Status &status);
  void watch_response(WatchStream *s, pb::WatchResponse &resp);
  void send_create(WatchState &w);
  void end_watch(flotilla_store_watch_id id, flotilla_status status, const std::string &message,
                 int64_t revision);
  void release_zero_hold(WatchState &w);

  // ---- leases ---------------------------------------------------------------
  void ensure_lease_stream();
  void lease_stream_dead(LeaseStream *s, const grpc::Status &status);
  void keepalive_response(const pb::LeaseKeepAliveResponse &resp);

  void reap_streams();
  void schedule_stream_restart();

  const flotilla_host *host_;
  EtcdConfig config_;
  bool closing_ = false;

  // Completion queue, its thread and the eventfd that wakes the loop.
  grpc::CompletionQueue cq_;
  std::thread cq_thread_;
  int wake_fd_ = -1;
  flotilla_handle wake_watch_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<Tag *, bool>> ready_;                    // guarded by mu_
  int64_t outstanding_ = 0;                                      // started, not yet completed
  std::unordered_map<Tag *, grpc::ClientContext *> live_calls_;  // unary calls in flight

  std::shared_ptr<Conn> conn_;
  uint64_t generation_ = 0;
  int failovers_ = 0;
  int failovers_in_a_row_ = 0;  // since the last answer from etcd

  int64_t last_revision_ = 0;  // the highest revision any response carried

  uint64_t next_request_ = 1;
  std::map<uint64_t, std::unique_ptr<Request>> requests_;
  std::deque<uint64_t> write_queue_;  // ordered requests not yet sent
  // Ordered requests sent and not yet answered to the caller, in call
  // order: one, a chain of transactions etcd itself keeps in order, or a
  // group of sibling transactions whose order does not matter (pump_writes).
  std::deque<uint64_t> in_flight_;
  bool last_write_succeeded_ = false;  // the last ordered request answered: applied?
  // The sibling group in flight (pump_writes): its head (key, value; none:
  // no group open), and how many members in flight write or compare each
  // key other than the head.
  std::optional<std::pair<std::string, std::string>> group_head_;
  std::unordered_map<uint64_t, GroupKeys> group_members_;
  std::unordered_map<std::string, int> group_written_, group_compared_;
  int zero_holds_ = 0;  // watches from "now" whose start etcd has not fixed yet

  flotilla_store_watch_id next_watch_ = 1;
  std::map<flotilla_store_watch_id, std::unique_ptr<WatchState>> watches_;
  WatchStream *watch_stream_ = nullptr;
  LeaseStream *lease_stream_ = nullptr;
  std::list<std::unique_ptr<StreamBase>> streams_;  // every stream object, live or draining
  std::unordered_map<int64_t, std::deque<uint64_t>> keepalives_;  // lease → waiting requests
  flotilla_handle restart_timer_ = 0;
  uint64_t restart_backoff_ms_ = 0;
  std::map<uint64_t, flotilla_handle> timers_;  // request id → retry or deadline timer
};

}  // namespace flotilla::store_etcd
