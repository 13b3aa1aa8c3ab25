// What the runtime-runc end-to-end tests (runtime_e2e_test.cc,
// registry_e2e_test.cc) share: "the daemon", one libuv loop and one
// flotilla::PluginHost with the real runtime-runc plugin loaded from
// RUNTIME_PLUGIN_PATH, the loop run until a callback came, the result of a
// callback, and the runtime.exit events the plugin published.
#pragma once

#include <flotilla/flotilla.h>
#include <gtest/gtest.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "plugin_host.h"

namespace flotilla::runc::testing {

// A callback's outcome: state_cb and done_cb fill it, progress_cb collects
// the progress reports of a pull.
struct Result {
  bool done = false;
  flotilla_status status = FLOTILLA_E_INTERNAL;
  std::string text;
  std::string error;
  std::vector<nlohmann::json> progress;
};

inline void state_cb(void *user, flotilla_status st, const char *text) {
  auto *r = static_cast<Result *>(user);
  r->done = true;
  r->status = st;
  r->text = text ? text : "";
  if (st != FLOTILLA_OK) r->error = PluginHost::last_error();
}
inline void done_cb(void *user, flotilla_status st) {
  auto *r = static_cast<Result *>(user);
  r->done = true;
  r->status = st;
  if (st != FLOTILLA_OK) r->error = PluginHost::last_error();
}
// exec (ABI 1.3): how it ended.
struct ExecResult {
  bool done = false;
  flotilla_status status = FLOTILLA_E_INTERNAL;
  std::string error;
  int64_t exit_code = 0;
  int term_signal = 0;
  bool timed_out = false, truncated = false;
  std::string output;
};
inline void exec_cb(void *user, flotilla_status st, const flotilla_exec_result *res) {
  auto *r = static_cast<ExecResult *>(user);
  r->done = true;
  r->status = st;
  if (st != FLOTILLA_OK) r->error = PluginHost::last_error();
  if (!res) return;
  r->exit_code = res->exit_code;
  r->term_signal = res->term_signal;
  r->timed_out = res->timed_out != 0;
  r->truncated = res->output_truncated != 0;
  r->output.assign(res->output, res->output_len);
}
inline void progress_cb(void *user, const char *text) {
  static_cast<Result *>(user)->progress.push_back(nlohmann::json::parse(text));
}

class TestDaemon {
 public:
  // guard_ms: how long run_until() waits at most, against hangs only.
  TestDaemon(const std::string &data_dir, const nlohmann::json &config, uint64_t guard_ms)
      : loop_(std::make_unique<uv_loop_t>()), guard_ms_(guard_ms) {
    uv_loop_init(loop_.get());
    host_ = std::make_unique<PluginHost>(
        loop_.get(), PluginHost::Options{"node1", data_dir, "/etc/flotilla/test.toml"});
    exit_sub_ = host_->events().subscribe("runtime.exit",
                                          [this](const std::string &, const std::string &payload) {
                                            exits_.push_back(nlohmann::json::parse(payload));
                                          });
    PluginSettings s;
    s.name = "runtime-runc";
    s.path = RUNTIME_PLUGIN_PATH;
    s.config = config;
    host_->start({s});
    rt_ = host_->find<flotilla_runtime_v1>(FLOTILLA_RUNTIME_INTERFACE_ID, &self_);
    if (!rt_) throw std::runtime_error("runtime-runc serves no flotilla.runtime/1");
  }
  virtual ~TestDaemon() { shutdown(); }
  TestDaemon(const TestDaemon &) = delete;
  TestDaemon &operator=(const TestDaemon &) = delete;

  // Unloads the plugin as a stopping daemon would: containers are left
  // alone. The stopped host and its loop are kept, never run again, until
  // the test process exits, as if the daemon had gone: the shims it
  // spawned are still its children in libuv's books, and work it queued
  // may still be running on the thread pool inside the plugin's (still
  // mapped) code.
  virtual void shutdown() {
    if (!host_) return;
    host_->events().unsubscribe(exit_sub_);
    host_->stop();
    static std::vector<std::pair<std::unique_ptr<uv_loop_t>, std::unique_ptr<PluginHost>>> gone;
    gone.emplace_back(std::move(loop_), std::move(host_));
  }

  template <class Pred>
  bool run_until(Pred done, uint64_t guard_ms = 0) {
    uv_loop_t *loop = loop_.get();
    uint64_t deadline = uv_now(loop) + (guard_ms ? guard_ms : guard_ms_);
    while (!done() && uv_now(loop) < deadline) {
      uv_timer_t t;
      uv_timer_init(loop, &t);
      uv_timer_start(
          &t, [](uv_timer_t *) {}, 20, 0);
      uv_run(loop, UV_RUN_ONCE);
      uv_close(reinterpret_cast<uv_handle_t *>(&t), nullptr);
      uv_run(loop, UV_RUN_NOWAIT);
      uv_update_time(loop);
    }
    return done();
  }

  // Calls f(result) and runs the loop until its callback came.
  Result call(const std::function<flotilla_status(Result *)> &f) {
    auto r = std::make_unique<Result>();
    flotilla_status st = f(r.get());
    if (st != FLOTILLA_OK) {
      r->done = true;
      r->status = st;
      r->error = PluginHost::last_error();
      return *r;
    }
    EXPECT_FALSE(r->done) << "a callback ran inside the call";
    EXPECT_TRUE(run_until([&] { return r->done; })) << "no callback within the guard time";
    return *r;
  }

 protected:
  bool running() const { return host_ != nullptr; }

  std::unique_ptr<uv_loop_t> loop_;
  std::unique_ptr<PluginHost> host_;
  uint64_t guard_ms_;
  const flotilla_runtime_v1 *rt_ = nullptr;
  void *self_ = nullptr;
  uint64_t exit_sub_ = 0;
  std::vector<nlohmann::json> exits_;  // runtime.exit events, in order
};

}  // namespace flotilla::runc::testing
