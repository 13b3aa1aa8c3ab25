// ImageStore: imports from layouts and archives, media types, image
// indexes, verification failures that must leave nothing behind, names,
// in-use counts, removal with garbage collection, and concurrent imports.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
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
using testing::foreign_arch;
using testing::host_arch;
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
  EXPECT_EQ(res.record.platform, "linux/" + host_arch());
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
  // The host's (from uname) and a foreign one, listed first.
  json mine = layout.add_image({make_layer(TarBuilder().file("arch", host_arch()))});
  json theirs = layout.add_image({make_layer(TarBuilder().file("arch", foreign_arch()))}, {}, false,
                                 foreign_arch());
  json attestation = theirs;
  attestation["platform"] = {{"os", "unknown"}, {"architecture", "unknown"}};
  json list = {{"schemaVersion", 2},
               {"mediaType", media_type::kDockerManifestList},
               {"manifests", {theirs, attestation, mine}}};
  json list_desc = layout.add_blob(list.dump(), std::string(media_type::kDockerManifestList));
  layout.write_index({list_desc}, {"multi:1"});

  ImageStore store(data());
  ImportResult r = store.import_image(layout.dir());
  EXPECT_EQ(r.record.digest, mine["digest"]);
  EXPECT_EQ(r.record.platform, "linux/" + host_arch());
  EXPECT_EQ(r.record.index_digest, list_desc["digest"]);
  EXPECT_EQ(read_file(store.resolve("multi:1").lower_dirs[0] / "arch"), host_arch());
  // The foreign layer was never copied.
  EXPECT_EQ(count_entries(data() / "blobs" / "sha256"), 4u);  // index, manifest, config, layer
}

TEST_F(ImageStoreTest, SaysClearlyWhenNoManifestMatchesTheHost) {
  LayoutBuilder layout(tree_ / "layout");
  const std::string other = host_arch() == "s390x" ? "ppc64le" : "s390x";
  json a = layout.add_image({make_layer(TarBuilder().file("a", "b"))}, {}, false, foreign_arch());
  json b = layout.add_image({make_layer(TarBuilder().file("a", "c"))}, {}, false, other);
  json index = {{"schemaVersion", 2}, {"mediaType", media_type::kOciIndex}, {"manifests", {a, b}}};
  layout.write_index({layout.add_blob(index.dump(), std::string(media_type::kOciIndex))});
  expect_import_fails(
      layout.dir(), "multi:1", FLOTILLA_E_NOT_FOUND,
      {"no image for linux/" + host_arch(), "linux/" + foreign_arch(), "linux/" + other});
  expect_store_empty();
}

TEST_F(ImageStoreTest, RefusesAnImageForAnotherArchitecture) {
  LayoutBuilder layout(tree_ / "layout");
  layout.write_index(
      {layout.add_image({make_layer(TarBuilder().file("a", "b"))}, {}, false, foreign_arch())});
  expect_import_fails(layout.dir(), "arm:1", FLOTILLA_E_UNSUPPORTED,
                      {"is for linux/" + foreign_arch(), "this host runs linux/" + host_arch()});
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
  json m = layout.add_image(layers, {}, false, host_arch(), {layers[0].diff_id, wrong});
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
  // Two images and no tag to choose: refused, naming both and saying how
  // --tag picks one.
  expect_import_fails(layout.dir(), "", FLOTILLA_E_INVALID,
                      {"index.json lists 2 images:\n  app:a\n  b\n", "Pick one with --tag NAME",
                       "NAME's tag (the part after ':')", "flotilla image import PATH --tag app:a",
                       "One import takes one image"});
  // A tag that names none of them is not silently given to the first.
  expect_import_fails(layout.dir(), "other:1", FLOTILLA_E_INVALID,
                      {"--tag other:1 names none of its images", "app:a"});
  expect_store_empty();
  ImageStore store(data());
  EXPECT_EQ(store.import_image(layout.dir(), "app:a").record.digest, a["digest"]);
  // ref.name holding only a tag matches the tag part of the name.
  EXPECT_EQ(store.import_image(layout.dir(), "mine:b").record.digest, b["digest"]);

  LayoutBuilder unnamed(tree_ / "unnamed");
  unnamed.write_index({unnamed.add_image({make_layer(TarBuilder().file("x", "y"))})});
  expect_import_fails(unnamed.dir(), "", FLOTILLA_E_INVALID, {"pass a tag", "--tag NAME"});
  expect_import_fails(unnamed.dir(), "Bad Name", FLOTILLA_E_INVALID, {"Bad Name"});
}

// ---- device nodes -------------------------------------------------------

TEST_F(ImageStoreTest, DeviceNodesAreLeftOutAndRecordedOnTheImage) {
  LayoutBuilder layout(tree_ / "layout");
  layout.write_index(
      {layout.add_image({make_layer(TarBuilder().dir("etc").file("etc/os", "debian")),
                         make_layer(TarBuilder()
                                        .dir("dev")
                                        .device("dev/console", false, 5, 1)
                                        .device("dev/loop0", true, 7, 0)
                                        .file("dev/README", "made by mknod"))})},
      {"rootfs:12"});
  ImageStore store(data());
  ImportResult r = store.import_image(layout.dir());
  std::vector<std::string> want = {"layer 2: dev/console (character device 5:1)",
                                   "layer 2: dev/loop0 (block device 7:0)"};
  EXPECT_EQ(r.record.device_nodes_skipped, want);
  EXPECT_EQ(r.to_json()["device_nodes_skipped"], json(want));
  EXPECT_EQ(store.get("rootfs:12").device_nodes_skipped, want);  // kept in images.json
  ResolvedImage img = store.resolve("rootfs:12");
  EXPECT_FALSE(fs::exists(fs::symlink_status(img.lower_dirs[0] / "dev/console")));
  EXPECT_EQ(read_file(img.lower_dirs[0] / "dev/README"), "made by mknod");

  // The same layers under another name reuse the snapshots, and still list them.
  ImportResult again = store.import_image(layout.dir(), "rootfs:again");
  EXPECT_EQ(again.layers_reused, 2u);
  EXPECT_EQ(again.record.device_nodes_skipped, want);

  // device_nodes = "refuse": refused, for a fresh store and for one that
  // has the layer from an import that skipped its devices.
  ImageStoreOptions refuse;
  refuse.limits.device_nodes = DeviceNodes::refuse;
  ImageStore strict(data(), refuse);
  try {
    strict.import_image(layout.dir(), "rootfs:strict");
    ADD_FAILURE() << "a reused snapshot with skipped devices was accepted";
  } catch (const ImageError &e) {
    EXPECT_NE(std::string(e.what()).find("dev/console (character device 5:1)\" is a device node"),
              std::string::npos)
        << e.what();
  }
  TempTree other;
  try {
    ImageStore fresh(other / "store", refuse);
    fresh.import_image(layout.dir());
    ADD_FAILURE() << "device nodes were accepted under refuse";
  } catch (const ImageError &e) {
    EXPECT_NE(std::string(e.what()).find("entry \"dev/console\": is a character device 5:1"),
              std::string::npos)
        << e.what();
  }
}

// A rootfs made and packed by a real tool: umoci repacks a bundle whose
// rootfs has device nodes (as one made by debootstrap does).
TEST_F(ImageStoreTest, AnUmociImageWithDeviceNodesImports) {
  if (::geteuid() != 0) SKIP_WITH_REASON(std::string("mknod of test devices needs root"));
  if (std::system("command -v umoci >/dev/null 2>&1") != 0)
    SKIP_WITH_REASON(std::string("umoci is not installed"));
  fs::path oci = tree_ / "umoci", bundle = tree_ / "bundle";
  std::string q = "'" + oci.string() + "'", b = "'" + bundle.string() + "'";
  ASSERT_EQ(std::system(("umoci init --layout " + q + " && umoci new --image " + q +
                         ":deb && umoci unpack --image " + q + ":deb " + b + " >/dev/null")
                            .c_str()),
            0);
  fs::path rootfs = bundle / "rootfs";
  fs::create_directories(rootfs / "dev");
  ASSERT_EQ(::mknod((rootfs / "dev/console").c_str(), S_IFCHR | 0600, makedev(5, 1)), 0);
  ASSERT_EQ(::mknod((rootfs / "dev/null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  ASSERT_EQ(::mknod((rootfs / "dev/sda").c_str(), S_IFBLK | 0660, makedev(8, 0)), 0);
  write_file(rootfs / "etc/debian_version", "12.11\n");
  ASSERT_EQ(std::system(("umoci repack --image " + q + ":deb " + b + " >/dev/null").c_str()), 0);
  ImageStore store(data());
  ImportResult r = store.import_image(oci, "debian:12");
  std::set<std::string> skipped(r.record.device_nodes_skipped.begin(),
                                r.record.device_nodes_skipped.end());
  EXPECT_TRUE(skipped.count("layer 1: dev/console (character device 5:1)")) << r.to_json();
  EXPECT_TRUE(skipped.count("layer 1: dev/null (character device 1:3)")) << r.to_json();
  EXPECT_TRUE(skipped.count("layer 1: dev/sda (block device 8:0)")) << r.to_json();
  ResolvedImage img = store.resolve("debian:12");
  EXPECT_EQ(read_file(img.lower_dirs[0] / "etc/debian_version"), "12.11\n");
  EXPECT_FALSE(fs::exists(fs::symlink_status(img.lower_dirs[0] / "dev/sda")));
}

// ---- what an import read --------------------------------------------------

// The store has the image already: its verified copy is reused, and the
// result says that the source's blobs were not read (so not checked),
// instead of claiming an import that verified them.
TEST_F(ImageStoreTest, AnImageTheStoreHasIsReusedAndTheResultSaysTheSourceWasNotRead) {
  LayoutBuilder layout(tree_ / "layout");
  json m = layout.add_image(two_layers(false));
  layout.write_index({m}, {"web:1"});
  ImageStore store(data());
  ImportResult first = store.import_image(layout.dir());
  EXPECT_EQ(first.blobs_read, 4u);  // manifest, config, two layers
  EXPECT_TRUE(first.blobs_reused.empty());
  EXPECT_EQ(first.to_json()["import"]["source_checked"], true);

  // The same layout with a layer blob overwritten by garbage and the
  // config blob gone.
  fs::copy(layout.dir(), tree_ / "broken", fs::copy_options::recursive);
  json manifest = json::parse(read_file(layout.blob_path(m["digest"])));
  auto in_broken = [&](const std::string &digest) {
    return tree_ / "broken" / "blobs" / "sha256" / digest.substr(7);
  };
  write_file(in_broken(manifest["layers"][0]["digest"]), "garbage, not a gzip stream");
  fs::remove(in_broken(manifest["config"]["digest"]));
  ImportResult again = store.import_image(tree_ / "broken", "web:1");
  EXPECT_EQ(again.blobs_read, 0u);
  ASSERT_EQ(again.blobs_reused.size(), 4u);
  EXPECT_EQ(again.blobs_reused[0], "manifest of web:1 " + m["digest"].get<std::string>());
  json j = again.to_json();
  EXPECT_EQ(j["import"]["source_checked"], false);
  EXPECT_EQ(j["import"]["blobs_read"], 0);
  EXPECT_EQ(j["digest"], m["digest"]);

  // A new image that shares a layer: what was read and what was not.
  LayoutBuilder more(tree_ / "more");
  BuiltLayer extra = make_layer(TarBuilder().file("extra", "1"));
  std::vector<BuiltLayer> layers = two_layers(false);
  layers.push_back(extra);
  more.write_index({more.add_image(layers)}, {"web:2"});
  ImportResult shared = store.import_image(more.dir());
  EXPECT_EQ(shared.blobs_read, 3u);  // manifest, config, the new layer
  EXPECT_EQ(shared.blobs_reused.size(), 2u);
  EXPECT_EQ(shared.to_json()["import"]["source_checked"], true);
}

// ---- free space -----------------------------------------------------------

// A tmpfs of a size the test controls, unmounted at the end.
class SmallFilesystem {
 public:
  SmallFilesystem(const fs::path &at, const std::string &size) : at_(at) {
    fs::create_directories(at_);
    if (::mount("tmpfs", at_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, ("size=" + size).c_str()) == 0)
      mounted_ = true;
    else
      why_ = std::string("cannot mount a tmpfs: ") + std::strerror(errno);
  }
  ~SmallFilesystem() {
    if (mounted_) ::umount2(at_.c_str(), MNT_DETACH);
  }
  const std::string &why_not() const { return why_; }

 private:
  fs::path at_;
  bool mounted_ = false;
  std::string why_;
};

TEST_F(ImageStoreTest, AnImageThatDoesNotFitIsRefusedBeforeUnpackingAndSizesAreKeptApart) {
  if (::geteuid() != 0) SKIP_WITH_REASON(std::string("mounting a small tmpfs needs root"));
  SmallFilesystem small(tree_ / "small", "4m");
  if (!small.why_not().empty()) SKIP_WITH_REASON(small.why_not());
  fs::path store_dir = tree_ / "small" / "store";

  // 16 MiB of zeros: a few KiB compressed.
  LayoutBuilder big(tree_ / "big");
  big.write_index(
      {big.add_image({make_layer(
          TarBuilder().file("small", "s").file("zeros", std::string(16 << 20, '\0')))})},
      {"zeros:1"});
  {
    ImageStore store(store_dir);
    try {
      store.import_image(big.dir());
      ADD_FAILURE() << "16 MiB unpacked went onto a 4 MiB filesystem";
    } catch (const ImageError &e) {
      std::string m = e.what();
      for (const char *says :
           {"image zeros:1 needs at least 16.0 MiB unpacked", "layer 1: 16.0 MiB in 2 entries",
            "free; nothing was unpacked", "plugin.runtime-runc.image_dir"})
        EXPECT_NE(m.find(says), std::string::npos) << says << "\n" << m;
    }
    EXPECT_TRUE(store.list().empty());
    EXPECT_EQ(count_entries(store_dir / "snapshots"), 0u);
    EXPECT_EQ(count_entries(store_dir / "tmp"), 0u);
  }

  // One that fits: compressed and unpacked sizes recorded apart.
  LayoutBuilder fits(tree_ / "fits");
  fits.write_index(
      {fits.add_image({make_layer(TarBuilder().file("data", std::string(1 << 20, 'a')))})},
      {"fits:1"});
  ImageStore store(store_dir);
  ImportResult r = store.import_image(fits.dir());
  EXPECT_EQ(r.record.unpacked_size, uint64_t{1} << 20);
  EXPECT_LT(r.record.size, uint64_t{64} << 10);  // gzip of 1 MiB of 'a'
  json j = store.list()[0].to_json();
  EXPECT_EQ(j["unpacked_size"], 1 << 20);
  EXPECT_EQ(j["size"], r.record.size);
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
