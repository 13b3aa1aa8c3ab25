// [plugin.net-overlay] keys (README.md has them all), read from the
// host's JSON view of the table. Every problem is collected, with its key,
// so that one start reports them all.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cidr.h"
#include "netlink.h"

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

  // The WireGuard mesh between the nodes (README.md, "WireGuard mesh").
  std::string wireguard = "auto";  // auto | userspace | kernel | off
  std::string wg_interface = "flotilla-wg";
  int wg_listen_port = 51820;
  std::string wg_endpoint;  // "": the underlay's first address, port wg_listen_port
  bool wg_behind_nat = false;
  int wg_keepalive = 25;            // seconds, for peers behind NAT (all, when this node is)
  int wg_resync_interval = 30;      // seconds between full comparisons against the device
  int node_lease_ttl = 10;          // seconds the node's record outlives its daemon
  int wg_rotate_overlap_ms = 1000;  // a rotation's next key published before the switch
  int status_interval = 10;         // seconds between status() copies in the store; 0 never
  std::string wireguard_go = "/usr/bin/wireguard-go";
};

struct ConfigProblem {
  std::string key;
  std::string message;
};

// Parses the JSON text of the plugin's table; problems is empty when all is
// well.
NetConfig parse_net_config(const std::string &json_text, std::vector<ConfigProblem> &problems);

// A WireGuard endpoint, "192.0.2.7:51820" or "[2001:db8::7]:51820", from
// an address with an optional port (default_port when none); nullopt when
// it is not one.
std::optional<std::string> parse_endpoint(const std::string &text, int default_port);

// The endpoint a node publishes when wg_endpoint is not set, from its
// underlay interface's addresses as netlink lists them (in the kernel's
// order, with their IFA_F_* flags): the first IPv4 one, else a stable
// global IPv6 one, with listen_port; nullopt when there is neither.
// Stable first: not link-local (fe80::/10 reaches no peer off the link),
// not loopback, and none of IFA_F_TENTATIVE (DAD still running: packets to
// it are dropped until it ends), IFA_F_DEPRECATED (its prefix is going
// away) or IFA_F_TEMPORARY (a privacy address, replaced every day or so).
// A configured address (IFA_F_PERMANENT) wins over one learnt from router
// advertisements, which the prefix's lifetimes can take away; otherwise
// the first in the kernel's order. Without a stable one, the last resorts
// in this order: tentative (a daemon started at boot, during DAD's first
// second), temporary, deprecated; the plugin warns with the flags. Never
// IFA_F_DADFAILED (another host has it).
std::optional<std::string> underlay_endpoint(
    const std::vector<netlink::Address> &underlay_addresses, int listen_port);

// Why an IPv6 address was not taken as the endpoint: its IFA_F_* flags that
// rule it out, in words ("tentative, deprecated"); "" when none do.
std::string unusable_endpoint_flags(uint32_t flags);

// Whether WireGuard's packets travel as IPv6: the family of the endpoint
// the node publishes ("[2001:db8::5]:51820"), the tunnel's, whatever else
// the underlay has; without one (no mesh), whether the underlay is
// IPv6-only.
bool tunnel_is_v6(const std::string &endpoint, bool underlay_v6);

// The MTU for the bridge, veths (and the WireGuard device): the underlay's
// minus WireGuard's overhead, 60 bytes over IPv4 or 80 over IPv6
// (tunnel_is_v6), unless configured.
unsigned overlay_mtu(unsigned configured, unsigned underlay_mtu, bool tunnel_v6);

// The nameservers of a resolv.conf text, without loopback ones (a
// container cannot reach the host's 127.0.0.53).
std::vector<std::string> resolv_nameservers(const std::string &resolv_conf);

// What the containers' resolv.conf says.
struct ContainerDns {
  std::vector<std::string> nameservers, search, options;
};

// The node's discovery DNS, as discovery announced it on the event bus
// ("discovery.dns.ready"): the addresses it answers containers on (the
// bridge gateway) and the options it asks for ("ndots:1").
struct DiscoveryDns {
  std::vector<std::string> nameservers, options;
};

// The containers' DNS: `dns_servers` when the operator gave them; else the
// node's discovery DNS once it announced itself (its options first unless
// `dns_options` sets the same option); else the host's nameservers
// (host_resolv_conf's text, loopback ones dropped).
ContainerDns container_dns(const NetConfig &cfg, const DiscoveryDns &discovery,
                           const std::string &host_resolv_conf);

}  // namespace flotilla::overlay
