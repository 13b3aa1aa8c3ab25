// security: flotilla.security/1 over the profiles (profile.cc, builtin.cc,
// profile_files.cc) and the host policy (policy.cc). Includes only the ABI.
// Every profile is loaded, checked and compiled in init, so a profile that
// cannot work stops the daemon at start instead of failing a container.
#include <flotilla/flotilla.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>

#include "policy.h"
#include "profile.h"

namespace {

using json = nlohmann::json;
namespace sec = flotilla::security;

struct Instance {
  const flotilla_host *host;
  sec::HostPolicy policy;
  std::map<std::string, sec::Profile> profiles;
  sec::BrokenProfiles broken;  // configured but refused at load
  sec::HostInfo machine;

  // check_config at start-up is quiet: init, right after it, says the same.
  bool quiet = false;

  void log(flotilla_log_level level, const std::string &m) const {
    if (!quiet) host->log(host->host_ctx, level, m.c_str());
  }
  flotilla_status error(flotilla_status st, const std::string &m) const {
    host->set_error(host->host_ctx, m.c_str());
    return st;
  }
};

void release_buf(flotilla_buf *buf) {
  std::free(const_cast<char *>(buf->data));
  buf->data = nullptr;
  buf->len = 0;
}

std::string task_label(const json &task, size_t index) {
  std::string name = task.is_object() ? task.value("name", "") : "";
  return "task[" + std::to_string(index) + "]" + (name.empty() ? "" : " (" + name + ")");
}

flotilla_status from_refusal(const Instance &inst, const sec::Refusal &r) {
  return inst.error(r.kind == sec::Refusal::permission ? FLOTILLA_E_PERMISSION : FLOTILLA_E_INVALID,
                    r.message);
}

flotilla_status admit(void *self, const char *job_json) {
  auto *inst = static_cast<Instance *>(self);
  try {
    json job = json::parse(job_json ? job_json : "");
    if (!job.is_object() || !job.contains("task") || !job["task"].is_array())
      return inst->error(FLOTILLA_E_INVALID, "admit: the job has no task array");
    for (size_t i = 0; i < job["task"].size(); ++i) {
      const json &task = job["task"][i];
      const std::string label = task_label(task, i);
      sec::TaskSecurity t;
      try {
        t = sec::TaskSecurity::from_task(task);
      } catch (const sec::ProfileError &e) {
        return inst->error(FLOTILLA_E_INVALID, label + ": " + e.what());
      }
      if (auto r = sec::check_task(inst->policy, inst->profiles, t, label, inst->broken))
        return from_refusal(*inst, r);
      const sec::Profile *p = sec::profile_for(inst->policy, inst->profiles, t);
      if (p && p->unconfined)
        inst->log(FLOTILLA_LOG_WARN, "job \"" + job.value("name", "") + "\" " + label +
                                         " admitted unconfined (asked explicitly; "
                                         "plugin.security.allow_unconfined = true)");
    }
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    return inst->error(FLOTILLA_E_INVALID, std::string("admit: ") + e.what());
  }
}

flotilla_status resolve(void *self, const char *task_json, flotilla_buf *oci_out) {
  auto *inst = static_cast<Instance *>(self);
  try {
    if (!oci_out) return inst->error(FLOTILLA_E_INVALID, "resolve: oci_out is required");
    oci_out->struct_size = sizeof(flotilla_buf);
    oci_out->data = nullptr;
    oci_out->len = 0;
    oci_out->release = nullptr;
    json doc = json::parse(task_json ? task_json : "");
    // The runtime's task document ({"version":1, ..., "task": {...}}) or a bare task.
    const json &task =
        doc.is_object() && doc.contains("task") && doc["task"].is_object() ? doc["task"] : doc;
    const std::string label = "task " + (task.is_object() ? task.value("name", "") : "");
    sec::TaskSecurity t;
    try {
      t = sec::TaskSecurity::from_task(task);
    } catch (const sec::ProfileError &e) {
      return inst->error(FLOTILLA_E_INVALID, label + ": " + e.what());
    }
    if (auto r = sec::check_task(inst->policy, inst->profiles, t, label, inst->broken))
      return from_refusal(*inst, r);
    const sec::Profile *p = sec::profile_for(inst->policy, inst->profiles, t);
    json patch = sec::resolve_oci(*p, t, inst->machine);
    if (p->unconfined)
      inst->log(FLOTILLA_LOG_WARN, label + " of alloc " +
                                       (doc.is_object() ? doc.value("alloc_id", "") : "") +
                                       " runs unconfined: no seccomp filter (asked explicitly; "
                                       "plugin.security.allow_unconfined = true)");
    std::string text = patch.dump();
    char *copy = static_cast<char *>(std::malloc(text.size() + 1));
    if (!copy) return FLOTILLA_E_NOMEM;
    std::memcpy(copy, text.c_str(), text.size() + 1);
    oci_out->data = copy;
    oci_out->len = text.size();
    oci_out->release = release_buf;
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  } catch (const sec::ProfileError &e) {
    return inst->error(FLOTILLA_E_INVALID, e.what());
  } catch (const std::exception &e) {
    return inst->error(FLOTILLA_E_INVALID, std::string("resolve: ") + e.what());
  }
}

const flotilla_security_v1 vtable = {sizeof(flotilla_security_v1), admit, resolve};

// Every line of a profile's error: one config problem each.
void report_profile(const flotilla_host *host, const std::string &key, const std::string &what) {
  size_t start = 0;
  while (start < what.size()) {
    size_t end = what.find('\n', start);
    if (end == std::string::npos) end = what.size();
    host->config_error(host->host_ctx, key.c_str(), what.substr(start, end - start).c_str());
    start = end + 1;
  }
}

// The policy and every profile into inst, as init and check_config both
// need them. Every problem that stops the start goes to config_error; a
// broken profile other than the default is logged and recorded in
// inst.broken (tolerated: jobs naming it are refused), unless
// report_broken, when it is a config problem too. False if any problem
// went to config_error.
bool load_config(const flotilla_host *host, Instance &inst, bool report_broken) {
  json cfg = json::parse(host->config_json(host->host_ctx));
  bool ok = true;
  sec::ConfigProblems problems;
  if (!sec::parse_policy(cfg, inst.policy, problems)) {
    for (const auto &[key, message] : problems)
      host->config_error(host->host_ctx, key.c_str(), message.c_str());
    ok = false;
  }
  for (const char *name : {"default", "restricted", "unconfined"}) {
    sec::Profile p = sec::builtin_profile(name);
    double us = sec::compile_profile(p, inst.machine);
    inst.log(FLOTILLA_LOG_DEBUG, std::string("built-in profile ") + name + " compiled in " +
                                     std::to_string(static_cast<int>(us)) + " us");
    inst.profiles.emplace(name, std::move(p));
  }
  if (cfg.contains("profiles")) {
    const json &files = cfg["profiles"];
    if (!files.is_object()) {
      host->config_error(host->host_ctx, "profiles",
                         "must be a table of name = \"/path/to/profile.json|.toml\"");
      return false;
    }
    for (auto it = files.begin(); it != files.end(); ++it) {
      const std::string at = "profiles." + it.key();
      if (sec::is_builtin(it.key())) {
        host->config_error(host->host_ctx, at.c_str(),
                           "is the name of a built-in profile; choose another name");
        ok = false;
        continue;
      }
      if (!it.value().is_string()) {
        host->config_error(host->host_ctx, at.c_str(), "must be the path of a profile file");
        ok = false;
        continue;
      }
      try {
        sec::Profile p = sec::load_profile_file(it.value().get<std::string>(), it.key());
        inst.log(FLOTILLA_LOG_INFO, "profile " + it.key() + " loaded from " + p.source);
        if (!p.skipped.empty())
          inst.log(FLOTILLA_LOG_WARN, "plugin.security." + at + ": " + p.skipped);
        inst.profiles.emplace(it.key(), std::move(p));
      } catch (const sec::ProfileError &e) {
        if (report_broken) {
          report_profile(host, at, e.what());
          ok = false;
        } else {
          // Refused, not fatal: the daemon keeps running with the profiles
          // that work, and a task naming this one is refused with why.
          inst.log(FLOTILLA_LOG_ERROR, "plugin.security." + at + ": " + e.what() +
                                           "\nthe profile is not loaded and jobs naming it "
                                           "are refused");
        }
        inst.broken.emplace(it.key(), e.what());
      }
    }
  }
  // The default itself must load and pass the floor: without it no task
  // could run confined.
  sec::TaskSecurity none;
  none.task_user = "1";  // the user is judged per task, not here
  if (auto r = sec::check_task(inst.policy, inst.profiles, none, "default_profile", inst.broken)) {
    host->config_error(host->host_ctx, "default_profile", r.message.c_str());
    ok = false;
  }
  return ok;
}

flotilla_status check_config(const flotilla_host *host, uint32_t flags) {
  try {
    Instance inst;
    inst.host = host;
    inst.quiet = !(flags & FLOTILLA_CHECK_ALL);
    inst.machine = sec::HostInfo::current();
    if (inst.machine.scmp_arch.empty()) {
      host->config_error(host->host_ctx, "",
                         "libseccomp does not know this machine's architecture");
      return FLOTILLA_E_UNSUPPORTED;
    }
    return load_config(host, inst, flags & FLOTILLA_CHECK_ALL) ? FLOTILLA_OK : FLOTILLA_E_INVALID;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    host->set_error(host->host_ctx, (std::string("security: ") + e.what()).c_str());
    return FLOTILLA_E_INVALID;
  }
}

flotilla_status init(const flotilla_host *host, void **instance_out) {
  try {
    auto inst = std::make_unique<Instance>();
    inst->host = host;
    inst->machine = sec::HostInfo::current();
    if (inst->machine.scmp_arch.empty()) {
      host->set_error(host->host_ctx,
                      "security: libseccomp does not know this machine's architecture");
      return FLOTILLA_E_UNSUPPORTED;
    }
    if (!load_config(host, *inst, false)) return FLOTILLA_E_INVALID;
    *instance_out = inst.release();
    return FLOTILLA_OK;
  } catch (const std::bad_alloc &) {
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    host->set_error(host->host_ctx, (std::string("security: ") + e.what()).c_str());
    return FLOTILLA_E_INVALID;
  }
}

void deinit(void *instance) {
  delete static_cast<Instance *>(instance);
}

const void *get_interface(void *, const char *id) {
  return std::strcmp(id, FLOTILLA_SECURITY_INTERFACE_ID) == 0 ? &vtable : nullptr;
}

const char *const provides[] = {FLOTILLA_SECURITY_INTERFACE_ID, nullptr};
const char *const depends_on[] = {nullptr};

}  // namespace

extern "C" FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.security",
    "0.1.0",
    "seccomp (libseccomp) and capability (libcap) profiles, and the host's admission policy",
    provides,
    depends_on,
    init,
    deinit,
    get_interface,
    check_config,
};
