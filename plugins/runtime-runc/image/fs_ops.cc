#include "fs_ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "image_error.h"
#include "unique_fd.h"

namespace flotilla::runc {

namespace fs = std::filesystem;

namespace {

void write_all(int fd, std::string_view data, const fs::path &path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write " + path.string());
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s(12, 'x');
  for (auto &c : s) c = kChars[rng() % (sizeof(kChars) - 1)];
  return s;
}

struct DirCloser {
  void operator()(DIR *d) const { ::closedir(d); }
};

}  // namespace

void sync_directory(const fs::path &dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) throw_errno("open directory " + dir.string());
  if (::fsync(fd.get()) != 0) throw_errno("fsync " + dir.string());
}

void write_file_atomic(const fs::path &path, std::string_view content, bool sync) {
  fs::path tmp = path;
  tmp += ".tmp-" + random_suffix();
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd) throw_errno("create " + tmp.string());
  try {
    write_all(fd.get(), content, tmp);
    if (sync && ::fsync(fd.get()) != 0) throw_errno("fsync " + tmp.string());
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw_errno("rename " + tmp.string() + " to " + path.string());
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (sync) sync_directory(path.parent_path());
}

void start_writeback(int fd, int64_t offset, int64_t len) {
  (void)::sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE);
}

fs::path make_temp_dir(const fs::path &parent, std::string_view prefix) {
  std::string tmpl = (parent / prefix).string() + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw_errno("create temp directory " + tmpl);
  return fs::path(buf.data());
}

void remove_tree_at(int dirfd, const char *name) {
  if (::unlinkat(dirfd, name, 0) == 0 || errno == ENOENT) return;
  if (errno != EISDIR) throw_errno(std::string("remove ") + name);
  int fd = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return;
    throw_errno(std::string("open directory ") + name + " for removal");
  }
  std::unique_ptr<DIR, DirCloser> dir(::fdopendir(fd));
  if (!dir) {
    int err = errno;
    ::close(fd);
    throw_errno(std::string("read directory ") + name, err);
  }
  // Collect names first: removing while reading is allowed but skips
  // nothing only by luck of the filesystem.
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent *e = ::readdir(dir.get())) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
    errno = 0;
  }
  if (errno != 0) throw_errno(std::string("read directory ") + name);
  for (const auto &n : names) remove_tree_at(::dirfd(dir.get()), n.c_str());
  dir.reset();
  if (::unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
    throw_errno(std::string("remove directory ") + name);
  }
}

void remove_tree(const fs::path &path) {
  fs::path parent = path.parent_path();
  if (parent.empty()) parent = ".";
  UniqueFd fd(::open(parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return;
    throw_errno("open " + parent.string());
  }
  try {
    remove_tree_at(fd.get(), path.filename().c_str());
  } catch (const ImageError &e) {
    throw ImageError(e.status(), "removing " + path.string() + ": " + e.what());
  }
}

UniqueFd open_regular_file(const fs::path &path, std::string_view what) {
  // O_NONBLOCK: a FIFO planted in an image layout must not hang the import.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) {
      throw ImageError(FLOTILLA_E_NOT_FOUND,
                       std::string(what) + ": " + path.string() + " not found");
    }
    throw_errno(std::string(what) + ": open " + path.string());
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno(std::string(what) + ": stat " + path.string());
  if (!S_ISREG(st.st_mode)) {
    throw ImageError(FLOTILLA_E_INVALID,
                     std::string(what) + ": " + path.string() + " is not a regular file");
  }
  return fd;
}

std::string read_small_file(const fs::path &path, size_t max_bytes, std::string_view what) {
  UniqueFd fd = open_regular_file(path, what);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(std::string(what) + ": read " + path.string());
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      throw ImageError(FLOTILLA_E_INVALID, std::string(what) + ": " + path.string() +
                                               " is larger than " + std::to_string(max_bytes) +
                                               " bytes");
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string now_rfc3339() {
  std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

TempDir::~TempDir() {
  try {
    remove_tree(path_);
  } catch (...) {
    // Leftovers under the store's tmp/ are removed by the next gc().
  }
}

}  // namespace flotilla::runc
