// The OCI runtime spec (config.json) of a container, generated from its
// task, its image's config and the plugin's settings. Pure functions: no
// I/O, so the whole mapping is unit-tested.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime_config.h"
#include "task_spec.h"

namespace flotilla::runc {

struct ResolvedUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> additional_gids;
  std::string home = "/";
};

// user: "", "uid", "uid:gid", "name", "name:group" (names looked up in the
// image's /etc/passwd and /etc/group text, either may be empty). Throws
// TaskError naming the user and the file it was looked up in.
ResolvedUser resolve_user(const std::string &user, const std::string &passwd,
                          const std::string &group);

struct BundleInputs {
  std::string container_id;
  TaskSpec task;
  // The image's config as ImageConfig::to_json() writes it ("Env",
  // "Entrypoint", "Cmd", "WorkingDir", "User"); may be empty.
  nlohmann::json image_config = nlohmann::json::object();
  std::string image_name;         // for messages
  std::string passwd;             // the rootfs' /etc/passwd, "" when it has none
  std::string group;              // the rootfs' /etc/group
  std::string rootfs = "rootfs";  // relative to the bundle, or absolute
  std::string cgroups_path;       // "/<cgroup_parent>/<id>"
  // Files bind-mounted read-only over /etc/resolv.conf and /etc/hosts ("":
  // the image's own).
  std::string resolv_conf_path;
  std::string hosts_path;
};

// The process arguments: command + args, else the image's Entrypoint +
// (args or Cmd). Throws TaskError when that leaves nothing to run.
std::vector<std::string> process_args(const TaskSpec &task, const nlohmann::json &image_config,
                                      const std::string &image_name);

// config.json; the task's "oci" merge patches are applied last, in order.
// Throws TaskError.
nlohmann::json make_oci_config(const BundleInputs &in, const RuntimeConfig &config);

}  // namespace flotilla::runc
