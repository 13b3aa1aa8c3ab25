// The security profile model: what a container may call (seccomp rules,
// some of them conditional on its capabilities, the host's architecture or
// kernel), which capabilities it starts with, and the /proc and /sys paths
// it must not see or change. Profiles are built in (default, restricted,
// unconfined) or read from files (profile_files.cc), checked name by name
// against libseccomp and libcap, and compiled to BPF once when loaded.
// resolve_oci() then turns one profile plus a task's [task.security] into
// the OCI spec fragment the runtime merges, with every condition already
// decided for this host and this container (runc knows none of them).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::security {

// Whether V holds S (capability and profile name lists).
inline bool contains(const std::vector<std::string> &v, const std::string &s) {
  for (const std::string &x : v)
    if (x == s) return true;
  return false;
}

// A profile that cannot be used. The message names the file (or "built-in
// profile <name>"), the rule and the offending name.
class ProfileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The machine a profile is resolved for.
struct HostInfo {
  std::string scmp_arch;  // native arch as OCI spells it: "SCMP_ARCH_X86_64"
  std::string go_arch;    // as Docker profiles spell it in includes.arches: "amd64"
  int kernel_major = 0, kernel_minor = 0;
  static HostInfo current();
};

// One comparison on a syscall argument, as the OCI spec writes it.
struct ArgCondition {
  unsigned index = 0;
  uint64_t value = 0, value_two = 0;
  std::string op;  // "SCMP_CMP_EQ", "SCMP_CMP_MASKED_EQ", ...
};

// When a rule applies: all of caps held, the native arch among arches, the
// kernel at least min_kernel. An empty field does not constrain.
struct RuleFilter {
  std::vector<std::string> caps;  // canonical "CAP_SYS_ADMIN"
  std::vector<std::string> arches;
  std::string min_kernel;  // "4.8"
  bool empty() const { return caps.empty() && arches.empty() && min_kernel.empty(); }
};

struct SyscallRule {
  std::vector<std::string> names;
  std::string action = "SCMP_ACT_ALLOW";
  std::optional<uint32_t> errno_ret;
  std::vector<ArgCondition> args;
  RuleFilter includes, excludes;
  std::string where;  // "syscalls[3]", for messages
};

struct ArchMapEntry {
  std::string arch;  // "SCMP_ARCH_X86_64"
  std::vector<std::string> sub_arches;
};

struct Profile {
  std::string name;
  std::string source;  // "built-in" or the file it came from
  bool unconfined = false;
  // How strict it is, for the host's min_profile: 0 unconfined, 1 default
  // and custom profiles, 2 restricted.
  int rank = 1;

  // seccomp
  std::string default_action = "SCMP_ACT_ERRNO";
  std::optional<uint32_t> default_errno = 1;  // EPERM
  std::vector<ArchMapEntry> arch_map;
  std::vector<std::string> architectures;  // used when arch_map is empty
  std::vector<SyscallRule> rules;

  // capabilities and the rest of the process
  std::vector<std::string> capabilities;  // the set before cap_add / cap_drop
  bool no_new_privileges = true;
  bool requires_non_root = false;                        // restricted
  std::optional<std::vector<std::string>> addable_caps;  // restricted: only these may be added
  std::vector<std::string> masked_paths, readonly_paths;

  // What a Docker-format file named that this host's libseccomp cannot
  // filter and was left out (README, "Profile files"): one line for the
  // operator, "" when nothing was.
  std::string skipped;
};

// What a task asks for in [task.security] (docs/jobspec.md).
struct TaskSecurity {
  std::string profile;  // "" = the host's default
  std::vector<std::string> cap_add, cap_drop;
  std::string user;  // numeric uid[:gid] or ""
  bool read_only_rootfs = false;
  std::optional<bool> no_new_privileges;
  // task.user, to tell whether the task runs as root when user is "".
  std::string task_user;
  bool has_table = false;
  // From a task object of the canonical job JSON. Throws ProfileError.
  static TaskSecurity from_task(const nlohmann::json &task);
};

// "net_admin", "NET_ADMIN", "CAP_NET_ADMIN" -> "CAP_NET_ADMIN", checked
// with libcap; nullopt when libcap does not know it.
std::optional<std::string> canonical_cap(std::string_view name);
// Every capability this kernel and libcap know, canonical.
std::vector<std::string> all_caps();
// Docker's 14 default capabilities.
const std::vector<std::string> &docker_default_caps();

// True when libseccomp knows the architecture ("SCMP_ARCH_AARCH64").
bool arch_known(const std::string &scmp_name);
// The installed libseccomp's version, "2.5.4".
std::string seccomp_version_text();
// True when libseccomp knows the name (on any architecture).
bool syscall_known(const std::string &name);

// The capability set of a container: the profile's, minus cap_drop, plus
// cap_add ("ALL" allowed in both). Names are checked; throws ProfileError.
std::vector<std::string> effective_caps(const Profile &p, const TaskSecurity &t);

// OCI linux.seccomp for this host and capability set; null for unconfined.
nlohmann::json resolve_seccomp(const Profile &p, const std::vector<std::string> &caps,
                               const HostInfo &host);

// The OCI merge patch for one task (process.capabilities, noNewPrivileges,
// user, linux.seccomp, maskedPaths, readonlyPaths, root.readonly).
nlohmann::json resolve_oci(const Profile &p, const TaskSecurity &t, const HostInfo &host);

// Build the BPF program with libseccomp for the capability sets that matter
// (none and all) and throw ProfileError naming the rule libseccomp refused.
// Returns the time it took in microseconds.
double compile_profile(const Profile &p, const HostInfo &host);

// Check every syscall, capability, arch, op and action name of a profile;
// every problem (naming the rule and the name) is appended to problems.
void check_names(const Profile &p, std::vector<std::string> &problems);
// The same; throws ProfileError with every problem, one a line.
void check_names(const Profile &p);
// Lines joined with '\n', as ProfileError carries several problems.
std::string join_lines(const std::vector<std::string> &lines);

// Built-in profiles: "default", "restricted", "unconfined". Unknown names
// suitable for built-ins were dropped (see README: the built-in list names
// syscalls newer than some libseccomp versions know).
Profile builtin_profile(std::string_view name);
bool is_builtin(std::string_view name);

// Files (profile_files.cc): Docker/Moby JSON or our TOML, by extension
// (.json, .toml). The result is checked (check_names) and compiled.
Profile parse_docker_profile(std::string_view text, const std::string &source,
                             const std::string &name);
Profile parse_toml_profile(std::string_view text, const std::string &source,
                           const std::string &name);
Profile load_profile_file(const std::string &path, const std::string &name);

}  // namespace flotilla::security
