/*
 * security-probe: runs inside a test container and tries syscalls, one per
 * line of output:
 *
 *   <name> ok
 *   <name> errno <NAME> <number>
 *
 * and the confinement lines of /proc/self/status ("status CapEff: ...",
 * "status NoNewPrivs: ...", "status Seccomp: ..."). Each syscall runs in its
 * own forked child so that one that succeeds (unshare, setuid, personality)
 * changes nothing for the next. Arguments choose syscalls; none: all.
 * "security-probe --sleep" prints the status lines, then waits for a signal
 * (a container that keeps running).
 * Built static by meson, so the image needs nothing else.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long probe_getpid(void) {
  return syscall(SYS_getpid);
}
static long probe_write_file(void) {
  int fd = open("/tmp/probe-file", O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (fd < 0) return -1;
  long n = write(fd, "x", 1);
  close(fd);
  return n == 1 ? 0 : -1;
}
static long probe_write_root(void) {
  int fd = open("/probe-written", O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (fd < 0) return -1;
  close(fd);
  return 0;
}
static long probe_fork(void) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) _exit(0);
  int st;
  return waitpid(pid, &st, 0) == pid ? 0 : -1;
}
static long probe_socket_inet(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd >= 0) close(fd);
  return fd < 0 ? -1 : 0;
}
static long probe_socket_vsock(void) {
  int fd = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
  if (fd >= 0) close(fd);
  return fd < 0 ? -1 : 0;
}
static long probe_socket_alg(void) {
  int fd = socket(38 /* AF_ALG */, SOCK_SEQPACKET, 0);
  if (fd >= 0) close(fd);
  return fd < 0 ? -1 : 0;
}
static long probe_userfaultfd(void) {
  long fd = syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
  if (fd >= 0) close((int)fd);
  return fd < 0 ? -1 : 0;
}
static long probe_keyctl(void) {
  /* KEYCTL_GET_KEYRING_ID of KEY_SPEC_PROCESS_KEYRING, creating it. */
  return syscall(SYS_keyctl, 0, -2, 1, 0, 0) < 0 ? -1 : 0;
}
static long probe_add_key(void) {
  return syscall(SYS_add_key, "user", "flotilla-probe", "x", 1, -2) < 0 ? -1 : 0;
}
static long probe_request_key(void) {
  return syscall(SYS_request_key, "user", "flotilla-probe-none", NULL, -2) < 0 ? -1 : 0;
}
static long probe_unshare_user(void) {
  return syscall(SYS_unshare, CLONE_NEWUSER);
}
static long probe_unshare_uts(void) {
  return syscall(SYS_unshare, CLONE_NEWUTS);
}
static long probe_mount_tmpfs(void) {
  return syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, "");
}
static long probe_personality_bsd(void) {
  return syscall(SYS_personality, 6 /* PER_BSD */) < 0 ? -1 : 0;
}
static long probe_personality_query(void) {
  return syscall(SYS_personality, 0xffffffffUL) < 0 ? -1 : 0;
}
static long probe_kexec_load(void) {
  return syscall(SYS_kexec_load, 0, 0, NULL, 0);
}
static long probe_init_module(void) {
  return syscall(SYS_init_module, NULL, 0, "");
}
static long probe_swapon(void) {
  return syscall(SYS_swapon, "/nonexistent-swap", 0);
}
static long probe_pivot_root(void) {
  return syscall(SYS_pivot_root, "/tmp", "/tmp");
}
static long probe_io_uring_setup(void) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  long fd = syscall(SYS_io_uring_setup, 1, &p);
  if (fd >= 0) close((int)fd);
  return fd < 0 ? -1 : 0;
}
static long probe_setuid0(void) {
  return syscall(SYS_setuid, 0);
}
static long probe_chroot(void) {
  return syscall(SYS_chroot, "/");
}
static long probe_ptrace_traceme(void) {
  return syscall(SYS_ptrace, 0 /* TRACEME */, 0, 0, 0);
}

struct probe {
  const char *name;
  long (*run)(void);
};
static const struct probe probes[] = {
    {"getpid", probe_getpid},
    {"write_file", probe_write_file},
    {"write_root", probe_write_root},
    {"fork", probe_fork},
    {"socket_inet", probe_socket_inet},
    {"socket_vsock", probe_socket_vsock},
    {"socket_alg", probe_socket_alg},
    {"userfaultfd", probe_userfaultfd},
    {"keyctl", probe_keyctl},
    {"add_key", probe_add_key},
    {"request_key", probe_request_key},
    {"unshare_user", probe_unshare_user},
    {"unshare_uts", probe_unshare_uts},
    {"mount_tmpfs", probe_mount_tmpfs},
    {"personality_bsd", probe_personality_bsd},
    {"personality_query", probe_personality_query},
    {"kexec_load", probe_kexec_load},
    {"init_module", probe_init_module},
    {"swapon", probe_swapon},
    {"pivot_root", probe_pivot_root},
    {"io_uring_setup", probe_io_uring_setup},
    {"setuid0", probe_setuid0},
    {"chroot", probe_chroot},
    {"ptrace_traceme", probe_ptrace_traceme},
};

static const char *errno_name(int e) {
  switch (e) {
    case EPERM:
      return "EPERM";
    case ENOENT:
      return "ENOENT";
    case EFAULT:
      return "EFAULT";
    case EINVAL:
      return "EINVAL";
    case ENOSYS:
      return "ENOSYS";
    case EACCES:
      return "EACCES";
    case EBUSY:
      return "EBUSY";
    case ENOKEY:
      return "ENOKEY";
    case EAFNOSUPPORT:
      return "EAFNOSUPPORT";
    case ENODEV:
      return "ENODEV";
    case ENOEXEC:
      return "ENOEXEC";
    case ENOTDIR:
      return "ENOTDIR";
    case EOPNOTSUPP:
      return "EOPNOTSUPP";
    case EAGAIN:
      return "EAGAIN";
    case EROFS:
      return "EROFS";
    default:
      return "E?";
  }
}

static void run_one(const struct probe *p) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    printf("%s fork-failed %d\n", p->name, errno);
    return;
  }
  if (pid == 0) {
    errno = 0;
    long r = p->run();
    int e = errno;
    if (r < 0)
      printf("%s errno %s %d\n", p->name, errno_name(e), e);
    else
      printf("%s ok\n", p->name);
    fflush(stdout);
    _exit(0);
  }
  int st;
  waitpid(pid, &st, 0);
  if (WIFSIGNALED(st)) printf("%s signal %d\n", p->name, WTERMSIG(st));
}

static void status_lines(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  if (!f) {
    printf("status unreadable %d\n", errno);
    return;
  }
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapBnd:", 7) ||
        !strncmp(line, "NoNewPrivs:", 11) || !strncmp(line, "Seccomp:", 8) ||
        !strncmp(line, "Uid:", 4))
      printf("status %s", line);
  }
  fclose(f);
}

int main(int argc, char **argv) {
  size_t n = sizeof probes / sizeof probes[0];
  status_lines();
  if (argc == 2 && strcmp(argv[1], "--sleep") == 0) {
    fflush(stdout);
    for (;;) pause();
  }
  for (size_t i = 0; i < n; ++i) {
    int wanted = argc < 2;
    for (int a = 1; a < argc; ++a) wanted |= strcmp(argv[a], probes[i].name) == 0;
    if (wanted) run_one(&probes[i]);
  }
  printf("probe done\n");
  return 0;
}
