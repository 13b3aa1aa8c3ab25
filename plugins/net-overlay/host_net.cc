#include "host_net.h"

#include <signal.h>
#include <sys/socket.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace flotilla::overlay {

namespace nl = flotilla::netlink;

FirewallSpec NodeNet::firewall() const {
  return {cfg.nft_table, cfg.bridge, cfg.cluster_cidr, cfg.cluster_cidr_v6, cfg.masquerade};
}

Underlay detect_underlay(nl::Socket &host, const std::string &configured) {
  Underlay u;
  std::optional<nl::Link> l;
  if (!configured.empty()) {
    l = host.link(configured);
    if (!l) throw nl::Error("no interface named " + configured);
  } else {
    l = host.default_route_link(AF_INET);
    if (!l) {
      l = host.default_route_link(AF_INET6);
      u.v6 = true;
    }
    if (!l) throw nl::Error("no default route to find the underlay by; set underlay_interface");
  }
  u.interface = l->name;
  u.mtu = l->mtu;
  if (!configured.empty()) {
    bool has4 = false;
    for (const auto &a : host.addresses(l->name))
      if (a.find(':') == std::string::npos) has4 = true;
    u.v6 = !has4;
  }
  return u;
}

std::vector<std::string> overlapping_addresses(nl::Socket &host, const Cidr &cidr,
                                               const std::string &bridge) {
  std::vector<std::string> out;
  for (const auto &l : host.links()) {
    if (l.name == bridge || l.name == "lo") continue;
    for (const auto &a : host.addresses(l.name)) {
      auto c = Cidr::parse(a);
      Cidr net;
      if (!c) {
        // An address with host bits: compare its network.
        auto slash = a.find('/');
        auto addr = parse_address(a.substr(0, slash));
        if (!addr || slash == std::string::npos) continue;
        net.base = *addr;
        net.prefix = std::stoi(a.substr(slash + 1));
        const int bits = net.base.bits();
        if (net.prefix < bits)
          net.base.value &= ~((u128{1} << (bits - net.prefix)) - 1) &
                            (bits == 128 ? ~u128{0} : ((u128{1} << bits) - 1));
      } else {
        net = *c;
      }
      if (net.v6() != cidr.v6()) continue;
      if (net.v6() && (net.base.value >> 118) == 0x3fa) continue;  // fe80::/10
      if (net.overlaps(cidr)) out.push_back(a + " on " + l.name);
    }
  }
  return out;
}

namespace {

std::string prefixed(const Cidr &subnet, const std::string &gw) {
  return gw + "/" + std::to_string(subnet.prefix);
}

// For the crash tests: FLOTILLA_NET_OVERLAY_FAILPOINT=<name> kills the
// daemon (SIGKILL, as kill -9 would) when the attach reaches <name>.
void failpoint(const char *name) {
  static const char *wanted = std::getenv("FLOTILLA_NET_OVERLAY_FAILPOINT");
  if (wanted && std::strcmp(wanted, name) == 0) ::raise(SIGKILL);
}

bool is_ours(const NetConfig &cfg, const std::string &link) {
  return link.size() == cfg.veth_prefix.size() + 8 && link.rfind(cfg.veth_prefix, 0) == 0;
}

}  // namespace

namespace {

std::string read_sysctl(const std::string &key) {
  std::ifstream in("/proc/sys/" + key);
  std::string v;
  in >> v;
  return v;
}

// IPv6 forwards between interfaces only with the global switch
// (conf/all/forwarding; the per-interface one does not route): the
// bridge's traffic to the WireGuard device and to the underlay needs it.
// Forwarding turns off router advertisements where accept_ra is 1, so the
// interface of the IPv6 default route (learnt from them, often) gets 2:
// it keeps taking them.
void enable_ipv6_forwarding(nl::Socket &host, const std::string &bridge) {
  if (read_sysctl("net/ipv6/conf/all/forwarding") != "1") {
    if (auto l = host.default_route_link(AF_INET6)) {
      const std::string key = "net/ipv6/conf/" + l->name + "/accept_ra";
      if (read_sysctl(key) == "1") nl::netns::write_sysctl(key, "2");
    }
    nl::netns::write_sysctl("net/ipv6/conf/all/forwarding", "1");
  }
  nl::netns::write_sysctl("net/ipv6/conf/" + bridge + "/forwarding", "1");
}

}  // namespace

std::vector<std::string> setup_node(const NodeNet &n, const std::vector<Attachment> &known,
                                    nl::Socket &host, nft::Context &nft) {
  std::vector<std::string> removed;
  const auto &c = n.cfg;
  host.add_bridge(c.bridge, n.mtu);
  host.set_mtu(c.bridge, n.mtu);
  host.add_address(c.bridge, prefixed(n.subnet4, n.gateway4()));
  if (n.subnet6) host.add_address(c.bridge, prefixed(*n.subnet6, n.gateway6()));
  host.set_up(c.bridge);
  nl::netns::write_sysctl("net/ipv4/ip_forward", "1");
  // Port mappings used from the host's own 127.0.0.1.
  nl::netns::write_sysctl("net/ipv4/conf/" + c.bridge + "/route_localnet", "1");
  if (n.subnet6) enable_ipv6_forwarding(host, c.bridge);

  std::set<std::string> veths, pins;
  std::vector<MappedAlloc> mapped;
  for (const auto &a : known) {
    veths.insert(a.veth);
    if (a.netns_pinned) pins.insert(a.netns);
    mapped.push_back(a.mapped());
  }
  nft.apply(full_table(n.firewall(), mapped));

  for (const auto &l : host.links())
    if (l.kind == "veth" && is_ours(c, l.name) && !veths.count(l.name)) {
      host.delete_link(l.name);
      removed.push_back("veth " + l.name);
    }
  std::error_code ec;
  for (const auto &e : std::filesystem::directory_iterator(c.netns_dir, ec)) {
    const std::string p = e.path().string();
    if (pins.count(p)) continue;
    nl::netns::remove_pinned(p);
    removed.push_back("namespace " + p);
  }
  return removed;
}

namespace {

// Whether an attachment made earlier is whole: its veth on the bridge and
// up, its address inside. A repeated attach (a task of the allocation
// restarted, the daemon restarted) must not cut a working one.
bool intact(const NodeNet &n, const Attachment &a, nl::Socket &host) {
  auto br = host.link(n.cfg.bridge);
  auto v = host.link(a.veth);
  if (!br || !v || v->master != br->index || !v->up) return false;
  if (a.netns_pinned && !nl::netns::is_pinned(a.netns)) return false;
  try {
    nl::Socket in = nl::Socket::open_in(a.netns);
    auto eth = in.link("eth0");
    if (!eth || !eth->up) return false;
    bool has4 = false, has6 = a.ip6.empty();
    for (const auto &addr : in.addresses("eth0")) {
      if (addr == a.ip4) has4 = true;
      if (addr == a.ip6) has6 = true;
    }
    return has4 && has6;
  } catch (const nl::Error &) {
    return false;
  }
}

}  // namespace

void attach(const NodeNet &n, const Attachment &a, nl::Socket &host, nft::Context &nft) {
  if (!intact(n, a, host)) make_attachment(n, a, host);
  if (!a.ports.empty()) {
    // Replace this allocation's mappings if an earlier attempt left them.
    try {
      nft.apply(delete_mappings(n.firewall(), a.mapped()));
    } catch (const nft::Error &) {
    }
    nft.apply(add_mappings(n.firewall(), a.mapped()));
  }
}

void make_attachment(const NodeNet &n, const Attachment &a, nl::Socket &host) {
  if (a.netns_pinned) {
    std::filesystem::create_directories(std::filesystem::path(a.netns).parent_path());
    nl::netns::create_pinned(a.netns);
  }
  nl::UniqueFd ns = nl::netns::open(a.netns);
  // A half-made attachment of this allocation (kill -9 in the middle):
  // deleting the host side removes its peer too.
  host.delete_link(a.veth);
  host.add_veth(a.veth, "eth0", n.mtu, ns.get());
  failpoint("after-veth");
  host.set_master(a.veth, n.cfg.bridge);
  host.set_up(a.veth);

  nl::Socket in = nl::Socket::open_in(a.netns);
  in.set_up("lo");
  in.set_mtu("eth0", n.mtu);
  in.add_address("eth0", a.ip4);
  if (!a.ip6.empty()) in.add_address("eth0", a.ip6);
  in.set_up("eth0");
  in.add_route("default", a.gw4, "eth0");
  if (!a.ip6.empty()) in.add_route("default", a.gw6, "eth0");
}

void detach(const NodeNet &n, const Attachment &a, nl::Socket &host, nft::Context &nft) {
  if (!a.ports.empty()) {
    try {
      nft.apply(delete_mappings(n.firewall(), a.mapped()));
    } catch (const nft::Error &) {
      // Some were gone already: delete them one by one.
      for (const auto &p : a.ports) {
        Attachment one = a;
        one.ports = {p};
        try {
          nft.apply(delete_mappings(n.firewall(), one.mapped()));
        } catch (const nft::Error &) {
        }
      }
    }
  }
  host.delete_link(a.veth);
  if (a.netns_pinned) nl::netns::remove_pinned(a.netns);
}

std::vector<std::string> remove_everything(const NetConfig &cfg, nl::Socket &host,
                                           nft::Context &nft) {
  std::vector<std::string> removed;
  for (const auto &l : host.links())
    if (l.kind == "veth" && is_ours(cfg, l.name)) {
      host.delete_link(l.name);
      removed.push_back("veth " + l.name);
    }
  if (host.delete_link(cfg.bridge)) removed.push_back("bridge " + cfg.bridge);
  std::error_code ec;
  for (const auto &e : std::filesystem::directory_iterator(cfg.netns_dir, ec)) {
    nl::netns::remove_pinned(e.path().string());
    removed.push_back("namespace " + e.path().string());
  }
  if (nft.table_exists("inet", cfg.nft_table)) {
    nft.apply(delete_table(FirewallSpec{cfg.nft_table, cfg.bridge, cfg.cluster_cidr,
                                        cfg.cluster_cidr_v6, cfg.masquerade}));
    removed.push_back("nft table inet " + cfg.nft_table);
  }
  return removed;
}

}  // namespace flotilla::overlay
