// Helpers for the image store tests: private temp trees, tars written with
// libarchive, OCI layouts assembled blob by blob, and tree listings to
// prove that nothing outside a snapshot changed.
#pragma once

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <locale.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "digest.h"
#include "host_arch.h"
#include "oci_manifest.h"

namespace flotilla::runc::testing {

namespace fs = std::filesystem;
using nlohmann::json;

// A directory under $TMPDIR removed with all it holds when the test ends,
// also when an assertion fails.
class TempTree {
 public:
  TempTree() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-image-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempTree() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempTree(const TempTree &) = delete;
  TempTree &operator=(const TempTree &) = delete;
  const fs::path &path() const { return path_; }
  fs::path operator/(const std::string &sub) const { return path_ / sub; }

 private:
  fs::path path_;
};

using flotilla::testing::foreign_arch;
using flotilla::testing::host_arch;

inline void write_file(const fs::path &p, const std::string &content) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

inline std::string read_file(const fs::path &p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Owner, mtime and xattrs of a tar entry.
struct TarMeta {
  int64_t uid = 0;
  int64_t gid = 0;
  time_t mtime = 1'700'000'000;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

// Tar archives built entry by entry with libarchive.
class TarBuilder {
 public:
  using Meta = TarMeta;

  TarBuilder &dir(const std::string &path, int mode = 0755, Meta meta = {}) {
    return add(path, AE_IFDIR, mode, "", meta);
  }
  TarBuilder &file(const std::string &path, const std::string &content, int mode = 0644,
                   Meta meta = {}) {
    return add(path, AE_IFREG, mode, content, meta);
  }
  TarBuilder &symlink(const std::string &path, const std::string &target, Meta meta = {}) {
    Entry &e = push(path, AE_IFLNK, 0777, "", meta);
    e.link = target;
    return *this;
  }
  TarBuilder &hardlink(const std::string &path, const std::string &target) {
    Entry &e = push(path, AE_IFREG, 0644, "", {});
    e.hardlink = target;
    return *this;
  }
  TarBuilder &device(const std::string &path, bool block, unsigned major, unsigned minor) {
    Entry &e = push(path, block ? AE_IFBLK : AE_IFCHR, 0600, "", {});
    e.major = major;
    e.minor = minor;
    return *this;
  }
  TarBuilder &fifo(const std::string &path, int mode = 0644) {
    return add(path, AE_IFIFO, mode, "", {});
  }

  // Names are UTF-8 and go into pax records as such (default: raw bytes).
  TarBuilder &utf8_names() {
    utf8_names_ = true;
    return *this;
  }

  // format: "pax" (default) or "ustar".
  std::string finish(LayerCompression compression = LayerCompression::none,
                     const std::string &format = "pax") const {
    std::string out;
    // In a UTF-8 locale (for this thread only) libarchive writes names as
    // UTF-8 "path" pax records, as Go's archive/tar does; in the C locale
    // it marks them as raw bytes.
    struct ThreadLocale {
      locale_t utf8 = nullptr, old = nullptr;
      explicit ThreadLocale(bool on) {
        if (!on) return;
        utf8 = ::newlocale(LC_ALL_MASK, "C.UTF-8", nullptr);
        if (utf8 == nullptr) throw std::runtime_error("no C.UTF-8 locale");
        old = ::uselocale(utf8);
      }
      ~ThreadLocale() {
        if (utf8 == nullptr) return;
        ::uselocale(old);
        ::freelocale(utf8);
      }
    } locale(utf8_names_);
    std::unique_ptr<archive, decltype(&archive_write_free)> a(archive_write_new(),
                                                              &archive_write_free);
    if (format == "ustar") {
      archive_write_set_format_ustar(a.get());
    } else {
      archive_write_set_format_pax(a.get());
    }
    if (compression == LayerCompression::gzip) {
      archive_write_add_filter_gzip(a.get());
      // No time in the gzip header: the same entries give the same blob
      // (and digest) whenever they are built, also across a second.
      archive_write_set_filter_option(a.get(), "gzip", "timestamp", nullptr);
    }
    if (compression == LayerCompression::zstd) archive_write_add_filter_zstd(a.get());
    archive_write_set_bytes_in_last_block(a.get(), 1);
    auto write_cb = [](struct archive *, void *client, const void *buf, size_t len) -> la_ssize_t {
      static_cast<std::string *>(client)->append(static_cast<const char *>(buf), len);
      return static_cast<la_ssize_t>(len);
    };
    if (archive_write_open(a.get(), &out, nullptr, write_cb, nullptr) != ARCHIVE_OK) {
      throw std::runtime_error(archive_error_string(a.get()));
    }
    for (const auto &e : entries_) {
      std::unique_ptr<archive_entry, decltype(&archive_entry_free)> ae(archive_entry_new(),
                                                                       &archive_entry_free);
      archive_entry_set_pathname(ae.get(), e.path.c_str());
      archive_entry_set_filetype(ae.get(), e.type);
      archive_entry_set_perm(ae.get(), e.mode);
      archive_entry_set_uid(ae.get(), e.meta.uid);
      archive_entry_set_gid(ae.get(), e.meta.gid);
      archive_entry_set_mtime(ae.get(), e.meta.mtime, 0);
      if (e.type == AE_IFLNK) archive_entry_set_symlink(ae.get(), e.link.c_str());
      if (!e.hardlink.empty()) archive_entry_set_hardlink(ae.get(), e.hardlink.c_str());
      if (e.type == AE_IFBLK || e.type == AE_IFCHR) {
        archive_entry_set_rdevmajor(ae.get(), e.major);
        archive_entry_set_rdevminor(ae.get(), e.minor);
      }
      for (const auto &[k, v] : e.meta.xattrs) {
        archive_entry_xattr_add_entry(ae.get(), k.c_str(), v.data(), v.size());
      }
      archive_entry_set_size(ae.get(), e.type == AE_IFREG && e.hardlink.empty()
                                           ? static_cast<la_int64_t>(e.content.size())
                                           : 0);
      // ARCHIVE_WARN: a name that is not valid in the C locale, written as
      // raw bytes, which is what the tests want.
      if (archive_write_header(a.get(), ae.get()) < ARCHIVE_WARN) {
        throw std::runtime_error(std::string("tar header ") + e.path + ": " +
                                 archive_error_string(a.get()));
      }
      if (!e.content.empty()) {
        archive_write_data(a.get(), e.content.data(), e.content.size());
      }
    }
    archive_write_close(a.get());
    return out;
  }

 private:
  struct Entry {
    std::string path;
    unsigned type;
    int mode;
    std::string content;
    Meta meta;
    std::string link, hardlink;
    unsigned major = 0, minor = 0;
  };
  Entry &push(const std::string &path, unsigned type, int mode, const std::string &content,
              const Meta &meta) {
    entries_.push_back({path, type, mode, content, meta, {}, {}, 0, 0});
    return entries_.back();
  }
  TarBuilder &add(const std::string &path, unsigned type, int mode, const std::string &content,
                  const Meta &meta) {
    push(path, type, mode, content, meta);
    return *this;
  }
  std::vector<Entry> entries_;
  bool utf8_names_ = false;
};

// Rewrites the size field of the ustar header at offset (base-256, as tar
// does for sizes that octal cannot hold) and fixes the header checksum.
inline std::string patch_tar_size(std::string tar, size_t offset, int64_t size) {
  unsigned char *h = reinterpret_cast<unsigned char *>(tar.data() + offset);
  uint64_t v = static_cast<uint64_t>(size);
  h[124] = size < 0 ? 0xff : 0x80;
  for (int i = 11; i >= 1; --i) {
    h[124 + i] = static_cast<unsigned char>(v & 0xff);
    v >>= 8;
  }
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) sum += h[i];
  std::snprintf(reinterpret_cast<char *>(h + 148), 8, "%06o", sum);
  h[155] = ' ';
  return tar;
}

struct BuiltLayer {
  std::string bytes;  // the blob
  std::string media_type;
  std::string diff_id;  // sha256 of the uncompressed tar
};

inline BuiltLayer make_layer(const TarBuilder &tar,
                             LayerCompression compression = LayerCompression::gzip,
                             bool docker = false) {
  BuiltLayer l;
  l.diff_id = sha256_of(tar.finish(LayerCompression::none));
  l.bytes = tar.finish(compression);
  switch (compression) {
    case LayerCompression::none:
      l.media_type = docker ? "application/vnd.docker.image.rootfs.diff.tar"
                            : std::string(media_type::kOciLayer);
      break;
    case LayerCompression::gzip:
      l.media_type = docker ? std::string(media_type::kDockerLayerGzip)
                            : std::string(media_type::kOciLayerGzip);
      break;
    case LayerCompression::zstd:
      l.media_type = std::string(media_type::kOciLayerZstd);
      break;
  }
  return l;
}

// An OCI image layout written blob by blob.
class LayoutBuilder {
 public:
  explicit LayoutBuilder(fs::path dir) : dir_(std::move(dir)) {
    fs::create_directories(dir_ / "blobs" / "sha256");
    write_file(dir_ / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  }

  json add_blob(const std::string &bytes, const std::string &media_type) {
    std::string digest = sha256_of(bytes);
    write_file(blob_path(digest), bytes);
    return {{"mediaType", media_type}, {"digest", digest}, {"size", bytes.size()}};
  }
  fs::path blob_path(const std::string &digest) const {
    return dir_ / "blobs" / "sha256" / digest.substr(7);
  }

  // Writes config and manifest; returns the manifest's descriptor (with a
  // platform) for an index.
  json add_image(const std::vector<BuiltLayer> &layers, json config_section = json::object(),
                 bool docker = false, const std::string &arch = host_arch(),
                 std::vector<std::string> diff_ids = {}) {
    json layer_descs = json::array();
    if (diff_ids.empty()) {
      for (const auto &l : layers) diff_ids.push_back(l.diff_id);
    }
    for (const auto &l : layers) layer_descs.push_back(add_blob(l.bytes, l.media_type));
    json config = {{"architecture", arch},
                   {"os", "linux"},
                   {"created", "2024-01-02T03:04:05Z"},
                   {"config", config_section},
                   {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}};
    json config_desc = add_blob(config.dump(), docker ? std::string(media_type::kDockerConfig)
                                                      : std::string(media_type::kOciConfig));
    std::string mt =
        docker ? std::string(media_type::kDockerManifest) : std::string(media_type::kOciManifest);
    json manifest = {
        {"schemaVersion", 2}, {"mediaType", mt}, {"config", config_desc}, {"layers", layer_descs}};
    json desc = add_blob(manifest.dump(), mt);
    desc["platform"] = {{"architecture", arch}, {"os", "linux"}};
    return desc;
  }

  // index.json listing manifests; ref_names (if given) annotate them.
  void write_index(std::vector<json> manifests, const std::vector<std::string> &ref_names = {}) {
    for (size_t i = 0; i < ref_names.size() && i < manifests.size(); ++i) {
      manifests[i]["annotations"] = {{std::string(kRefNameAnnotation), ref_names[i]}};
    }
    json index = {
        {"schemaVersion", 2}, {"mediaType", media_type::kOciIndex}, {"manifests", manifests}};
    write_file(dir_ / "index.json", index.dump());
  }

  const fs::path &dir() const { return dir_; }

 private:
  fs::path dir_;
};

// A tar of the layout, as oci-archive.
inline void write_oci_archive(const fs::path &layout, const fs::path &out) {
  TarBuilder tar;
  tar.file("oci-layout", read_file(layout / "oci-layout"));
  tar.file("index.json", read_file(layout / "index.json"));
  tar.dir("blobs").dir("blobs/sha256");
  for (const auto &e : fs::directory_iterator(layout / "blobs" / "sha256")) {
    tar.file("blobs/sha256/" + e.path().filename().string(), read_file(e.path()));
  }
  write_file(out, tar.finish());
}

// Every path below root (not following symlinks) with its type, mode,
// owner, size, link target and, for small files, content.
inline std::map<std::string, std::string> list_tree(const fs::path &root) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec);
       it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) continue;
    std::ostringstream d;
    d << std::oct << st.st_mode << std::dec << " " << st.st_uid << ":" << st.st_gid << " "
      << st.st_size;
    if (S_ISLNK(st.st_mode)) d << " -> " << fs::read_symlink(it->path()).string();
    if (S_ISREG(st.st_mode) && st.st_size < 65536) d << " [" << read_file(it->path()) << "]";
    out[fs::relative(it->path(), root).string()] = d.str();
  }
  return out;
}

// Whiteouts need mknod of 0/0 and trusted.* xattrs on the test's
// filesystem. Returns why not, or "" when they work.
inline std::string whiteout_support_problem(const fs::path &dir) {
  if (::geteuid() != 0) return "whiteouts need root (CAP_MKNOD, CAP_SYS_ADMIN)";
  fs::path dev = dir / "probe-whiteout";
  if (::mknod(dev.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0) {
    return "mknod of a 0/0 character device fails in " + dir.string() + ": " + std::strerror(errno);
  }
  ::unlink(dev.c_str());
  fs::path probe = dir / "probe-xattr";
  fs::create_directory(probe);
  int rc = ::setxattr(probe.c_str(), "trusted.overlay.opaque", "y", 1, 0);
  int err = errno;
  fs::remove(probe);
  if (rc != 0) {
    return "trusted.* xattrs are not supported in " + dir.string() + ": " + std::strerror(err);
  }
  return "";
}

inline std::string get_xattr(const fs::path &p, const char *name) {
  char buf[256];
  ssize_t n = ::lgetxattr(p.c_str(), name, buf, sizeof buf);
  return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
}

inline bool is_whiteout(const fs::path &p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 0 &&
         minor(st.st_rdev) == 0;
}

}  // namespace flotilla::runc::testing

#define SKIP_WITH_REASON(why)                    \
  do {                                           \
    std::printf("SKIPPED: %s\n", (why).c_str()); \
    GTEST_SKIP() << "SKIPPED: " << (why);        \
  } while (0)
