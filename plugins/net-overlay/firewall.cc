#include "firewall.h"

namespace flotilla::overlay {

namespace {

std::string map_name(const std::string &proto, bool v6) {
  return std::string(v6 ? "ports6_" : "ports_") + proto;
}

std::string elements(const MappedAlloc &a, const std::string &proto, bool v6) {
  std::string out;
  for (const auto &p : a.ports) {
    if (p.protocol != proto) continue;
    if (!out.empty()) out += ", ";
    out += std::to_string(p.host);
    if (!v6 && !a.ip4.empty()) out += " : " + a.ip4 + " . " + std::to_string(p.to);
    if (v6) out += " : " + a.ip6 + " . " + std::to_string(p.to);
  }
  return out;
}

void element_ops(nft::Batch &b, const FirewallSpec &s, const MappedAlloc &a, const char *verb,
                 bool keys_only) {
  const std::string t = "inet " + s.table;
  for (const char *proto : {"tcp", "udp"})
    for (bool v6 : {false, true}) {
      if (v6 && (!s.cluster_v6 || a.ip6.empty())) continue;
      if (!v6 && a.ip4.empty()) continue;
      std::string e;
      if (keys_only) {
        for (const auto &p : a.ports)
          if (p.protocol == proto) e += (e.empty() ? "" : ", ") + std::to_string(p.host);
      } else {
        e = elements(a, proto, v6);
      }
      if (!e.empty()) b.add(std::string(verb) + " element " + t + " " + map_name(proto, v6) +
                            " { " + e + " }");
    }
}

}  // namespace

nft::Batch full_table(const FirewallSpec &s, const std::vector<MappedAlloc> &allocs) {
  nft::Batch b;
  const std::string t = "inet " + s.table;
  const std::string br = nft::quote(s.bridge);
  const std::string c4 = s.cluster.text();
  b.delete_table_if_exists("inet", s.table);
  b.add("add table " + t);
  b.add("add chain " + t +
        " forward { type filter hook forward priority filter; policy accept; }");
  b.add("add chain " + t +
        " prerouting { type nat hook prerouting priority dstnat; policy accept; }");
  b.add("add chain " + t + " output { type nat hook output priority -100; policy accept; }");
  b.add("add chain " + t +
        " postrouting { type nat hook postrouting priority srcnat; policy accept; }");
  for (const char *proto : {"tcp", "udp"}) {
    b.add("add map " + t + " " + map_name(proto, false) +
          " { type inet_service : ipv4_addr . inet_service; }");
    if (s.cluster_v6)
      b.add("add map " + t + " " + map_name(proto, true) +
            " { type inet_service : ipv6_addr . inet_service; }");
  }
  // MSS clamped to the route's MTU on SYNs both ways through the bridge,
  // so that TCP never depends on ICMP "fragmentation needed" getting back.
  b.add("add rule " + t + " forward iifname " + br +
        " tcp flags syn / syn,rst tcp option maxseg size set rt mtu");
  b.add("add rule " + t + " forward oifname " + br +
        " tcp flags syn / syn,rst tcp option maxseg size set rt mtu");
  b.add("add rule " + t + " forward ct state invalid iifname " + br + " drop");
  b.add("add rule " + t + " forward iifname " + br + " accept");
  b.add("add rule " + t + " forward oifname " + br + " ct state established,related accept");
  b.add("add rule " + t + " forward oifname " + br + " ct status dnat accept");
  // Port mappings: to this host's own addresses, from outside (prerouting)
  // and from the host itself (output).
  for (const char *chain : {"prerouting", "output"})
    for (const char *proto : {"tcp", "udp"}) {
      b.add("add rule " + t + " " + chain + " fib daddr type local meta nfproto ipv4 dnat ip to " +
            proto + " dport map @" + map_name(proto, false));
      if (s.cluster_v6)
        b.add("add rule " + t + " " + chain +
              " fib daddr type local meta nfproto ipv6 dnat ip6 to " + proto + " dport map @" +
              map_name(proto, true));
    }
  // Egress: containers leave with the host's address.
  if (s.masquerade) {
    b.add("add rule " + t + " postrouting ip saddr " + c4 + " ip daddr != " + c4 +
          " oifname != " + br + " masquerade");
    if (s.cluster_v6)
      b.add("add rule " + t + " postrouting ip6 saddr " + s.cluster_v6->text() +
            " ip6 daddr != " + s.cluster_v6->text() + " oifname != " + br + " masquerade");
  }
  // A mapping used from the host's 127.0.0.1 (route_localnet on the
  // bridge) or from a container on the same bridge (hairpin): the reply
  // must come back through the host.
  b.add("add rule " + t + " postrouting oifname " + br + " ip saddr 127.0.0.0/8 masquerade");
  b.add("add rule " + t + " postrouting iifname " + br + " oifname " + br +
        " ct status dnat masquerade");
  for (const auto &a : allocs) element_ops(b, s, a, "add", false);
  return b;
}

nft::Batch add_mappings(const FirewallSpec &s, const MappedAlloc &a) {
  nft::Batch b;
  element_ops(b, s, a, "add", false);
  return b;
}

nft::Batch delete_mappings(const FirewallSpec &s, const MappedAlloc &a) {
  nft::Batch b;
  element_ops(b, s, a, "delete", true);
  return b;
}

nft::Batch delete_table(const FirewallSpec &s) {
  nft::Batch b;
  b.delete_table_if_exists("inet", s.table);
  return b;
}

}  // namespace flotilla::overlay
