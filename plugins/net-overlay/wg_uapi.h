// The userspace backend: wireguard-go (Debian's `wireguard-go`) and its
// cross-platform UAPI, a text protocol on /var/run/wireguard/<ifname>.sock
// (set=1 / get=1, key=value lines, keys in hex). The plugin starts
// wireguard-go as a process of its own that outlives the daemon; a
// restarted daemon finds the socket and reattaches without restarting it.
#pragma once

#include <string>
#include <vector>

#include "wg_device.h"
#include "wg_peer_set.h"

namespace flotilla::overlay {

// The UAPI text of a set operation (unit-tested).
std::string uapi_set_text(const WgDevice &device, const std::vector<PeerChange> &changes);
// A get reply's text -> the device.
WgDevice uapi_parse_get(const std::string &text);

class UapiWg {
 public:
  explicit UapiWg(std::string socket_dir = "/var/run/wireguard") : dir_(std::move(socket_dir)) {}
  std::string socket_path(const std::string &ifname) const {
    return dir_ + "/" + ifname + ".sock";
  }
  // Whether a wireguard-go answers for ifname.
  bool running(const std::string &ifname) const;
  WgDevice get(const std::string &ifname) const;
  void set(const std::string &ifname, const WgDevice &device,
           const std::vector<PeerChange> &changes) const;

 private:
  std::string exchange(const std::string &ifname, const std::string &request) const;
  std::string dir_;
};

}  // namespace flotilla::overlay
