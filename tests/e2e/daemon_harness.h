// Runs real flotillad processes for end-to-end tests: each in its own
// scratch directory (unique per run), killed by pid and removed even when
// the test fails.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace flotilla::e2e {

struct HttpReply {
  int status = 0;  // 0: no answer (connection refused, reset, ...)
  std::string body;
};

// One request over a Unix socket, Connection: close. Chunked bodies are
// decoded.
HttpReply http(const std::string &socket, const std::string &method, const std::string &path,
               const std::string &body = "", const std::string &content_type = "");

// Raw bytes in, whatever comes back out (for malformed-request tests).
std::string raw_exchange(const std::string &socket, const std::string &bytes);

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Run a command to completion (argv[0] is a path), capturing its output;
// with netns (a path such as /run/netns/NAME), inside that network namespace.
RunResult run(const std::vector<std::string> &argv, const std::string &netns = "");

// Start argv (argv[0] a path) in the network namespace netns, stdout and
// stderr to out_fd. 0 and *pid_out set, or an errno. The caller reaps it.
int spawn_in_netns(const std::string &netns, char *const argv[], int out_fd, pid_t *pid_out);

// What differs between the daemons of a multi-host test (tests/cluster/);
// the defaults are the single-host daemon every other e2e test runs.
struct DaemonOptions {
  std::string node_name = "e2e-node";
  // The store's tables ([store], [plugin.store-...]); empty: store-local.
  std::string store_config;
  // Start the daemon inside this network namespace (a path, such as
  // /run/netns/NAME); empty: the test's own. Only the network namespace
  // changes: mounts stay shared, so the test sees and removes them.
  std::string netns;
  // The scratch dir is <dir_prefix><pid>-<n>.
  std::string dir_prefix = "/tmp/flotilla-e2e-";
};

class Daemon {
 public:
  // A scratch dir /tmp/flotilla-e2e-<pid>-<n>/ with data/, the socket and
  // the log. extra_config is appended to the generated flotillad.toml.
  explicit Daemon(std::string extra_config = "", DaemonOptions options = {});
  ~Daemon();  // SIGKILL (by pid) if still running, then remove the dir
  Daemon(const Daemon &) = delete;
  Daemon &operator=(const Daemon &) = delete;

  const std::string &dir() const { return dir_; }
  const DaemonOptions &options() const { return options_; }
  std::string socket() const { return dir_ + "/api.sock"; }
  std::string config_path() const { return dir_ + "/flotillad.toml"; }
  std::string log() const;  // everything the daemon printed so far

  // Rewrite the config file (for reload tests).
  void write_config(const std::string &extra_config);

  // Start and wait until /v1/health answers (up to 20 s). false if the
  // process exited or never answered; log() says why. wait = false returns
  // once the process is started.
  bool start(bool wait = true);
  void signal(int signo);
  // SIGKILL (by pid) and reap: the daemon is gone, its containers are not.
  void kill_now();
  // Forget the process and keep the dir: the destructor leaves both (for
  // tools that start a cluster and exit, tests/cluster/cluster_demo).
  void detach() {
    pid_ = -1;
    keep_dir_ = true;
  }
  // Wait for exit (up to timeout_ms); returns the exit code, 128+signal
  // when killed, or -1 on timeout.
  int wait_exit(int timeout_ms = 20000);
  bool running() const { return pid_ > 0; }
  int pid() const { return pid_; }

  HttpReply get(const std::string &path) const { return http(socket(), "GET", path); }

 private:
  DaemonOptions options_;
  std::string dir_;
  int pid_ = -1;
  bool keep_dir_ = false;
};

std::string build_dir();
std::string source_dir();

}  // namespace flotilla::e2e
