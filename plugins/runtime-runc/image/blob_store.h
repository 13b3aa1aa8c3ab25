// Content-addressed blobs: <dir>/sha256/<hex>, written once, verified on
// the way in, never modified.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::runc {

// What one blob must be, from the descriptor that points at it.
struct BlobExpectation {
  std::string digest;  // validated "sha256:<hex>"
  int64_t size = -1;   // -1: not known (blobs of an archive before a descriptor names them)
  std::string what;    // "layer 2 of manifest sha256:...", for errors
};

// Throws ImageError(INVALID): "blob <digest> (<what>) from <source>: <why>;
// the image is corrupt, refusing it".
[[noreturn]] void throw_blob_mismatch(const BlobExpectation &expect, const std::string &source,
                                      const std::string &why);

// Streams bytes into a new file while hashing them. commit() checks the
// size and the digest against the expectation; a mismatch throws
// ImageError(INVALID) naming the blob and both digests and deletes the file,
// as does destruction without commit().
class VerifiedBlobWriter {
 public:
  // source names where the bytes come from ("image layout /src").
  VerifiedBlobWriter(std::filesystem::path dest, BlobExpectation expect, std::string source,
                     bool sync);
  ~VerifiedBlobWriter();
  VerifiedBlobWriter(const VerifiedBlobWriter &) = delete;
  VerifiedBlobWriter &operator=(const VerifiedBlobWriter &) = delete;

  void write(const void *data, size_t len);
  void commit();
  uint64_t written() const { return written_; }

 private:
  [[noreturn]] void mismatch(const std::string &why);

  std::filesystem::path dest_;
  BlobExpectation expect_;
  std::string source_;
  bool sync_;
  int fd_ = -1;
  uint64_t written_ = 0;
  uint64_t written_back_ = 0;  // writeback started up to here (start_writeback)
  bool committed_ = false;
  struct Hash;
  std::unique_ptr<Hash> hash_;
};

// Copies src_fd to dest through a VerifiedBlobWriter.
void copy_blob_verified(int src_fd, const std::filesystem::path &dest,
                        const BlobExpectation &expect, const std::string &source, bool sync);

class BlobStore {
 public:
  // dir: the store's "blobs" directory; dir/sha256 is created if missing.
  explicit BlobStore(std::filesystem::path dir);

  std::filesystem::path path(std::string_view digest) const;
  bool contains(std::string_view digest) const;
  // Every digest present, unordered.
  std::vector<std::string> digests() const;
  // Moves a verified file into place unless the digest is already there.
  // Returns true when the blob is new.
  bool publish(const std::filesystem::path &staged, std::string_view digest);
  // Returns the bytes freed (0 if the blob was not there).
  uint64_t erase(std::string_view digest);
  std::string read(std::string_view digest, size_t max_bytes, std::string_view what) const;
  const std::filesystem::path &dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

}  // namespace flotilla::runc
