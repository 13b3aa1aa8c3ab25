// The WireGuard mesh's pure parts: this node's record in the store
// (/flotilla/net/nodes/<node>: public key, underlay endpoint, key
// generation, subnets), the peers and routes the other nodes' records ask
// for, and the key file in the data dir. No device I/O (unit-tested);
// mesh_device.h applies them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "wg_device.h"
#include "wg_peer_set.h"

namespace flotilla::overlay {

struct NodeRecord {
  std::string node;
  std::string public_key;  // base64
  std::string endpoint;    // "10.88.0.11:51820"
  int64_t key_generation = 1;
  std::vector<std::string> subnets;  // the node's leased subnets (CIDRs)
  bool behind_nat = false;
  std::string backend;  // "userspace" | "kernel", for status
  // During a key rotation: the key the node switches to next. The others
  // add it as a peer without allowed-ips (make before break), so the
  // handshake with it is ready when the record's public_key changes.
  std::string next_public_key;
  std::string to_json() const;
  // nullopt when text is not a record (a bad key, no subnets): ignored.
  static std::optional<NodeRecord> from_json(const std::string &text);
  bool operator==(const NodeRecord &) const = default;
};

// The peers node `self` should have: every other node's record, with its
// subnets as allowed-ips; keepalive for peers behind NAT, and for every
// peer when self is behind NAT; a rotating node's next key as a peer with
// no allowed-ips.
std::vector<WgPeer> desired_peers(const std::map<std::string, NodeRecord> &records,
                                  const std::string &self, bool self_behind_nat, int keepalive);
// The other nodes' subnets, routed through the device.
std::vector<std::string> desired_routes(const std::map<std::string, NodeRecord> &records,
                                        const std::string &self);

// The node's key: <dir>/key.json = {"private_key": base64, "generation":
// n}, mode 0600, made on first use. Throws WgError naming the file.
// During a rotation "next_private_key" too.
struct NodeKey {
  WgKey private_key{};
  int64_t generation = 1;
  std::optional<WgKey> next;
  std::string public_b64() const { return key_to_base64(public_key_of(private_key)); }
};
NodeKey load_or_create_key(const std::string &dir);
void save_key(const std::string &dir, const NodeKey &key);

}  // namespace flotilla::overlay
