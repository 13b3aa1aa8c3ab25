// Where an import reads from: an OCI image-layout directory (oci-layout,
// index.json, blobs/sha256/...) or an oci-archive, a tar (optionally gzip or
// zstd compressed) of such a layout as skopeo, buildah and `docker save`
// (25+) write it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "blob_store.h"

namespace flotilla::runc {

class LayoutSource {
 public:
  struct Limits {
    size_t max_json_bytes = 4 << 20;
    uint64_t max_archive_entries = 1'000'000;
  };

  // An archive is read once, here: its blobs are copied into staging_dir,
  // each verified against the digest its name claims, except those
  // already_have() says the store holds. staging_dir must exist and be on
  // the store's filesystem.
  LayoutSource(const std::filesystem::path &path, const std::filesystem::path &staging_dir,
               const std::function<bool(const std::string &digest)> &already_have,
               const Limits &limits, bool sync);

  // "image layout /srv/busybox" or "oci-archive /srv/busybox.tar"
  const std::string &describe() const { return describe_; }
  const nlohmann::json &index() const { return index_; }

  // Produces a verified copy of a blob at dest (a new file). Throws
  // ImageError: NOT_FOUND when the layout lacks the blob, INVALID on a size
  // or digest mismatch.
  void fetch(const BlobExpectation &expect, const std::filesystem::path &dest, bool sync);

 private:
  void read_directory(const std::filesystem::path &dir);
  void read_archive(const std::filesystem::path &file,
                    const std::function<bool(const std::string &)> &already_have, bool sync);
  void check_layout_file(std::string_view text);
  [[noreturn]] void missing(const BlobExpectation &expect, const std::string &detail) const;

  std::filesystem::path path_;
  std::filesystem::path staging_;
  bool archive_ = false;
  std::string describe_;
  Limits limits_;
  nlohmann::json index_;
  // Archive blobs whose content did not match their name: digest -> error.
  std::map<std::string, std::string> corrupt_;
};

}  // namespace flotilla::runc
