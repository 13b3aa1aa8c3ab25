#include "wg_peer_set.h"

#include <algorithm>
#include <map>

namespace flotilla::overlay {

std::vector<PeerChange> diff_peers(std::vector<WgPeer> desired, std::vector<WgPeer> actual) {
  std::map<std::string, WgPeer> want, have;
  for (auto &p : desired) {
    std::sort(p.allowed_ips.begin(), p.allowed_ips.end());
    want.emplace(p.public_key, std::move(p));
  }
  for (auto &p : actual) {
    std::sort(p.allowed_ips.begin(), p.allowed_ips.end());
    have.emplace(p.public_key, std::move(p));
  }
  std::vector<PeerChange> out;
  for (const auto &[key, h] : have)
    if (!want.count(key)) {
      PeerChange c;
      c.kind = PeerChange::Kind::remove;
      c.peer.public_key = key;
      out.push_back(std::move(c));
    }
  for (const auto &[key, w] : want) {
    auto it = have.find(key);
    PeerChange c;
    c.peer = w;
    if (it == have.end()) {
      c.kind = PeerChange::Kind::add;
      c.set_endpoint = !w.endpoint.empty();
      c.replace_allowed_ips = true;
      c.set_keepalive = w.keepalive != 0;
      out.push_back(std::move(c));
      continue;
    }
    const WgPeer &h = it->second;
    c.kind = PeerChange::Kind::update;
    // A peer behind NAT is reached where its packets last came from: an
    // endpoint WireGuard roamed to stays.
    const bool roamed = w.behind_nat && !h.endpoint.empty();
    c.set_endpoint = !w.endpoint.empty() && w.endpoint != h.endpoint && !roamed;
    c.replace_allowed_ips = w.allowed_ips != h.allowed_ips;
    c.set_keepalive = w.keepalive != h.keepalive;
    if (c.set_endpoint || c.replace_allowed_ips || c.set_keepalive) out.push_back(std::move(c));
  }
  return out;
}

}  // namespace flotilla::overlay
