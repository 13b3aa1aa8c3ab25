// The kernel backend's messages: WG_CMD_SET_DEVICE and the replies of
// WG_CMD_GET_DEVICE, in the attribute layout of <linux/wireguard.h>,
// built and read with libnl-genl. A large peer list (or one peer's large
// allowed-ips list) does not fit one netlink message: it is split as the
// kernel requires: the device's own attributes in the first message only,
// every later one naming the device and carrying more peers; a peer cut
// between two messages repeats its public key, and only its first part
// carries WGPEER_F_REPLACE_ALLOWEDIPS. Building and reading are pure
// (unit-tested without a WireGuard module); KernelWg sends them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "wg_device.h"
#include "wg_peer_set.h"

struct nl_sock;

namespace flotilla::overlay {

using NetlinkMessage = std::vector<uint8_t>;

// Messages for one WG_CMD_SET_DEVICE change of ifname, each at most
// max_bytes long (the receive buffer the kernel allows; 4096 by default).
std::vector<NetlinkMessage> build_set_device(int family_id, const std::string &ifname,
                                             const WgDevice &device,
                                             const std::vector<PeerChange> &changes,
                                             size_t max_bytes = 4096);

// The device as one or more messages in that layout describe it (the
// replies of a WG_CMD_GET_DEVICE dump, or messages build_set_device made),
// with peers split across messages put back together. Peer flags are
// returned through removed (WGPEER_F_REMOVE_ME) so that tests can check a
// set message too.
WgDevice parse_device(const std::vector<NetlinkMessage> &messages,
                      std::vector<std::string> *removed = nullptr,
                      std::vector<std::string> *replaced = nullptr);

// The kernel's WireGuard, through generic netlink.
class KernelWg {
 public:
  // Throws WgError when the kernel has no "wireguard" generic netlink
  // family (no module): say so and use the userspace backend.
  KernelWg();
  ~KernelWg();
  KernelWg(const KernelWg &) = delete;
  KernelWg &operator=(const KernelWg &) = delete;

  WgDevice get(const std::string &ifname);
  void set(const std::string &ifname, const WgDevice &device,
           const std::vector<PeerChange> &changes);

 private:
  ::nl_sock *sk_ = nullptr;
  int family_ = 0;
};

}  // namespace flotilla::overlay
