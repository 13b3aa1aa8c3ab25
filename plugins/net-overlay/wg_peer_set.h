// The WireGuard mesh's one diff engine: the peers this node should have
// (from the other nodes' records) against the peers the device has (from
// either backend), as the fewest changes: add, update (endpoint,
// allowed-ips, keepalive), remove. Never "replace all peers": a peer whose
// configuration is unchanged is not touched, so its traffic never stops.
// Pure: no I/O (unit-tested).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flotilla::overlay {

struct WgPeer {
  std::string public_key;  // base64, 44 characters
  std::string endpoint;    // "192.0.2.7:51820", "[fd00::7]:51820"; "" unknown
  std::vector<std::string> allowed_ips;  // CIDRs, kept sorted
  int keepalive = 0;       // seconds, 0: off
  bool behind_nat = false;  // desired only: keep an endpoint WireGuard roamed to
  // actual only (status):
  int64_t last_handshake_sec = 0;
  uint64_t rx_bytes = 0, tx_bytes = 0;
};

struct PeerChange {
  enum class Kind { add, update, remove };
  Kind kind = Kind::add;
  WgPeer peer;
  bool set_endpoint = false;
  bool replace_allowed_ips = false;
  bool set_keepalive = false;
};

// The changes that turn actual into desired. Peers are keyed by public
// key; a duplicate key in desired keeps its first entry.
std::vector<PeerChange> diff_peers(std::vector<WgPeer> desired, std::vector<WgPeer> actual);

}  // namespace flotilla::overlay
