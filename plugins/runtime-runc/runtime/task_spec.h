// The "task" JSON the runtime receives in create() (docs/abi-json.md,
// "task", version 1), read into a struct with errors that name the field.
#pragma once

#include <flotilla/types.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flotilla::runc {

struct TaskSpec {
  std::string alloc_id;
  std::string job;
  std::string task_name;
  std::string image;  // reference; empty only with rootfs_lower_dirs
  std::string command;
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  std::string workdir;
  std::string user;
  int64_t cpu_mhz = 100;
  int64_t memory_mib = 64;
  int64_t memory_max_mib = 64;
  int64_t pids = 1024;
  int64_t kill_timeout_ms = 5000;
  std::string kill_signal = "SIGTERM";
  int kill_signo = 15;
  std::string network = "bridge";  // "bridge" | "host" | "none"
  int64_t log_max_files = 0;       // 0: the plugin's default
  int64_t log_max_file_size_mib = 0;
  std::string hostname;                     // empty: the task name
  std::string netns;                        // path of a network namespace to join
  // The network plugin's attach result (docs/abi-json.md, "network"):
  // rendered /etc/resolv.conf and /etc/hosts; "" when not given.
  std::string resolv_conf;
  std::string hosts;
  bool start = false;  // start the process as part of create (one runtime call, not two)
  // An exited container of this id is replaced, its logs kept as an
  // earlier run (log_runs.h); without it such a create is refused (EXISTS).
  bool replace = false;
  std::vector<nlohmann::json> oci_patches;  // merge patches over config.json, in order
  // A rootfs given directly instead of an image (TOP layer first), with an
  // optional image config ({"Env", "Entrypoint", "Cmd", "WorkingDir", "User"}).
  std::vector<std::string> rootfs_lower_dirs;
  nlohmann::json rootfs_image_config;
};

struct TaskError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws TaskError ("task.resources.memory: must be ...").
TaskSpec parse_task_json(const std::string &text);

// "SIGTERM" -> 15; 0 when unknown.
int signal_number(const std::string &name);

// Container ids: what runc and crun accept and what is safe as a file name.
bool is_valid_container_id(const std::string &id);

}  // namespace flotilla::runc
