#include "vip_map.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <set>

namespace flotilla::discovery {

namespace {

std::string hex_of(const std::string &ipv4) {
  in_addr a{};
  if (inet_pton(AF_INET, ipv4.c_str(), &a) != 1) return "bad";
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", ntohl(a.s_addr));
  return buf;
}

// Both protocols: a service's port is reachable over TCP and UDP. With a
// verdict, each key carries it.
std::string keys(const VipService &s, const std::string &verdict = "") {
  const std::string p = std::to_string(s.port);
  const std::string v = verdict.empty() ? "" : " : " + verdict;
  return s.vip + " . tcp . " + p + v + ", " + s.vip + " . udp . " + p + v;
}

}  // namespace

VipMap::VipMap(std::string table, uint32_t masquerade_mark)
    : table_(std::move(table)), mark_(masquerade_mark) {}

std::string VipMap::service_chain(const std::string &service) {
  return "svc-" + service;
}

std::string VipMap::endpoint_chain(const std::string &service, const VipBackend &b) {
  return "ep-" + service + "-" + hex_of(b.address) + "-" + std::to_string(b.port);
}

std::vector<std::string> VipMap::setup() const {
  const std::string t = "ip " + table_;
  char mark[16];
  std::snprintf(mark, sizeof mark, "0x%x", mark_);
  return {
      "add table " + t,
      "add map " + t + " services { type ipv4_addr . inet_proto . inet_service : verdict; }",
      "add map " + t + " no-endpoints { type ipv4_addr . inet_proto . inet_service : verdict; }",
      // DNAT for traffic from containers (prerouting) and from the host
      // itself (output).
      "add chain " + t + " prerouting { type nat hook prerouting priority dstnat; policy accept; }",
      "add chain " + t + " output { type nat hook output priority -100; policy accept; }",
      "add rule " + t +
          " prerouting meta l4proto { tcp, udp } ip daddr . meta l4proto . th dport vmap @services",
      "add rule " + t +
          " output meta l4proto { tcp, udp } ip daddr . meta l4proto . th dport vmap @services",
      "add chain " + t +
          " postrouting { type nat hook postrouting priority srcnat; policy accept; }",
      "add rule " + t + " postrouting meta mark & " + mark + " == " + mark + " masquerade",
      // Services without a passing endpoint: refused at once.
      "add chain " + t +
          " filter-input { type filter hook input priority filter - 10; policy accept; }",
      "add chain " + t +
          " filter-forward { type filter hook forward priority filter - 10; policy accept; }",
      "add chain " + t +
          " filter-output { type filter hook output priority filter - 10; policy accept; }",
      "add chain " + t + " reject-chain",
      "add rule " + t + " reject-chain meta l4proto tcp reject with tcp reset",
      "add rule " + t + " reject-chain reject",
      "add rule " + t +
          " filter-input ct state new meta l4proto { tcp, udp } ip daddr . meta l4proto . th dport "
          "vmap @no-endpoints",
      "add rule " + t +
          " filter-forward ct state new meta l4proto { tcp, udp } ip daddr . meta l4proto . th "
          "dport vmap @no-endpoints",
      "add rule " + t +
          " filter-output ct state new meta l4proto { tcp, udp } ip daddr . meta l4proto . th "
          "dport vmap @no-endpoints",
      "add chain " + t + " mark-for-masquerade",
      "add rule " + t + " mark-for-masquerade meta mark set meta mark | " + mark,
  };
}

std::vector<std::string> VipMap::teardown() const {
  return {"add table ip " + table_, "delete table ip " + table_};
}

std::vector<std::string> VipMap::update(const VipService *before, const VipService *after) const {
  std::vector<std::string> out;
  if (before && after && *before == *after) return out;
  const std::string t = "ip " + table_;
  const bool had = before && !before->backends.empty();
  const bool has = after && !after->backends.empty();
  const bool key_moved =
      before && after && (before->vip != after->vip || before->port != after->port);
  const std::string name = after ? after->name : before->name;
  const std::string svc = service_chain(name);

  // 1. The map elements that stop pointing where they did.
  if (before && (key_moved || !after || had != has))
    out.push_back("delete element " + t + (had ? " services" : " no-endpoints") + " { " +
                  keys(*before) + " }");

  // 2. New endpoint chains.
  std::set<VipBackend> old_set, new_set;
  if (before) old_set.insert(before->backends.begin(), before->backends.end());
  if (after) new_set.insert(after->backends.begin(), after->backends.end());
  for (const auto &b : new_set) {
    if (old_set.count(b)) continue;
    const std::string ep = endpoint_chain(name, b);
    const std::string to = b.address + ":" + std::to_string(b.port);
    out.push_back("add chain " + t + " " + ep);
    out.push_back("add rule " + t + " " + ep + " ip saddr " + b.address +
                  " jump mark-for-masquerade");
    out.push_back("add rule " + t + " " + ep + " meta l4proto tcp dnat ip to " + to);
    out.push_back("add rule " + t + " " + ep + " meta l4proto udp dnat ip to " + to);
  }

  // 3. The service chain: one numgen rule over the passing endpoints.
  const bool backends_changed = old_set != new_set;
  if (has && (!before || backends_changed || !had)) {
    if (!before)
      out.push_back("add chain " + t + " " + svc);
    else
      out.push_back("flush chain " + t + " " + svc);
    std::string vmap;
    size_t i = 0;
    for (const auto &b : new_set) {
      if (i) vmap += ", ";
      vmap += std::to_string(i++) + " : goto " + endpoint_chain(name, b);
    }
    out.push_back("add rule " + t + " " + svc + " numgen random mod " +
                  std::to_string(new_set.size()) + " vmap { " + vmap + " }");
  } else if (!has && before && had) {
    out.push_back("flush chain " + t + " " + svc);
  } else if (!before && !has) {
    out.push_back("add chain " + t + " " + svc);  // so a later update can flush it
  }

  // 4. The map elements that now point somewhere new.
  if (after && (!before || key_moved || had != has))
    out.push_back("add element " + t + (has ? " services" : " no-endpoints") + " { " +
                  keys(*after, has ? "goto " + svc : "goto reject-chain") + " }");

  // 5. Endpoint chains nothing jumps to any more.
  for (const auto &b : old_set)
    if (!new_set.count(b)) out.push_back("delete chain " + t + " " + endpoint_chain(name, b));
  if (!after) out.push_back("delete chain " + t + " " + svc);
  return out;
}

}  // namespace flotilla::discovery
