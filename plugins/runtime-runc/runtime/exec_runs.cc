#include "exec_runs.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace flotilla::runc {

struct ExecRuns::Run {
  ExecRuns *owner = nullptr;
  uint64_t id = 0;
  std::string what;  // "exec in <container>", for messages
  std::string pid_file;
  int64_t pid = 0;  // the runtime CLI's
  UniqueFd out;
  flotilla_handle watch = 0, timer = 0;
  uint64_t timeout_ms = 0, limit = 0;
  std::string output;
  bool truncated = false, timed_out = false, exited = false, killed = false;
  int64_t status = -1;
  int term_signal = 0;
  flotilla_runtime_exec_cb cb = nullptr;  // null once cancelled
  void *user = nullptr;
};

ExecRuns::ExecRuns(const flotilla_host *host, std::string binary, std::string root)
    : host_(host), binary_(std::move(binary)), root_(std::move(root)) {}

ExecRuns::~ExecRuns() {
  auto runs = std::move(runs_);
  for (auto &[id, r] : runs) {
    if (r->watch) host_->fd_unwatch(host_->host_ctx, r->watch);
    if (r->timer) host_->timer_stop(host_->host_ctx, r->timer);
    if (!r->exited) kill_run(*r);
    ::unlink(r->pid_file.c_str());
    if (r->cb) {
      host_->set_error(host_->host_ctx, "runtime-runc is shutting down");
      r->cb(r->user, FLOTILLA_E_CANCELLED, nullptr);
    }
  }
}

uint64_t ExecRuns::start(const std::string &container, std::vector<std::string> argv,
                         uint64_t timeout_ms, uint64_t output_limit, const std::string &pid_file,
                         flotilla_runtime_exec_cb cb, void *user) {
  auto r = std::make_unique<Run>();
  r->owner = this;
  r->id = next_id_++;
  r->what = "exec in " + container;
  r->pid_file = pid_file;
  r->timeout_ms = timeout_ms ? timeout_ms : kDefaultTimeoutMs;
  r->limit = std::min(output_limit ? output_limit : kDefaultOutputLimit, kMaxOutputLimit);
  r->cb = cb;
  r->user = user;
  ::unlink(pid_file.c_str());

  // runc and crun both take --pid-file; everything after the container's
  // id is the command.
  std::vector<std::string> full = {binary_,      "--root", root_,    "exec",
                                   "--pid-file", pid_file, container};
  full.insert(full.end(), argv.begin(), argv.end());
  std::vector<const char *> cargv;
  for (const auto &a : full) cargv.push_back(a.c_str());
  cargv.push_back(nullptr);

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    host_->set_error(host_->host_ctx, (std::string("exec: pipe: ") + std::strerror(errno)).c_str());
    return 0;
  }
  UniqueFd rd(p[0]), wr(p[1]);
  ::fcntl(rd.get(), F_SETFL, O_NONBLOCK);
  flotilla_process_spec spec{};
  spec.struct_size = sizeof spec;
  spec.file = binary_.c_str();
  spec.argv = cargv.data();
  spec.stdin_fd = -1;
  spec.stdout_fd = wr.get();
  spec.stderr_fd = wr.get();
  Run *raw = r.get();
  if (host_->process_spawn(host_->host_ctx, &spec, &ExecRuns::on_exit, raw, &raw->pid) !=
      FLOTILLA_OK) {
    host_->set_error(host_->host_ctx,
                     ("exec: cannot run " + binary_ + " (plugin.runtime-runc.binary)").c_str());
    return 0;
  }
  wr.reset();
  r->out = std::move(rd);
  r->watch = host_->fd_watch(host_->host_ctx, r->out.get(), FLOTILLA_FD_READABLE,
                             &ExecRuns::on_output, raw);
  r->timer = host_->timer_start(host_->host_ctx, r->timeout_ms, 0, &ExecRuns::on_timeout, raw);
  const uint64_t id = r->id;
  runs_[id] = std::move(r);
  return id;
}

void ExecRuns::cancel(uint64_t id) {
  auto it = runs_.find(id);
  if (it == runs_.end()) return;
  Run &r = *it->second;
  r.cb = nullptr;
  // The record stays until the process has exited: its exit callback
  // carries this pointer.
  if (!r.exited && !r.killed) kill_run(r);
}

void ExecRuns::on_output(void *user, int, uint32_t) {
  auto *r = static_cast<Run *>(user);
  r->owner->drain(*r);
}

void ExecRuns::drain(Run &r) {
  if (!r.out) return;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(r.out.get(), buf, sizeof buf);
    if (n > 0) {
      const size_t room = r.output.size() < r.limit ? r.limit - r.output.size() : 0;
      const size_t take = std::min(room, static_cast<size_t>(n));
      r.output.append(buf, take);
      if (take < static_cast<size_t>(n)) r.truncated = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    break;  // EOF or error
  }
  if (r.watch) host_->fd_unwatch(host_->host_ctx, r.watch);
  r.watch = 0;
  r.out.reset();
}

void ExecRuns::on_exit(void *user, int64_t, int64_t status, int term_signal) {
  auto *r = static_cast<Run *>(user);
  r->exited = true;
  r->status = status;
  r->term_signal = term_signal;
  // What the command wrote is in the pipe now. A child it left behind may
  // hold the pipe open: do not wait for the end of file.
  r->owner->drain(*r);
  r->owner->finish(*r);
}

void ExecRuns::on_timeout(void *user) {
  auto *r = static_cast<Run *>(user);
  r->timer = 0;  // one-shot: released by the host
  r->timed_out = true;
  r->owner->kill_run(*r);
}

// The command first (its pid from the pid file, once the CLI wrote it),
// then the CLI, whose exit ends the run.
void ExecRuns::kill_run(Run &r) {
  r.killed = true;
  int fd = ::open(r.pid_file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[32] = {};
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    long pid = n > 0 ? std::strtol(buf, nullptr, 10) : 0;
    if (pid > 1) ::kill(static_cast<pid_t>(pid), SIGKILL);
  }
  if (r.pid > 0) ::kill(static_cast<pid_t>(r.pid), SIGKILL);
}

void ExecRuns::finish(Run &r) {
  auto node = runs_.extract(r.id);
  if (node.empty()) return;
  std::unique_ptr<Run> run = std::move(node.mapped());
  if (run->watch) host_->fd_unwatch(host_->host_ctx, run->watch);
  run->watch = 0;
  run->out.reset();
  if (run->timer) host_->timer_stop(host_->host_ctx, run->timer);
  run->timer = 0;
  ::unlink(run->pid_file.c_str());
  if (!run->cb) return;
  flotilla_exec_result res{};
  res.struct_size = sizeof res;
  // runc and crun exit with the command's code, 128 + n when signal n
  // ended it: after our SIGKILL that is the signal, not a code.
  res.exit_code = run->status;
  res.term_signal = run->term_signal;
  if (run->killed && run->status > 128 && run->status <= 128 + 64) {
    res.exit_code = -1;
    res.term_signal = static_cast<int32_t>(run->status - 128);
  }
  res.timed_out = run->timed_out ? 1 : 0;
  res.output = run->output.c_str();
  res.output_len = run->output.size();
  res.output_truncated = run->truncated ? 1 : 0;
  run->cb(run->user, FLOTILLA_OK, &res);
}

}  // namespace flotilla::runc
