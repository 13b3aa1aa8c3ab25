// unpack_layer(): metadata preservation, whiteout conversion, and every
// hostile layer we know of. Each hostile case asserts that the layer is
// refused, that its partial snapshot is gone, and that nothing outside the
// snapshot changed: a sentinel file keeps its content and no path appears
// or disappears anywhere in the test's tree.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <string>

#include "image_error.h"
#include "image_test_support.h"
#include "layer_unpack.h"

namespace flotilla::runc {
namespace {

using testing::is_whiteout;
using testing::list_tree;
using testing::read_file;
using testing::TarBuilder;
using testing::TempTree;
using testing::write_file;
namespace fs = std::filesystem;

class LayerUnpackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    outside_ = tree_ / "outside";
    sentinel_ = outside_ / "sentinel";
    write_file(sentinel_, "sentinel");
    fs::create_directories(outside_ / "dir");
    fs::create_directories(tree_ / "work");
    rootfs_ = tree_ / "work" / "rootfs";
  }

  UnpackResult unpack(const std::string &blob, LayerCompression c = LayerCompression::none,
                      const UnpackLimits &limits = {}) {
    fs::path path = tree_ / ("layer-" + std::to_string(counter_++));
    write_file(path, blob);
    return unpack_layer(path, c, rootfs_, {}, limits, "test layer");
  }

  // The layer must be refused with a message containing expect, leave no
  // snapshot, and change nothing else.
  void expect_refused(const std::string &blob, const std::string &expect,
                      const UnpackLimits &limits = {},
                      LayerCompression c = LayerCompression::none) {
    fs::path path = tree_ / ("layer-" + std::to_string(counter_++));
    write_file(path, blob);
    auto before = list_tree(tree_.path());
    try {
      unpack_layer(path, c, rootfs_, {}, limits, "test layer");
      ADD_FAILURE() << "layer was not refused (expected: " << expect << ")";
    } catch (const ImageError &e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
      EXPECT_NE(e.status(), FLOTILLA_OK);
    }
    EXPECT_FALSE(fs::exists(fs::symlink_status(rootfs_))) << "partial snapshot left behind";
    EXPECT_EQ(read_file(sentinel_), "sentinel");
    EXPECT_EQ(list_tree(tree_.path()), before) << "something outside the snapshot changed";
    EXPECT_FALSE(fs::exists("/tmp/flotilla-pwned"));
  }

  TempTree tree_;
  fs::path outside_, sentinel_, rootfs_;
  int counter_ = 0;
};

// ---- faithful unpacking ---------------------------------------------------

TEST_F(LayerUnpackTest, PreservesModesOwnersTimesLinksAndXattrs) {
  TarBuilder::Meta owned;
  owned.uid = 1234;
  owned.gid = 5678;
  owned.mtime = 1'234'567'890;
  TarBuilder::Meta dir_meta;
  dir_meta.mtime = 1'111'111'111;
  dir_meta.uid = 42;
  TarBuilder::Meta xattrs;
  xattrs.xattrs = {{"user.flotilla", "yes"}, {"trusted.evil", "no"}};
  std::string blob = TarBuilder()
                         .dir("./", 0755)
                         .dir("etc", 0710, dir_meta)
                         .file("etc/secret", "s3cret", 0640, owned)
                         .file("bin/tool", "#!/bin/sh\n", 0755, xattrs)
                         .symlink("bin/link", "tool", owned)
                         .symlink("abs", "/etc/passwd")
                         .hardlink("bin/tool-again", "bin/tool")
                         .fifo("run/fifo", 0620)
                         .file("deep/a/b/c", "implicit parents")
                         .finish(LayerCompression::gzip);
  UnpackResult r = unpack(blob, LayerCompression::gzip);

  struct stat st {};
  ASSERT_EQ(::lstat((rootfs_ / "etc/secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1'234'567'890);
  EXPECT_EQ(read_file(rootfs_ / "etc/secret"), "s3cret");

  ASSERT_EQ(::lstat((rootfs_ / "etc").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0710u);
  EXPECT_EQ(st.st_uid, 42u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1'111'111'111) << "directory mtime must survive its children";

  ASSERT_EQ(::lstat((rootfs_ / "bin/link").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(fs::read_symlink(rootfs_ / "bin/link"), "tool");
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1'234'567'890);
  EXPECT_EQ(fs::read_symlink(rootfs_ / "abs"), "/etc/passwd");

  struct stat a {
  }, b{};
  ASSERT_EQ(::lstat((rootfs_ / "bin/tool").c_str(), &a), 0);
  ASSERT_EQ(::lstat((rootfs_ / "bin/tool-again").c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_mode & 07777, 0755u);
  EXPECT_EQ(testing::get_xattr(rootfs_ / "bin/tool", "user.flotilla"), "yes");
  EXPECT_EQ(testing::get_xattr(rootfs_ / "bin/tool", "trusted.evil"), "");

  ASSERT_EQ(::lstat((rootfs_ / "run/fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0620u);

  ASSERT_EQ(::lstat((rootfs_ / "deep/a/b").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(read_file(rootfs_ / "deep/a/b/c"), "implicit parents");

  EXPECT_EQ(r.entries, 9u);
  EXPECT_EQ(r.diff_id, sha256_of(TarBuilder()
                                     .dir("./", 0755)
                                     .dir("etc", 0710, dir_meta)
                                     .file("etc/secret", "s3cret", 0640, owned)
                                     .file("bin/tool", "#!/bin/sh\n", 0755, xattrs)
                                     .symlink("bin/link", "tool", owned)
                                     .symlink("abs", "/etc/passwd")
                                     .hardlink("bin/tool-again", "bin/tool")
                                     .fifo("run/fifo", 0620)
                                     .file("deep/a/b/c", "implicit parents")
                                     .finish()));
  bool dropped_note = false;
  for (const auto &n : r.notes) dropped_note |= n.find("trusted.evil") != std::string::npos;
  EXPECT_TRUE(dropped_note) << "dropping an xattr must be noted";
}

TEST_F(LayerUnpackTest, ZstdAndPlainTarAreDetectedBySniffing) {
  TarBuilder tar;
  tar.file("hello", "zstd");
  // The media type claims gzip; the data is zstd. Sniffing wins, with a note.
  UnpackResult r = unpack(tar.finish(LayerCompression::zstd), LayerCompression::gzip);
  EXPECT_EQ(read_file(rootfs_ / "hello"), "zstd");
  ASSERT_FALSE(r.notes.empty());
  EXPECT_NE(r.notes[0].find("zstd"), std::string::npos);
  EXPECT_EQ(r.diff_id, sha256_of(tar.finish()));
}

TEST_F(LayerUnpackTest, KeepsNonAsciiNamesByteForByte) {
  std::string name =
      "donn\xc3\xa9"
      "es/caf\xc3\xa9-" +
      std::string(120, 'x') + ".txt";
  std::string latin1 = "latin1-\xe9";
  UnpackResult r = unpack(TarBuilder().file(name, "raw").file(latin1, "latin1").finish());
  EXPECT_EQ(read_file(rootfs_ / name), "raw");
  EXPECT_EQ(read_file(rootfs_ / latin1), "latin1");
  for (const auto &n : r.notes) ADD_FAILURE() << "unexpected note: " << n;
  fs::remove_all(rootfs_);
  r = unpack(TarBuilder().utf8_names().file(name, "utf-8").finish());
  EXPECT_EQ(read_file(rootfs_ / name), "utf-8");
  for (const auto &n : r.notes) ADD_FAILURE() << "unexpected note: " << n;
}

TEST_F(LayerUnpackTest, SetuidBitsAreKeptAndNoted) {
  UnpackResult r =
      unpack(TarBuilder().file("bin/su", "x", 04755).file("bin/wall", "y", 02755).finish());
  struct stat st {};
  ASSERT_EQ(::lstat((rootfs_ / "bin/su").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
  ASSERT_EQ(::lstat((rootfs_ / "bin/wall").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 02755u);
  ASSERT_EQ(r.notes.size(), 2u);
  EXPECT_NE(r.notes[0].find("bin/su: setuid"), std::string::npos) << r.notes[0];
  EXPECT_NE(r.notes[1].find("bin/wall: setgid"), std::string::npos) << r.notes[1];
}

TEST_F(LayerUnpackTest, LaterEntriesReplaceEarlierOnesWithoutFollowingLinks) {
  // A symlink to the sentinel, then a regular file of the same name: the
  // link is replaced, the sentinel untouched.
  std::string blob = TarBuilder()
                         .symlink("f", sentinel_.string())
                         .file("f", "replaced")
                         .symlink("g", sentinel_.string())
                         .hardlink("h", "g")
                         .file("h", "also replaced")
                         .dir("d")
                         .file("d/x", "gone")
                         .file("d", "a file now")
                         .finish();
  unpack(blob);
  EXPECT_EQ(read_file(rootfs_ / "f"), "replaced");
  EXPECT_EQ(read_file(rootfs_ / "h"), "also replaced");
  EXPECT_EQ(read_file(rootfs_ / "d"), "a file now");
  EXPECT_TRUE(fs::is_symlink(rootfs_ / "g"));
  EXPECT_EQ(read_file(sentinel_), "sentinel");
}

TEST_F(LayerUnpackTest, InLayerRelativeSymlinksMayBeTraversed) {
  unpack(TarBuilder().dir("usr/lib").symlink("lib", "usr/lib").file("lib/libc.so", "c").finish());
  EXPECT_EQ(read_file(rootfs_ / "usr/lib/libc.so"), "c");
}

TEST_F(LayerUnpackTest, ImplicitParentsTakeOwnerAndModeFromLowerLayers) {
  fs::path lower = tree_ / "lower";
  unpack_layer(
      [&] {
        fs::path p = tree_ / "lower.tar";
        TarBuilder::Meta m;
        m.uid = 7;
        write_file(p, TarBuilder().dir("tmp", 01777, m).finish());
        return p;
      }(),
      LayerCompression::none, lower, {}, {}, "lower layer");
  fs::path p = tree_ / "upper.tar";
  write_file(p, TarBuilder().file("tmp/new", "n").finish());
  unpack_layer(p, LayerCompression::none, rootfs_, {lower}, {}, "upper layer");
  struct stat st {};
  ASSERT_EQ(::lstat((rootfs_ / "tmp").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 01777u);
  EXPECT_EQ(st.st_uid, 7u);
}

// ---- whiteouts ------------------------------------------------------------

TEST_F(LayerUnpackTest, WhiteoutsBecomeOverlayWhiteouts) {
  std::string problem = testing::whiteout_support_problem(tree_.path());
  if (!problem.empty()) SKIP_WITH_REASON(problem);
  std::string blob = TarBuilder()
                         .file(".wh.gone", "")
                         .dir("etc")
                         .file("etc/.wh.shadow", "")
                         .dir("opaque")
                         .file("opaque/.wh..wh..opq", "")
                         .file("opaque/kept", "k")
                         .file("implicit/.wh..wh..opq", "")
                         .file(".wh.replaced", "")
                         .dir("replaced")
                         .file("samefile", "here")
                         .file(".wh.samefile", "")
                         .device("already-overlay", false, 0, 0)
                         .file(".wh..wh.plnk", "")
                         .finish();
  UnpackResult r = unpack(blob);
  EXPECT_TRUE(is_whiteout(rootfs_ / "gone"));
  EXPECT_TRUE(is_whiteout(rootfs_ / "etc/shadow"));
  EXPECT_TRUE(is_whiteout(rootfs_ / "already-overlay"));
  EXPECT_EQ(testing::get_xattr(rootfs_ / "opaque", kOverlayOpaqueXattr), "y");
  EXPECT_EQ(read_file(rootfs_ / "opaque/kept"), "k");
  EXPECT_EQ(testing::get_xattr(rootfs_ / "implicit", kOverlayOpaqueXattr), "y");
  // Whiteout and directory of one name: the directory hides what is below.
  EXPECT_TRUE(fs::is_directory(rootfs_ / "replaced"));
  EXPECT_EQ(testing::get_xattr(rootfs_ / "replaced", kOverlayOpaqueXattr), "y");
  // Whiteout and file of one name: the file of this layer stays.
  EXPECT_EQ(read_file(rootfs_ / "samefile"), "here");
  EXPECT_EQ(testing::get_xattr(rootfs_ / "etc", kOverlayOpaqueXattr), "");
  for (const auto &[path, desc] : list_tree(rootfs_)) {
    EXPECT_EQ(path.find(".wh."), std::string::npos) << path << " should have been converted";
  }
}

// ---- hostile layers -------------------------------------------------------

TEST_F(LayerUnpackTest, RefusesDotDotPaths) {
  expect_refused(TarBuilder().file("../outside/pwned", "x").finish(), "\"..\" component");
  expect_refused(TarBuilder().dir("a").file("a/../../outside/pwned", "x").finish(),
                 "\"..\" component");
}

TEST_F(LayerUnpackTest, RefusesAbsolutePaths) {
  expect_refused(TarBuilder().file((outside_ / "pwned").string(), "x").finish(), "absolute path");
  expect_refused(TarBuilder().file("/tmp/flotilla-pwned", "x").finish(), "absolute path");
}

TEST_F(LayerUnpackTest, RefusesWritingThroughARelativeSymlinkOutOfTheRoot) {
  // rootfs is tree/work/rootfs; ../../outside is the tree's outside/.
  expect_refused(TarBuilder().symlink("esc", "../../outside").file("esc/pwned", "x").finish(),
                 "leads outside the layer");
  expect_refused(TarBuilder().symlink("esc", "../../outside").dir("esc/newdir").finish(),
                 "leads outside the layer");
}

TEST_F(LayerUnpackTest, RefusesWritingThroughAnAbsoluteSymlink) {
  expect_refused(TarBuilder().symlink("esc", outside_.string()).file("esc/pwned", "x").finish(),
                 "leads outside the layer");
  expect_refused(TarBuilder().symlink("esc", "/tmp").file("esc/flotilla-pwned", "x").finish(),
                 "leads outside the layer");
  // Overwriting the sentinel through the link.
  expect_refused(TarBuilder().symlink("esc", outside_.string()).file("esc/sentinel", "p").finish(),
                 "leads outside the layer");
}

TEST_F(LayerUnpackTest, RefusesWhiteoutsAndFifosThroughAnEscapingSymlink) {
  expect_refused(
      TarBuilder().symlink("esc", outside_.string()).file("esc/.wh.sentinel", "").finish(),
      "leads outside the layer");
  expect_refused(
      TarBuilder().symlink("esc", outside_.string()).file("esc/dir/.wh..wh..opq", "").finish(),
      "leads outside the layer");
  expect_refused(TarBuilder().symlink("esc", "../../outside").fifo("esc/fifo").finish(),
                 "leads outside the layer");
  expect_refused(TarBuilder().symlink("esc", outside_.string()).symlink("esc/link", "/").finish(),
                 "leads outside the layer");
}

TEST_F(LayerUnpackTest, RefusesSymlinkChainsOutOfTheRoot) {
  expect_refused(TarBuilder()
                     .symlink("a", "b")
                     .symlink("b", "c/../../../outside")
                     .dir("c")
                     .file("a/pwned", "x")
                     .finish(),
                 "leads outside the layer");
}

TEST_F(LayerUnpackTest, RefusesADirectoryReplacedByAnEscapingSymlink) {
  expect_refused(
      TarBuilder().dir("d").symlink("d", outside_.string()).file("d/pwned", "x").finish(),
      "leads outside the layer");
}

TEST_F(LayerUnpackTest, RefusesHardLinksOutOfTheRoot) {
  expect_refused(TarBuilder().hardlink("h", "../../outside/sentinel").finish(), "\"..\" component");
  expect_refused(TarBuilder().hardlink("h", sentinel_.string()).finish(), "absolute path");
  expect_refused(
      TarBuilder().symlink("esc", outside_.string()).hardlink("h", "esc/sentinel").finish(),
      "outside the layer");
}

TEST_F(LayerUnpackTest, RefusesHardLinksToEntriesNotYetExtracted) {
  expect_refused(TarBuilder().hardlink("h", "later").file("later", "x").finish(),
                 "has not been extracted");
  expect_refused(TarBuilder().hardlink("h", "nodir/later").finish(), "has not been extracted");
}

// By default device nodes are left out and listed, never created: the
// runtime makes each container's /dev (a debootstrap rootfs packed by
// umoci has dev/console, dev/null, ...).
TEST_F(LayerUnpackTest, SkipsDeviceNodesAndListsThem) {
  UnpackResult r = unpack(TarBuilder()
                              .dir("dev")
                              .device("dev/console", false, 5, 1)
                              .device("dev/sda", true, 8, 0)
                              .hardlink("dev/console-again", "dev/console")
                              .file("etc/hostname", "box\n")
                              .finish());
  EXPECT_EQ(
      r.skipped_devices,
      (std::vector<std::string>{"dev/console (character device 5:1)", "dev/sda (block device 8:0)",
                                "dev/console-again (hard link to dev/console)"}));
  EXPECT_TRUE(fs::is_directory(rootfs_ / "dev"));
  for (const char *gone : {"dev/console", "dev/sda", "dev/console-again"})
    EXPECT_FALSE(fs::exists(fs::symlink_status(rootfs_ / gone))) << gone;
  EXPECT_EQ(read_file(rootfs_ / "etc/hostname"), "box\n");
  EXPECT_EQ(r.unpacked_bytes, 4u);
}

TEST_F(LayerUnpackTest, RefusesDeviceNodesWhenTheHostSaysSo) {
  UnpackLimits refuse;
  refuse.device_nodes = DeviceNodes::refuse;
  expect_refused(TarBuilder().device("dev/sda", true, 8, 0).finish(), "block device 8:0", refuse);
  expect_refused(TarBuilder().device("dev/null", false, 1, 3).finish(), "character device 1:3",
                 refuse);
  expect_refused(TarBuilder().device("dev/null", false, 1, 3).finish(),
                 "plugin.runtime-runc.device_nodes = \"refuse\"", refuse);
}

TEST_F(LayerUnpackTest, FootprintIsReadFromTheHeadersWithoutUnpacking) {
  fs::path blob = tree_ / "footprint.tar.gz";
  write_file(blob, TarBuilder()
                       .dir("a")
                       .file("a/one", std::string(5000, 'x'))
                       .file("a/two", "y")
                       .symlink("a/link", "one")
                       .finish(LayerCompression::gzip));
  LayerFootprint f = layer_footprint(blob, 4096, 0, {}, "test layer");
  EXPECT_EQ(f.entries, 4u);
  EXPECT_EQ(f.file_bytes, 5001u);
  EXPECT_EQ(f.disk_bytes, 8192u + 4096u + 4096u + 4096u);  // 5000 -> 2 blocks, 1 -> 1, dir, link
  EXPECT_FALSE(fs::exists(rootfs_));
  // Stops counting past the bound.
  EXPECT_LT(layer_footprint(blob, 4096, 5000, {}, "test layer").entries, 4u);
}

TEST_F(LayerUnpackTest, RefusesAbsurdSizes) {
  // A ustar header whose size field claims 2^62 bytes.
  std::string tar = TarBuilder().file("big", "x").finish(LayerCompression::none, "ustar");
  expect_refused(testing::patch_tar_size(tar, 0, int64_t{1} << 62), "declares a size of");
  // And one that claims a negative size.
  std::string negative = testing::patch_tar_size(tar, 0, -5);
  expect_refused(negative, "test layer");
}

TEST_F(LayerUnpackTest, RefusesTarBombs) {
  UnpackLimits few_entries;
  few_entries.max_entries = 50;
  TarBuilder many;
  for (int i = 0; i < 60; ++i) many.file("f" + std::to_string(i), "x");
  expect_refused(many.finish(), "more than 50 entries", few_entries);

  UnpackLimits small_files;
  small_files.max_entry_bytes = 1 << 20;
  expect_refused(TarBuilder().file("big", std::string(2 << 20, 'a')).finish(),
                 "more than the limit of 1048576", small_files);

  // 32 MiB of zeros compress to a few KiB; the uncompressed stream limit
  // stops it.
  UnpackLimits small_layer;
  small_layer.max_layer_bytes = 4 << 20;
  std::string bomb =
      TarBuilder().file("zeros", std::string(32 << 20, '\0')).finish(LayerCompression::gzip);
  EXPECT_LT(bomb.size(), 1u << 20);
  expect_refused(bomb, "larger than the limit of 4194304", small_layer, LayerCompression::gzip);
}

TEST_F(LayerUnpackTest, RefusesPathsTooLongOrTooDeep) {
  std::string deep;
  for (int i = 0; i < 300; ++i) deep += "d/";
  expect_refused(TarBuilder().file(deep + "f", "x").finish(), "nested deeper than 256");
  expect_refused(TarBuilder().file(std::string(300, 'n'), "x").finish(), "longer than 255");
}

TEST_F(LayerUnpackTest, RefusesGarbage) {
  expect_refused(std::string(4096, 'g'), "not a tar archive");
  std::string gz = TarBuilder().file("a", "b").finish(LayerCompression::gzip);
  gz.resize(gz.size() / 2);
  expect_refused(gz, "test layer", {}, LayerCompression::gzip);
}

}  // namespace
}  // namespace flotilla::runc
