#include "wg_device.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <memory>

namespace flotilla::overlay {

std::string key_to_base64(const WgKey &k) {
  unsigned char out[64];
  int n = EVP_EncodeBlock(out, k.data(), static_cast<int>(k.size()));
  return std::string(reinterpret_cast<char *>(out), static_cast<size_t>(n));
}

std::optional<WgKey> key_from_base64(const std::string &b64) {
  if (b64.size() != 44 || b64[43] != '=') return std::nullopt;
  unsigned char out[48];
  int n = EVP_DecodeBlock(out, reinterpret_cast<const unsigned char *>(b64.data()), 44);
  if (n != 33) return std::nullopt;  // 32 bytes + the padding's zero byte
  WgKey k;
  std::copy(out, out + 32, k.begin());
  return k;
}

std::string key_to_hex(const WgKey &k) {
  static const char *d = "0123456789abcdef";
  std::string s;
  for (uint8_t b : k) {
    s += d[b >> 4];
    s += d[b & 15];
  }
  return s;
}

std::optional<WgKey> key_from_hex(const std::string &hex) {
  if (hex.size() != 64) return std::nullopt;
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  WgKey k;
  for (size_t i = 0; i < 32; ++i) {
    int hi = val(hex[2 * i]), lo = val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    k[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return k;
}

WgKey generate_private_key() {
  WgKey k;
  if (RAND_bytes(k.data(), static_cast<int>(k.size())) != 1)
    throw WgError("wireguard: no randomness for a private key");
  k[0] &= 248;
  k[31] = static_cast<uint8_t>((k[31] & 127) | 64);
  return k;
}

WgKey public_key_of(const WgKey &private_key) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pk(
      EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_key.data(),
                                   private_key.size()),
      EVP_PKEY_free);
  if (!pk) throw WgError("wireguard: not a Curve25519 private key");
  WgKey pub;
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(pk.get(), pub.data(), &len) != 1 || len != pub.size())
    throw WgError("wireguard: cannot derive the public key");
  return pub;
}

}  // namespace flotilla::overlay
