// discovery: flotilla.discovery/1. Includes only the ABI.
//
//  - registry: the allocations this node registered, their health checks,
//    and their endpoints under /flotilla/services/<svc>/<alloc>, written
//    under this plugin's own store lease (lease_ttl, kept alive while the
//    daemon runs), so a dead node's endpoints go when the lease expires;
//  - view: a store watch on /flotilla/services/ and /flotilla/vips/ keeps
//    the DNS zone (dns_zone.cc) current; no query reads the store;
//  - DNS: dns_server.cc on the daemon's loop, dns_forwarder.cc upstream.
#include <arpa/inet.h>
#include <flotilla/flotilla.h>
#include <ifaddrs.h>
#include <net/if.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "discovery_config.h"
#include "dns_answer.h"
#include "dns_forwarder.h"
#include "dns_server.h"
#include "dns_zone.h"
#include "health_check.h"
#include "vip_map.h"
#include "vip_sync.h"

namespace {

using json = nlohmann::json;
using namespace flotilla::discovery;

const std::string kServices = "/flotilla/services/";
const std::string kVips = "/flotilla/vips/";
// One key per allocated VIP address, so two services never get the same
// one: both keys are created in one compare-and-swap transaction.
const std::string kVipAddresses = "/flotilla/vip-addresses/";

struct Instance;

// Store callbacks can arrive after deinit (the store outlives us): each
// request carries this token, cleared in deinit.
using Life = std::shared_ptr<Instance *>;

// One service instance this node registered.
struct Local {
  Endpoint endpoint;
  std::vector<std::unique_ptr<CheckState>> states;
  std::vector<std::unique_ptr<HealthCheck>> checks;
  std::vector<CheckSpec> specs;
  std::string output;  // the last check's output
  // check_restart (README.md): after `restart_limit` failures in a row of
  // one check, not counting runs before `grace_until`, the task is
  // restarted ("discovery.check_restart" to the reconciler), once per
  // registration: the restarted task registers again.
  std::string task;
  uint32_t restart_limit = 0;  // 0: no check_restart
  std::chrono::steady_clock::time_point grace_until{};
  std::vector<uint32_t> restart_failures;  // per check
  bool restart_asked = false;
};

struct Instance {
  const flotilla_host *host = nullptr;
  Life life;
  DiscoveryConfig cfg;
  std::unique_ptr<Zone> zone;
  std::unique_ptr<Responder> responder;
  std::unique_ptr<Forwarder> forwarder;
  std::unique_ptr<DnsServer> server;
  // Containers' resolver: one server per bridge gateway address, bound
  // when net-overlay announces the bridge (README.md, "Containers'
  // resolver"); the addresses announced back.
  std::map<std::string, std::unique_ptr<DnsServer>> gateway_servers;
  std::vector<std::string> container_nameservers;
  flotilla_handle bridge_sub = 0;
  const flotilla_store_v1 *store = nullptr;
  void *store_self = nullptr;
  flotilla_store_watch_id watch_services = 0, watch_vips = 0;
  flotilla_handle relist_timer = 0, stats_timer = 0, keepalive_timer = 0;
  flotilla_lease_id lease = 0;
  bool granting = false;
  std::map<std::string, std::unique_ptr<Local>> locals;  // "<svc>/<alloc>"
  std::unique_ptr<VipSync> vips;                         // null: no vip_cidr
  std::set<std::string> vip_allocating;                  // services with a txn in flight
  std::set<uint32_t> vip_refused;                        // addresses a txn lost
  AnswerStats reported;
  std::string host_address;  // host_address, or the first non-loopback IPv4

  void log(flotilla_log_level level, const std::string &m) const {
    host->log(host->host_ctx, level, m.c_str());
  }
  flotilla_status error(flotilla_status st, const std::string &m) const {
    host->set_error(host->host_ctx, m.c_str());
    return st;
  }
};

flotilla_key_range prefix_range(const std::string &p) {
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = p.c_str();
  r.key_len = p.size();
  r.prefix = 1;
  return r;
}

// ---- the view: store → zone ---------------------------------------------

void view_changed(Instance &inst);
void view_changed(Instance &inst, const std::set<std::string> *names);

bool parse_endpoint(const std::string &key, const char *value, size_t len, Endpoint &e) {
  // /flotilla/services/<svc>/<alloc>
  std::string rest = key.substr(kServices.size());
  auto slash = rest.find('/');
  if (slash == std::string::npos) return false;
  e = Endpoint{};
  e.service = rest.substr(0, slash);
  e.alloc = rest.substr(slash + 1);
  try {
    json j = json::parse(value, value + len);
    e.node = j.value("node", "");
    if (j.contains("addresses") && j["addresses"].is_array())
      for (const auto &a : j["addresses"])
        if (a.is_string()) e.addresses.push_back(a.get<std::string>());
    e.port = static_cast<uint16_t>(j.value("port", 0));
    if (j.contains("tags") && j["tags"].is_array())
      for (const auto &t : j["tags"])
        if (t.is_string()) e.tags.push_back(t.get<std::string>());
    e.health = j.value("health", "");
    return true;
  } catch (const std::exception &) {
    return false;
  }
}

void apply_kv(Instance &inst, bool put, const flotilla_kv &kv) {
  std::string key(kv.key, kv.key_len);
  if (key.rfind(kServices, 0) == 0) {
    Endpoint e;
    if (put) {
      if (parse_endpoint(key, kv.value, kv.value_len, e))
        inst.zone->put_endpoint(e);
      else
        inst.log(FLOTILLA_LOG_WARN, "ignoring " + key + ": not an endpoint record");
    } else {
      std::string rest = key.substr(kServices.size());
      auto slash = rest.find('/');
      if (slash != std::string::npos)
        inst.zone->remove_endpoint(rest.substr(0, slash), rest.substr(slash + 1));
    }
  } else if (key.rfind(kVips, 0) == 0) {
    std::string svc = key.substr(kVips.size());
    if (!put) return inst.zone->remove_vip(svc);
    try {
      json j = json::parse(kv.value, kv.value + kv.value_len);
      inst.zone->put_vip(svc, j.value("address", ""));
    } catch (const std::exception &) {
      inst.log(FLOTILLA_LOG_WARN, "ignoring " + key + ": not a VIP record");
    }
  }
}

// ---- virtual IPs ----------------------------------------------------------

std::string ipv4_text(uint32_t host_order) {
  in_addr a{htonl(host_order)};
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a, buf, sizeof buf);
  return buf;
}

bool is_ipv4(const std::string &s) {
  in_addr a{};
  return inet_pton(AF_INET, s.c_str(), &a) == 1;
}

struct VipReq {
  Life life;
  std::string service;
  uint32_t address;
};

// A service an instance of this node belongs to, seen without a VIP: take
// the lowest free address of vip_cidr by compare-and-swap. The node that
// wins writes it; everyone learns it through the watch.
void allocate_vip(Instance &inst, const std::string &service) {
  if (inst.vip_allocating.count(service)) return;
  std::set<uint32_t> used(inst.vip_refused);
  for (const auto &s : inst.zone->services()) {
    in_addr a{};
    if (inet_pton(AF_INET, inst.zone->vip(s).c_str(), &a) == 1) used.insert(ntohl(a.s_addr));
  }
  uint32_t pick = 0;
  for (uint32_t i = 1; i + 1 < inst.cfg.vip_size; ++i) {  // not the network nor broadcast
    if (!used.count(inst.cfg.vip_base + i)) {
      pick = inst.cfg.vip_base + i;
      break;
    }
  }
  if (!pick) {
    inst.log(FLOTILLA_LOG_ERROR, "vip_cidr " + inst.cfg.vip_cidr + " is full: service " + service +
                                     " gets no virtual IP");
    return;
  }
  const std::string addr = ipv4_text(pick);
  const std::string k1 = kVips + service, k2 = kVipAddresses + addr;
  const std::string v1 = json{{"address", addr}}.dump(), v2 = json{{"service", service}}.dump();
  flotilla_compare cmp[2] = {};
  for (int i = 0; i < 2; ++i) {
    cmp[i].struct_size = sizeof(flotilla_compare);
    cmp[i].key = i ? k2.c_str() : k1.c_str();
    cmp[i].key_len = i ? k2.size() : k1.size();
    cmp[i].target = FLOTILLA_CMP_VERSION;
    cmp[i].op = FLOTILLA_CMP_EQUAL;
    cmp[i].number = 0;
  }
  flotilla_op ops[2] = {};
  for (int i = 0; i < 2; ++i) {
    ops[i].struct_size = sizeof(flotilla_op);
    ops[i].type = FLOTILLA_OP_PUT;
    ops[i].key = i ? k2.c_str() : k1.c_str();
    ops[i].key_len = i ? k2.size() : k1.size();
    ops[i].value = i ? v2.c_str() : v1.c_str();
    ops[i].value_len = i ? v2.size() : v1.size();
  }
  auto *req = new VipReq{inst.life, service, pick};
  auto cb = [](void *user, flotilla_status st, int succeeded, int64_t) {
    std::unique_ptr<VipReq> r(static_cast<VipReq *>(user));
    Instance *i = *r->life;
    if (!i) return;
    i->vip_allocating.erase(r->service);
    if (st == FLOTILLA_OK && succeeded) {
      i->log(FLOTILLA_LOG_INFO,
             "service " + r->service + " has virtual IP " + ipv4_text(r->address));
      return;
    }
    // Lost the race for the address (or the service got one meanwhile):
    // the watch brings the winner; try another address if still needed.
    i->log(FLOTILLA_LOG_DEBUG, "virtual IP " + ipv4_text(r->address) + " for " + r->service +
                                   (st == FLOTILLA_OK ? ": taken meanwhile" : ": store error"));
    i->vip_refused.insert(r->address);
  };
  inst.vip_allocating.insert(service);
  if (inst.store->txn(inst.store_self, cmp, 2, ops, 2, nullptr, 0, cb, req) != FLOTILLA_OK) {
    inst.log(FLOTILLA_LOG_WARN,
             "virtual IP for " + service + ": the store refused the transaction");
    inst.vip_allocating.erase(service);
    delete req;
  }
}

// What the kernel's VIP table should hold for one service; nullopt: none.
// A service of this node seen without a VIP gets one allocated.
std::optional<VipService> desired_vip(Instance &inst, const std::string &name,
                                      const std::set<std::string> &mine) {
  const auto *eps = inst.zone->endpoints(name);
  const std::string vip = inst.zone->vip(name);
  if (vip.empty()) {
    if (eps && !eps->empty() && mine.count(name)) allocate_vip(inst, name);
    return std::nullopt;
  }
  if (!is_ipv4(vip) || !eps || eps->empty()) return std::nullopt;
  VipService s;
  s.name = name;
  s.vip = vip;
  for (const auto &[alloc, e] : *eps) {
    if (!s.port) s.port = e.port;
    if (!e.passing() || !e.port) continue;
    for (const auto &a : e.addresses)
      if (is_ipv4(a)) {
        s.backends.push_back({a, e.port});
        break;
      }
  }
  if (!s.port) return std::nullopt;
  std::sort(s.backends.begin(), s.backends.end());
  s.backends.erase(std::unique(s.backends.begin(), s.backends.end()), s.backends.end());
  return s;
}

// After a change of the view: VIPs to allocate, and the kernel map. names:
// the services the change touched; null: every service (a full list).
void view_changed(Instance &inst, const std::set<std::string> *names) {
  if (!inst.vips) return;
  std::set<std::string> mine;
  for (const auto &[key, l] : inst.locals) mine.insert(l->endpoint.service);
  if (names) {
    for (const auto &name : *names) inst.vips->want(name, desired_vip(inst, name, mine));
    return;
  }
  std::map<std::string, VipService> want;
  for (const auto &name : inst.zone->services())
    if (auto s = desired_vip(inst, name, mine)) want.emplace(name, std::move(*s));
  inst.vips->want_all(std::move(want));
}

void view_changed(Instance &inst) {
  view_changed(inst, nullptr);
}

void start_list(Instance &inst);

void schedule_relist(Instance &inst, const char *why) {
  inst.log(FLOTILLA_LOG_WARN, std::string("service watch ended (") + why + "); listing again");
  if (inst.watch_services) inst.store->watch_cancel(inst.store_self, inst.watch_services);
  if (inst.watch_vips) inst.store->watch_cancel(inst.store_self, inst.watch_vips);
  inst.watch_services = inst.watch_vips = 0;
  if (inst.relist_timer) return;
  inst.relist_timer = inst.host->timer_start(
      inst.host->host_ctx, 1000, 0,
      [](void *user) {
        auto *i = static_cast<Instance *>(user);
        i->relist_timer = 0;
        start_list(*i);
      },
      &inst);
}

void on_watch(void *user, flotilla_status status, const flotilla_watch_event *events, size_t n,
              int64_t) {
  auto *life = static_cast<Life *>(user);
  Instance *inst = **life;
  if (!inst) return;
  if (status != FLOTILLA_OK) {
    if (status != FLOTILLA_E_CANCELLED) schedule_relist(*inst, "store error");
    return;
  }
  std::set<std::string> touched;  // the services these events name
  for (size_t i = 0; i < n; ++i) {
    const flotilla_kv &kv = events[i].kv;
    apply_kv(*inst, events[i].type == FLOTILLA_EVENT_PUT, kv);
    std::string_view key(kv.key, kv.key_len);
    for (const std::string *prefix : {&kServices, &kVips})
      if (key.substr(0, prefix->size()) == *prefix) {
        std::string_view rest = key.substr(prefix->size());
        touched.emplace(rest.substr(0, rest.find('/')));
      }
  }
  inst->zone->commit();
  view_changed(*inst, &touched);
}

struct ListReq {
  Life life;
  int step = 0;  // 0: services, 1: vips
  int64_t revision = 0;
};

void on_list(void *user, flotilla_status status, const flotilla_kv *kvs, size_t n, int64_t revision,
             int) {
  std::unique_ptr<ListReq> req(static_cast<ListReq *>(user));
  Instance *inst = *req->life;
  if (!inst) return;
  if (status != FLOTILLA_OK) return schedule_relist(*inst, "list failed");
  if (req->step == 0) {
    inst->zone->clear();
    req->revision = revision;
  }
  for (size_t i = 0; i < n; ++i) apply_kv(*inst, true, kvs[i]);
  if (req->step == 0) {
    req->step = 1;
    auto r = prefix_range(kVips);
    const int64_t rev = req->revision;
    ListReq *raw = req.release();
    if (inst->store->range(inst->store_self, &r, rev, 0, on_list, raw) != FLOTILLA_OK) {
      delete raw;
      schedule_relist(*inst, "list refused");
    }
    return;
  }
  inst->zone->commit();
  view_changed(*inst);
  // Watches from the revision the lists saw: nothing is missed between.
  auto rs = prefix_range(kServices);
  auto rv = prefix_range(kVips);
  inst->store->watch(inst->store_self, &rs, req->revision + 1, on_watch, &inst->life,
                     &inst->watch_services);
  inst->store->watch(inst->store_self, &rv, req->revision + 1, on_watch, &inst->life,
                     &inst->watch_vips);
  inst->log(FLOTILLA_LOG_DEBUG, "service view at revision " + std::to_string(req->revision) + ": " +
                                    std::to_string(inst->zone->services().size()) + " services");
}

void start_list(Instance &inst) {
  auto r = prefix_range(kServices);
  auto *req = new ListReq{inst.life};
  if (inst.store->range(inst.store_self, &r, 0, 0, on_list, req) != FLOTILLA_OK) {
    delete req;
    schedule_relist(inst, "list refused");
  }
}

// ---- the registry: this node's instances → store -------------------------

struct WriteReq {
  Life life;
  std::string key;
};

void publish(Instance &inst, const std::string &key, const Local &l) {
  if (!inst.lease) return;  // published once the lease is granted
  json j = {{"service", l.endpoint.service}, {"alloc", l.endpoint.alloc},
            {"node", l.endpoint.node},       {"addresses", l.endpoint.addresses},
            {"port", l.endpoint.port},       {"tags", l.endpoint.tags},
            {"health", l.endpoint.health},   {"output", l.output}};
  std::string k = kServices + key;
  std::string v = j.dump();
  auto *req = new WriteReq{inst.life, k};
  auto cb = [](void *user, flotilla_status st, int64_t) {
    std::unique_ptr<WriteReq> r(static_cast<WriteReq *>(user));
    Instance *i = *r->life;
    if (i && st != FLOTILLA_OK) i->log(FLOTILLA_LOG_WARN, "could not write " + r->key);
  };
  if (inst.store->put(inst.store_self, k.data(), k.size(), v.data(), v.size(), inst.lease, cb,
                      req) != FLOTILLA_OK)
    delete req;
}

void grant_lease(Instance &inst);

void on_lease(void *user, flotilla_status status, flotilla_lease_id lease, int64_t) {
  std::unique_ptr<Life> life(static_cast<Life *>(user));
  Instance *inst = **life;
  if (!inst) return;
  if (status != FLOTILLA_OK) {
    inst->lease = 0;
    return grant_lease(*inst);  // lost: a new lease, and everything again
  }
  if (inst->granting) {
    inst->granting = false;
    inst->lease = lease;
    for (auto &[key, l] : inst->locals) publish(*inst, key, *l);
  }
}

void grant_lease(Instance &inst) {
  if (inst.granting) return;
  inst.granting = true;
  auto *life = new Life(inst.life);
  if (inst.store->lease_grant(inst.store_self, inst.cfg.lease_ttl, on_lease, life) != FLOTILLA_OK) {
    delete life;
    inst.granting = false;
  }
}

void keepalive(void *user) {
  auto *inst = static_cast<Instance *>(user);
  if (!inst->lease) return grant_lease(*inst);
  auto *life = new Life(inst->life);
  if (inst->store->lease_keepalive(inst->store_self, inst->lease, on_lease, life) != FLOTILLA_OK)
    delete life;
}

void on_check_result(Instance &inst, const std::string &key, size_t index, bool ok,
                     const std::string &output) {
  auto it = inst.locals.find(key);
  if (it == inst.locals.end()) return;
  Local &l = *it->second;
  l.states[index]->record(ok);
  Health overall = Health::passing;
  for (const auto &s : l.states) {
    if (s->health() == Health::critical)
      overall = Health::critical;
    else if (s->health() == Health::starting && overall != Health::critical)
      overall = Health::starting;
  }
  if (l.restart_limit && !l.restart_asked) {
    uint32_t &n = l.restart_failures[index];
    n = ok || std::chrono::steady_clock::now() < l.grace_until ? 0 : n + 1;
    if (n >= l.restart_limit) {
      l.restart_asked = true;
      const std::string reason = "service " + l.endpoint.service + " check " +
                                 std::to_string(index) + " (" + l.specs[index].type + ") failed " +
                                 std::to_string(n) + " times in a row: " + output;
      inst.log(FLOTILLA_LOG_WARN,
               "restarting task " + l.task + " of " + l.endpoint.alloc + ": " + reason);
      json ev = {{"alloc", l.endpoint.alloc},
                 {"task", l.task},
                 {"service", l.endpoint.service},
                 {"check", index},
                 {"failures", n},
                 {"reason", reason}};
      inst.host->event_publish(inst.host->host_ctx, "discovery.check_restart", ev.dump().c_str());
    }
  }
  const std::string name = health_name(overall);
  const bool changed = name != l.endpoint.health;
  if (!ok || changed) l.output = output;
  if (changed) {
    inst.log(FLOTILLA_LOG_INFO, "service " + key + " is " + name + " (" + output + ")");
    l.endpoint.health = name;
    publish(inst, key, l);
  }
}

void remove_local(Instance &inst, const std::string &key) {
  inst.locals.erase(key);
  std::string k = kServices + key;
  flotilla_key_range r{};
  r.struct_size = sizeof r;
  r.key = k.c_str();
  r.key_len = k.size();
  auto *req = new WriteReq{inst.life, k};
  auto cb = [](void *user, flotilla_status, int64_t, int64_t) {
    delete static_cast<WriteReq *>(user);
  };
  if (inst.store->delete_range(inst.store_self, &r, cb, req) != FLOTILLA_OK) delete req;
}

struct Deferred {
  Life life;
  flotilla_done_cb cb;
  flotilla_discovery_lookup_cb lookup_cb;
  void *user;
  flotilla_status status;
  std::string message, payload;
};

// Callbacks of this interface run after the call returns.
void defer(Instance &inst, Deferred *d) {
  inst.host->timer_start(
      inst.host->host_ctx, 0, 0,
      [](void *user) {
        std::unique_ptr<Deferred> d(static_cast<Deferred *>(user));
        Instance *i = *d->life;
        if (!i) return;
        if (d->status != FLOTILLA_OK) i->host->set_error(i->host->host_ctx, d->message.c_str());
        if (d->cb) d->cb(d->user, d->status);
        if (d->lookup_cb) d->lookup_cb(d->user, d->status, d->payload.c_str());
      },
      d);
}

flotilla_status register_alloc(void *self, const char *alloc_id, const char *services_json,
                               flotilla_done_cb cb, void *user) {
  auto *inst = static_cast<Instance *>(self);
  try {
    if (!alloc_id || !*alloc_id)
      return inst->error(FLOTILLA_E_INVALID, "register_alloc: no alloc id");
    json doc = json::parse(services_json ? services_json : "");
    if (!doc.is_object()) return inst->error(FLOTILLA_E_INVALID, "register_alloc: not an object");
    std::vector<std::string> addresses;
    if (doc.contains("addresses") && doc["addresses"].is_array())
      for (const auto &a : doc["addresses"])
        if (a.is_string()) addresses.push_back(a.get<std::string>());
    // A host-network task is reached at the node's own address.
    if (addresses.empty() && doc.value("network", "") == "host" && !inst->host_address.empty())
      addresses.push_back(inst->host_address);
    const json services = doc.value("services", json::array());
    if (!services.is_array())
      return inst->error(FLOTILLA_E_INVALID, "register_alloc: services must be an array");
    // Check everything before changing anything.
    std::vector<std::unique_ptr<Local>> made;
    ExecRuntime exec_rt;  // looked up at the first exec check
    for (size_t i = 0; i < services.size(); ++i) {
      const json &s = services[i];
      const std::string at =
          "register_alloc " + std::string(alloc_id) + ": services[" + std::to_string(i) + "]";
      auto l = std::make_unique<Local>();
      l->endpoint.service = s.value("name", "");
      if (!is_dns_label(l->endpoint.service))
        return inst->error(FLOTILLA_E_INVALID,
                           at + ".name: \"" + l->endpoint.service + "\" is not a DNS label");
      l->endpoint.alloc = alloc_id;
      l->endpoint.node = inst->host->node_name ? inst->host->node_name : "";
      l->endpoint.addresses = addresses;
      l->endpoint.port = static_cast<uint16_t>(s.value("port", 0));
      if (s.contains("tags") && s["tags"].is_array())
        for (const auto &t : s["tags"]) l->endpoint.tags.push_back(t.get<std::string>());
      const json checks = s.value("checks", json::array());
      for (size_t c = 0; c < checks.size(); ++c) {
        CheckSpec spec;
        std::string e = parse_check(checks[c], spec);
        if (!e.empty())
          return inst->error(FLOTILLA_E_INVALID, at + ".checks[" + std::to_string(c) + "]." + e);
        spec.address = addresses.empty() ? "" : addresses[0];
        spec.tls_ca_file = inst->cfg.check_ca_file;
        if (spec.type == "exec") {
          spec.container = s.value("container", "");
          if (spec.container.empty())
            return inst->error(FLOTILLA_E_INVALID,
                               at + ".container: an exec check needs the task's container id");
          if (!exec_rt.rt) {
            std::string why = find_exec_runtime(inst->host, exec_rt);
            if (!why.empty())
              return inst->error(FLOTILLA_E_UNSUPPORTED,
                                 at + ".checks[" + std::to_string(c) + "]: " + why);
          }
        }
        if (checks[c].contains("port"))
          spec.port = static_cast<uint16_t>(checks[c].value("port", 0));
        else
          spec.port = l->endpoint.port;
        l->specs.push_back(spec);
      }
      l->task = s.value("task", "");
      if (s.contains("check_restart")) {
        const json &cr = s["check_restart"];
        if (!cr.is_object() || !cr.value("limit", json()).is_number_unsigned() ||
            cr["limit"].get<uint64_t>() < 1 || cr["limit"].get<uint64_t>() > 100)
          return inst->error(FLOTILLA_E_INVALID,
                             at + ".check_restart.limit: must be an integer from 1 to 100");
        if (cr.contains("grace_ms") && !cr["grace_ms"].is_number_unsigned())
          return inst->error(FLOTILLA_E_INVALID,
                             at + ".check_restart.grace_ms: must be a whole number of ms");
        if (l->task.empty())
          return inst->error(FLOTILLA_E_INVALID,
                             at + ".task: check_restart needs the task's name to restart it");
        l->restart_limit = cr["limit"].get<uint32_t>();
        l->grace_until = std::chrono::steady_clock::now() +
                         std::chrono::milliseconds(cr.value("grace_ms", uint64_t{1000}));
        l->restart_failures.assign(l->specs.size(), 0);
      }
      // No checks: passing once registered (as Consul and Nomad).
      l->endpoint.health = l->specs.empty() ? "passing" : "starting";
      made.push_back(std::move(l));
    }
    std::set<std::string> touched;
    for (auto &l : made) {
      touched.insert(l->endpoint.service);
      const std::string key = l->endpoint.service + "/" + l->endpoint.alloc;
      inst->locals.erase(key);  // a registration again replaces the old one
      Local &ref = *l;
      inst->locals[key] = std::move(l);
      for (size_t c = 0; c < ref.specs.size(); ++c) {
        ref.states.push_back(std::make_unique<CheckState>(ref.specs[c]));
        ref.checks.push_back(std::make_unique<HealthCheck>(
            inst->host, ref.specs[c], [inst, key, c](bool ok, const std::string &out) {
              on_check_result(*inst, key, c, ok, out);
            },
            exec_rt));
      }
      publish(*inst, key, ref);
      for (auto &c : ref.checks) c->start();
    }
    view_changed(*inst, &touched);
    defer(*inst, new Deferred{inst->life, cb, nullptr, user, FLOTILLA_OK, "", ""});
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    return inst->error(FLOTILLA_E_INVALID, std::string("register_alloc: ") + e.what());
  }
}

flotilla_status deregister_alloc(void *self, const char *alloc_id, flotilla_done_cb cb,
                                 void *user) {
  auto *inst = static_cast<Instance *>(self);
  try {
    std::vector<std::string> keys;
    for (const auto &[key, l] : inst->locals)
      if (l->endpoint.alloc == alloc_id) keys.push_back(key);
    for (const auto &k : keys) remove_local(*inst, k);
    defer(*inst, new Deferred{inst->life, cb, nullptr, user, FLOTILLA_OK, "", ""});
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  }
}

flotilla_status lookup(void *self, const char *service, flotilla_discovery_lookup_cb cb,
                       void *user) {
  auto *inst = static_cast<Instance *>(self);
  try {
    json out = json::array();
    if (const auto *eps = inst->zone->endpoints(service ? service : "")) {
      for (const auto &[alloc, e] : *eps) {
        if (!e.passing()) continue;
        out.push_back({{"alloc", alloc},
                       {"node", e.node},
                       {"addresses", e.addresses},
                       {"port", e.port},
                       {"tags", e.tags}});
      }
    }
    defer(*inst, new Deferred{inst->life, nullptr, cb, user, FLOTILLA_OK, "", out.dump()});
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  }
}

const flotilla_discovery_v1 vtable = {sizeof(flotilla_discovery_v1), register_alloc,
                                      deregister_alloc, lookup};

// ---- metrics ----------------------------------------------------------------

void report_stats(void *user) {
  auto *inst = static_cast<Instance *>(user);
  const AnswerStats &s = inst->responder->stats();
  auto add = [&](const char *name, uint64_t now, uint64_t &before) {
    if (now != before)
      inst->host->metric_counter_add(inst->host->host_ctx, name, static_cast<double>(now - before));
    before = now;
  };
  add("discovery_dns_queries_total", s.queries, inst->reported.queries);
  add("discovery_dns_nxdomain_total", s.nxdomain, inst->reported.nxdomain);
  add("discovery_dns_nodata_total", s.nodata, inst->reported.nodata);
  add("discovery_dns_forwarded_total", s.forwarded, inst->reported.forwarded);
  add("discovery_dns_formerr_total", s.formerr, inst->reported.formerr);
  add("discovery_dns_truncated_total", s.truncated, inst->reported.truncated);
  add("discovery_dns_answer_limited_total", s.limited, inst->reported.limited);
  add("discovery_dns_cache_hits_total", s.cached, inst->reported.cached);
  inst->host->metric_gauge_set(inst->host->host_ctx, "discovery_dns_forwards_inflight",
                               static_cast<double>(inst->forwarder->inflight()));
  inst->host->metric_gauge_set(inst->host->host_ctx, "discovery_services",
                               static_cast<double>(inst->zone->services().size()));
}

// ---- the containers' resolver ------------------------------------------------

// "network.bridge.ready" {"gateways": [...]}: answer on each gateway's
// port 53 (unless `listen` already does), then tell net-overlay
// ("discovery.dns.ready") to write them, with ndots:1, into the
// resolv.conf of the containers it attaches from now on. A gateway that
// cannot be bound is logged and left out; with none, containers keep the
// resolvers net-overlay gives them without us.
void on_bridge_ready(void *user, const char *topic, const char *payload) {
  auto *inst = static_cast<Instance *>(user);
  if (std::strcmp(topic, "network.bridge.ready") != 0) return;
  json j = json::parse(payload ? payload : "", nullptr, false);
  if (!j.is_object() || !j.contains("gateways") || !j["gateways"].is_array()) {
    inst->log(FLOTILLA_LOG_WARN, "network.bridge.ready without gateways; ignored");
    return;
  }
  std::vector<std::string> served;
  for (const auto &g : j["gateways"]) {
    if (!g.is_string()) continue;
    const std::string ip = g.get<std::string>();
    SocketAddress a;
    if (!parse_socket_address(ip.find(':') != std::string::npos ? "[" + ip + "]" : ip, 53, a)) {
      inst->log(FLOTILLA_LOG_WARN, "network.bridge.ready: \"" + ip + "\" is not an address");
      continue;
    }
    if (listen_covers(inst->cfg.listen_addrs, a) || inst->gateway_servers.count(ip)) {
      served.push_back(ip);
      continue;
    }
    DnsServer::Settings ss;
    ss.listen = {a};
    ss.tcp_idle_timeout_ms = inst->cfg.tcp_idle_timeout_ms;
    ss.tcp_max_connections = inst->cfg.tcp_max_connections;
    auto server = std::make_unique<DnsServer>(inst->host, *inst->responder, *inst->forwarder, ss);
    std::string err;
    if (!server->start(err)) {
      inst->log(FLOTILLA_LOG_ERROR, "cannot answer containers on the bridge gateway: " + err +
                                        "; they keep net-overlay's other resolvers");
      continue;
    }
    inst->log(FLOTILLA_LOG_INFO, "DNS for ." + inst->cfg.domain + " also on " + a.text() +
                                     " (the bridge gateway, for containers)");
    inst->gateway_servers[ip] = std::move(server);
    served.push_back(ip);
  }
  if (served.empty()) return;
  inst->container_nameservers = served;
  json ev = {{"nameservers", served}, {"options", {"ndots:1"}}, {"domain", inst->cfg.domain}};
  inst->host->event_publish(inst->host->host_ctx, "discovery.dns.ready", ev.dump().c_str());
}

// ---- entry -------------------------------------------------------------------

std::string first_host_ipv4() {
  ifaddrs *list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string out;
  for (ifaddrs *i = list; i && out.empty(); i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK))
      continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in *>(i->ifa_addr)->sin_addr, buf, sizeof buf);
    out = buf;
  }
  freeifaddrs(list);
  return out;
}

void deinit(void *instance);

// ABI 1.2: every problem of [plugin.discovery] at once, nothing bound.
flotilla_status check_config(const flotilla_host *host, uint32_t) {
  try {
    DiscoveryConfig cfg;
    auto problems = parse_config(json::parse(host->config_json(host->host_ctx)), cfg);
    for (const auto &p : problems)
      host->config_error(host->host_ctx, p.key.c_str(), p.message.c_str());
    return problems.empty() ? FLOTILLA_OK : FLOTILLA_E_INVALID;
  } catch (const std::exception &e) {
    host->config_error(host->host_ctx, "", e.what());
    return FLOTILLA_E_INVALID;
  }
}

flotilla_status init(const flotilla_host *host, void **instance_out) {
  try {
    auto inst = std::make_unique<Instance>();
    inst->host = host;
    inst->life = std::make_shared<Instance *>(inst.get());
    json table = json::parse(host->config_json(host->host_ctx));
    auto problems = parse_config(table, inst->cfg);
    for (const auto &p : problems)
      host->config_error(host->host_ctx, p.key.c_str(), p.message.c_str());
    if (!problems.empty()) return FLOTILLA_E_INVALID;

    inst->store = static_cast<const flotilla_store_v1 *>(
        host->get_interface(host->host_ctx, FLOTILLA_STORE_INTERFACE_ID, &inst->store_self));
    if (!inst->store) return inst->error(FLOTILLA_E_UNAVAILABLE, "discovery: no store is loaded");

    Zone::Settings zs;
    zs.domain = inst->cfg.domain;
    zs.ttl = inst->cfg.ttl;
    zs.negative_ttl = inst->cfg.negative_ttl;
    inst->zone = std::make_unique<Zone>(zs);
    AnswerSettings as;
    as.edns_udp_size = inst->cfg.edns_udp_size;
    as.answer_limit = inst->cfg.answer_limit;
    as.forward = inst->cfg.forward;
    inst->responder = std::make_unique<Responder>(*inst->zone, as);

    Forwarder::Settings fs;
    fs.timeout_ms = inst->cfg.forward_timeout_ms;
    fs.max_inflight = inst->cfg.forward_max_inflight;
    if (inst->cfg.forward) {
      fs.upstreams = inst->cfg.upstream_addrs;
      if (inst->cfg.upstreams.empty()) {
        std::string err;
        fs.upstreams = read_resolv_conf(inst->cfg.resolv_conf, inst->cfg.listen_addrs, err);
        if (!err.empty())
          inst->log(FLOTILLA_LOG_WARN, "plugin.discovery.resolv_conf: " + err +
                                           "; names outside ." + inst->cfg.domain +
                                           " get SERVFAIL");
      }
      if (fs.upstreams.empty())
        inst->log(FLOTILLA_LOG_WARN,
                  "no upstream resolvers: names outside ." + inst->cfg.domain + " get SERVFAIL");
    }
    inst->forwarder = std::make_unique<Forwarder>(host, fs);

    DnsServer::Settings ss;
    ss.listen = inst->cfg.listen_addrs;
    ss.tcp_idle_timeout_ms = inst->cfg.tcp_idle_timeout_ms;
    ss.tcp_max_connections = inst->cfg.tcp_max_connections;
    inst->server = std::make_unique<DnsServer>(host, *inst->responder, *inst->forwarder, ss);
    std::string err;
    if (!inst->server->start(err)) {
      host->config_error(host->host_ctx, "listen", err.c_str());
      return FLOTILLA_E_INVALID;
    }
    std::string where;
    for (const auto &a : inst->server->bound()) where += (where.empty() ? "" : ", ") + a.text();
    std::string ups;
    for (const auto &a : fs.upstreams) ups += (ups.empty() ? "" : ", ") + a.text();
    inst->log(FLOTILLA_LOG_INFO, "DNS for ." + inst->cfg.domain + " on " + where +
                                     (ups.empty() ? "" : "; forwarding to " + ups));

    if (!inst->cfg.vip_cidr.empty()) {
      // The table is set up on the work queue, not here on the loop; a
      // refusal is logged (and tried again with the next change).
      inst->vips =
          std::make_unique<VipSync>(host, inst->cfg.vip_table, inst->cfg.vip_masquerade_mark);
      inst->vips->start();
      inst->log(FLOTILLA_LOG_INFO,
                "virtual IPs from " + inst->cfg.vip_cidr + " in table ip " + inst->cfg.vip_table);
    }
    inst->host_address =
        inst->cfg.host_address.empty() ? first_host_ipv4() : inst->cfg.host_address;
    if (inst->cfg.container_dns)
      inst->bridge_sub =
          host->event_subscribe(host->host_ctx, "network.bridge.", on_bridge_ready, inst.get());
    start_list(*inst);
    grant_lease(*inst);
    const uint64_t ka = std::max<uint64_t>(1000, inst->cfg.lease_ttl * 1000 / 3);
    inst->keepalive_timer = host->timer_start(host->host_ctx, ka, ka, keepalive, inst.get());
    inst->stats_timer = host->timer_start(host->host_ctx, 1000, 1000, report_stats, inst.get());
    *instance_out = inst.release();
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    host->set_error(host->host_ctx, (std::string("discovery: ") + e.what()).c_str());
    return FLOTILLA_E_INVALID;
  }
}

void deinit(void *instance) {
  std::unique_ptr<Instance> inst(static_cast<Instance *>(instance));
  *inst->life = nullptr;
  const flotilla_host *h = inst->host;
  for (flotilla_handle t : {inst->relist_timer, inst->stats_timer, inst->keepalive_timer})
    if (t) h->timer_stop(h->host_ctx, t);
  if (inst->watch_services) inst->store->watch_cancel(inst->store_self, inst->watch_services);
  if (inst->watch_vips) inst->store->watch_cancel(inst->store_self, inst->watch_vips);
  inst->locals.clear();
  if (inst->bridge_sub) h->event_unsubscribe(h->host_ctx, inst->bridge_sub);
  // The endpoints stay until the lease expires: a restarted daemon finds
  // its containers running and registers them again.
  inst->gateway_servers.clear();
  inst->server.reset();
  inst->forwarder.reset();
  // The VIP table stays: traffic through it keeps flowing while the daemon
  // restarts, and the next start replaces it.
  inst->vips.reset();
}

const void *get_interface(void *instance, const char *id) {
  (void)instance;
  if (std::strcmp(id, FLOTILLA_DISCOVERY_INTERFACE_ID) == 0) return &vtable;
  return nullptr;
}

const char *const provides[] = {FLOTILLA_DISCOVERY_INTERFACE_ID, nullptr};
const char *const depends_on[] = {FLOTILLA_STORE_INTERFACE_ID, nullptr};

}  // namespace

extern "C" FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.discovery",
    "0.1.0",
    "service registry, health checks, DNS (libknot) with upstream forwarding",
    provides,
    depends_on,
    init,
    deinit,
    get_interface,
    check_config,
};
