// flock(2) on a lock file. Each FileLock opens its own descriptor, so two
// threads of one process exclude each other exactly as two processes do.
#pragma once

#include <filesystem>

#include "unique_fd.h"

namespace flotilla::runc {

class FileLock {
 public:
  enum class Mode { shared, exclusive };

  // Blocks until the lock is held. Creates the file if needed.
  FileLock(const std::filesystem::path &path, Mode mode);
  // try_lock: returns with held() == false instead of blocking.
  FileLock(const std::filesystem::path &path, Mode mode, bool try_lock);
  FileLock(FileLock &&) = default;
  FileLock &operator=(FileLock &&) = default;
  ~FileLock() = default;  // closing the descriptor drops the lock

  bool held() const { return static_cast<bool>(fd_); }

 private:
  UniqueFd fd_;
};

}  // namespace flotilla::runc
