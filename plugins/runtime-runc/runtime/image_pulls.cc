#include "image_pulls.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "../image/blob_store.h"
#include "../image/fs_ops.h"
#include "../image/image_error.h"
#include "../image/image_store.h"
#include "../image/reference.h"

namespace flotilla::runc {

namespace fs = std::filesystem;
using json = nlohmann::json;

ImagePulls::ImagePulls(const flotilla_host *host, RegistryConfig config, fs::path pulls_dir,
                       Queue queue)
    : host_(host),
      queue_(std::move(queue)),
      config_(std::move(config)),
      pulls_dir_(std::move(pulls_dir)) {}

ImagePulls::~ImagePulls() {
  auto pending = std::move(pending_);
  for (auto &[key, p] : pending) {
    p->pull.reset();
    for (const Waiter &w : p->waiters) {
      host_->set_error(host_->host_ctx, "runtime-runc is shutting down");
      w.cb(w.user, FLOTILLA_E_CANCELLED, "null");
    }
  }
}

flotilla_status ImagePulls::pull(const char *ref_text, const char *options_json,
                                 flotilla_runtime_progress_cb progress,
                                 flotilla_runtime_state_cb cb, void *user) {
  if (!ref_text || !cb) {
    host_->set_error(host_->host_ctx, "image_pull: ref and cb are required");
    return FLOTILLA_E_INVALID;
  }
  if (!store_) {
    host_->set_error(host_->host_ctx, "image_pull: the image store is not open");
    return FLOTILLA_E_UNAVAILABLE;
  }
  RegistryRef ref;
  std::string policy = "always";
  try {
    ref = parse_registry_ref(ref_text);
    json opts = json::parse(options_json && *options_json ? options_json : "{}");
    if (!opts.is_object()) throw ImageError(FLOTILLA_E_INVALID, "options must be a JSON object");
    if (auto p = opts.find("policy"); p != opts.end()) {
      if (!p->is_string() || (*p != "always" && *p != "if_not_present"))
        throw ImageError(
            FLOTILLA_E_INVALID,
            "options.policy must be \"always\" or \"if_not_present\", got " + p->dump());
      policy = p->get<std::string>();
    }
  } catch (const std::exception &e) {
    host_->set_error(host_->host_ctx, (std::string("image_pull: ") + e.what()).c_str());
    return FLOTILLA_E_INVALID;
  }
  // A digest names one content: once present, there is nothing to fetch.
  if (!ref.digest.empty()) policy = "if_not_present";
  std::string key = ref.canonical();
  Waiter waiter{progress, cb, user};
  if (auto it = pending_.find(key); it != pending_.end()) {
    it->second->waiters.push_back(waiter);  // the same image: one download for all
    return FLOTILLA_OK;
  }
  auto p = std::make_unique<Pending>();
  p->key = key;
  p->ref = ref;
  p->waiters.push_back(waiter);
  pending_[key] = std::move(p);

  // Off the loop: is it there already, and the credentials file.
  struct Out {
    std::string present;  // the record, when the policy lets it stand
    RegistryAuths auths;
  };
  auto out = std::make_shared<Out>();
  std::shared_ptr<ImageStore> store = store_;
  std::string local = ref.digest.empty()
                          ? ref.store_name
                          : ref.store_name.substr(0, ref.store_name.rfind(':')) + "@" + ref.digest;
  std::string auth_file = config_.auth_file;
  queue_(
      [out, store, local, policy, auth_file] {
        if (policy == "if_not_present") {
          try {
            json j = store->get(local).to_json();
            j["pulled"] = false;
            out->present = j.dump();
            return;
          } catch (const ImageError &e) {
            if (e.status() != FLOTILLA_E_NOT_FOUND) throw;
          }
        }
        if (!auth_file.empty()) out->auths = RegistryAuths::load(auth_file);
      },
      [this, key, out](flotilla_status st, const std::string &msg) {
        auto it = pending_.find(key);
        if (it == pending_.end()) return;
        if (st != FLOTILLA_OK) return finish(key, st, "pull " + key + ": " + msg);
        if (!out->present.empty()) return finish(key, FLOTILLA_OK, out->present);
        it->second->auths = std::move(out->auths);
        begin(key);
      });
  return FLOTILLA_OK;
}

size_t remove_abandoned_pulls(const fs::path &pulls_dir) {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto &e : fs::directory_iterator(pulls_dir, ec)) entries.push_back(e.path());
  size_t removed = 0;
  for (const fs::path &entry : entries) {
    if (!fs::exists(fs::symlink_status(entry, ec))) continue;  // removed with its pair
    const bool is_lock = entry.extension() == ".lock";
    const fs::path work = is_lock ? fs::path(entry).replace_extension() : entry;
    const fs::path lock_path = is_lock ? entry : fs::path(entry.string() + ".lock");
    if (is_lock && fs::exists(work, ec)) continue;  // handled with its directory
    // A held lock is a live pull, of this host or of another daemon on the
    // same image directory. A directory without a lock file is a killed
    // pull's (its lock is taken before the directory is made).
    FileLock lock(lock_path, FileLock::Mode::exclusive, true);
    if (!lock.held()) continue;
    fs::remove_all(work, ec);
    fs::remove(lock_path, ec);
    ++removed;
  }
  return removed;
}

void ImagePulls::begin(const std::string &key) {
  Pending &p = *pending_.at(key);
  // <pid>-<n>, whose lock no one holds: a daemon in another pid namespace
  // sharing the image directory may have the same pid.
  try {
    fs::create_directories(pulls_dir_);
    for (;;) {
      p.dir = pulls_dir_ / (std::to_string(::getpid()) + "-" + std::to_string(next_dir_++));
      p.lock = std::make_shared<FileLock>(fs::path(p.dir.string() + ".lock"),
                                          FileLock::Mode::exclusive, true);
      if (p.lock->held()) break;
    }
  } catch (const std::exception &e) {
    return finish(key, FLOTILLA_E_IO, "pull " + key + ": " + e.what());
  }
  std::shared_ptr<ImageStore> store = store_;
  PullContext ctx;
  // libcurl is set up (curl_global_init: its TLS, SSH and IDN libraries)
  // at the first pull, not at load: a node that never pulls never pays it.
  if (!http_) http_ = std::make_unique<CurlLoop>(host_);
  ctx.http = http_.get();
  ctx.config = &config_;
  ctx.auths = &p.auths;
  ctx.tokens = &tokens_;
  BlobStore blobs(store->data_dir() / "blobs");
  ctx.have_blob = [blobs](const std::string &d) { return blobs.contains(d); };
  ctx.read_blob = [blobs](const std::string &d) { return blobs.read(d, 4 << 20, "manifest " + d); };
  ctx.limits = store->options().limits;
  try {
    std::error_code ec;
    fs::remove_all(p.dir, ec);
    p.pull = std::make_unique<RegistryPull>(
        ctx, p.ref, p.dir, [this, key](const PullProgress &pr) { progress(key, pr); },
        [this, key](flotilla_status st, const std::string &msg, PullResult r) {
          // Runs inside RegistryPull: it is destroyed later, in downloaded().
          downloaded(key, st, msg, std::move(r));
        });
    p.pull->start();
  } catch (const std::exception &e) {
    finish(key, FLOTILLA_E_IO, "pull " + key + ": " + e.what());
  }
}

void ImagePulls::progress(const std::string &key, const PullProgress &pr) {
  auto it = pending_.find(key);
  if (it == pending_.end()) return;
  std::string text = pr.to_json().dump();
  it->second->last_progress = text;
  auto waiters = it->second->waiters;
  for (const Waiter &w : waiters)
    if (w.progress) w.progress(w.user, text.c_str());
}

void ImagePulls::downloaded(const std::string &key, flotilla_status st, const std::string &message,
                            PullResult result) {
  auto it = pending_.find(key);
  if (it == pending_.end()) return;
  Pending &p = *it->second;
  // The pull object is inside its own callback: let the loop unwind first.
  std::shared_ptr<ImageStore> store = store_;
  fs::path dir = p.dir;
  std::shared_ptr<FileLock> lock = p.lock;
  std::string name = p.ref.store_name;
  auto out = std::make_shared<std::string>();
  json origin = {{"type", "registry"},
                 {"registry", result.registry},
                 {"repository", result.repository},
                 {"endpoint", result.endpoint},
                 {"digest", result.digest}};
  json stats = {{"bytes_downloaded", result.bytes_downloaded},
                {"blobs_downloaded", result.blobs_downloaded},
                {"blobs_present", result.blobs_present}};
  bool ok = st == FLOTILLA_OK;
  // The blob streams are joined on the pool, not here: a cancelled one may
  // still be removing what it unpacked.
  auto streams = std::make_shared<std::vector<std::unique_ptr<BlobStream>>>(
      p.pull ? p.pull->take_streams() : std::vector<std::unique_ptr<BlobStream>>{});
  auto files =
      std::make_shared<std::vector<std::pair<std::string, std::string>>>(std::move(result.files));
  auto layers = std::make_shared<std::map<std::string, StagedLayer>>(std::move(result.layers));
  queue_(
      [store, dir, lock, name, origin, stats, out, ok, streams, files, layers] {
        streams->clear();
        // The directory, then its lock file, while the lock is still held
        // (lock outlives this body: it is a capture).
        struct Cleanup {
          fs::path d;
          ~Cleanup() {
            std::error_code ec;
            fs::remove_all(d, ec);
            fs::remove(d.string() + ".lock", ec);
          }
        } cleanup{dir};
        if (!ok) return;
        for (const auto &[path, content] : *files) {
          fs::create_directories((dir / path).parent_path());
          write_file_atomic(dir / path, content, false);
        }
        ImportResult r = store->import_pulled(dir, name, origin, *layers);
        json j = r.record.to_json();
        j["pulled"] = true;
        j["pull"] = stats;
        j["pull"]["layers_unpacked"] = r.layers_unpacked;
        j["pull"]["layers_reused"] = r.layers_reused;
        *out = j.dump();
      },
      [this, key, st, message, out](flotilla_status wst, const std::string &wmsg) {
        if (st != FLOTILLA_OK) return finish(key, st, message);
        if (wst != FLOTILLA_OK) return finish(key, wst, "pull " + key + ": " + wmsg);
        finish(key, FLOTILLA_OK, *out);
      });
}

void ImagePulls::finish(const std::string &key, flotilla_status st, const std::string &text) {
  auto node = pending_.extract(key);
  if (node.empty()) return;
  std::unique_ptr<Pending> p = std::move(node.mapped());
  // A node that cannot pull can still be given the image by hand: say how,
  // as a command that works as printed (PATH filled in).
  const std::string error =
      st == FLOTILLA_OK || key.find('@') != std::string::npos
          ? text
          : text + "; or import it on this node with `flotilla image import PATH --tag " + key +
                "`, PATH being an OCI image layout directory or an oci-archive "
                "tarball";
  for (const Waiter &w : p->waiters) {
    if (st != FLOTILLA_OK) host_->set_error(host_->host_ctx, error.c_str());
    w.cb(w.user, st, st == FLOTILLA_OK ? text.c_str() : "null");
  }
  if (st == FLOTILLA_OK && on_pulled_) on_pulled_();
}

}  // namespace flotilla::runc
