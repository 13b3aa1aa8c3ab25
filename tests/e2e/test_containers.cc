// Real containers through the whole daemon: the API, the scheduler leader,
// the node reconciler, the runtime-runc plugin driving runc, the busybox
// OCI image built by tools/mkimage-busybox. Every test uses its own data
// dir and OCI root, and removes every container, mount and shim it made.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "alloc_status.h"
#include "container_daemon.h"
#include "daemon_harness.h"

using nlohmann::json;
namespace e2e = flotilla::e2e;
namespace fs = std::filesystem;

namespace {

std::string cli() { return e2e::build_dir() + "/tools/flotilla/flotilla"; }

std::string slurp(const std::string &path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Containers : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: running containers needs root";
    if (access("/usr/sbin/runc", X_OK) != 0 && access("/usr/bin/runc", X_OK) != 0)
      GTEST_SKIP() << "SKIPPED: runc is not installed";
    d_ = std::make_unique<e2e::Daemon>();
    d_->write_config(extra_config() + e2e::container_plugins_config(*d_, cgroup_parent()));
    ASSERT_TRUE(d_->start()) << d_->log();
    // The quickstart image, built the way set-up builds it.
    std::string image = d_->dir() + "/busybox-oci";
    auto mk = e2e::run({e2e::source_dir() + "/tools/mkimage-busybox", image});
    ASSERT_EQ(mk.exit_code, 0) << mk.output;
    auto imp = flotilla({"image", "import", image, "--tag", "busybox:latest"});
    ASSERT_EQ(imp.exit_code, 0) << imp.output << d_->log();
  }

  void TearDown() override {
    if (!d_) return;
    e2e::remove_everything(*d_, cgroup_parent());
    d_.reset();
  }

  static std::string cgroup_parent() { return "flotilla-e2e-" + std::to_string(getpid()); }

  e2e::RunResult flotilla(std::vector<std::string> args) {
    args.insert(args.begin(), {cli(), "--socket", d_->socket()});
    return e2e::run(args);
  }

  bool containers_gone() { return e2e::containers_gone(*d_); }

  // The job's allocations with their status, as GET /v1/jobs/<name> gives.
  json allocs(const std::string &job) {
    json j = json::parse(d_->get("/v1/jobs/" + job).body, nullptr, false);
    if (!j.is_object()) return json::array();
    for (const char *k : {"allocations", "allocs"})
      if (j.contains(k)) return j[k];
    return json::array();
  }
  static std::string status_of(const json &alloc) { return e2e::alloc_status(alloc); }
  static json task_of(const json &alloc, const std::string &task) {
    if (alloc.contains("status") && alloc["status"].is_object() &&
        alloc["status"].contains("tasks"))
      return alloc["status"]["tasks"].value(task, json::object());
    return json::object();
  }
  // Wait (up to 90 s: a guard, not a timing check) until the job's first
  // allocation reaches one of the states.
  json wait_for(const std::string &job, std::initializer_list<const char *> states) {
    for (int i = 0; i < 900; ++i) {
      json a = allocs(job);
      if (a.is_array() && !a.empty())
        for (const char *s : states)
          if (status_of(a[0]) == s) return a[0];
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "job " << job << " never reached the expected state: " << allocs(job).dump()
                  << "\n" << d_->log();
    return json::object();
  }
  void run_job(const std::string &toml) {
    std::string file = d_->dir() + "/job.toml";
    std::ofstream(file, std::ios::trunc) << toml;
    auto r = flotilla({"job", "run", "--detach", file});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  // More daemon config, for fixtures that need it.
  virtual std::string extra_config() const { return ""; }

  std::unique_ptr<e2e::Daemon> d_;
};

// [gc]: a node keeps at most max_terminal ended allocations' containers, and
// none for longer than terminal_after. One daemon per rule, so that each test
// shows its own rule at work.
class ContainersGcCount : public Containers {
 protected:
  std::string extra_config() const override {
    return "[gc]\nterminal_after = \"1h\"\nmax_terminal = 1\n\n";
  }
};
class ContainersGcTime : public Containers {
 protected:
  std::string extra_config() const override {
    return "[gc]\nterminal_after = \"2s\"\nmax_terminal = 0\n\n";
  }
};

// [node.devices]: the node offers devices by count; the scheduler hands them
// out and explains a job that asks for more.
class ContainersDevices : public Containers {
 protected:
  std::string extra_config() const override { return "[node.devices]\n\"example/dev\" = 1\n\n"; }
};

TEST_F(ContainersDevices, TheNodeOffersItsDevicesAndTheSchedulerCountsThem) {
  json node = json::parse(d_->get("/v1/nodes").body)["nodes"][0];
  EXPECT_EQ(node["devices"]["example/dev"], 1) << node.dump();
  auto job = [](const std::string &name, int count) {
    return "name = \"" + name + R"("
type = "batch"
[[task]]
name = "say"
image = "busybox:latest"
command = "/bin/echo"
args = ["with a device"]
[task.resources.devices]
"example/dev" = )" + std::to_string(count) + "\n";
  };
  run_job(job("dev-one", 1));
  json a = wait_for("dev-one", {"complete", "failed"});
  EXPECT_EQ(status_of(a), "complete") << a.dump();
  run_job(job("dev-two", 2));
  json j;
  for (int i = 0; i < 300; ++i) {  // a 30 s guard
    j = json::parse(d_->get("/v1/jobs/dev-two").body, nullptr, false);
    if (j.is_object() && j.contains("placement")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(j.is_object() && j.contains("placement")) << j.dump();
  EXPECT_NE(j["placement"].dump().find("example/dev"), std::string::npos) << j.dump();
  EXPECT_TRUE(allocs("dev-two").empty()) << allocs("dev-two").dump();
}

std::string batch_job(const std::string &name) {
  return "name = \"" + name + R"("
type = "batch"
[[task]]
name = "say"
image = "busybox:latest"
command = "/bin/echo"
args = ["said"]
)";
}

bool containers_removed(const json &a) {
  return a.contains("status") && a["status"].is_object() &&
         a["status"].value("containers_removed", false);
}

TEST_F(ContainersGcCount, BeyondMaxTerminalTheOldestEndedAllocationLosesItsContainers) {
  run_job(batch_job("gc-one"));
  json one = wait_for("gc-one", {"complete", "failed"});
  ASSERT_EQ(status_of(one), "complete") << one.dump();
  auto logs = flotilla({"alloc", "logs", one.value("id", "")});
  EXPECT_NE(logs.output.find("said"), std::string::npos) << logs.output;
  run_job(batch_job("gc-two"));
  json two = wait_for("gc-two", {"complete", "failed"});
  ASSERT_EQ(status_of(two), "complete") << two.dump();
  for (int i = 0; i < 300 && !containers_removed(allocs("gc-one")[0]); ++i)  // a 30 s guard
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  one = allocs("gc-one")[0];
  ASSERT_TRUE(containers_removed(one)) << one.dump() << d_->log();
  EXPECT_EQ(status_of(one), "complete") << "the record keeps how it ended";
  EXPECT_NE(flotilla({"alloc", "logs", one.value("id", "")}).exit_code, 0);
  // The younger one is within the limit, and an hour is far away.
  two = allocs("gc-two")[0];
  EXPECT_FALSE(containers_removed(two)) << two.dump();
  logs = flotilla({"alloc", "logs", two.value("id", "")});
  EXPECT_NE(logs.output.find("said"), std::string::npos) << logs.output;
}

TEST_F(ContainersGcTime, AfterTerminalAfterAnEndedAllocationLosesItsContainers) {
  run_job(batch_job("gc-time"));
  json a = wait_for("gc-time", {"complete", "failed"});
  ASSERT_EQ(status_of(a), "complete") << a.dump();
  for (int i = 0; i < 300 && !containers_removed(allocs("gc-time")[0]); ++i)  // a 30 s guard
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  a = allocs("gc-time")[0];
  ASSERT_TRUE(containers_removed(a)) << a.dump() << d_->log();
  EXPECT_EQ(status_of(a), "complete");
  EXPECT_EQ(task_of(a, "say").value("exit_code", -1), 0);
  EXPECT_TRUE(containers_gone());
}

TEST_F(Containers, BatchJobRunsItsOutputIsInTheLogsAndItCompletes) {
  run_job(R"(name = "hello"
type = "batch"
[[task]]
name = "say"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "echo hello from flotilla; echo oops >&2"]
)");
  json a = wait_for("hello", {"complete", "failed"});
  ASSERT_EQ(status_of(a), "complete") << a.dump();
  EXPECT_EQ(task_of(a, "say").value("exit_code", -1), 0) << a.dump();
  std::string id = a.value("id", "");
  auto logs = flotilla({"alloc", "logs", id});
  EXPECT_EQ(logs.exit_code, 0) << logs.output;
  EXPECT_NE(logs.output.find("hello from flotilla"), std::string::npos) << logs.output;
  auto err = flotilla({"alloc", "logs", id, "--stderr"});
  EXPECT_NE(err.output.find("oops"), std::string::npos) << err.output;
}

// docs/jobspec.md: the tasks of one allocation share its network
// namespace, so one reaches the other on localhost (no network plugin
// here: the runtime pins the namespace for the allocation, and removes it
// with the allocation's last container).
TEST_F(Containers, TasksOfOneAllocationShareOneNetworkNamespace) {
  run_job(R"(name = "pair"
type = "service"
[[task]]
name = "server"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "echo shared-netns-page > /tmp/index.html && exec httpd -f -p 8089 -h /tmp"]
network = "bridge"
[[task]]
name = "client"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "until wget -qO- http://127.0.0.1:8089/; do sleep 0.1; done; exec sleep 3600"]
network = "bridge"
)");
  json a = wait_for("pair", {"running", "failed"});
  ASSERT_EQ(status_of(a), "running") << a.dump();
  const std::string id = a.value("id", "");
  std::string out;
  for (int i = 0; i < 100; ++i) {
    out = flotilla({"alloc", "logs", id, "--task", "client"}).output;
    if (out.find("shared-netns-page") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(out.find("shared-netns-page"), std::string::npos)
      << "the client task did not reach the server task on 127.0.0.1: " << out
      << flotilla({"alloc", "logs", id, "--task", "client", "--stderr"}).output;
  const std::string pin = d_->dir() + "/data/plugins/runtime-runc/alloc-netns/" + id;
  ASSERT_EQ(flotilla({"job", "stop", "pair"}).exit_code, 0);
  for (int i = 0; i < 100 && fs::exists(pin); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(fs::exists(pin)) << "the allocation's namespace outlived its containers";
}

TEST_F(Containers, FailingTaskIsRestartedByPolicyThenMarkedFailed) {
  run_job(R"(name = "flaky"
type = "batch"
[restart]
attempts = 2
interval = "10m"
delay = "0s"
mode = "fail"
[[task]]
name = "fail"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "echo attempt; exit 3"]
)");
  json a = wait_for("flaky", {"failed"});
  json t = task_of(a, "fail");
  EXPECT_EQ(t.value("exit_code", -1), 3) << a.dump();
  EXPECT_EQ(t.value("restarts", -1), 2) << a.dump();
  EXPECT_NE(t.value("message", "").find("restart attempts exhausted"), std::string::npos) << a.dump();
  // A failed allocation keeps its container, so its logs say why.
  auto logs = flotilla({"alloc", "logs", a.value("id", "")});
  EXPECT_NE(logs.output.find("attempt"), std::string::npos) << logs.output;
}

// Issue 14 item 9: a restarted task's earlier runs keep their output, and
// `alloc logs` says where each run starts; --run N and --runs.
TEST_F(Containers, EveryRunOfARestartingTaskKeepsItsLogs) {
  run_job(R"(name = "crashloop"
type = "batch"
[restart]
attempts = 2
interval = "10m"
delay = "0s"
jitter = 0.0
mode = "fail"
[[task]]
name = "crash"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "echo run $RANDOM$RANDOM starts; exit 3"]
)");
  json a = wait_for("crashloop", {"failed"});
  ASSERT_EQ(task_of(a, "crash").value("restarts", -1), 2) << a.dump();
  const std::string id = a.value("id", "");
  auto all = flotilla({"alloc", "logs", id});
  ASSERT_EQ(all.exit_code, 0) << all.output;
  // Three runs, oldest first, each announced (on stderr) before its output.
  std::vector<std::string> lines;
  std::istringstream in(all.output);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 6u) << all.output;
  for (int run = 1; run <= 3; ++run) {
    const std::string &head = lines[2 * (run - 1)];
    EXPECT_EQ(head.rfind("==> run " + std::to_string(run) + ", started ", 0), 0u) << all.output;
    EXPECT_NE(head.find("exited with code 3"), std::string::npos) << all.output;
    EXPECT_EQ(lines[2 * run - 1].rfind("run ", 0), 0u) << all.output;
  }
  EXPECT_NE(lines[4].find("(the current run)"), std::string::npos) << all.output;
  EXPECT_NE(lines[1], lines[3]) << "each run printed its own line: " << all.output;
  // --run N: that run's output alone.
  for (int run = 1; run <= 3; ++run) {
    auto one = flotilla({"alloc", "logs", id, "--run", std::to_string(run)});
    EXPECT_EQ(one.exit_code, 0) << one.output;
    EXPECT_EQ(one.output, lines[2 * run - 1] + "\n") << one.output;
  }
  auto missing = flotilla({"alloc", "logs", id, "--run", "4"});
  EXPECT_NE(missing.exit_code, 0) << missing.output;
  // --runs: the list, with how each run ended.
  auto runs = flotilla({"--json", "alloc", "logs", id, "--runs"});
  ASSERT_EQ(runs.exit_code, 0) << runs.output;
  json list = json::parse(runs.output, nullptr, false);
  ASSERT_TRUE(list.is_object() && list["runs"].is_array()) << runs.output;
  ASSERT_EQ(list["runs"].size(), 3u) << runs.output;
  for (const json &r : list["runs"]) {
    EXPECT_EQ(r.value("exit_code", -1), 3) << runs.output;
    EXPECT_TRUE(r.contains("finished_at")) << runs.output;
  }
}

TEST_F(Containers, StopStopsTheServiceAndLeavesNothingBehind) {
  run_job(R"(name = "svc"
[[task]]
name = "sleep"
image = "busybox:latest"
command = "/bin/sleep"
args = ["1000"]
kill_timeout = "2s"
)");
  json a = wait_for("svc", {"running"});
  ASSERT_EQ(status_of(a), "running");
  EXPECT_FALSE(containers_gone());
  auto stop = flotilla({"job", "stop", "svc"});
  EXPECT_EQ(stop.exit_code, 0) << stop.output;
  a = wait_for("svc", {"stopped"});
  EXPECT_EQ(status_of(a), "stopped") << a.dump();
  // No runc state, no mounts under the test dir, no cgroup left.
  EXPECT_TRUE(containers_gone());
  EXPECT_EQ(slurp("/proc/self/mountinfo").find(d_->dir()), std::string::npos);
  std::string cid = a.value("id", "") + ".sleep";
  for (const auto &h : fs::directory_iterator("/sys/fs/cgroup"))
    EXPECT_FALSE(fs::exists(h.path() / ("flotilla-e2e-" + std::to_string(getpid())) / cid))
        << h.path();
}

// Purging a job deletes its allocation records once their node has removed
// the containers, whether it was stopped first or purged at once; a stop
// alone keeps them (job status still shows how they ended).
TEST_F(Containers, PurgedJobsLeaveNoAllocationRecords) {
  auto count_allocs = [&](const std::string &job) {
    json j = json::parse(d_->get("/v1/allocs?job=" + job).body, nullptr, false);
    return j.is_object() && j["allocs"].is_array() ? static_cast<int>(j["allocs"].size()) : -1;
  };
  auto wait_no_allocs = [&](const std::string &job) {
    for (int i = 0; i < 300 && count_allocs(job) != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return count_allocs(job);
  };
  for (const char *name : {"gc-a", "gc-b"}) {
    run_job(std::string("name = \"") + name + R"("
type = "batch"
[[task]]
name = "say"
image = "busybox:latest"
command = "/bin/echo"
args = ["done"]
)");
    json a = wait_for(name, {"complete", "failed"});
    ASSERT_EQ(status_of(a), "complete") << a.dump();
  }
  // gc-a: stopped (records kept), then purged.
  ASSERT_EQ(flotilla({"job", "stop", "gc-a"}).exit_code, 0);
  json a = wait_for("gc-a", {"stopped", "complete"});
  EXPECT_EQ(count_allocs("gc-a"), 1) << "a stop alone keeps the record";
  std::string id = a.value("id", "");
  ASSERT_EQ(flotilla({"job", "stop", "gc-a", "--purge"}).exit_code, 0);
  EXPECT_EQ(wait_no_allocs("gc-a"), 0) << d_->log();
  EXPECT_EQ(d_->get("/v1/allocs/" + id).status, 404);
  // gc-b: purged at once.
  ASSERT_EQ(flotilla({"job", "stop", "gc-b", "--purge"}).exit_code, 0);
  EXPECT_EQ(wait_no_allocs("gc-b"), 0) << d_->log();
  EXPECT_TRUE(containers_gone());
}

// References with a registry path ("library/busybox") go through the API
// as one escaped path segment.
TEST_F(Containers, ImagesWithSlashesInTheirNameCanBeRemoved) {
  auto imp = flotilla({"image", "import", d_->dir() + "/busybox-oci", "--tag",
                       "registry.example:5000/library/busybox:1.36"});
  ASSERT_EQ(imp.exit_code, 0) << imp.output;
  auto ls = flotilla({"image", "ls"});
  EXPECT_NE(ls.output.find("registry.example:5000/library/busybox"), std::string::npos)
      << ls.output;
  auto rm = flotilla({"image", "rm", "registry.example:5000/library/busybox:1.36"});
  EXPECT_EQ(rm.exit_code, 0) << rm.output;
  ls = flotilla({"image", "ls"});
  EXPECT_EQ(ls.output.find("registry.example:5000/library/busybox"), std::string::npos)
      << ls.output;
  EXPECT_NE(ls.output.find("busybox"), std::string::npos) << "busybox:latest stays";
  EXPECT_EQ(e2e::http(d_->socket(), "DELETE", "/v1/images/a%2F%2Fb").status, 400);
}

namespace {

std::string sha256_file_hex(const std::string &path) {
  auto r = e2e::run({"sha256sum", path});
  return r.output.substr(0, 64);
}

// Writes bytes as a blob of the layout at dir; returns its descriptor.
json put_blob(const std::string &dir, const std::string &bytes, const std::string &media_type) {
  std::string tmp = dir + "/blob.tmp";
  std::ofstream(tmp, std::ios::binary | std::ios::trunc) << bytes;
  std::string hex = sha256_file_hex(tmp);
  fs::rename(tmp, dir + "/blobs/sha256/" + hex);
  return {{"mediaType", media_type}, {"digest", "sha256:" + hex}, {"size", bytes.size()}};
}

std::string blob_of(const std::string &dir, const std::string &digest) {
  return slurp(dir + "/blobs/sha256/" + digest.substr(7));
}

}  // namespace

// A layout holding two images, as `skopeo copy` to one directory twice
// makes it: a clear message says how --tag picks one. The second image's
// config has a Cmd and no Entrypoint, and a task without `command` runs it.
TEST_F(Containers, ATaskWithoutCommandRunsTheImagesCmdPickedFromALayoutOfTwo) {
  const std::string src = d_->dir() + "/busybox-oci", two = d_->dir() + "/two-images";
  fs::copy(src, two, fs::copy_options::recursive);
  json index = json::parse(slurp(two + "/index.json"));
  json busybox = index["manifests"][0];
  busybox["annotations"]["org.opencontainers.image.ref.name"] = "busybox:latest";
  json manifest = json::parse(blob_of(two, busybox["digest"]));
  json config = json::parse(blob_of(two, manifest["config"]["digest"]));
  config["config"].erase("Entrypoint");
  config["config"]["Cmd"] = {"echo", "hello from the image's Cmd"};
  manifest["config"] = put_blob(two, config.dump(), manifest["config"]["mediaType"]);
  json hello = put_blob(
      two, manifest.dump(),
      busybox.value("mediaType", std::string("application/vnd.oci.image.manifest.v1+json")));
  hello["annotations"] = {{"org.opencontainers.image.ref.name", "hello-cmd:1"}};
  index["manifests"] = {busybox, hello};
  std::ofstream(two + "/index.json", std::ios::trunc) << index.dump();

  auto no_tag = flotilla({"image", "import", two});
  EXPECT_NE(no_tag.exit_code, 0) << no_tag.output;
  for (const char *says :
       {"lists 2 images", "busybox:latest", "hello-cmd:1", "Pick one with --tag NAME"})
    EXPECT_NE(no_tag.output.find(says), std::string::npos) << says << "\n" << no_tag.output;
  auto wrong = flotilla({"image", "import", two, "--tag", "nope:1"});
  EXPECT_NE(wrong.output.find("--tag nope:1 names none of its images"), std::string::npos)
      << wrong.output;
  auto picked = flotilla({"image", "import", two, "--tag", "hello-cmd:1"});
  ASSERT_EQ(picked.exit_code, 0) << picked.output;
  EXPECT_NE(picked.output.find("Imported hello-cmd:1"), std::string::npos) << picked.output;

  run_job(R"(name = "cmd"
type = "batch"
[[task]]
name = "say"
image = "hello-cmd:1"
)");
  json a = wait_for("cmd", {"complete", "failed"});
  ASSERT_EQ(status_of(a), "complete") << a.dump() << d_->log();
  auto logs = flotilla({"alloc", "logs", a.value("id", "")});
  EXPECT_NE(logs.output.find("hello from the image's Cmd"), std::string::npos) << logs.output;
}

// Importing an image the store already holds says that the stored copy was
// reused and the input not read; `image ls` keeps compressed and unpacked
// sizes apart.
TEST_F(Containers, ReimportSaysTheInputWasNotReadAndLsShowsBothSizes) {
  const std::string broken = d_->dir() + "/broken-oci";
  fs::copy(d_->dir() + "/busybox-oci", broken, fs::copy_options::recursive);
  json index = json::parse(slurp(broken + "/index.json"));
  json manifest = json::parse(blob_of(broken, index["manifests"][0]["digest"]));
  std::ofstream(
      broken + "/blobs/sha256/" + manifest["layers"][0]["digest"].get<std::string>().substr(7),
      std::ios::trunc)
      << "garbage";
  fs::remove(broken + "/blobs/sha256/" + manifest["config"]["digest"].get<std::string>().substr(7));
  auto imp = flotilla({"image", "import", broken, "--tag", "busybox:latest"});
  EXPECT_EQ(imp.exit_code, 0) << imp.output;
  EXPECT_EQ(imp.output.find("Imported"), std::string::npos) << imp.output;
  EXPECT_NE(imp.output.find("Already in the store: busybox:latest"), std::string::npos)
      << imp.output;
  EXPECT_NE(imp.output.find("were not read from " + broken + ", so they were not checked"),
            std::string::npos)
      << imp.output;

  auto ls = flotilla({"image", "ls"});
  EXPECT_NE(ls.output.find("COMPRESSED"), std::string::npos) << ls.output;
  EXPECT_NE(ls.output.find("UNPACKED"), std::string::npos) << ls.output;
  json images = json::parse(d_->get("/v1/images").body, nullptr, false);
  ASSERT_TRUE(images.is_object()) << images;
  ASSERT_FALSE(images["images"].empty()) << images;
  const json &img = images["images"][0];
  EXPECT_GT(img.value("unpacked_size", 0), img.value("size", 0)) << img;  // busybox unpacked > gzip
}

TEST_F(Containers, MissingImageAndBadCommandAreClearErrors) {
  run_job(R"(name = "noimage"
type = "batch"
[restart]
attempts = 0
[[task]]
name = "t"
image = "nosuch:1.0"
command = "/bin/true"
)");
  json a = wait_for("noimage", {"failed"});
  // The hint is a command that works as printed, once PATH is filled in.
  std::string msg = task_of(a, "t").value("message", "");
  size_t q1 = msg.find("`flotilla "), q2 = msg.find('`', q1 + 1);
  ASSERT_NE(q2, std::string::npos) << "no `flotilla ...` hint in: " << a.dump();
  std::istringstream words(msg.substr(q1 + 10, q2 - q1 - 10));
  std::vector<std::string> hint;
  for (std::string w; words >> w;) hint.push_back(w == "PATH" ? d_->dir() + "/busybox-oci" : w);
  auto imp = flotilla(hint);
  EXPECT_EQ(imp.exit_code, 0) << "the hint `" << msg.substr(q1 + 1, q2 - q1 - 1)
                              << "` failed: " << imp.output;
  EXPECT_NE(flotilla({"image", "ls"}).output.find("nosuch"), std::string::npos);
  run_job(R"(name = "badcmd"
type = "batch"
[restart]
attempts = 0
[[task]]
name = "t"
image = "busybox:latest"
command = "/no/such/program"
)");
  a = wait_for("badcmd", {"failed"});
  EXPECT_NE(task_of(a, "t").value("message", "").find("/no/such/program"), std::string::npos)
      << a.dump();
  EXPECT_TRUE(d_->running());
}

TEST_F(Containers, KillDashNineOfTheDaemonLosesNoContainerAndNoExit) {
  run_job(R"(name = "svc"
[[task]]
name = "sleep"
image = "busybox:latest"
command = "/bin/sleep"
args = ["1000"]
)");
  run_job(R"(name = "late"
type = "batch"
[restart]
attempts = 0
[[task]]
name = "t"
image = "busybox:latest"
command = "/bin/sh"
args = ["-c", "sleep 3; echo done late; exit 5"]
)");
  json svc = wait_for("svc", {"running"});
  json late = wait_for("late", {"running"});
  ASSERT_EQ(status_of(late), "running");
  d_->signal(SIGKILL);
  ASSERT_EQ(d_->wait_exit(), 128 + SIGKILL);
  // "late" exits while the daemon is down.
  std::this_thread::sleep_for(std::chrono::seconds(5));
  ASSERT_TRUE(d_->start()) << d_->log();
  json late2 = wait_for("late", {"failed", "complete"});
  EXPECT_EQ(task_of(late2, "t").value("exit_code", -1), 5) << late2.dump();
  auto logs = flotilla({"alloc", "logs", late2.value("id", "")});
  EXPECT_NE(logs.output.find("done late"), std::string::npos) << logs.output;
  json svc2 = wait_for("svc", {"running"});
  EXPECT_EQ(svc2.value("id", ""), svc.value("id", ""));
  EXPECT_EQ(task_of(svc2, "sleep").value("restarts", -1), 0) << svc2.dump();
}

}  // namespace
