#include "etcd_store.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace flotilla::store_etcd {

// ---- small helpers ---------------------------------------------------------

namespace {

// A key as it appears in messages: printable bytes as they are, others as
// \xNN, cut after 80 bytes.
std::string show(std::string_view key) {
  static const char hex[] = "0123456789abcdef";
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

std::string show_range(const KeyRange &r) {
  if (r.single()) return show(r.key);
  if (r.end == std::string(1, '\0')) return "every key from " + show(r.key);
  return "[" + show(r.key) + ", " + show(r.end) + ")";
}

bool contains(const std::string &s, const char *part) {
  return s.find(part) != std::string::npos;
}

// What a gRPC status means for a flotilla.store/1 caller.
flotilla_status map_status(const grpc::Status &s) {
  const std::string &m = s.error_message();
  switch (s.error_code()) {
    case grpc::StatusCode::OK:
      return FLOTILLA_OK;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return FLOTILLA_E_INVALID;
    case grpc::StatusCode::NOT_FOUND:
      return FLOTILLA_E_NOT_FOUND;
    case grpc::StatusCode::OUT_OF_RANGE:
      return contains(m, "compacted") ? FLOTILLA_E_COMPACTED : FLOTILLA_E_INVALID;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return FLOTILLA_E_CONFLICT;
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      return FLOTILLA_E_PERMISSION;
    case grpc::StatusCode::CANCELLED:
      return FLOTILLA_E_CANCELLED;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return FLOTILLA_E_UNAVAILABLE;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return contains(m, "too many requests") ? FLOTILLA_E_UNAVAILABLE : FLOTILLA_E_INVALID;
    default:
      return FLOTILLA_E_INTERNAL;
  }
}

// UNAVAILABLE before the request left this process: resending it cannot
// apply it twice.
bool never_sent(const grpc::Status &s) {
  const std::string &m = s.error_message();
  return s.error_code() == grpc::StatusCode::UNAVAILABLE &&
         (contains(m, "failed to connect") || contains(m, "Connection refused"));
}

pb::Compare to_pb(const Compare &c) {
  pb::Compare out;
  out.set_key(c.key);
  switch (c.op) {
    case FLOTILLA_CMP_EQUAL:
      out.set_result(pb::Compare::EQUAL);
      break;
    case FLOTILLA_CMP_NOT_EQUAL:
      out.set_result(pb::Compare::NOT_EQUAL);
      break;
    case FLOTILLA_CMP_LESS:
      out.set_result(pb::Compare::LESS);
      break;
    default:
      out.set_result(pb::Compare::GREATER);
      break;
  }
  switch (c.target) {
    case FLOTILLA_CMP_VERSION:
      out.set_target(pb::Compare::VERSION);
      out.set_version(c.number);
      break;
    case FLOTILLA_CMP_CREATE:
      out.set_target(pb::Compare::CREATE);
      out.set_create_revision(c.number);
      break;
    case FLOTILLA_CMP_MOD:
      out.set_target(pb::Compare::MOD);
      out.set_mod_revision(c.number);
      break;
    case FLOTILLA_CMP_VALUE:
      out.set_target(pb::Compare::VALUE);
      out.set_value(c.value);
      break;
    default:
      out.set_target(pb::Compare::LEASE);
      out.set_lease(c.number);
      break;
  }
  return out;
}

// etcd fails every VALUE compare on a key that does not exist; store.h says
// an absent key's value is "". A VALUE compare that "" satisfies must then
// also hold when the key is absent.
bool holds_for_absent(const Compare &c) {
  if (c.target != FLOTILLA_CMP_VALUE) return false;
  switch (c.op) {
    case FLOTILLA_CMP_EQUAL:
      return c.value.empty();
    case FLOTILLA_CMP_NOT_EQUAL:
    case FLOTILLA_CMP_LESS:
      return !c.value.empty();
    default:
      return false;
  }
}

pb::RequestOp to_pb(const Op &op) {
  pb::RequestOp out;
  if (op.type == FLOTILLA_OP_PUT) {
    auto *p = out.mutable_request_put();
    p->set_key(op.key);
    p->set_value(op.value);
    p->set_lease(op.lease);
  } else {
    KeyRange r = op.prefix ? prefix_range(op.key) : KeyRange{op.key, ""};
    auto *d = out.mutable_request_delete_range();
    d->set_key(r.key);
    d->set_range_end(r.end);
  }
  return out;
}

// The operation count etcd's checkTxnRequest needs for this transaction:
// each level uses max(compares, success, failure) and leaves the rest of
// the budget to the transactions nested in it.
int64_t ops_needed(const pb::TxnRequest &t) {
  int64_t opc = std::max<int64_t>({t.compare_size(), t.success_size(), t.failure_size()});
  int64_t nested = 0;
  for (const auto *branch : {&t.success(), &t.failure()})
    for (const auto &op : *branch)
      if (op.has_request_txn()) nested = std::max(nested, ops_needed(op.request_txn()));
  return opc + nested;
}

// The transaction tree that emulates the absent-key VALUE compares: one
// level per such compare, branching on whether its key exists.
pb::TxnRequest build_tree(const std::vector<const Compare *> &emulated, size_t i,
                          std::vector<pb::Compare> base, const std::vector<pb::RequestOp> &success,
                          const std::vector<pb::RequestOp> &failure) {
  pb::TxnRequest t;
  if (i == emulated.size()) {
    for (auto &c : base) *t.add_compare() = std::move(c);
    for (const auto &op : success) *t.add_success() = op;
    for (const auto &op : failure) *t.add_failure() = op;
    return t;
  }
  const Compare &e = *emulated[i];
  pb::Compare absent;
  absent.set_key(e.key);
  absent.set_target(pb::Compare::VERSION);
  absent.set_result(pb::Compare::EQUAL);
  absent.set_version(0);
  *t.add_compare() = absent;
  // Absent: this compare holds; decide on the others.
  *t.add_success()->mutable_request_txn() = build_tree(emulated, i + 1, base, success, failure);
  // Present: etcd's own VALUE compare is right.
  base.push_back(to_pb(e));
  *t.add_failure()->mutable_request_txn() =
      build_tree(emulated, i + 1, std::move(base), success, failure);
  return t;
}

// A guard that holds only while nothing in the op's keys changed after
// `revision`: a write seen then cannot have been applied yet.
pb::Compare unchanged_since(const Op &op, int64_t revision) {
  KeyRange r =
      op.type == FLOTILLA_OP_PUT || !op.prefix ? KeyRange{op.key, ""} : prefix_range(op.key);
  pb::Compare c;
  c.set_key(r.key);
  c.set_range_end(r.end);
  c.set_target(pb::Compare::MOD);
  c.set_result(pb::Compare::LESS);
  c.set_mod_revision(revision + 1);
  return c;
}

// The keys a transaction writes and those it reads (compares, range ops),
// for the sibling rule (pump_writes); false when one of them is a range or
// a nested transaction, which the rule does not look into.
bool txn_keys(const pb::TxnRequest &t, std::vector<std::string> &written,
              std::vector<std::string> &read) {
  if (t.failure_size() > 0) return false;
  for (const auto &c : t.compare()) {
    if (!c.range_end().empty()) return false;
    read.push_back(c.key());
  }
  for (const auto &op : t.success()) {
    if (op.has_request_put()) {
      written.push_back(op.request_put().key());
    } else if (op.has_request_delete_range()) {
      if (!op.request_delete_range().range_end().empty()) return false;
      written.push_back(op.request_delete_range().key());
    } else if (op.has_request_range()) {
      if (!op.request_range().range_end().empty()) return false;
      read.push_back(op.request_range().key());
    } else {
      return false;
    }
  }
  return true;
}

constexpr int64_t kRaftOverheadBytes = 256;  // etcd checks the request inside its raft entry
constexpr const char *kUncertain =
    ": etcd became unreachable while the write was in flight, and the guarded retry found its "
    "keys changed since; it may or may not have been applied. Read the keys to find out";

}  // namespace

KeyRange prefix_range(const std::string &prefix) {
  // etcd: [prefix, prefix with its last byte below 0xff incremented);
  // "\0" as the end means "to the end of the key space".
  std::string end = prefix;
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (end.empty()) return {prefix.empty() ? std::string(1, '\0') : prefix, std::string(1, '\0')};
  end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
  return {prefix, end};
}

// ---- requests --------------------------------------------------------------

struct EtcdStore::Request {
  enum class Kind { range, put, del, txn, grant, keepalive, revoke, compact } kind;
  bool ordered = false;
  uint64_t deadline = 0;
  int attempts = 0;
  bool uncertain = false;      // an earlier attempt may have been applied
  // Sent behind the write before it, chained (pump_writes); its answer
  // waits in `held` until that write's has been given.
  bool pipelined = false;
  // Sent beside other transactions of its sibling group (pump_writes): a
  // refusal is its own, final, never sent again.
  bool sibling = false;
  std::function<void()> held;
  bool held_refused = false;  // held: its compares failed
  int64_t guard_revision = 0;  // the highest revision seen before the first attempt
  std::string what;            // for messages: `put "/k"`
  void *user = nullptr;

  // range
  flotilla_store_range_cb range_cb = nullptr;
  pb::RangeRequest range_req;
  int64_t limit = 0, pinned = 0, read_revision = 0;
  std::vector<pb::KeyValue> kvs;
  // put, delete, txn
  flotilla_store_write_cb write_cb = nullptr;
  flotilla_store_delete_cb delete_cb = nullptr;
  flotilla_store_txn_cb txn_cb = nullptr;
  pb::PutRequest put_req;
  pb::DeleteRangeRequest del_req;
  pb::TxnRequest txn_req;
  size_t emulated = 0;              // levels of absent-key VALUE emulation
  std::vector<pb::Compare> guards;  // for a retry that may double-apply
  bool wrapped = false;             // this attempt wraps txn_req in the guards
  // leases, compaction
  flotilla_lease_cb lease_cb = nullptr;
  flotilla_done_cb done_cb = nullptr;
  int64_t number = 0;  // TTL, lease id or compaction revision
};

template <class Resp>
struct UnaryCall : Tag {
  std::function<void(UnaryCall &)> on_done;
  std::shared_ptr<EtcdStore::Conn> conn;
  grpc::ClientContext ctx;
  Resp resp;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>> reader;
  std::unordered_map<Tag *, grpc::ClientContext *> *live = nullptr;
  void complete(bool) override {
    std::unique_ptr<UnaryCall> self(this);
    live->erase(this);
    on_done(*this);
  }
};

// ---- streams -----------------------------------------------------------------

// A bidirectional stream on the completion queue: one read and one write
// outstanding at most, a queue of messages to write, Finish once.
template <class Req, class Resp>
class BidiStream : public StreamBase {
 public:
  struct OpTag : Tag {
    BidiStream *s = nullptr;
    int kind = 0;
    void complete(bool ok) override { s->on_op(kind, ok); }
  };

  BidiStream(EtcdStore *store, std::shared_ptr<EtcdStore::Conn> conn)
      : store_(store), conn_(std::move(conn)) {
    for (int i = 0; i < 4; ++i) {
      tags_[i].s = this;
      tags_[i].kind = i;
    }
    // A member without a leader ends the stream instead of leaving it
    // silent (etcd's WithRequireLeader).
    ctx_.AddMetadata("hasleader", "true");
  }
  void complete(bool) override {}
  virtual void on_message(Resp &msg) = 0;
  virtual void on_dead(const grpc::Status &status) = 0;

  void write(Req msg) {
    outbox_.push_back(std::move(msg));
    flush();
  }
  void cancel() override { ctx_.TryCancel(); }
  bool reapable() const override { return done_ && pending_ == 0; }
  EtcdStore::Conn &conn() { return *conn_; }
  uint64_t generation() const { return conn_->generation; }

 protected:
  void begin(std::unique_ptr<grpc::ClientAsyncReaderWriter<Req, Resp>> rw) {
    rw_ = std::move(rw);
    op();
    rw_->StartCall(&tags_[0]);
  }
  grpc::ClientContext ctx_;
  EtcdStore *store_;
  std::shared_ptr<EtcdStore::Conn> conn_;

 private:
  void op() {
    ++pending_;
    store_->started_op();
  }
  void read() {
    op();
    rw_->Read(&in_, &tags_[1]);
  }
  void flush() {
    if (!started_ || writing_ || dead_ || outbox_.empty()) return;
    writing_ = true;
    op();
    rw_->Write(outbox_.front(), &tags_[2]);
  }
  void die() {
    if (dead_) return;
    dead_ = true;
    op();
    rw_->Finish(&status_, &tags_[3]);
  }
  void on_op(int kind, bool ok) {
    --pending_;
    switch (kind) {
      case 0:  // started
        if (!ok) return die();
        started_ = true;
        read();
        flush();
        return;
      case 1:  // read
        if (!ok || dead_) return die();
        on_message(in_);
        if (!dead_) read();
        return;
      case 2:  // written
        writing_ = false;
        if (!ok) return die();
        outbox_.pop_front();
        flush();
        return;
      default:  // finished
        done_ = true;
        on_dead(status_);
        return;
    }
  }

  std::unique_ptr<grpc::ClientAsyncReaderWriter<Req, Resp>> rw_;
  OpTag tags_[4];
  Resp in_;
  std::deque<Req> outbox_;
  grpc::Status status_;
  bool started_ = false, writing_ = false, dead_ = false, done_ = false;
  int pending_ = 0;
};

struct EtcdStore::WatchState {
  flotilla_store_watch_id id = 0;
  KeyRange range;
  int64_t next_revision = 0;  // 0: from "now", until etcd says which revision that is
  flotilla_store_watch_cb cb = nullptr;
  void *user = nullptr;
  bool zero_hold = false;  // holds writes until etcd fixed the start revision
  int64_t server_id = -1;
};

class EtcdStore::WatchStream : public BidiStream<pb::WatchRequest, pb::WatchResponse> {
 public:
  WatchStream(EtcdStore *store, std::shared_ptr<Conn> conn, grpc::CompletionQueue *cq)
      : BidiStream(store, std::move(conn)) {
    begin(conn_->watch->PrepareAsyncWatch(&ctx_, cq));
  }
  void on_message(pb::WatchResponse &msg) override { store_->watch_response(this, msg); }
  void on_dead(const grpc::Status &status) override { store_->watch_stream_dead(this, status); }
  std::deque<flotilla_store_watch_id> creating;  // creates sent, in order, not yet answered
  std::unordered_map<int64_t, flotilla_store_watch_id> by_server_id;
};

class EtcdStore::LeaseStream
    : public BidiStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse> {
 public:
  LeaseStream(EtcdStore *store, std::shared_ptr<Conn> conn, grpc::CompletionQueue *cq)
      : BidiStream(store, std::move(conn)) {
    begin(conn_->lease->PrepareAsyncLeaseKeepAlive(&ctx_, cq));
  }
  void on_message(pb::LeaseKeepAliveResponse &msg) override { store_->keepalive_response(msg); }
  void on_dead(const grpc::Status &status) override { store_->lease_stream_dead(this, status); }
};

// ---- construction, the completion queue thread --------------------------------

EtcdStore::EtcdStore(const flotilla_host *host, EtcdConfig config)
    : host_(host), config_(std::move(config)) {
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0)
    throw StoreError(FLOTILLA_E_IO, std::string("eventfd: ") + std::strerror(errno));
  wake_watch_ = host_->fd_watch(
      host_->host_ctx, wake_fd_, FLOTILLA_FD_READABLE,
      [](void *user, int, uint32_t) { static_cast<EtcdStore *>(user)->on_wakeup(); }, this);
  if (!wake_watch_) {
    ::close(wake_fd_);
    throw StoreError(FLOTILLA_E_INTERNAL, "the host refused to watch the eventfd");
  }
  cq_thread_ = std::thread([this] { cq_main(); });
  conn_ = connect(0);
}

EtcdStore::~EtcdStore() {
  close();
}

void EtcdStore::cq_main() {
  void *tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) {
    {
      std::lock_guard<std::mutex> l(mu_);
      ready_.emplace_back(static_cast<Tag *>(tag), ok);
    }
    cv_.notify_all();
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;  // EAGAIN: the counter is already non-zero, the loop wakes anyway
  }
}

void EtcdStore::on_wakeup() {
  uint64_t v;
  ssize_t n = ::read(wake_fd_, &v, sizeof v);
  (void)n;
  drain();
}

void EtcdStore::drain() {
  std::vector<std::pair<Tag *, bool>> batch;
  {
    std::lock_guard<std::mutex> l(mu_);
    batch.swap(ready_);
  }
  for (auto &[tag, ok] : batch) {
    --outstanding_;
    tag->complete(ok);
  }
  reap_streams();
}

void EtcdStore::reap_streams() {
  for (auto it = streams_.begin(); it != streams_.end();)
    it = (*it)->reapable() ? streams_.erase(it) : std::next(it);
}

void EtcdStore::close() {
  if (closing_) return;
  closing_ = true;
  if (restart_timer_) host_->timer_stop(host_->host_ctx, restart_timer_);
  restart_timer_ = 0;
  for (auto &[id, handle] : timers_) host_->timer_stop(host_->host_ctx, handle);
  timers_.clear();
  // Every caller hears back: pending requests and watches end cancelled.
  std::vector<uint64_t> ids;
  for (auto &[id, r] : requests_) ids.push_back(id);
  for (uint64_t id : ids) fail(id, FLOTILLA_E_CANCELLED, "store-etcd is shutting down");
  std::vector<flotilla_store_watch_id> wids;
  for (auto &[id, w] : watches_) wids.push_back(id);
  for (auto id : wids)
    end_watch(id, FLOTILLA_E_CANCELLED, "store-etcd is shutting down", last_revision_);
  // Then gRPC hands every operation back, cancelled.
  for (auto &[tag, ctx] : live_calls_) ctx->TryCancel();
  for (auto &s : streams_) s->cancel();
  while (outstanding_ > 0) {
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [this] { return !ready_.empty(); });
    }
    drain();
  }
  cq_.Shutdown();
  if (cq_thread_.joinable()) cq_thread_.join();
  streams_.clear();
  watch_stream_ = nullptr;
  lease_stream_ = nullptr;
  conn_.reset();
  if (wake_watch_) host_->fd_unwatch(host_->host_ctx, wake_watch_);
  wake_watch_ = 0;
  if (wake_fd_ >= 0) ::close(wake_fd_);
  wake_fd_ = -1;
}

void EtcdStore::report(const std::string &message) const {
  host_->set_error(host_->host_ctx, message.c_str());
}

void EtcdStore::log(flotilla_log_level level, const std::string &message) const {
  host_->log(host_->host_ctx, level, message.c_str());
}

uint64_t EtcdStore::now_ms() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string EtcdStore::where() const {
  return "etcd " + (conn_ ? config_.endpoints[conn_->endpoint].url : std::string("(none)"));
}

// ---- connection and failover ---------------------------------------------------

std::shared_ptr<EtcdStore::Conn> EtcdStore::connect(size_t endpoint) {
  const Endpoint &ep = config_.endpoints[endpoint];
  grpc::ChannelArguments args;
  // Pings no closer than keepalive_time_ms (at least etcd's 5 s minimum),
  // and only while a call is open: etcd answers closer pings with GOAWAY.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(config_.keepalive_time_ms));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(config_.keepalive_timeout_ms));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS,
              static_cast<int>(config_.keepalive_time_ms));
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  // A connection attempt gives up after dial_timeout_ms; we then move on.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(config_.dial_timeout_ms));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);  // this plugin decides what is safe to resend
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (ep.tls) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = config_.ca_pem;
    o.pem_private_key = config_.key_pem;
    o.pem_cert_chain = config_.cert_pem;
    creds = grpc::SslCredentials(o);
    if (!config_.server_name.empty()) args.SetSslTargetNameOverride(config_.server_name);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  auto c = std::make_shared<Conn>();
  c->channel = grpc::CreateCustomChannel(ep.target, creds, args);
  c->kv = pb::KV::NewStub(c->channel);
  c->watch = pb::Watch::NewStub(c->channel);
  c->lease = pb::Lease::NewStub(c->channel);
  c->endpoint = endpoint;
  c->generation = ++generation_;
  return c;
}

bool EtcdStore::transport_failure(const grpc::Status &s) const {
  if (s.error_code() != grpc::StatusCode::UNAVAILABLE) return false;
  const std::string &m = s.error_message();
  if (m.rfind("etcdserver: ", 0) == 0) return contains(m, "no leader");
  return true;
}

void EtcdStore::endpoint_failed(uint64_t generation, const std::string &why) {
  if (closing_ || !conn_ || generation != conn_->generation) return;
  const size_t next = (conn_->endpoint + 1) % config_.endpoints.size();
  // While etcd stays away, say so once, then every 50th attempt.
  if (failovers_in_a_row_ % 50 == 0)
    log(FLOTILLA_LOG_WARN,
        where() + ": " + why + "; connecting to " + config_.endpoints[next].url +
            (failovers_in_a_row_ ? " (" + std::to_string(failovers_in_a_row_) + " attempts so far)"
                                 : ""));
  ++failovers_in_a_row_;
  ++failovers_;
  host_->metric_counter_add(host_->host_ctx, "store_etcd_failovers_total", 1);
  conn_ = connect(next);
  // The streams move with the connection; their ends restart them.
  if (watch_stream_) watch_stream_->cancel();
  if (lease_stream_) lease_stream_->cancel();
}

// ---- requests ---------------------------------------------------------------------

void EtcdStore::seen(const pb::ResponseHeader &h) {
  failovers_in_a_row_ = 0;
  if (h.revision() > last_revision_) {
    last_revision_ = h.revision();
    host_->metric_gauge_set(host_->host_ctx, "store_etcd_revision",
                            static_cast<double>(last_revision_));
  }
}

uint64_t EtcdStore::add_request(std::unique_ptr<Request> r) {
  if (closing_) throw StoreError(FLOTILLA_E_CANCELLED, "store-etcd is shutting down");
  const uint64_t id = next_request_++;
  r->deadline = now_ms() + static_cast<uint64_t>(config_.request_timeout_ms);
  const bool ordered = r->ordered;
  requests_.emplace(id, std::move(r));
  if (ordered) {
    write_queue_.push_back(id);
    pump_writes();
  } else {
    send(id);
  }
  return id;
}

// Writes go to etcd in the order they were made, and each gets a later
// revision than the one before: callers rely on it. etcd runs concurrent
// requests in any order, so a write is sent only when the one before it
// was answered -- with two exceptions, where the caller's compares make the
// order etcd's business:
//
// A chained transaction compares a key's value to exactly the value the
// transaction before it puts there. It is sent at once, with one more
// compare, that key's mod_revision newer than any revision seen when that
// transaction was sent. Arriving first, it fails; its answer waits until
// the one before it was given, and if that one was applied it is sent again
// (once: now its answer is final), in order. The ones behind it that were
// refused too wait their turn the same way, each sent again only after the
// one before it was applied.
//
// A sibling transaction compares a key's value (the group's head) and
// writes that key, if at all, only with that same value (the scheduler puts
// its epoch token back, so that the epoch's mod_revision moves with every
// write); besides, it touches no key another one of the group in flight
// writes, nor writes one it compares. The group opens with a transaction
// sent when nothing else was in flight: every earlier write was answered,
// so whatever the head holds is settled, and siblings in any order give
// the same result. They are all sent at once; each answer is final, and
// their revisions are in etcd's order, not call order.
//
// Up to kMaxChained are in flight; answers are always given in call order.
constexpr size_t kMaxChained = 64;

bool EtcdStore::chain_behind(const Request &prev, Request &next) {
  if (prev.kind != Request::Kind::txn || next.kind != Request::Kind::txn) return false;
  if (prev.uncertain || next.uncertain || prev.emulated || next.emulated) return false;
  // A failure branch would be applied by an attempt that arrived early.
  if (next.txn_req.failure_size() > 0) return false;
  if (next.txn_req.compare_size() + 1 > config_.max_txn_ops) return false;
  for (const auto &c : next.txn_req.compare()) {
    if (c.target() != pb::Compare::VALUE || c.result() != pb::Compare::EQUAL ||
        !c.range_end().empty())
      continue;
    for (const auto &op : prev.txn_req.success()) {
      if (!op.has_request_put() || op.request_put().key() != c.key() ||
          op.request_put().value() != c.value())
        continue;
      const int64_t size = static_cast<int64_t>(next.txn_req.ByteSizeLong() + c.key().size()) + 32;
      if (size + kRaftOverheadBytes > config_.max_request_bytes) return false;
      pb::Compare newer;
      newer.set_key(c.key());
      newer.set_target(pb::Compare::MOD);
      newer.set_result(pb::Compare::GREATER);
      newer.set_mod_revision(prev.guard_revision);
      *next.txn_req.add_compare() = newer;
      next.pipelined = true;
      return true;
    }
  }
  return false;
}

namespace {

// Whether t keeps the head (key == value): it compares exactly that, and
// writes the key, if at all, only with that same value (no lease), so that
// the compare holds for every other transaction that keeps it, whatever
// their order.
bool keeps_head(const pb::TxnRequest &t, const std::pair<std::string, std::string> &head) {
  bool compares = false;
  for (const auto &c : t.compare())
    if (c.target() == pb::Compare::VALUE && c.result() == pb::Compare::EQUAL &&
        c.range_end().empty() && c.key() == head.first && c.value() == head.second)
      compares = true;
  if (!compares) return false;
  for (const auto &op : t.success()) {
    if (op.has_request_put() && op.request_put().key() == head.first &&
        (op.request_put().value() != head.second || op.request_put().lease() != 0))
      return false;
    if (op.has_request_delete_range() && op.request_delete_range().key() == head.first)
      return false;
  }
  return true;
}

}  // namespace

void EtcdStore::open_group(uint64_t id, const Request &first) {
  group_head_.reset();
  group_members_.clear();
  group_written_.clear();
  group_compared_.clear();
  if (first.kind != Request::Kind::txn || first.uncertain || first.emulated) return;
  GroupKeys keys;
  if (!txn_keys(first.txn_req, keys.written, keys.compared)) return;
  for (const auto &c : first.txn_req.compare()) {
    if (c.target() != pb::Compare::VALUE || c.result() != pb::Compare::EQUAL) continue;
    std::pair<std::string, std::string> head{c.key(), c.value()};
    if (!keeps_head(first.txn_req, head)) continue;
    group_head_ = std::move(head);
    break;
  }
  if (!group_head_) return;
  add_member(id, std::move(keys));
}

bool EtcdStore::join_group(uint64_t id, Request &next) {
  if (!group_head_ || next.kind != Request::Kind::txn || next.uncertain || next.emulated ||
      !keeps_head(next.txn_req, *group_head_))
    return false;
  GroupKeys keys;
  if (!txn_keys(next.txn_req, keys.written, keys.compared)) return false;
  const std::string &head = group_head_->first;
  for (const auto &k : keys.written)
    if (k != head && (group_written_.count(k) || group_compared_.count(k))) return false;
  for (const auto &k : keys.compared)
    if (k != head && group_written_.count(k)) return false;
  add_member(id, std::move(keys));
  next.sibling = true;
  next.pipelined = true;
  return true;
}

void EtcdStore::add_member(uint64_t id, GroupKeys keys) {
  // The head is left out: every member compares it and puts only its value.
  const std::string &head = group_head_->first;
  std::erase(keys.written, head);
  std::erase(keys.compared, head);
  for (const auto &k : keys.written) ++group_written_[k];
  for (const auto &k : keys.compared) ++group_compared_[k];
  group_members_.emplace(id, std::move(keys));
}

void EtcdStore::leave_group(uint64_t id) {
  auto m = group_members_.find(id);
  if (m == group_members_.end()) return;
  auto drop = [](std::unordered_map<std::string, int> &counts, const std::string &k) {
    auto c = counts.find(k);
    if (c != counts.end() && --c->second <= 0) counts.erase(c);
  };
  for (const auto &k : m->second.written) drop(group_written_, k);
  for (const auto &k : m->second.compared) drop(group_compared_, k);
  group_members_.erase(m);
}

void EtcdStore::pump_writes() {
  if (closing_) return;
  // Answers that arrived early, given in call order.
  while (!in_flight_.empty()) {
    const uint64_t id = in_flight_.front();
    auto it = requests_.find(id);
    if (it == requests_.end()) {
      in_flight_.pop_front();
      continue;
    }
    Request &r = *it->second;
    if (!r.held) break;
    std::function<void()> give = std::move(r.held);
    r.held = nullptr;
    if (r.held_refused && last_write_succeeded_) {
      // Refused, perhaps only for arriving before the one before it, which
      // is applied now: again, in order (the answer to this attempt is
      // final). Only this one: a refused one behind it is sent again when
      // this one's answer says it was applied.
      r.held_refused = false;
      r.pipelined = false;
      host_->metric_counter_add(host_->host_ctx, "store_etcd_chain_resends_total", 1);
      send(id);
      break;
    }
    give();  // answers, and pumps again
    return;
  }
  if (zero_holds_ > 0) return;
  while (!write_queue_.empty()) {
    const uint64_t id = write_queue_.front();
    auto it = requests_.find(id);
    if (it == requests_.end()) {
      write_queue_.pop_front();
      continue;
    }
    Request &r = *it->second;
    const bool first = in_flight_.empty();
    if (!first) {
      if (in_flight_.size() >= kMaxChained) return;
      auto prev = requests_.find(in_flight_.back());
      if (prev == requests_.end()) return;
      if (join_group(id, r)) {
        host_->metric_counter_add(host_->host_ctx, "store_etcd_siblings_total", 1);
      } else if (chain_behind(*prev->second, r)) {
        host_->metric_counter_add(host_->host_ctx, "store_etcd_chained_total", 1);
        group_head_.reset();  // no sibling may go beside a chained one
      } else {
        return;
      }
    }
    write_queue_.pop_front();
    in_flight_.push_back(id);
    r.guard_revision = last_revision_;
    if (first) open_group(id, r);
    send(id);
  }
}

void EtcdStore::finish(uint64_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  requests_.erase(it);
  if (auto t = timers_.find(id); t != timers_.end()) {
    host_->timer_stop(host_->host_ctx, t->second);
    timers_.erase(t);
  }
  if (auto f = std::find(in_flight_.begin(), in_flight_.end(), id); f != in_flight_.end())
    in_flight_.erase(f);
  leave_group(id);
}

void EtcdStore::fail(uint64_t id, flotilla_status status, const std::string &message) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  if (it->second->pipelined && !closing_ && !in_flight_.empty() && in_flight_.front() != id) {
    // After the answer to the write before it.
    it->second->held = [this, id, status, message] {
      if (auto i = requests_.find(id); i != requests_.end()) i->second->pipelined = false;
      fail(id, status, message);
    };
    it->second->held_refused = false;
    return;
  }
  if (std::find(in_flight_.begin(), in_flight_.end(), id) != in_flight_.end())
    last_write_succeeded_ = false;
  std::unique_ptr<Request> r = std::move(it->second);
  finish(id);
  for (auto &[lease, waiting] : keepalives_)
    waiting.erase(std::remove(waiting.begin(), waiting.end(), id), waiting.end());
  report(r->what + ": " + message);
  switch (r->kind) {
    case Request::Kind::range:
      r->range_cb(r->user, status, nullptr, 0, last_revision_, 0);
      break;
    case Request::Kind::put:
      r->write_cb(r->user, status, last_revision_);
      break;
    case Request::Kind::del:
      r->delete_cb(r->user, status, last_revision_, 0);
      break;
    case Request::Kind::txn:
      r->txn_cb(r->user, status, 0, last_revision_);
      break;
    case Request::Kind::grant:
    case Request::Kind::keepalive:
      r->lease_cb(r->user, status, r->number, 0);
      break;
    case Request::Kind::revoke:
    case Request::Kind::compact:
      r->done_cb(r->user, status);
      break;
  }
  pump_writes();
}

void EtcdStore::attempt_failed(uint64_t id, const grpc::Status &status, uint64_t generation) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request &r = *it->second;
  const bool retryable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
  if (transport_failure(status)) endpoint_failed(generation, status.error_message());
  if (retryable && !closing_ && now_ms() + 20 < r.deadline) {
    if (r.ordered && !never_sent(status) && r.kind != Request::Kind::revoke &&
        r.kind != Request::Kind::compact)
      r.uncertain = true;
    host_->metric_counter_add(host_->host_ctx, "store_etcd_retries_total", 1);
    retry_later(id);
    return;
  }
  std::string msg = where() + ": " + status.error_message();
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || retryable)
    msg += " (gave up after plugin.store-etcd.request_timeout_ms = " +
           std::to_string(config_.request_timeout_ms) + " ms" +
           (r.uncertain || (r.ordered && !never_sent(status))
                ? "; the write may or may not have been applied"
                : "") +
           ")";
  fail(id, map_status(status), msg);
}

void EtcdStore::retry_later(uint64_t id) {
  Request &r = *requests_.at(id);
  uint64_t delay = std::min<uint64_t>(1000, uint64_t{25} << std::min(r.attempts, 6));
  const uint64_t now = now_ms();
  if (now + delay > r.deadline) delay = r.deadline > now ? r.deadline - now : 0;
  struct Ctx {
    EtcdStore *s;
    uint64_t id;
  };
  auto *ctx = new Ctx{this, id};
  flotilla_handle h = host_->timer_start(
      host_->host_ctx, delay, 0,
      [](void *user) {
        std::unique_ptr<Ctx> c(static_cast<Ctx *>(user));
        c->s->timers_.erase(c->id);
        if (c->s->requests_.count(c->id)) c->s->send(c->id);
      },
      ctx);
  if (!h) {
    delete ctx;
    fail(id, FLOTILLA_E_INTERNAL, "the host refused a timer");
    return;
  }
  timers_[id] = h;
}

template <class Resp, class Start, class Done>
void EtcdStore::unary(Request &r, Start start, Done done) {
  auto *call = new UnaryCall<Resp>;
  call->conn = conn_;
  call->live = &live_calls_;
  const uint64_t now = now_ms();
  call->ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(r.deadline > now ? r.deadline - now : 1));
  // A member without a leader answers at once instead of timing out.
  call->ctx.AddMetadata("hasleader", "true");
  call->on_done = std::move(done);
  call->reader = start(*conn_, &call->ctx);
  (*call->live)[call] = &call->ctx;
  started_op();
  call->reader->Finish(&call->resp, &call->status, call);
}

void EtcdStore::send(uint64_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request &r = *it->second;
  ++r.attempts;
  const uint64_t gen = conn_->generation;
  auto failed = [this, id, gen](const grpc::Status &s) { attempt_failed(id, s, gen); };
  switch (r.kind) {
    case Request::Kind::range: {
      pb::RangeRequest req = r.range_req;
      req.set_revision(r.pinned);
      int64_t want = config_.range_page_keys;
      if (r.limit > 0) want = std::min<int64_t>(want, r.limit - static_cast<int64_t>(r.kvs.size()));
      req.set_limit(want);
      if (!r.kvs.empty()) req.set_key(r.kvs.back().key() + std::string(1, '\0'));
      host_->metric_counter_add(host_->host_ctx, "store_etcd_range_pages_total", 1);
      unary<pb::RangeResponse>(
          r, [&](Conn &c, grpc::ClientContext *ctx) { return c.kv->AsyncRange(ctx, req, &cq_); },
          [this, id, failed](UnaryCall<pb::RangeResponse> &c) {
            if (!c.status.ok()) return failed(c.status);
            on_range(id, c.resp);
          });
      return;
    }
    case Request::Kind::put: {
      if (!r.uncertain) {
        unary<pb::PutResponse>(
            r,
            [&](Conn &c, grpc::ClientContext *ctx) { return c.kv->AsyncPut(ctx, r.put_req, &cq_); },
            [this, id, failed](UnaryCall<pb::PutResponse> &c) {
              if (!c.status.ok()) return failed(c.status);
              seen(c.resp.header());
              auto it = requests_.find(id);
              if (it == requests_.end()) return;
              auto r = std::move(it->second);
              finish(id);
              r->write_cb(r->user, FLOTILLA_OK, c.resp.header().revision());
              pump_writes();
            });
        return;
      }
      // The first attempt may have been applied: put only if the key did
      // not change since, else read it to see whether it holds our write.
      Op op{FLOTILLA_OP_PUT, r.put_req.key(), r.put_req.value(), r.put_req.lease(), false};
      pb::TxnRequest t;
      *t.add_compare() = unchanged_since(op, r.guard_revision);
      *t.add_success() = to_pb(op);
      t.add_failure()->mutable_request_range()->set_key(op.key);
      host_->metric_counter_add(host_->host_ctx, "store_etcd_guarded_retries_total", 1);
      unary<pb::TxnResponse>(
          r, [&](Conn &c, grpc::ClientContext *ctx) { return c.kv->AsyncTxn(ctx, t, &cq_); },
          [this, id, failed](UnaryCall<pb::TxnResponse> &c) {
            if (!c.status.ok()) return failed(c.status);
            seen(c.resp.header());
            auto it = requests_.find(id);
            if (it == requests_.end()) return;
            Request &r = *it->second;
            int64_t rev = c.resp.header().revision();
            if (!c.resp.succeeded()) {
              const auto &kvs = c.resp.responses(0).response_range().kvs();
              if (kvs.empty() || kvs[0].value() != r.put_req.value() ||
                  kvs[0].lease() != r.put_req.lease() || kvs[0].mod_revision() <= r.guard_revision)
                return fail(id, FLOTILLA_E_UNAVAILABLE, kUncertain);
              rev = kvs[0].mod_revision();  // our first attempt was applied
            }
            auto owned = std::move(it->second);
            finish(id);
            owned->write_cb(owned->user, FLOTILLA_OK, rev);
            pump_writes();
          });
      return;
    }
    case Request::Kind::del: {
      if (!r.uncertain) {
        unary<pb::DeleteRangeResponse>(
            r,
            [&](Conn &c, grpc::ClientContext *ctx) {
              return c.kv->AsyncDeleteRange(ctx, r.del_req, &cq_);
            },
            [this, id, failed](UnaryCall<pb::DeleteRangeResponse> &c) {
              if (!c.status.ok()) return failed(c.status);
              seen(c.resp.header());
              auto it = requests_.find(id);
              if (it == requests_.end()) return;
              auto r = std::move(it->second);
              finish(id);
              r->delete_cb(r->user, FLOTILLA_OK, c.resp.header().revision(), c.resp.deleted());
              pump_writes();
            });
        return;
      }
      pb::TxnRequest t;
      pb::Compare g;
      g.set_key(r.del_req.key());
      g.set_range_end(r.del_req.range_end());
      g.set_target(pb::Compare::MOD);
      g.set_result(pb::Compare::LESS);
      g.set_mod_revision(r.guard_revision + 1);
      *t.add_compare() = g;
      *t.add_success()->mutable_request_delete_range() = r.del_req;
      host_->metric_counter_add(host_->host_ctx, "store_etcd_guarded_retries_total", 1);
      unary<pb::TxnResponse>(
          r, [&](Conn &c, grpc::ClientContext *ctx) { return c.kv->AsyncTxn(ctx, t, &cq_); },
          [this, id, failed](UnaryCall<pb::TxnResponse> &c) {
            if (!c.status.ok()) return failed(c.status);
            seen(c.resp.header());
            auto it = requests_.find(id);
            if (it == requests_.end()) return;
            if (!c.resp.succeeded()) return fail(id, FLOTILLA_E_UNAVAILABLE, kUncertain);
            auto r = std::move(it->second);
            finish(id);
            r->delete_cb(r->user, FLOTILLA_OK, c.resp.header().revision(),
                         c.resp.responses(0).response_delete_range().deleted());
            pump_writes();
          });
      return;
    }
    case Request::Kind::txn: {
      pb::TxnRequest t;
      r.wrapped = false;
      if (r.uncertain && !r.guards.empty()) {
        for (auto g : r.guards) {
          g.set_mod_revision(r.guard_revision + 1);
          *t.add_compare() = g;
        }
        *t.add_success()->mutable_request_txn() = r.txn_req;
        if (ops_needed(t) > config_.max_txn_ops)
          return fail(id, FLOTILLA_E_UNAVAILABLE,
                      "etcd became unreachable while the transaction was in flight, and it is "
                      "too large to be retried behind a guard; it may or may not have been "
                      "applied");
        r.wrapped = true;
        host_->metric_counter_add(host_->host_ctx, "store_etcd_guarded_retries_total", 1);
      } else {
        t = r.txn_req;  // writes nothing, or not yet sent: safe as it is
      }
      unary<pb::TxnResponse>(
          r, [&](Conn &c, grpc::ClientContext *ctx) { return c.kv->AsyncTxn(ctx, t, &cq_); },
          [this, id, failed](UnaryCall<pb::TxnResponse> &c) {
            if (!c.status.ok()) return failed(c.status);
            on_txn(id, c.resp);
          });
      return;
    }
    case Request::Kind::grant: {
      pb::LeaseGrantRequest req;
      req.set_ttl(r.number);
      unary<pb::LeaseGrantResponse>(
          r,
          [&](Conn &c, grpc::ClientContext *ctx) {
            return c.lease->AsyncLeaseGrant(ctx, req, &cq_);
          },
          [this, id, failed](UnaryCall<pb::LeaseGrantResponse> &c) {
            if (!c.status.ok()) return failed(c.status);
            seen(c.resp.header());
            if (!c.resp.error().empty())
              return fail(id, FLOTILLA_E_UNAVAILABLE, where() + ": " + c.resp.error());
            auto it = requests_.find(id);
            if (it == requests_.end()) return;
            auto r = std::move(it->second);
            finish(id);
            r->lease_cb(r->user, FLOTILLA_OK, c.resp.id(), c.resp.ttl());
          });
      return;
    }
    case Request::Kind::revoke: {
      pb::LeaseRevokeRequest req;
      req.set_id(r.number);
      unary<pb::LeaseRevokeResponse>(
          r,
          [&](Conn &c, grpc::ClientContext *ctx) {
            return c.lease->AsyncLeaseRevoke(ctx, req, &cq_);
          },
          [this, id, failed](UnaryCall<pb::LeaseRevokeResponse> &c) {
            auto it = requests_.find(id);
            if (it == requests_.end()) return;
            // A retried revoke finding no lease: the first one did it.
            const bool done =
                c.status.ok() ||
                (it->second->attempts > 1 && c.status.error_code() == grpc::StatusCode::NOT_FOUND);
            if (!done) {
              if (c.status.error_code() == grpc::StatusCode::NOT_FOUND)
                return fail(id, FLOTILLA_E_NOT_FOUND,
                            "lease " + std::to_string(it->second->number) +
                                " does not exist (expired or revoked?)");
              return failed(c.status);
            }
            seen(c.resp.header());
            auto r = std::move(it->second);
            finish(id);
            r->done_cb(r->user, FLOTILLA_OK);
            pump_writes();
          });
      return;
    }
    case Request::Kind::compact: {
      pb::CompactionRequest req;
      req.set_revision(r.number);
      unary<pb::CompactionResponse>(
          r, [&](Conn &c, grpc::ClientContext *ctx) { return c.kv->AsyncCompact(ctx, req, &cq_); },
          [this, id, failed](UnaryCall<pb::CompactionResponse> &c) {
            auto it = requests_.find(id);
            if (it == requests_.end()) return;
            const bool done = c.status.ok() || (it->second->attempts > 1 &&
                                                map_status(c.status) == FLOTILLA_E_COMPACTED);
            if (!done) {
              if (map_status(c.status) != FLOTILLA_E_UNAVAILABLE)
                return fail(id, map_status(c.status), where() + ": " + c.status.error_message());
              return failed(c.status);
            }
            seen(c.resp.header());
            auto r = std::move(it->second);
            finish(id);
            r->done_cb(r->user, FLOTILLA_OK);
            pump_writes();
          });
      return;
    }
    case Request::Kind::keepalive:
      return;  // sent on the LeaseKeepAlive stream
  }
}

void EtcdStore::on_range(uint64_t id, pb::RangeResponse &resp) {
  seen(resp.header());
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request &r = *it->second;
  if (r.kvs.empty() && r.pinned == 0) r.pinned = resp.header().revision();
  if (r.read_revision == 0) r.read_revision = resp.header().revision();
  for (auto &kv : *resp.mutable_kvs()) r.kvs.push_back(std::move(kv));
  const bool limit_reached = r.limit > 0 && static_cast<int64_t>(r.kvs.size()) >= r.limit;
  if (resp.more() && !limit_reached) {
    // The next page, at the same revision as the first.
    r.attempts = 0;
    return send(id);
  }
  auto owned = std::move(it->second);
  finish(id);
  std::vector<flotilla_kv> out;
  out.reserve(owned->kvs.size());
  for (const auto &kv : owned->kvs) {
    flotilla_kv k{};
    k.struct_size = sizeof k;
    k.key = kv.key().data();
    k.key_len = kv.key().size();
    k.value = kv.value().data();
    k.value_len = kv.value().size();
    k.create_revision = kv.create_revision();
    k.mod_revision = kv.mod_revision();
    k.version = kv.version();
    k.lease = kv.lease();
    out.push_back(k);
  }
  owned->range_cb(owned->user, FLOTILLA_OK, out.data(), out.size(), owned->read_revision,
                  resp.more() ? 1 : 0);
}

void EtcdStore::on_txn(uint64_t id, pb::TxnResponse &resp) {
  seen(resp.header());
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request &r = *it->second;
  if (r.pipelined) {
    // Held until the answers before it were given; a chained one's refusal
    // may be sent again (pump_writes), a sibling's is final.
    const bool refused = !r.sibling && !r.wrapped && !resp.succeeded();
    if (refused || (!in_flight_.empty() && in_flight_.front() != id)) {
      auto keep = std::make_shared<pb::TxnResponse>(std::move(resp));
      r.held = [this, id, keep] { deliver_txn(id, *keep); };
      r.held_refused = refused;
      return pump_writes();
    }
  }
  deliver_txn(id, resp);
}

void EtcdStore::deliver_txn(uint64_t id, const pb::TxnResponse &resp) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request &r = *it->second;
  const pb::TxnResponse *t = &resp;
  if (r.wrapped) {
    if (!t->succeeded()) return fail(id, FLOTILLA_E_UNAVAILABLE, kUncertain);
    t = &t->responses(0).response_txn();
  }
  for (size_t i = 0; i < r.emulated; ++i) t = &t->responses(0).response_txn();
  auto owned = std::move(it->second);
  finish(id);
  last_write_succeeded_ = t->succeeded();
  owned->txn_cb(owned->user, FLOTILLA_OK, t->succeeded() ? 1 : 0, resp.header().revision());
  pump_writes();
}

// ---- the API -------------------------------------------------------------------------

void EtcdStore::range(const KeyRange &kr, int64_t revision, int64_t limit,
                      flotilla_store_range_cb cb, void *user) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::range;
  r->what = "range " + show_range(kr);
  r->range_cb = cb;
  r->user = user;
  r->range_req.set_key(kr.key);
  r->range_req.set_range_end(kr.end);
  r->pinned = revision;
  r->limit = limit;
  add_request(std::move(r));
}

void EtcdStore::put(std::string key, std::string value, int64_t lease, flotilla_store_write_cb cb,
                    void *user) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::put;
  r->ordered = true;
  r->what = "put " + show(key);
  r->write_cb = cb;
  r->user = user;
  r->put_req.set_key(std::move(key));
  r->put_req.set_value(std::move(value));
  r->put_req.set_lease(lease);
  const int64_t size = static_cast<int64_t>(r->put_req.ByteSizeLong());
  if (size + kRaftOverheadBytes > config_.max_request_bytes)
    throw StoreError(FLOTILLA_E_INVALID,
                     r->what + ": the request is " + std::to_string(size) +
                         " bytes; etcd accepts at most " +
                         std::to_string(config_.max_request_bytes) + " bytes per request, about " +
                         std::to_string(kRaftOverheadBytes) +
                         " of them its own (plugin.store-etcd.max_request_bytes, etcd's "
                         "--max-request-bytes)");
  add_request(std::move(r));
}

void EtcdStore::delete_range(const KeyRange &kr, flotilla_store_delete_cb cb, void *user) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::del;
  r->ordered = true;
  r->what = "delete " + show_range(kr);
  r->delete_cb = cb;
  r->user = user;
  r->del_req.set_key(kr.key);
  r->del_req.set_range_end(kr.end);
  add_request(std::move(r));
}

void EtcdStore::txn(const std::vector<Compare> &cmps, const std::vector<Op> &success,
                    const std::vector<Op> &failure, flotilla_store_txn_cb cb, void *user) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::txn;
  r->ordered = true;
  r->what = "txn";
  r->txn_cb = cb;
  r->user = user;
  const int64_t plain =
      std::max<int64_t>({static_cast<int64_t>(cmps.size()), static_cast<int64_t>(success.size()),
                         static_cast<int64_t>(failure.size())});
  if (plain > config_.max_txn_ops)
    throw StoreError(
        FLOTILLA_E_INVALID,
        "txn: " + std::to_string(cmps.size()) + " compares, " + std::to_string(success.size()) +
            " success and " + std::to_string(failure.size()) +
            " failure operations; etcd accepts at most " + std::to_string(config_.max_txn_ops) +
            " of each in one transaction (plugin.store-etcd.max_txn_ops, etcd's "
            "--max-txn-ops). Split it into several transactions");
  std::vector<const Compare *> emulated;
  std::vector<pb::Compare> base;
  for (const auto &c : cmps) {
    if (holds_for_absent(c))
      emulated.push_back(&c);
    else
      base.push_back(to_pb(c));
  }
  constexpr size_t kMaxEmulated = 4;
  if (emulated.size() > kMaxEmulated)
    throw StoreError(FLOTILLA_E_INVALID,
                     "txn: " + std::to_string(emulated.size()) +
                         " VALUE compares that an absent key satisfies (value \"\" compared "
                         "equal, or a non-empty value compared not equal or less); store-etcd "
                         "emulates at most " +
                         std::to_string(kMaxEmulated) +
                         " of them in one transaction. Compare VERSION for absence instead");
  std::vector<pb::RequestOp> s_ops, f_ops;
  for (const auto &op : success) s_ops.push_back(to_pb(op));
  for (const auto &op : failure) f_ops.push_back(to_pb(op));
  r->txn_req = build_tree(emulated, 0, std::move(base), s_ops, f_ops);
  r->emulated = emulated.size();
  const int64_t need = ops_needed(r->txn_req);
  if (need > config_.max_txn_ops)
    throw StoreError(FLOTILLA_E_INVALID,
                     "txn: with its " + std::to_string(emulated.size()) +
                         " emulated absent-key VALUE compares it needs " + std::to_string(need) +
                         " operations; etcd accepts at most " +
                         std::to_string(config_.max_txn_ops) +
                         " (plugin.store-etcd.max_txn_ops). Split it into several transactions");
  const int64_t size = static_cast<int64_t>(r->txn_req.ByteSizeLong());
  if (size + kRaftOverheadBytes > config_.max_request_bytes)
    throw StoreError(FLOTILLA_E_INVALID,
                     "txn: the request is " + std::to_string(size) +
                         " bytes; etcd accepts at most " +
                         std::to_string(config_.max_request_bytes) + " bytes per request, about " +
                         std::to_string(kRaftOverheadBytes) +
                         " of them its own (plugin.store-etcd.max_request_bytes, etcd's "
                         "--max-request-bytes). Split it into several transactions");
  // Guards for a retry: the first put (or delete) of each branch.
  for (const auto *branch : {&success, &failure}) {
    const Op *pick = nullptr;
    for (const auto &op : *branch)
      if (op.type == FLOTILLA_OP_PUT) {
        pick = &op;
        break;
      }
    if (!pick && !branch->empty()) pick = &branch->front();
    if (pick) r->guards.push_back(unchanged_since(*pick, 0));
  }
  add_request(std::move(r));
}

void EtcdStore::compact(int64_t revision, flotilla_done_cb cb, void *user) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::compact;
  r->ordered = true;
  r->what = "compact " + std::to_string(revision);
  r->done_cb = cb;
  r->user = user;
  r->number = revision;
  add_request(std::move(r));
}

void EtcdStore::lease_grant(int64_t ttl, flotilla_lease_cb cb, void *user) {
  if (ttl <= 0 || ttl > kMaxLeaseTtlSeconds)
    throw StoreError(FLOTILLA_E_INVALID, "lease_grant: TTL " + std::to_string(ttl) +
                                             " s is out of range; use 1 to " +
                                             std::to_string(kMaxLeaseTtlSeconds) + " s");
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::grant;
  r->what = "lease_grant";
  r->lease_cb = cb;
  r->user = user;
  r->number = ttl;
  add_request(std::move(r));
}

void EtcdStore::lease_revoke(int64_t lease, flotilla_done_cb cb, void *user) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::revoke;
  r->ordered = true;
  r->what = "lease_revoke " + std::to_string(lease);
  r->done_cb = cb;
  r->user = user;
  r->number = lease;
  add_request(std::move(r));
}

void EtcdStore::lease_keepalive(int64_t lease, flotilla_lease_cb cb, void *user) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::keepalive;
  r->what = "lease_keepalive " + std::to_string(lease);
  r->lease_cb = cb;
  r->user = user;
  r->number = lease;
  const uint64_t id = add_request(std::move(r));
  keepalives_[lease].push_back(id);
  // The request's deadline: no answer in time fails it.
  struct Ctx {
    EtcdStore *s;
    uint64_t id;
  };
  auto *ctx = new Ctx{this, id};
  flotilla_handle h = host_->timer_start(
      host_->host_ctx, static_cast<uint64_t>(config_.request_timeout_ms), 0,
      [](void *user) {
        std::unique_ptr<Ctx> c(static_cast<Ctx *>(user));
        c->s->timers_.erase(c->id);
        c->s->fail(c->id, FLOTILLA_E_UNAVAILABLE,
                   c->s->where() + ": no answer within plugin.store-etcd.request_timeout_ms = " +
                       std::to_string(c->s->config_.request_timeout_ms) + " ms");
      },
      ctx);
  if (h)
    timers_[id] = h;
  else
    delete ctx;
  ensure_lease_stream();
  pb::LeaseKeepAliveRequest req;
  req.set_id(lease);
  lease_stream_->write(req);
}

// ---- leases ----------------------------------------------------------------------------

void EtcdStore::ensure_lease_stream() {
  if (lease_stream_ || closing_) return;
  auto s = std::make_unique<LeaseStream>(this, conn_, &cq_);
  lease_stream_ = s.get();
  streams_.push_back(std::move(s));
}

void EtcdStore::keepalive_response(const pb::LeaseKeepAliveResponse &resp) {
  seen(resp.header());
  restart_backoff_ms_ = 0;
  auto it = keepalives_.find(resp.id());
  if (it == keepalives_.end() || it->second.empty()) return;
  const uint64_t id = it->second.front();
  it->second.pop_front();
  if (it->second.empty()) keepalives_.erase(it);
  auto r = requests_.find(id);
  if (r == requests_.end()) return;
  if (resp.ttl() <= 0)
    return fail(id, FLOTILLA_E_NOT_FOUND,
                "lease " + std::to_string(resp.id()) + " does not exist (expired or revoked?)");
  auto owned = std::move(r->second);
  finish(id);
  owned->lease_cb(owned->user, FLOTILLA_OK, resp.id(), resp.ttl());
}

void EtcdStore::lease_stream_dead(LeaseStream *s, const grpc::Status &status) {
  if (s != lease_stream_) return;
  lease_stream_ = nullptr;
  if (closing_) return;
  if (transport_failure(status)) endpoint_failed(s->generation(), status.error_message());
  bool waiting = false;
  for (auto &[lease, ids] : keepalives_) waiting |= !ids.empty();
  if (waiting) schedule_stream_restart();
}

// ---- watches -----------------------------------------------------------------------------

flotilla_store_watch_id EtcdStore::watch(const KeyRange &r, int64_t start_revision,
                                         flotilla_store_watch_cb cb, void *user) {
  if (closing_) throw StoreError(FLOTILLA_E_CANCELLED, "store-etcd is shutting down");
  auto w = std::make_unique<WatchState>();
  w->id = next_watch_++;
  w->range = r;
  w->next_revision = start_revision;
  w->cb = cb;
  w->user = user;
  WatchState &ref = *w;
  watches_.emplace(w->id, std::move(w));
  host_->metric_gauge_set(host_->host_ctx, "store_etcd_watches",
                          static_cast<double>(watches_.size()));
  if (start_revision == 0) {
    // "From the next change" means after this call: writes made after it
    // wait until etcd has told which revision the watch starts from.
    ref.zero_hold = true;
    ++zero_holds_;
  }
  if (watch_stream_)
    send_create(ref);
  else
    ensure_watch_stream();
  return ref.id;
}

void EtcdStore::release_zero_hold(WatchState &w) {
  if (!w.zero_hold) return;
  w.zero_hold = false;
  --zero_holds_;
  pump_writes();
}

void EtcdStore::send_create(WatchState &w) {
  pb::WatchRequest req;
  auto *c = req.mutable_create_request();
  c->set_key(w.range.key);
  c->set_range_end(w.range.end);
  c->set_start_revision(w.next_revision);
  w.server_id = -1;
  watch_stream_->creating.push_back(w.id);
  watch_stream_->write(std::move(req));
}

void EtcdStore::ensure_watch_stream() {
  if (watch_stream_ || closing_ || watches_.empty()) return;
  auto s = std::make_unique<WatchStream>(this, conn_, &cq_);
  watch_stream_ = s.get();
  streams_.push_back(std::move(s));
  for (auto &[id, w] : watches_) send_create(*w);
}

void EtcdStore::watch_cancel(flotilla_store_watch_id id) {
  auto it = watches_.find(id);
  if (it == watches_.end()) return;
  std::unique_ptr<WatchState> w = std::move(it->second);
  watches_.erase(it);
  host_->metric_gauge_set(host_->host_ctx, "store_etcd_watches",
                          static_cast<double>(watches_.size()));
  if (w->server_id >= 0 && watch_stream_ && !closing_) {
    pb::WatchRequest req;
    req.mutable_cancel_request()->set_watch_id(w->server_id);
    watch_stream_->write(std::move(req));
  }
  release_zero_hold(*w);
}

void EtcdStore::end_watch(flotilla_store_watch_id id, flotilla_status status,
                          const std::string &message, int64_t revision) {
  auto it = watches_.find(id);
  if (it == watches_.end()) return;
  std::unique_ptr<WatchState> w = std::move(it->second);
  watches_.erase(it);
  host_->metric_gauge_set(host_->host_ctx, "store_etcd_watches",
                          static_cast<double>(watches_.size()));
  if (w->zero_hold) {
    w->zero_hold = false;
    --zero_holds_;
  }
  report("watch " + show_range(w->range) + ": " + message);
  w->cb(w->user, status, nullptr, 0, revision);
  pump_writes();
}

void EtcdStore::watch_response(WatchStream *s, pb::WatchResponse &resp) {
  if (s != watch_stream_ || closing_) return;
  restart_backoff_ms_ = 0;
  seen(resp.header());
  if (resp.created()) {
    if (s->creating.empty()) return;
    const flotilla_store_watch_id id = s->creating.front();
    s->creating.pop_front();
    auto it = watches_.find(id);
    if (it == watches_.end()) {
      // Cancelled before etcd answered.
      if (!resp.canceled()) {
        pb::WatchRequest req;
        req.mutable_cancel_request()->set_watch_id(resp.watch_id());
        s->write(std::move(req));
      }
      return;
    }
    WatchState &w = *it->second;
    if (resp.canceled()) {
      return end_watch(id, FLOTILLA_E_UNAVAILABLE,
                       where() + " refused the watch: " + resp.cancel_reason(), last_revision_);
    }
    w.server_id = resp.watch_id();
    s->by_server_id[resp.watch_id()] = id;
    if (w.next_revision == 0) w.next_revision = resp.header().revision() + 1;
    release_zero_hold(w);
    if (resp.events_size() == 0) return;
  }
  auto sid = s->by_server_id.find(resp.watch_id());
  if (sid == s->by_server_id.end()) return;
  const flotilla_store_watch_id id = sid->second;
  if (resp.canceled()) {
    s->by_server_id.erase(sid);
    if (!watches_.count(id)) return;
    if (resp.compact_revision() != 0)
      return end_watch(
          id, FLOTILLA_E_COMPACTED,
          "start revision " + std::to_string(watches_[id]->next_revision) +
              " was compacted; etcd keeps history from revision " +
              std::to_string(resp.compact_revision()) +
              ". Read the range again (at one revision) and watch from that revision + 1",
          resp.compact_revision());
    const std::string reason =
        resp.cancel_reason().empty() ? "no reason given" : resp.cancel_reason();
    return end_watch(
        id, contains(reason, "permission") ? FLOTILLA_E_PERMISSION : FLOTILLA_E_UNAVAILABLE,
        where() + " cancelled the watch: " + reason, last_revision_);
  }
  // Deliver one callback per revision, never one already delivered.
  std::vector<flotilla_watch_event> batch;
  int i = 0;
  const int n = resp.events_size();
  while (i < n) {
    auto it = watches_.find(id);
    if (it == watches_.end()) return;  // cancelled from a callback
    const int64_t rev = resp.events(i).kv().mod_revision();
    batch.clear();
    int j = i;
    for (; j < n && resp.events(j).kv().mod_revision() == rev; ++j) {
      const pb::Event &e = resp.events(j);
      flotilla_watch_event ev{};
      ev.struct_size = sizeof ev;
      ev.type = e.type() == pb::Event::DELETE ? FLOTILLA_EVENT_DELETE : FLOTILLA_EVENT_PUT;
      ev.kv.struct_size = sizeof ev.kv;
      ev.kv.key = e.kv().key().data();
      ev.kv.key_len = e.kv().key().size();
      ev.kv.value = e.kv().value().data();
      ev.kv.value_len = ev.type == FLOTILLA_EVENT_DELETE ? 0 : e.kv().value().size();
      ev.kv.mod_revision = rev;
      if (ev.type == FLOTILLA_EVENT_PUT) {
        ev.kv.create_revision = e.kv().create_revision();
        ev.kv.version = e.kv().version();
        ev.kv.lease = e.kv().lease();
      }
      batch.push_back(ev);
    }
    i = j;
    WatchState &w = *it->second;
    if (rev < w.next_revision) continue;  // already delivered before a resume
    w.next_revision = rev + 1;
    w.cb(w.user, FLOTILLA_OK, batch.data(), batch.size(), rev);
  }
}

void EtcdStore::watch_stream_dead(WatchStream *s, const grpc::Status &status) {
  if (s != watch_stream_) return;
  watch_stream_ = nullptr;
  if (closing_) return;
  if (transport_failure(status)) endpoint_failed(s->generation(), status.error_message());
  if (watches_.empty()) return;
  if (failovers_in_a_row_ <= 1)
    log(FLOTILLA_LOG_INFO, "watch stream to " + config_.endpoints[s->conn().endpoint].url +
                               " ended (" + status.error_message() + "); resuming " +
                               std::to_string(watches_.size()) + " watches");
  for (auto &[id, w] : watches_) {
    w->server_id = -1;
    if (w->zero_hold) {
      // etcd never fixed its start: from the last revision this client saw.
      w->next_revision = last_revision_ + 1;
      w->zero_hold = false;
      --zero_holds_;
    }
  }
  host_->metric_counter_add(host_->host_ctx, "store_etcd_watch_resumes_total", 1);
  schedule_stream_restart();
  pump_writes();
}

void EtcdStore::schedule_stream_restart() {
  if (restart_timer_ || closing_) return;
  restart_backoff_ms_ =
      restart_backoff_ms_ ? std::min<uint64_t>(2000, restart_backoff_ms_ * 2) : 25;
  restart_timer_ = host_->timer_start(
      host_->host_ctx, restart_backoff_ms_, 0,
      [](void *user) {
        auto *s = static_cast<EtcdStore *>(user);
        s->restart_timer_ = 0;
        s->ensure_watch_stream();
        bool waiting = false;
        for (auto &[lease, ids] : s->keepalives_) waiting |= !ids.empty();
        if (waiting && !s->lease_stream_) {
          s->ensure_lease_stream();
          // Resend what was waiting, in the order it was asked.
          std::vector<std::pair<uint64_t, int64_t>> all;
          for (auto &[lease, ids] : s->keepalives_)
            for (uint64_t id : ids) all.emplace_back(id, lease);
          std::sort(all.begin(), all.end());
          for (auto &[id, lease] : all) {
            pb::LeaseKeepAliveRequest req;
            req.set_id(lease);
            s->lease_stream_->write(req);
          }
        }
      },
      this);
}

}  // namespace flotilla::store_etcd
