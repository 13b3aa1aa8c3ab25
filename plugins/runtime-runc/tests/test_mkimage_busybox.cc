// tools/mkimage-busybox: its output is a valid OCI image as skopeo and
// umoci read it, it is deterministic, and the image store imports it from
// the layout and from the archive.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <memory>
#include <string>

#include "image_store.h"
#include "image_test_support.h"

#ifndef FLOTILLA_MKIMAGE_BUSYBOX
#error "FLOTILLA_MKIMAGE_BUSYBOX must name tools/mkimage-busybox"
#endif

namespace flotilla::runc {
namespace {

using nlohmann::json;
using testing::read_file;
using testing::TempTree;
namespace fs = std::filesystem;

std::string quote(const std::string &s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs a shell command; returns its exit status and puts stdout+stderr in out.
int run(const std::string &cmd, std::string *out) {
  out->clear();
  FILE *p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool have_tool(const std::string &name) {
  std::string out;
  return run("command -v " + name, &out) == 0;
}

// The script runs once for the suite; each test gets the same output and
// its own scratch directory.
class MkimageBusyboxTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists("/bin/busybox")) {
      skip_reason_ = "/bin/busybox is missing (install busybox-static)";
      return;
    }
    built_ = std::make_unique<TempTree>();
    layout_ = *built_ / "layout";
    archive_ = *built_ / "busybox.tar";
    build_status_ = run("bash " + quote(FLOTILLA_MKIMAGE_BUSYBOX) + " " + quote(layout_.string()) +
                            " --archive " + quote(archive_.string()) + " --tag busybox:latest",
                        &build_output_);
  }
  static void TearDownTestSuite() { built_.reset(); }

  void SetUp() override {
    if (!skip_reason_.empty()) SKIP_WITH_REASON(skip_reason_);
    ASSERT_EQ(build_status_, 0) << build_output_;
    index_ = json::parse(read_file(layout_ / "index.json"));
    manifest_digest_ = index_["manifests"][0]["digest"];
  }

  static inline std::unique_ptr<TempTree> built_;
  static inline fs::path layout_, archive_;
  static inline int build_status_ = -1;
  static inline std::string build_output_, skip_reason_;
  TempTree tree_;
  json index_;
  std::string manifest_digest_;
};

TEST_F(MkimageBusyboxTest, WritesAnAnnotatedIndexAndIsDeterministic) {
  EXPECT_EQ(read_file(layout_ / "oci-layout"), R"({"imageLayoutVersion":"1.0.0"})");
  EXPECT_EQ(index_["manifests"].size(), 1u);
  EXPECT_EQ(index_["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "busybox:latest");
  // Every blob is named by its digest.
  for (const auto &e : fs::directory_iterator(layout_ / "blobs" / "sha256")) {
    EXPECT_EQ(sha256_of(read_file(e.path())), "sha256:" + e.path().filename().string());
  }
  std::string out;
  fs::path again = tree_ / "again";
  ASSERT_EQ(run("bash " + quote(FLOTILLA_MKIMAGE_BUSYBOX) + " " + quote(again.string()) +
                    " --archive " + quote((tree_ / "again.tar").string()),
                &out),
            0)
      << out;
  EXPECT_EQ(read_file(again / "index.json"), read_file(layout_ / "index.json"));
  EXPECT_EQ(read_file(tree_ / "again.tar"), read_file(archive_));

  // A non-empty OUTDIR is refused unless --force.
  EXPECT_NE(run("bash " + quote(FLOTILLA_MKIMAGE_BUSYBOX) + " " + quote(again.string()), &out), 0);
  EXPECT_NE(out.find("not empty"), std::string::npos) << out;
  EXPECT_EQ(run("bash " + quote(FLOTILLA_MKIMAGE_BUSYBOX) + " " + quote(again.string()) +
                    " --force --tag other:2",
                &out),
            0)
      << out;
  EXPECT_NE(run("bash " + quote(FLOTILLA_MKIMAGE_BUSYBOX) + " " + quote((tree_ / "x").string()) +
                    " --tag 'Not Valid'",
                &out),
            0);
}

TEST_F(MkimageBusyboxTest, SkopeoReadsLayoutAndArchive) {
  if (!have_tool("skopeo")) SKIP_WITH_REASON(std::string("skopeo is not installed"));
  std::string out;
  ASSERT_EQ(run("skopeo inspect --raw " + quote("oci:" + layout_.string()), &out), 0) << out;
  EXPECT_EQ(sha256_of(out), manifest_digest_) << "skopeo sees another manifest: " << out;
  ASSERT_EQ(run("skopeo inspect " + quote("oci-archive:" + archive_.string()), &out), 0) << out;
  json inspect = json::parse(out);
  EXPECT_EQ(inspect["Digest"], manifest_digest_);
  EXPECT_EQ(inspect["Os"], "linux");
}

TEST_F(MkimageBusyboxTest, UmociStatsTheImage) {
  if (!have_tool("umoci")) SKIP_WITH_REASON(std::string("umoci is not installed"));
  std::string out;
  ASSERT_EQ(run("umoci stat --image " + quote(layout_.string() + ":busybox:latest"), &out), 0)
      << out;
  EXPECT_NE(out.find("tools/mkimage-busybox"), std::string::npos) << out;
}

TEST_F(MkimageBusyboxTest, ImportsFromLayoutAndArchive) {
  ImageStore store(tree_ / "store");
  ImportResult from_layout = store.import_image(layout_);
  EXPECT_EQ(from_layout.record.name, "busybox:latest");
  EXPECT_EQ(from_layout.record.digest, manifest_digest_);
  ImportResult from_archive = store.import_image(archive_, "busybox:archive");
  EXPECT_EQ(from_archive.record.digest, manifest_digest_);
  EXPECT_EQ(from_archive.layers_reused, 1u);

  ResolvedImage img = store.resolve("busybox");
  ASSERT_EQ(img.lower_dirs.size(), 1u);
  const fs::path &root = img.lower_dirs[0];
  struct stat st {};
  ASSERT_EQ(::lstat((root / "bin/busybox").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(read_file(root / "bin/busybox"), read_file("/bin/busybox"));
  for (const char *applet : {"sh", "echo", "sleep", "cat", "ls"}) {
    EXPECT_EQ(fs::read_symlink(root / "bin" / applet), "busybox") << applet;
  }
  EXPECT_EQ(fs::read_symlink(root / "usr/sbin/httpd"), "../../bin/busybox");
  EXPECT_EQ(fs::read_symlink(root / "usr/bin/env"), "../../bin/busybox");
  EXPECT_EQ(fs::read_symlink(root / "usr/bin/id"), "../../bin/busybox");
  EXPECT_NE(read_file(root / "etc/passwd").find("nobody:x:65534:65534:"), std::string::npos);
  EXPECT_NE(read_file(root / "etc/group").find("nobody:x:65534:"), std::string::npos);
  ASSERT_EQ(::lstat((root / "tmp").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 01777u);
  EXPECT_EQ(st.st_mtim.tv_sec, 946684800);
  EXPECT_EQ(img.config.cmd, std::vector<std::string>{"sh"});
  ASSERT_EQ(img.config.env.size(), 1u);
  EXPECT_EQ(img.config.env[0].rfind("PATH=", 0), 0u);
}

}  // namespace
}  // namespace flotilla::runc
