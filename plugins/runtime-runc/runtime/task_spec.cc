#include "task_spec.h"

#include <signal.h>

#include <cctype>

namespace flotilla::runc {

namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string &key, const std::string &msg) {
  throw TaskError(key + ": " + msg);
}

const json *field(const json &obj, const char *key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string text(const json &obj, const char *key, const std::string &path, bool required = false) {
  const json *v = field(obj, key);
  if (!v) {
    if (required) bad(path + key, "is required");
    return {};
  }
  if (!v->is_string()) bad(path + key, "must be a string, got " + v->dump());
  return v->get<std::string>();
}

int64_t integer(const json &obj, const char *key, const std::string &path, int64_t fallback,
                int64_t lo, int64_t hi) {
  const json *v = field(obj, key);
  if (!v) return fallback;
  if (!v->is_number_integer() || v->get<int64_t>() < lo || v->get<int64_t>() > hi)
    bad(path + key, "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                        ", got " + v->dump());
  return v->get<int64_t>();
}

std::vector<std::string> strings(const json &obj, const char *key, const std::string &path) {
  const json *v = field(obj, key);
  std::vector<std::string> out;
  if (!v) return out;
  if (!v->is_array()) bad(path + key, "must be an array of strings, got " + v->dump());
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string())
      bad(path + key + "[" + std::to_string(i) + "]", "must be a string, got " + (*v)[i].dump());
    out.push_back((*v)[i].get<std::string>());
  }
  return out;
}

struct SignalName {
  const char *name;
  int number;
};
constexpr SignalName kSignals[] = {
    {"SIGHUP", SIGHUP},   {"SIGINT", SIGINT},     {"SIGQUIT", SIGQUIT},
    {"SIGKILL", SIGKILL}, {"SIGUSR1", SIGUSR1},   {"SIGUSR2", SIGUSR2},
    {"SIGTERM", SIGTERM}, {"SIGWINCH", SIGWINCH}, {"SIGPWR", SIGPWR}};

}  // namespace

int signal_number(const std::string &name) {
  for (const SignalName &s : kSignals)
    if (name == s.name) return s.number;
  return 0;
}

bool is_valid_container_id(const std::string &id) {
  if (id.empty() || id.size() > 128) return false;
  if (!std::isalnum(static_cast<unsigned char>(id.front()))) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return false;
  return true;
}

TaskSpec parse_task_json(const std::string &text_in) {
  json doc;
  try {
    doc = json::parse(text_in);
  } catch (const json::exception &e) {
    throw TaskError(std::string("task JSON does not parse: ") + e.what());
  }
  if (!doc.is_object()) throw TaskError("task JSON must be an object");
  if (int64_t v = integer(doc, "version", "", 1, 1, 1000); v != 1)
    bad("version", std::to_string(v) + " is not supported; this runtime reads task version 1");

  TaskSpec s;
  s.alloc_id = text(doc, "alloc_id", "");
  s.job = text(doc, "job", "");
  s.hostname = text(doc, "hostname", "");
  s.netns = text(doc, "netns", "");
  if (const json *st = field(doc, "start")) {
    if (!st->is_boolean()) bad("start", "must be true or false");
    s.start = st->get<bool>();
  }
  if (const json *rp = field(doc, "replace")) {
    if (!rp->is_boolean()) bad("replace", "must be true or false");
    s.replace = rp->get<bool>();
  }
  if (!s.netns.empty() && s.netns.front() != '/')
    bad("netns", "must be an absolute path of a network namespace, got \"" + s.netns + "\"");
  if (const json *dns = field(doc, "dns")) {
    if (!dns->is_object()) bad("dns", "must be an object {nameservers, search, options}");
    std::string rc;
    for (const auto &ns : strings(*dns, "nameservers", "dns.")) rc += "nameserver " + ns + "\n";
    auto search = strings(*dns, "search", "dns.");
    if (!search.empty()) {
      rc += "search";
      for (const auto &x : search) rc += " " + x;
      rc += "\n";
    }
    auto options = strings(*dns, "options", "dns.");
    if (!options.empty()) {
      rc += "options";
      for (const auto &x : options) rc += " " + x;
      rc += "\n";
    }
    s.resolv_conf = rc.empty() ? "# no nameservers (network plugin gave none)\n" : rc;
  }
  if (const json *hosts = field(doc, "hosts")) {
    if (!hosts->is_array()) bad("hosts", "must be an array of {ip, names}");
    for (size_t i = 0; i < hosts->size(); ++i) {
      const json &h = (*hosts)[i];
      const std::string at = "hosts[" + std::to_string(i) + "].";
      if (!h.is_object()) bad("hosts[" + std::to_string(i) + "]", "must be an object {ip, names}");
      std::string ip = text(h, "ip", at, true);
      if (ip.find_first_of(" \t\n") != std::string::npos) bad(at + "ip", "has white space");
      std::string line = ip;
      for (const auto &n : strings(h, "names", at)) {
        if (n.empty() || n.find_first_of(" \t\n") != std::string::npos)
          bad(at + "names", "\"" + n + "\" is not a host name");
        line += "\t" + n;
      }
      s.hosts += line + "\n";
    }
  }

  const json *task = field(doc, "task");
  if (!task || !task->is_object()) bad("task", "is required: the canonical task object of the job");
  const std::string tp = "task.";
  s.task_name = text(*task, "name", tp);
  s.image = text(*task, "image", tp);
  s.command = text(*task, "command", tp);
  s.args = strings(*task, "args", tp);
  s.workdir = text(*task, "workdir", tp);
  if (!s.workdir.empty() && s.workdir.front() != '/')
    bad(tp + "workdir", "must be an absolute path, got \"" + s.workdir + "\"");
  s.user = text(*task, "user", tp);
  s.kill_timeout_ms = integer(*task, "kill_timeout_ms", tp, s.kill_timeout_ms, 0, 3600 * 1000);
  if (const json *v = field(*task, "kill_signal")) {
    if (!v->is_string() || signal_number(v->get<std::string>()) == 0)
      bad(tp + "kill_signal", "must be a signal name like \"SIGTERM\", got " + v->dump());
    s.kill_signal = v->get<std::string>();
  }
  s.kill_signo = signal_number(s.kill_signal);
  if (const json *v = field(*task, "network")) {
    std::string n = v->is_string() ? v->get<std::string>() : "";
    if (n != "bridge" && n != "host" && n != "none")
      bad(tp + "network", "must be \"bridge\", \"host\" or \"none\", got " + v->dump());
    s.network = n;
  }
  if (const json *env = field(*task, "env")) {
    if (!env->is_object()) bad(tp + "env", "must be an object of strings, got " + env->dump());
    for (auto it = env->begin(); it != env->end(); ++it) {
      if (!it->is_string()) bad(tp + "env." + it.key(), "must be a string, got " + it->dump());
      if (it.key().empty() || it.key().find('=') != std::string::npos)
        bad(tp + "env", "\"" + it.key() + "\" is not a variable name");
      s.env[it.key()] = it->get<std::string>();
    }
  }
  if (const json *r = field(*task, "resources")) {
    if (!r->is_object()) bad(tp + "resources", "must be an object");
    const std::string rp = tp + "resources.";
    s.cpu_mhz = integer(*r, "cpu", rp, s.cpu_mhz, 1, 1000000);
    s.memory_mib = integer(*r, "memory", rp, s.memory_mib, 1, int64_t{16} << 20);
    s.memory_max_mib = integer(*r, "memory_max", rp, s.memory_mib, 1, int64_t{16} << 20);
    if (s.memory_max_mib < s.memory_mib) s.memory_max_mib = s.memory_mib;
    s.pids = integer(*r, "pids", rp, s.pids, 1, 4194304);
  }
  if (const json *l = field(*task, "logs")) {
    if (!l->is_object()) bad(tp + "logs", "must be an object");
    s.log_max_files = integer(*l, "max_files", tp + "logs.", 0, 1, 100);
    s.log_max_file_size_mib = integer(*l, "max_file_size", tp + "logs.", 0, 1, 1024);
  }

  if (const json *oci = field(doc, "oci")) {
    if (oci->is_object()) {
      s.oci_patches.push_back(*oci);
    } else if (oci->is_array()) {
      for (size_t i = 0; i < oci->size(); ++i) {
        if (!(*oci)[i].is_object())
          bad("oci[" + std::to_string(i) + "]",
              "must be an object (a JSON merge patch over "
              "config.json), got " +
                  (*oci)[i].dump());
        s.oci_patches.push_back((*oci)[i]);
      }
    } else {
      bad("oci", "must be an object or an array of objects (JSON merge patches over config.json)");
    }
  }

  if (const json *rootfs = field(doc, "rootfs")) {
    if (!rootfs->is_object()) bad("rootfs", "must be an object {\"lower_dirs\": [...]}");
    s.rootfs_lower_dirs = strings(*rootfs, "lower_dirs", "rootfs.");
    if (s.rootfs_lower_dirs.empty()) bad("rootfs.lower_dirs", "must list at least one directory");
    for (const std::string &d : s.rootfs_lower_dirs)
      if (d.empty() || d.front() != '/' || d.find_first_of(":,") != std::string::npos)
        bad("rootfs.lower_dirs", "\"" + d + "\" must be an absolute path without ':' or ','");
    if (const json *ic = field(*rootfs, "image_config")) {
      if (!ic->is_object()) bad("rootfs.image_config", "must be an object");
      s.rootfs_image_config = *ic;
    }
  }
  if (s.image.empty() && s.rootfs_lower_dirs.empty())
    bad(tp + "image", "is required (or give rootfs.lower_dirs)");
  return s;
}

}  // namespace flotilla::runc
