#include "vip_sync.h"

#include <atomic>
#include <set>
#include <thread>

#include "conntrack_flush.h"
#include "nft.h"

namespace flotilla::discovery {

struct VipSync::Job {
  VipSync *owner = nullptr;
  nft::Batch batch;
  std::map<std::string, VipService> target;                    // what applied_ becomes
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

bool VipSync::start(std::string &error) {
  try {
    nft::Context ctx;
    nft::Batch b;
    b.delete_table_if_exists("ip", map_.table());
    for (auto &c : map_.setup()) b.add(c);
    ctx.apply(b);
    return true;
  } catch (const std::exception &e) {
    error = e.what();
    return false;
  }
}

void VipSync::want(std::map<std::string, VipService> desired) {
  if (desired == desired_) return;
  if (desired_ == applied_) changed_at_ = std::chrono::steady_clock::now();
  desired_ = std::move(desired);
  schedule();
}

void VipSync::schedule() {
  if (in_flight_ || desired_ == applied_) return;
  auto job = std::make_unique<Job>();
  job->owner = this;
  job->since = changed_at_;
  std::set<std::string> names;
  for (auto &[n, s] : desired_) names.insert(n);
  for (auto &[n, s] : applied_) names.insert(n);
  for (const auto &n : names) {
    auto b = applied_.find(n);
    auto a = desired_.find(n);
    const VipService *before = b == applied_.end() ? nullptr : &b->second;
    const VipService *after = a == desired_.end() ? nullptr : &a->second;
    for (auto &c : map_.update(before, after)) job->batch.add(c);
    if (before) {
      std::set<VipBackend> keep;
      if (after && after->vip == before->vip)
        keep.insert(after->backends.begin(), after->backends.end());
      for (const auto &be : before->backends)
        if (!keep.count(be)) job->udp_flush.emplace_back(before->vip, be.address);
    }
  }
  job->target = desired_;
  in_flight_ = true;
  Job *raw = job.release();
  job_ = raw;
  if (host_->queue_work(host_->host_ctx, work, after, raw) != FLOTILLA_OK) {
    in_flight_ = false;
    job_ = nullptr;
    delete raw;
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
  for (const auto &[vip, backend] : job->udp_flush) {
    std::string err;
    int n = flush_udp_conntrack(vip, backend, err);
    if (n > 0) job->flushed += n;
  }
}

void VipSync::after(void *user, flotilla_status status) {
  std::unique_ptr<Job> job(static_cast<Job *>(user));
  VipSync &s = *job->owner;
  s.in_flight_ = false;
  s.job_ = nullptr;
  if (status != FLOTILLA_OK || !job->error.empty()) {
    std::string m = "VIP table " + s.map_.table() + ": batch refused (" +
                    (job->error.empty() ? "cancelled" : job->error) + "); rebuilding the table";
    s.host_->log(s.host_->host_ctx, FLOTILLA_LOG_ERROR, m.c_str());
    std::string err;
    s.applied_.clear();
    if (!s.start(err)) {
      s.host_->log(s.host_->host_ctx, FLOTILLA_LOG_ERROR, ("VIP table: " + err).c_str());
      return;
    }
  } else {
    s.applied_ = std::move(job->target);
    ++s.batches_;
    s.last_apply_ms_ =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - job->since)
            .count();
    s.host_->metric_gauge_set(s.host_->host_ctx, "discovery_vip_update_last_ms", s.last_apply_ms_);
    if (job->flushed)
      s.host_->metric_counter_add(s.host_->host_ctx, "discovery_vip_conntrack_flushed_total",
                                  job->flushed);
  }
  if (s.desired_ != s.applied_) {
    s.changed_at_ = std::chrono::steady_clock::now();
    s.schedule();
  }
}

}  // namespace flotilla::discovery
