// BlobStream and ImageStore::import_pulled(): a layer written, verified and
// unpacked while its bytes arrive (as a registry pull hands them over),
// back-pressure, a corrupt or oversized blob that leaves no blob and no
// snapshot behind, and layers that arrive out of order giving exactly the
// snapshots a sequential import of the same image gives.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "blob_stream.h"
#include "digest.h"
#include "image_error.h"
#include "image_store.h"
#include "image_test_support.h"

namespace flotilla::runc {
namespace {

using nlohmann::json;
using testing::BuiltLayer;
using testing::LayoutBuilder;
using testing::list_tree;
using testing::make_layer;
using testing::read_file;
using testing::TarBuilder;
using testing::TempTree;
namespace fs = std::filesystem;

// The loop's side of a stream, in the test's thread: wake only counts.
struct Wakes {
  std::mutex mu;
  std::condition_variable cv;
  unsigned count = 0;
  std::function<void()> fn() {
    return [this] {
      std::lock_guard<std::mutex> g(mu);
      ++count;
      cv.notify_all();
    };
  }
  // Waits until pred() holds, re-checking at every wake (5 s at most).
  template <class Pred>
  bool wait(Pred pred) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(5), [&] {
      lock.unlock();
      bool ok = pred();
      lock.lock();
      return ok;
    });
  }
};

BlobStream::Options layer_options(const fs::path &dir, const BuiltLayer &l,
                                  const std::string &name) {
  BlobStream::Options o;
  std::string digest = sha256_of(l.bytes);
  o.blob_path = dir / "blobs" / "sha256" / digest.substr(7);
  o.expect = BlobExpectation{digest, static_cast<int64_t>(l.bytes.size()), name};
  o.source = "test registry";
  o.unpack = true;
  o.compression = LayerCompression::gzip;
  o.snapshot_dir = dir / "snapshots" / digest.substr(7);
  o.what = name;
  return o;
}

// Pushes bytes in pieces of `piece`, waiting for room when refused, as the
// loop does with a paused transfer; then finish() and the verdict.
BlobStream::Outcome stream_all(BlobStream &s, Wakes &w, const std::string &bytes,
                               size_t piece = 1000) {
  for (size_t off = 0; off < bytes.size();) {
    size_t n = std::min(piece, bytes.size() - off);
    if (s.push(bytes.data() + off, n)) {
      off += n;
      continue;
    }
    if (s.failed()) break;
    EXPECT_TRUE(w.wait([&] { return s.has_room() || s.failed(); })) << "no room came back";
  }
  s.finish();
  EXPECT_TRUE(w.wait([&] { return s.done(); })) << "the stream never finished";
  return s.outcome();
}

TarBuilder sample_tar() {
  TarBuilder t;
  t.dir("etc").file("etc/hostname", "streamed\n").file("usr/bin/tool", std::string(300000, 'x'));
  return t;
}

TEST(BlobStream, UnpacksALayerWhileItArrivesAndKeepsTheVerifiedBlob) {
  TempTree tree;
  BuiltLayer l = make_layer(sample_tar());
  Wakes w;
  BlobStream::Options o = layer_options(tree.path(), l, "layer 1/1 of test:1");
  BlobStream s(o, w.fn());
  BlobStream::Outcome out = stream_all(s, w, l.bytes, 777);
  ASSERT_EQ(out.status, FLOTILLA_OK) << out.message;
  EXPECT_EQ(out.unpack.diff_id, l.diff_id);
  EXPECT_EQ(read_file(o.blob_path), l.bytes);
  EXPECT_EQ(read_file(o.snapshot_dir / "rootfs" / "etc" / "hostname"), "streamed\n");
  EXPECT_EQ(fs::file_size(o.snapshot_dir / "rootfs" / "usr" / "bin" / "tool"), 300000u);
  // usr and usr/bin had no entries: made implicitly, listed for later.
  EXPECT_EQ(out.unpack.implicit_dirs, (std::vector<std::string>{"", "usr", "usr/bin"}));
}

TEST(BlobStream, MemoryIsBoundedByPausingThePusher) {
  TempTree tree;
  TarBuilder t;
  // Incompressible content, so that the compressed layer is large.
  std::string noise;
  uint32_t x = 12345;
  for (int i = 0; i < 2'000'000; ++i) {
    x = x * 1103515245 + 12345;
    noise += static_cast<char>(x >> 24);
  }
  t.file("noise", noise);
  BuiltLayer l = make_layer(t);
  Wakes w;
  BlobStream::Options o = layer_options(tree.path(), l, "layer 1/1 of test:1");
  o.high_water = 64 * 1024;
  BlobStream s(o, w.fn());
  unsigned refused = 0;
  for (size_t off = 0; off < l.bytes.size();) {
    size_t n = std::min<size_t>(16384, l.bytes.size() - off);
    if (s.push(l.bytes.data() + off, n)) {
      off += n;
      continue;
    }
    ASSERT_FALSE(s.failed());
    ++refused;
    ASSERT_TRUE(w.wait([&] { return s.has_room(); }));
  }
  s.finish();
  ASSERT_TRUE(w.wait([&] { return s.done(); }));
  BlobStream::Outcome out = s.outcome();
  ASSERT_EQ(out.status, FLOTILLA_OK) << out.message;
  EXPECT_GT(refused, 0u) << "2 MB through a 64 KiB queue never had to wait";
  EXPECT_EQ(read_file(o.snapshot_dir / "rootfs" / "noise"), noise);
}

TEST(BlobStream, CorruptLayerLeavesNoSnapshotAndNoBlobAndNamesTheBlob) {
  TempTree tree;
  BuiltLayer l = make_layer(sample_tar());
  std::string corrupt = l.bytes;
  corrupt[corrupt.size() / 2] ^= 0x40;  // in the deflate stream
  Wakes w;
  BlobStream::Options o = layer_options(tree.path(), l, "layer 1/1 of test:1");
  BlobStream s(o, w.fn());
  BlobStream::Outcome out = stream_all(s, w, corrupt);
  EXPECT_EQ(out.status, FLOTILLA_E_INVALID) << out.message;
  // The digest decides, not the broken deflate stream it caused.
  EXPECT_NE(out.message.find("blob " + o.expect.digest), std::string::npos) << out.message;
  EXPECT_NE(out.message.find("its content has digest"), std::string::npos) << out.message;
  EXPECT_FALSE(fs::exists(o.blob_path));
  EXPECT_FALSE(fs::exists(o.snapshot_dir));
}

TEST(BlobStream, LongerThanTheDescriptorStopsAtTheFirstExtraByte) {
  TempTree tree;
  BuiltLayer l = make_layer(sample_tar());
  Wakes w;
  BlobStream::Options o = layer_options(tree.path(), l, "layer 1/1 of test:1");
  o.expect.size = static_cast<int64_t>(l.bytes.size()) - 10;
  BlobStream s(o, w.fn());
  BlobStream::Outcome out = stream_all(s, w, l.bytes);
  EXPECT_EQ(out.status, FLOTILLA_E_INVALID);
  EXPECT_NE(out.message.find("longer than the descriptor's size"), std::string::npos)
      << out.message;
  EXPECT_FALSE(fs::exists(o.blob_path));
  EXPECT_FALSE(fs::exists(o.snapshot_dir));
}

TEST(BlobStream, AValidBlobThatIsNotATarIsRefusedAsALayer) {
  TempTree tree;
  BuiltLayer l;
  l.bytes = "this is no gzip and no tar, but its digest is right";
  Wakes w;
  BlobStream::Options o = layer_options(tree.path(), l, "layer 1/1 of test:1");
  BlobStream s(o, w.fn());
  BlobStream::Outcome out = stream_all(s, w, l.bytes);
  EXPECT_EQ(out.status, FLOTILLA_E_INVALID);
  EXPECT_NE(out.message.find("layer 1/1 of test:1"), std::string::npos) << out.message;
  EXPECT_FALSE(fs::exists(o.blob_path));
  EXPECT_FALSE(fs::exists(o.snapshot_dir));
}

TEST(BlobStream, CancelledMidwayLeavesNothing) {
  TempTree tree;
  BuiltLayer l = make_layer(sample_tar());
  Wakes w;
  BlobStream::Options o = layer_options(tree.path(), l, "layer 1/1 of test:1");
  {
    BlobStream s(o, w.fn());
    ASSERT_TRUE(s.push(l.bytes.data(), l.bytes.size() / 2));
  }  // destroyed: cancelled and joined
  EXPECT_FALSE(fs::exists(o.blob_path));
  EXPECT_FALSE(fs::exists(o.snapshot_dir));
}

// Two layers where the upper one needs the lower one's attributes (a file
// in a directory it does not list, the root without "./") and hides a file
// with a whiteout. Streamed upper first, then lower, and imported with
// import_pulled: every snapshot must equal what import_image of the same
// layout makes, unpacking in order with the lower layers present.
TEST(ImportPulled, LayersUnpackedOutOfOrderMatchASequentialImport) {
  if (::geteuid() != 0) {
    std::string why = "needs root (owners, whiteouts)";
    SKIP_WITH_REASON(why);
  }
  TempTree tree;
  std::string problem = testing::whiteout_support_problem(tree.path());
  if (!problem.empty()) SKIP_WITH_REASON(problem);
  TarBuilder::Meta owned;
  owned.uid = 1234;
  owned.gid = 4321;
  owned.mtime = 1'200'000'000;
  TarBuilder base;
  base.dir("./", 0750, owned)
      .dir("opt", 0710, owned)
      .dir("opt/app", 0700, owned)
      .file("opt/app/old", "old\n")
      .file("etc/keep", "keep\n");
  TarBuilder top;
  top.file("opt/app/new", "new\n").file("opt/app/.wh.old", "").file("var/log/x", "x\n");
  std::vector<BuiltLayer> layers = {make_layer(base), make_layer(top)};

  fs::path layout = tree.path() / "layout";
  LayoutBuilder lb(layout);
  json desc = lb.add_image(layers);
  lb.write_index({desc}, {"1"});

  // The sequential import, as a reference.
  ImageStoreOptions opts;
  opts.sync = false;
  ImageStore ref_store(tree.path() / "ref", opts);
  ImportResult ref = ref_store.import_image(layout, "test/app:1");

  // The streamed one: a copy of the layout where the layers were unpacked
  // as they "arrived", top first.
  fs::path pulled = tree.path() / "pulls" / "1";
  fs::create_directories(pulled);
  fs::copy(layout, pulled, fs::copy_options::recursive);
  std::map<std::string, StagedLayer> staged;
  for (size_t i : {size_t{1}, size_t{0}}) {
    Wakes w;
    BlobStream::Options o = layer_options(pulled / "staging", layers[i], "layer");
    BlobStream s(o, w.fn());
    BlobStream::Outcome out = stream_all(s, w, layers[i].bytes);
    ASSERT_EQ(out.status, FLOTILLA_OK) << out.message;
    staged[o.expect.digest] = StagedLayer{o.snapshot_dir, out.unpack};
  }
  ImageStore store(tree.path() / "store", opts);
  ImportResult got = store.import_pulled(pulled, "test/app:1", nullptr, staged);
  EXPECT_EQ(got.layers_unpacked, 2u);
  ASSERT_EQ(got.record.digest, ref.record.digest);
  ResolvedImage a = ref_store.resolve("test/app:1"), b = store.resolve("test/app:1");
  ASSERT_EQ(a.lower_dirs.size(), 2u);
  ASSERT_EQ(b.lower_dirs.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(list_tree(b.lower_dirs[i]), list_tree(a.lower_dirs[i])) << "snapshot " << i;
  }
  // The top layer's implicit directories: the lower one's owner, mode and
  // mtime, as the sequential import gives them.
  struct stat sa {
  }, sb{};
  for (const char *p : {"", "opt", "opt/app"}) {
    ASSERT_EQ(::lstat((a.lower_dirs[0] / p).c_str(), &sa), 0) << p;
    ASSERT_EQ(::lstat((b.lower_dirs[0] / p).c_str(), &sb), 0) << p;
    EXPECT_EQ(sb.st_mode, sa.st_mode) << p;
    EXPECT_EQ(sb.st_uid, 1234u) << p;
    EXPECT_EQ(sb.st_gid, 4321u) << p;
    if (*p) {
      EXPECT_EQ(sb.st_mtim.tv_sec, sa.st_mtim.tv_sec) << p;
    }
  }
  EXPECT_TRUE(testing::is_whiteout(b.lower_dirs[0] / "opt" / "app" / "old"));
  // The staged layers moved into the store; the blobs too.
  EXPECT_FALSE(fs::exists(pulled / "staging" / "snapshots" / sha256_of(layers[0].bytes).substr(7)));
  EXPECT_FALSE(fs::exists(pulled / "blobs" / "sha256" / sha256_of(layers[0].bytes).substr(7)));
}

// A staged layer whose content is not what the config's diff_ids say is
// refused, and the store keeps nothing of the image.
TEST(ImportPulled, AStagedLayerWithTheWrongDiffIdIsRefused) {
  TempTree tree;
  BuiltLayer good = make_layer(sample_tar());
  TarBuilder other;
  other.file("other", "other\n");
  BuiltLayer wrong = make_layer(other);
  fs::path layout = tree.path() / "pulls" / "1";
  LayoutBuilder lb(layout);
  json desc = lb.add_image({good});
  lb.write_index({desc}, {"1"});
  // A stream of other bytes staged under the good layer's digest.
  Wakes w;
  BlobStream::Options o = layer_options(layout / "staging", wrong, "layer");
  BlobStream s(o, w.fn());
  BlobStream::Outcome out = stream_all(s, w, wrong.bytes);
  ASSERT_EQ(out.status, FLOTILLA_OK) << out.message;
  std::map<std::string, StagedLayer> staged;
  staged[sha256_of(good.bytes)] = StagedLayer{o.snapshot_dir, out.unpack};
  ImageStoreOptions opts;
  opts.sync = false;
  ImageStore store(tree.path() / "store", opts);
  try {
    store.import_pulled(layout, "test/app:1", nullptr, staged);
    ADD_FAILURE() << "imported";
  } catch (const ImageError &e) {
    EXPECT_NE(std::string(e.what()).find("rootfs.diff_ids[0]"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(store.list().empty());
  EXPECT_TRUE(fs::is_empty(tree.path() / "store" / "snapshots"));
  EXPECT_TRUE(fs::is_empty(tree.path() / "store" / "blobs" / "sha256"));
}

}  // namespace
}  // namespace flotilla::runc
