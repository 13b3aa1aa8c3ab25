#include "netlink.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/rtnetlink.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/route.h>
#include <sched.h>
#include <sys/mount.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <thread>
#include <utility>

namespace flotilla::netlink {

namespace {

// RAII for libnl's reference-counted objects.
struct LinkPut {
  void operator()(rtnl_link *l) const { rtnl_link_put(l); }
};
struct AddrPut {
  void operator()(rtnl_addr *a) const { rtnl_addr_put(a); }
};
struct NlAddrPut {
  void operator()(nl_addr *a) const { nl_addr_put(a); }
};
struct RoutePut {
  void operator()(rtnl_route *r) const { rtnl_route_put(r); }
};
struct CacheFree {
  void operator()(nl_cache *c) const { nl_cache_free(c); }
};
using LinkPtr = std::unique_ptr<rtnl_link, LinkPut>;
using AddrPtr = std::unique_ptr<rtnl_addr, AddrPut>;
using NlAddrPtr = std::unique_ptr<nl_addr, NlAddrPut>;
using RoutePtr = std::unique_ptr<rtnl_route, RoutePut>;
using CachePtr = std::unique_ptr<nl_cache, CacheFree>;

[[noreturn]] void fail(const std::string &what, int err) {
  throw Error(what + ": " + nl_geterror(err), err < 0 ? -err : err);
}

NlAddrPtr parse_addr(const std::string &text, int family = AF_UNSPEC) {
  nl_addr *a = nullptr;
  int err = nl_addr_parse(text.c_str(), family, &a);
  if (err < 0) fail("\"" + text + "\" is not an address", err);
  return NlAddrPtr(a);
}

std::string addr_text(nl_addr *a) {
  char buf[128];
  return nl_addr2str(a, buf, sizeof buf);
}

Link to_link(rtnl_link *l) {
  Link out;
  const char *n = rtnl_link_get_name(l);
  out.name = n ? n : "";
  out.index = rtnl_link_get_ifindex(l);
  out.mtu = rtnl_link_get_mtu(l);
  out.up = (rtnl_link_get_flags(l) & IFF_UP) != 0;
  const char *k = rtnl_link_get_type(l);
  out.kind = k ? k : "";
  out.master = rtnl_link_get_master(l);
  return out;
}

}  // namespace

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

UniqueFd &UniqueFd::operator=(UniqueFd &&o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

Socket Socket::open() {
  nl_sock *sk = nl_socket_alloc();
  if (!sk) throw Error("netlink: cannot allocate a socket");
  int err = nl_connect(sk, NETLINK_ROUTE);
  if (err < 0) {
    nl_socket_free(sk);
    fail("netlink: cannot connect a route socket", err);
  }
  return Socket(sk);
}

Socket Socket::open_in(const std::string &netns_path) {
  std::optional<Socket> s;
  netns::run_in(netns_path, [&] { s.emplace(open()); });
  return std::move(*s);
}

Socket::~Socket() {
  if (sk_) nl_socket_free(sk_);
}

Socket::Socket(Socket &&o) noexcept : sk_(std::exchange(o.sk_, nullptr)) {}

Socket &Socket::operator=(Socket &&o) noexcept {
  if (this != &o) {
    if (sk_) nl_socket_free(sk_);
    sk_ = std::exchange(o.sk_, nullptr);
  }
  return *this;
}

std::optional<Link> Socket::link(const std::string &name) {
  rtnl_link *l = nullptr;
  int err = rtnl_link_get_kernel(sk_, 0, name.c_str(), &l);
  if (err == -NLE_NODEV || err == -NLE_OBJ_NOTFOUND) return std::nullopt;
  if (err < 0) fail("netlink: cannot read link " + name, err);
  LinkPtr hold(l);
  return to_link(l);
}

std::vector<Link> Socket::links() {
  nl_cache *c = nullptr;
  int err = rtnl_link_alloc_cache(sk_, AF_UNSPEC, &c);
  if (err < 0) fail("netlink: cannot list links", err);
  CachePtr hold(c);
  std::vector<Link> out;
  for (nl_object *o = nl_cache_get_first(c); o; o = nl_cache_get_next(o))
    out.push_back(to_link(reinterpret_cast<rtnl_link *>(o)));
  return out;
}

int Socket::index_of(const std::string &name) {
  auto l = link(name);
  if (!l) throw Error("netlink: no link named " + name, NLE_NODEV);
  return l->index;
}

bool Socket::add_bridge(const std::string &name, unsigned mtu) {
  LinkPtr l(rtnl_link_alloc());
  if (!l) throw Error("netlink: out of memory");
  rtnl_link_set_name(l.get(), name.c_str());
  int err = rtnl_link_set_type(l.get(), "bridge");
  if (err < 0) fail("netlink: bridge links unsupported", err);
  if (mtu) rtnl_link_set_mtu(l.get(), mtu);
  err = rtnl_link_add(sk_, l.get(), NLM_F_CREATE | NLM_F_EXCL);
  if (err == -NLE_EXIST) return false;
  if (err < 0) fail("netlink: cannot create bridge " + name, err);
  return true;
}

bool Socket::add_link(const std::string &name, const std::string &kind, unsigned mtu) {
  LinkPtr l(rtnl_link_alloc());
  if (!l) throw Error("netlink: out of memory");
  rtnl_link_set_name(l.get(), name.c_str());
  int err = rtnl_link_set_type(l.get(), kind.c_str());
  if (err < 0) fail("netlink: " + kind + " links unsupported", err);
  if (mtu) rtnl_link_set_mtu(l.get(), mtu);
  err = rtnl_link_add(sk_, l.get(), NLM_F_CREATE | NLM_F_EXCL);
  if (err == -NLE_EXIST) return false;
  if (err < 0) fail("netlink: cannot create " + kind + " link " + name, err);
  return true;
}

bool Socket::add_veth(const std::string &name, const std::string &peer_name, unsigned mtu,
                      int peer_netns_fd) {
  LinkPtr l(rtnl_link_veth_alloc());
  if (!l) throw Error("netlink: out of memory");
  LinkPtr peer(rtnl_link_veth_get_peer(l.get()));
  rtnl_link_set_name(l.get(), name.c_str());
  rtnl_link_set_name(peer.get(), peer_name.c_str());
  if (mtu) {
    rtnl_link_set_mtu(l.get(), mtu);
    rtnl_link_set_mtu(peer.get(), mtu);
  }
  if (peer_netns_fd >= 0) rtnl_link_set_ns_fd(peer.get(), peer_netns_fd);
  int err = rtnl_link_add(sk_, l.get(), NLM_F_CREATE | NLM_F_EXCL);
  if (err == -NLE_EXIST) return false;
  if (err < 0) fail("netlink: cannot create veth " + name + " (peer " + peer_name + ")", err);
  return true;
}

bool Socket::delete_link(const std::string &name) {
  LinkPtr l(rtnl_link_alloc());
  if (!l) throw Error("netlink: out of memory");
  rtnl_link_set_name(l.get(), name.c_str());
  int err = rtnl_link_delete(sk_, l.get());
  if (err == -NLE_NODEV || err == -NLE_OBJ_NOTFOUND) return false;
  if (err < 0) fail("netlink: cannot delete link " + name, err);
  return true;
}

namespace {

// Applies the attributes set in `change` to the link `name`.
void change_link(nl_sock *sk, const std::string &name, rtnl_link *change, const char *what) {
  rtnl_link *cur = nullptr;
  int err = rtnl_link_get_kernel(sk, 0, name.c_str(), &cur);
  if (err < 0) fail("netlink: no link named " + name, err);
  LinkPtr hold(cur);
  err = rtnl_link_change(sk, cur, change, 0);
  if (err < 0) fail(std::string("netlink: cannot ") + what + " " + name, err);
}

}  // namespace

void Socket::set_up(const std::string &name) {
  LinkPtr c(rtnl_link_alloc());
  rtnl_link_set_flags(c.get(), IFF_UP);
  change_link(sk_, name, c.get(), "bring up");
}

void Socket::set_mtu(const std::string &name, unsigned mtu) {
  LinkPtr c(rtnl_link_alloc());
  rtnl_link_set_mtu(c.get(), mtu);
  change_link(sk_, name, c.get(), ("set MTU " + std::to_string(mtu) + " on").c_str());
}

void Socket::set_master(const std::string &name, const std::string &bridge) {
  const int br = index_of(bridge);
  LinkPtr c(rtnl_link_alloc());
  rtnl_link_set_master(c.get(), br);
  change_link(sk_, name, c.get(), ("attach to bridge " + bridge + ":").c_str());
}

bool Socket::add_address(const std::string &name, const std::string &cidr) {
  const int idx = index_of(name);
  NlAddrPtr local = parse_addr(cidr);
  AddrPtr a(rtnl_addr_alloc());
  if (!a) throw Error("netlink: out of memory");
  rtnl_addr_set_ifindex(a.get(), idx);
  int err = rtnl_addr_set_local(a.get(), local.get());
  if (err < 0) fail("netlink: bad address " + cidr, err);
  rtnl_addr_set_prefixlen(a.get(), nl_addr_get_prefixlen(local.get()));
  if (nl_addr_get_family(local.get()) == AF_INET6) rtnl_addr_set_flags(a.get(), IFA_F_NODAD);
  err = rtnl_addr_add(sk_, a.get(), NLM_F_CREATE | NLM_F_EXCL);
  if (err == -NLE_EXIST) return false;
  if (err < 0) fail("netlink: cannot add address " + cidr + " to " + name, err);
  return true;
}

std::vector<Address> Socket::addresses_with_flags(const std::string &name) {
  const int idx = index_of(name);
  nl_cache *c = nullptr;
  int err = rtnl_addr_alloc_cache(sk_, &c);
  if (err < 0) fail("netlink: cannot list addresses", err);
  CachePtr hold(c);
  std::vector<Address> out;
  for (nl_object *o = nl_cache_get_first(c); o; o = nl_cache_get_next(o)) {
    auto *a = reinterpret_cast<rtnl_addr *>(o);
    if (rtnl_addr_get_ifindex(a) != idx) continue;
    // libnl takes the 32-bit IFA_FLAGS attribute when the kernel sends it,
    // so the flags above the first 8 bits are there too.
    if (nl_addr *l = rtnl_addr_get_local(a))
      out.push_back({addr_text(l), static_cast<uint32_t>(rtnl_addr_get_flags(a))});
  }
  return out;
}

std::vector<std::string> Socket::addresses(const std::string &name) {
  std::vector<std::string> out;
  for (auto &a : addresses_with_flags(name)) out.push_back(std::move(a.cidr));
  return out;
}

namespace {

RoutePtr make_route(const std::string &dst, const std::string &gateway, int ifindex) {
  RoutePtr r(rtnl_route_alloc());
  if (!r) throw Error("netlink: out of memory");
  int family = AF_UNSPEC;
  NlAddrPtr gw;
  if (!gateway.empty()) {
    gw = parse_addr(gateway);
    family = nl_addr_get_family(gw.get());
  }
  NlAddrPtr d;
  if (dst == "default") {
    d = parse_addr(dst, family == AF_UNSPEC ? AF_INET : family);
  } else {
    d = parse_addr(dst);
  }
  family = nl_addr_get_family(d.get());
  rtnl_route_set_family(r.get(), static_cast<uint8_t>(family));
  int err = rtnl_route_set_dst(r.get(), d.get());
  if (err < 0) fail("netlink: bad route destination " + dst, err);
  rtnl_route_set_table(r.get(), RT_TABLE_MAIN);
  rtnl_route_set_scope(r.get(), gateway.empty() ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE);
  rtnl_nexthop *nh = rtnl_route_nh_alloc();
  if (!nh) throw Error("netlink: out of memory");
  if (ifindex > 0) rtnl_route_nh_set_ifindex(nh, ifindex);
  if (gw) rtnl_route_nh_set_gateway(nh, gw.get());
  rtnl_route_add_nexthop(r.get(), nh);  // the route owns nh now
  return r;
}

}  // namespace

bool Socket::add_route(const std::string &dst, const std::string &gateway,
                       const std::string &dev) {
  RoutePtr r = make_route(dst, gateway, dev.empty() ? 0 : index_of(dev));
  int err = rtnl_route_add(sk_, r.get(), NLM_F_CREATE | NLM_F_EXCL);
  if (err == -NLE_EXIST) return false;
  if (err < 0)
    fail("netlink: cannot add route " + dst + (gateway.empty() ? "" : " via " + gateway) +
             (dev.empty() ? "" : " dev " + dev),
         err);
  return true;
}

bool Socket::delete_route(const std::string &dst, const std::string &dev) {
  auto l = link(dev);
  if (!l) return false;
  RoutePtr r = make_route(dst, "", l->index);
  rtnl_route_set_scope(r.get(), RT_SCOPE_NOWHERE);  // any scope
  int err = rtnl_route_delete(sk_, r.get(), 0);
  if (err == -NLE_OBJ_NOTFOUND || err == -NLE_NODEV) return false;
  if (err < 0) fail("netlink: cannot delete route " + dst + " dev " + dev, err);
  return true;
}

std::vector<std::string> Socket::routes(const std::string &dev) {
  std::vector<std::string> out;
  auto l = link(dev);
  if (!l) return out;
  nl_cache *c = nullptr;
  int err = rtnl_route_alloc_cache(sk_, AF_UNSPEC, 0, &c);
  if (err < 0) fail("netlink: cannot list routes", err);
  CachePtr hold(c);
  for (nl_object *o = nl_cache_get_first(c); o; o = nl_cache_get_next(o)) {
    auto *r = reinterpret_cast<rtnl_route *>(o);
    if (rtnl_route_get_table(r) != RT_TABLE_MAIN || rtnl_route_get_nnexthops(r) < 1) continue;
    if (rtnl_route_nh_get_ifindex(rtnl_route_nexthop_n(r, 0)) != l->index) continue;
    if (rtnl_route_get_type(r) != RTN_UNICAST) continue;
    nl_addr *d = rtnl_route_get_dst(r);
    if (!d) continue;
    out.push_back(addr_text(d));
  }
  return out;
}

std::optional<Link> Socket::default_route_link(int family) {
  nl_cache *c = nullptr;
  int err = rtnl_route_alloc_cache(sk_, family, 0, &c);
  if (err < 0) fail("netlink: cannot list routes", err);
  CachePtr hold(c);
  for (nl_object *o = nl_cache_get_first(c); o; o = nl_cache_get_next(o)) {
    auto *r = reinterpret_cast<rtnl_route *>(o);
    if (rtnl_route_get_table(r) != RT_TABLE_MAIN) continue;
    nl_addr *d = rtnl_route_get_dst(r);
    if (d && nl_addr_get_prefixlen(d) != 0) continue;
    if (rtnl_route_get_nnexthops(r) < 1) continue;
    int idx = rtnl_route_nh_get_ifindex(rtnl_route_nexthop_n(r, 0));
    for (const auto &l : links())
      if (l.index == idx) return l;
  }
  return std::nullopt;
}

namespace netns {

bool is_pinned(const std::string &path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  // A pinned namespace is a bind mount of an nsfs file; the empty file a
  // crash may have left is not.
  struct statfs fs{};
  return ::fstatfs(fd.get(), &fs) == 0 && fs.f_type == NSFS_MAGIC;
}

UniqueFd open(const std::string &path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw Error("netns: cannot open " + path + ": " + std::strerror(errno));
  return fd;
}

void run_in(const std::string &path, const std::function<void()> &fn) {
  UniqueFd target = open(path);
  std::exception_ptr error;
  std::thread t([&] {
    try {
      if (::setns(target.get(), CLONE_NEWNET) != 0)
        throw Error("netns: cannot enter " + path + ": " + std::strerror(errno));
      fn();
    } catch (...) {
      error = std::current_exception();
    }
    // The thread ends here, and its namespace membership with it.
  });
  t.join();
  if (error) std::rethrow_exception(error);
}

namespace {

// Makes and pins a namespace on the calling thread, which is left in it:
// only for a thread that ends right after.
bool pin_new_on_this_thread(const std::string &path, const std::function<void()> &inside) {
  if (is_pinned(path)) return false;
  // The mount point: an empty file (a crash may have left one).
  {
    UniqueFd f(::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0444));
    if (!f) throw Error("netns: cannot create " + path + ": " + std::strerror(errno));
  }
  try {
    // unshare() on this thread only: CLONE_NEWNET needs the thread to be
    // alone in nothing else, and the thread dies right after.
    if (::unshare(CLONE_NEWNET) != 0)
      throw Error("netns: cannot make a network namespace: " + std::string(std::strerror(errno)));
    const std::string self = "/proc/self/task/" + std::to_string(::syscall(SYS_gettid)) + "/ns/net";
    if (::mount(self.c_str(), path.c_str(), nullptr, MS_BIND, nullptr) != 0)
      throw Error("netns: cannot pin the namespace at " + path + ": " + std::strerror(errno));
  } catch (...) {
    ::unlink(path.c_str());
    throw;
  }
  if (inside) inside();
  return true;
}

}  // namespace

bool create_pinned(const std::string &path, const std::function<void()> &inside) {
  bool made = false;
  std::exception_ptr error;
  std::thread t([&] {
    try {
      made = pin_new_on_this_thread(path, inside);
    } catch (...) {
      error = std::current_exception();
    }
  });
  t.join();
  if (error) std::rethrow_exception(error);
  return made;
}

bool remove_pinned(const std::string &path) {
  bool was = false;
  if (::umount2(path.c_str(), MNT_DETACH) == 0) was = true;
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    throw Error("netns: cannot remove " + path + ": " + std::strerror(errno));
  return was;
}

void write_sysctl(const std::string &key, const std::string &value) {
  const std::string path = "/proc/sys/" + key;
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) throw Error("sysctl: cannot open " + path + ": " + std::strerror(errno));
  if (::write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size()))
    throw Error("sysctl: cannot write " + value + " to " + path + ": " + std::strerror(errno));
}

}  // namespace netns

}  // namespace flotilla::netlink
