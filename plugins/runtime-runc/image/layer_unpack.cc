#include "layer_unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "archive_ptr.h"
#include "digest.h"
#include "fs_ops.h"
#include "image_error.h"
#include "unique_fd.h"

namespace flotilla::runc {

namespace fs = std::filesystem;

namespace {

// Below the root, through relative symlinks that stay below it, never
// through "/" or magic links, never onto another mount.
constexpr uint64_t kResolveBeneath = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
constexpr uint64_t kResolveNoSymlinks = kResolveBeneath | RESOLVE_NO_SYMLINKS;
constexpr size_t kMaxNotes = 50;
constexpr size_t kBufferBytes = 128 * 1024;

int openat2_fd(int dirfd, const char *path, uint64_t flags, uint64_t resolve) {
  struct open_how how {};
  how.flags = flags | O_CLOEXEC;
  how.resolve = resolve;
  for (int attempt = 0;; ++attempt) {
    long fd = ::syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    // EAGAIN: a rename elsewhere on the filesystem raced the lookup.
    if (errno == EINTR || (errno == EAGAIN && attempt < 32)) continue;
    return -1;
  }
}

LayerCompression sniff_compression(std::string_view head) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(head[i]); };
  if (head.size() >= 2 && byte(0) == 0x1f && byte(1) == 0x8b) return LayerCompression::gzip;
  if (head.size() >= 4 && byte(0) == 0x28 && byte(1) == 0xb5 && byte(2) == 0x2f &&
      byte(3) == 0xfd) {
    return LayerCompression::zstd;
  }
  return LayerCompression::none;
}

// A layer blob file as a LayerSource.
class FileLayerSource : public LayerSource {
 public:
  FileLayerSource(int fd, std::string what) : fd_(fd), what_(std::move(what)), buf_(kBufferBytes) {}
  size_t read(const void **data) override {
    for (;;) {
      ssize_t n = ::read(fd_, buf_.data(), buf_.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno(what_ + ": read the layer blob");
      *data = buf_.data();
      return static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
  std::string what_;
  std::vector<char> buf_;
};

// The compressed bytes for libarchive's gzip/zstd filter: the first few
// read ahead (to sniff the compression), then the rest from the source. An
// exception of the source is kept (it must not cross libarchive's C) and
// rethrown by the unpacker, so that the source's own error is the one
// reported (a blob longer than its descriptor, a cancelled pull).
class CompressedInput {
 public:
  explicit CompressedInput(LayerSource &source) : source_(source) {
    while (head_.size() < 4 && !eof_) {
      const void *data = nullptr;
      size_t n = source_.read(&data);
      if (n == 0) eof_ = true;
      if (n > 0) head_.append(static_cast<const char *>(data), n);
    }
  }
  LayerCompression compression() const { return sniff_compression(head_); }

  static la_ssize_t read_cb(struct archive *a, void *self, const void **out) {
    auto *in = static_cast<CompressedInput *>(self);
    try {
      return static_cast<la_ssize_t>(in->next(out));
    } catch (const std::exception &e) {
      in->failure_ = std::current_exception();
      archive_set_error(a, EIO, "%s", e.what());
      return -1;
    }
  }
  void rethrow_failure() const {
    if (failure_) std::rethrow_exception(failure_);
  }

 private:
  size_t next(const void **out) {
    if (!head_sent_) {
      head_sent_ = true;
      if (!head_.empty()) {
        *out = head_.data();
        return head_.size();
      }
    }
    if (eof_) return 0;
    size_t n = source_.read(out);
    if (n == 0) eof_ = true;
    return n;
  }

  LayerSource &source_;
  std::string head_;
  bool head_sent_ = false;
  bool eof_ = false;
  std::exception_ptr failure_;
};

std::string join(const std::vector<std::string> &comps, size_t count) {
  std::string out;
  for (size_t i = 0; i < count && i < comps.size(); ++i) {
    if (!out.empty()) out.push_back('/');
    out += comps[i];
  }
  return out;
}

struct EntryPath {
  std::vector<std::string> comps;  // normalised, no "." or ".."
  std::string display;             // as written in the tar

  bool is_root() const { return comps.empty(); }
  const std::string &name() const { return comps.back(); }
  std::string parent() const { return join(comps, comps.size() - 1); }
  std::string full() const { return join(comps, comps.size()); }
};

// Pulls the decompressed tar stream out of the blob (libarchive "raw"
// format over a gzip/zstd filter) for the tar reader, hashing and counting
// every byte on the way: the hash is the diff_id, the count bounds a bomb.
class TarFeed {
 public:
  TarFeed(CompressedInput &input, LayerCompression compression, uint64_t limit,
          std::string_view what)
      : limit_(limit), what_(what) {
    src_.reset(archive_read_new());
    if (!src_) throw ImageError(FLOTILLA_E_NOMEM, "libarchive: out of memory");
    if (compression == LayerCompression::gzip) archive_read_support_filter_gzip(src_.get());
    if (compression == LayerCompression::zstd) archive_read_support_filter_zstd(src_.get());
    archive_read_support_format_raw(src_.get());
    struct archive_entry *entry = nullptr;
    if (archive_read_open(src_.get(), &input, nullptr, &CompressedInput::read_cb, nullptr) !=
            ARCHIVE_OK ||
        archive_read_next_header(src_.get(), &entry) != ARCHIVE_OK) {
      input.rethrow_failure();
      throw ImageError(FLOTILLA_E_INVALID, std::string(what) + ": cannot decompress (" +
                                               compression_name(compression) +
                                               "): " + archive_error_string(src_.get()));
    }
    buffer_.resize(kBufferBytes);
  }

  static la_ssize_t read_cb(struct archive *tar, void *self, const void **out) {
    auto *feed = static_cast<TarFeed *>(self);
    la_ssize_t n = feed->next(out);
    if (n < 0) archive_set_error(tar, EIO, "%s", feed->error_.c_str());
    return n;
  }

  // Reads what the tar reader left (trailing blocks): the diff_id covers
  // the whole stream.
  void drain() {
    const void *unused = nullptr;
    la_ssize_t n;
    while ((n = next(&unused)) > 0) {
    }
    if (n < 0) throw ImageError(FLOTILLA_E_INVALID, what_ + ": " + error_);
  }

  std::string diff_id() { return hash_.finish(); }
  uint64_t bytes() const { return bytes_; }
  // Set when the stream itself failed (decompression, limit); the tar
  // reader's own message is less precise then.
  const std::string &error() const { return error_; }
  bool over_limit() const { return over_limit_; }

 private:
  la_ssize_t next(const void **out) {
    if (eof_) return 0;
    if (!error_.empty()) return -1;
    la_ssize_t n = archive_read_data(src_.get(), buffer_.data(), buffer_.size());
    if (n < 0) {
      error_ = std::string("decompression failed: ") + archive_error_string(src_.get());
      return -1;
    }
    if (n == 0) {
      eof_ = true;
      return 0;
    }
    bytes_ += static_cast<uint64_t>(n);
    if (bytes_ > limit_) {
      over_limit_ = true;
      error_ = "the uncompressed layer is larger than the limit of " + std::to_string(limit_) +
               " bytes (a decompression bomb?)";
      return -1;
    }
    try {
      hash_.update(buffer_.data(), static_cast<size_t>(n));
    } catch (const std::exception &e) {
      error_ = e.what();
      return -1;
    }
    *out = buffer_.data();
    return n;
  }

  ArchivePtr src_;
  std::vector<char> buffer_;
  Sha256 hash_;
  uint64_t bytes_ = 0;
  uint64_t limit_;
  std::string what_;
  bool eof_ = false;
  bool over_limit_ = false;
  std::string error_;
};

class LayerWriter {
 public:
  LayerWriter(int root_fd, std::vector<UniqueFd> lowers, const UnpackLimits &limits,
              std::string_view what, archive *tar)
      : root_(root_fd), lowers_(std::move(lowers)), limits_(limits), what_(what), tar_(tar) {}

  void entry(struct archive_entry *e);
  void finish();
  uint64_t entries() const { return entries_; }
  uint64_t file_bytes() const { return file_bytes_; }
  std::vector<std::string> take_skipped_devices() { return std::move(skipped_devices_); }
  // Directories made for entries whose parents the layer does not list
  // ("" for the root when the layer has no "./"), sorted.
  std::vector<std::string> implicit_dirs() const {
    std::vector<std::string> out(implicit_dirs_.begin(), implicit_dirs_.end());
    if (!root_listed_) out.insert(out.begin(), std::string());
    return out;
  }
  std::vector<std::string> take_notes() {
    if (dropped_notes_ > 0) {
      notes_.push_back("... and " + std::to_string(dropped_notes_) + " more notes");
    }
    return std::move(notes_);
  }

 private:
  [[noreturn]] void refuse(const std::string &path, const std::string &why) const {
    throw ImageError(FLOTILLA_E_INVALID,
                     what_ + ": entry \"" + path + "\": " + why + "; refusing the layer");
  }
  [[noreturn]] void fail_errno(const std::string &path, const std::string &op, int err) const {
    try {
      throw_errno(op, err);
    } catch (const ImageError &e) {
      throw ImageError(e.status(), what_ + ": entry \"" + path + "\": " + e.what());
    }
  }
  void note(std::string text) {
    if (notes_.size() < kMaxNotes) {
      notes_.push_back(what_ + ": " + std::move(text));
    } else {
      ++dropped_notes_;
    }
  }

  EntryPath split(const char *raw, const char *role) const;
  UniqueFd parent_dir(const EntryPath &p);
  UniqueFd resolve_dir(const std::string &path, const EntryPath &p, uint64_t flags) const;
  std::optional<struct stat> lower_dir_stat(const std::string &path) const;
  std::optional<struct stat> existing(int parent, const EntryPath &p) const;
  void clear(int parent, const EntryPath &p, bool keep_dir);

  void make_dir(const EntryPath &p, struct archive_entry *e);
  void make_file(const EntryPath &p, struct archive_entry *e);
  void make_symlink(const EntryPath &p, struct archive_entry *e);
  void make_hardlink(const EntryPath &p, const char *target);
  void make_fifo(const EntryPath &p, struct archive_entry *e);
  void make_whiteout(const EntryPath &dir_of, const std::string &name, const EntryPath &p);
  void mark_opaque(int dir_fd, const std::string &path);
  void root_entry(const EntryPath &p, struct archive_entry *e);

  void set_owner_mode(int fd, const EntryPath &p, struct archive_entry *e);
  void set_xattrs(int fd, const EntryPath &p, struct archive_entry *e);
  void check_ids(const EntryPath &p, struct archive_entry *e) const;
  static struct timespec mtime_of(struct archive_entry *e);
  static void times_of(struct archive_entry *e, struct timespec times[2]);

  int root_;
  std::vector<UniqueFd> lowers_;
  const UnpackLimits &limits_;
  std::string what_;
  archive *tar_;
  uint64_t entries_ = 0;
  bool can_chown_ = ::geteuid() == 0;
  std::vector<std::string> notes_;
  size_t dropped_notes_ = 0;
  // Directory mtimes are set last: creating their children changes them.
  std::vector<std::pair<std::string, struct timespec>> dir_times_;
  std::set<std::string> whiteouts_;  // 0/0 devices this layer created
  uint64_t file_bytes_ = 0;
  std::vector<std::string> skipped_devices_;
  std::set<std::string> skipped_paths_;  // device nodes left out, for hard links to them
  std::set<std::string> implicit_dirs_;
  bool root_listed_ = false;
  void device_node(const EntryPath &p, struct archive_entry *e, bool block);
};

EntryPath LayerWriter::split(const char *raw, const char *role) const {
  EntryPath p;
  p.display = raw;
  std::string_view s = raw;
  if (s.size() > limits_.max_path_bytes) {
    refuse(p.display, std::string(role) + " is longer than " +
                          std::to_string(limits_.max_path_bytes) + " bytes");
  }
  if (s.starts_with('/')) refuse(p.display, std::string(role) + " is an absolute path");
  while (!s.empty()) {
    size_t slash = s.find('/');
    std::string_view c = s.substr(0, slash);
    s = slash == std::string_view::npos ? std::string_view() : s.substr(slash + 1);
    if (c.empty() || c == ".") continue;
    if (c == "..") refuse(p.display, std::string(role) + " contains a \"..\" component");
    if (c.size() > NAME_MAX) {
      refuse(p.display, std::string(role) + " has a component longer than " +
                            std::to_string(NAME_MAX) + " bytes");
    }
    p.comps.emplace_back(c);
  }
  if (p.comps.size() > limits_.max_path_depth) {
    refuse(p.display, std::string(role) + " is nested deeper than " +
                          std::to_string(limits_.max_path_depth) + " directories");
  }
  return p;
}

UniqueFd LayerWriter::resolve_dir(const std::string &path, const EntryPath &p,
                                  uint64_t flags) const {
  int fd = openat2_fd(root_, path.empty() ? "." : path.c_str(), flags, kResolveBeneath);
  if (fd >= 0) return UniqueFd(fd);
  int err = errno;
  switch (err) {
    case EXDEV:
      refuse(p.display, "\"" + path +
                            "\" leads outside the layer through \"..\" or an absolute symlink; "
                            "nothing may be written outside the snapshot");
    case ELOOP:
      refuse(p.display, "\"" + path + "\" goes through a symlink loop");
    case ENOTDIR:
      refuse(p.display, "\"" + path + "\" is not a directory");
    default:
      fail_errno(p.display, "resolve \"" + path + "\"", err);
  }
}

// The directory at path in the merged view of lowers (top first): the
// first lower that has the path decides.
std::optional<struct stat> lower_dir_stat(const std::vector<UniqueFd> &lowers,
                                          const std::string &path) {
  for (const auto &lower : lowers) {
    int fd = openat2_fd(lower.get(), path.c_str(), O_PATH | O_NOFOLLOW, kResolveNoSymlinks);
    if (fd < 0) continue;
    UniqueFd owned(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0) return std::nullopt;
    // A whiteout or file there: the directory is new in the merged view.
    if (!S_ISDIR(st.st_mode)) return std::nullopt;
    return st;
  }
  return std::nullopt;
}

std::optional<struct stat> LayerWriter::lower_dir_stat(const std::string &path) const {
  return runc::lower_dir_stat(lowers_, path);
}

// The directory an entry goes into, creating missing parents the way tar
// does. Parents the layer does not list take their owner, mode and mtime
// from the layers below, so that a layer shipping "usr/bin/x" without
// "usr/" does not change /usr in the container.
UniqueFd LayerWriter::parent_dir(const EntryPath &p) {
  const size_t depth = p.comps.size() - 1;
  std::string parent = join(p.comps, depth);
  int fd = openat2_fd(root_, parent.empty() ? "." : parent.c_str(), O_PATH | O_DIRECTORY,
                      kResolveBeneath);
  if (fd >= 0) return UniqueFd(fd);
  if (errno != ENOENT) return resolve_dir(parent, p, O_PATH | O_DIRECTORY);

  UniqueFd cur = resolve_dir("", p, O_PATH | O_DIRECTORY);
  for (size_t i = 0; i < depth; ++i) {
    std::string prefix = join(p.comps, i + 1);
    int next = openat2_fd(root_, prefix.c_str(), O_PATH | O_DIRECTORY, kResolveBeneath);
    if (next >= 0) {
      cur.reset(next);
      continue;
    }
    if (errno != ENOENT) {
      cur = resolve_dir(prefix, p, O_PATH | O_DIRECTORY);
      continue;
    }
    const std::string &comp = p.comps[i];
    if (::mkdirat(cur.get(), comp.c_str(), 0700) != 0) {
      if (errno == EEXIST) {
        refuse(p.display, "\"" + prefix + "\" is a dangling symlink");
      }
      fail_errno(p.display, "create directory \"" + prefix + "\"", errno);
    }
    UniqueFd dir(
        ::openat(cur.get(), comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir) fail_errno(p.display, "open directory \"" + prefix + "\"", errno);
    std::optional<struct stat> below = lower_dir_stat(prefix);
    mode_t mode = below ? (below->st_mode & 07777) : 0755;
    if (below && can_chown_ && ::fchown(dir.get(), below->st_uid, below->st_gid) != 0) {
      fail_errno(p.display, "chown \"" + prefix + "\"", errno);
    }
    if (::fchmod(dir.get(), mode) != 0) fail_errno(p.display, "chmod \"" + prefix + "\"", errno);
    if (below) dir_times_.emplace_back(prefix, below->st_mtim);
    implicit_dirs_.insert(prefix);
    cur.reset(::openat(cur.get(), comp.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!cur) fail_errno(p.display, "open directory \"" + prefix + "\"", errno);
  }
  return cur;
}

std::optional<struct stat> LayerWriter::existing(int parent, const EntryPath &p) const {
  struct stat st {};
  if (::fstatat(parent, p.name().c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return st;
  if (errno == ENOENT) return std::nullopt;
  fail_errno(p.display, "stat", errno);
}

// Makes room for an entry: a later entry of the same name replaces an
// earlier one (a directory only by a directory, which is kept and merged).
void LayerWriter::clear(int parent, const EntryPath &p, bool keep_dir) {
  std::optional<struct stat> st = existing(parent, p);
  if (!st) return;
  if (S_ISDIR(st->st_mode)) {
    if (keep_dir) return;
    try {
      remove_tree_at(parent, p.name().c_str());
    } catch (const ImageError &e) {
      throw ImageError(e.status(), what_ + ": entry \"" + p.display +
                                       "\": replacing the directory of that name: " + e.what());
    }
    return;
  }
  if (::unlinkat(parent, p.name().c_str(), 0) != 0) fail_errno(p.display, "replace", errno);
  whiteouts_.erase(p.full());
}

void LayerWriter::check_ids(const EntryPath &p, struct archive_entry *e) const {
  la_int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
  if (uid < 0 || uid >= 0xffffffffLL || gid < 0 || gid >= 0xffffffffLL) {
    refuse(p.display,
           "owner " + std::to_string(uid) + ":" + std::to_string(gid) + " is not a valid uid:gid");
  }
}

void LayerWriter::set_owner_mode(int fd, const EntryPath &p, struct archive_entry *e) {
  // chown first: it clears setuid/setgid bits and file capabilities.
  if (can_chown_) {
    if (::fchown(fd, static_cast<uid_t>(archive_entry_uid(e)),
                 static_cast<gid_t>(archive_entry_gid(e))) != 0) {
      fail_errno(p.display, "chown", errno);
    }
  }
  mode_t mode = archive_entry_perm(e) & 07777;
  if (::fchmod(fd, mode) != 0) fail_errno(p.display, "chmod", errno);
  if (archive_entry_filetype(e) == AE_IFREG && (mode & (S_ISUID | S_ISGID)) != 0) {
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(mode));
    note(p.full() + ": " + ((mode & S_ISUID) ? "setuid" : "setgid") + " file (mode " + octal +
         ", owner " + std::to_string(archive_entry_uid(e)) + ") kept");
  }
}

// Only xattrs that cannot reconfigure the host's view of the snapshot:
// user.* and file capabilities. trusted.* (notably trusted.overlay.*, which
// could redirect overlayfs lookups) and security.* labels are dropped.
void LayerWriter::set_xattrs(int fd, const EntryPath &p, struct archive_entry *e) {
  if (archive_entry_xattr_reset(e) == 0) return;
  const char *name = nullptr;
  const void *value = nullptr;
  size_t size = 0;
  size_t total = 0;
  while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
    total += size + std::strlen(name);
    if (total > limits_.max_xattr_bytes) {
      refuse(p.display,
             "extended attributes exceed " + std::to_string(limits_.max_xattr_bytes) + " bytes");
    }
    std::string_view n = name;
    if (!n.starts_with("user.") && n != "security.capability") {
      note(p.full() + ": dropped extended attribute " + std::string(n));
      continue;
    }
    if (::fsetxattr(fd, name, value, size, 0) != 0) {
      if (errno == ENOTSUP) {
        note(p.full() + ": the filesystem does not support extended attribute " + std::string(n));
        continue;
      }
      fail_errno(p.display, "set extended attribute " + std::string(n), errno);
    }
  }
}

struct timespec LayerWriter::mtime_of(struct archive_entry *e) {
  struct timespec ts {};
  if (archive_entry_mtime_is_set(e)) {
    ts.tv_sec = archive_entry_mtime(e);
    ts.tv_nsec = archive_entry_mtime_nsec(e);
  } else {
    ts.tv_nsec = UTIME_OMIT;
  }
  return ts;
}

void LayerWriter::times_of(struct archive_entry *e, struct timespec times[2]) {
  times[1] = mtime_of(e);
  if (archive_entry_atime_is_set(e)) {
    times[0].tv_sec = archive_entry_atime(e);
    times[0].tv_nsec = archive_entry_atime_nsec(e);
  } else {
    times[0] = times[1];
  }
}

void LayerWriter::mark_opaque(int dir_fd, const std::string &path) {
  if (::fsetxattr(dir_fd, kOverlayOpaqueXattr, "y", 1, 0) != 0) {
    int err = errno;
    throw ImageError(err == ENOTSUP ? FLOTILLA_E_UNSUPPORTED : FLOTILLA_E_PERMISSION,
                     what_ + ": cannot mark directory \"" + path + "\" opaque (" +
                         kOverlayOpaqueXattr + "): " + std::strerror(err) +
                         "; the image store needs root (CAP_SYS_ADMIN) and a data directory on "
                         "a filesystem with trusted.* extended attributes (ext4, xfs, btrfs)");
  }
}

void LayerWriter::entry(struct archive_entry *e) {
  if (++entries_ > limits_.max_entries) {
    throw ImageError(FLOTILLA_E_INVALID, what_ + ": more than " +
                                             std::to_string(limits_.max_entries) +
                                             " entries (a tar bomb?); refusing the layer");
  }
  const char *raw = archive_entry_pathname(e);
  if (raw == nullptr) {
    throw ImageError(FLOTILLA_E_INVALID,
                     what_ + ": entry " + std::to_string(entries_) + " has no readable name");
  }
  EntryPath p = split(raw, "path");
  if (archive_entry_size_is_set(e)) {
    la_int64_t size = archive_entry_size(e);
    if (size < 0 || static_cast<uint64_t>(size) > limits_.max_entry_bytes) {
      refuse(p.display, "declares a size of " + std::to_string(size) +
                            " bytes, more than the limit of " +
                            std::to_string(limits_.max_entry_bytes));
    }
  }
  check_ids(p, e);
  if (p.is_root()) return root_entry(p, e);

  const std::string &name = p.name();
  if (name.starts_with(".wh.")) {
    EntryPath dir = p;
    dir.comps.pop_back();
    if (name == ".wh..wh..opq") {
      // parent_dir() resolves (and if need be creates) the directory that
      // holds the marker; the marker itself is not created.
      UniqueFd holder = parent_dir(p);
      UniqueFd fd(::openat(holder.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!fd) fail_errno(p.display, "open directory", errno);
      mark_opaque(fd.get(), dir.is_root() ? "/" : dir.full());
      return;
    }
    if (name.starts_with(".wh..wh.")) {
      note(p.full() + ": ignored aufs metadata entry");
      return;
    }
    std::string target = name.substr(4);
    if (target.empty() || target == "." || target == "..") {
      refuse(p.display, "whiteout names no file");
    }
    return make_whiteout(dir, target, p);
  }

  if (const char *link = archive_entry_hardlink(e)) {
    EntryPath t = split(link, "hard link target");
    if (!t.is_root() && skipped_paths_.count(t.full())) {
      skipped_devices_.push_back(p.full() + " (hard link to " + t.full() + ")");
      skipped_paths_.insert(p.full());
      return;
    }
    return make_hardlink(p, link);
  }
  if (archive_entry_filetype(e) == AE_IFREG && archive_entry_size_is_set(e))
    file_bytes_ += static_cast<uint64_t>(archive_entry_size(e));

  switch (archive_entry_filetype(e)) {
    case AE_IFDIR:
      return make_dir(p, e);
    case AE_IFREG:
      return make_file(p, e);
    case AE_IFLNK:
      return make_symlink(p, e);
    case AE_IFIFO:
      return make_fifo(p, e);
    case AE_IFCHR:
      if (archive_entry_rdevmajor(e) == 0 && archive_entry_rdevminor(e) == 0) {
        // Already in overlay form.
        EntryPath dir = p;
        dir.comps.pop_back();
        return make_whiteout(dir, p.name(), p);
      }
      return device_node(p, e, false);
    case AE_IFBLK:
      return device_node(p, e, true);
    case AE_IFSOCK:
      note(p.full() + ": skipped a socket");
      return;
    default:
      refuse(p.display, "has an unknown file type");
  }
}

// Never mknod from an image: the runtime makes each container's /dev.
void LayerWriter::device_node(const EntryPath &p, struct archive_entry *e, bool block) {
  std::string kind = std::string(block ? "block" : "character") + " device " +
                     std::to_string(archive_entry_rdevmajor(e)) + ":" +
                     std::to_string(archive_entry_rdevminor(e));
  if (limits_.device_nodes == DeviceNodes::refuse)
    refuse(p.display, "is a " + kind +
                          "; device nodes are not allowed in image layers on this host "
                          "(plugin.runtime-runc.device_nodes = \"refuse\"; the runtime creates "
                          "/dev)");
  skipped_devices_.push_back(p.full() + " (" + kind + ")");
  skipped_paths_.insert(p.full());
}

void LayerWriter::root_entry(const EntryPath &p, struct archive_entry *e) {
  if (archive_entry_hardlink(e) != nullptr || archive_entry_filetype(e) != AE_IFDIR) {
    refuse(p.display, "the layer root must be a directory");
  }
  UniqueFd fd(::openat(root_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) fail_errno(p.display, "open layer root", errno);
  set_owner_mode(fd.get(), p, e);
  set_xattrs(fd.get(), p, e);
  dir_times_.emplace_back("", mtime_of(e));
  root_listed_ = true;
}

void LayerWriter::make_dir(const EntryPath &p, struct archive_entry *e) {
  UniqueFd parent = parent_dir(p);
  bool opaque = false;
  std::optional<struct stat> st = existing(parent.get(), p);
  if (st && !S_ISDIR(st->st_mode)) {
    // A whiteout and a directory of one name in one layer: the directory
    // replaces what is below, so it must hide the lower one's content.
    opaque = whiteouts_.count(p.full()) > 0;
    clear(parent.get(), p, false);
    st.reset();
  }
  if (!st && ::mkdirat(parent.get(), p.name().c_str(), 0700) != 0) {
    fail_errno(p.display, "create directory", errno);
  }
  UniqueFd fd(
      ::openat(parent.get(), p.name().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) fail_errno(p.display, "open directory", errno);
  set_owner_mode(fd.get(), p, e);
  set_xattrs(fd.get(), p, e);
  if (opaque) mark_opaque(fd.get(), p.full());
  dir_times_.emplace_back(p.full(), mtime_of(e));
  implicit_dirs_.erase(p.full());
}

void LayerWriter::make_file(const EntryPath &p, struct archive_entry *e) {
  UniqueFd parent = parent_dir(p);
  clear(parent.get(), p, false);
  UniqueFd fd(::openat(parent.get(), p.name().c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) fail_errno(p.display, "create file", errno);
  la_int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : 0;
  // Writeback starts as the file is written (every kWritebackChunk and at
  // its end), so that the import's syncfs finds little left to write.
  la_int64_t written_back = 0;
  for (;;) {
    const void *buf = nullptr;
    size_t len = 0;
    la_int64_t offset = 0;
    int r = archive_read_data_block(tar_, &buf, &len, &offset);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) {
      throw ImageError(FLOTILLA_E_INVALID,
                       what_ + ": entry \"" + p.display +
                           "\": reading its data failed: " + archive_error_string(tar_));
    }
    if (offset < 0 || static_cast<uint64_t>(offset) + len > static_cast<uint64_t>(size)) {
      refuse(p.display, "has data beyond its declared size of " + std::to_string(size));
    }
    const char *data = static_cast<const char *>(buf);
    while (len > 0) {
      ssize_t n = ::pwrite(fd.get(), data, len, offset);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno(p.display, "write", errno);
      }
      data += n;
      len -= static_cast<size_t>(n);
      offset += n;
    }
    if (offset - written_back >= kWritebackChunk) {
      start_writeback(fd.get(), written_back, offset - written_back);
      written_back = offset;
    }
  }
  // Sparse files end in a hole that no data block covers.
  if (::ftruncate(fd.get(), size) != 0) fail_errno(p.display, "truncate", errno);
  if (size > written_back) start_writeback(fd.get(), written_back, 0);
  set_owner_mode(fd.get(), p, e);
  set_xattrs(fd.get(), p, e);
  struct timespec times[2];
  times_of(e, times);
  if (::futimens(fd.get(), times) != 0) fail_errno(p.display, "set times", errno);
}

void LayerWriter::make_symlink(const EntryPath &p, struct archive_entry *e) {
  const char *target = archive_entry_symlink(e);
  if (target == nullptr || *target == '\0') refuse(p.display, "symlink has no target");
  if (std::strlen(target) > limits_.max_path_bytes) {
    refuse(p.display,
           "symlink target is longer than " + std::to_string(limits_.max_path_bytes) + " bytes");
  }
  UniqueFd parent = parent_dir(p);
  clear(parent.get(), p, false);
  // The target is stored, not followed: it is resolved inside the
  // container's root at run time. A later entry that tries to go through it
  // is checked by parent_dir().
  if (::symlinkat(target, parent.get(), p.name().c_str()) != 0) {
    fail_errno(p.display, "create symlink", errno);
  }
  if (can_chown_ &&
      ::fchownat(parent.get(), p.name().c_str(), static_cast<uid_t>(archive_entry_uid(e)),
                 static_cast<gid_t>(archive_entry_gid(e)), AT_SYMLINK_NOFOLLOW) != 0) {
    fail_errno(p.display, "chown symlink", errno);
  }
  struct timespec times[2];
  times_of(e, times);
  if (::utimensat(parent.get(), p.name().c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
    fail_errno(p.display, "set symlink times", errno);
  }
}

void LayerWriter::make_hardlink(const EntryPath &p, const char *target_raw) {
  EntryPath t = split(target_raw, "hard link target");
  if (t.is_root()) refuse(p.display, "hard link to the layer root");
  std::string tparent_path = t.parent();
  int tfd = openat2_fd(root_, tparent_path.empty() ? "." : tparent_path.c_str(),
                       O_PATH | O_DIRECTORY, kResolveBeneath);
  if (tfd < 0) {
    if (errno == ENOENT) {
      refuse(p.display, "hard link target \"" + t.display +
                            "\" has not been extracted (a hard link may only point to an "
                            "earlier entry of the same layer)");
    }
    if (errno == EXDEV) {
      refuse(p.display, "hard link target \"" + t.display + "\" is outside the layer");
    }
    fail_errno(p.display, "resolve hard link target \"" + t.display + "\"", errno);
  }
  UniqueFd tparent(tfd);
  struct stat tst {};
  if (::fstatat(tparent.get(), t.name().c_str(), &tst, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) {
      refuse(p.display, "hard link target \"" + t.display +
                            "\" has not been extracted (a hard link may only point to an "
                            "earlier entry of the same layer)");
    }
    fail_errno(p.display, "stat hard link target", errno);
  }
  if (S_ISDIR(tst.st_mode)) refuse(p.display, "hard link to directory \"" + t.display + "\"");

  UniqueFd parent = parent_dir(p);
  if (std::optional<struct stat> st = existing(parent.get(), p)) {
    if (st->st_dev == tst.st_dev && st->st_ino == tst.st_ino) return;
    clear(parent.get(), p, false);
  }
  // flags 0: a symlink target is linked itself, never followed.
  if (::linkat(tparent.get(), t.name().c_str(), parent.get(), p.name().c_str(), 0) != 0) {
    fail_errno(p.display, "create hard link to \"" + t.display + "\"", errno);
  }
}

void LayerWriter::make_fifo(const EntryPath &p, struct archive_entry *e) {
  UniqueFd parent = parent_dir(p);
  clear(parent.get(), p, false);
  const char *name = p.name().c_str();
  if (::mknodat(parent.get(), name, S_IFIFO | 0600, 0) != 0) {
    fail_errno(p.display, "create fifo", errno);
  }
  if (can_chown_ &&
      ::fchownat(parent.get(), name, static_cast<uid_t>(archive_entry_uid(e)),
                 static_cast<gid_t>(archive_entry_gid(e)), AT_SYMLINK_NOFOLLOW) != 0) {
    fail_errno(p.display, "chown fifo", errno);
  }
  // The fifo was just created in a directory only this unpack writes to;
  // AT_SYMLINK_NOFOLLOW is belt and braces where glibc supports it.
  mode_t mode = archive_entry_perm(e) & 07777;
  if (::fchmodat(parent.get(), name, mode, AT_SYMLINK_NOFOLLOW) != 0) {
    if ((errno != ENOTSUP && errno != ENOSYS) || ::fchmodat(parent.get(), name, mode, 0) != 0) {
      fail_errno(p.display, "chmod fifo", errno);
    }
  }
  struct timespec times[2];
  times_of(e, times);
  if (::utimensat(parent.get(), name, times, AT_SYMLINK_NOFOLLOW) != 0) {
    fail_errno(p.display, "set fifo times", errno);
  }
}

// ".wh.<name>" in dir: a 0/0 character device <name>, which overlayfs shows
// as "deleted". The OCI spec applies whiteouts to lower layers only, so a
// same-named entry of this layer wins; if that entry is a directory it must
// hide the lower one's content instead.
void LayerWriter::make_whiteout(const EntryPath &dir, const std::string &name, const EntryPath &p) {
  EntryPath target = dir;
  target.comps.push_back(name);
  target.display = p.display;
  UniqueFd parent = parent_dir(target);
  if (std::optional<struct stat> st = existing(parent.get(), target)) {
    if (S_ISDIR(st->st_mode)) {
      UniqueFd fd(
          ::openat(parent.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!fd) fail_errno(p.display, "open directory", errno);
      mark_opaque(fd.get(), target.full());
    }
    return;
  }
  if (::mknodat(parent.get(), name.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0) {
    int err = errno;
    throw ImageError(err == EPERM ? FLOTILLA_E_PERMISSION : FLOTILLA_E_IO,
                     what_ + ": entry \"" + p.display + "\": cannot create the overlay whiteout " +
                         target.full() + " (0/0 character device): " + std::strerror(err) +
                         "; the image store needs root (CAP_MKNOD)");
  }
  whiteouts_.insert(target.full());
}

void LayerWriter::finish() {
  for (const auto &[path, mtime] : dir_times_) {
    if (mtime.tv_nsec == UTIME_OMIT) continue;
    int fd = openat2_fd(root_, path.empty() ? "." : path.c_str(),
                        O_RDONLY | O_DIRECTORY | O_NOFOLLOW, kResolveNoSymlinks);
    if (fd < 0) continue;  // replaced by a later entry
    UniqueFd owned(fd);
    struct timespec times[2] = {mtime, mtime};
    if (::futimens(fd, times) != 0) fail_errno(path, "set directory times", errno);
  }
}

}  // namespace

UnpackResult unpack_layer(const fs::path &blob_path, LayerCompression announced,
                          const fs::path &dest, const std::vector<fs::path> &lower_dirs,
                          const UnpackLimits &limits, std::string_view what) {
  UniqueFd blob(::open(blob_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!blob) throw_errno(std::string(what) + ": open " + blob_path.string());
  FileLayerSource source(blob.get(), std::string(what));
  return unpack_layer_from(source, announced, dest, lower_dirs, limits, what);
}

UnpackResult unpack_layer_from(LayerSource &source, LayerCompression announced,
                               const fs::path &dest, const std::vector<fs::path> &lower_dirs,
                               const UnpackLimits &limits, std::string_view what) {
  std::vector<UniqueFd> lowers;
  for (const auto &dir : lower_dirs) {
    UniqueFd fd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw_errno(std::string(what) + ": open lower snapshot " + dir.string());
    lowers.push_back(std::move(fd));
  }

  if (::mkdir(dest.c_str(), 0755) != 0) {
    throw_errno(std::string(what) + ": create snapshot directory " + dest.string());
  }
  UnpackResult result;
  try {
    UniqueFd root(::open(dest.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!root) throw_errno(std::string(what) + ": open " + dest.string());
    // Until the layer says otherwise, the root looks like the one below.
    if (::fchmod(root.get(), 0755) != 0)
      throw_errno(std::string(what) + ": chmod " + dest.string());
    if (!lowers.empty()) {
      struct stat st {};
      if (::fstat(lowers.front().get(), &st) == 0) {
        if (::geteuid() == 0 && ::fchown(root.get(), st.st_uid, st.st_gid) != 0) {
          throw_errno(std::string(what) + ": chown " + dest.string());
        }
        if (::fchmod(root.get(), st.st_mode & 07777) != 0) {
          throw_errno(std::string(what) + ": chmod " + dest.string());
        }
      }
    }

    CompressedInput input(source);
    LayerCompression actual = input.compression();
    if (actual != announced) {
      result.notes.push_back(std::string(what) + ": media type says " +
                             compression_name(announced) + " but the data is " +
                             compression_name(actual) + "; unpacked as " +
                             compression_name(actual));
    }
    TarFeed feed(input, actual, limits.max_layer_bytes, what);

    ArchivePtr tar(archive_read_new());
    if (!tar) throw ImageError(FLOTILLA_E_NOMEM, "libarchive: out of memory");
    archive_read_support_format_tar(tar.get());
    archive_read_support_format_empty(tar.get());
    if (archive_read_open(tar.get(), &feed, nullptr, &TarFeed::read_cb, nullptr) != ARCHIVE_OK) {
      input.rethrow_failure();
      throw ImageError(FLOTILLA_E_INVALID,
                       std::string(what) + ": not a tar archive: " +
                           (feed.error().empty() ? archive_error_string(tar.get()) : feed.error()));
    }
    LayerWriter writer(root.get(), std::move(lowers), limits, what, tar.get());
    try {
      for (;;) {
        struct archive_entry *entry = nullptr;
        int r = archive_read_next_header(tar.get(), &entry);
        if (r == ARCHIVE_EOF) break;
        if (r < ARCHIVE_WARN || (r == ARCHIVE_WARN && entry == nullptr)) {
          throw ImageError(
              FLOTILLA_E_INVALID,
              std::string(what) + ": reading the tar failed after " +
                  std::to_string(writer.entries()) + " entries: " +
                  (feed.error().empty() ? archive_error_string(tar.get()) : feed.error()));
        }
        // A pax UTF-8 name that the process' locale (C, in the daemon) cannot
        // represent: libarchive keeps its bytes as they are, which is what a
        // container wants, and warns. Other warnings are worth a note.
        if (r == ARCHIVE_WARN) {
          const char *warning = archive_error_string(tar.get());
          if (warning != nullptr && std::strstr(warning, "can't be converted") == nullptr) {
            result.notes.push_back(std::string(what) + ": " + warning);
          }
        }
        writer.entry(entry);
      }
      writer.finish();
      feed.drain();
    } catch (...) {
      input.rethrow_failure();
      throw;
    }
    result.entries = writer.entries();
    result.implicit_dirs = writer.implicit_dirs();
    result.tar_bytes = feed.bytes();
    result.diff_id = feed.diff_id();
    result.unpacked_bytes = writer.file_bytes();
    result.skipped_devices = writer.take_skipped_devices();
    for (auto &n : writer.take_notes()) result.notes.push_back(std::move(n));
  } catch (...) {
    try {
      remove_tree(dest);
    } catch (...) {
      // The caller's temp directory removal retries; the first error is
      // the one worth reporting.
    }
    throw;
  }
  return result;
}

LayerFootprint layer_footprint(const std::filesystem::path &blob_path, uint64_t block_size,
                               uint64_t stop_above, const UnpackLimits &limits,
                               std::string_view what) {
  if (block_size == 0) block_size = 4096;
  UniqueFd blob(::open(blob_path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!blob) throw_errno(std::string(what) + ": open " + blob_path.string());
  FileLayerSource source(blob.get(), std::string(what));
  CompressedInput input(source);
  TarFeed feed(input, input.compression(), limits.max_layer_bytes, what);
  ArchivePtr tar(archive_read_new());
  if (!tar) throw ImageError(FLOTILLA_E_NOMEM, "libarchive: out of memory");
  archive_read_support_format_tar(tar.get());
  archive_read_support_format_empty(tar.get());
  if (archive_read_open(tar.get(), &feed, nullptr, &TarFeed::read_cb, nullptr) != ARCHIVE_OK) {
    throw ImageError(FLOTILLA_E_INVALID,
                     std::string(what) + ": not a tar archive: " +
                         (feed.error().empty() ? archive_error_string(tar.get()) : feed.error()));
  }
  LayerFootprint out;
  for (;;) {
    struct archive_entry *entry = nullptr;
    int r = archive_read_next_header(tar.get(), &entry);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN || entry == nullptr) {
      throw ImageError(FLOTILLA_E_INVALID,
                       std::string(what) + ": reading the tar failed after " +
                           std::to_string(out.entries) + " entries: " +
                           (feed.error().empty() ? archive_error_string(tar.get()) : feed.error()));
    }
    ++out.entries;
    if (archive_entry_filetype(entry) == AE_IFREG && archive_entry_hardlink(entry) == nullptr &&
        archive_entry_size_is_set(entry) && archive_entry_size(entry) > 0) {
      uint64_t size = static_cast<uint64_t>(archive_entry_size(entry));
      out.file_bytes += size;
      out.disk_bytes += (size + block_size - 1) / block_size * block_size;
    } else {
      out.disk_bytes += block_size;
    }
    if (stop_above > 0 && out.disk_bytes > stop_above) break;
    if (out.entries > limits.max_entries) break;  // unpacking refuses it, with the limit
  }
  return out;
}

void adopt_lower_attributes(const fs::path &rootfs, const std::vector<std::string> &implicit_dirs,
                            const std::vector<fs::path> &lower_dirs, std::string_view what) {
  if (lower_dirs.empty() || implicit_dirs.empty()) return;
  std::vector<UniqueFd> lowers;
  for (const auto &dir : lower_dirs) {
    UniqueFd fd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw_errno(std::string(what) + ": open lower snapshot " + dir.string());
    lowers.push_back(std::move(fd));
  }
  UniqueFd root(::open(rootfs.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!root) throw_errno(std::string(what) + ": open " + rootfs.string());
  const bool can_chown = ::geteuid() == 0;
  for (const auto &path : implicit_dirs) {
    std::optional<struct stat> below;
    UniqueFd dir;
    if (path.empty()) {
      // The root: as unpack_layer gives it, the top lower's owner and mode.
      struct stat st {};
      if (::fstat(lowers.front().get(), &st) == 0) below = st;
      dir.reset(::dup(root.get()));
    } else {
      below = lower_dir_stat(lowers, path);
      // Only what is still a directory of this layer (a later entry may
      // have replaced it), never through a symlink.
      int fd = openat2_fd(root.get(), path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW,
                          kResolveNoSymlinks);
      if (fd >= 0) dir.reset(fd);
    }
    if (!below || !dir) continue;
    std::string where = std::string(what) + ": directory \"" + path + "\"";
    if (can_chown && ::fchown(dir.get(), below->st_uid, below->st_gid) != 0)
      throw_errno(where + ": chown");
    if (::fchmod(dir.get(), below->st_mode & 07777) != 0) throw_errno(where + ": chmod");
    if (!path.empty()) {
      struct timespec times[2] = {below->st_mtim, below->st_mtim};
      if (::futimens(dir.get(), times) != 0) throw_errno(where + ": set times");
    }
  }
}

}  // namespace flotilla::runc
