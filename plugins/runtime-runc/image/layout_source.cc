#include "layout_source.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <vector>

#include "archive_ptr.h"
#include "digest.h"
#include "fs_ops.h"
#include "image_error.h"
#include "oci_manifest.h"
#include "unique_fd.h"

namespace flotilla::runc {

namespace fs = std::filesystem;

namespace {

constexpr size_t kLayoutFileMax = 64 * 1024;

std::string entry_name(const char *raw) {
  std::string_view s = raw;
  while (s.starts_with("./")) s.remove_prefix(2);
  return std::string(s);
}

}  // namespace

LayoutSource::LayoutSource(const fs::path &path, const fs::path &staging_dir,
                           const std::function<bool(const std::string &)> &already_have,
                           const Limits &limits, bool sync)
    : path_(path), staging_(staging_dir), limits_(limits) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      throw ImageError(FLOTILLA_E_NOT_FOUND, "image source " + path.string() +
                                                 " does not exist (expected an OCI image layout "
                                                 "directory or an oci-archive tar)");
    }
    throw_errno("image source " + path.string());
  }
  if (S_ISDIR(st.st_mode)) {
    describe_ = "image layout " + path.string();
    read_directory(path);
  } else if (S_ISREG(st.st_mode)) {
    archive_ = true;
    describe_ = "oci-archive " + path.string();
    read_archive(path, already_have, sync);
  } else {
    throw ImageError(FLOTILLA_E_INVALID, "image source " + path.string() +
                                             " is neither a directory nor a regular file");
  }
}

void LayoutSource::check_layout_file(std::string_view text) {
  nlohmann::json j = parse_json(text, describe_ + ": oci-layout");
  auto it = j.is_object() ? j.find("imageLayoutVersion") : j.end();
  if (it == j.end() || !it->is_string()) {
    throw ImageError(FLOTILLA_E_INVALID,
                     describe_ + ": oci-layout has no \"imageLayoutVersion\" string");
  }
  std::string version = it->get<std::string>();
  if (!version.starts_with("1.")) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED, describe_ + ": image layout version " + version +
                                                 " is not supported (1.x is)");
  }
}

void LayoutSource::read_directory(const fs::path &dir) {
  std::string layout;
  try {
    layout = read_small_file(dir / "oci-layout", kLayoutFileMax, describe_);
  } catch (const ImageError &e) {
    if (e.status() != FLOTILLA_E_NOT_FOUND) throw;
    throw ImageError(FLOTILLA_E_INVALID,
                     describe_ + ": not an OCI image layout (no oci-layout file)");
  }
  check_layout_file(layout);
  index_ = parse_json(read_small_file(dir / "index.json", limits_.max_json_bytes, describe_),
                      describe_ + ": index.json");
}

void LayoutSource::read_archive(const fs::path &file,
                                const std::function<bool(const std::string &)> &already_have,
                                bool sync) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("open " + describe_);
  ArchivePtr a(archive_read_new());
  if (!a) throw ImageError(FLOTILLA_E_NOMEM, "libarchive: out of memory");
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_format_tar(a.get());
  if (archive_read_open_fd(a.get(), fd.get(), 128 * 1024) != ARCHIVE_OK) {
    throw ImageError(FLOTILLA_E_INVALID,
                     describe_ + ": not a tar archive: " + archive_error_string(a.get()));
  }
  auto read_text = [&](const std::string &name, size_t max) {
    std::string out;
    char buf[16384];
    for (;;) {
      la_ssize_t n = archive_read_data(a.get(), buf, sizeof buf);
      if (n < 0) {
        throw ImageError(FLOTILLA_E_INVALID, describe_ + ": reading " + name +
                                                 " failed: " + archive_error_string(a.get()));
      }
      if (n == 0) break;
      if (out.size() + static_cast<size_t>(n) > max) {
        throw ImageError(FLOTILLA_E_INVALID, describe_ + ": " + name + " is larger than " +
                                                 std::to_string(max) + " bytes");
      }
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  };

  bool saw_layout = false, saw_index = false, saw_docker_manifest = false;
  std::vector<char> buf(256 * 1024);
  uint64_t entries = 0;
  for (;;) {
    struct archive_entry *e = nullptr;
    int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN || e == nullptr) {
      throw ImageError(FLOTILLA_E_INVALID, describe_ + ": reading the archive failed: " +
                                               archive_error_string(a.get()));
    }
    if (++entries > limits_.max_archive_entries) {
      throw ImageError(
          FLOTILLA_E_INVALID,
          describe_ + ": more than " + std::to_string(limits_.max_archive_entries) + " entries");
    }
    const char *raw = archive_entry_pathname(e);
    if (raw == nullptr || archive_entry_hardlink(e) != nullptr ||
        archive_entry_filetype(e) != AE_IFREG) {
      continue;
    }
    std::string name = entry_name(raw);
    if (name == "oci-layout") {
      check_layout_file(read_text(name, kLayoutFileMax));
      saw_layout = true;
    } else if (name == "index.json") {
      index_ = parse_json(read_text(name, limits_.max_json_bytes), describe_ + ": index.json");
      saw_index = true;
    } else if (name == "manifest.json") {
      saw_docker_manifest = true;
    } else if (name.starts_with("blobs/sha256/")) {
      std::string digest = "sha256:" + name.substr(13);
      if (!is_sha256_digest(digest) || already_have(digest)) continue;
      fs::path dest = staging_ / digest.substr(7);
      if (::access(dest.c_str(), F_OK) == 0) continue;  // listed twice
      // Only the name is known here; fetch() checks the size and reports a
      // content mismatch with the role the blob plays in the image.
      UniqueFd out(
          ::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444));
      if (!out) throw_errno("create " + dest.string());
      Sha256 hash;
      for (;;) {
        la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
        if (n < 0) {
          ::unlink(dest.c_str());
          throw ImageError(FLOTILLA_E_INVALID, describe_ + ": reading " + name +
                                                   " failed: " + archive_error_string(a.get()));
        }
        if (n == 0) break;
        hash.update(buf.data(), static_cast<size_t>(n));
        const char *p = buf.data();
        size_t left = static_cast<size_t>(n);
        while (left > 0) {
          ssize_t w = ::write(out.get(), p, left);
          if (w < 0) {
            if (errno == EINTR) continue;
            int err = errno;
            ::unlink(dest.c_str());
            throw_errno("write " + dest.string(), err);
          }
          p += w;
          left -= static_cast<size_t>(w);
        }
      }
      std::string actual = hash.finish();
      if (actual != digest) {
        ::unlink(dest.c_str());
        corrupt_[digest] = actual;
        continue;
      }
      if (sync && ::fsync(out.get()) != 0) throw_errno("fsync " + dest.string());
    }
  }
  if (!saw_index && saw_docker_manifest) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED,
                     describe_ +
                         ": this is a `docker save` archive without an OCI index.json; "
                         "convert it with `skopeo copy docker-archive:FILE oci-archive:OUT`");
  }
  if (!saw_layout) {
    throw ImageError(FLOTILLA_E_INVALID,
                     describe_ + ": not an OCI image layout (no oci-layout file)");
  }
  if (!saw_index) throw ImageError(FLOTILLA_E_INVALID, describe_ + ": no index.json");
}

void LayoutSource::missing(const BlobExpectation &expect, const std::string &detail) const {
  throw ImageError(FLOTILLA_E_NOT_FOUND, "blob " + expect.digest + " (" + expect.what +
                                             ") is missing from " + describe_ + " (" + detail +
                                             ")");
}

void LayoutSource::fetch(const BlobExpectation &expect, const fs::path &dest, bool sync) {
  std::string hex = digest_hex(expect.digest, expect.what);
  if (!archive_) {
    fs::path src = path_ / "blobs" / "sha256" / hex;
    UniqueFd fd;
    try {
      fd = open_regular_file(src, describe_);
    } catch (const ImageError &e) {
      if (e.status() == FLOTILLA_E_NOT_FOUND) missing(expect, "blobs/sha256/" + hex + " not found");
      throw;
    }
    copy_blob_verified(fd.get(), dest, expect, describe_, sync);
    return;
  }
  if (auto it = corrupt_.find(expect.digest); it != corrupt_.end()) {
    throw_blob_mismatch(expect, describe_,
                        "its content has digest " + it->second + ", expected " + expect.digest);
  }
  fs::path staged = staging_ / hex;
  struct stat st {};
  if (::stat(staged.c_str(), &st) != 0) {
    if (errno == ENOENT) missing(expect, "no entry blobs/sha256/" + hex);
    throw_errno("stat " + staged.string());
  }
  if (expect.size >= 0 && st.st_size != expect.size) {
    throw_blob_mismatch(expect, describe_,
                        "it has " + std::to_string(st.st_size) + " bytes, the descriptor says " +
                            std::to_string(expect.size));
  }
  if (::rename(staged.c_str(), dest.c_str()) != 0) {
    throw_errno("move " + staged.string() + " to " + dest.string());
  }
}

}  // namespace flotilla::runc
