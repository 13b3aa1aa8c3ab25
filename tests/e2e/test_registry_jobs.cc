// Jobs whose images come from a registry, as a CI pipeline ships them: the
// real daemon with the scheduler and runtime-runc plugins driving real
// runc, and a real docker-registry (Debian's, the CNCF distribution
// registry) the test starts on 127.0.0.1. The images are made by
// tools/mkimage-busybox plus a layer made with umoci, and pushed with
// `skopeo copy`, as docs/ci-cd.md says a pipeline does. Covered:
//
//   - a job naming 127.0.0.1:PORT/team/app:1 pulls, runs, and `flotilla
//     alloc logs` shows what the image's own file says;
//   - :2 pushed and `flotilla job run` of the new version: the rolling
//     update pulls it and replaces both allocations; the monitor's lines
//     and its exit code 0 are checked;
//   - :3 deployed while the registry is down: the pull fails with the
//     registry's address in the task's message, the task is retried under
//     [restart], the registry comes back, the deploy finishes (exit 0);
//   - a tag the registry does not have, with no restarts left: exit 5 and
//     the registry's MANIFEST_UNKNOWN;
//   - `flotilla image pull` itself, not on a terminal: plain progress lines
//     and exit 0; `--json`: one JSON object per line; an unknown tag and a
//     bad reference: exit 1 with the registry's (or the parser's) words;
//     `flotilla image ls`: the ORIGIN column of a pulled and an imported
//     image;
//   - an image pushed as Docker schema 2 (skopeo --format v2s2): the
//     registry serves Docker's manifest, the pull takes it and the job runs;
//   - a whiteout made by umoci repack: the container does not see the file;
//   - a multi-platform OCI index and the same as a Docker manifest list
//     (skopeo copy --all [--format v2s2]): the host's manifest (uname) is
//     pulled and runs;
//   - credentials: a wrong and a right password, neither in the daemon's
//     log, the CLI's output nor the API's answers;
//   - image GC through the daemon: by age, by the size bound, config errors;
//   - with the discovery plugin: the deploy monitor waits for a passing
//     check and fails (exit 5, the check's output) on a critical one.
//
// Everything is under one scratch dir per run (the daemon's) and the
// cgroup flotilla-e2e-reg-<pid>; the registry is killed by its pid.
#include <gtest/gtest.h>
#include <pty.h>
#include <spawn.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "alloc_status.h"
#include "container_daemon.h"
#include "daemon_harness.h"
#include "host_arch.h"
#include "registry_test_support.h"

// Built without the discovery plugin: the test that needs it skips.
#ifndef DISCOVERY_PLUGIN_PATH
#define DISCOVERY_PLUGIN_PATH ""
#define FLOTILLA_NO_DISCOVERY_PLUGIN 1
#endif

using nlohmann::json;
namespace e2e = flotilla::e2e;
namespace fs = std::filesystem;

namespace {

std::string cli() {
  return e2e::build_dir() + "/tools/flotilla/flotilla";
}

using flotilla::testing::foreign_arch;
using flotilla::testing::host_arch;

class RegistryJobs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: running containers needs root";
    for (const char *tool :
         {"/usr/sbin/runc", "/usr/bin/docker-registry", "/usr/bin/skopeo", "/usr/bin/umoci"})
      if (access(tool, X_OK) != 0)
        GTEST_SKIP() << "SKIPPED: " << tool << " is not installed (tools/debian-packages.txt)";
    d_ = std::make_unique<e2e::Daemon>();
    fs::create_directories(d_->dir() + "/registry");
    registry_.name = "registry";
    registry_.port = regtest::free_port();
    // A second registry on the same storage with htpasswd basic auth, for
    // the credentials test; only that test starts it.
    auth_registry_.name = "auth-registry";
    auth_registry_.port = regtest::free_port();
    d_->write_config(e2e::container_plugins_config(*d_, cgroup_parent()) + runtime_extra_ +
                     "\n[plugin.runtime-runc.registry]\ninsecure = [\"" + registry_.host() +
                     "\", \"" + auth_registry_.host() + "\"]\nauth_file = \"" + auth_file() +
                     "\"\nprogress_interval_ms = 50\nlow_speed_timeout_s = 5\n" +
                     discovery_config());
    regtest::spit(auth_file(), R"({"auths": {}})");  // read at each pull
    ASSERT_TRUE(d_->start()) << d_->log();
    ASSERT_TRUE(registry_.start(d_->dir() + "/registry", d_->dir() + "/registry/storage", ""))
        << regtest::slurp(registry_.log);
    // The base image, as set-up builds the quickstart's.
    auto mk = e2e::run({e2e::source_dir() + "/tools/mkimage-busybox", base(), "--tag", "app"});
    ASSERT_EQ(mk.exit_code, 0) << mk.output;
  }

  void TearDown() override {
    registry_.stop();
    auth_registry_.stop();
    if (!d_) return;
    e2e::remove_everything(*d_, cgroup_parent());
    d_.reset();
  }

  // The discovery plugin, for the jobs whose services the deploy monitor
  // waits on: DNS on a port of its own on loopback, no VIPs, nothing bound
  // on a bridge. Only in a test that asks for it (with_discovery_).
  std::string discovery_config() const {
    if (!with_discovery_) return "";
    return std::string("\n[plugin.discovery]\npath = \"") + DISCOVERY_PLUGIN_PATH +
           "\"\nlisten = [\"127.0.0.1:" + std::to_string(regtest::free_port()) +
           "\"]\nforward = false\ncontainer_dns = false\nlease_ttl = 5\n";
  }

  static std::string cgroup_parent() { return "flotilla-e2e-reg-" + std::to_string(getpid()); }
  std::string base() const { return d_->dir() + "/base"; }
  std::string auth_file() const { return d_->dir() + "/registry-auth.json"; }
  std::string ref(const std::string &tag) const { return registry_.host() + "/team/app:" + tag; }

  e2e::RunResult flotilla(std::vector<std::string> args) {
    args.insert(args.begin(), {cli(), "--socket", d_->socket()});
    return e2e::run(args);
  }

  // A copy of the base layout at `layout` with one more layer made by umoci:
  // `umoci unpack`, then `change` edits the rootfs, then `umoci repack`
  // (the new layer is the difference; a removed file becomes a whiteout).
  // (Not `umoci insert`: Debian's umoci 0.4.7 writes that layer's tar
  // without its end and padding, which tar and libarchive refuse.)
  void umoci_layer(const std::string &from, const std::string &layout,
                   const std::function<void(const std::string &rootfs)> &change) {
    std::string bundle = layout + ".bundle";
    std::error_code ec;
    fs::copy(from, layout, fs::copy_options::recursive, ec);
    ASSERT_FALSE(ec) << ec.message();
    auto un = e2e::run({"/usr/bin/umoci", "unpack", "--image", layout + ":app", bundle});
    ASSERT_EQ(un.exit_code, 0) << un.output;
    change(bundle + "/rootfs");
    auto re = e2e::run({"/usr/bin/umoci", "repack", "--image", layout + ":app", bundle});
    ASSERT_EQ(re.exit_code, 0) << re.output;
    fs::remove_all(bundle, ec);
  }
  void skopeo_push(const std::string &layout_ref, const std::string &dest,
                   std::vector<std::string> flags = {}) {
    std::vector<std::string> argv = {"/usr/bin/skopeo", "copy", "--quiet",
                                     "--dest-tls-verify=false"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.push_back("oci:" + layout_ref);
    argv.push_back("docker://" + dest);
    auto cp = e2e::run(argv);
    ASSERT_EQ(cp.exit_code, 0) << cp.output;
  }

  // Version `tag` of the app: the base image plus a layer with
  // /etc/app-version, pushed with skopeo as a pipeline would.
  void push(const std::string &tag) {
    std::string layout = d_->dir() + "/app-" + tag;
    umoci_layer(base(), layout, [&](const std::string &rootfs) {
      std::ofstream(rootfs + "/etc/app-version") << "app version " << tag << "\n";
    });
    skopeo_push(layout + ":app", ref(tag));
  }

  std::string job_file(const std::string &name, const std::string &image, int count,
                       int restart_attempts, const std::string &task_extra = "",
                       const std::string &script = "cat /etc/app-version") {
    std::string file = d_->dir() + "/" + name + ".toml";
    std::ofstream(file, std::ios::trunc) << "name = \"" << name << "\"\ncount = " << count << R"(
[update]
max_parallel = 1
min_healthy_time = "0s"
healthy_deadline = "1m"

[restart]
attempts = )" << restart_attempts << R"(
delay = "1s"
jitter = 0.0
interval = "1h"

[[task]]
name = "app"
image = ")" << image << R"("
command = "/bin/sh"
args = ["-c", "trap 'exit 0' TERM; )" << script
                                         << R"(; while :; do sleep 1 & wait $!; done"]
kill_timeout = "2s"
)" << task_extra;
    return file;
  }

  json view(const std::string &job) {
    return json::parse(d_->get("/v1/jobs/" + job).body, nullptr, false);
  }
  // The allocations of the job that should run, with their status.
  std::vector<json> running_allocs(const std::string &job) {
    std::vector<json> out;
    json j = view(job);
    if (!j.is_object() || !j.contains("allocs")) return out;
    for (const json &a : j["allocs"])
      if (a.value("desired_status", "") == "run") out.push_back(a);
    return out;
  }
  // alloc logs, waited for until `want` is in it (the shim copies output
  // as it comes; a guard of 10 s).
  std::string logs_with(const std::string &alloc, const std::string &want) {
    e2e::RunResult r;
    for (int i = 0; i < 100; ++i) {
      r = flotilla({"alloc", "logs", alloc});
      if (r.exit_code == 0 && r.output.find(want) != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return r.output;
  }

  // The CLI with stdout and stderr on a terminal (a pty): what it wrote.
  e2e::RunResult flotilla_on_tty(std::vector<std::string> args) {
    args.insert(args.begin(), {cli(), "--socket", d_->socket()});
    e2e::RunResult r;
    int master = -1, slave = -1;
    if (openpty(&master, &slave, nullptr, nullptr, nullptr) != 0) {
      ADD_FAILURE() << "openpty: " << std::strerror(errno);
      return r;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, slave, 1);
    posix_spawn_file_actions_adddup2(&fa, slave, 2);
    posix_spawn_file_actions_addclose(&fa, master);
    posix_spawn_file_actions_addclose(&fa, slave);
    std::vector<char *> argv;
    for (auto &a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(slave);
    if (rc != 0) {
      ::close(master);
      ADD_FAILURE() << "cannot run " << argv[0] << ": " << std::strerror(rc);
      return r;
    }
    // Until the child's end of the terminal is closed (EIO).
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(master, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      r.output.append(buf, static_cast<size_t>(n));
    }
    ::close(master);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
  }

  // Each line of `--json` output parsed; a line that is not JSON fails.
  static std::vector<json> json_lines(const std::string &output) {
    std::vector<json> out;
    std::istringstream in(output);
    for (std::string line; std::getline(in, line);) {
      json j = json::parse(line, nullptr, false);
      EXPECT_TRUE(j.is_object()) << "not a JSON object: " << line << "\nin:\n" << output;
      out.push_back(j);
    }
    return out;
  }

  std::unique_ptr<e2e::Daemon> d_;
  regtest::Registry registry_, auth_registry_;
  bool with_discovery_ = false;
  std::string runtime_extra_;  // more [plugin.runtime-runc] keys, set before SetUp
};

// The deploy monitor with discovery on the node: it waits until the
// services the node registered pass their checks, not just until the
// allocations run.
class RegistryJobsWithDiscovery : public RegistryJobs {
 protected:
  void SetUp() override {
#ifdef FLOTILLA_NO_DISCOVERY_PLUGIN
    GTEST_SKIP() << "SKIPPED: built without the discovery plugin (-Dplugin-discovery)";
#endif
    with_discovery_ = true;
    RegistryJobs::SetUp();
  }
};

TEST_F(RegistryJobs, PullRunRollingUpdateAndARegistryThatWasDown) {
  // 1. Version 1: pulled by the node, run, its output in alloc logs.
  push("1");
  auto v1 = flotilla({"job", "run", "--timeout", "90s", job_file("regapp", ref("1"), 2, 10)});
  ASSERT_EQ(v1.exit_code, 0) << v1.output << d_->log();
  EXPECT_NE(v1.output.find("Job \"regapp\" submitted (version 1"), std::string::npos) << v1.output;
  EXPECT_NE(v1.output.find("Deployment of job \"regapp\" version 1 done: 2 of 2 allocations "
                           "running"),
            std::string::npos)
      << v1.output;
  std::vector<json> first = running_allocs("regapp");
  ASSERT_EQ(first.size(), 2u) << view("regapp").dump();
  for (const json &a : first) {
    EXPECT_EQ(e2e::alloc_status(a), "running") << a.dump();
    EXPECT_NE(logs_with(a.value("id", ""), "app version 1").find("app version 1"),
              std::string::npos);
  }
  // The node's store says where the image came from.
  json images = json::parse(d_->get("/v1/images").body, nullptr, false);
  EXPECT_NE(images.dump().find(ref("1")), std::string::npos) << images.dump();
  EXPECT_NE(images.dump().find(registry_.host()), std::string::npos) << images.dump();

  // 2. Version 2 pushed and deployed: a rolling update that pulls it.
  push("2");
  auto v2 = flotilla({"job", "run", "--timeout", "90s", job_file("regapp", ref("2"), 2, 10)});
  ASSERT_EQ(v2.exit_code, 0) << v2.output << d_->log();
  EXPECT_NE(v2.output.find("Job \"regapp\" updated to version 2"), std::string::npos) << v2.output;
  EXPECT_NE(v2.output.find("(version 1): stopping"), std::string::npos) << v2.output;
  EXPECT_NE(v2.output.find("Deployment of job \"regapp\" version 2 done: 2 of 2 allocations "
                           "running"),
            std::string::npos)
      << v2.output;
  std::vector<json> second = running_allocs("regapp");
  ASSERT_EQ(second.size(), 2u) << view("regapp").dump();
  for (const json &a : second) {
    EXPECT_EQ(a.value("job_version", 0), 2) << a.dump();
    for (const json &old : first) EXPECT_NE(a["id"], old["id"]) << "not replaced";
    EXPECT_NE(logs_with(a.value("id", ""), "app version 2").find("app version 2"),
              std::string::npos);
  }

  // 3. Version 3 deployed while the registry is down: the pull fails, is
  // retried under [restart], and the deploy goes through once it is back.
  push("3");
  registry_.stop();
  std::string file3 = job_file("regapp", ref("3"), 2, 10);
  auto deploy = std::async(std::launch::async, [&] {
    return flotilla({"job", "run", "--timeout", "90s", file3});
  });
  std::string failed_pull;
  for (int i = 0; i < 300 && failed_pull.empty(); ++i) {  // a 30 s guard
    for (const json &a : running_allocs("regapp")) {
      if (a.value("job_version", 0) != 3 || !a.contains("status") || !a["status"].is_object() ||
          !a["status"].contains("tasks"))
        continue;
      json t = a["status"]["tasks"].value("app", json::object());
      std::string msg = t.value("message", "");
      if (msg.find("registry " + registry_.host()) != std::string::npos) failed_pull = msg;
    }
    if (failed_pull.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(failed_pull.empty()) << "no failed pull seen: " << view("regapp").dump();
  ASSERT_TRUE(registry_.restart()) << regtest::slurp(registry_.log);
  auto v3 = deploy.get();
  ASSERT_EQ(v3.exit_code, 0) << v3.output << d_->log();
  EXPECT_NE(v3.output.find("restarting — pull " + ref("3")), std::string::npos) << v3.output;
  EXPECT_NE(v3.output.find("Deployment of job \"regapp\" version 3 done: 2 of 2 allocations "
                           "running"),
            std::string::npos)
      << v3.output;
  for (const json &a : running_allocs("regapp")) {
    EXPECT_EQ(a.value("job_version", 0), 3) << a.dump();
    EXPECT_NE(logs_with(a.value("id", ""), "app version 3").find("app version 3"),
              std::string::npos);
  }

  // 4. A tag the registry does not have, and no restarts: the deploy
  // fails with exit 5 and the registry's own words.
  auto missing =
      flotilla({"job", "run", "--timeout", "60s", job_file("regmissing", ref("nope"), 1, 0)});
  EXPECT_EQ(missing.exit_code, 5) << missing.output;
  EXPECT_NE(missing.output.find("MANIFEST_UNKNOWN"), std::string::npos) << missing.output;
}

// `flotilla image pull` as a CI log sees it (stdout is a file, not a tty),
// and `flotilla image ls` saying where each image came from.
TEST_F(RegistryJobs, ImagePullCliPlainLinesJsonErrorsAndTheOriginColumn) {
  push("1");
  push("2");
  // Plain lines: each phase once, one line per blob when it is done, the
  // result; no terminal control sequences.
  auto plain = flotilla({"image", "pull", ref("1")});
  ASSERT_EQ(plain.exit_code, 0) << plain.output << d_->log();
  EXPECT_NE(plain.output.find("downloading " + ref("1") + "\n"), std::string::npos) << plain.output;
  EXPECT_NE(plain.output.find("unpacking " + ref("1") + "\n"), std::string::npos) << plain.output;
  EXPECT_NE(plain.output.find("  config "), std::string::npos) << plain.output;
  EXPECT_NE(plain.output.find(" done\n"), std::string::npos) << plain.output;
  EXPECT_NE(plain.output.find("Pulled " + ref("1") + " ("), std::string::npos) << plain.output;
  EXPECT_EQ(plain.output.find('\033'), std::string::npos) << "escape codes off a terminal";
  // Each phase line once, however many progress reports came.
  EXPECT_EQ(plain.output.find("downloading " + ref("1")),
            plain.output.rfind("downloading " + ref("1")))
      << plain.output;
  // On a terminal: one bar per blob, redrawn in place (here every blob is
  // present, so every bar is full).
  auto tty = flotilla_on_tty({"image", "pull", ref("1")});
  ASSERT_EQ(tty.exit_code, 0) << tty.output;
  EXPECT_NE(tty.output.find("\033[2K"), std::string::npos) << tty.output;
  EXPECT_NE(tty.output.find("[==============================]"), std::string::npos) << tty.output;
  EXPECT_NE(tty.output.find("Pulled " + ref("1")), std::string::npos) << tty.output;
  // Present: if_not_present asks nothing.
  auto present = flotilla({"image", "pull", "--policy", "if_not_present", ref("1")});
  ASSERT_EQ(present.exit_code, 0) << present.output;
  EXPECT_NE(present.output.find("Present: " + ref("1")), std::string::npos) << present.output;

  // --json: every line a JSON object, progress first, the record last.
  auto js = flotilla({"--json", "image", "pull", ref("2")});
  ASSERT_EQ(js.exit_code, 0) << js.output;
  std::vector<json> lines = json_lines(js.output);
  ASSERT_GE(lines.size(), 2u) << js.output;
  EXPECT_TRUE(lines.front().contains("progress")) << js.output;
  ASSERT_TRUE(lines.back().contains("image")) << js.output;
  EXPECT_EQ(lines.back()["image"]["name"], ref("2"));
  EXPECT_TRUE(lines.back()["image"]["pulled"].get<bool>());
  EXPECT_EQ(lines.back()["image"]["origin"]["registry"], registry_.host());

  // An unknown tag: exit 1, the registry's code; --json: the error object.
  auto unknown = flotilla({"image", "pull", ref("nope")});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.output;
  EXPECT_NE(unknown.output.find("MANIFEST_UNKNOWN"), std::string::npos) << unknown.output;
  auto unknown_js = flotilla({"--json", "image", "pull", ref("nope")});
  EXPECT_EQ(unknown_js.exit_code, 1) << unknown_js.output;
  std::vector<json> err_lines = json_lines(unknown_js.output);
  ASSERT_FALSE(err_lines.empty()) << unknown_js.output;
  const json &err = err_lines.back();
  EXPECT_EQ(err.value("code", ""), "not_found") << unknown_js.output;
  EXPECT_NE(err.value("error", "").find("MANIFEST_UNKNOWN"), std::string::npos)
      << unknown_js.output;
  // A bad reference: refused before any request, exit 1, saying why.
  auto bad = flotilla({"image", "pull", "Team/App"});
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("image reference"), std::string::npos) << bad.output;

  // ORIGIN: registry/repository for a pulled image, "import" for one
  // imported from a layout.
  auto imp = flotilla({"image", "import", base(), "--tag", "busybox:app"});
  ASSERT_EQ(imp.exit_code, 0) << imp.output;
  auto ls = flotilla({"image", "ls"});
  ASSERT_EQ(ls.exit_code, 0) << ls.output;
  std::istringstream rows(ls.output);
  std::string header, pulled_row, imported_row;
  std::getline(rows, header);
  for (std::string row; std::getline(rows, row);) {
    if (row.rfind(ref("1") + " ", 0) == 0) pulled_row = row;
    if (row.rfind("busybox:app ", 0) == 0) imported_row = row;
  }
  ASSERT_NE(header.find("ORIGIN"), std::string::npos) << ls.output;
  ASSERT_FALSE(pulled_row.empty()) << ls.output;
  ASSERT_FALSE(imported_row.empty()) << ls.output;
  // The last column (ORIGIN) of each row.
  auto last_cell = [](const std::string &row) {
    std::string r = row.substr(0, row.find_last_not_of(' ') + 1);
    return r.substr(r.find_last_of(' ') + 1);
  };
  EXPECT_EQ(last_cell(pulled_row), registry_.host() + "/team/app") << ls.output;
  EXPECT_EQ(last_cell(imported_row), "import") << ls.output;
}

// The Docker half of the Accept header: an image pushed as Docker schema 2
// (skopeo --format v2s2, as `docker push` makes it) pulls, and runs.
TEST_F(RegistryJobs, ADockerSchema2ImagePullsAndRuns) {
  push("1");
  const std::string layout = d_->dir() + "/app-1";
  auto cp = e2e::run({"/usr/bin/skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                      "--format", "v2s2", "oci:" + layout + ":app", "docker://" + ref("docker")});
  ASSERT_EQ(cp.exit_code, 0) << cp.output;
  // What the registry serves is Docker's manifest, not OCI's.
  auto raw = e2e::run({"/usr/bin/skopeo", "inspect", "--raw", "--tls-verify=false",
                       "docker://" + ref("docker")});
  ASSERT_EQ(raw.exit_code, 0) << raw.output;
  json manifest = json::parse(raw.output, nullptr, false);
  ASSERT_TRUE(manifest.is_object()) << raw.output;
  ASSERT_EQ(manifest.value("mediaType", ""),
            "application/vnd.docker.distribution.manifest.v2+json")
      << raw.output;

  auto js = flotilla({"--json", "image", "pull", ref("docker")});
  ASSERT_EQ(js.exit_code, 0) << js.output << d_->log();
  std::vector<json> lines = json_lines(js.output);
  ASSERT_FALSE(lines.empty()) << js.output;
  ASSERT_TRUE(lines.back().contains("image")) << js.output;
  EXPECT_TRUE(lines.back()["image"]["pulled"].get<bool>()) << js.output;

  auto run =
      flotilla({"job", "run", "--timeout", "90s", job_file("docker", ref("docker"), 1, 0)});
  ASSERT_EQ(run.exit_code, 0) << run.output << d_->log();
  std::vector<json> allocs = running_allocs("docker");
  ASSERT_EQ(allocs.size(), 1u) << view("docker").dump();
  EXPECT_NE(logs_with(allocs[0].value("id", ""), "app version 1").find("app version 1"),
            std::string::npos);
}

// Issue 13: "each allocation reaching running, or healthy once discovery
// exists". An exec check that passes: the monitor shows the service
// passing and exits 0 once it does; one that fails: exit 5 with the
// check's output, once it is past failures_before_critical.
TEST_F(RegistryJobsWithDiscovery, TheMonitorWaitsForHealthyServicesAndFailsOnACriticalOne) {
  push("1");
  auto service = [](const std::string &file) {
    return R"(
[[task.service]]
name = "regweb"
port = 8080

  [[task.service.check]]
  type = "exec"
  command = "/bin/cat"
  args = [")" +
           file + R"("]
  interval = "500ms"
  timeout = "400ms"
  failures_before_critical = 2
)";
  };
  auto ok = flotilla({"job", "run", "--timeout", "90s",
                      job_file("reghealthy", ref("1"), 1, 0, service("/etc/app-version"))});
  ASSERT_EQ(ok.exit_code, 0) << ok.output << d_->log();
  EXPECT_NE(ok.output.find("app: service regweb passing"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("done: 1 of 1 allocation running and healthy"), std::string::npos)
      << ok.output;
  // It said so only once the registry did: the record passes now.
  std::vector<json> allocs = running_allocs("reghealthy");
  ASSERT_EQ(allocs.size(), 1u) << view("reghealthy").dump();
  ASSERT_EQ(allocs[0]["services"].size(), 1u) << allocs[0].dump();
  EXPECT_EQ(allocs[0]["services"][0]["health"], "passing") << allocs[0].dump();
  EXPECT_EQ(allocs[0]["status"]["tasks"]["app"]["services"], json::array({"regweb"}))
      << allocs[0].dump();

  // A check that fails: the allocation runs, but the deploy fails.
  auto bad = flotilla({"job", "run", "--timeout", "90s",
                       job_file("regsick", ref("1"), 1, 0, service("/etc/no-such-file"))});
  EXPECT_EQ(bad.exit_code, 5) << bad.output << d_->log();
  EXPECT_NE(bad.output.find("is unhealthy: task app: service regweb is critical"),
            std::string::npos)
      << bad.output;
  EXPECT_NE(bad.output.find("/etc/no-such-file"), std::string::npos)
      << "the check's output is the reason: " << bad.output;
  EXPECT_EQ(bad.output.find("and healthy"), std::string::npos) << bad.output;
}

// Issue 13: "a two-layer image with a whiteout", made by umoci and pushed
// with skopeo. Layer 1 is tools/mkimage-busybox's; layer 2 is what `umoci
// repack` wrote after /linuxrc was removed from the unpacked rootfs (and
// /etc/app-version added): a `.wh.linuxrc` entry. The container must not
// see /linuxrc.
TEST_F(RegistryJobs, AWhiteoutMadeByUmociDeletesTheFileInTheContainer) {
  const std::string layout = d_->dir() + "/whiteout";
  umoci_layer(base(), layout, [&](const std::string &rootfs) {
    ASSERT_TRUE(fs::is_symlink(rootfs + "/linuxrc")) << "the base image has no /linuxrc";
    fs::remove(rootfs + "/linuxrc");
    std::ofstream(rootfs + "/etc/app-version") << "app version whiteout\n";
  });
  // The layer umoci made holds the whiteout.
  json index = json::parse(regtest::slurp(layout + "/index.json"));
  std::string mdigest = index["manifests"][0]["digest"];
  json manifest = json::parse(regtest::slurp(layout + "/blobs/sha256/" + mdigest.substr(7)));
  ASSERT_EQ(manifest["layers"].size(), 2u) << manifest.dump();
  std::string top = manifest["layers"][1]["digest"];
  auto list = e2e::run({"/usr/bin/tar", "-tzf", layout + "/blobs/sha256/" + top.substr(7)});
  ASSERT_EQ(list.exit_code, 0) << list.output;
  ASSERT_NE(list.output.find(".wh.linuxrc"), std::string::npos) << list.output;
  skopeo_push(layout + ":app", ref("whiteout"));

  auto run = flotilla({"job", "run", "--timeout", "90s",
                       job_file("regwhiteout", ref("whiteout"), 1, 0, "",
                                "if [ -e /linuxrc ] || [ -L /linuxrc ]; then echo linuxrc present; "
                                "else echo linuxrc gone; fi; cat /etc/app-version")});
  ASSERT_EQ(run.exit_code, 0) << run.output << d_->log();
  std::vector<json> allocs = running_allocs("regwhiteout");
  ASSERT_EQ(allocs.size(), 1u) << view("regwhiteout").dump();
  std::string logs = logs_with(allocs[0].value("id", ""), "app version whiteout");
  EXPECT_NE(logs.find("app version whiteout"), std::string::npos) << logs;
  EXPECT_NE(logs.find("linuxrc gone"), std::string::npos) << logs;
  EXPECT_EQ(logs.find("linuxrc present"), std::string::npos) << logs;
}

// Issue 13: a multi-platform index, and the same pushed in Docker's format
// (a manifest list), each resolved to the host's platform (from uname, so
// this holds on arm64 as on amd64). What made what: both images are
// tools/mkimage-busybox's base plus a layer by `umoci repack` saying which
// it is; `umoci config --architecture` gives the other one a foreign
// architecture; the test writes the OCI index of the two (what `docker
// buildx` or `manifest-tool` would make); `skopeo copy --all` pushes it as
// OCI, and `skopeo copy --all --format v2s2` as a Docker manifest list.
TEST_F(RegistryJobs, AnIndexAndADockerManifestListResolveToTheHostPlatform) {
  const std::string host = host_arch(), other = foreign_arch();
  const std::string mine = d_->dir() + "/multi-host", theirs = d_->dir() + "/multi-other",
                    multi = d_->dir() + "/multi";
  umoci_layer(base(), mine, [&](const std::string &rootfs) {
    std::ofstream(rootfs + "/etc/app-version") << "app version " << host << "\n";
  });
  umoci_layer(base(), theirs, [&](const std::string &rootfs) {
    std::ofstream(rootfs + "/etc/app-version") << "app version " << other << "\n";
  });
  auto cfg = e2e::run({"/usr/bin/umoci", "config", "--image", theirs + ":app", "--architecture",
                       other, "--tag", "app"});
  ASSERT_EQ(cfg.exit_code, 0) << cfg.output;
  std::error_code ec;
  fs::copy(mine, multi, fs::copy_options::recursive, ec);
  ASSERT_FALSE(ec) << ec.message();
  fs::copy(theirs + "/blobs/sha256", multi + "/blobs/sha256",
           fs::copy_options::recursive | fs::copy_options::skip_existing, ec);
  ASSERT_FALSE(ec) << ec.message();
  auto entry = [](const std::string &layout, const std::string &arch) {
    json d = json::parse(regtest::slurp(layout + "/index.json"))["manifests"][0];
    d.erase("annotations");
    d["platform"] = {{"architecture", arch}, {"os", "linux"}};
    return d;
  };
  // The foreign one first: taking the first entry would be wrong.
  std::string index_text = json{{"schemaVersion", 2},
                                {"mediaType", "application/vnd.oci.image.index.v1+json"},
                                {"manifests", {entry(theirs, other), entry(mine, host)}}}
                               .dump();
  auto sha = e2e::run({"/bin/sh", "-c", "printf '%s' '" + index_text + "' | sha256sum"});
  ASSERT_EQ(sha.exit_code, 0) << sha.output;
  std::string hex = sha.output.substr(0, 64);
  regtest::spit(multi + "/blobs/sha256/" + hex, index_text);
  regtest::spit(multi + "/index.json",
                json{{"schemaVersion", 2},
                     {"manifests",
                      {{{"mediaType", "application/vnd.oci.image.index.v1+json"},
                        {"digest", "sha256:" + hex},
                        {"size", index_text.size()},
                        {"annotations", {{"org.opencontainers.image.ref.name", "multi"}}}}}}}
                    .dump());
  const std::string oci_ref = registry_.host() + "/team/multi:oci",
                    docker_ref = registry_.host() + "/team/multi:docker";
  skopeo_push(multi + ":multi", oci_ref, {"--all"});
  skopeo_push(multi + ":multi", docker_ref, {"--all", "--format", "v2s2"});

  for (const auto &[r, media_type] : std::vector<std::pair<std::string, std::string>>{
           {oci_ref, "application/vnd.oci.image.index.v1+json"},
           {docker_ref, "application/vnd.docker.distribution.manifest.list.v2+json"}}) {
    SCOPED_TRACE(r);
    // What the registry serves, and which of its entries is the host's.
    auto raw =
        e2e::run({"/usr/bin/skopeo", "inspect", "--raw", "--tls-verify=false", "docker://" + r});
    ASSERT_EQ(raw.exit_code, 0) << raw.output;
    json list = json::parse(raw.output, nullptr, false);
    ASSERT_TRUE(list.is_object()) << raw.output;
    ASSERT_EQ(list.value("mediaType", ""), media_type) << raw.output;
    ASSERT_EQ(list["manifests"].size(), 2u) << raw.output;
    std::string want;
    for (const json &m : list["manifests"])
      if (m["platform"]["architecture"] == host) want = m["digest"];
    ASSERT_FALSE(want.empty()) << raw.output;

    auto js = flotilla({"--json", "image", "pull", r});
    ASSERT_EQ(js.exit_code, 0) << js.output << d_->log();
    std::vector<json> lines = json_lines(js.output);
    ASSERT_FALSE(lines.empty()) << js.output;
    ASSERT_TRUE(lines.back().contains("image")) << js.output;
    const json &rec = lines.back()["image"];
    EXPECT_EQ(rec.value("platform", ""), "linux/" + host) << rec.dump();
    EXPECT_EQ(rec.value("digest", ""), want) << "not the host's manifest: " << rec.dump();
    EXPECT_FALSE(rec.value("index_digest", "").empty()) << rec.dump();
  }

  // And it runs: the host's image, by what its own layer says.
  auto run = flotilla({"job", "run", "--timeout", "90s", job_file("regmulti", docker_ref, 1, 0)});
  ASSERT_EQ(run.exit_code, 0) << run.output << d_->log();
  std::vector<json> allocs = running_allocs("regmulti");
  ASSERT_EQ(allocs.size(), 1u) << view("regmulti").dump();
  std::string want_line = "app version " + host;
  EXPECT_NE(logs_with(allocs[0].value("id", ""), want_line).find(want_line), std::string::npos);
}

// Issue 13: "credentials ... never logged". A registry with htpasswd basic
// auth (the same storage): a pull with the wrong password, then with the
// right one, by `flotilla image pull` and by a job. Neither password, nor
// its base64 form, appears in the daemon's whole log (at debug level), the
// CLI's output or the API's answers.
TEST_F(RegistryJobs, CredentialsAreNeverLoggedNorInTheApiOrTheCli) {
  push("1");
  const std::string tag = std::to_string(getpid());
  const std::string right = "right-" + tag + "-Pw", wrong = "wrong-" + tag + "-Pw";
  const std::string htpasswd = d_->dir() + "/registry/htpasswd";
  std::string line = regtest::htpasswd_line("ci", right);
  ASSERT_FALSE(line.empty()) << "libcrypt cannot make bcrypt hashes";
  regtest::spit(htpasswd, line);
  ASSERT_TRUE(auth_registry_.start(
      d_->dir() + "/registry", d_->dir() + "/registry/storage",
      "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: " + htpasswd + "\n"))
      << regtest::slurp(auth_registry_.log);
  const std::string aref = auth_registry_.host() + "/team/app:1";
  std::vector<std::string> seen;  // everything the CLI printed and the API answered

  regtest::spit(
      auth_file(),
      json{{"auths", {{auth_registry_.host(), {{"auth", regtest::b64("ci:" + wrong, false)}}}}}}
          .dump());
  auto refused = flotilla({"image", "pull", aref});
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find("HTTP 401"), std::string::npos) << refused.output;
  seen.push_back(refused.output);
  auto refused_js = flotilla({"--json", "image", "pull", aref});
  EXPECT_EQ(refused_js.exit_code, 1) << refused_js.output;
  seen.push_back(refused_js.output);
  auto job_refused =
      flotilla({"job", "run", "--timeout", "60s", job_file("regauthbad", aref, 1, 0)});
  EXPECT_EQ(job_refused.exit_code, 5) << job_refused.output;
  EXPECT_NE(job_refused.output.find("UNAUTHORIZED"), std::string::npos) << job_refused.output;
  seen.push_back(job_refused.output);
  seen.push_back(d_->get("/v1/jobs/regauthbad").body);

  regtest::spit(
      auth_file(),
      json{{"auths", {{auth_registry_.host(), {{"username", "ci"}, {"password", right}}}}}}.dump());
  auto pulled = flotilla({"image", "pull", aref});
  EXPECT_EQ(pulled.exit_code, 0) << pulled.output << d_->log();
  seen.push_back(pulled.output);
  auto job_ok = flotilla({"job", "run", "--timeout", "90s", job_file("regauthok", aref, 1, 0)});
  EXPECT_EQ(job_ok.exit_code, 0) << job_ok.output << d_->log();
  seen.push_back(job_ok.output);
  seen.push_back(d_->get("/v1/jobs/regauthok").body);
  seen.push_back(d_->get("/v1/images").body);
  seen.push_back(d_->get("/v1/allocs").body);

  const std::string log = d_->log();
  ASSERT_NE(log.find(auth_registry_.host()), std::string::npos)
      << "the daemon's log does not mention the pulls at all:\n"
      << log;
  for (const std::string &secret :
       {right, wrong, regtest::b64("ci:" + right, false), regtest::b64("ci:" + wrong, false)}) {
    EXPECT_EQ(log.find(secret), std::string::npos) << "in the daemon's log: " << secret;
    for (const std::string &text : seen)
      EXPECT_EQ(text.find(secret), std::string::npos) << secret << " in: " << text;
  }
}

// Image GC through the daemon: [plugin.runtime-runc] image_unused_after and
// image_max_size_mb (docs/config.md says why they are the plugin's keys and
// not [gc]'s), the plugin's timer and its check after each pull.
class RegistryJobsImageGc : public RegistryJobs {
 protected:
  // Version `tag` with a 3 MiB layer that does not compress: an image of
  // about 4 MiB (the busybox base is about 1 MiB).
  void push_big(const std::string &tag) {
    std::string layout = d_->dir() + "/big-" + tag;
    umoci_layer(base(), layout, [&](const std::string &rootfs) {
      std::mt19937 gen(static_cast<unsigned>(std::hash<std::string>{}(tag)));
      std::string bytes(3 << 20, '\0');
      for (auto &c : bytes) c = static_cast<char>(gen());
      regtest::spit(rootfs + "/etc/filler", bytes);
      std::ofstream(rootfs + "/etc/app-version") << "app version " << tag << "\n";
    });
    skopeo_push(layout + ":app", ref(tag));
  }
  // The image records by name.
  std::map<std::string, json> images() {
    std::map<std::string, json> out;
    json all = json::parse(d_->get("/v1/images").body, nullptr, false);
    const json &list = all.is_object() && all.contains("images") ? all["images"] : all;
    if (list.is_array())
      for (const json &i : list)
        if (i.is_object()) out[i.value("name", "")] = i;
    return out;
  }
  // The GC logs a removal after the store has it: until the daemon's log
  // says `text` (a guard of 20 s against hangs only).
  bool wait_log(const std::string &text) {
    for (int i = 0; i < 200; ++i) {
      if (d_->log().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  // Until none of `gone` is listed (a guard of 60 s against hangs only).
  bool wait_gone(const std::vector<std::string> &gone) {
    for (int i = 0; i < 600; ++i) {
      auto now = images();
      bool any = false;
      for (const auto &g : gone) any = any || now.count(g);
      if (!any) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
};

class RegistryJobsImageGcByAge : public RegistryJobsImageGc {
 protected:
  void SetUp() override {
    runtime_extra_ = "image_unused_after = \"2s\"\n";
    RegistryJobsImageGc::SetUp();
  }
};

class RegistryJobsImageGcBySize : public RegistryJobsImageGc {
 protected:
  void SetUp() override {
    runtime_extra_ = "image_max_size_mb = 9\n";  // image_unused_after: its 24h
    RegistryJobsImageGc::SetUp();
  }
};

// An image unused for image_unused_after goes; the one a container runs
// stays however long ago it was pulled.
TEST_F(RegistryJobsImageGcByAge, AnUnusedImageIsRemovedAndAUsedOneKept) {
  push("1");
  push("2");
  auto run = flotilla({"job", "run", "--timeout", "90s", job_file("reggc", ref("1"), 1, 0)});
  ASSERT_EQ(run.exit_code, 0) << run.output << d_->log();
  auto pull = flotilla({"image", "pull", ref("2")});
  ASSERT_EQ(pull.exit_code, 0) << pull.output;
  ASSERT_TRUE(images().count(ref("2")));
  ASSERT_TRUE(wait_gone({ref("2")}))
      << "the unused image was never collected: " << d_->get("/v1/images").body << d_->log();
  EXPECT_TRUE(images().count(ref("1"))) << "the image in use went: " << d_->get("/v1/images").body;
  EXPECT_TRUE(wait_log("image garbage collection removed " + ref("2"))) << d_->log();
  EXPECT_EQ(d_->log().find("image garbage collection removed " + ref("1")), std::string::npos)
      << d_->log();
  std::vector<json> allocs = running_allocs("reggc");
  ASSERT_EQ(allocs.size(), 1u);
  EXPECT_EQ(e2e::alloc_status(allocs[0]), "running") << allocs[0].dump();
}

// Past image_max_size_mb the oldest unused images go first, until the
// images fit; the one in use (the oldest of all) stays. Pulled in order:
// a (run by a job), b1, b2, b3, about 4 MiB each, a bound of 9 MiB: b1
// goes once b2 is in, b2 once b3 is.
TEST_F(RegistryJobsImageGcBySize, TheSizeBoundRemovesTheOldestUnusedFirst) {
  for (const char *t : {"a", "b1", "b2", "b3"}) push_big(t);
  auto run = flotilla({"job", "run", "--timeout", "90s", job_file("reggcsize", ref("a"), 1, 0)});
  ASSERT_EQ(run.exit_code, 0) << run.output << d_->log();
  for (const char *t : {"b1", "b2", "b3"}) {
    auto pull = flotilla({"image", "pull", ref(t)});
    ASSERT_EQ(pull.exit_code, 0) << pull.output;
  }
  ASSERT_TRUE(wait_gone({ref("b1"), ref("b2")}))
      << "the size bound removed nothing: " << d_->get("/v1/images").body << d_->log();
  auto left = images();
  ASSERT_TRUE(left.count(ref("a"))) << "the image in use went: " << d_->get("/v1/images").body;
  ASSERT_TRUE(left.count(ref("b3"))) << "the newest went: " << d_->get("/v1/images").body;
  // The arithmetic the test relies on.
  const uint64_t bound = uint64_t{9} << 20;
  uint64_t a = left[ref("a")].value("size", uint64_t{0}),
           b3 = left[ref("b3")].value("size", uint64_t{0});
  EXPECT_GT(a + 2 * b3, bound) << "three images would fit: the test proves nothing";
  EXPECT_LE(a + b3, bound);
  ASSERT_TRUE(wait_log("image garbage collection removed " + ref("b2"))) << d_->log();
  const std::string log = d_->log();
  size_t b1_at = log.find("image garbage collection removed " + ref("b1")),
         b2_at = log.find("image garbage collection removed " + ref("b2"));
  ASSERT_NE(b1_at, std::string::npos) << log;
  ASSERT_NE(b2_at, std::string::npos) << log;
  EXPECT_LT(b1_at, b2_at) << "not the oldest first";
}

// A bad value of either key: the file, the line and the full key, from
// --check-config and at start-up.
TEST_F(RegistryJobs, ImageGcConfigErrorsNameTheFileLineAndKey) {
  d_->kill_now();
  d_->write_config(e2e::container_plugins_config(*d_, cgroup_parent()) +
                   "image_unused_after = \"soon\"\nimage_max_size_mb = -1\n");
  std::ifstream in(d_->config_path());
  int n = 0, unused_line = 0, size_line = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    if (line.rfind("image_unused_after", 0) == 0) unused_line = n;
    if (line.rfind("image_max_size_mb", 0) == 0) size_line = n;
  }
  const std::string where = "config " + d_->config_path() + " line ";
  const std::vector<std::string> want = {where + std::to_string(unused_line) +
                                             ": plugin.runtime-runc.image_unused_after: must be a "
                                             "duration like \"24h\"",
                                         where + std::to_string(size_line) +
                                             ": plugin.runtime-runc.image_max_size_mb: must be an "
                                             "integer from 0 to"};
  auto check = e2e::run(
      {e2e::build_dir() + "/core/flotillad", "--config", d_->config_path(), "--check-config"});
  EXPECT_EQ(check.exit_code, 2) << check.output;
  for (const auto &w : want)
    EXPECT_NE(check.output.find(w), std::string::npos) << w << "\n" << check.output;
  EXPECT_FALSE(d_->start());
  for (const auto &w : want)
    EXPECT_NE(d_->log().find(w), std::string::npos) << w << "\n" << d_->log();
}

}  // namespace
