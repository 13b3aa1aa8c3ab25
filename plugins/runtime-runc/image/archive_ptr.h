// A libarchive read handle that frees itself (layer unpacking and OCI
// layout archives both read with libarchive).
#pragma once

#include <archive.h>

#include <memory>

namespace flotilla::runc {

struct ArchiveFree {
  void operator()(archive *a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveFree>;

}  // namespace flotilla::runc
