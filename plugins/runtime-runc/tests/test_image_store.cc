// ImageStore: imports from layouts and archives, media types, image
// indexes, verification failures that must leave nothing behind, names,
// in-use counts, removal with garbage collection, and concurrent imports.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "image_error.h"
#include "image_store.h"
#include "image_test_support.h"
#include "reference.h"

namespace flotilla::runc {
namespace {

using nlohmann::json;
using testing::BuiltLayer;
using testing::LayoutBuilder;
using testing::make_layer;
using testing::read_file;
using testing::TarBuilder;
using testing::TempTree;
using testing::write_file;
namespace fs = std::filesystem;

size_t count_entries(const fs::path &dir) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); it != fs::directory_iterator();
       it.increment(ec)) {
    ++n;
  }
  return n;
}

class ImageStoreTest : public ::testing::Test {
 protected:
  fs::path data() const { return tree_ / "store"; }

  // Nothing of a failed import may remain: no record, no blob, no
  // snapshot, no temp files.
  void expect_store_empty() {
    ImageStore store(data());
    EXPECT_TRUE(store.list().empty());
    EXPECT_EQ(count_entries(data() / "blobs" / "sha256"), 0u);
    EXPECT_EQ(count_entries(data() / "snapshots"), 0u);
    EXPECT_EQ(count_entries(data() / "tmp"), 0u);
  }

  // An import that must fail with status and a message containing each of
  // expect.
  void expect_import_fails(const fs::path &src, const std::string &tag, flotilla_status status,
                           const std::vector<std::string> &expect,
                           const ImageStoreOptions &options = {}) {
    ImageStore store(data(), options);
    try {
      store.import_image(src, tag);
      ADD_FAILURE() << "import of " << src << " succeeded";
    } catch (const ImageError &e) {
      EXPECT_EQ(e.status(), status) << e.what();
      for (const auto &s : expect) {
        EXPECT_NE(std::string(e.what()).find(s), std::string::npos)
            << "\"" << s << "\" not in: " << e.what();
      }
    }
  }

  // Two layers: a base and one that changes, deletes and hides things.
  static std::vector<BuiltLayer> two_layers(bool whiteouts) {
    TarBuilder base;
    base.dir("etc")
        .file("etc/conf", "base")
        .file("gone", "g")
        .dir("opaque")
        .file("opaque/old", "o");
    base.file("keep", "k");
    TarBuilder top;
    top.dir("etc").file("etc/conf", "top").dir("opaque").file("opaque/new", "n");
    if (whiteouts) top.file(".wh.gone", "").file("opaque/.wh..wh..opq", "");
    return {make_layer(base), make_layer(top, LayerCompression::zstd)};
  }

  TempTree tree_;
};

TEST(ImageReferenceTest, NormalisesNamesAndDigests) {
  EXPECT_EQ(normalize_image_name("busybox"), "busybox:latest");
  EXPECT_EQ(normalize_image_name("busybox:1.36"), "busybox:1.36");
  EXPECT_EQ(normalize_image_name("localhost:5000/team/app"), "localhost:5000/team/app:latest");
  EXPECT_EQ(normalize_image_name("registry.example.com/a_b/c-d:v1.2"),
            "registry.example.com/a_b/c-d:v1.2");
  EXPECT_THROW(normalize_image_name("BusyBox"), ImageError);
  EXPECT_THROW(normalize_image_name("busybox:"), ImageError);
  EXPECT_THROW(normalize_image_name("../etc"), ImageError);
  EXPECT_THROW(normalize_image_name("a@sha256:00"), ImageError);
  std::string d = "sha256:" + std::string(64, 'a');
  EXPECT_EQ(parse_image_ref(d).digest, d);
  EXPECT_TRUE(parse_image_ref(d).name.empty());
  ImageRef r = parse_image_ref("app@" + d);
  EXPECT_EQ(r.repository, "app");
  EXPECT_EQ(r.digest, d);
  EXPECT_TRUE(r.matches("app:1", d));
  EXPECT_FALSE(r.matches("app:1", "sha256:" + std::string(64, 'b')));
  EXPECT_FALSE(r.matches("other:1", d));
  ImageRef tagged = parse_image_ref("app:2@" + d);
  EXPECT_EQ(tagged.name, "app:2");
  EXPECT_FALSE(tagged.matches("app:1", d));
  EXPECT_THROW(parse_image_ref("sha256:../../etc"), ImageError);
  EXPECT_THROW(parse_image_ref("sha512:" + std::string(128, 'a')), ImageError);
}

TEST_F(ImageStoreTest, ImportsALayoutAndResolvesItsLayersAndConfig) {
  LayoutBuilder layout(tree_ / "layout");
  json config = {{"Env", {"PATH=/bin", "A=1"}},
                 {"Entrypoint", {"/bin/entry"}},
                 {"Cmd", {"serve", "--port", "80"}},
                 {"WorkingDir", "/srv"},
                 {"User", "65534:65534"},
                 {"Labels", {{"team", "core"}}}};
  json manifest = layout.add_image(two_layers(false), config);
  layout.write_index({manifest}, {"web:1"});

  ImageStore store(data());
  ImportResult res = store.import_image(layout.dir());
  EXPECT_EQ(res.record.name, "web:1");
  EXPECT_EQ(res.record.digest, manifest["digest"]);
  EXPECT_EQ(res.record.platform, "linux/amd64");
  EXPECT_EQ(res.record.created, "2024-01-02T03:04:05Z");
  EXPECT_EQ(res.record.layers.size(), 2u);
  EXPECT_EQ(res.layers_unpacked, 2u);
  EXPECT_EQ(res.layers_reused, 0u);

  ResolvedImage img = store.resolve("web:1");
  ASSERT_EQ(img.lower_dirs.size(), 2u);
  // Top layer first.
  EXPECT_EQ(read_file(img.lower_dirs[0] / "etc/conf"), "top");
  EXPECT_EQ(read_file(img.lower_dirs[1] / "etc/conf"), "base");
  EXPECT_EQ(img.lower_dirs[1].parent_path().filename().string(),
            res.record.layers[0].diff_id.substr(7))
      << "the first layer's chain id is its diff_id";
  EXPECT_EQ(img.config.env, (std::vector<std::string>{"PATH=/bin", "A=1"}));
  EXPECT_EQ(img.config.entrypoint, (std::vector<std::string>{"/bin/entry"}));
  EXPECT_EQ(img.config.cmd, (std::vector<std::string>{"serve", "--port", "80"}));
  EXPECT_EQ(img.config.working_dir, "/srv");
  EXPECT_EQ(img.config.user, "65534:65534");
  EXPECT_EQ(img.config.labels.at("team"), "core");

  // By digest, and from a second store object (records are on disk).
  ImageStore again(data());
  EXPECT_EQ(again.resolve(res.record.digest).record.name, "web:1");
  EXPECT_EQ(again.get("web@" + res.record.digest).name, "web:1");
  ASSERT_EQ(again.list().size(), 1u);
  json j = again.list()[0].to_json();
  EXPECT_EQ(j["name"], "web:1");
  EXPECT_EQ(j["layers"].size(), 2u);
  EXPECT_EQ(count_entries(data() / "tmp"), 0u);
  EXPECT_THROW(store.resolve("other:1"), ImageError);
}

TEST_F(ImageStoreTest, ImportsAnOciArchiveToTheSameImage) {
  LayoutBuilder layout(tree_ / "layout");
  layout.write_index({layout.add_image(two_layers(false))}, {"arch:1"});
  testing::write_oci_archive(layout.dir(), tree_ / "image.tar");
  ImageStore store(data());
  ImportResult a = store.import_image(tree_ / "image.tar", "from-archive:1");
  ImportResult b = store.import_image(layout.dir(), "from-layout:1");
  EXPECT_EQ(a.record.digest, b.record.digest);
  EXPECT_EQ(b.layers_reused, 2u) << "snapshots are shared, not unpacked twice";
  EXPECT_EQ(count_entries(data() / "snapshots"), 2u);
  EXPECT_EQ(store.list().size(), 2u);
}

TEST_F(ImageStoreTest, ImportsDockerSchema2MediaTypes) {
  LayoutBuilder layout(tree_ / "layout");
  std::vector<BuiltLayer> layers = {
      make_layer(TarBuilder().file("docker", "yes"), LayerCompression::gzip, /*docker=*/true)};
  json m = layout.add_image(layers, {{"Cmd", {"sh"}}}, /*docker=*/true);
  layout.write_index({m});
  ImageStore store(data());
  ImportResult r = store.import_image(layout.dir(), "docker-style");
  EXPECT_EQ(r.record.name, "docker-style:latest");
  EXPECT_EQ(r.record.media_type, media_type::kDockerManifest);
  EXPECT_EQ(r.record.layers[0].media_type, media_type::kDockerLayerGzip);
  ResolvedImage img = store.resolve("docker-style");
  EXPECT_EQ(read_file(img.lower_dirs[0] / "docker"), "yes");
  EXPECT_EQ(img.config.cmd, std::vector<std::string>{"sh"});
}

TEST_F(ImageStoreTest, PicksTheHostPlatformFromAManifestList) {
  LayoutBuilder layout(tree_ / "layout");
  json amd64 = layout.add_image({make_layer(TarBuilder().file("arch", "amd64"))});
  json arm64 =
      layout.add_image({make_layer(TarBuilder().file("arch", "arm64"))}, {}, false, "arm64");
  json attestation = arm64;
  attestation["platform"] = {{"os", "unknown"}, {"architecture", "unknown"}};
  json list = {{"schemaVersion", 2},
               {"mediaType", media_type::kDockerManifestList},
               {"manifests", {arm64, attestation, amd64}}};
  json list_desc = layout.add_blob(list.dump(), std::string(media_type::kDockerManifestList));
  layout.write_index({list_desc}, {"multi:1"});

  ImageStore store(data());
  ImportResult r = store.import_image(layout.dir());
  EXPECT_EQ(r.record.digest, amd64["digest"]);
  EXPECT_EQ(r.record.index_digest, list_desc["digest"]);
  EXPECT_EQ(read_file(store.resolve("multi:1").lower_dirs[0] / "arch"), "amd64");
  // The arm64 layer was never copied.
  EXPECT_EQ(count_entries(data() / "blobs" / "sha256"), 4u);  // index, manifest, config, layer
}

TEST_F(ImageStoreTest, SaysClearlyWhenNoManifestMatchesTheHost) {
  LayoutBuilder layout(tree_ / "layout");
  json arm64 = layout.add_image({make_layer(TarBuilder().file("a", "b"))}, {}, false, "arm64");
  json s390x = layout.add_image({make_layer(TarBuilder().file("a", "c"))}, {}, false, "s390x");
  json index = {
      {"schemaVersion", 2}, {"mediaType", media_type::kOciIndex}, {"manifests", {arm64, s390x}}};
  layout.write_index({layout.add_blob(index.dump(), std::string(media_type::kOciIndex))});
  expect_import_fails(layout.dir(), "multi:1", FLOTILLA_E_NOT_FOUND,
                      {"no image for linux/amd64", "linux/arm64", "linux/s390x"});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesAnImageForAnotherArchitecture) {
  LayoutBuilder layout(tree_ / "layout");
  layout.write_index(
      {layout.add_image({make_layer(TarBuilder().file("a", "b"))}, {}, false, "arm64")});
  expect_import_fails(layout.dir(), "arm:1", FLOTILLA_E_UNSUPPORTED,
                      {"is for linux/arm64", "this host runs linux/amd64"});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesACorruptBlobAndKeepsNothing) {
  LayoutBuilder layout(tree_ / "layout");
  json m = layout.add_image(two_layers(false));
  layout.write_index({m}, {"corrupt:1"});
  json manifest = json::parse(read_file(layout.blob_path(m["digest"])));
  std::string layer_digest = manifest["layers"][1]["digest"];
  fs::path blob = layout.blob_path(layer_digest);
  std::string bytes = read_file(blob);
  bytes[bytes.size() / 2] ^= 0x01;
  write_file(blob, bytes);
  std::string actual = sha256_of(bytes);

  expect_import_fails(layout.dir(), "", FLOTILLA_E_INVALID,
                      {"blob " + layer_digest, "layer 2/2 of corrupt:1",
                       "content has digest " + actual, "expected " + layer_digest});
  expect_store_empty();

  // The same through an archive.
  testing::write_oci_archive(layout.dir(), tree_ / "corrupt.tar");
  expect_import_fails(tree_ / "corrupt.tar", "", FLOTILLA_E_INVALID,
                      {"blob " + layer_digest, actual, "oci-archive"});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesABlobOfTheWrongSize) {
  LayoutBuilder layout(tree_ / "layout");
  json m = layout.add_image(two_layers(false));
  json manifest = json::parse(read_file(layout.blob_path(m["digest"])));
  std::string layer = manifest["layers"][0]["digest"];
  manifest["layers"][0]["size"] = manifest["layers"][0]["size"].get<int64_t>() - 1;
  json desc = layout.add_blob(manifest.dump(), std::string(media_type::kOciManifest));
  layout.write_index({desc}, {"short:1"});
  expect_import_fails(layout.dir(), "", FLOTILLA_E_INVALID,
                      {"blob " + layer, "longer than the descriptor's size"});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesAMissingBlob) {
  LayoutBuilder layout(tree_ / "layout");
  json m = layout.add_image(two_layers(false));
  layout.write_index({m}, {"missing:1"});
  json manifest = json::parse(read_file(layout.blob_path(m["digest"])));
  std::string config = manifest["config"]["digest"];
  fs::remove(layout.blob_path(config));
  expect_import_fails(layout.dir(), "", FLOTILLA_E_NOT_FOUND,
                      {"blob " + config, "config of missing:1", "is missing from image layout"});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesANonRegularBlobWithoutBlocking) {
  LayoutBuilder layout(tree_ / "layout");
  json m = layout.add_image(two_layers(false));
  layout.write_index({m}, {"fifo:1"});
  json manifest = json::parse(read_file(layout.blob_path(m["digest"])));
  fs::path config = layout.blob_path(manifest["config"]["digest"]);
  fs::remove(config);
  ASSERT_EQ(::mkfifo(config.c_str(), 0644), 0);
  expect_import_fails(layout.dir(), "", FLOTILLA_E_INVALID, {"is not a regular file"});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesALayerWhoseDiffIdDoesNotMatch) {
  LayoutBuilder layout(tree_ / "layout");
  std::vector<BuiltLayer> layers = two_layers(false);
  std::string wrong = sha256_of("not the layer");
  json m = layout.add_image(layers, {}, false, "amd64", {layers[0].diff_id, wrong});
  layout.write_index({m}, {"diffid:1"});
  expect_import_fails(layout.dir(), "", FLOTILLA_E_INVALID,
                      {"layer 2/2", "uncompressed layer has digest " + layers[1].diff_id,
                       "rootfs.diff_ids[1] says " + wrong});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesAHostileLayerAndRemovesItsSnapshots) {
  LayoutBuilder layout(tree_ / "layout");
  std::vector<BuiltLayer> layers = {
      make_layer(TarBuilder().file("fine", "ok")),
      make_layer(TarBuilder().symlink("esc", (tree_ / "outside").string()).file("esc/pwned", "x"))};
  fs::create_directories(tree_ / "outside");
  layout.write_index({layout.add_image(layers)}, {"hostile:1"});
  expect_import_fails(layout.dir(), "", FLOTILLA_E_INVALID,
                      {"layer 2/2", "esc/pwned", "leads outside the layer"});
  EXPECT_FALSE(fs::exists(tree_ / "outside" / "pwned"));
  expect_store_empty();
}

TEST_F(ImageStoreTest, NamesImagesByTagOrAnnotation) {
  LayoutBuilder layout(tree_ / "layout");
  json a = layout.add_image({make_layer(TarBuilder().file("which", "a"))});
  json b = layout.add_image({make_layer(TarBuilder().file("which", "b"))});
  layout.write_index({a, b}, {"app:a", "b"});
  // Two images and no tag to choose: refused, naming both.
  expect_import_fails(layout.dir(), "", FLOTILLA_E_INVALID, {"lists 2 images", "app:a", "b"});
  ImageStore store(data());
  EXPECT_EQ(store.import_image(layout.dir(), "app:a").record.digest, a["digest"]);
  // ref.name holding only a tag matches the tag part of the name.
  EXPECT_EQ(store.import_image(layout.dir(), "mine:b").record.digest, b["digest"]);

  LayoutBuilder unnamed(tree_ / "unnamed");
  unnamed.write_index({unnamed.add_image({make_layer(TarBuilder().file("x", "y"))})});
  expect_import_fails(unnamed.dir(), "", FLOTILLA_E_INVALID, {"pass a tag"});
  expect_import_fails(unnamed.dir(), "Bad Name", FLOTILLA_E_INVALID, {"Bad Name"});
}

TEST_F(ImageStoreTest, RemoveCollectsOnlyWhatNoImageUses) {
  BuiltLayer base = make_layer(TarBuilder().file("base", "shared"));
  BuiltLayer extra = make_layer(TarBuilder().file("extra", "only b"));
  LayoutBuilder la(tree_ / "a");
  la.write_index({la.add_image({base})}, {"a:1"});
  LayoutBuilder lb(tree_ / "b");
  lb.write_index({lb.add_image({base, extra})}, {"b:1"});

  ImageStore store(data());
  store.import_image(la.dir());
  ImportResult b = store.import_image(lb.dir());
  EXPECT_EQ(b.layers_reused, 1u);
  EXPECT_EQ(count_entries(data() / "snapshots"), 2u);
  EXPECT_EQ(count_entries(data() / "blobs" / "sha256"), 6u);  // 2 manifests, 2 configs, 2 layers

  RemoveResult ra = store.remove("a:1");
  EXPECT_EQ(ra.removed, std::vector<std::string>{"a:1"});
  EXPECT_EQ(ra.gc.blobs_removed, 2u);  // a's manifest and config; the base layer stays
  EXPECT_EQ(ra.gc.snapshots_removed, 0u);
  ResolvedImage rb = store.resolve("b:1");
  EXPECT_EQ(read_file(rb.lower_dirs[1] / "base"), "shared");

  RemoveResult rb2 = store.remove("b:1");
  EXPECT_EQ(rb2.gc.snapshots_removed, 2u);
  EXPECT_EQ(count_entries(data() / "blobs" / "sha256"), 0u);
  EXPECT_EQ(count_entries(data() / "snapshots"), 0u);
  EXPECT_TRUE(store.list().empty());
  try {
    store.remove("b:1");
    ADD_FAILURE() << "removed twice";
  } catch (const ImageError &e) {
    EXPECT_EQ(e.status(), FLOTILLA_E_NOT_FOUND);
  }
}

TEST_F(ImageStoreTest, InUseImagesCannotBeRemovedButAliasesCan) {
  LayoutBuilder layout(tree_ / "layout");
  layout.write_index({layout.add_image(two_layers(false))}, {"busy:1"});
  ImageStore store(data());
  store.import_image(layout.dir());
  store.import_image(layout.dir(), "alias:1");
  ResolvedImage img = store.acquire("busy:1");
  EXPECT_EQ(store.use_count(img.record.digest), 1u);

  EXPECT_EQ(store.remove("alias:1").removed, std::vector<std::string>{"alias:1"});
  try {
    store.remove("busy:1");
    ADD_FAILURE() << "removed an image in use";
  } catch (const ImageError &e) {
    EXPECT_EQ(e.status(), FLOTILLA_E_CONFLICT);
    EXPECT_NE(std::string(e.what()).find("in use by 1 container"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(img.lower_dirs[0]));
  store.release(img.record.digest);
  EXPECT_EQ(store.use_count(img.record.digest), 0u);
  EXPECT_THROW(store.release(img.record.digest), ImageError);
  store.remove(img.record.digest);
  EXPECT_FALSE(fs::exists(img.lower_dirs[0]));
}

TEST_F(ImageStoreTest, MovingATagCollectsTheOldImageUnlessInUse) {
  LayoutBuilder v1(tree_ / "v1");
  v1.write_index({v1.add_image({make_layer(TarBuilder().file("v", "1"))})});
  LayoutBuilder v2(tree_ / "v2");
  v2.write_index({v2.add_image({make_layer(TarBuilder().file("v", "2"))})});
  LayoutBuilder v3(tree_ / "v3");
  v3.write_index({v3.add_image({make_layer(TarBuilder().file("v", "3"))})});

  ImageStore store(data());
  ImportResult r1 = store.import_image(v1.dir(), "app:latest");
  ImportResult r2 = store.import_image(v2.dir(), "app:latest");
  EXPECT_EQ(r2.replaced_digest, r1.record.digest);
  EXPECT_EQ(r2.gc.snapshots_removed, 1u);
  EXPECT_EQ(count_entries(data() / "snapshots"), 1u);

  // v2 is in use when the tag moves on: its content stays until released.
  ResolvedImage running = store.acquire("app");
  ImportResult r3 = store.import_image(v3.dir(), "app");
  EXPECT_EQ(r3.gc.snapshots_removed, 0u);
  EXPECT_EQ(read_file(running.lower_dirs[0] / "v"), "2");
  store.release(running.record.digest);
  EXPECT_EQ(store.gc().snapshots_removed, 1u);
  EXPECT_EQ(read_file(store.resolve("app").lower_dirs[0] / "v"), "3");
}

TEST_F(ImageStoreTest, ConcurrentImportsOfOneImageAgree) {
  LayoutBuilder layout(tree_ / "layout");
  json m = layout.add_image(two_layers(false));
  layout.write_index({m}, {"same:1"});
  testing::write_oci_archive(layout.dir(), tree_ / "same.tar");

  ImageStore shared(data());
  std::vector<std::string> errors(8), digests(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      try {
        fs::path src = i % 2 ? tree_ / "same.tar" : layout.dir();
        if (i < 6) {
          digests[i] = shared.import_image(src).record.digest;
        } else {
          // A second store object on the same directory, as another
          // process would have.
          ImageStore own(data());
          digests[i] = own.import_image(src).record.digest;
        }
      } catch (const std::exception &e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto &t : threads) t.join();
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(errors[i], "") << "thread " << i;
    EXPECT_EQ(digests[i], m["digest"]) << "thread " << i;
  }
  ASSERT_EQ(shared.list().size(), 1u);
  EXPECT_EQ(count_entries(data() / "snapshots"), 2u);
  EXPECT_EQ(count_entries(data() / "blobs" / "sha256"), 4u);
  EXPECT_EQ(count_entries(data() / "tmp"), 0u);
  ResolvedImage img = shared.resolve("same:1");
  EXPECT_EQ(read_file(img.lower_dirs[0] / "etc/conf"), "top");
}

TEST_F(ImageStoreTest, LeftoversOfACrashAreInvisibleAndCollected) {
  LayoutBuilder layout(tree_ / "layout");
  layout.write_index({layout.add_image(two_layers(false))}, {"ok:1"});
  {
    ImageStore store(data());
    store.import_image(layout.dir());
  }
  // What a crash mid-import leaves: a staging directory, and a blob and a
  // snapshot published just before the record would have been written.
  fs::create_directories(data() / "tmp" / "import-crashed" / "blobs");
  write_file(data() / "tmp" / "import-crashed" / "blobs" / "x", "partial");
  std::string orphan = "orphan blob";
  write_file(data() / "blobs" / "sha256" / sha256_of(orphan).substr(7), orphan);
  fs::create_directories(data() / "snapshots" / std::string(64, 'e') / "rootfs");

  ImageStore store(data());
  EXPECT_EQ(count_entries(data() / "tmp"), 0u) << "opening the store clears tmp/";
  EXPECT_EQ(store.list().size(), 1u);
  GcStats gc = store.gc();
  EXPECT_EQ(gc.blobs_removed, 1u);
  EXPECT_EQ(gc.snapshots_removed, 1u);
  EXPECT_EQ(read_file(store.resolve("ok:1").lower_dirs[0] / "etc/conf"), "top");
}

// The snapshots as the runtime will use them: an overlay mount of the
// resolved lowerdirs shows the image with whiteouts applied.
TEST_F(ImageStoreTest, SnapshotsMountAsAnOverlay) {
  std::string problem = testing::whiteout_support_problem(tree_.path());
  if (!problem.empty()) SKIP_WITH_REASON(problem);
  LayoutBuilder layout(tree_ / "layout");
  layout.write_index({layout.add_image(two_layers(true))}, {"overlay:1"});
  ImageStore store(data());
  ResolvedImage img = store.acquire(store.import_image(layout.dir()).record.name);
  ASSERT_EQ(img.lower_dirs.size(), 2u);
  EXPECT_TRUE(testing::is_whiteout(img.lower_dirs[0] / "gone"));

  fs::path mnt = tree_ / "mnt";
  fs::create_directories(mnt);
  std::string opts = "lowerdir=" + img.lower_dirs[0].string() + ":" + img.lower_dirs[1].string();
  if (::mount("overlay", mnt.c_str(), "overlay", MS_RDONLY, opts.c_str()) != 0) {
    std::string why = std::string("cannot mount overlayfs here: ") + std::strerror(errno);
    store.release(img.record.digest);
    SKIP_WITH_REASON(why);
  }
  struct Unmount {
    fs::path p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  EXPECT_EQ(read_file(mnt / "etc/conf"), "top");
  EXPECT_EQ(read_file(mnt / "keep"), "k");
  EXPECT_FALSE(fs::exists(mnt / "gone")) << "whiteout did not hide the lower file";
  EXPECT_TRUE(fs::exists(mnt / "opaque/new"));
  EXPECT_FALSE(fs::exists(mnt / "opaque/old")) << "opaque directory showed lower content";
  store.release(img.record.digest);
}

}  // namespace
}  // namespace flotilla::runc
