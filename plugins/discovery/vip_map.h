// Virtual IPs in nftables, in the plugin's own table (kube-proxy's nftables
// design): a verdict map keyed on VIP . protocol . port sends new
// connections to a per-service chain, which picks a passing endpoint with
// `numgen random mod N` and jumps to that endpoint's chain, which marks
// hairpin traffic (a backend reaching itself through the VIP) for
// masquerade and DNATs. A VIP whose service has no passing endpoint is in
// a second map whose verdict rejects at once (TCP reset, ICMP port
// unreachable) rather than letting the client time out.
//
// This file only writes the nft commands; vip_sync.cc applies them. Every
// change is the commands for one service's difference, applied as one
// atomic batch: the rest of the table is never rewritten.
#pragma once

#include <cstdint>
#include <map>
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
  std::vector<VipBackend> backends;  // passing only, sorted
  bool operator==(const VipService &o) const {
    return name == o.name && vip == o.vip && port == o.port && backends == o.backends;
  }
};

class VipMap {
 public:
  // table: the nft table name (family ip); mark: the packet-mark bit that
  // asks postrouting to masquerade.
  VipMap(std::string table, uint32_t masquerade_mark);

  // The table, both maps and the base chains; applied once at start, after
  // deleting a leftover table of the same name.
  std::vector<std::string> setup() const;
  std::vector<std::string> teardown() const;
  // The commands that turn `before` into `after` for one service; either
  // may be null (a new or a removed service). Empty when nothing changed.
  std::vector<std::string> update(const VipService *before, const VipService *after) const;

  const std::string &table() const { return table_; }
  static std::string service_chain(const std::string &service);
  static std::string endpoint_chain(const std::string &service, const VipBackend &b);

 private:
  std::string table_;
  uint32_t mark_;
};

}  // namespace flotilla::discovery
