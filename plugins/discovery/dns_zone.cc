#include "dns_zone.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace flotilla::discovery {

namespace {

std::string key_of(const uint8_t *wire) {
  return std::string(reinterpret_cast<const char *>(wire), knot_dname_size(wire));
}

std::string key_of(const std::vector<uint8_t> &wire) {
  return key_of(wire.data());
}

void put_u16(std::vector<uint8_t> &out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v & 0xff));
}

void put_u32(std::vector<uint8_t> &out, uint32_t v) {
  put_u16(out, static_cast<uint16_t>(v >> 16));
  put_u16(out, static_cast<uint16_t>(v & 0xffff));
}

// Adds an address to the A or AAAA set it belongs in; false when the text
// is no address.
bool add_address(const std::string &text, PreparedSet &a, PreparedSet &aaaa) {
  uint8_t buf[16];
  if (inet_pton(AF_INET, text.c_str(), buf) == 1) {
    a.add(buf, 4);
    return true;
  }
  if (inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    aaaa.add(buf, 16);
    return true;
  }
  return false;
}

}  // namespace

// ---- names ---------------------------------------------------------------

std::vector<uint8_t> dname_from_text(const std::string &text) {
  uint8_t buf[KNOT_DNAME_MAXLEN];
  if (!knot_dname_from_str(buf, text.c_str(), sizeof buf))
    throw std::invalid_argument("\"" + text + "\" is not a domain name");
  knot_dname_to_lower(buf);
  return std::vector<uint8_t>(buf, buf + knot_dname_size(buf));
}

std::string dname_to_text(const uint8_t *wire) {
  char buf[KNOT_DNAME_TXT_MAXLEN + 1];
  if (!knot_dname_to_str(buf, wire, sizeof buf)) return "";
  return buf;
}

std::string reverse_name(const std::string &address) {
  uint8_t buf[16];
  if (inet_pton(AF_INET, address.c_str(), buf) == 1) {
    return std::to_string(buf[3]) + "." + std::to_string(buf[2]) + "." + std::to_string(buf[1]) +
           "." + std::to_string(buf[0]) + ".in-addr.arpa.";
  }
  if (inet_pton(AF_INET6, address.c_str(), buf) == 1) {
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (int i = 15; i >= 0; --i) {
      out += hex[buf[i] & 0xf];
      out += '.';
      out += hex[buf[i] >> 4];
      out += '.';
    }
    return out + "ip6.arpa.";
  }
  return "";
}

bool is_dns_label(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

// ---- PreparedSet ---------------------------------------------------------

void PreparedSet::add(const uint8_t *rdata, uint16_t len) {
  std::vector<uint8_t> item(rdata, rdata + len);
  // A record set holds each RDATA once (RFC 2181, 5).
  if (std::find(items_.begin(), items_.end(), item) != items_.end()) return;
  items_.push_back(std::move(item));
}

void PreparedSet::seal() {
  if (items_.size() > 0xffff) items_.resize(0xffff);
  count_ = static_cast<uint16_t>(items_.size());
  buf_.clear();
  offs_.clear();
  for (int round = 0; round < 2; ++round) {
    for (const auto &item : items_) {
      offs_.push_back(static_cast<uint32_t>(buf_.size()));
      const uint16_t len = static_cast<uint16_t>(item.size());
      const size_t at = buf_.size();
      buf_.resize(at + knot_rdata_size(len));
      knot_rdata_init(reinterpret_cast<knot_rdata_t *>(buf_.data() + at), len, item.data());
    }
  }
  offs_.push_back(static_cast<uint32_t>(buf_.size()));
  items_.clear();
  items_.shrink_to_fit();
}

knot_rrset_t PreparedSet::view(const uint8_t *owner, uint16_t type, uint32_t ttl, uint16_t start,
                               uint16_t n) const {
  knot_rrset_t rr;
  knot_rrset_init(&rr, const_cast<uint8_t *>(owner), type, KNOT_CLASS_IN, ttl);
  if (count_ == 0 || n == 0) return rr;
  if (n > count_) n = count_;
  start = static_cast<uint16_t>(start % count_);
  rr.rrs.count = n;
  rr.rrs.size = offs_[start + n] - offs_[start];
  rr.rrs.rdata =
      reinterpret_cast<knot_rdata_t *>(const_cast<uint8_t *>(buf_.data()) + offs_[start]);
  return rr;
}

// ---- Zone ----------------------------------------------------------------

Zone::Zone(Settings settings) : settings_(std::move(settings)) {
  std::string d = settings_.domain;
  if (d.empty() || d.back() != '.') d += '.';
  apex_ = dname_from_text(d);

  // SOA: mname, rname, serial, refresh, retry, expire, minimum. The minimum
  // is the negative TTL (RFC 2308); nothing transfers this zone, so the
  // timers are nominal.
  std::vector<uint8_t> rdata;
  auto mname = name("ns");
  auto rname = name("hostmaster");
  rdata.insert(rdata.end(), mname.begin(), mname.end());
  rdata.insert(rdata.end(), rname.begin(), rname.end());
  put_u32(rdata, 1);
  put_u32(rdata, 3600);
  put_u32(rdata, 600);
  put_u32(rdata, 86400);
  put_u32(rdata, settings_.negative_ttl);
  soa_.add(rdata.data(), static_cast<uint16_t>(rdata.size()));
  soa_.seal();
  add_structure();
}

std::vector<uint8_t> Zone::name(const std::string &text) const {
  return dname_from_text(text + "." + dname_to_text(apex_.data()));
}

void Zone::add_structure() {
  // The apex and the names between it and every record are empty
  // non-terminals: they exist (NODATA, not NXDOMAIN).
  std::vector<std::string> unused;
  node_for(apex_, unused).apex = true;
  for (const char *n : {"service", "_tcp.service", "alloc", "vip"}) {
    ZoneNode &node = node_for(name(n), unused);
    (void)node;
  }
}

ZoneNode &Zone::node_for(const std::vector<uint8_t> &owner, std::vector<std::string> &owned) {
  std::string key = key_of(owner);
  auto [it, inserted] = nodes_.try_emplace(key);
  if (inserted) {
    it->second.owner = owner;
    owned.push_back(key);
  }
  return it->second;
}

void Zone::drop(std::vector<std::string> &owned) {
  for (const auto &k : owned) nodes_.erase(k);
  owned.clear();
}

void Zone::put_endpoint(const Endpoint &e) {
  ServiceState &s = services_[e.service];
  auto old = s.endpoints.find(e.alloc);
  if (old != s.endpoints.end() && old->second.addresses != e.addresses)
    dirty_allocs_.insert(e.alloc);
  if (old == s.endpoints.end()) dirty_allocs_.insert(e.alloc);
  s.endpoints[e.alloc] = e;
  allocs_[e.alloc].addresses[e.service] = e.addresses;
  dirty_services_.insert(e.service);
}

void Zone::remove_endpoint(const std::string &service, const std::string &alloc) {
  auto s = services_.find(service);
  if (s == services_.end() || !s->second.endpoints.erase(alloc)) return;
  auto a = allocs_.find(alloc);
  if (a != allocs_.end()) a->second.addresses.erase(service);
  dirty_services_.insert(service);
  dirty_allocs_.insert(alloc);
}

void Zone::put_vip(const std::string &service, const std::string &address) {
  services_[service].vip = address;
  dirty_services_.insert(service);
}

void Zone::remove_vip(const std::string &service) {
  auto s = services_.find(service);
  if (s == services_.end()) return;
  s->second.vip.clear();
  dirty_services_.insert(service);
}

void Zone::clear() {
  services_.clear();
  allocs_.clear();
  dirty_services_.clear();
  dirty_allocs_.clear();
  nodes_.clear();
  add_structure();
  ++generation_;
}

void Zone::commit() {
  for (const auto &s : dirty_services_) rebuild_service(s);
  for (const auto &a : dirty_allocs_) rebuild_alloc(a);
  dirty_services_.clear();
  dirty_allocs_.clear();
  ++generation_;
}

void Zone::rebuild_service(const std::string &service) {
  auto it = services_.find(service);
  if (it == services_.end()) return;
  ServiceState &s = it->second;
  drop(s.owned);
  if (s.endpoints.empty() && s.vip.empty()) {
    services_.erase(it);
    return;
  }
  if (!is_dns_label(service)) return;  // kept in the registry, never named

  // A service exists as a name while it has any instance, so a service with
  // none passing answers NODATA rather than NXDOMAIN.
  if (!s.endpoints.empty()) {
    ZoneNode &svc = node_for(name(service + ".service"), s.owned);
    ZoneNode &srv = node_for(name("_" + service + "._tcp.service"), s.owned);
    std::map<std::string, ZoneNode *> tag_nodes;
    for (const auto &[alloc, e] : s.endpoints) {
      for (const auto &t : e.tags) {
        if (!is_dns_label(t) || tag_nodes.count(t)) continue;
        tag_nodes[t] = &node_for(name(t + "." + service + ".service"), s.owned);
      }
    }
    for (const auto &[alloc, e] : s.endpoints) {
      if (!e.passing()) continue;
      for (const auto &addr : e.addresses) {
        add_address(addr, svc.a, svc.aaaa);
        for (const auto &t : e.tags) {
          auto tn = tag_nodes.find(t);
          if (tn != tag_nodes.end()) add_address(addr, tn->second->a, tn->second->aaaa);
        }
      }
      if (e.port != 0 && is_dns_label(alloc)) {
        std::vector<uint8_t> target = name(alloc + ".alloc");
        std::vector<uint8_t> rdata;
        put_u16(rdata, 1);  // priority
        put_u16(rdata, 1);  // weight
        put_u16(rdata, e.port);
        rdata.insert(rdata.end(), target.begin(), target.end());
        srv.srv.add(rdata.data(), static_cast<uint16_t>(rdata.size()));
        SrvTarget t;
        t.owner = target;
        for (const auto &addr : e.addresses) add_address(addr, t.a, t.aaaa);
        t.a.seal();
        t.aaaa.seal();
        srv.srv_targets.push_back(std::move(t));
      }
    }
    svc.a.seal();
    svc.aaaa.seal();
    srv.srv.seal();
    for (auto &[t, n] : tag_nodes) {
      n->a.seal();
      n->aaaa.seal();
    }
  }
  if (!s.vip.empty()) {
    ZoneNode &v = node_for(name(service + ".vip"), s.owned);
    add_address(s.vip, v.a, v.aaaa);
    v.a.seal();
    v.aaaa.seal();
  }
}

void Zone::rebuild_alloc(const std::string &alloc) {
  auto it = allocs_.find(alloc);
  if (it == allocs_.end()) return;
  AllocState &a = it->second;
  drop(a.owned);
  if (a.addresses.empty()) {
    allocs_.erase(it);
    return;
  }
  if (!is_dns_label(alloc)) return;
  std::vector<uint8_t> owner = name(alloc + ".alloc");
  ZoneNode &node = node_for(owner, a.owned);
  std::set<std::string> all;
  for (const auto &[svc, addrs] : a.addresses) all.insert(addrs.begin(), addrs.end());
  for (const auto &addr : all) {
    if (!add_address(addr, node.a, node.aaaa)) continue;
    std::vector<uint8_t> rev = dname_from_text(reverse_name(addr));
    if (find(rev.data())) continue;  // another allocation holds it (a stale record)
    ZoneNode &ptr = node_for(rev, a.owned);
    ptr.ptr.add(owner.data(), static_cast<uint16_t>(owner.size()));
    ptr.ptr.seal();
  }
  node.a.seal();
  node.aaaa.seal();
}

const ZoneNode *Zone::find(const uint8_t *lower_name) const {
  std::string_view key(reinterpret_cast<const char *>(lower_name), knot_dname_size(lower_name));
  auto it = nodes_.find(key);
  return it == nodes_.end() ? nullptr : &it->second;
}

bool Zone::in_zone(const uint8_t *lower_name) const {
  return knot_dname_in_bailiwick(lower_name, apex_.data()) >= 0;
}

const std::map<std::string, Endpoint> *Zone::endpoints(const std::string &service) const {
  auto it = services_.find(service);
  return it == services_.end() ? nullptr : &it->second.endpoints;
}

std::vector<std::string> Zone::services() const {
  std::vector<std::string> out;
  for (const auto &[name, s] : services_) out.push_back(name);
  return out;
}

std::string Zone::vip(const std::string &service) const {
  auto it = services_.find(service);
  return it == services_.end() ? "" : it->second.vip;
}

}  // namespace flotilla::discovery
