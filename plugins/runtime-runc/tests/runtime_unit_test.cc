// Unit tests of runtime-runc without containers: the task JSON, the OCI
// config.json it becomes, the plugin's config keys and log rotation.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "image_pulls.h"
#include "log_runs.h"
#include "oci_spec.h"
#include "rotating_log.h"
#include "runc_runtime.h"
#include "runtime_config.h"
#include "task_spec.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace flotilla::runc;

namespace {

json canonical_task() {
  return {{"name", "web"},
          {"image", "busybox:latest"},
          {"command", "/bin/httpd"},
          {"args", {"-f", "-p", "8080"}},
          {"workdir", ""},
          {"user", ""},
          {"kill_timeout_ms", 5000},
          {"kill_signal", "SIGTERM"},
          {"network", "bridge"},
          {"env", {{"GREETING", "hi"}, {"PATH", "/custom/bin"}}},
          {"resources",
           {{"cpu", 500}, {"memory", 128}, {"memory_max", 256}, {"disk", 0}, {"pids", 100}}},
          {"logs", {{"max_files", 3}, {"max_file_size", 2}}}};
}

json task_doc(json task = canonical_task()) {
  return {{"version", 1}, {"alloc_id", "a1b2"}, {"job", "site"}, {"task", std::move(task)}};
}

std::string slurp(const fs::path &p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(TaskSpec, ReadsTheCanonicalTask) {
  TaskSpec t = parse_task_json(task_doc().dump());
  EXPECT_EQ(t.alloc_id, "a1b2");
  EXPECT_EQ(t.job, "site");
  EXPECT_EQ(t.task_name, "web");
  EXPECT_EQ(t.command, "/bin/httpd");
  EXPECT_EQ(t.args.size(), 3u);
  EXPECT_EQ(t.cpu_mhz, 500);
  EXPECT_EQ(t.memory_max_mib, 256);
  EXPECT_EQ(t.pids, 100);
  EXPECT_EQ(t.kill_signo, 15);
  EXPECT_EQ(t.log_max_files, 3);
  EXPECT_EQ(t.log_max_file_size_mib, 2);
}

TEST(TaskSpec, ErrorsNameTheField) {
  json bad = canonical_task();
  bad["resources"]["memory"] = "lots";
  try {
    parse_task_json(task_doc(bad).dump());
    FAIL() << "no error";
  } catch (const TaskError &e) {
    EXPECT_NE(std::string(e.what()).find("task.resources.memory"), std::string::npos) << e.what();
  }
  bad = canonical_task();
  bad["network"] = "overlay";
  EXPECT_THROW(parse_task_json(task_doc(bad).dump()), TaskError);
  bad = canonical_task();
  bad["kill_signal"] = "TERM";
  EXPECT_THROW(parse_task_json(task_doc(bad).dump()), TaskError);
  json doc = task_doc();
  doc["version"] = 2;
  EXPECT_THROW(parse_task_json(doc.dump()), TaskError);
  EXPECT_THROW(parse_task_json("{not json"), TaskError);
  doc = task_doc();
  doc["task"].erase("image");
  EXPECT_THROW(parse_task_json(doc.dump()), TaskError);
}

TEST(TaskSpec, ContainerIds) {
  EXPECT_TRUE(is_valid_container_id("a1b2.web"));
  EXPECT_TRUE(is_valid_container_id("rt-1_x"));
  EXPECT_FALSE(is_valid_container_id(""));
  EXPECT_FALSE(is_valid_container_id("../etc"));
  EXPECT_FALSE(is_valid_container_id(".hidden"));
  EXPECT_FALSE(is_valid_container_id("a/b"));
  EXPECT_FALSE(is_valid_container_id(std::string(129, 'a')));
}

BundleInputs inputs(json task = canonical_task()) {
  BundleInputs in;
  in.container_id = "a1b2.web";
  in.task = parse_task_json(task_doc(std::move(task)).dump());
  in.image_config = {{"Env", {"PATH=/image/bin", "IMAGE_ONLY=1", "GREETING=image"}},
                     {"Entrypoint", {"/entry"}},
                     {"Cmd", {"default-arg"}},
                     {"WorkingDir", "/srv"},
                     {"User", ""}};
  in.image_name = "busybox:latest";
  in.passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
  in.group = "root:x:0:\nwww:x:33:\nlogs:x:4:www,other\n";
  in.cgroups_path = "/flotilla/a1b2.web";
  return in;
}

TEST(OciSpec, ProcessArgsEnvCwdAndUser) {
  RuntimeConfig config;
  json spec = make_oci_config(inputs(), config);
  EXPECT_EQ(spec["process"]["args"], json({"/bin/httpd", "-f", "-p", "8080"}));
  // The task's env wins over the image's; the image's other variables stay.
  json env = spec["process"]["env"];
  auto has = [&](const std::string &kv) {
    return std::find(env.begin(), env.end(), kv) != env.end();
  };
  EXPECT_TRUE(has("PATH=/custom/bin"));
  EXPECT_TRUE(has("GREETING=hi"));
  EXPECT_TRUE(has("IMAGE_ONLY=1"));
  EXPECT_TRUE(has("HOME=/root"));
  EXPECT_TRUE(has("HOSTNAME=web"));
  EXPECT_EQ(spec["process"]["cwd"], "/srv");
  EXPECT_EQ(spec["process"]["user"]["uid"], 0);
  EXPECT_EQ(spec["process"]["terminal"], false);
  EXPECT_EQ(spec["hostname"], "web");
  EXPECT_EQ(spec["root"]["path"], "rootfs");
  EXPECT_EQ(spec["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
}

TEST(OciSpec, ImageEntrypointAndCmdWhenNoCommand) {
  json t = canonical_task();
  t["command"] = "";
  t["args"] = json::array();
  EXPECT_EQ(make_oci_config(inputs(t), {})["process"]["args"], json({"/entry", "default-arg"}));
  t["args"] = {"x"};
  EXPECT_EQ(make_oci_config(inputs(t), {})["process"]["args"], json({"/entry", "x"}));
  BundleInputs in = inputs(canonical_task());
  in.task.command.clear();
  in.task.args.clear();
  in.image_config = json::object();
  EXPECT_THROW(make_oci_config(in, {}), TaskError);
}

TEST(OciSpec, UsersByNameAndNumber) {
  ResolvedUser u = resolve_user("www", inputs().passwd, inputs().group);
  EXPECT_EQ(u.uid, 33u);
  EXPECT_EQ(u.gid, 33u);
  EXPECT_EQ(u.home, "/var/www");
  EXPECT_EQ(u.additional_gids, std::vector<gid_t>({4}));
  u = resolve_user("1000:2000", "", "");
  EXPECT_EQ(u.uid, 1000u);
  EXPECT_EQ(u.gid, 2000u);
  EXPECT_EQ(u.home, "/");
  u = resolve_user("www:logs", inputs().passwd, inputs().group);
  EXPECT_EQ(u.gid, 4u);
  EXPECT_THROW(resolve_user("nobody-here", inputs().passwd, inputs().group), TaskError);
  EXPECT_THROW(resolve_user("0:nogroup", inputs().passwd, inputs().group), TaskError);
}

TEST(OciSpec, ResourcesAndCgroups) {
  RuntimeConfig config;
  json spec = make_oci_config(inputs(), config);
  json r = spec["linux"]["resources"];
  EXPECT_EQ(r["cpu"]["shares"], 500);
  EXPECT_FALSE(r["cpu"].contains("quota"));
  EXPECT_EQ(r["memory"]["limit"], 256 * 1024 * 1024);
  EXPECT_EQ(r["memory"]["reservation"], 128 * 1024 * 1024);
  EXPECT_EQ(r["pids"]["limit"], 100);
  EXPECT_EQ(spec["linux"]["cgroupsPath"], "/flotilla/a1b2.web");
  config.cpu_hard_limit = true;
  config.cpu_mhz_per_core = 1000;
  r = make_oci_config(inputs(), config)["linux"]["resources"];
  EXPECT_EQ(r["cpu"]["quota"], 50000);  // 500 MHz of a 1000 MHz core
  EXPECT_EQ(r["cpu"]["period"], 100000);
}

TEST(OciSpec, NetworkNamespaces) {
  auto netns_of = [](const json &spec) {
    for (const json &ns : spec["linux"]["namespaces"])
      if (ns["type"] == "network") return ns;
    return json();
  };
  EXPECT_EQ(netns_of(make_oci_config(inputs(), {})), json({{"type", "network"}}));
  json t = canonical_task();
  t["network"] = "host";
  EXPECT_TRUE(netns_of(make_oci_config(inputs(t), {})).is_null());
  BundleInputs in = inputs();
  in.task.netns = "/run/netns/x";
  EXPECT_EQ(netns_of(make_oci_config(in, {}))["path"], "/run/netns/x");
}

// The network plugin's attach result: resolv.conf and hosts text, mounted
// read-only over the image's.
TEST(TaskSpec, DnsAndHostsFromTheNetworkPlugin) {
  json doc = task_doc();
  doc["dns"] = {{"nameservers", {"10.0.0.2", "fd00::53"}},
                {"search", {"service.flotilla"}},
                {"options", {"ndots:2"}}};
  doc["hosts"] = json::array({{{"ip", "127.0.0.1"}, {"names", {"localhost"}}},
                              {{"ip", "10.42.3.7"}, {"names", {"web", "web.local"}}}});
  TaskSpec t = parse_task_json(doc.dump());
  EXPECT_EQ(t.resolv_conf,
            "nameserver 10.0.0.2\nnameserver fd00::53\nsearch service.flotilla\noptions ndots:2\n");
  EXPECT_EQ(t.hosts, "127.0.0.1\tlocalhost\n10.42.3.7\tweb\tweb.local\n");
  EXPECT_TRUE(parse_task_json(task_doc().dump()).resolv_conf.empty());
  doc["hosts"] = json::array({{{"ip", "10.42.3.7"}, {"names", {"bad name"}}}});
  try {
    parse_task_json(doc.dump());
    ADD_FAILURE() << "a host name with a space was accepted";
  } catch (const TaskError &e) {
    EXPECT_NE(std::string(e.what()).find("hosts[0].names"), std::string::npos) << e.what();
  }

  BundleInputs in = inputs();
  in.resolv_conf_path = "/b/resolv.conf";
  in.hosts_path = "/b/hosts";
  json spec = make_oci_config(in, {});
  int found = 0;
  for (const json &m : spec["mounts"]) {
    if (m["destination"] == "/etc/resolv.conf") {
      EXPECT_EQ(m["source"], "/b/resolv.conf");
      found++;
    }
    if (m["destination"] == "/etc/hosts") {
      EXPECT_EQ(m["source"], "/b/hosts");
      EXPECT_NE(m["options"].dump().find("\"ro\""), std::string::npos);
      found++;
    }
  }
  EXPECT_EQ(found, 2);
}

TEST(OciSpec, MountsAndMaskedPaths) {
  json spec = make_oci_config(inputs(), {});
  std::vector<std::string> dests;
  for (const json &m : spec["mounts"]) dests.push_back(m["destination"]);
  for (const char *d : {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"})
    EXPECT_NE(std::find(dests.begin(), dests.end(), d), dests.end()) << d;
  EXPECT_FALSE(spec["linux"]["maskedPaths"].empty());
  EXPECT_FALSE(spec["linux"]["readonlyPaths"].empty());
}

TEST(OciSpec, OciPatchesMergeLast) {
  json doc = task_doc();
  doc["oci"] = json::array({{{"process", {{"noNewPrivileges", true}}}},
                            {{"linux", {{"seccomp", {{"defaultAction", "SCMP_ACT_ERRNO"}}}}}},
                            {{"hostname", nullptr}}});
  BundleInputs in = inputs();
  in.task = parse_task_json(doc.dump());
  json spec = make_oci_config(in, {});
  EXPECT_EQ(spec["process"]["noNewPrivileges"], true);
  EXPECT_EQ(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
  EXPECT_FALSE(spec.contains("hostname"));
  EXPECT_EQ(spec["linux"]["cgroupsPath"], "/flotilla/a1b2.web");  // untouched keys stay
}

// The security plugin's seccomp patch uses defaultErrnoRet and errnoRet,
// which runtime-spec added in 1.1.0; config.json must not claim 1.0.2.
TEST(OciSpec, DeclaresTheSpecVersionOfTheFieldsItUses) {
  json doc = task_doc();
  doc["oci"] = json::array(
      {{{"linux",
         {{"seccomp",
           {{"defaultAction", "SCMP_ACT_ERRNO"},
            {"defaultErrnoRet", 1},
            {"syscalls", json::array({{{"names", {"uname"}},
                                       {"action", "SCMP_ACT_ERRNO"},
                                       {"errnoRet", 38}}})}}}}}}});
  BundleInputs in = inputs();
  in.task = parse_task_json(doc.dump());
  json spec = make_oci_config(in, {});
  ASSERT_TRUE(spec["linux"]["seccomp"].contains("defaultErrnoRet"));
  EXPECT_EQ(spec["ociVersion"], "1.1.0");
  EXPECT_EQ(make_oci_config(inputs(), {})["ociVersion"], "1.1.0");
}

// ---- hints ----------------------------------------------------------------------

// The real CLI's exit code for argv (with --socket to nowhere, so a command
// line it accepts ends in 3, "cannot reach the daemon"; 2 is a usage error).
int cli_exit_code(std::vector<std::string> argv) {
  argv.insert(argv.begin() + 1, {"--socket", "/nonexistent/flotilla-hint-test.sock"});
  std::vector<char *> cargv;
  for (auto &a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -rc;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The hint for a missing image names the image once and is a command the
// CLI takes as it is (before: `flotilla image import <oci-layout-or-archive>
// REF`, which the CLI refuses, followed by the image store's own message).
TEST(Hints, MissingImageHintIsACommandTheCliAccepts) {
  const std::string cli = FLOTILLA_CLI_PATH;
  if (!fs::exists(cli)) GTEST_SKIP() << "the CLI is not built at " << cli;
  for (std::string ref : {"nosuch:1.0", "library/busybox:1.36", "app"}) {
    std::string msg = missing_image_message(ref);
    size_t a = msg.find('`'), b = msg.find('`', a + 1);
    ASSERT_NE(b, std::string::npos) << msg;
    EXPECT_EQ(msg.find('`', b + 1), std::string::npos) << "one command: " << msg;
    EXPECT_EQ(msg.find("image store"), msg.rfind("image store")) << "said twice: " << msg;
    std::istringstream words(msg.substr(a + 1, b - a - 1));
    std::vector<std::string> argv;
    for (std::string w; words >> w;) argv.push_back(w == "PATH" ? fs::temp_directory_path().string() : w);
    ASSERT_GE(argv.size(), 2u) << msg;
    ASSERT_EQ(argv[0], "flotilla") << msg;
    argv[0] = cli;
    EXPECT_EQ(cli_exit_code(argv), 3) << "the CLI does not take the hint `" << msg.substr(a + 1, b - a - 1) << "`";
    // The image the command would import is the one asked for.
    auto tag = std::find(argv.begin(), argv.end(), "--tag");
    ASSERT_NE(tag, argv.end()) << msg;
    ASSERT_NE(tag + 1, argv.end()) << msg;
    EXPECT_EQ(*(tag + 1), ref) << msg;
  }
  // The check itself: a command the CLI refuses is caught.
  EXPECT_EQ(cli_exit_code({cli, "image", "import", "/tmp", "nosuch:1.0"}), 2);
}

TEST(RuntimeConfig, DefaultsAndErrors) {
  RuntimeConfig c = parse_runtime_config(json::object(), "/var/lib/flotilla/plugins/runtime-runc");
  EXPECT_EQ(c.binary, "runc");
  EXPECT_EQ(c.root, "/var/lib/flotilla/plugins/runtime-runc/oci-root");
  EXPECT_EQ(c.cgroup_parent, "flotilla");
  EXPECT_EQ(c.log_max_size_mb, 10u);
  EXPECT_EQ(c.log_max_files, 5u);
  auto problem_key = [](json t) -> std::string {
    try {
      parse_runtime_config(t, "/d");
    } catch (const ConfigProblem &p) {
      return p.key + ": " + p.what();
    }
    return "";
  };
  EXPECT_EQ(problem_key({{"binray", "crun"}}).rfind("binray: is not a runtime-runc key", 0), 0u);
  EXPECT_EQ(problem_key({{"root", "relative"}}).rfind("root: must be an absolute path", 0), 0u);
  EXPECT_EQ(problem_key({{"log_max_files", 0}}).rfind("log_max_files: must be an integer", 0), 0u);
  EXPECT_EQ(problem_key({{"cgroup_parent", "../x"}}).rfind("cgroup_parent:", 0), 0u);
  EXPECT_EQ(problem_key({{"binary", "bin/crun"}}).rfind("binary:", 0), 0u);
  EXPECT_EQ(problem_key({{"cpu_hard_limit", "yes"}}).rfind("cpu_hard_limit:", 0), 0u);
  EXPECT_EQ(problem_key({{"binary", "crun"}, {"cgroup_parent", "machine.slice/flotilla"}}), "");
  EXPECT_EQ(problem_key({{"device_nodes", "mknod"}}).rfind("device_nodes: must be \"skip\"", 0),
            0u);
  EXPECT_EQ(parse_runtime_config({{"device_nodes", "refuse"}}, "/d").device_nodes, "refuse");
  EXPECT_EQ(c.device_nodes, "skip");
}

// Every bad key in one go, each with what is accepted.
TEST(RuntimeConfig, EveryProblemAtOnce) {
  std::vector<ConfigProblem> problems;
  parse_runtime_config({{"binray", "runc"},
                        {"log_max_files", 0},
                        {"root", "relative"},
                        {"cpu_hard_limit", "yes"},
                        {"device_nodes", 1}},
                       "/d", problems);
  std::vector<std::string> keys;
  for (const auto &p : problems) keys.push_back(p.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"binray", "root", "log_max_files", "cpu_hard_limit",
                                            "device_nodes"}));
}

// The registry table's problems come with the rest, all of them, under
// "registry."; a key of the wrong type is reported once.
TEST(RuntimeConfig, EveryRegistryProblemAtOnceWithTheOthers) {
  std::vector<ConfigProblem> problems;
  parse_runtime_config({{"log_max_files", 0},
                        {"shim", 5},
                        {"registry",
                         {{"bogus", 1},
                          {"insecure", {"http://x"}},
                          {"concurrency", 0},
                          {"hosts", {{"h:1", {{"ca_file", "ca.pem"}}}}}}}},
                       "/d", problems);
  std::vector<std::string> keys;
  for (const auto &p : problems) keys.push_back(p.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"shim", "log_max_files", "registry.bogus",
                                            "registry.insecure[0]", "registry.concurrency",
                                            "registry.hosts.\"h:1\".ca_file"}));
}

class RotatingLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/runtime-unit-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(RotatingLogTest, RotatesAtTheSizeAndKeepsMaxFiles) {
  std::string path = (dir_ / "stdout.log").string();
  {
    RotatingLog log(path, 10, 3);
    EXPECT_TRUE(log.write("0123456789"));  // exactly full
    EXPECT_TRUE(log.write("abcdefghij"));  // rotates once
    EXPECT_TRUE(log.write("KLMNO"));
    EXPECT_TRUE(log.write("PQRSTUVWXYZ"));  // fills .log, rotates, the rest into a new one
  }
  EXPECT_EQ(slurp(path), "UVWXYZ");
  EXPECT_EQ(slurp(path + ".1"), "KLMNOPQRST");
  EXPECT_EQ(slurp(path + ".2"), "abcdefghij");
  EXPECT_FALSE(fs::exists(path + ".3"));  // the oldest ("0123456789") fell off
  for (const auto &e : fs::directory_iterator(dir_)) EXPECT_LE(fs::file_size(e.path()), 10u);
}

TEST_F(RotatingLogTest, AppendsToAnExistingFileAcrossRestarts) {
  std::string path = (dir_ / "stderr.log").string();
  { RotatingLog(path, 8, 2).write("abcd"); }
  {
    RotatingLog log(path, 8, 2);
    EXPECT_EQ(log.current_size(), 4u);
    log.write("efghij");
  }
  EXPECT_EQ(slurp(path + ".1"), "abcdefgh");
  EXPECT_EQ(slurp(path), "ij");
}

TEST_F(RotatingLogTest, OneFileMeansStartingOver) {
  std::string path = (dir_ / "one.log").string();
  {
    RotatingLog log(path, 4, 1);
    log.write("aaaa");
    log.write("bb");
  }
  EXPECT_EQ(slurp(path), "bb");
  EXPECT_FALSE(fs::exists(path + ".1"));
}

// Logs across runs (log_runs.h): each run in its own directory, the
// symlinks on the current one, the earlier runs within max_files.
using LogRunsTest = RotatingLogTest;

nlohmann::json runs_of(const fs::path &logs) {
  return nlohmann::json::parse(slurp(logs / "runs.json"))["runs"];
}
void write_run_files(const fs::path &logs, int run, int files) {
  fs::path d = logs / ("run-" + std::to_string(run));
  std::ofstream(d / "stdout.log") << "run " << run << "\n";
  for (int k = 1; k < files; ++k)
    std::ofstream(d / ("stdout.log." + std::to_string(k))) << "run " << run << " old " << k << "\n";
}

TEST_F(LogRunsTest, EachRunHasItsDirectoryAndTheSymlinksFollowTheCurrentOne) {
  fs::path logs = dir_ / "logs";
  LogRun one = start_log_run(logs, nullptr, 5, "t0");
  EXPECT_EQ(one.run, 1);
  EXPECT_EQ(one.stdout_log, logs / "run-1" / "stdout.log");
  EXPECT_EQ(fs::read_symlink(logs / "stdout.log"), fs::path("run-1/stdout.log"));
  EXPECT_EQ(fs::read_symlink(logs / "stderr.log"), fs::path("run-1/stderr.log"));
  write_run_files(logs, 1, 1);
  EXPECT_EQ(slurp(logs / "stdout.log"), "run 1\n");  // through the symlink

  nlohmann::json ended = {{"exit_code", 3},
                          {"signal", 0},
                          {"started_at", "t1"},
                          {"finished_at", "t2"},
                          {"status", "stopped"}};
  LogRun two = start_log_run(logs, ended, 5, "t3");
  EXPECT_EQ(two.run, 2);
  EXPECT_EQ(fs::read_symlink(logs / "stdout.log"), fs::path("run-2/stdout.log"));
  nlohmann::json runs = runs_of(logs);
  ASSERT_EQ(runs.size(), 2u) << runs.dump();
  EXPECT_EQ(runs[0]["exit_code"], 3);
  EXPECT_EQ(runs[0]["started_at"], "t1");
  EXPECT_EQ(runs[0]["finished_at"], "t2");
  EXPECT_FALSE(runs[0].contains("status")) << "only how it ended";
  EXPECT_EQ(runs[1]["run"], 2);
  EXPECT_EQ(runs[1]["created_at"], "t3");
  EXPECT_EQ(slurp(logs / "run-1" / "stdout.log"), "run 1\n") << "run 1 is kept";

  // How run 2 ended, recorded at its exit.
  record_run_end(logs, 2, {{"exit_code", 0}, {"signal", 9}, {"finished_at", "t4"}});
  runs = runs_of(logs);
  EXPECT_EQ(runs[1]["signal"], 9);
  EXPECT_EQ(runs[1]["finished_at"], "t4");
  record_run_end(logs, 7, {{"exit_code", 1}});  // no such run: nothing changes
  EXPECT_EQ(runs_of(logs), runs);
}

TEST_F(LogRunsTest, ARunThatNeverStartedIsReused) {
  fs::path logs = dir_ / "logs";
  start_log_run(logs, nullptr, 5, "t0");
  write_run_files(logs, 1, 1);
  EXPECT_EQ(start_log_run(logs, nullptr, 5, "t1").run, 2);
  // Run 2's create failed before its monitor wrote anything.
  EXPECT_EQ(start_log_run(logs, nullptr, 5, "t2").run, 2);
  nlohmann::json runs = runs_of(logs);
  ASSERT_EQ(runs.size(), 2u) << runs.dump();
  EXPECT_EQ(runs[1]["created_at"], "t2");
}

TEST_F(LogRunsTest, EarlierRunsKeepAtMostMaxFilesOldestFirst) {
  fs::path logs = dir_ / "logs";
  for (int run = 1; run <= 3; ++run) {
    EXPECT_EQ(start_log_run(logs, nullptr, 3, "t").run, run);
    write_run_files(logs, run, 2);  // stdout.log and stdout.log.1
  }
  // Six files of earlier runs, three may stay: run 1's two and run 2's
  // oldest go.
  EXPECT_EQ(start_log_run(logs, nullptr, 3, "t").run, 4);
  nlohmann::json runs = runs_of(logs);
  ASSERT_EQ(runs.size(), 4u) << runs.dump();
  EXPECT_TRUE(runs[0].value("dropped", false)) << runs.dump();
  EXPECT_FALSE(fs::exists(logs / "run-1"));
  EXPECT_TRUE(runs[1].value("truncated", false)) << runs.dump();
  EXPECT_FALSE(fs::exists(logs / "run-2" / "stdout.log.1"));
  EXPECT_EQ(slurp(logs / "run-2" / "stdout.log"), "run 2\n");
  EXPECT_FALSE(runs[2].value("truncated", false)) << runs.dump();
  EXPECT_TRUE(fs::exists(logs / "run-3" / "stdout.log.1"));
  size_t files = 0;
  for (const auto &e : fs::recursive_directory_iterator(logs))
    if (e.is_regular_file() && e.path().filename().string().rfind("stdout.log", 0) == 0) ++files;
  EXPECT_EQ(files, 3u) << "earlier runs within max_files";
}

TEST_F(LogRunsTest, LogsOfAnOlderPluginBecomeRunOne) {
  fs::path logs = dir_ / "logs";
  fs::create_directories(logs);
  std::ofstream(logs / "stdout.log") << "before the upgrade\n";
  std::ofstream(logs / "stdout.log.1") << "older\n";
  LogRun next = start_log_run(logs, {{"exit_code", 1}}, 5, "t");
  EXPECT_EQ(next.run, 2);
  EXPECT_EQ(slurp(logs / "run-1" / "stdout.log"), "before the upgrade\n");
  EXPECT_EQ(slurp(logs / "run-1" / "stdout.log.1"), "older\n");
  EXPECT_TRUE(fs::is_symlink(logs / "stdout.log"));
  EXPECT_EQ(runs_of(logs)[0]["exit_code"], 1);
}

TEST(LogRuns, StreamNames) {
  fs::path logs = "/d/logs";
  EXPECT_EQ(log_stream_path(logs, "stdout"), "/d/logs/stdout.log");
  EXPECT_EQ(log_stream_path(logs, "stderr"), "/d/logs/stderr.log");
  EXPECT_EQ(log_stream_path(logs, "runs"), "/d/logs/runs.json");
  EXPECT_EQ(log_stream_path(logs, "stdout@2"), "/d/logs/run-2/stdout.log");
  EXPECT_EQ(log_stream_path(logs, "stderr@17"), "/d/logs/run-17/stderr.log");
  for (const char *bad : {"", "stdin", "stdout@", "stdout@0", "stdout@01", "stdout@x",
                          "stdout@1/../..", "runs@1", "stdout@1234567890"})
    EXPECT_EQ(log_stream_path(logs, bad), "") << bad;
}

TEST(TaskSpec, ReplaceIsABoolean) {
  nlohmann::json doc = task_doc();
  EXPECT_FALSE(parse_task_json(doc.dump()).replace);
  doc["replace"] = true;
  EXPECT_TRUE(parse_task_json(doc.dump()).replace);
  doc["replace"] = "yes";
  try {
    parse_task_json(doc.dump());
    ADD_FAILURE() << "accepted";
  } catch (const TaskError &e) {
    EXPECT_NE(std::string(e.what()).find("replace"), std::string::npos) << e.what();
  }
}

}  // namespace

// Start-up removes what killed pulls left in pulls/, and not the pull a
// live process holds the lock of (another daemon on the same image
// directory; here this process, on its own descriptor, which flock treats
// the same way).
TEST(ImagePullsDir, StartUpRemovesWhatKilledPullsLeftButNotALivePull) {
  const fs::path d = fs::temp_directory_path() / ("flotilla-pulls-test-" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d / "11-0" / "blobs");
  std::optional<FileLock> live(std::in_place, d / "11-0.lock", FileLock::Mode::exclusive);
  fs::create_directories(d / "12-0" / "x");
  std::ofstream(d / "12-0.lock").put('\n');  // a killed pull's: no one holds it
  fs::create_directories(d / "13-0");          // no lock file at all
  std::ofstream(d / "14-0.lock").put('\n');  // a lock file without its directory
  EXPECT_EQ(remove_abandoned_pulls(d), 3u);
  EXPECT_TRUE(fs::exists(d / "11-0" / "blobs")) << "a live pull's directory was removed";
  EXPECT_TRUE(fs::exists(d / "11-0.lock"));
  for (const char *gone : {"12-0", "12-0.lock", "13-0", "13-0.lock", "14-0.lock"})
    EXPECT_FALSE(fs::exists(d / gone)) << gone;
  // Once that pull's process is gone, its leftovers go too.
  live.reset();
  EXPECT_EQ(remove_abandoned_pulls(d), 1u);
  EXPECT_TRUE(fs::is_empty(d));
  EXPECT_EQ(remove_abandoned_pulls(d / "missing"), 0u) << "no pulls directory yet";
  fs::remove_all(d);
}
