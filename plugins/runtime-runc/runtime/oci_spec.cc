#include "oci_spec.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <optional>
#include <sstream>

namespace flotilla::runc {

namespace {

using json = nlohmann::json;

constexpr const char *kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

std::optional<uint32_t> number(const std::string &s) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// Lines of a colon-separated database (/etc/passwd, /etc/group) as fields.
std::vector<std::vector<std::string>> records(const std::string &text) {
  std::vector<std::vector<std::string>> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f;
    size_t start = 0;
    for (;;) {
      size_t colon = line.find(':', start);
      f.push_back(line.substr(start, colon - start));
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<std::string> json_strings(const json &obj, const char *key) {
  std::vector<std::string> out;
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_array()) return out;
  for (const json &v : *it)
    if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

std::string json_text(const json &obj, const char *key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

json default_mounts() {
  auto m = [](const char *dest, const char *type, const char *source,
              std::vector<std::string> options) {
    return json{{"destination", dest}, {"type", type}, {"source", source}, {"options", options}};
  };
  return json::array({
      m("/proc", "proc", "proc", {"nosuid", "noexec", "nodev"}),
      m("/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"}),
      m("/dev/pts", "devpts", "devpts",
        {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}),
      m("/dev/shm", "tmpfs", "shm", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}),
      m("/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"}),
      m("/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"}),
      m("/sys/fs/cgroup", "cgroup", "cgroup", {"nosuid", "noexec", "nodev", "relatime", "ro"}),
  });
}

// Docker's default capability set: what ordinary images expect to have.
// The security plugin narrows it through an "oci" patch.
const std::vector<std::string> kDefaultCaps = {
    "CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
    "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
    "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL",    "CAP_AUDIT_WRITE"};

}  // namespace

ResolvedUser resolve_user(const std::string &user, const std::string &passwd,
                          const std::string &group) {
  ResolvedUser r;
  if (user.empty()) {
    for (const auto &f : records(passwd))
      if (f.size() >= 6 && f[2] == "0") r.home = f[5];
    return r;
  }
  size_t colon = user.find(':');
  std::string u = user.substr(0, colon);
  std::string g = colon == std::string::npos ? "" : user.substr(colon + 1);
  auto users = records(passwd);
  const std::vector<std::string> *entry = nullptr;
  if (auto n = number(u)) {
    r.uid = *n;
    for (const auto &f : users)
      if (f.size() >= 4 && f[2] == u) entry = &f;
  } else {
    for (const auto &f : users)
      if (f.size() >= 4 && f[0] == u) entry = &f;
    if (!entry)
      throw TaskError("task.user: no user \"" + u + "\" in the image's /etc/passwd; use a " +
                      "numeric uid[:gid] or a user the image defines");
    auto uid = number((*entry)[2]);
    if (!uid) throw TaskError("task.user: the image's /etc/passwd has a bad uid for \"" + u + "\"");
    r.uid = *uid;
  }
  if (entry) {
    if (auto gid = number((*entry)[3])) r.gid = *gid;
    if (entry->size() >= 6 && !(*entry)[5].empty()) r.home = (*entry)[5];
  }
  auto groups = records(group);
  if (!g.empty()) {
    if (auto n = number(g)) {
      r.gid = *n;
    } else {
      bool found = false;
      for (const auto &f : groups) {
        if (f.size() >= 3 && f[0] == g) {
          if (auto gid = number(f[2])) r.gid = *gid, found = true;
        }
      }
      if (!found)
        throw TaskError("task.user: no group \"" + g + "\" in the image's /etc/group; use a " +
                        "numeric gid or a group the image defines");
    }
  }
  // Supplementary groups: those listing the user by name as a member.
  if (entry) {
    for (const auto &f : groups) {
      if (f.size() < 4 || f[3].empty()) continue;
      std::istringstream members(f[3]);
      std::string m;
      while (std::getline(members, m, ','))
        if (m == (*entry)[0])
          if (auto gid = number(f[2]); gid && *gid != r.gid) r.additional_gids.push_back(*gid);
    }
  }
  return r;
}

std::vector<std::string> process_args(const TaskSpec &task, const json &image_config,
                                      const std::string &image_name) {
  std::vector<std::string> args;
  if (!task.command.empty()) {
    args.push_back(task.command);
    args.insert(args.end(), task.args.begin(), task.args.end());
    return args;
  }
  args = json_strings(image_config, "Entrypoint");
  std::vector<std::string> rest = task.args.empty() ? json_strings(image_config, "Cmd") : task.args;
  args.insert(args.end(), rest.begin(), rest.end());
  if (args.empty())
    throw TaskError("task.command: is empty and image " +
                    (image_name.empty() ? std::string("(rootfs)") : "\"" + image_name + "\"") +
                    " has no Entrypoint or Cmd; give the task a command");
  return args;
}

json make_oci_config(const BundleInputs &in, const RuntimeConfig &config) {
  const TaskSpec &t = in.task;
  const json &ic = in.image_config.is_object() ? in.image_config : json::object();

  ResolvedUser user =
      resolve_user(t.user.empty() ? json_text(ic, "User") : t.user, in.passwd, in.group);

  // Environment: the image's, then the task's on top; PATH and HOME always.
  std::vector<std::pair<std::string, std::string>> env;
  auto set_env = [&](const std::string &k, const std::string &v) {
    for (auto &kv : env)
      if (kv.first == k) return void(kv.second = v);
    env.emplace_back(k, v);
  };
  for (const std::string &kv : json_strings(ic, "Env")) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    set_env(kv.substr(0, eq), kv.substr(eq + 1));
  }
  for (const auto &[k, v] : t.env) set_env(k, v);
  auto has = [&](const char *k) {
    return std::any_of(env.begin(), env.end(), [&](auto &kv) { return kv.first == k; });
  };
  if (!has("PATH")) env.emplace(env.begin(), "PATH", kDefaultPath);
  if (!has("HOME")) env.emplace_back("HOME", user.home);
  std::string hostname = !t.hostname.empty()    ? t.hostname
                         : !t.task_name.empty() ? t.task_name
                                                : in.container_id.substr(0, 63);
  if (!has("HOSTNAME")) env.emplace_back("HOSTNAME", hostname);
  json env_list = json::array();
  for (const auto &[k, v] : env) env_list.push_back(k + "=" + v);

  std::string cwd = !t.workdir.empty() ? t.workdir : json_text(ic, "WorkingDir");
  if (cwd.empty() || cwd.front() != '/') cwd = "/";

  json user_json = {{"uid", user.uid}, {"gid", user.gid}};
  if (!user.additional_gids.empty()) user_json["additionalGids"] = user.additional_gids;

  json caps = kDefaultCaps;
  json process = {
      {"terminal", false},
      {"user", user_json},
      {"args", process_args(t, ic, in.image_name)},
      {"env", env_list},
      {"cwd", cwd},
      {"capabilities",
       {{"bounding", caps},
        {"effective", caps},
        {"permitted", caps},
        {"inheritable", json::array()}}},
      {"rlimits", json::array({{{"type", "RLIMIT_NOFILE"},
                                {"hard", config.rlimit_nofile},
                                {"soft", config.rlimit_nofile}}})},
      {"noNewPrivileges", false},
  };

  constexpr int64_t kMiB = 1024 * 1024;
  constexpr int64_t kPeriod = 100000;  // µs
  json cpu = {{"shares", std::max<int64_t>(2, std::min<int64_t>(t.cpu_mhz, 262144))}};
  if (config.cpu_hard_limit) {
    cpu["period"] = kPeriod;
    cpu["quota"] = std::max<int64_t>(
        1000, kPeriod * t.cpu_mhz / static_cast<int64_t>(config.cpu_mhz_per_core));
  }
  json resources = {
      {"devices", json::array({{{"allow", false}, {"access", "rwm"}}})},
      {"cpu", cpu},
      {"memory", {{"limit", t.memory_max_mib * kMiB}, {"reservation", t.memory_mib * kMiB}}},
      {"pids", {{"limit", t.pids}}},
  };

  json namespaces = json::array({{{"type", "pid"}},
                                 {{"type", "ipc"}},
                                 {{"type", "uts"}},
                                 {{"type", "mount"}},
                                 {{"type", "cgroup"}}});
  // "host" shares the daemon's network namespace; otherwise a namespace the
  // network plugin made, or a fresh one with only loopback (the OCI runtime
  // brings lo up).
  if (t.network != "host") {
    json ns = {{"type", "network"}};
    if (!t.netns.empty()) ns["path"] = t.netns;
    namespaces.push_back(ns);
  }

  json mounts = default_mounts();
  for (const auto &[dest, src] : {std::pair<const char *, const std::string &>{"/etc/resolv.conf",
                                                                              in.resolv_conf_path},
                                  {"/etc/hosts", in.hosts_path}})
    if (!src.empty())
      mounts.push_back({{"destination", dest},
                        {"type", "bind"},
                        {"source", src},
                        {"options", {"rbind", "ro", "nosuid", "nodev", "noexec"}}});

  // The runtime-spec version whose fields the bundle uses: the security
  // plugin's seccomp patch sets linux.seccomp.defaultErrnoRet and
  // syscalls[].errnoRet, which runtime-spec added in 1.1.0 (runc 1.1 and
  // crun 1.8, Debian 12's, read them).
  json spec = {
      {"ociVersion", "1.1.0"},
      {"process", process},
      {"root", {{"path", in.rootfs}, {"readonly", false}}},
      {"hostname", hostname},
      {"mounts", mounts},
      {"annotations",
       {{"org.flotilla.alloc-id", t.alloc_id},
        {"org.flotilla.job", t.job},
        {"org.flotilla.task", t.task_name},
        {"org.flotilla.image", in.image_name}}},
      {"linux",
       {{"cgroupsPath", in.cgroups_path},
        {"resources", resources},
        {"namespaces", namespaces},
        {"maskedPaths",
         {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
          "/proc/scsi", "/sys/devices/virtual/powercap"}},
        {"readonlyPaths",
         {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}}}},
  };
  for (const json &patch : t.oci_patches) spec.merge_patch(patch);
  return spec;
}

}  // namespace flotilla::runc
