// A WireGuard device's configuration and state, as both backends (kernel:
// generic netlink; userspace: wireguard-go's UAPI socket) read and write it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "wg_peer_set.h"

namespace flotilla::overlay {

using WgKey = std::array<uint8_t, 32>;

class WgError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string key_to_base64(const WgKey &k);
std::optional<WgKey> key_from_base64(const std::string &b64);
std::string key_to_hex(const WgKey &k);
std::optional<WgKey> key_from_hex(const std::string &hex);
// A new Curve25519 private key (clamped), and the public key of one.
WgKey generate_private_key();
WgKey public_key_of(const WgKey &private_key);

struct WgDevice {
  std::optional<WgKey> private_key;  // set: write it; read: what the device has
  int listen_port = 0;               // 0: leave (write) / unknown (read)
  std::vector<WgPeer> peers;         // read only
};

}  // namespace flotilla::overlay
