// Virtual IPs in nftables, in the plugin's own table. Every endpoint change
// touches set and map elements only, never a rule or a chain:
//
//   - set `svc-n<K>` holds VIP . port of every service with K passing
//     endpoints; chain `services` has one rule per K in use and protocol,
//       meta l4proto tcp ip daddr . tcp dport @svc-n<K>
//         dnat ip addr . port to ip daddr . tcp dport . numgen random mod K map @backends
//     so a new connection picks one of its service's K endpoints at
//     random (numgen random mod K, as kube-proxy's nftables mode does);
//   - map `backends`: VIP . port . slot (0..K-1) → endpoint address . port;
//   - set `no-endpoints`: VIP . protocol . port of services without a
//     passing endpoint,
//     rejected at once (TCP reset, ICMP port unreachable), not a timeout;
//   - set `hairpin`: endpoint . endpoint for every endpoint address, so
//     postrouting masquerades a backend that reached itself through its VIP.
//
// Why elements and not kube-proxy's chain per service and per endpoint:
// the kernel validates the whole jump graph of a table at every commit that
// adds a rule or a verdict (nf_tables_validate), which costs about 25 ms at
// 10,000 services on this project's machine; a commit of data elements is
// not validated. The rule for a new K is the one rule change, once per K;
// the set-up makes those of K = 1..kPresetCounts, so an endpoint change
// adds a rule only for a service that grows past kPresetCounts passing
// endpoints. vip_bench, 10,000 services: the first change to K = 1 took
// 28 ms when it needed its rule, where the others' p50 was 3.7 ms
// (README "Benchmarks"). Unused sets and rules cost a lookup each, only on
// the first packet of a connection (the chain is a nat chain).
//
// This file only writes the nft commands; vip_sync.cc applies them.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace flotilla::discovery {

struct VipBackend {
  std::string address;  // IPv4
  uint16_t port = 0;
  bool operator<(const VipBackend &o) const {
    return address != o.address ? address < o.address : port < o.port;
  }
  bool operator==(const VipBackend &o) const { return address == o.address && port == o.port; }
};

struct VipService {
  std::string name;  // a DNS label
  std::string vip;   // IPv4
  uint16_t port = 0;
  // Passing only. In the desired state any order; in the state VipMap
  // holds, slot order (backend i is element slot i of map `backends`).
  std::vector<VipBackend> backends;
  bool operator==(const VipService &o) const {
    return name == o.name && vip == o.vip && port == o.port && backends == o.backends;
  }
};

// The elements one batch adds and deletes, by set; and the commands that
// must come first (a set and rule for a backend count not seen before).
struct VipChange {
  std::vector<std::string> prelude;
  std::map<std::string, std::vector<std::string>> del, add;  // set → elements
  bool empty() const { return prelude.empty() && del.empty() && add.empty(); }
  size_t elements() const;
  // prelude, then every delete, then every add, at most `chunk` elements
  // a command.
  std::vector<std::string> commands(const std::string &table, size_t chunk = 2000) const;
};

class VipMap {
 public:
  // table: the nft table name (family ip); mark: the packet-mark bit that
  // also asks postrouting to masquerade.
  VipMap(std::string table, uint32_t masquerade_mark);

  // Backend counts whose set and rule the set-up makes ahead.
  static constexpr size_t kPresetCounts = 8;

  // The table, its sets and the base chains, after deleting a leftover
  // table of the same name, with the sets and rules of K = 1..preset_counts.
  // Forgets every other backend count and every hairpin address this map
  // holds: what follows starts from an empty table.
  std::vector<std::string> setup(size_t preset_counts = kPresetCounts);
  std::vector<std::string> teardown() const;

  // Adds to `out` the elements that turn `before` into `after` for one
  // service (either may be null: a new or a removed service) and returns
  // `after` with its backends in slot order: a backend keeps its slot while
  // it stays (and its slot still exists), new ones fill the free slots.
  // Changes the counts and hairpin addresses this map holds.
  VipService update(const VipService *before, const VipService *after, VipChange &out);

  const std::string &table() const { return table_; }
  static std::string count_set(size_t k) { return "svc-n" + std::to_string(k); }

 private:
  // The set svc-n<k> and its rules (out), and k noted as made.
  void add_count(size_t k, std::vector<std::string> &out);

  std::string table_;
  uint32_t mark_;
  std::set<size_t> counts_;             // K with a set and rule in the table
  std::map<std::string, int> hairpin_;  // endpoint address → services using it
};

}  // namespace flotilla::discovery
