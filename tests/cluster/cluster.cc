#include "cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "container_daemon.h"

namespace flotilla::cluster {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char *kIp = "/usr/sbin/ip";
constexpr const char *kEtcd = "/usr/bin/etcd";
constexpr const char *kEtcdctl = "/usr/bin/etcdctl";

std::atomic<int> g_clusters{0};

std::string tail(const std::string &s, size_t n) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

// The start time of a process (field 22 of /proc/PID/stat), "" if gone: a
// pid from a manifest is only killed while it is still the same process.
std::string start_time(int pid) {
  std::string stat = e2e::read_text("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return "";
  std::istringstream in(stat.substr(paren + 2));
  std::string f;
  for (int i = 3; i <= 22 && in >> f; ++i) {
  }
  return f;
}

RunResult ip_cmd(const std::vector<std::string> &args) {
  std::vector<std::string> argv{kIp};
  argv.insert(argv.end(), args.begin(), args.end());
  return e2e::run(argv);
}

void must(const RunResult &r, const std::string &what) {
  if (r.exit_code != 0)
    throw std::runtime_error(what + " failed (exit " + std::to_string(r.exit_code) +
                             "): " + r.output);
}

// An address as the host part of a URL: [fd88::2] for IPv6.
std::string url_host(const std::string &ip) {
  return ip.find(':') == std::string::npos ? ip : "[" + ip + "]";
}

// The underlay's addresses: the last group in decimal digits, as the IPv4
// ones, so that host i is 10.88.0.11 or fd88::11.
std::string underlay_ip(bool v6, int last) {
  return (v6 ? "fd88::" : "10.88.0.") + std::to_string(last);
}
std::string underlay_prefix(bool v6) {
  return v6 ? "/64" : "/24";
}

[[maybe_unused]] std::string toml_list(const std::vector<std::string> &items) {
  std::string s = "[";
  for (size_t i = 0; i < items.size(); ++i) s += (i ? ", \"" : "\"") + items[i] + "\"";
  return s + "]";
}

}  // namespace

std::optional<std::chrono::milliseconds> wait_until(const std::function<bool()> &cond,
                                                    std::chrono::milliseconds deadline,
                                                    std::chrono::milliseconds poll) {
  auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    if (cond())
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - t0);
    if (std::chrono::steady_clock::now() - t0 >= deadline) return std::nullopt;
    std::this_thread::sleep_for(poll);
  }
}

// ---- etcd -------------------------------------------------------------------

std::string Etcd::ip(int i) const {
  return underlay_ip(cluster_->options().ipv6_underlay, 2 + i);
}

std::string Etcd::endpoint(int i) const {
  return "http://" + url_host(ip(i)) + ":2379";
}

std::vector<std::string> Etcd::endpoints() const {
  std::vector<std::string> out;
  for (int i = 0; i < members(); ++i) out.push_back(endpoint(i));
  return out;
}

std::string Etcd::log(int i) const {
  return e2e::read_text(cluster_->dir() + "/etcd-m" + std::to_string(i) + ".log");
}

bool Etcd::start(int i) {
  if (pids_[i] > 0) return true;
  std::string peers;
  for (int m = 0; m < members(); ++m)
    peers += (m ? "," : "") + ("m" + std::to_string(m)) + "=http://" + url_host(ip(m)) + ":2380";
  const std::string me = url_host(ip(i));
  std::vector<std::string> argv = {kEtcd,
                                   "--name=m" + std::to_string(i),
                                   "--data-dir=" + cluster_->etcd_dir_ + "/m" + std::to_string(i),
                                   "--listen-client-urls=http://" + me + ":2379",
                                   "--advertise-client-urls=http://" + me + ":2379",
                                   "--listen-peer-urls=http://" + me + ":2380",
                                   "--initial-advertise-peer-urls=http://" + me + ":2380",
                                   "--initial-cluster=" + peers,
                                   "--initial-cluster-token=" + cluster_->prefix(),
                                   "--initial-cluster-state=new",
                                   "--heartbeat-interval=100",
                                   "--election-timeout=1000",
                                   "--logger=zap",
                                   "--log-outputs=stderr"};
  std::vector<char *> args;
  for (auto &a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::string logpath = cluster_->dir() + "/etcd-m" + std::to_string(i) + ".log";
  int logfd = ::open(logpath.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  pid_t pid = -1;
  int rc = e2e::spawn_in_netns(cluster_->underlay_netns_path(), args.data(), logfd, &pid);
  ::close(logfd);
  if (rc != 0) return false;
  pids_[i] = pid;
  cluster_->record("pid", std::to_string(pid) + " " + start_time(pid));
  return true;
}

void Etcd::kill(int i) {
  if (pids_[i] <= 0) return;
  ::kill(pids_[i], SIGKILL);
  waitpid(pids_[i], nullptr, 0);
  pids_[i] = -1;
}

RunResult Etcd::ctl(const std::vector<std::string> &args) const {
  std::string eps;
  for (int i = 0; i < members(); ++i)
    if (pids_[i] > 0) eps += (eps.empty() ? "" : ",") + endpoint(i);
  std::vector<std::string> argv = {kEtcdctl, "--endpoints=" + eps, "--command-timeout=3s"};
  argv.insert(argv.end(), args.begin(), args.end());
  return e2e::run(argv, cluster_->underlay_netns_path());
}

std::vector<std::pair<std::string, std::string>> Etcd::ctl_watch_history(
    const std::string &prefix) const {
  std::string eps;
  for (int i = 0; i < members(); ++i)
    if (pids_[i] > 0) eps += (eps.empty() ? "" : ",") + endpoint(i);
  // A watch does not end by itself: timeout stops it once the history is out.
  RunResult r = e2e::run({"/usr/bin/timeout", "3", kEtcdctl, "--endpoints=" + eps, "watch",
                          "--rev=1", "--prefix", prefix},
                         cluster_->underlay_netns_path());
  // Simple output: "PUT" or "DELETE", the key, the value, one per line
  // (values here are one-line JSON).
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(r.output);
  std::string type, key, value;
  while (std::getline(in, type)) {
    if (type == "PUT" && std::getline(in, key) && std::getline(in, value))
      out.emplace_back(key, value);
    else if (type == "DELETE")
      std::getline(in, key);
  }
  return out;
}

int64_t Etcd::revision() const {
  RunResult r = ctl({"get", "/flotilla/", "--prefix", "--keys-only", "--limit=1", "-w", "json"});
  json j = json::parse(r.output, nullptr, false);
  if (!j.is_object() || !j.contains("header")) return 0;
  return j["header"].value("revision", int64_t{0});
}

bool Etcd::compact() {
  int64_t rev = revision();
  return rev > 0 && ctl({"compact", std::to_string(rev), "--physical"}).exit_code == 0;
}

// ---- hosts ------------------------------------------------------------------

std::string Host::ip() const {
  return underlay_ip(cluster_->options().ipv6_underlay, 11 + index_);
}

bool Host::start() {
  if (daemon_->running()) return true;
  paused_ = false;
  bool ok = daemon_->start();
  if (daemon_->pid() > 0)
    cluster_->record("pid", std::to_string(daemon_->pid()) + " " + start_time(daemon_->pid()));
  return ok;
}

void Host::kill() {
  daemon_->kill_now();
  paused_ = false;
}

void Host::pause() {
  daemon_->signal(SIGSTOP);
  paused_ = true;
}

void Host::resume() {
  daemon_->signal(SIGCONT);
  paused_ = false;
}

void Host::cut_link() {
  must(ip_cmd(
           {"-n", cluster_->underlay_netns(), "link", "set", "h" + std::to_string(index_), "down"}),
       "cutting " + name_ + "'s link");
  link_cut_ = true;
}

void Host::restore_link() {
  must(
      ip_cmd({"-n", cluster_->underlay_netns(), "link", "set", "h" + std::to_string(index_), "up"}),
      "restoring " + name_ + "'s link");
  link_cut_ = false;
}

HttpReply Host::api(const std::string &method, const std::string &path,
                    const std::string &body) const {
  return e2e::http(socket(), method, path, body, body.empty() ? "" : "application/json");
}

json Host::get(const std::string &path) const {
  return json::parse(api("GET", path).body, nullptr, false);
}

RunResult Host::cli(std::vector<std::string> args) const {
  args.insert(args.begin(), {e2e::build_dir() + "/tools/flotilla/flotilla", "--socket", socket()});
  return e2e::run(args);
}

RunResult Host::run_job(const std::string &toml) const {
  static int n = 0;
  std::string file = dir() + "/job-" + std::to_string(n++) + ".toml";
  std::ofstream(file, std::ios::trunc) << toml;
  return cli({"job", "run", "--detach", file});
}

RunResult Host::exec(const std::vector<std::string> &argv) const {
  return e2e::run(argv, netns_path());
}

// ---- the cluster ------------------------------------------------------------

std::string Cluster::cannot_run(const ClusterOptions &o) {
  if (geteuid() != 0) return "needs root (network namespaces, veths, cgroups)";
  if (access(kIp, X_OK) != 0) return std::string(kIp) + " (iproute2) is not installed";
  if (o.etcd_members > 0) {
    if (access(kEtcd, X_OK) != 0 || access(kEtcdctl, X_OK) != 0)
      return "etcd is not installed (etcd-server, etcd-client)";
#ifdef STORE_ETCD_PATH
    if (!o.store_config && access(STORE_ETCD_PATH, R_OK) != 0)
      return "the store-etcd plugin is not built (" STORE_ETCD_PATH ")";
#else
    if (!o.store_config) return "the store-etcd plugin is not part of this build";
#endif
  }
  if (o.containers) {
#if defined(RUNTIME_RUNC_PATH) && defined(SCHEDULER_BINPACK_PATH)
    if (access("/usr/sbin/runc", X_OK) != 0) return "runc is not installed (/usr/sbin/runc)";
    if (access("/bin/busybox", X_OK) != 0)
      return "busybox-static is not installed (the test image is built from /bin/busybox)";
#else
    return "runtime-runc or scheduler-binpack is not part of this build";
#endif
  }
  return "";
}

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  const int n = g_clusters++;
  prefix_ = "flc" + std::to_string(getpid()) + "x" + std::to_string(n);
  dir_ = options_.dir_prefix + std::to_string(getpid()) + "-" + std::to_string(n);
  etcd_dir_ = (fs::is_directory("/dev/shm") ? "/dev/shm/" : dir_ + "/") + prefix_ + "-etcd";
  etcd_.cluster_ = this;
  etcd_.pids_.assign(options_.etcd_members, -1);
  try {
    build();
  } catch (...) {
    teardown();
    throw;
  }
}

Cluster::~Cluster() {
  if (options_.keep) {
    for (auto &h : hosts_) h->daemon_->detach();
    return;
  }
  teardown();
}

void Cluster::record(const std::string &kind, const std::string &what) {
  std::ofstream(dir_ + "/manifest", std::ios::app) << kind << " " << what << "\n";
}

void Cluster::record_pid(int pid) {
  if (pid > 0) record("pid", std::to_string(pid) + " " + start_time(pid));
}

Host *Cluster::host_named(const std::string &name) {
  for (auto &h : hosts_)
    if (h->name() == name) return h.get();
  return nullptr;
}

Host &Cluster::any_live_host() {
  for (auto &h : hosts_)
    if (h->running() && !h->paused() && !h->link_cut()) return *h;
  throw std::runtime_error("no host of the cluster is running with its link up");
}

std::string Cluster::leader() const {
  if (etcd_.members() == 0) return "";
  RunResult r = etcd_.ctl({"get", "/flotilla/leader/scheduler", "--print-value-only"});
  std::string v = r.exit_code == 0 ? r.output : "";
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.pop_back();
  return v;
}

std::string Cluster::logs() const {
  std::string out;
  for (const auto &h : hosts_) out += "---- " + h->name() + " ----\n" + tail(h->log(), 4000) + "\n";
  for (int i = 0; i < etcd_.members(); ++i)
    out += "---- etcd m" + std::to_string(i) + " ----\n" + tail(etcd_.log(i), 1500) + "\n";
  return out;
}

std::string Cluster::default_store_config(const Host &) const {
  if (etcd_.members() == 0) return "";
#ifdef STORE_ETCD_PATH
  return "[store]\nplugin = \"store-etcd\"\n\n[plugin.store-etcd]\npath = \"" STORE_ETCD_PATH
         "\"\nendpoints = " +
         toml_list(etcd_.endpoints()) +
         // Short, for tests: a request fails over (or reports the store
         // unreachable) within seconds, not etcd's defaults.
         "\ndial_timeout_ms = 1000\nrequest_timeout_ms = " +
         std::to_string(options_.store_request_timeout_ms) + "\n";
#else
  return "";
#endif
}

std::string Cluster::host_config(const Host &h) const {
  std::string cfg;
  if (options_.lease_ttl_s > 0) {
    cfg += "[cluster]\nlease_ttl = \"" + std::to_string(options_.lease_ttl_s) + "s\"\n";
    if (options_.leader_lease_ttl_s > 0)
      cfg += "leader_lease_ttl = \"" + std::to_string(options_.leader_lease_ttl_s) + "s\"\n";
    cfg += "\n";
  }
#if defined(RUNTIME_RUNC_PATH) && defined(SCHEDULER_BINPACK_PATH)
  if (options_.containers)
    cfg += e2e::container_plugins_config(*h.daemon_, h.cgroup_parent()) + "\n";
#endif
  cfg += options_.extra_config;
  if (options_.host_config) cfg += "\n" + options_.host_config(*this, h);
  return cfg;
}

void Cluster::build() {
  fs::create_directories(dir_);
  record("dir", dir_);
  record("dir", etcd_dir_);
  fs::create_directories(etcd_dir_);

  // The underlay: a namespace of its own holding the bridge, so that the
  // test's own network namespace is never touched.
  const std::string ul = underlay_netns();
  record("netns", ul);
  must(ip_cmd({"netns", "add", ul}), "ip netns add " + ul);
  must(ip_cmd({"-n", ul, "link", "set", "lo", "up"}), "underlay lo up");
  must(ip_cmd({"-n", ul, "link", "add", "br0", "type", "bridge"}), "underlay bridge");
  // IPv6 addresses skip DAD: the underlay is ours, and a daemon started
  // within DAD's second would find its address still tentative.
  const bool v6 = options_.ipv6_underlay;
  auto addr_args = [&](const std::string &ip, const std::string &dev) {
    std::vector<std::string> a{"addr", "add", ip + underlay_prefix(v6), "dev", dev};
    if (v6) a.push_back("nodad");
    return a;
  };
  for (int i = 0; i < std::max(1, options_.etcd_members); ++i) {
    auto a = addr_args(etcd_.ip(i), "br0");
    a.insert(a.begin(), {"-n", ul});
    must(ip_cmd(a), "underlay address");
  }
  must(ip_cmd({"-n", ul, "link", "set", "br0", "up"}), "underlay bridge up");

  for (int i = 0; i < options_.hosts; ++i) {
    auto h = std::make_unique<Host>();
    h->cluster_ = this;
    h->index_ = i;
    h->name_ = "h" + std::to_string(i);
    h->netns_ = prefix_ + "-h" + std::to_string(i);
    h->cgroup_parent_ = "flotilla-" + prefix_ + "-h" + std::to_string(i);
    h->wg_interface_ = "wg" + std::to_string(i) + "-" + prefix_.substr(3, 8);
    if (h->wg_interface_.size() > 15) h->wg_interface_.resize(15);
    record("netns", h->netns_);
    must(ip_cmd({"netns", "add", h->netns_}), "ip netns add " + h->netns_);
    // Both ends are made in their namespaces: no name in ours, ever.
    const std::string peer = "h" + std::to_string(i);
    must(ip_cmd({"link", "add", "eth0", "netns", h->netns_, "type", "veth", "peer", "name", peer,
                 "netns", ul}),
         "veth for " + h->name_);
    must(ip_cmd({"-n", ul, "link", "set", peer, "master", "br0", "up"}), "bridge port " + peer);
    auto a = addr_args(h->ip(), "eth0");
    a.insert(a.begin(), {"-n", h->netns_});
    must(ip_cmd(a), "host address");
    must(ip_cmd({"-n", h->netns_, "link", "set", "eth0", "up"}), "host eth0 up");
    must(ip_cmd({"-n", h->netns_, "link", "set", "lo", "up"}), "host lo up");
    if (options_.prepare_host) options_.prepare_host(*this, *h);
    hosts_.push_back(std::move(h));
  }

  // etcd: every member first (a new cluster needs a quorum to answer), then
  // wait for all of them.
  for (int i = 0; i < etcd_.members(); ++i)
    if (!etcd_.start(i)) throw std::runtime_error("cannot start etcd member m" + std::to_string(i));
  for (int i = 0; i < etcd_.members(); ++i) {
    auto ok = wait_until(
        [&] {
          std::vector<std::string> argv = {kEtcdctl, "--endpoints=" + etcd_.endpoint(i),
                                           "--command-timeout=1s", "endpoint", "health"};
          return e2e::run(argv, underlay_netns_path()).exit_code == 0;
        },
        std::chrono::seconds(30), std::chrono::milliseconds(100));
    if (!ok)
      throw std::runtime_error("etcd member m" + std::to_string(i) + " never became healthy:\n" +
                               tail(etcd_.log(i), 4000));
  }

  for (auto &h : hosts_) {
    e2e::DaemonOptions o;
    o.node_name = h->name_;
    o.netns = h->netns_path();
    o.dir_prefix = dir_ + "/" + h->name_ + "-";
    o.store_config =
        options_.store_config ? options_.store_config(*this, *h) : default_store_config(*h);
    h->daemon_ = std::make_unique<e2e::Daemon>("", o);
    record("daemon", h->daemon_->dir() + " " + h->cgroup_parent_);
    h->daemon_->write_config(host_config(*h));
  }
  // Started together, then waited for: a cluster's start-up is one TTL's
  // worth of lease and election, not N.
  for (auto &h : hosts_) {
    if (!h->daemon_->start(false))
      throw std::runtime_error("cannot start flotillad for " + h->name_);
    record("pid", std::to_string(h->daemon_->pid()) + " " + start_time(h->daemon_->pid()));
  }
  for (auto &h : hosts_) {
    auto ok = wait_until([&] { return h->api("GET", "/v1/health").status == 200; },
                         std::chrono::seconds(20));
    if (!ok)
      throw std::runtime_error("flotillad of " + h->name_ + " never answered:\n" +
                               tail(h->log(), 6000));
  }

  if (options_.containers) {
    std::string image = dir_ + "/busybox-oci";
    must(e2e::run({e2e::source_dir() + "/tools/mkimage-busybox", image}), "mkimage-busybox");
    for (auto &h : hosts_)
      must(h->cli({"image", "import", image, "--tag", "busybox:latest"}),
           "image import on " + h->name_);
  }
}

void Cluster::teardown() {
  // Gently first: every daemon awake and connected, the jobs purged so that
  // each node stops its containers, then SIGTERM. Whatever is left after
  // that goes by the manifest.
  for (auto &h : hosts_) {
    if (!h->daemon_) continue;
    if (h->paused_) h->resume();
    if (h->link_cut_) {
      ip_cmd({"-n", underlay_netns(), "link", "set", "h" + std::to_string(h->index_), "up"});
      h->link_cut_ = false;
    }
  }
  bool store_up = true;
  for (int i = 0; i < etcd_.members(); ++i) store_up = store_up && etcd_.running(i);
  if (store_up) {
    for (auto &h : hosts_) {
      if (!h->daemon_ || !h->running()) continue;
      for (const auto &name : e2e::job_names(*h->daemon_))
        h->api("DELETE", "/v1/jobs/" + name + "?purge=true");
      if (etcd_.members() > 0) break;  // one store: once is enough
    }
    wait_until(
        [&] {
          for (auto &h : hosts_)
            if (h->daemon_ && h->running() && !e2e::containers_gone(*h->daemon_)) return false;
          return true;
        },
        std::chrono::seconds(10), std::chrono::milliseconds(100));
  }
  for (auto &h : hosts_)
    if (h->daemon_ && h->running()) h->daemon_->signal(store_up ? SIGTERM : SIGKILL);
  for (auto &h : hosts_)
    if (h->daemon_ && h->running() && h->daemon_->wait_exit(5000) < 0) h->daemon_->kill_now();
  for (int i = 0; i < etcd_.members(); ++i) etcd_.kill(i);
  remove(dir_);
}

void Cluster::remove(const std::string &dir) {
  std::istringstream manifest(e2e::read_text(dir + "/manifest"));
  std::vector<std::pair<int, std::string>> pids;
  std::vector<std::pair<std::string, std::string>> daemons;
  std::vector<std::string> netns, dirs;
  std::string line;
  while (std::getline(manifest, line)) {
    std::istringstream in(line);
    std::string kind, a, b;
    in >> kind >> a >> b;
    if (kind == "pid") pids.emplace_back(std::atoi(a.c_str()), b);
    if (kind == "daemon") daemons.emplace_back(a, b);
    if (kind == "netns") netns.push_back(a);
    if (kind == "dir") dirs.push_back(a);
  }
  for (const auto &[pid, started] : pids) {
    if (pid <= 0 || started.empty() || start_time(pid) != started) continue;
    ::kill(pid, SIGCONT);
    ::kill(pid, SIGKILL);
  }
  for (const auto &[pid, started] : pids) {
    if (pid <= 0) continue;
    waitpid(pid, nullptr, WNOHANG);  // ours: reaped; otherwise wait for it below
    wait_until([&] { return start_time(pid) != started || waitpid(pid, nullptr, WNOHANG) == pid; },
               std::chrono::seconds(5), std::chrono::milliseconds(20));
  }
  for (const auto &[ddir, cgroup] : daemons) e2e::remove_leftovers(ddir, cgroup);
  for (auto it = netns.rbegin(); it != netns.rend(); ++it) ip_cmd({"netns", "delete", *it});
  std::error_code ec;
  for (const auto &d : dirs) fs::remove_all(d, ec);
  fs::remove_all(dir, ec);
}

void Cluster::remove_stale(const std::string &dir_prefix) {
  fs::path base = fs::path(dir_prefix).parent_path();
  std::string stem = fs::path(dir_prefix).filename().string();
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(base, ec)) {
    std::string name = e.path().filename().string();
    if (name.compare(0, stem.size(), stem) != 0) continue;
    int pid = std::atoi(name.c_str() + stem.size());
    if (pid <= 0 || pid == getpid() || fs::exists("/proc/" + std::to_string(pid))) continue;
    if (fs::exists(e.path() / "manifest")) remove(e.path().string());
  }
}

// ---- the fixture ------------------------------------------------------------

void ClusterTest::SetUp() {
  ClusterOptions o = options();
  std::string why = Cluster::cannot_run(o);
  if (!why.empty()) GTEST_SKIP() << "SKIPPED: " << why;
  Cluster::remove_stale(o.dir_prefix);
  try {
    cluster_ = std::make_unique<Cluster>(std::move(o));
  } catch (const std::exception &e) {
    FAIL() << "cannot build the cluster: " << e.what();
  }
}

void ClusterTest::TearDown() {
  if (!cluster_) return;
  if (HasFailure()) std::cerr << "cluster logs at the failure:\n" << cluster_->logs();
  cluster_.reset();
}

}  // namespace flotilla::cluster
