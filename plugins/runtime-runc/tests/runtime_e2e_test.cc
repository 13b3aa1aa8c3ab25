// End-to-end tests of runtime-runc: the real plugin loaded through
// flotilla::PluginHost runs real containers with runc and with crun.
//
// Needs root, overlayfs and the OCI runtimes; a missing piece makes a test
// report SKIPPED with the reason. Every test works under its own temporary
// directory, runtime root and cgroup parent, with container ids carrying a
// per-run prefix, and TearDown removes all of it even when the test failed,
// killing only the shims and containers its own files name, by pid.
#include <flotilla/flotilla.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "child_test.h"
#include "config.h"
#include "error.h"
#include "plugin_host.h"
#include "runtime_test_daemon.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using flotilla::PluginHost;
using flotilla::PluginSettings;

namespace {

constexpr uint64_t kGuardMs = 120000;  // against hangs only; never a timing assertion

std::string slurp(const fs::path &p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool in_path(const std::string &name) {
  std::string path = getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin";
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (!dir.empty() && access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  return false;
}

// The busybox OCI layout, built once per test process by the image
// engineer's tool.
std::string busybox_layout(std::string &why_not) {
  static std::string layout, error;
  static bool tried = false;
  if (!tried) {
    tried = true;
    if (access(MKIMAGE_BUSYBOX, X_OK) != 0) {
      error = std::string(MKIMAGE_BUSYBOX) + " is missing";
    } else if (access("/bin/busybox", X_OK) != 0) {
      error = "/bin/busybox is missing (apt-get install busybox-static)";
    } else {
      char tmpl[] = "/tmp/flotilla-rt-image-XXXXXX";
      if (!mkdtemp(tmpl)) {
        error = "mkdtemp failed";
      } else {
        std::string dir = std::string(tmpl) + "/layout";
        std::string cmd = std::string(MKIMAGE_BUSYBOX) + " " + dir + " >/dev/null 2>&1";
        if (std::system(cmd.c_str()) != 0)
          error = "mkimage-busybox failed";
        else
          layout = dir;
        std::atexit([] {
          if (!layout.empty()) fs::remove_all(fs::path(layout).parent_path());
        });
      }
    }
  }
  why_not = error;
  return layout;
}

// crun refuses a "hybrid" cgroup layout (v1 controllers with cgroup2 at
// /sys/fs/cgroup/unified) when cgroup2 has controllers of its own. On such
// a machine the crun tests run crun through a wrapper that hides the
// unified mount in a private mount namespace, which is exactly the
// "binary" = any OCI runtime CLI path the plugin supports.
bool crun_needs_hybrid_wrapper() {
  struct stat st {};
  if (stat("/sys/fs/cgroup/unified/cgroup.controllers", &st) != 0) return false;
  std::string controllers = slurp("/sys/fs/cgroup/unified/cgroup.controllers");
  return controllers.find_first_not_of(" \n") != std::string::npos;
}

std::vector<std::string> mountinfo_lines_under(const std::string &dir) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.find(dir) != std::string::npos) out.push_back(line);
  return out;
}

std::vector<std::string> cgroup_mounts() {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string a, b, c, root, point, field, type;
    f >> a >> b >> c >> root >> point;
    while (f >> field && field != "-") {
    }
    f >> type;
    if (type == "cgroup" || type == "cgroup2") out.push_back(point);
  }
  return out;
}

using flotilla::runc::testing::exec_cb;
using flotilla::runc::testing::ExecResult;
using flotilla::runc::testing::done_cb;
using flotilla::runc::testing::Result;
using flotilla::runc::testing::state_cb;
using flotilla::runc::testing::TestDaemon;

// "The daemon" (runtime_test_daemon.h), with the runtime's calls.
class Daemon : public TestDaemon {
 public:
  Daemon(const std::string &data_dir, const json &config)
      : TestDaemon(data_dir, config, kGuardMs) {}

  Result create(const std::string &id, const json &task) {
    std::string text = task.dump();
    return call(
        [&](Result *r) { return rt_->create(self_, id.c_str(), text.c_str(), state_cb, r); });
  }
  Result start(const std::string &id) {
    return call([&](Result *r) { return rt_->start(self_, id.c_str(), state_cb, r); });
  }
  Result state(const std::string &id) {
    return call([&](Result *r) { return rt_->state(self_, id.c_str(), state_cb, r); });
  }
  Result stop(const std::string &id, uint64_t timeout_ms) {
    return call([&](Result *r) { return rt_->stop(self_, id.c_str(), timeout_ms, state_cb, r); });
  }
  Result signal(const std::string &id, int signo) {
    return call([&](Result *r) { return rt_->signal(self_, id.c_str(), signo, done_cb, r); });
  }
  Result remove(const std::string &id) {
    return call([&](Result *r) { return rt_->remove(self_, id.c_str(), done_cb, r); });
  }
  Result list() {
    return call([&](Result *r) { return rt_->list(self_, state_cb, r); });
  }
  Result image_import(const std::string &path, const std::string &tag) {
    return call([&](Result *r) {
      return rt_->image_import(self_, path.c_str(), tag.c_str(), state_cb, r);
    });
  }
  Result image_remove(const std::string &ref) {
    return call([&](Result *r) { return rt_->image_remove(self_, ref.c_str(), done_cb, r); });
  }
  std::string log_path(const std::string &id, const char *stream) {
    char buf[4096];
    if (rt_->log_path(self_, id.c_str(), stream, buf, sizeof buf) != FLOTILLA_OK) return "";
    return buf;
  }

  // exec and its callback; cancel_after_ms > 0: exec_cancel then, and the
  // callback must not come.
  ExecResult exec(const std::string &id, const std::vector<std::string> &argv,
                  uint64_t timeout_ms, uint64_t output_limit = 0, uint64_t *exec_id = nullptr) {
    std::vector<const char *> a;
    for (const auto &x : argv) a.push_back(x.c_str());
    a.push_back(nullptr);
    flotilla_exec_spec spec{sizeof spec, a.data(), timeout_ms, output_limit};
    ExecResult r;
    uint64_t xid = 0;
    flotilla_status st = rt_->exec(self_, id.c_str(), &spec, exec_cb, &r, &xid);
    if (exec_id) *exec_id = xid;
    if (st != FLOTILLA_OK) {
      r.done = true;
      r.status = st;
      r.error = PluginHost::last_error();
      return r;
    }
    EXPECT_NE(xid, 0u);
    EXPECT_FALSE(r.done) << "a callback ran inside the call";
    EXPECT_TRUE(run_until([&] { return r.done; })) << "no exec callback within the guard time";
    return r;
  }
  // Starts an exec, cancels it after ms, and says whether its callback
  // stayed silent for another second.
  bool exec_cancelled_silently(const std::string &id, uint64_t ms) {
    const char *a[] = {"sleep", "30", nullptr};
    flotilla_exec_spec spec{sizeof spec, a, 20000, 0};
    auto r = std::make_unique<ExecResult>();
    uint64_t xid = 0;
    if (rt_->exec(self_, id.c_str(), &spec, exec_cb, r.get(), &xid) != FLOTILLA_OK) return false;
    run_until([] { return false; }, ms);
    rt_->exec_cancel(self_, xid);
    run_until([] { return false; }, 1000);
    return !r->done;
  }

  std::optional<json> exit_of(const std::string &id) {
    for (const json &e : exits_)
      if (e.value("id", "") == id) return e;
    return std::nullopt;
  }
  bool wait_exit(const std::string &id) {
    return run_until([&] { return exit_of(id).has_value(); });
  }
};

json busybox_task(const std::vector<std::string> &argv,
                  const std::string &image = "busybox:latest") {
  json task = {{"name", "main"},
               {"image", image},
               {"command", argv.at(0)},
               {"args", std::vector<std::string>(argv.begin() + 1, argv.end())},
               {"env", {{"FLOTILLA_TEST", "1"}}},
               {"kill_timeout_ms", 5000},
               {"kill_signal", "SIGTERM"},
               {"network", "none"},
               {"resources", {{"cpu", 100}, {"memory", 64}, {"memory_max", 64}, {"pids", 64}}},
               {"logs", {{"max_files", 2}, {"max_file_size", 1}}}};
  return {{"version", 1}, {"alloc_id", "alloc1"}, {"job", "e2e"}, {"task", task}};
}

class RuntimeE2E : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root to mount overlays and run runc";
    if (slurp("/proc/filesystems").find("overlay") == std::string::npos)
      GTEST_SKIP() << "SKIPPED: the kernel has no overlay filesystem";
    runtime_ = GetParam();
    if (!in_path(runtime_)) GTEST_SKIP() << "SKIPPED: " << runtime_ << " is not installed";
    std::string why;
    layout_ = busybox_layout(why);
    if (layout_.empty()) GTEST_SKIP() << "SKIPPED: no busybox image: " << why;

    static int counter = 0;
    prefix_ = "rte2e" + std::to_string(getpid()) + "x" + std::to_string(++counter);
    char tmpl[] = "/tmp/flotilla-rt-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    data_dir_ = dir_ + "/data";
    plugin_dir_ = data_dir_ + "/plugins/runtime-runc";
    root_ = dir_ + "/oci-root";
    cgroup_parent_ = "flotilla-test-" + prefix_;
    binary_ = runtime_;
    if (runtime_ == "crun" && crun_needs_hybrid_wrapper()) {
      binary_ = dir_ + "/crun-hybrid";
      std::ofstream w(binary_);
      w << "#!/bin/sh\n"
           "# crun, with the unified cgroup2 mount hidden (see the test's comment)\n"
           "exec unshare -m --propagation private sh -c "
           "'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"' crun \"$@\"\n";
      w.close();
      chmod(binary_.c_str(), 0755);
    }
    config_ = {{"binary", binary_},
               {"root", root_},
               {"shim", RUNTIME_SHIM_PATH},
               {"cgroup_parent", cgroup_parent_}};
  }

  void TearDown() override {
    daemon_.reset();
    if (dir_.empty()) return;
    // Whatever a failed test left: containers and shims named by our own
    // files, killed by pid; runtime state; mounts; cgroups; files.
    fs::path containers = plugin_dir_ + "/containers";
    std::error_code ec;
    if (fs::exists(containers, ec)) {
      for (const auto &e : fs::directory_iterator(containers, ec)) {
        json st = json::parse(slurp(e.path() / "shim-state.json"), nullptr, false);
        if (st.is_object()) {
          if (int pid = st.value("pid", 0); pid > 0 && st.value("status", "") != "stopped")
            kill(pid, SIGKILL);
          if (int shim = st.value("shim_pid", 0); shim > 0 && st.value("status", "") != "stopped")
            kill(shim, SIGKILL);
        }
        std::string id = e.path().filename().string();
        std::string cmd =
            binary_ + " --root " + root_ + " delete --force " + id + " >/dev/null 2>&1";
        if (std::system(cmd.c_str()) != 0) {
        }
        umount2((e.path() / "bundle" / "rootfs").c_str(), MNT_DETACH);
      }
    }
    for (const std::string &m : cgroup_mounts()) {
      fs::path parent = fs::path(m) / cgroup_parent_;
      if (fs::exists(parent, ec)) {
        for (const auto &child : fs::directory_iterator(parent, ec))
          if (child.is_directory()) rmdir(child.path().c_str());
        rmdir(parent.c_str());
      }
    }
    for (const std::string &line : mountinfo_lines_under(dir_)) {
      std::istringstream f(line);
      std::string a, b, c, root, point;
      f >> a >> b >> c >> root >> point;
      umount2(point.c_str(), MNT_DETACH);
    }
    fs::remove_all(dir_, ec);
  }

  Daemon &daemon() {
    if (!daemon_) daemon_ = std::make_unique<Daemon>(data_dir_, config_);
    return *daemon_;
  }
  void restart_daemon() {
    daemon_.reset();
    daemon();
  }

  void import_busybox() {
    Result r = daemon().image_import(layout_, "busybox:latest");
    ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
    json rec = json::parse(r.text);
    EXPECT_EQ(rec["name"], "busybox:latest");
  }

  std::string id(const std::string &name) { return prefix_ + "-" + name; }
  fs::path container_dir(const std::string &id) { return plugin_dir_ + "/containers/" + id; }
  json shim_state(const std::string &id) {
    return json::parse(slurp(container_dir(id) / "shim-state.json"), nullptr, false);
  }

  // Nothing of the container is left: no mount, no cgroup, no OCI runtime
  // state, no files.
  void expect_nothing_left(const std::string &cid) {
    for (const std::string &line : mountinfo_lines_under(cid))
      ADD_FAILURE() << "mount left: " << line;
    for (const std::string &m : cgroup_mounts())
      EXPECT_FALSE(fs::exists(fs::path(m) / cgroup_parent_ / cid)) << "cgroup left in " << m;
    EXPECT_FALSE(fs::exists(fs::path(root_) / cid)) << "runtime state left";
    EXPECT_FALSE(fs::exists(container_dir(cid))) << "container directory left";
  }

  // Live processes whose command line mentions `text` (zombies have none).
  static std::vector<int> processes_naming(const std::string &text) {
    std::vector<int> out;
    std::error_code ec;
    for (const auto &e : fs::directory_iterator("/proc", ec)) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::string cmdline = slurp(e.path() / "cmdline");
      std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
      if (cmdline.find(text) != std::string::npos) out.push_back(std::stoi(name));
    }
    return out;
  }

  json wait_state(const std::string &cid, const std::string &status) {
    json last;
    daemon().run_until([&] {
      Result r = daemon().state(cid);
      if (r.status != FLOTILLA_OK) return false;
      last = json::parse(r.text);
      return last.value("status", "") == status;
    });
    return last;
  }

  std::string runtime_, binary_, layout_, prefix_, dir_, data_dir_, plugin_dir_, root_,
      cgroup_parent_;
  json config_;
  std::unique_ptr<Daemon> daemon_;
};

TEST_P(RuntimeE2E, RunsATaskLogsItsOutputAndReportsTheExit) {
  import_busybox();
  const std::string cid = id("hello");
  Result c = daemon().create(
      cid, busybox_task(
               {"sh", "-c",
                "echo hello-out; echo hello-err >&2; echo $FLOTILLA_TEST; "
                "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; exit 0"}));
  ASSERT_EQ(c.status, FLOTILLA_OK) << c.error;
  EXPECT_EQ(json::parse(c.text)["status"], "created");
  EXPECT_GT(json::parse(c.text)["pid"].get<int>(), 0);
  EXPECT_TRUE(fs::exists(fs::path(root_) / cid)) << "the OCI runtime's state is under our root";

  Result s = daemon().start(cid);
  ASSERT_EQ(s.status, FLOTILLA_OK) << s.error;
  ASSERT_TRUE(daemon().wait_exit(cid));
  json ev = *daemon().exit_of(cid);
  EXPECT_EQ(ev["exit_code"], 0);
  EXPECT_EQ(ev["signal"], 0);
  EXPECT_FALSE(ev["finished_at"].get<std::string>().empty());

  json st = json::parse(daemon().state(cid).text);
  EXPECT_EQ(st["status"], "stopped");
  EXPECT_EQ(st["exit_code"], 0);
  EXPECT_EQ(st["alloc_id"], "alloc1");

  std::string out = slurp(daemon().log_path(cid, "stdout"));
  EXPECT_NE(out.find("hello-out\n1\n"), std::string::npos) << out;
  // The task's pids limit, read inside the container's cgroup namespace.
  EXPECT_NE(out.find("\n64\n"), std::string::npos) << out;
  EXPECT_NE(slurp(daemon().log_path(cid, "stderr")).find("hello-err"), std::string::npos);

  json list = json::parse(daemon().list().text);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], cid);

  // The image is in use until the container is removed.
  EXPECT_EQ(daemon().image_remove("busybox:latest").status, FLOTILLA_E_CONFLICT);
  Result rm = daemon().remove(cid);
  ASSERT_EQ(rm.status, FLOTILLA_OK) << rm.error;
  expect_nothing_left(cid);
  EXPECT_EQ(json::parse(daemon().list().text).size(), 0u);
  EXPECT_EQ(daemon().state(cid).status, FLOTILLA_E_NOT_FOUND);
  EXPECT_EQ(daemon().image_remove("busybox:latest").status, FLOTILLA_OK);
}

TEST_P(RuntimeE2E, AFailingCommandReportsItsExitCode) {
  import_busybox();
  const std::string cid = id("three");
  ASSERT_EQ(daemon().create(cid, busybox_task({"sh", "-c", "exit 3"})).status, FLOTILLA_OK);
  ASSERT_EQ(daemon().start(cid).status, FLOTILLA_OK);
  ASSERT_TRUE(daemon().wait_exit(cid));
  EXPECT_EQ((*daemon().exit_of(cid))["exit_code"], 3);
  json st = json::parse(daemon().state(cid).text);
  EXPECT_EQ(st["exit_code"], 3);
  EXPECT_EQ(st["signal"], 0);
  ASSERT_EQ(daemon().remove(cid).status, FLOTILLA_OK);
  expect_nothing_left(cid);
}

// ABI 1.3 exec: a command in the running container with its exit code and
// its output (both streams, capped), killed at its timeout, cancelled
// without a callback; a stopped or unknown container is refused at once.
TEST_P(RuntimeE2E, ExecRunsACommandInTheRunningContainer) {
  import_busybox();
  const std::string cid = id("exec");
  ASSERT_EQ(daemon().create(cid, busybox_task({"sleep", "60"})).status, FLOTILLA_OK);
  ASSERT_EQ(daemon().start(cid).status, FLOTILLA_OK);

  ExecResult ok = daemon().exec(cid, {"sh", "-c", "echo out; echo err >&2; echo $FLOTILLA_TEST; exit 3"},
                                5000);
  ASSERT_EQ(ok.status, FLOTILLA_OK) << ok.error;
  EXPECT_EQ(ok.exit_code, 3);
  EXPECT_FALSE(ok.timed_out);
  EXPECT_NE(ok.output.find("out\n"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("err\n"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("1\n"), std::string::npos) << "the container's environment: " << ok.output;

  ExecResult big = daemon().exec(cid, {"sh", "-c", "head -c 200000 /dev/zero; exit 0"}, 5000, 100);
  ASSERT_EQ(big.status, FLOTILLA_OK) << big.error;
  EXPECT_EQ(big.exit_code, 0) << "the command is never blocked by a full pipe";
  EXPECT_EQ(big.output.size(), 100u);
  EXPECT_TRUE(big.truncated);

  auto t0 = std::chrono::steady_clock::now();
  ExecResult slow = daemon().exec(cid, {"sleep", "30"}, 500);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(slow.status, FLOTILLA_OK) << slow.error;
  EXPECT_TRUE(slow.timed_out);
  EXPECT_EQ(slow.exit_code, -1);
  EXPECT_EQ(slow.term_signal, SIGKILL);
  EXPECT_LT(took, std::chrono::seconds(5));
  // The killed command is gone from the container.
  ExecResult ps = daemon().exec(cid, {"ps"}, 5000);
  EXPECT_EQ(ps.output.find("sleep 30"), std::string::npos) << ps.output;

  EXPECT_TRUE(daemon().exec_cancelled_silently(cid, 300));

  ExecResult missing = daemon().exec(cid, {"/no/such/program"}, 5000);
  ASSERT_EQ(missing.status, FLOTILLA_OK) << missing.error;
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_FALSE(missing.output.empty()) << "the runtime says why";

  EXPECT_EQ(daemon().exec(id("nobody"), {"true"}, 1000).status, FLOTILLA_E_NOT_FOUND);
  ASSERT_EQ(daemon().stop(cid, 2000).status, FLOTILLA_OK);
  ExecResult stopped = daemon().exec(cid, {"true"}, 1000);
  EXPECT_EQ(stopped.status, FLOTILLA_E_CONFLICT);
  EXPECT_NE(stopped.error.find("not running"), std::string::npos) << stopped.error;
  ASSERT_EQ(daemon().remove(cid).status, FLOTILLA_OK);
  expect_nothing_left(cid);
}

// "start": true runs the process in the create call (`run --detach`): the
// answer says running, start() is refused as for any running container, and
// an exit that comes at once is still reported with its code and output.
TEST_P(RuntimeE2E, CreateWithStartRunsTheProcessInOneCall) {
  import_busybox();
  const std::string cid = id("started");
  json task = busybox_task({"sh", "-c", "echo started-out; exec sleep 1000"});
  task["start"] = true;
  Result c = daemon().create(cid, task);
  ASSERT_EQ(c.status, FLOTILLA_OK) << c.error;
  json st = json::parse(c.text);
  EXPECT_EQ(st["status"], "running");
  EXPECT_GT(st["pid"].get<int>(), 0);
  EXPECT_FALSE(st["started_at"].get<std::string>().empty());
  EXPECT_EQ(daemon().start(cid).status, FLOTILLA_E_CONFLICT);
  EXPECT_EQ(json::parse(daemon().state(cid).text)["status"], "running");
  // It runs without a start(): its output arrives (waited for, up to 30 s).
  std::string out;
  for (int i = 0; i < 300 && out.find("started-out") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    out = slurp(daemon().log_path(cid, "stdout"));
  }
  EXPECT_NE(out.find("started-out"), std::string::npos) << out;
  ASSERT_EQ(daemon().signal(cid, SIGKILL).status, FLOTILLA_OK);
  ASSERT_TRUE(daemon().wait_exit(cid));
  EXPECT_EQ((*daemon().exit_of(cid))["signal"], SIGKILL);
  ASSERT_EQ(daemon().remove(cid).status, FLOTILLA_OK);
  expect_nothing_left(cid);

  const std::string quick = id("quick");
  json q = busybox_task({"sh", "-c", "echo quick-out; exit 7"});
  q["start"] = true;
  ASSERT_EQ(daemon().create(quick, q).status, FLOTILLA_OK);
  ASSERT_TRUE(daemon().wait_exit(quick));
  EXPECT_EQ((*daemon().exit_of(quick))["exit_code"], 7);
  EXPECT_NE(slurp(daemon().log_path(quick, "stdout")).find("quick-out"), std::string::npos);
  ASSERT_EQ(daemon().remove(quick).status, FLOTILLA_OK);
  expect_nothing_left(quick);
}

TEST_P(RuntimeE2E, ABadCommandPathIsAClearError) {
  import_busybox();
  const std::string cid = id("badpath");
  Result c = daemon().create(cid, busybox_task({"/no/such/program"}));
  ASSERT_NE(c.status, FLOTILLA_OK);
  EXPECT_NE(c.error.find("/no/such/program"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find(cid), std::string::npos) << c.error;
  // A failed create takes everything back.
  EXPECT_EQ(json::parse(daemon().list().text).size(), 0u);
  expect_nothing_left(cid);
}

TEST_P(RuntimeE2E, AMissingImageIsNotFoundAndSaysHowToImport) {
  const std::string cid = id("noimage");
  Result c = daemon().create(cid, busybox_task({"sh"}, "nosuch/image:1.0"));
  ASSERT_EQ(c.status, FLOTILLA_E_NOT_FOUND) << c.error;
  EXPECT_NE(c.error.find("nosuch/image:1.0"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find("flotilla image import"), std::string::npos) << c.error;
  expect_nothing_left(cid);
  // The shim, started while the bundle was prepared, was never released
  // and has left.
  EXPECT_TRUE(daemon().run_until([&] { return processes_naming(container_dir(cid)).empty(); }))
      << "a shim of " << cid << " is still running";
}

TEST_P(RuntimeE2E, AShimThatDiesBeforeReportingFailsTheCreateAndLeavesNothing) {
  // A "shim" that exits at once, before or after the bundle is ready (the
  // plugin must cope with both).
  const std::string fake = dir_ + "/dying-shim";
  {
    std::ofstream w(fake);
    w << "#!/bin/sh\nexit 0\n";
  }
  chmod(fake.c_str(), 0755);
  config_["shim"] = fake;
  import_busybox();
  const std::string cid = id("noshim");
  Result c = daemon().create(cid, busybox_task({"sleep", "100"}));
  ASSERT_NE(c.status, FLOTILLA_OK);
  EXPECT_NE(c.error.find("monitor"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find("exited before"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find(cid), std::string::npos) << c.error;
  EXPECT_EQ(json::parse(daemon().list().text).size(), 0u);
  expect_nothing_left(cid);
}

TEST_P(RuntimeE2E, StopEscalatesToSigkillWhenSigtermIsIgnored) {
  import_busybox();
  const std::string cid = id("stubborn");
  // sleep is the container's pid 1: SIGTERM without a handler is ignored.
  ASSERT_EQ(daemon().create(cid, busybox_task({"sleep", "1000"})).status, FLOTILLA_OK);
  ASSERT_EQ(daemon().start(cid).status, FLOTILLA_OK);
  EXPECT_EQ(json::parse(daemon().state(cid).text)["status"], "running");
  Result r = daemon().stop(cid, 300);
  ASSERT_EQ(r.status, FLOTILLA_OK) << r.error;
  json st = json::parse(r.text);
  EXPECT_EQ(st["status"], "stopped");
  EXPECT_EQ(st["signal"], SIGKILL);
  EXPECT_EQ(st["exit_code"], 128 + SIGKILL);
  ASSERT_EQ(daemon().remove(cid).status, FLOTILLA_OK);
  expect_nothing_left(cid);
}

TEST_P(RuntimeE2E, SignalReachesTheContainerAndRemoveStopsARunningOne) {
  import_busybox();
  const std::string a = id("trap"), b = id("running");
  ASSERT_EQ(daemon()
                .create(a, busybox_task({"sh", "-c",
                                         "trap 'echo got-usr1; exit 9' USR1; echo ready; "
                                         "while :; do sleep 0.1; done"}))
                .status,
            FLOTILLA_OK);
  ASSERT_EQ(daemon().start(a).status, FLOTILLA_OK);
  ASSERT_TRUE(daemon().run_until(
      [&] { return slurp(daemon().log_path(a, "stdout")).find("ready") != std::string::npos; }));
  ASSERT_EQ(daemon().signal(a, SIGUSR1).status, FLOTILLA_OK);
  ASSERT_TRUE(daemon().wait_exit(a));
  EXPECT_EQ((*daemon().exit_of(a))["exit_code"], 9);
  EXPECT_NE(slurp(daemon().log_path(a, "stdout")).find("got-usr1"), std::string::npos);

  ASSERT_EQ(daemon().create(b, busybox_task({"sleep", "1000"})).status, FLOTILLA_OK);
  ASSERT_EQ(daemon().start(b).status, FLOTILLA_OK);
  ASSERT_EQ(daemon().remove(b).status, FLOTILLA_OK);
  ASSERT_EQ(daemon().remove(a).status, FLOTILLA_OK);
  expect_nothing_left(a);
  expect_nothing_left(b);
  EXPECT_EQ(daemon().remove(a).status, FLOTILLA_E_NOT_FOUND);
}

TEST_P(RuntimeE2E, ContainersOutliveTheDaemonAndExitsWhileDownAreReported) {
  import_busybox();
  const std::string ticker = id("ticker"), quitter = id("quitter");
  ASSERT_EQ(daemon()
                .create(ticker, busybox_task({"sh", "-c",
                                              "i=0; while :; do echo tick $i; i=$((i+1)); "
                                              "sleep 0.1; done"}))
                .status,
            FLOTILLA_OK);
  ASSERT_EQ(daemon().start(ticker).status, FLOTILLA_OK);
  ASSERT_EQ(daemon()
                .create(quitter, busybox_task({"sh", "-c",
                                               "trap 'exit 7' USR1; echo waiting; "
                                               "while :; do sleep 0.1; done"}))
                .status,
            FLOTILLA_OK);
  ASSERT_EQ(daemon().start(quitter).status, FLOTILLA_OK);
  const std::string ticker_log = daemon().log_path(ticker, "stdout");
  ASSERT_TRUE(daemon().run_until([&] {
    return slurp(daemon().log_path(quitter, "stdout")).find("waiting") != std::string::npos;
  }));
  const int ticker_pid = json::parse(daemon().state(ticker).text)["pid"];

  // The daemon goes away without touching its containers.
  daemon_->shutdown();
  daemon_.reset();
  ASSERT_EQ(kill(ticker_pid, 0), 0) << "the container died with the daemon";
  // One container exits while nobody watches; its shim records the exit.
  json qs = shim_state(quitter);
  ASSERT_EQ(qs["status"], "created");
  ASSERT_EQ(kill(qs["pid"].get<int>(), SIGUSR1), 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGuardMs);
  while (shim_state(quitter).value("status", "") != "stopped" &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(shim_state(quitter)["status"], "stopped");
  const auto size_while_down = fs::file_size(ticker_log);

  // A new daemon finds both.
  daemon();
  json list = json::parse(daemon().list().text);
  ASSERT_EQ(list.size(), 2u) << list.dump();
  json t = json::parse(daemon().state(ticker).text);
  EXPECT_EQ(t["status"], "running");
  EXPECT_EQ(t["pid"], ticker_pid);
  json q = json::parse(daemon().state(quitter).text);
  EXPECT_EQ(q["status"], "stopped");
  EXPECT_EQ(q["exit_code"], 7);
  // The exit that happened while down is published once the daemon is back.
  ASSERT_TRUE(daemon().wait_exit(quitter));
  EXPECT_EQ((*daemon().exit_of(quitter))["exit_code"], 7);
  // The running one's log kept growing, and it is still supervised.
  ASSERT_TRUE(daemon().run_until([&] { return fs::file_size(ticker_log) > size_while_down; }));
  Result stop = daemon().stop(ticker, 200);
  ASSERT_EQ(stop.status, FLOTILLA_OK) << stop.error;
  EXPECT_EQ(json::parse(stop.text)["status"], "stopped");
  ASSERT_TRUE(daemon().wait_exit(ticker));

  // Restarting once more reports the exits again as stopped but does not
  // publish them a second time.
  restart_daemon();
  EXPECT_EQ(json::parse(daemon().state(quitter).text)["exit_code"], 7);
  daemon().run_until([] { return false; }, 300);
  EXPECT_FALSE(daemon().exit_of(quitter).has_value());

  ASSERT_EQ(daemon().remove(ticker).status, FLOTILLA_OK);
  ASSERT_EQ(daemon().remove(quitter).status, FLOTILLA_OK);
  expect_nothing_left(ticker);
  expect_nothing_left(quitter);
}

TEST_P(RuntimeE2E, ContainersSurviveKill9OfTheDaemonProcess) {
  import_busybox();
  daemon_.reset();  // the child process is the daemon now
  const std::string cid = id("orphan");
  std::string ready = dir_ + "/child-ready";
  // The child is a fresh test process (exec of ourselves in child mode);
  // everything it needs is prepared before fork.
  pid_t child = flotilla::testing::spawn_test_child(
      "RuntimeChild.DaemonStandIn",
      {"RUNTIME_E2E_CHILD_DIR=" + data_dir_, "RUNTIME_E2E_CHILD_CONFIG=" + config_.dump(),
       "RUNTIME_E2E_CHILD_ID=" + cid, "RUNTIME_E2E_CHILD_READY=" + ready});
  ASSERT_GE(child, 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGuardMs);
  int status = 0;
  bool exited = false;
  while (!fs::exists(ready) && std::chrono::steady_clock::now() < deadline) {
    if (waitpid(child, &status, WNOHANG) == child) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!exited) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
  }
  ASSERT_TRUE(fs::exists(ready)) << "the child daemon did not start its container";
  ASSERT_EQ(slurp(ready), "ok") << slurp(ready);

  json st = json::parse(daemon().state(cid).text);
  EXPECT_EQ(st["status"], "running") << st.dump();
  ASSERT_TRUE(daemon().run_until(
      [&] { return slurp(daemon().log_path(cid, "stdout")).find("alive") != std::string::npos; }));
  Result stop = daemon().stop(cid, 200);
  ASSERT_EQ(stop.status, FLOTILLA_OK) << stop.error;
  EXPECT_EQ(json::parse(stop.text)["status"], "stopped");
  ASSERT_EQ(daemon().remove(cid).status, FLOTILLA_OK);
  expect_nothing_left(cid);
}

// {pgrp, session} of a process: fields 5 and 6 of /proc/<pid>/stat (after
// the parenthesised command name, which may hold spaces).
std::pair<long, long> group_and_session(const std::string &stat) {
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return {-1, -1};
  std::istringstream in(stat.substr(close + 2));
  std::string state;
  long ppid = 0, pgrp = -1, sid = -1;
  in >> state >> ppid >> pgrp >> sid;
  return {pgrp, sid};
}

// ABI 1.4 keep_session: the OCI runtime starts in the daemon's session (with
// kernel.sched_autogroup_enabled, a session of its own is a CPU autogroup of
// its own, which made `runc run` 10-30% slower), in a process group of its
// own; the shim and the container end up in sessions of their own, and go
// on running when the daemon stops. The runtime is wrapped by a script that
// records its own /proc stat line for create and run.
TEST_P(RuntimeE2E, TheRuntimeRunsInTheDaemonsSessionAndTheShimAndContainerLeaveIt) {
  const std::string record = dir_ + "/runtime-stat";
  const std::string wrapper = dir_ + "/session-recorder";
  std::ofstream(wrapper) << "#!/bin/sh\n"
                         << "case \" $* \" in *\" create \"*|*\" run \"*)\n"
                         << "  cat /proc/$$/stat >> " << record << " ;;\n"
                         << "esac\n"
                         << "exec " << binary_ << " \"$@\"\n";
  chmod(wrapper.c_str(), 0755);
  config_["binary"] = wrapper;
  import_busybox();
  const long daemon_session = getsid(0), daemon_group = getpgrp();

  const std::string started = id("sess-run"), created = id("sess-create");
  json task = busybox_task({"sh", "-c", "exec sleep 1000"});
  task["start"] = true;
  Result c = daemon().create(started, task);
  ASSERT_EQ(c.status, FLOTILLA_OK) << c.error;
  c = daemon().create(created, busybox_task({"sh", "-c", "exec sleep 1000"}));
  ASSERT_EQ(c.status, FLOTILLA_OK) << c.error;
  ASSERT_EQ(daemon().start(created).status, FLOTILLA_OK);

  std::ifstream in(record);
  std::string line;
  int runtimes = 0;
  while (std::getline(in, line)) {
    ++runtimes;
    auto [group, session] = group_and_session(line);
    EXPECT_EQ(session, daemon_session) << "the runtime ran outside the daemon's session: " << line;
    EXPECT_NE(group, daemon_group) << "the runtime is in the daemon's process group: " << line;
  }
  EXPECT_EQ(runtimes, 2) << slurp(record);

  std::map<std::string, int> pids;
  for (const std::string &cid : {started, created}) {
    json st = shim_state(cid);
    const int shim = st.value("shim_pid", 0), pid = st.value("pid", 0);
    ASSERT_GT(shim, 0) << st.dump();
    ASSERT_GT(pid, 0) << st.dump();
    pids[cid] = pid;
    auto [shim_group, shim_session] =
        group_and_session(slurp("/proc/" + std::to_string(shim) + "/stat"));
    EXPECT_EQ(shim_session, shim) << cid << ": the shim leads no session of its own";
    EXPECT_EQ(shim_group, shim) << cid;
    EXPECT_NE(shim_session, daemon_session) << cid;
    auto [group, session] = group_and_session(slurp("/proc/" + std::to_string(pid) + "/stat"));
    EXPECT_NE(session, daemon_session) << cid << ": the container is in the daemon's session";
    EXPECT_NE(session, -1) << cid << ": no /proc/" << pid;
    EXPECT_NE(group, daemon_group) << cid;
  }

  // The daemon stops; both containers run on and are found again.
  daemon_->shutdown();
  daemon_.reset();
  for (const auto &[cid, pid] : pids) EXPECT_EQ(kill(pid, 0), 0) << cid << " died with the daemon";
  for (const auto &[cid, pid] : pids) {
    json st = json::parse(daemon().state(cid).text);
    EXPECT_EQ(st["status"], "running") << cid;
    EXPECT_EQ(st["pid"], pid) << cid;
    ASSERT_EQ(daemon().remove(cid).status, FLOTILLA_OK) << cid;
    expect_nothing_left(cid);
  }
}

INSTANTIATE_TEST_SUITE_P(Runtimes, RuntimeE2E, ::testing::Values("runc", "crun"),
                         [](const auto &info) { return info.param; });

// Not a test of its own: the stand-in daemon of
// ContainersSurviveKill9OfTheDaemonProcess, run in a child process that the
// parent kills with SIGKILL once its container runs.
TEST(RuntimeChild, DaemonStandIn) {
  const char *dir = getenv("RUNTIME_E2E_CHILD_DIR");
  if (!dir) GTEST_SKIP() << "SKIPPED: only runs as the child of the kill -9 test";
  std::string id = getenv("RUNTIME_E2E_CHILD_ID");
  std::string ready = getenv("RUNTIME_E2E_CHILD_READY");
  auto daemon = std::make_unique<Daemon>(dir, json::parse(getenv("RUNTIME_E2E_CHILD_CONFIG")));
  Result c =
      daemon->create(id, busybox_task({"sh", "-c", "while :; do echo alive; sleep 0.1; done"}));
  Result s = c.status == FLOTILLA_OK ? daemon->start(id) : c;
  {
    std::ofstream out(ready + ".tmp");
    out << (s.status == FLOTILLA_OK ? "ok" : "failed: " + s.error);
  }
  fs::rename(ready + ".tmp", ready);
  for (;;) pause();  // until the parent's SIGKILL
}

}  // namespace
