#include "image_store.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <utility>

#include "digest.h"
#include "file_lock.h"
#include "fs_ops.h"
#include "reference.h"
#include "unique_fd.h"

namespace flotilla::runc {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kMaxIndexDepth = 4;

void make_private_dir(const fs::path &dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) throw_errno("create " + dir.string());
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw_errno("stat " + dir.string());
  if (!S_ISDIR(st.st_mode)) {
    throw ImageError(FLOTILLA_E_INVALID, dir.string() + " exists and is not a directory");
  }
}

// Creates the store's directories (0700: snapshots hold setuid binaries
// that only containers may run) and returns the blob directory.
fs::path prepare_layout(const fs::path &data_dir) {
  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec) {
    throw ImageError(FLOTILLA_E_IO,
                     "create image store directory " + data_dir.string() + ": " + ec.message());
  }
  for (const char *sub : {"blobs", "snapshots", "tmp"}) make_private_dir(data_dir / sub);
  return data_dir / "blobs";
}

std::string str_field(const json &j, const char *key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string short_digest(std::string_view digest) {
  return std::string(digest.substr(0, std::min<size_t>(digest.size(), 7 + 12)));
}

bool ref_name_matches(const std::string &annotation, const std::string &name) {
  if (annotation.empty()) return false;
  if (annotation == name) return true;
  // ref.name often holds only the tag ("latest"), as skopeo and docker
  // write it.
  size_t colon = name.rfind(':');
  if (annotation == name.substr(colon + 1)) return true;
  try {
    return normalize_image_name(annotation) == name;
  } catch (const ImageError &) {
    return false;
  }
}

std::string annotated_name(const Descriptor &d) {
  std::string n = d.annotation("io.containerd.image.name");
  return n.empty() ? d.annotation(kRefNameAnnotation) : n;
}

// A layout with several images and no tag (or one that matches none of
// them): which images there are, and how to pick one.
ImageError several_images(const std::string &from, const std::vector<Descriptor> &images,
                          const std::string &tag) {
  std::string list, example;
  bool unnamed = false;
  for (const auto &d : images) {
    std::string n = annotated_name(d);
    list += "\n  " + (n.empty() ? short_digest(d.digest) + " (no name)" : n);
    if (n.empty()) unnamed = true;
    if (example.empty()) example = n;
  }
  std::string how = "\nPick one with --tag NAME (the API's \"tag\"): the image whose " +
                    std::string(kRefNameAnnotation) +
                    " is NAME, or NAME's tag (the part after ':'), is imported under NAME";
  if (!example.empty()) how += ", e.g. flotilla image import PATH --tag " + example;
  how += ". One import takes one image; import again for another.";
  if (unnamed)
    how +=
        " An image with no name cannot be picked here: copy it to a layout of its own "
        "(skopeo copy oci:DIR@DIGEST oci:NEWDIR:NAME).";
  std::string head = tag.empty() ? "" : "--tag " + tag + " names none of its images; ";
  return ImageError(FLOTILLA_E_INVALID, from + ": " + head + "index.json lists " +
                                            std::to_string(images.size()) + " images:" + list +
                                            how);
}

}  // namespace

// ---- records ----------------------------------------------------------

json ImageRecord::to_json() const {
  json layers_json = json::array();
  for (const auto &l : layers) {
    layers_json.push_back({{"digest", l.digest},
                           {"media_type", l.media_type},
                           {"size", l.size},
                           {"diff_id", l.diff_id},
                           {"chain_id", l.chain_id}});
  }
  json j = {{"name", name},
            {"digest", digest},
            {"media_type", media_type},
            {"config", config_digest},
            {"platform", platform},
            {"created", created},
            {"imported", imported},
            {"size", size},
            {"unpacked_size", unpacked_size},
            {"device_nodes_skipped", device_nodes_skipped},
            {"layers", layers_json}};
  if (!index_digest.empty()) j["index_digest"] = index_digest;
  if (!origin.is_null()) j["origin"] = origin;
  return j;
}

json ImportResult::to_json() const {
  json j = record.to_json();
  j["import"] = {{"blobs_read", blobs_read},
                 {"blobs_reused", blobs_reused},
                 // false: the store already had the image, and the source's
                 // blobs were not read, so not checked either
                 {"source_checked", blobs_read > 0 || blobs_reused.empty()},
                 {"layers_unpacked", layers_unpacked},
                 {"layers_reused", layers_reused},
                 {"notes", notes}};
  return j;
}

ImageRecord ImageRecord::from_json(const json &j, std::string_view what) {
  auto bad = [&](const std::string &why) {
    return ImageError(FLOTILLA_E_INTERNAL, std::string(what) + ": " + why);
  };
  if (!j.is_object()) throw bad("record is not an object");
  ImageRecord r;
  r.name = str_field(j, "name");
  r.digest = str_field(j, "digest");
  r.media_type = str_field(j, "media_type");
  r.config_digest = str_field(j, "config");
  r.index_digest = str_field(j, "index_digest");
  r.platform = str_field(j, "platform");
  r.created = str_field(j, "created");
  r.imported = str_field(j, "imported");
  if (auto o = j.find("origin"); o != j.end() && o->is_object()) r.origin = *o;
  if (r.name.empty()) throw bad("record without a name");
  std::string rw = std::string(what) + " " + r.name;
  digest_hex(r.digest, rw + " digest");
  digest_hex(r.config_digest, rw + " config");
  if (auto it = j.find("size"); it != j.end() && it->is_number_unsigned()) {
    r.size = it->get<uint64_t>();
  }
  // Records written before these fields existed have neither.
  if (auto it = j.find("unpacked_size"); it != j.end() && it->is_number_unsigned())
    r.unpacked_size = it->get<uint64_t>();
  if (auto it = j.find("device_nodes_skipped"); it != j.end() && it->is_array())
    for (const auto &d : *it)
      if (d.is_string()) r.device_nodes_skipped.push_back(d.get<std::string>());
  auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array()) throw bad(r.name + ": no layers array");
  for (const auto &l : *layers) {
    LayerRecord lr;
    lr.digest = str_field(l, "digest");
    lr.media_type = str_field(l, "media_type");
    lr.diff_id = str_field(l, "diff_id");
    lr.chain_id = str_field(l, "chain_id");
    if (auto s = l.find("size"); s != l.end() && s->is_number_integer())
      lr.size = s->get<int64_t>();
    digest_hex(lr.digest, rw + " layer digest");
    digest_hex(lr.diff_id, rw + " layer diff_id");
    digest_hex(lr.chain_id, rw + " layer chain_id");
    r.layers.push_back(std::move(lr));
  }
  return r;
}

// ---- chain claims -------------------------------------------------------

// Chain ids this import unpacks or reuses, held until its record is
// written (or it failed). Claims are taken in layer order, and chain ids
// of shared layers are shared prefixes, so two imports never wait on each
// other in a cycle.
class ImageStore::ChainClaims {
 public:
  explicit ChainClaims(ImageStore &store) : store_(store) {}
  ~ChainClaims() {
    {
      std::lock_guard<std::mutex> g(store_.claims_mutex_);
      for (const auto &c : held_) store_.claimed_chains_.erase(c);
    }
    store_.claims_cv_.notify_all();
  }
  ChainClaims(const ChainClaims &) = delete;
  ChainClaims &operator=(const ChainClaims &) = delete;

  void claim(const std::string &chain) {
    std::unique_lock<std::mutex> g(store_.claims_mutex_);
    store_.claims_cv_.wait(g, [&] { return store_.claimed_chains_.count(chain) == 0; });
    store_.claimed_chains_.insert(chain);
    held_.push_back(chain);
  }

 private:
  ImageStore &store_;
  std::vector<std::string> held_;
};

// ---- store ----------------------------------------------------------------

ImageStore::ImageStore(fs::path data_dir, ImageStoreOptions options)
    : data_dir_(std::move(data_dir)),
      options_(std::move(options)),
      snapshots_dir_(data_dir_ / "snapshots"),
      tmp_dir_(data_dir_ / "tmp"),
      index_path_(data_dir_ / "images.json"),
      gc_lock_path_(data_dir_ / "gc.lock"),
      index_lock_path_(data_dir_ / "index.lock"),
      blobs_(prepare_layout(data_dir_)) {
  // Leftovers of a crashed import, unless another process imports now.
  FileLock lock(gc_lock_path_, FileLock::Mode::exclusive, /*try_lock=*/true);
  if (lock.held()) {
    std::error_code ec;
    for (const auto &e : fs::directory_iterator(tmp_dir_, ec)) remove_tree(e.path());
  }
}

fs::path ImageStore::snapshot_path(std::string_view chain_id) const {
  return snapshots_dir_ / digest_hex(chain_id, "chain id");
}

bool ImageStore::snapshot_exists(std::string_view chain_id) const {
  struct stat st {};
  return ::lstat((snapshot_path(chain_id) / "rootfs").c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<ImageRecord> ImageStore::read_index() const {
  std::string text;
  try {
    text = read_small_file(index_path_, size_t{256} << 20, "image index");
  } catch (const ImageError &e) {
    if (e.status() == FLOTILLA_E_NOT_FOUND) return {};
    throw;
  }
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception &e) {
    throw ImageError(FLOTILLA_E_INTERNAL, index_path_.string() + " is corrupt (" + e.what() +
                                              "); restore it or remove it and re-import");
  }
  std::vector<ImageRecord> out;
  auto images = j.find("images");
  if (!j.is_object() || images == j.end() || !images->is_array()) {
    throw ImageError(FLOTILLA_E_INTERNAL, index_path_.string() + " has no \"images\" array");
  }
  for (const auto &r : *images) out.push_back(ImageRecord::from_json(r, index_path_.string()));
  return out;
}

void ImageStore::write_index(std::vector<ImageRecord> records) {
  std::sort(records.begin(), records.end(),
            [](const ImageRecord &a, const ImageRecord &b) { return a.name < b.name; });
  json arr = json::array();
  for (const auto &r : records) arr.push_back(r.to_json());
  json doc = {{"schema_version", 1}, {"images", arr}};
  write_file_atomic(index_path_, doc.dump(2) + "\n", options_.sync);
}

namespace {

const ImageRecord *find_record(const std::vector<ImageRecord> &records, const ImageRef &ref) {
  for (const auto &r : records) {
    if (ref.matches(r.name, r.digest)) return &r;
  }
  return nullptr;
}

ImageError not_found(std::string_view ref) {
  return ImageError(FLOTILLA_E_NOT_FOUND,
                    "no image \"" + std::string(ref) + "\" in the image store; import it first");
}

}  // namespace

std::vector<ImageRecord> ImageStore::list() const {
  FileLock lock(index_lock_path_, FileLock::Mode::shared);
  return read_index();
}

ImageRecord ImageStore::get(std::string_view ref) const {
  ImageRef r = parse_image_ref(ref);
  FileLock lock(index_lock_path_, FileLock::Mode::shared);
  std::vector<ImageRecord> records = read_index();
  const ImageRecord *rec = find_record(records, r);
  if (rec == nullptr) throw not_found(ref);
  return *rec;
}

ResolvedImage ImageStore::resolve_record(const ImageRecord &record) const {
  ResolvedImage out;
  out.record = record;
  std::string what = "image " + record.name + " config " + short_digest(record.config_digest);
  ParsedConfig cfg = parse_config(
      parse_json(blobs_.read(record.config_digest, options_.source_limits.max_json_bytes, what),
                 what),
      what);
  out.config = std::move(cfg.config);
  for (auto it = record.layers.rbegin(); it != record.layers.rend(); ++it) {
    if (!snapshot_exists(it->chain_id)) {
      throw ImageError(FLOTILLA_E_INTERNAL,
                       "image " + record.name + ": the snapshot of layer " + it->digest + " (" +
                           snapshot_path(it->chain_id).string() +
                           ") is missing; remove the image and import it again");
    }
    out.lower_dirs.push_back(snapshot_path(it->chain_id) / "rootfs");
  }
  return out;
}

ResolvedImage ImageStore::resolve(std::string_view ref) const {
  ImageRef r = parse_image_ref(ref);
  FileLock lock(index_lock_path_, FileLock::Mode::shared);
  std::vector<ImageRecord> records = read_index();
  const ImageRecord *rec = find_record(records, r);
  if (rec == nullptr) throw not_found(ref);
  return resolve_record(*rec);
}

ResolvedImage ImageStore::acquire(std::string_view ref) {
  ImageRef r = parse_image_ref(ref);
  // in_use_mutex_ first, then index.lock: remove() takes them in this order
  // too, so an image cannot be removed between its lookup and its count.
  std::lock_guard<std::mutex> g(in_use_mutex_);
  FileLock lock(index_lock_path_, FileLock::Mode::shared);
  std::vector<ImageRecord> records = read_index();
  const ImageRecord *rec = find_record(records, r);
  if (rec == nullptr) throw not_found(ref);
  ResolvedImage out = resolve_record(*rec);
  last_used_[rec->digest] = std::chrono::system_clock::now();
  InUse &use = in_use_[rec->digest];
  ++use.count;
  use.record = *rec;
  return out;
}

void ImageStore::release(std::string_view digest) {
  std::lock_guard<std::mutex> g(in_use_mutex_);
  auto it = in_use_.find(std::string(digest));
  if (it == in_use_.end()) {
    throw ImageError(FLOTILLA_E_INVALID,
                     "release of image " + std::string(digest) + ", which is not in use");
  }
  last_used_[it->first] = std::chrono::system_clock::now();
  if (--it->second.count == 0) in_use_.erase(it);
}

namespace {

std::chrono::system_clock::time_point parse_rfc3339_utc(const std::string &text) {
  std::tm tm{};
  if (text.size() < 20 || !::strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm))
    return std::chrono::system_clock::time_point{};
  return std::chrono::system_clock::from_time_t(::timegm(&tm));
}

}  // namespace

std::chrono::system_clock::time_point ImageStore::last_used(const ImageRecord &record) const {
  auto t = std::max(opened_, parse_rfc3339_utc(record.imported));
  std::lock_guard<std::mutex> g(in_use_mutex_);
  if (auto it = last_used_.find(record.digest); it != last_used_.end()) t = std::max(t, it->second);
  return t;
}

ImageGcResult ImageStore::collect_unused(std::chrono::seconds unused_after, uint64_t max_bytes,
                                         std::chrono::system_clock::time_point now) {
  FileLock gc_lock(gc_lock_path_, FileLock::Mode::exclusive);
  ImageGcResult result;
  {
    std::lock_guard<std::mutex> g(in_use_mutex_);
    FileLock lock(index_lock_path_, FileLock::Mode::exclusive);
    std::vector<ImageRecord> records = read_index();
    // One entry per image (digest): its names, size and last use.
    struct Image {
      std::chrono::system_clock::time_point used;
      uint64_t size = 0;
      std::vector<std::string> names;
    };
    std::map<std::string, Image> images;
    uint64_t total = 0;
    for (const auto &r : records) {
      Image &img = images[r.digest];
      if (img.names.empty()) {
        img.size = r.size;
        total += r.size;
      }
      img.names.push_back(r.name);
      auto t = std::max(opened_, parse_rfc3339_utc(r.imported));
      if (auto it = last_used_.find(r.digest); it != last_used_.end()) t = std::max(t, it->second);
      img.used = std::max(img.used, t);
    }
    std::vector<std::pair<std::chrono::system_clock::time_point, std::string>> unused;
    for (const auto &[digest, img] : images)
      if (!in_use_.count(digest)) unused.emplace_back(img.used, digest);
    std::sort(unused.begin(), unused.end());
    std::set<std::string> doomed;
    for (const auto &[used, digest] : unused) {
      bool expired = now - used >= unused_after;
      bool too_big = max_bytes > 0 && total > max_bytes;
      if (!expired && !too_big) continue;
      doomed.insert(digest);
      total -= images[digest].size;
      for (const auto &n : images[digest].names) result.removed.push_back(n);
    }
    if (doomed.empty()) return result;
    std::vector<ImageRecord> kept;
    for (auto &r : records)
      if (!doomed.count(r.digest)) kept.push_back(std::move(r));
    write_index(std::move(kept));
    for (const auto &d : doomed) last_used_.erase(d);
  }
  result.gc = gc_locked();
  return result;
}

uint32_t ImageStore::use_count(std::string_view digest) const {
  std::lock_guard<std::mutex> g(in_use_mutex_);
  auto it = in_use_.find(std::string(digest));
  return it == in_use_.end() ? 0 : it->second.count;
}

RemoveResult ImageStore::remove(std::string_view ref) {
  ImageRef r = parse_image_ref(ref);
  FileLock gc_lock(gc_lock_path_, FileLock::Mode::exclusive);
  RemoveResult result;
  {
    std::lock_guard<std::mutex> g(in_use_mutex_);
    FileLock lock(index_lock_path_, FileLock::Mode::exclusive);
    std::vector<ImageRecord> records = read_index();
    std::vector<ImageRecord> kept;
    std::vector<const ImageRecord *> removed;
    for (const auto &rec : records) {
      if (r.matches(rec.name, rec.digest)) {
        removed.push_back(&rec);
      } else {
        kept.push_back(rec);
      }
    }
    if (removed.empty()) throw not_found(ref);
    for (const ImageRecord *rec : removed) {
      bool other_name = std::any_of(kept.begin(), kept.end(),
                                    [&](const ImageRecord &k) { return k.digest == rec->digest; });
      auto use = in_use_.find(rec->digest);
      if (!other_name && use != in_use_.end()) {
        throw ImageError(FLOTILLA_E_CONFLICT, "image " + rec->name + " (" + rec->digest +
                                                  ") is in use by " +
                                                  std::to_string(use->second.count) +
                                                  " container(s); remove them before the image");
      }
    }
    for (const ImageRecord *rec : removed) result.removed.push_back(rec->name);
    write_index(std::move(kept));
  }
  result.gc = gc_locked();
  return result;
}

GcStats ImageStore::gc() {
  FileLock gc_lock(gc_lock_path_, FileLock::Mode::exclusive);
  return gc_locked();
}

GcStats ImageStore::gc_locked() {
  std::set<std::string> keep_blobs, keep_chains;
  {
    std::lock_guard<std::mutex> g(in_use_mutex_);
    FileLock lock(index_lock_path_, FileLock::Mode::shared);
    std::vector<ImageRecord> roots = read_index();
    for (const auto &[digest, use] : in_use_) roots.push_back(use.record);
    for (const auto &rec : roots) {
      keep_blobs.insert(rec.digest);
      keep_blobs.insert(rec.config_digest);
      if (!rec.index_digest.empty()) keep_blobs.insert(rec.index_digest);
      for (const auto &l : rec.layers) {
        keep_blobs.insert(l.digest);
        keep_chains.insert(l.chain_id);
      }
    }
  }
  GcStats stats;
  for (const auto &digest : blobs_.digests()) {
    if (keep_blobs.count(digest)) continue;
    stats.blob_bytes_freed += blobs_.erase(digest);
    ++stats.blobs_removed;
  }
  std::error_code ec;
  std::vector<fs::path> garbage;
  for (const auto &e : fs::directory_iterator(snapshots_dir_, ec)) {
    std::string chain = "sha256:" + e.path().filename().string();
    if (!is_sha256_digest(chain) || keep_chains.count(chain)) continue;
    garbage.push_back(e.path());
  }
  if (ec) throw ImageError(FLOTILLA_E_IO, "list " + snapshots_dir_.string() + ": " + ec.message());
  for (const auto &dir : garbage) {
    // Out of sight first, so that a crash mid-way leaves no half snapshot
    // under snapshots/.
    fs::path doomed = tmp_dir_ / ("gc-" + dir.filename().string());
    if (::rename(dir.c_str(), doomed.c_str()) != 0) throw_errno("move " + dir.string());
    remove_tree(doomed);
    ++stats.snapshots_removed;
  }
  for (const auto &e : fs::directory_iterator(tmp_dir_, ec)) remove_tree(e.path());
  return stats;
}

// ---- import ---------------------------------------------------------------

namespace {

std::string human_bytes(uint64_t b) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

}  // namespace

// Refuses, before anything is unpacked, an import whose layers (those not
// unpacked in the store yet) declare more content in their tar headers
// than the data directory's filesystem has free. Reads the headers only.
void ImageStore::check_space_for(const ImageRecord &rec, const std::vector<fs::path> &layer_files,
                                 const std::vector<bool> &staged, const std::string &from) const {
  struct statvfs vfs {};
  if (::statvfs(snapshots_dir_.c_str(), &vfs) != 0) return;  // cannot tell: unpacking will
  const uint64_t block = vfs.f_bsize ? vfs.f_bsize : 4096;
  const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  uint64_t needed = 0;
  std::string detail;
  const size_t n = rec.layers.size();
  for (size_t i = 0; i < n; ++i) {
    if (staged[i]) continue;  // on disk already
    {
      FileLock lock(index_lock_path_, FileLock::Mode::shared);
      if (snapshot_exists(rec.layers[i].chain_id)) continue;
    }
    std::string what =
        "layer " + std::to_string(i + 1) + "/" + std::to_string(n) + " of " + rec.name;
    LayerFootprint f =
        layer_footprint(layer_files[i], block, free_bytes > needed ? free_bytes - needed : 1,
                        options_.limits, from + ": " + what);
    needed += f.disk_bytes;
    detail += (detail.empty() ? "" : ", ") + std::string("layer ") + std::to_string(i + 1) + ": " +
              human_bytes(f.file_bytes) + " in " + std::to_string(f.entries) + " entries";
    if (needed > free_bytes) {
      throw ImageError(FLOTILLA_E_IO,
                       from + ": image " + rec.name + " needs at least " + human_bytes(needed) +
                           " unpacked (" + detail + (i + 1 < n ? ", and more layers" : "") +
                           ", as their tar headers declare) but " + snapshots_dir_.string() +
                           " has " + human_bytes(free_bytes) +
                           " free; nothing was unpacked. Free space on that filesystem "
                           "(flotilla image rm ...), or set plugin.runtime-runc.image_dir to "
                           "a larger one");
    }
  }
}

ImportResult ImageStore::import_image(const fs::path &source, std::string_view tag,
                                      const json &origin) {
  std::string name = tag.empty() ? std::string() : normalize_image_name(tag);
  return finish_import(import_locked(source, name, origin, nullptr));
}

ImportResult ImageStore::import_pulled(const fs::path &layout, std::string_view tag,
                                       const json &origin,
                                       const std::map<std::string, StagedLayer> &layers) {
  std::string name = tag.empty() ? std::string() : normalize_image_name(tag);
  return finish_import(import_locked(layout, name, origin, &layers));
}

ImportResult ImageStore::finish_import(ImportResult result) {
  {
    std::lock_guard<std::mutex> g(in_use_mutex_);
    last_used_[result.record.digest] = std::chrono::system_clock::now();
  }
  if (!result.replaced_digest.empty()) {
    // The name moved; the image it named goes unless another name or a
    // container still uses it.
    result.gc = gc();
  }
  return result;
}

ImportResult ImageStore::import_locked(const fs::path &source, const std::string &tag_name,
                                       const json &origin,
                                       const std::map<std::string, StagedLayer> *pulled) {
  FileLock gc_lock(gc_lock_path_, FileLock::Mode::shared);
  TempDir work(tmp_dir_, "import-");
  const fs::path staged_dir = work.path() / "blobs";
  const fs::path archive_dir = work.path() / "archive";
  make_private_dir(staged_dir);
  make_private_dir(archive_dir);

  // Under index.lock: a commit that fails rolls back what it published while
  // holding it exclusively, so what is seen here stays.
  auto store_has = [this](const std::string &digest) {
    FileLock lock(index_lock_path_, FileLock::Mode::shared);
    return blobs_.contains(digest);
  };
  LayoutSource src(source, archive_dir, store_has, options_.source_limits, options_.sync);
  const std::string &from = src.describe();

  // ---- which image of index.json ----
  std::vector<Descriptor> entries = parse_index(src.index(), from + ": index.json");
  if (entries.empty()) throw ImageError(FLOTILLA_E_INVALID, from + ": index.json lists no images");
  std::vector<Descriptor> candidates = entries;
  if (!tag_name.empty() && entries.size() > 1) {
    std::vector<Descriptor> named;
    for (const auto &d : entries) {
      if (ref_name_matches(d.annotation(kRefNameAnnotation), tag_name) ||
          ref_name_matches(d.annotation("io.containerd.image.name"), tag_name)) {
        named.push_back(d);
      }
    }
    if (named.empty()) {
      // Several images and a tag that names none of them: the tag would
      // have named whichever came first.
      bool one_image = std::all_of(entries.begin(), entries.end(), [&](const Descriptor &d) {
        return d.digest == entries.front().digest ||
               annotated_name(d) == annotated_name(entries.front());
      });
      if (!one_image) throw several_images(from, entries, tag_name);
    } else {
      candidates = named;
    }
  }
  bool same_digest = std::all_of(candidates.begin(), candidates.end(), [&](const Descriptor &d) {
    return d.digest == candidates.front().digest;
  });
  Descriptor chosen = candidates.front();
  if (!same_digest) {
    // Several images: names tell them apart first; platforms only choose
    // among variants of one image.
    std::set<std::string> names;
    for (const auto &d : candidates) names.insert(annotated_name(d));
    bool by_platform = names.size() == 1 &&
                       std::any_of(candidates.begin(), candidates.end(),
                                   [](const Descriptor &d) { return d.platform.has_value(); });
    if (!by_platform) throw several_images(from, candidates, tag_name);
    chosen = select_platform(candidates, options_.platform, from + ": index.json");
  }
  std::string name = tag_name;
  if (name.empty()) {
    std::string annotated = annotated_name(chosen);
    if (annotated.empty()) {
      throw ImageError(FLOTILLA_E_INVALID,
                       from + ": index.json gives the image no name (no " +
                           std::string(kRefNameAnnotation) +
                           " annotation); pass a tag to name it (flotilla image import PATH "
                           "--tag NAME, like --tag myapp:1.0)");
    }
    try {
      name = normalize_image_name(annotated);
    } catch (const ImageError &e) {
      throw ImageError(FLOTILLA_E_INVALID,
                       from + ": the annotated name cannot be used (" + e.what() + "); pass a tag");
    }
  }

  // ---- blobs: fetched and verified once, staged until the commit ----
  ImportResult result;
  std::map<std::string, fs::path> staged;  // new to the store
  std::set<std::string> reused;            // in the store already: not read from src
  auto fetch = [&](const Descriptor &d, const std::string &what) -> fs::path {
    if (auto it = staged.find(d.digest); it != staged.end()) return it->second;
    if (store_has(d.digest)) {
      if (reused.insert(d.digest).second) result.blobs_reused.push_back(what + " " + d.digest);
      // Verified when it came in; the descriptor must still agree on size.
      struct stat st {};
      fs::path p = blobs_.path(d.digest);
      if (::stat(p.c_str(), &st) == 0 && st.st_size != d.size) {
        throw_blob_mismatch({d.digest, d.size, what}, from,
                            "it has " + std::to_string(st.st_size) +
                                " bytes, the descriptor says " + std::to_string(d.size));
      }
      return p;
    }
    fs::path dest = staged_dir / digest_hex(d.digest, what);
    if (pulled) {
      // Verified by the pull as it streamed in: moved, not read again.
      fs::path p = source / "blobs" / "sha256" / digest_hex(d.digest, what);
      struct stat st {};
      if (::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        if (st.st_size != d.size) {
          throw_blob_mismatch({d.digest, d.size, what}, from,
                              "it has " + std::to_string(st.st_size) +
                                  " bytes, the descriptor says " + std::to_string(d.size));
        }
        // (Made durable by the syncfs below, with the snapshots.)
        if (::rename(p.c_str(), dest.c_str()) != 0) throw_errno("move " + p.string());
        staged[d.digest] = dest;
        ++result.blobs_read;
        return dest;
      }
    }
    src.fetch({d.digest, d.size, what}, dest, options_.sync);
    staged[d.digest] = dest;
    ++result.blobs_read;
    return dest;
  };
  auto read_json_blob = [&](const Descriptor &d, const std::string &what) {
    if (static_cast<uint64_t>(d.size) > options_.source_limits.max_json_bytes) {
      throw ImageError(FLOTILLA_E_INVALID,
                       from + ": " + what + " " + d.digest + " declares " + std::to_string(d.size) +
                           " bytes; a JSON document of more than " +
                           std::to_string(options_.source_limits.max_json_bytes) + " is refused");
    }
    fs::path p = fetch(d, what);
    return parse_json(read_small_file(p, options_.source_limits.max_json_bytes, what),
                      what + " " + d.digest);
  };

  // ---- image index(es) down to one manifest ----
  Descriptor desc = chosen;
  std::string index_digest;
  json doc;
  for (int depth = 0;; ++depth) {
    std::string what = "manifest of " + name;
    doc = read_json_blob(desc, what);
    DocumentKind kind = classify_document(doc, desc.media_type, what + " " + desc.digest);
    if (kind == DocumentKind::manifest) break;
    if (depth >= kMaxIndexDepth) {
      throw ImageError(FLOTILLA_E_INVALID, from + ": image indexes nested deeper than " +
                                               std::to_string(kMaxIndexDepth));
    }
    std::string iw = "image index " + desc.digest + " of " + name;
    index_digest = desc.digest;
    std::vector<Descriptor> list = parse_index(doc, iw);
    desc = select_platform(list, options_.platform, iw);
  }
  std::string mwhat = "manifest " + desc.digest + " of " + name;
  Manifest manifest = parse_manifest(doc, mwhat);
  std::string manifest_type = !desc.media_type.empty() ? desc.media_type
                              : !manifest.media_type.empty()
                                  ? manifest.media_type
                                  : std::string(media_type::kOciManifest);

  // ---- config ----
  std::string cwhat = "config of " + name;
  ParsedConfig config =
      parse_config(read_json_blob(manifest.config, cwhat), cwhat + " " + manifest.config.digest);
  if (config.platform.os != options_.platform.os ||
      config.platform.architecture != options_.platform.architecture) {
    throw ImageError(FLOTILLA_E_UNSUPPORTED, from + ": image " + name + " is for " +
                                                 config.platform.str() + ", this host runs " +
                                                 options_.platform.str());
  }
  if (config.diff_ids.size() != manifest.layers.size()) {
    throw ImageError(FLOTILLA_E_INVALID,
                     from + ": " + mwhat + " has " + std::to_string(manifest.layers.size()) +
                         " layers but its config lists " + std::to_string(config.diff_ids.size()) +
                         " rootfs.diff_ids");
  }

  // ---- layer blobs: all verified before anything is unpacked ----
  ImageRecord rec;
  rec.name = name;
  rec.digest = desc.digest;
  rec.media_type = manifest_type;
  rec.config_digest = manifest.config.digest;
  rec.index_digest = index_digest;
  rec.platform = config.platform.str();
  rec.created = config.created;
  rec.imported = now_rfc3339();
  rec.origin = origin.is_null() ? json{{"type", "import"}, {"source", from}} : origin;
  rec.size = static_cast<uint64_t>(desc.size) + static_cast<uint64_t>(manifest.config.size);
  const size_t n = manifest.layers.size();
  std::vector<fs::path> layer_files;
  std::vector<LayerCompression> compressions;
  std::string parent_chain;
  for (size_t i = 0; i < n; ++i) {
    const Descriptor &l = manifest.layers[i];
    std::string what = "layer " + std::to_string(i + 1) + "/" + std::to_string(n) + " of " + name;
    compressions.push_back(layer_compression(l.media_type, from + ": " + what));
    layer_files.push_back(fetch(l, what));
    LayerRecord lr;
    lr.digest = l.digest;
    lr.media_type = l.media_type;
    lr.size = l.size;
    lr.diff_id = config.diff_ids[i];
    lr.chain_id = chain_id(parent_chain, lr.diff_id);
    parent_chain = lr.chain_id;
    rec.size += static_cast<uint64_t>(l.size);
    rec.layers.push_back(std::move(lr));
  }

  // ---- layers a pull unpacked already, each used once ----
  std::vector<const StagedLayer *> prestaged(n, nullptr);
  std::vector<bool> is_prestaged(n, false);
  if (pulled) {
    std::set<std::string> taken;
    for (size_t i = 0; i < n; ++i) {
      auto it = pulled->find(rec.layers[i].digest);
      if (it == pulled->end() || !taken.insert(it->first).second) continue;
      prestaged[i] = &it->second;
      is_prestaged[i] = true;
    }
  }

  // ---- free space: the layers still to unpack must fit ----
  if (options_.check_free_space) check_space_for(rec, layer_files, is_prestaged, from);

  // ---- snapshots ----
  ChainClaims claims(*this);
  std::vector<fs::path> lowers;  // top first
  std::vector<std::pair<std::string, fs::path>> new_snapshots;
  for (size_t i = 0; i < n; ++i) {
    const LayerRecord &lr = rec.layers[i];
    claims.claim(lr.chain_id);
    bool exists;
    {
      FileLock lock(index_lock_path_, FileLock::Mode::shared);
      exists = snapshot_exists(lr.chain_id);
    }
    fs::path rootfs;
    std::string layer_label = "layer " + std::to_string(i + 1) + ": ";
    if (exists) {
      rootfs = snapshot_path(lr.chain_id) / "rootfs";
      ++result.layers_reused;
      // What the snapshot's own import recorded about the layer.
      json meta;
      try {
        meta = parse_json(
            read_small_file(snapshot_path(lr.chain_id) / "snapshot.json", 1 << 20, "snapshot.json"),
            "snapshot.json");
      } catch (const ImageError &) {
        meta = json::object();
      }
      if (!meta.is_object()) meta = json::object();
      rec.unpacked_size += meta.value("unpacked_bytes", meta.value("tar_bytes", uint64_t{0}));
      std::vector<std::string> skipped =
          meta.value("device_nodes_skipped", std::vector<std::string>{});
      if (!skipped.empty() && options_.limits.device_nodes == DeviceNodes::refuse) {
        throw ImageError(FLOTILLA_E_INVALID,
                         from + ": layer " + std::to_string(i + 1) + "/" + std::to_string(n) +
                             " of " + name + ": entry \"" + skipped.front() +
                             "\" is a device node, which this host refuses "
                             "(plugin.runtime-runc.device_nodes = \"refuse\"); the layer is "
                             "in the store from an import that skipped it; refusing the image");
      }
      for (const auto &d : skipped) rec.device_nodes_skipped.push_back(layer_label + d);
    } else {
      std::string what = "layer " + std::to_string(i + 1) + "/" + std::to_string(n) + " (" +
                         short_digest(lr.digest) + ") of " + name;
      fs::path dir = work.path() / ("snapshot-" + std::to_string(i));
      UnpackResult u;
      if (prestaged[i]) {
        // Unpacked while it streamed in, without the layers below: what it
        // made implicitly takes their attributes now, bottom up, so the
        // snapshot is what unpack_layer would have made here.
        if (::rename(prestaged[i]->dir.c_str(), dir.c_str()) != 0)
          throw_errno("move " + prestaged[i]->dir.string());
        rootfs = dir / "rootfs";
        u = prestaged[i]->unpack;
        adopt_lower_attributes(rootfs, u.implicit_dirs, lowers, what);
      } else {
        make_private_dir(dir);
        rootfs = dir / "rootfs";
        u = unpack_layer(layer_files[i], compressions[i], rootfs, lowers, options_.limits, what);
      }
      if (u.diff_id != lr.diff_id) {
        throw ImageError(FLOTILLA_E_INVALID,
                         from + ": " + what + ": the uncompressed layer has digest " + u.diff_id +
                             ", the config's rootfs.diff_ids[" + std::to_string(i) + "] says " +
                             lr.diff_id + "; the image is corrupt, refusing it");
      }
      json meta = {{"chain_id", lr.chain_id},
                   {"diff_id", lr.diff_id},
                   {"parent", i == 0 ? std::string() : rec.layers[i - 1].chain_id},
                   {"layer", lr.digest},
                   {"entries", u.entries},
                   {"tar_bytes", u.tar_bytes},
                   {"unpacked_bytes", u.unpacked_bytes},
                   {"device_nodes_skipped", u.skipped_devices},
                   {"unpacked", now_rfc3339()}};
      rec.unpacked_size += u.unpacked_bytes;
      for (const auto &d : u.skipped_devices) rec.device_nodes_skipped.push_back(layer_label + d);
      write_file_atomic(dir / "snapshot.json", meta.dump(2) + "\n", false);
      for (auto &note : u.notes) result.notes.push_back(std::move(note));
      new_snapshots.emplace_back(lr.chain_id, dir);
      ++result.layers_unpacked;
    }
    lowers.insert(lowers.begin(), rootfs);
  }
  if (options_.sync && (!new_snapshots.empty() || pulled)) {
    UniqueFd fd(::open(work.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd || ::syncfs(fd.get()) != 0) throw_errno("syncfs " + work.path().string());
  }

  // ---- commit: publish, then the record ----
  FileLock lock(index_lock_path_, FileLock::Mode::exclusive);
  std::vector<std::string> published_blobs, published_snapshots;
  try {
    for (const auto &[digest, path] : staged) {
      if (blobs_.publish(path, digest)) published_blobs.push_back(digest);
    }
    for (const auto &[chain, dir] : new_snapshots) {
      fs::path target = snapshot_path(chain);
      if (::renameat2(AT_FDCWD, dir.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE) == 0) {
        published_snapshots.push_back(chain);
      } else if (errno != EEXIST && errno != ENOTEMPTY) {
        throw_errno("move snapshot into " + target.string());
      }
    }
    if (options_.sync) {
      sync_directory(blobs_.dir() / "sha256");
      sync_directory(snapshots_dir_);
    }
    std::vector<std::string> needed = {rec.digest, rec.config_digest};
    if (!rec.index_digest.empty()) needed.push_back(rec.index_digest);
    for (const auto &l : rec.layers) {
      needed.push_back(l.digest);
      if (!snapshot_exists(l.chain_id)) {
        throw ImageError(FLOTILLA_E_INTERNAL, "snapshot " + l.chain_id + " vanished during import");
      }
    }
    for (const auto &d : needed) {
      if (!blobs_.contains(d)) {
        throw ImageError(FLOTILLA_E_INTERNAL, "blob " + d + " vanished during import");
      }
    }
    std::vector<ImageRecord> records = read_index();
    bool replaced = false;
    for (auto &r : records) {
      if (r.name != rec.name) continue;
      if (r.digest != rec.digest) result.replaced_digest = r.digest;
      r = rec;
      replaced = true;
    }
    if (!replaced) records.push_back(rec);
    write_index(std::move(records));
  } catch (...) {
    for (const auto &d : published_blobs) {
      try {
        blobs_.erase(d);
      } catch (...) {
      }
    }
    for (const auto &c : published_snapshots) {
      try {
        fs::path doomed = work.path() / ("rollback-" + digest_hex(c, "chain id"));
        if (::rename(snapshot_path(c).c_str(), doomed.c_str()) == 0) remove_tree(doomed);
      } catch (...) {
      }
    }
    throw;
  }
  result.record = std::move(rec);
  return result;
}

}  // namespace flotilla::runc
