// The one exported symbol of flotilla-runtime-runc.so and the C vtable of
// "flotilla.runtime/1". Every function catches everything: exceptions never
// cross the C ABI.
#include <flotilla/entry.h>
#include <flotilla/runtime.h>

#include <cstring>
#include <memory>
#include <new>

#include "runc_runtime.h"

namespace {

using flotilla::runc::RuncRuntime;

RuncRuntime *self(void *p) {
  return static_cast<RuncRuntime *>(p);
}

// The host table of the instance, for messages from the catch blocks.
thread_local const flotilla_host *t_host = nullptr;

template <class F>
flotilla_status guarded(const char *what, F &&f) {
  try {
    return f();
  } catch (const std::bad_alloc &) {
    if (t_host) t_host->set_error(t_host->host_ctx, "runtime-runc: out of memory");
    return FLOTILLA_E_NOMEM;
  } catch (const std::exception &e) {
    if (t_host)
      t_host->set_error(
          t_host->host_ctx,
          (std::string("runtime-runc ") + what + ": internal error: " + e.what()).c_str());
    return FLOTILLA_E_INTERNAL;
  } catch (...) {
    if (t_host) t_host->set_error(t_host->host_ctx, "runtime-runc: unknown internal error");
    return FLOTILLA_E_INTERNAL;
  }
}

flotilla_status rt_create(void *s, const char *id, const char *task, flotilla_runtime_state_cb cb,
                          void *user) {
  return guarded("create", [&] { return self(s)->create(id, task, cb, user); });
}
flotilla_status rt_start(void *s, const char *id, flotilla_runtime_state_cb cb, void *user) {
  return guarded("start", [&] { return self(s)->start(id, cb, user); });
}
flotilla_status rt_state(void *s, const char *id, flotilla_runtime_state_cb cb, void *user) {
  return guarded("state", [&] { return self(s)->state(id, cb, user); });
}
flotilla_status rt_signal(void *s, const char *id, int signo, flotilla_done_cb cb, void *user) {
  return guarded("signal", [&] { return self(s)->signal(id, signo, cb, user); });
}
flotilla_status rt_stop(void *s, const char *id, uint64_t timeout_ms, flotilla_runtime_state_cb cb,
                        void *user) {
  return guarded("stop", [&] { return self(s)->stop(id, timeout_ms, cb, user); });
}
flotilla_status rt_remove(void *s, const char *id, flotilla_done_cb cb, void *user) {
  return guarded("remove", [&] { return self(s)->remove(id, cb, user); });
}
flotilla_status rt_list(void *s, flotilla_runtime_list_cb cb, void *user) {
  return guarded("list", [&] { return self(s)->list(cb, user); });
}
flotilla_status rt_log_path(void *s, const char *id, const char *stream, char *buf, size_t len) {
  return guarded("log_path", [&] { return self(s)->log_path(id, stream, buf, len); });
}
flotilla_status rt_image_import(void *s, const char *path, const char *tag,
                                flotilla_runtime_state_cb cb, void *user) {
  return guarded("image_import", [&] { return self(s)->image_import(path, tag, cb, user); });
}
flotilla_status rt_image_list(void *s, flotilla_runtime_list_cb cb, void *user) {
  return guarded("image_list", [&] { return self(s)->image_list(cb, user); });
}
flotilla_status rt_image_remove(void *s, const char *ref, flotilla_done_cb cb, void *user) {
  return guarded("image_remove", [&] { return self(s)->image_remove(ref, cb, user); });
}

flotilla_status rt_image_pull(void *s, const char *ref, const char *options,
                              flotilla_runtime_progress_cb progress, flotilla_runtime_state_cb cb,
                              void *user) {
  return guarded("image_pull",
                 [&] { return self(s)->image_pull(ref, options, progress, cb, user); });
}

flotilla_status rt_exec(void *s, const char *id, const flotilla_exec_spec *spec,
                        flotilla_runtime_exec_cb cb, void *user, uint64_t *exec_out) {
  return guarded("exec", [&] { return self(s)->exec(id, spec, cb, user, exec_out); });
}
void rt_exec_cancel(void *s, uint64_t exec_id) {
  guarded("exec_cancel", [&] {
    self(s)->exec_cancel(exec_id);
    return FLOTILLA_OK;
  });
}

const flotilla_runtime_v1 kRuntimeV1 = {
    sizeof(flotilla_runtime_v1),
    rt_create,
    rt_start,
    rt_state,
    rt_signal,
    rt_stop,
    rt_remove,
    rt_list,
    rt_log_path,
    rt_image_import,
    rt_image_list,
    rt_image_remove,
    rt_image_pull,
    rt_exec,
    rt_exec_cancel,
};

flotilla_status plugin_init(const flotilla_host *host, void **instance_out) {
  if (!host || host->struct_size < sizeof(flotilla_host)) {
    if (host)
      host->set_error(host->host_ctx, "runtime-runc needs a host table of ABI 1.0 or newer");
    return FLOTILLA_E_UNSUPPORTED;
  }
  t_host = host;
  return guarded("init", [&] {
    std::unique_ptr<RuncRuntime> rt;
    flotilla_status st = RuncRuntime::open(host, rt);
    if (st == FLOTILLA_OK) *instance_out = rt.release();
    return st;
  });
}

flotilla_status plugin_check_config(const flotilla_host *host, uint32_t) {
  return guarded("check_config", [&] {
    flotilla::runc::RuntimeConfig config;
    return RuncRuntime::read_config(host, config) ? FLOTILLA_OK : FLOTILLA_E_INVALID;
  });
}

void plugin_deinit(void *instance) {
  try {
    delete self(instance);
  } catch (...) {
  }
}

const void *plugin_get_interface(void *, const char *id) {
  if (id && std::strcmp(id, FLOTILLA_RUNTIME_INTERFACE_ID) == 0) return &kRuntimeV1;
  return nullptr;
}

const char *const kProvides[] = {FLOTILLA_RUNTIME_INTERFACE_ID, nullptr};
const char *const kDependsOn[] = {nullptr};

}  // namespace

extern "C" FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
    sizeof(flotilla_entry),
    FLOTILLA_ABI_VERSION_MAJOR,
    FLOTILLA_ABI_VERSION_MINOR,
    "org.flotilla.runtime-runc",
    "0.1.0",
    "runs containers with runc, crun or any OCI runtime CLI; OCI image store",
    kProvides,
    kDependsOn,
    plugin_init,
    plugin_deinit,
    plugin_get_interface,
    plugin_check_config,
};
