// The pulls of one runtime-runc instance: image_pull of flotilla.runtime/1.
// Each reference pulls once however many ask for it at the same time
// (they all get its progress and its result); the download runs on the
// loop (RegistryPull over one CurlLoop), which hands the bytes to a
// BlobStream thread per blob (written, verified, a layer unpacked as it
// arrives); the import of what arrived on the work queue
// (ImageStore::import_pulled), so that an image appears whole or not at
// all.
//
// Staging: <image_dir>/pulls/<id>/ is an OCI layout of what one pull
// downloaded; it is removed when the pull ends, and the whole directory at
// start-up.
//
// Threading: [loop-thread].
#pragma once

#include <flotilla/host.h>
#include <flotilla/runtime.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../image/curl_loop.h"
#include "../image/file_lock.h"
#include "../image/registry_config.h"
#include "../image/registry_pull.h"

namespace flotilla::runc {

class ImageStore;

// Each pull works in pulls_dir/<pid>-<n> and holds an exclusive flock on
// pulls_dir/<pid>-<n>.lock from before it makes the directory until the
// directory is removed. At start-up this removes every entry whose lock no
// live process holds (what a killed pull left), and leaves the pulls of
// another daemon sharing the image directory alone. Returns how many.
size_t remove_abandoned_pulls(const std::filesystem::path &pulls_dir);

class ImagePulls {
 public:
  // The runtime's work queue: work runs on the thread pool and must not
  // touch *this; an exception it throws becomes (status, message) for
  // after, which runs on the loop.
  using Queue = std::function<void(
      std::function<void()> work, std::function<void(flotilla_status, const std::string &)> after)>;

  ImagePulls(const flotilla_host *host, RegistryConfig config, std::filesystem::path pulls_dir,
             Queue queue);
  // Pending callers get FLOTILLA_E_CANCELLED.
  ~ImagePulls();
  ImagePulls(const ImagePulls &) = delete;
  ImagePulls &operator=(const ImagePulls &) = delete;

  // Called once the store is open (recovery done).
  void set_store(std::shared_ptr<ImageStore> store) { store_ = std::move(store); }
  // Called on the loop after each pull that stored an image, once its
  // callers have their answer: the runtime checks the store's size bound
  // then, not only at its next GC tick.
  void set_on_pulled(std::function<void()> f) { on_pulled_ = std::move(f); }

  // options_json: {"policy": "always" | "if_not_present"} (default
  // "always"; a reference by digest is never fetched again once present).
  flotilla_status pull(const char *ref, const char *options_json,
                       flotilla_runtime_progress_cb progress, flotilla_runtime_state_cb cb,
                       void *user);

 private:
  struct Waiter {
    flotilla_runtime_progress_cb progress;
    flotilla_runtime_state_cb cb;
    void *user;
  };
  struct Pending {
    std::string key;
    RegistryRef ref;
    std::filesystem::path dir;
    std::shared_ptr<FileLock> lock;  // dir's, held until dir is removed
    std::vector<Waiter> waiters;
    std::unique_ptr<RegistryPull> pull;
    RegistryAuths auths;
    std::string last_progress;
  };

  void begin(const std::string &key);
  void downloaded(const std::string &key, flotilla_status st, const std::string &message,
                  PullResult result);
  void finish(const std::string &key, flotilla_status st, const std::string &text);
  void progress(const std::string &key, const PullProgress &p);

  const flotilla_host *host_;
  Queue queue_;
  std::function<void()> on_pulled_;
  RegistryConfig config_;
  std::filesystem::path pulls_dir_;
  std::shared_ptr<ImageStore> store_;
  std::unique_ptr<CurlLoop> http_;  // made at the first pull
  TokenCache tokens_;
  std::map<std::string, std::unique_ptr<Pending>> pending_;
  uint64_t next_dir_ = 1;
};

}  // namespace flotilla::runc
