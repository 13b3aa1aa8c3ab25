#include "attachment.h"

#include <cstdio>
#include <stdexcept>

namespace flotilla::overlay {

using nlohmann::json;

json Attachment::to_json() const {
  json ports_j = json::array();
  for (const auto &p : ports)
    ports_j.push_back({{"host", p.host}, {"to", p.to}, {"protocol", p.protocol}});
  return {{"alloc", alloc}, {"netns", netns}, {"netns_pinned", netns_pinned},
          {"veth", veth},   {"ip4", ip4},     {"gw4", gw4},
          {"ip6", ip6},     {"gw6", gw6},     {"ports", ports_j},
          {"hostnames", hostnames}};
}

std::optional<Attachment> Attachment::from_json(const json &j) {
  if (!j.is_object() || !j.contains("alloc")) return std::nullopt;
  try {
    Attachment a;
    a.alloc = j.at("alloc").get<std::string>();
    a.netns = j.value("netns", "");
    a.netns_pinned = j.value("netns_pinned", false);
    a.veth = j.value("veth", "");
    a.ip4 = j.value("ip4", "");
    a.gw4 = j.value("gw4", "");
    a.ip6 = j.value("ip6", "");
    a.gw6 = j.value("gw6", "");
    a.ports = parse_ports(j);
    a.hostnames = j.value("hostnames", std::vector<std::string>{});
    return a;
  } catch (const std::exception &) {
    return std::nullopt;
  }
}

namespace {
std::string bare(const std::string &cidr) { return cidr.substr(0, cidr.find('/')); }
}  // namespace

MappedAlloc Attachment::mapped() const {
  return {bare(ip4), ip6.empty() ? "" : bare(ip6), ports};
}

std::string veth_name(const std::string &prefix, const std::string &alloc) {
  uint32_t h = 2166136261u;
  for (unsigned char c : alloc) {
    h ^= c;
    h *= 16777619u;
  }
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", h);
  return prefix + hex;
}

std::vector<PortMapping> parse_ports(const json &spec) {
  std::vector<PortMapping> out;
  if (!spec.contains("ports")) return out;
  const json &ps = spec["ports"];
  if (!ps.is_array()) throw std::invalid_argument("ports: must be an array");
  for (size_t i = 0; i < ps.size(); ++i) {
    const json &p = ps[i];
    const std::string at = "ports[" + std::to_string(i) + "]";
    PortMapping m;
    if (p.is_number_integer()) {
      m.host = m.to = p.get<int>();
    } else if (p.is_object()) {
      if (!p.contains("host") || !p["host"].is_number_integer())
        throw std::invalid_argument(at + ".host: must be a port number");
      m.host = p["host"].get<int>();
      m.to = p.contains("to") ? (p["to"].is_number_integer() ? p["to"].get<int>() : -1) : m.host;
      m.protocol = p.value("protocol", "tcp");
    } else {
      throw std::invalid_argument(at + ": must be a port number or {host, to, protocol}");
    }
    if (m.host < 1 || m.host > 65535) throw std::invalid_argument(at + ".host: not 1 to 65535");
    if (m.to < 1 || m.to > 65535) throw std::invalid_argument(at + ".to: not 1 to 65535");
    if (m.protocol != "tcp" && m.protocol != "udp")
      throw std::invalid_argument(at + ".protocol: must be \"tcp\" or \"udp\"");
    out.push_back(m);
  }
  return out;
}

}  // namespace flotilla::overlay
