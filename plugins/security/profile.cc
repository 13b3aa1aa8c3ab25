#include "profile.h"

#include <fcntl.h>
#include <seccomp.h>
#include <sys/capability.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <set>

namespace flotilla::security {

using json = nlohmann::json;

// ---- host -----------------------------------------------------------------

namespace {

struct ArchName {
  uint32_t token;
  const char *scmp, *go;
};
const ArchName kArches[] = {
    {SCMP_ARCH_X86_64, "SCMP_ARCH_X86_64", "amd64"},
    {SCMP_ARCH_X86, "SCMP_ARCH_X86", "386"},
    {SCMP_ARCH_X32, "SCMP_ARCH_X32", "x32"},
    {SCMP_ARCH_AARCH64, "SCMP_ARCH_AARCH64", "arm64"},
    {SCMP_ARCH_ARM, "SCMP_ARCH_ARM", "arm"},
    {SCMP_ARCH_PPC64LE, "SCMP_ARCH_PPC64LE", "ppc64le"},
    {SCMP_ARCH_S390X, "SCMP_ARCH_S390X", "s390x"},
    {SCMP_ARCH_S390, "SCMP_ARCH_S390", "s390"},
    {SCMP_ARCH_RISCV64, "SCMP_ARCH_RISCV64", "riscv64"},
};

std::string lower(std::string s) {
  for (char &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string upper(std::string s) {
  for (char &c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// "SCMP_ARCH_X86_64" -> libseccomp's token, 0 when unknown.
uint32_t arch_token(const std::string &scmp_name) {
  if (scmp_name.rfind("SCMP_ARCH_", 0) != 0) return 0;
  std::string n = lower(scmp_name.substr(10));
  return seccomp_arch_resolve_name(n.c_str());
}

}  // namespace

HostInfo HostInfo::current() {
  HostInfo h;
  uint32_t native = seccomp_arch_native();
  for (const ArchName &a : kArches)
    if (a.token == native) {
      h.scmp_arch = a.scmp;
      h.go_arch = a.go;
    }
  struct utsname u {};
  if (uname(&u) == 0) std::sscanf(u.release, "%d.%d", &h.kernel_major, &h.kernel_minor);
  return h;
}

// ---- names ----------------------------------------------------------------

std::optional<std::string> canonical_cap(std::string_view name) {
  std::string n = lower(std::string(name));
  if (n.rfind("cap_", 0) != 0) n = "cap_" + n;
  cap_value_t v;
  if (cap_from_name(n.c_str(), &v) != 0) return std::nullopt;
  if (v >= cap_max_bits()) return std::nullopt;  // libcap knows it, this kernel does not
  char *text = cap_to_name(v);
  if (!text) return std::nullopt;
  std::string out = upper(text);
  cap_free(text);
  if (out.rfind("CAP_", 0) != 0) return std::nullopt;  // a bare number: unnamed
  return out;
}

std::vector<std::string> all_caps() {
  std::vector<std::string> out;
  for (cap_value_t v = 0; v < cap_max_bits(); ++v) {
    char *text = cap_to_name(v);
    if (!text) continue;
    std::string n = upper(text);
    cap_free(text);
    if (n.rfind("CAP_", 0) == 0) out.push_back(n);
  }
  return out;
}

const std::vector<std::string> &docker_default_caps() {
  static const std::vector<std::string> caps = {
      "CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
      "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
      "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
      "CAP_KILL",    "CAP_AUDIT_WRITE"};
  return caps;
}

bool arch_known(const std::string &scmp_name) {
  return arch_token(scmp_name) != 0;
}

std::string seccomp_version_text() {
  const scmp_version *v = seccomp_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->micro);
}

bool syscall_known(const std::string &name) {
  return seccomp_syscall_resolve_name(name.c_str()) != __NR_SCMP_ERROR;
}

namespace {

const char *const kActions[] = {"SCMP_ACT_ALLOW",       "SCMP_ACT_ERRNO",        "SCMP_ACT_KILL",
                                "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
                                "SCMP_ACT_LOG",         "SCMP_ACT_TRACE"};
const char *const kOps[] = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE",       "SCMP_CMP_EQ",
                            "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"};

bool one_of(const std::string &s, const char *const *list, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (s == list[i]) return true;
  return false;
}

std::string where_in(const Profile &p) {
  return p.source == "built-in" ? "built-in profile " + p.name : "profile " + p.source;
}

bool parse_kernel(const std::string &v, int &major, int &minor) {
  char extra;
  return std::sscanf(v.c_str(), "%d.%d%c", &major, &minor, &extra) == 2 && major >= 0 && minor >= 0;
}

}  // namespace

void check_names(const Profile &p) {
  std::vector<std::string> problems;
  check_names(p, problems);
  if (!problems.empty()) throw ProfileError(join_lines(problems));
}

std::string join_lines(const std::vector<std::string> &lines) {
  std::string out;
  for (const auto &l : lines) out += (out.empty() ? "" : "\n") + l;
  return out;
}

void check_names(const Profile &p, std::vector<std::string> &problems) {
  const std::string in = where_in(p);
  auto fail = [&](const std::string &at, const std::string &what) {
    problems.push_back(in + ": " + at + ": " + what);
  };
  if (!one_of(p.default_action, kActions, std::size(kActions)))
    fail("defaultAction", "unknown action \"" + p.default_action + "\"");
  for (size_t i = 0; i < p.arch_map.size(); ++i) {
    if (!arch_token(p.arch_map[i].arch))
      fail("archMap[" + std::to_string(i) + "].architecture",
           "unknown architecture \"" + p.arch_map[i].arch + "\"");
    for (const auto &s : p.arch_map[i].sub_arches)
      if (!arch_token(s))
        fail("archMap[" + std::to_string(i) + "].subArchitectures",
             "unknown architecture \"" + s + "\"");
  }
  for (const auto &a : p.architectures)
    if (!arch_token(a)) fail("architectures", "unknown architecture \"" + a + "\"");
  for (const auto &c : p.capabilities)
    if (!canonical_cap(c)) fail("capabilities", "unknown capability \"" + c + "\"");
  for (const SyscallRule &r : p.rules) {
    if (r.names.empty()) fail(r.where, "names is empty");
    for (size_t i = 0; i < r.names.size(); ++i)
      if (!syscall_known(r.names[i]))
        fail(r.where + ".names[" + std::to_string(i) + "]",
             "unknown syscall \"" + r.names[i] + "\" (libseccomp " + seccomp_version_text() +
                 " does not know it)");
    if (!one_of(r.action, kActions, std::size(kActions)))
      fail(r.where + ".action", "unknown action \"" + r.action + "\"");
    for (size_t i = 0; i < r.args.size(); ++i) {
      if (!one_of(r.args[i].op, kOps, std::size(kOps)))
        fail(r.where + ".args[" + std::to_string(i) + "].op",
             "unknown operator \"" + r.args[i].op + "\"");
      if (r.args[i].index > 5)
        fail(r.where + ".args[" + std::to_string(i) + "].index",
             "must be 0 to 5, got " + std::to_string(r.args[i].index));
    }
    for (const RuleFilter *f : {&r.includes, &r.excludes}) {
      const char *side = f == &r.includes ? ".includes" : ".excludes";
      for (const auto &c : f->caps)
        if (!canonical_cap(c)) fail(r.where + side + ".caps", "unknown capability \"" + c + "\"");
      int ma, mi;
      if (!f->min_kernel.empty() && !parse_kernel(f->min_kernel, ma, mi))
        fail(r.where + side + ".minKernel",
             "\"" + f->min_kernel + "\" is not a kernel version like \"4.8\"");
    }
  }
}

// ---- resolution -----------------------------------------------------------

std::vector<std::string> effective_caps(const Profile &p, const TaskSecurity &t) {
  auto names = [&](const std::vector<std::string> &in, const char *key) {
    std::vector<std::string> out;
    for (const auto &n : in) {
      if (upper(n) == "ALL") {
        out.push_back("ALL");
        continue;
      }
      auto c = canonical_cap(n);
      if (!c)
        throw ProfileError("security." + std::string(key) + ": unknown capability \"" + n +
                           "\" (libcap and this kernel do not know it)");
      out.push_back(*c);
    }
    return out;
  };
  std::vector<std::string> drop = names(t.cap_drop, "cap_drop");
  std::vector<std::string> add = names(t.cap_add, "cap_add");
  std::vector<std::string> caps;
  if (!contains(drop, "ALL"))
    for (const auto &c : p.capabilities) {
      auto cc = canonical_cap(c);
      if (cc && !contains(drop, *cc) && !contains(caps, *cc)) caps.push_back(*cc);
    }
  for (const auto &c : contains(add, "ALL") ? all_caps() : add)
    if (!contains(caps, c)) caps.push_back(c);
  // A stable order: the kernel's numbering.
  std::vector<std::string> ordered;
  for (const auto &c : all_caps())
    if (contains(caps, c)) ordered.push_back(c);
  return ordered;
}

namespace {

bool filter_matches(const RuleFilter &f, const std::vector<std::string> &caps,
                    const HostInfo &host) {
  for (const auto &c : f.caps) {
    auto cc = canonical_cap(c);
    if (!cc || !contains(caps, *cc)) return false;
  }
  if (!f.arches.empty() && !contains(f.arches, host.go_arch)) return false;
  if (!f.min_kernel.empty()) {
    int ma = 0, mi = 0;
    parse_kernel(f.min_kernel, ma, mi);
    if (std::pair(host.kernel_major, host.kernel_minor) < std::pair(ma, mi)) return false;
  }
  return true;
}

// Does an excludes filter rule out this container? Each field on its own
// excludes (Moby: any listed cap held, the arch listed, or the kernel at
// least min_kernel).
bool filter_excludes(const RuleFilter &f, const std::vector<std::string> &caps,
                     const HostInfo &host) {
  for (const auto &c : f.caps) {
    auto cc = canonical_cap(c);
    if (cc && contains(caps, *cc)) return true;
  }
  if (contains(f.arches, host.go_arch)) return true;
  if (!f.min_kernel.empty()) {
    int ma = 0, mi = 0;
    parse_kernel(f.min_kernel, ma, mi);
    if (std::pair(host.kernel_major, host.kernel_minor) >= std::pair(ma, mi)) return true;
  }
  return false;
}

std::vector<std::string> resolve_arches(const Profile &p, const HostInfo &host) {
  for (const ArchMapEntry &e : p.arch_map)
    if (e.arch == host.scmp_arch) {
      std::vector<std::string> out{e.arch};
      for (const auto &s : e.sub_arches)
        if (!contains(out, s)) out.push_back(s);
      return out;
    }
  if (!p.arch_map.empty()) return {host.scmp_arch};  // the map does not list us: native only
  if (!p.architectures.empty()) return p.architectures;
  return {host.scmp_arch};
}

std::vector<const SyscallRule *> applicable_rules(const Profile &p,
                                                  const std::vector<std::string> &caps,
                                                  const HostInfo &host) {
  std::vector<const SyscallRule *> out;
  for (const SyscallRule &r : p.rules)
    if (filter_matches(r.includes, caps, host) && !filter_excludes(r.excludes, caps, host))
      out.push_back(&r);
  return out;
}

}  // namespace

json resolve_seccomp(const Profile &p, const std::vector<std::string> &caps, const HostInfo &host) {
  if (p.unconfined) return nullptr;
  json sc = {{"defaultAction", p.default_action},
             {"architectures", resolve_arches(p, host)},
             {"syscalls", json::array()}};
  if (p.default_errno && p.default_action == "SCMP_ACT_ERRNO")
    sc["defaultErrnoRet"] = *p.default_errno;
  for (const SyscallRule *r : applicable_rules(p, caps, host)) {
    json rule = {{"names", r->names}, {"action", r->action}};
    if (r->errno_ret && r->action == "SCMP_ACT_ERRNO") rule["errnoRet"] = *r->errno_ret;
    if (!r->args.empty()) {
      json args = json::array();
      for (const ArgCondition &a : r->args)
        args.push_back(
            {{"index", a.index}, {"value", a.value}, {"valueTwo", a.value_two}, {"op", a.op}});
      rule["args"] = args;
    }
    sc["syscalls"].push_back(rule);
  }
  return sc;
}

json resolve_oci(const Profile &p, const TaskSecurity &t, const HostInfo &host) {
  std::vector<std::string> caps = effective_caps(p, t);
  json process = {{"capabilities",
                   {{"bounding", caps},
                    {"effective", caps},
                    {"permitted", caps},
                    {"inheritable", json::array()},
                    {"ambient", json::array()}}},
                  {"noNewPrivileges", t.no_new_privileges.value_or(p.no_new_privileges)}};
  if (!t.user.empty()) {
    size_t colon = t.user.find(':');
    uint64_t uid = std::stoull(t.user.substr(0, colon));
    uint64_t gid = colon == std::string::npos ? uid : std::stoull(t.user.substr(colon + 1));
    // The image's supplementary groups belonged to the user it named.
    process["user"] = {{"uid", uid}, {"gid", gid}, {"additionalGids", nullptr}};
  }
  json linux = {{"seccomp", resolve_seccomp(p, caps, host)}};
  if (!p.masked_paths.empty()) linux["maskedPaths"] = p.masked_paths;
  if (!p.readonly_paths.empty()) linux["readonlyPaths"] = p.readonly_paths;
  json patch = {{"process", process}, {"linux", linux}};
  if (t.read_only_rootfs) patch["root"] = {{"readonly", true}};
  return patch;
}

// ---- compiling with libseccomp --------------------------------------------

namespace {

uint32_t action_value(const std::string &a, std::optional<uint32_t> errno_ret) {
  if (a == "SCMP_ACT_ALLOW") return SCMP_ACT_ALLOW;
  if (a == "SCMP_ACT_ERRNO") return SCMP_ACT_ERRNO(errno_ret.value_or(EPERM));
  if (a == "SCMP_ACT_KILL" || a == "SCMP_ACT_KILL_THREAD") return SCMP_ACT_KILL_THREAD;
  if (a == "SCMP_ACT_KILL_PROCESS") return SCMP_ACT_KILL_PROCESS;
  if (a == "SCMP_ACT_TRAP") return SCMP_ACT_TRAP;
  if (a == "SCMP_ACT_LOG") return SCMP_ACT_LOG;
  if (a == "SCMP_ACT_TRACE") return SCMP_ACT_TRACE(errno_ret.value_or(EPERM));
  return SCMP_ACT_KILL_PROCESS;
}

scmp_compare op_value(const std::string &op) {
  if (op == "SCMP_CMP_NE") return SCMP_CMP_NE;
  if (op == "SCMP_CMP_LT") return SCMP_CMP_LT;
  if (op == "SCMP_CMP_LE") return SCMP_CMP_LE;
  if (op == "SCMP_CMP_EQ") return SCMP_CMP_EQ;
  if (op == "SCMP_CMP_GE") return SCMP_CMP_GE;
  if (op == "SCMP_CMP_GT") return SCMP_CMP_GT;
  return SCMP_CMP_MASKED_EQ;
}

struct FilterCtx {
  scmp_filter_ctx ctx;
  ~FilterCtx() {
    if (ctx) seccomp_release(ctx);
  }
};

void compile_for(const Profile &p, const std::vector<std::string> &caps, const HostInfo &host,
                 const std::string &label) {
  const std::string in = where_in(p);
  FilterCtx f{seccomp_init(action_value(p.default_action, p.default_errno))};
  if (!f.ctx) throw ProfileError(in + ": libseccomp could not start a filter");
  uint32_t native = seccomp_arch_native();
  for (const auto &a : resolve_arches(p, host)) {
    uint32_t tok = arch_token(a);
    if (!tok || tok == native) continue;
    int rc = seccomp_arch_add(f.ctx, tok);
    if (rc != 0 && rc != -EEXIST)
      throw ProfileError(in + ": libseccomp cannot add architecture \"" + a +
                         "\": " + std::strerror(-rc));
  }
  // libseccomp lets a later rule silently win; a profile that says two
  // things about one syscall is a mistake worth naming. Every such rule is
  // named, not only the first: the whole list in one start.
  std::vector<std::string> problems;
  std::map<std::string, const SyscallRule *> plain;
  for (const SyscallRule *r : applicable_rules(p, caps, host)) {
    uint32_t action = action_value(r->action, r->errno_ret);
    std::set<std::string> conflicting;
    if (r->args.empty())
      for (const auto &name : r->names) {
        auto [it, fresh] = plain.emplace(name, r);
        if (!fresh && action_value(it->second->action, it->second->errno_ret) != action) {
          problems.push_back(in + ": " + r->where + ": \"" + name + "\" already has action " +
                             it->second->action + " from " + it->second->where + " (" + label +
                             "); one syscall, one action");
          conflicting.insert(name);
        }
      }
    std::vector<scmp_arg_cmp> cmps;
    for (const ArgCondition &a : r->args)
      cmps.push_back({a.index, op_value(a.op), a.value, a.value_two});
    for (const auto &name : r->names) {
      if (conflicting.count(name)) continue;
      int nr = seccomp_syscall_resolve_name(name.c_str());
      if (nr == __NR_SCMP_ERROR) {
        problems.push_back(in + ": " + r->where + ": unknown syscall \"" + name + "\"");
        continue;
      }
      int rc = seccomp_rule_add_array(f.ctx, action, nr, static_cast<unsigned>(cmps.size()),
                                      cmps.empty() ? nullptr : cmps.data());
      // A name that does not exist on this architecture is left out, as runc does.
      if (rc == -EDOM || (rc != 0 && nr < 0)) continue;
      if (rc != 0)
        problems.push_back(in + ": " + r->where + ": libseccomp refuses the rule for \"" + name +
                           "\" (" + label + "): " + std::strerror(-rc) +
                           (rc == -EEXIST ? "; another rule gives it a different action" : ""));
    }
  }
  if (!problems.empty()) throw ProfileError(join_lines(problems));
  int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw ProfileError(in + ": cannot open /dev/null to export the BPF program");
  int rc = seccomp_export_bpf(f.ctx, fd);
  close(fd);
  if (rc != 0)
    throw ProfileError(in + ": libseccomp cannot generate the BPF program (" + label +
                       "): " + std::strerror(-rc));
}

}  // namespace

double compile_profile(const Profile &p, const HostInfo &host) {
  auto start = std::chrono::steady_clock::now();
  if (!p.unconfined) {
    compile_for(p, {}, host, "no capabilities");
    compile_for(p, all_caps(), host, "all capabilities");
  }
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
      .count();
}

// ---- task security ----------------------------------------------------------

TaskSecurity TaskSecurity::from_task(const json &task) {
  TaskSecurity t;
  if (task.is_object()) t.task_user = task.value("user", "");
  if (!task.is_object() || !task.contains("security") || !task["security"].is_object()) return t;
  const json &s = task["security"];
  t.has_table = true;
  try {
    t.profile = s.value("profile", "");
    t.cap_add = s.value("cap_add", std::vector<std::string>{});
    t.cap_drop = s.value("cap_drop", std::vector<std::string>{});
    t.user = s.value("user", "");
    t.read_only_rootfs = s.value("read_only_rootfs", false);
    if (s.contains("no_new_privileges") && s["no_new_privileges"].is_boolean())
      t.no_new_privileges = s["no_new_privileges"].get<bool>();
  } catch (const json::exception &e) {
    throw ProfileError(std::string("task security table is malformed: ") + e.what());
  }
  if (!t.user.empty()) {
    size_t colon = t.user.find(':');
    auto numeric = [](const std::string &s) {
      return !s.empty() && s.size() <= 10 &&
             std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    if (!numeric(t.user.substr(0, colon)) ||
        (colon != std::string::npos && !numeric(t.user.substr(colon + 1))))
      throw ProfileError("security.user: \"" + t.user + "\" is not a numeric uid[:gid]");
  }
  return t;
}

}  // namespace flotilla::security
