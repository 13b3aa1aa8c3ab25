#include "file_lock.h"

#include <fcntl.h>
#include <sys/file.h>

#include "image_error.h"

namespace flotilla::runc {

FileLock::FileLock(const std::filesystem::path &path, Mode mode) : FileLock(path, mode, false) {}

FileLock::FileLock(const std::filesystem::path &path, Mode mode, bool try_lock) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) throw_errno("open lock file " + path.string());
  int op = (mode == Mode::shared ? LOCK_SH : LOCK_EX) | (try_lock ? LOCK_NB : 0);
  while (::flock(fd.get(), op) != 0) {
    if (errno == EINTR) continue;
    if (try_lock && errno == EWOULDBLOCK) return;
    throw_errno("lock " + path.string());
  }
  fd_ = std::move(fd);
}

}  // namespace flotilla::runc
