#include "cidr.h"

#include <arpa/inet.h>

#include <cstring>

namespace flotilla::overlay {

namespace {

u128 mask(int bits, int prefix) {
  if (prefix <= 0) return 0;
  u128 all = bits == 128 ? ~u128{0} : ((u128{1} << bits) - 1);
  return all & ~((prefix >= bits) ? u128{0} : ((u128{1} << (bits - prefix)) - 1));
}

}  // namespace

std::optional<Address> parse_address(const std::string &text) {
  Address a;
  unsigned char buf[16];
  if (inet_pton(AF_INET, text.c_str(), buf) == 1) {
    for (int i = 0; i < 4; ++i) a.value = (a.value << 8) | buf[i];
    return a;
  }
  if (inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    a.v6 = true;
    for (int i = 0; i < 16; ++i) a.value = (a.value << 8) | buf[i];
    return a;
  }
  return std::nullopt;
}

std::string Address::text() const {
  unsigned char buf[16];
  char out[INET6_ADDRSTRLEN];
  const int n = v6 ? 16 : 4;
  u128 v = value;
  for (int i = n - 1; i >= 0; --i) {
    buf[i] = static_cast<unsigned char>(v & 0xff);
    v >>= 8;
  }
  if (!inet_ntop(v6 ? AF_INET6 : AF_INET, buf, out, sizeof out)) return "?";
  return out;
}

std::optional<Cidr> Cidr::parse(const std::string &text, std::string *why) {
  auto bad = [&](const std::string &w) -> std::optional<Cidr> {
    if (why) *why = w;
    return std::nullopt;
  };
  auto slash = text.find('/');
  if (slash == std::string::npos) return bad("\"" + text + "\" is not a CIDR (no /prefix)");
  auto a = parse_address(text.substr(0, slash));
  if (!a) return bad("\"" + text + "\" is not a CIDR (bad address)");
  const std::string p = text.substr(slash + 1);
  if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string::npos)
    return bad("\"" + text + "\" is not a CIDR (bad prefix length)");
  const int prefix = std::stoi(p);
  if (prefix > a->bits())
    return bad("\"" + text + "\" is not a CIDR (prefix longer than " +
               std::to_string(a->bits()) + ")");
  Cidr c{*a, prefix};
  if ((a->value & ~mask(a->bits(), prefix)) != 0) {
    Address net = *a;
    net.value &= mask(a->bits(), prefix);
    return bad("\"" + text + "\" has host bits set; the network is " + net.text() + "/" +
               std::to_string(prefix));
  }
  return c;
}

std::string Cidr::text() const { return base.text() + "/" + std::to_string(prefix); }

bool Cidr::contains(const Address &a) const {
  if (a.v6 != base.v6) return false;
  return (a.value & mask(base.bits(), prefix)) == base.value;
}

uint64_t Cidr::subnet_count(int sub_prefix) const {
  if (sub_prefix < prefix || sub_prefix > base.bits()) return 0;
  const int diff = sub_prefix - prefix;
  if (diff >= 62) return uint64_t{1} << 62;
  return uint64_t{1} << diff;
}

Cidr Cidr::subnet(int sub_prefix, uint64_t index) const {
  Cidr c;
  c.base.v6 = base.v6;
  c.prefix = sub_prefix;
  c.base.value = base.value + (u128{index} << (base.bits() - sub_prefix));
  return c;
}

Address Cidr::at(u128 offset) const {
  Address a = base;
  a.value += offset;
  return a;
}

}  // namespace flotilla::overlay
