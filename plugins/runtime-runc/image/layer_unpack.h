// Unpacks one image layer (tar, tar+gzip or tar+zstd) into a new directory
// that overlayfs can use as a lowerdir: OCI whiteouts become overlay
// whiteouts, and nothing is ever written outside that directory.
//
// Safety: every path is resolved below the snapshot root with openat2
// (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), and the last
// component is created with *at() calls that never follow it. An entry
// whose path is absolute, holds "..", or whose parent leads out of the root
// through a symlink is refused, as are hard links to anything outside the
// layer or not yet extracted, device nodes other than the 0/0 whiteout
// (unless limits.device_nodes says skip, the default: then they are left
// out and listed), and layers past the size and entry limits. A refused layer's directory is
// removed again.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "oci_manifest.h"

namespace flotilla::runc {

// What to do with a character or block device node in a layer (other than
// the 0/0 overlay whiteout). Never mknod: the runtime gives every container
// its own /dev, and a device node from an image would be a way to the host's
// disks. skip leaves it out and lists it; refuse refuses the layer.
enum class DeviceNodes { skip, refuse };

struct UnpackLimits {
  uint64_t max_entries = 1'000'000;
  uint64_t max_entry_bytes = uint64_t{64} << 30;   // one file, 64 GiB
  uint64_t max_layer_bytes = uint64_t{256} << 30;  // the uncompressed tar, 256 GiB
  size_t max_path_bytes = 4096;
  size_t max_path_depth = 256;
  size_t max_xattr_bytes = 64 * 1024;  // all xattrs of one entry
  DeviceNodes device_nodes = DeviceNodes::skip;
};

struct UnpackResult {
  std::string diff_id;     // sha256 of the uncompressed tar stream
  uint64_t tar_bytes = 0;  // its length
  uint64_t entries = 0;
  std::vector<std::string> notes;  // things kept or dropped that an operator may care about
  // Device nodes left out (DeviceNodes::skip), in layer order:
  // "dev/console (character device 5:1)"; hard links to them are left out too.
  std::vector<std::string> skipped_devices;
  // The layer's content as its tar headers declare it: regular file sizes.
  uint64_t unpacked_bytes = 0;
  // Directories the layer has no entry for but needed (a file without its
  // parent's entry), relative to dest, sorted; "" for the root when the
  // layer has no "./" entry. adopt_lower_attributes() takes them.
  std::vector<std::string> implicit_dirs;
};

// A layer unpacked ahead of its import (a pull unpacks layers as they
// stream in): dir holds rootfs/; unpack is what unpack_layer_from said.
struct StagedLayer {
  std::filesystem::path dir;
  UnpackResult unpack;
};

// Where the compressed bytes of a layer come from, for unpack_layer_from.
class LayerSource {
 public:
  virtual ~LayerSource() = default;
  // [the unpacking thread] Sets *data to the next bytes and returns how
  // many; 0 at the end. The bytes stay valid until the next call. May block
  // until bytes arrive; throws to abandon the layer (that exception is what
  // unpack_layer_from throws then).
  virtual size_t read(const void **data) = 0;
};

// A layer's declared content, read from its tar headers without unpacking
// anything (decompressing, but not writing): what an import needs on disk.
struct LayerFootprint {
  uint64_t file_bytes = 0;  // sum of regular file sizes
  uint64_t entries = 0;
  // Each file rounded up to the block size, plus a block for every other
  // entry: about what the unpacked layer takes on that filesystem.
  uint64_t disk_bytes = 0;
};

// Reads the headers of the layer blob at blob_path. Stops early, returning
// what it counted so far, once disk_bytes(block_size) passes stop_above
// (0: never). Throws ImageError for data that is not a tar.
LayerFootprint layer_footprint(const std::filesystem::path &blob_path, uint64_t block_size,
                               uint64_t stop_above, const UnpackLimits &limits,
                               std::string_view what);

// Unpacks the layer blob at blob_path into dest, which must not exist yet
// (its parent must). The compression is sniffed from the data; announced
// (from the media type) only adds a note when it disagrees.
// lower_dirs: the snapshots below this layer, top first, used only to give
// directories that the layer creates implicitly (a file without its parent
// directory entry) the owner and mode they have underneath.
// what names the layer in errors: "layer 2 (sha256:...) of busybox:latest".
// Throws ImageError; dest does not exist afterwards then.
UnpackResult unpack_layer(const std::filesystem::path &blob_path, LayerCompression announced,
                          const std::filesystem::path &dest,
                          const std::vector<std::filesystem::path> &lower_dirs,
                          const UnpackLimits &limits, std::string_view what);

// The same, from bytes as they arrive (a layer streaming in from a
// registry): one extractor, the same checks and limits. With lower_dirs
// empty (the layers below are not unpacked yet, or still arriving), the
// directories the layer makes implicitly are root's 0755 and the root
// 0755; adopt_lower_attributes() gives them what unpack_layer would have
// given them, once the layers below are there.
UnpackResult unpack_layer_from(LayerSource &source, LayerCompression announced,
                               const std::filesystem::path &dest,
                               const std::vector<std::filesystem::path> &lower_dirs,
                               const UnpackLimits &limits, std::string_view what);

// For a layer unpacked without its lower snapshots: each of implicit_dirs
// (UnpackResult::implicit_dirs) that is still a directory of rootfs takes
// the owner, mode and mtime it has in lower_dirs (top first; the root only
// owner and mode), as unpack_layer does while unpacking. Whiteouts and
// opaque directories need nothing: overlayfs reads them per layer. Throws
// ImageError.
void adopt_lower_attributes(const std::filesystem::path &rootfs,
                            const std::vector<std::string> &implicit_dirs,
                            const std::vector<std::filesystem::path> &lower_dirs,
                            std::string_view what);

// Opaque-directory xattr and whiteout device that overlayfs understands.
inline constexpr const char *kOverlayOpaqueXattr = "trusted.overlay.opaque";

}  // namespace flotilla::runc
