// Where one container's files live, and the filesystem work done for it on
// the host's thread pool: the overlay rootfs, its cgroups, its directory.
//
//   <data dir>/containers/<id>/
//     record.json        what the plugin knows (container_record.h)
//     shim.json          the monitor's instructions (shim/shim_protocol.h)
//     shim-state.json    the monitor's report: pid, exit code, finish time
//     shim.log           the monitor's own messages
//     runtime.log        the OCI runtime's --log (JSON lines)
//     container.pid      the OCI runtime's --pid-file
//     exit-reported      present once "runtime.exit" was published
//     bundle/config.json the OCI spec;  bundle/rootfs  the overlay mount
//     upper/ work/       the overlay's writable layer and work dir
//     logs/stdout.log[.N] logs/stderr.log[.N]
//
// Functions here block; call them only from work callbacks.
#pragma once

#include <flotilla/types.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace flotilla::runc {

// A failure with the status to hand across the ABI and a message for the
// operator.
class RuntimeFailure : public std::runtime_error {
 public:
  RuntimeFailure(flotilla_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  flotilla_status status() const { return status_; }

 private:
  flotilla_status status_;
};

struct ContainerPaths {
  explicit ContainerPaths(const std::filesystem::path &dir);
  std::filesystem::path dir, record, shim_config, shim_state, shim_log, runtime_log, pid_file,
      exit_reported, bundle, config, rootfs, upper, work, logs, stdout_log, stderr_log;
};

// Reads at most max_bytes of rel inside root, resolving symlinks as if
// root were "/" (openat2 RESOLVE_IN_ROOT), so an image cannot point us at
// the host's files. "" when the file does not exist.
std::string read_file_in_root(const std::filesystem::path &root, const std::string &rel,
                              size_t max_bytes);

// mount -t overlay -o lowerdir=<top:...:bottom>,upperdir=,workdir= overlay target
void mount_overlay(const std::vector<std::string> &lower_dirs, const std::filesystem::path &upper,
                   const std::filesystem::path &work, const std::filesystem::path &target);

// Unmounts target if something is mounted there (lazily if it is busy).
void unmount_if_mounted(const std::filesystem::path &target);

// True when path is a mount point in this mount namespace.
bool is_mount_point(const std::filesystem::path &path);

// Removes the directory cgroups_path ("/flotilla/<id>") from every mounted
// cgroup hierarchy (v1 controllers, the v2 unified tree). Throws
// RuntimeFailure when one is still in use.
void remove_cgroup(const std::string &cgroups_path);

// True when cgroups_path exists in any mounted hierarchy.
bool cgroup_exists(const std::string &cgroups_path);

}  // namespace flotilla::runc
