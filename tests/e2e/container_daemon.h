// What the e2e tests that run real containers share: the plugin config of
// a daemon that runs them, and the clean-up that removes everything such a
// daemon made, also when a test failed half-way. Header-only: the plugin
// paths come from each test executable's defines (SCHEDULER_BINPACK_PATH,
// RUNTIME_RUNC_PATH, RUNC_SHIM_PATH).
#pragma once

#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon_harness.h"

namespace flotilla::e2e {

inline std::string read_text(const std::string &path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// [plugin.scheduler-binpack] and [plugin.runtime-runc] with the OCI root in
// the daemon's scratch dir and containers under cgroup_parent.
inline std::string container_plugins_config(const Daemon &d, const std::string &cgroup_parent) {
  return "[plugin.scheduler-binpack]\npath = \"" SCHEDULER_BINPACK_PATH
         "\"\n\n"
         "[plugin.runtime-runc]\npath = \"" RUNTIME_RUNC_PATH "\"\nshim = \"" RUNC_SHIM_PATH
         "\"\nroot = \"" +
         d.dir() + "/oci-root\"\ncgroup_parent = \"" + cgroup_parent + "\"\n";
}

inline bool containers_gone(const Daemon &d) {
  std::error_code ec;
  return !std::filesystem::exists(d.dir() + "/oci-root", ec) ||
         std::filesystem::is_empty(d.dir() + "/oci-root", ec);
}

// Removes the cgroup `name` and everything below it from every mounted
// cgroup hierarchy, deepest first (rmdir only removes empty cgroups:
// nothing else is hit).
inline void remove_cgroup_tree(const std::string &name) {
  namespace fs = std::filesystem;
  std::istringstream mounts(read_text("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream ls(line);
    std::vector<std::string> f;
    for (std::string w; ls >> w;) f.push_back(w);
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || dash + 1 == f.end()) continue;
    if (dash[1] != "cgroup" && dash[1] != "cgroup2") continue;
    std::string top = f[4] + "/" + name;
    std::error_code ec;
    if (!fs::exists(top, ec)) continue;
    std::vector<fs::path> dirs;
    for (const auto &e : fs::recursive_directory_iterator(top, ec))
      if (e.is_directory(ec)) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end(), [](const fs::path &a, const fs::path &b) {
      return a.string().size() > b.string().size();
    });
    for (const auto &dir : dirs) ::rmdir(dir.c_str());
    ::rmdir(top.c_str());
  }
}

// What a container-running daemon (its scratch dir) leaves once it is
// stopped (or killed):
// whatever is left under its OCI root is deleted, shims it started are
// killed by the pid they recorded, mounts under its dir are unmounted, and
// cgroup_parent goes.
inline void remove_leftovers(const std::string &dir, const std::string &cgroup_parent) {
  namespace fs = std::filesystem;
  using nlohmann::json;
  std::string root = dir + "/oci-root";
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(root, ec))
    run({"/usr/sbin/runc", "--root", root, "delete", "--force", e.path().filename()});
  for (const auto &e : fs::recursive_directory_iterator(dir + "/data", ec)) {
    if (e.path().filename() != "shim-state.json") continue;
    json s = json::parse(read_text(e.path()), nullptr, false);
    if (s.is_object() && s.value("shim_pid", 0) > 0) ::kill(s.value("shim_pid", 0), SIGKILL);
  }
  std::istringstream mounts(read_text("/proc/self/mountinfo"));
  std::string line;
  std::vector<std::string> ours;
  while (std::getline(mounts, line))
    if (line.find(dir) != std::string::npos) {
      std::istringstream ls(line);
      std::string f;
      for (int i = 0; i < 5 && ls >> f; ++i) {
      }
      ours.push_back(f);
    }
  for (auto it = ours.rbegin(); it != ours.rend(); ++it) ::umount2(it->c_str(), MNT_DETACH);
  remove_cgroup_tree(cgroup_parent);
}
inline void remove_leftovers(Daemon &d, const std::string &cgroup_parent) {
  remove_leftovers(d.dir(), cgroup_parent);
}

// The names of the jobs the daemon's API lists.
inline std::vector<std::string> job_names(const Daemon &d) {
  auto jobs = nlohmann::json::parse(d.get("/v1/jobs").body, nullptr, false);
  if (jobs.is_object() && jobs.contains("jobs")) jobs = jobs["jobs"];
  std::vector<std::string> names;
  if (jobs.is_array())
    for (const auto &j : jobs) names.push_back(j.value("name", ""));
  return names;
}

// Everything a container-running daemon made: its jobs are purged so that
// it removes their containers, then it is stopped and remove_leftovers
// takes what is left.
inline void remove_everything(Daemon &d, const std::string &cgroup_parent) {
  if (d.running()) {
    for (const auto &name : job_names(d))
      http(d.socket(), "DELETE", "/v1/jobs/" + name + "?purge=true");
    for (int i = 0; i < 100 && !containers_gone(d); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    d.signal(SIGTERM);
    d.wait_exit();
  }
  remove_leftovers(d, cgroup_parent);
}

}  // namespace flotilla::e2e
