#include "vip_map.h"

#include <algorithm>
#include <cstdio>
#include <optional>

namespace flotilla::discovery {

namespace {

// The VIP's keys in the set it is in: VIP . port in svc-n<K> (both
// protocols go through the same rules), VIP . protocol . port in
// no-endpoints.
std::vector<std::string> keys(const VipService &s) {
  const std::string p = std::to_string(s.port);
  if (!s.backends.empty()) return {s.vip + " . " + p};
  return {s.vip + " . tcp . " + p, s.vip + " . udp . " + p};
}

std::string slot_key(const VipService &s, size_t i) {
  return s.vip + " . " + std::to_string(s.port) + " . " + std::to_string(i);
}

std::string endpoint(const VipBackend &b) {
  return b.address + " . " + std::to_string(b.port);
}

}  // namespace

size_t VipChange::elements() const {
  size_t n = 0;
  for (const auto &[set, e] : del) n += e.size();
  for (const auto &[set, e] : add) n += e.size();
  return n;
}

std::vector<std::string> VipChange::commands(const std::string &table, size_t chunk) const {
  std::vector<std::string> out = prelude;
  auto emit = [&](const char *verb, const std::map<std::string, std::vector<std::string>> &m) {
    for (const auto &[set, elems] : m) {
      for (size_t at = 0; at < elems.size(); at += chunk) {
        std::string c = std::string(verb) + " element ip " + table + " " + set + " { ";
        for (size_t i = at; i < std::min(elems.size(), at + chunk); ++i) {
          if (i > at) c += ", ";
          c += elems[i];
        }
        out.push_back(c + " }");
      }
    }
  };
  emit("delete", del);
  emit("add", add);
  return out;
}

VipMap::VipMap(std::string table, uint32_t masquerade_mark)
    : table_(std::move(table)), mark_(masquerade_mark) {}

std::vector<std::string> VipMap::setup(size_t preset_counts) {
  counts_.clear();
  hairpin_.clear();
  const std::string t = "ip " + table_;
  char mark[16];
  std::snprintf(mark, sizeof mark, "0x%x", mark_);
  const std::string key = "ip daddr . meta l4proto . th dport";
  std::vector<std::string> out = {
      "add table " + t,
      "delete table " + t,
      "add table " + t,
      "add map " + t +
          " backends { typeof ip daddr . tcp dport . numgen random mod 1 : ip daddr . tcp dport; }",
      "add set " + t + " no-endpoints { type ipv4_addr . inet_proto . inet_service; }",
      "add set " + t + " hairpin { type ipv4_addr . ipv4_addr; }",
      // One rule per backend count in use (added with its set).
      "add chain " + t + " services",
      // DNAT for traffic from containers (prerouting) and from the host
      // itself (output).
      "add chain " + t + " prerouting { type nat hook prerouting priority dstnat; policy accept; }",
      "add chain " + t + " output { type nat hook output priority -100; policy accept; }",
      "add rule " + t + " prerouting meta l4proto { tcp, udp } jump services",
      "add rule " + t + " output meta l4proto { tcp, udp } jump services",
      "add chain " + t +
          " postrouting { type nat hook postrouting priority srcnat; policy accept; }",
      // A backend that reached itself through its VIP: its reply must come
      // back through this host, so the source is rewritten.
      "add rule " + t + " postrouting ct status dnat ip saddr . ip daddr @hairpin masquerade",
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
      "add rule " + t + " filter-input ct state new meta l4proto { tcp, udp } " + key +
          " @no-endpoints goto reject-chain",
      "add rule " + t + " filter-forward ct state new meta l4proto { tcp, udp } " + key +
          " @no-endpoints goto reject-chain",
      "add rule " + t + " filter-output ct state new meta l4proto { tcp, udp } " + key +
          " @no-endpoints goto reject-chain",
  };
  for (size_t k = 1; k <= preset_counts; ++k) add_count(k, out);
  return out;
}

void VipMap::add_count(size_t k, std::vector<std::string> &out) {
  const std::string t = "ip " + table_;
  const std::string set = count_set(k);
  out.push_back("add set " + t + " " + set + " { type ipv4_addr . inet_service; }");
  // One rule per protocol: nft 1.0.6 cannot read back a rule that maps
  // `th dport` (its cache does so before every `add rule`).
  for (const char *proto : {"tcp", "udp"}) {
    const std::string p = proto;
    out.push_back("add rule " + t + " services meta l4proto " + p + " ip daddr . " + p +
                  " dport @" + set + " dnat ip addr . port to ip daddr . " + p +
                  " dport . numgen random mod " + std::to_string(k) + " map @backends");
  }
  counts_.insert(k);
}

std::vector<std::string> VipMap::teardown() const {
  return {"add table ip " + table_, "delete table ip " + table_};
}

VipService VipMap::update(const VipService *before, const VipService *after, VipChange &out) {
  VipService placed;
  if (after) {
    placed = *after;
    placed.backends.clear();
    // Slots: a backend that stays keeps its slot if the slot still exists;
    // the others fill the free slots in order.
    std::vector<VipBackend> wanted = after->backends;
    std::sort(wanted.begin(), wanted.end());
    wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
    const size_t n = wanted.size();
    std::vector<std::optional<VipBackend>> slots(n);
    std::set<VipBackend> taken;
    if (before && before->vip == after->vip && before->port == after->port)
      for (size_t i = 0; i < std::min(n, before->backends.size()); ++i)
        if (std::binary_search(wanted.begin(), wanted.end(), before->backends[i])) {
          slots[i] = before->backends[i];
          taken.insert(before->backends[i]);
        }
    size_t next = 0;
    for (auto &s : slots) {
      if (s) continue;
      while (taken.count(wanted[next])) ++next;
      s = wanted[next++];
    }
    for (auto &s : slots) placed.backends.push_back(*s);
  }
  if (before && after && *before == placed) return placed;

  const std::string t = "ip " + table_;
  const bool same_key = before && after && before->vip == after->vip && before->port == after->port;
  auto set_of = [](const VipService &s) {
    return s.backends.empty() ? std::string("no-endpoints") : count_set(s.backends.size());
  };

  // The VIP's keys: in svc-n<K> for K passing endpoints, else no-endpoints.
  if (after && !placed.backends.empty() && !counts_.count(placed.backends.size()))
    add_count(placed.backends.size(), out.prelude);
  if (!same_key || set_of(*before) != set_of(placed)) {
    if (before)
      for (auto &k : keys(*before)) out.del[set_of(*before)].push_back(k);
    if (after)
      for (auto &k : keys(placed)) out.add[set_of(placed)].push_back(k);
  }

  // The slots of map `backends` that changed.
  const size_t old_n = before ? before->backends.size() : 0;
  const size_t new_n = after ? placed.backends.size() : 0;
  for (size_t i = 0; i < std::max(old_n, new_n); ++i) {
    const VipBackend *o = i < old_n ? &before->backends[i] : nullptr;
    const VipBackend *n = i < new_n ? &placed.backends[i] : nullptr;
    if (same_key && o && n && *o == *n) continue;
    if (o) out.del["backends"].push_back(slot_key(*before, i));
    if (n) out.add["backends"].push_back(slot_key(placed, i) + " : " + endpoint(*n));
  }

  // Hairpin addresses, counted over every service that uses them.
  std::set<std::string> old_addrs, new_addrs;
  if (before)
    for (const auto &b : before->backends) old_addrs.insert(b.address);
  if (after)
    for (const auto &b : placed.backends) new_addrs.insert(b.address);
  for (const auto &a : old_addrs)
    if (!new_addrs.count(a) && --hairpin_[a] == 0) {
      hairpin_.erase(a);
      out.del["hairpin"].push_back(a + " . " + a);
    }
  for (const auto &a : new_addrs)
    if (!old_addrs.count(a) && hairpin_[a]++ == 0) out.add["hairpin"].push_back(a + " . " + a);
  return placed;
}

}  // namespace flotilla::discovery
