// The node reconciler against the real store-local plugin and a fake
// runtime (an in-memory flotilla.runtime/1 vtable that records every call
// and lets the test decide when containers exit). The real runtime is
// covered by tests/e2e/test_containers.cc; here the reconciler's own logic:
// what it asks the runtime, what it reports, and that replaying it after a
// restart does nothing twice.
#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "plugin_host.h"
#include "node/reconciler.h"
#include "node/runtime_client.h"
#include "store_client.h"

using flotilla::KeyValue;
using flotilla::PluginHost;
using flotilla::Reconciler;
using flotilla::RuntimeClient;
using flotilla::StoreClient;
using flotilla::StoreEvent;
using flotilla::StoreResult;
using nlohmann::json;

namespace {

// ---- the fake runtime -------------------------------------------------------

struct FakeRuntime {
  struct Container {
    std::string status;  // created | running | stopped
    int64_t exit_code = -1;
    int signal = 0;
    json task;
  };
  PluginHost *host = nullptr;
  std::map<std::string, Container> containers;
  std::vector<std::string> calls;  // "create X", "start X", "stop X", "remove X"
  bool honours_start = true;       // run the process in create when asked
  bool honours_replace = true;     // "replace": an exited container of the id is replaced
  std::string fail_create;         // a container id whose create fails
  bool pulls = false;              // serve image_pull (ABI 1.2)
  struct Pull {
    std::string ref, policy;
    flotilla_runtime_progress_cb progress;
    flotilla_runtime_state_cb cb;
    void *user;
  };
  std::vector<Pull> pending_pulls;  // answered by the test

  int count(const std::string &call) const {
    int n = 0;
    for (const auto &c : calls) n += c == call;
    return n;
  }
  json state(const std::string &id) const {
    const Container &c = containers.at(id);
    return {{"id", id}, {"status", c.status}, {"exit_code", c.exit_code}, {"signal", c.signal},
            {"pid", 42}, {"started_at", ""}, {"finished_at", ""}};
  }
  // The container's process ends (as the shim would report it).
  void exit(const std::string &id, int64_t code, int signal = 0) {
    Container &c = containers.at(id);
    c.status = "stopped";
    c.exit_code = code;
    c.signal = signal;
    host->events().publish("runtime.exit", json{{"id", id},
                                                {"exit_code", code},
                                                {"signal", signal},
                                                {"finished_at", "2026-01-01T00:00:00Z"}}
                                               .dump());
  }

  static FakeRuntime *F(void *self) { return static_cast<FakeRuntime *>(self); }
  static flotilla_status create(void *self, const char *id, const char *task_json,
                                flotilla_runtime_state_cb cb, void *user) {
    FakeRuntime *f = F(self);
    f->calls.push_back(std::string("create ") + id);
    json task = json::parse(task_json);
    if (f->containers.count(id)) {
      // runtime-runc's "replace" (docs/abi-json.md): only an exited one.
      if (!f->honours_replace || !task.value("replace", false) ||
          f->containers.at(id).status != "stopped")
        return FLOTILLA_E_EXISTS;
      f->calls.push_back(std::string("replaced ") + id);
      f->containers.erase(id);
    }
    if (f->fail_create == id) {
      cb(user, FLOTILLA_E_INVALID, "null");
      return FLOTILLA_OK;
    }
    Container c;
    c.task = task;
    c.status = f->honours_start && task.value("start", false) ? "running" : "created";
    f->containers[id] = c;
    cb(user, FLOTILLA_OK, f->state(id).dump().c_str());
    return FLOTILLA_OK;
  }
  static flotilla_status start(void *self, const char *id, flotilla_runtime_state_cb cb,
                               void *user) {
    FakeRuntime *f = F(self);
    f->calls.push_back(std::string("start ") + id);
    auto it = f->containers.find(id);
    if (it == f->containers.end()) return FLOTILLA_E_NOT_FOUND;
    if (it->second.status != "created") return FLOTILLA_E_CONFLICT;
    it->second.status = "running";
    cb(user, FLOTILLA_OK, f->state(id).dump().c_str());
    return FLOTILLA_OK;
  }
  static flotilla_status state_fn(void *self, const char *id, flotilla_runtime_state_cb cb,
                                  void *user) {
    FakeRuntime *f = F(self);
    if (!f->containers.count(id)) return FLOTILLA_E_NOT_FOUND;
    cb(user, FLOTILLA_OK, f->state(id).dump().c_str());
    return FLOTILLA_OK;
  }
  static flotilla_status signal_fn(void *, const char *, int, flotilla_done_cb cb, void *user) {
    cb(user, FLOTILLA_OK);
    return FLOTILLA_OK;
  }
  static flotilla_status stop(void *self, const char *id, uint64_t, flotilla_runtime_state_cb cb,
                              void *user) {
    FakeRuntime *f = F(self);
    f->calls.push_back(std::string("stop ") + id);
    auto it = f->containers.find(id);
    if (it == f->containers.end()) return FLOTILLA_E_NOT_FOUND;
    if (it->second.status == "running") f->exit(id, 137, 9);
    cb(user, FLOTILLA_OK, f->state(id).dump().c_str());
    return FLOTILLA_OK;
  }
  static flotilla_status remove(void *self, const char *id, flotilla_done_cb cb, void *user) {
    FakeRuntime *f = F(self);
    f->calls.push_back(std::string("remove ") + id);
    if (!f->containers.erase(id)) return FLOTILLA_E_NOT_FOUND;
    cb(user, FLOTILLA_OK);
    return FLOTILLA_OK;
  }
  static flotilla_status list(void *self, flotilla_runtime_list_cb cb, void *user) {
    FakeRuntime *f = F(self);
    json all = json::array();
    for (const auto &[id, c] : f->containers) all.push_back(f->state(id));
    cb(user, FLOTILLA_OK, all.dump().c_str());
    return FLOTILLA_OK;
  }
  static flotilla_status log_path(void *, const char *, const char *, char *, size_t) {
    return FLOTILLA_E_NOT_FOUND;
  }

  static flotilla_status image_pull(void *self, const char *ref, const char *options,
                                   flotilla_runtime_progress_cb progress,
                                   flotilla_runtime_state_cb cb, void *user) {
    FakeRuntime *f = F(self);
    std::string policy = json::parse(options).value("policy", "");
    f->calls.push_back(std::string("pull ") + ref + " " + policy);
    f->pending_pulls.push_back({ref, policy, progress, cb, user});
    return FLOTILLA_OK;
  }

  flotilla_runtime_v1 vtable() {
    flotilla_runtime_v1 v{};
    v.struct_size = sizeof v;
    v.create = create;
    v.start = start;
    v.state = state_fn;
    v.signal = signal_fn;
    v.stop = stop;
    v.remove = remove;
    v.list = list;
    v.log_path = log_path;
    if (pulls) v.image_pull = image_pull;
    return v;
  }
};

// ---- fixture: a loop, store-local, the fake runtime, one reconciler ---------

class ReconcilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    char tmpl[] = "/tmp/flotilla-reconciler-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    PluginHost::Options opts;
    opts.node_name = "n1";
    opts.data_dir = dir_;
    opts.config_path = "(test config)";
    host_ = std::make_unique<PluginHost>(&loop_, opts);
    flotilla::PluginSettings s;
    s.name = "store-local";
    s.path = STORE_LOCAL_PLUGIN_PATH;
    s.config = {{"fsync", false}};
    host_->start({s});
    void *self = nullptr;
    auto *vt = host_->find<flotilla_store_v1>(FLOTILLA_STORE_INTERFACE_ID, &self);
    ASSERT_NE(vt, nullptr);
    store_ = std::make_unique<StoreClient>(vt, self);
    fake_.host = host_.get();
    vtable_ = fake_.vtable();
    runtime_ = std::make_unique<RuntimeClient>(&vtable_, &fake_);
  }
  void TearDown() override {
    rec_.reset();
    store_.reset();
    if (host_) host_->stop();
    for (int i = 0; i < 10; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    host_.reset();
    for (int i = 0; i < 10; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    uv_loop_close(&loop_);
    std::filesystem::remove_all(dir_);
  }

  void start_reconciler() {
    rec_ = std::make_unique<Reconciler>(&loop_, store_.get(), runtime_.get(), host_.get(), "n1");
    rec_->start();
    // Allocations written from now on are seen: the start-up reads list
    // them, the watch that follows starts after that list's revision.
  }
  // A daemon restart, as far as the reconciler sees it.
  void restart_reconciler() {
    rec_.reset();
    for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    start_reconciler();
  }
  // Run the loop until pred holds (a guard of 10 s, not a timing check).
  bool run_until(const std::function<bool()> &pred) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      uv_run(&loop_, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }
  void put(const std::string &key, const json &value) {
    bool done = false;
    store_->put(key, value.dump(), [&](StoreResult r, int64_t) {
      EXPECT_TRUE(r.ok()) << r.message;
      done = true;
    });
    ASSERT_TRUE(run_until([&] { return done; }));
  }
  std::optional<json> get(const std::string &key) {
    bool done = false;
    std::optional<json> out;
    store_->get(key, [&](StoreResult r, std::optional<KeyValue> kv, int64_t) {
      EXPECT_TRUE(r.ok()) << r.message;
      if (kv) out = json::parse(kv->value);
      done = true;
    });
    EXPECT_TRUE(run_until([&] { return done; }));
    return out;
  }
  std::string status_of(const std::string &alloc) {
    auto s = get("/flotilla/alloc-status/" + alloc);
    return s ? s->value("status", "") : "";
  }
  bool wait_status(const std::string &alloc, const std::string &want) {
    return run_until([&] { return status_of(alloc) == want; });
  }

  static json alloc(const std::string &id, const std::string &type = "service",
                    const json &restart = {{"attempts", 0}, {"interval_ms", 60000},
                                           {"delay_ms", 0}, {"jitter", 0.0}, {"mode", "fail"}}) {
    json task = {{"name", "t"}, {"image", "busybox:latest"}, {"command", "/bin/true"},
                 {"kill_timeout_ms", 1000}};
    return {{"id", id},
            {"job", "j"},
            {"job_version", 1},
            {"index", 0},
            {"node", "n1"},
            {"desired_status", "run"},
            {"spec",
             {{"name", "j"}, {"type", type}, {"restart", restart}, {"task", json::array({task})}}}};
  }

  uv_loop_t loop_{};
  std::string dir_;
  std::unique_ptr<PluginHost> host_;
  std::unique_ptr<StoreClient> store_;
  FakeRuntime fake_;
  flotilla_runtime_v1 vtable_{};
  std::unique_ptr<RuntimeClient> runtime_;
  std::unique_ptr<Reconciler> rec_;
};

TEST_F(ReconcilerTest, CreatesAndStartsInOneCallWhenTheRuntimeCan) {
  start_reconciler();
  put("/flotilla/allocs/a1", alloc("a1"));
  ASSERT_TRUE(wait_status("a1", "running")) << status_of("a1");
  EXPECT_EQ(fake_.count("create a1.t"), 1);
  EXPECT_EQ(fake_.count("start a1.t"), 0) << "create already started it";
  EXPECT_TRUE(fake_.containers.at("a1.t").task.value("start", false));
  EXPECT_EQ(fake_.containers.at("a1.t").task["task"]["name"], "t");
}

// Issue 13's deploy monitor waits for the services a node registered; a
// node without a discovery plugin registers none and must say so, or the
// monitor could not tell "none here" from "not yet". (Registered ones are
// listed as "services": tests/e2e/test_registry_jobs.cc, with the plugin.)
TEST_F(ReconcilerTest, ATaskWithServicesSaysWhyNoneWereRegistered) {
  start_reconciler();
  json a = alloc("v1");
  a["spec"]["task"][0]["service"] = json::array({{{"name", "web"}, {"port", 8080}}});
  put("/flotilla/allocs/v1", a);
  put("/flotilla/allocs/v2", alloc("v2"));
  ASSERT_TRUE(wait_status("v1", "running")) << status_of("v1");
  ASSERT_TRUE(wait_status("v2", "running")) << status_of("v2");
  json t = (*get("/flotilla/alloc-status/v1"))["tasks"]["t"];
  EXPECT_EQ(t.value("services_unregistered", ""),
            "no plugin provides flotilla.discovery/1 on node n1")
      << t.dump();
  EXPECT_FALSE(t.contains("services")) << t.dump();
  // A task without services carries neither key.
  json plain = (*get("/flotilla/alloc-status/v2"))["tasks"]["t"];
  EXPECT_FALSE(plain.contains("services_unregistered")) << plain.dump();
  EXPECT_FALSE(plain.contains("services")) << plain.dump();
}

TEST_F(ReconcilerTest, StartsSeparatelyWhenTheRuntimeOnlyCreates) {
  fake_.honours_start = false;
  start_reconciler();
  put("/flotilla/allocs/a1", alloc("a1"));
  ASSERT_TRUE(wait_status("a1", "running")) << status_of("a1");
  EXPECT_EQ(fake_.count("create a1.t"), 1);
  EXPECT_EQ(fake_.count("start a1.t"), 1);
}

TEST_F(ReconcilerTest, BatchTaskThatExitsZeroCompletesWithItsExitCode) {
  start_reconciler();
  put("/flotilla/allocs/b1", alloc("b1", "batch"));
  ASSERT_TRUE(wait_status("b1", "running"));
  fake_.exit("b1.t", 0);
  ASSERT_TRUE(wait_status("b1", "complete")) << status_of("b1");
  json st = *get("/flotilla/alloc-status/b1");
  EXPECT_EQ(st["tasks"]["t"]["exit_code"], 0);
  EXPECT_EQ(st["tasks"]["t"]["restarts"], 0);
  EXPECT_EQ(fake_.count("create b1.t"), 1);
}

TEST_F(ReconcilerTest, RestartPolicyRestartsThenFails) {
  start_reconciler();
  json restart = {{"attempts", 2}, {"interval_ms", 600000}, {"delay_ms", 0},
                  {"jitter", 0.0}, {"mode", "fail"}};
  put("/flotilla/allocs/s1", alloc("s1", "service", restart));
  for (int attempt = 1; attempt <= 3; ++attempt) {
    ASSERT_TRUE(run_until([&] {
      return fake_.count("create s1.t") == attempt && fake_.containers.count("s1.t") &&
             fake_.containers.at("s1.t").status == "running";
    })) << "attempt " << attempt;
    fake_.exit("s1.t", 3);
  }
  ASSERT_TRUE(wait_status("s1", "failed")) << status_of("s1");
  json st = *get("/flotilla/alloc-status/s1");
  EXPECT_EQ(st["tasks"]["t"]["restarts"], 2);
  EXPECT_EQ(st["tasks"]["t"]["exit_code"], 3);
  EXPECT_EQ(st["tasks"]["t"]["failed"], true);
  EXPECT_EQ(fake_.count("create s1.t"), 3) << "two restarts, no more";
  // Each restart replaced the exited container at create, which keeps its
  // logs as an earlier run; nothing removed it first.
  EXPECT_EQ(fake_.count("replaced s1.t"), 2);
  EXPECT_EQ(fake_.count("remove s1.t"), 0);
}

// discovery's "discovery.check_restart" (a service's check_restart limit):
// the task is stopped and restarted by the job's [restart] policy, which
// counts it; the status says why. Events for other allocations or tasks,
// or a second one before the exit, change nothing.
TEST_F(ReconcilerTest, CheckRestartStopsTheTaskAndTheRestartPolicyRestartsIt) {
  start_reconciler();
  json restart = {{"attempts", 2},
                  {"interval_ms", 600000},
                  {"delay_ms", 300},
                  {"jitter", 0.0},
                  {"mode", "fail"}};
  put("/flotilla/allocs/c1", alloc("c1", "batch", restart));
  ASSERT_TRUE(wait_status("c1", "running"));
  auto ask = [&](const std::string &alloc, const std::string &task) {
    host_->events().publish(
        "discovery.check_restart",
        json{{"alloc", alloc},
             {"task", task},
             {"service", "web"},
             {"reason", "service web check 0 (http) failed 3 times in a row: HTTP 503"}}
            .dump());
  };
  ask("nope", "t");
  ask("c1", "other");
  ask("c1", "t");
  ask("c1", "t");
  // While it waits for its restart, the status says why.
  json st;
  ASSERT_TRUE(run_until([&] {
    st = get("/flotilla/alloc-status/c1").value_or(json());
    return st.is_object() && st["tasks"]["t"].value("restarts", 0) == 1;
  })) << st.dump();
  EXPECT_NE(st["tasks"]["t"]
                .value("message", "")
                .find("restarted by check_restart: service web "
                      "check 0 (http) failed 3 times"),
            std::string::npos)
      << st.dump();
  EXPECT_EQ(fake_.count("stop c1.t"), 1);
  ASSERT_TRUE(run_until([&] {
    return fake_.count("create c1.t") == 2 && fake_.containers.count("c1.t") &&
           fake_.containers.at("c1.t").status == "running";
  }));
  ASSERT_TRUE(wait_status("c1", "running"));
  EXPECT_EQ(status_of("c1"), "running") << "a batch task stopped for its checks is not complete";
}

// A runtime that does not know "replace" refuses the create (EXISTS): the
// reconciler removes the old container and creates again, as before.
TEST_F(ReconcilerTest, ARuntimeWithoutReplaceStillRestarts) {
  fake_.honours_replace = false;
  start_reconciler();
  json restart = {
      {"attempts", 1}, {"interval_ms", 600000}, {"delay_ms", 0}, {"jitter", 0.0}, {"mode", "fail"}};
  put("/flotilla/allocs/s2", alloc("s2", "service", restart));
  ASSERT_TRUE(run_until([&] {
    return fake_.containers.count("s2.t") && fake_.containers.at("s2.t").status == "running";
  }));
  fake_.exit("s2.t", 3);
  ASSERT_TRUE(run_until([&] {
    return fake_.count("remove s2.t") == 1 && fake_.containers.count("s2.t") &&
           fake_.containers.at("s2.t").status == "running";
  })) << status_of("s2");
  EXPECT_EQ(fake_.count("create s2.t"), 3) << "refused, then created after the remove";
  EXPECT_EQ(fake_.count("replaced s2.t"), 0);
}

// [restart] jitter only lengthens the delay (as Nomad's docs define it):
// with delay 100 ms and jitter 1, every restart waits 100 to 200 ms. Before,
// the jitter was applied both ways, so about half the restarts came early.
TEST_F(ReconcilerTest, RestartJitterOnlyLengthensTheDelay) {
  start_reconciler();
  constexpr int kRestarts = 8;
  constexpr int64_t kDelayMs = 100;
  json restart = {{"attempts", kRestarts}, {"interval_ms", 600000}, {"delay_ms", kDelayMs},
                  {"jitter", 1.0}, {"mode", "fail"}};
  put("/flotilla/allocs/j1", alloc("j1", "service", restart));
  std::vector<int64_t> waits;
  for (int attempt = 1; attempt <= kRestarts + 1; ++attempt) {
    ASSERT_TRUE(run_until([&] {
      return fake_.count("create j1.t") == attempt && fake_.containers.count("j1.t") &&
             fake_.containers.at("j1.t").status == "running";
    })) << "attempt " << attempt;
    if (attempt == kRestarts + 1) break;
    auto exited = std::chrono::steady_clock::now();
    fake_.exit("j1.t", 1);
    ASSERT_TRUE(run_until([&] { return fake_.count("create j1.t") == attempt + 1; }));
    waits.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - exited)
                        .count());
  }
  std::string all;
  for (int64_t w : waits) all += std::to_string(w) + " ";
  // A few ms of slack: a timer counts from the loop's cached time.
  for (int64_t w : waits) EXPECT_GE(w, kDelayMs - 5) << "waits (ms): " << all;
}

TEST_F(ReconcilerTest, ACreateFailureIsReportedAsAFailedStart) {
  fake_.fail_create = "f1.t";
  start_reconciler();
  put("/flotilla/allocs/f1", alloc("f1"));
  ASSERT_TRUE(wait_status("f1", "failed")) << status_of("f1");
  json st = *get("/flotilla/alloc-status/f1");
  EXPECT_NE(st["tasks"]["t"]["message"].get<std::string>(), "");
  EXPECT_EQ(fake_.count("create f1.t"), 1) << "attempts = 0: no retry";
}

// The prepare step: the image is pulled before create, its progress shows in
// the task's status, a failed pull is a failed start retried under the
// restart policy, and "never" asks nothing of the registry.
TEST_F(ReconcilerTest, PullsTheImageBeforeCreateAndRetriesAFailedPull) {
  fake_.pulls = true;
  vtable_ = fake_.vtable();
  start_reconciler();
  json restart = {{"attempts", 1}, {"interval_ms", 600000}, {"delay_ms", 0},
                  {"jitter", 0.0}, {"mode", "fail"}};
  put("/flotilla/allocs/p1", alloc("p1", "service", restart));
  ASSERT_TRUE(run_until([&] { return fake_.pending_pulls.size() == 1; }));
  EXPECT_EQ(fake_.calls.at(0), "pull busybox:latest if_not_present");
  EXPECT_EQ(fake_.count("create p1.t"), 0) << "nothing is created before the image is there";
  FakeRuntime::Pull first = fake_.pending_pulls.back();
  first.progress(first.user, R"({"ref":"busybox:latest","phase":"downloading",)"
                             R"("bytes_done":5,"bytes_total":10,"blobs":[]})");
  ASSERT_TRUE(run_until([&] {
    auto st = get("/flotilla/alloc-status/p1");
    return st && (*st)["tasks"]["t"].contains("pull") &&
           (*st)["tasks"]["t"]["pull"].value("bytes_done", 0) == 5;
  })) << get("/flotilla/alloc-status/p1")->dump();
  // The registry is down: a failed start, then a retry that pulls again.
  first.cb(first.user, FLOTILLA_E_IO, "null");
  ASSERT_TRUE(run_until([&] { return fake_.pending_pulls.size() == 2; }));
  EXPECT_EQ(fake_.count("create p1.t"), 0);
  FakeRuntime::Pull second = fake_.pending_pulls.back();
  second.cb(second.user, FLOTILLA_OK, R"({"name":"busybox:latest","pulled":true})");
  ASSERT_TRUE(wait_status("p1", "running")) << status_of("p1");
  json st = *get("/flotilla/alloc-status/p1");
  EXPECT_EQ(st["tasks"]["t"]["restarts"], 1);
  EXPECT_FALSE(st["tasks"]["t"].contains("pull")) << "progress goes once the pull is done";
  EXPECT_EQ(fake_.count("create p1.t"), 1);

  json never = alloc("p2");
  never["spec"]["task"][0]["image_pull"] = "never";
  put("/flotilla/allocs/p2", never);
  ASSERT_TRUE(wait_status("p2", "running")) << status_of("p2");
  EXPECT_EQ(fake_.pending_pulls.size(), 2u) << "image_pull = never asks no registry";

  json always = alloc("p3");
  always["spec"]["task"][0]["image_pull"] = "always";
  put("/flotilla/allocs/p3", always);
  ASSERT_TRUE(run_until([&] { return fake_.pending_pulls.size() == 3; }));
  EXPECT_EQ(fake_.pending_pulls.back().policy, "always");
  fake_.pending_pulls.back().cb(fake_.pending_pulls.back().user, FLOTILLA_OK, "{}");
  ASSERT_TRUE(wait_status("p3", "running")) << status_of("p3");
}

// Progress comes as often as the runtime reports it (runtime-runc: every
// progress_interval_ms, 500 by default); the task's status is written at
// most once per Reconciler::kPullReportIntervalMs of the reconciler's clock.
// The clock is the test's: every write of the status is counted through a
// watch, and no assertion depends on how fast the machine is.
TEST_F(ReconcilerTest, PullProgressIsWrittenAtMostOncePerInterval) {
  fake_.pulls = true;
  vtable_ = fake_.vtable();
  start_reconciler();
  uint64_t clock_ms = 7'000'000;
  rec_->set_progress_clock([&] { return clock_ms; });
  int64_t alloc_rev = 0;
  store_->put("/flotilla/allocs/q1", alloc("q1").dump(), [&](StoreResult r, int64_t rev) {
    EXPECT_TRUE(r.ok()) << r.message;
    alloc_rev = rev;
  });
  ASSERT_TRUE(run_until([&] { return alloc_rev != 0; }));
  // Each write of q1's status, in order: its pull's bytes_done, or -1
  // without a pull; and whether it was the running one.
  std::vector<int64_t> written;
  bool running = false;
  auto watch = store_->watch(
      "/flotilla/alloc-status/q1", false, alloc_rev + 1,
      [&](StoreResult r, const std::vector<StoreEvent> &evs, int64_t) {
        ASSERT_TRUE(r.ok()) << r.message;
        for (const auto &e : evs) {
          json st = json::parse(e.kv.value);
          const json &t = st["tasks"]["t"];
          written.push_back(t.contains("pull") ? t["pull"].value("bytes_done", int64_t{0}) : -1);
          running |= st.value("status", "") == "running";
        }
      });
  ASSERT_NE(watch, nullptr);
  ASSERT_TRUE(run_until([&] { return fake_.pending_pulls.size() == 1; }));
  FakeRuntime::Pull pull = fake_.pending_pulls.back();
  auto report = [&](int64_t done) {
    json p = {{"ref", "busybox:latest"},
              {"phase", "downloading"},
              {"bytes_done", done},
              {"bytes_total", 1000},
              {"blobs", json::array()}};
    pull.progress(pull.user, p.dump().c_str());
  };
  const uint64_t interval = Reconciler::kPullReportIntervalMs;
  // 50 reports in the first interval, 50 more just before its end, 50 in
  // the next one: the first of each interval is written, no other.
  for (int64_t i = 1; i <= 50; ++i) report(i);
  ASSERT_TRUE(run_until([&] { return !written.empty() && written.back() != -1; }));
  clock_ms += interval - 1;
  for (int64_t i = 51; i <= 100; ++i) report(i);
  clock_ms += 1;
  for (int64_t i = 101; i <= 150; ++i) report(i);
  for (int i = 0; i < 20; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  // The pull is done: the status's next write (running) comes after every
  // progress write, so the watch has seen them all once it sees it.
  pull.cb(pull.user, FLOTILLA_OK, R"({"name":"busybox:latest","pulled":true})");
  ASSERT_TRUE(run_until([&] { return running; }));
  std::vector<int64_t> progress_writes;
  for (int64_t w : written)
    if (w != -1) progress_writes.push_back(w);
  std::string all;
  for (int64_t w : written) all += std::to_string(w) + " ";
  EXPECT_EQ(progress_writes, (std::vector<int64_t>{1, 101})) << "writes (bytes_done): " << all;
}

TEST_F(ReconcilerTest, ReplayingAfterARestartDoesNothingTwice) {
  start_reconciler();
  put("/flotilla/allocs/r1", alloc("r1"));
  put("/flotilla/allocs/r2", alloc("r2", "batch"));
  put("/flotilla/allocs/r3", alloc("r3", "batch"));
  ASSERT_TRUE(wait_status("r1", "running"));
  ASSERT_TRUE(wait_status("r2", "running"));
  ASSERT_TRUE(wait_status("r3", "running"));
  fake_.exit("r3.t", 0);
  ASSERT_TRUE(wait_status("r3", "complete"));

  // The daemon goes away; r2 exits (code 5) while nobody watches.
  rec_.reset();
  for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  auto &r2 = fake_.containers.at("r2.t");
  r2.status = "stopped";
  r2.exit_code = 5;
  fake_.calls.clear();

  start_reconciler();
  // r2's exit is judged once: batch, non-zero, no restarts left -> failed.
  ASSERT_TRUE(wait_status("r2", "failed")) << status_of("r2");
  EXPECT_EQ((*get("/flotilla/alloc-status/r2"))["tasks"]["t"]["exit_code"], 5);
  // r1 still runs: adopted, not created again; r3 stays complete.
  for (int i = 0; i < 50; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_EQ(status_of("r1"), "running");
  EXPECT_EQ(status_of("r3"), "complete");
  EXPECT_EQ(fake_.count("create r1.t"), 0);
  EXPECT_EQ(fake_.count("create r2.t"), 0);
  EXPECT_EQ(fake_.count("create r3.t"), 0);
  EXPECT_EQ(fake_.count("start r1.t"), 0);

  // And once more: nothing at all changes.
  restart_reconciler();
  for (int i = 0; i < 50; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_EQ(fake_.count("create r1.t") + fake_.count("create r2.t") + fake_.count("create r3.t"),
            0);
  EXPECT_EQ(status_of("r2"), "failed");
}

TEST_F(ReconcilerTest, LeftoverContainersTheStoreDoesNotWantAreRemoved) {
  fake_.containers["gone-0.t"] = {"running", -1, 0, json::object()};
  start_reconciler();
  ASSERT_TRUE(run_until([&] { return fake_.containers.count("gone-0.t") == 0; }));
  EXPECT_EQ(fake_.count("stop gone-0.t"), 1);
  EXPECT_EQ(fake_.count("remove gone-0.t"), 1);
}

TEST_F(ReconcilerTest, StopRemovesTheContainersOnceAndReportsStopped) {
  start_reconciler();
  // The job exists: without it the stopped allocation's records are
  // collected at once (PurgedJobs... below).
  put("/flotilla/jobs/j", {{"name", "j"}});
  put("/flotilla/allocs/x1", alloc("x1"));
  ASSERT_TRUE(wait_status("x1", "running"));
  json a = alloc("x1");
  a["desired_status"] = "stop";
  put("/flotilla/allocs/x1", a);
  ASSERT_TRUE(wait_status("x1", "stopped")) << status_of("x1");
  EXPECT_EQ(fake_.count("stop x1.t"), 1);
  EXPECT_EQ(fake_.count("remove x1.t"), 1);
  EXPECT_EQ(fake_.containers.count("x1.t"), 0u);
  EXPECT_EQ(fake_.count("create x1.t"), 1) << "the kill's exit is not restarted";
}

TEST_F(ReconcilerTest, PurgedJobsAllocationRecordsAreDeletedOnceTheContainersAreGone) {
  start_reconciler();
  put("/flotilla/jobs/j", {{"name", "j"}});
  put("/flotilla/allocs/p1", alloc("p1"));
  ASSERT_TRUE(wait_status("p1", "running"));
  // Stopped while the job exists: the records stay.
  json a = alloc("p1");
  a["desired_status"] = "stop";
  put("/flotilla/allocs/p1", a);
  ASSERT_TRUE(wait_status("p1", "stopped"));
  for (int i = 0; i < 50; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_TRUE(get("/flotilla/allocs/p1").has_value());
  // The job goes and the purge touches the allocation: the node deletes it.
  bool done = false;
  store_->remove("/flotilla/jobs/j", false, [&](StoreResult, int64_t, int64_t) { done = true; });
  ASSERT_TRUE(run_until([&] { return done; }));
  a["desired_description"] = "job purged";
  put("/flotilla/allocs/p1", a);
  ASSERT_TRUE(run_until([&] { return !get("/flotilla/allocs/p1").has_value(); }));
  EXPECT_FALSE(get("/flotilla/alloc-status/p1").has_value());
}

TEST_F(ReconcilerTest, GcRemovesTheOldestEndedAllocationsContainersBeyondTheCount) {
  rec_ = std::make_unique<Reconciler>(&loop_, store_.get(), runtime_.get(), host_.get(), "n1");
  rec_->set_gc(3600 * 1000, 1);
  rec_->start();
  put("/flotilla/jobs/j", {{"name", "j"}});  // else the ended allocations' records go at once
  put("/flotilla/allocs/g1", alloc("g1", "batch"));
  ASSERT_TRUE(wait_status("g1", "running"));
  fake_.exit("g1.t", 0);
  ASSERT_TRUE(wait_status("g1", "complete"));
  put("/flotilla/allocs/g2", alloc("g2", "batch"));
  ASSERT_TRUE(wait_status("g2", "running"));
  for (int i = 0; i < 50; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_EQ(fake_.containers.count("g1.t"), 1u) << "one ended allocation is within the limit";
  fake_.exit("g2.t", 0);
  ASSERT_TRUE(run_until([&] {
    auto st = get("/flotilla/alloc-status/g1");
    return st && st->value("containers_removed", false);
  }));
  EXPECT_EQ(fake_.containers.count("g1.t"), 0u);
  EXPECT_EQ(status_of("g1"), "complete");
  EXPECT_EQ(fake_.containers.count("g2.t"), 1u);
}

}  // namespace
