// store-etcd's config table ([plugin.<name>]): parsed and checked as a
// whole, so that every bad key is reported at once.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::store_etcd {

struct Endpoint {
  std::string url;     // as written, for messages
  std::string target;  // gRPC target: "ipv4:127.0.0.1:2379" or "dns:///host:2379"
  std::string host;    // for TLS name checks
  bool tls = false;
};

struct EtcdConfig {
  std::vector<Endpoint> endpoints;
  std::string ca_file, cert_file, key_file;
  // Read at start (PEM text), so that a missing file stops the daemon at
  // start rather than at the first reconnect.
  std::string ca_pem, cert_pem, key_pem;
  std::string server_name;  // TLS name to check instead of the endpoint's host
  int64_t dial_timeout_ms = 5000;
  int64_t request_timeout_ms = 10000;
  int64_t keepalive_time_ms = 10000;
  int64_t keepalive_timeout_ms = 5000;
  int64_t max_txn_ops = 128;
  int64_t max_request_bytes = 1536 * 1024;
  int64_t range_page_keys = 1000;
  bool tls() const { return !endpoints.empty() && endpoints.front().tls; }
};

struct ConfigProblem {
  std::string key, message;
};

// Parses the plugin's config JSON. Every problem found is appended to
// problems; the returned config is only meaningful when problems is empty.
EtcdConfig parse_etcd_config(std::string_view json_text, std::vector<ConfigProblem> &problems);

constexpr int64_t kMinKeepaliveTimeMs = 5000;  // etcd's --grpc-keepalive-min-time

}  // namespace flotilla::store_etcd
