#include "daemon_harness.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char **environ;

namespace flotilla::e2e {

std::string build_dir() {
  return FLOTILLA_TEST_BUILD_DIR;
}
std::string source_dir() {
  return FLOTILLA_TEST_SOURCE_DIR;
}

namespace {

int connect_unix(const std::string &path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    ::close(fd);
    return -1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  timeval tv{30, 0};  // a guard against a hung daemon, not a timing check
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string decode_chunked(const std::string &body) {
  std::string out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) break;
    size_t len = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
    if (len == 0) break;
    out += body.substr(eol + 2, len);
    pos = eol + 2 + len + 2;
  }
  return out;
}

std::atomic<int> g_counter{0};

}  // namespace

std::string raw_exchange(const std::string &socket, const std::string &bytes) {
  int fd = connect_unix(socket);
  if (fd < 0) return "";
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += n;
  }
  ::shutdown(fd, SHUT_WR);
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, n);
  ::close(fd);
  return out;
}

HttpReply http(const std::string &socket, const std::string &method, const std::string &path,
               const std::string &body, const std::string &content_type) {
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: flotilla\r\nConnection: close\r\n";
  if (!content_type.empty()) req += "Content-Type: " + content_type + "\r\n";
  if (!body.empty() || method == "POST" || method == "PUT")
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  std::string resp = raw_exchange(socket, req);
  HttpReply r;
  if (resp.compare(0, 9, "HTTP/1.1 ") != 0 && resp.compare(0, 9, "HTTP/1.0 ") != 0) return r;
  r.status = std::atoi(resp.c_str() + 9);
  size_t hdr_end = resp.find("\r\n\r\n");
  if (hdr_end == std::string::npos) return r;
  std::string headers = resp.substr(0, hdr_end);
  r.body = resp.substr(hdr_end + 4);
  std::string lower;
  for (char c : headers) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("transfer-encoding: chunked") != std::string::npos)
    r.body = decode_chunked(r.body);
  return r;
}

// Into a network namespace: fork, setns, exec. Between fork and exec the
// child makes only async-signal-safe calls (the test may have threads).
int spawn_in_netns(const std::string &netns, char *const argv[], int out_fd, pid_t *pid_out) {
  int ns = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC);
  if (ns < 0) return errno;
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(ns);
    return e;
  }
  if (pid == 0) {
    if (::setns(ns, CLONE_NEWNET) != 0) _exit(126);
    ::dup2(out_fd, 1);
    ::dup2(out_fd, 2);
    ::execvp(argv[0], argv);
    _exit(127);
  }
  ::close(ns);
  *pid_out = pid;
  return 0;
}

RunResult run(const std::vector<std::string> &argv, const std::string &netns) {
  RunResult r;
  char tmpl[] = "/tmp/flotilla-e2e-out-XXXXXX";
  int out = mkstemp(tmpl);
  if (out < 0) return r;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_adddup2(&fa, out, 2);
  std::vector<char *> args;
  for (const auto &a : argv) args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int rc = netns.empty() ? posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ)
                         : spawn_in_netns(netns, args.data(), out, &pid);
  if (rc == 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  posix_spawn_file_actions_destroy(&fa);
  ::close(out);
  std::ifstream in(tmpl);
  std::stringstream ss;
  ss << in.rdbuf();
  r.output = ss.str();
  ::unlink(tmpl);
  return r;
}

Daemon::Daemon(std::string extra_config, DaemonOptions options) : options_(std::move(options)) {
  dir_ = options_.dir_prefix + std::to_string(getpid()) + "-" + std::to_string(g_counter++);
  std::filesystem::remove_all(dir_);
  std::filesystem::create_directories(dir_ + "/data");
  write_config(extra_config);
}

void Daemon::write_config(const std::string &extra_config) {
  std::ofstream f(config_path(), std::ios::trunc);
  f << "[node]\nname = \"" << options_.node_name << "\"\ndata_dir = \"" << dir_ << "/data\"\n\n"
    << "[api]\nsocket = \"" << socket() << "\"\n\n"
    << "[log]\nlevel = \"debug\"\n\n";
  if (options_.store_config.empty())
    f << "[plugin.store-local]\npath = \"" << STORE_LOCAL_PATH << "\"\n\n";
  else
    f << options_.store_config << "\n";
  f << "[plugin.hello]\npath = \"" << HELLO_C99_PATH << "\"\ngreeting = \"Ahoy\"\n\n"
    << extra_config << "\n";
}

Daemon::~Daemon() {
  if (keep_dir_) return;
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string Daemon::log() const {
  std::ifstream in(dir_ + "/flotillad.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Daemon::start(bool wait) {
  std::string bin = build_dir() + "/core/flotillad";
  std::string logpath = dir_ + "/flotillad.log";
  int logfd = ::open(logpath.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  std::string cfg = config_path();
  char *args[] = {const_cast<char *>(bin.c_str()), const_cast<char *>("--config"),
                  const_cast<char *>(cfg.c_str()), nullptr};
  pid_t pid;
  int rc;
  if (options_.netns.empty()) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, logfd, 1);
    posix_spawn_file_actions_adddup2(&fa, logfd, 2);
    rc = posix_spawn(&pid, bin.c_str(), &fa, nullptr, args, environ);
    posix_spawn_file_actions_destroy(&fa);
  } else {
    rc = spawn_in_netns(options_.netns, args, logfd, &pid);
  }
  ::close(logfd);
  if (rc != 0) return false;
  pid_ = pid;
  if (!wait) return true;
  for (int i = 0; i < 400; ++i) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    if (http(socket(), "GET", "/v1/health").status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void Daemon::signal(int signo) {
  if (pid_ > 0) ::kill(pid_, signo);
}

void Daemon::kill_now() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

int Daemon::wait_exit(int timeout_ms) {
  if (pid_ <= 0) return -1;
  for (int waited = 0; waited <= timeout_ms; waited += 20) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

}  // namespace flotilla::e2e
