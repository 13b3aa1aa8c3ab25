// Content digests as OCI writes them ("sha256:<64 lowercase hex>") and a
// streaming SHA-256 (OpenSSL EVP) to compute them without holding the data.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

struct evp_md_ctx_st;

namespace flotilla::runc {

// Checks that digest is "sha256:" followed by 64 lowercase hex digits and
// returns the hex part. The hex names files in the store, so nothing else
// may pass. what names the digest's origin for the error message, e.g.
// "index.json manifests[0].digest". Throws ImageError (INVALID, or
// UNSUPPORTED for another algorithm such as sha512).
std::string digest_hex(std::string_view digest, std::string_view what);

// True when digest has the exact form above.
bool is_sha256_digest(std::string_view digest);

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256 &) = delete;
  Sha256 &operator=(const Sha256 &) = delete;

  void update(const void *data, size_t len);
  void update(std::string_view data) { update(data.data(), data.size()); }
  // "sha256:<hex>". The hasher cannot be used afterwards.
  std::string finish();

 private:
  struct CtxFree {
    void operator()(evp_md_ctx_st *ctx) const;
  };
  std::unique_ptr<evp_md_ctx_st, CtxFree> ctx_;
};

std::string sha256_of(std::string_view data);

// OCI chain id: for the first layer its diff_id, then
// sha256(parent_chain_id + " " + diff_id).
std::string chain_id(std::string_view parent_chain_id, std::string_view diff_id);

}  // namespace flotilla::runc
