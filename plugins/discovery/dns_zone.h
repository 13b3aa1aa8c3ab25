// The DNS names this node answers, prepared ahead from the service registry
// (as Knot DNS and NSD prepare a zone): every name's record sets are held in
// wire form, so the query path only looks a name up and copies.
//
// Names under <domain> (default "flotilla"):
//   <service>.service.<domain>          A/AAAA of passing endpoints
//   <tag>.<service>.service.<domain>    the same, only endpoints with the tag
//   _<service>._tcp.service.<domain>    SRV: port and <alloc>.alloc.<domain>
//   <alloc>.alloc.<domain>              A/AAAA of the allocation
//   <service>.vip.<domain>              the service's virtual IP
// and PTR names (in-addr.arpa, ip6.arpa) for every endpoint address.
//
// Mutations mark services dirty; commit() rebuilds only those names.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "knot_wire.h"

namespace flotilla::discovery {

// One instance of a service, as published under
// /flotilla/services/<service>/<alloc>.
struct Endpoint {
  std::string service;
  std::string alloc;
  std::string node;
  std::vector<std::string> addresses;  // textual IPv4/IPv6 addresses
  uint16_t port = 0;
  std::vector<std::string> tags;
  std::string health;  // "starting", "passing" or "critical"
  bool passing() const { return health == "passing"; }
};

// A record set of one type, its RDATA items in knot_rdata_t layout written
// twice in a row, so any rotation of any length is one contiguous window.
class PreparedSet {
 public:
  void add(const uint8_t *rdata, uint16_t len);  // before seal()
  void seal();
  uint16_t count() const { return count_; }
  bool empty() const { return count_ == 0; }
  // A view of n items starting at item `start` (taken modulo count()); it
  // points into this set and lives as long as it.
  knot_rrset_t view(const uint8_t *owner, uint16_t type, uint32_t ttl, uint16_t start,
                    uint16_t n) const;

 private:
  std::vector<std::vector<uint8_t>> items_;  // until seal()
  std::vector<uint8_t> buf_;
  std::vector<uint32_t> offs_;  // 2 * count_ + 1 offsets into buf_
  uint16_t count_ = 0;
};

// What an SRV item needs in the additional section: its target's addresses.
struct SrvTarget {
  std::vector<uint8_t> owner;  // <alloc>.alloc.<domain>, wire
  PreparedSet a, aaaa;
};

struct ZoneNode {
  std::vector<uint8_t> owner;  // lowercased wire form
  PreparedSet a, aaaa, srv, ptr;
  std::vector<SrvTarget> srv_targets;  // one per SRV item, same order
  bool apex = false;                   // answers SOA
};

class Zone {
 public:
  struct Settings {
    std::string domain = "flotilla";
    uint32_t ttl = 5;           // positive answers
    uint32_t negative_ttl = 1;  // SOA minimum and TTL: NXDOMAIN/NODATA caching
  };

  explicit Zone(Settings settings);
  Zone(const Zone &) = delete;
  Zone &operator=(const Zone &) = delete;

  // Registry changes; visible to find() after commit().
  void put_endpoint(const Endpoint &e);
  void remove_endpoint(const std::string &service, const std::string &alloc);
  void put_vip(const std::string &service, const std::string &address);
  void remove_vip(const std::string &service);
  void clear();  // before a full re-list
  void commit();
  // Changes with every commit() and clear(): what find() returns may have
  // changed (the Responder's answer cache keys on it). Starts at 1.
  uint64_t generation() const { return generation_; }

  // The node for a lowercased wire-form name, or nullptr.
  const ZoneNode *find(const uint8_t *lower_name) const;
  // Whether a name is at or under the apex.
  bool in_zone(const uint8_t *lower_name) const;
  const uint8_t *apex() const { return apex_.data(); }
  const PreparedSet &soa() const { return soa_; }
  uint32_t ttl() const { return settings_.ttl; }
  uint32_t negative_ttl() const { return settings_.negative_ttl; }
  const Settings &settings() const { return settings_; }

  // The registry as the zone holds it (for lookup() and the API).
  const std::map<std::string, Endpoint> *endpoints(const std::string &service) const;
  std::vector<std::string> services() const;
  std::string vip(const std::string &service) const;
  size_t node_count() const { return nodes_.size(); }

 private:
  struct ServiceState {
    std::map<std::string, Endpoint> endpoints;  // by alloc
    std::string vip;
    std::vector<std::string> owned;  // node keys built for it
  };
  struct AllocState {
    std::map<std::string, std::vector<std::string>> addresses;  // by service
    std::vector<std::string> owned;
  };
  struct KeyHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct KeyEq {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const { return a == b; }
  };

  std::vector<uint8_t> name(const std::string &text) const;  // relative to the apex
  ZoneNode &node_for(const std::vector<uint8_t> &owner, std::vector<std::string> &owned);
  void drop(std::vector<std::string> &owned);
  void rebuild_service(const std::string &service);
  void rebuild_alloc(const std::string &alloc);
  void add_structure();

  Settings settings_;
  std::vector<uint8_t> apex_;
  PreparedSet soa_;
  std::map<std::string, ServiceState> services_;
  std::map<std::string, AllocState> allocs_;
  std::set<std::string> dirty_services_, dirty_allocs_;
  std::unordered_map<std::string, ZoneNode, KeyHash, KeyEq> nodes_;
  uint64_t generation_ = 1;
};

// Helpers shared with the tests.
std::vector<uint8_t> dname_from_text(const std::string &text);  // throws on a bad name
std::string dname_to_text(const uint8_t *wire);
// The PTR owner of an address ("10.42.1.5" → 5.1.42.10.in-addr.arpa.);
// empty when it is not an address.
std::string reverse_name(const std::string &address);
// A service or tag name must be one DNS label: [a-z0-9-], 1-63 characters,
// not starting or ending with '-'.
bool is_dns_label(std::string_view s);

}  // namespace flotilla::discovery
