// IPv4 and IPv6 prefixes: parsing, containment, overlap, and counting
// subnets and hosts inside them (IPAM's arithmetic). Addresses are held as
// 128-bit numbers; IPv4 uses the low 32 bits.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace flotilla::overlay {

using u128 = unsigned __int128;

struct Address {
  bool v6 = false;
  u128 value = 0;
  int bits() const { return v6 ? 128 : 32; }
  std::string text() const;
  bool operator==(const Address &) const = default;
};

struct Cidr {
  Address base;  // the network address (host bits zero)
  int prefix = 0;

  // "10.42.0.0/16" or "fd42::/48". Host bits must be zero; why is set to
  // the reason otherwise.
  static std::optional<Cidr> parse(const std::string &text, std::string *why = nullptr);
  std::string text() const;
  bool v6() const { return base.v6; }
  bool contains(const Address &a) const;
  bool contains(const Cidr &c) const { return c.prefix >= prefix && contains(c.base); }
  bool overlaps(const Cidr &c) const { return contains(c.base) || c.contains(base); }
  // How many subnets of length sub_prefix it holds, capped at 2^62.
  uint64_t subnet_count(int sub_prefix) const;
  // The index-th subnet of length sub_prefix (index < subnet_count).
  Cidr subnet(int sub_prefix, uint64_t index) const;
  // The address base + offset.
  Address at(u128 offset) const;
  bool operator==(const Cidr &) const = default;
};

std::optional<Address> parse_address(const std::string &text);

}  // namespace flotilla::overlay
