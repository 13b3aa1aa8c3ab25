// End-to-end tests of image_pull: the real runtime-runc plugin, loaded
// through flotilla::PluginHost on a libuv loop, pulls from real
// docker-registry instances on 127.0.0.1 (registry_test_support.h):
//
//   secure   TLS (openssl-made CA and certificate) + htpasswd (bcrypt)
//   plain    no auth, plain HTTP, the same storage: pushes go here, and the
//            fault proxy sits in front of it
//   token    Bearer tokens from the test's token endpoint, same storage
//   mirror   no auth, plain HTTP, its own storage (a mirror of secure)
//
// Images are OCI layouts made in the test (image_test_support.h): a
// two-layer image whose second layer whites out a file of the first, a
// second version of it, a multi-platform index, and a 3 MiB layer to cut
// (and to stall while a child process pulls it, then kill -9 that process).
//
// Pulls only: no container runs here, so the OCI runtime is /bin/true.
// Only a missing prerequisite is a skip ("SKIPPED: <why>"): not root,
// docker-registry or openssl not installed, a /tmp without 0/0 mknod or
// trusted.* xattrs. Anything else that goes wrong while setting up (the
// certificates, bcrypt, a registry that does not start, a push) fails every
// test, so that a broken set-up cannot pass as a run of skips.
#include <flotilla/flotilla.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <tuple>

#include "child_test.h"
#include "image_store.h"
#include "image_test_support.h"
#include "plugin_host.h"
#include "registry_test_support.h"
#include "runtime_test_daemon.h"
#include "test_certs.h"

namespace {

using flotilla::PluginHost;
using flotilla::PluginSettings;
using flotilla::runc::testing::foreign_arch;
using flotilla::runc::testing::host_arch;
using flotilla::runc::testing::LayoutBuilder;
using flotilla::runc::testing::make_layer;
using flotilla::runc::testing::progress_cb;
using flotilla::runc::testing::Result;
using flotilla::runc::testing::state_cb;
using flotilla::runc::testing::TarBuilder;
using flotilla::runc::testing::TestDaemon;
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t kGuardMs = 60000;  // against hangs only

// "The daemon" (runtime_test_daemon.h), with the pull and list calls.
class Daemon : public TestDaemon {
 public:
  Daemon(const std::string &data_dir, const json &config)
      : TestDaemon(data_dir, config, kGuardMs) {}
  ~Daemon() override { shutdown(); }

  // Nothing runs in containers here: stop, then run the loop until the
  // plugin's last work and handles are done.
  void shutdown() override {
    if (!running()) return;
    host_->events().unsubscribe(exit_sub_);
    host_->stop();
    while (uv_run(loop_.get(), UV_RUN_NOWAIT) != 0) {
    }
    host_.reset();
    uv_loop_close(loop_.get());
  }

  // Starts a pull; run_until(r->done) finishes it.
  flotilla_status start_pull(const std::string &ref, const std::string &policy, Result *r) {
    std::string opts = json{{"policy", policy}}.dump();
    flotilla_status st =
        rt_->image_pull(self_, ref.c_str(), opts.c_str(), progress_cb, state_cb, r);
    if (st != FLOTILLA_OK) {
      r->done = true;
      r->status = st;
      r->error = PluginHost::last_error();
    }
    return st;
  }
  Result pull(const std::string &ref, const std::string &policy = "always") {
    Result r;
    if (start_pull(ref, policy, &r) == FLOTILLA_OK) {
      EXPECT_FALSE(r.done) << "a callback ran inside the call";
      EXPECT_TRUE(run_until([&] { return r.done; })) << "no answer within the guard time";
    }
    return r;
  }
  json images() {
    Result r = call([&](Result *res) {
      return rt_->image_list(
          self_, [](void *u, flotilla_status st, const char *text) { state_cb(u, st, text); }, res);
    });
    return json::parse(r.text.empty() ? "[]" : r.text);
  }
};

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto &c : s) c = static_cast<char>(gen());
  return s;
}

class RegistryPull : public ::testing::Test {
 protected:
  static inline fs::path dir_;
  static inline std::string skip_;  // a prerequisite is missing: every test skips
  static inline std::string fail_;  // the set-up went wrong: every test fails
  static inline std::unique_ptr<regtest::Registry> secure_, plain_, token_reg_, mirror_;
  static inline std::unique_ptr<regtest::FaultProxy> proxy_;
  static inline std::unique_ptr<regtest::TokenServer> tokens_;
  static inline std::string ca_;
  static inline std::string app1_digest_, app2_digest_, big_layer_digest_, app1_layer2_;
  static inline std::string multi_host_digest_;

  static void SetUpTestSuite() {
    if (geteuid() != 0) {
      skip_ = "needs root (whiteouts are device nodes)";
      return;
    }
    if (access("/usr/bin/docker-registry", X_OK) != 0) {
      skip_ = "docker-registry is not installed (apt-get install docker-registry)";
      return;
    }
    if (regtest::run("command -v openssl >/dev/null") != 0) {
      skip_ = "openssl is not installed";
      return;
    }
    char tmpl[] = "/tmp/flotilla-regtest-XXXXXX";
    if (!mkdtemp(tmpl)) {
      fail_ = std::string("mkdtemp /tmp/flotilla-regtest-XXXXXX: ") + strerror(errno);
      return;
    }
    dir_ = tmpl;
    std::string d = dir_.string();
    // A CA and a certificate for 127.0.0.1 signed by it; a key for tokens.
    std::string ssl =
        flotilla::testing::ca_and_server_cert_command(d, "IP:127.0.0.1", 1) + " && cd " + d +
        " && openssl req -x509 -newkey rsa:2048 -nodes -keyout tok.key -out tok.pem -days 1 "
        "-subj /CN=flotilla-test-token 2>/dev/null";
    if (regtest::run(ssl) != 0) {
      fail_ = "openssl could not make the test certificates in " + d;
      return;
    }
    ca_ = d + "/ca.pem";
    std::string line = regtest::htpasswd_line("ci", "s3cret");
    if (line.empty()) {
      fail_ = "libcrypt cannot make bcrypt hashes (crypt_r with a $2b$ salt)";
      return;
    }
    regtest::spit(dir_ / "htpasswd", line);
    tokens_ = std::make_unique<regtest::TokenServer>(dir_ / "tok.key", dir_ / "tok.pem",
                                                     "flotilla-test-issuer", "flotilla-test", "ci",
                                                     "s3cret", 3600);

    fs::create_directories(dir_ / "storage");
    fs::create_directories(dir_ / "mirror-storage");
    secure_ = std::make_unique<regtest::Registry>();
    secure_->name = "secure";
    plain_ = std::make_unique<regtest::Registry>();
    plain_->name = "plain";
    token_reg_ = std::make_unique<regtest::Registry>();
    token_reg_->name = "token";
    mirror_ = std::make_unique<regtest::Registry>();
    mirror_->name = "mirror";
    bool ok =
        secure_->start(
            dir_, dir_ / "storage",
            "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: " + d + "/htpasswd\n",
            d + "/srv.pem", d + "/srv.key", ca_) &&
        plain_->start(dir_, dir_ / "storage", "") &&
        token_reg_->start(dir_, dir_ / "storage",
                          "auth:\n  token:\n    realm: " + tokens_->realm() +
                              "\n    service: flotilla-test\n    issuer: flotilla-test-issuer\n"
                              "    rootcertbundle: " +
                              d + "/tok.pem\n") &&
        mirror_->start(dir_, dir_ / "mirror-storage", "");
    if (!ok) {
      fail_ = "docker-registry did not start; see " + d + "/*.log";
      return;
    }
    proxy_ = std::make_unique<regtest::FaultProxy>(plain_->port);
    make_and_push_images();
  }

  static void make_and_push_images() {
    using flotilla::runc::LayerCompression;
    // team/app:1 — two layers, the second whites out a file of the first.
    LayoutBuilder app1(dir_ / "app1");
    TarBuilder l1, l2;
    l1.dir("etc").file("etc/greeting", "hello from layer 1\n").file("etc/gone", "bye\n");
    l2.file("etc/.wh.gone", "").file("etc/second", "layer 2\n");
    auto L1 = make_layer(l1), L2 = make_layer(l2);
    app1_layer2_ = flotilla::runc::sha256_of(L2.bytes);
    json m1 = app1.add_image({L1, L2}, {{"Cmd", {"cat", "/etc/greeting"}}});
    app1.write_index({m1});
    app1_digest_ = m1["digest"];
    // team/app:2 — the first layer again plus a new one.
    LayoutBuilder app2(dir_ / "app2");
    TarBuilder l3;
    l3.file("etc/greeting", "hello from version 2\n");
    json m2 = app2.add_image({L1, make_layer(l3)}, {{"Cmd", {"cat", "/etc/greeting"}}});
    app2.write_index({m2});
    app2_digest_ = m2["digest"];
    // team/multi:1 — an index for a foreign architecture and the host's
    // (from uname: amd64 and arm64 hosts alike), the foreign one first.
    LayoutBuilder multi(dir_ / "multi");
    TarBuilder la, lb;
    la.file("arch", host_arch() + "\n");
    lb.file("arch", foreign_arch() + "\n");
    json ma = multi.add_image({make_layer(la)}, {}, false, host_arch());
    json mb = multi.add_image({make_layer(lb)}, {}, false, foreign_arch());
    multi_host_digest_ = ma["digest"];
    json index = {{"schemaVersion", 2},
                  {"mediaType", flotilla::runc::media_type::kOciIndex},
                  {"manifests", {mb, ma}}};
    json idesc = multi.add_blob(index.dump(), std::string(flotilla::runc::media_type::kOciIndex));
    multi.write_index({idesc});
    // team/big:1 — 3 MiB that does not compress, to cut in the middle.
    LayoutBuilder big(dir_ / "big");
    TarBuilder lbig;
    lbig.file("blob", random_bytes(3 << 20, 7));
    auto LB = make_layer(lbig, LayerCompression::none);
    big_layer_digest_ = flotilla::runc::sha256_of(LB.bytes);
    big.write_index({big.add_image({LB})});

    // team/six:1 — six layers, to count the downloads in flight.
    LayoutBuilder six(dir_ / "six");
    std::vector<flotilla::runc::testing::BuiltLayer> six_layers;
    for (unsigned i = 0; i < 6; ++i) {
      TarBuilder t;
      t.file("layer-" + std::to_string(i), random_bytes(256 << 10, 100 + i));
      six_layers.push_back(make_layer(t, LayerCompression::none));
    }
    six.write_index({six.add_image(six_layers)});

    regtest::Pusher plain{plain_->url(), {}};
    regtest::Pusher mirror{mirror_->url(), {}};
    bool ok =
        plain.layout(app1.dir(), "team/app", "1") && plain.layout(app2.dir(), "team/app", "2") &&
        plain.layout(multi.dir(), "team/multi", "1") && plain.layout(big.dir(), "team/big", "1") &&
        plain.layout(six.dir(), "team/six", "1") && mirror.layout(app1.dir(), "team/app", "1");
    if (!ok) fail_ = "pushing the test images failed: " + plain.error + mirror.error;
  }

  static void TearDownTestSuite() {
    proxy_.reset();
    tokens_.reset();
    for (auto *r : {&secure_, &plain_, &token_reg_, &mirror_}) r->reset();
    // Kept when the set-up failed: its logs say why.
    if (!dir_.empty() && fail_.empty()) fs::remove_all(dir_);
  }

  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << "SKIPPED: " << skip_;
    char tmpl[] = "/tmp/flotilla-regnode-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    node_ = tmpl;
    if (std::string why = flotilla::runc::testing::whiteout_support_problem(node_); !why.empty())
      GTEST_SKIP() << "SKIPPED: " << why;
    // After the prerequisites: a missing one is a skip even when the set-up
    // failed too.
    ASSERT_TRUE(fail_.empty()) << "the registry set-up failed: " << fail_;
    regtest::spit(node_ / "auths.json",
                  json{{"auths",
                        {{secure_->host(), {{"auth", regtest::b64("ci:s3cret", false)}}},
                         {token_reg_->host(), {{"username", "ci"}, {"password", "s3cret"}}}}}}
                      .dump());
  }
  void TearDown() override {
    daemon_.reset();
    if (!node_.empty()) fs::remove_all(node_);
  }

  json registry_config(json extra = json::object()) {
    json r = {{"auth_file", (node_ / "auths.json").string()},
              {"insecure", {plain_->host(), token_reg_->host(), mirror_->host(), proxy_->host()}},
              {"hosts", {{secure_->host(), {{"ca_file", ca_}}}}},
              {"progress_interval_ms", 10},
              {"low_speed_timeout_s", 5}};
    r.update(extra, true);
    return r;
  }
  Daemon &daemon(json registry = nullptr) {
    if (registry.is_null()) registry = registry_config();
    json config = {{"binary", "/bin/true"},
                   {"shim", RUNTIME_SHIM_PATH},
                   {"image_dir", (node_ / "images").string()},
                   {"registry", registry}};
    daemon_ = std::make_unique<Daemon>((node_ / "data").string(), config);
    return *daemon_;
  }
  // Nothing of a failed pull may remain: no image, no blob, no staging.
  void expect_nothing_left() {
    EXPECT_EQ(daemon_->images().size(), 0u);
    size_t blobs = 0;
    std::error_code ec;
    for (auto &e : fs::directory_iterator(node_ / "images" / "blobs" / "sha256", ec)) {
      (void)e;
      ++blobs;
    }
    EXPECT_EQ(blobs, 0u) << "blobs left in the store";
    size_t staged = 0;
    for (auto &e : fs::directory_iterator(node_ / "images" / "pulls", ec)) {
      ADD_FAILURE() << "left behind: " << e.path();
      ++staged;
    }
    EXPECT_EQ(staged, 0u);
  }

  fs::path node_;
  std::unique_ptr<Daemon> daemon_;
};

TEST_F(RegistryPull, OverTlsWithBasicAuthWithWhiteoutAndProgress) {
  Daemon &d = daemon();
  Result r = d.pull(secure_->host() + "/team/app:1");
  ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
  json rec = json::parse(r.text);
  EXPECT_EQ(rec["name"], secure_->host() + "/team/app:1");
  EXPECT_EQ(rec["digest"], app1_digest_);
  EXPECT_EQ(rec["layers"].size(), 2u);
  EXPECT_EQ(rec["origin"]["type"], "registry");
  EXPECT_EQ(rec["origin"]["registry"], secure_->host());
  EXPECT_EQ(rec["origin"]["repository"], "team/app");
  EXPECT_EQ(rec["origin"]["digest"], app1_digest_);
  EXPECT_TRUE(rec["pulled"].get<bool>());
  EXPECT_EQ(rec["pull"]["blobs_downloaded"], 3);  // config + 2 layers
  // Progress: per blob, bytes done of total, ending complete.
  ASSERT_FALSE(r.progress.empty());
  bool downloading = false;
  for (const json &p : r.progress) downloading |= p["phase"] == "downloading";
  EXPECT_TRUE(downloading);
  const json &last = r.progress.back();
  EXPECT_EQ(last["bytes_done"], last["bytes_total"]);
  EXPECT_EQ(last["blobs"].size(), 3u);
  // The second layer's whiteout became an overlayfs whiteout (0/0 char device).
  std::string chain = rec["layers"][1]["chain_id"];
  fs::path gone = node_ / "images" / "snapshots" / chain.substr(7) / "rootfs" / "etc" / "gone";
  struct stat st {};
  ASSERT_EQ(lstat(gone.c_str(), &st), 0) << gone;
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, 0u);
  // The list says where it came from.
  json images = d.images();
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0]["origin"]["endpoint"], secure_->host());

  // if_not_present: no request at all. always: the manifest again, no blob.
  Result again = d.pull(secure_->host() + "/team/app:1", "if_not_present");
  ASSERT_EQ(again.status, FLOTILLA_OK) << again.error;
  EXPECT_FALSE(json::parse(again.text)["pulled"].get<bool>());
  Result always = d.pull(secure_->host() + "/team/app:1", "always");
  ASSERT_EQ(always.status, FLOTILLA_OK) << always.error;
  EXPECT_EQ(json::parse(always.text)["pull"]["blobs_downloaded"], 0);
  // :2 shares the first layer: only its config and new layer come.
  Result v2 = d.pull(secure_->host() + "/team/app:2");
  ASSERT_EQ(v2.status, FLOTILLA_OK) << v2.error;
  EXPECT_EQ(json::parse(v2.text)["pull"]["blobs_downloaded"], 2);
  EXPECT_EQ(json::parse(v2.text)["pull"]["blobs_present"], 1);
  // By digest. A digest names one content: once it is in the store, even
  // "always" asks the registry nothing (image_pulls.cc), so it is not pulled.
  Result pinned = d.pull(secure_->host() + "/team/app@" + app2_digest_);
  ASSERT_EQ(pinned.status, FLOTILLA_OK) << pinned.error;
  EXPECT_EQ(json::parse(pinned.text)["digest"], app2_digest_);
  Result pinned_again = d.pull(secure_->host() + "/team/app@" + app2_digest_, "always");
  ASSERT_EQ(pinned_again.status, FLOTILLA_OK) << pinned_again.error;
  json pinned_rec = json::parse(pinned_again.text);
  EXPECT_EQ(pinned_rec["digest"], app2_digest_);
  EXPECT_FALSE(pinned_rec["pulled"].get<bool>()) << "a present digest was pulled again";
  EXPECT_FALSE(pinned_rec.contains("pull")) << pinned_rec.dump();
}

TEST_F(RegistryPull, WrongPasswordIsRefusedWithTheRegistrysMessage) {
  regtest::spit(
      node_ / "auths.json",
      json{{"auths", {{secure_->host(), {{"username", "ci"}, {"password", "wrong"}}}}}}.dump());
  Daemon &d = daemon();
  Result r = d.pull(secure_->host() + "/team/app:1");
  EXPECT_EQ(r.status, FLOTILLA_E_PERMISSION) << r.error;
  EXPECT_NE(r.error.find("HTTP 401"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("UNAUTHORIZED"), std::string::npos) << r.error;
  EXPECT_EQ(r.error.find("s3cret"), std::string::npos);
  EXPECT_EQ(r.error.find("wrong"), std::string::npos) << "the password leaked: " << r.error;
  expect_nothing_left();
}

TEST_F(RegistryPull, NoCredentialsSaysSo) {
  regtest::spit(node_ / "auths.json", R"({"auths":{}})");
  Daemon &d = daemon();
  Result r = d.pull(secure_->host() + "/team/app:1");
  EXPECT_EQ(r.status, FLOTILLA_E_PERMISSION) << r.error;
  EXPECT_NE(r.error.find("auth_file has none for " + secure_->host()), std::string::npos)
      << r.error;
  expect_nothing_left();
}

TEST_F(RegistryPull, UnknownTagIsNotFound) {
  Daemon &d = daemon();
  Result r = d.pull(secure_->host() + "/team/app:nope");
  EXPECT_EQ(r.status, FLOTILLA_E_NOT_FOUND) << r.error;
  EXPECT_NE(r.error.find("MANIFEST_UNKNOWN"), std::string::npos) << r.error;
  expect_nothing_left();
}

TEST_F(RegistryPull, BadReferencesAreRefusedAtOnce) {
  Daemon &d = daemon();
  for (const char *bad : {"Team/App", "host:5000/app@sha256:1234", "", "a b", "sha256:abc"}) {
    // Refused by the call, or by its callback while the runtime starts up.
    Result r = d.pull(bad);
    EXPECT_EQ(r.status, FLOTILLA_E_INVALID) << bad;
    EXPECT_NE(r.error.find("image reference"), std::string::npos) << bad << ": " << r.error;
  }
}

TEST_F(RegistryPull, IndexResolvesToTheHostPlatform) {
  Daemon &d = daemon();
  Result r = d.pull(plain_->host() + "/team/multi:1");
  ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
  json rec = json::parse(r.text);
  EXPECT_EQ(rec["platform"], "linux/" + host_arch());
  EXPECT_EQ(rec["digest"], multi_host_digest_);
  EXPECT_FALSE(rec["index_digest"].get<std::string>().empty());
  EXPECT_EQ(rec["layers"].size(), 1u);
  // Only the host manifest's blobs came: config + 1 layer.
  EXPECT_EQ(rec["pull"]["blobs_downloaded"], 2);
  daemon_.reset();
  flotilla::runc::ImageStore store(node_ / "images");
  EXPECT_EQ(regtest::slurp(store.resolve(plain_->host() + "/team/multi:1").lower_dirs[0] / "arch"),
            host_arch() + "\n");
}

TEST_F(RegistryPull, TwoPullsAtOnceDownloadOnce) {
  Daemon &d = daemon();
  {
    std::lock_guard<std::mutex> g(proxy_->mu);
    proxy_->blob_gets.clear();
  }
  Result a, b;
  std::string ref = proxy_->host() + "/team/app:1";
  ASSERT_EQ(d.start_pull(ref, "always", &a), FLOTILLA_OK) << a.error;
  ASSERT_EQ(d.start_pull(ref, "if_not_present", &b), FLOTILLA_OK) << b.error;
  ASSERT_TRUE(d.run_until([&] { return a.done && b.done; }));
  ASSERT_EQ(a.status, FLOTILLA_OK) << a.error;
  ASSERT_EQ(b.status, FLOTILLA_OK) << b.error;
  EXPECT_EQ(json::parse(a.text)["digest"], json::parse(b.text)["digest"]);
  std::lock_guard<std::mutex> g(proxy_->mu);
  EXPECT_EQ(proxy_->blob_gets.size(), 3u);
  for (const auto &[digest, n] : proxy_->blob_gets) EXPECT_EQ(n, 1) << digest;
}

// Issue 13: "Layers download concurrently (configurable, default 3)". The
// proxy counts blob GETs in flight. concurrency = 1: never two at once.
// The default: the proxy holds every blob GET until three are in flight
// together, so the pull only completes if the plugin asks three at once;
// and never more than three.
TEST_F(RegistryPull, DownloadsAtMostConcurrencyBlobsAtOnceDefaultThree) {
  const std::string ref = proxy_->host() + "/team/six:1";
  struct Reset {  // whatever happens, no later test meets the gate
    regtest::FaultProxy &p;
    ~Reset() {
      std::lock_guard<std::mutex> g(p.mu);
      p.gate_at = 0;
      p.gate_opened = false;
    }
  } reset{*proxy_};
  auto arm = [&](int gate_at) {
    std::lock_guard<std::mutex> g(proxy_->mu);
    proxy_->blob_gets.clear();
    proxy_->max_in_flight = 0;
    proxy_->gate_at = gate_at;
    proxy_->gate_opened = false;
  };
  auto seen = [&] {
    std::lock_guard<std::mutex> g(proxy_->mu);
    return std::make_tuple(proxy_->max_in_flight, proxy_->blob_gets.size(), proxy_->gate_opened);
  };
  // The held GETs send nothing: no low-speed timeout while they wait.
  {
    arm(0);
    Daemon &d = daemon(registry_config({{"concurrency", 1}, {"low_speed_timeout_s", 600}}));
    Result r = d.pull(ref);
    ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
    auto [most, blobs, opened] = seen();
    EXPECT_EQ(blobs, 7u) << "config + 6 layers";
    EXPECT_EQ(most, 1) << "concurrency = 1, yet " << most << " blobs were downloaded at once";
    daemon_.reset();
    fs::remove_all(node_ / "images");
    fs::remove_all(node_ / "data");
  }
  {
    arm(3);
    Daemon &d = daemon(registry_config({{"low_speed_timeout_s", 600}}));  // concurrency: default
    Result r = d.pull(ref);
    ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
    auto [most, blobs, opened] = seen();
    EXPECT_TRUE(opened) << "three blob downloads were never in flight together";
    EXPECT_EQ(blobs, 7u);
    EXPECT_EQ(most, 3) << "the default is 3 at once, " << most << " were";
  }
}

TEST_F(RegistryPull, CorruptBlobIsRefusedNamingIt) {
  {
    std::lock_guard<std::mutex> g(proxy_->mu);
    proxy_->flip_digest = big_layer_digest_;
  }
  Daemon &d = daemon();
  Result r = d.pull(proxy_->host() + "/team/big:1");
  {
    std::lock_guard<std::mutex> g(proxy_->mu);
    proxy_->flip_digest.clear();
  }
  EXPECT_EQ(r.status, FLOTILLA_E_INVALID) << r.error;
  EXPECT_NE(r.error.find("blob " + big_layer_digest_), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("layer 1/1"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("its content has digest"), std::string::npos) << r.error;
  // The config may have arrived, but nothing is kept.
  expect_nothing_left();
}

TEST_F(RegistryPull, ConnectionCutMidBlobResumesWithRange) {
  {
    std::lock_guard<std::mutex> g(proxy_->mu);
    proxy_->cut_digest = big_layer_digest_;
    proxy_->ranges.clear();
  }
  Daemon &d = daemon();
  Result r = d.pull(proxy_->host() + "/team/big:1");
  ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
  std::lock_guard<std::mutex> g(proxy_->mu);
  EXPECT_TRUE(proxy_->cut_digest.empty()) << "the cut never happened";
  ASSERT_EQ(proxy_->ranges.size(), 1u);
  EXPECT_EQ(proxy_->ranges[0].rfind("bytes=", 0), 0u) << proxy_->ranges[0];
  EXPECT_NE(proxy_->ranges[0], "bytes=0-");
}

TEST_F(RegistryPull, RegistryDownThenBack) {
  Daemon &d = daemon();
  plain_->stop();
  Result down = d.pull(plain_->host() + "/team/app:1");
  EXPECT_EQ(down.status, FLOTILLA_E_IO) << down.error;
  EXPECT_NE(down.error.find("registry " + plain_->host()), std::string::npos) << down.error;
  expect_nothing_left();
  ASSERT_TRUE(plain_->restart());
  Result up = d.pull(plain_->host() + "/team/app:1");
  EXPECT_EQ(up.status, FLOTILLA_OK) << up.error;
}

TEST_F(RegistryPull, BearerTokenFlowCachesTheTokenUntilItExpires) {
  auto token_requests = [] {
    std::lock_guard<std::mutex> g(tokens_->mu);
    return tokens_->scopes.size();
  };
  {
    std::lock_guard<std::mutex> g(tokens_->mu);
    tokens_->scopes.clear();
  }
  // Tokens that live an hour: the second pull finds the first one's token
  // in the cache however slow the machine is.
  tokens_->set_lifetime(3600);
  Daemon &d = daemon();
  Result r = d.pull(token_reg_->host() + "/team/app:1");
  ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
  const size_t first = token_requests();
  ASSERT_GE(first, 1u);
  {
    std::lock_guard<std::mutex> g(tokens_->mu);
    EXPECT_EQ(tokens_->scopes[0], "repository:team/app:pull");
  }
  Result again = d.pull(token_reg_->host() + "/team/app:2");
  ASSERT_EQ(again.status, FLOTILLA_OK) << again.error;
  EXPECT_EQ(token_requests(), first) << "the cached token was not used";

  // Once a token expired, a new one is fetched. A fresh daemon (an empty
  // cache) gets tokens of 1 s; waiting longer than that only makes sure.
  daemon_.reset();
  tokens_->set_lifetime(1);
  Daemon &d2 = daemon();
  Result short_lived = d2.pull(token_reg_->host() + "/team/app:1");
  ASSERT_EQ(short_lived.status, FLOTILLA_OK) << short_lived.error;
  const size_t second = token_requests();
  ASSERT_GT(second, first);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  Result later = d2.pull(token_reg_->host() + "/team/app:1");
  tokens_->set_lifetime(3600);
  ASSERT_EQ(later.status, FLOTILLA_OK) << later.error;
  EXPECT_GT(token_requests(), second) << "an expired token was used again";
}

TEST_F(RegistryPull, BearerTokenWithWrongPasswordIsRefused) {
  regtest::spit(
      node_ / "auths.json",
      json{{"auths", {{token_reg_->host(), {{"username", "ci"}, {"password", "nope"}}}}}}.dump());
  Daemon &d = daemon();
  Result r = d.pull(token_reg_->host() + "/team/app:1");
  EXPECT_EQ(r.status, FLOTILLA_E_PERMISSION) << r.error;
  EXPECT_NE(r.error.find("token endpoint"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("wrong user name or password"), std::string::npos) << r.error;
  expect_nothing_left();
}

TEST_F(RegistryPull, MirrorFirstThenTheRegistryWhenTheMirrorIsDown) {
  json cfg = registry_config();
  cfg["hosts"][secure_->host()]["mirrors"] = {mirror_->host()};
  Daemon &d = daemon(cfg);
  Result r = d.pull(secure_->host() + "/team/app:1");
  ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
  EXPECT_EQ(json::parse(r.text)["origin"]["endpoint"], mirror_->host());
  // The mirror lacks :2: the registry serves it.
  Result v2 = d.pull(secure_->host() + "/team/app:2");
  ASSERT_EQ(v2.status, FLOTILLA_OK) << v2.error;
  EXPECT_EQ(json::parse(v2.text)["origin"]["endpoint"], secure_->host());
  mirror_->stop();
  Result down = d.pull(secure_->host() + "/team/app:1");
  ASSERT_TRUE(mirror_->restart());
  ASSERT_EQ(down.status, FLOTILLA_OK) << down.error;
  EXPECT_EQ(json::parse(down.text)["origin"]["endpoint"], secure_->host());
}

// Issue 13: a pull killed with kill -9 part way through a blob leaves no
// half image, and the next start pulls it whole. The child process
// (RegistryChild.PullStandIn) is "the daemon": it pulls team/big:1 through
// the proxy, which stalls the 3 MiB layer after 2 MiB. Once at least 1 MiB
// of it is on disk the child gets SIGKILL; then a daemon on the same data
// directory must find no image, no blob that is not whole and verified, and
// no pull or import leftovers (the contract: the plugin removes
// <image_dir>/pulls at start-up, the store empties tmp/), and pull the
// image whole.
TEST_F(RegistryPull, KilledMidPullLeavesNoHalfImageAndTheNextPullCompletes) {
  constexpr size_t kStallAfter = size_t{2} << 20;
  constexpr uint64_t kOnDisk = uint64_t{1} << 20;
  const std::string ref = proxy_->host() + "/team/big:1";
  const std::string hex = big_layer_digest_.substr(7);
  const fs::path images = node_ / "images";
  {
    std::lock_guard<std::mutex> g(proxy_->mu);
    proxy_->stall_digest = big_layer_digest_;
    proxy_->stall_after = kStallAfter;
    proxy_->stalls = 0;
  }
  struct Unstall {  // whatever happens, no proxy thread stays stalled
    regtest::FaultProxy &p;
    ~Unstall() {
      std::lock_guard<std::mutex> g(p.mu);
      p.stall_digest.clear();
    }
  } unstall{*proxy_};

  // The child: a fresh test process (exec of ourselves), all it needs in
  // its environment. A long low-speed timeout: the stall must not make it
  // give up before it is killed.
  json config = {{"binary", "/bin/true"},
                 {"shim", RUNTIME_SHIM_PATH},
                 {"image_dir", images.string()},
                 {"registry", registry_config({{"low_speed_timeout_s", 600}})}};
  const fs::path report = node_ / "child-report";
  pid_t child = flotilla::testing::spawn_test_child(
      "RegistryChild.PullStandIn",
      {"REGISTRY_E2E_CHILD_DIR=" + (node_ / "data").string(),
       "REGISTRY_E2E_CHILD_CONFIG=" + config.dump(), "REGISTRY_E2E_CHILD_REF=" + ref,
       "REGISTRY_E2E_CHILD_REPORT=" + report.string()});
  ASSERT_GE(child, 0);

  // Wait until the layer is half written in the child's pull directory
  // and the proxy stalls the rest.
  fs::path partial;
  uint64_t partial_size = 0;
  int status = 0;
  bool exited = false;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGuardMs);
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(child, &status, WNOHANG) == child) {
      exited = true;
      break;
    }
    std::error_code ec;
    for (const auto &pull : fs::directory_iterator(images / "pulls", ec)) {
      fs::path blob = pull.path() / "blobs" / "sha256" / hex;
      uint64_t size = fs::file_size(blob, ec);
      if (!ec && size >= kOnDisk) {
        partial = blob;
        partial_size = size;
      }
    }
    bool stalled;
    {
      std::lock_guard<std::mutex> g(proxy_->mu);
      stalled = proxy_->stalls > 0;
    }
    // Killed only once the proxy holds the rest back, so the layer on disk
    // is a part of it for sure.
    if (!partial.empty() && stalled) break;
    partial.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!exited) {
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    ASSERT_EQ(waitpid(child, &status, 0), child);
  }
  ASSERT_FALSE(exited) << "the child ended before it was killed: " << regtest::slurp(report);
  ASSERT_FALSE(partial.empty()) << "no 1 MiB of the layer arrived on disk; child: "
                                << regtest::slurp(report);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  EXPECT_EQ(regtest::slurp(report), "pulling") << "the pull ended before the kill";
  {
    std::lock_guard<std::mutex> g(proxy_->mu);
    EXPECT_GE(proxy_->stalls, 1);
  }
  // What the kill left: a half layer, the blob's final name in the pull
  // directory, and no image.
  ASSERT_TRUE(fs::exists(partial));
  EXPECT_LT(partial_size, uint64_t{3} << 20) << "the layer was whole before the kill";
  EXPECT_EQ(regtest::slurp(images / "images.json").find(ref), std::string::npos)
      << "the killed pull recorded an image";

  // The next start: leftovers gone, nothing half published.
  Daemon &d = daemon();
  EXPECT_EQ(d.images().size(), 0u) << d.images().dump();  // waits for the start-up
  std::error_code ec;
  EXPECT_FALSE(fs::exists(partial)) << "the half layer is still there";
  for (const char *sub : {"pulls", "tmp"})
    for (const auto &e : fs::directory_iterator(images / sub, ec))
      ADD_FAILURE() << "left behind in " << sub << ": " << e.path();
  for (const auto &e : fs::directory_iterator(images / "blobs" / "sha256", ec)) {
    std::string bytes = regtest::slurp(e.path());
    EXPECT_EQ(flotilla::runc::sha256_of(bytes), "sha256:" + e.path().filename().string())
        << "a blob in the store is not whole: " << e.path() << " (" << bytes.size() << " bytes)";
  }
  EXPECT_FALSE(fs::exists(images / "blobs" / "sha256" / hex)) << "the layer was published";

  // The pull again, nothing stalled: it completes, the layer verified.
  {
    std::lock_guard<std::mutex> g(proxy_->mu);
    proxy_->stall_digest.clear();
    proxy_->blob_gets.clear();
  }
  Result r = d.pull(ref);
  ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
  json rec = json::parse(r.text);
  EXPECT_EQ(rec["pull"]["blobs_downloaded"], 2) << rec.dump();  // config + layer
  ASSERT_EQ(rec["layers"].size(), 1u);
  EXPECT_EQ(rec["layers"][0]["digest"], big_layer_digest_);
  std::string layer = regtest::slurp(images / "blobs" / "sha256" / hex);
  EXPECT_GT(layer.size(), partial_size);
  EXPECT_EQ(flotilla::runc::sha256_of(layer), big_layer_digest_);
  for (const auto &e : fs::directory_iterator(images / "pulls", ec))
    ADD_FAILURE() << "left behind in pulls: " << e.path();
  ASSERT_EQ(d.images().size(), 1u);
  daemon_.reset();

  // Usable: the store resolves it to a snapshot holding the layer's file.
  flotilla::runc::ImageStore store(images);
  flotilla::runc::ResolvedImage img = store.resolve(ref);
  ASSERT_EQ(img.lower_dirs.size(), 1u);
  EXPECT_EQ(regtest::slurp(img.lower_dirs[0] / "blob"), random_bytes(3 << 20, 7))
      << "the snapshot does not hold the layer's file";
}

// Not a test of its own: the daemon of
// KilledMidPullLeavesNoHalfImageAndTheNextPullCompletes, run in a child
// process that pulls until the parent kills it with SIGKILL. It reports
// "pulling" once the pull started, and how it ended if it ever does.
TEST(RegistryChild, PullStandIn) {
  const char *dir = getenv("REGISTRY_E2E_CHILD_DIR");
  if (!dir) GTEST_SKIP() << "SKIPPED: only runs as the child of the kill -9 test";
  const std::string report = getenv("REGISTRY_E2E_CHILD_REPORT");
  auto say = [&](const std::string &what) {
    regtest::spit(report + ".tmp", what);
    fs::rename(report + ".tmp", report);
  };
  auto d = std::make_unique<Daemon>(dir, json::parse(getenv("REGISTRY_E2E_CHILD_CONFIG")));
  Result r;
  if (d->start_pull(getenv("REGISTRY_E2E_CHILD_REF"), "always", &r) != FLOTILLA_OK) {
    say("refused: " + r.error);
  } else {
    say("pulling");
    d->run_until([&] { return r.done; }, 10 * 60 * 1000);
    say(r.done ? "ended: " + std::to_string(r.status) + " " + r.error : "still pulling");
  }
  for (;;) pause();  // until the parent's SIGKILL
}

}  // namespace
