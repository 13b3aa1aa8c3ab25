/*
 * flotilla/runtime.h — "flotilla.runtime/1": run and supervise containers.
 *
 * The core's node reconciler drives each allocation's task through this
 * interface. Task specs cross as JSON (schema: docs/abi-json.md, "task").
 * Containers must outlive the daemon: after a restart, list() finds them
 * again and state() reports exits that happened while the daemon was down.
 *
 * All calls [loop-thread], asynchronous; callbacks run later on the loop
 * thread with borrowed arguments.
 */
#ifndef FLOTILLA_RUNTIME_H
#define FLOTILLA_RUNTIME_H

#include "types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_RUNTIME_INTERFACE_ID "flotilla.runtime/1"

/* state_json: {"id":..., "status":"created|running|stopped", "pid":N,
 * "exit_code":N, "started_at":..., "finished_at":...} */
typedef void (*flotilla_runtime_state_cb)(void *user, flotilla_status status,
                                          const char *state_json);
/* list_json: a JSON array of state objects, one per container this runtime
 * instance owns (including ones started before a daemon restart). */
typedef void (*flotilla_runtime_list_cb)(void *user, flotilla_status status,
                                         const char *list_json);

/* [loop-thread] progress_json (borrowed for the call): {"ref", "phase":
 * "resolving|downloading|unpacking", "bytes_done", "bytes_total",
 * "blobs": [{"digest", "role", "size", "done", "present"}]}. Since 1.2. */
typedef void (*flotilla_runtime_progress_cb)(void *user, const char *progress_json);

/* What exec() runs in a container (since 1.3). */
typedef struct flotilla_exec_spec {
  uint32_t struct_size;
  /* NULL-terminated, argv[0] included; looked up in the container's PATH
   * when it has no '/'. Runs with the container's environment, user,
   * working directory and confinement. Borrowed for the call. */
  const char *const *argv;
  /* The whole run, the runtime's own start-up included: after it the
   * command is killed (SIGKILL) and the result says timed_out. 0: the
   * runtime's default (10 s). */
  uint64_t timeout_ms;
  /* Bytes of output kept (stdout and stderr together, in the order they
   * were written); the rest is read and dropped. 0: 4096. The runtime may
   * cap it lower (runtime-runc: 1 MiB). */
  uint64_t output_limit;
} flotilla_exec_spec;

/* How an exec() ended (since 1.3). Borrowed for the duration of the
 * callback. */
typedef struct flotilla_exec_result {
  uint32_t struct_size;
  int64_t exit_code;      /* the command's exit code; -1 when a signal ended it */
  int32_t term_signal;    /* that signal, else 0 */
  int32_t timed_out;      /* non-zero: killed at timeout_ms */
  const char *output;     /* NUL-terminated, output_len bytes, may hold NULs */
  size_t output_len;
  int32_t output_truncated; /* non-zero: more was written than was kept */
} flotilla_exec_result;

/* [loop-thread] status FLOTILLA_OK means the command ran, whatever its exit
 * code (result says how it ended). Otherwise result is NULL and the message
 * went to set_error: FLOTILLA_E_NOT_FOUND (no such container),
 * FLOTILLA_E_CONFLICT (it is not running), FLOTILLA_E_UNAVAILABLE (the
 * runtime could not be started), FLOTILLA_E_CANCELLED (the runtime plugin
 * is stopping). Since 1.3. */
typedef void (*flotilla_runtime_exec_cb)(void *user, flotilla_status status,
                                         const flotilla_exec_result *result);

typedef struct flotilla_runtime_v1 {
  uint32_t struct_size;

  /* ---- since 1.0 ---------------------------------------------------- */

  /* Prepare a container (bundle, rootfs, log files) without starting it.
   * task_json carries the task, its image's rootfs and the OCI fragments
   * produced by the security and network plugins. */
  flotilla_status (*create)(void *self, const char *container_id, const char *task_json,
                            flotilla_runtime_state_cb cb, void *user);
  flotilla_status (*start)(void *self, const char *container_id, flotilla_runtime_state_cb cb,
                           void *user);
  flotilla_status (*state)(void *self, const char *container_id, flotilla_runtime_state_cb cb,
                           void *user);
  flotilla_status (*signal)(void *self, const char *container_id, int signo,
                            flotilla_done_cb cb, void *user);
  /* SIGTERM, then SIGKILL after timeout_ms. */
  flotilla_status (*stop)(void *self, const char *container_id, uint64_t timeout_ms,
                          flotilla_runtime_state_cb cb, void *user);
  /* Remove everything create made: mounts, cgroups, runtime state, bundle. */
  flotilla_status (*remove)(void *self, const char *container_id, flotilla_done_cb cb,
                            void *user);
  flotilla_status (*list)(void *self, flotilla_runtime_list_cb cb, void *user);
  /* Path of the container's log file for stream "stdout" or "stderr";
   * copied into buf (NUL-terminated). FLOTILLA_E_NOT_FOUND if unknown. */
  flotilla_status (*log_path)(void *self, const char *container_id, const char *stream,
                              char *buf, size_t buf_len);

  /* Images. The runtime owns the content store and the unpacked, read-only
   * layer snapshots its containers' rootfs are made of.
   * image_import: path is an OCI image-layout directory or an oci-archive
   * tarball; tag (may be NULL) names it, e.g. "busybox:latest". The result
   * is the image's JSON record {"name", "digest", "size", "layers", ...}.
   * Work is done off the loop thread; cb runs on it. */
  flotilla_status (*image_import)(void *self, const char *path, const char *tag,
                                  flotilla_runtime_state_cb cb, void *user);
  /* JSON array of image records. */
  flotilla_status (*image_list)(void *self, flotilla_runtime_list_cb cb, void *user);
  /* ref: a name[:tag] or a digest. FLOTILLA_E_CONFLICT while a container
   * uses it. */
  flotilla_status (*image_remove)(void *self, const char *ref, flotilla_done_cb cb, void *user);

  /* ---- since 1.2 ---------------------------------------------------- */

  /* Pull ref ("busybox", "registry.example:5000/team/app:2",
   * "host/app@sha256:...") from its registry into the image store.
   * options_json (may be NULL): {"policy": "always" | "if_not_present"};
   * "always" asks the registry what the tag names now and downloads the
   * blobs the store lacks; a digest reference is never fetched again once
   * present. progress (may be NULL) is called, throttled, while it runs;
   * cb once, with the image record (plus "pulled": true|false) or the
   * error, whose message carries the registry's own. The same reference
   * pulled twice at once is downloaded once. A failed pull leaves nothing
   * in the store. Check FLOTILLA_HAS_FIELD(rt, flotilla_runtime_v1,
   * image_pull) before calling it. */
  flotilla_status (*image_pull)(void *self, const char *ref, const char *options_json,
                                flotilla_runtime_progress_cb progress,
                                flotilla_runtime_state_cb cb, void *user);

  /* ---- since 1.3 ---------------------------------------------------- */

  /* Run a command inside a running container (health checks, `exec`).
   * cb runs exactly once, later on the loop thread — unless exec_cancel
   * was called first; a runtime plugin that stops calls it with
   * FLOTILLA_E_CANCELLED for every exec still running. *exec_out (may be
   * NULL) receives an id for exec_cancel, never 0. A non-OK return means
   * cb will not be called. Check FLOTILLA_HAS_FIELD(rt, flotilla_runtime_v1,
   * exec_cancel) before calling either: a 1.2 runtime's vtable ends before
   * them. */
  flotilla_status (*exec)(void *self, const char *container_id, const flotilla_exec_spec *spec,
                          flotilla_runtime_exec_cb cb, void *user, uint64_t *exec_out);
  /* Kill the command (SIGKILL) if it still runs; its cb is not called any
   * more once this returns. Unknown or finished ids are ignored. */
  void (*exec_cancel)(void *self, uint64_t exec_id);
} flotilla_runtime_v1;

#ifdef __cplusplus
}
#endif
#endif
