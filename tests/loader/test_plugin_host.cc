// The plugin loader against real shared objects: the C99 example plugin and
// fixtures built to fail in each way the loader must explain.
#include <flotilla/flotilla.h>
#include <gtest/gtest.h>
#include <uv.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "config.h"
#include "error.h"
#include "plugin_host.h"

namespace fs = std::filesystem;
using flotilla::Error;
using flotilla::PluginHost;
using flotilla::PluginSettings;

namespace {

// tests/abi/ builds hello-c99 again from the installed headers and points
// this test at that copy.
std::string hello_c99_path() {
  const char *o = getenv("HELLO_C99_PATH_OVERRIDE");
  return o && *o ? o : HELLO_C99_PATH;
}

struct GreeterV1 {
  uint32_t struct_size;
  flotilla_status (*greet)(void *self, const char *name, char *buf, size_t buf_len);
};

class PluginHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    char tmpl[] = "/tmp/flotilla-loader-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    host_.reset();
    uv_run(&loop_, UV_RUN_NOWAIT);  // let close callbacks free their handles
    uv_loop_close(&loop_);
    fs::remove_all(dir_);
  }

  PluginHost &host() {
    if (!host_) host_ = std::make_unique<PluginHost>(
        &loop_, PluginHost::Options{"node1", dir_ + "/data", "/etc/flotilla/test.toml"});
    return *host_;
  }

  static PluginSettings fixture(const std::string &name, const std::string &file) {
    PluginSettings s;
    s.name = name;
    s.path = std::string(FIXTURE_DIR) + "/" + file + ".so";
    s.line = 7;
    return s;
  }

  // Start and return the error message, or "" when start succeeded.
  std::string start_error(const std::vector<PluginSettings> &plugins) {
    try {
      host().start(plugins);
    } catch (const Error &e) {
      return e.what();
    }
    return "";
  }

  // Run the loop until done() or 5 s have passed (a guard against hangs,
  // not a timing assertion).
  template <class Pred>
  bool run_until(Pred done) {
    uint64_t deadline = uv_now(&loop_) + 5000;
    while (!done() && uv_now(&loop_) < deadline) {
      uv_timer_t t;
      uv_timer_init(&loop_, &t);
      uv_timer_start(&t, [](uv_timer_t *) {}, 10, 0);
      uv_run(&loop_, UV_RUN_ONCE);
      uv_close(reinterpret_cast<uv_handle_t *>(&t), nullptr);
      uv_run(&loop_, UV_RUN_NOWAIT);
    }
    return done();
  }

  uv_loop_t loop_{};
  std::string dir_;
  std::unique_ptr<PluginHost> host_;
};

TEST_F(PluginHostTest, C99PluginStartsServesItsInterfaceAndUsesTheHost) {
  PluginSettings s;
  s.name = "hello";
  s.path = hello_c99_path();
  s.config = {{"greeting", "Ahoy"}};
  std::string published;
  host().events().subscribe("hello.", [&](const std::string &topic, const std::string &json) {
    published = topic + " " + json;
  });
  ASSERT_EQ(start_error({s}), "");

  void *self = nullptr;
  auto *g = host().find<GreeterV1>("example.greeter/1", &self);
  ASSERT_NE(g, nullptr);
  char buf[64];
  ASSERT_EQ(g->greet(self, "crew", buf, sizeof buf), FLOTILLA_OK);
  EXPECT_STREQ(buf, "Ahoy, crew!");
  // A failure's message travels through set_error.
  EXPECT_EQ(g->greet(self, "a-name-long-enough-to-overflow", buf, 8), FLOTILLA_E_INVALID);
  EXPECT_EQ(PluginHost::last_error(), "greet: buffer too small");

  ASSERT_TRUE(run_until([&] { return !published.empty(); }));
  EXPECT_EQ(published, "hello.started {\"greeting\":\"Ahoy\"}");
  EXPECT_NE(host().metrics().render_prometheus().find("flotilla_hello_started_total 1"),
            std::string::npos);

  auto list = host().list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id, "org.flotilla.example.hello-c99");
  EXPECT_EQ(list[0].version, "1.0.0");
  EXPECT_EQ(list[0].sha256, flotilla::sha256_file(hello_c99_path()));
  EXPECT_TRUE(fs::is_directory(dir_ + "/data/plugins/hello"));
}

TEST_F(PluginHostTest, ConfigErrorNamesFileLineAndKey) {
  PluginSettings s;
  s.name = "hello";
  s.path = hello_c99_path();
  s.config = {{"greeting", ""}};
  s.key_lines = {{"greeting", 12}};
  std::string err = start_error({s});
  EXPECT_NE(err.find("config /etc/flotilla/test.toml line 12: plugin.hello.greeting: must be a "
                     "string of 1 to 63 characters"),
            std::string::npos)
      << err;
  EXPECT_TRUE(host().list().empty());
}

TEST_F(PluginHostTest, MissingFile) {
  auto s = fixture("ghost", "does-not-exist");
  std::string err = start_error({s});
  EXPECT_NE(err.find("plugin ghost: " + s.path + ": No such file or directory"), std::string::npos)
      << err;
  EXPECT_NE(err.find("set plugin.ghost.path"), std::string::npos) << err;
}

TEST_F(PluginHostTest, NotASharedObject) {
  std::string path = dir_ + "/text.so";
  std::ofstream(path) << "this is not ELF\n";
  PluginSettings s;
  s.name = "text";
  s.path = path;
  std::string err = start_error({s});
  EXPECT_NE(err.find("not a shared object (no ELF header)"), std::string::npos) << err;
}

TEST_F(PluginHostTest, ElfThatIsNotLoadable) {
  // An ELF file dlopen refuses (an executable of this build is not a
  // shared object that can be loaded twice into a process).
  std::string path = dir_ + "/truncated.so";
  {
    std::ifstream in(HELLO_C99_PATH, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(path, std::ios::binary) << bytes.substr(0, 64);  // header only
  }
  PluginSettings s;
  s.name = "trunc";
  s.path = path;
  std::string err = start_error({s});
  EXPECT_NE(err.find("cannot be loaded as a shared object"), std::string::npos) << err;
}

TEST_F(PluginHostTest, MissingEntrySymbol) {
  std::string err = start_error({fixture("noentry", "fixture-no-entry")});
  EXPECT_NE(err.find("does not export the symbol flotilla_plugin_entry"), std::string::npos) << err;
}

TEST_F(PluginHostTest, OtherAbiMajorIsRefusedWithBothVersions) {
  std::string err = start_error({fixture("future", "fixture-abi-2")});
  EXPECT_NE(err.find("(org.test.future 0.0.1) was built for plugin ABI 2.0 but this flotillad "
                     "speaks ABI 1.4"),
            std::string::npos)
      << err;
}

TEST_F(PluginHostTest, BadIdIsRefused) {
  std::string err = start_error({fixture("badid", "fixture-bad-id")});
  EXPECT_NE(err.find("is not a reverse-DNS name"), std::string::npos) << err;
}

TEST_F(PluginHostTest, DuplicateIdIsRefused) {
  std::string err =
      start_error({fixture("first", "fixture-good-a"), fixture("second", "fixture-good-a")});
  EXPECT_NE(err.find("plugin second"), std::string::npos) << err;
  EXPECT_NE(err.find("its id org.test.a is already loaded by plugin first"), std::string::npos)
      << err;
  EXPECT_TRUE(host().list().empty());
}

TEST_F(PluginHostTest, MissingRequiredInterface) {
  std::string err = start_error({fixture("needy", "fixture-needs-missing")});
  EXPECT_NE(err.find("requires interface test.nobody/1, which no configured plugin provides"),
            std::string::npos)
      << err;
}

TEST_F(PluginHostTest, StartOrderFollowsRequirementsNotConfigOrder) {
  ASSERT_EQ(start_error({fixture("b", "fixture-good-b"), fixture("a", "fixture-good-a")}), "");
  auto list = host().list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "a");
  EXPECT_EQ(list[1].name, "b");
  EXPECT_EQ(host().providers("test.b/1"), std::vector<std::string>{"b"});
}

TEST_F(PluginHostTest, CycleIsRefusedAndNamed) {
  std::string err = start_error({fixture("c", "fixture-cycle-c"), fixture("d", "fixture-cycle-d")});
  EXPECT_NE(err.find("plugins require each other in a cycle: c -> d -> c"), std::string::npos)
      << err;
}

TEST_F(PluginHostTest, InitFailureStopsStartAndUnwindsEarlierPlugins) {
  std::string err =
      start_error({fixture("a", "fixture-good-a"), fixture("broken", "fixture-init-fails")});
  EXPECT_NE(err.find("plugin broken (" + std::string(FIXTURE_DIR) +
                     "/fixture-init-fails.so) failed to initialise: fixture refuses to start: "
                     "disk on fire"),
            std::string::npos)
      << err;
  EXPECT_TRUE(host().list().empty());  // a was deinitialised again
}

// ABI 1.2: every plugin's check_config runs before any plugin starts, and
// all their problems come out together, each with file, line and key.
TEST_F(PluginHostTest, CheckConfigProblemsOfEveryPluginComeTogetherBeforeAnyStarts) {
  auto a = fixture("first", "fixture-check-a");
  a.key_lines = {{"colour", 21}, {"size", 22}};
  auto b = fixture("second", "fixture-check-b");
  b.key_lines = {{"colour", 31}};
  std::vector<std::string> problems;
  try {
    host().start({fixture("a", "fixture-good-a"), a, b});
    ADD_FAILURE() << "start succeeded";
  } catch (const flotilla::PluginConfigError &e) {
    problems = e.problems();
  }
  std::vector<std::string> want = {
      "config /etc/flotilla/test.toml line 21: plugin.first.colour: must be red or blue",
      "config /etc/flotilla/test.toml line 22: plugin.first.size: must be an integer",
      "config /etc/flotilla/test.toml line 31: plugin.second.colour: must be red or blue",
      // no line of its own: the table's
      "config /etc/flotilla/test.toml line 7: plugin.second.size: must be an integer"};
  EXPECT_EQ(problems, want);
  EXPECT_TRUE(host().list().empty());
  EXPECT_FALSE(fs::exists(dir_ + "/data/plugins/a"));  // nothing was initialised

  // --check-config also asks for what start-up would tolerate.
  try {
    host().check({a});
    ADD_FAILURE() << "check succeeded";
  } catch (const flotilla::PluginConfigError &e) {
    ASSERT_EQ(e.problems().size(), 3u);
    EXPECT_EQ(e.problems()[2],
              "config /etc/flotilla/test.toml line 7: plugin.first.extra: tolerated at start, "
              "reported by --check-config");
  }
  EXPECT_FALSE(fs::exists(dir_ + "/data/plugins/first"));
}

TEST_F(PluginHostTest, AnAbi11EntryWithoutCheckConfigStillLoads) {
  // Its entry ends before check_config; the slot after it is garbage.
  EXPECT_NO_THROW(host().check({fixture("old", "fixture-entry-1-1")}));
  EXPECT_EQ(start_error({fixture("old", "fixture-entry-1-1")}), "");
  ASSERT_EQ(host().list().size(), 1u);
  EXPECT_EQ(host().list()[0].abi_minor, 1u);
}

TEST_F(PluginHostTest, DisabledPluginIsNotLoaded) {
  auto s = fixture("broken", "fixture-init-fails");
  s.enabled = false;
  EXPECT_EQ(start_error({s}), "");
  EXPECT_TRUE(host().list().empty());
}

TEST_F(PluginHostTest, Sha256PinMatches) {
  PluginSettings s;
  s.name = "hello";
  s.path = hello_c99_path();
  s.sha256 = flotilla::sha256_file(hello_c99_path());
  EXPECT_EQ(start_error({s}), "");
  EXPECT_EQ(host().list().size(), 1u);
}

TEST_F(PluginHostTest, Sha256MismatchRefusesBeforeLoading) {
  PluginSettings s;
  s.name = "hello";
  s.path = hello_c99_path();
  s.sha256 = std::string(64, '0');
  std::string err = start_error({s});
  EXPECT_NE(err.find("SHA-256 is " + flotilla::sha256_file(hello_c99_path()) +
                     " but plugin.hello.sha256 in /etc/flotilla/test.toml pins " + s.sha256 +
                     "; refusing to load it"),
            std::string::npos)
      << err;
  EXPECT_TRUE(host().list().empty());
}

TEST_F(PluginHostTest, StopIsIdempotentAndInterfacesDisappear) {
  ASSERT_EQ(start_error({fixture("a", "fixture-good-a")}), "");
  void *self = nullptr;
  EXPECT_NE(host().find_interface("test.a/1", &self), nullptr);
  host().stop();
  host().stop();
  EXPECT_EQ(host().find_interface("test.a/1", &self), nullptr);
}

// ---- process_spawn, through the host table a plugin gets ------------------------------------

struct Exit {
  bool done = false;
  int64_t pid = 0, status = 0;
  int signal = 0;
};

class SpawnTest : public PluginHostTest {
 protected:
  // The host table, as the fixture plugin received it (its instance).
  const flotilla_host *table() {
    if (start_error({fixture("a", "fixture-good-a")}) != "") return nullptr;
    void *self = nullptr;
    host().find<int>("test.a/1", &self);
    return static_cast<const flotilla_host *>(self);
  }
  static void on_exit(void *user, int64_t pid, int64_t status, int sig) {
    auto *e = static_cast<Exit *>(user);
    *e = {true, pid, status, sig};
  }
  // Runs `sh -c script`; stdout and stderr to files; returns the exit.
  Exit run(const flotilla_host *h, const std::string &script, bool detached = false,
           const char *const *envp = nullptr, const char *cwd = nullptr, bool keep_session = false,
           uint32_t spec_size = sizeof(flotilla_process_spec)) {
    int out = ::open((dir_ + "/out").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = ::open((dir_ + "/err").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const char *argv[] = {"sh", "-c", script.c_str(), nullptr};
    flotilla_process_spec spec{};
    spec.struct_size = sizeof spec;
    spec.file = "sh";
    spec.argv = argv;
    spec.envp = envp;
    spec.cwd = cwd;
    spec.stdin_fd = -1;
    spec.stdout_fd = out;
    spec.stderr_fd = err;
    spec.detached = detached;
    spec.keep_session = keep_session;
    spec.struct_size = spec_size;
    Exit e;
    int64_t pid = 0;
    EXPECT_EQ(h->process_spawn(h->host_ctx, &spec, &SpawnTest::on_exit, &e, &pid), FLOTILLA_OK)
        << PluginHost::last_error();
    ::close(out);
    ::close(err);
    EXPECT_GT(pid, 0);
    EXPECT_TRUE(run_until([&] { return e.done; })) << "no exit reported for: " << script;
    EXPECT_EQ(e.pid, pid);
    return e;
  }
  std::string file(const std::string &name) {
    std::ifstream in(dir_ + "/" + name);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
};

TEST_F(SpawnTest, ExitCodesSignalsStdioEnvironmentAndDirectory) {
  const flotilla_host *h = table();
  ASSERT_NE(h, nullptr);
  const char *env[] = {"FOO=bar", "PATH=/usr/bin:/bin", nullptr};
  Exit e = run(h, "echo out; echo err >&2; pwd; echo \"$FOO\"; cat; exit 3", false, env,
               dir_.c_str());
  EXPECT_EQ(e.status, 3);
  EXPECT_EQ(e.signal, 0);
  // stdin -1 is /dev/null: cat sees end of file at once.
  EXPECT_EQ(file("out"), "out\n" + fs::canonical(dir_).string() + "\nbar\n");
  EXPECT_EQ(file("err"), "err\n");

  e = run(h, "kill -TERM $$");
  EXPECT_EQ(e.status, -1);
  EXPECT_EQ(e.signal, SIGTERM);
}

TEST_F(SpawnTest, SignalsAreAtTheirDefaultsAndDetachedChildrenHaveTheirOwnSession) {
  const flotilla_host *h = table();
  ASSERT_NE(h, nullptr);
  // What the daemon blocks or ignores, its children must not inherit.
  sigset_t usr1, old;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &usr1, &old), 0);
  struct sigaction ign {}, old_usr2 {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGUSR2, &ign, &old_usr2), 0);
  // The spawned process itself (exec, no fork: a shell may block signals
  // around its own forks) shows its session (field 6 of stat) and masks.
  const std::string script = "exec cat /proc/self/stat /proc/self/status";
  Exit attached = run(h, script);
  std::string a = file("out");
  Exit detached = run(h, script, true);
  std::string d = file("out");
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  sigaction(SIGUSR2, &old_usr2, nullptr);
  EXPECT_EQ(attached.status, 0);
  EXPECT_EQ(detached.status, 0);
  auto session = [](const std::string &stat) {
    // pid (comm) state ppid pgrp session ...
    std::istringstream in(stat.substr(stat.find(')') + 2));
    std::string state, ppid, pgrp, sid;
    in >> state >> ppid >> pgrp >> sid;
    return sid;
  };
  EXPECT_EQ(session(a), std::to_string(getsid(0)));
  EXPECT_EQ(session(d), std::to_string(detached.pid));
  auto mask = [](const std::string &out, const std::string &name) {
    size_t at = out.find(name + ":\t");
    return at == std::string::npos ? ~0ull : std::stoull(out.substr(at + name.size() + 2), nullptr, 16);
  };
  for (const std::string &out : {a, d}) {
    EXPECT_EQ(mask(out, "SigBlk"), 0u) << out;
    EXPECT_EQ(mask(out, "SigIgn") & (1ull << (SIGUSR2 - 1)), 0u) << out;
  }
}

// pid (comm) state ppid pgrp session ... -> {pgrp, session}
static std::pair<std::string, std::string> group_and_session(const std::string &stat) {
  std::istringstream in(stat.substr(stat.find(')') + 2));
  std::string state, ppid, pgrp, sid;
  in >> state >> ppid >> pgrp >> sid;
  return {pgrp, sid};
}

// ABI 1.4: detached + keep_session stays in the daemon's session and
// process group, so the child can call setsid() itself later (a process
// group leader could not). A caller built for 1.3, whose struct_size ends
// before the field, gets its own session whatever the memory after it says.
TEST_F(SpawnTest, DetachedWithKeepSessionStaysInTheDaemonsSessionUntilItLeaves) {
  const flotilla_host *h = table();
  ASSERT_NE(h, nullptr);
  const std::string self = std::to_string(getsid(0)), group = std::to_string(getpgrp());
  Exit kept = run(h, "exec cat /proc/self/stat", true, nullptr, nullptr, true);
  EXPECT_EQ(kept.status, 0);
  EXPECT_EQ(group_and_session(file("out")), std::make_pair(group, self)) << file("out");

  // It can leave: setsid(1) forks only for a process group leader, so the
  // session it makes is the spawned process's own.
  Exit left = run(h, "exec setsid cat /proc/self/stat", true, nullptr, nullptr, true);
  EXPECT_EQ(left.status, 0);
  const std::string own = std::to_string(left.pid);
  EXPECT_EQ(group_and_session(file("out")), std::make_pair(own, own)) << file("out");

  Exit old = run(h, "exec cat /proc/self/stat", true, nullptr, nullptr, true,
                 offsetof(flotilla_process_spec, keep_session));
  EXPECT_EQ(old.status, 0);
  EXPECT_EQ(group_and_session(file("out")).second, std::to_string(old.pid)) << file("out");

  // Without detached the field means nothing: the daemon's session, as ever.
  Exit attached = run(h, "exec cat /proc/self/stat", false, nullptr, nullptr, true);
  EXPECT_EQ(attached.status, 0);
  EXPECT_EQ(group_and_session(file("out")).second, self);
}

TEST_F(SpawnTest, AMissingProgramIsNotFound) {
  const flotilla_host *h = table();
  ASSERT_NE(h, nullptr);
  for (const char *prog : {"/nonexistent/flotilla-test-prog", "flotilla-no-such-program"}) {
    const char *argv[] = {prog, nullptr};
    flotilla_process_spec spec{};
    spec.struct_size = sizeof spec;
    spec.file = prog;
    spec.argv = argv;
    spec.stdin_fd = spec.stdout_fd = spec.stderr_fd = -1;
    int64_t pid = 0;
    EXPECT_EQ(h->process_spawn(h->host_ctx, &spec, nullptr, nullptr, &pid), FLOTILLA_E_NOT_FOUND)
        << prog;
    EXPECT_NE(PluginHost::last_error().find(prog), std::string::npos) << PluginHost::last_error();
  }
}

}  // namespace
