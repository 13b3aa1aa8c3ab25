// One pull of one image from an OCI distribution (v2) registry, on the
// loop thread: the manifest by tag or digest (OCI and Docker schema 2
// manifests and indexes, the host's platform picked from an index), then
// the config and the layers the store lacks, several at once. Each blob is
// handed as it arrives to a BlobStream (a thread of its own) that writes it,
// verifies its size and SHA-256 and unpacks a layer on the way into a
// staging snapshot; the loop only drives curl's sockets and passes the
// buffers on, pausing a transfer while its stream is full. An interrupted
// blob resumes with a Range request.
//
// What it produces, under layout_dir: blobs/sha256/ (only the blobs the
// store lacks, each verified) and snapshots/<hex>/rootfs (each downloaded
// layer, unpacked); PullResult lists the small files still to write (the
// manifests, index.json, oci-layout: the loop writes nothing) and the
// staged layers, for ImageStore::import_pulled(). A failed pull leaves
// nothing but that directory, which the caller removes after it destroyed
// the streams (take_streams()).
//
// Auth: anonymous; Basic; the Bearer token flow (a WWW-Authenticate
// challenge, a token from its realm, cached until it expires) with the
// credentials of the registry's auths entry. Mirrors of the registry are
// tried in order before it.
//
// Threading: [loop-thread].
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "blob_stream.h"
#include "curl_loop.h"
#include "layer_unpack.h"
#include "oci_manifest.h"
#include "registry_config.h"
#include "registry_ref.h"

namespace flotilla::runc {

// Bearer tokens by realm, service, scope and user, until they expire.
// Shared by every pull of a runtime.
class TokenCache {
 public:
  std::string get(const std::string &key) const;
  void put(const std::string &key, std::string token, std::chrono::seconds lifetime);

 private:
  struct Entry {
    std::string token;
    std::chrono::steady_clock::time_point expires;
  };
  std::map<std::string, Entry> entries_;
};

struct PullProgress {
  struct Blob {
    std::string digest;
    std::string role;  // "config", "layer 1/2"
    int64_t size = 0;
    uint64_t done = 0;
    bool present = false;  // in the store already: not downloaded
  };
  std::string ref;
  std::string phase;  // "resolving", "downloading", "unpacking", "done"
  std::vector<Blob> blobs;
  nlohmann::json to_json() const;
};

struct PullResult {
  std::string registry;    // "127.0.0.1:5000"
  std::string repository;  // "team/app"
  std::string endpoint;    // host that served the manifest (a mirror or the registry)
  std::string digest;      // of the manifest or index the reference resolved to
  uint64_t bytes_downloaded = 0;
  unsigned blobs_downloaded = 0;
  unsigned blobs_present = 0;
  // Files of the layout still to write, relative to it: manifests (whose
  // digests the pull checked), index.json, oci-layout.
  std::vector<std::pair<std::string, std::string>> files;
  // Layers unpacked while they streamed in, by blob digest.
  std::map<std::string, StagedLayer> layers;
};

struct PullContext {
  CurlLoop *http = nullptr;
  const RegistryConfig *config = nullptr;
  const RegistryAuths *auths = nullptr;
  TokenCache *tokens = nullptr;
  Platform platform = Platform::host();
  std::function<bool(const std::string &digest)> have_blob;         // in the store already
  std::function<std::string(const std::string &digest)> read_blob;  // a small one of the store's
  UnpackLimits limits;                 // the store's, for layers unpacked as they stream in
  size_t stream_high_water = 8 << 20;  // bytes queued per blob before its transfer pauses
};

class RegistryPull {
 public:
  using Progress = std::function<void(const PullProgress &)>;
  // status FLOTILLA_OK or the error's; message says what failed, with the
  // registry's own words.
  using Done = std::function<void(flotilla_status, const std::string &message, PullResult)>;

  // layout_dir must not exist; it is created.
  RegistryPull(PullContext ctx, RegistryRef ref, std::filesystem::path layout_dir,
               Progress progress, Done done);
  ~RegistryPull();  // stops the transfers; done is not called
  RegistryPull(const RegistryPull &) = delete;
  RegistryPull &operator=(const RegistryPull &) = delete;

  void start();

  // The blob streams, for the caller to destroy off the loop (joining a
  // cancelled stream's thread may wait for its file removal) before it
  // removes layout_dir. Call after done ran.
  std::vector<std::unique_ptr<BlobStream>> take_streams();

 private:
  struct Endpoint {
    std::string host;
    std::string base;  // "https://host:port"
    std::string ca_file;
    bool mirror = false;
    bool dead = false;          // a connection failed; skipped for the rest of this pull
    std::string authorization;  // header value once a challenge was answered
  };
  struct BlobJob;
  using BodySink = std::function<BodyAction(long status, const char *, size_t)>;
  using Reply = std::function<void(HttpResponse)>;

  // *slot (when given) holds the id of the transfer in flight, across a
  // retry after an auth challenge, and 0 once done runs.
  void exchange(size_t ep, const std::string &path, std::vector<std::string> headers,
                uint64_t range_from, BodySink sink, Reply done, uint64_t *slot,
                bool retried_auth = false);
  void answer_challenge(size_t ep, const HttpResponse &challenge,
                        std::function<void(std::string error)> then);
  void fetch_manifest(
      const std::string &reference, size_t ep, const Descriptor *expect,
      std::function<void(std::string body, std::string media_type, std::string digest)> then);
  void got_top(std::string body, std::string media_type, std::string digest);
  void got_manifest(std::string body, std::string media_type, std::string digest);
  void write_blob_file(const std::string &digest, const std::string &body);
  void pump_blobs();
  void start_blob(BlobJob &job);
  void new_stream(BlobJob &job);
  void blob_done(BlobJob &job, HttpResponse r);
  void stream_finished(BlobJob &job);
  static void on_wake(void *user, int fd, uint32_t events);
  void woken();
  void finish_ok();
  void fail(flotilla_status status, const std::string &message);
  void report(bool force);
  std::string describe(const Endpoint &e) const;
  std::string registry_message(const HttpResponse &r) const;
  bool usable(size_t ep) const;
  size_t next_endpoint(size_t ep) const;

  PullContext ctx_;
  RegistryRef ref_;
  std::filesystem::path layout_dir_;
  Progress progress_cb_;
  Done done_;
  std::vector<Endpoint> endpoints_;
  size_t manifest_ep_ = 0;
  std::set<uint64_t> transfers_;  // ids in flight
  std::vector<std::unique_ptr<BlobJob>> jobs_;
  size_t running_ = 0;       // downloads in flight, at most concurrency
  size_t streams_open_ = 0;  // streams not done yet, at most 2 x concurrency
  size_t next_job_ = 0;
  size_t jobs_done_ = 0;
  Descriptor top_;
  PullProgress progress_;
  PullResult result_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point last_report_{};
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // false once destroyed
  // The streams' threads wake the loop through this eventfd; shared with
  // them so it outlives this object while a stream still holds it.
  struct Waker;
  std::shared_ptr<Waker> waker_;
  flotilla_handle wake_watch_ = 0;
};

}  // namespace flotilla::runc
