#include "container_files.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "../image/unique_fd.h"

namespace flotilla::runc {

namespace fs = std::filesystem;

ContainerPaths::ContainerPaths(const fs::path &d)
    : dir(d),
      record(d / "record.json"),
      shim_config(d / "shim.json"),
      shim_state(d / "shim-state.json"),
      shim_log(d / "shim.log"),
      runtime_log(d / "runtime.log"),
      pid_file(d / "container.pid"),
      exit_reported(d / "exit-reported"),
      bundle(d / "bundle"),
      config(d / "bundle" / "config.json"),
      rootfs(d / "bundle" / "rootfs"),
      upper(d / "upper"),
      work(d / "work"),
      logs(d / "logs"),
      stdout_log(d / "logs" / "stdout.log"),
      stderr_log(d / "logs" / "stderr.log") {}

namespace {

[[noreturn]] void fail_errno(const std::string &what, int err = errno) {
  flotilla_status st = err == EACCES || err == EPERM ? FLOTILLA_E_PERMISSION
                       : err == ENOENT               ? FLOTILLA_E_NOT_FOUND
                       : err == ENOMEM               ? FLOTILLA_E_NOMEM
                                                     : FLOTILLA_E_IO;
  throw RuntimeFailure(st, what + ": " + std::strerror(err));
}

// Mount points from /proc/self/mountinfo with their filesystem type.
std::vector<std::pair<std::string, std::string>> mounts() {
  std::vector<std::pair<std::string, std::string>> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source super
    std::istringstream f(line);
    std::string id, parent, dev, root, point, field;
    f >> id >> parent >> dev >> root >> point;
    while (f >> field && field != "-") {
    }
    std::string type;
    f >> type;
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    std::string unescaped;
    for (size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size()) {
        unescaped += static_cast<char>(std::stoi(point.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        unescaped += point[i];
      }
    }
    out.emplace_back(unescaped, type);
  }
  return out;
}

}  // namespace

std::string read_file_in_root(const fs::path &root, const std::string &rel, size_t max_bytes) {
  UniqueFd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) fail_errno("open " + root.string());
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  UniqueFd fd(static_cast<int>(::syscall(SYS_openat2, dir.get(), rel.c_str(), &how, sizeof how)));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) return {};
    fail_errno("open " + (root / rel).string());
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_errno("stat " + (root / rel).string());
  if (!S_ISREG(st.st_mode)) return {};
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("read " + (root / rel).string());
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes)
      throw RuntimeFailure(FLOTILLA_E_INVALID, (root / rel).string() + " is larger than " +
                                                   std::to_string(max_bytes) + " bytes");
  }
  return out;
}

void mount_overlay(const std::vector<std::string> &lower_dirs, const fs::path &upper,
                   const fs::path &work, const fs::path &target) {
  std::string opts = "lowerdir=";
  for (size_t i = 0; i < lower_dirs.size(); ++i) {
    if (lower_dirs[i].find_first_of(":,") != std::string::npos)
      throw RuntimeFailure(FLOTILLA_E_INVALID,
                           "layer directory " + lower_dirs[i] + " contains ':' or ','");
    opts += (i ? ":" : "") + lower_dirs[i];
  }
  opts += ",upperdir=" + upper.string() + ",workdir=" + work.string();
  // mount(2) takes at most a page of options.
  if (opts.size() >= 4000)
    throw RuntimeFailure(FLOTILLA_E_UNSUPPORTED,
                         "the image has too many layers (" + std::to_string(lower_dirs.size()) +
                             ") for one overlay mount option string; flatten the image");
  if (::mount("overlay", target.c_str(), "overlay", MS_NODEV, opts.c_str()) != 0) {
    int err = errno;
    if (err == ENODEV)
      throw RuntimeFailure(FLOTILLA_E_UNSUPPORTED,
                           "the kernel has no overlay filesystem (modprobe overlay)");
    fail_errno("mount overlay on " + target.string(), err);
  }
}

bool is_mount_point(const fs::path &path) {
  std::string p = path.lexically_normal().string();
  for (const auto &[point, type] : mounts())
    if (point == p) return true;
  return false;
}

void unmount_if_mounted(const fs::path &target) {
  // Stacked mounts are possible after a crash between mount and record.
  for (int i = 0; i < 8 && is_mount_point(target); ++i) {
    if (::umount2(target.c_str(), UMOUNT_NOFOLLOW) == 0) continue;
    if (errno == EBUSY && ::umount2(target.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) continue;
    if (errno == EINVAL || errno == ENOENT) return;
    fail_errno("unmount " + target.string());
  }
}

void remove_cgroup(const std::string &cgroups_path) {
  if (cgroups_path.empty() || cgroups_path.find("..") != std::string::npos) return;
  for (const auto &[point, type] : mounts()) {
    if (type != "cgroup" && type != "cgroup2") continue;
    fs::path dir = fs::path(point) / fs::path(cgroups_path).relative_path();
    if (::rmdir(dir.c_str()) != 0 && errno != ENOENT) fail_errno("remove cgroup " + dir.string());
  }
}

bool cgroup_exists(const std::string &cgroups_path) {
  for (const auto &[point, type] : mounts()) {
    if (type != "cgroup" && type != "cgroup2") continue;
    struct stat st {};
    if (::stat((fs::path(point) / fs::path(cgroups_path).relative_path()).c_str(), &st) == 0)
      return true;
  }
  return false;
}

}  // namespace flotilla::runc
