// exec checks against a fake runtime vtable and a fake host whose timers
// the test fires: results, timeouts through the runtime, cancel on
// destruction, the runtime stopping, and an old (1.2) runtime refused.
#include <gtest/gtest.h>

#include <cstddef>
#include <map>

#include "health_check.h"

namespace flotilla::discovery {
namespace {

struct FakeHost {
  flotilla_host table{};
  std::map<flotilla_handle, std::pair<flotilla_timer_cb, void *>> timers;
  flotilla_handle next = 1;
  const void *runtime = nullptr;
  void *runtime_self = nullptr;
  FakeHost() {
    table.struct_size = sizeof table;
    table.host_ctx = this;
    table.timer_start = [](void *ctx, uint64_t, uint64_t, flotilla_timer_cb cb, void *user) {
      auto *h = static_cast<FakeHost *>(ctx);
      h->timers[h->next] = {cb, user};
      return h->next++;
    };
    table.timer_stop = [](void *ctx, flotilla_handle t) {
      static_cast<FakeHost *>(ctx)->timers.erase(t);
    };
    table.get_interface = [](void *ctx, const char *, void **self) {
      auto *h = static_cast<FakeHost *>(ctx);
      *self = h->runtime_self;
      return h->runtime;
    };
  }
  void fire_all() {
    auto copy = timers;
    for (auto &[id, t] : copy) t.first(t.second);
  }
};

struct FakeRuntime {
  flotilla_runtime_v1 vt{};
  std::vector<std::string> last_argv;
  std::string last_container;
  uint64_t last_timeout = 0;
  flotilla_runtime_exec_cb cb = nullptr;
  void *user = nullptr;
  uint64_t running = 0, cancelled = 0, started = 0;
  flotilla_status refuse = FLOTILLA_OK;
  FakeRuntime() {
    vt.struct_size = sizeof vt;
    vt.exec = [](void *self, const char *id, const flotilla_exec_spec *spec,
                 flotilla_runtime_exec_cb cb, void *user, uint64_t *out) {
      auto *r = static_cast<FakeRuntime *>(self);
      if (r->refuse != FLOTILLA_OK) return r->refuse;
      r->last_container = id;
      r->last_argv.clear();
      for (auto a = spec->argv; *a; ++a) r->last_argv.push_back(*a);
      r->last_timeout = spec->timeout_ms;
      r->cb = cb;
      r->user = user;
      r->running = ++r->started;
      *out = r->running;
      return FLOTILLA_OK;
    };
    vt.exec_cancel = [](void *self, uint64_t id) {
      auto *r = static_cast<FakeRuntime *>(self);
      if (id == r->running) {
        r->running = 0;
        ++r->cancelled;
      }
    };
  }
  // The command ended.
  void finish(int64_t code, const std::string &out, bool timed_out = false) {
    flotilla_exec_result res{};
    res.struct_size = sizeof res;
    res.exit_code = code;
    res.timed_out = timed_out;
    res.output = out.c_str();
    res.output_len = out.size();
    running = 0;
    cb(user, FLOTILLA_OK, &res);
  }
};

CheckSpec exec_spec() {
  CheckSpec s;
  EXPECT_EQ(parse_check(nlohmann::json{{"type", "exec"},
                                       {"command", "test"},
                                       {"args", {"-f", "/healthy"}},
                                       {"interval_ms", 1000},
                                       {"timeout_ms", 300}},
                        s),
            "");
  s.container = "a1.web";
  return s;
}

TEST(ExecCheck, ParsesCommandAndArgsAndNamesBadFields) {
  CheckSpec s = exec_spec();
  EXPECT_EQ(s.argv, (std::vector<std::string>{"test", "-f", "/healthy"}));
  CheckSpec bad;
  EXPECT_EQ(parse_check(nlohmann::json{{"type", "exec"}}, bad).rfind("command:", 0), 0u);
  EXPECT_EQ(parse_check(nlohmann::json{{"type", "exec"}, {"command", "x"}, {"args", {1}}}, bad),
            "args[0]: must be a string");
}

TEST(ExecCheck, ExitCodesTimeoutsAndRefusalsBecomeResults) {
  FakeHost host;
  FakeRuntime rt;
  std::vector<std::pair<bool, std::string>> results;
  HealthCheck c(
      &host.table, exec_spec(),
      [&](bool ok, const std::string &out) { results.emplace_back(ok, out); },
      ExecRuntime{&rt.vt, &rt});
  c.start();
  ASSERT_EQ(rt.last_container, "a1.web");
  EXPECT_EQ(rt.last_argv, (std::vector<std::string>{"test", "-f", "/healthy"}));
  EXPECT_EQ(rt.last_timeout, 300u) << "the runtime enforces the check's timeout";
  rt.finish(0, "fine\n");
  rt.cb = nullptr;
  host.fire_all();  // the next interval
  rt.finish(1, "");
  host.fire_all();
  rt.finish(137, "partial", true);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0], std::make_pair(true, std::string("exit 0: fine")));
  EXPECT_EQ(results[1], std::make_pair(false, std::string("exit 1")));
  EXPECT_EQ(results[2], std::make_pair(false, std::string("timed out after 300 ms: partial")));

  // The runtime never answered before the next interval: that run fails
  // and is cancelled, and the next one starts.
  host.fire_all();
  host.fire_all();
  EXPECT_EQ(rt.cancelled, 1u);
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[3].second, "still running when the next check was due");

  // A refused exec is a failed run that names why.
  rt.refuse = FLOTILLA_E_CONFLICT;
  rt.finish(0, "");
  host.fire_all();
  ASSERT_EQ(results.size(), 6u);
  EXPECT_EQ(results[5],
            std::make_pair(false, std::string("exec in a1.web: the container is not running")));
}

TEST(ExecCheck, DestroyingTheCheckCancelsItsExecAndAStoppingRuntimeIsNoResult) {
  FakeHost host;
  FakeRuntime rt;
  int results = 0;
  {
    HealthCheck c(
        &host.table, exec_spec(), [&](bool, const std::string &) { ++results; },
        ExecRuntime{&rt.vt, &rt});
    c.start();
    ASSERT_NE(rt.running, 0u);
  }
  EXPECT_EQ(rt.cancelled, 1u);
  EXPECT_TRUE(host.timers.empty());

  HealthCheck c(
      &host.table, exec_spec(), [&](bool, const std::string &) { ++results; },
      ExecRuntime{&rt.vt, &rt});
  c.start();
  rt.running = 0;
  rt.cb(rt.user, FLOTILLA_E_CANCELLED, nullptr);  // the runtime plugin stops
  EXPECT_EQ(results, 0);
  EXPECT_EQ(rt.cancelled, 1u) << "nothing left to cancel";
}

TEST(ExecCheck, NoRuntimeOrAnOldOneIsAClearError) {
  FakeHost host;
  ExecRuntime found;
  EXPECT_NE(find_exec_runtime(&host.table, found).find("none is loaded"), std::string::npos);
  FakeRuntime rt;
  rt.vt.struct_size = offsetof(flotilla_runtime_v1, exec);  // a 1.2 runtime's vtable
  host.runtime = &rt.vt;
  host.runtime_self = &rt;
  std::string why = find_exec_runtime(&host.table, found);
  EXPECT_NE(why.find("exec checks need runtime ABI 1.3"), std::string::npos) << why;
  EXPECT_EQ(found.rt, nullptr);
  rt.vt.struct_size = sizeof rt.vt;
  EXPECT_EQ(find_exec_runtime(&host.table, found), "");
  EXPECT_EQ(found.rt, &rt.vt);
}

}  // namespace
}  // namespace flotilla::discovery
