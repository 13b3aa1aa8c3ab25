#include "vip_sync.h"

#include <atomic>
#include <memory>
#include <thread>

#include "conntrack_flush.h"
#include "nft.h"

namespace flotilla::discovery {

struct VipSync::Job {
  VipSync *owner = nullptr;
  nft::Batch batch;
  bool setup = false;                                          // the table's set-up first
  std::map<std::string, std::optional<VipService>> target;     // what applied_ becomes
  std::vector<std::pair<std::string, std::string>> udp_flush;  // vip, backend
  std::string error;
  int flushed = 0;
  std::chrono::steady_clock::time_point since;
  std::atomic<bool> worked{false};  // work() has returned
};

namespace {

nft::Context &thread_context() {
  // libnftables contexts are not thread-safe: one per worker thread.
  thread_local nft::Context ctx;
  return ctx;
}

}  // namespace

VipSync::VipSync(const flotilla_host *host, std::string table, uint32_t mark)
    : host_(host), map_(std::move(table), mark) {}

VipSync::~VipSync() {
  // A batch in flight: wait for its work to return (it touches only its
  // job), then free the job here, since no `after` runs once the plugin's
  // deinit has returned.
  // A job the pool never started (the daemon stopping) is left alone after
  // 2 s rather than freed under a worker that might still pick it up.
  if (in_flight_ && job_) {
    for (int i = 0; i < 2000 && !job_->worked.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (job_->worked.load()) delete job_;
  }
}

void VipSync::start() {
  started_ = true;
  changed_at_ = std::chrono::steady_clock::now();
  schedule();
}

void VipSync::want(const std::string &name, std::optional<VipService> s) {
  auto it = desired_.find(name);
  if (!s && it == desired_.end()) return;
  if (s && it != desired_.end() && it->second == *s) return;
  if (dirty_.empty() && !in_flight_) changed_at_ = std::chrono::steady_clock::now();
  if (s)
    desired_[name] = std::move(*s);
  else
    desired_.erase(it);
  dirty_.insert(name);
  schedule();
}

void VipSync::want_all(std::map<std::string, VipService> desired) {
  if (dirty_.empty() && !in_flight_) changed_at_ = std::chrono::steady_clock::now();
  for (const auto &[n, s] : desired_)
    if (!desired.count(n)) dirty_.insert(n);
  for (const auto &[n, s] : desired) {
    auto it = desired_.find(n);
    if (it == desired_.end() || !(it->second == s)) dirty_.insert(n);
  }
  desired_ = std::move(desired);
  schedule();
}

void VipSync::schedule() {
  if (!started_ || in_flight_ || (set_up_ && dirty_.empty())) return;
  auto job = std::make_unique<Job>();
  job->owner = this;
  job->since = changed_at_;
  if (!set_up_) {
    // From an empty table: everything desired.
    job->setup = true;
    applied_.clear();
    for (auto &c : map_.setup()) job->batch.add(c);
    for (const auto &[n, s] : desired_) dirty_.insert(n);
  }
  VipChange change;
  for (const auto &n : dirty_) {
    auto b = applied_.find(n);
    auto a = desired_.find(n);
    const VipService *before = b == applied_.end() ? nullptr : &b->second;
    const VipService *after = a == desired_.end() ? nullptr : &a->second;
    if (!before && !after) continue;
    VipService placed = map_.update(before, after, change);
    if (after)
      job->target[n] = std::move(placed);
    else
      job->target[n] = std::nullopt;
    if (before) {
      std::set<VipBackend> keep;
      if (after && after->vip == before->vip)
        keep.insert(after->backends.begin(), after->backends.end());
      for (const auto &be : before->backends)
        if (!keep.count(be)) job->udp_flush.emplace_back(before->vip, be.address);
    }
  }
  dirty_.clear();
  for (auto &c : change.commands(map_.table())) job->batch.add(std::move(c));
  if (job->batch.empty()) {
    // Nothing differs (a change undone before it was applied).
    for (auto &[n, s] : job->target)
      if (s)
        applied_[n] = std::move(*s);
      else
        applied_.erase(n);
    return;
  }
  in_flight_ = true;
  Job *raw = job.release();
  job_ = raw;
  if (host_->queue_work(host_->host_ctx, work, after, raw) != FLOTILLA_OK) {
    in_flight_ = false;
    job_ = nullptr;
    delete raw;
    set_up_ = false;  // start again from scratch with the next change
  }
}

void VipSync::work(void *user) {
  auto *job = static_cast<Job *>(user);
  struct Mark {
    Job *j;
    ~Mark() { j->worked.store(true); }
  } mark{job};
  try {
    thread_context().apply(job->batch);
  } catch (const std::exception &e) {
    job->error = e.what();
    return;
  }
  if (!job->udp_flush.empty()) {
    std::string err;
    int n = flush_udp_conntrack(job->udp_flush, err);
    if (n > 0) job->flushed += n;
  }
}

void VipSync::after(void *user, flotilla_status status) {
  std::unique_ptr<Job> job(static_cast<Job *>(user));
  VipSync &s = *job->owner;
  s.in_flight_ = false;
  s.job_ = nullptr;
  if (status != FLOTILLA_OK || !job->error.empty()) {
    s.last_error_ = job->error.empty() ? "cancelled" : job->error;
    std::string m =
        "VIP table ip " + s.map_.table() + ": " +
        (job->setup ? "set-up refused (" : "batch refused (") + s.last_error_ +
        (job->setup ? "); virtual IPs do not work until it succeeds" : "); rebuilding the table");
    s.host_->log(s.host_->host_ctx, FLOTILLA_LOG_ERROR, m.c_str());
    // The next batch builds the table from scratch with everything desired.
    // After a refused set-up, that waits for the next change.
    for (auto &[n, t] : job->target) s.dirty_.insert(n);
    const bool retry = !job->setup;
    s.set_up_ = false;
    if (retry) {
      s.changed_at_ = std::chrono::steady_clock::now();
      s.schedule();
    }
    return;
  }
  s.set_up_ = true;
  s.last_error_.clear();
  for (auto &[n, t] : job->target)
    if (t)
      s.applied_[n] = std::move(*t);
    else
      s.applied_.erase(n);
  ++s.batches_;
  s.last_apply_ms_ =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - job->since)
          .count();
  s.host_->metric_gauge_set(s.host_->host_ctx, "discovery_vip_update_last_ms", s.last_apply_ms_);
  if (job->flushed)
    s.host_->metric_counter_add(s.host_->host_ctx, "discovery_vip_conntrack_flushed_total",
                                job->flushed);
  if (!s.dirty_.empty()) {
    s.changed_at_ = std::chrono::steady_clock::now();
    s.schedule();
  }
}

}  // namespace flotilla::discovery
