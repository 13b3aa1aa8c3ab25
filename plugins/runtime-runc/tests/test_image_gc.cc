// Image garbage collection (ImageStore::collect_unused): unused images go
// after image_unused_after, oldest first, and more while the store is over
// its size limit; an image a container holds always stays.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "image_store.h"
#include "image_test_support.h"

namespace flotilla::runc {
namespace {

using testing::LayoutBuilder;
using testing::make_layer;
using testing::TarBuilder;
using testing::TempTree;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A one-layer image whose layer holds content (distinct per image).
void make_image(const fs::path &dir, const std::string &content) {
  LayoutBuilder b(dir);
  TarBuilder t;
  t.file("data", content);
  b.write_index({b.add_image({make_layer(t)})});
}

class ImageGcTest : public ::testing::Test {
 protected:
  TempTree tree_;
};

TEST_F(ImageGcTest, RemovesUnusedImagesAfterTheLimitAndKeepsUsedOnes) {
  make_image(tree_ / "a", "image a");
  make_image(tree_ / "b", "image b");
  ImageStore store(tree_ / "store");
  store.import_image(tree_ / "a", "a:1");
  store.import_image(tree_ / "b", "b:1");
  store.import_image(tree_ / "b", "b:also");  // a second name of b
  ResolvedImage used = store.acquire("a:1");

  // Not old enough yet: nothing goes.
  ImageGcResult none = store.collect_unused(24h, 0);
  EXPECT_TRUE(none.removed.empty());
  EXPECT_EQ(store.list().size(), 3u);

  // A day later: b (both names) goes, a is held by a container and stays.
  ImageGcResult r = store.collect_unused(24h, 0, std::chrono::system_clock::now() + 25h);
  EXPECT_EQ(r.removed, (std::vector<std::string>{"b:1", "b:also"}));
  EXPECT_GT(r.gc.blobs_removed, 0u);
  EXPECT_EQ(r.gc.snapshots_removed, 1u);
  ASSERT_EQ(store.list().size(), 1u);
  EXPECT_EQ(store.list()[0].name, "a:1");

  // Released, a is unused from now on: it goes a day after the release.
  store.release(used.record.digest);
  EXPECT_TRUE(store.collect_unused(24h, 0, std::chrono::system_clock::now() + 23h).removed.empty());
  EXPECT_EQ(store.collect_unused(24h, 0, std::chrono::system_clock::now() + 25h).removed,
            std::vector<std::string>{"a:1"});
  EXPECT_TRUE(store.list().empty());
  EXPECT_TRUE(fs::is_empty(tree_ / "store" / "blobs" / "sha256"));
  EXPECT_TRUE(fs::is_empty(tree_ / "store" / "snapshots"));
}

TEST_F(ImageGcTest, SizeLimitRemovesTheOldestUnusedFirst) {
  make_image(tree_ / "old", std::string(4000, 'o'));
  make_image(tree_ / "mid", std::string(4000, 'm'));
  make_image(tree_ / "new", std::string(4000, 'n'));
  ImageStore store(tree_ / "store");
  store.import_image(tree_ / "old", "old:1");
  store.import_image(tree_ / "mid", "mid:1");
  store.import_image(tree_ / "new", "new:1");
  // old is in use; "used" times: old, then mid, then new.
  ResolvedImage held = store.acquire("old:1");
  store.release(store.acquire("mid:1").record.digest);
  store.release(store.acquire("new:1").record.digest);
  uint64_t one = store.get("mid:1").size;
  // Room for two images: the oldest unused (mid) goes, old stays (in use).
  ImageGcResult r = store.collect_unused(24h, 2 * one + one / 2);
  EXPECT_EQ(r.removed, std::vector<std::string>{"mid:1"});
  EXPECT_EQ(store.list().size(), 2u);
  // Room for none: new goes too, old still stays.
  r = store.collect_unused(24h, 1);
  EXPECT_EQ(r.removed, std::vector<std::string>{"new:1"});
  ASSERT_EQ(store.list().size(), 1u);
  EXPECT_EQ(store.list()[0].name, "old:1");
  store.release(held.record.digest);
}

}  // namespace
}  // namespace flotilla::runc
