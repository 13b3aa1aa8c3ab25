#include "runc_runtime.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>

#include "../image/fs_ops.h"
#include "../image/image_error.h"
#include "../image/image_store.h"
#include "../shim/proc_info.h"
#include "../shim/shim_protocol.h"
#include "exec_runs.h"
#include "image_pulls.h"
#include "log_runs.h"
#include "netlink.h"
#include "oci_spec.h"
#include "task_spec.h"

namespace flotilla::runc {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char *kStatusCreating = "creating";  // internal; never reported
constexpr const char *kStatusCreated = "created";
constexpr const char *kStatusRunning = "running";
constexpr const char *kStatusStopped = "stopped";
constexpr uint64_t kShimGraceMs = 15000;  // after `delete --force`, before the shim is killed
constexpr size_t kMaxCommandOutput = 64 * 1024;

int pidfd_open(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// The message in what runc or crun printed: runc logs `msg="..."` lines,
// crun plain text; the last one explains the failure.
std::string runtime_message(const std::string &output) {
  std::string last;
  size_t pos = 0;
  while (pos < output.size()) {
    size_t nl = output.find('\n', pos);
    std::string line = output.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? output.size() : nl + 1;
    if (line.empty()) continue;
    if (size_t m = line.find("msg=\""); m != std::string::npos) {
      std::string msg;
      for (size_t i = m + 5; i < line.size() && line[i] != '"'; ++i) {
        if (line[i] == '\\' && i + 1 < line.size()) ++i;
        msg += line[i];
      }
      last = msg;
    } else {
      last = line;
    }
  }
  return last.empty() ? "(no output)" : last;
}

// Reads a small JSON file; null when it is missing or half-written.
json read_json_file(const fs::path &path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return nullptr;
  try {
    return json::parse(read_small_file(path, 1 << 20, path.string()));
  } catch (const std::exception &) {
    return nullptr;
  }
}

// The absolute path of program NAME (as execvp would find it in PATH), or
// "" when there is none.
std::string find_program(const std::string &name) {
  if (name.find('/') != std::string::npos)
    return ::access(name.c_str(), X_OK) == 0 ? name : std::string();
  const char *path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    if (!dir.empty() && dir.front() == '/' && ::access((dir + "/" + name).c_str(), X_OK) == 0)
      return dir + "/" + name;
    start = end + 1;
  }
  return {};
}

// flotilla-runc-shim next to this shared object (a build tree, or a
// distribution that keeps both in one directory), else the installed one.
// Pinning an allocation's shared namespace: its tasks' bundles are made in
// parallel on the thread pool, and only one of them may make it.
std::mutex &alloc_netns_mutex() {
  static std::mutex m;
  return m;
}

std::string find_shim() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void *>(&find_shim), &info) != 0 && info.dli_fname) {
    fs::path next = fs::path(info.dli_fname).parent_path() / "flotilla-runc-shim";
    if (::access(next.c_str(), X_OK) == 0) return next.string();
  }
  if (::access(FLOTILLA_RUNC_SHIM_DEFAULT, X_OK) == 0) return FLOTILLA_RUNC_SHIM_DEFAULT;
  return {};
}

}  // namespace

std::string missing_image_message(const std::string &ref) {
  return "image \"" + ref +
         "\" is not in this node's image store; import it with `flotilla image import PATH "
         "--tag " +
         ref + "`, PATH being an OCI image layout directory or an oci-archive tarball";
}

// ---- internal types -------------------------------------------------------

struct RuncRuntime::Container {
  explicit Container(const fs::path &dir) : paths(dir) {}
  ContainerRecord rec;
  ContainerPaths paths;
  ContainerStatus st;
  bool removing = false;
  bool stopping = false;
  bool exit_reported = false;
  pid_t shim_pid = 0;
  UniqueFd shim_pidfd;
  flotilla_handle shim_watch = 0;
  UniqueFd notify_fd;
  flotilla_handle notify_watch = 0;
  std::string notify_buf;
  // The shim is started with the bundle still being prepared and waits on
  // this pipe: 'g' once the bundle is ready, end of file when it is not.
  UniqueFd go_fd;
  bool preparing = false;
  bool shim_lost = false;  // the shim ended while the bundle was prepared
  std::string shim_error;  // why it could not be started (then shim_lost too)
  int64_t log_run = 0;     // its run in logs/runs.json (0: not known, the last one)
  uint64_t create_reply = 0;
  uint64_t kill_timer = 0;
  std::vector<std::function<void()>> on_exit;  // run once the monitor has exited
  RuncRuntime *rt = nullptr;
};

struct RuncRuntime::Deferred {
  RuncRuntime *rt;
  uint64_t key;
  flotilla_handle timer = 0;
  std::function<void()> fn;
};

struct RuncRuntime::Work {
  RuncRuntime *rt;
  std::function<void()> work;
  Done after;
  flotilla_status status = FLOTILLA_OK;
  std::string message;
};

struct RuncRuntime::Command {
  RuncRuntime *rt;
  uint64_t key;
  std::string what;
  UniqueFd out;
  flotilla_handle watch = 0;
  std::string output;
  bool exited = false;
  int64_t status = -1;
  std::function<void(int64_t, const std::string &)> done;
};

struct RuncRuntime::Reply {
  flotilla_runtime_state_cb state_cb = nullptr;
  flotilla_runtime_list_cb list_cb = nullptr;
  flotilla_done_cb done_cb = nullptr;
  void *user = nullptr;
};

struct RuncRuntime::Found {
  std::string id;
  ContainerRecord rec;
  bool has_record = false;
  ShimState shim;
  bool exit_reported = false;
  UniqueFd shim_pidfd;  // open when the monitor is alive
  std::string warning;
};

// ---- construction ---------------------------------------------------------

RuncRuntime::RuncRuntime(const flotilla_host *host, RuntimeConfig config)
    : host_(host),
      config_(std::move(config)),
      execs_(std::make_unique<ExecRuns>(host, config_.binary, config_.root)) {}

RuncRuntime::~RuncRuntime() {
  execs_.reset();  // each exec still running is answered FLOTILLA_E_CANCELLED
  if (image_gc_timer_) host_->timer_stop(host_->host_ctx, image_gc_timer_);
  for (auto &[id, c] : containers_) {
    if (c->shim_watch) host_->fd_unwatch(host_->host_ctx, c->shim_watch);
    if (c->notify_watch) host_->fd_unwatch(host_->host_ctx, c->notify_watch);
  }
  for (auto &[key, d] : deferred_) host_->timer_stop(host_->host_ctx, d->timer);
  deferred_.clear();
  for (auto &[key, cmd] : commands_)
    if (cmd->watch) host_->fd_unwatch(host_->host_ctx, cmd->watch);
  commands_.clear();
  // Containers keep running: their shims outlive us. Pending requests end.
  auto replies = std::move(replies_);
  for (auto &[rid, r] : replies) {
    host_->set_error(host_->host_ctx, "runtime-runc is shutting down");
    if (r->state_cb) r->state_cb(r->user, FLOTILLA_E_CANCELLED, "null");
    if (r->list_cb) r->list_cb(r->user, FLOTILLA_E_CANCELLED, "[]");
    if (r->done_cb) r->done_cb(r->user, FLOTILLA_E_CANCELLED);
  }
  auto queued = std::move(until_ready_);
  for (auto &[op, fail] : queued) {
    host_->set_error(host_->host_ctx, "runtime-runc is shutting down");
    fail(FLOTILLA_E_CANCELLED);
  }
}

// ---- plumbing -------------------------------------------------------------

uint64_t RuncRuntime::defer(std::function<void()> fn, uint64_t delay_ms) {
  uint64_t key = next_key_++;
  auto d = std::make_unique<Deferred>(Deferred{this, key, 0, std::move(fn)});
  d->timer = host_->timer_start(host_->host_ctx, delay_ms, 0, &RuncRuntime::on_deferred, d.get());
  if (d->timer == 0) {
    host_->log(host_->host_ctx, FLOTILLA_LOG_ERROR, "timer_start failed; request dropped");
    return 0;
  }
  deferred_[key] = std::move(d);
  return key;
}

void RuncRuntime::cancel_deferred(uint64_t key) {
  auto it = deferred_.find(key);
  if (it == deferred_.end()) return;
  host_->timer_stop(host_->host_ctx, it->second->timer);
  deferred_.erase(it);
}

void RuncRuntime::on_deferred(void *user) {
  auto *d = static_cast<Deferred *>(user);
  RuncRuntime *rt = d->rt;
  auto node = rt->deferred_.extract(d->key);  // the host released the one-shot timer
  if (!node.empty()) node.mapped()->fn();
}

void RuncRuntime::queue(std::function<void()> work, Done after) {
  auto *w = new Work{this, std::move(work), std::move(after), FLOTILLA_OK, {}};
  if (host_->queue_work(host_->host_ctx, &RuncRuntime::on_work, &RuncRuntime::on_work_done, w) !=
      FLOTILLA_OK) {
    std::unique_ptr<Work> owned(w);
    defer([after = std::move(owned->after)] {
      after(FLOTILLA_E_INTERNAL, "the host refused to queue work");
    });
  }
}

void RuncRuntime::on_work(void *user) {
  auto *w = static_cast<Work *>(user);
  try {
    w->work();
  } catch (const RuntimeFailure &e) {
    w->status = e.status();
    w->message = e.what();
  } catch (const ImageError &e) {
    w->status = e.status();
    w->message = e.what();
  } catch (const std::bad_alloc &) {
    w->status = FLOTILLA_E_NOMEM;
    w->message = "out of memory";
  } catch (const std::exception &e) {
    w->status = FLOTILLA_E_IO;
    w->message = e.what();
  }
}

void RuncRuntime::on_work_done(void *user, flotilla_status status) {
  std::unique_ptr<Work> w(static_cast<Work *>(user));
  if (status != FLOTILLA_OK) {
    w->status = status;
    w->message = "the daemon stopped before the work ran";
  }
  w->after(w->status, w->message);
}

void RuncRuntime::run_runtime(std::vector<std::string> args,
                              std::function<void(int64_t, const std::string &)> done) {
  std::vector<std::string> argv = {config_.binary, "--root", config_.root};
  argv.insert(argv.end(), args.begin(), args.end());
  auto cmd = std::make_unique<Command>();
  cmd->rt = this;
  cmd->key = next_key_++;
  cmd->what = config_.binary + " " + (args.empty() ? "" : args[0]);
  cmd->done = std::move(done);

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    std::string msg = std::string("pipe: ") + std::strerror(errno);
    defer([done = std::move(cmd->done), msg] { done(-1, msg); });
    return;
  }
  UniqueFd rd(p[0]), wr(p[1]);
  ::fcntl(rd.get(), F_SETFL, O_NONBLOCK);
  std::vector<const char *> cargv;
  for (const auto &a : argv) cargv.push_back(a.c_str());
  cargv.push_back(nullptr);
  flotilla_process_spec spec{};
  spec.struct_size = sizeof spec;
  spec.file = config_.binary.c_str();
  spec.argv = cargv.data();
  spec.stdin_fd = -1;
  spec.stdout_fd = wr.get();
  spec.stderr_fd = wr.get();
  int64_t pid = 0;
  Command *raw = cmd.get();
  flotilla_status st =
      host_->process_spawn(host_->host_ctx, &spec, &RuncRuntime::on_command_exit, raw, &pid);
  wr.reset();
  if (st != FLOTILLA_OK) {
    std::string msg = "cannot run " + config_.binary + " (plugin.runtime-runc.binary)";
    defer([done = std::move(cmd->done), msg] { done(-1, msg); });
    return;
  }
  cmd->out = std::move(rd);
  cmd->watch = host_->fd_watch(host_->host_ctx, cmd->out.get(), FLOTILLA_FD_READABLE,
                               &RuncRuntime::on_command_output, raw);
  if (cmd->watch == 0) cmd->out.reset();  // only the exit is awaited then
  commands_[cmd->key] = std::move(cmd);
}

void RuncRuntime::on_command_output(void *user, int fd, uint32_t) {
  auto *cmd = static_cast<Command *>(user);
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      if (cmd->output.size() < kMaxCommandOutput) cmd->output.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    break;  // EOF or error
  }
  cmd->rt->host_->fd_unwatch(cmd->rt->host_->host_ctx, cmd->watch);
  cmd->watch = 0;
  cmd->out.reset();
  cmd->rt->finish_command(cmd);
}

void RuncRuntime::on_command_exit(void *user, int64_t, int64_t status, int) {
  auto *cmd = static_cast<Command *>(user);
  cmd->exited = true;
  cmd->status = status;
  cmd->rt->finish_command(cmd);
}

void RuncRuntime::finish_command(Command *cmd) {
  if (!cmd->exited || cmd->out) return;
  auto node = commands_.extract(cmd->key);
  if (node.empty()) return;
  node.mapped()->done(node.mapped()->status, node.mapped()->output);
}

uint64_t RuncRuntime::add_reply(Reply reply) {
  uint64_t rid = next_key_++;
  replies_[rid] = std::make_unique<Reply>(reply);
  return rid;
}

void RuncRuntime::answer(uint64_t rid, flotilla_status status, const std::string &text) {
  auto node = replies_.extract(rid);
  if (node.empty()) return;
  Reply &r = *node.mapped();
  if (status != FLOTILLA_OK) host_->set_error(host_->host_ctx, text.c_str());
  const char *payload = status == FLOTILLA_OK ? text.c_str() : nullptr;
  if (r.state_cb) r.state_cb(r.user, status, payload ? payload : "null");
  if (r.list_cb) r.list_cb(r.user, status, payload ? payload : "[]");
  if (r.done_cb) r.done_cb(r.user, status);
}

flotilla_status RuncRuntime::refuse(flotilla_status status, const std::string &message) {
  host_->set_error(host_->host_ctx, message.c_str());
  return status;
}

flotilla_status RuncRuntime::gate(std::function<flotilla_status()> op,
                                  std::function<void(flotilla_status)> fail) {
  if (ready_) {
    if (!startup_error_.empty()) return refuse(FLOTILLA_E_UNAVAILABLE, startup_error_);
    return op();
  }
  until_ready_.emplace_back(std::move(op), std::move(fail));
  return FLOTILLA_OK;
}

// ---- containers -----------------------------------------------------------

RuncRuntime::Container *RuncRuntime::find(const std::string &id) {
  auto it = containers_.find(id);
  return it == containers_.end() ? nullptr : it->second.get();
}

flotilla_status RuncRuntime::lookup(const char *id, Container *&c, bool allow_busy) {
  c = id ? find(id) : nullptr;
  if (!c)
    return refuse(FLOTILLA_E_NOT_FOUND,
                  std::string("no container \"") + (id ? id : "") + "\" in runtime-runc");
  if (c->st.status == kStatusCreating)
    return refuse(FLOTILLA_E_CONFLICT, "container " + c->rec.id + " is still being created");
  if (c->removing && !allow_busy)
    return refuse(FLOTILLA_E_CONFLICT, "container " + c->rec.id + " is being removed");
  return FLOTILLA_OK;
}

json RuncRuntime::state_of(const Container *c) const {
  return state_json(c->rec, c->st);
}

flotilla_status RuncRuntime::create(const char *id, const char *task_json,
                                    flotilla_runtime_state_cb cb, void *user) {
  if (!id || !task_json || !cb)
    return refuse(FLOTILLA_E_INVALID, "create: container_id, task_json and cb are required");
  std::string sid = id, task = task_json;
  return gate([=, this] { return create_now(sid, task, cb, user); },
              [cb, user](flotilla_status st) { cb(user, st, "null"); });
}

flotilla_status RuncRuntime::create_now(const std::string &id, const std::string &task_json,
                                        flotilla_runtime_state_cb cb, void *user,
                                        const json &ended) {
  if (!is_valid_container_id(id))
    return refuse(FLOTILLA_E_INVALID, "container id \"" + id +
                                          "\" is not valid: use 1 to 128 letters, digits, '-', "
                                          "'_' and '.', starting with a letter or digit");
  TaskSpec task;
  try {
    task = parse_task_json(task_json);
  } catch (const TaskError &e) {
    return refuse(FLOTILLA_E_INVALID, "container " + id + ": task JSON: " + e.what());
  }
  if (Container *old = find(id)) {
    // "replace": a restart. The exited container goes, its logs stay as an
    // earlier run, and the new one is created in its place.
    if (!task.replace || old->removing || old->preparing || old->st.status != kStatusStopped)
      return refuse(FLOTILLA_E_EXISTS,
                    "container " + id + " already exists" +
                        (task.replace && old->st.status != kStatusStopped
                             ? std::string(" and has not exited; only an exited container is "
                                           "replaced")
                             : std::string()));
    json old_state = state_of(old);
    uint64_t rid = add_reply({cb, nullptr, nullptr, user});
    remove_internal(
        id,
        [this, rid, id, task_json, old_state](flotilla_status st, const std::string &msg) {
          auto node = replies_.extract(rid);
          if (node.empty()) return;
          Reply r = *node.mapped();
          if (st != FLOTILLA_OK) {
            host_->set_error(host_->host_ctx, msg.c_str());
            return r.state_cb(r.user, st, "null");
          }
          if (flotilla_status s2 = create_now(id, task_json, r.state_cb, r.user, old_state);
              s2 != FLOTILLA_OK)
            r.state_cb(r.user, s2, "null");  // create_now set the error
        },
        true);
    return FLOTILLA_OK;
  }

  // All tasks of an allocation share one network namespace
  // (docs/jobspec.md): the network plugin's, else one this runtime pins for
  // the allocation and removes with its last container.
  std::string shared_netns;
  if (task.network != "host" && task.netns.empty() && !task.alloc_id.empty() &&
      is_valid_container_id(task.alloc_id)) {
    shared_netns = config_.alloc_netns_dir + "/" + task.alloc_id;
    task.netns = shared_netns;
  }

  auto c = std::make_unique<Container>(fs::path(config_.containers_dir) / id);
  c->rt = this;
  c->rec.id = id;
  c->rec.alloc_id = task.alloc_id;
  c->rec.job = task.job;
  c->rec.task = task.task_name;
  c->rec.image = task.image;
  c->rec.cgroups_path = "/" + config_.cgroup_parent + "/" + id;
  c->rec.kill_signal = task.kill_signal;
  c->rec.kill_timeout_ms = task.kill_timeout_ms;
  c->rec.created_at = now_rfc3339();
  c->st.status = kStatusCreating;
  c->create_reply = add_reply({cb, nullptr, nullptr, user});
  c->preparing = true;
  ContainerRecord rec = c->rec;
  ContainerPaths paths = c->paths;
  containers_[id] = std::move(c);

  // The bundle is made off the loop: image lookup, passwd, overlay mount;
  // the shim is started below, meanwhile.
  auto digest = std::make_shared<std::string>();
  auto log_run = std::make_shared<int64_t>(0);
  RuntimeConfig config = config_;
  std::shared_ptr<ImageStore> images = images_;
  queue(
      [=] {
        // The allocation's namespace is made on a thread of its own while
        // the bundle is prepared (a new namespace, its pin and `lo` up take
        // a few milliseconds); the work waits for it before it ends, also
        // when it fails (the future's destructor).
        std::future<bool> pinned;
        if (!shared_netns.empty())
          pinned =
              std::async(std::launch::async, [netns_dir = config.alloc_netns_dir, shared_netns] {
                std::lock_guard<std::mutex> g(alloc_netns_mutex());
                fs::create_directories(netns_dir);
                // A new namespace has its loopback down: up, so that the
                // allocation's tasks reach each other on 127.0.0.1 (runc only
                // configures namespaces it makes itself).
                return netlink::netns::create_pinned(shared_netns,
                                                     [] { netlink::Socket::open().set_up("lo"); });
              });
        std::vector<std::string> lowers = task.rootfs_lower_dirs;
        json image_config = task.rootfs_image_config;
        std::string image_name;
        if (lowers.empty()) {
          ResolvedImage r;
          try {
            r = images->acquire(task.image);
          } catch (const ImageError &e) {
            if (e.status() == FLOTILLA_E_NOT_FOUND)
              throw RuntimeFailure(FLOTILLA_E_NOT_FOUND, missing_image_message(task.image));
            throw;
          }
          *digest = r.record.digest;
          for (const auto &d : r.lower_dirs) lowers.push_back(d.string());
          image_config = r.config.to_json();
          image_name = r.record.name;
        }
        bool made_dir = false;
        try {
          if (::mkdir(paths.dir.c_str(), 0711) != 0) {
            const int err = errno;
            if (err != EEXIST)
              throw RuntimeFailure(FLOTILLA_E_IO,
                                   "mkdir " + paths.dir.string() + ": " + std::strerror(err));
            // A replaced container left its logs/ (and nothing else).
            std::error_code ec;
            if (!task.replace || fs::exists(paths.record, ec))
              throw RuntimeFailure(FLOTILLA_E_EXISTS, paths.dir.string() +
                                                          " exists already; remove the container "
                                                          "first");
          } else {
            made_dir = true;
          }
          for (const fs::path &d :
               {paths.bundle, paths.rootfs, paths.upper, paths.work, paths.logs})
            fs::create_directory(d);
          const unsigned keep_files = static_cast<unsigned>(
              task.log_max_files ? uint64_t(task.log_max_files) : config.log_max_files);
          const LogRun run = start_log_run(paths.logs, ended, keep_files, now_rfc3339());
          *log_run = run.run;
          BundleInputs in;
          // The network plugin's resolv.conf and hosts, mounted read-only.
          if (!task.resolv_conf.empty()) {
            write_file_atomic(paths.bundle / "resolv.conf", task.resolv_conf, false);
            in.resolv_conf_path = (paths.bundle / "resolv.conf").string();
          }
          if (!task.hosts.empty()) {
            write_file_atomic(paths.bundle / "hosts", task.hosts, false);
            in.hosts_path = (paths.bundle / "hosts").string();
          }
          in.container_id = rec.id;
          in.task = task;
          in.image_config = image_config.is_object() ? image_config : json::object();
          in.image_name = image_name.empty() ? task.image : image_name;
          in.cgroups_path = rec.cgroups_path;
          // /etc/passwd and /etc/group from the topmost layer that has them.
          for (const std::string &l : lowers) {
            if (in.passwd.empty()) in.passwd = read_file_in_root(l, "etc/passwd", 1 << 20);
            if (in.group.empty()) in.group = read_file_in_root(l, "etc/group", 1 << 20);
          }
          json spec;
          try {
            spec = make_oci_config(in, config);
          } catch (const TaskError &e) {
            throw RuntimeFailure(FLOTILLA_E_INVALID, e.what());
          }
          write_file_atomic(paths.config, spec.dump(2) + "\n", false);
          ContainerRecord r = rec;
          r.image_digest = *digest;
          // The record comes before the mount, so that remove() finds
          // whatever a crash of the daemon in between left behind. Not
          // fsynced: after a power loss nothing is mounted or running, and
          // start-up treats a container directory without a record as
          // unfinished (it is removed).
          write_file_atomic(paths.record, r.to_json().dump(2) + "\n", false);
          mount_overlay(lowers, paths.upper, paths.work, paths.rootfs);
          uint64_t max_files =
              task.log_max_files ? uint64_t(task.log_max_files) : config.log_max_files;
          uint64_t max_mib = task.log_max_file_size_mib ? uint64_t(task.log_max_file_size_mib)
                                                        : config.log_max_size_mb;
          json shim = {{"version", shim::kProtocolVersion},
                       {"id", rec.id},
                       {"binary", config.binary},
                       {"root", config.root},
                       {"bundle", paths.bundle.string()},
                       {"pid_file", paths.pid_file.string()},
                       {"runtime_log", paths.runtime_log.string()},
                       {"stdout_log", run.stdout_log.string()},
                       {"stderr_log", run.stderr_log.string()},
                       {"state_file", paths.shim_state.string()},
                       {"log_max_bytes", max_mib << 20},
                       {"log_max_files", max_files},
                       {"start", task.start}};
          write_file_atomic(paths.shim_config, shim.dump(2) + "\n", false);
          if (pinned.valid()) {
            try {
              pinned.get();
            } catch (const std::exception &e) {
              throw RuntimeFailure(FLOTILLA_E_IO, std::string("the allocation's network "
                                                              "namespace: ") +
                                                      e.what());
            }
          }
        } catch (...) {
          try {
            if (made_dir) {
              unmount_if_mounted(paths.rootfs);
              remove_tree(paths.dir);
            }
          } catch (const std::exception &) {
          }
          if (!digest->empty()) images->release(*digest);
          throw;
        }
      },
      [this, id, digest, log_run](flotilla_status st, const std::string &msg) {
        Container *c = find(id);
        if (!c) return;
        c->preparing = false;
        c->rec.image_digest = *digest;
        c->log_run = *log_run;
        if (st != FLOTILLA_OK) {
          // Nothing of the container is left on disk; closing the go pipe
          // (erase) ends the waiting shim before it touched anything.
          uint64_t rid = c->create_reply;
          const std::string alloc = c->rec.alloc_id;
          erase(id);
          release_alloc_netns(alloc);
          answer(rid, st, "cannot create container " + id + ": " + msg);
          return;
        }
        if (c->shim_lost) {
          uint64_t rid = c->create_reply;
          c->st.status = kStatusStopped;
          const std::string why =
              !c->shim_error.empty()
                  ? c->shim_error
                  : "its monitor (plugin.runtime-runc.shim) exited before the bundle was ready";
          remove_internal(id, [this, rid, id, why](flotilla_status, const std::string &) {
            answer(rid, FLOTILLA_E_INTERNAL, "cannot create container " + id + ": " + why);
          });
          return;
        }
        // Release the shim. Should it have died just now, its notify pipe
        // reports that (handle_notify) and the container is removed there.
        ssize_t ignored = ::send(c->go_fd.get(), "g", 1, MSG_NOSIGNAL);
        (void)ignored;
        c->go_fd.reset();
      });
  // The shim starts now, in parallel with the bundle (its process start-up
  // is off every container start), and waits until the bundle is ready
  // before it reads anything. Should it not start, the end of the
  // preparation takes back what was made.
  if (std::string error = start_shim(id); !error.empty()) {
    Container *c = find(id);
    c->shim_lost = true;
    c->shim_error = error;
  }
  return FLOTILLA_OK;
}

std::string RuncRuntime::start_shim(const std::string &id) {
  Container *c = find(id);
  int n[2], g[2];
  if (::pipe2(n, O_CLOEXEC) != 0) return std::string("pipe: ") + std::strerror(errno);
  UniqueFd notify_rd(n[0]), notify_wr(n[1]);
  // The release channel is a socket, not a pipe, so that writing to a shim
  // that died can use MSG_NOSIGNAL: a plugin must not raise SIGPIPE in a host
  // that may not ignore it (the test binaries do not).
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, g) != 0)
    return std::string("socketpair: ") + std::strerror(errno);
  UniqueFd go_rd(g[0]), go_wr(g[1]);
  ::fcntl(notify_rd.get(), F_SETFL, O_NONBLOCK);
  std::string config_path = c->paths.shim_config.string();
  const char *argv[] = {config_.shim.c_str(), "--wait-for-go", config_path.c_str(), nullptr};
  flotilla_process_spec spec{};
  spec.struct_size = sizeof spec;
  spec.file = config_.shim.c_str();
  spec.argv = argv;
  spec.stdin_fd = go_rd.get();
  spec.stdout_fd = notify_wr.get();
  spec.stderr_fd = -1;
  spec.detached = 1;
  // ABI 1.4: the shim forks the OCI runtime in the daemon's session (its
  // CPU autogroup) and only then takes a session of its own.
  spec.keep_session = 1;
  int64_t pid = 0;
  if (host_->process_spawn(host_->host_ctx, &spec, nullptr, nullptr, &pid) != FLOTILLA_OK)
    return "cannot start the monitor " + config_.shim + " (plugin.runtime-runc.shim)";
  c->go_fd = std::move(go_wr);
  c->shim_pid = static_cast<pid_t>(pid);
  // The shim's exit is watched through a pidfd, which also works for shims
  // a previous daemon started.
  watch_shim(c, UniqueFd(pidfd_open(c->shim_pid)));
  c->notify_fd = std::move(notify_rd);
  c->notify_watch = host_->fd_watch(host_->host_ctx, c->notify_fd.get(), FLOTILLA_FD_READABLE,
                                    &RuncRuntime::on_notify, c);
  host_->metric_counter_add(host_->host_ctx, "runtime_runc_shims_started_total", 1);
  return {};
}

void RuncRuntime::on_notify(void *user, int fd, uint32_t) {
  auto *c = static_cast<Container *>(user);
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      c->notify_buf.append(buf, static_cast<size_t>(n));
      if (c->notify_buf.find('\n') != std::string::npos) return c->rt->handle_notify(c, false);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    return c->rt->handle_notify(c, true);
  }
}

void RuncRuntime::handle_notify(Container *c, bool eof) {
  host_->fd_unwatch(host_->host_ctx, c->notify_watch);
  c->notify_watch = 0;
  c->notify_fd.reset();
  if (c->preparing) {  // it cannot report before it is released: it died
    c->shim_lost = true;
    return;
  }
  std::string id = c->rec.id;
  uint64_t rid = c->create_reply;
  c->create_reply = 0;
  json msg;
  try {
    msg = json::parse(c->notify_buf.substr(0, c->notify_buf.find('\n')));
  } catch (const std::exception &) {
    msg = json::object();
  }
  std::string status = msg.is_object() ? msg.value("status", "") : "";
  if (status == shim::kStatusCreated) {
    c->st.pid = msg.value("pid", 0);
    const bool started = msg.value("started", false);
    // The container may have been reaped already (shim_exited ran first).
    if (c->st.status == kStatusCreating) c->st.status = started ? kStatusRunning : kStatusCreated;
    host_->metric_counter_add(host_->host_ctx, "runtime_runc_containers_created_total", 1);
    if (!started) return answer(rid, FLOTILLA_OK, state_of(c).dump());
    // Created and started in one runtime call: answer now, record the start
    // after. A daemon that dies in between finds the shim's "started" mark.
    c->rec.started_at = now_rfc3339();
    answer(rid, FLOTILLA_OK, state_of(c).dump());
    persist_record(c, [] {});
    return;
  }
  std::string why = status == shim::kStatusCreateFailed
                        ? msg.value("error", std::string("unknown error"))
                        : std::string("the monitor exited before reporting") +
                              (eof ? "" : " properly") + "; see " + c->paths.shim_log.string();
  c->st.status = kStatusStopped;
  c->st.error = why;
  remove_internal(id, [this, rid, id, why](flotilla_status, const std::string &) {
    answer(rid, FLOTILLA_E_INVALID, "cannot create container " + id + ": " + why);
  });
}

void RuncRuntime::watch_shim(Container *c, UniqueFd pidfd) {
  std::string id = c->rec.id;
  if (!pidfd) {  // gone already
    defer([this, id] { shim_exited(id); });
    return;
  }
  c->shim_pidfd = std::move(pidfd);
  c->shim_watch = host_->fd_watch(host_->host_ctx, c->shim_pidfd.get(), FLOTILLA_FD_READABLE,
                                  &RuncRuntime::on_shim_exit, c);
}

void RuncRuntime::on_shim_exit(void *user, int, uint32_t) {
  auto *c = static_cast<Container *>(user);
  c->rt->host_->fd_unwatch(c->rt->host_->host_ctx, c->shim_watch);
  c->shim_watch = 0;
  c->shim_pidfd.reset();
  c->rt->shim_exited(c->rec.id);
}

void RuncRuntime::shim_exited(const std::string &id) {
  Container *c = find(id);
  if (!c) return;
  if (c->preparing) {  // the end of the bundle's preparation deals with it
    c->shim_lost = true;
    return;
  }
  auto state = std::make_shared<ShimState>();
  fs::path file = c->paths.shim_state;
  queue(
      [state, file] {
        json j = read_json_file(file);
        if (j.is_object()) *state = ShimState::from_json(j);
      },
      [this, id, state](flotilla_status, const std::string &) {
        if (Container *c = find(id)) apply_exit(c, *state);
      });
}

void RuncRuntime::apply_exit(Container *c, const ShimState &s) {
  bool was_live = c->st.status == kStatusCreated || c->st.status == kStatusRunning ||
                  (c->st.status == kStatusCreating && s.status == shim::kStatusStopped);
  if (c->st.status != kStatusStopped) {
    c->st.status = kStatusStopped;
    if (s.status == shim::kStatusStopped) {
      c->st.exit_code = s.exit_code;
      c->st.signal = s.signal;
      c->st.finished_at = s.finished_at;
    } else if (s.status == shim::kStatusCreateFailed) {
      c->st.error = s.error;
    } else {
      c->st.exit_code = -1;
      c->st.finished_at = now_rfc3339();
      c->st.error = "the monitor (flotilla-runc-shim, pid " + std::to_string(c->shim_pid) +
                    ") exited without recording the container's exit; see " +
                    c->paths.shim_log.string();
    }
  }
  cancel_deferred(c->kill_timer);
  c->kill_timer = 0;
  if (was_live) publish_exit(c);
  auto waiters = std::move(c->on_exit);
  c->on_exit.clear();
  for (auto &w : waiters) w();  // may erase c
}

void RuncRuntime::publish_exit(Container *c) {
  if (c->exit_reported) return;
  c->exit_reported = true;
  json ev = {{"id", c->rec.id},
             {"exit_code", c->st.exit_code},
             {"signal", c->st.signal},
             {"finished_at", c->st.finished_at},
             {"alloc_id", c->rec.alloc_id},
             {"job", c->rec.job},
             {"task", c->rec.task}};
  if (!c->st.error.empty()) ev["error"] = c->st.error;
  host_->event_publish(host_->host_ctx, "runtime.exit", ev.dump().c_str());
  host_->metric_counter_add(host_->host_ctx, "runtime_runc_container_exits_total", 1);
  fs::path marker = c->paths.exit_reported, logs = c->paths.logs;
  json state = state_of(c);
  int64_t run = c->log_run;
  queue(
      [marker, logs, state, run] {
        write_file_atomic(marker, "1\n", false);
        record_run_end(logs, run, state);  // where `alloc logs --runs` shows it
      },
      [](flotilla_status, const std::string &) {});
}

void RuncRuntime::persist_record(Container *c, std::function<void()> then) {
  fs::path file = c->paths.record;
  std::string text = c->rec.to_json().dump(2) + "\n";
  std::string id = c->rec.id;
  // Not fsynced (see create_now): a record that lost started_at to a power
  // loss describes a container that is not running any more anyway, and
  // adoption asks the runtime when started_at is missing.
  queue([file, text] { write_file_atomic(file, text, false); },
        [this, id, then = std::move(then)](flotilla_status st, const std::string &msg) {
          if (st != FLOTILLA_OK)
            host_->log(host_->host_ctx, FLOTILLA_LOG_WARN,
                       ("cannot update the record of container " + id + ": " + msg).c_str());
          then();
        });
}

flotilla_status RuncRuntime::start(const char *id, flotilla_runtime_state_cb cb, void *user) {
  if (!id || !cb) return refuse(FLOTILLA_E_INVALID, "start: container_id and cb are required");
  std::string sid = id;
  return gate(
      [=, this] {
        Container *c;
        if (flotilla_status st = lookup(sid.c_str(), c); st != FLOTILLA_OK) return st;
        if (c->st.status != kStatusCreated)
          return refuse(FLOTILLA_E_CONFLICT, "container " + sid + " is " + c->st.status +
                                                 "; only a created container can start");
        uint64_t rid = add_reply({cb, nullptr, nullptr, user});
        run_runtime({"start", sid}, [this, sid, rid](int64_t status, const std::string &out) {
          Container *c = find(sid);
          if (!c) return answer(rid, FLOTILLA_E_NOT_FOUND, "container " + sid + " was removed");
          if (status != 0)
            return answer(rid, FLOTILLA_E_IO,
                          "cannot start container " + sid + ": " + config_.binary +
                              " start: " + runtime_message(out));
          c->rec.started_at = now_rfc3339();
          if (c->st.status == kStatusCreated) c->st.status = kStatusRunning;
          persist_record(c, [this, sid, rid] {
            Container *c = find(sid);
            if (!c) return answer(rid, FLOTILLA_E_NOT_FOUND, "container " + sid + " was removed");
            answer(rid, FLOTILLA_OK, state_of(c).dump());
          });
        });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st, "null"); });
}

flotilla_status RuncRuntime::state(const char *id, flotilla_runtime_state_cb cb, void *user) {
  if (!id || !cb) return refuse(FLOTILLA_E_INVALID, "state: container_id and cb are required");
  std::string sid = id;
  return gate(
      [=, this] {
        Container *c;
        if (flotilla_status st = lookup(sid.c_str(), c, true); st != FLOTILLA_OK) return st;
        uint64_t rid = add_reply({cb, nullptr, nullptr, user});
        std::string text = state_of(c).dump();
        defer([this, rid, text] { answer(rid, FLOTILLA_OK, text); });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st, "null"); });
}

flotilla_status RuncRuntime::exec(const char *id, const flotilla_exec_spec *spec,
                                  flotilla_runtime_exec_cb cb, void *user, uint64_t *exec_out) {
  if (!id || !spec || !cb || spec->struct_size < sizeof(uint32_t) ||
      !FLOTILLA_HAS_FIELD(spec, flotilla_exec_spec, output_limit) || !spec->argv ||
      !spec->argv[0] || !*spec->argv[0])
    return refuse(FLOTILLA_E_INVALID,
                  "exec: container_id, a spec with a non-empty argv, and cb are required");
  if (!ready_)
    return refuse(FLOTILLA_E_UNAVAILABLE,
                  "exec in " + std::string(id) +
                      ": runtime-runc is still recovering its containers; try again");
  if (!startup_error_.empty()) return refuse(FLOTILLA_E_UNAVAILABLE, startup_error_);
  Container *c;
  if (flotilla_status st = lookup(id, c); st != FLOTILLA_OK) return st;
  if (c->st.status != kStatusRunning)
    return refuse(FLOTILLA_E_CONFLICT, "exec in " + c->rec.id + ": the container is " +
                                           c->st.status + ", not running");
  std::vector<std::string> argv;
  for (const char *const *a = spec->argv; *a; ++a) argv.emplace_back(*a);
  const std::string pid_file =
      (c->paths.dir / ("exec-" + std::to_string(next_key_++) + ".pid")).string();
  uint64_t xid =
      execs_->start(c->rec.id, std::move(argv), spec->timeout_ms, spec->output_limit, pid_file,
                    cb, user);
  if (!xid) return FLOTILLA_E_IO;  // the message is set
  if (exec_out) *exec_out = xid;
  return FLOTILLA_OK;
}

void RuncRuntime::exec_cancel(uint64_t exec_id) {
  execs_->cancel(exec_id);
}

flotilla_status RuncRuntime::signal(const char *id, int signo, flotilla_done_cb cb, void *user) {
  if (!id || !cb) return refuse(FLOTILLA_E_INVALID, "signal: container_id and cb are required");
  if (signo < 1 || signo > 64)
    return refuse(FLOTILLA_E_INVALID, "signal: " + std::to_string(signo) + " is not a signal");
  std::string sid = id;
  return gate(
      [=, this] {
        Container *c;
        if (flotilla_status st = lookup(sid.c_str(), c); st != FLOTILLA_OK) return st;
        if (c->st.status == kStatusStopped)
          return refuse(FLOTILLA_E_CONFLICT, "container " + sid + " has stopped");
        uint64_t rid = add_reply({nullptr, nullptr, cb, user});
        run_runtime({"kill", sid, std::to_string(signo)},
                    [this, sid, rid](int64_t status, const std::string &out) {
                      if (status == 0) return answer(rid, FLOTILLA_OK, "");
                      answer(rid, FLOTILLA_E_IO,
                             "cannot signal container " + sid + ": " + config_.binary +
                                 " kill: " + runtime_message(out));
                    });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st); });
}

flotilla_status RuncRuntime::stop(const char *id, uint64_t timeout_ms, flotilla_runtime_state_cb cb,
                                  void *user) {
  if (!id || !cb) return refuse(FLOTILLA_E_INVALID, "stop: container_id and cb are required");
  std::string sid = id;
  return gate(
      [=, this] {
        Container *c;
        if (flotilla_status st = lookup(sid.c_str(), c); st != FLOTILLA_OK) return st;
        uint64_t rid = add_reply({cb, nullptr, nullptr, user});
        if (c->st.status == kStatusStopped) {
          std::string text = state_of(c).dump();
          defer([this, rid, text] { answer(rid, FLOTILLA_OK, text); });
          return FLOTILLA_OK;
        }
        c->on_exit.push_back([this, sid, rid] {
          Container *c = find(sid);
          if (!c) return answer(rid, FLOTILLA_E_NOT_FOUND, "container " + sid + " was removed");
          answer(rid, FLOTILLA_OK, state_of(c).dump());
        });
        if (c->stopping) return FLOTILLA_OK;  // the first stop's timer escalates
        c->stopping = true;
        // A created container has never run its program: nothing to be
        // graceful about.
        int first = c->st.status == kStatusCreated ? SIGKILL : signal_number(c->rec.kill_signal);
        if (first == 0) first = SIGTERM;
        uint64_t timeout = timeout_ms ? timeout_ms : uint64_t(c->rec.kill_timeout_ms);
        auto kill = [this, sid](int signo) {
          run_runtime({"kill", sid, std::to_string(signo)},
                      [this, sid, signo](int64_t status, const std::string &out) {
                        // "not running" just means the exit is on its way.
                        if (status != 0)
                          host_->log(host_->host_ctx, FLOTILLA_LOG_DEBUG,
                                     ("kill " + std::to_string(signo) + " " + sid + ": " +
                                      runtime_message(out))
                                         .c_str());
                      });
        };
        kill(first);
        if (first != SIGKILL) {
          c->kill_timer = defer(
              [this, sid, kill] {
                Container *c = find(sid);
                if (!c) return;
                c->kill_timer = 0;
                if (c->st.status == kStatusStopped) return;
                host_->log(host_->host_ctx, FLOTILLA_LOG_INFO,
                           ("container " + sid + " did not stop in time; sending SIGKILL").c_str());
                kill(SIGKILL);
              },
              timeout);
        }
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st, "null"); });
}

flotilla_status RuncRuntime::remove(const char *id, flotilla_done_cb cb, void *user) {
  if (!id || !cb) return refuse(FLOTILLA_E_INVALID, "remove: container_id and cb are required");
  std::string sid = id;
  return gate(
      [=, this] {
        Container *c;
        if (flotilla_status st = lookup(sid.c_str(), c); st != FLOTILLA_OK) return st;
        uint64_t rid = add_reply({nullptr, nullptr, cb, user});
        remove_internal(
            sid, [this, rid](flotilla_status st, const std::string &msg) { answer(rid, st, msg); });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st); });
}

void RuncRuntime::remove_internal(const std::string &id, Done done, bool keep_logs) {
  Container *c = find(id);
  c->removing = true;
  cancel_deferred(c->kill_timer);
  c->kill_timer = 0;
  // delete --force kills the container if it still runs and drops the OCI
  // runtime's state; then the shim records the exit and leaves, and only
  // then are its files and mounts taken away.
  run_runtime({"delete", "--force", id}, [this, id, done, keep_logs](int64_t status,
                                                                     const std::string &out) {
    Container *c = find(id);
    if (!c) return;
    if (status != 0)
      host_->log(host_->host_ctx, FLOTILLA_LOG_DEBUG,
                 ("delete " + id + ": " + runtime_message(out)).c_str());
    if (!c->shim_watch) return cleanup_files(id, done, keep_logs);
    uint64_t guard = defer(
        [this, id] {
          Container *c = find(id);
          if (!c || !c->shim_watch) return;
          host_->log(host_->host_ctx, FLOTILLA_LOG_WARN,
                     ("the monitor of container " + id + " did not exit; killing it").c_str());
          ::syscall(SYS_pidfd_send_signal, c->shim_pidfd.get(), SIGKILL, nullptr, 0);
        },
        kShimGraceMs);
    c->on_exit.push_back([this, id, done, guard, keep_logs] {
      cancel_deferred(guard);
      cleanup_files(id, done, keep_logs);
    });
  });
}

void RuncRuntime::cleanup_files(const std::string &id, Done done, bool keep_logs) {
  Container *c = find(id);
  if (!c) return;
  ContainerPaths paths = c->paths;
  std::string cgroups_path = c->rec.cgroups_path;
  std::string digest = c->rec.image_digest;
  fs::path state_dir = fs::path(config_.root) / id;
  std::shared_ptr<ImageStore> images = images_;
  queue(
      [=] {
        unmount_if_mounted(paths.rootfs);
        remove_cgroup(cgroups_path);
        std::error_code ec;
        if (fs::exists(state_dir, ec)) remove_tree(state_dir);
        if (keep_logs) {
          // The record first: a directory without one is unfinished.
          fs::remove(paths.record, ec);
          std::vector<fs::path> gone;
          for (const auto &e : fs::directory_iterator(paths.dir))
            if (e.path().filename() != "logs") gone.push_back(e.path());
          for (const auto &g : gone) remove_tree(g);
        } else {
          remove_tree(paths.dir);
        }
        if (!digest.empty() && images) images->release(digest);
      },
      [this, id, done, keep_logs](flotilla_status st, const std::string &msg) {
        Container *c = find(id);
        if (st != FLOTILLA_OK) {
          if (c) c->removing = false;  // a retry picks up where this stopped
          return done(st, "cannot remove container " + id + ": " + msg);
        }
        const std::string alloc = c ? c->rec.alloc_id : "";
        erase(id);
        if (!keep_logs) release_alloc_netns(alloc);
        host_->metric_counter_add(host_->host_ctx, "runtime_runc_containers_removed_total", 1);
        done(FLOTILLA_OK, "");
      });
}

// The namespace this runtime pinned for alloc goes with the allocation's
// last container (a restart removes and re-creates a task: its siblings
// keep the namespace; a lone task gets a fresh one).
void RuncRuntime::release_alloc_netns(const std::string &alloc) {
  if (alloc.empty() || !is_valid_container_id(alloc)) return;
  for (const auto &[id, c] : containers_)
    if (c->rec.alloc_id == alloc) return;
  const std::string path = config_.alloc_netns_dir + "/" + alloc;
  queue(
      [path] {
        std::lock_guard<std::mutex> g(alloc_netns_mutex());
        std::error_code ec;
        if (fs::exists(path, ec)) netlink::netns::remove_pinned(path);
      },
      [this, path](flotilla_status st, const std::string &msg) {
        if (st != FLOTILLA_OK)
          host_->log(host_->host_ctx, FLOTILLA_LOG_WARN,
                     ("cannot remove network namespace " + path + ": " + msg).c_str());
      });
}

void RuncRuntime::erase(const std::string &id) {
  auto it = containers_.find(id);
  if (it == containers_.end()) return;
  Container *c = it->second.get();
  if (c->shim_watch) host_->fd_unwatch(host_->host_ctx, c->shim_watch);
  if (c->notify_watch) host_->fd_unwatch(host_->host_ctx, c->notify_watch);
  cancel_deferred(c->kill_timer);
  containers_.erase(it);
}

flotilla_status RuncRuntime::list(flotilla_runtime_list_cb cb, void *user) {
  if (!cb) return refuse(FLOTILLA_E_INVALID, "list: cb is required");
  return gate(
      [=, this] {
        json arr = json::array();
        for (const auto &[id, c] : containers_)
          if (c->st.status != kStatusCreating) arr.push_back(state_of(c.get()));
        uint64_t rid = add_reply({nullptr, cb, nullptr, user});
        std::string text = arr.dump();
        defer([this, rid, text] { answer(rid, FLOTILLA_OK, text); });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st, "[]"); });
}

flotilla_status RuncRuntime::log_path(const char *id, const char *stream, char *buf,
                                      size_t buf_len) {
  if (!id || !stream || !buf || buf_len == 0)
    return refuse(FLOTILLA_E_INVALID, "log_path: container_id, stream and buf are required");
  std::string s = stream;
  if (log_stream_path("logs", s).empty())
    return refuse(FLOTILLA_E_INVALID,
                  "log_path: stream must be \"stdout\", \"stderr\", "
                  "\"stdout@N\", \"stderr@N\" (run N) or \"runs\", got \"" +
                      s + "\"");
  // Before recovery finished the path is still known: it only depends on the id.
  if (ready_ && !find(id))
    return refuse(FLOTILLA_E_NOT_FOUND, std::string("no container \"") + id + "\" in runtime-runc");
  if (!is_valid_container_id(id))
    return refuse(FLOTILLA_E_INVALID, std::string("container id \"") + id + "\" is not valid");
  ContainerPaths paths(fs::path(config_.containers_dir) / id);
  std::string p = log_stream_path(paths.logs, s);
  if (p.size() + 1 > buf_len)
    return refuse(FLOTILLA_E_INVALID, "log_path: buffer of " + std::to_string(buf_len) +
                                          " bytes is too small for " + p);
  std::memcpy(buf, p.c_str(), p.size() + 1);
  return FLOTILLA_OK;
}

// ---- images ---------------------------------------------------------------

flotilla_status RuncRuntime::image_import(const char *path, const char *tag,
                                          flotilla_runtime_state_cb cb, void *user) {
  if (!path || !cb) return refuse(FLOTILLA_E_INVALID, "image_import: path and cb are required");
  std::string p = path, t = tag ? tag : "";
  return gate(
      [=, this] {
        uint64_t rid = add_reply({cb, nullptr, nullptr, user});
        auto out = std::make_shared<std::string>();
        std::shared_ptr<ImageStore> images = images_;
        queue([images, p, t, out] { *out = images->import_image(p, t).to_json().dump(); },
              [this, rid, out](flotilla_status st, const std::string &msg) {
                answer(rid, st, st == FLOTILLA_OK ? *out : msg);
              });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st, "null"); });
}

flotilla_status RuncRuntime::image_list(flotilla_runtime_list_cb cb, void *user) {
  if (!cb) return refuse(FLOTILLA_E_INVALID, "image_list: cb is required");
  return gate(
      [=, this] {
        uint64_t rid = add_reply({nullptr, cb, nullptr, user});
        auto out = std::make_shared<std::string>();
        std::shared_ptr<ImageStore> images = images_;
        queue(
            [images, out] {
              json arr = json::array();
              for (const ImageRecord &r : images->list()) {
                json j = r.to_json();
                j["in_use"] = images->use_count(r.digest);
                arr.push_back(std::move(j));
              }
              *out = arr.dump();
            },
            [this, rid, out](flotilla_status st, const std::string &msg) {
              answer(rid, st, st == FLOTILLA_OK ? *out : msg);
            });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st, "[]"); });
}

flotilla_status RuncRuntime::image_remove(const char *ref, flotilla_done_cb cb, void *user) {
  if (!ref || !cb) return refuse(FLOTILLA_E_INVALID, "image_remove: ref and cb are required");
  std::string r = ref;
  return gate(
      [=, this] {
        uint64_t rid = add_reply({nullptr, nullptr, cb, user});
        std::shared_ptr<ImageStore> images = images_;
        queue([images, r] { images->remove(r); },
              [this, rid](flotilla_status st, const std::string &msg) { answer(rid, st, msg); });
        return FLOTILLA_OK;
      },
      [cb, user](flotilla_status st) { cb(user, st); });
}

flotilla_status RuncRuntime::image_pull(const char *ref, const char *options_json,
                                        flotilla_runtime_progress_cb progress,
                                        flotilla_runtime_state_cb cb, void *user) {
  if (!ref || !cb) return refuse(FLOTILLA_E_INVALID, "image_pull: ref and cb are required");
  std::string r = ref, o = options_json ? options_json : "";
  return gate([=, this] { return pulls_->pull(r.c_str(), o.c_str(), progress, cb, user); },
              [cb, user](flotilla_status st) { cb(user, st, "null"); });
}

void RuncRuntime::start_image_gc() {
  // Often enough that an image goes soon after it expired, rarely enough
  // to cost nothing: a quarter of the limit, from 1 s to 10 min.
  uint64_t every_ms = std::clamp<uint64_t>(config_.image_unused_after_s * 250, 1000, 600000);
  image_gc_timer_ =
      host_->timer_start(host_->host_ctx, every_ms, every_ms, &RuncRuntime::on_image_gc, this);
}

void RuncRuntime::on_image_gc(void *user) {
  auto *rt = static_cast<RuncRuntime *>(user);
  if (!rt->images_) return;
  if (rt->image_gc_running_) {  // asked again meanwhile (a pull): once more after this one
    rt->image_gc_again_ = true;
    return;
  }
  rt->image_gc_running_ = true;
  rt->image_gc_again_ = false;
  std::shared_ptr<ImageStore> images = rt->images_;
  auto out = std::make_shared<ImageGcResult>();
  auto after = std::chrono::seconds(rt->config_.image_unused_after_s);
  uint64_t max_bytes = rt->config_.image_max_size_mb << 20;
  rt->queue([images, out, after, max_bytes] { *out = images->collect_unused(after, max_bytes); },
            [rt, out](flotilla_status st, const std::string &msg) {
              rt->image_gc_running_ = false;
              if (st != FLOTILLA_OK) {
                rt->host_->log(rt->host_->host_ctx, FLOTILLA_LOG_WARN,
                               ("image garbage collection failed: " + msg).c_str());
              } else {
                for (const auto &name : out->removed)
                  rt->host_->log(rt->host_->host_ctx, FLOTILLA_LOG_INFO,
                                 ("image garbage collection removed " + name).c_str());
              }
              if (rt->image_gc_again_) on_image_gc(rt);
            });
}

// ---- start-up: find the containers a previous daemon left running ----------

void RuncRuntime::recover() {
  struct Out {
    std::shared_ptr<ImageStore> images;
    std::vector<Found> found;
  };
  auto out = std::make_shared<Out>();
  RuntimeConfig config = config_;
  queue(
      [out, config] {
        fs::create_directories(config.root);
        fs::create_directories(config.containers_dir);
        ImageStoreOptions options;
        options.limits.device_nodes =
            config.device_nodes == "refuse" ? DeviceNodes::refuse : DeviceNodes::skip;
        out->images = std::make_shared<ImageStore>(config.image_dir, options);
        // What pulls of an earlier run left half done; not what a live
        // daemon sharing this image directory is pulling.
        remove_abandoned_pulls(fs::path(config.image_dir) / "pulls");
        for (const auto &entry : fs::directory_iterator(config.containers_dir)) {
          if (!entry.is_directory()) continue;
          Found f;
          f.id = entry.path().filename().string();
          ContainerPaths paths(entry.path());
          json rec = read_json_file(paths.record);
          f.has_record = rec.is_object();
          f.rec = f.has_record ? ContainerRecord::from_json(rec) : ContainerRecord{};
          f.rec.id = f.id;
          json shim_state = read_json_file(paths.shim_state);
          if (shim_state.is_object()) f.shim = ShimState::from_json(shim_state);
          std::error_code ec;
          f.exit_reported = fs::exists(paths.exit_reported, ec);
          if (f.shim.shim_pid > 0 && f.shim.status != shim::kStatusStopped) {
            // Open the pidfd first, then check that it is our shim and not
            // a process that reuses its pid.
            UniqueFd pidfd(pidfd_open(f.shim.shim_pid));
            if (pidfd && f.shim.shim_start_ticks != 0 &&
                proc_start_ticks(f.shim.shim_pid) == f.shim.shim_start_ticks)
              f.shim_pidfd = std::move(pidfd);
          }
          if (!f.rec.image_digest.empty()) {
            try {
              out->images->acquire(f.rec.image_digest);
            } catch (const std::exception &e) {
              f.warning = std::string("its image is gone from the store: ") + e.what();
            }
          }
          out->found.push_back(std::move(f));
        }
      },
      [this, out](flotilla_status st, const std::string &msg) {
        if (st == FLOTILLA_OK) {
          images_ = out->images;
          pulls_->set_store(images_);
          // A pull grows the store: past image_max_size_mb, collect now.
          pulls_->set_on_pulled([this] {
            if (config_.image_max_size_mb > 0) on_image_gc(this);
          });
          start_image_gc();
          for (Found &f : out->found) adopt(f);
          // Namespaces pinned for allocations none of whose containers is
          // left (a crash between the last remove and its clean-up).
          std::error_code ec;
          for (const auto &e : fs::directory_iterator(config_.alloc_netns_dir, ec))
            release_alloc_netns(e.path().filename().string());
        }
        became_ready(st, msg);
      });
}

void RuncRuntime::adopt(Found &f) {
  auto c = std::make_unique<Container>(fs::path(config_.containers_dir) / f.id);
  c->rt = this;
  c->rec = f.rec;
  c->exit_reported = f.exit_reported;
  c->shim_pid = f.shim.shim_pid;
  c->st.pid = f.shim.pid;
  Container *raw = c.get();
  containers_[f.id] = std::move(c);
  if (!f.warning.empty())
    host_->log(host_->host_ctx, FLOTILLA_LOG_WARN,
               ("container " + f.id + ": " + f.warning).c_str());

  if (!f.has_record) {
    raw->st.status = kStatusStopped;
    raw->st.error = "its creation did not finish before the daemon stopped; remove it";
    return;
  }
  if (f.shim_pidfd && f.shim.status == shim::kStatusCreated) {
    raw->st.status = f.rec.started_at.empty() ? kStatusCreated : kStatusRunning;
    watch_shim(raw, std::move(f.shim_pidfd));
    if (raw->st.status == kStatusCreated) {
      // The daemon may have died between `start` and recording it.
      std::string id = f.id;
      run_runtime({"state", id}, [this, id](int64_t status, const std::string &out) {
        Container *c = find(id);
        if (!c || status != 0 || c->st.status != kStatusCreated) return;
        size_t a = out.find('{'), b = out.rfind('}');
        if (a == std::string::npos || b == std::string::npos || b < a) return;
        try {
          if (json::parse(out.substr(a, b - a + 1)).value("status", "") == "running")
            c->st.status = kStatusRunning;
        } catch (const std::exception &) {
        }
      });
    }
    return;
  }
  if (f.shim_pidfd) {
    // Still inside `create` when the daemon died: nobody waits for it.
    raw->st.status = kStatusStopped;
    raw->st.error = "the daemon stopped while the container was being created; remove it";
    watch_shim(raw, std::move(f.shim_pidfd));
    return;
  }
  raw->st.status = kStatusCreated;  // so that apply_exit reports the exit once
  if (f.shim.status == shim::kStatusCreateFailed || f.shim.status.empty()) {
    raw->st.status = kStatusStopped;
    raw->st.error = f.shim.status.empty() ? "the monitor never started; remove it" : f.shim.error;
    return;
  }
  apply_exit(raw, f.shim);  // exited while the daemon was down (or the shim died)
}

void RuncRuntime::became_ready(flotilla_status status, const std::string &message) {
  ready_ = true;
  if (status != FLOTILLA_OK) {
    startup_error_ = "runtime-runc could not start: " + message;
    host_->log(host_->host_ctx, FLOTILLA_LOG_ERROR, startup_error_.c_str());
  } else {
    host_->log(host_->host_ctx, FLOTILLA_LOG_INFO,
               ("runtime-runc ready: " + std::to_string(containers_.size()) +
                " container(s) found, runtime " + config_.binary + ", root " + config_.root)
                   .c_str());
  }
  auto queued = std::move(until_ready_);
  until_ready_.clear();
  for (auto &[op, fail] : queued) {
    flotilla_status st =
        startup_error_.empty() ? op() : refuse(FLOTILLA_E_UNAVAILABLE, startup_error_);
    if (st != FLOTILLA_OK) fail(st);
  }
}

// ---- init -----------------------------------------------------------------

bool RuncRuntime::read_config(const flotilla_host *host, RuntimeConfig &config) {
  json table;
  try {
    table = json::parse(host->config_json(host->host_ctx));
  } catch (const std::exception &e) {
    host->set_error(host->host_ctx,
                    (std::string("runtime-runc: config is not JSON: ") + e.what()).c_str());
    return false;
  }
  std::vector<ConfigProblem> problems;
  config = parse_runtime_config(table, host->data_dir, problems);
  // Without CAP_SYS_RESOURCE a container cannot get more open files than
  // the daemon may have; the default stays within that.
  if (!table.contains("rlimit_nofile")) {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY &&
        rl.rlim_max < config.rlimit_nofile)
      config.rlimit_nofile = rl.rlim_max;
  }
  // Looked up once at start-up (a few stat calls) so that a typo is
  // reported against the config line rather than at the first container,
  // and so that every container runs the same program: the shim execs the
  // absolute path instead of searching PATH again at each start.
  if (std::string found = find_program(config.binary); !found.empty())
    config.binary = found;
  else
    problems.emplace_back(
        "binary", "\"" + config.binary + "\" is not " +
                      (config.binary.front() == '/' ? std::string("an executable file")
                                                    : std::string("an executable in PATH")) +
                      "; install runc or crun, or give the absolute path of an OCI runtime");
  if (!config.shim.empty()) {
    if (::access(config.shim.c_str(), X_OK) != 0)
      problems.emplace_back("shim", "\"" + config.shim +
                                        "\" is not an executable file; give the path of "
                                        "flotilla-runc-shim");
  } else if (!table.contains("shim")) {
    config.shim = find_shim();
    if (config.shim.empty())
      problems.emplace_back("shim",
                            "not set, and flotilla-runc-shim is neither next to the "
                            "plugin nor at " +
                                std::string(FLOTILLA_RUNC_SHIM_DEFAULT) +
                                "; set it to the shim's path");
  }
  for (const auto &p : problems) host->config_error(host->host_ctx, p.key.c_str(), p.what());
  return problems.empty();
}

flotilla_status RuncRuntime::open(const flotilla_host *host, std::unique_ptr<RuncRuntime> &out) {
  RuntimeConfig config;
  if (!read_config(host, config)) return FLOTILLA_E_INVALID;
  fs::path pulls_dir = fs::path(config.image_dir) / "pulls";
  RegistryConfig registry = config.registry;
  out.reset(new RuncRuntime(host, std::move(config)));
  RuncRuntime *rt = out.get();
  out->pulls_ = std::make_unique<ImagePulls>(host, std::move(registry), pulls_dir,
                                             [rt](std::function<void()> work, Done after) {
                                               rt->queue(std::move(work), std::move(after));
                                             });
  out->recover();
  return FLOTILLA_OK;
}

}  // namespace flotilla::runc
