// [plugin.runtime-runc] in flotillad.toml: every key, its default and what
// is accepted (README.md, "Runtime", lists them for operators).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "../image/registry_config.h"

namespace flotilla::runc {

struct RuntimeConfig {
  std::string binary = "runc";  // "runc", "crun", or a path to any OCI runtime CLI
  std::string root;             // the runtime's --root; default <data dir>/oci-root
  std::string shim;             // flotilla-runc-shim; default: found at init
  std::string cgroup_parent = "flotilla";
  std::string image_dir;       // default <data dir>/images
  std::string containers_dir;  // <data dir>/containers (not configurable)
  // Network namespaces shared by the tasks of one allocation when no
  // network plugin gave one: <data dir>/alloc-netns/<alloc> (not
  // configurable).
  std::string alloc_netns_dir;
  uint64_t log_max_size_mb = 10;
  uint64_t log_max_files = 5;
  bool cpu_hard_limit = false;
  uint64_t cpu_mhz_per_core = 1000;
  uint64_t rlimit_nofile = 65536;
  std::string device_nodes = "skip";  // device nodes in image layers: "skip" or "refuse"
  RegistryConfig registry;  // [plugin.runtime-runc.registry]
  uint64_t image_unused_after_s = 24 * 3600;  // image GC: unused this long goes
  uint64_t image_max_size_mb = 0;             // image GC: oldest unused go beyond this; 0: no limit
};

// A bad key or value: key is the dotted path inside the plugin's table,
// message says what is accepted.
struct ConfigProblem : std::runtime_error {
  ConfigProblem(std::string key, const std::string &message)
      : std::runtime_error(message), key(std::move(key)) {}
  std::string key;
};

// Reads the table (as the host hands it over, JSON) on top of the defaults.
// data_dir is the plugin's own directory. Every bad key is appended to
// problems (a bad value leaves the default).
RuntimeConfig parse_runtime_config(const nlohmann::json &table, const std::string &data_dir,
                                   std::vector<ConfigProblem> &problems);
// The same; throws the first problem.
RuntimeConfig parse_runtime_config(const nlohmann::json &table, const std::string &data_dir);

}  // namespace flotilla::runc
