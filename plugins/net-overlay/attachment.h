// One allocation's network attachment: what attach() made, kept in the
// plugin's data dir (attachments/<alloc>.json) so that detach() and a
// restarted daemon know it.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "firewall.h"

namespace flotilla::overlay {

struct Attachment {
  std::string alloc;
  std::string netns;         // the namespace's path
  bool netns_pinned = false;  // made (and so removed) by this plugin
  std::string veth;          // host side; "eth0" inside
  std::string ip4, gw4;      // "10.42.3.7/24", "10.42.3.1"
  std::string ip6, gw6;      // "" without cluster_cidr_v6
  std::vector<PortMapping> ports;
  std::vector<std::string> hostnames;

  nlohmann::json to_json() const;
  static std::optional<Attachment> from_json(const nlohmann::json &j);
  MappedAlloc mapped() const;
};

// The host side's name: prefix + 8 hex digits of the allocation id's
// FNV-1a hash (interface names have at most 15 characters).
std::string veth_name(const std::string &prefix, const std::string &alloc);

// Reads the `ports` of an attach spec: [{"host": 8080, "to": 80,
// "protocol": "tcp"}] (to defaults to host, protocol to tcp). Throws
// std::invalid_argument naming the bad entry.
std::vector<PortMapping> parse_ports(const nlohmann::json &spec);

}  // namespace flotilla::overlay
