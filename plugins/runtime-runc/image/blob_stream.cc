#include "blob_stream.h"

#include <sys/stat.h>
#include <unistd.h>

#include <exception>
#include <memory>

#include "fs_ops.h"
#include "image_error.h"

namespace flotilla::runc {

namespace fs = std::filesystem;

namespace {
// Small curl writes are joined up to this, so the extractor reads larger
// pieces and the queue holds fewer allocations.
constexpr size_t kChunkBytes = 256 * 1024;
}  // namespace

struct BlobStream::Cancelled : std::exception {
  const char *what() const noexcept override { return "the pull was cancelled"; }
};

// The extractor's input: each chunk goes through the blob writer (size,
// hash, file) before the extractor sees it. A failure of the writer is the
// blob's, not the layer's: remembered so that it is reported as such.
class BlobStream::Reader : public LayerSource {
 public:
  Reader(BlobStream &stream, VerifiedBlobWriter &writer) : stream_(stream), writer_(writer) {}
  size_t read(const void **data) override {
    if (!stream_.pop(&chunk_)) {
      ended_ = true;
      *data = nullptr;
      return 0;
    }
    try {
      writer_.write(chunk_.data(), chunk_.size());
    } catch (...) {
      blob_failed_ = true;
      throw;
    }
    *data = chunk_.data();
    return chunk_.size();
  }
  bool blob_failed() const { return blob_failed_; }
  bool ended() const { return ended_; }

 private:
  BlobStream &stream_;
  VerifiedBlobWriter &writer_;
  std::string chunk_;
  bool blob_failed_ = false;
  bool ended_ = false;
};

BlobStream::BlobStream(Options options, std::function<void()> wake)
    : options_(std::move(options)), wake_(std::move(wake)) {
  thread_ = std::thread([this] { run(); });
}

BlobStream::~BlobStream() {
  cancel();
  if (thread_.joinable()) thread_.join();
}

bool BlobStream::push(const char *data, size_t len) {
  if (failed_.load()) return false;
  {
    std::lock_guard<std::mutex> g(mutex_);
    if (cancelled_ || finished_) return false;
    if (queued_ >= options_.high_water) {
      paused_ = true;
      return false;
    }
    bool was_empty = chunks_.empty();
    if (!chunks_.empty() && chunks_.back().size() + len <= kChunkBytes) {
      chunks_.back().append(data, len);
    } else {
      chunks_.emplace_back(data, len);
    }
    queued_ += len;
    pushed_ += len;
    if (!was_empty) return true;
  }
  cv_.notify_one();
  return true;
}

void BlobStream::finish() {
  {
    std::lock_guard<std::mutex> g(mutex_);
    finished_ = true;
  }
  cv_.notify_one();
}

void BlobStream::cancel() {
  {
    std::lock_guard<std::mutex> g(mutex_);
    cancelled_ = true;
  }
  cv_.notify_one();
}

bool BlobStream::has_room() const {
  std::lock_guard<std::mutex> g(mutex_);
  return queued_ <= options_.high_water / 2;
}

BlobStream::Outcome BlobStream::outcome() {
  if (thread_.joinable()) thread_.join();
  return outcome_;
}

bool BlobStream::pop(std::string *chunk) {
  bool wake = false;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return cancelled_ || !chunks_.empty() || finished_; });
    if (cancelled_) throw Cancelled();
    if (chunks_.empty()) return false;  // finished
    *chunk = std::move(chunks_.front());
    chunks_.pop_front();
    queued_ -= chunk->size();
    if (paused_ && queued_ <= options_.high_water / 2) {
      paused_ = false;
      wake = true;
    }
  }
  if (wake) wake_();
  return true;
}

void BlobStream::run() {
  Outcome out;
  std::unique_ptr<VerifiedBlobWriter> writer;
  bool made_snapshot_dir = false;
  bool made_blob = false;  // created (O_EXCL) by this stream
  try {
    std::error_code ec;
    fs::create_directories(options_.blob_path.parent_path(), ec);
    if (ec) {
      throw ImageError(FLOTILLA_E_IO,
                       "create " + options_.blob_path.parent_path().string() + ": " + ec.message());
    }
    writer = std::make_unique<VerifiedBlobWriter>(options_.blob_path, options_.expect,
                                                  options_.source, false);
    made_blob = true;
    Reader reader(*this, *writer);
    std::exception_ptr unpack_error;
    if (options_.unpack) {
      fs::create_directories(options_.snapshot_dir.parent_path(), ec);
      if (::mkdir(options_.snapshot_dir.c_str(), 0700) != 0)
        throw_errno(options_.what + ": create " + options_.snapshot_dir.string());
      made_snapshot_dir = true;
      try {
        out.unpack =
            unpack_layer_from(reader, options_.compression, options_.snapshot_dir / "rootfs", {},
                              options_.limits, options_.what);
      } catch (const Cancelled &) {
        throw;
      } catch (...) {
        if (reader.blob_failed()) throw;
        unpack_error = std::current_exception();  // unless the digest says why
      }
    }
    // The rest: all of it when not unpacking or after an unpack error,
    // else what follows the compressed stream's end.
    const void *data = nullptr;
    while (!reader.ended() && reader.read(&data) > 0) {
    }
    writer->commit();  // size and digest: a mismatch throws, naming the blob
    if (unpack_error) std::rethrow_exception(unpack_error);
  } catch (const Cancelled &e) {
    out.status = FLOTILLA_E_CANCELLED;
    out.message = e.what();
  } catch (const ImageError &e) {
    out.status = e.status();
    out.message = e.what();
  } catch (const std::bad_alloc &) {
    out.status = FLOTILLA_E_NOMEM;
    out.message = "out of memory";
  } catch (const std::exception &e) {
    out.status = FLOTILLA_E_IO;
    out.message = e.what();
  }
  if (out.status != FLOTILLA_OK) {
    writer.reset();  // deletes the blob's file, unless it was committed
    if (made_blob) ::unlink(options_.blob_path.c_str());
    if (made_snapshot_dir) {
      try {
        remove_tree(options_.snapshot_dir);
      } catch (...) {
        // The pull's directory goes as a whole afterwards.
      }
    }
    failed_.store(true);
  }
  outcome_ = std::move(out);
  done_.store(true);
  wake_();
}

}  // namespace flotilla::runc
