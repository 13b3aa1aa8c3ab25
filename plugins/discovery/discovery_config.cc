#include "discovery_config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "dns_zone.h"

namespace flotilla::discovery {

using json = nlohmann::json;

std::string SocketAddress::text() const {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    auto *a = reinterpret_cast<const sockaddr_in *>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto *a = reinterpret_cast<const sockaddr_in6 *>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "?";
}

bool parse_socket_address(const std::string &text, uint16_t default_port, SocketAddress &out) {
  std::string host = text;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos) return false;
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') return false;
      port = text.substr(close + 2);
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    auto colon = text.find(':');
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  unsigned long p = default_port;
  if (!port.empty()) {
    if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5) return false;
    p = std::stoul(port);
    if (p > 65535) return false;
  }
  out = SocketAddress{};
  auto *v4 = reinterpret_cast<sockaddr_in *>(&out.ss);
  auto *v6 = reinterpret_cast<sockaddr_in6 *>(&out.ss);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(p));
    out.len = sizeof(sockaddr_in);
    return true;
  }
  std::string h6 = host.substr(0, host.find('%'));  // fe80::1%eth0: scope not kept
  if (inet_pton(AF_INET6, h6.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(p));
    out.len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

namespace {

bool same_address(const SocketAddress &a, const SocketAddress &b) {
  return a.len == b.len && std::memcmp(&a.ss, &b.ss, a.len) == 0;
}

class Reader {
 public:
  Reader(const json &t, std::vector<ConfigProblem> &p) : t_(t), p_(p) {}

  void str(const char *key, std::string &out) {
    if (!t_.contains(key)) return;
    if (!t_[key].is_string()) return bad(key, "must be a string");
    out = t_[key].get<std::string>();
  }
  void boolean(const char *key, bool &out) {
    if (!t_.contains(key)) return;
    if (!t_[key].is_boolean()) return bad(key, "must be true or false");
    out = t_[key].get<bool>();
  }
  template <class T>
  void number(const char *key, T &out, int64_t lo, int64_t hi, const char *unit) {
    if (!t_.contains(key)) return;
    const json &v = t_[key];
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
      return bad(key, "must be a whole number of " + std::string(unit) + " from " +
                          std::to_string(lo) + " to " + std::to_string(hi) + ", not " + v.dump());
    out = static_cast<T>(v.get<int64_t>());
  }
  void strings(const char *key, std::vector<std::string> &out) {
    if (!t_.contains(key)) return;
    const json &v = t_[key];
    if (!v.is_array()) return bad(key, "must be an array of strings");
    std::vector<std::string> r;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string())
        return bad(std::string(key) + "[" + std::to_string(i) + "]", "must be a string");
      r.push_back(v[i].get<std::string>());
    }
    out = std::move(r);
  }
  void bad(const std::string &key, const std::string &message) { p_.push_back({key, message}); }

 private:
  const json &t_;
  std::vector<ConfigProblem> &p_;
};

}  // namespace

std::vector<ConfigProblem> parse_config(const json &table, DiscoveryConfig &cfg) {
  std::vector<ConfigProblem> problems;
  if (!table.is_object()) {
    problems.push_back({"", "must be a table"});
    return problems;
  }
  static const std::set<std::string> known = {"domain",
                                              "listen",
                                              "ttl",
                                              "negative_ttl",
                                              "answer_limit",
                                              "edns_udp_size",
                                              "forward",
                                              "upstreams",
                                              "resolv_conf",
                                              "forward_timeout_ms",
                                              "forward_max_inflight",
                                              "tcp_idle_timeout_ms",
                                              "tcp_max_connections",
                                              "lease_ttl",
                                              "host_address",
                                              "vip_cidr",
                                              "vip_table",
                                              "vip_masquerade_mark",
                                              "container_dns",
                                              "check_ca_file"};
  for (auto it = table.begin(); it != table.end(); ++it)
    if (!known.count(it.key()))
      problems.push_back(
          {it.key(), "is not a key of this plugin (see plugins/discovery/README.md)"});

  Reader r(table, problems);
  r.str("domain", cfg.domain);
  r.strings("listen", cfg.listen);
  r.number("ttl", cfg.ttl, 0, 86400, "seconds");
  r.number("negative_ttl", cfg.negative_ttl, 0, 86400, "seconds");
  r.number("answer_limit", cfg.answer_limit, 0, 65535, "records");
  r.number("edns_udp_size", cfg.edns_udp_size, 512, 4096, "bytes");
  r.boolean("forward", cfg.forward);
  r.strings("upstreams", cfg.upstreams);
  r.str("resolv_conf", cfg.resolv_conf);
  r.number("forward_timeout_ms", cfg.forward_timeout_ms, 10, 60000, "milliseconds");
  r.number("forward_max_inflight", cfg.forward_max_inflight, 1, 1000000, "queries");
  r.number("tcp_idle_timeout_ms", cfg.tcp_idle_timeout_ms, 100, 3600000, "milliseconds");
  r.number("tcp_max_connections", cfg.tcp_max_connections, 1, 100000, "connections");
  r.number("lease_ttl", cfg.lease_ttl, 2, 3600, "seconds");
  r.str("host_address", cfg.host_address);
  r.str("check_ca_file", cfg.check_ca_file);
  if (!cfg.check_ca_file.empty() && ::access(cfg.check_ca_file.c_str(), R_OK) != 0)
    problems.push_back({"check_ca_file", "cannot read " + cfg.check_ca_file + ": " +
                                             std::strerror(errno)});
  if (!cfg.host_address.empty()) {
    SocketAddress probe;
    if (!parse_socket_address(cfg.host_address.find(':') != std::string::npos
                                  ? "[" + cfg.host_address + "]"
                                  : cfg.host_address,
                              1, probe))
      problems.push_back({"host_address", "\"" + cfg.host_address + "\" is not an IP address"});
  }
  r.str("vip_cidr", cfg.vip_cidr);
  r.str("vip_table", cfg.vip_table);
  r.number("vip_masquerade_mark", cfg.vip_masquerade_mark, 1, 0x7fffffff, "(a mark bit)");
  r.boolean("container_dns", cfg.container_dns);

  if (!cfg.vip_cidr.empty()) {
    auto slash = cfg.vip_cidr.find('/');
    in_addr a{};
    int bits = -1;
    if (slash != std::string::npos &&
        inet_pton(AF_INET, cfg.vip_cidr.substr(0, slash).c_str(), &a) == 1 &&
        cfg.vip_cidr.find_first_not_of("0123456789", slash + 1) == std::string::npos &&
        slash + 1 < cfg.vip_cidr.size() && cfg.vip_cidr.size() - slash <= 3)
      bits = std::stoi(cfg.vip_cidr.substr(slash + 1));
    if (bits < 8 || bits > 30) {
      problems.push_back({"vip_cidr", "\"" + cfg.vip_cidr +
                                          "\" is not an IPv4 CIDR from /8 to /30, e.g. "
                                          "\"10.43.0.0/16\""});
    } else {
      const uint32_t mask = bits == 0 ? 0 : ~0u << (32 - bits);
      cfg.vip_base = ntohl(a.s_addr) & mask;
      cfg.vip_size = ~mask + 1;
    }
  }
  {
    const std::string &t = cfg.vip_table;
    bool ok = !t.empty() && t.size() <= 64 && std::all_of(t.begin(), t.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    });
    if (!ok)
      problems.push_back(
          {"vip_table", "\"" + t + "\" is not an nftables table name ([A-Za-z0-9_])"});
  }

  // The domain: one or more DNS labels.
  {
    std::string d = cfg.domain;
    if (!d.empty() && d.back() == '.') d.pop_back();
    bool ok = !d.empty() && d.size() <= 200;
    std::stringstream ss(d);
    std::string label;
    while (ok && std::getline(ss, label, '.')) ok = is_dns_label(label);
    if (!ok)
      problems.push_back({"domain", "\"" + cfg.domain +
                                        "\" is not a domain of lowercase DNS labels "
                                        "(letters, digits, '-'), e.g. \"flotilla\""});
  }
  cfg.listen_addrs.clear();
  for (size_t i = 0; i < cfg.listen.size(); ++i) {
    SocketAddress a;
    if (!parse_socket_address(cfg.listen[i], 53, a))
      problems.push_back({"listen[" + std::to_string(i) + "]",
                          "\"" + cfg.listen[i] +
                              "\" is not an address with an optional port, e.g. "
                              "\"10.42.1.1:53\" or \"[fd00::1]:53\""});
    else
      cfg.listen_addrs.push_back(a);
  }
  cfg.upstream_addrs.clear();
  for (size_t i = 0; i < cfg.upstreams.size(); ++i) {
    SocketAddress a;
    if (!parse_socket_address(cfg.upstreams[i], 53, a))
      problems.push_back({"upstreams[" + std::to_string(i) + "]",
                          "\"" + cfg.upstreams[i] +
                              "\" is not an address with an optional port, e.g. \"10.0.0.2\" "
                              "or \"127.0.0.1:5353\""});
    else
      cfg.upstream_addrs.push_back(a);
  }
  return problems;
}

bool listen_covers(const std::vector<SocketAddress> &listen, const SocketAddress &a) {
  for (const auto &l : listen) {
    if (same_address(l, a)) return true;
    if (l.ss.ss_family != a.ss.ss_family) continue;
    if (l.ss.ss_family == AF_INET) {
      auto *x = reinterpret_cast<const sockaddr_in *>(&l.ss);
      auto *y = reinterpret_cast<const sockaddr_in *>(&a.ss);
      if (x->sin_addr.s_addr == htonl(INADDR_ANY) && x->sin_port == y->sin_port) return true;
    } else if (l.ss.ss_family == AF_INET6) {
      auto *x = reinterpret_cast<const sockaddr_in6 *>(&l.ss);
      auto *y = reinterpret_cast<const sockaddr_in6 *>(&a.ss);
      if (IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) && x->sin6_port == y->sin6_port) return true;
    }
  }
  return false;
}

std::vector<SocketAddress> read_resolv_conf(const std::string &path,
                                            const std::vector<SocketAddress> &exclude,
                                            std::string &error) {
  std::vector<SocketAddress> out;
  std::ifstream in(path);
  if (!in) {
    error = path + ": " + std::strerror(errno);
    return out;
  }
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string word, addr;
    if (!(ls >> word) || word != "nameserver" || !(ls >> addr)) continue;
    SocketAddress a;
    if (!parse_socket_address(addr.find(':') != std::string::npos ? "[" + addr + "]" : addr, 53, a))
      continue;
    bool self = false;
    for (const auto &e : exclude) self = self || same_address(a, e);
    if (!self) out.push_back(a);
  }
  return out;
}

}  // namespace flotilla::discovery
