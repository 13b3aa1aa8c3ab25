#include "wg_genl.h"

#include <arpa/inet.h>
#include <linux/genetlink.h>
#include <linux/wireguard.h>
#include <netinet/in.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <sys/socket.h>

#include <cstring>
#include <memory>

#include "cidr.h"

namespace flotilla::overlay {

namespace {

struct MsgFree {
  void operator()(nl_msg *m) const { nlmsg_free(m); }
};
using MsgPtr = std::unique_ptr<nl_msg, MsgFree>;

// "192.0.2.7:51820" / "[fd00::7]:51820" -> sockaddr; false if unparsable.
bool endpoint_sockaddr(const std::string &ep, sockaddr_storage &ss, socklen_t &len) {
  std::memset(&ss, 0, sizeof ss);
  std::string host, port;
  if (!ep.empty() && ep[0] == '[') {
    auto close = ep.find(']');
    if (close == std::string::npos || close + 2 > ep.size() || ep[close + 1] != ':') return false;
    host = ep.substr(1, close - 1);
    port = ep.substr(close + 2);
  } else {
    auto colon = ep.rfind(':');
    if (colon == std::string::npos) return false;
    host = ep.substr(0, colon);
    port = ep.substr(colon + 1);
  }
  int p = std::atoi(port.c_str());
  if (p <= 0 || p > 65535) return false;
  auto *s4 = reinterpret_cast<sockaddr_in *>(&ss);
  auto *s6 = reinterpret_cast<sockaddr_in6 *>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(static_cast<uint16_t>(p));
    len = sizeof(sockaddr_in);
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(static_cast<uint16_t>(p));
    len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

std::string sockaddr_text(const void *data, int len) {
  char buf[INET6_ADDRSTRLEN];
  if (len >= static_cast<int>(sizeof(sockaddr_in))) {
    const auto *s4 = static_cast<const sockaddr_in *>(data);
    if (s4->sin_family == AF_INET) {
      inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof buf);
      return std::string(buf) + ":" + std::to_string(ntohs(s4->sin_port));
    }
  }
  if (len >= static_cast<int>(sizeof(sockaddr_in6))) {
    const auto *s6 = static_cast<const sockaddr_in6 *>(data);
    if (s6->sin6_family == AF_INET6) {
      inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof buf);
      return "[" + std::string(buf) + "]:" + std::to_string(ntohs(s6->sin6_port));
    }
  }
  return "";
}

MsgPtr new_message(int family_id, const std::string &ifname, size_t max_bytes) {
  MsgPtr m(nlmsg_alloc_size(max_bytes));
  if (!m) throw WgError("wireguard: out of memory");
  if (!genlmsg_put(m.get(), NL_AUTO_PORT, NL_AUTO_SEQ, family_id, 0, NLM_F_REQUEST | NLM_F_ACK,
                   WG_CMD_SET_DEVICE, WG_GENL_VERSION) ||
      nla_put_string(m.get(), WGDEVICE_A_IFNAME, ifname.c_str()) < 0)
    throw WgError("wireguard: a netlink message of " + std::to_string(max_bytes) +
                  " bytes cannot hold the device name");
  return m;
}

NetlinkMessage bytes_of(nl_msg *m) {
  nlmsghdr *h = nlmsg_hdr(m);
  const auto *p = reinterpret_cast<const uint8_t *>(h);
  return NetlinkMessage(p, p + h->nlmsg_len);
}

// Puts allowed-ip i of the peer; false when the message is full.
bool put_allowed_ip(nl_msg *m, const std::string &cidr_text) {
  auto c = Cidr::parse(cidr_text);
  if (!c) throw WgError("wireguard: allowed-ip \"" + cidr_text + "\" is not a CIDR");
  nlattr *ip = nla_nest_start(m, 0 | NLA_F_NESTED);
  if (!ip) return false;
  uint8_t addr[16];
  const int n = c->v6() ? 16 : 4;
  u128 v = c->base.value;
  for (int i = n - 1; i >= 0; --i) {
    addr[i] = static_cast<uint8_t>(v & 0xff);
    v >>= 8;
  }
  if (nla_put_u16(m, WGALLOWEDIP_A_FAMILY, c->v6() ? AF_INET6 : AF_INET) < 0 ||
      nla_put(m, WGALLOWEDIP_A_IPADDR, n, addr) < 0 ||
      nla_put_u8(m, WGALLOWEDIP_A_CIDR_MASK, static_cast<uint8_t>(c->prefix)) < 0) {
    nla_nest_cancel(m, ip);
    return false;
  }
  nla_nest_end(m, ip);
  return true;
}

}  // namespace

std::vector<NetlinkMessage> build_set_device(int family_id, const std::string &ifname,
                                             const WgDevice &device,
                                             const std::vector<PeerChange> &changes,
                                             size_t max_bytes) {
  std::vector<NetlinkMessage> out;
  size_t peer_i = 0, ip_i = 0;  // where the next message resumes
  bool first = true;
  while (first || peer_i < changes.size()) {
    MsgPtr m = new_message(family_id, ifname, max_bytes);
    if (first) {
      if (nla_put_u32(m.get(), WGDEVICE_A_FLAGS, 0) < 0 ||
          (device.private_key &&
           nla_put(m.get(), WGDEVICE_A_PRIVATE_KEY, 32, device.private_key->data()) < 0) ||
          (device.listen_port &&
           nla_put_u16(m.get(), WGDEVICE_A_LISTEN_PORT, static_cast<uint16_t>(device.listen_port)) <
               0))
        throw WgError("wireguard: the device attributes do not fit one message");
    }
    first = false;
    if (peer_i < changes.size()) {
      nlattr *peers = nla_nest_start(m.get(), WGDEVICE_A_PEERS | NLA_F_NESTED);
      if (!peers) throw WgError("wireguard: no room for peers in a message");
      bool progress = false;
      for (; peer_i < changes.size(); ++peer_i) {
        const PeerChange &c = changes[peer_i];
        auto key = key_from_base64(c.peer.public_key);
        if (!key) throw WgError("wireguard: peer key \"" + c.peer.public_key + "\" is not base64");
        nlattr *peer = nla_nest_start(m.get(), 0 | NLA_F_NESTED);
        if (!peer) break;
        const bool continuing = ip_i > 0;
        bool ok = nla_put(m.get(), WGPEER_A_PUBLIC_KEY, 32, key->data()) >= 0;
        if (ok && !continuing) {
          uint32_t flags = 0;
          if (c.kind == PeerChange::Kind::remove) flags |= WGPEER_F_REMOVE_ME;
          if (c.kind == PeerChange::Kind::update) flags |= WGPEER_F_UPDATE_ONLY;
          if (c.replace_allowed_ips) flags |= WGPEER_F_REPLACE_ALLOWEDIPS;
          ok = nla_put_u32(m.get(), WGPEER_A_FLAGS, flags) >= 0;
          if (ok && c.set_endpoint && !c.peer.endpoint.empty()) {
            sockaddr_storage ss;
            socklen_t len = 0;
            if (!endpoint_sockaddr(c.peer.endpoint, ss, len))
              throw WgError("wireguard: endpoint \"" + c.peer.endpoint + "\" is not host:port");
            ok = nla_put(m.get(), WGPEER_A_ENDPOINT, static_cast<int>(len), &ss) >= 0;
          }
          if (ok && c.set_keepalive)
            ok = nla_put_u16(m.get(), WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
                             static_cast<uint16_t>(c.peer.keepalive)) >= 0;
        }
        if (!ok) {
          nla_nest_cancel(m.get(), peer);
          break;
        }
        bool full = false;
        if (c.replace_allowed_ips && c.kind != PeerChange::Kind::remove &&
            ip_i < c.peer.allowed_ips.size()) {
          nlattr *ips = nla_nest_start(m.get(), WGPEER_A_ALLOWEDIPS | NLA_F_NESTED);
          if (!ips) {
            nla_nest_cancel(m.get(), peer);
            break;
          }
          const size_t start = ip_i;
          for (; ip_i < c.peer.allowed_ips.size(); ++ip_i)
            if (!put_allowed_ip(m.get(), c.peer.allowed_ips[ip_i])) {
              full = true;
              break;
            }
          if (full && ip_i == start) {
            // Not one allowed-ip fits after this peer's header: the whole
            // peer goes to the next message (as it was before).
            nla_nest_cancel(m.get(), peer);
            break;
          }
          nla_nest_end(m.get(), ips);
        }
        nla_nest_end(m.get(), peer);
        progress = true;
        if (full) break;  // this peer goes on in the next message
        ip_i = 0;
      }
      if (!progress)
        throw WgError("wireguard: one peer does not fit a message of " +
                      std::to_string(max_bytes) + " bytes");
      nla_nest_end(m.get(), peers);
    }
    out.push_back(bytes_of(m.get()));
  }
  return out;
}

WgDevice parse_device(const std::vector<NetlinkMessage> &messages,
                      std::vector<std::string> *removed, std::vector<std::string> *replaced) {
  WgDevice dev;
  for (const auto &bytes : messages) {
    auto *h = reinterpret_cast<nlmsghdr *>(const_cast<uint8_t *>(bytes.data()));
    if (bytes.size() < sizeof(nlmsghdr) || h->nlmsg_len > bytes.size())
      throw WgError("wireguard: a truncated netlink message");
    nlattr *tb[WGDEVICE_A_MAX + 1] = {};
    if (genlmsg_parse(h, 0, tb, WGDEVICE_A_MAX, nullptr) < 0)
      throw WgError("wireguard: a message that does not parse");
    if (tb[WGDEVICE_A_PRIVATE_KEY] && nla_len(tb[WGDEVICE_A_PRIVATE_KEY]) == 32) {
      WgKey k;
      std::memcpy(k.data(), nla_data(tb[WGDEVICE_A_PRIVATE_KEY]), 32);
      dev.private_key = k;
    }
    if (tb[WGDEVICE_A_LISTEN_PORT]) dev.listen_port = nla_get_u16(tb[WGDEVICE_A_LISTEN_PORT]);
    if (!tb[WGDEVICE_A_PEERS]) continue;
    nlattr *peer;
    int rem;
    nla_for_each_nested(peer, tb[WGDEVICE_A_PEERS], rem) {
      nlattr *pa[WGPEER_A_MAX + 1] = {};
      if (nla_parse_nested(pa, WGPEER_A_MAX, peer, nullptr) < 0 || !pa[WGPEER_A_PUBLIC_KEY] ||
          nla_len(pa[WGPEER_A_PUBLIC_KEY]) != 32)
        throw WgError("wireguard: a peer without a public key");
      WgKey k;
      std::memcpy(k.data(), nla_data(pa[WGPEER_A_PUBLIC_KEY]), 32);
      const std::string key = key_to_base64(k);
      // A peer cut between two messages comes back with the same key.
      WgPeer *p = nullptr;
      if (!dev.peers.empty() && dev.peers.back().public_key == key && !pa[WGPEER_A_FLAGS])
        p = &dev.peers.back();
      if (!p) {
        dev.peers.push_back({});
        p = &dev.peers.back();
        p->public_key = key;
      }
      if (pa[WGPEER_A_FLAGS]) {
        uint32_t f = nla_get_u32(pa[WGPEER_A_FLAGS]);
        if ((f & WGPEER_F_REMOVE_ME) && removed) removed->push_back(key);
        if ((f & WGPEER_F_REPLACE_ALLOWEDIPS) && replaced) replaced->push_back(key);
      }
      if (pa[WGPEER_A_ENDPOINT])
        p->endpoint = sockaddr_text(nla_data(pa[WGPEER_A_ENDPOINT]), nla_len(pa[WGPEER_A_ENDPOINT]));
      if (pa[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL])
        p->keepalive = nla_get_u16(pa[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL]);
      if (pa[WGPEER_A_LAST_HANDSHAKE_TIME] &&
          nla_len(pa[WGPEER_A_LAST_HANDSHAKE_TIME]) >= static_cast<int>(sizeof(int64_t)))
        std::memcpy(&p->last_handshake_sec, nla_data(pa[WGPEER_A_LAST_HANDSHAKE_TIME]),
                    sizeof(int64_t));
      if (pa[WGPEER_A_RX_BYTES]) p->rx_bytes = nla_get_u64(pa[WGPEER_A_RX_BYTES]);
      if (pa[WGPEER_A_TX_BYTES]) p->tx_bytes = nla_get_u64(pa[WGPEER_A_TX_BYTES]);
      if (pa[WGPEER_A_ALLOWEDIPS]) {
        nlattr *ip;
        int rem2;
        nla_for_each_nested(ip, pa[WGPEER_A_ALLOWEDIPS], rem2) {
          nlattr *ia[WGALLOWEDIP_A_MAX + 1] = {};
          if (nla_parse_nested(ia, WGALLOWEDIP_A_MAX, ip, nullptr) < 0 ||
              !ia[WGALLOWEDIP_A_FAMILY] || !ia[WGALLOWEDIP_A_IPADDR] || !ia[WGALLOWEDIP_A_CIDR_MASK])
            throw WgError("wireguard: an allowed-ip without family, address or mask");
          const bool v6 = nla_get_u16(ia[WGALLOWEDIP_A_FAMILY]) == AF_INET6;
          char buf[INET6_ADDRSTRLEN];
          inet_ntop(v6 ? AF_INET6 : AF_INET, nla_data(ia[WGALLOWEDIP_A_IPADDR]), buf, sizeof buf);
          p->allowed_ips.push_back(std::string(buf) + "/" +
                                   std::to_string(nla_get_u8(ia[WGALLOWEDIP_A_CIDR_MASK])));
        }
      }
    }
  }
  return dev;
}

KernelWg::KernelWg() {
  sk_ = nl_socket_alloc();
  if (!sk_) throw WgError("wireguard: cannot allocate a netlink socket");
  if (genl_connect(sk_) < 0) {
    nl_socket_free(sk_);
    sk_ = nullptr;
    throw WgError("wireguard: cannot connect a generic netlink socket");
  }
  family_ = genl_ctrl_resolve(sk_, WG_GENL_NAME);
  if (family_ < 0) {
    nl_socket_free(sk_);
    sk_ = nullptr;
    throw WgError("wireguard: this kernel has no \"" WG_GENL_NAME
                  "\" generic netlink family (no WireGuard module)");
  }
}

KernelWg::~KernelWg() {
  if (sk_) nl_socket_free(sk_);
}

void KernelWg::set(const std::string &ifname, const WgDevice &device,
                   const std::vector<PeerChange> &changes) {
  for (const auto &bytes : build_set_device(family_, ifname, device, changes)) {
    MsgPtr m(nlmsg_alloc_size(bytes.size() + 64));
    nlmsghdr *h = nlmsg_put(m.get(), NL_AUTO_PORT, NL_AUTO_SEQ, 0, 0, 0);
    // Copy the built message over the fresh header (payload and flags).
    const auto *src = reinterpret_cast<const nlmsghdr *>(bytes.data());
    if (!nlmsg_reserve(m.get(), src->nlmsg_len - NLMSG_HDRLEN, NLMSG_ALIGNTO))
      throw WgError("wireguard: out of memory");
    std::memcpy(nlmsg_data(h), bytes.data() + NLMSG_HDRLEN, src->nlmsg_len - NLMSG_HDRLEN);
    h->nlmsg_type = src->nlmsg_type;
    h->nlmsg_flags = src->nlmsg_flags;
    int err = nl_send_auto(sk_, m.get());
    if (err >= 0) err = nl_wait_for_ack(sk_);
    if (err < 0)
      throw WgError("wireguard: cannot configure " + ifname + ": " + nl_geterror(err));
  }
}

WgDevice KernelWg::get(const std::string &ifname) {
  MsgPtr m(nlmsg_alloc());
  genlmsg_put(m.get(), NL_AUTO_PORT, NL_AUTO_SEQ, family_, 0, NLM_F_REQUEST | NLM_F_DUMP,
              WG_CMD_GET_DEVICE, WG_GENL_VERSION);
  nla_put_string(m.get(), WGDEVICE_A_IFNAME, ifname.c_str());
  int err = nl_send_auto(sk_, m.get());
  if (err < 0) throw WgError("wireguard: cannot read " + ifname + ": " + nl_geterror(err));
  std::vector<NetlinkMessage> replies;
  auto collect = [](nl_msg *msg, void *arg) -> int {
    static_cast<std::vector<NetlinkMessage> *>(arg)->push_back(bytes_of(msg));
    return NL_OK;
  };
  nl_socket_modify_cb(sk_, NL_CB_VALID, NL_CB_CUSTOM, collect, &replies);
  err = nl_recvmsgs_default(sk_);
  if (err < 0) throw WgError("wireguard: cannot read " + ifname + ": " + nl_geterror(err));
  return parse_device(replies);
}

}  // namespace flotilla::overlay
