#include "blob_store.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <vector>

#include "digest.h"
#include "fs_ops.h"
#include "image_error.h"
#include "unique_fd.h"

namespace flotilla::runc {

namespace fs = std::filesystem;

struct VerifiedBlobWriter::Hash {
  Sha256 sha;
};

VerifiedBlobWriter::VerifiedBlobWriter(fs::path dest, BlobExpectation expect, std::string source,
                                       bool sync)
    : dest_(std::move(dest)),
      expect_(std::move(expect)),
      source_(std::move(source)),
      sync_(sync),
      hash_(std::make_unique<Hash>()) {
  fd_ = ::open(dest_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
  if (fd_ < 0) throw_errno("create " + dest_.string());
}

VerifiedBlobWriter::~VerifiedBlobWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(dest_.c_str());
}

void throw_blob_mismatch(const BlobExpectation &expect, const std::string &source,
                         const std::string &why) {
  throw ImageError(FLOTILLA_E_INVALID, "blob " + expect.digest + " (" + expect.what + ") from " +
                                           source + ": " + why +
                                           "; the image is corrupt, refusing it");
}

void VerifiedBlobWriter::mismatch(const std::string &why) {
  ::close(fd_);
  fd_ = -1;
  ::unlink(dest_.c_str());
  throw_blob_mismatch(expect_, source_, why);
}

void VerifiedBlobWriter::write(const void *data, size_t len) {
  written_ += len;
  // Stop at the first byte past the promised size instead of copying an
  // endless stream to disk.
  if (expect_.size >= 0 && written_ > static_cast<uint64_t>(expect_.size)) {
    mismatch("it is longer than the descriptor's size of " + std::to_string(expect_.size) +
             " bytes");
  }
  hash_->sha.update(data, len);
  const char *p = static_cast<const char *>(data);
  while (len > 0) {
    ssize_t n = ::write(fd_, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write " + dest_.string());
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  if (written_ - written_back_ >= static_cast<uint64_t>(kWritebackChunk)) {
    start_writeback(fd_, static_cast<int64_t>(written_back_),
                    static_cast<int64_t>(written_ - written_back_));
    written_back_ = written_;
  }
}

void VerifiedBlobWriter::commit() {
  if (expect_.size >= 0 && written_ != static_cast<uint64_t>(expect_.size)) {
    mismatch("it has " + std::to_string(written_) + " bytes, the descriptor says " +
             std::to_string(expect_.size));
  }
  std::string actual = hash_->sha.finish();
  if (actual != expect_.digest) {
    mismatch("its content has digest " + actual + ", expected " + expect_.digest);
  }
  if (sync_ && ::fsync(fd_) != 0) throw_errno("fsync " + dest_.string());
  // Unsynced here (a pull: the import's syncfs makes it durable): the rest
  // goes to the disk now, not all at that syncfs.
  if (!sync_ && written_ > written_back_)
    start_writeback(fd_, static_cast<int64_t>(written_back_), 0);
  if (::close(fd_) != 0) {
    fd_ = -1;
    throw_errno("close " + dest_.string());
  }
  fd_ = -1;
  committed_ = true;
}

void copy_blob_verified(int src_fd, const fs::path &dest, const BlobExpectation &expect,
                        const std::string &source, bool sync) {
  VerifiedBlobWriter writer(dest, expect, source, sync);
  std::vector<char> buf(256 * 1024);
  for (;;) {
    ssize_t n = ::read(src_fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read blob " + expect.digest + " from " + source);
    }
    if (n == 0) break;
    writer.write(buf.data(), static_cast<size_t>(n));
  }
  writer.commit();
}

BlobStore::BlobStore(fs::path dir) : dir_(std::move(dir)) {
  std::error_code ec;
  fs::create_directories(dir_ / "sha256", ec);
  if (ec) {
    throw ImageError(FLOTILLA_E_IO,
                     "create blob directory " + (dir_ / "sha256").string() + ": " + ec.message());
  }
}

fs::path BlobStore::path(std::string_view digest) const {
  return dir_ / "sha256" / digest_hex(digest, "blob");
}

bool BlobStore::contains(std::string_view digest) const {
  struct stat st {};
  return ::lstat(path(digest).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::vector<std::string> BlobStore::digests() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(dir_ / "sha256", ec)) {
    std::string d = "sha256:" + e.path().filename().string();
    if (is_sha256_digest(d)) out.push_back(std::move(d));
  }
  if (ec)
    throw ImageError(FLOTILLA_E_IO, "list " + (dir_ / "sha256").string() + ": " + ec.message());
  return out;
}

bool BlobStore::publish(const fs::path &staged, std::string_view digest) {
  fs::path target = path(digest);
  if (::renameat2(AT_FDCWD, staged.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE) == 0) {
    return true;
  }
  if (errno == EEXIST) return false;
  throw_errno("move blob " + std::string(digest) + " into " + target.string());
}

uint64_t BlobStore::erase(std::string_view digest) {
  fs::path p = path(digest);
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0) return 0;
  if (::unlink(p.c_str()) != 0 && errno != ENOENT) throw_errno("remove blob " + p.string());
  return static_cast<uint64_t>(st.st_size);
}

std::string BlobStore::read(std::string_view digest, size_t max_bytes,
                            std::string_view what) const {
  return read_small_file(path(digest), max_bytes, what);
}

}  // namespace flotilla::runc
