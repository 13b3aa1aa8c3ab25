// flotilla-runc-shim: the monitor of one container, so that containers
// outlive flotillad (as containerd's shims and conmon do).
//
//   flotilla-runc-shim [--wait-for-go] <container dir>/shim.json
//
// Started detached by the runtime-runc plugin, it
//  1. leaves the daemon's life behind: SIGHUP/SIGINT/SIGPIPE ignored, every
//     inherited descriptor but stdout (the plugin's notify pipe) closed;
//     with --wait-for-go it then waits for the bundle to be ready (a 'g' on
//     stdin; end of file: it exits, having touched nothing); it takes its
//     own session only after forking the runtime (see leave_daemon_session);
//  2. becomes a child subreaper, so the container's init — orphaned when
//     `<runtime> create` exits — is reparented to it and reaped by it;
//  3. runs `<runtime> --root R --log L --log-format json create --bundle B
//     --pid-file P ID` (or `run --detach ...` when shim.json says
//     "start": true, so that the process starts in the same runtime call)
//     with the container's stdout and stderr on pipes it owns, and copies
//     them into size-capped, rotated log files;
//  4. reports the outcome of create on its stdout (one JSON line), then
//     keeps shim-state.json current until the container exits, records the
//     exit code or signal and the finish time, and exits.
// The file formats are in shim_protocol.h.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../image/fs_ops.h"
#include "../image/unique_fd.h"
#include "proc_info.h"
#include "rotating_log.h"
#include "shim_protocol.h"

namespace {

using flotilla::runc::RotatingLog;
using flotilla::runc::UniqueFd;
using json = nlohmann::json;
namespace shim = flotilla::runc::shim;

struct ShimConfig {
  std::string id, binary, root, bundle, pid_file, runtime_log, stdout_log, stderr_log, state_file;
  bool start = false;  // `run --detach` instead of `create`: the process starts at once
  uint64_t log_max_bytes = 10 << 20;
  unsigned log_max_files = 5;
};

void say(const std::string &msg) {
  // stderr is shim.log (see main); a timestamp makes it readable later.
  std::string line = flotilla::runc::now_rfc3339() + " " + msg + "\n";
  ssize_t ignored = ::write(2, line.data(), line.size());
  (void)ignored;
}

ShimConfig read_config(const std::string &path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  json j = json::parse(in);
  ShimConfig c;
  c.id = j.at("id").get<std::string>();
  c.binary = j.at("binary").get<std::string>();
  c.root = j.at("root").get<std::string>();
  c.bundle = j.at("bundle").get<std::string>();
  c.pid_file = j.at("pid_file").get<std::string>();
  c.runtime_log = j.at("runtime_log").get<std::string>();
  c.stdout_log = j.at("stdout_log").get<std::string>();
  c.stderr_log = j.at("stderr_log").get<std::string>();
  c.state_file = j.at("state_file").get<std::string>();
  c.log_max_bytes = j.value("log_max_bytes", c.log_max_bytes);
  c.log_max_files = j.value("log_max_files", c.log_max_files);
  c.start = j.value("start", false);
  return c;
}

class StateFile {
 public:
  explicit StateFile(std::string path) : path_(std::move(path)) {
    state_["version"] = shim::kProtocolVersion;
    state_["shim_pid"] = ::getpid();
    state_["shim_start_ticks"] = flotilla::runc::proc_start_ticks(::getpid());
  }
  json &operator*() { return state_; }
  // The plugin may read at any moment: always a complete file. Only the
  // exit record is fsynced: the earlier states matter only while the host
  // is up (after a power loss no container is running), and an fsync on
  // the way to a started container costs the start latency.
  void save(bool sync = false) {
    try {
      flotilla::runc::write_file_atomic(path_, state_.dump() + "\n", sync);
    } catch (const std::exception &e) {
      say(std::string("cannot write state: ") + e.what());
    }
  }

 private:
  std::string path_;
  json state_;
};

// The last "error" message the runtime logged (runc and crun write one JSON
// object per line with --log-format json).
std::string runtime_error_message(const std::string &log_path) {
  std::ifstream in(log_path);
  std::string line, last;
  while (std::getline(in, line)) {
    try {
      json j = json::parse(line);
      if (j.value("level", "") == "error" || j.value("level", "") == "fatal")
        last = j.value("msg", "");
    } catch (const std::exception &) {
      if (!line.empty()) last = line;  // a plain-text line from an older runtime
    }
  }
  return last;
}

std::optional<pid_t> read_pid_file(const std::string &path) {
  std::ifstream in(path);
  long pid = 0;
  if (in >> pid && pid > 0) return static_cast<pid_t>(pid);
  return std::nullopt;
}

void close_inherited_fds() {
  // Keep 0, 1 (the notify pipe) and 2; the daemon's sockets, locks and
  // other containers' pipes must not be held open by this process.
  if (::syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
    for (int fd = 3; fd < 1024; ++fd) ::close(fd);
  }
}

// Notify the plugin once; afterwards stdout is /dev/null, so a daemon that
// went away does not matter.
void notify(const json &j) {
  std::string line = j.dump() + "\n";
  ssize_t ignored = ::write(1, line.data(), line.size());
  (void)ignored;
  int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, 1);
    ::close(null);
  }
}

pid_t spawn_create(const ShimConfig &c, int out_w, int err_w) {
  std::vector<std::string> args = {c.binary, "--root", c.root, "--log", c.runtime_log,
                                   "--log-format", "json"};
  if (c.start) {
    args.insert(args.end(), {"run", "--detach"});
  } else {
    args.push_back("create");
  }
  args.insert(args.end(), {"--bundle", c.bundle, "--pid-file", c.pid_file, c.id});
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  // Child: its own process group, in the session the shim is about to
  // leave (leave_daemon_session, which sets the same from the parent's side).
  ::setpgid(0, 0);
  // The container inherits these three descriptors.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  int null = ::open("/dev/null", O_RDONLY);
  if (null < 0 || ::dup2(null, 0) < 0 || ::dup2(out_w, 1) < 0 || ::dup2(err_w, 2) < 0) _exit(127);
  if (::chdir(c.bundle.c_str()) != 0) _exit(127);
  std::vector<char *> argv;
  for (auto &a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  std::string msg = "cannot run " + c.binary + ": " + std::strerror(errno) + "\n";
  ssize_t ignored = ::write(2, msg.data(), msg.size());
  (void)ignored;
  _exit(127);
}

// The host started us in the daemon's session (ABI 1.4 keep_session) so
// that the runtime we just forked runs there too: with
// kernel.sched_autogroup_enabled each session is a CPU autogroup of its
// own, and `runc run` in a fresh one took 10-30% longer. Now the shim
// leaves, so that it (and the containers, whose init the runtime puts in
// a session of its own) does not end with the daemon's session. The
// runtime keeps a process group of its own in the daemon's session, out
// of reach of signals sent to the daemon's group. A 1.3 host already gave
// us our own session; then there is nothing to do.
void leave_daemon_session(pid_t runtime_pid) {
  if (::setpgid(runtime_pid, runtime_pid) != 0 && errno != EACCES && errno != ESRCH)
    say(std::string("setpgid(runtime): ") + std::strerror(errno));
  if (::getsid(0) != ::getpid() && ::setsid() < 0)
    say(std::string("setsid: ") + std::strerror(errno) + "; staying in the daemon's session");
}

int64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int run(const std::string &config_path) {
  ShimConfig c = read_config(config_path);
  StateFile state(c.state_file);
  (*state)["status"] = shim::kStatusCreating;
  state.save();

  RotatingLog out_log(c.stdout_log, c.log_max_bytes, c.log_max_files);
  RotatingLog err_log(c.stderr_log, c.log_max_bytes, c.log_max_files);

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  UniqueFd out_r(out_pipe[0]), out_w(out_pipe[1]), err_r(err_pipe[0]), err_w(err_pipe[1]);

  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, nullptr);
  UniqueFd sfd(::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sfd) throw std::runtime_error(std::string("signalfd: ") + std::strerror(errno));

  pid_t create_pid = spawn_create(c, out_w.get(), err_w.get());
  if (create_pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  leave_daemon_session(create_pid);
  out_w.reset();
  err_w.reset();
  say("started " + c.binary + (c.start ? " run --detach " : " create ") + c.id + " (pid " + std::to_string(create_pid) + ")");

  std::optional<pid_t> container_pid;
  std::map<pid_t, int> reaped;  // exits seen before the container's pid was known
  std::optional<int> container_status;
  int64_t drain_deadline = 0;
  char buf[65536];

  for (;;) {
    if (container_status) {
      bool pipes_open = out_r || err_r;
      if (!pipes_open || now_ms() >= drain_deadline) break;
    }
    pollfd fds[3] = {{sfd.get(), POLLIN, 0}, {out_r.get(), POLLIN, 0}, {err_r.get(), POLLIN, 0}};
    int timeout = -1;
    if (container_status)
      timeout = static_cast<int>(std::max<int64_t>(0, drain_deadline - now_ms()));
    int n = ::poll(fds, 3, timeout);
    if (n < 0 && errno != EINTR) throw std::runtime_error(std::string("poll: ") + strerror(errno));
    for (int i = 1; i <= 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      UniqueFd &r = i == 1 ? out_r : err_r;
      ssize_t got = ::read(r.get(), buf, sizeof buf);
      if (got > 0)
        (i == 1 ? out_log : err_log).write(std::string_view(buf, static_cast<size_t>(got)));
      else if (got == 0 || (errno != EINTR && errno != EAGAIN))
        r.reset();
    }
    if (!(fds[0].revents & POLLIN)) continue;
    signalfd_siginfo si;
    while (::read(sfd.get(), &si, sizeof si) == sizeof si) {
    }
    for (;;) {
      int status = 0;
      pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      if (pid == create_pid) {
        create_pid = -1;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
          container_pid = read_pid_file(c.pid_file);
        }
        if (!container_pid) {
          std::string why = runtime_error_message(c.runtime_log);
          if (why.empty())
            why = c.binary + (c.start ? " run" : " create") + " exited with " +
                  (WIFEXITED(status) ? "status " + std::to_string(WEXITSTATUS(status))
                                     : "signal " + std::to_string(WTERMSIG(status)));
          (*state)["status"] = shim::kStatusCreateFailed;
          (*state)["error"] = why;
          state.save();
          notify({{"status", shim::kStatusCreateFailed}, {"error", why}});
          say("create failed: " + why);
          // Keep what the runtime printed in stderr.log, then leave.
          container_status = 0;
          drain_deadline = now_ms() + 1000;
          break;
        }
        (*state)["status"] = shim::kStatusCreated;
        (*state)["pid"] = *container_pid;
        if (c.start) (*state)["started"] = true;
        state.save();
        json note = {{"status", shim::kStatusCreated}, {"pid", *container_pid}};
        if (c.start) note["started"] = true;
        notify(note);
        say("container " + c.id + (c.start ? " started" : " created") + ", pid " +
            std::to_string(*container_pid));
        if (auto it = reaped.find(*container_pid); it != reaped.end())
          container_status = it->second;
      } else if (container_pid && pid == *container_pid) {
        container_status = status;
      } else if (!container_pid) {
        reaped[pid] = status;
      }
      // Anything else is an orphan of the container (a process it left
      // behind in the host's pid namespace); reaping it is our job.
    }
    if (container_status && drain_deadline == 0) {
      // The container is gone; its pipes close once every process holding
      // them is gone too. Don't wait forever for a stray holder.
      drain_deadline = now_ms() + 5000;
    }
  }

  if ((*state)["status"] != shim::kStatusCreateFailed) {
    int st = *container_status;
    int exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    (*state)["status"] = shim::kStatusStopped;
    (*state)["exit_code"] = exit_code;
    (*state)["signal"] = sig;
    (*state)["finished_at"] = flotilla::runc::now_rfc3339();
    state.save(true);
    say("container " + c.id + " exited: code " + std::to_string(exit_code) + ", signal " +
        std::to_string(sig));
  }
  return 0;
}

}  // namespace

// --wait-for-go: the plugin starts the shim while it still prepares the
// bundle. Until one 'g' arrives on stdin nothing is read or written; end of
// file instead (the bundle failed, the daemon died) means leave quietly.
bool wait_for_go() {
  char b = 0;
  ssize_t n;
  do {
    n = ::read(0, &b, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1 || b != 'g') return false;
  int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, 0);
    ::close(null);
  }
  return true;
}

int main(int argc, char **argv) {
  const bool wait = argc == 3 && std::strcmp(argv[1], "--wait-for-go") == 0;
  if (argc != 2 && !wait) {
    std::fprintf(stderr, "usage: %s [--wait-for-go] <container dir>/shim.json\n", argv[0]);
    return 2;
  }
  // Nobody but the plugin's stop/remove (through the OCI runtime) should end
  // the container's monitor: not the daemon's terminal, not a closed pipe.
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  close_inherited_fds();
  if (wait && !wait_for_go()) return 0;

  std::string config_path = argv[argc - 1];
  std::string dir = config_path.substr(0, config_path.rfind('/'));
  if (dir.empty()) dir = ".";
  int log_fd = ::open((dir + "/" + shim::kShimLogFile).c_str(),
                      O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (log_fd >= 0) {
    ::dup2(log_fd, 2);
    ::close(log_fd);
  }
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    say(std::string("prctl(PR_SET_CHILD_SUBREAPER): ") + std::strerror(errno));
    notify({{"status", shim::kStatusCreateFailed},
            {"error", std::string("shim cannot become a subreaper: ") + std::strerror(errno)}});
    return 1;
  }
  try {
    return run(config_path);
  } catch (const std::exception &e) {
    say(std::string("fatal: ") + e.what());
    notify({{"status", shim::kStatusCreateFailed}, {"error", std::string("shim: ") + e.what()}});
    return 1;
  }
}
