#include "plugin_host.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "error.h"
#include "log.h"

namespace flotilla {

// Outside the anonymous namespace: PluginHost::Loaded, which has external
// linkage, holds one (GCC's -Wsubobject-linkage, in unity builds).
struct DlCloser {
  void operator()(void *h) const {
    if (h) dlclose(h);
  }
};

namespace {

thread_local std::string t_last_error;

// The size of the entry as ABI 1.0 defined it: anything smaller is not a
// plugin entry we can read.
constexpr size_t kEntrySize_1_0 =
    offsetof(flotilla_entry, get_interface) + sizeof(void *);

std::string join(const std::vector<std::string> &v, const char *sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::vector<std::string> c_list(const char *const *list) {
  std::vector<std::string> out;
  for (; list && *list; ++list) out.emplace_back(*list);
  return out;
}

// Reverse-DNS: at least two dot-separated labels, each [a-z0-9][a-z0-9_-]*.
bool valid_plugin_id(const char *id) {
  if (!id) return false;
  std::string_view s(id);
  if (s.empty() || s.size() >= 256) return false;
  size_t labels = 0;
  bool at_label_start = true;
  for (char c : s) {
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (c == '.') {
      if (at_label_start) return false;  // empty label
      at_label_start = true;
      continue;
    }
    if (at_label_start) {
      if (!alnum) return false;
      ++labels;
      at_label_start = false;
    } else if (!alnum && c != '_' && c != '-') {
      return false;
    }
  }
  return !at_label_start && labels >= 2;
}

bool has_elf_magic(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  unsigned char magic[4] = {};
  ssize_t n = ::read(fd, magic, sizeof magic);
  ::close(fd);
  return n == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F';
}

}  // namespace

// ---- metrics ---------------------------------------------------------------

void MetricsRegistry::counter_add(std::string_view name, double delta) {
  std::lock_guard lock(mutex_);
  auto it = counters_.find(name);
  if (it == counters_.end()) it = counters_.emplace(std::string(name), 0.0).first;
  it->second += delta;
}

void MetricsRegistry::gauge_set(std::string_view name, double value) {
  std::lock_guard lock(mutex_);
  auto it = gauges_.find(name);
  if (it == gauges_.end()) it = gauges_.emplace(std::string(name), 0.0).first;
  it->second = value;
}

std::string MetricsRegistry::render_prometheus() const {
  std::lock_guard lock(mutex_);
  std::string out;
  char num[64];
  auto emit = [&](const std::string &name, const char *type, double v) {
    snprintf(num, sizeof num, "%.17g", v);
    out += "# TYPE flotilla_" + name + " " + type + "\nflotilla_" + name + " " + num + "\n";
  };
  for (const auto &[name, v] : counters_) emit(name, "counter", v);
  for (const auto &[name, v] : gauges_) emit(name, "gauge", v);
  return out;
}

static bool valid_metric_name(const char *name) {
  if (!name || !*name) return false;
  if (!(std::islower(static_cast<unsigned char>(*name)) || *name == '_')) return false;
  for (const char *p = name; *p; ++p) {
    unsigned char c = static_cast<unsigned char>(*p);
    if (!(std::islower(c) || std::isdigit(c) || c == '_')) return false;
  }
  return true;
}

// ---- event bus -------------------------------------------------------------

EventBus::EventBus(uv_loop_t *loop) : async_(new uv_async_t) {
  uv_async_init(loop, async_, &EventBus::on_async);
  async_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t *>(async_));  // never keeps the loop alive
}

EventBus::~EventBus() {
  async_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t *>(async_),
           [](uv_handle_t *h) { delete reinterpret_cast<uv_async_t *>(h); });
}

void EventBus::publish(std::string topic, std::string json) {
  queue_.emplace_back(std::move(topic), std::move(json));
  uv_async_send(async_);
}

uint64_t EventBus::subscribe(std::string topic_prefix, Callback cb) {
  uint64_t id = next_id_++;
  subs_.emplace(id, std::make_pair(std::move(topic_prefix), std::move(cb)));
  return id;
}

void EventBus::unsubscribe(uint64_t id) { subs_.erase(id); }

void EventBus::on_async(uv_async_t *handle) {
  if (auto *self = static_cast<EventBus *>(handle->data)) self->deliver();
}

void EventBus::deliver() {
  auto batch = std::move(queue_);
  queue_.clear();
  for (const auto &[topic, json] : batch) {
    std::vector<uint64_t> ids;
    for (const auto &[id, sub] : subs_)
      if (topic.compare(0, sub.first.size(), sub.first) == 0) ids.push_back(id);
    for (uint64_t id : ids) {
      auto it = subs_.find(id);  // a callback may have unsubscribed another
      if (it == subs_.end()) continue;
      Callback cb = it->second.second;  // copy: the callback may unsubscribe itself
      cb(topic, json);
    }
  }
}

// ---- one loaded plugin -----------------------------------------------------

struct PluginHost::Loaded : std::enable_shared_from_this<PluginHost::Loaded> {
  PluginHost *host = nullptr;
  PluginSettings settings;
  PluginInfo info;
  std::unique_ptr<void, DlCloser> dl;
  const flotilla_entry *entry = nullptr;
  flotilla_host table{};
  std::string config_json;
  std::string data_dir;
  void *instance = nullptr;
  bool alive = false;  // between a successful init and deinit
  // Every message the plugin gave config_error during check_config or
  // init, so that all of them are reported together.
  std::vector<std::string> config_problems;
  bool checking = false;  // inside check_config: problems are collected, not logged

  // Handles the plugin made through the host, closed at deinit if the
  // plugin forgot them.
  uint64_t next_handle = 1;
  std::map<uint64_t, uv_handle_t *> handles;  // timers and fd polls
  std::set<uint64_t> subscriptions;

  std::string where() const { return "plugin " + settings.name + " (" + settings.path + ")"; }
};

namespace {

using Loaded = PluginHost::Loaded;

Loaded *L(void *ctx) { return static_cast<Loaded *>(ctx); }

struct TimerRec {
  uv_timer_t timer;
  Loaded *owner;
  uint64_t id;
  flotilla_timer_cb cb;
  void *user;
  bool repeat;
};

struct PollRec {
  uv_poll_t poll;
  Loaded *owner;
  uint64_t id;
  int fd;
  flotilla_fd_cb cb;
  void *user;
};

// Work and child-process records hold their plugin's record, and with it
// the mapped shared object, until the loop is done with them: code queued
// by a plugin may still run on the thread pool after the plugin stopped.
struct WorkRec {
  uv_work_t req;
  std::shared_ptr<Loaded> owner;
  flotilla_work_cb work;
  flotilla_after_work_cb after;
  void *user;
};

struct ProcRec {
  uv_process_t proc;
  std::shared_ptr<Loaded> owner;
  flotilla_exit_cb cb;
  void *user;
};

void close_and_delete_timer(uv_handle_t *h) {
  uv_close(h, [](uv_handle_t *hh) { delete static_cast<TimerRec *>(hh->data); });
}
void close_and_delete_poll(uv_handle_t *h) {
  uv_close(h, [](uv_handle_t *hh) { delete static_cast<PollRec *>(hh->data); });
}

// -- the host table's functions --

void host_log(void *ctx, flotilla_log_level level, const char *message) {
  auto lvl = static_cast<log::Level>(std::clamp(static_cast<int>(level), 0, 3));
  log::write(lvl, "plugin." + L(ctx)->settings.name, message ? message : "");
}

void host_set_error(void *, const char *message) { t_last_error = message ? message : ""; }

const char *host_config_json(void *ctx) { return L(ctx)->config_json.c_str(); }

void host_config_error(void *ctx, const char *key, const char *message) {
  Loaded *p = L(ctx);
  std::string k = key ? key : "";
  int line = p->settings.line;
  if (auto it = p->settings.key_lines.find(k); it != p->settings.key_lines.end())
    line = it->second;
  std::string msg = "config " + p->host->options().config_path;
  if (line > 0) msg += " line " + std::to_string(line);
  msg += ": plugin." + p->settings.name + (k.empty() ? "" : "." + k) + ": " +
         (message ? message : "invalid value");
  p->config_problems.push_back(msg);
  std::string all;
  for (const auto &m : p->config_problems) all += (all.empty() ? "" : "\n") + m;
  t_last_error = all;
  if (!p->checking) log::error("plugin." + p->settings.name, msg);
}

flotilla_handle host_timer_start(void *ctx, uint64_t timeout_ms, uint64_t repeat_ms,
                                 flotilla_timer_cb cb, void *user) {
  Loaded *p = L(ctx);
  if (!cb || !p->alive) return 0;
  auto *rec = new TimerRec{{}, p, p->next_handle++, cb, user, repeat_ms != 0};
  uv_timer_init(p->host->loop(), &rec->timer);
  rec->timer.data = rec;
  p->handles[rec->id] = reinterpret_cast<uv_handle_t *>(&rec->timer);
  uv_timer_start(
      &rec->timer,
      [](uv_timer_t *t) {
        auto *r = static_cast<TimerRec *>(t->data);
        Loaded *owner = r->owner;
        flotilla_timer_cb fire = r->cb;
        void *u = r->user;
        if (!r->repeat) {  // a one-shot timer's handle is released after it fires
          owner->handles.erase(r->id);
          close_and_delete_timer(reinterpret_cast<uv_handle_t *>(t));
        }
        fire(u);
      },
      timeout_ms, repeat_ms);
  return rec->id;
}

void host_timer_stop(void *ctx, flotilla_handle id) {
  Loaded *p = L(ctx);
  auto it = p->handles.find(id);
  if (it == p->handles.end() || it->second->type != UV_TIMER) return;
  uv_timer_stop(reinterpret_cast<uv_timer_t *>(it->second));
  close_and_delete_timer(it->second);
  p->handles.erase(it);
}

flotilla_handle host_fd_watch(void *ctx, int fd, uint32_t events, flotilla_fd_cb cb,
                              void *user) {
  Loaded *p = L(ctx);
  if (!cb || fd < 0) return 0;
  auto *rec = new PollRec{{}, p, 0, fd, cb, user};
  if (int rc = uv_poll_init(p->host->loop(), &rec->poll, fd); rc != 0) {
    t_last_error = std::string("fd_watch: ") + uv_strerror(rc);
    delete rec;
    return 0;
  }
  rec->id = p->next_handle++;
  rec->poll.data = rec;
  p->handles[rec->id] = reinterpret_cast<uv_handle_t *>(&rec->poll);
  int uv_events = ((events & FLOTILLA_FD_READABLE) ? UV_READABLE : 0) |
                  ((events & FLOTILLA_FD_WRITABLE) ? UV_WRITABLE : 0);
  uv_poll_start(&rec->poll, uv_events, [](uv_poll_t *h, int status, int ev) {
    auto *r = static_cast<PollRec *>(h->data);
    uint32_t out = ((ev & UV_READABLE) ? FLOTILLA_FD_READABLE : 0) |
                   ((ev & UV_WRITABLE) ? FLOTILLA_FD_WRITABLE : 0);
    // An error on the fd is reported as readable so the owner's read sees it.
    if (status < 0) out |= FLOTILLA_FD_READABLE;
    r->cb(r->user, r->fd, out);
  });
  return rec->id;
}

void host_fd_unwatch(void *ctx, flotilla_handle id) {
  Loaded *p = L(ctx);
  auto it = p->handles.find(id);
  if (it == p->handles.end() || it->second->type != UV_POLL) return;
  uv_poll_stop(reinterpret_cast<uv_poll_t *>(it->second));
  close_and_delete_poll(it->second);
  p->handles.erase(it);
}

// A child started with posix_spawn, watched through its pidfd.
struct PidfdProc {
  uv_poll_t poll;
  int pidfd = -1;
  pid_t pid = 0;
  std::shared_ptr<Loaded> owner;
  flotilla_exit_cb cb;
  void *user;
};

int open_pidfd(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

bool have_pidfd() {
  static const bool ok = [] {
    int fd = open_pidfd(::getpid());
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }();
  return ok;
}

// A detached child that asked (ABI 1.4) to stay in the daemon's session:
// no setsid at spawn, it calls setsid() itself later. It also stays in the
// daemon's process group, since a process group leader cannot call setsid().
// A caller built for 1.3 never wrote the field, so it is read only when the
// spec's struct_size covers it.
bool keeps_session(const flotilla_process_spec *spec) {
  return spec->detached && FLOTILLA_HAS_FIELD(spec, flotilla_process_spec, keep_session) &&
         spec->keep_session;
}

flotilla_status spawn_failed(const char *file, int err) {
  t_last_error = std::string("cannot start ") + file + ": " + std::strerror(err);
  return err == ENOENT ? FLOTILLA_E_NOT_FOUND
                       : err == EACCES ? FLOTILLA_E_PERMISSION : FLOTILLA_E_IO;
}

// posix_spawn (glibc: clone with CLONE_VM | CLONE_VFORK) instead of libuv's
// fork: the daemon's page tables are not copied, which took about a
// millisecond of every container start. Same contract as the libuv path:
// signals at their defaults and unblocked, stdio as given or /dev/null,
// a session of its own when detached (unless it keeps the daemon's).
flotilla_status spawn_with_pidfd(Loaded *p, const flotilla_process_spec *spec, flotilla_exit_cb cb,
                                 void *user, int64_t *pid_out) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  // The caller's descriptors, copied above 2 first: a descriptor that is
  // already 0-2, or two that swap, still land where they were asked to.
  int copies[3] = {-1, -1, -1};
  int fds[3] = {spec->stdin_fd, spec->stdout_fd, spec->stderr_fd};
  int err = 0;
  for (int i = 0; i < 3 && !err; ++i) {
    if (fds[i] < 0) {
      err = posix_spawn_file_actions_addopen(&fa, i, "/dev/null", O_RDWR, 0);
      continue;
    }
    copies[i] = ::fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
    err = copies[i] < 0 ? errno : posix_spawn_file_actions_adddup2(&fa, copies[i], i);
  }
  if (!err && spec->cwd) err = posix_spawn_file_actions_addchdir_np(&fa, spec->cwd);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
  if (spec->detached && !keeps_session(spec)) flags |= POSIX_SPAWN_SETSID;
  if (!err) err = posix_spawnattr_setsigdefault(&attr, &all);
  if (!err) err = posix_spawnattr_setsigmask(&attr, &none);
  if (!err) err = posix_spawnattr_setflags(&attr, flags);
  pid_t pid = 0;
  if (!err) {
    char *const *argv = const_cast<char *const *>(spec->argv);
    char *const *envp = spec->envp ? const_cast<char *const *>(spec->envp) : environ;
    err = std::strchr(spec->file, '/') ? posix_spawn(&pid, spec->file, &fa, &attr, argv, envp)
                                       : posix_spawnp(&pid, spec->file, &fa, &attr, argv, envp);
  }
  for (int fd : copies)
    if (fd >= 0) ::close(fd);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (err) return spawn_failed(spec->file, err);

  auto *rec = new PidfdProc{{}, open_pidfd(pid), pid, p->shared_from_this(), cb, user};
  if (rec->pidfd < 0 || uv_poll_init(p->host->loop(), &rec->poll, rec->pidfd) != 0) {
    // Cannot happen once have_pidfd() said yes, short of running out of
    // descriptors; the child runs on, reaped when the daemon exits.
    t_last_error = std::string("process_spawn: cannot watch pid ") + std::to_string(pid) + ": " +
                   std::strerror(errno);
    if (rec->pidfd >= 0) ::close(rec->pidfd);
    delete rec;
    if (pid_out) *pid_out = pid;
    return FLOTILLA_OK;
  }
  rec->poll.data = rec;
  uv_poll_start(&rec->poll, UV_READABLE, [](uv_poll_t *h, int, int) {
    auto *r = static_cast<PidfdProc *>(h->data);
    int status = 0;
    pid_t got = ::waitpid(r->pid, &status, WNOHANG);
    if (got == 0) return;  // not yet (spurious wake-up)
    uv_poll_stop(h);
    if (got == r->pid && r->cb && r->owner->alive) {
      if (WIFSIGNALED(status))
        r->cb(r->user, r->pid, -1, WTERMSIG(status));
      else
        r->cb(r->user, r->pid, WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
    }
    uv_close(reinterpret_cast<uv_handle_t *>(h), [](uv_handle_t *hh) {
      auto *rr = static_cast<PidfdProc *>(hh->data);
      ::close(rr->pidfd);
      delete rr;
    });
  });
  if (spec->detached) uv_unref(reinterpret_cast<uv_handle_t *>(&rec->poll));
  if (pid_out) *pid_out = pid;
  return FLOTILLA_OK;
}

flotilla_status host_process_spawn(void *ctx, const flotilla_process_spec *spec,
                                   flotilla_exit_cb cb, void *user, int64_t *pid_out) {
  Loaded *p = L(ctx);
  if (!spec || !spec->file || !spec->argv || !spec->argv[0]) {
    t_last_error = "process_spawn: file and argv[0] are required";
    return FLOTILLA_E_INVALID;
  }
  if (have_pidfd()) return spawn_with_pidfd(p, spec, cb, user, pid_out);
  // Kernels before 5.3 have no pidfd: libuv forks and reaps.
  auto *rec = new ProcRec{{}, p->shared_from_this(), cb, user};
  uv_stdio_container_t stdio[3];
  int fds[3] = {spec->stdin_fd, spec->stdout_fd, spec->stderr_fd};
  for (int i = 0; i < 3; ++i) {
    if (fds[i] >= 0) {
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = fds[i];
    } else {
      stdio[i].flags = UV_IGNORE;  // libuv opens /dev/null
    }
  }
  uv_process_options_t opts{};
  opts.file = spec->file;
  opts.args = const_cast<char **>(spec->argv);
  opts.env = const_cast<char **>(spec->envp);
  opts.cwd = spec->cwd;
  opts.stdio_count = 3;
  opts.stdio = stdio;
  opts.flags = spec->detached && !keeps_session(spec) ? UV_PROCESS_DETACHED : 0;
  opts.exit_cb = [](uv_process_t *proc, int64_t exit_status, int term_signal) {
    auto *r = static_cast<ProcRec *>(proc->data);
    if (r->cb && r->owner->alive)
      r->cb(r->user, proc->pid, term_signal ? -1 : exit_status, term_signal);
    uv_close(reinterpret_cast<uv_handle_t *>(proc),
             [](uv_handle_t *h) { delete static_cast<ProcRec *>(h->data); });
  };
  rec->proc.data = rec;
  if (int rc = uv_spawn(p->host->loop(), &rec->proc, &opts); rc != 0) {
    t_last_error = std::string("cannot start ") + spec->file + ": " + uv_strerror(rc);
    // uv_spawn initialised the handle even on failure; it must be closed.
    uv_close(reinterpret_cast<uv_handle_t *>(&rec->proc),
             [](uv_handle_t *h) { delete static_cast<ProcRec *>(h->data); });
    return rc == UV_ENOENT ? FLOTILLA_E_NOT_FOUND
                           : rc == UV_EACCES ? FLOTILLA_E_PERMISSION : FLOTILLA_E_IO;
  }
  if (spec->detached) uv_unref(reinterpret_cast<uv_handle_t *>(&rec->proc));
  if (pid_out) *pid_out = rec->proc.pid;
  return FLOTILLA_OK;
}

flotilla_status host_queue_work(void *ctx, flotilla_work_cb work, flotilla_after_work_cb after,
                                void *user) {
  Loaded *p = L(ctx);
  if (!work) {
    t_last_error = "queue_work: work callback is required";
    return FLOTILLA_E_INVALID;
  }
  auto *rec = new WorkRec{{}, p->shared_from_this(), work, after, user};
  rec->req.data = rec;
  int rc = uv_queue_work(
      p->host->loop(), &rec->req,
      [](uv_work_t *req) {
        auto *r = static_cast<WorkRec *>(req->data);
        r->work(r->user);
      },
      [](uv_work_t *req, int status) {
        std::unique_ptr<WorkRec> r(static_cast<WorkRec *>(req->data));
        // After deinit the instance is gone: its callbacks must not run.
        if (r->after && r->owner->alive)
          r->after(r->user, status == UV_ECANCELED ? FLOTILLA_E_CANCELLED : FLOTILLA_OK);
      });
  if (rc != 0) {
    delete rec;
    t_last_error = std::string("queue_work: ") + uv_strerror(rc);
    return FLOTILLA_E_INTERNAL;
  }
  return FLOTILLA_OK;
}

const void *host_get_interface(void *ctx, const char *interface_id, void **self_out) {
  Loaded *p = L(ctx);
  if (!interface_id) return nullptr;
  return p->host->find_interface(interface_id, self_out);
}

void host_event_publish(void *ctx, const char *topic, const char *json) {
  if (!topic) return;
  L(ctx)->host->events().publish(topic, json ? json : "null");
}

flotilla_handle host_event_subscribe(void *ctx, const char *prefix, flotilla_event_cb cb,
                                     void *user) {
  Loaded *p = L(ctx);
  if (!cb) return 0;
  uint64_t id = p->host->events().subscribe(
      prefix ? prefix : "", [p, cb, user](const std::string &topic, const std::string &json) {
        if (p->alive) cb(user, topic.c_str(), json.c_str());
      });
  p->subscriptions.insert(id);
  return id;
}

void host_event_unsubscribe(void *ctx, flotilla_handle id) {
  Loaded *p = L(ctx);
  if (p->subscriptions.erase(id)) p->host->events().unsubscribe(id);
}

void host_metric_counter_add(void *ctx, const char *name, double delta) {
  if (valid_metric_name(name)) L(ctx)->host->metrics().counter_add(name, delta);
}

void host_metric_gauge_set(void *ctx, const char *name, double value) {
  if (valid_metric_name(name)) L(ctx)->host->metrics().gauge_set(name, value);
}

// The table check_config gets: the loop, processes, work, other plugins'
// interfaces and the event bus are not there yet, so these refuse.
flotilla_handle check_timer_start(void *, uint64_t, uint64_t, flotilla_timer_cb, void *) {
  t_last_error = "timers are not available in check_config";
  return 0;
}
void check_handle_stop(void *, flotilla_handle) {}
flotilla_handle check_fd_watch(void *, int, uint32_t, flotilla_fd_cb, void *) {
  t_last_error = "fd watches are not available in check_config";
  return 0;
}
flotilla_status check_process_spawn(void *, const flotilla_process_spec *, flotilla_exit_cb, void *,
                                    int64_t *) {
  t_last_error = "processes cannot be started in check_config";
  return FLOTILLA_E_UNSUPPORTED;
}
flotilla_status check_queue_work(void *, flotilla_work_cb, flotilla_after_work_cb, void *) {
  t_last_error = "work cannot be queued in check_config";
  return FLOTILLA_E_UNSUPPORTED;
}
const void *check_get_interface(void *, const char *, void **self_out) {
  if (self_out) *self_out = nullptr;
  return nullptr;
}
void check_event_publish(void *, const char *, const char *) {}
flotilla_handle check_event_subscribe(void *, const char *, flotilla_event_cb, void *) {
  return 0;
}
void check_metric(void *, const char *, double) {}

}  // namespace

// ---- the host --------------------------------------------------------------

PluginHost::PluginHost(uv_loop_t *loop, Options options)
    : loop_(loop), options_(std::move(options)), events_(loop) {}

PluginHost::~PluginHost() { stop(); }

std::string PluginHost::last_error() { return t_last_error; }
void PluginHost::clear_last_error() { t_last_error.clear(); }

std::string sha256_file(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(FLOTILLA_E_IO, path + ": " + std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) EVP_DigestUpdate(md.get(), buf, n);
  int saved = errno;
  ::close(fd);
  if (n < 0) throw Error(FLOTILLA_E_IO, path + ": " + std::strerror(saved));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(md.get(), digest, &len);
  std::string hex;
  static const char *digits = "0123456789abcdef";
  for (unsigned i = 0; i < len; ++i) {
    hex += digits[digest[i] >> 4];
    hex += digits[digest[i] & 15];
  }
  return hex;
}

namespace {

// Open one plugin file and check its entry. Throws Error naming the file
// and the fix.
std::shared_ptr<Loaded> open_plugin(PluginHost *host, const PluginSettings &s,
                                    const std::string &config_path) {
  auto p = std::make_shared<Loaded>();
  p->host = host;
  p->settings = s;
  const std::string where = "plugin " + s.name + ": " + s.path;

  struct stat st{};
  if (::stat(s.path.c_str(), &st) != 0)
    throw Error(FLOTILLA_E_NOT_FOUND,
                where + ": " + std::strerror(errno) + "; set plugin." + s.name +
                    ".path in " + config_path + ", or check that the plugin was built and installed");
  if (!S_ISREG(st.st_mode))
    throw Error(FLOTILLA_E_INVALID, where + ": not a regular file");

  // Hash before dlopen: dlopen runs the file's constructors, so a pinned
  // plugin must be checked before any of its code runs.
  p->info.sha256 = sha256_file(s.path);
  if (!s.sha256.empty() && s.sha256 != p->info.sha256)
    throw Error(FLOTILLA_E_PERMISSION,
                where + ": SHA-256 is " + p->info.sha256 + " but plugin." + s.name +
                    ".sha256 in " + config_path + " pins " + s.sha256 +
                    "; refusing to load it. If the plugin was upgraded on purpose, update the pin");

  if (!has_elf_magic(s.path))
    throw Error(FLOTILLA_E_INVALID,
                where + ": not a shared object (no ELF header); plugin." + s.name +
                    ".path must name a plugin's .so file");

  dlerror();
  p->dl.reset(dlopen(s.path.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!p->dl) {
    const char *e = dlerror();
    throw Error(FLOTILLA_E_INVALID, where + ": cannot be loaded as a shared object: " +
                                        (e ? e : "unknown dlopen error"));
  }
  auto *entry = static_cast<const flotilla_entry *>(
      dlsym(p->dl.get(), FLOTILLA_PLUGIN_ENTRY_SYMBOL));
  if (!entry)
    throw Error(FLOTILLA_E_INVALID,
                where + ": does not export the symbol " FLOTILLA_PLUGIN_ENTRY_SYMBOL
                        "; is it a Flotilla plugin? A plugin defines it with "
                        "FLOTILLA_PLUGIN_EXPORT (see flotilla/entry.h)");
  if (entry->struct_size < kEntrySize_1_0)
    throw Error(FLOTILLA_E_INVALID,
                where + ": its " FLOTILLA_PLUGIN_ENTRY_SYMBOL " is " +
                    std::to_string(entry->struct_size) + " bytes, smaller than ABI 1.0's " +
                    std::to_string(kEntrySize_1_0) + "; the plugin is corrupt or not built "
                    "against flotilla-plugin");
  std::string ident = std::string(entry->id ? entry->id : "?") + " " +
                      (entry->version ? entry->version : "?");
  if (entry->abi_major != FLOTILLA_ABI_VERSION_MAJOR)
    throw Error(FLOTILLA_E_UNSUPPORTED,
                where + " (" + ident + ") was built for plugin ABI " +
                    std::to_string(entry->abi_major) + "." + std::to_string(entry->abi_minor) +
                    " but this flotillad speaks ABI " +
                    std::to_string(FLOTILLA_ABI_VERSION_MAJOR) + "." +
                    std::to_string(FLOTILLA_ABI_VERSION_MINOR) +
                    "; rebuild the plugin against flotilla-plugin " +
                    std::to_string(FLOTILLA_ABI_VERSION_MAJOR) + ".x, or run a matching flotillad");
  if (!valid_plugin_id(entry->id))
    throw Error(FLOTILLA_E_INVALID,
                where + ": its id \"" + (entry->id ? entry->id : "(null)") +
                    "\" is not a reverse-DNS name like org.example.my-plugin");
  if (!entry->init || !entry->get_interface)
    throw Error(FLOTILLA_E_INVALID,
                where + " (" + ident + "): its entry has no init or get_interface function");

  p->entry = entry;
  p->info.name = s.name;
  p->info.id = entry->id;
  p->info.version = entry->version ? entry->version : "";
  p->info.description = entry->description ? entry->description : "";
  p->info.path = s.path;
  p->info.provides = c_list(entry->provides);
  p->info.depends_on = c_list(entry->depends_on);
  p->info.abi_major = entry->abi_major;
  p->info.abi_minor = std::min<uint32_t>(entry->abi_minor, FLOTILLA_ABI_VERSION_MINOR);
  p->config_json = s.config.dump();
  return p;
}

// Order plugins so that each one's requires are served by plugins before
// it; stable with respect to config order. Throws on a missing provider or
// a cycle.
std::vector<std::shared_ptr<Loaded>> order_by_requires(std::vector<std::shared_ptr<Loaded>> in) {
  const size_t n = in.size();
  std::vector<std::set<size_t>> deps(n);
  for (size_t i = 0; i < n; ++i) {
    for (const auto &req : in[i]->info.depends_on) {
      bool found = false;
      for (size_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const auto &prov = in[j]->info.provides;
        if (std::find(prov.begin(), prov.end(), req) != prov.end()) {
          deps[i].insert(j);
          found = true;
        }
      }
      if (!found)
        throw Error(FLOTILLA_E_NOT_FOUND,
                    in[i]->where() + " requires interface " + req +
                        ", which no configured plugin provides; add a [plugin.<name>] table "
                        "for a plugin that provides it");
    }
  }
  std::vector<std::shared_ptr<Loaded>> out;
  std::vector<bool> placed(n, false);
  while (out.size() < n) {
    bool progress = false;
    for (size_t i = 0; i < n; ++i) {
      if (placed[i]) continue;
      bool ready = std::all_of(deps[i].begin(), deps[i].end(), [&](size_t j) { return placed[j]; });
      if (!ready) continue;
      placed[i] = true;
      out.push_back(std::move(in[i]));
      progress = true;
      break;  // restart from the top: keeps config order among the ready ones
    }
    if (!progress) {
      // Walk from an unplaced plugin along unplaced requirements until a
      // name repeats: that is the cycle.
      size_t start = 0;
      while (placed[start]) ++start;
      std::vector<size_t> path{start};
      std::set<size_t> seen{start};
      size_t cur = start;
      for (;;) {
        size_t next = *std::find_if(deps[cur].begin(), deps[cur].end(),
                                    [&](size_t j) { return !placed[j]; });
        if (seen.count(next)) {
          std::vector<std::string> names;
          auto it = std::find(path.begin(), path.end(), next);
          for (; it != path.end(); ++it) names.push_back(in[*it]->settings.name);
          names.push_back(in[next]->settings.name);
          throw Error(FLOTILLA_E_INVALID, "plugins require each other in a cycle: " +
                                              join(names, " -> ") +
                                              "; no start order exists. Remove one of them");
        }
        seen.insert(next);
        path.push_back(next);
        cur = next;
      }
    }
  }
  return out;
}

}  // namespace

std::vector<std::shared_ptr<PluginHost::Loaded>> PluginHost::open_all(
    const std::vector<PluginSettings> &plugins) {
  std::vector<std::shared_ptr<Loaded>> opened;
  std::map<std::string, std::string> ids;  // id -> plugin name
  for (const auto &s : plugins) {
    if (!s.enabled) continue;
    auto p = open_plugin(this, s, options_.config_path);
    if (auto it = ids.find(p->info.id); it != ids.end())
      throw Error(FLOTILLA_E_EXISTS,
                  p->where() + ": its id " + p->info.id + " is already loaded by plugin " +
                      it->second + "; two [plugin.*] tables load the same plugin, remove one");
    ids.emplace(p->info.id, s.name);
    opened.push_back(std::move(p));
  }
  return order_by_requires(std::move(opened));
}

std::vector<std::string> PluginHost::check_configs(
    const std::vector<std::shared_ptr<Loaded>> &opened, uint32_t flags) {
  std::vector<std::string> problems;
  for (const auto &p : opened) {
    if (!FLOTILLA_HAS_FIELD(p->entry, flotilla_entry, check_config) || !p->entry->check_config) {
      if (flags & FLOTILLA_CHECK_ALL)
        log::info("core", p->where() + " (ABI " + std::to_string(p->entry->abi_major) + "." +
                              std::to_string(p->entry->abi_minor) +
                              ") has no check_config; its own keys are checked only when it "
                              "starts");
      continue;
    }
    std::string dir = options_.data_dir + "/plugins/" + p->settings.name;
    flotilla_host t{};
    t.struct_size = sizeof(flotilla_host);
    t.abi_minor = p->info.abi_minor;
    t.host_ctx = p.get();
    t.node_name = options_.node_name.c_str();
    t.data_dir = dir.c_str();
    t.plugin_name = p->settings.name.c_str();
    t.log = host_log;
    t.set_error = host_set_error;
    t.config_json = host_config_json;
    t.config_error = host_config_error;
    t.timer_start = check_timer_start;
    t.timer_stop = check_handle_stop;
    t.fd_watch = check_fd_watch;
    t.fd_unwatch = check_handle_stop;
    t.process_spawn = check_process_spawn;
    t.queue_work = check_queue_work;
    t.get_interface = check_get_interface;
    t.event_publish = check_event_publish;
    t.event_subscribe = check_event_subscribe;
    t.event_unsubscribe = check_handle_stop;
    t.metric_counter_add = check_metric;
    t.metric_gauge_set = check_metric;

    t_last_error.clear();
    p->config_problems.clear();
    p->checking = true;
    flotilla_status st = FLOTILLA_E_INTERNAL;
    try {
      st = p->entry->check_config(&t, flags);
    } catch (...) {
      t_last_error = "check_config threw a C++ exception across the C ABI";
    }
    p->checking = false;
    if (st == FLOTILLA_OK && p->config_problems.empty()) continue;
    if (!p->config_problems.empty()) {
      problems.insert(problems.end(), p->config_problems.begin(), p->config_problems.end());
    } else {
      problems.push_back(p->where() + ": its config check failed: " +
                         (t_last_error.empty() ? status_name(st) : t_last_error));
    }
    p->config_problems.clear();
  }
  return problems;
}

void PluginHost::check(const std::vector<PluginSettings> &plugins) {
  auto problems = check_configs(open_all(plugins), FLOTILLA_CHECK_ALL);
  if (!problems.empty()) throw PluginConfigError(std::move(problems));
}

void PluginHost::start(const std::vector<PluginSettings> &plugins) {
  std::vector<std::shared_ptr<Loaded>> opened = open_all(plugins);
  // Every plugin's config problems together, before any plugin starts.
  if (auto problems = check_configs(opened, 0); !problems.empty()) {
    for (const auto &m : problems) log::error("core", m);
    throw PluginConfigError(std::move(problems));
  }
  for (auto &p : opened) {
    p->data_dir = options_.data_dir + "/plugins/" + p->settings.name;
    std::error_code ec;
    std::filesystem::create_directories(p->data_dir, ec);
    if (ec) {
      stop();
      throw Error(FLOTILLA_E_IO, p->where() + ": cannot create its data directory " +
                                     p->data_dir + ": " + ec.message());
    }
    ::chmod(p->data_dir.c_str(), 0700);

    flotilla_host &t = p->table;
    t.struct_size = sizeof(flotilla_host);
    t.abi_minor = p->info.abi_minor;
    t.host_ctx = p.get();
    t.node_name = options_.node_name.c_str();
    t.data_dir = p->data_dir.c_str();
    t.plugin_name = p->settings.name.c_str();
    t.log = host_log;
    t.set_error = host_set_error;
    t.config_json = host_config_json;
    t.config_error = host_config_error;
    t.timer_start = host_timer_start;
    t.timer_stop = host_timer_stop;
    t.fd_watch = host_fd_watch;
    t.fd_unwatch = host_fd_unwatch;
    t.process_spawn = host_process_spawn;
    t.queue_work = host_queue_work;
    t.get_interface = host_get_interface;
    t.event_publish = host_event_publish;
    t.event_subscribe = host_event_subscribe;
    t.event_unsubscribe = host_event_unsubscribe;
    t.metric_counter_add = host_metric_counter_add;
    t.metric_gauge_set = host_metric_gauge_set;

    t_last_error.clear();
    flotilla_status st = FLOTILLA_E_INTERNAL;
    p->alive = true;  // init may already use timers and work
    try {
      st = p->entry->init(&p->table, &p->instance);
    } catch (...) {
      t_last_error = "init threw a C++ exception across the C ABI";
    }
    if (st != FLOTILLA_OK) {
      p->alive = false;
      std::string why = t_last_error.empty() ? status_name(st) : t_last_error;
      std::string where = p->where();
      started_.push_back(std::move(p));  // so that stop() closes what init left
      stop();
      throw Error(st == FLOTILLA_OK ? FLOTILLA_E_INTERNAL : st,
                  where + " failed to initialise: " + why);
    }
    log::info("core", "plugin started",
              {{"plugin", p->settings.name}, {"id", p->info.id}, {"version", p->info.version}});
    started_.push_back(std::move(p));
  }
}

void PluginHost::stop() {
  for (auto it = started_.rbegin(); it != started_.rend(); ++it) {
    Loaded &p = **it;
    if (p.alive) {
      try {
        p.entry->deinit(p.instance);
      } catch (...) {
        log::error("core", p.where() + ": deinit threw a C++ exception across the C ABI");
      }
      p.alive = false;
      log::debug("core", "plugin stopped", {{"plugin", p.settings.name}});
    }
    if (!p.handles.empty())
      log::warn("core", p.where() + " left " + std::to_string(p.handles.size()) +
                            " timers or fd watches open at deinit; the host closed them");
    for (auto &[id, h] : p.handles) {
      if (h->type == UV_TIMER)
        close_and_delete_timer(h);
      else
        close_and_delete_poll(h);
    }
    p.handles.clear();
    for (uint64_t id : p.subscriptions) events_.unsubscribe(id);
    p.subscriptions.clear();
  }
  // Records still referenced by queued work or unreaped children stay
  // alive (and their shared object mapped) until the loop is done with them.
  started_.clear();
}

const void *PluginHost::find_interface(std::string_view id, void **self_out,
                                       std::string_view plugin_name) const {
  for (const auto &p : started_) {
    if (!p->alive) continue;
    if (!plugin_name.empty() && p->settings.name != plugin_name) continue;
    const auto &prov = p->info.provides;
    if (std::find(prov.begin(), prov.end(), id) == prov.end()) continue;
    const void *vt = nullptr;
    try {
      vt = p->entry->get_interface(p->instance, std::string(id).c_str());
    } catch (...) {
      vt = nullptr;
    }
    if (!vt) continue;
    if (self_out) *self_out = p->instance;
    return vt;
  }
  return nullptr;
}

std::vector<std::string> PluginHost::providers(std::string_view id) const {
  std::vector<std::string> out;
  for (const auto &p : started_) {
    if (!p->alive) continue;
    const auto &prov = p->info.provides;
    if (std::find(prov.begin(), prov.end(), id) != prov.end()) out.push_back(p->settings.name);
  }
  return out;
}

std::vector<PluginInfo> PluginHost::list() const {
  std::vector<PluginInfo> out;
  for (const auto &p : started_)
    if (p->alive) out.push_back(p->info);
  return out;
}

}  // namespace flotilla
