// The built-in profiles. "default" follows the shape of the Docker/Moby
// default seccomp profile (an allow-list with EPERM for everything else, and
// rules that open a syscall only to a container holding the capability the
// kernel would check anyway), but is stricter in places: io_uring,
// pivot_root, keyctl/add_key/request_key, userfaultfd, kexec and swap are
// never allowed, whatever the capabilities. README.md lists the choices.
#include <algorithm>

#include "profile.h"

namespace flotilla::security {

namespace {

// Allowed for every container.
const char *const kAlwaysAllowed[] = {"accept",
                                      "accept4",
                                      "access",
                                      "adjtimex",
                                      "alarm",
                                      "bind",
                                      "brk",
                                      "cachestat",
                                      "capget",
                                      "capset",
                                      "chdir",
                                      "chmod",
                                      "chown",
                                      "chown32",
                                      "clock_adjtime",
                                      "clock_adjtime64",
                                      "clock_getres",
                                      "clock_getres_time64",
                                      "clock_gettime",
                                      "clock_gettime64",
                                      "clock_nanosleep",
                                      "clock_nanosleep_time64",
                                      "close",
                                      "close_range",
                                      "connect",
                                      "copy_file_range",
                                      "creat",
                                      "dup",
                                      "dup2",
                                      "dup3",
                                      "epoll_create",
                                      "epoll_create1",
                                      "epoll_ctl",
                                      "epoll_ctl_old",
                                      "epoll_pwait",
                                      "epoll_pwait2",
                                      "epoll_wait",
                                      "epoll_wait_old",
                                      "eventfd",
                                      "eventfd2",
                                      "execve",
                                      "execveat",
                                      "exit",
                                      "exit_group",
                                      "faccessat",
                                      "faccessat2",
                                      "fadvise64",
                                      "fadvise64_64",
                                      "fallocate",
                                      "fanotify_mark",
                                      "fchdir",
                                      "fchmod",
                                      "fchmodat",
                                      "fchmodat2",
                                      "fchown",
                                      "fchown32",
                                      "fchownat",
                                      "fcntl",
                                      "fcntl64",
                                      "fdatasync",
                                      "fgetxattr",
                                      "flistxattr",
                                      "flock",
                                      "fork",
                                      "fremovexattr",
                                      "fsetxattr",
                                      "fstat",
                                      "fstat64",
                                      "fstatat64",
                                      "fstatfs",
                                      "fstatfs64",
                                      "fsync",
                                      "ftruncate",
                                      "ftruncate64",
                                      "futex",
                                      "futex_requeue",
                                      "futex_time64",
                                      "futex_wait",
                                      "futex_waitv",
                                      "futex_wake",
                                      "futimesat",
                                      "getcpu",
                                      "getcwd",
                                      "getdents",
                                      "getdents64",
                                      "getegid",
                                      "getegid32",
                                      "geteuid",
                                      "geteuid32",
                                      "getgid",
                                      "getgid32",
                                      "getgroups",
                                      "getgroups32",
                                      "getitimer",
                                      "getpeername",
                                      "getpgid",
                                      "getpgrp",
                                      "getpid",
                                      "getppid",
                                      "getpriority",
                                      "getrandom",
                                      "getresgid",
                                      "getresgid32",
                                      "getresuid",
                                      "getresuid32",
                                      "getrlimit",
                                      "get_robust_list",
                                      "getrusage",
                                      "getsid",
                                      "getsockname",
                                      "getsockopt",
                                      "get_thread_area",
                                      "gettid",
                                      "gettimeofday",
                                      "getuid",
                                      "getuid32",
                                      "getxattr",
                                      "inotify_add_watch",
                                      "inotify_init",
                                      "inotify_init1",
                                      "inotify_rm_watch",
                                      "io_cancel",
                                      "ioctl",
                                      "io_destroy",
                                      "io_getevents",
                                      "io_pgetevents",
                                      "io_pgetevents_time64",
                                      "ioprio_get",
                                      "ioprio_set",
                                      "io_setup",
                                      "io_submit",
                                      "ipc",
                                      "kill",
                                      "landlock_add_rule",
                                      "landlock_create_ruleset",
                                      "landlock_restrict_self",
                                      "lchown",
                                      "lchown32",
                                      "lgetxattr",
                                      "link",
                                      "linkat",
                                      "listen",
                                      "listxattr",
                                      "llistxattr",
                                      "_llseek",
                                      "lremovexattr",
                                      "lseek",
                                      "lsetxattr",
                                      "lstat",
                                      "lstat64",
                                      "madvise",
                                      "map_shadow_stack",
                                      "membarrier",
                                      "memfd_create",
                                      "memfd_secret",
                                      "mincore",
                                      "mkdir",
                                      "mkdirat",
                                      "mknod",
                                      "mknodat",
                                      "mlock",
                                      "mlock2",
                                      "mlockall",
                                      "mmap",
                                      "mmap2",
                                      "mprotect",
                                      "mq_getsetattr",
                                      "mq_notify",
                                      "mq_open",
                                      "mq_timedreceive",
                                      "mq_timedreceive_time64",
                                      "mq_timedsend",
                                      "mq_timedsend_time64",
                                      "mq_unlink",
                                      "mremap",
                                      "msgctl",
                                      "msgget",
                                      "msgrcv",
                                      "msgsnd",
                                      "msync",
                                      "munlock",
                                      "munlockall",
                                      "munmap",
                                      "name_to_handle_at",
                                      "nanosleep",
                                      "newfstatat",
                                      "_newselect",
                                      "open",
                                      "openat",
                                      "openat2",
                                      "pause",
                                      "pidfd_open",
                                      "pidfd_send_signal",
                                      "pipe",
                                      "pipe2",
                                      "pkey_alloc",
                                      "pkey_free",
                                      "pkey_mprotect",
                                      "poll",
                                      "ppoll",
                                      "ppoll_time64",
                                      "prctl",
                                      "pread64",
                                      "preadv",
                                      "preadv2",
                                      "prlimit64",
                                      "process_mrelease",
                                      "pselect6",
                                      "pselect6_time64",
                                      "pwrite64",
                                      "pwritev",
                                      "pwritev2",
                                      "read",
                                      "readahead",
                                      "readlink",
                                      "readlinkat",
                                      "readv",
                                      "recv",
                                      "recvfrom",
                                      "recvmmsg",
                                      "recvmmsg_time64",
                                      "recvmsg",
                                      "remap_file_pages",
                                      "removexattr",
                                      "rename",
                                      "renameat",
                                      "renameat2",
                                      "restart_syscall",
                                      "rmdir",
                                      "rseq",
                                      "rt_sigaction",
                                      "rt_sigpending",
                                      "rt_sigprocmask",
                                      "rt_sigqueueinfo",
                                      "rt_sigreturn",
                                      "rt_sigsuspend",
                                      "rt_sigtimedwait",
                                      "rt_sigtimedwait_time64",
                                      "rt_tgsigqueueinfo",
                                      "sched_getaffinity",
                                      "sched_getattr",
                                      "sched_getparam",
                                      "sched_get_priority_max",
                                      "sched_get_priority_min",
                                      "sched_getscheduler",
                                      "sched_rr_get_interval",
                                      "sched_rr_get_interval_time64",
                                      "sched_setaffinity",
                                      "sched_setattr",
                                      "sched_setparam",
                                      "sched_setscheduler",
                                      "sched_yield",
                                      "seccomp",
                                      "select",
                                      "semctl",
                                      "semget",
                                      "semop",
                                      "semtimedop",
                                      "semtimedop_time64",
                                      "send",
                                      "sendfile",
                                      "sendfile64",
                                      "sendmmsg",
                                      "sendmsg",
                                      "sendto",
                                      "setfsgid",
                                      "setfsgid32",
                                      "setfsuid",
                                      "setfsuid32",
                                      "setgid",
                                      "setgid32",
                                      "setgroups",
                                      "setgroups32",
                                      "setitimer",
                                      "setpgid",
                                      "setpriority",
                                      "setregid",
                                      "setregid32",
                                      "setresgid",
                                      "setresgid32",
                                      "setresuid",
                                      "setresuid32",
                                      "setreuid",
                                      "setreuid32",
                                      "setrlimit",
                                      "set_robust_list",
                                      "setsid",
                                      "setsockopt",
                                      "set_thread_area",
                                      "set_tid_address",
                                      "setuid",
                                      "setuid32",
                                      "setxattr",
                                      "shmat",
                                      "shmctl",
                                      "shmdt",
                                      "shmget",
                                      "shutdown",
                                      "sigaltstack",
                                      "signalfd",
                                      "signalfd4",
                                      "sigprocmask",
                                      "sigreturn",
                                      "socketcall",
                                      "socketpair",
                                      "splice",
                                      "stat",
                                      "stat64",
                                      "statfs",
                                      "statfs64",
                                      "statx",
                                      "symlink",
                                      "symlinkat",
                                      "sync",
                                      "sync_file_range",
                                      "syncfs",
                                      "sysinfo",
                                      "tee",
                                      "tgkill",
                                      "time",
                                      "timer_create",
                                      "timer_delete",
                                      "timer_getoverrun",
                                      "timer_gettime",
                                      "timer_gettime64",
                                      "timer_settime",
                                      "timer_settime64",
                                      "timerfd_create",
                                      "timerfd_gettime",
                                      "timerfd_gettime64",
                                      "timerfd_settime",
                                      "timerfd_settime64",
                                      "times",
                                      "tkill",
                                      "truncate",
                                      "truncate64",
                                      "ugetrlimit",
                                      "umask",
                                      "uname",
                                      "unlink",
                                      "unlinkat",
                                      "utime",
                                      "utimensat",
                                      "utimensat_time64",
                                      "utimes",
                                      "vfork",
                                      "vmsplice",
                                      "wait4",
                                      "waitid",
                                      "waitpid",
                                      "write",
                                      "writev"};

struct CapRule {
  const char *cap;
  std::vector<const char *> names;
};
// Opened only to a container that holds the capability.
const CapRule kCapRules[] = {
    {"CAP_DAC_READ_SEARCH", {"open_by_handle_at"}},
    {"CAP_SYS_ADMIN",
     {"bpf",           "clone",         "clone3",      "fanotify_init",   "fsconfig",
      "fsmount",       "fsopen",        "fspick",      "lookup_dcookie",  "mount",
      "mount_setattr", "move_mount",    "open_tree",   "perf_event_open", "quotactl",
      "quotactl_fd",   "setdomainname", "sethostname", "setns",           "syslog",
      "umount",        "umount2",       "unshare"}},
    {"CAP_SYS_BOOT", {"reboot"}},
    {"CAP_SYS_CHROOT", {"chroot"}},
    {"CAP_SYS_MODULE", {"delete_module", "init_module", "finit_module"}},
    {"CAP_SYS_PACCT", {"acct"}},
    {"CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}},
    {"CAP_SYS_RAWIO", {"iopl", "ioperm"}},
    {"CAP_SYS_TIME", {"settimeofday", "stime", "clock_settime", "clock_settime64"}},
    {"CAP_SYS_TTY_CONFIG", {"vhangup"}},
    {"CAP_SYS_NICE", {"get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"}},
    {"CAP_SYSLOG", {"syslog"}},
    {"CAP_BPF", {"bpf"}},
    {"CAP_PERFMON", {"perf_event_open"}},
};

// Flags of clone(2) that make namespaces: CLONE_NEWNS | NEWCGROUP | NEWUTS |
// NEWIPC | NEWUSER | NEWPID | NEWNET — refused without CAP_SYS_ADMIN.
constexpr uint64_t kCloneNamespaceFlags = 0x7E020000;

// Names this libseccomp does not know are dropped from built-ins (a newer
// kernel's syscalls on an older library); files are not so lenient.
std::vector<std::string> known(std::initializer_list<const char *> names) {
  std::vector<std::string> out;
  for (const char *n : names)
    if (syscall_known(n)) out.push_back(n);
  return out;
}

SyscallRule rule(std::vector<std::string> names, std::string where) {
  SyscallRule r;
  r.names = std::move(names);
  r.where = std::move(where);
  return r;
}

Profile make_default() {
  Profile p;
  p.name = "default";
  p.source = "built-in";
  p.arch_map = {{"SCMP_ARCH_X86_64", {"SCMP_ARCH_X86", "SCMP_ARCH_X32"}},
                {"SCMP_ARCH_AARCH64", {"SCMP_ARCH_ARM"}},
                {"SCMP_ARCH_PPC64LE", {}},
                {"SCMP_ARCH_S390X", {"SCMP_ARCH_S390"}},
                {"SCMP_ARCH_RISCV64", {}}};
  std::vector<std::string> always;
  for (const char *n : kAlwaysAllowed)
    if (syscall_known(n)) always.push_back(n);
  p.rules.push_back(rule(always, "always allowed"));

  // socket: the families Docker's default allows: all but AF_ALG (38, the
  // kernel's crypto API, a long line of exploits) and AF_VSOCK (40, which
  // reaches the hypervisor host). Three rules, as Moby writes them.
  for (auto [op, family] :
       {std::pair{"SCMP_CMP_LT", 38}, {"SCMP_CMP_EQ", 39}, {"SCMP_CMP_GT", 40}}) {
    SyscallRule sock = rule({"socket"}, "socket");
    sock.args = {{0, static_cast<uint64_t>(family), 0, op}};
    p.rules.push_back(sock);
  }

  // personality: only the harmless personas (Linux, UNAME26, READ_IMPLIES_EXEC
  // off, and the query 0xffffffff).
  for (uint64_t persona : {0x0ULL, 0x8ULL, 0x20000ULL, 0x20008ULL, 0xffffffffULL}) {
    SyscallRule r = rule({"personality"}, "personality");
    r.args = {{0, persona, 0, "SCMP_CMP_EQ"}};
    p.rules.push_back(r);
  }

  SyscallRule arch_prctl = rule(known({"arch_prctl", "modify_ldt"}), "x86 only");
  arch_prctl.includes.arches = {"amd64", "x32", "386"};
  if (!arch_prctl.names.empty()) p.rules.push_back(arch_prctl);

  // ptrace and cross-process memory access: allowed from kernel 4.8, which
  // stopped ptrace from bypassing seccomp.
  SyscallRule ptrace = rule({"ptrace", "process_vm_readv", "process_vm_writev"}, "ptrace");
  ptrace.includes.min_kernel = "4.8";
  p.rules.push_back(ptrace);

  for (const CapRule &c : kCapRules) {
    std::vector<std::string> names;
    for (const char *n : c.names)
      if (syscall_known(n)) names.push_back(n);
    if (names.empty()) continue;
    SyscallRule r = rule(names, c.cap);
    r.includes.caps = {c.cap};
    p.rules.push_back(r);
  }
  // Without CAP_SYS_ADMIN: clone only without namespace flags, and clone3
  // (whose flags sit in memory seccomp cannot read) answers ENOSYS so that
  // libc falls back to clone.
  SyscallRule clone = rule({"clone"}, "clone without CAP_SYS_ADMIN");
  clone.args = {{0, kCloneNamespaceFlags, 0, "SCMP_CMP_MASKED_EQ"}};  // (arg & mask) == 0
  clone.excludes.caps = {"CAP_SYS_ADMIN"};
  p.rules.push_back(clone);
  if (syscall_known("clone3")) {
    SyscallRule clone3 = rule({"clone3"}, "clone3 without CAP_SYS_ADMIN");
    clone3.action = "SCMP_ACT_ERRNO";
    clone3.errno_ret = 38;  // ENOSYS
    clone3.excludes.caps = {"CAP_SYS_ADMIN"};
    p.rules.push_back(clone3);
  }

  p.capabilities = docker_default_caps();
  p.no_new_privileges = true;
  p.masked_paths = {"/proc/acpi",
                    "/proc/asound",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                    "/sys/devices/virtual/powercap"};
  p.readonly_paths = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"};
  return p;
}

}  // namespace

bool is_builtin(std::string_view name) {
  return name == "default" || name == "restricted" || name == "unconfined";
}

Profile builtin_profile(std::string_view name) {
  static const Profile def = make_default();
  if (name == "default") return def;
  if (name == "restricted") {
    Profile p = def;
    p.name = "restricted";
    p.rank = 2;
    p.capabilities.clear();
    p.addable_caps = std::vector<std::string>{"CAP_NET_BIND_SERVICE"};
    p.requires_non_root = true;
    return p;
  }
  if (name == "unconfined") {
    Profile p;
    p.name = "unconfined";
    p.source = "built-in";
    p.unconfined = true;
    p.rank = 0;
    p.capabilities = docker_default_caps();
    p.no_new_privileges = false;
    return p;
  }
  throw ProfileError("no built-in profile \"" + std::string(name) +
                     "\"; built-ins are default, restricted and unconfined");
}

}  // namespace flotilla::security
