// What net-overlay does to the host and to containers' namespaces, through
// lib/netlink and lib/nft. Synchronous: called on the host's thread pool,
// one call at a time (the plugin serialises its operations).
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "attachment.h"
#include "cidr.h"
#include "firewall.h"
#include "net_config.h"
#include "netlink.h"
#include "nft.h"

namespace flotilla::overlay {

// The node's part of the cluster network, once its subnets are leased.
struct NodeNet {
  NetConfig cfg;
  unsigned mtu = 1440;
  Cidr subnet4;
  std::optional<Cidr> subnet6;
  FirewallSpec firewall() const;
  std::string gateway4() const { return subnet4.at(1).text(); }
  std::string gateway6() const { return subnet6 ? subnet6->at(1).text() : ""; }
};

// The underlay: its interface's MTU and whether it is IPv6-only.
struct Underlay {
  std::string interface;
  unsigned mtu = 1500;
  bool v6 = false;
};
// The configured underlay interface, else the one of the default route.
// Throws netlink::Error when there is none.
Underlay detect_underlay(netlink::Socket &host, const std::string &configured);

// Addresses on the host's links that overlap cidr (the bridge excepted):
// "10.42.0.7/16 on eth0".
std::vector<std::string> overlapping_addresses(netlink::Socket &host, const Cidr &cidr,
                                               const std::string &bridge);

// The bridge with the gateway addresses and MTU, forwarding on, the nft
// table with every known attachment's mappings; veths and pinned
// namespaces of the plugin that no known attachment has are removed (what a
// kill -9 mid-attach or a lost detach left). Returns what it removed.
std::vector<std::string> setup_node(const NodeNet &n, const std::vector<Attachment> &known,
                                    netlink::Socket &host, nft::Context &nft);

// The attachment's namespace (pinned when a.netns_pinned), veth pair,
// addresses, routes, loopback and port mappings. Idempotent: a whole
// attachment of the same allocation is left as it is (its container keeps
// its traffic), a half-made one is made again.
void attach(const NodeNet &n, const Attachment &a, netlink::Socket &host, nft::Context &nft);
// The namespace, veth pair, addresses and routes, made anew.
void make_attachment(const NodeNet &n, const Attachment &a, netlink::Socket &host);
// Undoes attach; what is already gone is no error.
void detach(const NodeNet &n, const Attachment &a, netlink::Socket &host, nft::Context &nft);

// Everything the plugin made on this host: every veth with the prefix,
// the bridge, the namespaces pinned in netns_dir, the nft table. Returns
// what it removed.
std::vector<std::string> remove_everything(const NetConfig &cfg, netlink::Socket &host,
                                           nft::Context &nft);

}  // namespace flotilla::overlay
