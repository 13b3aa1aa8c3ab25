// The runtime-runc plugin instance: serves "flotilla.runtime/1" by driving
// an OCI runtime CLI (runc, crun, ...) and one flotilla-runc-shim monitor
// per container. Every public method is [loop-thread] and answers through
// its callback later, never inside the call; a non-OK return means the
// callback will not be called (the message went to set_error).
//
// Nothing here blocks the loop: the OCI runtime and the shims run through
// host->process_spawn, their output and exits are watched with fd_watch
// (pipes, pidfds), and filesystem work runs in host->queue_work.
#pragma once

#include <flotilla/host.h>
#include <flotilla/runtime.h>
#include <flotilla/version.h>
#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../image/unique_fd.h"
#include "container_files.h"
#include "container_record.h"
#include "runtime_config.h"

namespace flotilla::runc {

class ImageStore;
class ImagePulls;
class ExecRuns;

// What create answers for an image the store does not have: the reference
// once, and a `flotilla image import` command that the CLI accepts as it
// stands once PATH is filled in.
std::string missing_image_message(const std::string &ref);

class RuncRuntime {
 public:
  // Reads the config (bad keys go to host->config_error), finds the shim
  // and starts recovering the containers on disk in the background.
  static flotilla_status open(const flotilla_host *host, std::unique_ptr<RuncRuntime> &out);
  // The config as open() reads it, and the runtime binary and the shim it
  // names; every problem goes to host->config_error. False if there was one.
  // Writes nothing (check_config uses it too).
  static bool read_config(const flotilla_host *host, RuntimeConfig &config);
  ~RuncRuntime();  // deinit: cancels what is pending; containers keep running
  RuncRuntime(const RuncRuntime &) = delete;
  RuncRuntime &operator=(const RuncRuntime &) = delete;

  flotilla_status create(const char *id, const char *task_json, flotilla_runtime_state_cb cb,
                         void *user);
  flotilla_status start(const char *id, flotilla_runtime_state_cb cb, void *user);
  flotilla_status state(const char *id, flotilla_runtime_state_cb cb, void *user);
  flotilla_status signal(const char *id, int signo, flotilla_done_cb cb, void *user);
  flotilla_status stop(const char *id, uint64_t timeout_ms, flotilla_runtime_state_cb cb,
                       void *user);
  flotilla_status remove(const char *id, flotilla_done_cb cb, void *user);
  flotilla_status list(flotilla_runtime_list_cb cb, void *user);
  flotilla_status log_path(const char *id, const char *stream, char *buf, size_t buf_len);
  flotilla_status image_import(const char *path, const char *tag, flotilla_runtime_state_cb cb,
                               void *user);
  flotilla_status image_list(flotilla_runtime_list_cb cb, void *user);
  flotilla_status image_remove(const char *ref, flotilla_done_cb cb, void *user);
  flotilla_status image_pull(const char *ref, const char *options_json,
                             flotilla_runtime_progress_cb progress, flotilla_runtime_state_cb cb,
                             void *user);
  // ABI 1.3: argv in the running container id; exec_runs.h.
  flotilla_status exec(const char *id, const flotilla_exec_spec *spec, flotilla_runtime_exec_cb cb,
                       void *user, uint64_t *exec_out);
  void exec_cancel(uint64_t exec_id);

 private:
  struct Container;
  struct Deferred;
  struct Work;
  struct Command;
  struct Reply;
  struct Found;
  using Done = std::function<void(flotilla_status, const std::string &message)>;

  RuncRuntime(const flotilla_host *host, RuntimeConfig config);

  // -- plumbing over the host table --
  uint64_t defer(std::function<void()> fn, uint64_t delay_ms = 0);
  void cancel_deferred(uint64_t key);
  static void on_deferred(void *user);
  // work runs on the thread pool and must not touch *this; a RuntimeFailure
  // or ImageError it throws becomes (status, message) for after.
  void queue(std::function<void()> work, Done after);
  static void on_work(void *user);
  static void on_work_done(void *user, flotilla_status status);
  // Runs the OCI runtime with --root and args; done gets its exit status
  // (-1 when killed), and its stdout and stderr together.
  void run_runtime(std::vector<std::string> args,
                   std::function<void(int64_t status, const std::string &output)> done);
  static void on_command_output(void *user, int fd, uint32_t events);
  static void on_command_exit(void *user, int64_t pid, int64_t status, int term_signal);
  void finish_command(Command *cmd);

  // Requests: a callback answered exactly once, or cancelled at deinit.
  uint64_t add_reply(Reply reply);
  void answer(uint64_t rid, flotilla_status status, const std::string &text);
  // Runs op now if recovery finished, else once it has; fail gets op's
  // status when a queued op refuses.
  flotilla_status gate(std::function<flotilla_status()> op,
                       std::function<void(flotilla_status)> fail);
  flotilla_status refuse(flotilla_status status, const std::string &message);

  // -- containers --
  Container *find(const std::string &id);
  flotilla_status lookup(const char *id, Container *&c, bool allow_busy = false);
  // ended: the state of the container this one replaces ("replace"), or null.
  flotilla_status create_now(const std::string &id, const std::string &task_json,
                             flotilla_runtime_state_cb cb, void *user,
                             const nlohmann::json &ended = nullptr);
  // Starts the container's shim, waiting on its go pipe; "" or what failed.
  std::string start_shim(const std::string &id);
  static void on_notify(void *user, int fd, uint32_t events);
  void handle_notify(Container *c, bool eof);
  void watch_shim(Container *c, UniqueFd pidfd);
  static void on_shim_exit(void *user, int fd, uint32_t events);
  void shim_exited(const std::string &id);
  void apply_exit(Container *c, const ShimState &s);
  void publish_exit(Container *c);
  void persist_record(Container *c, std::function<void()> then);
  // keep_logs: everything goes but logs/, and the allocation's network
  // namespace stays (a replacement follows at once).
  void remove_internal(const std::string &id, Done done, bool keep_logs = false);
  void cleanup_files(const std::string &id, Done done, bool keep_logs = false);
  void release_alloc_netns(const std::string &alloc);
  void erase(const std::string &id);
  nlohmann::json state_of(const Container *c) const;

  // -- start-up --
  void recover();
  void adopt(Found &f);
  void became_ready(flotilla_status status, const std::string &message);
  // Image GC (image_unused_after, image_max_size_mb), on a repeating timer.
  void start_image_gc();
  static void on_image_gc(void *user);

  const flotilla_host *host_;
  RuntimeConfig config_;
  std::shared_ptr<ImageStore> images_;
  std::unique_ptr<ImagePulls> pulls_;  // after images_: destroyed first
  std::unique_ptr<ExecRuns> execs_;
  flotilla_handle image_gc_timer_ = 0;
  bool image_gc_running_ = false;
  bool image_gc_again_ = false;  // asked for while one ran: run once more after it
  std::map<std::string, std::unique_ptr<Container>> containers_;

  bool ready_ = false;
  std::string startup_error_;
  std::vector<std::pair<std::function<flotilla_status()>, std::function<void(flotilla_status)>>>
      until_ready_;

  uint64_t next_key_ = 1;
  std::map<uint64_t, std::unique_ptr<Deferred>> deferred_;
  std::map<uint64_t, std::unique_ptr<Command>> commands_;
  std::map<uint64_t, std::unique_ptr<Reply>> replies_;
};

}  // namespace flotilla::runc
