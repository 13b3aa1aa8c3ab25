// /v1/allocs: allocations and their tasks' logs.
#include <fcntl.h>
#include <flotilla/runtime.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <optional>
#include <string>

#include "api/endpoint.h"
#include "node/reconciler.h"

namespace flotilla::api {
namespace {

constexpr size_t kLogChunk = 64 * 1024;
constexpr uint64_t kLogPollMs = 250;
constexpr int kLogStatusEveryTicks = 4;  // check the allocation's status once a second

void list_allocs(const StatePtr &s, Request &req, const Params &, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string job;
  if (auto it = req.query.find("job"); it != req.query.end()) job = it->second;
  read_snapshot(
      s, {{kAllocs}, {kAllocStatus}},
      [r, job](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading allocations"));
          auto statuses = statuses_by_id(kvs[1]);
          json allocs = json::array();
          for (const auto &kv : kvs[0]) {
            json a = alloc_view(kv, statuses);
            if (job.empty() || string_field(a, "job") == job) allocs.push_back(std::move(a));
          }
          r.send(Response::json(200, {{"allocs", allocs}, {"revision", rev}}));
        });
      },
      r);
}

void get_alloc(const StatePtr &s, Request &, const Params &p, Responder &r) {
  if (!s->store()) return r.send(no_store());
  std::string id = p[0];
  read_snapshot(
      s, {{kAllocs + id, true}, {kAllocStatus + id, true}},
      [r, id](StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t rev) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading allocation " + id));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "allocation \"" + id + "\" not found"));
          json a = alloc_view(kvs[0][0], statuses_by_id(kvs[1]), true);
          a["revision"] = rev;
          r.send(Response::json(200, a));
        });
      },
      r);
}

// Streams one log file to the client, from an offset, optionally following
// it until the allocation ends or the client leaves. File access goes
// through libuv's thread pool so the loop never waits on the disk.
class LogStream : public std::enable_shared_from_this<LogStream> {
 public:
  LogStream(StatePtr s, Responder r, std::string alloc_id, std::string path, int64_t offset,
            bool follow)
      : s_(std::move(s)),
        r_(std::move(r)),
        alloc_id_(std::move(alloc_id)),
        path_(std::move(path)),
        pos_(offset),
        follow_(follow),
        buf_(kLogChunk) {}

  void start() {
    std::weak_ptr<LogStream> weak = weak_from_this();
    r_.on_cancel([weak] {
      if (auto self = weak.lock()) self->cancel();
    });
    if (cancelled_) return;
    fs(&LogStream::on_open, [&](uv_fs_t *req, uv_fs_cb cb) {
      return uv_fs_open(s_->ctx.loop, req, path_.c_str(), O_RDONLY | O_CLOEXEC, 0, cb);
    });
  }

 private:
  struct FsOp {
    uv_fs_t req{};
    std::shared_ptr<LogStream> owner;
    void (LogStream::*then)(ssize_t result, int64_t size) = nullptr;
  };

  // Issue one uv_fs request; `then` runs on the loop with its result.
  template <class Issue>
  void fs(void (LogStream::*then)(ssize_t, int64_t), Issue &&issue) {
    auto op = std::make_unique<FsOp>();
    op->owner = shared_from_this();
    op->then = then;
    op->req.data = op.get();
    int r = issue(&op->req, [](uv_fs_t *req) {
      std::unique_ptr<FsOp> op(static_cast<FsOp *>(req->data));
      ssize_t result = req->result;
      int64_t size = req->fs_type == UV_FS_FSTAT ? static_cast<int64_t>(req->statbuf.st_size) : 0;
      uv_fs_req_cleanup(req);
      auto owner = std::move(op->owner);
      ((*owner).*(op->then))(result, size);
    });
    if (r < 0) {
      op.reset();
      (this->*then)(r, 0);
      return;
    }
    busy_ = true;
    op.release();  // owned by the request until its callback
  }

  void on_open(ssize_t result, int64_t) {
    busy_ = false;
    if (result < 0) {
      if (!cancelled_) {
        int status = result == UV_ENOENT ? 404 : 500;
        r_.send(error_json(status, status == 404 ? "not_found" : "io",
                           "log file " + path_ + " of allocation " + alloc_id_ + ": " +
                               uv_strerror(static_cast<int>(result))));
      }
      return;
    }
    fd_ = static_cast<uv_file>(result);
    if (cancelled_) return close_file();
    r_.begin_stream(200, {{"Content-Type", "text/plain; charset=utf-8"},
                          {"Cache-Control", "no-store"},
                          {"X-Flotilla-Log-Offset", std::to_string(pos_)}});
    read_more();
  }

  void read_more() {
    if (cancelled_ || !r_.open()) return finish();
    fs(&LogStream::on_read, [&](uv_fs_t *req, uv_fs_cb cb) {
      uv_buf_t b = uv_buf_init(buf_.data(), static_cast<unsigned>(buf_.size()));
      return uv_fs_read(s_->ctx.loop, req, fd_, &b, 1, pos_, cb);
    });
  }

  void on_read(ssize_t n, int64_t) {
    busy_ = false;
    if (cancelled_ || !r_.open()) return finish();
    if (n < 0) {
      log::warn(kLog, "reading a log file failed: " + std::string(uv_strerror(static_cast<int>(n))),
                {{"path", path_}});
      return finish();
    }
    if (n > 0) {
      pos_ += n;
      busy_ = true;
      r_.write(std::string(buf_.data(), static_cast<size_t>(n)),
               [self = shared_from_this()](bool ok) {
                 self->busy_ = false;
                 if (ok) {
                   self->read_more();
                 } else {
                   self->finish();
                 }
               });
      return;
    }
    // At the end of the file for now.
    if (!follow_ || terminal_) return finish();
    fs(&LogStream::on_stat,
       [&](uv_fs_t *req, uv_fs_cb cb) { return uv_fs_fstat(s_->ctx.loop, req, fd_, cb); });
  }

  void on_stat(ssize_t result, int64_t size) {
    busy_ = false;
    if (cancelled_ || !r_.open()) return finish();
    if (result == 0 && size < pos_) {  // truncated (e.g. copytruncate): start over
      pos_ = 0;
      return read_more();
    }
    if (!timer_) timer_ = std::make_unique<http::Timer>(s_->ctx.loop);
    timer_->start(kLogPollMs, 0, [self = shared_from_this()] { self->tick(); });
  }

  void tick() {
    if (cancelled_) return finish();
    if (++ticks_ % kLogStatusEveryTicks != 0) return read_more();
    // Is the allocation over? Then read what is left and end.
    StoreClient *store = s_->store();
    if (!store) return finish();
    busy_ = true;
    store->get(kAllocStatus + alloc_id_,
               [self = shared_from_this()](StoreResult res, std::optional<KeyValue> kv, int64_t) {
                 self->busy_ = false;
                 if (res.ok() && kv && is_terminal_state(alloc_state(parse_record(kv->value))))
                   self->terminal_ = true;
                 if (self->terminal_) return self->read_more();
                 StoreClient *store = self->s_->store();
                 if (!store || self->cancelled_) return self->finish();
                 self->busy_ = true;
                 store->get(kAllocs + self->alloc_id_,
                            [self](StoreResult res, std::optional<KeyValue> kv, int64_t) {
                              self->busy_ = false;
                              if (res.ok() && !kv) self->terminal_ = true;  // removed
                              self->read_more();
                            });
               });
  }

  void cancel() {
    if (cancelled_) return;
    cancelled_ = true;
    if (timer_) timer_->stop();
    if (!busy_) finish();
  }

  // End the answer (a no-op if the client is gone), then release the file.
  void finish() {
    if (finished_) return;
    finished_ = true;
    r_.end();
    r_ = Responder();
    timer_.reset();
    close_file();
  }

  void close_file() {
    if (fd_ < 0) return;
    uv_file fd = fd_;
    fd_ = -1;
    fs(&LogStream::on_closed,
       [&](uv_fs_t *req, uv_fs_cb cb) { return uv_fs_close(s_->ctx.loop, req, fd, cb); });
  }

  void on_closed(ssize_t, int64_t) { busy_ = false; }

  StatePtr s_;
  Responder r_;
  std::string alloc_id_, path_;
  int64_t pos_;
  bool follow_;
  bool terminal_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
  bool busy_ = false;  // an fs request, a write or a store read is pending
  int ticks_ = 0;
  uv_file fd_ = -1;
  std::vector<char> buf_;
  std::unique_ptr<http::Timer> timer_;
};

void alloc_logs(const StatePtr &s, Request &req, const Params &p, Responder &r) {
  std::string stream = "stdout";
  if (auto it = req.query.find("stream"); it != req.query.end()) stream = it->second;
  if (stream != "stdout" && stream != "stderr" && stream != "runs")
    return r.send(
        error_json(400, "invalid", "stream \"" + stream + "\" is not one of stdout, stderr, runs"));
  // run=N: that run of a task that restarted (stream=runs lists them).
  std::string run;
  if (auto it = req.query.find("run"); it != req.query.end()) {
    run = it->second;
    if (run.empty() || run.size() > 9 || run[0] == '0' ||
        run.find_first_not_of("0123456789") != std::string::npos)
      return r.send(
          error_json(400, "invalid", "run \"" + run + "\" is not a run number (1, 2, ...)"));
    if (stream == "runs")
      return r.send(error_json(400, "invalid", "stream=runs lists every run; it takes no run"));
  }
  int64_t offset = 0;
  if (auto it = req.query.find("offset"); it != req.query.end()) {
    char *end = nullptr;
    errno = 0;
    long long v = strtoll(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end || errno || v < 0)
      return r.send(error_json(400, "invalid",
                               "offset \"" + it->second + "\" is not a byte offset (0 or more)"));
    offset = v;
  }
  bool follow = query_flag(req, "follow");
  std::string task;
  if (auto it = req.query.find("task"); it != req.query.end()) task = it->second;
  if (!s->store()) return r.send(no_store());
  std::string id = p[0];
  read_snapshot(
      s, {{kAllocs + id, true}, {kAllocStatus + id, true}},
      [s, r, id, stream, offset, follow, task, run](
          StoreResult res, std::vector<std::vector<KeyValue>> kvs, int64_t) mutable {
        guarded(r, [&] {
          if (!res.ok()) return r.send(store_failure(res, "reading allocation " + id));
          if (kvs[0].empty())
            return r.send(error_json(404, "not_found", "allocation \"" + id + "\" not found"));
          json alloc = parse_record(kvs[0][0].value);
          json status = kvs[1].empty() ? json(nullptr) : parse_record(kvs[1][0].value);
          if (status.is_object() && status.value("containers_removed", false))
            return r.send(error_json(
                410, "gone",
                "the logs of allocation \"" + id + "\" are gone: it ended and the node's garbage "
                "collection removed its containers ([gc] terminal_after / max_terminal in the "
                "daemon's config)"));

          auto runtimes = s->providers(FLOTILLA_RUNTIME_INTERFACE_ID);
          if (runtimes.empty())
            return r.send(error_json(501, "unsupported",
                                     "no runtime plugin is loaded (none serves "
                                     "flotilla.runtime/1), so there are no logs to show"));
          const PluginRef &rt_ref = runtimes.front();
          auto *rt = static_cast<const flotilla_runtime_v1 *>(rt_ref.vtable);
          if (!FLOTILLA_HAS_FIELD(rt, flotilla_runtime_v1, log_path) || !rt->log_path)
            return r.send(error_json(501, "unsupported",
                                     "runtime plugin " + rt_ref.plugin + " does not serve logs"));
          // Which task: the one asked for, or the only one there is.
          std::vector<std::string> tasks;
          if (alloc.contains("spec") && alloc["spec"].is_object() &&
              alloc["spec"].contains("task") && alloc["spec"]["task"].is_array())
            for (const json &t : alloc["spec"]["task"]) tasks.push_back(string_field(t, "name"));
          if (task.empty()) {
            if (tasks.size() != 1) {
              std::string names;
              for (const auto &t : tasks) names += (names.empty() ? "" : ", ") + t;
              return r.send(error_json(
                  400, "invalid",
                  tasks.empty() ? "allocation \"" + id + "\" names no tasks; give task=NAME"
                                : "allocation \"" + id + "\" has tasks " + names +
                                      "; choose one with task=NAME"));
            }
            task = tasks.front();
          } else if (!tasks.empty() && std::find(tasks.begin(), tasks.end(), task) == tasks.end()) {
            return r.send(error_json(404, "not_found",
                                     "allocation \"" + id + "\" has no task \"" + task + "\""));
          }
          // The container the node reported for the task, else the name the
          // reconciler gives it.
          std::string container;
          if (status.is_object() && status.contains("tasks") && status["tasks"].is_object() &&
              status["tasks"].contains(task))
            container = string_field(status["tasks"][task], "container");
          if (container.empty()) container = Reconciler::container_id(id, task);
          char path[4096] = "";
          s->clear_plugin_error();
          // The runtime's names (docs/abi-json.md): "stdout@2" is run 2's.
          const std::string rt_stream = run.empty() ? stream : stream + "@" + run;
          flotilla_status st =
              rt->log_path(rt_ref.self, container.c_str(), rt_stream.c_str(), path, sizeof path);
          if (st == FLOTILLA_E_INVALID && rt_stream != "stdout" && rt_stream != "stderr")
            return r.send(error_json(501, "unsupported",
                                     "runtime plugin " + rt_ref.plugin +
                                         " keeps no earlier runs' logs (it has no log \"" +
                                         rt_stream + "\")"));
          if (st != FLOTILLA_OK) {
            std::string why = s->plugin_error();
            std::string node = string_field(alloc, "node");
            std::string here = s->ctx.config ? s->ctx.config->node.name : std::string();
            if (st == FLOTILLA_E_NOT_FOUND && !node.empty() && !here.empty() && node != here)
              why = "allocation \"" + id + "\" runs on node " + node +
                    "; ask the flotillad on that node for its logs";
            else if (why.empty())
              why = "no " + stream + " log for task " + task + " of allocation \"" + id +
                    "\" on this node";
            return r.send(status_error(st, why));
          }
          path[sizeof path - 1] = '\0';
          auto ls = std::make_shared<LogStream>(
              s, r, id, path, offset,
              follow && stream != "runs" && !is_terminal_state(alloc_state(status)));
          ls->start();
        });
      },
      r);
}

bool allocs_changed(const StoreEvent &e, const Request &req, const Params &) {
  if (auto it = req.query.find("job"); it != req.query.end() && !it->second.empty())
    return alloc_of_job(e, it->second);
  return under(e.kv.key, kAllocs) || under(e.kv.key, kAllocStatus);
}
bool alloc_changed(const StoreEvent &e, const Request &, const Params &p) {
  return e.kv.key == kAllocs + p[0] || e.kv.key == kAllocStatus + p[0];
}

}  // namespace

std::vector<Route> allocs_routes() {
  return {
      {{"v1", "allocs"}, {{"GET", list_allocs}}, false, allocs_changed},
      {{"v1", "allocs", "*"}, {{"GET", get_alloc}}, false, alloc_changed},
      {{"v1", "allocs", "*", "logs"}, {{"GET", alloc_logs}}},
  };
}

}  // namespace flotilla::api
