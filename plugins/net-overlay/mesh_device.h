// The mesh on this node's device, synchronously (the host's thread pool,
// one call at a time with its own netlink socket): wireguard-go started as
// a process of its own that outlives the daemon (or reattached to), the
// device's key, port, MTU and address, the peers by diff, and the routes
// of the other nodes' subnets through the device.
#pragma once

#include <string>
#include <vector>

#include "cidr.h"
#include "netlink.h"
#include "wg_device.h"
#include "wg_peer_set.h"

namespace flotilla::overlay {

struct MeshSpec {
  std::string backend;  // "userspace" | "kernel"
  std::string ifname;
  std::string wireguard_go;  // the binary (userspace)
  std::string state_dir;     // <data_dir>/wireguard: pid file and wireguard-go's log
  unsigned mtu = 1420;
  int listen_port = 51820;
  WgKey private_key{};
  std::vector<std::string> addresses;  // on the device: the node's gateways, /32 and /128
  std::vector<WgPeer> peers;           // desired
  std::vector<std::string> routes;     // desired, through the device
  std::vector<Cidr> cluster;           // routes of the device outside these are not ours
};

struct MeshOutcome {
  int pid = 0;              // wireguard-go's (0: unknown, or kernel)
  bool started = false;     // wireguard-go was started by this call
  bool reattached = false;  // found running
  int added = 0, updated = 0, removed = 0, routes_changed = 0;
  bool key_set = false;
  WgDevice device;  // the device after the changes, for status
};

MeshOutcome converge_mesh(const MeshSpec &spec, netlink::Socket &sock);

// What the device has now (status), without changing anything.
WgDevice read_mesh_device(const std::string &backend, const std::string &ifname);

// The wireguard-go of state_dir's pid file, when it still runs for ifname.
int wireguard_go_pid(const std::string &state_dir, const std::string &ifname);

// --cleanup-network: wireguard-go stopped (by its pid, SIGTERM then
// SIGKILL), the device deleted. Returns what it removed.
std::vector<std::string> remove_mesh(const std::string &state_dir, const std::string &ifname,
                                     netlink::Socket &sock);

}  // namespace flotilla::overlay
