// [plugin.discovery]: every key, its default and its check
// (README.md, "Config keys"). parse_config reports every problem at once.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::discovery {

struct SocketAddress {
  sockaddr_storage ss{};
  socklen_t len = 0;
  std::string text() const;
};

// "10.0.0.1:53", "[fd00::1]:53", or without a port (default_port).
bool parse_socket_address(const std::string &text, uint16_t default_port, SocketAddress &out);

struct DiscoveryConfig {
  std::string domain = "flotilla";
  std::vector<std::string> listen = {"127.0.0.1:8600"};
  uint32_t ttl = 5;
  uint32_t negative_ttl = 1;
  uint16_t answer_limit = 0;
  uint16_t edns_udp_size = 1232;
  bool forward = true;
  std::vector<std::string> upstreams;  // empty: from resolv_conf
  std::string resolv_conf = "/etc/resolv.conf";
  uint32_t forward_timeout_ms = 1500;
  uint32_t forward_max_inflight = 1024;
  uint32_t tcp_idle_timeout_ms = 10000;
  uint32_t tcp_max_connections = 512;
  uint32_t lease_ttl = 15;   // seconds: the registry's endpoints live under it
  std::string host_address;  // for host-network tasks; empty: the first non-loopback IPv4
  std::string vip_cidr;      // IPv4 service CIDR; empty: no virtual IPs
  std::string vip_table = "flotilla_vip";
  uint32_t vip_masquerade_mark = 0x4000;
  uint32_t vip_base = 0, vip_size = 0;  // parsed vip_cidr (host order)
  // Answer containers on the node's bridge gateway (port 53) once
  // net-overlay made the bridge, and ask it to point their resolv.conf
  // there with ndots:1 (README.md, "Containers' resolver").
  bool container_dns = true;
  // CA certificates (PEM) that verify the servers of TLS checks; empty: the
  // system's bundle (/etc/ssl/certs).
  std::string check_ca_file;
  // Parsed forms.
  std::vector<SocketAddress> listen_addrs;
  std::vector<SocketAddress> upstream_addrs;  // from `upstreams` only
};

struct ConfigProblem {
  std::string key;
  std::string message;
};

// Fills cfg from the plugin's table; returns every problem found.
std::vector<ConfigProblem> parse_config(const nlohmann::json &table, DiscoveryConfig &cfg);

// True when one of `listen` already receives queries sent to `a`: the same
// address and port, or the wildcard address of its family on its port.
bool listen_covers(const std::vector<SocketAddress> &listen, const SocketAddress &a);

// The nameserver lines of a resolv.conf, as addresses on port 53, without
// any of `exclude` (our own listen addresses: never forward to ourselves).
std::vector<SocketAddress> read_resolv_conf(const std::string &path,
                                            const std::vector<SocketAddress> &exclude,
                                            std::string &error);

}  // namespace flotilla::discovery
