#include "runtime_config.h"

#include <algorithm>
#include <cctype>
#include <string_view>
#include <vector>

namespace flotilla::runc {

namespace {

using json = nlohmann::json;

constexpr std::string_view kKeys[] = {"binary",        "root",           "shim",
                                      "cgroup_parent", "image_dir",      "log_max_size_mb",
                                      "log_max_files", "cpu_hard_limit", "cpu_mhz_per_core",
                                      "rlimit_nofile", "device_nodes", "registry", "image_unused_after", "image_max_size_mb"};

std::string known_keys() {
  std::string out;
  for (std::string_view k : kKeys) out += (out.empty() ? "" : ", ") + std::string(k);
  return out;
}

// Each reader returns the fallback and records a problem for a bad value,
// so that every bad key is reported in one go.
using Problems = std::vector<ConfigProblem>;

std::string text(const json &t, const char *key, std::string fallback, const char *what,
                 Problems &problems) {
  auto it = t.find(key);
  if (it == t.end()) return fallback;
  if (!it->is_string() || it->get<std::string>().empty()) {
    problems.emplace_back(key, std::string("must be ") + what + ", got " + it->dump());
    return fallback;
  }
  return it->get<std::string>();
}

std::string abs_path(const json &t, const char *key, std::string fallback, Problems &problems) {
  size_t before = problems.size();
  std::string p = text(t, key, fallback, "an absolute path", problems);
  if (problems.size() != before) return fallback;  // text() said why
  if (p.empty() || p.front() != '/') {
    problems.emplace_back(key, "must be an absolute path, got \"" + p + "\"");
    return fallback;
  }
  return p;
}

uint64_t integer(const json &t, const char *key, uint64_t fallback, uint64_t lo, uint64_t hi,
                 Problems &problems) {
  auto it = t.find(key);
  if (it == t.end()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() < int64_t(lo) ||
      it->get<int64_t>() > int64_t(hi)) {
    problems.emplace_back(key, "must be an integer from " + std::to_string(lo) + " to " +
                                   std::to_string(hi) + ", got " + it->dump());
    return fallback;
  }
  return it->get<uint64_t>();
}

bool boolean(const json &t, const char *key, bool fallback, Problems &problems) {
  auto it = t.find(key);
  if (it == t.end()) return fallback;
  if (!it->is_boolean()) {
    problems.emplace_back(key, "must be true or false, got " + it->dump());
    return fallback;
  }
  return it->get<bool>();
}

// A cgroup path below the hierarchy root: "flotilla", "system.slice/flotilla".
bool is_cgroup_parent(std::string_view p) {
  if (p.empty() || p.front() == '/' || p.back() == '/') return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    std::string_view part = p.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    for (char c : part)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
        return false;
    start = end + 1;
  }
  return true;
}

// "24h", "90m", "30s", "1h30m" -> seconds; 0 for "0".
uint64_t duration_s(const json &t, const char *key, uint64_t fallback,
                    std::vector<ConfigProblem> &problems) {
  auto it = t.find(key);
  if (it == t.end()) return fallback;
  std::string v = it->is_string() ? it->get<std::string>() : "";
  uint64_t total = 0;
  size_t i = 0;
  bool ok = !v.empty();
  if (v == "0") return 0;
  while (ok && i < v.size()) {
    size_t start = i;
    while (i < v.size() && std::isdigit(static_cast<unsigned char>(v[i]))) ++i;
    if (i == start || i == v.size()) {
      ok = false;
      break;
    }
    uint64_t n = std::stoull(v.substr(start, i - start));
    char unit = v[i++];
    uint64_t mult = unit == 's' ? 1 : unit == 'm' ? 60 : unit == 'h' ? 3600 : unit == 'd' ? 86400 : 0;
    if (mult == 0) ok = false;
    total += n * mult;
  }
  if (!ok || total > 3650ull * 86400) {
    problems.emplace_back(key, "must be a duration like \"24h\", \"90m\" or \"30s\" (at most "
                               "3650d), or \"0\" to collect every unused image, got " +
                                   it->dump());
    return fallback;
  }
  return total;
}

}  // namespace

RuntimeConfig parse_runtime_config(const json &table, const std::string &data_dir,
                                   std::vector<ConfigProblem> &problems) {
  RuntimeConfig c;
  if (!table.is_object()) {
    problems.emplace_back("", "must be a table");
    return c;
  }
  for (auto it = table.begin(); it != table.end(); ++it) {
    if (std::find(std::begin(kKeys), std::end(kKeys), it.key()) == std::end(kKeys))
      problems.emplace_back(it.key(), "is not a runtime-runc key; known keys: " + known_keys());
  }
  c.binary =
      text(table, "binary", c.binary, "\"runc\", \"crun\" or a path to an OCI runtime", problems);
  if (c.binary.find('/') != std::string::npos && c.binary.front() != '/')
    problems.emplace_back("binary",
                          "must be a program name looked up in PATH (\"runc\", \"crun\") "
                          "or an absolute path, got \"" +
                              c.binary + "\"");
  c.root = abs_path(table, "root", data_dir + "/oci-root", problems);
  if (table.contains("shim")) c.shim = abs_path(table, "shim", "", problems);
  c.image_dir = abs_path(table, "image_dir", data_dir + "/images", problems);
  c.containers_dir = data_dir + "/containers";
  c.alloc_netns_dir = data_dir + "/alloc-netns";
  c.cgroup_parent =
      text(table, "cgroup_parent", c.cgroup_parent, "a cgroup path like \"flotilla\"", problems);
  if (!is_cgroup_parent(c.cgroup_parent))
    problems.emplace_back("cgroup_parent",
                          "must be a relative cgroup path of names made of letters, digits, '-', "
                          "'_' and '.', like \"flotilla\" or \"machine.slice/flotilla\", got \"" +
                              c.cgroup_parent + "\"");
  c.log_max_size_mb = integer(table, "log_max_size_mb", c.log_max_size_mb, 1, 1024, problems);
  c.log_max_files = integer(table, "log_max_files", c.log_max_files, 1, 100, problems);
  c.cpu_hard_limit = boolean(table, "cpu_hard_limit", c.cpu_hard_limit, problems);
  c.cpu_mhz_per_core =
      integer(table, "cpu_mhz_per_core", c.cpu_mhz_per_core, 100, 100000, problems);
  c.rlimit_nofile = integer(table, "rlimit_nofile", c.rlimit_nofile, 64, 1048576, problems);
  c.device_nodes = text(table, "device_nodes", c.device_nodes, "\"skip\" or \"refuse\"", problems);
  if (c.device_nodes != "skip" && c.device_nodes != "refuse") {
    problems.emplace_back("device_nodes",
                          "must be \"skip\" (leave device nodes in image layers "
                          "out, the default) or \"refuse\" (refuse such "
                          "images), got \"" +
                              c.device_nodes + "\"");
    c.device_nodes = "skip";
  }
  c.image_unused_after_s =
      duration_s(table, "image_unused_after", c.image_unused_after_s, problems);
  c.image_max_size_mb =
      integer(table, "image_max_size_mb", c.image_max_size_mb, 0, 1ull << 30, problems);
  if (auto r = table.find("registry"); r != table.end()) {
    std::vector<RegistryConfigProblem> registry_problems;
    c.registry = parse_registry_config(*r, registry_problems);
    for (const RegistryConfigProblem &p : registry_problems)
      problems.emplace_back(p.key.empty() ? "registry" : "registry." + p.key, p.what());
  }
  return c;
}

RuntimeConfig parse_runtime_config(const json &table, const std::string &data_dir) {
  std::vector<ConfigProblem> problems;
  RuntimeConfig c = parse_runtime_config(table, data_dir, problems);
  if (!problems.empty()) throw problems.front();
  return c;
}

}  // namespace flotilla::runc
