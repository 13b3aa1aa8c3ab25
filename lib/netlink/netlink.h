// lib/netlink: links, addresses and routes through libnl-route, and
// pinned network namespaces; for the plugins that configure the host's
// network (net-overlay now, discovery's VIPs later). No shelling out to
// `ip`. Every libnl object is held by RAII; errors throw netlink::Error
// naming the interface or address and the kernel's reason.
//
// Threading: a Socket is not thread-safe; use one per thread. Calls block
// on the kernel briefly (well under a millisecond each): plugins call them
// off the loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

struct nl_sock;

namespace flotilla::netlink {

class Error : public std::runtime_error {
 public:
  Error(const std::string &what, int code = 0) : std::runtime_error(what), code_(code) {}
  // The libnl error code (NLE_*), 0 when the error is not libnl's.
  int code() const { return code_; }

 private:
  int code_;
};

// An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd();
  UniqueFd(UniqueFd &&o) noexcept : fd_(o.release()) {}
  UniqueFd &operator=(UniqueFd &&o) noexcept;
  UniqueFd(const UniqueFd &) = delete;
  UniqueFd &operator=(const UniqueFd &) = delete;
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// An address on a link with the kernel's IFA_F_* flags for it
// (rtnl_addr_get_flags, <linux/if_addr.h>): IFA_F_TENTATIVE while DAD
// runs, IFA_F_DADFAILED, IFA_F_DEPRECATED once its preferred lifetime is
// over, IFA_F_TEMPORARY for a privacy address, IFA_F_PERMANENT when it
// was configured rather than learnt.
struct Address {
  std::string cidr;  // "10.42.1.1/24", "2001:db8::5/64"
  uint32_t flags = 0;
};

struct Link {
  std::string name;
  int index = 0;
  unsigned mtu = 0;
  bool up = false;
  std::string kind;  // "bridge", "veth", "wireguard", ... ("" for plain devices)
  int master = 0;    // ifindex of the bridge it is enslaved to, 0 if none
};

// A NETLINK_ROUTE socket, bound to one network namespace for its whole
// life (the namespace of the thread that opened it).
class Socket {
 public:
  // In the calling thread's namespace.
  static Socket open();
  // In the namespace at netns_path (a pinned namespace or /proc/PID/ns/net),
  // opened on a short-lived thread that enters it: the caller's own
  // namespace never changes.
  static Socket open_in(const std::string &netns_path);

  ~Socket();
  Socket(Socket &&o) noexcept;
  Socket &operator=(Socket &&o) noexcept;
  Socket(const Socket &) = delete;
  Socket &operator=(const Socket &) = delete;

  std::optional<Link> link(const std::string &name);
  std::vector<Link> links();

  // Each returns false (and changes nothing) when the link already exists.
  bool add_bridge(const std::string &name, unsigned mtu);
  // A link of a kind with no attributes of its own ("wireguard", "dummy").
  bool add_link(const std::string &name, const std::string &kind, unsigned mtu);
  // A veth pair: `name` here, its peer in the namespace peer_netns_fd (-1:
  // here too) under the name peer_name.
  bool add_veth(const std::string &name, const std::string &peer_name, unsigned mtu,
                int peer_netns_fd);
  // false when there was no such link.
  bool delete_link(const std::string &name);

  void set_up(const std::string &name);
  void set_mtu(const std::string &name, unsigned mtu);
  void set_master(const std::string &name, const std::string &bridge);

  // cidr "10.42.1.1/24" or "fd42::1/64"; false when already there. IPv6
  // addresses skip duplicate address detection (the subnet is ours).
  bool add_address(const std::string &name, const std::string &cidr);
  // CIDRs on the link, IPv4 and IPv6 (link-local included), in the
  // kernel's order.
  std::vector<std::string> addresses(const std::string &name);
  // The same with each address's flags.
  std::vector<Address> addresses_with_flags(const std::string &name);

  // A route to dst ("default" or a CIDR) via gateway ("" for on-link) out
  // of dev ("" to let the kernel pick by gateway). false when it exists.
  bool add_route(const std::string &dst, const std::string &gateway, const std::string &dev);
  bool delete_route(const std::string &dst, const std::string &dev);
  // Destinations ("10.42.1.0/24") of the main table's routes out of dev.
  std::vector<std::string> routes(const std::string &dev);
  // The interface of the main table's default route (AF_INET or AF_INET6),
  // or nullopt.
  std::optional<Link> default_route_link(int family);

 private:
  explicit Socket(nl_sock *sk) : sk_(sk) {}
  int index_of(const std::string &name);
  nl_sock *sk_ = nullptr;
};

// Pinned network namespaces: a namespace kept alive by a bind mount of its
// nsfs file onto path (as `ip netns add` does under /run/netns).
namespace netns {

// Makes a new namespace pinned at path; returns false when path already
// holds one. The parent directory must exist. `inside`, when given, runs in
// the new namespace on the thread that made it, right after it is pinned
// (bringing `lo` up there costs no second thread and setns); what it
// throws is rethrown, and the namespace stays pinned.
bool create_pinned(const std::string &path, const std::function<void()> &inside = {});
// Unmounts and deletes path; returns false when nothing was pinned there.
// The namespace itself goes when its last user (process, socket) does.
bool remove_pinned(const std::string &path);
bool is_pinned(const std::string &path);
UniqueFd open(const std::string &path);
// Runs fn on a short-lived thread that has entered the namespace at path,
// and waits for it; rethrows what fn threw.
void run_in(const std::string &path, const std::function<void()> &fn);
// Writes value to /proc/sys/<key> (key with '/', e.g.
// "net/ipv4/ip_forward") in the calling thread's network namespace.
void write_sysctl(const std::string &key, const std::string &value);

}  // namespace netns

}  // namespace flotilla::netlink
