// Commands run inside running containers (flotilla.runtime/1 exec, ABI
// 1.3): `<runtime> --root R exec --pid-file F <container> argv...`, started
// through the host's process_spawn, its stdout and stderr read from one
// pipe on the loop (the first output_limit bytes kept, the rest read and
// dropped so the command never blocks on a full pipe), and killed at its
// timeout: SIGKILL to the command (its pid from F) and to the runtime CLI.
//
// Threading: [loop-thread] only, callbacks included.
#pragma once

#include <flotilla/host.h>
#include <flotilla/runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../image/unique_fd.h"

namespace flotilla::runc {

class ExecRuns {
 public:
  ExecRuns(const flotilla_host *host, std::string binary, std::string root);
  // Answers every run still going with FLOTILLA_E_CANCELLED and kills it.
  ~ExecRuns();
  ExecRuns(const ExecRuns &) = delete;
  ExecRuns &operator=(const ExecRuns &) = delete;

  // pid_file: where the runtime CLI writes the command's pid (removed when
  // the run ends). Returns the run's id (never 0), or 0 with the message
  // in set_error; cb runs once, later, unless cancel(id) came first.
  uint64_t start(const std::string &container, std::vector<std::string> argv, uint64_t timeout_ms,
                 uint64_t output_limit, const std::string &pid_file, flotilla_runtime_exec_cb cb,
                 void *user);
  void cancel(uint64_t id);
  size_t running() const { return runs_.size(); }

  static constexpr uint64_t kDefaultTimeoutMs = 10000;
  static constexpr uint64_t kDefaultOutputLimit = 4096;
  static constexpr uint64_t kMaxOutputLimit = 1 << 20;

 private:
  struct Run;
  static void on_output(void *user, int fd, uint32_t events);
  static void on_exit(void *user, int64_t pid, int64_t status, int term_signal);
  static void on_timeout(void *user);
  void drain(Run &r);
  void kill_run(Run &r);
  void finish(Run &r);

  const flotilla_host *host_;
  std::string binary_, root_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Run>> runs_;
};

}  // namespace flotilla::runc
