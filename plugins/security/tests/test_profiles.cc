// Profiles without containers: names resolved with libseccomp and libcap,
// compiled with libseccomp, resolved into OCI fragments, the Docker and TOML
// file formats with their errors, and the host policy. The real-container
// tests are tests/e2e/test_security.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "policy.h"
#include "profile.h"

namespace sec = flotilla::security;
using json = nlohmann::json;

namespace {

bool has_name(const json &seccomp, const std::string &name) {
  for (const auto &r : seccomp["syscalls"])
    for (const auto &n : r["names"])
      if (n == name) return true;
  return false;
}

// The rules of a resolved seccomp object that name a syscall.
std::vector<json> rules_for(const json &seccomp, const std::string &name) {
  std::vector<json> out;
  for (const auto &r : seccomp["syscalls"])
    for (const auto &n : r["names"])
      if (n == name) out.push_back(r);
  return out;
}

sec::HostInfo amd64(int major = 6, int minor = 1) {
  sec::HostInfo h;
  h.scmp_arch = "SCMP_ARCH_X86_64";
  h.go_arch = "amd64";
  h.kernel_major = major;
  h.kernel_minor = minor;
  return h;
}

std::string error_of(auto fn) {
  try {
    fn();
  } catch (const sec::ProfileError &e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Names, CapabilitiesAreResolvedWithLibcap) {
  EXPECT_EQ(sec::canonical_cap("net_admin"), "CAP_NET_ADMIN");
  EXPECT_EQ(sec::canonical_cap("CAP_SYS_ADMIN"), "CAP_SYS_ADMIN");
  EXPECT_EQ(sec::canonical_cap("NET_BIND_SERVICE"), "CAP_NET_BIND_SERVICE");
  EXPECT_FALSE(sec::canonical_cap("CAP_MAKE_COFFEE"));
  EXPECT_GE(sec::all_caps().size(), 38u);
  EXPECT_TRUE(sec::syscall_known("openat"));
  EXPECT_FALSE(sec::syscall_known("make_coffee"));
}

TEST(Builtin, DefaultCompilesAndDeniesWhatItMust) {
  sec::Profile p = sec::builtin_profile("default");
  EXPECT_NO_THROW(sec::check_names(p));
  EXPECT_GT(sec::compile_profile(p, sec::HostInfo::current()), 0.0);
  json sc = sec::resolve_seccomp(p, sec::docker_default_caps(), amd64());
  EXPECT_EQ(sc["defaultAction"], "SCMP_ACT_ERRNO");
  EXPECT_EQ(sc["defaultErrnoRet"], 1);
  EXPECT_EQ(sc["architectures"], json({"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}));
  for (const char *never : {"keyctl", "add_key", "request_key", "kexec_load", "userfaultfd",
                            "pivot_root", "swapon", "io_uring_setup"})
    EXPECT_FALSE(has_name(sc, never)) << never;
  for (const char *admin : {"mount", "unshare", "setns", "bpf", "perf_event_open"})
    EXPECT_FALSE(has_name(sc, admin)) << admin << " needs CAP_SYS_ADMIN or its own cap";
  EXPECT_TRUE(has_name(sc, "openat"));
  EXPECT_TRUE(has_name(sc, "chroot"));  // CAP_SYS_CHROOT is a default cap
  // clone without namespace flags only; clone3 answers ENOSYS.
  auto clone = rules_for(sc, "clone");
  ASSERT_EQ(clone.size(), 1u);
  EXPECT_EQ(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
  auto clone3 = rules_for(sc, "clone3");
  ASSERT_EQ(clone3.size(), 1u);
  EXPECT_EQ(clone3[0]["errnoRet"], 38);
}

TEST(Builtin, CapabilityConditionedRulesFollowTheContainersCaps) {
  sec::Profile p = sec::builtin_profile("default");
  auto caps = sec::docker_default_caps();
  caps.push_back("CAP_SYS_ADMIN");
  json sc = sec::resolve_seccomp(p, caps, amd64());
  for (const char *admin : {"mount", "unshare", "setns", "bpf", "perf_event_open", "clone3"})
    EXPECT_TRUE(has_name(sc, admin)) << admin;
  EXPECT_EQ(rules_for(sc, "clone").size(), 1u);
  EXPECT_FALSE(rules_for(sc, "clone")[0].contains("args"));
  EXPECT_FALSE(has_name(sc, "pivot_root"));
  EXPECT_FALSE(has_name(sc, "keyctl"));
  // Its own cap opens perf_event_open without CAP_SYS_ADMIN.
  json perf = sec::resolve_seccomp(p, {"CAP_PERFMON"}, amd64());
  EXPECT_TRUE(has_name(perf, "perf_event_open"));
  EXPECT_FALSE(has_name(perf, "mount"));
  // minKernel: ptrace from 4.8 on.
  EXPECT_TRUE(has_name(sec::resolve_seccomp(p, {}, amd64(4, 8)), "ptrace"));
  EXPECT_FALSE(has_name(sec::resolve_seccomp(p, {}, amd64(4, 4)), "ptrace"));
}

TEST(Builtin, OciPatchHasAllFiveCapabilitySetsAndPaths) {
  sec::TaskSecurity t;
  t.cap_add = {"net_admin"};
  t.cap_drop = {"CAP_MKNOD"};
  t.read_only_rootfs = true;
  t.user = "1000:1001";
  json patch = sec::resolve_oci(sec::builtin_profile("default"), t, amd64());
  const json &caps = patch["process"]["capabilities"];
  for (const char *set : {"bounding", "effective", "permitted", "inheritable", "ambient"})
    EXPECT_TRUE(caps.contains(set)) << set;
  auto eff = caps["effective"].get<std::vector<std::string>>();
  EXPECT_EQ(eff.size(), 14u);
  EXPECT_NE(std::find(eff.begin(), eff.end(), "CAP_NET_ADMIN"), eff.end());
  EXPECT_EQ(std::find(eff.begin(), eff.end(), "CAP_MKNOD"), eff.end());
  EXPECT_EQ(patch["process"]["noNewPrivileges"], true);
  EXPECT_EQ(patch["process"]["user"]["uid"], 1000);
  EXPECT_EQ(patch["process"]["user"]["gid"], 1001);
  EXPECT_EQ(patch["root"]["readonly"], true);
  EXPECT_FALSE(patch["linux"]["maskedPaths"].empty());
  EXPECT_FALSE(patch["linux"]["readonlyPaths"].empty());
  EXPECT_TRUE(patch["linux"]["seccomp"].is_object());
}

TEST(Builtin, RestrictedDropsEverythingAndUnconfinedHasNoFilter) {
  sec::TaskSecurity t;
  t.user = "65534";
  json r = sec::resolve_oci(sec::builtin_profile("restricted"), t, amd64());
  EXPECT_TRUE(r["process"]["capabilities"]["effective"].empty());
  EXPECT_TRUE(r["process"]["capabilities"]["bounding"].empty());
  EXPECT_TRUE(r["linux"]["seccomp"].is_object());
  json u = sec::resolve_oci(sec::builtin_profile("unconfined"), {}, amd64());
  EXPECT_TRUE(u["linux"]["seccomp"].is_null());  // merge patch: delete
  EXPECT_EQ(u["process"]["noNewPrivileges"], false);
}

// ---- Docker format ----------------------------------------------------------

TEST(DockerFormat, ArchMapIncludesCapsAndMinKernelAreResolved) {
  const std::string text = R"({
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
      {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
      {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
    ],
    "syscalls": [
      {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
      {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
      {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
      {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
      {"names": ["sync"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
      {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
       "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}
    ]})";
  sec::Profile p = sec::parse_docker_profile(text, "custom.json", "custom");
  json plain = sec::resolve_seccomp(p, {}, amd64(6, 1));
  EXPECT_EQ(plain["architectures"], json({"SCMP_ARCH_X86_64", "SCMP_ARCH_X86"}));
  EXPECT_FALSE(has_name(plain, "mount"));
  EXPECT_TRUE(has_name(plain, "chroot"));
  EXPECT_TRUE(has_name(plain, "ptrace"));
  EXPECT_TRUE(has_name(plain, "arch_prctl"));
  EXPECT_FALSE(has_name(plain, "sync"));
  EXPECT_EQ(rules_for(plain, "uname")[0]["errnoRet"], 38);
  json admin = sec::resolve_seccomp(p, {"CAP_SYS_ADMIN"}, amd64(4, 4));
  EXPECT_TRUE(has_name(admin, "mount"));
  EXPECT_FALSE(has_name(admin, "chroot"));
  EXPECT_FALSE(has_name(admin, "ptrace"));
  sec::HostInfo arm = amd64();
  arm.scmp_arch = "SCMP_ARCH_AARCH64";
  arm.go_arch = "arm64";
  json on_arm = sec::resolve_seccomp(p, {}, arm);
  EXPECT_EQ(on_arm["architectures"], json({"SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"}));
  EXPECT_FALSE(has_name(on_arm, "arch_prctl"));
}

TEST(DockerFormat, BadProfilesNameFileRuleAndName) {
  auto docker = [](const std::string &text) {
    return error_of([&] { sec::parse_docker_profile(text, "/etc/p.json", "p"); });
  };
  // An unknown name is left out (below), except where leaving it out would
  // allow it: a deny rule in a profile that allows by default.
  EXPECT_EQ(docker(R"({"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
    {"names":["read"],"action":"SCMP_ACT_ALLOW"},
    {"names":["write","make_coffee"],"action":"SCMP_ACT_ERRNO"}]})")
                .rfind("profile /etc/p.json: syscalls[1].names[1]: unknown syscall \"make_coffee\" "
                       "(libseccomp ",
                       0),
            0u);
  EXPECT_EQ(docker(R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
    {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_MAKE_COFFEE"]}}]})"),
            "profile /etc/p.json: syscalls[0].includes.caps[0]: unknown capability "
            "\"CAP_MAKE_COFFEE\" (libcap and this kernel do not know it)");
  EXPECT_EQ(docker("{\"defaultAction\": \"SCMP_ACT_ERRNO\",\n \"syscalls\": [ }"),
            "profile /etc/p.json line 2: not valid JSON: syntax error while parsing value - "
            "unexpected '}'; expected '[', '{', or a literal");
  EXPECT_EQ(docker(R"({"defaultAction":"SCMP_ACT_NOPE"})"),
            "profile /etc/p.json: defaultAction: unknown action \"SCMP_ACT_NOPE\"");
  // This machine's archMap entry is checked; other machines' entries are not (below).
  const std::string native = sec::HostInfo::current().scmp_arch;
  EXPECT_EQ(docker(R"({"defaultAction":"SCMP_ACT_ERRNO","archMap":[{"architecture":")" + native +
                   R"(","subArchitectures":["SCMP_ARCH_Z80"]}]})"),
            "profile /etc/p.json: archMap[0].subArchitectures: unknown architecture "
            "\"SCMP_ARCH_Z80\"");
  EXPECT_EQ(
      docker(
          R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"four"}}]})"),
      "profile /etc/p.json: syscalls[0].includes.minKernel: \"four\" is not a kernel "
      "version like \"4.8\"");
  EXPECT_EQ(docker(R"({"defaultAction":"SCMP_ACT_ERRNO","sycalls":[]})").substr(0, 43),
            "profile /etc/p.json: sycalls: unknown key; ");
  // Two actions for one syscall: libseccomp refuses it at load.
  EXPECT_NE(docker(R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
    {"names":["read"],"action":"SCMP_ACT_ALLOW"},
    {"names":["read"],"action":"SCMP_ACT_KILL"}]})")
                .find("syscalls[1]: \"read\" already has action SCMP_ACT_ALLOW from syscalls[0]"),
            std::string::npos);
  // Every such conflict at once, not one per start.
  const std::string two = docker(R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
    {"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
    {"names":["read"],"action":"SCMP_ACT_KILL"},
    {"names":["write"],"action":"SCMP_ACT_TRAP"}]})");
  EXPECT_NE(two.find("syscalls[1]: \"read\" already has action SCMP_ACT_ALLOW from syscalls[0]"),
            std::string::npos)
      << two;
  EXPECT_NE(two.find("syscalls[2]: \"write\" already has action SCMP_ACT_ALLOW from syscalls[0]"),
            std::string::npos)
      << two;
}

TEST(DockerFormat, OtherMachinesArchesAreIgnoredAndNewSyscallsLeftOutWithOneList) {
  const std::string native = sec::HostInfo::current().scmp_arch;
  std::string text = R"({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "archMap": [
      {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
      {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
      {"architecture": "SCMP_ARCH_LOONGARCH64", "subArchitectures": []},
      {"architecture": "SCMP_ARCH_Z80", "subArchitectures": ["SCMP_ARCH_Z80_COMPAT"]}
    ],
    "syscalls": [
      {"names": ["read", "make_coffee", "write", "brew_tea"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["make_coffee"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
      {"names": ["future_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
      {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
    ]})";
  sec::Profile p;
  ASSERT_NO_THROW(p = sec::parse_docker_profile(text, "/etc/moby.json", "moby"));
  // Each name once, in order of appearance, in one line.
  EXPECT_EQ(p.skipped,
            "3 syscall names that libseccomp " + sec::seccomp_version_text() +
                " does not know were left out of profile /etc/moby.json (as Docker and runc do; "
                "they get the default action SCMP_ACT_ERRNO): make_coffee, brew_tea, future_call");
  json sc = sec::resolve_seccomp(p, sec::all_caps(), sec::HostInfo::current());
  EXPECT_TRUE(has_name(sc, "read"));
  EXPECT_TRUE(has_name(sc, "write"));
  EXPECT_TRUE(has_name(sc, "getpid"));
  EXPECT_FALSE(has_name(sc, "make_coffee"));
  EXPECT_EQ(sc["syscalls"].size(), 2u) << sc.dump();  // the rules left with no name are gone
  if (native == "SCMP_ARCH_X86_64") {
    EXPECT_EQ(sc["architectures"], json({"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}));
  }
  // Nothing to leave out: no line.
  sec::Profile plain = sec::parse_docker_profile(
      R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]})",
      "/etc/p.json", "p");
  EXPECT_EQ(plain.skipped, "");
}

TEST(DockerFormat, EveryProblemOfAProfileIsReportedAtOnce) {
  std::string text = R"({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": -1, "colour": 1,
    "syscalls": [
      {"names": ["make_coffee"], "action": "SCMP_ACT_ERRNO"},
      {"names": ["mount"], "action": "SCMP_ACT_NOPE"},
      {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_NOPE"]}},
      {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]},
      {"action": "SCMP_ACT_ERRNO"}
    ]})";
  std::string err = error_of([&] { sec::parse_docker_profile(text, "/etc/p.json", "p"); });
  std::vector<std::string> lines;
  std::istringstream in(err);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::vector<std::string> want = {
      "profile /etc/p.json: colour: unknown key; accepted: defaultAction, defaultErrnoRet, "
      "archMap, architectures, syscalls, flags, listenerPath, listenerMetadata",
      "profile /etc/p.json: defaultErrnoRet: must be a non-negative integer, got -1",
      "profile /etc/p.json: syscalls[2].includes.caps[0]: unknown capability \"CAP_NOPE\" "
      "(libcap and this kernel do not know it)",
      "profile /etc/p.json: syscalls[3].args[0].index: must be at most 5, got 9",
      "profile /etc/p.json: syscalls[4]: has no syscall names (\"names\": [...])",
      "profile /etc/p.json: syscalls[0].names[0]: unknown syscall \"make_coffee\" (libseccomp " +
          sec::seccomp_version_text() +
          " does not know it); leaving it out would allow it, since the profile allows by "
          "default",
      "profile /etc/p.json: syscalls[1].action: unknown action \"SCMP_ACT_NOPE\"",
  };
  EXPECT_EQ(lines, want) << err;
}

// Docker's own default profile (shared/testdata, moby/profiles): it loads,
// and `default` is at least as strict in every rule — for the capability
// sets that matter, every call and argument value `default` allows, Docker's
// allows too (arguments sampled at every boundary either profile names).
class AgainstDocker : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::string(FLOTILLA_SHARED_TESTDATA) + "/seccomp/moby-default.json";
    std::ifstream in(path_);
    if (!in) GTEST_SKIP() << "SKIPPED: " << path_ << " is not there";
  }
  std::string path_;
};

bool cond_holds(const json &c, uint64_t a) {
  uint64_t v = c.value("value", uint64_t{0}), v2 = c.value("valueTwo", uint64_t{0});
  std::string op = c.value("op", "");
  if (op == "SCMP_CMP_EQ") return a == v;
  if (op == "SCMP_CMP_NE") return a != v;
  if (op == "SCMP_CMP_LT") return a < v;
  if (op == "SCMP_CMP_LE") return a <= v;
  if (op == "SCMP_CMP_GT") return a > v;
  if (op == "SCMP_CMP_GE") return a >= v;
  if (op == "SCMP_CMP_MASKED_EQ") return (a & v) == v2;
  return false;
}

// Whether a resolved filter lets name through with every argument equal to a.
bool lets_through(const json &sc, const std::string &name, uint64_t a) {
  bool matched = false, denied = false;
  for (const auto &r : sc["syscalls"]) {
    if (std::find(r["names"].begin(), r["names"].end(), name) == r["names"].end()) continue;
    bool all = true;
    if (r.contains("args"))
      for (const auto &c : r["args"]) all = all && cond_holds(c, a);
    if (!all) continue;
    matched = true;
    if (r["action"] != "SCMP_ACT_ALLOW") denied = true;
  }
  if (matched) return !denied;
  return sc["defaultAction"] == "SCMP_ACT_ALLOW";
}

std::vector<uint64_t> samples(const json &a, const json &b, const std::string &name) {
  std::vector<uint64_t> out = {0, 1, 0xffffffffULL};
  for (const json *sc : {&a, &b})
    for (const auto &r : (*sc)["syscalls"]) {
      if (std::find(r["names"].begin(), r["names"].end(), name) == r["names"].end()) continue;
      if (!r.contains("args")) continue;
      for (const auto &c : r["args"]) {
        uint64_t v = c.value("value", uint64_t{0});
        for (uint64_t x : {v - 1, v, v + 1}) out.push_back(x);
        for (int bit = 0; bit < 64; ++bit)
          if (v & (uint64_t{1} << bit)) out.push_back(uint64_t{1} << bit);
      }
    }
  return out;
}

TEST_F(AgainstDocker, ItsDefaultProfileLoadsAndOurDefaultIsAtLeastAsStrict) {
  sec::Profile docker;
  ASSERT_NO_THROW(docker = sec::load_profile_file(path_, "moby")) << path_;
  sec::Profile ours = sec::builtin_profile("default");
  sec::HostInfo host = sec::HostInfo::current();
  std::vector<std::string> caps_with_admin = sec::docker_default_caps();
  caps_with_admin.push_back("CAP_SYS_ADMIN");
  for (const auto &caps :
       {std::vector<std::string>{}, sec::docker_default_caps(), caps_with_admin, sec::all_caps()}) {
    json d = sec::resolve_seccomp(docker, caps, host), o = sec::resolve_seccomp(ours, caps, host);
    EXPECT_EQ(o["defaultAction"], "SCMP_ACT_ERRNO");
    std::set<std::string> names;
    for (const json *sc : {&d, &o})
      for (const auto &r : (*sc)["syscalls"])
        for (const auto &n : r["names"]) names.insert(n.get<std::string>());
    for (const auto &name : names)
      for (uint64_t a : samples(d, o, name)) {
        if (lets_through(o, name, a)) {
          EXPECT_TRUE(lets_through(d, name, a))
              << "default allows " << name << " with argument " << a << " (" << caps.size()
              << " capabilities) where Docker's profile does not";
        }
      }
  }
  // In particular socket(): AF_ALG (38) and AF_VSOCK (40) are closed.
  json o = sec::resolve_seccomp(ours, sec::docker_default_caps(), host);
  EXPECT_FALSE(lets_through(o, "socket", 38));
  EXPECT_FALSE(lets_through(o, "socket", 40));
  EXPECT_TRUE(lets_through(o, "socket", 2));   // AF_INET
  EXPECT_TRUE(lets_through(o, "socket", 39));  // as Docker
  EXPECT_TRUE(lets_through(o, "socket", 44));  // AF_XDP, as Docker
}

// ---- TOML format -------------------------------------------------------------

TEST(TomlFormat, BaseRulesAndOverrides) {
  sec::Profile p = sec::parse_toml_profile(R"(
base = "default"
capabilities = ["CHOWN", "SETUID", "SETGID"]

[[syscall]]
names = ["chroot"]
action = "errno"
errno = 13

[[syscall]]
names = ["keyctl"]
if_caps = ["SYS_ADMIN"]

[[syscall]]
names = ["personality"]
[[syscall.args]]
index = 0
op = "eq"
value = 8
)",
                                           "web.toml", "web");
  EXPECT_EQ(p.capabilities, (std::vector<std::string>{"CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"}));
  json sc = sec::resolve_seccomp(p, {"CAP_CHOWN"}, amd64());
  ASSERT_EQ(rules_for(sc, "chroot").size(), 1u);  // the base's allow rule was replaced
  EXPECT_EQ(rules_for(sc, "chroot")[0]["action"], "SCMP_ACT_ERRNO");
  EXPECT_EQ(rules_for(sc, "chroot")[0]["errnoRet"], 13);
  EXPECT_FALSE(has_name(sc, "keyctl"));
  EXPECT_TRUE(has_name(sec::resolve_seccomp(p, {"CAP_SYS_ADMIN"}, amd64()), "keyctl"));
  ASSERT_EQ(rules_for(sc, "personality").size(), 1u);
  EXPECT_TRUE(has_name(sc, "openat"));  // the rest of the base stays
}

TEST(TomlFormat, BadProfilesNameFileLineRuleAndName) {
  auto toml = [](const std::string &text) {
    return error_of([&] { sec::parse_toml_profile(text, "/etc/p.toml", "p"); });
  };
  EXPECT_EQ(toml("[[syscall]]\nnames = [\"read\", \"make_coffee\"]\n"),
            "profile /etc/p.toml line 2, syscall[0].names[1]: unknown syscall \"make_coffee\" "
            "(libseccomp " +
                sec::seccomp_version_text() + " does not know it)");
  // Several problems: all of them, one a line.
  EXPECT_EQ(toml("colour = 1\n[[syscall]]\nnames = [\"make_coffee\", \"brew_tea\"]\n"
                 "action = \"permit\"\n"),
            "profile /etc/p.toml line 1, colour: unknown key; accepted here: base, "
            "default_action, default_errno, capabilities, no_new_privileges, masked_paths, "
            "readonly_paths, syscall\n"
            "profile /etc/p.toml line 3, syscall[0].names[0]: unknown syscall \"make_coffee\" "
            "(libseccomp " +
                sec::seccomp_version_text() +
                " does not know it)\n"
                "profile /etc/p.toml line 3, syscall[0].names[1]: unknown syscall \"brew_tea\" "
                "(libseccomp " +
                sec::seccomp_version_text() +
                " does not know it)\n"
                "profile /etc/p.toml line 4, syscall[0].action: \"permit\" is not one of allow, "
                "errno, kill_thread, kill_process, trap, log");
  EXPECT_EQ(toml("[[syscall]]\nnames = [\"mount\"]\nif_caps = [\"MAKE_COFFEE\"]\n"),
            "profile /etc/p.toml line 3, syscall[0].if_caps[0]: unknown capability "
            "\"MAKE_COFFEE\" (libcap and this kernel do not know it)");
  EXPECT_EQ(toml("capabilities = [\"CHOWN\", \"NOPE\"]\n"),
            "profile /etc/p.toml line 1, capabilities[1]: unknown capability \"NOPE\" (libcap "
            "and this kernel do not know it)");
  EXPECT_EQ(toml("[[syscall]\nnames = []\n")
                .rfind("profile /etc/p.toml line 1: TOML syntax error at column ", 0),
            0u);
  EXPECT_EQ(toml("[[syscall]]\nnames = [\"read\"]\naction = \"permit\"\n"),
            "profile /etc/p.toml line 3, syscall[0].action: \"permit\" is not one of allow, "
            "errno, kill_thread, kill_process, trap, log");
  EXPECT_EQ(toml("base = \"unconfined\"\n"),
            "profile /etc/p.toml line 1, base: \"unconfined\" is not a profile to build on: use "
            "default or restricted");
  EXPECT_EQ(error_of([] { sec::load_profile_file("/nonexistent/p.toml", "p"); }),
            "profile /nonexistent/p.toml: cannot be read: No such file or directory");
}

// ---- host policy -------------------------------------------------------------

class Policy : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char *n : {"default", "restricted", "unconfined"})
      profiles.emplace(n, sec::builtin_profile(n));
  }
  sec::Refusal check(const sec::TaskSecurity &t) {
    return sec::check_task(policy, profiles, t, "task[0] (web)");
  }
  sec::HostPolicy policy;
  std::map<std::string, sec::Profile> profiles;
};

TEST_F(Policy, EachRuleRefusesByName) {
  sec::TaskSecurity t;
  EXPECT_FALSE(check(t));  // default profile, root allowed
  t.profile = "unconfined";
  EXPECT_EQ(check(t).message,
            "task[0] (web): refused by rule plugin.security.allow_unconfined = false: the task "
            "asks for profile \"unconfined\"");
  policy.allow_unconfined = true;
  EXPECT_FALSE(check(t));
  t = {};
  t.cap_add = {"NET_ADMIN"};
  EXPECT_EQ(check(t).message,
            "task[0] (web): refused by rule plugin.security.allowed_cap_add = []: the task adds "
            "\"CAP_NET_ADMIN\"");
  policy.allowed_cap_add = {"CAP_NET_ADMIN"};
  EXPECT_FALSE(check(t));
  t.cap_add = {"CHOWN"};  // already in the profile: not an addition
  policy.allowed_cap_add.clear();
  EXPECT_FALSE(check(t));
  t.cap_add = {"MAKE_COFFEE"};
  EXPECT_EQ(check(t).kind, sec::Refusal::invalid);
  t = {};
  policy.allow_root = false;
  EXPECT_NE(check(t).message.find("plugin.security.allow_root = false"), std::string::npos);
  t.task_user = "0:0";
  EXPECT_TRUE(check(t));
  t.user = "1000";
  EXPECT_FALSE(check(t));
  t.no_new_privileges = false;
  EXPECT_NE(check(t).message.find("plugin.security.allow_privilege_escalation = false"),
            std::string::npos);
  policy.min_profile = "restricted";
  policy.allow_privilege_escalation = true;
  t.no_new_privileges.reset();
  EXPECT_EQ(check(t).message,
            "task[0] (web): refused by rule plugin.security.min_profile = \"restricted\": the "
            "task asks for profile \"default\"");
  t.profile = "nope";
  EXPECT_EQ(check(t).kind, sec::Refusal::invalid);
}

TEST_F(Policy, AProfileThatFailedToLoadIsRefusedWithItsReason) {
  sec::BrokenProfiles broken = {
      {"web", "profile /etc/web.json: syscalls[0].names[0]: unknown syscall \"x\""}};
  sec::TaskSecurity t;
  t.profile = "web";
  sec::Refusal r = sec::check_task(policy, profiles, t, "task[0] (web)", broken);
  EXPECT_EQ(r.kind, sec::Refusal::invalid);
  EXPECT_EQ(r.message,
            "task[0] (web): profile \"web\" could not be loaded when the plugin started, so no "
            "task may use it: profile /etc/web.json: syscalls[0].names[0]: unknown syscall \"x\"");
}

TEST_F(Policy, RestrictedProfileRules) {
  policy.allowed_cap_add = {"ALL"};
  sec::TaskSecurity t;
  t.profile = "restricted";
  EXPECT_NE(check(t).message.find("refused by profile \"restricted\": must run as a non-root user"),
            std::string::npos);
  t.user = "65534:65534";
  EXPECT_FALSE(check(t));
  t.cap_add = {"NET_BIND_SERVICE"};
  EXPECT_FALSE(check(t));
  t.cap_add = {"SYS_ADMIN"};
  EXPECT_EQ(check(t).message,
            "task[0] (web): refused by profile \"restricted\": only [\"CAP_NET_BIND_SERVICE\"] may "
            "be added, the task adds \"CAP_SYS_ADMIN\"");
  t.cap_add.clear();
  t.no_new_privileges = false;
  EXPECT_NE(check(t).message.find("no privilege escalation"), std::string::npos);
}

TEST(PolicyConfig, BadValuesNameTheKey) {
  sec::HostPolicy p;
  std::string key, msg;
  EXPECT_FALSE(sec::parse_policy(json{{"allowed_cap_add", {"NOPE"}}}, p, key, msg));
  EXPECT_EQ(key, "allowed_cap_add[0]");
  EXPECT_FALSE(sec::parse_policy(json{{"min_profile", "unconfined"}}, p, key, msg));
  EXPECT_EQ(key, "min_profile");
  EXPECT_FALSE(sec::parse_policy(
      json{{"default_profile", "unconfined"}, {"allow_unconfined", true}}, p, key, msg));
  EXPECT_EQ(key, "default_profile");
  EXPECT_NE(msg.find("only when it asks for it by name"), std::string::npos) << msg;
  EXPECT_FALSE(sec::parse_policy(json{{"alow_root", true}}, p, key, msg));
  EXPECT_EQ(key, "alow_root");
  EXPECT_TRUE(sec::parse_policy(json{{"allow_root", false}, {"allowed_cap_add", {"net_admin"}}}, p,
                                key, msg));
  EXPECT_EQ(p.allowed_cap_add, std::vector<std::string>{"CAP_NET_ADMIN"});
}
