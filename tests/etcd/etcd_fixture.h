// A real etcd for tests: one member or several, started by the test from
// /usr/bin/etcd on loopback ports nobody else holds, with a private data
// directory; stopped (SIGKILL, by pid) and removed when the object goes.
// Used by the store tests and the multi-host harness. No googletest in
// here: failures throw std::runtime_error with the member's log tail.
#pragma once

#include <sys/types.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace flotilla::test {

struct EtcdOptions {
  int members = 1;
  // Client URLs are https:// and etcd asks for a client certificate signed
  // by the test's own CA; the CA, server and client certificates are made
  // with openssl in the cluster's directory.
  bool tls = false;
  // Listen address of each member (default 127.0.0.1 for all). The
  // multi-host harness puts members on addresses inside namespaces.
  std::vector<std::string> hosts;
  // Prepended to member i's command line, e.g. {"ip", "netns", "exec", "ns"}.
  std::function<std::vector<std::string>(int member)> wrap;
  std::string etcd = "/usr/bin/etcd";
  // Raft timing: short, so elections and failovers take well under a second.
  int heartbeat_ms = 20;
  int election_ms = 200;
  std::vector<std::string> extra_args;  // appended to every member's flags
};

class EtcdCluster {
 public:
  // Starts every member and waits until each one serves clients.
  explicit EtcdCluster(EtcdOptions options = {});
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster &) = delete;
  EtcdCluster &operator=(const EtcdCluster &) = delete;

  // Non-empty when no etcd binary can run here: why (for GTEST_SKIP).
  static std::string skip_reason(const std::string &etcd = "/usr/bin/etcd");

  int size() const { return static_cast<int>(members_.size()); }
  std::string client_url(int i) const;
  std::vector<std::string> client_urls() const;
  pid_t pid(int i) const;
  bool running(int i) const;
  const std::string &dir() const { return dir_; }

  void kill(int i);     // SIGKILL and reap
  void pause(int i);    // SIGSTOP
  void resume(int i);   // SIGCONT
  void restart(int i);  // start a killed member again on its data and ports
  // The member that is raft leader now (-1: none answers), from each
  // member's /health-free status: asks etcdctl.
  int leader() const;

  // TLS files (empty without tls).
  std::string ca_file() const;
  std::string client_cert_file() const;
  std::string client_key_file() const;

  // [plugin.store-etcd] config that reaches this cluster: endpoints and,
  // with TLS, the CA and the client certificate.
  nlohmann::json plugin_config() const;

  std::string log_tail(int i, size_t bytes = 4000) const;

 private:
  struct Member {
    std::string name, host, data_dir, log_file;
    int client_port = 0, peer_port = 0;
    pid_t pid = -1;
    std::vector<std::string> argv;
  };
  void make_certs();
  void spawn(Member &m);
  void wait_ready(Member &m, size_t log_offset);
  EtcdOptions options_;
  std::string dir_;
  std::vector<Member> members_;
};

// A TCP port on host below the ephemeral range that nobody listened on a
// moment ago (tests/support/loopback_port.h).
int free_port(const std::string &host = "127.0.0.1");

}  // namespace flotilla::test
