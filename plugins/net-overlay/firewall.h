// net-overlay's nftables table (`inet <nft_table>`): forwarding, egress
// masquerade, TCP MSS clamping, port mappings. The text of each batch is
// made here (unit-tested); lib/nft applies it in one transaction.
#pragma once

#include <string>
#include <vector>

#include "cidr.h"
#include "nft.h"

namespace flotilla::overlay {

struct PortMapping {
  int host = 0;  // host port
  int to = 0;    // container port
  std::string protocol = "tcp";  // "tcp" or "udp"
  bool operator==(const PortMapping &) const = default;
};

struct FirewallSpec {
  std::string table;   // nft table name
  std::string bridge;  // the node's bridge
  Cidr cluster;        // IPv4 cluster CIDR
  std::optional<Cidr> cluster_v6;
  bool masquerade = true;
};

// One attachment's mappings, to the container's addresses.
struct MappedAlloc {
  std::string ip4, ip6;  // addresses without prefix; ip6 may be ""
  std::vector<PortMapping> ports;
};

// The whole table, replacing whatever the table held before, in one
// transaction (a restarted daemon re-applies it with every attachment's
// mappings: packets see the old table or the new one, never none).
nft::Batch full_table(const FirewallSpec &spec, const std::vector<MappedAlloc> &allocs);
// Adding and removing one attachment's mappings.
nft::Batch add_mappings(const FirewallSpec &spec, const MappedAlloc &a);
nft::Batch delete_mappings(const FirewallSpec &spec, const MappedAlloc &a);
// Removes the table (`--cleanup-network`); no error when it is not there.
nft::Batch delete_table(const FirewallSpec &spec);

}  // namespace flotilla::overlay
