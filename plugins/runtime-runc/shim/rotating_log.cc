#include "rotating_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace flotilla::runc {

RotatingLog::RotatingLog(std::string path, uint64_t max_bytes, unsigned max_files)
    : path_(std::move(path)),
      max_bytes_(max_bytes ? max_bytes : 1),
      max_files_(max_files ? max_files : 1) {
  if (!open_current()) throw std::system_error(errno, std::generic_category(), "open " + path_);
}

RotatingLog::~RotatingLog() {
  if (fd_ >= 0) ::close(fd_);
}

bool RotatingLog::open_current() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
  if (fd_ < 0) return false;
  struct stat st {};
  size_ = ::fstat(fd_, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  return true;
}

void RotatingLog::rotate() {
  // The oldest file falls off the end; with max_files == 1 the current file
  // is simply started again.
  if (max_files_ == 1) {
    ::unlink(path_.c_str());
  } else {
    ::unlink((path_ + "." + std::to_string(max_files_ - 1)).c_str());
    for (unsigned i = max_files_ - 1; i > 1; --i)
      ::rename((path_ + "." + std::to_string(i - 1)).c_str(),
               (path_ + "." + std::to_string(i)).c_str());
    ::rename(path_.c_str(), (path_ + ".1").c_str());
  }
  open_current();
}

bool RotatingLog::write(std::string_view data) {
  bool ok = true;
  while (!data.empty()) {
    if (size_ >= max_bytes_) rotate();
    if (fd_ < 0 && !open_current()) return false;
    size_t room = static_cast<size_t>(max_bytes_ - size_);
    size_t n = data.size() < room ? data.size() : room;
    ssize_t w = ::write(fd_, data.data(), n);
    if (w < 0) {
      if (errno == EINTR) continue;
      ok = false;
      break;  // drop this chunk; the next write tries again
    }
    size_ += static_cast<uint64_t>(w);
    data.remove_prefix(static_cast<size_t>(w));
  }
  return ok;
}

}  // namespace flotilla::runc
