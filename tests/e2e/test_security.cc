// The security plugin with real containers: a real flotillad, the real
// scheduler, runtime-runc driving runc, and the static security-probe in a
// one-file image (plugins/security/tests/mkimage-probe). The probe tries
// syscalls inside the container and prints each result; these tests read
// its output through `flotilla alloc logs`. Every test has its own daemon,
// data dir and OCI root, and removes every container, mount and shim.
#include <gtest/gtest.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "alloc_status.h"
#include "container_daemon.h"
#include "daemon_harness.h"

using nlohmann::json;
namespace e2e = flotilla::e2e;
namespace fs = std::filesystem;

namespace {

std::string cli() {
  return e2e::build_dir() + "/tools/flotilla/flotilla";
}

std::string slurp(const std::string &path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The probe's output: "<name> ok" / "<name> errno EPERM 1" -> name -> "ok"
// / "EPERM"; "status CapEff:\t000..." -> "CapEff" -> "000...".
struct ProbeResult {
  std::map<std::string, std::string> calls, status;
  std::string raw;
  std::string call(const std::string &n) const {
    auto it = calls.find(n);
    return it == calls.end() ? "(not run)" : it->second;
  }
};

// Removes the files a test wrote outside its daemon's directory, also when
// an assertion ends the test early.
bool kernel_at_least(int major, int minor) {
  struct utsname u {};
  int ma = 0, mi = 0;
  if (uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &ma, &mi) != 2) return false;
  return std::pair(ma, mi) >= std::pair(major, minor);
}

struct RemoveFiles {
  std::vector<std::string> paths;
  ~RemoveFiles() {
    std::error_code ec;
    for (const auto &p : paths) fs::remove(p, ec);
  }
};

ProbeResult parse_probe(const std::string &out) {
  ProbeResult r;
  r.raw = out;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string a, b, c;
    ls >> a >> b >> c;
    if (a == "status") {
      if (!b.empty() && b.back() == ':') b.pop_back();
      r.status[b] = c;
    } else if (b == "ok") {
      r.calls[a] = "ok";
    } else if (b == "errno") {
      r.calls[a] = c;
    } else if (b == "signal") {
      r.calls[a] = "signal " + c;
    }
  }
  return r;
}

class Security : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: running containers needs root";
    if (access("/usr/sbin/runc", X_OK) != 0 && access("/usr/bin/runc", X_OK) != 0)
      GTEST_SKIP() << "SKIPPED: runc is not installed";
    if (!fs::exists("/proc/self/status") ||
        slurp("/proc/self/status").find("Seccomp:") == std::string::npos)
      GTEST_SKIP() << "SKIPPED: this kernel has no seccomp";
  }

  // Start a daemon with the scheduler, the runtime and the security plugin
  // ([plugin.security] gets policy), plus extra top-level config, and
  // import the probe image.
  void start(const std::string &policy, const std::string &extra = "") {
    d_ = std::make_unique<e2e::Daemon>();
    d_->write_config(config(policy, extra));
    ASSERT_TRUE(d_->start()) << d_->log();
    std::string image = d_->dir() + "/probe-oci";
    auto mk = e2e::run(
        {e2e::source_dir() + "/plugins/security/tests/mkimage-probe", SECURITY_PROBE_PATH, image});
    ASSERT_EQ(mk.exit_code, 0) << mk.output;
    auto imp = flotilla({"image", "import", image, "--tag", "flotilla-probe:latest"});
    ASSERT_EQ(imp.exit_code, 0) << imp.output << d_->log();
  }

  std::string config(const std::string &policy, const std::string &extra) {
    return e2e::container_plugins_config(*d_, cgroup_parent()) +
           "\n[plugin.security]\npath = \"" SECURITY_PLUGIN_PATH "\"\n" + policy + "\n" + extra;
  }

  void TearDown() override {
    if (!d_) return;
    e2e::remove_everything(*d_, cgroup_parent());
    d_.reset();
  }

  static std::string cgroup_parent() { return "flotilla-e2e-sec-" + std::to_string(getpid()); }

  e2e::RunResult flotilla(std::vector<std::string> args) {
    args.insert(args.begin(), {cli(), "--socket", d_->socket()});
    return e2e::run(args);
  }

  bool containers_gone() { return e2e::containers_gone(*d_); }

  json first_alloc(const std::string &job) {
    json j = json::parse(d_->get("/v1/jobs/" + job).body, nullptr, false);
    if (!j.is_object()) return json::object();
    for (const char *k : {"allocations", "allocs"})
      if (j.contains(k) && j[k].is_array() && !j[k].empty()) return j[k][0];
    return json::object();
  }
  static std::string status_of(const json &alloc) { return e2e::alloc_status(alloc); }

  // POST a job; the HTTP status and body.
  e2e::HttpReply submit(const std::string &toml) {
    return e2e::http(d_->socket(), "POST", "/v1/jobs", toml, "application/toml");
  }

  // Run the probe as a batch job with this [task.security] body (empty: no
  // table) and return what it printed.
  ProbeResult probe(const std::string &job, const std::string &security,
                    const std::string &task_extra = "") {
    std::string toml = "name = \"" + job +
                       "\"\ntype = \"batch\"\n[restart]\nattempts = 0\n"
                       "[[task]]\nname = \"probe\"\nimage = \"flotilla-probe:latest\"\n"
                       "command = \"/probe\"\n" +
                       task_extra;
    if (!security.empty()) toml += "[task.security]\n" + security;
    auto r = submit(toml);
    EXPECT_EQ(r.status, 201) << r.body;
    json a;
    for (int i = 0; i < 900; ++i) {
      a = first_alloc(job);
      std::string st = status_of(a);
      if (st == "complete" || st == "failed") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(status_of(a), "complete") << a.dump() << "\n" << d_->log();
    auto logs = flotilla({"alloc", "logs", a.value("id", "")});
    EXPECT_NE(logs.output.find("probe done"), std::string::npos) << logs.output;
    return parse_probe(logs.output);
  }

  std::unique_ptr<e2e::Daemon> d_;
};

const char *const kNeverAllowed[] = {"userfaultfd", "keyctl",      "add_key",
                                     "request_key", "kexec_load",  "swapon",
                                     "pivot_root",  "init_module", "io_uring_setup"};

TEST_F(Security, DefaultDeniesForbiddenCallsAndUnconfinedShowsTheyWouldWork) {
  start("allow_unconfined = true\n");
  ProbeResult def = probe("def", "profile = \"default\"\n");
  for (const char *ok : {"getpid", "write_file", "fork", "socket_inet", "personality_query",
                         "chroot", "ptrace_traceme"})
    EXPECT_EQ(def.call(ok), "ok") << ok << "\n" << def.raw;
  for (const char *never : kNeverAllowed)
    EXPECT_EQ(def.call(never), "EPERM") << never << "\n" << def.raw;
  for (const char *admin :
       {"unshare_user", "unshare_uts", "mount_tmpfs", "personality_bsd", "socket_vsock"})
    EXPECT_EQ(def.call(admin), "EPERM") << admin << "\n" << def.raw;
  // Only the address families Docker's default allows: not AF_ALG (38).
  EXPECT_EQ(def.call("socket_alg"), "EPERM") << def.raw;
  EXPECT_EQ(def.status["Seccomp"], "2") << def.raw;
  EXPECT_EQ(def.status["NoNewPrivs"], "1") << def.raw;
  // Docker's 14 default capabilities: 0x00000000a80425fb.
  EXPECT_EQ(def.status["CapEff"], "00000000a80425fb") << def.raw;

  // A task without a table gets the host's default profile too.
  ProbeResult plain = probe("plain", "");
  EXPECT_EQ(plain.call("userfaultfd"), "EPERM") << plain.raw;
  EXPECT_EQ(plain.status["Seccomp"], "2") << plain.raw;

  // The same calls unconfined: the kernel would have let them through, so
  // the EPERMs above are the filter's.
  ProbeResult open = probe("open", "profile = \"unconfined\"\n");
  EXPECT_EQ(open.status["Seccomp"], "0") << open.raw;
  for (const char *would : {"keyctl", "add_key", "unshare_user", "personality_bsd"})
    EXPECT_EQ(open.call(would), "ok") << would << "\n" << open.raw;
  // AF_ALG and AF_VSOCK: whatever the kernel answers, it is not the filter's EPERM.
  EXPECT_NE(open.call("socket_alg"), "EPERM") << open.raw;
  EXPECT_NE(open.call("socket_vsock"), "EPERM") << open.raw;
  if (kernel_at_least(5, 11)) {  // userfaultfd(UFFD_USER_MODE_ONLY) needs no privilege from 5.11
    EXPECT_EQ(open.call("userfaultfd"), "ok") << open.raw;
  }
  EXPECT_NE(d_->log().find("runs unconfined"), std::string::npos);
}

TEST_F(Security, RestrictedHasNoCapabilitiesAndCannotBecomeRoot) {
  start("");
  ProbeResult r = probe("res", "profile = \"restricted\"\nuser = \"65534:65534\"\n");
  EXPECT_EQ(r.status["CapEff"], "0000000000000000") << r.raw;
  EXPECT_EQ(r.status["CapBnd"], "0000000000000000") << r.raw;
  EXPECT_EQ(r.status["NoNewPrivs"], "1") << r.raw;
  EXPECT_EQ(r.status["Seccomp"], "2") << r.raw;
  EXPECT_EQ(r.call("setuid0"), "EPERM") << r.raw;
  EXPECT_EQ(r.call("getpid"), "ok") << r.raw;
  EXPECT_EQ(r.call("write_file"), "ok") << r.raw;
  EXPECT_EQ(r.call("userfaultfd"), "EPERM") << r.raw;
  // Root in the default profile for contrast: setuid(0) works.
  ProbeResult root = probe("root", "profile = \"default\"\n");
  EXPECT_EQ(root.call("setuid0"), "ok") << root.raw;
}

TEST_F(Security, ReadOnlyRootfsAndTheExampleJobUnderTheExamplePolicy) {
  // The policy examples/flotillad.toml ships.
  start(
      "default_profile = \"default\"\nmin_profile = \"default\"\n"
      "allowed_cap_add = [\"NET_BIND_SERVICE\"]\nallow_root = true\nallow_unconfined = false\n");
  ProbeResult rw = probe("rw", "profile = \"default\"\n");
  ProbeResult ro = probe("ro", "profile = \"default\"\nread_only_rootfs = true\n");
  EXPECT_EQ(rw.call("write_root"), "ok") << rw.raw;
  EXPECT_EQ(ro.call("write_root"), "EROFS") << ro.raw;

  // examples/jobs/hello.toml, unchanged, confined by the default profile.
  std::string image = d_->dir() + "/busybox-oci";
  auto mk = e2e::run({e2e::source_dir() + "/tools/mkimage-busybox", image});
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  ASSERT_EQ(flotilla({"image", "import", image, "--tag", "busybox:latest"}).exit_code, 0);
  auto run = flotilla({"job", "run", "--detach", e2e::source_dir() + "/examples/jobs/hello.toml"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  json a;
  for (int i = 0;
       i < 900 && status_of(a = first_alloc("hello")) != "complete" && status_of(a) != "failed";
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(status_of(a), "complete") << a.dump() << d_->log();
  auto logs = flotilla({"alloc", "logs", a.value("id", "")});
  EXPECT_NE(logs.output.find("hello from flotilla"), std::string::npos) << logs.output;
}

TEST_F(Security, CapAddOpensTheCapabilityConditionedRules) {
  start("allowed_cap_add = [\"SYS_ADMIN\"]\n");
  ProbeResult without = probe("without", "profile = \"default\"\n");
  ProbeResult with = probe("with", "profile = \"default\"\ncap_add = [\"SYS_ADMIN\"]\n");
  // unshare(CLONE_NEWUSER) needs no capability from the kernel: only the
  // seccomp rule conditioned on CAP_SYS_ADMIN decides.
  EXPECT_EQ(without.call("unshare_user"), "EPERM") << without.raw;
  EXPECT_EQ(with.call("unshare_user"), "ok") << with.raw;
  EXPECT_EQ(without.call("mount_tmpfs"), "EPERM") << without.raw;
  EXPECT_EQ(with.call("mount_tmpfs"), "ok") << with.raw;
  // What no capability opens stays shut.
  EXPECT_EQ(with.call("keyctl"), "EPERM") << with.raw;
  EXPECT_EQ(with.call("pivot_root"), "EPERM") << with.raw;
}

TEST_F(Security, AdmissionRefusesWhatThePolicyForbidsAndStoresNothing) {
  start("allowed_cap_add = [\"NET_BIND_SERVICE\"]\n");
  auto job = [](const std::string &name, const std::string &security) {
    return "name = \"" + name +
           "\"\ntype = \"batch\"\n[[task]]\nname = \"t\"\n"
           "image = \"flotilla-probe:latest\"\ncommand = \"/probe\"\n[task.security]\n" +
           security;
  };
  struct Case {
    std::string security;
    int status;
    std::string says;
  } cases[] = {
      {"profile = \"unconfined\"\n", 403,
       "refused by rule plugin.security.allow_unconfined = false"},
      {"cap_add = [\"NET_ADMIN\"]\n", 403,
       "refused by rule plugin.security.allowed_cap_add = [\"CAP_NET_BIND_SERVICE\"]: the task "
       "adds \"CAP_NET_ADMIN\""},
      {"profile = \"restricted\"\n", 403,
       "refused by profile \"restricted\": must run as a non-root user"},
      {"profile = \"restricted\"\nuser = \"1000\"\ncap_add = [\"SYS_ADMIN\"]\n", 403,
       "refused by profile \"restricted\": only [\"CAP_NET_BIND_SERVICE\"] may be added"},
      {"no_new_privileges = false\n", 403,
       "refused by rule plugin.security.allow_privilege_escalation = false"},
      {"profile = \"nope\"\n", 400, "security.profile \"nope\" is not a profile this host has"},
      {"cap_add = [\"MAKE_COFFEE\"]\n", 400, "unknown capability \"MAKE_COFFEE\""},
  };
  int n = 0;
  for (const Case &c : cases) {
    std::string name = "refused-" + std::to_string(n++);
    auto r = submit(job(name, c.security));
    EXPECT_EQ(r.status, c.status) << c.security << r.body;
    json body = json::parse(r.body, nullptr, false);
    std::string message =
        body.is_object() && body.contains("error") ? body["error"].value("message", "") : r.body;
    EXPECT_NE(message.find(c.says), std::string::npos) << c.security << message;
    EXPECT_EQ(d_->get("/v1/jobs/" + name).status, 404) << "stored although refused: " << name;
  }
  // What the policy allows is admitted.
  auto ok = submit(job("allowed",
                       "profile = \"restricted\"\nuser = \"1000\"\n"
                       "cap_add = [\"NET_BIND_SERVICE\"]\n"));
  EXPECT_EQ(ok.status, 201) << ok.body;
}

TEST_F(Security, APolicyTightenedAfterAdmissionStillHoldsWhenTheTaskRestarts) {
  // Admitted and running unconfined under a permissive policy...
  start("allow_unconfined = true\n");
  auto r = submit("name = \"loose\"\n[restart]\nattempts = 1\ndelay = \"0s\"\n"
                  "[[task]]\nname = \"t\"\nimage = \"flotilla-probe:latest\"\n"
                  "command = \"/probe\"\nargs = [\"--sleep\"]\nkill_timeout = \"1s\"\n"
                  "[task.security]\nprofile = \"unconfined\"\n");
  ASSERT_EQ(r.status, 201) << r.body;
  json a;
  for (int i = 0; i < 900 && status_of(a = first_alloc("loose")) != "running"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(status_of(a), "running") << a.dump() << d_->log();
  // ... then the operator forbids unconfined and restarts the daemon, and
  // the container dies meanwhile. Its restart goes through resolve(),
  // which checks the policy again: it does not start, and the allocation
  // says which rule stopped it.
  d_->signal(SIGTERM);
  ASSERT_EQ(d_->wait_exit(), 0) << d_->log();
  const std::string cid = a.value("id", "") + ".t";
  auto kill = e2e::run({"/usr/sbin/runc", "--root", d_->dir() + "/oci-root", "kill", cid, "KILL"});
  ASSERT_EQ(kill.exit_code, 0) << kill.output;
  d_->write_config(config("allow_unconfined = false\n", ""));
  ASSERT_TRUE(d_->start()) << d_->log();
  std::string message;
  for (int i = 0; i < 900; ++i) {
    a = first_alloc("loose");
    message = a.dump();
    if (status_of(a) == "failed") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(status_of(a), "failed") << message << "\n" << d_->log();
  EXPECT_NE(message.find("refused by rule plugin.security.allow_unconfined = false"),
            std::string::npos)
      << message;
}

TEST_F(Security, DockerProfileIsResolvedForThisHostAndContainer) {
  // Allow by default (so runc's own set-up runs), with rules whose includes
  // and excludes only this host and this container can decide.
  std::string file = "/tmp/flotilla-e2e-sec-" + std::to_string(getpid()) + "-docker.json";
  RemoveFiles cleanup{{file}};
  std::ofstream(file) << R"({
  "defaultAction": "SCMP_ACT_ALLOW",
  "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
              {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
  "syscalls": [
    {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
     "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["userfaultfd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
     "includes": {"minKernel": "4.0"}},
    {"names": ["add_key"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "99.0"}},
    {"names": ["request_key"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
     "includes": {"arches": ["s390x"]}},
    {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
     "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95,
     "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]}
  ]})";
  start("allowed_cap_add = [\"SYS_ADMIN\"]\n[plugin.security.profiles]\ndocker = \"" + file +
        "\"\n");
  ProbeResult plain = probe("docker", "profile = \"docker\"\n");
  EXPECT_EQ(plain.call("keyctl"), "EACCES") << plain.raw;            // not excluded: no SYS_ADMIN
  EXPECT_EQ(plain.call("userfaultfd"), "ENOSYS") << plain.raw;       // kernel >= 4.0
  EXPECT_EQ(plain.call("add_key"), "ok") << plain.raw;               // kernel < 99.0: rule left out
  EXPECT_NE(plain.call("request_key"), "EINVAL") << plain.raw;       // not s390x: rule left out
  EXPECT_EQ(plain.call("socket_vsock"), "EOPNOTSUPP") << plain.raw;  // errno 95, arg rule
  EXPECT_EQ(plain.call("socket_inet"), "ok") << plain.raw;
  ProbeResult admin = probe("docker-admin", "profile = \"docker\"\ncap_add = [\"SYS_ADMIN\"]\n");
  EXPECT_EQ(plain.call("personality_query"), "ok") << plain.raw;  // included only with SYS_ADMIN
  EXPECT_EQ(admin.call("keyctl"), "ok") << admin.raw;             // excluded by the capability
  EXPECT_EQ(admin.call("personality_query"), "EINVAL") << admin.raw;  // included by it
}

// Docker's own default profile, as moby/profiles ships it (shared/testdata):
// archMap entries for other machines (SCMP_ARCH_LOONGARCH64, which
// libseccomp 2.5 does not know) are ignored, syscall names newer than this
// libseccomp are left out with one warning that lists them, and the profile
// enforces what Docker's does.
TEST_F(Security, DockersOwnDefaultProfileLoadsAndEnforces) {
  const std::string moby = e2e::source_dir() + "/../shared/testdata/seccomp/moby-default.json";
  if (!fs::exists(moby)) GTEST_SKIP() << "SKIPPED: " << moby << " is not there";
  start("[plugin.security.profiles]\nmoby = \"" + moby + "\"\n");
  EXPECT_NE(d_->log().find("profile moby loaded from " + moby), std::string::npos) << d_->log();
  // One warning, naming the left-out syscalls, when there are any.
  const std::string left_out = "does not know were left out of profile " + moby;
  size_t warn = d_->log().find(left_out);
  if (warn != std::string::npos) {
    EXPECT_EQ(d_->log().find(left_out, warn + 1), std::string::npos) << d_->log();
  }
  ProbeResult r = probe("moby", "profile = \"moby\"\n");
  EXPECT_EQ(r.status["Seccomp"], "2") << r.raw;
  for (const char *ok : {"getpid", "write_file", "fork", "socket_inet", "personality_query"})
    EXPECT_EQ(r.call(ok), "ok") << ok << "\n" << r.raw;
  for (const char *denied : {"socket_alg", "socket_vsock", "keyctl", "add_key", "userfaultfd",
                             "unshare_user", "mount_tmpfs", "kexec_load", "io_uring_setup"})
    EXPECT_EQ(r.call(denied), "EPERM") << denied << "\n" << r.raw;
}

// A profile shaped like Docker's current one, made here so that it does not
// depend on shared/: default action ERRNO, an allow-list (every syscall this
// libseccomp knows on this machine but the ones the probe shows denied),
// archMap entries for other machines (one no libseccomp knows), and syscall
// names newer than libseccomp 2.5 in the allow-list.
TEST_F(Security, DockerShapedProfileWithForeignArchesAndNewSyscallsEnforces) {
  const std::string file =
      "/tmp/flotilla-e2e-sec-" + std::to_string(getpid()) + "-docker-shaped.json";
  RemoveFiles cleanup{{file}};
  const std::set<std::string> denied = {"keyctl",      "add_key", "request_key", "unshare",
                                        "userfaultfd", "socket",  "kexec_load",  "mount"};
  json names = {"getxattrat", "setxattrat", "listmount", "mseal", "lsm_list_modules"};
  for (int nr = 0; nr < 1024; ++nr) {
    char *n = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    if (!n) continue;
    if (!denied.count(n)) names.push_back(n);
    std::free(n);
  }
  json profile = {
      {"defaultAction", "SCMP_ACT_ERRNO"},
      {"defaultErrnoRet", 1},
      {"archMap",
       {{{"architecture", "SCMP_ARCH_X86_64"},
         {"subArchitectures", {"SCMP_ARCH_X86", "SCMP_ARCH_X32"}}},
        {{"architecture", "SCMP_ARCH_AARCH64"}, {"subArchitectures", {"SCMP_ARCH_ARM"}}},
        {{"architecture", "SCMP_ARCH_LOONGARCH64"}, {"subArchitectures", json::array()}},
        {{"architecture", "SCMP_ARCH_FUTURE128"}, {"subArchitectures", {"SCMP_ARCH_FUTURE64"}}}}},
      {"syscalls",
       {{{"names", names}, {"action", "SCMP_ACT_ALLOW"}},
        {{"names", {"lsm_get_self_attr"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", 38}},
        // AF_UNIX and AF_INET only
        {{"names", {"socket"}},
         {"action", "SCMP_ACT_ALLOW"},
         {"args", {{{"index", 0}, {"value", 3}, {"op", "SCMP_CMP_LT"}}}}}}}};
  std::ofstream(file) << profile.dump(1);
  start("[plugin.security.profiles]\nshaped = \"" + file + "\"\n");
  std::string log = d_->log();
  EXPECT_NE(log.find("profile shaped loaded from " + file), std::string::npos) << log;
  // One warning that lists every left-out name.
  const std::string left_out = "does not know were left out of profile " + file;
  size_t warn = log.find(left_out);
  ASSERT_NE(warn, std::string::npos) << log;
  EXPECT_EQ(log.find(left_out, warn + 1), std::string::npos) << log;
  size_t bol = log.rfind('\n', warn) + 1;
  std::string line = log.substr(bol, log.find('\n', warn) - bol);
  for (const char *n : {"getxattrat", "setxattrat", "listmount", "mseal", "lsm_get_self_attr"})
    if (seccomp_syscall_resolve_name(n) == __NR_SCMP_ERROR) {
      EXPECT_NE(line.find(n), std::string::npos) << n << "\n" << line;
    }
  ProbeResult r = probe("shaped", "profile = \"shaped\"\n");
  EXPECT_EQ(r.status["Seccomp"], "2") << r.raw;
  for (const char *ok : {"getpid", "write_file", "fork", "socket_inet"})
    EXPECT_EQ(r.call(ok), "ok") << ok << "\n" << r.raw;
  for (const char *no : {"socket_alg", "socket_vsock", "keyctl", "unshare_user", "userfaultfd"})
    EXPECT_EQ(r.call(no), "EPERM") << no << "\n" << r.raw;
}

// Every problem of a profile in one start, not one per restart.
TEST_F(Security, AProfileWithSeveralProblemsReportsThemAllInOneStart) {
  const std::string file = "/tmp/flotilla-e2e-sec-" + std::to_string(getpid()) + "-many.json";
  RemoveFiles cleanup{{file}};
  std::ofstream(file) << R"({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": -1,
  "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_Z80"]}],
  "syscalls": [
    {"names": ["make_coffee"], "action": "SCMP_ACT_ERRNO"},
    {"names": ["mount"], "action": "SCMP_ACT_NOPE"},
    {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_NOPE"]}},
    {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "colour": "red"}
  ]})";
  start("[plugin.security.profiles]\nmany = \"" + file + "\"\n");
  std::string log = d_->log();
  for (const char *says :
       {"defaultErrnoRet: must be a non-negative integer", "unknown syscall \"make_coffee\"",
        "syscalls[1].action: unknown action \"SCMP_ACT_NOPE\"",
        "syscalls[2].includes.caps[0]: unknown capability \"CAP_NOPE\"",
        "syscalls[3].colour: unknown key"})
    EXPECT_NE(log.find(says), std::string::npos) << says << "\n" << log;
  struct utsname u {};
  if (uname(&u) == 0 && std::string(u.machine) == "x86_64") {
    EXPECT_NE(log.find("archMap[0].subArchitectures: unknown architecture \"SCMP_ARCH_Z80\""),
              std::string::npos)
        << log;
  }
}

// --check-config runs every check start-up runs, for every plugin, prints
// every problem with file, line and key, and exits non-zero; start-up
// reports the same problems together.
TEST_F(Security, CheckConfigReportsEveryPluginsProblemsTogether) {
  const std::string broken =
      "/tmp/flotilla-e2e-sec-" + std::to_string(getpid()) + "-check-broken.toml";
  RemoveFiles cleanup{{broken}};
  std::ofstream(broken) << "[[syscall]]\nnames = [\"read\", \"make_coffee\"]\n";
  e2e::Daemon d;
  std::string cfg = e2e::container_plugins_config(d, cgroup_parent());
  cfg.replace(cfg.find("[plugin.runtime-runc]\n"), 22,
              "[plugin.runtime-runc]\nbinray = \"runc\"\nlog_max_files = 0\n");
  d.write_config(cfg +
                 "\n[plugin.security]\npath = \"" SECURITY_PLUGIN_PATH
                 "\"\nallow_rooot = false\n[plugin.security.profiles]\nweb = \"" +
                 broken + "\"\n");
  {  // store-local's own table is in the harness's config: add fsync there
    std::string text = slurp(d.config_path());
    size_t at = text.find("[plugin.store-local]");
    ASSERT_NE(at, std::string::npos) << text;
    text.insert(text.find('\n', at) + 1, "fsync = \"yes\"\n");
    std::ofstream(d.config_path(), std::ios::trunc) << text;
  }
  std::string text = slurp(d.config_path());
  auto line_of = [&](const std::string &needle) {
    size_t at = text.find(needle);
    return at == std::string::npos
               ? -1
               : 1 + static_cast<int>(std::count(text.begin(), text.begin() + at, '\n'));
  };
  const std::string where = "config " + d.config_path() + " line ";
  const std::vector<std::string> want = {
      where + std::to_string(line_of("fsync")) +
          ": plugin.store-local.fsync: \"yes\" is not true or false",
      where + std::to_string(line_of("binray")) +
          ": plugin.runtime-runc.binray: is not a runtime-runc key",
      where + std::to_string(line_of("log_max_files")) +
          ": plugin.runtime-runc.log_max_files: must be an integer from 1 to 100, got 0",
      where + std::to_string(line_of("allow_rooot")) + ": plugin.security.allow_rooot: unknown key",
      where + std::to_string(line_of("web =")) + ": plugin.security.profiles.web: profile " +
          broken + " line 2, syscall[0].names[1]: unknown syscall \"make_coffee\"",
  };
  auto check = e2e::run(
      {e2e::build_dir() + "/core/flotillad", "--config", d.config_path(), "--check-config"});
  EXPECT_EQ(check.exit_code, 2) << check.output;
  for (const auto &w : want)
    EXPECT_NE(check.output.find(w), std::string::npos) << w << "\n" << check.output;
  EXPECT_EQ(check.output.find("are valid"), std::string::npos) << check.output;

  // Start-up: the same problems in one go (the broken profile alone would
  // be tolerated there, so it is not among them), and nothing started.
  EXPECT_FALSE(d.start());
  for (size_t i = 0; i + 1 < want.size(); ++i)
    EXPECT_NE(d.log().find(want[i]), std::string::npos) << want[i] << "\n" << d.log();
  EXPECT_EQ(d.log().find("plugin started"), std::string::npos) << d.log();
}

TEST_F(Security, BadProfilesAreRefusedWithThePreciseReasonAndTheDaemonKeepsRunning) {
  const std::string base = "/tmp/flotilla-e2e-sec-" + std::to_string(getpid()) + "-bad";
  struct Case {
    std::string ext, text, says;
  } cases[] = {
      {".json",
       R"({"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read","make_coffee"],"action":"SCMP_ACT_ERRNO"}]})",
       "-bad0.json: syscalls[0].names[1]: unknown syscall \"make_coffee\""},
      {".json",
       R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_NOPE"]}}]})",
       "-bad1.json: syscalls[0].includes.caps[0]: unknown capability \"CAP_NOPE\""},
      {".json", "{\"defaultAction\": \"SCMP_ACT_ERRNO\",\n\"syscalls\": [}",
       "-bad2.json line 2: not valid JSON"},
      {".toml", "[[syscall]]\nnames = [\"read\"\n", "-bad3.toml line 2: TOML syntax error"},
      {".toml", "[[syscall]]\nnames = [\"read\"]\nif_caps = [\"NOPE\"]\n",
       "-bad4.toml line 3, syscall[0].if_caps[0]: unknown capability \"NOPE\""},
  };
  std::string profiles = "[plugin.security.profiles]\n";
  RemoveFiles cleanup;
  std::vector<std::string> &files = cleanup.paths;
  for (size_t i = 0; i < std::size(cases); ++i) {
    files.push_back(base + std::to_string(i) + cases[i].ext);
    std::ofstream(files.back()) << cases[i].text;
    profiles += "bad" + std::to_string(i) + " = \"" + files.back() + "\"\n";
  }
  start(profiles);
  for (size_t i = 0; i < std::size(cases); ++i) {
    const std::string name = "bad" + std::to_string(i);
    // Refused at load, in the log with the config key...
    EXPECT_NE(d_->log().find("plugin.security.profiles." + name), std::string::npos) << d_->log();
    EXPECT_NE(d_->log().find(cases[i].says), std::string::npos) << cases[i].says << "\n"
                                                                << d_->log();
    // ... and a job that names it is refused with the same reason.
    auto r = submit("name = \"uses-" + name +
                    "\"\n[[task]]\nname = \"t\"\n"
                    "image = \"flotilla-probe:latest\"\ncommand = \"/probe\"\n"
                    "[task.security]\nprofile = \"" +
                    name + "\"\n");
    EXPECT_EQ(r.status, 400) << r.body;
    json body = json::parse(r.body, nullptr, false);
    std::string message =
        body.is_object() && body.contains("error") ? body["error"].value("message", "") : r.body;
    EXPECT_NE(message.find("profile \"" + name + "\" could not be loaded"), std::string::npos)
        << message;
    EXPECT_NE(message.find(cases[i].says), std::string::npos) << message;
  }
  // The daemon keeps running and still runs containers.
  EXPECT_EQ(d_->get("/v1/health").status, 200);
  ProbeResult after = probe("after", "");
  EXPECT_EQ(after.call("getpid"), "ok") << after.raw;
  EXPECT_EQ(after.call("userfaultfd"), "EPERM") << after.raw;

  // Only a broken default_profile stops the start: nothing could run confined.
  std::string file = base + "-default.json";
  files.push_back(file);
  std::ofstream(file) << cases[0].text;
  e2e::Daemon bad;
  bad.write_config("[plugin.security]\npath = \"" SECURITY_PLUGIN_PATH
                   "\"\ndefault_profile = \"mine\"\n[plugin.security.profiles]\nmine = \"" +
                   file + "\"\n");
  EXPECT_FALSE(bad.start());
  EXPECT_NE(bad.log().find("plugin.security.default_profile"), std::string::npos) << bad.log();
  EXPECT_NE(bad.log().find("unknown syscall \"make_coffee\""), std::string::npos) << bad.log();
}

TEST_F(Security, ConfinedDaemonStillRunsContainersAndItsChildrenCannotEscapeItsFilter) {
  start("allow_unconfined = true\n", "[security]\nconfine_daemon = true\n");
  // The daemon itself: a seccomp filter and no CAP_SYS_MODULE (bit 16) or
  // CAP_SYS_BOOT (bit 22) in its bounding set.
  std::string status = slurp("/proc/" + std::to_string(d_->pid()) + "/status");
  EXPECT_NE(status.find("Seccomp:\t2"), std::string::npos) << status;
  auto cap_bnd = [&] {
    size_t at = status.find("CapBnd:\t");
    return at == std::string::npos ? 0ULL : std::stoull(status.substr(at + 8, 16), nullptr, 16);
  }();
  EXPECT_EQ(cap_bnd & (1ULL << 16), 0ULL) << status;
  EXPECT_EQ(cap_bnd & (1ULL << 22), 0ULL) << status;
  EXPECT_NE(cap_bnd & (1ULL << 21), 0ULL) << "CAP_SYS_ADMIN must stay for runc\n" << status;
  EXPECT_NE(d_->log().find("flotillad confined itself"), std::string::npos) << d_->log();

  // An unconfined container: no filter of its own, yet the daemon's deny-list
  // holds (userfaultfd works unconfined under an unconfined daemon: see the
  // first test), and ordinary calls still work.
  ProbeResult r = probe("confined", "profile = \"unconfined\"\n");
  EXPECT_EQ(r.call("userfaultfd"), "EPERM") << r.raw;
  EXPECT_EQ(r.call("getpid"), "ok") << r.raw;
  EXPECT_EQ(r.call("keyctl"), "ok") << r.raw;  // not on the daemon's list
  EXPECT_EQ(r.status["Seccomp"], "2") << "the daemon's filter is inherited\n" << r.raw;
  // The daemon's filter did not set no_new_privs for everything below it.
  EXPECT_EQ(r.status["NoNewPrivs"], "0") << r.raw;
}

}  // namespace
