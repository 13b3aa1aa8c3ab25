#include "digest.h"

#include <openssl/evp.h>

#include <string>

#include "image_error.h"

namespace flotilla::runc {

namespace {
constexpr std::string_view kPrefix = "sha256:";
}

bool is_sha256_digest(std::string_view digest) {
  if (digest.size() != kPrefix.size() + 64 || !digest.starts_with(kPrefix)) return false;
  for (char c : digest.substr(kPrefix.size())) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string digest_hex(std::string_view digest, std::string_view what) {
  if (is_sha256_digest(digest)) return std::string(digest.substr(kPrefix.size()));
  auto colon = digest.find(':');
  if (colon != std::string_view::npos && colon > 0 && !digest.starts_with(kPrefix)) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED, std::string(what) + ": digest \"" +
                                                 std::string(digest) + "\" uses algorithm \"" +
                                                 std::string(digest.substr(0, colon)) +
                                                 "\"; only sha256 is supported");
  }
  throw ImageError(FLOTILLA_E_INVALID, std::string(what) + ": \"" + std::string(digest) +
                                           "\" is not a digest of the form sha256:<64 hex digits>");
}

void Sha256::CtxFree::operator()(evp_md_ctx_st *ctx) const {
  EVP_MD_CTX_free(ctx);
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) {
    throw ImageError(FLOTILLA_E_INTERNAL, "OpenSSL: cannot initialise SHA-256");
  }
}

Sha256::~Sha256() = default;

void Sha256::update(const void *data, size_t len) {
  if (len > 0 && EVP_DigestUpdate(ctx_.get(), data, len) != 1) {
    throw ImageError(FLOTILLA_E_INTERNAL, "OpenSSL: SHA-256 update failed");
  }
}

std::string Sha256::finish() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx_.get(), md, &len) != 1) {
    throw ImageError(FLOTILLA_E_INTERNAL, "OpenSSL: SHA-256 final failed");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(kPrefix);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 0xf]);
  }
  return out;
}

std::string sha256_of(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

std::string chain_id(std::string_view parent_chain_id, std::string_view diff_id) {
  if (parent_chain_id.empty()) return std::string(diff_id);
  std::string joined;
  joined.reserve(parent_chain_id.size() + 1 + diff_id.size());
  joined.append(parent_chain_id).append(" ").append(diff_id);
  return sha256_of(joined);
}

}  // namespace flotilla::runc
