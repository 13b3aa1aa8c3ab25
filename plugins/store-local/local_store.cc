#include "local_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <set>

#include "snapshot_file.h"

namespace flotilla::store_local {

// ---- files -----------------------------------------------------------------

namespace {

constexpr const char *kLockName = "LOCK";

std::string errno_text(int err) {
  return std::strerror(err);
}

bool write_all(int fd, std::string_view data, int *err) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string read_file(const std::string &path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    throw StoreError(FLOTILLA_E_IO, "cannot open " + path + ": " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    throw StoreError(FLOTILLA_E_IO, "cannot stat " + path + ": " + errno_text(errno));
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw StoreError(FLOTILLA_E_IO, "cannot read " + path + ": " + errno_text(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

std::string numbered(const char *prefix, uint64_t seq, const char *suffix) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%016" PRIx64 "%s", prefix, seq, suffix);
  return buf;
}

// "wal-00000000000000ff.log" -> 255
bool parse_numbered(const std::string &name, std::string_view prefix, std::string_view suffix,
                    uint64_t *seq) {
  if (name.size() != prefix.size() + 16 + suffix.size()) return false;
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  uint64_t v = 0;
  for (size_t i = prefix.size(); i < prefix.size() + 16; ++i) {
    char c = name[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *seq = v;
  return true;
}

std::string segment_name(uint64_t first_seq) {
  return numbered("wal-", first_seq, ".log");
}
std::string snapshot_name(uint64_t seq) {
  return numbered("snap-", seq, ".snap");
}

template <class Fn>
void call_guarded(const LocalStore &store, const char *what, Fn fn) {
  try {
    fn();
  } catch (const std::exception &e) {
    store.log(FLOTILLA_LOG_ERROR, std::string(what) + " threw: " + e.what());
  } catch (...) {
    store.log(FLOTILLA_LOG_ERROR, std::string(what) + " threw a non-standard exception");
  }
}

flotilla_kv c_kv(const KeyValue &kv) {
  flotilla_kv out{};
  out.struct_size = sizeof out;
  out.key = kv.key.data();
  out.key_len = kv.key.size();
  out.value = kv.value.data();
  out.value_len = kv.value.size();
  out.create_revision = kv.create_revision;
  out.mod_revision = kv.mod_revision;
  out.version = kv.version;
  out.lease = kv.lease;
  return out;
}

}  // namespace

struct LocalStore::Segment {
  std::string path;
  uint64_t first_seq = 0;
  UniqueFd fd;              // opened by the first flush that writes to it when not at start-up
  bool dir_synced = false;  // its directory entry is durable
};

struct LocalStore::Chunk {
  std::shared_ptr<Segment> segment;
  std::string bytes;
};

// Counts jobs on the thread pool so close() can wait for them. Shared with
// the jobs, so a worker finishing after the store is gone touches only this.
class LocalStore::JobTracker {
 public:
  void started() {
    std::lock_guard lock(mutex_);
    ++running_;
  }
  void finished() {
    std::lock_guard lock(mutex_);
    --running_;
    idle_.notify_all();
  }
  void wait_idle() {
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [this] { return running_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable idle_;
  int running_ = 0;
};

struct LocalStore::FlushJob {
  LocalStore *store = nullptr;
  std::shared_ptr<JobTracker> tracker;
  std::vector<std::unique_ptr<Chunk>> chunks;
  int dir_fd = -1;
  bool fsync = true;
  bool sync_dir = false;
  uint64_t last_seq = 0;
  int64_t last_revision = 0;
  size_t records = 0;
  size_t bytes = 0;
  std::string error;  // set by the worker

  // [worker-thread] Write every chunk, then make it durable.
  void run() {
    std::vector<Segment *> touched;
    for (auto &c : chunks) {
      Segment &seg = *c->segment;
      if (!seg.fd.valid()) {
        seg.fd.reset(::open(seg.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
        if (!seg.fd.valid()) {
          error = "cannot create " + seg.path + ": " + errno_text(errno);
          return;
        }
        sync_dir = true;
      }
      int err = 0;
      if (!write_all(seg.fd.get(), c->bytes, &err)) {
        error = "cannot write " + seg.path + ": " + errno_text(err);
        return;
      }
      if (touched.empty() || touched.back() != &seg) touched.push_back(&seg);
    }
    if (!fsync) return;
    for (Segment *seg : touched)
      if (::fdatasync(seg->fd.get()) != 0) {
        error = "fdatasync " + seg->path + ": " + errno_text(errno);
        return;
      }
    if (sync_dir && ::fsync(dir_fd) != 0)
      error = "fsync of the data directory: " + errno_text(errno);
  }
};

struct LocalStore::SnapshotJob {
  LocalStore *store = nullptr;
  std::shared_ptr<JobTracker> tracker;
  int dir_fd = -1;
  bool fsync = true;
  uint64_t seq = 0;
  std::string bytes;
  std::string path;
  std::vector<std::string> obsolete;  // files the snapshot makes unnecessary
  size_t obsolete_segments = 0;       // how many of segments_ (from the front) those are
  std::string error;
  std::vector<std::string> warnings;

  // [worker-thread] temp file, fsync, rename, fsync directory, then delete
  // what the snapshot replaces.
  void run() {
    const std::string tmp = path + ".tmp";
    {
      UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      if (!fd.valid()) {
        error = "cannot create " + tmp + ": " + errno_text(errno);
        return;
      }
      int err = 0;
      if (!write_all(fd.get(), bytes, &err)) {
        error = "cannot write " + tmp + ": " + errno_text(err);
        ::unlink(tmp.c_str());
        return;
      }
      if (fsync && ::fsync(fd.get()) != 0) {
        error = "fsync " + tmp + ": " + errno_text(errno);
        ::unlink(tmp.c_str());
        return;
      }
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      error = "cannot rename " + tmp + " to " + path + ": " + errno_text(errno);
      ::unlink(tmp.c_str());
      return;
    }
    if (fsync && ::fsync(dir_fd) != 0) {
      error = "fsync of the data directory after writing " + path + ": " + errno_text(errno);
      return;
    }
    for (const auto &p : obsolete)
      if (::unlink(p.c_str()) != 0 && errno != ENOENT)
        warnings.push_back("cannot remove " + p + ": " + errno_text(errno));
  }
};

// ---- start-up and recovery --------------------------------------------------

LocalStore::LocalStore(const flotilla_host *host, StoreConfig config)
    : host_(host), config_(config), jobs_(std::make_shared<JobTracker>()) {
  dir_ = host_->data_dir ? host_->data_dir : "";
  if (dir_.empty()) throw StoreError(FLOTILLA_E_INVALID, "the host gave no data directory");
  lock_directory();
  recover();
}

LocalStore::~LocalStore() {
  try {
    close();
  } catch (...) {
    // close() reports what it can; nothing may escape a destructor.
  }
}

void LocalStore::report(const std::string &message) const {
  host_->set_error(host_->host_ctx, message.c_str());
}

void LocalStore::log(flotilla_log_level level, const std::string &message) const {
  host_->log(host_->host_ctx, level, message.c_str());
}

void LocalStore::lock_directory() {
  const std::string path = dir_ + "/" + kLockName;
  lock_fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock_fd_.valid())
    throw StoreError(FLOTILLA_E_IO, "cannot open " + path + ": " + errno_text(errno) +
                                        "; check that the data directory is writable");
  if (::flock(lock_fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      throw StoreError(FLOTILLA_E_UNAVAILABLE,
                       "data directory " + dir_ + " is in use by another store-local (" + path +
                           " is locked); stop the other flotillad or give this one its own "
                           "node.data_dir");
    throw StoreError(FLOTILLA_E_IO, "cannot lock " + path + ": " + errno_text(errno));
  }
  dir_fd_.reset(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd_.valid())
    throw StoreError(FLOTILLA_E_IO,
                     "cannot open data directory " + dir_ + ": " + errno_text(errno));
}

std::shared_ptr<LocalStore::Segment> LocalStore::open_segment_for_append(const std::string &path,
                                                                         uint64_t first_seq,
                                                                         bool create) {
  auto seg = std::make_shared<Segment>();
  seg->path = path;
  seg->first_seq = first_seq;
  seg->fd.reset(
      ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT : 0), 0600));
  if (!seg->fd.valid())
    throw StoreError(FLOTILLA_E_IO, "cannot open " + path + " for writing: " + errno_text(errno));
  if (create && ::fsync(dir_fd_.get()) != 0)
    throw StoreError(FLOTILLA_E_IO, "fsync of " + dir_ + ": " + errno_text(errno));
  seg->dir_synced = true;
  return seg;
}

void LocalStore::recover() {
  const auto started = Clock::now();
  std::map<uint64_t, std::string> snapshots, segments;
  {
    std::unique_ptr<DIR, int (*)(DIR *)> d(::opendir(dir_.c_str()), ::closedir);
    if (!d) throw StoreError(FLOTILLA_E_IO, "cannot list " + dir_ + ": " + errno_text(errno));
    while (dirent *e = ::readdir(d.get())) {
      std::string name = e->d_name;
      uint64_t seq = 0;
      if (parse_numbered(name, "snap-", ".snap", &seq)) {
        snapshots[seq] = dir_ + "/" + name;
      } else if (parse_numbered(name, "wal-", ".log", &seq)) {
        segments[seq] = dir_ + "/" + name;
      } else if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
        ::unlink((dir_ + "/" + name).c_str());  // a snapshot a crash interrupted
      }
    }
  }

  const auto now = Clock::now();
  uint64_t snap_seq = 0;
  if (!snapshots.empty()) {
    const auto &[seq, path] = *snapshots.rbegin();
    try {
      snap_seq = decode_snapshot_file(read_file(path), state_, now);
    } catch (const DecodeError &e) {
      throw StoreError(FLOTILLA_E_IO,
                       "snapshot " + path + " is damaged (" + e.what() +
                           "). Snapshots are fsynced before they are renamed into place, so "
                           "the disk lost data; restore " +
                           dir_ + " from a backup, or move it aside to start an empty store");
    }
    if (snap_seq != seq)
      throw StoreError(FLOTILLA_E_IO, "snapshot " + path + " holds sequence " +
                                          std::to_string(snap_seq) + ", not the one its name says");
    snapshot_path_ = path;
    for (const auto &[older, p] : snapshots)
      if (older != seq) ::unlink(p.c_str());
  }

  // Segments wholly covered by the snapshot are left over from a crash
  // before the snapshot's clean-up (a later segment starts at or before the
  // first record after the snapshot): they are not read, only removed.
  std::vector<std::pair<uint64_t, std::string>> segs;
  for (auto it = segments.begin(); it != segments.end(); ++it) {
    auto next = std::next(it);
    if (next != segments.end() && next->first <= snap_seq + 1)
      ::unlink(it->second.c_str());
    else
      segs.emplace_back(*it);
  }

  uint64_t expected = snap_seq + 1;
  uint64_t replayed = 0, replayed_bytes = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    const std::string &path = segs[i].second;
    const std::string content = read_file(path);
    std::string damage;
    const size_t good = scan_frames(
        content,
        [&](std::string_view payload, size_t offset) {
          LoggedRecord lr;
          try {
            lr = decode_payload(payload);
          } catch (const DecodeError &e) {
            throw StoreError(FLOTILLA_E_IO, path + " offset " + std::to_string(offset) +
                                                ": a record with a good checksum cannot be read (" +
                                                e.what() +
                                                "); was the store written by a newer store-local?");
          }
          if (lr.seq <= snap_seq) return;  // already in the snapshot
          if (lr.seq != expected)
            throw StoreError(FLOTILLA_E_IO,
                             path + " offset " + std::to_string(offset) + ": record " +
                                 std::to_string(lr.seq) + " where " + std::to_string(expected) +
                                 " was expected; log records are missing, so the store cannot "
                                 "be recovered consistently. Restore " +
                                 dir_ + " from a backup");
          state_.apply(std::move(lr.record), now);
          ++expected;
          ++replayed;
          replayed_bytes += kFrameHeaderBytes + payload.size();
        },
        &damage);
    if (damage.empty()) continue;
    // A crash in the middle of a write leaves a torn last record. Nothing
    // after it was acknowledged (acknowledgement waits for the sync of
    // everything before), so the tail and any later segment go.
    log(FLOTILLA_LOG_WARN, path + ": " + damage + "; dropping the last " +
                               std::to_string(content.size() - good) +
                               " bytes, a write that a crash interrupted before it was "
                               "acknowledged");
    {
      UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
      if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(good)) != 0 ||
          ::fsync(fd.get()) != 0)
        throw StoreError(FLOTILLA_E_IO,
                         "cannot truncate the damaged tail of " + path + ": " + errno_text(errno));
    }
    for (size_t j = i + 1; j < segs.size(); ++j) {
      log(FLOTILLA_LOG_WARN, "removing " + segs[j].second + ", written after the damaged record");
      ::unlink(segs[j].second.c_str());
    }
    // New records go behind the truncated one; a removed segment coming
    // back after another crash would then look like a hole in the log.
    if (::fsync(dir_fd_.get()) != 0)
      throw StoreError(FLOTILLA_E_IO, "fsync of " + dir_ + ": " + errno_text(errno));
    segs.resize(i + 1);
    break;
  }
  last_seq_ = durable_seq_ = expected - 1;

  for (size_t i = 0; i + 1 < segs.size(); ++i) {
    auto seg = std::make_shared<Segment>();
    seg->path = segs[i].second;
    seg->first_seq = segs[i].first;
    seg->dir_synced = true;
    segments_.push_back(std::move(seg));
  }
  if (!segs.empty())
    segments_.push_back(open_segment_for_append(segs.back().second, segs.back().first, false));
  else
    segments_.push_back(
        open_segment_for_append(dir_ + "/" + segment_name(last_seq_ + 1), last_seq_ + 1, true));

  durable_revision_ = pending_revision_ = state_.revision();
  records_since_snapshot_ = replayed;
  bytes_since_snapshot_ = replayed_bytes;
  auto_compact();

  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
  log(FLOTILLA_LOG_INFO,
      "recovered revision " + std::to_string(state_.revision()) + " (" +
          std::to_string(state_.map().live_keys()) + " keys, " +
          std::to_string(state_.leases().all().size()) + " leases) from " +
          (snapshot_path_.empty() ? std::string("no snapshot") : snapshot_path_) + " and " +
          std::to_string(replayed) + " log records in " + std::to_string(ms) + " ms");
  arm_lease_timer();
  publish_metrics();
  maybe_snapshot();
}

// ---- deferred callbacks ------------------------------------------------------

void LocalStore::post(std::function<void()> fn) {
  deferred_.push_back(std::move(fn));
  if (deferred_timer_ || closing_) return;
  deferred_timer_ = host_->timer_start(host_->host_ctx, 0, 0, &LocalStore::on_deferred_timer, this);
  if (!deferred_timer_) log(FLOTILLA_LOG_ERROR, "the host refused a timer; callbacks are delayed");
}

void LocalStore::post_error(const StoreError &error, Completion done) {
  post(
      [this, message = std::string(error.what()), status = error.status(), done = std::move(done)] {
        report(message);
        done(status);
      });
}

void LocalStore::on_deferred_timer(void *user) {
  auto *self = static_cast<LocalStore *>(user);
  self->deferred_timer_ = 0;
  call_guarded(*self, "deferred callbacks", [self] { self->run_deferred(); });
}

void LocalStore::run_deferred() {
  std::vector<std::function<void()>> batch;
  batch.swap(deferred_);
  for (auto &fn : batch) call_guarded(*this, "a store callback", fn);
  if (!deferred_.empty() && !deferred_timer_ && !closing_)
    deferred_timer_ =
        host_->timer_start(host_->host_ctx, 0, 0, &LocalStore::on_deferred_timer, this);
}

// ---- the write path --------------------------------------------------------

void LocalStore::check_open(bool writing) const {
  if (closing_) throw StoreError(FLOTILLA_E_CANCELLED, "store-local is shutting down");
  if (writing && !failed_.empty())
    throw StoreError(FLOTILLA_E_IO, "store-local refuses writes since its log failed (" + failed_ +
                                        "); fix the disk and restart flotillad");
}

void LocalStore::check_request_size(size_t bytes, const char *what) const {
  if (bytes > static_cast<size_t>(config_.max_request_bytes))
    throw StoreError(FLOTILLA_E_INVALID,
                     std::string(what) + ": the request holds " + std::to_string(bytes) +
                         " bytes of keys and values; store-local accepts at most " +
                         std::to_string(config_.max_request_bytes) +
                         " (config key max_request_bytes)");
}

int64_t LocalStore::commit(Record record) {
  std::shared_ptr<Segment> &seg = segments_.back();
  if (pending_.empty() || pending_.back()->segment != seg)
    pending_.push_back(std::make_unique<Chunk>(Chunk{seg, {}}));
  std::string &buf = pending_.back()->bytes;
  const size_t before = buf.size();
  append_frame(buf, last_seq_ + 1, record);  // throws before anything changed
  RevisionEvents ev;
  try {
    ev = state_.apply(std::move(record), Clock::now());
  } catch (...) {
    buf.resize(before);  // a planned record always applies; never log one that did not
    throw;
  }
  ++last_seq_;
  ++records_since_snapshot_;
  bytes_since_snapshot_ += buf.size() - before;
  if (ev.revision) {
    pending_revision_ = ev.revision;
    undelivered_.push_back(std::move(ev));
  }
  kick_flush();
  maybe_snapshot();
  return state_.revision();
}

void LocalStore::when_durable(Completion done) {
  if (last_seq_ > durable_seq_)
    acks_.emplace_back(last_seq_, std::move(done));
  else
    post([done = std::move(done)] { done(FLOTILLA_OK); });
}

void LocalStore::kick_flush() {
  // Start the batch on the next loop turn, so that every write made in this
  // turn shares its fdatasync.
  if (flush_kick_posted_) return;
  flush_kick_posted_ = true;
  post([this] {
    flush_kick_posted_ = false;
    start_flush();
  });
}

void LocalStore::start_flush() {
  if (flush_job_ || pending_.empty() || !failed_.empty()) return;
  auto job = std::make_unique<FlushJob>();
  job->store = this;
  job->tracker = jobs_;
  job->chunks = std::move(pending_);
  pending_.clear();
  job->dir_fd = dir_fd_.get();
  job->fsync = config_.fsync;
  for (const auto &c : job->chunks) {
    if (!c->segment->dir_synced) job->sync_dir = true;
    job->bytes += c->bytes.size();
  }
  job->records = last_seq_ - durable_seq_;
  job->last_seq = last_seq_;
  job->last_revision = pending_revision_;
  FlushJob *raw = job.get();
  flush_job_ = std::move(job);
  if (closing_) {  // no pool any more: write here, the loop is stopping anyway
    raw->run();
    flush_done(std::move(flush_job_));
    return;
  }
  jobs_->started();
  flotilla_status st =
      host_->queue_work(host_->host_ctx, &LocalStore::flush_work, &LocalStore::flush_after, raw);
  if (st != FLOTILLA_OK) {
    jobs_->finished();
    flush_job_.reset();
    fail("the host refused to queue the log write (status " + std::to_string(st) + ")");
  }
}

void LocalStore::flush_work(void *user) {
  auto *job = static_cast<FlushJob *>(user);
  std::shared_ptr<JobTracker> tracker = job->tracker;  // the job may be freed once finished
  try {
    job->run();
  } catch (const std::exception &e) {
    job->error = e.what();
  } catch (...) {
    job->error = "unknown failure while writing the log";
  }
  tracker->finished();
}

void LocalStore::flush_after(void *user, flotilla_status status) {
  auto *job = static_cast<FlushJob *>(user);
  LocalStore *self = job->store;
  call_guarded(*self, "log write completion", [&] {
    std::unique_ptr<FlushJob> owned = std::move(self->flush_job_);
    if (status != FLOTILLA_OK) {  // the work never ran
      job->tracker->finished();
      job->error = "the host cancelled the log write";
    }
    self->flush_done(std::move(owned));
  });
}

void LocalStore::flush_done(std::unique_ptr<FlushJob> job) {
  if (!job->error.empty()) {
    fail(job->error);
    return;
  }
  for (const auto &c : job->chunks)
    if (job->fsync) c->segment->dir_synced = true;
  durable_seq_ = std::max(durable_seq_, job->last_seq);
  durable_revision_ = std::max(durable_revision_, job->last_revision);
  host_->metric_counter_add(host_->host_ctx, "store_local_wal_writes_total", 1);
  host_->metric_counter_add(host_->host_ctx, "store_local_wal_records_total",
                            static_cast<double>(job->records));
  host_->metric_counter_add(host_->host_ctx, "store_local_wal_bytes_total",
                            static_cast<double>(job->bytes));

  std::vector<Completion> done;
  while (!acks_.empty() && acks_.front().first <= durable_seq_) {
    done.push_back(std::move(acks_.front().second));
    acks_.pop_front();
  }
  std::vector<RevisionEvents> groups;
  while (!undelivered_.empty() && undelivered_.front().revision <= durable_revision_) {
    groups.push_back(std::move(undelivered_.front()));
    undelivered_.pop_front();
  }
  job.reset();  // its chunks may hold large buffers
  for (auto &d : done) call_guarded(*this, "a store callback", [&] { d(FLOTILLA_OK); });
  for (const auto &g : groups) dispatch(g);
  auto_compact();
  publish_metrics();
  // Group commit: everything that arrived during this sync goes out now in
  // one batch.
  start_flush();
  maybe_snapshot();
}

void LocalStore::fail(const std::string &message) {
  if (!failed_.empty()) return;
  failed_ = message;
  log(FLOTILLA_LOG_ERROR, "write-ahead log failed: " + message +
                              "; writes are refused until flotillad restarts, reads still "
                              "answer from the last durable revision " +
                              std::to_string(durable_revision_));
  pending_.clear();
  undelivered_.clear();
  auto acks = std::move(acks_);
  acks_.clear();
  const std::string why = "the write was not made durable: " + message;
  for (auto &[seq, done] : acks)
    call_guarded(*this, "a store callback", [&, &d = done] {
      report(why);
      d(FLOTILLA_E_IO);
    });
  std::vector<flotilla_store_watch_id> ids;
  for (const auto &[id, w] : watchers_) ids.push_back(id);
  for (auto id : ids)
    end_watch(id, FLOTILLA_E_UNAVAILABLE, "watch ended: store-local's log failed: " + message);
}

void LocalStore::auto_compact() {
  if (config_.history <= 0) return;
  const int64_t keep_from = durable_revision_ - config_.history + 1;
  if (keep_from > state_.map().compact_revision()) state_.trim_history(keep_from);
}

// ---- snapshots ---------------------------------------------------------------

void LocalStore::maybe_snapshot() {
  if (snapshot_job_ || closing_ || !failed_.empty()) return;
  if (records_since_snapshot_ < static_cast<uint64_t>(config_.snapshot_every) &&
      bytes_since_snapshot_ < static_cast<uint64_t>(config_.snapshot_log_bytes))
    return;
  start_snapshot();
}

void LocalStore::start_snapshot() {
  const uint64_t seq = last_seq_;
  auto job = std::make_unique<SnapshotJob>();
  job->store = this;
  job->tracker = jobs_;
  job->dir_fd = dir_fd_.get();
  job->fsync = config_.fsync;
  job->seq = seq;
  job->bytes = encode_snapshot_file(seq, state_);
  job->path = dir_ + "/" + snapshot_name(seq);
  // Records after seq go to a fresh segment, so that every older segment can
  // be deleted once the snapshot is durable.
  if (segments_.back()->first_seq <= seq) {
    auto seg = std::make_shared<Segment>();
    seg->first_seq = seq + 1;
    seg->path = dir_ + "/" + segment_name(seq + 1);
    segments_.push_back(std::move(seg));
  }
  job->obsolete_segments = segments_.size() - 1;
  for (size_t i = 0; i < job->obsolete_segments; ++i) job->obsolete.push_back(segments_[i]->path);
  if (!snapshot_path_.empty() && snapshot_path_ != job->path)
    job->obsolete.push_back(snapshot_path_);
  records_since_snapshot_ = 0;
  bytes_since_snapshot_ = 0;
  SnapshotJob *raw = job.get();
  snapshot_job_ = std::move(job);
  jobs_->started();
  flotilla_status st = host_->queue_work(host_->host_ctx, &LocalStore::snapshot_work,
                                         &LocalStore::snapshot_after, raw);
  if (st != FLOTILLA_OK) {
    jobs_->finished();
    snapshot_job_.reset();
    log(FLOTILLA_LOG_WARN, "the host refused to queue a snapshot (status " + std::to_string(st) +
                               "); the log keeps growing until the next try");
  }
}

void LocalStore::snapshot_work(void *user) {
  auto *job = static_cast<SnapshotJob *>(user);
  std::shared_ptr<JobTracker> tracker = job->tracker;
  try {
    job->run();
  } catch (const std::exception &e) {
    job->error = e.what();
  } catch (...) {
    job->error = "unknown failure while writing the snapshot";
  }
  tracker->finished();
}

void LocalStore::snapshot_after(void *user, flotilla_status status) {
  auto *job = static_cast<SnapshotJob *>(user);
  LocalStore *self = job->store;
  call_guarded(*self, "snapshot completion", [&] {
    std::unique_ptr<SnapshotJob> owned = std::move(self->snapshot_job_);
    if (status != FLOTILLA_OK) {
      job->tracker->finished();
      job->error = "the host cancelled the snapshot";
    }
    self->snapshot_done(std::move(owned));
  });
}

void LocalStore::snapshot_done(std::unique_ptr<SnapshotJob> job) {
  for (const auto &w : job->warnings) log(FLOTILLA_LOG_WARN, w);
  if (!job->error.empty()) {
    log(FLOTILLA_LOG_WARN, "snapshot failed: " + job->error +
                               "; the log keeps growing until the next snapshot succeeds");
    return;
  }
  segments_.erase(segments_.begin(),
                  segments_.begin() + static_cast<ptrdiff_t>(job->obsolete_segments));
  snapshot_path_ = job->path;
  host_->metric_counter_add(host_->host_ctx, "store_local_snapshots_total", 1);
  host_->metric_gauge_set(host_->host_ctx, "store_local_snapshot_bytes",
                          static_cast<double>(job->bytes.size()));
  log(FLOTILLA_LOG_DEBUG,
      "snapshot " + job->path + " written (" + std::to_string(job->bytes.size()) + " bytes)");
  job.reset();
  maybe_snapshot();
}

// ---- requests ----------------------------------------------------------------

void LocalStore::range(const KeyRange &range, int64_t revision, int64_t limit,
                       flotilla_store_range_cb cb, void *user) {
  check_open(false);
  const int64_t current = durable_revision_;
  auto fail_with = [cb, user, current](flotilla_status st) {
    cb(user, st, nullptr, 0, current, 0);
  };
  if (revision > current) {
    post_error(StoreError(FLOTILLA_E_INVALID, "range: revision " + std::to_string(revision) +
                                                  " is in the future (the store is at " +
                                                  std::to_string(current) + ")"),
               fail_with);
    return;
  }
  const int64_t at = revision ? revision : current;
  if (at < state_.map().compact_revision()) {
    post_error(
        StoreError(FLOTILLA_E_COMPACTED, "range: revision " + std::to_string(at) +
                                             " was compacted; history starts at revision " +
                                             std::to_string(state_.map().compact_revision())),
        fail_with);
    return;
  }
  bool more = false;
  std::vector<KeyValue> kvs = state_.map().range(range, at, limit, &more);
  post([cb, user, kvs = std::move(kvs), current, more] {
    std::vector<flotilla_kv> out;
    out.reserve(kvs.size());
    for (const auto &kv : kvs) out.push_back(c_kv(kv));
    cb(user, FLOTILLA_OK, out.data(), out.size(), current, more ? 1 : 0);
  });
}

void LocalStore::put(std::string key, std::string value, int64_t lease, flotilla_store_write_cb cb,
                     void *user) {
  check_open(true);
  StoreState::check_key(key, "put");
  check_request_size(key.size() + value.size(), "put");
  Record record;
  try {
    record = state_.plan_put(std::move(key), std::move(value), lease);
  } catch (const StoreError &e) {
    post_error(e, [cb, user, rev = durable_revision_](flotilla_status st) {
      if (cb) cb(user, st, rev);
    });
    return;
  }
  const int64_t rev = commit(std::move(record));
  when_durable([cb, user, rev](flotilla_status st) {
    if (cb) cb(user, st, rev);
  });
}

void LocalStore::delete_range(const KeyRange &range, flotilla_store_delete_cb cb, void *user) {
  check_open(true);
  std::optional<Record> record = state_.plan_delete(range);
  const int64_t deleted = record ? static_cast<int64_t>(record->changes.size()) : 0;
  const int64_t rev = record ? commit(std::move(*record)) : state_.revision();
  when_durable([cb, user, rev, deleted](flotilla_status st) {
    if (cb) cb(user, st, rev, st == FLOTILLA_OK ? deleted : 0);
  });
}

void LocalStore::txn(const std::vector<Compare> &compares, const std::vector<Op> &success,
                     const std::vector<Op> &failure, flotilla_store_txn_cb cb, void *user) {
  check_open(true);
  size_t bytes = 0;
  for (const auto &c : compares) {
    StoreState::check_compare(c);
    bytes += c.key.size() + c.value.size();
  }
  StoreState::check_ops(success, "txn success");
  StoreState::check_ops(failure, "txn failure");
  for (const auto *ops : {&success, &failure})
    for (const auto &op : *ops) bytes += op.key.size() + op.value.size();
  check_request_size(bytes, "txn");
  StoreState::TxnPlan plan;
  try {
    plan = state_.plan_txn(compares, success, failure);
  } catch (const StoreError &e) {
    post_error(e, [cb, user, rev = durable_revision_](flotilla_status st) {
      if (cb) cb(user, st, 0, rev);
    });
    return;
  }
  const int64_t rev = plan.record ? commit(std::move(*plan.record)) : state_.revision();
  const int succeeded = plan.succeeded ? 1 : 0;
  when_durable([cb, user, rev, succeeded](flotilla_status st) {
    if (cb) cb(user, st, st == FLOTILLA_OK ? succeeded : 0, rev);
  });
}

flotilla_store_watch_id LocalStore::watch(const KeyRange &range, int64_t start_revision,
                                          flotilla_store_watch_cb cb, void *user) {
  check_open(false);
  const flotilla_store_watch_id id = next_watch_id_++;
  Watcher w;
  w.range = range;
  w.next_revision = start_revision > 0 ? start_revision : durable_revision_ + 1;
  w.cb = cb;
  w.user = user;
  watchers_.emplace(id, std::move(w));
  post([this, id] { catch_up(id); });
  return id;
}

void LocalStore::watch_cancel(flotilla_store_watch_id id) {
  watchers_.erase(id);
}

void LocalStore::lease_grant(int64_t ttl_seconds, flotilla_lease_cb cb, void *user) {
  check_open(true);
  Record record = state_.plan_lease_grant(ttl_seconds);
  const int64_t id = record.lease;
  commit(std::move(record));
  arm_lease_timer();
  when_durable([cb, user, id, ttl_seconds](flotilla_status st) {
    if (cb) cb(user, st, st == FLOTILLA_OK ? id : 0, ttl_seconds);
  });
}

void LocalStore::lease_keepalive(int64_t lease, flotilla_lease_cb cb, void *user) {
  check_open(false);
  const auto now = Clock::now();
  const LeaseTable::Lease *l = state_.leases().find(lease);
  if (l && l->deadline <= now) {  // due, and the timer has not run yet
    expire_leases();
    l = state_.leases().find(lease);
  }
  if (!l) {
    post_error(StoreError(FLOTILLA_E_NOT_FOUND,
                          "lease_keepalive: lease " + std::to_string(lease) +
                              " does not exist (expired or revoked?); grant a new lease"),
               [cb, user, lease](flotilla_status st) {
                 if (cb) cb(user, st, lease, 0);
               });
    return;
  }
  const int64_t ttl = l->ttl_seconds;
  state_.keepalive(lease, now);
  post([cb, user, lease, ttl] {
    if (cb) cb(user, FLOTILLA_OK, lease, ttl);
  });
}

void LocalStore::lease_revoke(int64_t lease, flotilla_done_cb cb, void *user) {
  check_open(true);
  Record record;
  try {
    record = state_.plan_lease_revoke(lease);
  } catch (const StoreError &e) {
    post_error(e, [cb, user](flotilla_status st) {
      if (cb) cb(user, st);
    });
    return;
  }
  commit(std::move(record));
  arm_lease_timer();
  when_durable([cb, user](flotilla_status st) {
    if (cb) cb(user, st);
  });
}

void LocalStore::compact(int64_t revision, flotilla_done_cb cb, void *user) {
  check_open(true);
  auto fail_with = [cb, user](flotilla_status st) {
    if (cb) cb(user, st);
  };
  if (revision > durable_revision_) {
    post_error(StoreError(FLOTILLA_E_INVALID, "compact: revision " + std::to_string(revision) +
                                                  " is in the future (the store is at " +
                                                  std::to_string(durable_revision_) + ")"),
               fail_with);
    return;
  }
  Record record;
  try {
    record = state_.plan_compact(revision);
  } catch (const StoreError &e) {
    post_error(e, fail_with);
    return;
  }
  commit(std::move(record));
  when_durable(fail_with);
}

// ---- watches -----------------------------------------------------------------

void LocalStore::catch_up(flotilla_store_watch_id id) {
  auto it = watchers_.find(id);
  if (it == watchers_.end()) return;
  Watcher &w = it->second;
  if (w.next_revision > durable_revision_) return;  // live dispatch takes it from here
  if (w.next_revision < state_.map().compact_revision()) {
    end_watch(id, FLOTILLA_E_COMPACTED,
              "watch: revision " + std::to_string(w.next_revision) +
                  " was compacted; history starts at revision " +
                  std::to_string(state_.map().compact_revision()) +
                  ". Read the range again and watch from its revision + 1");
    return;
  }
  std::vector<RevisionEvents> groups =
      state_.map().events(w.range, w.next_revision, durable_revision_);
  w.next_revision = durable_revision_ + 1;
  for (const auto &g : groups) deliver(id, g);
}

void LocalStore::dispatch(const RevisionEvents &group) {
  std::vector<flotilla_store_watch_id> ids;
  for (const auto &[id, w] : watchers_)
    if (w.next_revision == group.revision) ids.push_back(id);
  for (auto id : ids) deliver(id, group);
}

void LocalStore::deliver(flotilla_store_watch_id id, const RevisionEvents &group) {
  auto it = watchers_.find(id);  // a callback may have cancelled it
  if (it == watchers_.end()) return;
  Watcher &w = it->second;
  w.next_revision = std::max(w.next_revision, group.revision + 1);
  std::vector<flotilla_watch_event> events;
  for (const Event &e : group.events) {
    if (!w.range.contains(e.kv.key)) continue;
    flotilla_watch_event ev{};
    ev.struct_size = sizeof ev;
    ev.type = e.deleted ? FLOTILLA_EVENT_DELETE : FLOTILLA_EVENT_PUT;
    ev.kv = c_kv(e.kv);
    events.push_back(ev);
  }
  if (events.empty()) return;
  const auto cb = w.cb;
  void *const user = w.user;
  call_guarded(*this, "a watch callback",
               [&] { cb(user, FLOTILLA_OK, events.data(), events.size(), group.revision); });
}

void LocalStore::end_watch(flotilla_store_watch_id id, flotilla_status status,
                           const std::string &message) {
  auto it = watchers_.find(id);
  if (it == watchers_.end()) return;
  const auto cb = it->second.cb;
  void *const user = it->second.user;
  watchers_.erase(it);
  call_guarded(*this, "a watch callback", [&] {
    report(message);
    cb(user, status, nullptr, 0, durable_revision_);
  });
}

// ---- leases ------------------------------------------------------------------

void LocalStore::arm_lease_timer() {
  if (closing_) return;
  const auto next = state_.leases().next_deadline();
  if (lease_timer_ && (!next || *lease_timer_due_ > *next)) {
    host_->timer_stop(host_->host_ctx, lease_timer_);
    lease_timer_ = 0;
    lease_timer_due_.reset();
  }
  if (!next || lease_timer_) return;
  const auto wait = std::chrono::ceil<std::chrono::milliseconds>(*next - Clock::now());
  const uint64_t ms = static_cast<uint64_t>(std::max<int64_t>(0, wait.count())) + 1;
  lease_timer_ = host_->timer_start(host_->host_ctx, ms, 0, &LocalStore::on_lease_timer, this);
  if (lease_timer_)
    lease_timer_due_ = *next;
  else
    log(FLOTILLA_LOG_ERROR, "the host refused a timer; leases do not expire");
}

void LocalStore::on_lease_timer(void *user) {
  auto *self = static_cast<LocalStore *>(user);
  self->lease_timer_ = 0;  // a one-shot timer's handle is gone once it fired
  self->lease_timer_due_.reset();
  call_guarded(*self, "lease expiry", [self] { self->expire_leases(); });
}

void LocalStore::expire_leases() {
  if (closing_ || !failed_.empty()) return;
  for (int64_t id : state_.leases().expired(Clock::now())) {
    Record record = state_.plan_lease_revoke(id);
    const size_t keys = record.changes.size();
    commit(std::move(record));
    log(FLOTILLA_LOG_DEBUG,
        "lease " + std::to_string(id) + " expired; deleted " + std::to_string(keys) + " keys");
  }
  arm_lease_timer();
}

// ---- shutdown ----------------------------------------------------------------

void LocalStore::close() {
  if (closing_) return;
  closing_ = true;
  if (deferred_timer_) host_->timer_stop(host_->host_ctx, deferred_timer_);
  if (lease_timer_) host_->timer_stop(host_->host_ctx, lease_timer_);
  deferred_timer_ = lease_timer_ = 0;
  // The host does not run after-work callbacks once deinit returned, so the
  // jobs in flight are finished here.
  jobs_->wait_idle();
  if (flush_job_) flush_done(std::move(flush_job_));
  if (snapshot_job_) snapshot_done(std::move(snapshot_job_));
  // Whatever is still buffered is written now; a clean stop loses nothing.
  while (!pending_.empty() && failed_.empty()) start_flush();
  while (!deferred_.empty()) run_deferred();
  auto acks = std::move(acks_);
  acks_.clear();
  for (auto &[seq, done] : acks)
    call_guarded(*this, "a store callback", [&, &d = done] {
      report("store-local shut down before the write was durable");
      d(FLOTILLA_E_CANCELLED);
    });
  std::vector<flotilla_store_watch_id> ids;
  for (const auto &[id, w] : watchers_) ids.push_back(id);
  for (auto id : ids)
    end_watch(id, FLOTILLA_E_CANCELLED, "watch ended: store-local is shutting down");
  while (!deferred_.empty()) run_deferred();
}

void LocalStore::publish_metrics() {
  host_->metric_gauge_set(host_->host_ctx, "store_local_revision",
                          static_cast<double>(durable_revision_));
  host_->metric_gauge_set(host_->host_ctx, "store_local_keys",
                          static_cast<double>(state_.map().live_keys()));
  host_->metric_gauge_set(host_->host_ctx, "store_local_leases",
                          static_cast<double>(state_.leases().all().size()));
  host_->metric_gauge_set(host_->host_ctx, "store_local_watches",
                          static_cast<double>(watchers_.size()));
}

}  // namespace flotilla::store_local
