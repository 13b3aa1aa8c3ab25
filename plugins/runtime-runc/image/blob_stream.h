// One blob arriving from a registry, handed over by the loop to a thread of
// its own that writes it to a file while verifying its size and SHA-256
// (VerifiedBlobWriter) and, for a layer, unpacks it on the way
// (unpack_layer_from, the extractor imports use) into a staging snapshot
// directory: decompression and extraction run while the rest downloads,
// not after it.
//
// Why a thread per blob and not the host's work queue: libarchive pulls its
// input, so the extractor has to wait for bytes; a pool thread waiting on
// the network would hold up every other job queued there (container
// starts). A pull runs at most `concurrency` (default 3) streams at once.
//
// Memory is bounded: push() refuses bytes once high_water are queued; the
// loop then pauses that transfer (CURL_WRITEFUNC_PAUSE) and resumes it when
// wake reports room again (below half of high_water).
//
// The end: finish() after the last byte; the thread then checks the size
// and the digest. A mismatch removes the staging snapshot and the blob
// (nothing is kept) and the error names the blob. When unpacking fails part
// way, the rest is still hashed, so that a blob corrupted on the way is
// reported as such, by digest, and not as a broken tar; with the digest
// right, the unpack error (naming the entry) is the one reported, and
// nothing is kept either.
//
// The layer is unpacked without the layers below it (they may still be
// arriving, or arrive later): UnpackResult::implicit_dirs says what
// adopt_lower_attributes() fixes once they are all there.
//
// Threading: every method [loop-thread]; wake runs on the stream's thread
// (it must only signal the loop, e.g. write an eventfd).
#pragma once

#include <flotilla/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "blob_store.h"
#include "layer_unpack.h"
#include "oci_manifest.h"

namespace flotilla::runc {

class BlobStream {
 public:
  struct Options {
    std::filesystem::path blob_path;  // a new file (its directory is created)
    BlobExpectation expect;
    std::string source;  // "registry 127.0.0.1:5000", for errors
    bool unpack = false;
    LayerCompression compression = LayerCompression::gzip;  // as the media type says
    std::filesystem::path snapshot_dir;  // unpack: created; the layer goes to rootfs/ in it
    UnpackLimits limits;
    std::string what;  // "layer 2/3 (sha256:…) of team/app:1", for unpack errors
    size_t high_water = 8 << 20;
  };
  struct Outcome {
    flotilla_status status = FLOTILLA_OK;
    std::string message;
    UnpackResult unpack;  // unpack: what unpack_layer_from returned
  };

  BlobStream(Options options, std::function<void()> wake);
  // Cancels (the staging snapshot and the blob go) and joins the thread.
  ~BlobStream();
  BlobStream(const BlobStream &) = delete;
  BlobStream &operator=(const BlobStream &) = delete;

  // Takes a copy of the bytes. false: nothing taken, either because the
  // queue is full (pause; wake says when has_room()) or because the stream
  // failed (failed()).
  bool push(const char *data, size_t len);
  void finish();  // no more bytes
  // Stops the thread soon without waiting for it (the destructor joins).
  void cancel();

  bool has_room() const;
  bool failed() const { return failed_.load(); }
  bool done() const { return done_.load(); }
  uint64_t bytes_pushed() const { return pushed_; }
  // After done(): the result; joins the (finished) thread.
  Outcome outcome();

 private:
  class Reader;
  struct Cancelled;
  void run();
  // [stream thread] The next chunk into *chunk; false at the end.
  bool pop(std::string *chunk);

  Options options_;
  std::function<void()> wake_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::string> chunks_;  // under mutex_
  size_t queued_ = 0;               // bytes in chunks_, under mutex_
  bool finished_ = false;           // under mutex_
  bool cancelled_ = false;          // under mutex_
  bool paused_ = false;             // push refused for room, under mutex_
  uint64_t pushed_ = 0;             // loop thread only
  std::atomic<bool> failed_{false};
  std::atomic<bool> done_{false};
  Outcome outcome_;  // written by the thread before done_
  std::thread thread_;
};

}  // namespace flotilla::runc
