#include "etcd_fixture.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "loopback_port.h"

namespace flotilla::test {
namespace {

namespace fs = std::filesystem;

std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void run(const std::string &cmd) {
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("etcd fixture: failed: " + cmd);
}

}  // namespace

int free_port(const std::string &host) {
  uint16_t port =
      flotilla::testing::free_port_below_ephemeral(flotilla::testing::PortUse::tcp, host);
  if (port == 0) throw std::runtime_error("no port in 20000-32000 is free on " + host);
  return port;
}

std::string EtcdCluster::skip_reason(const std::string &etcd) {
  if (::access(etcd.c_str(), X_OK) != 0)
    return etcd + " is not installed (Debian package etcd-server)";
  return "";
}

EtcdCluster::EtcdCluster(EtcdOptions options) : options_(std::move(options)) {
  std::string tmpl = (fs::temp_directory_path() / "flotilla-etcd-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
  dir_ = tmpl;
  try {
    if (options_.tls) make_certs();
    const std::string token = "flotilla-" + fs::path(dir_).filename().string();
    for (int i = 0; i < options_.members; ++i) {
      Member m;
      m.name = "m" + std::to_string(i);
      m.host = i < static_cast<int>(options_.hosts.size()) ? options_.hosts[i] : "127.0.0.1";
      m.data_dir = dir_ + "/" + m.name;
      m.log_file = dir_ + "/" + m.name + ".log";
      m.client_port = free_port(m.host);
      m.peer_port = free_port(m.host);
      members_.push_back(m);
    }
    std::string initial;
    for (const auto &m : members_) {
      if (!initial.empty()) initial += ",";
      initial += m.name + "=http://" + m.host + ":" + std::to_string(m.peer_port);
    }
    for (int i = 0; i < size(); ++i) {
      Member &m = members_[i];
      const std::string client = client_url(i);
      const std::string peer = "http://" + m.host + ":" + std::to_string(m.peer_port);
      if (options_.wrap) m.argv = options_.wrap(i);
      std::vector<std::string> args = {options_.etcd,
                                       "--name",
                                       m.name,
                                       "--data-dir",
                                       m.data_dir,
                                       "--listen-client-urls",
                                       client,
                                       "--advertise-client-urls",
                                       client,
                                       "--listen-peer-urls",
                                       peer,
                                       "--initial-advertise-peer-urls",
                                       peer,
                                       "--initial-cluster",
                                       initial,
                                       "--initial-cluster-state",
                                       "new",
                                       "--initial-cluster-token",
                                       token,
                                       "--heartbeat-interval",
                                       std::to_string(options_.heartbeat_ms),
                                       "--election-timeout",
                                       std::to_string(options_.election_ms),
                                       "--logger",
                                       "zap",
                                       "--log-outputs",
                                       "stderr"};
      if (options_.tls)
        args.insert(args.end(),
                    {"--cert-file", dir_ + "/server.crt", "--key-file", dir_ + "/server.key",
                     "--trusted-ca-file", dir_ + "/ca.crt", "--client-cert-auth"});
      for (const auto &a : options_.extra_args) args.push_back(a);
      m.argv.insert(m.argv.end(), args.begin(), args.end());
      spawn(m);
    }
    for (auto &m : members_) wait_ready(m, 0);
  } catch (...) {
    for (int i = 0; i < size(); ++i) kill(i);
    std::error_code ec;
    fs::remove_all(dir_, ec);
    throw;
  }
}

EtcdCluster::~EtcdCluster() {
  for (int i = 0; i < size(); ++i) kill(i);
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void EtcdCluster::make_certs() {
  const std::string d = dir_;
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  run("cd " + d + " && openssl req -x509" + ec +
      " -keyout ca.key -out ca.crt -days 2 -subj /CN=flotilla-test-ca >/dev/null 2>&1");
  {
    std::ofstream ext(d + "/server.ext");
    ext << "subjectAltName=IP:127.0.0.1,DNS:localhost";
    for (const auto &h : options_.hosts) ext << ",IP:" << h;
    ext << "\nextendedKeyUsage=serverAuth,clientAuth\n";
    std::ofstream cext(d + "/client.ext");
    cext << "extendedKeyUsage=clientAuth\n";
  }
  for (const char *who : {"server", "client"}) {
    const std::string w = who;
    run("cd " + d + " && openssl req" + ec + " -keyout " + w + ".key -out " + w +
        ".csr -subj /CN=flotilla-" + w + " >/dev/null 2>&1 && openssl x509 -req -in " + w +
        ".csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile " + w + ".ext -out " + w +
        ".crt >/dev/null 2>&1");
  }
}

void EtcdCluster::spawn(Member &m) {
  std::vector<char *> argv;
  for (auto &a : m.argv) argv.push_back(a.data());
  argv.push_back(nullptr);
  int log = ::open(m.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) throw std::runtime_error("cannot open " + m.log_file);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log);
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the test has threads.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a crashed test leaves no etcd behind
    if (::getppid() != parent) ::_exit(127);
    ::dup2(log, 1);
    ::dup2(log, 2);
    int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, 0);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(log);
  m.pid = pid;
}

void EtcdCluster::wait_ready(Member &m, size_t log_offset) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::string log = read_file(m.log_file);
    if (log.size() > log_offset &&
        log.find("serving client traffic", log_offset) != std::string::npos)
      return;
    int status = 0;
    if (::waitpid(m.pid, &status, WNOHANG) == m.pid) {
      m.pid = -1;
      throw std::runtime_error("etcd member " + m.name + " exited at start:\n" +
                               log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("etcd member " + m.name + " did not become ready within 60 s");
}

std::string EtcdCluster::client_url(int i) const {
  const Member &m = members_.at(i);
  return std::string(options_.tls ? "https://" : "http://") + m.host + ":" +
         std::to_string(m.client_port);
}

std::vector<std::string> EtcdCluster::client_urls() const {
  std::vector<std::string> out;
  for (int i = 0; i < size(); ++i) out.push_back(client_url(i));
  return out;
}

pid_t EtcdCluster::pid(int i) const {
  return members_.at(i).pid;
}

bool EtcdCluster::running(int i) const {
  return members_.at(i).pid > 0;
}

void EtcdCluster::kill(int i) {
  Member &m = members_.at(i);
  if (m.pid <= 0) return;
  ::kill(m.pid, SIGKILL);
  int status = 0;
  ::waitpid(m.pid, &status, 0);
  m.pid = -1;
}

void EtcdCluster::pause(int i) {
  if (members_.at(i).pid > 0) ::kill(members_[i].pid, SIGSTOP);
}

void EtcdCluster::resume(int i) {
  if (members_.at(i).pid > 0) ::kill(members_[i].pid, SIGCONT);
}

void EtcdCluster::restart(int i) {
  Member &m = members_.at(i);
  if (m.pid > 0) return;
  const size_t offset = read_file(m.log_file).size();
  spawn(m);
  wait_ready(m, offset);
}

int EtcdCluster::leader() const {
  for (int i = 0; i < size(); ++i) {
    if (!running(i)) continue;
    std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + client_url(i);
    if (options_.tls)
      cmd += " --cacert=" + ca_file() + " --cert=" + client_cert_file() +
             " --key=" + client_key_file();
    cmd += " endpoint status -w json 2>/dev/null";
    FILE *p = ::popen(cmd.c_str(), "r");
    if (!p) continue;
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
    try {
      auto j = nlohmann::json::parse(out);
      uint64_t leader = j.at(0).at("Status").at("leader").get<uint64_t>();
      uint64_t self = j.at(0).at("Status").at("header").at("member_id").get<uint64_t>();
      if (leader == self) return i;
    } catch (...) {
    }
  }
  return -1;
}

std::string EtcdCluster::ca_file() const {
  return options_.tls ? dir_ + "/ca.crt" : "";
}
std::string EtcdCluster::client_cert_file() const {
  return options_.tls ? dir_ + "/client.crt" : "";
}
std::string EtcdCluster::client_key_file() const {
  return options_.tls ? dir_ + "/client.key" : "";
}

nlohmann::json EtcdCluster::plugin_config() const {
  nlohmann::json c = {{"endpoints", client_urls()}};
  if (options_.tls) {
    c["ca_file"] = ca_file();
    c["cert_file"] = client_cert_file();
    c["key_file"] = client_key_file();
  }
  return c;
}

std::string EtcdCluster::log_tail(int i, size_t bytes) const {
  std::string log = read_file(members_.at(i).log_file);
  return log.size() > bytes ? log.substr(log.size() - bytes) : log;
}

}  // namespace flotilla::test
