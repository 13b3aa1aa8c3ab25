// net-overlay: flotilla.network/1. IPAM in the store (node subnets and
// per-allocation addresses, by compare-and-swap), a bridge per node and a
// veth per allocation through lib/netlink, forwarding, NAT and port
// mappings through lib/nft. Includes only the ABI (README.md).
//
// Every operation (the node's set-up, attach, detach) runs one at a time,
// in order: store steps on the loop thread, netlink and nftables steps on
// the host's thread pool, so that two attaches never pick one address and
// the netlink socket and nft context are never used by two threads.
#include <fcntl.h>
#include <flotilla/flotilla.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "attachment.h"
#include "host_net.h"
#include "mesh.h"
#include "mesh_device.h"
#include "net_config.h"
#include "netlink.h"
#include "nft.h"
#include "store_view.h"

namespace {

using nlohmann::json;
namespace ov = flotilla::overlay;
namespace nl = flotilla::netlink;
namespace nft = flotilla::nft;

const std::string kSubnets = "/flotilla/net/subnets/";
const std::string kAddrs = "/flotilla/net/addrs/";
const std::string kAllocs = "/flotilla/allocs/";
const std::string kNodes = "/flotilla/net/nodes/";
// Each node's status() as of its last copy (status_interval), for the API
// of every other node (docs/abi-json.md, "network status in the store").
const std::string kStatus = "/flotilla/net/status/";

struct Instance;

// A piece of work for the thread pool, and what runs on the loop after it.
struct Work {
  Instance *self;
  std::function<void()> work;
  std::function<void(const std::string &error)> after;
  std::string error;
};

struct Instance {
  const flotilla_host *host = nullptr;
  ov::NetConfig cfg;
  ov::NodeNet net;
  std::string node, data_dir;
  std::unique_ptr<ov::StoreView> store;
  std::unique_ptr<nl::Socket> host_sock;  // used only by the one running work
  std::unique_ptr<nft::Context> nft_ctx;
  ov::Underlay underlay;

  std::map<std::string, ov::Attachment> attachments;  // alloc -> what attach made
  std::map<std::string, std::string> owner;           // reserved address (bare) -> alloc

  std::deque<std::function<void(std::function<void()>)>> queue;
  bool busy = false, ready = false, stopping = false;
  flotilla_handle retry_timer = 0;
  flotilla_handle cleanup_sub = 0;
  int setup_attempts = 0;
  // The node's discovery DNS once it announced itself on the event bus
  // ("discovery.dns.ready"): the containers' resolver (README.md, "DNS").
  flotilla_handle dns_sub = 0;
  ov::DiscoveryDns discovery_dns;

  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;

  // ---- the WireGuard mesh (README.md, "WireGuard mesh") ----
  std::string backend;  // "" (off), "userspace" or "kernel"
  ov::NodeKey key;
  std::string endpoint;
  std::unique_ptr<nl::Socket> mesh_sock;          // used only by the one running mesh work
  std::map<std::string, ov::NodeRecord> records;  // every node's, by node name
  bool records_loaded = false, listing = false;
  flotilla_lease_id lease = 0;
  bool granting = false, lease_reuse_tried = false;
  flotilla_handle mesh_timer = 0, rotate_timer = 0;
  flotilla_handle rotate_sub = 0;
  int mesh_ticks = 0;
  flotilla_store_watch_id watch_id = 0;
  bool watching = false;
  bool mesh_busy = false, mesh_again = false, mesh_started = false;
  bool status_busy = false;  // a status copy is being read or written
  // The endpoint check (check_endpoint): one at a time; warned once while
  // the underlay has no address to publish.
  bool endpoint_busy = false, endpoint_lost_warned = false;
  std::chrono::steady_clock::time_point change_seen{};  // oldest change not yet applied
  int wg_pid = 0;
  std::string mesh_error;
  std::mutex mesh_mu;  // a convergence and the clean-up never overlap
  std::string wg_dir() const { return data_dir + "/wireguard"; }
  std::string node_key() const { return kNodes + node; }

  void log(flotilla_log_level l, const std::string &m) const {
    host->log(host->host_ctx, l, m.c_str());
  }
  void set_error(const std::string &m) const { host->set_error(host->host_ctx, m.c_str()); }
  void gauge(const char *n, double v) const { host->metric_gauge_set(host->host_ctx, n, v); }
  void count(const char *n) const { host->metric_counter_add(host->host_ctx, n, 1); }
  std::string record_dir() const { return data_dir + "/attachments"; }
  std::string addr_key(const std::string &ip) const { return kAddrs + node + "/" + ip; }
};

// ---- the thread pool -----------------------------------------------------

void run_work(Instance *self, std::function<void()> work,
              std::function<void(const std::string &)> after) {
  auto *w = new Work{self, std::move(work), std::move(after), {}};
  {
    std::lock_guard<std::mutex> g(self->mu);
    self->in_flight++;
  }
  flotilla_status st = self->host->queue_work(
      self->host->host_ctx,
      [](void *user) {
        auto *w = static_cast<Work *>(user);
        try {
          w->work();
        } catch (const std::exception &e) {
          w->error = e.what();
        } catch (...) {
          w->error = "unknown error";
        }
        std::lock_guard<std::mutex> g(w->self->mu);
        w->self->in_flight--;
        w->self->cv.notify_all();
      },
      [](void *user, flotilla_status status) {
        std::unique_ptr<Work> w(static_cast<Work *>(user));
        if (status == FLOTILLA_E_CANCELLED || w->self->stopping) return;
        w->after(w->error);
      },
      w);
  if (st != FLOTILLA_OK) {
    {
      std::lock_guard<std::mutex> g(self->mu);
      self->in_flight--;
    }
    std::unique_ptr<Work> hold(w);
    hold->after("cannot queue work on the host's thread pool");
  }
}

// ---- the operation queue -------------------------------------------------

void pump(Instance *self) {
  if (self->busy || !self->ready || self->stopping || self->queue.empty()) return;
  auto op = std::move(self->queue.front());
  self->queue.pop_front();
  self->busy = true;
  op([self] {
    self->busy = false;
    self->gauge("net_overlay_attachments", static_cast<double>(self->attachments.size()));
    pump(self);
  });
}

void enqueue(Instance *self, std::function<void(std::function<void()>)> op) {
  self->queue.push_back(std::move(op));
  pump(self);
}

// ---- attachment records in the data dir ----------------------------------

void write_record(const std::string &dir, const ov::Attachment &a) {
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + a.alloc + ".json";
  const std::string tmp = path + ".tmp";
  const std::string text = a.to_json().dump(2) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
}

std::vector<ov::Attachment> read_records(const std::string &dir) {
  std::vector<ov::Attachment> out;
  std::error_code ec;
  for (const auto &e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".json") continue;
    std::ifstream in(e.path());
    json j = json::parse(in, nullptr, false);
    if (auto a = ov::Attachment::from_json(j)) out.push_back(*a);
  }
  return out;
}

// ---- IPAM ------------------------------------------------------------------

// Leases this node's subnet of `cluster` (length prefix): the one the store
// already gives it, else the first free one, taken by compare-and-swap.
void lease_subnet(Instance *self, ov::Cidr cluster, int prefix, int attempt,
                  std::function<void(std::optional<ov::Cidr>, std::string)> cb) {
  flotilla_status st = self->store->list(kSubnets, [=](flotilla_status s, std::vector<ov::Kv> kvs,
                                                       int64_t) {
    if (self->stopping) return;
    if (s != FLOTILLA_OK) return cb(std::nullopt, "cannot read " + kSubnets);
    std::vector<ov::Cidr> taken;
    for (const auto &kv : kvs) {
      auto c = ov::Cidr::parse(kv.key.substr(kSubnets.size()));
      if (!c || c->v6() != cluster.v6()) continue;
      json v = json::parse(kv.value, nullptr, false);
      if (v.is_object() && v.value("node", "") == self->node && cluster.contains(*c) &&
          c->prefix == prefix)
        return cb(*c, "");
      taken.push_back(*c);
    }
    const uint64_t n = cluster.subnet_count(prefix);
    for (uint64_t i = 0; i < n && i < (uint64_t{1} << 20); ++i) {
      ov::Cidr cand = cluster.subnet(prefix, i);
      bool free = true;
      for (const auto &t : taken)
        if (t.overlaps(cand)) free = false;
      if (!free) continue;
      json value = {{"node", self->node}, {"subnet", cand.text()}};
      flotilla_status ts = self->store->txn(
          {{kSubnets + cand.text(), value.dump(), 0, 0}}, [=](flotilla_status s2, bool ok) {
            if (self->stopping) return;
            if (s2 != FLOTILLA_OK) return cb(std::nullopt, "cannot lease " + cand.text());
            if (ok) {
              self->log(FLOTILLA_LOG_INFO, "leased subnet " + cand.text());
              return cb(cand, "");
            }
            if (attempt > 20) return cb(std::nullopt, "subnet leases keep conflicting");
            lease_subnet(self, cluster, prefix, attempt + 1, cb);  // another node won it
          });
      if (ts != FLOTILLA_OK) cb(std::nullopt, "the store refused a transaction");
      return;
    }
    cb(std::nullopt, "no free /" + std::to_string(prefix) + " left in " + cluster.text() +
                         " (" + std::to_string(taken.size()) + " leased)");
  });
  if (st != FLOTILLA_OK) cb(std::nullopt, "the store refused a read");
}

// The lowest free address of subnet for alloc (from .2: .1 is the bridge).
std::optional<std::string> pick_address(Instance *self, const ov::Cidr &subnet) {
  const int host_bits = subnet.base.bits() - subnet.prefix;
  const uint64_t size = host_bits >= 20 ? (uint64_t{1} << 20) : (uint64_t{1} << host_bits);
  const uint64_t last = subnet.v6() ? size - 1 : size - 2;  // IPv4: not the broadcast
  for (uint64_t off = 2; off <= last; ++off) {
    std::string ip = subnet.at(off).text();
    if (!self->owner.count(ip)) return ip;
  }
  return std::nullopt;
}

// This node's reservations, from the store (the node alone writes them).
void load_reservations(Instance *self, std::function<void(std::string)> cb) {
  const std::string prefix = kAddrs + self->node + "/";
  flotilla_status st =
      self->store->list(prefix, [=](flotilla_status s, std::vector<ov::Kv> kvs, int64_t) {
        if (self->stopping) return;
        if (s != FLOTILLA_OK) return cb("cannot read " + prefix);
        self->owner.clear();
        for (const auto &kv : kvs) {
          json v = json::parse(kv.value, nullptr, false);
          if (v.is_object()) self->owner[kv.key.substr(prefix.size())] = v.value("alloc", "");
        }
        cb("");
      });
  if (st != FLOTILLA_OK) cb("the store refused a read");
}

// The allocation's addresses: those it holds already (a repeated attach,
// e.g. after kill -9 in the middle of one), else new ones reserved in one
// transaction that fails if another took them.
void reserve(Instance *self, const std::string &alloc, int attempt,
             std::function<void(std::string ip4, std::string ip6, std::string err)> cb) {
  std::string ip4, ip6;
  for (const auto &[ip, a] : self->owner)
    if (a == alloc) (ip.find(':') == std::string::npos ? ip4 : ip6) = ip;
  const bool want6 = self->net.subnet6.has_value();
  if (!ip4.empty() && (!want6 || !ip6.empty())) return cb(ip4, ip6, "");
  std::vector<ov::TxnOp> ops;
  json value = {{"alloc", alloc}, {"node", self->node}};
  if (ip4.empty()) {
    auto p = pick_address(self, self->net.subnet4);
    if (!p) return cb("", "", "subnet " + self->net.subnet4.text() + " has no free address");
    ip4 = *p;
    ops.push_back({self->addr_key(ip4), value.dump(), 0, 0});
  }
  if (want6 && ip6.empty()) {
    auto p = pick_address(self, *self->net.subnet6);
    if (!p) return cb("", "", "subnet " + self->net.subnet6->text() + " has no free address");
    ip6 = *p;
    ops.push_back({self->addr_key(ip6), value.dump(), 0, 0});
  }
  flotilla_status st = self->store->txn(ops, [=](flotilla_status s, bool ok) {
    if (self->stopping) return;
    if (s != FLOTILLA_OK) return cb("", "", "cannot reserve an address in the store");
    if (!ok) {
      // The store knows a reservation this node's memory does not: reload.
      if (attempt > 3) return cb("", "", "address reservations keep conflicting");
      return load_reservations(self, [=](std::string err) {
        if (!err.empty()) return cb("", "", err);
        reserve(self, alloc, attempt + 1, cb);
      });
    }
    self->owner[ip4] = alloc;
    if (!ip6.empty()) self->owner[ip6] = alloc;
    cb(ip4, ip6, "");
  });
  if (st != FLOTILLA_OK) cb("", "", "the store refused a transaction");
}

void release(Instance *self, const std::string &alloc, std::function<void(std::string)> cb) {
  std::vector<ov::TxnOp> ops;
  std::vector<std::string> ips;
  for (const auto &[ip, a] : self->owner)
    if (a == alloc) {
      ops.push_back({self->addr_key(ip), std::nullopt, -1, 0});
      ips.push_back(ip);
    }
  if (ops.empty()) return cb("");
  flotilla_status st = self->store->txn(ops, [=](flotilla_status s, bool) {
    if (self->stopping) return;
    if (s != FLOTILLA_OK) return cb("cannot release the addresses of " + alloc);
    for (const auto &ip : ips) self->owner.erase(ip);
    cb("");
  });
  if (st != FLOTILLA_OK) cb("the store refused a transaction");
}

// ---- attach / detach -------------------------------------------------------

json dns_of(const Instance *self) {
  std::string host_resolv;
  if (self->cfg.dns_servers.empty() && self->discovery_dns.nameservers.empty()) {
    std::ifstream in("/etc/resolv.conf");
    std::stringstream ss;
    ss << in.rdbuf();
    host_resolv = ss.str();
  }
  ov::ContainerDns d = ov::container_dns(self->cfg, self->discovery_dns, host_resolv);
  return {{"nameservers", d.nameservers}, {"search", d.search}, {"options", d.options}};
}

json result_of(Instance *self, const ov::Attachment &a) {
  json ips = json::array({{{"address", a.ip4}, {"gateway", a.gw4}}});
  json routes = json::array({{{"dst", "0.0.0.0/0"}, {"gateway", a.gw4}}});
  if (!a.ip6.empty()) {
    ips.push_back({{"address", a.ip6}, {"gateway", a.gw6}});
    routes.push_back({{"dst", "::/0"}, {"gateway", a.gw6}});
  }
  json hosts = json::array({{{"ip", "127.0.0.1"}, {"names", {"localhost"}}},
                            {{"ip", "::1"}, {"names", {"localhost", "ip6-localhost"}}}});
  if (!a.hostnames.empty()) {
    hosts.push_back({{"ip", a.ip4.substr(0, a.ip4.find('/'))}, {"names", a.hostnames}});
    if (!a.ip6.empty())
      hosts.push_back({{"ip", a.ip6.substr(0, a.ip6.find('/'))}, {"names", a.hostnames}});
  }
  json ports = json::array();
  for (const auto &p : a.ports)
    ports.push_back({{"host", p.host}, {"to", p.to}, {"protocol", p.protocol}});
  return {{"netns", a.netns},
          {"interfaces", json::array({{{"name", "eth0"},
                                       {"host_side", a.veth},
                                       {"bridge", self->cfg.bridge},
                                       {"mtu", self->net.mtu}}})},
          {"ips", ips},
          {"routes", routes},
          {"dns", dns_of(self)},
          {"hosts", hosts},
          {"ports", ports}};
}

flotilla_status net_attach(void *inst, const char *alloc_id, const char *netns_path,
                           const char *spec_json, flotilla_network_attach_cb cb, void *user) {
  auto *self = static_cast<Instance *>(inst);
  if (!alloc_id || !*alloc_id || !cb) {
    self->set_error("net-overlay: attach needs an allocation id and a callback");
    return FLOTILLA_E_INVALID;
  }
  const std::string alloc = alloc_id;
  if (alloc.find('/') != std::string::npos || alloc[0] == '.') {
    self->set_error("net-overlay: allocation id \"" + alloc + "\" cannot name a file");
    return FLOTILLA_E_INVALID;
  }
  json spec = spec_json && *spec_json ? json::parse(spec_json, nullptr, false) : json::object();
  if (!spec.is_object()) {
    self->set_error("net-overlay: the attach spec is not a JSON object");
    return FLOTILLA_E_INVALID;
  }
  ov::Attachment a;
  try {
    a.ports = ov::parse_ports(spec);
    a.hostnames = spec.value("hostnames", std::vector<std::string>{});
  } catch (const std::exception &e) {
    self->set_error(std::string("net-overlay: attach spec: ") + e.what());
    return FLOTILLA_E_INVALID;
  }
  a.alloc = alloc;
  a.veth = ov::veth_name(self->cfg.veth_prefix, alloc);
  if (netns_path && *netns_path) {
    a.netns = netns_path;
  } else {
    a.netns = self->cfg.netns_dir + "/" + alloc;
    a.netns_pinned = true;
  }
  enqueue(self, [self, a, cb, user](std::function<void()> done) mutable {
    auto fail = [self, cb, user, done](flotilla_status st, const std::string &why) {
      self->count("net_overlay_attach_errors_total");
      self->log(FLOTILLA_LOG_WARN, "attach failed: " + why);
      self->set_error("net-overlay: " + why);
      cb(user, st, nullptr);
      done();
    };
    for (const auto &[other, b] : self->attachments)
      if (other != a.alloc && b.veth == a.veth)
        return fail(FLOTILLA_E_CONFLICT, "allocations " + other + " and " + a.alloc +
                                             " hash to one interface name " + a.veth);
    reserve(self, a.alloc, 0, [self, a, cb, user, done, fail](std::string ip4, std::string ip6,
                                                              std::string err) mutable {
      if (!err.empty()) return fail(FLOTILLA_E_UNAVAILABLE, err);
      a.ip4 = ip4 + "/" + std::to_string(self->net.subnet4.prefix);
      a.gw4 = self->net.gateway4();
      if (!ip6.empty()) {
        a.ip6 = ip6 + "/" + std::to_string(self->net.subnet6->prefix);
        a.gw6 = self->net.gateway6();
      }
      self->attachments[a.alloc] = a;
      run_work(
          self,
          [self, a] {
            write_record(self->record_dir(), a);
            ov::attach(self->net, a, *self->host_sock, *self->nft_ctx);
          },
          [self, a, cb, user, done, fail](const std::string &error) {
            if (!error.empty())
              return fail(FLOTILLA_E_IO, "attach of " + a.alloc + ": " + error);
            self->count("net_overlay_attach_total");
            json r = result_of(self, a);
            cb(user, FLOTILLA_OK, r.dump().c_str());
            done();
          });
    });
  });
  return FLOTILLA_OK;
}

// Detach: the same whether attach finished, failed half-way or never ran
// (then there is nothing to undo).
void do_detach(Instance *self, const std::string &alloc, std::function<void(std::string)> cb) {
  ov::Attachment a;
  if (auto it = self->attachments.find(alloc); it != self->attachments.end()) {
    a = it->second;
  } else {
    a.alloc = alloc;
    a.veth = ov::veth_name(self->cfg.veth_prefix, alloc);
    a.netns = self->cfg.netns_dir + "/" + alloc;
    a.netns_pinned = true;
  }
  run_work(
      self,
      [self, a] {
        ov::detach(self->net, a, *self->host_sock, *self->nft_ctx);
        std::filesystem::remove(self->record_dir() + "/" + a.alloc + ".json");
      },
      [self, alloc, cb](const std::string &error) {
        if (!error.empty()) return cb("detach of " + alloc + ": " + error);
        self->attachments.erase(alloc);
        release(self, alloc, cb);
      });
}

flotilla_status net_detach(void *inst, const char *alloc_id, const char *, flotilla_done_cb cb,
                           void *user) {
  auto *self = static_cast<Instance *>(inst);
  if (!alloc_id || !*alloc_id || !cb) {
    self->set_error("net-overlay: detach needs an allocation id and a callback");
    return FLOTILLA_E_INVALID;
  }
  const std::string alloc = alloc_id;
  enqueue(self, [self, alloc, cb, user](std::function<void()> done) {
    do_detach(self, alloc, [self, cb, user, done](std::string err) {
      if (!err.empty()) {
        self->log(FLOTILLA_LOG_WARN, err);
        self->set_error("net-overlay: " + err);
        cb(user, FLOTILLA_E_IO);
      } else {
        self->count("net_overlay_detach_total");
        cb(user, FLOTILLA_OK);
      }
      done();
    });
  });
  return FLOTILLA_OK;
}

// The peers as the device has them, with the node and key generation
// their records give.
json peers_of(const Instance *self, const ov::WgDevice &d) {
  json peers = json::array();
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  for (const auto &p : d.peers) {
    json e = {{"public_key", p.public_key},
              {"endpoint", p.endpoint},
              {"allowed_ips", p.allowed_ips},
              {"last_handshake_age_s", p.last_handshake_sec > 0
                                           ? json(std::max<int64_t>(0, now - p.last_handshake_sec))
                                           : json(nullptr)},
              {"rx_bytes", p.rx_bytes},
              {"tx_bytes", p.tx_bytes},
              {"keepalive_s", p.keepalive},
              {"backend", self->backend},
              {"node", nullptr},
              {"key_generation", nullptr}};
    for (const auto &[name, r] : self->records)
      if (r.public_key == p.public_key) {
        e["node"] = name;
        e["key_generation"] = r.key_generation;
        e["behind_nat"] = r.behind_nat;
      }
    peers.push_back(std::move(e));
  }
  return peers;
}

flotilla_status net_status(void *inst, flotilla_network_attach_cb cb, void *user) {
  auto *self = static_cast<Instance *>(inst);
  json atts = json::array();
  for (const auto &[id, a] : self->attachments) atts.push_back(a.to_json());
  json subnets = json::array();
  if (self->ready) {
    subnets.push_back(self->net.subnet4.text());
    if (self->net.subnet6) subnets.push_back(self->net.subnet6->text());
  }
  auto s = std::make_shared<json>(
      json{{"ready", self->ready},
           {"bridge", self->cfg.bridge},
           {"mtu", self->net.mtu},
           {"underlay", {{"interface", self->underlay.interface}, {"mtu", self->underlay.mtu}}},
           {"subnets", subnets},
           {"nft_table", "inet " + self->cfg.nft_table},
           {"attachments", atts},
           {"peers", json::array()}});
  if (!self->backend.empty()) {
    (*s)["wireguard"] = {{"backend", self->backend},
                         {"interface", self->cfg.wg_interface},
                         {"public_key", self->key.public_b64()},
                         {"key_generation", self->key.generation},
                         {"endpoint", self->endpoint},
                         {"listen_port", self->cfg.wg_listen_port},
                         {"behind_nat", self->cfg.wg_behind_nat},
                         {"pid", self->wg_pid},
                         {"error", self->mesh_error}};
    // The device's own counters, read now on the thread pool.
    auto dev = std::make_shared<ov::WgDevice>();
    const std::string backend = self->backend, ifname = self->cfg.wg_interface;
    run_work(
        self, [dev, backend, ifname] { *dev = ov::read_mesh_device(backend, ifname); },
        [self, s, dev, cb, user](const std::string &error) {
          if (!error.empty())
            (*s)["wireguard"]["error"] = error;
          else
            (*s)["peers"] = peers_of(self, *dev);
          cb(user, FLOTILLA_OK, s->dump().c_str());
        });
    return FLOTILLA_OK;
  }
  // Asynchronous, as the ABI promises: the callback runs on a later turn.
  struct Ctx {
    flotilla_network_attach_cb cb;
    void *user;
    std::string text;
  };
  auto *c = new Ctx{cb, user, s->dump()};
  flotilla_handle t = self->host->timer_start(
      self->host->host_ctx, 0, 0,
      [](void *u) {
        std::unique_ptr<Ctx> c(static_cast<Ctx *>(u));
        c->cb(c->user, FLOTILLA_OK, c->text.c_str());
      },
      c);
  if (!t) {
    delete c;
    return FLOTILLA_E_UNAVAILABLE;
  }
  return FLOTILLA_OK;
}

// Everything this plugin made on the node, and the node's leases
// (`flotillad --cleanup-network`): asked for with the event
// "network.cleanup.request", answered with "network.cleanup.result"
// {"ok": bool, "error": "...", "removed": [...]} (docs/abi-json.md).
void cleanup(Instance *self) {
  enqueue(self, [self](std::function<void()> done) {
    // The mesh stops first: no convergence starts wireguard-go again.
    const bool mesh = !self->backend.empty();
    self->backend.clear();
    auto removed = std::make_shared<std::vector<std::string>>();
    auto answer = [self, done, removed](const std::string &why) {
      if (!why.empty()) self->log(FLOTILLA_LOG_ERROR, "clean-up: " + why);
      json r = {{"ok", why.empty()}, {"error", why}, {"removed", *removed}};
      self->host->event_publish(self->host->host_ctx, "network.cleanup.result", r.dump().c_str());
      done();
    };
    run_work(
        self,
        [self, removed] {
          *removed = ov::remove_everything(self->cfg, *self->host_sock, *self->nft_ctx);
          std::filesystem::remove_all(self->record_dir());
          std::lock_guard<std::mutex> g(self->mesh_mu);  // after a convergence in flight
          for (const auto &r :
               ov::remove_mesh(self->wg_dir(), self->cfg.wg_interface, *self->host_sock))
            removed->push_back(r);
        },
        [self, removed, answer, mesh](const std::string &error) {
          if (!error.empty()) return answer(error);
          for (const auto &r : *removed) self->log(FLOTILLA_LOG_INFO, "removed " + r);
          self->attachments.clear();
          flotilla_status st = self->store->list(
              kSubnets,
              [self, removed, answer, mesh](flotilla_status s, std::vector<ov::Kv> kvs, int64_t) {
                if (self->stopping) return;
                if (s != FLOTILLA_OK) return answer("cannot read " + kSubnets);
                std::vector<ov::TxnOp> ops;
                for (const auto &kv : kvs) {
                  json v = json::parse(kv.value, nullptr, false);
                  if (v.is_object() && v.value("node", "") == self->node)
                    ops.push_back({kv.key, std::nullopt, -1, 0});
                }
                for (const auto &[ip, alloc] : self->owner)
                  ops.push_back({self->addr_key(ip), std::nullopt, -1, 0});
                // The node's WireGuard record: the other nodes drop the peer now.
                if (mesh) ops.push_back({self->node_key(), std::nullopt, -1, 0});
                if (mesh) ops.push_back({kStatus + self->node, std::nullopt, -1, 0});
                if (ops.empty()) return answer("");
                flotilla_status ts = self->store->txn(
                    ops, [self, removed, answer, n = ops.size()](flotilla_status s2, bool) {
                      if (self->stopping) return;
                      if (s2 != FLOTILLA_OK) return answer("cannot release the node's leases");
                      self->owner.clear();
                      removed->push_back(std::to_string(n) + " subnet and address leases");
                      self->log(FLOTILLA_LOG_INFO,
                                "released " + std::to_string(n) + " subnet and address leases");
                      answer("");
                    });
                if (ts != FLOTILLA_OK) answer("the store refused a transaction");
              });
          if (st != FLOTILLA_OK) answer("the store refused a read");
        });
  });
}

// ---- the WireGuard mesh ------------------------------------------------------
//
// This node's record (/flotilla/net/nodes/<node>) lives under a lease of
// the plugin's own, kept alive while the daemon runs: when the node goes,
// its record goes within node_lease_ttl and every other node removes the
// peer. The other records are watched; on every change, and every
// wg_resync_interval, the device is compared with them and changed by diff.

ov::NodeRecord own_record(const Instance *self) {
  ov::NodeRecord r;
  r.node = self->node;
  r.public_key = self->key.public_b64();
  r.endpoint = self->endpoint;
  r.key_generation = self->key.generation;
  r.subnets.push_back(self->net.subnet4.text());
  if (self->net.subnet6) r.subnets.push_back(self->net.subnet6->text());
  r.behind_nat = self->cfg.wg_behind_nat;
  r.backend = self->backend;
  if (self->key.next) r.next_public_key = ov::key_to_base64(ov::public_key_of(*self->key.next));
  return r;
}

// Only once the device holds the other nodes' peers (the first
// convergence): a node that learns this record and sends a handshake at
// once must find itself known here, or WireGuard retries only after its
// 5 s rekey timeout.
void publish(Instance *self) {
  if (self->backend.empty() || !self->ready || !self->lease || !self->mesh_started) return;
  const std::string value = own_record(self).to_json();
  flotilla_status st = self->store->txn(
      {{self->node_key(), value, -1, self->lease}}, [self](flotilla_status s, bool) {
        if (self->stopping) return;
        if (s != FLOTILLA_OK) {
          self->count("net_overlay_wg_errors_total");
          self->log(FLOTILLA_LOG_WARN,
                    "could not write " + self->node_key() + "; again at the next keepalive");
          self->lease = 0;  // granted anew, and written again
        }
      });
  if (st != FLOTILLA_OK) self->lease = 0;
}

// The lease's id is kept in the data dir: a daemon restarted within the
// TTL takes its old lease back, so its record never expires in between
// and no other node drops the peer.
std::string lease_file(const Instance *self) {
  return self->wg_dir() + "/lease";
}

void save_lease(const Instance *self) {
  std::ofstream(lease_file(self), std::ios::trunc) << self->lease << "\n";
}

void grant_lease(Instance *self) {
  if (self->granting || self->stopping) return;
  self->granting = true;
  if (!self->lease_reuse_tried) {
    self->lease_reuse_tried = true;
    std::ifstream in(lease_file(self));
    flotilla_lease_id old = 0;
    if (in >> old && old > 0) {
      flotilla_status st =
          self->store->lease_keepalive(old, [self, old](flotilla_status s, flotilla_lease_id) {
            self->granting = false;
            if (self->stopping) return;
            if (s == FLOTILLA_OK) {
              self->lease = old;
              self->log(FLOTILLA_LOG_INFO, "kept the WireGuard record's lease of the last run");
              return publish(self);
            }
            grant_lease(self);
          });
      if (st == FLOTILLA_OK) return;
    }
  }
  flotilla_status st = self->store->lease_grant(
      self->cfg.node_lease_ttl, [self](flotilla_status s, flotilla_lease_id id) {
        self->granting = false;
        if (self->stopping) return;
        if (s != FLOTILLA_OK) {
          self->log(FLOTILLA_LOG_WARN, "no lease for the node's WireGuard record yet");
          return;  // the next tick asks again
        }
        self->lease = id;
        save_lease(self);
        publish(self);
      });
  if (st != FLOTILLA_OK) self->granting = false;
}

void keep_lease(Instance *self) {
  if (!self->lease) return grant_lease(self);
  self->store->lease_keepalive(self->lease, [self](flotilla_status s, flotilla_lease_id) {
    if (self->stopping || s == FLOTILLA_OK) return;
    // Expired (the daemon was paused or cut off longer than the TTL): the
    // record went with it; a new lease and the record again.
    self->log(FLOTILLA_LOG_WARN, "the node's WireGuard record lease was lost; publishing again");
    self->lease = 0;
    grant_lease(self);
  });
}

void converge(Instance *self);

void retry_mesh_soon(Instance *self) {
  // The once-a-second tick converges again when mesh_again is set.
  self->mesh_again = true;
}

void converge(Instance *self) {
  if (self->backend.empty() || !self->ready || !self->records_loaded || self->stopping) return;
  if (self->mesh_busy) {
    self->mesh_again = true;
    return;
  }
  self->mesh_again = false;
  auto spec = std::make_shared<ov::MeshSpec>();
  spec->backend = self->backend;
  spec->ifname = self->cfg.wg_interface;
  spec->wireguard_go = self->cfg.wireguard_go;
  spec->state_dir = self->wg_dir();
  spec->mtu = self->net.mtu;
  spec->listen_port = self->cfg.wg_listen_port;
  spec->private_key = self->key.private_key;
  spec->addresses.push_back(self->net.gateway4() + "/32");
  if (self->net.subnet6) spec->addresses.push_back(self->net.gateway6() + "/128");
  spec->peers =
      ov::desired_peers(self->records, self->node, self->cfg.wg_behind_nat, self->cfg.wg_keepalive);
  spec->routes = ov::desired_routes(self->records, self->node);
  spec->cluster.push_back(self->cfg.cluster_cidr);
  if (self->cfg.cluster_cidr_v6) spec->cluster.push_back(*self->cfg.cluster_cidr_v6);
  self->mesh_busy = true;
  const auto began = self->change_seen;
  self->change_seen = {};
  auto out = std::make_shared<ov::MeshOutcome>();
  run_work(
      self,
      [self, spec, out] {
        std::lock_guard<std::mutex> g(self->mesh_mu);
        *out = ov::converge_mesh(*spec, *self->mesh_sock);
      },
      [self, spec, out, began](const std::string &error) {
        self->mesh_busy = false;
        if (!error.empty()) {
          self->count("net_overlay_wg_errors_total");
          if (error != self->mesh_error)
            self->log(FLOTILLA_LOG_ERROR, "WireGuard mesh: " + error + "; trying again");
          self->mesh_error = error;
          if (began != std::chrono::steady_clock::time_point{} &&
              self->change_seen == std::chrono::steady_clock::time_point{})
            self->change_seen = began;
          return retry_mesh_soon(self);
        }
        self->mesh_error.clear();
        if (out->started && self->backend == "userspace")
          self->log(FLOTILLA_LOG_INFO, "started wireguard-go for " + spec->ifname + " (pid " +
                                           std::to_string(out->pid) + ")");
        else if (out->reattached && !self->mesh_started)
          self->log(FLOTILLA_LOG_INFO, "reattached to the running wireguard-go for " +
                                           spec->ifname + " (pid " + std::to_string(out->pid) +
                                           ")");
        const bool first = !self->mesh_started;
        self->mesh_started = true;
        self->wg_pid = out->pid;
        if (first) publish(self);
        if (out->added || out->updated || out->removed || out->routes_changed)
          self->log(FLOTILLA_LOG_INFO,
                    "WireGuard peers: " + std::to_string(out->added) + " added, " +
                        std::to_string(out->updated) + " updated, " + std::to_string(out->removed) +
                        " removed; " + std::to_string(out->routes_changed) + " route changes; " +
                        std::to_string(spec->peers.size()) + " peers");
        const flotilla_host *h = self->host;
        if (out->added)
          h->metric_counter_add(h->host_ctx, "net_overlay_wg_peer_adds_total", out->added);
        if (out->updated)
          h->metric_counter_add(h->host_ctx, "net_overlay_wg_peer_updates_total", out->updated);
        if (out->removed)
          h->metric_counter_add(h->host_ctx, "net_overlay_wg_peer_removes_total", out->removed);
        if (out->routes_changed)
          h->metric_counter_add(h->host_ctx, "net_overlay_wg_route_changes_total",
                                out->routes_changed);
        self->count("net_overlay_wg_syncs_total");
        self->gauge("net_overlay_wg_peers", static_cast<double>(out->device.peers.size()));
        if (began != std::chrono::steady_clock::time_point{})
          self->gauge(
              "net_overlay_wg_convergence_seconds",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
        if (self->mesh_again) converge(self);
      });
}

void note_change(Instance *self) {
  if (self->change_seen == std::chrono::steady_clock::time_point{})
    self->change_seen = std::chrono::steady_clock::now();
  converge(self);
}

void list_records(Instance *self);

void watch_records(Instance *self, int64_t from) {
  flotilla_status st = self->store->watch(
      kNodes, from,
      [self](flotilla_status s, const flotilla_watch_event *evs, size_t n) {
        if (self->stopping) return;
        if (s != FLOTILLA_OK) {
          // Ended (compacted, store lost): read everything again.
          self->watching = false;
          self->records_loaded = false;
          return;  // the tick lists again
        }
        bool own_gone = false;
        for (size_t i = 0; i < n; ++i) {
          const auto &kv = evs[i].kv;
          std::string key(kv.key, kv.key_len);
          const std::string name = key.substr(kNodes.size());
          if (evs[i].type == FLOTILLA_EVENT_DELETE) {
            self->records.erase(name);
            if (name == self->node) own_gone = true;
            continue;
          }
          auto r = ov::NodeRecord::from_json(std::string(kv.value, kv.value_len));
          if (r && r->node == name)
            self->records[name] = *r;
          else
            self->records.erase(name);
        }
        if (own_gone) publish(self);
        note_change(self);
      },
      &self->watch_id);
  self->watching = st == FLOTILLA_OK;
}

void list_records(Instance *self) {
  if (self->listing || self->stopping) return;
  self->listing = true;
  flotilla_status st =
      self->store->list(kNodes, [self](flotilla_status s, std::vector<ov::Kv> kvs, int64_t rev) {
        self->listing = false;
        if (self->stopping || s != FLOTILLA_OK) return;  // the tick lists again
        self->records.clear();
        for (const auto &kv : kvs) {
          const std::string name = kv.key.substr(kNodes.size());
          auto r = ov::NodeRecord::from_json(kv.value);
          if (r && r->node == name) self->records[name] = *r;
        }
        self->records_loaded = true;
        if (self->watching) {
          self->store->cancel(self->watch_id);
          self->watching = false;
        }
        watch_records(self, rev + 1);
        note_change(self);
      });
  if (st != FLOTILLA_OK) self->listing = false;
}

// A copy of this node's status() in the store, under the record's lease
// (so it goes with the node): another node's API answers GET
// /v1/nodes/<this node>/network with it. Its peers' counters are as of
// the copy, which says when it was made (published_at_ms).
void publish_status(Instance *self) {
  if (self->backend.empty() || !self->ready || !self->lease || self->status_busy) return;
  self->status_busy = true;
  flotilla_status st = net_status(
      self,
      [](void *user, flotilla_status s, const char *text) {
        auto *self = static_cast<Instance *>(user);
        self->status_busy = false;
        if (self->stopping || s != FLOTILLA_OK || !text || !self->lease) return;
        json j = json::parse(text, nullptr, false);
        if (!j.is_object()) return;
        j["node"] = self->node;
        j["published_at_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count();
        self->store->txn({{kStatus + self->node, j.dump(), -1, self->lease}},
                         [self](flotilla_status s2, bool) {
                           if (!self->stopping && s2 != FLOTILLA_OK)
                             self->count("net_overlay_wg_errors_total");
                         });
      },
      self);
  if (st != FLOTILLA_OK) self->status_busy = false;
}

// The published endpoint follows the underlay's addresses, unless
// wg_endpoint is set: a prefix renumbered (the old address deprecated, a
// new one added), an address removed, a tentative one whose DAD is over.
// The same choice as at start (ov::underlay_endpoint), every
// kEndpointCheckTicks, read on the thread pool through the mesh's socket.
// The peers take the new endpoint from the record; WireGuard's roaming
// alone would reach only the peers this node sends to first.
constexpr int kEndpointCheckTicks = 5;

void check_endpoint(Instance *self) {
  if (!self->cfg.wg_endpoint.empty() || !self->mesh_started || self->endpoint_busy) return;
  self->endpoint_busy = true;
  auto addrs = std::make_shared<std::vector<nl::Address>>();
  const std::string ifname = self->underlay.interface;
  run_work(
      self,
      [self, addrs, ifname] {
        std::lock_guard<std::mutex> g(self->mesh_mu);
        *addrs = self->mesh_sock->addresses_with_flags(ifname);
      },
      [self, addrs](const std::string &error) {
        self->endpoint_busy = false;
        if (!error.empty()) return self->count("net_overlay_wg_errors_total");
        const auto ep = ov::underlay_endpoint(*addrs, self->cfg.wg_listen_port);
        if (!ep) {
          if (!self->endpoint_lost_warned)
            self->log(FLOTILLA_LOG_WARN, "the underlay " + self->underlay.interface +
                                             " has no address to publish now; keeping " +
                                             self->endpoint + " as this node's WireGuard endpoint");
          self->endpoint_lost_warned = true;
          return;
        }
        self->endpoint_lost_warned = false;
        if (*ep == self->endpoint) return;
        const bool family_changed = ov::tunnel_is_v6(*ep, self->underlay.v6) !=
                                    ov::tunnel_is_v6(self->endpoint, self->underlay.v6);
        self->log(family_changed ? FLOTILLA_LOG_WARN : FLOTILLA_LOG_INFO,
                  "the underlay " + self->underlay.interface +
                      "'s addresses changed: this node's WireGuard endpoint is now " + *ep +
                      " (was " + self->endpoint + ")" +
                      (family_changed ? "; the MTU (" + std::to_string(self->net.mtu) +
                                            ") keeps the old family's WireGuard overhead until "
                                            "the daemon restarts"
                                      : ""));
        self->endpoint = *ep;
        self->count("net_overlay_wg_endpoint_changes_total");
        publish(self);
      });
}

// Once a second: the lease kept alive (every third of its TTL), the
// records listed again after a lost watch, wireguard-go's liveness, a
// failed convergence retried, every wg_resync_interval a full comparison
// against the device, and every kEndpointCheckTicks the endpoint.
void mesh_tick(Instance *self) {
  if (self->stopping || self->backend.empty()) return;
  self->mesh_ticks++;
  const int ka = std::max(1, self->cfg.node_lease_ttl / 3);
  if (!self->lease || self->mesh_ticks % ka == 0) keep_lease(self);
  if (!self->ready) return;
  if (!self->records_loaded || !self->watching) return list_records(self);
  bool again = self->mesh_again;
  if (self->backend == "userspace" && self->wg_pid > 0 &&
      ov::wireguard_go_pid(self->wg_dir(), self->cfg.wg_interface) != self->wg_pid) {
    self->log(FLOTILLA_LOG_WARN,
              "wireguard-go (pid " + std::to_string(self->wg_pid) + ") is gone; starting it again");
    self->count("net_overlay_wg_errors_total");
    self->wg_pid = 0;
    again = true;
  }
  if (again || self->mesh_ticks % self->cfg.wg_resync_interval == 0) converge(self);
  if (self->mesh_ticks % kEndpointCheckTicks == 0) check_endpoint(self);
  if (self->cfg.status_interval > 0 && self->mesh_ticks % self->cfg.status_interval == 0)
    publish_status(self);
}

// Key rotation, make before break: (1) the next key is made, kept in the
// key file and published as the record's next_public_key; every other node
// adds it as a peer with no allowed-ips, so a handshake with it can be
// made while traffic still flows to the old key; (2) after
// wg_rotate_overlap_ms the device switches to it and the record's
// public_key becomes it, generation + 1: the others move the allowed-ips to
// the new peer (already known to them) and remove the old one. Asked for
// through the event bus ("network.rotate_key.request", POST
// /v1/nodes/<node>/rotate-key, flotilla node rotate-key).
void finish_rotation(Instance *self) {
  self->rotate_timer = 0;
  if (!self->key.next || self->backend.empty()) return;
  ov::NodeKey k = self->key;
  k.private_key = *k.next;
  k.next.reset();
  k.generation++;
  try {
    ov::save_key(self->wg_dir(), k);
  } catch (const std::exception &e) {
    self->count("net_overlay_wg_errors_total");
    self->log(FLOTILLA_LOG_ERROR, std::string("key rotation: ") + e.what());
    return;
  }
  self->key = k;
  self->log(FLOTILLA_LOG_INFO, "WireGuard key rotated: generation " + std::to_string(k.generation) +
                                   ", public key " + k.public_b64());
  self->count("net_overlay_wg_key_rotations_total");
  converge(self);
  publish(self);
}

void schedule_finish(Instance *self) {
  if (self->rotate_timer) return;
  self->rotate_timer = self->host->timer_start(
      self->host->host_ctx, static_cast<uint64_t>(self->cfg.wg_rotate_overlap_ms), 0,
      [](void *u) { finish_rotation(static_cast<Instance *>(u)); }, self);
}

void rotate_key(Instance *self) {
  if (self->backend.empty()) {
    self->log(FLOTILLA_LOG_WARN, "key rotation asked for, but this node has no WireGuard mesh");
    return;
  }
  if (self->key.next) return;  // one is under way
  ov::NodeKey k = self->key;
  try {
    k.next = ov::generate_private_key();
    ov::save_key(self->wg_dir(), k);
  } catch (const std::exception &e) {
    self->count("net_overlay_wg_errors_total");
    self->log(FLOTILLA_LOG_ERROR, std::string("key rotation: ") + e.what());
    return;
  }
  self->key = k;
  self->log(FLOTILLA_LOG_INFO, "WireGuard key rotation: next key " +
                                   ov::key_to_base64(ov::public_key_of(*k.next)) +
                                   " published; switching in " +
                                   std::to_string(self->cfg.wg_rotate_overlap_ms) + " ms");
  publish(self);
  schedule_finish(self);
}

void start_mesh(Instance *self) {
  if (self->backend.empty()) return;
  if (self->key.next) schedule_finish(self);  // a rotation the last run began
  publish(self);
  list_records(self);
}

// ---- start-up --------------------------------------------------------------

void collect_garbage(Instance *self);

void setup(Instance *self);

void retry_setup(Instance *self, const std::string &why) {
  const uint64_t delay = std::min<uint64_t>(200u << std::min(self->setup_attempts, 5), 5000);
  self->log(FLOTILLA_LOG_ERROR, "node network set-up failed: " + why + "; retrying in " +
                                    std::to_string(delay) + " ms");
  self->setup_attempts++;
  self->retry_timer = self->host->timer_start(
      self->host->host_ctx, delay, 0,
      [](void *u) {
        auto *s = static_cast<Instance *>(u);
        s->retry_timer = 0;
        setup(s);
      },
      self);
}

// The bridge and its gateway addresses, for discovery (which answers the
// containers' DNS there): "network.bridge.ready" on the event bus.
void announce_bridge(Instance *self) {
  json gateways = json::array({self->net.gateway4()});
  if (self->net.subnet6) gateways.push_back(self->net.gateway6());
  json ev = {{"node", self->node}, {"bridge", self->cfg.bridge}, {"gateways", gateways}};
  self->host->event_publish(self->host->host_ctx, "network.bridge.ready", ev.dump().c_str());
}

// "discovery.dns.ready": {"nameservers": [...], "options": [...]}.
void on_discovery_dns(void *u, const char *topic, const char *payload) {
  auto *self = static_cast<Instance *>(u);
  if (std::strcmp(topic, "discovery.dns.ready") != 0) return;
  json j = json::parse(payload ? payload : "", nullptr, false);
  if (!j.is_object()) return;
  ov::DiscoveryDns d;
  for (const char *k : {"nameservers", "options"})
    if (j.contains(k) && j[k].is_array())
      for (const auto &v : j[k])
        if (v.is_string())
          (std::strcmp(k, "nameservers") == 0 ? d.nameservers : d.options)
              .push_back(v.get<std::string>());
  for (const auto &ns : d.nameservers)
    if (!ov::parse_address(ns))
      return self->log(FLOTILLA_LOG_WARN,
                       "discovery.dns.ready: \"" + ns + "\" is not an address; ignored");
  self->discovery_dns = d;
  std::string list;
  for (const auto &ns : d.nameservers) list += (list.empty() ? "" : ", ") + ns;
  self->log(FLOTILLA_LOG_INFO,
            self->cfg.dns_servers.empty()
                ? "containers attached from now on resolve through discovery's DNS at " + list
                : "discovery's DNS answers at " + list + "; containers keep dns_servers");
}

// Subnets, then this node's reservations, then the host: bridge, sysctls,
// the nft table, and removal of what no attachment owns.
void setup(Instance *self) {
  lease_subnet(self, self->cfg.cluster_cidr, self->cfg.subnet_prefix, 0,
               [self](std::optional<ov::Cidr> s4, std::string err) {
    if (!s4) return retry_setup(self, err);
    self->net.subnet4 = *s4;
    auto after_v6 = [self] {
      load_reservations(self, [self](std::string err2) {
        if (!err2.empty()) return retry_setup(self, err2);
        std::vector<ov::Attachment> known = read_records(self->record_dir());
        for (const auto &a : known) self->attachments[a.alloc] = a;
        auto removed = std::make_shared<std::vector<std::string>>();
        run_work(
            self,
            [self, known, removed] {
              *removed = ov::setup_node(self->net, known, *self->host_sock, *self->nft_ctx);
            },
            [self, removed](const std::string &error) {
              if (!error.empty()) return retry_setup(self, error);
              for (const auto &r : *removed)
                self->log(FLOTILLA_LOG_INFO, "removed leftover " + r);
              std::string subnets = self->net.subnet4.text();
              if (self->net.subnet6) subnets += ", " + self->net.subnet6->text();
              self->log(FLOTILLA_LOG_INFO, "node network ready: bridge " + self->cfg.bridge +
                                               ", subnets " + subnets + ", mtu " +
                                               std::to_string(self->net.mtu) + " (underlay " +
                                               self->underlay.interface + " " +
                                               std::to_string(self->underlay.mtu) + ")");
              self->ready = true;
              announce_bridge(self);
              collect_garbage(self);
              start_mesh(self);
              pump(self);
            });
      });
    };
    if (!self->cfg.cluster_cidr_v6) return after_v6();
    lease_subnet(self, *self->cfg.cluster_cidr_v6, self->cfg.subnet_prefix_v6, 0,
                 [self, after_v6](std::optional<ov::Cidr> s6, std::string err3) {
                   if (!s6) return retry_setup(self, err3);
                   self->net.subnet6 = *s6;
                   after_v6();
                 });
  });
}

// Reservations and attachments of allocations the store no longer places
// on this node (removed while the daemon was down, or an attach cut short
// by a crash for an allocation that went away): detached and released.
void collect_garbage(Instance *self) {
  self->store->list(kAllocs, [self](flotilla_status s, std::vector<ov::Kv> kvs, int64_t) {
    if (self->stopping || s != FLOTILLA_OK) return;
    std::set<std::string> here;
    for (const auto &kv : kvs) {
      json a = json::parse(kv.value, nullptr, false);
      if (a.is_object() && a.value("node", "") == self->node) here.insert(a.value("id", ""));
    }
    std::set<std::string> gone;
    for (const auto &[ip, alloc] : self->owner)
      if (!here.count(alloc)) gone.insert(alloc);
    for (const auto &[alloc, a] : self->attachments)
      if (!here.count(alloc)) gone.insert(alloc);
    for (const auto &alloc : gone)
      enqueue(self, [self, alloc](std::function<void()> done) {
        do_detach(self, alloc, [self, alloc, done](std::string err) {
          if (!err.empty())
            self->log(FLOTILLA_LOG_WARN, "garbage collection: " + err);
          else
            self->log(FLOTILLA_LOG_INFO, "released the network of gone allocation " + alloc);
          done();
        });
      });
  });
}

#ifdef FLOTILLA_CHECK_ALL
// ABI 1.2: the config's problems, all of them, without an instance.
flotilla_status check_config(const flotilla_host *host, uint32_t) {
  std::vector<ov::ConfigProblem> problems;
  ov::parse_net_config(host->config_json(host->host_ctx), problems);
  for (const auto &p : problems)
    host->config_error(host->host_ctx, p.key.c_str(), p.message.c_str());
  return problems.empty() ? FLOTILLA_OK : FLOTILLA_E_INVALID;
}
#endif

flotilla_status init(const flotilla_host *host, void **out) {
  auto self = std::make_unique<Instance>();
  self->host = host;
  self->node = host->node_name;
  self->data_dir = host->data_dir;
  std::vector<ov::ConfigProblem> problems;
  self->cfg = ov::parse_net_config(host->config_json(host->host_ctx), problems);
  auto report = [&] {
    for (const auto &p : problems) host->config_error(host->host_ctx, p.key.c_str(), p.message.c_str());
  };
  if (!problems.empty()) {
    report();
    return FLOTILLA_E_INVALID;
  }
  void *store_self = nullptr;
  auto *svt = static_cast<const flotilla_store_v1 *>(
      host->get_interface(host->host_ctx, FLOTILLA_STORE_INTERFACE_ID, &store_self));
  if (!svt) {
    self->set_error("net-overlay: no plugin provides " FLOTILLA_STORE_INTERFACE_ID);
    return FLOTILLA_E_NOT_FOUND;
  }
  self->store = std::make_unique<ov::StoreView>(svt, store_self);
  try {
    self->host_sock = std::make_unique<nl::Socket>(nl::Socket::open());
    self->nft_ctx = std::make_unique<nft::Context>();
    try {
      self->underlay = ov::detect_underlay(*self->host_sock, self->cfg.underlay_interface);
    } catch (const nl::Error &e) {
      problems.push_back({"underlay_interface", e.what()});
    }
    // The cluster must not collide with a network this host already has.
    for (const auto &[key, cidr] :
         std::vector<std::pair<std::string, std::optional<ov::Cidr>>>{
             {"cluster_cidr", self->cfg.cluster_cidr}, {"cluster_cidr_v6", self->cfg.cluster_cidr_v6}}) {
      if (!cidr) continue;
      for (const auto &o : ov::overlapping_addresses(*self->host_sock, *cidr, self->cfg.bridge))
        problems.push_back({key, cidr->text() + " overlaps the host's address " + o +
                                     "; choose a cluster CIDR this host does not use"});
    }
  } catch (const std::exception &e) {
    self->set_error(std::string("net-overlay: ") + e.what());
    return FLOTILLA_E_UNAVAILABLE;
  }
  if (!problems.empty()) {
    report();
    return FLOTILLA_E_INVALID;
  }
  // The mesh: which backend, the node's key, the endpoint it publishes.
  if (self->cfg.wireguard != "off") {
    const bool module = ::access("/sys/module/wireguard", F_OK) == 0;
    const bool go = ::access(self->cfg.wireguard_go.c_str(), X_OK) == 0;
    const bool tun = ::access("/dev/net/tun", R_OK | W_OK) == 0;
    if (self->cfg.wireguard == "kernel" && !module)
      problems.push_back({"wireguard",
                          "\"kernel\": this kernel has no WireGuard module "
                          "(/sys/module/wireguard); use \"userspace\" (wireguard-go)"});
    else if (self->cfg.wireguard == "userspace" && !go)
      problems.push_back(
          {self->cfg.wireguard_go == "/usr/bin/wireguard-go" ? "wireguard" : "wireguard_go",
           self->cfg.wireguard_go + " is not an executable; install Debian's "
                                    "wireguard-go or set wireguard_go"});
    else if (self->cfg.wireguard == "userspace" && !tun)
      problems.push_back({"wireguard", "\"userspace\" needs /dev/net/tun, which this host lacks"});
    else if (self->cfg.wireguard == "auto")
      self->backend = module ? "kernel" : (go && tun) ? "userspace" : "";
    else
      self->backend = self->cfg.wireguard;
    if (self->cfg.wireguard == "auto" && self->backend.empty())
      self->log(FLOTILLA_LOG_WARN,
                "no WireGuard here (no kernel module, no " + self->cfg.wireguard_go +
                    " or /dev/net/tun): containers reach only this node's containers");
  }
  if (!self->backend.empty()) {
    try {
      self->key = ov::load_or_create_key(self->wg_dir());
      self->mesh_sock = std::make_unique<nl::Socket>(nl::Socket::open());
    } catch (const std::exception &e) {
      self->set_error(std::string("net-overlay: ") + e.what());
      return FLOTILLA_E_UNAVAILABLE;
    }
    self->endpoint = self->cfg.wg_endpoint;
    if (self->endpoint.empty()) {
      const auto addrs = self->host_sock->addresses_with_flags(self->underlay.interface);
      auto ep = ov::underlay_endpoint(addrs, self->cfg.wg_listen_port);
      if (ep) {
        self->endpoint = *ep;
        // A last resort (no stable address): say which and why, once.
        for (const auto &a : addrs) {
          const std::string ip = a.cidr.substr(0, a.cidr.find('/'));
          const std::string why = ov::unusable_endpoint_flags(a.flags);
          if (!why.empty() && ep->rfind("[" + ip + "]:", 0) == 0)
            self->log(FLOTILLA_LOG_WARN,
                      "the underlay " + self->underlay.interface +
                          " has no stable global IPv6 address; publishing " + a.cidr + " (" + why +
                          ") as this node's WireGuard endpoint. Peers reach it only while it "
                          "is valid; set wg_endpoint to choose one");
        }
      } else {
        // Name the addresses passed over and why (a DAD that failed).
        std::string skipped;
        for (const auto &a : addrs) {
          const std::string why = ov::unusable_endpoint_flags(a.flags);
          if (a.cidr.find(':') != std::string::npos && !why.empty())
            skipped += (skipped.empty() ? " (passed over: " : ", ") + a.cidr + " " + why;
        }
        problems.push_back({"wg_endpoint", "the underlay " + self->underlay.interface +
                                               " has no IPv4 or usable global IPv6 address to "
                                               "publish" +
                                               (skipped.empty() ? "" : skipped + ")") +
                                               "; set wg_endpoint"});
      }
    }
    if (!problems.empty()) {
      report();
      return FLOTILLA_E_INVALID;
    }
  }
  self->net.cfg = self->cfg;
  // WireGuard's overhead is the tunnel's: an IPv6 endpoint costs 80 bytes
  // even on an underlay that also has IPv4.
  self->net.mtu = ov::overlay_mtu(self->cfg.mtu, self->underlay.mtu,
                                  ov::tunnel_is_v6(self->endpoint, self->underlay.v6));
  if (self->cfg.cluster_cidr_v6 && self->net.mtu < 1280) {
    host->config_error(host->host_ctx, "mtu",
                       ("the underlay " + self->underlay.interface + " (MTU " +
                        std::to_string(self->underlay.mtu) +
                        ") leaves less than 1280 bytes, the least IPv6 allows")
                           .c_str());
    return FLOTILLA_E_INVALID;
  }
  self->gauge("net_overlay_mtu", self->net.mtu);
  Instance *raw = self.release();
  *out = raw;
  raw->dns_sub = host->event_subscribe(host->host_ctx, "discovery.dns.", on_discovery_dns, raw);
  raw->cleanup_sub = host->event_subscribe(
      host->host_ctx, "network.cleanup.request",
      [](void *u, const char *topic, const char *) {
        if (std::strcmp(topic, "network.cleanup.request") == 0) cleanup(static_cast<Instance *>(u));
      },
      raw);
  if (!raw->backend.empty()) {
    raw->log(FLOTILLA_LOG_INFO, "WireGuard mesh: " + raw->backend + " backend, device " +
                                    raw->cfg.wg_interface + ", endpoint " + raw->endpoint +
                                    ", public key " + raw->key.public_b64() + " (generation " +
                                    std::to_string(raw->key.generation) + ")");
    grant_lease(raw);
    raw->rotate_sub = host->event_subscribe(
        host->host_ctx, "network.rotate_key.request",
        [](void *u, const char *topic, const char *) {
          if (std::strcmp(topic, "network.rotate_key.request") == 0)
            rotate_key(static_cast<Instance *>(u));
        },
        raw);
    raw->mesh_timer = host->timer_start(
        host->host_ctx, 1000, 1000, [](void *u) { mesh_tick(static_cast<Instance *>(u)); }, raw);
  }
  setup(raw);
  return FLOTILLA_OK;
}

void deinit(void *inst) {
  auto *self = static_cast<Instance *>(inst);
  // Nothing is torn down: containers keep their network while the daemon
  // is away. Only work in flight is waited for.
  self->stopping = true;
  if (self->retry_timer) self->host->timer_stop(self->host->host_ctx, self->retry_timer);
  if (self->cleanup_sub) self->host->event_unsubscribe(self->host->host_ctx, self->cleanup_sub);
  if (self->dns_sub) self->host->event_unsubscribe(self->host->host_ctx, self->dns_sub);
  // wireguard-go and the node's record stay: traffic keeps flowing while
  // the daemon restarts, and the record expires with its lease if it does
  // not come back.
  if (self->mesh_timer) self->host->timer_stop(self->host->host_ctx, self->mesh_timer);
  if (self->rotate_timer) self->host->timer_stop(self->host->host_ctx, self->rotate_timer);
  if (self->rotate_sub) self->host->event_unsubscribe(self->host->host_ctx, self->rotate_sub);
  if (self->watching) self->store->cancel(self->watch_id);
  self->watching = false;
  {
    std::unique_lock<std::mutex> g(self->mu);
    self->cv.wait(g, [&] { return self->in_flight == 0; });
  }
  // Store callbacks still to come find `stopping` and return; the last
  // one frees the instance.
  if (self->store && self->store->pending() > 0)
    self->store->on_idle = [self] { delete self; };
  else
    delete self;
}

const flotilla_network_v1 kNetwork = {
    sizeof(flotilla_network_v1),
    net_attach,
    net_detach,
    net_status,
};

const void *get_interface(void *, const char *id) {
  if (id && std::strcmp(id, FLOTILLA_NETWORK_INTERFACE_ID) == 0) return &kNetwork;
  return nullptr;
}

const char *const provides[] = {FLOTILLA_NETWORK_INTERFACE_ID, nullptr};
const char *const depends_on[] = {FLOTILLA_STORE_INTERFACE_ID, nullptr};

}  // namespace

extern "C" FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.net-overlay",
    "0.1.0",
    "container networking: IPAM, bridge and veths, NAT and port mappings (nftables)",
    provides,
    depends_on,
    init,
    deinit,
    get_interface,
#ifdef FLOTILLA_CHECK_ALL
    check_config,
#endif
};
