#include "node/confine.h"

#include <dirent.h>
#include <seccomp.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "error.h"

namespace flotilla {

const std::vector<std::string> &confine_dropped_caps() {
  // Kept: everything runc needs to build a container (SYS_ADMIN, NET_ADMIN,
  // SETUID, CHOWN, ...) and every capability a job may legitimately be
  // granted with cap_add. Dropped: what changes the host itself.
  static const std::vector<std::string> caps = {
      "cap_sys_module",       // load kernel modules
      "cap_sys_rawio",        // raw I/O ports, /dev/mem
      "cap_sys_boot",         // reboot, kexec
      "cap_sys_time",         // set the system clock
      "cap_wake_alarm",       // wake the machine
      "cap_mac_admin",        // change the LSM policy
      "cap_mac_override",     // bypass the LSM policy
      "cap_syslog",           // read and clear the kernel log
      "cap_block_suspend",    // keep the machine from suspending
      "cap_audit_control",    // change the audit rules
      "cap_audit_read",       // read the audit log
      "cap_linux_immutable",  // change immutable and append-only files
      "cap_sys_pacct",        // process accounting
      "cap_sys_tty_config",   // configure ttys, vhangup
  };
  return caps;
}

const std::vector<std::string> &confine_denied_syscalls() {
  static const std::vector<std::string> calls = {
      "init_module",    "finit_module",    "delete_module", "create_module",
      "query_module",   "get_kernel_syms", "kexec_load",    "kexec_file_load",
      "reboot",         "swapon",          "swapoff",       "acct",
      "iopl",           "ioperm",          "settimeofday",  "stime",
      "clock_settime",  "clock_settime64", "userfaultfd",   "_sysctl",
      "nfsservctl",     "uselib",          "vm86",          "vm86old",
      "lookup_dcookie",
  };
  return calls;
}

namespace {

int thread_count() {
  int n = 0;
  if (DIR *d = opendir("/proc/self/task")) {
    while (dirent *e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
  }
  return n;
}

struct CapState {
  cap_t caps = nullptr;
  ~CapState() {
    if (caps) cap_free(caps);
  }
};

struct FilterCtx {
  scmp_filter_ctx ctx = nullptr;
  ~FilterCtx() {
    if (ctx) seccomp_release(ctx);
  }
};

}  // namespace

ConfineResult confine_daemon() {
  ConfineResult result;
  if (int n = thread_count(); n != 1)
    throw Error(FLOTILLA_E_INTERNAL,
                "security.confine_daemon: the daemon already runs " + std::to_string(n) +
                    " threads; capabilities are per thread, so it must confine itself before "
                    "starting any");

  // ---- capabilities: the bounding set (what children can ever get), then
  // our own effective, permitted and inheritable sets.
  CapState now{cap_get_proc()};
  if (!now.caps) throw Error(FLOTILLA_E_IO, std::string("cap_get_proc: ") + std::strerror(errno));
  std::vector<cap_value_t> drop;
  for (const std::string &name : confine_dropped_caps()) {
    cap_value_t v;
    if (cap_from_name(name.c_str(), &v) != 0 || v >= cap_max_bits()) continue;  // kernel lacks it
    if (CAP_IS_SUPPORTED(v) && cap_get_bound(v) == 1) {
      if (cap_drop_bound(v) != 0)
        throw Error(FLOTILLA_E_PERMISSION, "security.confine_daemon: cannot drop " + name +
                                               " from the bounding set: " + std::strerror(errno) +
                                               " (flotillad needs CAP_SETPCAP to confine itself)");
    }
    drop.push_back(v);
    result.dropped_caps.push_back(name);
  }
  if (!drop.empty()) {
    for (cap_flag_t flag : {CAP_EFFECTIVE, CAP_PERMITTED, CAP_INHERITABLE})
      cap_set_flag(now.caps, flag, static_cast<int>(drop.size()), drop.data(), CAP_CLEAR);
    if (cap_set_proc(now.caps) != 0)
      throw Error(FLOTILLA_E_PERMISSION,
                  std::string("security.confine_daemon: cap_set_proc: ") + std::strerror(errno));
  }

  // ---- seccomp: allow by default, EPERM for the deny-list, on every
  // architecture this machine runs (else a 32-bit call would slip by, or
  // be killed as a foreign arch).
  FilterCtx f{seccomp_init(SCMP_ACT_ALLOW)};
  if (!f.ctx) throw Error(FLOTILLA_E_NOMEM, "security.confine_daemon: seccomp_init failed");
  uint32_t native = seccomp_arch_native();
  std::vector<uint32_t> extra;
  if (native == SCMP_ARCH_X86_64) extra = {SCMP_ARCH_X86, SCMP_ARCH_X32};
  if (native == SCMP_ARCH_AARCH64) extra = {SCMP_ARCH_ARM};
  for (uint32_t a : extra) {
    int rc = seccomp_arch_add(f.ctx, a);
    if (rc != 0 && rc != -EEXIST)
      throw Error(FLOTILLA_E_INTERNAL,
                  std::string("security.confine_daemon: seccomp_arch_add: ") + std::strerror(-rc));
  }
  for (const std::string &name : confine_denied_syscalls()) {
    int nr = seccomp_syscall_resolve_name(name.c_str());
    if (nr == __NR_SCMP_ERROR) continue;  // this libseccomp does not know it
    int rc = seccomp_rule_add(f.ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
    if (rc == 0) {
      result.denied_syscalls.push_back(name);
    } else if (nr >= 0) {
      throw Error(FLOTILLA_E_INTERNAL,
                  "security.confine_daemon: seccomp rule for " + name + ": " + std::strerror(-rc));
    }
  }
  // Every thread, also any a library started behind our back.
  seccomp_attr_set(f.ctx, SCMP_FLTATR_CTL_TSYNC, 1);
  // With CAP_SYS_ADMIN the filter needs no no_new_privs, and must not set
  // it: it would be inherited by every container, even one whose profile
  // allows privilege escalation.
  CapState after{cap_get_proc()};
  cap_flag_value_t admin = CAP_CLEAR;
  if (after.caps) cap_get_flag(after.caps, CAP_SYS_ADMIN, CAP_EFFECTIVE, &admin);
  if (admin == CAP_SET) seccomp_attr_set(f.ctx, SCMP_FLTATR_CTL_NNP, 0);
  if (int rc = seccomp_load(f.ctx); rc != 0)
    throw Error(FLOTILLA_E_PERMISSION,
                std::string("security.confine_daemon: cannot install the seccomp filter: ") +
                    std::strerror(-rc));
  return result;
}

}  // namespace flotilla
