// What the plugin persists about a container (record.json) and what the
// shim reports (shim-state.json), and the state JSON both become across the
// ABI (docs/abi-json.md, "runtime state").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace flotilla::runc {

// record.json: written by create before the monitor starts, rewritten when
// start succeeds. Everything remove() needs to undo create.
struct ContainerRecord {
  std::string id;
  std::string alloc_id, job, task;
  std::string image;         // the reference the task named ("" for a given rootfs)
  std::string image_digest;  // the manifest digest held in use ("" when none)
  std::string cgroups_path;  // "/<cgroup_parent>/<id>"
  std::string kill_signal = "SIGTERM";
  int64_t kill_timeout_ms = 5000;
  std::string created_at, started_at;

  nlohmann::json to_json() const;
  // Missing fields keep their defaults: a record from an older plugin
  // still loads.
  static ContainerRecord from_json(const nlohmann::json &j);
};

// shim-state.json, as the shim wrote it.
struct ShimState {
  std::string status;  // "" when the file is missing or unreadable
  pid_t shim_pid = 0;
  uint64_t shim_start_ticks = 0;
  pid_t pid = 0;
  int exit_code = -1;
  int signal = 0;
  std::string finished_at;
  std::string error;

  static ShimState from_json(const nlohmann::json &j);
};

// The state object of runtime.h: {"id","status","pid","exit_code",
// "signal","created_at","started_at","finished_at","alloc_id","job",
// "task","image","error"}.
struct ContainerStatus {
  std::string status;  // "created" | "running" | "stopped"
  int64_t pid = 0;
  int64_t exit_code = -1;
  int signal = 0;
  std::string finished_at;
  std::string error;
};

nlohmann::json state_json(const ContainerRecord &rec, const ContainerStatus &st);

}  // namespace flotilla::runc
