#include "mesh_device.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "wg_genl.h"
#include "wg_uapi.h"

namespace flotilla::overlay {

namespace {

std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string pid_file(const std::string &dir) {
  return dir + "/wireguard-go.pid";
}

// Whether pid is a process, and not a zombie.
bool alive(int pid) {
  if (pid <= 0) return false;
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

// Whether pid is a live wireguard-go for ifname.
bool is_wireguard_go(int pid, const std::string &ifname) {
  if (!alive(pid)) return false;
  std::string cmd = read_file("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> argv;
  std::string cur;
  for (char c : cmd) {
    if (c == '\0') {
      argv.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (argv.empty() || argv[0].find("wireguard-go") == std::string::npos) return false;
  return std::find(argv.begin(), argv.end(), ifname) != argv.end();
}

// wireguard-go -f ifname, reparented away from the daemon (two forks) so
// that it outlives it and is never its zombie; its output goes to
// state_dir/wireguard-go.log. Returns its pid.
//
// It leads a process group of its own but stays in the daemon's session.
// The group keeps the signals meant for the daemon's group from it (^C or
// ^\ at a terminal flotillad runs in the foreground of, a shell's job
// control, kill -- -<pgid>). A session of its own (setsid) would also be a
// scheduling autogroup of its own (sched_autogroup_enabled = 1): it then
// competed with the rest of the machine as one group and the mesh ran at
// 0.41-0.79x a bare wireguard-go's throughput.
//
// The daemon stopping does not stop it: at SIGTERM/SIGINT flotillad stops
// its plugins (deinit leaves wireguard-go alone) and exits; it never
// signals its process group. The kernel sends SIGHUP at a process's exit
// only (a) when the process is a session leader with a controlling
// terminal: to that terminal's foreground group, never a background group
// such as this one (tried on a pty: a process left in the leader's group
// dies with it, one in a group of its own lives on), and under systemd
// flotillad has no controlling terminal at all; or (b) with SIGCONT to a
// group the exit orphans if it holds a stopped process: this group is
// orphaned from the moment the middle process exits (its parent is then
// init, outside the session) and wireguard-go is never stopped. A
// terminal's hangup signals the session leader (the shell), which passes
// SIGHUP on to its own jobs only. What does kill it is systemd killing
// the unit's cgroup: KillMode=process (README.md).
int start_wireguard_go(const std::string &binary, const std::string &ifname,
                       const std::string &state_dir) {
  const std::string log = state_dir + "/wireguard-go.log";
  int logfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (logfd < 0) throw WgError("cannot open " + log + ": " + std::strerror(errno));
  int nullfd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    ::close(logfd);
    if (nullfd >= 0) ::close(nullfd);
    throw WgError(std::string("pipe: ") + std::strerror(errno));
  }
  // Everything exec needs is made before fork: the child only calls
  // async-signal-safe functions.
  std::vector<std::string> args = {binary, "-f", ifname};
  std::vector<char *> argv;
  for (auto &a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const char *envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LOG_LEVEL=error", nullptr};
  pid_t mid = ::fork();
  if (mid < 0) {
    int e = errno;
    ::close(logfd);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    if (nullfd >= 0) ::close(nullfd);
    throw WgError(std::string("fork: ") + std::strerror(e));
  }
  if (mid == 0) {
    pid_t grand = ::fork();
    if (grand == 0) {
      ::setpgid(0, 0);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      for (int s : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD}) ::signal(s, SIG_DFL);
      ::dup2(nullfd >= 0 ? nullfd : 0, 0);
      ::dup2(logfd, 1);
      ::dup2(logfd, 2);
      ::execve(argv[0], argv.data(), const_cast<char **>(envp));
      ::_exit(127);
    }
    int32_t g = grand;
    (void)!::write(pipefd[1], &g, sizeof g);
    ::_exit(grand < 0 ? 1 : 0);
  }
  ::close(pipefd[1]);
  ::close(logfd);
  if (nullfd >= 0) ::close(nullfd);
  int32_t grand = -1;
  ssize_t n = ::read(pipefd[0], &grand, sizeof grand);
  // The grandchild holds the pipe until its exec closes it: once it reads
  // as closed, /proc/<pid>/cmdline is wireguard-go's (or it died).
  char drain;
  while (n == sizeof grand && ::read(pipefd[0], &drain, 1) > 0) {
  }
  ::close(pipefd[0]);
  ::waitpid(mid, nullptr, 0);
  if (n != sizeof grand || grand <= 0) throw WgError("cannot start " + binary);
  const std::string tmp = pid_file(state_dir) + ".tmp";
  std::ofstream(tmp, std::ios::trunc) << grand << "\n";
  std::filesystem::rename(tmp, pid_file(state_dir));
  return grand;
}

// The device's own settings, then peers, through one backend.
struct Backend {
  virtual ~Backend() = default;
  virtual WgDevice get() = 0;
  virtual void set(const WgDevice &d, const std::vector<PeerChange> &c) = 0;
};

struct UserspaceBackend : Backend {
  UapiWg wg;
  std::string ifname;
  explicit UserspaceBackend(std::string n) : ifname(std::move(n)) {}
  WgDevice get() override { return wg.get(ifname); }
  void set(const WgDevice &d, const std::vector<PeerChange> &c) override { wg.set(ifname, d, c); }
};

struct KernelBackend : Backend {
  KernelWg wg;
  std::string ifname;
  explicit KernelBackend(std::string n) : ifname(std::move(n)) {}
  WgDevice get() override { return wg.get(ifname); }
  void set(const WgDevice &d, const std::vector<PeerChange> &c) override { wg.set(ifname, d, c); }
};

std::unique_ptr<Backend> open_backend(const std::string &backend, const std::string &ifname) {
  if (backend == "kernel") return std::make_unique<KernelBackend>(ifname);
  return std::make_unique<UserspaceBackend>(ifname);
}

}  // namespace

int wireguard_go_pid(const std::string &state_dir, const std::string &ifname) {
  int pid = std::atoi(read_file(pid_file(state_dir)).c_str());
  return is_wireguard_go(pid, ifname) ? pid : 0;
}

MeshOutcome converge_mesh(const MeshSpec &spec, netlink::Socket &sock) {
  MeshOutcome out;
  std::filesystem::create_directories(spec.state_dir);
  if (spec.backend == "userspace") {
    UapiWg wg;
    if (wg.running(spec.ifname)) {
      out.reattached = true;
      out.pid = wireguard_go_pid(spec.state_dir, spec.ifname);
    } else {
      // A wireguard-go that died leaves its socket behind (and a device
      // no process serves, if it hung): both go before a new one starts.
      int old = wireguard_go_pid(spec.state_dir, spec.ifname);
      if (old > 0) ::kill(old, SIGKILL);
      ::unlink(wg.socket_path(spec.ifname).c_str());
      sock.delete_link(spec.ifname);
      out.pid = start_wireguard_go(spec.wireguard_go, spec.ifname, spec.state_dir);
      out.started = true;
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (!wg.running(spec.ifname)) {
        // (Only alive: until its exec, the child's command line is ours.)
        if (std::chrono::steady_clock::now() > deadline || !alive(out.pid))
          throw WgError("wireguard-go (pid " + std::to_string(out.pid) + ") never opened " +
                        wg.socket_path(spec.ifname) + "; see " + spec.state_dir +
                        "/wireguard-go.log");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  } else if (!sock.link(spec.ifname)) {
    sock.add_link(spec.ifname, "wireguard", spec.mtu);
    out.started = true;
  }
  auto be = open_backend(spec.backend, spec.ifname);
  WgDevice have = be->get();
  if (!have.private_key || *have.private_key != spec.private_key ||
      have.listen_port != spec.listen_port) {
    WgDevice d;
    d.private_key = spec.private_key;
    d.listen_port = spec.listen_port;
    be->set(d, {});
    out.key_set = true;
  }

  auto link = sock.link(spec.ifname);
  if (!link) throw WgError("the WireGuard device " + spec.ifname + " is gone");
  if (link->mtu != spec.mtu) sock.set_mtu(spec.ifname, spec.mtu);
  for (const auto &a : spec.addresses) sock.add_address(spec.ifname, a);
  if (!link->up) sock.set_up(spec.ifname);

  auto changes = diff_peers(spec.peers, have.peers);
  for (const auto &c : changes) {
    if (c.kind == PeerChange::Kind::add) out.added++;
    if (c.kind == PeerChange::Kind::update) out.updated++;
    if (c.kind == PeerChange::Kind::remove) out.removed++;
  }
  // A peer added anew gets a handshake at once: turning persistent
  // keepalive on sends a keepalive immediately (both backends), and with no
  // session yet that is a handshake initiation. Without it a peer that
  // still holds a session with this node from before (a node back after
  // its daemon died, its wireguard-go kept running) would keep sending on
  // keys this node no longer has until its own 15 s rekey timeout. The
  // keepalive is then set back to what the peer should have.
  std::vector<PeerChange> settle;
  for (auto &c : changes)
    if (c.kind == PeerChange::Kind::add && c.peer.keepalive == 0 && !c.peer.endpoint.empty()) {
      PeerChange back;
      back.kind = PeerChange::Kind::update;
      back.peer = c.peer;
      back.set_keepalive = true;
      settle.push_back(back);
      c.peer.keepalive = 25;
      c.set_keepalive = true;
    }
  if (!changes.empty()) be->set(WgDevice{}, changes);
  if (!settle.empty()) be->set(WgDevice{}, settle);

  // Routes: the device's own, within the cluster, against the wanted ones.
  std::set<std::string> want(spec.routes.begin(), spec.routes.end()), have_routes;
  for (const auto &r : sock.routes(spec.ifname)) {
    auto c = Cidr::parse(r.find('/') == std::string::npos
                             ? r + (r.find(':') == std::string::npos ? "/32" : "/128")
                             : r);
    if (!c) continue;
    bool ours = false;
    for (const auto &cl : spec.cluster)
      if (cl.contains(*c)) ours = true;
    if (ours) have_routes.insert(c->text());
  }
  for (const auto &r : want)
    if (!have_routes.count(r) && sock.add_route(r, "", spec.ifname)) out.routes_changed++;
  for (const auto &r : have_routes)
    if (!want.count(r) && sock.delete_route(r, spec.ifname)) out.routes_changed++;

  out.device = changes.empty() && !out.key_set ? have : be->get();
  return out;
}

WgDevice read_mesh_device(const std::string &backend, const std::string &ifname) {
  return open_backend(backend, ifname)->get();
}

std::vector<std::string> remove_mesh(const std::string &state_dir, const std::string &ifname,
                                     netlink::Socket &sock) {
  std::vector<std::string> out;
  // wireguard-go's device goes with it: noted before it is stopped.
  const bool had_device = sock.link(ifname).has_value();
  int pid = wireguard_go_pid(state_dir, ifname);
  if (pid > 0) {
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 100 && is_wireguard_go(pid, ifname); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (is_wireguard_go(pid, ifname)) ::kill(pid, SIGKILL);
    out.push_back("wireguard-go (pid " + std::to_string(pid) + ")");
  }
  std::filesystem::remove(pid_file(state_dir));
  if (sock.delete_link(ifname) || had_device) out.push_back("WireGuard device " + ifname);
  return out;
}

}  // namespace flotilla::overlay
