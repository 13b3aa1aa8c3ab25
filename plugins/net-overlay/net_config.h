// [plugin.net-overlay] keys (README.md has them all), read from the
// host's JSON view of the table. Every problem is collected, with its key,
// so that one start reports them all.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cidr.h"

namespace flotilla::overlay {

struct NetConfig {
  Cidr cluster_cidr = *Cidr::parse("10.42.0.0/16");
  std::optional<Cidr> cluster_cidr_v6;
  int subnet_prefix = 24;
  int subnet_prefix_v6 = 64;
  std::string bridge = "flotilla0";
  std::string veth_prefix = "flv";
  std::string nft_table = "flotilla";
  std::string netns_dir = "/run/flotilla/netns";
  unsigned mtu = 0;  // 0: the underlay's minus the WireGuard overhead
  std::string underlay_interface;  // "": the default route's
  bool masquerade = true;
  std::vector<std::string> dns_servers;  // empty: the host's (loopback ones dropped)
  std::vector<std::string> dns_search;
  std::vector<std::string> dns_options;
};

struct ConfigProblem {
  std::string key;
  std::string message;
};

// Parses the JSON text of the plugin's table; problems is empty when all is
// well.
NetConfig parse_net_config(const std::string &json_text, std::vector<ConfigProblem> &problems);

// The MTU for the bridge, veths (and the WireGuard device): the underlay's
// minus 60 (IPv4 underlay) or 80 (IPv6 underlay) bytes, unless configured.
unsigned overlay_mtu(unsigned configured, unsigned underlay_mtu, bool underlay_v6);

// The nameservers of a resolv.conf text, without loopback ones (a
// container cannot reach the host's 127.0.0.53).
std::vector<std::string> resolv_nameservers(const std::string &resolv_conf);

}  // namespace flotilla::overlay
