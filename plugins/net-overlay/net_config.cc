#include "net_config.h"

#include <linux/if_addr.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace flotilla::overlay {

using nlohmann::json;

namespace {

const std::set<std::string> kKeys = {
    "cluster_cidr",       "cluster_cidr_v6", "subnet_prefix",
    "subnet_prefix_v6",   "bridge",          "veth_prefix",
    "nft_table",          "netns_dir",       "mtu",
    "underlay_interface", "masquerade",      "dns_servers",
    "dns_search",         "dns_options",     "wireguard",
    "wg_interface",       "wg_listen_port",  "wg_endpoint",
    "wg_behind_nat",      "wg_keepalive",    "wg_resync_interval",
    "node_lease_ttl",     "wireguard_go",    "wg_rotate_overlap_ms",
    "status_interval"};

bool ifname_ok(const std::string &n, size_t max) {
  if (n.empty() || n.size() > max) return false;
  for (char c : n)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return false;
  return true;
}

}  // namespace

NetConfig parse_net_config(const std::string &json_text, std::vector<ConfigProblem> &problems) {
  NetConfig c;
  json doc = json::parse(json_text, nullptr, false);
  if (!doc.is_object()) {
    problems.push_back({"", "the table is not readable as JSON"});
    return c;
  }
  auto bad = [&](const std::string &key, const std::string &msg) {
    problems.push_back({key, msg});
  };
  for (const auto &[k, v] : doc.items())
    if (!kKeys.count(k)) {
      std::string all;
      for (const auto &x : kKeys) all += (all.empty() ? "" : ", ") + x;
      bad(k, "unknown key; the keys are " + all);
    }
  auto text = [&](const std::string &key, std::string &out) -> bool {
    if (!doc.contains(key)) return false;
    if (!doc[key].is_string()) {
      bad(key, "must be a string, got " + doc[key].dump());
      return false;
    }
    out = doc[key].get<std::string>();
    return true;
  };
  auto integer = [&](const std::string &key, int lo, int hi, int &out) {
    if (!doc.contains(key)) return;
    const json &v = doc[key];
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi) {
      bad(key, "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                   ", got " + v.dump());
      return;
    }
    out = v.get<int>();
  };
  auto strings = [&](const std::string &key, std::vector<std::string> &out) {
    if (!doc.contains(key)) return;
    const json &v = doc[key];
    if (!v.is_array()) {
      bad(key, "must be an array of strings, got " + v.dump());
      return;
    }
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string()) {
        bad(key + "[" + std::to_string(i) + "]", "must be a string, got " + v[i].dump());
        continue;
      }
      out.push_back(v[i].get<std::string>());
    }
  };

  std::string s;
  bool v4_ok = true;
  if (text("cluster_cidr", s)) {
    std::string why;
    auto cidr = Cidr::parse(s, &why);
    if (!cidr) {
      bad("cluster_cidr", why);
      v4_ok = false;
    } else if (cidr->v6()) {
      bad("cluster_cidr", "\"" + s + "\" is IPv6; put it in cluster_cidr_v6");
      v4_ok = false;
    } else {
      c.cluster_cidr = *cidr;
    }
  }
  if (text("cluster_cidr_v6", s) && !s.empty()) {
    std::string why;
    auto cidr = Cidr::parse(s, &why);
    if (!cidr)
      bad("cluster_cidr_v6", why);
    else if (!cidr->v6())
      bad("cluster_cidr_v6", "\"" + s + "\" is IPv4; put it in cluster_cidr");
    else
      c.cluster_cidr_v6 = *cidr;
  }
  integer("subnet_prefix", 8, 30, c.subnet_prefix);
  integer("subnet_prefix_v6", 16, 120, c.subnet_prefix_v6);
  if (v4_ok && c.subnet_prefix < c.cluster_cidr.prefix)
    bad("subnet_prefix", "/" + std::to_string(c.subnet_prefix) + " is larger than cluster_cidr " +
                             c.cluster_cidr.text() + "; a node subnet must fit inside it");
  if (c.cluster_cidr_v6 && c.subnet_prefix_v6 < c.cluster_cidr_v6->prefix)
    bad("subnet_prefix_v6", "/" + std::to_string(c.subnet_prefix_v6) +
                                " is larger than cluster_cidr_v6 " + c.cluster_cidr_v6->text() +
                                "; a node subnet must fit inside it");
  if (text("bridge", s)) {
    if (!ifname_ok(s, 15))
      bad("bridge", "\"" + s + "\" is not an interface name (1 to 15 of a-z, 0-9, - _ .)");
    else
      c.bridge = s;
  }
  if (text("veth_prefix", s)) {
    if (!ifname_ok(s, 6))
      bad("veth_prefix", "\"" + s + "\" must be 1 to 6 of a-z, 0-9, - _ . (8 hex digits follow)");
    else
      c.veth_prefix = s;
  }
  if (text("nft_table", s)) {
    bool ok = !s.empty() && s.size() <= 32 && std::isalpha(static_cast<unsigned char>(s[0]));
    for (char ch : s)
      if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-')) ok = false;
    if (!ok)
      bad("nft_table", "\"" + s + "\" is not an nftables table name (a letter, then letters, "
                                  "digits, _ or -; at most 32)");
    else
      c.nft_table = s;
  }
  if (text("netns_dir", s)) {
    if (s.empty() || s[0] != '/')
      bad("netns_dir", "must be an absolute path, got \"" + s + "\"");
    else
      c.netns_dir = s;
  }
  if (doc.contains("mtu")) {
    int m = 0;
    const size_t before = problems.size();
    integer("mtu", 0, 65535, m);
    if (problems.size() == before) {
      const int min = c.cluster_cidr_v6 ? 1280 : 576;
      if (m != 0 && m < min)
        bad("mtu", std::to_string(m) + " is below " + std::to_string(min) +
                       (c.cluster_cidr_v6 ? ", the least IPv6 allows (cluster_cidr_v6 is set)"
                                          : ", the least IPv4 allows"));
      else
        c.mtu = static_cast<unsigned>(m);
    }
  }
  if (text("underlay_interface", s)) {
    if (!s.empty() && !ifname_ok(s, 15))
      bad("underlay_interface", "\"" + s + "\" is not an interface name");
    else
      c.underlay_interface = s;
  }
  if (doc.contains("masquerade")) {
    if (!doc["masquerade"].is_boolean())
      bad("masquerade", "must be true or false, got " + doc["masquerade"].dump());
    else
      c.masquerade = doc["masquerade"].get<bool>();
  }
  strings("dns_servers", c.dns_servers);
  for (size_t i = 0; i < c.dns_servers.size(); ++i)
    if (!parse_address(c.dns_servers[i]))
      bad("dns_servers[" + std::to_string(i) + "]",
          "\"" + c.dns_servers[i] + "\" is not an IP address");
  strings("dns_search", c.dns_search);
  strings("dns_options", c.dns_options);

  if (text("wireguard", s)) {
    if (s != "auto" && s != "userspace" && s != "kernel" && s != "off")
      bad("wireguard", "must be \"auto\", \"userspace\", \"kernel\" or \"off\", got \"" + s + "\"");
    else
      c.wireguard = s;
  }
  if (text("wg_interface", s)) {
    if (!ifname_ok(s, 15))
      bad("wg_interface", "\"" + s + "\" is not an interface name (1 to 15 of a-z, 0-9, - _ .)");
    else
      c.wg_interface = s;
  }
  integer("wg_listen_port", 1, 65535, c.wg_listen_port);
  if (text("wg_endpoint", s) && !s.empty()) {
    if (!parse_endpoint(s, c.wg_listen_port))
      bad("wg_endpoint", "\"" + s +
                             "\" is not an address with an optional port (\"192.0.2.7\", "
                             "\"192.0.2.7:51820\", \"[2001:db8::7]:51820\")");
    else
      c.wg_endpoint = *parse_endpoint(s, c.wg_listen_port);
  }
  if (doc.contains("wg_behind_nat")) {
    if (!doc["wg_behind_nat"].is_boolean())
      bad("wg_behind_nat", "must be true or false, got " + doc["wg_behind_nat"].dump());
    else
      c.wg_behind_nat = doc["wg_behind_nat"].get<bool>();
  }
  integer("wg_keepalive", 0, 65535, c.wg_keepalive);
  integer("wg_resync_interval", 1, 3600, c.wg_resync_interval);
  integer("node_lease_ttl", 2, 3600, c.node_lease_ttl);
  integer("wg_rotate_overlap_ms", 100, 60000, c.wg_rotate_overlap_ms);
  integer("status_interval", 0, 3600, c.status_interval);
  if (text("wireguard_go", s)) {
    if (s.empty() || s[0] != '/')
      bad("wireguard_go", "must be an absolute path, got \"" + s + "\"");
    else
      c.wireguard_go = s;
  }
  if (c.wg_interface == c.bridge)
    bad("wg_interface", "\"" + c.wg_interface + "\" is also the bridge's name");
  return c;
}

std::optional<std::string> parse_endpoint(const std::string &text, int default_port) {
  std::string host = text, port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') return std::nullopt;
      port = text.substr(close + 2);
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    host = text.substr(0, text.find(':'));
    port = text.substr(text.find(':') + 1);
  }
  auto a = parse_address(host);
  if (!a) return std::nullopt;
  int p = default_port;
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    p = std::stoi(port);
    if (p < 1 || p > 65535) return std::nullopt;
  }
  return a->v6 ? "[" + host + "]:" + std::to_string(p) : host + ":" + std::to_string(p);
}

std::string unusable_endpoint_flags(uint32_t flags) {
  std::string out;
  for (const auto &[bit, word] : {std::pair<uint32_t, const char *>{IFA_F_TENTATIVE, "tentative"},
                                  {IFA_F_DADFAILED, "dadfailed"},
                                  {IFA_F_DEPRECATED, "deprecated"},
                                  {IFA_F_TEMPORARY, "temporary"}})
    if (flags & bit) out += (out.empty() ? "" : ", ") + std::string(word);
  return out;
}

std::optional<std::string> underlay_endpoint(
    const std::vector<netlink::Address> &underlay_addresses, int listen_port) {
  // Lower is better: stable configured, stable learnt, then the last
  // resorts (tentative: usable once DAD ends, about a second; temporary:
  // replaced in a day or so; deprecated: its prefix is going away).
  std::optional<std::string> best;
  int best_rank = 0;
  for (const auto &a : underlay_addresses) {
    const std::string ip = a.cidr.substr(0, a.cidr.find('/'));
    auto addr = parse_address(ip);
    if (!addr) continue;
    if (!addr->v6) return ip + ":" + std::to_string(listen_port);
    const bool link_local = (addr->value >> 118) == 0x3fa;  // fe80::/10
    if (link_local || addr->value <= 1) continue;           // nor :: or ::1
    if (a.flags & IFA_F_DADFAILED) continue;                // another host has it
    int rank = (a.flags & IFA_F_PERMANENT) ? 0 : 1;
    if (a.flags & IFA_F_TENTATIVE) rank = std::max(rank, 2);
    if (a.flags & IFA_F_TEMPORARY) rank = std::max(rank, 3);
    if (a.flags & IFA_F_DEPRECATED) rank = std::max(rank, 4);
    if (!best || rank < best_rank) {
      best = "[" + ip + "]:" + std::to_string(listen_port);
      best_rank = rank;
    }
  }
  return best;
}

bool tunnel_is_v6(const std::string &endpoint, bool underlay_v6) {
  if (endpoint.empty()) return underlay_v6;
  return endpoint[0] == '[';
}

unsigned overlay_mtu(unsigned configured, unsigned underlay_mtu, bool tunnel_v6) {
  if (configured) return configured;
  const unsigned overhead = tunnel_v6 ? 80 : 60;
  if (underlay_mtu <= overhead + 576) return 1280;  // a broken underlay: a sane floor
  return underlay_mtu - overhead;
}

std::vector<std::string> resolv_nameservers(const std::string &resolv_conf) {
  std::vector<std::string> out;
  std::istringstream in(resolv_conf);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string word, addr;
    if (!(ls >> word) || word != "nameserver" || !(ls >> addr)) continue;
    auto a = parse_address(addr);
    if (!a) continue;
    const bool loopback = a->v6 ? a->value == 1 : (a->value >> 24) == 127;
    if (!loopback) out.push_back(addr);
  }
  return out;
}

ContainerDns container_dns(const NetConfig &cfg, const DiscoveryDns &discovery,
                           const std::string &host_resolv_conf) {
  ContainerDns out;
  out.search = cfg.dns_search;
  out.options = cfg.dns_options;
  if (!cfg.dns_servers.empty()) {
    out.nameservers = cfg.dns_servers;
    return out;
  }
  if (discovery.nameservers.empty()) {
    out.nameservers = resolv_nameservers(host_resolv_conf);
    return out;
  }
  out.nameservers = discovery.nameservers;
  // "ndots:1" unless the operator's dns_options set ndots themselves.
  auto name_of = [](const std::string &o) { return o.substr(0, o.find(':')); };
  std::vector<std::string> options;
  for (const auto &o : discovery.options) {
    bool overridden = false;
    for (const auto &mine : cfg.dns_options) overridden |= name_of(mine) == name_of(o);
    if (!overridden) options.push_back(o);
  }
  options.insert(options.end(), cfg.dns_options.begin(), cfg.dns_options.end());
  out.options = options;
  return out;
}

}  // namespace flotilla::overlay
