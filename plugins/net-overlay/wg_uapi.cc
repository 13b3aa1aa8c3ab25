#include "wg_uapi.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

namespace flotilla::overlay {

std::string uapi_set_text(const WgDevice &device, const std::vector<PeerChange> &changes) {
  std::string s = "set=1\n";
  if (device.private_key) s += "private_key=" + key_to_hex(*device.private_key) + "\n";
  if (device.listen_port) s += "listen_port=" + std::to_string(device.listen_port) + "\n";
  for (const auto &c : changes) {
    auto key = key_from_base64(c.peer.public_key);
    if (!key) throw WgError("wireguard: peer key \"" + c.peer.public_key + "\" is not base64");
    s += "public_key=" + key_to_hex(*key) + "\n";
    if (c.kind == PeerChange::Kind::remove) {
      s += "remove=true\n";
      continue;
    }
    if (c.kind == PeerChange::Kind::update) s += "update_only=true\n";
    if (c.set_endpoint && !c.peer.endpoint.empty()) s += "endpoint=" + c.peer.endpoint + "\n";
    if (c.set_keepalive)
      s += "persistent_keepalive_interval=" + std::to_string(c.peer.keepalive) + "\n";
    if (c.replace_allowed_ips) {
      s += "replace_allowed_ips=true\n";
      for (const auto &ip : c.peer.allowed_ips) s += "allowed_ip=" + ip + "\n";
    }
  }
  return s + "\n";
}

WgDevice uapi_parse_get(const std::string &text) {
  WgDevice d;
  std::istringstream in(text);
  std::string line;
  WgPeer *p = nullptr;
  while (std::getline(in, line)) {
    if (line.empty()) break;
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    if (k == "errno" && v != "0") throw WgError("wireguard-go: get failed, errno " + v);
    if (k == "private_key") {
      d.private_key = key_from_hex(v);
    } else if (k == "listen_port") {
      d.listen_port = std::atoi(v.c_str());
    } else if (k == "public_key") {
      auto key = key_from_hex(v);
      if (!key) throw WgError("wireguard-go: bad public_key in get reply");
      d.peers.push_back({});
      p = &d.peers.back();
      p->public_key = key_to_base64(*key);
    } else if (p && k == "endpoint") {
      p->endpoint = v;
    } else if (p && k == "allowed_ip") {
      p->allowed_ips.push_back(v);
    } else if (p && k == "persistent_keepalive_interval") {
      p->keepalive = std::atoi(v.c_str());
    } else if (p && k == "last_handshake_time_sec") {
      p->last_handshake_sec = std::atoll(v.c_str());
    } else if (p && k == "rx_bytes") {
      p->rx_bytes = std::strtoull(v.c_str(), nullptr, 10);
    } else if (p && k == "tx_bytes") {
      p->tx_bytes = std::strtoull(v.c_str(), nullptr, 10);
    }
  }
  return d;
}

std::string UapiWg::exchange(const std::string &ifname, const std::string &request) const {
  const std::string path = socket_path(ifname);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw WgError("wireguard-go: socket: " + std::string(std::strerror(errno)));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) {
    ::close(fd);
    throw WgError("wireguard-go: socket path too long: " + path);
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
    int e = errno;
    ::close(fd);
    throw WgError("wireguard-go for " + ifname + " does not answer on " + path + ": " +
                  std::strerror(e));
  }
  size_t off = 0;
  while (off < request.size()) {
    ssize_t n = ::write(fd, request.data() + off, request.size() - off);
    if (n <= 0) {
      ::close(fd);
      throw WgError("wireguard-go: write to " + path + " failed");
    }
    off += static_cast<size_t>(n);
  }
  // The reply ends with an empty line.
  std::string reply;
  char buf[4096];
  while (reply.size() < 2 || reply.compare(reply.size() - 2, 2, "\n\n") != 0) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  // Every answer ends with errno=N: a socket that accepted but closed
  // without one (a wireguard-go on its way out) is no answer.
  if (reply.find("errno=") == std::string::npos)
    throw WgError("wireguard-go for " + ifname + " closed " + path + " without an answer");
  return reply;
}

bool UapiWg::running(const std::string &ifname) const {
  try {
    exchange(ifname, "get=1\n\n");
    return true;
  } catch (const WgError &) {
    return false;
  }
}

WgDevice UapiWg::get(const std::string &ifname) const {
  return uapi_parse_get(exchange(ifname, "get=1\n\n"));
}

void UapiWg::set(const std::string &ifname, const WgDevice &device,
                 const std::vector<PeerChange> &changes) const {
  std::string reply = exchange(ifname, uapi_set_text(device, changes));
  if (reply.find("errno=0\n") == std::string::npos)
    throw WgError("wireguard-go for " + ifname + " refused the configuration: " +
                  (reply.empty() ? std::string("no reply") : reply.substr(0, reply.find('\n'))));
}

}  // namespace flotilla::overlay
