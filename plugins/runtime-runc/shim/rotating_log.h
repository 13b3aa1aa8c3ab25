// A log file that never grows past a size: when the next write would not
// fit, stdout.log becomes stdout.log.1 (stdout.log.1 becomes .2, ...) and a
// fresh stdout.log is started. At most max_files files exist: the current
// one and max_files - 1 rotated ones; the oldest is deleted.
//
// Used by flotilla-runc-shim for a container's stdout and stderr. Not
// thread-safe; one writer per file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace flotilla::runc {

class RotatingLog {
 public:
  // Opens (appends to) path. max_bytes >= 1, max_files >= 1.
  // Throws std::system_error when the file cannot be opened.
  RotatingLog(std::string path, uint64_t max_bytes, unsigned max_files);
  ~RotatingLog();
  RotatingLog(const RotatingLog &) = delete;
  RotatingLog &operator=(const RotatingLog &) = delete;

  // Appends data, rotating as often as needed so that no file exceeds
  // max_bytes. Returns false (and keeps going on the next call) when a
  // write failed, e.g. on a full disk: a container's output is never worth
  // stopping its monitor for.
  bool write(std::string_view data);

  const std::string &path() const { return path_; }
  uint64_t current_size() const { return size_; }

 private:
  void rotate();
  bool open_current();

  std::string path_;
  uint64_t max_bytes_;
  unsigned max_files_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace flotilla::runc
