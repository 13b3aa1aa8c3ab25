// The OCI image store of the runtime-runc plugin: imports images from OCI
// layouts and oci-archives into a content-addressed blob store, unpacks each
// layer once into a read-only snapshot directory, and hands the runtime the
// overlayfs lowerdirs and the image config of an image.
//
// On disk, under the data directory given to the constructor:
//
//   blobs/sha256/<hex>               verified blobs: manifests, configs, layers
//   snapshots/<chain-hex>/rootfs/    one unpacked layer, an overlayfs lowerdir
//   snapshots/<chain-hex>/snapshot.json
//   images.json                      image records, replaced atomically
//   tmp/                             imports in progress; emptied by gc()
//   gc.lock, index.lock              flock(2) lock files
//
// Snapshots are keyed by the layer's chain id (OCI image spec): the same
// layer on the same parents is unpacked once and shared by every image and
// container. An import stages everything under tmp/ and publishes it with
// renames just before it writes the image record, so a crash never leaves a
// half image visible; leftovers are invisible and gc() removes them.
//
// Threading: every method is [thread-safe] and synchronous (run it on the
// host's work queue, not on the loop). Imports run in parallel; remove() and
// gc() wait for running imports and block new ones. Two processes may share
// a data directory safely, but in-use counts live in this object only: a
// restarted runtime must acquire() again for the containers it finds.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "blob_store.h"
#include "image_error.h"
#include "layer_unpack.h"
#include "layout_source.h"
#include "oci_manifest.h"

namespace flotilla::runc {

struct LayerRecord {
  std::string digest;  // the (compressed) blob
  std::string media_type;
  int64_t size = 0;
  std::string diff_id;   // the uncompressed tar
  std::string chain_id;  // names the snapshot
};

struct ImageRecord {
  std::string name;        // "busybox:latest"
  std::string digest;      // the manifest: the image's identity
  std::string media_type;  // of the manifest
  std::string config_digest;
  std::string index_digest;         // the image index it was picked from; may be empty
  std::string platform;             // "linux/amd64"
  std::string created;              // from the config; may be empty
  std::string imported;             // when this name was set, RFC 3339
  uint64_t size = 0;                // bytes of manifest, config and layer blobs (compressed)
  uint64_t unpacked_size = 0;       // bytes of the layers' files, unpacked
  std::vector<LayerRecord> layers;  // bottom first
  // Device nodes the layers held and the import left out (DeviceNodes::skip):
  // "layer 1: dev/console (character device 5:1)".
  std::vector<std::string> device_nodes_skipped;
  // Where it came from: {"type": "import", "source": "image layout /srv/x"}
  // or {"type": "registry", "registry", "repository", "endpoint", "digest"};
  // null in records written before origins were kept.
  nlohmann::json origin;

  // {"name", "digest", "media_type", "config", "index_digest", "platform",
  //  "created", "imported", "size", "unpacked_size", "device_nodes_skipped",
  //  "layers": [{"digest", "media_type", "size", "diff_id", "chain_id"}]}
  //  — also the image JSON of the ABI.
  nlohmann::json to_json() const;
  static ImageRecord from_json(const nlohmann::json &j, std::string_view what);
};

struct GcStats {
  unsigned blobs_removed = 0;
  unsigned snapshots_removed = 0;
  uint64_t blob_bytes_freed = 0;
};

struct ImportResult {
  ImageRecord record;
  std::string replaced_digest;  // the image the name pointed to before, if another
  unsigned layers_unpacked = 0;
  unsigned layers_reused = 0;      // snapshots that existed already
  std::vector<std::string> notes;  // setuid files kept, xattrs dropped, ...
  GcStats gc;                      // when replacing a name freed an image
  // Blobs read from the source and verified by this import.
  unsigned blobs_read = 0;
  // Blobs the store held already (verified when they first came in), so
  // they were NOT read from the source: "manifest sha256:…", "layer 2/3
  // sha256:…". When the manifest is among them, nothing but index.json was
  // read and the source's blobs were not checked.
  std::vector<std::string> blobs_reused;

  // record.to_json() plus "import": {"blobs_read", "blobs_reused",
  // "source_checked", "layers_unpacked", "layers_reused", "notes"}.
  nlohmann::json to_json() const;
};

struct ResolvedImage {
  ImageRecord record;
  // Snapshot rootfs directories, TOP layer first: the order of overlayfs'
  // lowerdir= option.
  std::vector<std::filesystem::path> lower_dirs;
  ImageConfig config;
};

struct RemoveResult {
  std::vector<std::string> removed;  // names
  GcStats gc;
};

struct ImageGcResult {
  std::vector<std::string> removed;  // names, oldest-unused first
  GcStats gc;
};

struct ImageStoreOptions {
  Platform platform = Platform::host();  // what an image index is resolved to
  UnpackLimits limits;
  LayoutSource::Limits source_limits;
  bool sync = true;  // fsync blobs, snapshots and records before publishing them
  // Refuse an import, before unpacking, whose layers' declared content does
  // not fit in the free space of the data directory's filesystem.
  bool check_free_space = true;
};

class ImageStore {
 public:
  // Creates the layout above if needed and empties tmp/ when no other
  // process is importing. Throws ImageError.
  explicit ImageStore(std::filesystem::path data_dir, ImageStoreOptions options = {});
  ImageStore(const ImageStore &) = delete;
  ImageStore &operator=(const ImageStore &) = delete;

  // Imports the image at source (an OCI layout directory or an oci-archive)
  // and names it tag ("busybox:latest"), or, when tag is empty, after the
  // index entry's io.containerd.image.name or org.opencontainers.image.ref.name
  // annotation. When index.json lists several images, tag picks the one
  // whose ref.name matches it. An image index is resolved to
  // options.platform. Every blob is verified against its descriptor and
  // every layer against the config's diff_ids before the record is written;
  // on any error nothing of the import remains. Re-using a name moves it;
  // the image it pointed to is garbage-collected unless in use.
  // origin, when not null, is recorded as the image's origin instead of
  // {"type": "import", ...} (a pull passes where it pulled from).
  ImportResult import_image(const std::filesystem::path &source, std::string_view tag = {},
                            const nlohmann::json &origin = nullptr);

  // A pull's staging (RegistryPull): layout is an OCI image layout on the
  // store's filesystem whose blobs the pull verified by size and digest as
  // they streamed in, and layers the layers it unpacked meanwhile (by blob
  // digest). Imported as import_image() does, except that the layout's
  // blobs are moved in, not read and hashed again, and a staged layer
  // becomes the snapshot instead of being unpacked again, once its diff_id
  // matches the config's and its implicitly made directories took their
  // attributes from the layers below (adopt_lower_attributes: the layers
  // were unpacked independently, in whatever order they arrived). Staged
  // layers not used (their snapshot exists already) stay where they are,
  // for the caller to remove with the layout.
  ImportResult import_pulled(const std::filesystem::path &layout, std::string_view tag,
                             const nlohmann::json &origin,
                             const std::map<std::string, StagedLayer> &layers);

  std::vector<ImageRecord> list() const;

  // ref: "name[:tag]", "name@sha256:...", or "sha256:..." (a manifest
  // digest). Throws ImageError(NOT_FOUND).
  ImageRecord get(std::string_view ref) const;
  ResolvedImage resolve(std::string_view ref) const;

  // resolve() and count one more user of the image; remove() refuses an
  // image while it has users. Call release(record.digest) once per acquire.
  ResolvedImage acquire(std::string_view ref);
  void release(std::string_view digest);
  uint32_t use_count(std::string_view digest) const;

  // Removes the names ref matches (a digest matches every name of that
  // image) and collects what no image or user references any more.
  // FLOTILLA_E_CONFLICT while the last name of an in-use image would go.
  RemoveResult remove(std::string_view ref);

  // Deletes blobs and snapshots that no image and no user references, and
  // everything under tmp/.
  GcStats gc();

  // Image garbage collection: removes every image (all its names) that no
  // user holds and that nobody used for unused_after, oldest first, then
  // more unused images, oldest first, while the images together are larger
  // than max_bytes (0: no limit); then gc(). An image is "used" when it is
  // imported or pulled, and when it is acquired or released; times live in
  // this object, so an image is never older than the store's opening.
  ImageGcResult collect_unused(
      std::chrono::seconds unused_after, uint64_t max_bytes,
      std::chrono::system_clock::time_point now = std::chrono::system_clock::now());
  // When the image was last used, as collect_unused() sees it.
  std::chrono::system_clock::time_point last_used(const ImageRecord &record) const;

  const std::filesystem::path &data_dir() const { return data_dir_; }
  const ImageStoreOptions &options() const { return options_; }
  // The directory holding the snapshots, so that the runtime can pass short
  // relative lowerdirs ("<chain-hex>/rootfs") from there.
  const std::filesystem::path &snapshots_dir() const { return snapshots_dir_; }

 private:
  struct InUse {
    uint32_t count = 0;
    ImageRecord record;
  };
  class ChainClaims;

  ImportResult import_locked(const std::filesystem::path &source, const std::string &name,
                             const nlohmann::json &origin,
                             const std::map<std::string, StagedLayer> *pulled);
  ImportResult finish_import(ImportResult result);
  void check_space_for(const ImageRecord &rec,
                       const std::vector<std::filesystem::path> &layer_files,
                       const std::vector<bool> &staged, const std::string &from) const;
  std::vector<ImageRecord> read_index() const;  // caller holds index.lock
  void write_index(std::vector<ImageRecord> records);
  ResolvedImage resolve_record(const ImageRecord &record) const;
  GcStats gc_locked();  // caller holds gc.lock exclusively
  std::filesystem::path snapshot_path(std::string_view chain_id) const;
  bool snapshot_exists(std::string_view chain_id) const;

  std::filesystem::path data_dir_;
  ImageStoreOptions options_;
  std::filesystem::path snapshots_dir_;
  std::filesystem::path tmp_dir_;
  std::filesystem::path index_path_;
  std::filesystem::path gc_lock_path_;
  std::filesystem::path index_lock_path_;
  BlobStore blobs_;

  mutable std::mutex in_use_mutex_;
  std::map<std::string, InUse> in_use_;  // manifest digest -> users
  std::map<std::string, std::chrono::system_clock::time_point> last_used_;  // under in_use_mutex_
  std::chrono::system_clock::time_point opened_ = std::chrono::system_clock::now();

  // Chain ids being unpacked by an import of this object: a second import
  // of the same layers waits and then reuses the snapshot.
  std::mutex claims_mutex_;
  std::condition_variable claims_cv_;
  std::set<std::string> claimed_chains_;
};

}  // namespace flotilla::runc
