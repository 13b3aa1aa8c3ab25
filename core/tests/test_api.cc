// The API routes end to end: a real ApiServer on a real libuv loop (in a
// background thread), requests over its Unix socket from the test thread.
//
// The store is a small in-test fake of flotilla.store/1 (FakeStore), or the
// real store-local plugin loaded through PluginHost: ApiTest runs each test
// against both (the plugin variant is skipped, with the reason, when the
// plugin is not built). Security and runtime plugins are fakes handed in
// through ApiServer::Context::find_providers.
//
// The `flotilla` CLI is tested here too (CliTest), against the same server.
#include <fcntl.h>
#include <flotilla/runtime.h>
#include <flotilla/security.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <atomic>
#include <csignal>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "../../tools/flotilla/http_client.h"
#include "api/api_server.h"
#include "flotilla_build_config.h"
#include "loop_thread.h"

extern char **environ;

namespace flotilla {
namespace {

namespace fs = std::filesystem;

// As flotillad's main() does: a client that hangs up must cost a write
// error (EPIPE), not the process.
const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();
using cli::HttpResponse;
using nlohmann::json;

using test::LoopThread;

// ---- a fake flotilla.store/1 -------------------------------------------------------

// A revisioned map with the etcd semantics the API relies on: reads at a
// revision, compare-and-swap transactions, one revision per write. Callbacks
// run on a later loop iteration, never inside the call. Watches, leases and
// compaction are not served.
class FakeStore {
 public:
  explicit FakeStore(uv_loop_t *loop) : timer_(loop) {}
  ~FakeStore() {
    // Whatever is still pending completes as cancelled, as at deinit.
    while (!queue_.empty()) {
      auto q = std::move(queue_);
      queue_.clear();
      for (auto &fn : q) fn(true);
    }
  }

  const flotilla_store_v1 *vtable() const { return &kVtable; }
  void *self() { return this; }

  // Test hooks, [loop-thread]. before_txn runs before a transaction's
  // compares, as if another writer got there first.
  std::function<void(FakeStore &)> before_txn;
  bool unavailable = false;

  void put_now(const std::string &key, const std::string &value) {
    ++rev_;
    write(key, value);
  }

 private:
  struct Version {
    int64_t create = 0, mod = 0, version = 0;
    std::string value;
  };
  struct Owned {  // a kv that outlives the call, for a deferred callback
    std::string key, value;
    Version v;
  };

  std::optional<Version> at(const std::string &key, int64_t rev) const {
    auto it = keys_.find(key);
    if (it == keys_.end()) return std::nullopt;
    std::optional<Version> out;
    for (const auto &[r, v] : it->second)
      if (r <= rev) out = v;
    return out;
  }
  std::optional<Version> now(const std::string &key) const { return at(key, rev_); }

  void write(const std::string &key, const std::string &value) {
    auto cur = now(key);
    Version v;
    v.create = cur ? cur->create : rev_;
    v.version = cur ? cur->version + 1 : 1;
    v.mod = rev_;
    v.value = value;
    keys_[key].emplace_back(rev_, v);
  }
  int64_t remove(const std::string &key, bool prefix) {
    int64_t n = 0;
    for (auto &[k, hist] : keys_) {
      bool match = prefix ? k.compare(0, key.size(), key) == 0 : k == key;
      if (match && now(k)) {
        hist.emplace_back(rev_, std::nullopt);
        ++n;
      }
    }
    return n;
  }

  void later(std::function<void(bool cancelled)> fn) {
    queue_.push_back(std::move(fn));
    timer_.start(0, 0, [this] {
      auto q = std::move(queue_);
      queue_.clear();
      for (auto &f : q) f(false);
    });
  }

  static FakeStore *of(void *self) { return static_cast<FakeStore *>(self); }

  static flotilla_status range(void *self, const flotilla_key_range *r, int64_t revision,
                               int64_t limit, flotilla_store_range_cb cb, void *user) {
    FakeStore *s = of(self);
    if (s->unavailable) return FLOTILLA_E_UNAVAILABLE;
    if (!r || !cb || revision > s->rev_) return FLOTILLA_E_INVALID;
    int64_t rev = revision > 0 ? revision : s->rev_;
    std::string key(r->key, r->key_len);
    std::string end = r->range_end ? std::string(r->range_end, r->range_end_len) : std::string();
    auto out = std::make_shared<std::vector<Owned>>();
    int more = 0;
    for (const auto &[k, hist] : s->keys_) {
      bool match = r->prefix     ? k.compare(0, key.size(), key) == 0
                   : end.empty() ? k == key
                                 : k >= key && k < end;
      if (!match) continue;
      auto v = s->at(k, rev);
      if (!v) continue;
      if (limit > 0 && static_cast<int64_t>(out->size()) == limit) {
        more = 1;
        break;
      }
      out->push_back({k, v->value, *v});
    }
    s->later([out, rev, more, cb, user](bool cancelled) {
      if (cancelled) return cb(user, FLOTILLA_E_CANCELLED, nullptr, 0, 0, 0);
      std::vector<flotilla_kv> kvs;
      for (const Owned &o : *out) {
        flotilla_kv kv{};
        kv.struct_size = sizeof kv;
        kv.key = o.key.data();
        kv.key_len = o.key.size();
        kv.value = o.value.data();
        kv.value_len = o.value.size();
        kv.create_revision = o.v.create;
        kv.mod_revision = o.v.mod;
        kv.version = o.v.version;
        kvs.push_back(kv);
      }
      cb(user, FLOTILLA_OK, kvs.data(), kvs.size(), rev, more);
    });
    return FLOTILLA_OK;
  }

  static flotilla_status put(void *self, const char *key, size_t key_len, const char *value,
                             size_t value_len, flotilla_lease_id, flotilla_store_write_cb cb,
                             void *user) {
    FakeStore *s = of(self);
    if (s->unavailable) return FLOTILLA_E_UNAVAILABLE;
    s->put_now(std::string(key, key_len), std::string(value, value_len));
    int64_t rev = s->rev_;
    s->later([cb, user, rev](bool cancelled) {
      cb(user, cancelled ? FLOTILLA_E_CANCELLED : FLOTILLA_OK, rev);
    });
    return FLOTILLA_OK;
  }

  static flotilla_status delete_range(void *self, const flotilla_key_range *r,
                                      flotilla_store_delete_cb cb, void *user) {
    FakeStore *s = of(self);
    if (s->unavailable) return FLOTILLA_E_UNAVAILABLE;
    ++s->rev_;
    int64_t n = s->remove(std::string(r->key, r->key_len), r->prefix != 0);
    if (n == 0) --s->rev_;
    int64_t rev = s->rev_;
    s->later([cb, user, rev, n](bool cancelled) {
      cb(user, cancelled ? FLOTILLA_E_CANCELLED : FLOTILLA_OK, rev, n);
    });
    return FLOTILLA_OK;
  }

  bool holds(const flotilla_compare &c) const {
    auto v = now(std::string(c.key, c.key_len));
    int64_t have = 0;
    switch (c.target) {
      case FLOTILLA_CMP_VERSION:
        have = v ? v->version : 0;
        break;
      case FLOTILLA_CMP_CREATE:
        have = v ? v->create : 0;
        break;
      case FLOTILLA_CMP_MOD:
        have = v ? v->mod : 0;
        break;
      case FLOTILLA_CMP_LEASE:
        have = 0;
        break;
      case FLOTILLA_CMP_VALUE: {
        std::string a = v ? v->value : std::string(), b(c.value, c.value_len);
        int cmp = a.compare(b);
        return c.op == FLOTILLA_CMP_EQUAL       ? cmp == 0
               : c.op == FLOTILLA_CMP_NOT_EQUAL ? cmp != 0
               : c.op == FLOTILLA_CMP_LESS      ? cmp < 0
                                                : cmp > 0;
      }
    }
    return c.op == FLOTILLA_CMP_EQUAL       ? have == c.number
           : c.op == FLOTILLA_CMP_NOT_EQUAL ? have != c.number
           : c.op == FLOTILLA_CMP_LESS      ? have < c.number
                                            : have > c.number;
  }

  static flotilla_status txn(void *self, const flotilla_compare *compares, size_t n_compares,
                             const flotilla_op *success, size_t n_success,
                             const flotilla_op *failure, size_t n_failure, flotilla_store_txn_cb cb,
                             void *user) {
    FakeStore *s = of(self);
    if (s->unavailable) return FLOTILLA_E_UNAVAILABLE;
    if (s->before_txn) s->before_txn(*s);
    bool ok = true;
    for (size_t i = 0; i < n_compares; ++i) ok = ok && s->holds(compares[i]);
    const flotilla_op *ops = ok ? success : failure;
    size_t n_ops = ok ? n_success : n_failure;
    if (n_ops > 0) {
      ++s->rev_;  // every op of the transaction shares this revision
      for (size_t i = 0; i < n_ops; ++i) {
        std::string key(ops[i].key, ops[i].key_len);
        if (ops[i].type == FLOTILLA_OP_PUT) {
          s->write(key, std::string(ops[i].value, ops[i].value_len));
        } else {
          s->remove(key, ops[i].prefix != 0);
        }
      }
    }
    int64_t rev = s->rev_;
    s->later([cb, user, ok, rev](bool cancelled) {
      cb(user, cancelled ? FLOTILLA_E_CANCELLED : FLOTILLA_OK, ok ? 1 : 0, rev);
    });
    return FLOTILLA_OK;
  }

  static flotilla_status watch(void *, const flotilla_key_range *, int64_t, flotilla_store_watch_cb,
                               void *, flotilla_store_watch_id *) {
    return FLOTILLA_E_UNSUPPORTED;
  }
  static void watch_cancel(void *, flotilla_store_watch_id) {}
  static flotilla_status lease_grant(void *, int64_t, flotilla_lease_cb, void *) {
    return FLOTILLA_E_UNSUPPORTED;
  }
  static flotilla_status lease_keepalive(void *, flotilla_lease_id, flotilla_lease_cb, void *) {
    return FLOTILLA_E_UNSUPPORTED;
  }
  static flotilla_status lease_revoke(void *, flotilla_lease_id, flotilla_done_cb, void *) {
    return FLOTILLA_E_UNSUPPORTED;
  }
  static flotilla_status compact(void *, int64_t, flotilla_done_cb, void *) {
    return FLOTILLA_E_UNSUPPORTED;
  }

  static constexpr flotilla_store_v1 kVtable = {sizeof(flotilla_store_v1),
                                                range,
                                                put,
                                                delete_range,
                                                txn,
                                                watch,
                                                watch_cancel,
                                                lease_grant,
                                                lease_keepalive,
                                                lease_revoke,
                                                compact};

  http::Timer timer_;
  std::deque<std::function<void(bool)>> queue_;
  std::map<std::string, std::vector<std::pair<int64_t, std::optional<Version>>>> keys_;
  int64_t rev_ = 1;
};

// ---- fake security and runtime plugins -----------------------------------------------

struct FakePlugins {
  std::atomic<bool> security = true;
  std::atomic<bool> runtime = true;
  std::string error;          // what the fake last gave "set_error"
  std::string admitted_json;  // the last job admit() saw
  fs::path log_dir;

  static FakePlugins *of(void *self) { return static_cast<FakePlugins *>(self); }

  static flotilla_status admit(void *self, const char *job_json) {
    FakePlugins *p = of(self);
    p->admitted_json = job_json;
    if (json::parse(job_json).value("name", "") == "forbidden") {
      p->error = "policy no-forbidden: jobs named forbidden may not run here";
      return FLOTILLA_E_PERMISSION;
    }
    return FLOTILLA_OK;
  }
  static flotilla_status resolve(void *, const char *, flotilla_buf *) {
    return FLOTILLA_E_UNSUPPORTED;
  }
  // Logs live at <log_dir>/<container>.<stream>.log; container "missing.*"
  // is unknown to this runtime.
  static flotilla_status log_path(void *self, const char *container, const char *stream, char *buf,
                                  size_t len) {
    FakePlugins *p = of(self);
    if (std::string(container).rfind("missing.", 0) == 0) {
      p->error = std::string("no container ") + container;
      return FLOTILLA_E_NOT_FOUND;
    }
    std::string path = (p->log_dir / (std::string(container) + "." + stream + ".log")).string();
    snprintf(buf, len, "%s", path.c_str());
    return FLOTILLA_OK;
  }

  // "nope:*" is unknown to the registry; anything else pulls with one
  // progress report and answers its record with the policy it was given.
  static flotilla_status image_pull(void *, const char *ref, const char *options,
                                    flotilla_runtime_progress_cb progress,
                                    flotilla_runtime_state_cb cb, void *user) {
    std::string r = ref;
    if (r.rfind("nope:", 0) == 0) {
      cb(user, FLOTILLA_E_NOT_FOUND, "null");
      return FLOTILLA_OK;
    }
    if (progress) progress(user, R"({"ref":"x","phase":"downloading","bytes_done":1,"bytes_total":2})");
    json rec = {{"name", r}, {"pulled", true},
                {"policy", json::parse(options).value("policy", "")}};
    cb(user, FLOTILLA_OK, rec.dump().c_str());
    return FLOTILLA_OK;
  }

  static constexpr flotilla_security_v1 kSecurity = {sizeof(flotilla_security_v1), admit, resolve};
  static flotilla_runtime_v1 runtime_vtable() {
    flotilla_runtime_v1 vt{};
    vt.struct_size = sizeof vt;
    vt.log_path = log_path;
    vt.image_pull = image_pull;
    return vt;
  }
};

const flotilla_runtime_v1 kFakeRuntime = FakePlugins::runtime_vtable();

// ---- fixtures -------------------------------------------------------------------------

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-api-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

const std::string kWebToml = R"(name = "web"

[[task]]
name = "server"
image = "busybox:latest"
command = "/bin/httpd"
)";
// The same job with one change: a new version.
const std::string kWebTomlV2 = R"(name = "web"
priority = 70

[[task]]
name = "server"
image = "busybox:latest"
command = "/bin/httpd"
)";

enum class Backend { fake, store_local };

std::string backend_name(const ::testing::TestParamInfo<Backend> &info) {
  return info.param == Backend::fake ? "FakeStore" : "StoreLocalPlugin";
}

class ApiTest : public ::testing::TestWithParam<Backend> {
 protected:
  Backend backend() const { return GetParam(); }

  void SetUp() override {
    plugins_.log_dir = dir_.path / "logs";
    fs::create_directories(plugins_.log_dir);
    socket_ = (dir_.path / "api.sock").string();
    config_.path = (dir_.path / "flotillad.toml").string();
    config_.node.name = "node-1";
    config_.api.socket = socket_;
    std::string skip;
    loop_.run([&] {
      if (backend() == Backend::fake) {
        fake_ = std::make_unique<FakeStore>(loop_.loop());
        store_ = std::make_unique<StoreClient>(fake_->vtable(), fake_->self());
      } else {
        std::string so =
            std::string(FLOTILLA_TEST_BUILD_DIR) + "/plugins/store-local/flotilla-store-local.so";
        if (!fs::exists(so)) {
          skip = "the store-local plugin is not built (" + so + ")";
          return;
        }
        host_ = std::make_unique<PluginHost>(
            loop_.loop(),
            PluginHost::Options{"node-1", (dir_.path / "data").string(), config_.path});
        PluginSettings ps;
        ps.name = "store-local";
        ps.path = so;
        host_->start({ps});
        void *self = nullptr;
        auto *vt = host_->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self);
        if (!vt) throw std::runtime_error("store-local serves no flotilla.store/1");
        store_ = std::make_unique<StoreClient>(vt, self);
      }
      ApiServer::Context ctx;
      ctx.loop = loop_.loop();
      ctx.plugins = host_.get();
      ctx.store = store_.get();
      ctx.config = &config_;
      ctx.find_providers = [this](std::string_view id) {
        std::vector<PluginRef> out;
        if (id == FLOTILLA_SECURITY_INTERFACE_ID && plugins_.security)
          out.push_back({"security-fake", &FakePlugins::kSecurity, &plugins_});
        if (id == FLOTILLA_RUNTIME_INTERFACE_ID && plugins_.runtime)
          out.push_back({"runtime-fake", &kFakeRuntime, &plugins_});
        return out;
      };
      ctx.plugin_error = [this] { return plugins_.error; };
      api_ = std::make_unique<ApiServer>(std::move(ctx));
      api_->listen();
    });
    if (!skip.empty()) GTEST_SKIP() << skip;
  }

  void TearDown() override {
    if (api_) {
      std::promise<void> done;
      loop_.run([&] { api_->shutdown(5000, [&] { done.set_value(); }); });
      done.get_future().get();
    }
    loop_.run([&] {
      api_.reset();
      store_.reset();
      if (host_) host_->stop();
      host_.reset();
      fake_.reset();
    });
    loop_.stop();
  }

  HttpResponse call(const std::string &method, const std::string &target,
                    const std::string &body = {}, const std::string &type = {}) {
    return cli::HttpClient(socket_).request(method, target, body, type);
  }
  static json body(const HttpResponse &r) { return json::parse(r.body); }

  HttpResponse submit(const std::string &toml, const std::string &query = {}) {
    return call("POST", "/v1/jobs" + query, toml, "application/toml");
  }

  // Store access from the test thread, through the same store interface.
  void store_put(const std::string &key, const json &value) {
    std::promise<bool> ok;
    loop_.run([&] {
      store_->put(key, value.dump(), [&](StoreResult r, int64_t) { ok.set_value(r.ok()); });
    });
    ASSERT_TRUE(ok.get_future().get()) << "put " << key;
  }
  std::vector<KeyValue> store_list(const std::string &prefix = "/flotilla/") {
    std::promise<std::vector<KeyValue>> out;
    loop_.run([&] {
      store_->list(prefix, [&](StoreResult r, std::vector<KeyValue> kvs, int64_t) {
        EXPECT_TRUE(r.ok()) << r.message;
        out.set_value(std::move(kvs));
      });
    });
    return out.get_future().get();
  }
  std::optional<json> stored(const std::string &key) {
    for (const auto &kv : store_list(key))
      if (kv.key == key) return json::parse(kv.value);
    return std::nullopt;
  }
  // Every key with its mod revision: to show a refused request changed nothing.
  std::vector<std::pair<std::string, int64_t>> store_state() {
    std::vector<std::pair<std::string, int64_t>> out;
    for (const auto &kv : store_list()) out.emplace_back(kv.key, kv.mod_revision);
    return out;
  }

  json alloc_record(const std::string &id, const std::string &job, int index) {
    return {{"id", id},
            {"job", job},
            {"job_version", 1},
            {"index", index},
            {"node", "node-1"},
            {"desired_status", "run"},
            {"spec", {{"name", job}, {"task", json::array({{{"name", "server"}}})}}}};
  }
  void seed_allocs() {
    store_put("/flotilla/allocs/web-0", alloc_record("web-0", "web", 0));
    store_put("/flotilla/allocs/web-1", alloc_record("web-1", "web", 1));
    store_put("/flotilla/allocs/db-0", alloc_record("db-0", "db", 0));
    store_put(
        "/flotilla/alloc-status/web-0",
        {{"id", "web-0"}, {"status", "running"}, {"tasks", {{"server", {{"state", "running"}}}}}});
  }

  void write_log(const std::string &container, const std::string &stream, const std::string &text,
                 bool append = false) {
    std::ofstream out(plugins_.log_dir / (container + "." + stream + ".log"),
                      append ? std::ios::app : std::ios::trunc);
    out << text;
  }

  TempDir dir_;
  LoopThread loop_;
  DaemonConfig config_;
  std::string socket_;
  FakePlugins plugins_;
  std::unique_ptr<FakeStore> fake_;
  std::unique_ptr<PluginHost> host_;
  std::unique_ptr<StoreClient> store_;
  std::unique_ptr<ApiServer> api_;
};

INSTANTIATE_TEST_SUITE_P(Stores, ApiTest, ::testing::Values(Backend::fake, Backend::store_local),
                         backend_name);

// Blocking queries need store watches, which the fake store does not have:
// these run on store-local only (and the fake store's answer-at-once is
// checked in BlockingQueryParametersAreChecked).
class ApiWatchTest : public ApiTest {};
INSTANTIATE_TEST_SUITE_P(Stores, ApiWatchTest, ::testing::Values(Backend::store_local),
                         backend_name);

// ---- simple routes -------------------------------------------------------------------------

TEST_P(ApiTest, VersionAndHealth) {
  HttpResponse r = call("GET", "/v1/version");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(*r.header("content-type"), "application/json");
  EXPECT_EQ(body(r), json({{"version", FLOTILLA_VERSION}, {"abi", "1.4"}}));
  EXPECT_EQ(body(call("GET", "/v1/health")), json({{"status", "ok"}}));
}

TEST_P(ApiTest, UnknownPathIs404WithAJsonError) {
  for (const char *path : {"/", "/v2/jobs", "/v1/jobs/web/extra", "/v1/jobs/", "/v1/nope"}) {
    HttpResponse r = call("GET", path);
    EXPECT_EQ(r.status, 404) << path;
    EXPECT_EQ(body(r)["error"]["code"], "not_found") << path;
  }
}

TEST_P(ApiTest, WrongMethodIs405WithAllow) {
  HttpResponse r = call("DELETE", "/v1/jobs");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(*r.header("allow"), "GET, POST");
  EXPECT_EQ(body(r)["error"]["code"], "method_not_allowed");
  r = call("POST", "/v1/version", "{}", "application/json");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(*r.header("allow"), "GET");
  r = call("PUT", "/v1/jobs/web", "{}", "application/json");
  EXPECT_EQ(*r.header("allow"), "GET, DELETE");
}

TEST_P(ApiTest, PluginsAreListed) {
  json plugins = body(call("GET", "/v1/plugins"))["plugins"];
  ASSERT_TRUE(plugins.is_array());
  if (backend() == Backend::store_local) {
    ASSERT_EQ(plugins.size(), 1u);
    EXPECT_EQ(plugins[0]["name"], "store-local");
    EXPECT_EQ(plugins[0]["provides"], json::array({"flotilla.store/1"}));
  } else {
    EXPECT_TRUE(plugins.empty());
  }
}

TEST_P(ApiTest, MetricsCountRequestsByClass) {
  call("GET", "/v1/health");
  call("GET", "/v1/nope");
  HttpResponse r = call("GET", "/v1/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(*r.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(r.body.find("flotilla_api_requests_total{code=\"2xx\"} 1\n"), std::string::npos)
      << r.body;
  EXPECT_NE(r.body.find("flotilla_api_requests_total{code=\"4xx\"} 1\n"), std::string::npos)
      << r.body;
  EXPECT_NE(r.body.find("flotilla_api_request_duration_seconds_count 2\n"), std::string::npos)
      << r.body;
}

// ---- jobs -----------------------------------------------------------------------------------

TEST_P(ApiTest, SubmittingTomlCreatesVersion1) {
  HttpResponse r = submit(kWebToml);
  ASSERT_EQ(r.status, 201) << r.body;
  json j = body(r);
  EXPECT_EQ(j["name"], "web");
  EXPECT_EQ(j["version"], 1);
  EXPECT_GT(j["revision"].get<int64_t>(), 0);

  auto rec = stored("/flotilla/jobs/web");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ((*rec)["version"], 1);
  EXPECT_EQ((*rec)["stop"], false);
  EXPECT_EQ((*rec)["task"][0]["image"], "busybox:latest");
  std::string at = (*rec)["submitted_at"];
  EXPECT_EQ(at.size(), 20u) << at;  // 2026-01-02T03:04:05Z
  EXPECT_EQ(at.back(), 'Z');
  EXPECT_EQ(json::parse(plugins_.admitted_json)["name"], "web");
}

TEST_P(ApiTest, ResubmittingBumpsTheVersionAndClearsStop) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  ASSERT_EQ(call("DELETE", "/v1/jobs/web").status, 200);
  EXPECT_EQ((*stored("/flotilla/jobs/web"))["stop"], true);
  HttpResponse r = submit(kWebToml);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body(r)["version"], 2);
  auto rec = *stored("/flotilla/jobs/web");
  EXPECT_EQ(rec["version"], 2);
  EXPECT_EQ(rec["stop"], false);
  // The same spec again on a running job changes nothing.
  json again = body(submit(kWebToml));
  EXPECT_EQ(again["version"], 2);
  EXPECT_EQ(again["unchanged"], true);
  EXPECT_EQ((*stored("/flotilla/jobs/web"))["version"], 2);
  // A changed spec is a new version.
  EXPECT_EQ(body(submit(kWebTomlV2))["version"], 3);
}

TEST_P(ApiTest, SubmittingJsonWorksToo) {
  json job = {
      {"name", "api"},
      {"task",
       json::array(
           {{{"name", "server"}, {"image", "busybox:latest"}, {"command", "/bin/httpd"}}})}};
  HttpResponse r = call("POST", "/v1/jobs", job.dump(), "application/json; charset=utf-8");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(body(r)["name"], "api");
  EXPECT_EQ((*stored("/flotilla/jobs/api"))["task"][0]["command"], "/bin/httpd");
}

TEST_P(ApiTest, InvalidTomlGets400WithEveryProblemAndChangesNothing) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  auto before = store_state();
  HttpResponse r = submit(R"(name = "web"
count = -3

[[task]]
name = "server"
command = "/bin/httpd"
)",
                          "?source=web.toml");
  ASSERT_EQ(r.status, 400) << r.body;
  json err = body(r)["error"];
  EXPECT_EQ(err["code"], "invalid");
  EXPECT_NE(err["message"].get<std::string>().find("web.toml"), std::string::npos) << err;
  ASSERT_GE(err["problems"].size(), 2u) << err;
  bool has_line = false;
  for (const json &p : err["problems"]) {
    EXPECT_TRUE(p.contains("line") && p.contains("key") && p.contains("message")) << p;
    has_line = has_line || p["line"].get<int>() > 0;
  }
  EXPECT_TRUE(has_line) << err;
  EXPECT_EQ(store_state(), before);
}

TEST_P(ApiTest, TomlThatDoesNotParseGets400WithTheLine) {
  HttpResponse r = submit("name = \"web\"\n\n[[task]\nname = \"x\"\n");
  ASSERT_EQ(r.status, 400) << r.body;
  json problems = body(r)["error"]["problems"];
  ASSERT_FALSE(problems.empty());
  EXPECT_EQ(problems[0]["line"], 3);
  EXPECT_TRUE(store_state().empty());
}

TEST_P(ApiTest, JsonThatDoesNotParseGets400WithTheLine) {
  HttpResponse r =
      call("POST", "/v1/jobs", "{\n  \"name\": \"web\",\n  oops\n}", "application/json");
  ASSERT_EQ(r.status, 400) << r.body;
  json problems = body(r)["error"]["problems"];
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0]["line"], 3);
  EXPECT_TRUE(store_state().empty());
}

TEST_P(ApiTest, InvalidJsonJobGets400WithProblems) {
  HttpResponse r = call("POST", "/v1/jobs", R"({"name": "web", "task": []})", "application/json");
  ASSERT_EQ(r.status, 400) << r.body;
  EXPECT_FALSE(body(r)["error"]["problems"].empty());
  EXPECT_TRUE(store_state().empty());
}

TEST_P(ApiTest, UnsupportedContentTypeIs415) {
  HttpResponse r = call("POST", "/v1/jobs", kWebToml, "application/x-www-form-urlencoded");
  EXPECT_EQ(r.status, 415);
  EXPECT_EQ(body(r)["error"]["code"], "unsupported_media_type");
  EXPECT_EQ(call("POST", "/v1/jobs", kWebToml).status, 415);  // no Content-Type at all
  EXPECT_EQ(call("POST", "/v1/jobs", kWebToml, "text/x-toml").status, 201);
  EXPECT_EQ(call("POST", "/v1/jobs", kWebToml, "text/plain").status, 200);
}

TEST_P(ApiTest, CheckValidatesWithoutStoring) {
  HttpResponse r = submit(kWebToml, "?check=true");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body(r)["valid"], true);
  EXPECT_EQ(body(r)["job"]["name"], "web");
  EXPECT_TRUE(store_state().empty());
  EXPECT_EQ(call("GET", "/v1/jobs/web").status, 404);
}

TEST_P(ApiTest, SecurityPluginCanRefuseAJob) {
  std::string toml = kWebToml;
  toml.replace(toml.find("\"web\""), 5, "\"forbidden\"");
  HttpResponse r = submit(toml);
  ASSERT_EQ(r.status, 403) << r.body;
  json err = body(r)["error"];
  EXPECT_EQ(err["code"], "permission");
  EXPECT_NE(err["message"].get<std::string>().find("policy no-forbidden"), std::string::npos)
      << err;
  EXPECT_NE(err["message"].get<std::string>().find("security-fake"), std::string::npos) << err;
  EXPECT_TRUE(store_state().empty());
  // A dry run is refused the same way.
  EXPECT_EQ(submit(toml, "?check=true").status, 403);
  // Without a security plugin nobody refuses it.
  plugins_.security = false;
  EXPECT_EQ(submit(toml).status, 201);
}

TEST_P(ApiTest, ConfinementWithoutASecurityPluginIsRefusedNotIgnored) {
  const std::string toml = kWebToml + "[task.security]\nprofile = \"restricted\"\n";
  plugins_.security = false;
  HttpResponse r = submit(toml);
  ASSERT_EQ(r.status, 400) << r.body;
  EXPECT_NE(body(r)["error"]["message"].get<std::string>().find(
                "task[0].security asks for confinement but no plugin provides flotilla.security/1"),
            std::string::npos)
      << r.body;
  EXPECT_TRUE(store_state().empty());
  // With one, the plugin decides.
  plugins_.security = true;
  EXPECT_EQ(submit(toml).status, 201);
}

TEST_P(ApiTest, JobsAreListedWithAllocationCounts) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  std::string db = kWebToml;
  db.replace(db.find("\"web\""), 5, "\"db\"");
  ASSERT_EQ(submit(db).status, 201);
  seed_allocs();
  json jobs = body(call("GET", "/v1/jobs"))["jobs"];
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0]["name"], "db");
  EXPECT_EQ(jobs[0]["allocs"], json({{"pending", 1}}));
  EXPECT_EQ(jobs[0]["status"], "pending");
  EXPECT_EQ(jobs[1]["name"], "web");
  EXPECT_EQ(jobs[1]["allocs"], json({{"pending", 1}, {"running", 1}}));
  EXPECT_EQ(jobs[1]["status"], "running");
  EXPECT_EQ(jobs[1]["version"], 1);
}

TEST_P(ApiTest, AJobIsShownWithItsAllocations) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  seed_allocs();
  HttpResponse r = call("GET", "/v1/jobs/web");
  ASSERT_EQ(r.status, 200);
  json j = body(r);
  EXPECT_EQ(j["job"]["name"], "web");
  ASSERT_EQ(j["allocs"].size(), 2u);
  EXPECT_EQ(j["allocs"][0]["id"], "web-0");
  EXPECT_EQ(j["allocs"][0]["status"]["status"], "running");
  EXPECT_FALSE(j["allocs"][0].contains("spec"));
  EXPECT_TRUE(j["allocs"][1]["status"].is_null());
  EXPECT_EQ(call("GET", "/v1/jobs/nope").status, 404);
  EXPECT_EQ(call("GET", "/v1/jobs/a%20b").status, 400);
}

TEST_P(ApiTest, StoppingAJobStopsItsAllocationsInOneTransaction) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  seed_allocs();
  HttpResponse r = call("DELETE", "/v1/jobs/web");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = body(r);
  EXPECT_EQ(j["allocs_stopped"], 2);
  EXPECT_EQ(j["purged"], false);
  int64_t rev = j["revision"];

  json job = *stored("/flotilla/jobs/web");
  EXPECT_EQ(job["stop"], true);
  EXPECT_EQ(job["version"], 1);
  EXPECT_EQ((*stored("/flotilla/allocs/web-0"))["desired_status"], "stop");
  EXPECT_EQ((*stored("/flotilla/allocs/web-1"))["desired_status"], "stop");
  EXPECT_EQ((*stored("/flotilla/allocs/db-0"))["desired_status"], "run");
  // One transaction: everything it wrote carries the same revision.
  for (const auto &[key, mod] : store_state()) {
    if (key == "/flotilla/jobs/web" || key.rfind("/flotilla/allocs/web-", 0) == 0) {
      EXPECT_EQ(mod, rev) << key;
    }
  }

  // Stopping again changes nothing.
  auto before = store_state();
  r = call("DELETE", "/v1/jobs/web");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(body(r)["allocs_stopped"], 0);
  EXPECT_EQ(store_state(), before);
}

TEST_P(ApiTest, PurgingRemovesTheJobAndLeavesAllocationsToTheirNodes) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  seed_allocs();
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}, {"status", "ready"}});
  json stopped = alloc_record("web-2", "web", 2);
  stopped["desired_status"] = "stop";
  store_put("/flotilla/allocs/web-2", stopped);
  json gone = alloc_record("web-3", "web", 3);
  gone["node"] = "node-that-left";
  store_put("/flotilla/allocs/web-3", gone);
  store_put("/flotilla/alloc-status/web-3", {{"id", "web-3"}, {"status", "running"}});
  HttpResponse r = call("DELETE", "/v1/jobs/web?purge=true");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body(r)["purged"], true);
  EXPECT_FALSE(stored("/flotilla/jobs/web").has_value());
  ASSERT_TRUE(stored("/flotilla/allocs/web-0").has_value());
  EXPECT_EQ((*stored("/flotilla/allocs/web-0"))["desired_status"], "stop");
  EXPECT_EQ((*stored("/flotilla/allocs/web-0"))["desired_description"], "job purged");
  // Stopped before: touched, so that its node collects it.
  ASSERT_TRUE(stored("/flotilla/allocs/web-2").has_value());
  EXPECT_EQ((*stored("/flotilla/allocs/web-2"))["desired_description"], "job purged");
  // On a node that left the cluster: nobody would ever collect it.
  EXPECT_FALSE(stored("/flotilla/allocs/web-3").has_value());
  EXPECT_FALSE(stored("/flotilla/alloc-status/web-3").has_value());
  // Other jobs' allocations are untouched.
  EXPECT_EQ((*stored("/flotilla/allocs/db-0"))["desired_status"], "run");
  EXPECT_EQ(call("GET", "/v1/jobs/web").status, 404);
  EXPECT_EQ(call("DELETE", "/v1/jobs/web").status, 404);
}

TEST_P(ApiTest, StoppingAnUnknownJobIs404) {
  HttpResponse r = call("DELETE", "/v1/jobs/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(body(r)["error"]["message"], "job \"nope\" not found");
}

// ---- allocations and nodes --------------------------------------------------------------------

TEST_P(ApiTest, AllocationsAreListedAndShown) {
  seed_allocs();
  json all = body(call("GET", "/v1/allocs"))["allocs"];
  EXPECT_EQ(all.size(), 3u);
  json web = body(call("GET", "/v1/allocs?job=web"))["allocs"];
  ASSERT_EQ(web.size(), 2u);
  HttpResponse r = call("GET", "/v1/allocs/web-0");
  ASSERT_EQ(r.status, 200);
  json a = body(r);
  EXPECT_EQ(a["job"], "web");
  EXPECT_EQ(a["status"]["status"], "running");
  EXPECT_TRUE(a.contains("spec"));
  EXPECT_EQ(call("GET", "/v1/allocs/nope").status, 404);
}

TEST_P(ApiTest, DrainingANodeWritesItsControlRecord) {
  EXPECT_EQ(call("POST", "/v1/nodes/nope/drain").status, 404);
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}, {"status", "ready"}});
  HttpResponse r = call("POST", "/v1/nodes/node-1/drain");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body(r)["drain"], true);
  EXPECT_EQ(*stored("/flotilla/node-control/node-1"), json({{"drain", true}, {"eligible", false}}));
  r = call("POST", "/v1/nodes/node-1/drain", R"({"eligible": false})", "application/json");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(*stored("/flotilla/node-control/node-1"), json({{"drain", false}, {"eligible", false}}))
      << "eligible false alone keeps what runs there";
  r = call("POST", "/v1/nodes/node-1/drain", R"({"drain": false})", "application/json");
  EXPECT_EQ(*stored("/flotilla/node-control/node-1"), json({{"drain", false}, {"eligible", true}}));
  EXPECT_EQ(call("POST", "/v1/nodes/node-1/drain", R"({"drain": "yes"})", "application/json").status,
            400);
  EXPECT_EQ(call("POST", "/v1/nodes/node-1/drain", "[1]", "application/json").status, 400);
}

TEST_P(ApiTest, NodesAreListedAndShown) {
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}, {"status", "ready"}});
  json nodes = body(call("GET", "/v1/nodes"))["nodes"];
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0]["name"], "node-1");
  EXPECT_EQ(body(call("GET", "/v1/nodes/node-1"))["status"], "ready");
  EXPECT_EQ(call("GET", "/v1/nodes/node-2").status, 404);
}

// Each node notes its last lease renewal under /flotilla/heartbeats/; the
// node list shows how long ago that was, by the answering daemon's clock.
TEST_P(ApiTest, NodesShowHowLongSinceTheirLastHeartbeat) {
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}, {"status", "ready"}});
  store_put("/flotilla/nodes/node-2", {{"name", "node-2"}, {"status", "ready"}});
  int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  store_put("/flotilla/heartbeats/node-1",
            {{"at", "2026-12-03T10:00:00.000Z"}, {"at_ms", now_ms - 3000}, {"every_ms", 3333}});
  auto t0 = std::chrono::steady_clock::now();
  HttpResponse r = call("GET", "/v1/nodes");
  auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_EQ(r.status, 200) << r.body;
  json nodes = body(r)["nodes"];
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0]["name"], "node-1");
  EXPECT_EQ(nodes[0]["last_heartbeat"], "2026-12-03T10:00:00.000Z");
  int64_t age = nodes[0]["heartbeat_age_ms"].get<int64_t>();
  EXPECT_GE(age, 3000);
  EXPECT_LE(age, 3000 + took + 1000);
  EXPECT_EQ(nodes[0]["heartbeat_every_ms"], 3333);
  EXPECT_TRUE(nodes[1]["heartbeat_age_ms"].is_null()) << nodes[1].dump();
  EXPECT_TRUE(nodes[1]["last_heartbeat"].is_null());

  json one = body(call("GET", "/v1/nodes/node-1"));
  EXPECT_GE(one["heartbeat_age_ms"].get<int64_t>(), 3000);
  EXPECT_TRUE(body(call("GET", "/v1/nodes/node-2"))["heartbeat_age_ms"].is_null());
  // A heartbeat is not a node: no record, not listed.
  store_put("/flotilla/heartbeats/node-3", {{"at", "x"}, {"at_ms", now_ms}});
  EXPECT_EQ(body(call("GET", "/v1/nodes"))["nodes"].size(), 2u);
}

// ---- blocking queries ----------------------------------------------------------------------

// Whether a request started with std::async has answered within `ms`. Only
// used to show that it has NOT answered yet (a slow machine cannot make a
// waiting query answer early), or with a generous bound that it has.
template <class T>
bool answered_within(std::future<T> &f, int ms) {
  return f.wait_for(std::chrono::milliseconds(ms)) == std::future_status::ready;
}

// ---- services --------------------------------------------------------------------------------

// Registry records as the discovery plugin writes them (plugins/discovery/README.md).
void seed_services(const std::function<void(const std::string &, const json &)> &put) {
  put("/flotilla/services/web/web-0", {{"service", "web"},
                                       {"alloc", "web-0"},
                                       {"node", "node-b"},
                                       {"addresses", {"10.42.2.5"}},
                                       {"port", 8080},
                                       {"tags", {"v1"}},
                                       {"health", "passing"},
                                       {"output", "HTTP 200"}});
  put("/flotilla/services/web/web-1", {{"service", "web"},
                                       {"alloc", "web-1"},
                                       {"node", "node-c"},
                                       {"addresses", {"10.42.3.7"}},
                                       {"port", 8080},
                                       {"tags", {"v1", "canary"}},
                                       {"health", "critical"},
                                       {"output", "connect 10.42.3.7:8080: Connection refused"}});
  put("/flotilla/services/db/db-0", {{"service", "db"},
                                     {"alloc", "db-0"},
                                     {"node", "node-b"},
                                     {"addresses", {"10.42.2.6"}},
                                     {"port", 5432},
                                     {"tags", json::array()},
                                     {"health", "starting"},
                                     {"output", ""}});
  put("/flotilla/vips/web", {{"address", "10.43.0.1"}});
  // A VIP stays when its last instance goes: the service is still shown.
  put("/flotilla/vips/old", {{"address", "10.43.0.2"}});
}

TEST_P(ApiTest, ServicesAreListedWithTheirHealthAndVip) {
  json empty = body(call("GET", "/v1/services"));
  EXPECT_EQ(empty["services"], json::array());
  seed_services([&](const std::string &k, const json &v) { store_put(k, v); });
  HttpResponse r = call("GET", "/v1/services");
  ASSERT_EQ(r.status, 200) << r.body;
  json list = body(r)["services"];
  ASSERT_EQ(list.size(), 3u) << list.dump();
  EXPECT_EQ(list[0]["name"], "db");
  EXPECT_EQ(list[0]["vip"], nullptr);
  EXPECT_EQ(list[0]["health"], json({{"passing", 0}, {"starting", 1}, {"critical", 0}}));
  EXPECT_EQ(list[1]["name"], "old");
  EXPECT_EQ(list[1]["vip"], "10.43.0.2");
  EXPECT_EQ(list[1]["instances"], 0);
  EXPECT_EQ(list[2]["name"], "web");
  EXPECT_EQ(list[2]["vip"], "10.43.0.1");
  EXPECT_EQ(list[2]["instances"], 2);
  EXPECT_EQ(list[2]["health"], json({{"passing", 1}, {"starting", 0}, {"critical", 1}}));
  EXPECT_EQ(list[2]["tags"], json({"v1", "canary"}));
  EXPECT_GT(body(r)["revision"].get<int64_t>(), 0);
}

TEST_P(ApiTest, AServiceIsShownWithEveryInstanceAndItsLastCheck) {
  seed_services([&](const std::string &k, const json &v) { store_put(k, v); });
  HttpResponse r = call("GET", "/v1/services/web");
  ASSERT_EQ(r.status, 200) << r.body;
  json s = body(r);
  EXPECT_EQ(s["name"], "web");
  EXPECT_EQ(s["vip"], "10.43.0.1");
  ASSERT_EQ(s["instances"].size(), 2u);
  const json &b = s["instances"][0];
  EXPECT_EQ(b["alloc"], "web-0");
  EXPECT_EQ(b["node"], "node-b");
  EXPECT_EQ(b["addresses"], json({"10.42.2.5"}));
  EXPECT_EQ(b["port"], 8080);
  EXPECT_EQ(b["tags"], json({"v1"}));
  EXPECT_EQ(b["health"], "passing");
  EXPECT_EQ(s["instances"][1]["health"], "critical");
  EXPECT_EQ(s["instances"][1]["output"], "connect 10.42.3.7:8080: Connection refused");
  // "web" must not pick up a service whose name only starts with it.
  store_put("/flotilla/services/webx/webx-0", {{"health", "passing"}, {"node", "node-b"}});
  EXPECT_EQ(body(call("GET", "/v1/services/web"))["instances"].size(), 2u);
  EXPECT_EQ(body(call("GET", "/v1/services/old"))["instances"], json::array());
  r = call("GET", "/v1/services/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(body(r)["error"]["message"].get<std::string>().find("service \"nope\" not found") !=
              std::string::npos)
      << r.body;
  // A record that is not an object is shown, not hidden.
  store_put("/flotilla/services/odd/odd-0", "not json");
  json odd = body(call("GET", "/v1/services/odd"));
  ASSERT_EQ(odd["instances"].size(), 1u) << odd.dump();
  EXPECT_EQ(odd["instances"][0]["health"], "unknown");
}

TEST_P(ApiWatchTest, ABlockingServiceQueryWaitsForAChangeOfThatService) {
  seed_services([&](const std::string &k, const json &v) { store_put(k, v); });
  int64_t rev = body(call("GET", "/v1/services/web"))["revision"];
  auto waiting = std::async(std::launch::async, [&] {
    return call("GET", "/v1/services/web?index=" + std::to_string(rev) + "&wait=20s");
  });
  store_put("/flotilla/services/db/db-0", {{"health", "passing"}, {"node", "node-b"}});
  EXPECT_FALSE(answered_within(waiting, 300)) << "a change of another service answered it";
  store_put("/flotilla/services/web/web-1", {{"node", "node-c"},
                                             {"addresses", {"10.42.3.7"}},
                                             {"port", 8080},
                                             {"health", "passing"},
                                             {"output", "HTTP 200"}});
  ASSERT_TRUE(answered_within(waiting, 10000));
  json s = body(waiting.get());
  EXPECT_EQ(s["instances"][1]["health"], "passing");
  EXPECT_GT(s["revision"].get<int64_t>(), rev);
}

// The deploy monitor's view of health: each allocation of GET
// /v1/jobs/{name} carries its discovery records, and a change of one
// answers a blocking query on the job.
TEST_P(ApiWatchTest, AJobsAllocationsCarryTheirServicesHealthAndItWakesTheJobsWatchers) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  seed_allocs();
  json j = body(call("GET", "/v1/jobs/web"));
  ASSERT_FALSE(j["allocs"].empty()) << j.dump();
  const std::string id = j["allocs"][0]["id"];
  EXPECT_EQ(j["allocs"][0]["services"], json::array()) << j.dump();
  const int64_t rev = j["revision"];
  auto waiting = std::async(std::launch::async, [&] {
    return call("GET", "/v1/jobs/web?index=" + std::to_string(rev) + "&wait=5m");
  });
  // Another job's service record does not answer it.
  store_put("/flotilla/services/db/db-0", {{"health", "passing"}, {"node", "node-b"}});
  EXPECT_FALSE(answered_within(waiting, 300)) << "another job's service answered it";
  store_put("/flotilla/services/web/" + id, {{"service", "web"},
                                             {"alloc", id},
                                             {"node", "node-b"},
                                             {"health", "critical"},
                                             {"output", "HTTP 503"}});
  ASSERT_TRUE(answered_within(waiting, 10000));
  json after = body(waiting.get());
  json services;
  for (const json &a : after["allocs"])
    if (a["id"] == id) services = a.value("services", json());
  ASSERT_EQ(services.size(), 1u) << after.dump();
  EXPECT_EQ(services[0]["name"], "web");
  EXPECT_EQ(services[0]["health"], "critical");
  EXPECT_EQ(services[0]["output"], "HTTP 503");
  EXPECT_EQ(services[0]["node"], "node-b");
}

TEST_P(ApiWatchTest, ABlockingJobQueryWaitsForAChangeOfThatJob) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  seed_allocs();
  const int64_t rev = body(call("GET", "/v1/jobs/web"))["revision"];
  auto waiting = std::async(std::launch::async, [&] {
    return call("GET", "/v1/jobs/web?index=" + std::to_string(rev) + "&wait=5m");
  });
  // Changes to other jobs' allocations and to nodes do not answer it.
  store_put("/flotilla/alloc-status/db-0", {{"id", "db-0"}, {"job", "db"}, {"status", "running"}});
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}});
  EXPECT_FALSE(answered_within(waiting, 300)) << "answered before the job changed";
  // A status report for one of its allocations does.
  store_put("/flotilla/alloc-status/web-1",
            {{"id", "web-1"}, {"job", "web"}, {"status", "running"}});
  ASSERT_TRUE(answered_within(waiting, 20000));
  HttpResponse r = waiting.get();
  ASSERT_EQ(r.status, 200) << r.body;
  json j = body(r);
  EXPECT_GT(j["revision"].get<int64_t>(), rev);
  EXPECT_EQ(j["allocs"][1]["status"]["status"], "running");
}

TEST_P(ApiWatchTest, ABlockingQueryAnswersAtOnceWhenTheChangeCameAfterItsIndex) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  const int64_t before = body(call("GET", "/v1/jobs/web"))["revision"];
  seed_allocs();  // changes web after `before`
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}});
  auto waiting = std::async(std::launch::async, [&] {
    return call("GET", "/v1/jobs/web?index=" + std::to_string(before) + "&wait=10m");
  });
  ASSERT_TRUE(answered_within(waiting, 20000)) << "waited although the job changed already";
  json j = body(waiting.get());
  EXPECT_EQ(j["allocs"].size(), 2u);
  EXPECT_GT(j["revision"].get<int64_t>(), before);
}

TEST_P(ApiWatchTest, ABlockingQueryAnswersWhenItsWaitEndsWithTheSameRevision) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  const int64_t rev = body(call("GET", "/v1/jobs/web"))["revision"];
  HttpResponse r = call("GET", "/v1/jobs/web?index=" + std::to_string(rev) + "&wait=200ms");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body(r)["revision"], rev);
}

TEST_P(ApiWatchTest, DeletingAnAllocationAnswersItsBlockingQueries) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  seed_allocs();
  const int64_t rev = body(call("GET", "/v1/allocs/web-0"))["revision"];
  auto alloc = std::async(std::launch::async, [&] {
    return call("GET", "/v1/allocs/web-0?index=" + std::to_string(rev));
  });
  auto job = std::async(std::launch::async, [&] {
    return call("GET", "/v1/jobs/web?index=" + std::to_string(rev));
  });
  auto db = std::async(std::launch::async, [&] {
    return call("GET", "/v1/allocs?job=db&index=" + std::to_string(rev) + "&wait=300ms");
  });
  // Another allocation of the job changing answers the job, not web-0.
  store_put("/flotilla/alloc-status/web-1", {{"id", "web-1"}, {"job", "web"}, {"status", "failed"}});
  ASSERT_TRUE(answered_within(job, 20000));
  EXPECT_EQ(body(job.get())["allocs"][1]["status"]["status"], "failed");
  EXPECT_FALSE(answered_within(alloc, 300));
  std::promise<bool> ok;
  loop_.run([&] {
    store_->remove("/flotilla/allocs/web-0", false,
                   [&](StoreResult r, int64_t, int64_t) { ok.set_value(r.ok()); });
  });
  ASSERT_TRUE(ok.get_future().get());
  ASSERT_TRUE(answered_within(alloc, 20000));
  EXPECT_EQ(alloc.get().status, 404);
  // db's allocations never changed: its query ran out its 300ms wait and
  // shows them as they were (at the store's current revision).
  HttpResponse d = db.get();
  ASSERT_EQ(d.status, 200);
  json dbs = body(d)["allocs"];
  ASSERT_EQ(dbs.size(), 1u);
  EXPECT_EQ(dbs[0]["id"], "db-0");
}

TEST_P(ApiWatchTest, ShuttingDownAnswersWaitingQueries) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  const int64_t rev = body(call("GET", "/v1/jobs/web"))["revision"];
  auto waiting = std::async(std::launch::async, [&] {
    return call("GET", "/v1/jobs/web?index=" + std::to_string(rev) + "&wait=10m");
  });
  EXPECT_FALSE(answered_within(waiting, 300));
  std::promise<void> done;
  loop_.run([&] { api_->shutdown(60000, [&] { done.set_value(); }); });
  ASSERT_TRUE(answered_within(waiting, 20000)) << "shutdown left a blocking query waiting";
  EXPECT_EQ(waiting.get().status, 200);
  done.get_future().get();
  loop_.run([&] { api_.reset(); });
}

TEST_P(ApiTest, BlockingQueryParametersAreChecked) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  for (const char *q : {"index=abc", "index=-1", "index=12x", "index=1&wait=11m",
                        "index=1&wait=soon"}) {
    HttpResponse r = call("GET", std::string("/v1/jobs/web?") + q);
    EXPECT_EQ(r.status, 400) << q;
    EXPECT_EQ(body(r)["error"]["code"], "invalid") << q;
  }
  // Without watches (the fake store) a blocking query answers at once.
  if (backend() == Backend::fake) {
    EXPECT_EQ(call("GET", "/v1/jobs/web?index=1000&wait=10m").status, 200);
  }
}

// ---- logs --------------------------------------------------------------------------------------

TEST_P(ApiTest, LogsWithoutARuntimePluginAre501) {
  seed_allocs();
  plugins_.runtime = false;
  HttpResponse r = call("GET", "/v1/allocs/web-0/logs");
  EXPECT_EQ(r.status, 501);
  EXPECT_EQ(body(r)["error"]["code"], "unsupported");
  EXPECT_NE(body(r)["error"]["message"].get<std::string>().find("no runtime plugin is loaded"),
            std::string::npos);
}

TEST_P(ApiTest, LogsAreStreamedFromTheRuntimesFile) {
  seed_allocs();
  write_log("web-0.server", "stdout", "hello\nworld\n");
  write_log("web-0.server", "stderr", "oops\n");
  HttpResponse r = call("GET", "/v1/allocs/web-0/logs");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.chunked);
  EXPECT_EQ(r.body, "hello\nworld\n");
  EXPECT_EQ(call("GET", "/v1/allocs/web-0/logs?stream=stderr").body, "oops\n");
  EXPECT_EQ(call("GET", "/v1/allocs/web-0/logs?offset=6").body, "world\n");
  EXPECT_EQ(call("GET", "/v1/allocs/web-0/logs?offset=600").body, "");
  EXPECT_EQ(call("GET", "/v1/allocs/web-0/logs?task=server").body, "hello\nworld\n");
  EXPECT_EQ(call("GET", "/v1/allocs/web-0/logs?task=other").status, 404);
  EXPECT_EQ(call("GET", "/v1/allocs/web-0/logs?stream=stdin").status, 400);
  EXPECT_EQ(call("GET", "/v1/allocs/web-0/logs?offset=-1").status, 400);
  EXPECT_EQ(call("GET", "/v1/allocs/web-1/logs").status, 404);  // no file yet
  EXPECT_EQ(call("GET", "/v1/allocs/nope/logs").status, 404);
}

TEST_P(ApiTest, LogsOfAGarbageCollectedAllocationAreGone410) {
  seed_allocs();
  write_log("web-1.server", "stdout", "old\n");
  store_put("/flotilla/alloc-status/web-1",
            {{"id", "web-1"}, {"status", "complete"}, {"containers_removed", true}});
  HttpResponse r = call("GET", "/v1/allocs/web-1/logs");
  EXPECT_EQ(r.status, 410) << r.body;
  EXPECT_NE(body(r)["error"]["message"].get<std::string>().find("garbage collection"),
            std::string::npos);
}

TEST_P(ApiTest, FollowingLogsEndsWhenTheAllocationEnds) {
  seed_allocs();
  write_log("web-0.server", "stdout", "one\n");
  std::string got;
  std::promise<void> first;
  bool first_seen = false;
  std::thread follower([&] {
    cli::HttpClient(socket_).request("GET", "/v1/allocs/web-0/logs?follow=true", {}, {},
                                     [&](std::string_view chunk) {
                                       got += chunk;
                                       if (!first_seen && got.size() >= 4) {
                                         first_seen = true;
                                         first.set_value();
                                       }
                                     });
  });
  first.get_future().get();
  write_log("web-0.server", "stdout", "two\n", true);
  store_put("/flotilla/alloc-status/web-0", {{"id", "web-0"}, {"status", "complete"}});
  follower.join();  // the stream ends by itself once the status is terminal
  EXPECT_EQ(got, "one\ntwo\n");
}

// ---- store failures (the fake only: it can fail on demand) ------------------------------------

class ApiFakeStoreTest : public ApiTest {};
INSTANTIATE_TEST_SUITE_P(Fake, ApiFakeStoreTest, ::testing::Values(Backend::fake), backend_name);

TEST_P(ApiFakeStoreTest, AConcurrentChangeIsRetried) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  int interfered = 0;
  loop_.run([&] {
    fake_->before_txn = [&](FakeStore &s) {
      if (interfered++ > 0) return;
      json other = {{"name", "web"}, {"version", 7}, {"stop", false}};
      s.put_now("/flotilla/jobs/web", other.dump());
    };
  });
  HttpResponse r = submit(kWebTomlV2);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body(r)["version"], 8);
  EXPECT_EQ(interfered, 2);
}

TEST_P(ApiFakeStoreTest, AJobThatKeepsChangingIs409) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  loop_.run([&] {
    fake_->before_txn = [](FakeStore &s) { s.put_now("/flotilla/jobs/web", R"({"version":1})"); };
  });
  HttpResponse r = submit(kWebTomlV2);
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(body(r)["error"]["code"], "conflict");
}

TEST_P(ApiFakeStoreTest, UnavailableStoreIs503) {
  loop_.run([&] { fake_->unavailable = true; });
  HttpResponse r = call("GET", "/v1/jobs");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(body(r)["error"]["code"], "unavailable");
  EXPECT_EQ(submit(kWebToml).status, 503);
}

// A read while the store is unreachable answers from the last state this
// node saw, and says so in its headers: the revision it reflects, stale,
// and how old that state is (as Nomad's X-Nomad-Index / KnownLeader /
// LastContact). Writes stay refused.
TEST_P(ApiFakeStoreTest, ReadsFromTheLastStateSeenSayTheirRevisionAndThatTheyAreStale) {
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}, {"status", "ready"}});
  seed_allocs();
  ASSERT_EQ(submit(kWebToml).status, 201);

  // Live reads: the header's index is the body's revision, not stale.
  HttpResponse live = call("GET", "/v1/jobs/web");
  ASSERT_EQ(live.status, 200) << live.body;
  int64_t rev = body(live)["revision"].get<int64_t>();
  ASSERT_NE(live.header("x-flotilla-index"), nullptr);
  EXPECT_EQ(*live.header("x-flotilla-index"), std::to_string(rev));
  ASSERT_NE(live.header("x-flotilla-stale"), nullptr);
  EXPECT_EQ(*live.header("x-flotilla-stale"), "false");
  EXPECT_EQ(*live.header("x-flotilla-last-contact"), "0");
  HttpResponse nodes = call("GET", "/v1/nodes");
  ASSERT_EQ(nodes.status, 200);
  HttpResponse allocs = call("GET", "/v1/allocs");
  ASSERT_EQ(allocs.status, 200);
  // A 404 read at a revision says which one too.
  HttpResponse missing = call("GET", "/v1/nodes/node-9");
  EXPECT_EQ(missing.status, 404);
  ASSERT_NE(missing.header("x-flotilla-index"), nullptr);
  EXPECT_EQ(*missing.header("x-flotilla-stale"), "false");

  // A change this node never read, then the store goes away.
  store_put("/flotilla/nodes/node-2", {{"name", "node-2"}, {"status", "ready"}});
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  loop_.run([&] { fake_->unavailable = true; });

  HttpResponse stale = call("GET", "/v1/jobs/web");
  ASSERT_EQ(stale.status, 200) << stale.body;
  EXPECT_EQ(body(stale)["revision"], rev);
  EXPECT_EQ(body(stale)["job"]["name"], "web");
  ASSERT_NE(stale.header("x-flotilla-index"), nullptr);
  EXPECT_EQ(*stale.header("x-flotilla-index"), std::to_string(rev));
  ASSERT_NE(stale.header("x-flotilla-stale"), nullptr);
  EXPECT_EQ(*stale.header("x-flotilla-stale"), "true");
  ASSERT_NE(stale.header("x-flotilla-last-contact"), nullptr);
  EXPECT_GE(std::stoll(*stale.header("x-flotilla-last-contact")), 20);

  // The node list is the one seen before: node-2 is not in it.
  HttpResponse stale_nodes = call("GET", "/v1/nodes");
  ASSERT_EQ(stale_nodes.status, 200);
  EXPECT_EQ(body(stale_nodes)["nodes"].size(), 1u);
  EXPECT_EQ(*stale_nodes.header("x-flotilla-stale"), "true");
  EXPECT_EQ(*stale_nodes.header("x-flotilla-index"),
            std::to_string(body(stale_nodes)["revision"].get<int64_t>()));
  HttpResponse stale_allocs = call("GET", "/v1/allocs");
  ASSERT_EQ(stale_allocs.status, 200);
  EXPECT_EQ(*stale_allocs.header("x-flotilla-stale"), "true");

  // Never read before: nothing to answer from, a 503 without an index.
  HttpResponse never = call("GET", "/v1/nodes/never-read-by-any-test");
  EXPECT_EQ(never.status, 503);
  EXPECT_EQ(never.header("x-flotilla-index"), nullptr);
  // Writes are refused, and carry no read's index.
  HttpResponse write = submit(kWebTomlV2);
  EXPECT_EQ(write.status, 503);
  EXPECT_EQ(write.header("x-flotilla-index"), nullptr);
  HttpResponse drain = call("POST", "/v1/nodes/node-1/drain", "{}", "application/json");
  EXPECT_EQ(drain.status, 503) << drain.body;
  EXPECT_EQ(drain.header("x-flotilla-index"), nullptr);

  // Back: live again.
  loop_.run([&] { fake_->unavailable = false; });
  HttpResponse back = call("GET", "/v1/nodes");
  ASSERT_EQ(back.status, 200);
  EXPECT_EQ(body(back)["nodes"].size(), 2u);
  EXPECT_EQ(*back.header("x-flotilla-stale"), "false");
  EXPECT_GT(std::stoll(*back.header("x-flotilla-index")), rev);
}

// ---- the flotilla CLI against this server --------------------------------------------------

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

class CliTest : public ApiTest {
 protected:
  void SetUp() override {
    binary_ = std::string(FLOTILLA_TEST_BUILD_DIR) + "/tools/flotilla/flotilla";
    if (!fs::exists(binary_)) GTEST_SKIP() << "the flotilla CLI is not built (" << binary_ << ")";
    ApiTest::SetUp();
  }

  // Run the CLI with args (after --socket), capturing its output in files.
  CliRun flotilla(std::vector<std::string> args, bool with_socket = true) {
    std::string out = (dir_.path / "out").string(), err = (dir_.path / "err").string();
    std::vector<std::string> argv = {binary_};
    if (with_socket) {
      argv.push_back("--socket");
      argv.push_back(socket_);
    }
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char *> cargv;
    for (auto &a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid = 0;
    CliRun run;
    int rc = posix_spawn(&pid, binary_.c_str(), &fa, nullptr, cargv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      ADD_FAILURE() << "cannot run " << binary_ << ": " << strerror(rc);
      return run;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    auto slurp = [](const std::string &p) {
      std::ifstream in(p);
      return std::string(std::istreambuf_iterator<char>(in), {});
    };
    run.out = slurp(out);
    run.err = slurp(err);
    return run;
  }

  std::string write_file(const std::string &name, const std::string &text) {
    std::string p = (dir_.path / name).string();
    std::ofstream(p) << text;
    return p;
  }

  std::string binary_;
};
TEST_P(ApiTest, ImagePullStreamsProgressThenTheRecordOrTheError) {
  const std::string type = "application/json";
  HttpResponse r = call("POST", "/v1/images/pull?progress=true", R"({"ref":"busybox:1.36"})", type);
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<json> lines;
  std::istringstream in(r.body);
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 2u) << r.body;
  EXPECT_EQ(lines[0]["progress"]["bytes_done"], 1);
  EXPECT_EQ(lines[1]["image"]["name"], "busybox:1.36");
  EXPECT_EQ(lines[1]["image"]["policy"], "always");

  HttpResponse plain =
      call("POST", "/v1/images/pull", R"({"ref":"busybox:1.36","policy":"if_not_present"})", type);
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(body(plain)["policy"], "if_not_present");

  EXPECT_EQ(call("POST", "/v1/images/pull", R"({"ref":"nope:1"})", type).status, 404);
  HttpResponse streamed = call("POST", "/v1/images/pull?progress=true", R"({"ref":"nope:1"})", type);
  EXPECT_EQ(streamed.status, 200);
  json last = json::parse(streamed.body.substr(0, streamed.body.find('\n')));
  EXPECT_EQ(last["code"], "not_found") << streamed.body;
  EXPECT_NE(last["error"].get<std::string>().find("pulling nope:1"), std::string::npos);

  EXPECT_EQ(call("POST", "/v1/images/pull", R"({"ref":5})", type).status, 400);
  EXPECT_EQ(call("POST", "/v1/images/pull", R"({"ref":"a","policy":"sometimes"})", type).status,
            400);
  EXPECT_EQ(call("POST", "/v1/images/pull", R"({"ref":"a","tag":"b"})", type).status, 400);
  EXPECT_EQ(call("POST", "/v1/images/pull", R"({"ref":"a"})", "text/plain").status, 415);
  EXPECT_EQ(call("GET", "/v1/images/pull").status, 405);
}

INSTANTIATE_TEST_SUITE_P(Fake, CliTest, ::testing::Values(Backend::fake), backend_name);

bool contains(const std::string &haystack, const std::string &needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST_P(CliTest, VersionShowsClientAndServer) {
  CliRun r = flotilla({"version"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, std::string("Client  ") + FLOTILLA_VERSION)) << r.out;
  EXPECT_TRUE(contains(r.out, std::string("Server  ") + FLOTILLA_VERSION + " (plugin ABI 1.4)"))
      << r.out;
}

TEST_P(CliTest, JobRunSubmitsAndUpdates) {
  std::string file = write_file("web.toml", kWebToml);
  CliRun r = flotilla({"job", "run", "--detach", file});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Job \"web\" submitted (version 1")) << r.out;
  r = flotilla({"job", "run", "--detach", file});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Job \"web\" is unchanged (version 1)")) << r.out;
  write_file("web.toml", kWebTomlV2);
  r = flotilla({"job", "run", "-d", file});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Job \"web\" updated to version 2")) << r.out;
  r = flotilla({"job", "run", "--check", file});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "web.toml: job \"web\" is valid")) << r.out;
}

// The deploy monitor: `job run` follows until every allocation of the new
// version runs (exit 0), one fails (5) or --timeout passes (6).
TEST_P(CliTest, JobRunFollowsTheDeploymentToItsEnd) {
  const std::string web = R"(name = "web"
count = 2

[[task]]
name = "server"
image = "127.0.0.1:5000/team/app:1"
command = "/bin/httpd"
)";
  seed_allocs();  // web-0 running, web-1 without a report yet (version 1)
  std::string file = write_file("web.toml", web);
  CliRun r = flotilla({"job", "run", "--timeout", "1s", file});
  EXPECT_EQ(r.exit_code, 6) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "Allocation web-0 on node-1: running")) << r.out;
  EXPECT_TRUE(contains(r.out, "Allocation web-1 on node-1: pending")) << r.out;
  EXPECT_TRUE(contains(r.err, "not done after 1s")) << r.err;

  store_put("/flotilla/alloc-status/web-1",
            {{"id", "web-1"},
             {"status", "pending"},
             {"tasks",
              {{"server",
                {{"state", "starting"},
                 {"pull", {{"ref", "127.0.0.1:5000/team/app:1"}, {"bytes_done", 50},
                           {"bytes_total", 200}}}}}}}});
  r = flotilla({"job", "status", "web", "--watch", "--timeout", "1s"});
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_TRUE(contains(r.out, "web-1 server: starting (pulling 127.0.0.1:5000/team/app:1: 25% of "
                              "200 bytes)"))
      << r.out;

  store_put("/flotilla/alloc-status/web-1",
            {{"id", "web-1"}, {"status", "running"}, {"tasks", {{"server", {{"state", "running"}}}}}});
  r = flotilla({"job", "status", "web", "--watch"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Deployment of job \"web\" version 1 done: 2 of 2 allocations "
                              "running"))
      << r.out;

  store_put("/flotilla/alloc-status/web-1",
            {{"id", "web-1"},
             {"status", "failed"},
             {"tasks",
              {{"server",
                {{"state", "dead"}, {"failed", true},
                 {"message", "pull 127.0.0.1:5000/team/app:1: HTTP 401: UNAUTHORIZED"}}}}}});
  r = flotilla({"job", "status", "web", "--watch"});
  EXPECT_EQ(r.exit_code, 5) << r.out;
  EXPECT_TRUE(contains(r.err, "Error: allocation web-1 of job \"web\" failed: server: pull "
                              "127.0.0.1:5000/team/app:1: HTTP 401: UNAUTHORIZED"))
      << r.err;
}

// The monitor's other ends: what the scheduler says about placement is
// shown ("Placement: ..."), an update it stopped (healthy_deadline passed,
// no auto_revert) is exit 5, and so is a job stopped or removed meanwhile.
TEST_P(CliTest, JobStatusWatchShowsPlacementAndFailsAStoppedUpdate) {
  ASSERT_EQ(submit("name = \"web\"\ncount = 2\n\n[[task]]\nname = \"server\"\n"
                   "image = \"busybox:latest\"\ncommand = \"/bin/httpd\"\n")
                .status,
            201);
  seed_allocs();  // web-0 running, web-1 without a report yet: not done
  store_put("/flotilla/job-status/web",
            {{"placement",
              {{"message", "1 allocation could not be placed: no node has 512 MiB free"},
               {"unplaced", 1}}}});
  CliRun r = flotilla({"job", "status", "web", "--watch", "--timeout", "1s"});
  EXPECT_EQ(r.exit_code, 6) << r.out << r.err;
  EXPECT_TRUE(contains(r.out,
                       "Placement: 1 allocation could not be placed: no node has 512 MiB "
                       "free\n"))
      << r.out;
  // Shown once, not once per read.
  EXPECT_EQ(r.out.find("Placement: "), r.out.rfind("Placement: ")) << r.out;

  const std::string stopped =
      "update to version 1 stopped: allocation web-1 was not healthy within 60s";
  store_put("/flotilla/job-status/web", {{"placement", {{"message", stopped}, {"unplaced", 0}}}});
  r = flotilla({"job", "status", "web", "--watch", "--timeout", "30s"});
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "Placement: " + stopped)) << r.out;
  EXPECT_TRUE(contains(r.err, "Error: " + stopped)) << r.err;

  store_put("/flotilla/job-status/web", json::object());
  json job = *stored("/flotilla/jobs/web");
  job["stop"] = true;
  store_put("/flotilla/jobs/web", job);
  r = flotilla({"job", "status", "web", "--watch", "--timeout", "30s"});
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, "Error: job \"web\" was stopped while it deployed")) << r.err;

  // Removed (here: never there): the follower cannot go on.
  r = flotilla({"job", "status", "nosuchjob", "--watch", "--timeout", "30s"});
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, "Error: job \"nosuchjob\" was removed while it deployed")) << r.err;
}

// `job run` follows the version it submitted: when the scheduler reverts
// that update (auto_revert: a new version with reverted_from), or another
// submission replaces it, the deploy did not happen: exit 5 and why. The
// change is written while the CLI follows; it sees it whenever it comes.
TEST_P(CliTest, JobRunFailsWhenItsUpdateIsRevertedOrReplaced) {
  ASSERT_EQ(submit(kWebToml).status, 201);  // version 1
  std::string file = write_file("web.toml", kWebTomlV2);
  auto follow_and = [&](const std::function<void(json &)> &change) {
    std::future<CliRun> run = std::async(std::launch::async, [&] {
      return flotilla({"job", "run", "--timeout", "60s", file});
    });
    // The CLI's submission is in the store (a guard, not a timing check).
    std::optional<json> job;
    auto guard = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int64_t before = stored("/flotilla/jobs/web")->value("version", int64_t{0});
    while (std::chrono::steady_clock::now() < guard) {
      job = stored("/flotilla/jobs/web");
      if (job && job->value("version", int64_t{0}) > before) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (job && job->value("version", int64_t{0}) > before) {
      change(*job);
      store_put("/flotilla/jobs/web", *job);
    } else {
      ADD_FAILURE() << "the CLI's submission never came";
    }
    return run.get();
  };

  CliRun r = follow_and([&](json &job) {
    // What the scheduler writes (evaluator.cc): the old spec as version 3.
    EXPECT_EQ(job["version"], 2);
    job["version"] = 3;
    job["reverted_from"] = 2;
    store_put(
        "/flotilla/job-status/web",
        {{"placement",
          {{"message", "update to version 2 reverted: allocation web-0 was not healthy within 60s"},
           {"unplaced", 0}}}});
  });
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "Job \"web\" updated to version 2")) << r.out;
  EXPECT_TRUE(contains(r.err,
                       "Error: deployment of job \"web\" version 2 was reverted: update to "
                       "version 2 reverted: allocation web-0 was not healthy within 60s"))
      << r.err;

  store_put("/flotilla/job-status/web", json::object());
  write_file("web.toml", kWebToml);  // a change again: version 4
  r = follow_and([&](json &job) {
    EXPECT_EQ(job["version"], 4);
    job["version"] = 5;
  });
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, "Error: job \"web\" was replaced by version 5 while it deployed"))
      << r.err;
}

TEST_P(CliTest, JobRunPrintsEveryProblemWithItsLine) {
  std::string file =
      write_file("bad.toml", "name = \"web\"\ncount = -3\n\n[[task]]\nname = \"server\"\n");
  CliRun r = flotilla({"job", "run", file});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "Error: bad.toml: the job has")) << r.err;
  EXPECT_TRUE(contains(r.err, "\n  bad.toml line 2, count: must be")) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_P(CliTest, JobStatusAndStop) {
  ASSERT_EQ(submit(kWebToml).status, 201);
  seed_allocs();
  CliRun r = flotilla({"job", "status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "NAME  STATUS   VERSION  ALLOCATIONS          SUBMITTED")) << r.out;
  EXPECT_TRUE(contains(r.out, "web   running  1        pending:1 running:1  ")) << r.out;

  r = flotilla({"job", "status", "web"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Name       web\nStatus     running\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "web-0  0      node-1  1            run      running")) << r.out;

  r = flotilla({"--json", "job", "status", "web"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["job"]["name"], "web");

  r = flotilla({"job", "stop", "web"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Job \"web\" stopped; 2 allocations told to stop")) << r.out;

  r = flotilla({"job", "stop", "nope"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "Error: job \"nope\" not found")) << r.err;
}

TEST_P(CliTest, AllocStatusAndLogs) {
  seed_allocs();
  write_log("web-0.server", "stdout", "hello from web-0\n");
  CliRun r = flotilla({"alloc", "status", "web-0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Status   running")) << r.out;
  EXPECT_TRUE(contains(r.out, "server  running")) << r.out;
  r = flotilla({"alloc", "logs", "web-0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello from web-0\n");
  r = flotilla({"alloc", "logs", "web-1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "Error: log file")) << r.err;
}

TEST_P(CliTest, NodeAndPluginListings) {
  store_put("/flotilla/nodes/node-1",
            {{"name", "node-1"},
             {"status", "ready"},
             {"eligible", true},
             {"datacenter", "dc1"},
             {"resources", {{"cpu_mhz", 4000}, {"memory_mb", 8192}, {"disk_mb", 100}}}});
  CliRun r = flotilla({"node", "status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "node-1  ready   true      dc1         4000       8192")) << r.out;
  r = flotilla({"plugin", "ls"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "No plugins are loaded.\n");
}

TEST_P(CliTest, ServiceListAndStatus) {
  CliRun r = flotilla({"service", "list"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "No services are registered.\n");
  seed_services([&](const std::string &k, const json &v) { store_put(k, v); });
  r = flotilla({"service", "list"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "NAME  VIP        INSTANCES  PASSING  STARTING  CRITICAL  TAGS"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "web   10.43.0.1  2          1        0         1         v1,canary"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "db    -          1          0        1         0         -"))
      << r.out;
  r = flotilla({"service", "status", "web"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "VIP        10.43.0.1")) << r.out;
  EXPECT_TRUE(contains(r.out, "Instances  2 (1 passing, 0 starting, 1 critical)")) << r.out;
  EXPECT_TRUE(contains(r.out, "web-0  node-b  10.42.2.5  8080  v1         passing   HTTP 200"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "critical  connect 10.42.3.7:8080: Connection refused")) << r.out;
  r = flotilla({"--json", "service", "status", "web"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["instances"].size(), 2u);
  r = flotilla({"service", "status", "nope"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "Error: service \"nope\" not found")) << r.err;
  r = flotilla({"service", "status"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "missing NAME")) << r.err;
}

TEST_P(CliTest, NodeStatusShowsTheLastHeartbeat) {
  store_put("/flotilla/nodes/node-1", {{"name", "node-1"}, {"status", "ready"}});
  store_put("/flotilla/nodes/node-2", {{"name", "node-2"}, {"status", "ready"}});
  int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  store_put("/flotilla/heartbeats/node-1",
            {{"at", "2026-12-03T10:00:00.000Z"}, {"at_ms", now_ms - 125'000}});
  CliRun r = flotilla({"node", "status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "HEARTBEAT")) << r.out;
  // 2m05s, give or take the machine's speed.
  EXPECT_TRUE(contains(r.out, "2m0") && contains(r.out, "s ago")) << r.out;
  // node-2 has not written one: its line ends in "-".
  size_t line = r.out.find("node-2");
  ASSERT_NE(line, std::string::npos);
  std::string l2 = r.out.substr(line, r.out.find('\n', line) - line);
  while (!l2.empty() && l2.back() == ' ') l2.pop_back();
  EXPECT_EQ(l2.back(), '-') << l2;
  r = flotilla({"node", "status", "node-1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Last heartbeat")) << r.out;
  EXPECT_TRUE(contains(r.out, "s ago (2026-12-03T10:00:00.000Z)")) << r.out;
}

TEST_P(CliTest, UsageErrorsExit2) {
  CliRun r = flotilla({"bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "\"bogus\" is not a command")) << r.err;
  EXPECT_TRUE(contains(r.err, "usage: flotilla")) << r.err;
  r = flotilla({"job"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "flotilla job run FILE [--check]")) << r.err;
  r = flotilla({"job", "run"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "missing FILE")) << r.err;
  EXPECT_TRUE(contains(r.err, "usage: flotilla job run FILE [--check]")) << r.err;
  r = flotilla({"job", "stop", "web", "--force"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "unknown option --force")) << r.err;
  r = flotilla({}, false);
  EXPECT_EQ(r.exit_code, 2);
}

TEST_P(CliTest, HelpExits0) {
  CliRun r = flotilla({"help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(contains(r.out, "alloc logs ID [-f] [--stderr]")) << r.out;
  r = flotilla({"job", "run", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(contains(r.out, "usage: flotilla job run FILE [--check]")) << r.out;
  r = flotilla({"help", "alloc", "logs"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(contains(r.out, "--follow")) << r.out;
}

// Exit 1 is the daemon's refusal; a file that cannot be read is a local
// problem with its own code, as the help says (before: exit 1).
TEST_P(CliTest, UnreadableLocalFileExits4AsTheHelpSays) {
  std::string missing = (dir_.path / "nonexistent.toml").string();
  CliRun r = flotilla({"job", "run", missing});
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "cannot read " + missing)) << r.err;
  r = flotilla({"job", "run", "--check", missing});
  EXPECT_EQ(r.exit_code, 4) << r.err;
  r = flotilla({"image", "import", (dir_.path / "no-such-layout").string(), "--tag", "x:1"});
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "no-such-layout")) << r.err;
  r = flotilla({"help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(contains(r.out, "1 the daemon refused or failed the request")) << r.out;
  EXPECT_TRUE(contains(r.out, "4 a local file could not be read")) << r.out;
}

TEST_P(CliTest, UnreachableDaemonExits3AndSaysWhere) {
  std::string nowhere = (dir_.path / "nobody-home.sock").string();
  CliRun r = flotilla({"--socket", nowhere, "job", "status"}, false);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_TRUE(contains(r.err, nowhere)) << r.err;
  EXPECT_TRUE(contains(r.err, "is flotillad running?")) << r.err;
}

}  // namespace
}  // namespace flotilla
