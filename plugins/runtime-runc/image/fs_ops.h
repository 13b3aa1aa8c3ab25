// The few filesystem operations the store is built on: durable atomic file
// writes, private temp directories, and tree removal that never follows a
// symlink.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "unique_fd.h"

namespace flotilla::runc {

// Replaces path with content: writes a temp file next to it, fsyncs it (when
// sync), renames it over path and fsyncs the directory. Readers see the old
// or the new content, never a mix.
void write_file_atomic(const std::filesystem::path &path, std::string_view content, bool sync);

// fsync of a directory, so that renames and creations inside it survive a
// crash.
void sync_directory(const std::filesystem::path &dir);

// Starts writing back the dirty pages of fd's [offset, offset + len) (len
// 0: to the end) without waiting for them: sync_file_range(2) with
// SYNC_FILE_RANGE_WRITE. Not a durability step (that stays the fsync or
// syncfs that follows); it spreads the disk writes over the time the data
// is produced, so that the final sync has little left. Errors are ignored:
// it is only a hint.
void start_writeback(int fd, int64_t offset, int64_t len);
// Every this many bytes a writer starts writeback of what it wrote since.
constexpr int64_t kWritebackChunk = int64_t{8} << 20;

// Creates parent/<prefix>XXXXXX (mode 0700) and returns its path.
std::filesystem::path make_temp_dir(const std::filesystem::path &parent, std::string_view prefix);

// Removes name below dirfd and everything under it. Symlinks are removed,
// never followed. A missing name is not an error.
void remove_tree_at(int dirfd, const char *name);
// The same for a path; its last component is removed, its parents are
// trusted (they belong to the store).
void remove_tree(const std::filesystem::path &path);

// Opens a regular file for reading (following symlinks: it is the
// operator's own path); anything else, a FIFO say, is refused without
// blocking. what names it in errors.
UniqueFd open_regular_file(const std::filesystem::path &path, std::string_view what);

// Reads a whole file of at most max_bytes. what names it in errors.
std::string read_small_file(const std::filesystem::path &path, size_t max_bytes,
                            std::string_view what);

// "2024-05-01T12:00:00Z"
std::string now_rfc3339();

// A directory removed with everything in it when the object goes away,
// also when an exception unwinds.
class TempDir {
 public:
  TempDir(const std::filesystem::path &parent, std::string_view prefix)
      : path_(make_temp_dir(parent, prefix)) {}
  ~TempDir();
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  const std::filesystem::path &path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace flotilla::runc
