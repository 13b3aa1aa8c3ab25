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
//     registry serves Docker's manifest, the pull takes it and the job runs.
//
// Everything is under one scratch dir per run (the daemon's) and the
// cgroup flotilla-e2e-reg-<pid>; the registry is killed by its pid.
#include <gtest/gtest.h>
#include <pty.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "alloc_status.h"
#include "container_daemon.h"
#include "daemon_harness.h"
#include "registry_test_support.h"

using nlohmann::json;
namespace e2e = flotilla::e2e;
namespace fs = std::filesystem;

namespace {

std::string cli() {
  return e2e::build_dir() + "/tools/flotilla/flotilla";
}

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
    d_->write_config(e2e::container_plugins_config(*d_, cgroup_parent()) +
                     "\n[plugin.runtime-runc.registry]\ninsecure = [\"" + registry_.host() +
                     "\"]\nprogress_interval_ms = 50\nlow_speed_timeout_s = 5\n");
    ASSERT_TRUE(d_->start()) << d_->log();
    ASSERT_TRUE(registry_.start(d_->dir() + "/registry", d_->dir() + "/registry/storage", ""))
        << regtest::slurp(registry_.log);
    // The base image, as set-up builds the quickstart's.
    auto mk = e2e::run({e2e::source_dir() + "/tools/mkimage-busybox", base(), "--tag", "app"});
    ASSERT_EQ(mk.exit_code, 0) << mk.output;
  }

  void TearDown() override {
    registry_.stop();
    if (!d_) return;
    e2e::remove_everything(*d_, cgroup_parent());
    d_.reset();
  }

  static std::string cgroup_parent() { return "flotilla-e2e-reg-" + std::to_string(getpid()); }
  std::string base() const { return d_->dir() + "/base"; }
  std::string ref(const std::string &tag) const { return registry_.host() + "/team/app:" + tag; }

  e2e::RunResult flotilla(std::vector<std::string> args) {
    args.insert(args.begin(), {cli(), "--socket", d_->socket()});
    return e2e::run(args);
  }

  // Version `tag` of the app: the base image plus a layer with
  // /etc/app-version (umoci unpack, then repack: the new layer is the
  // difference), pushed with skopeo as a pipeline would. (Not `umoci
  // insert`: Debian's umoci 0.4.7 writes that layer's tar without its end
  // and padding, which tar and libarchive refuse.)
  void push(const std::string &tag) {
    std::string layout = d_->dir() + "/app-" + tag, bundle = d_->dir() + "/bundle-" + tag;
    std::error_code ec;
    fs::copy(base(), layout, fs::copy_options::recursive, ec);
    ASSERT_FALSE(ec) << ec.message();
    auto un = e2e::run({"/usr/bin/umoci", "unpack", "--image", layout + ":app", bundle});
    ASSERT_EQ(un.exit_code, 0) << un.output;
    std::ofstream(bundle + "/rootfs/etc/app-version") << "app version " << tag << "\n";
    auto re = e2e::run({"/usr/bin/umoci", "repack", "--image", layout + ":app", bundle});
    ASSERT_EQ(re.exit_code, 0) << re.output;
    fs::remove_all(bundle, ec);
    auto cp = e2e::run({"/usr/bin/skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        "oci:" + layout + ":app", "docker://" + ref(tag)});
    ASSERT_EQ(cp.exit_code, 0) << cp.output;
  }

  std::string job_file(const std::string &name, const std::string &image, int count,
                       int restart_attempts) {
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
args = ["-c", "trap 'exit 0' TERM; cat /etc/app-version; while :; do sleep 1 & wait $!; done"]
kill_timeout = "2s"
)";
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
  regtest::Registry registry_;
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

}  // namespace
