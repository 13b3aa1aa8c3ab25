/*
 * flotilla/host.h — what the daemon offers every plugin.
 *
 * The host hands each plugin its own `flotilla_host` table in init(). The
 * table and every string it points to stay valid until deinit() returns.
 *
 * Thread tags on every function:
 *   [loop-thread]  call only from the daemon's event-loop thread (the thread
 *                  that calls init, deinit and every callback unless a
 *                  callback's comment says otherwise).
 *   [any-thread]   safe to call from any thread, including work callbacks.
 *
 * Nothing may block the loop thread: slow work goes to queue_work().
 * Callbacks passed to the host are never invoked before the call that
 * registered them returns.
 */
#ifndef FLOTILLA_HOST_H
#define FLOTILLA_HOST_H

#include "types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef uint64_t flotilla_handle; /* 0 is never a valid handle */

/* fd watch events (bit mask) */
#define FLOTILLA_FD_READABLE 1u
#define FLOTILLA_FD_WRITABLE 2u

typedef void (*flotilla_timer_cb)(void *user);
typedef void (*flotilla_fd_cb)(void *user, int fd, uint32_t events);
/* [worker-thread] runs on the host's thread pool; must not call [loop-thread]
 * functions. */
typedef void (*flotilla_work_cb)(void *user);
/* [loop-thread] runs after the matching work_cb finished; status is
 * FLOTILLA_E_CANCELLED when the daemon stopped before the work ran. */
typedef void (*flotilla_after_work_cb)(void *user, flotilla_status status);
/* exit_status is the exit code, or -1 when the process was killed by
 * term_signal. */
typedef void (*flotilla_exit_cb)(void *user, int64_t pid, int64_t exit_status, int term_signal);
/* topic and json_payload are borrowed for the duration of the call. */
typedef void (*flotilla_event_cb)(void *user, const char *topic, const char *json_payload);

/* What to run in process_spawn(). */
typedef struct flotilla_process_spec {
  uint32_t struct_size;
  const char *file;          /* program; looked up in PATH when it has no '/' */
  const char *const *argv;   /* NULL-terminated, argv[0] included */
  const char *const *envp;   /* NULL-terminated; NULL inherits the daemon's */
  const char *cwd;           /* NULL: the daemon's */
  /* File descriptors for the child's stdin/stdout/stderr; -1 means
   * /dev/null. The host does not close them. */
  int stdin_fd;
  int stdout_fd;
  int stderr_fd;
  /* Non-zero: the child starts its own session and is not killed when the
   * daemon exits (container monitors, which must outlive the daemon). */
  int detached;

  /* ---- since 1.4 ---------------------------------------------------- */

  /* With detached: non-zero keeps the child in the daemon's session and
   * process group (no setsid at spawn); it is otherwise detached as above.
   * The child calls setsid() itself once it has started what should run
   * in the daemon's session; it can, since it leads no process group.
   * Why: with kernel.sched_autogroup_enabled every session is its own CPU
   * autogroup, and a fresh one slowed `runc run` by 10-30%. A 1.3 host
   * ignores the field (the child gets its own session at spawn), so a
   * child that needs its own session checks getsid(0) itself. */
  int keep_session;
} flotilla_process_spec;

typedef struct flotilla_host {
  uint32_t struct_size;
  uint32_t abi_minor;   /* the minor both sides agreed on: min(host, plugin) */
  void *host_ctx;       /* pass back as the first argument of every call */

  /* ---- since 1.0 ---------------------------------------------------- */

  /* Identity and paths; borrowed, valid until deinit. */
  const char *node_name;
  const char *data_dir;   /* this plugin's own directory, created by the host */
  const char *plugin_name; /* the name the operator gave in [plugin.<name>] */

  /* [any-thread] Structured log line, prefixed with the plugin's name. */
  void (*log)(void *host_ctx, flotilla_log_level level, const char *message);

  /* [any-thread] Record the message that explains the status code about to
   * be returned (or passed to a callback). The host copies it and keeps it
   * per thread: call it on the thread that returns the status or runs the
   * callback (the loop thread for callbacks), right before doing so. */
  void (*set_error)(void *host_ctx, const char *message);

  /* [loop-thread] This plugin's config table ([plugin.<name>]) as a JSON
   * object text, without the host-only keys (path, sha256, enabled).
   * Borrowed; valid until deinit. Never NULL ("{}" when empty). */
  const char *(*config_json)(void *host_ctx);

  /* [loop-thread] Report a bad config value: the host prints it with the
   * file, line and full key (`plugin.<name>.<key>`) so the operator can fix
   * it, and records it as the error. key is a dotted path inside the
   * plugin's table. Return FLOTILLA_E_INVALID from init after calling it. */
  void (*config_error)(void *host_ctx, const char *key, const char *message);

  /* [loop-thread] Timers. timeout_ms first, then every repeat_ms (0: once).
   * Returns a handle for timer_stop, or 0 on failure. A one-shot timer's
   * handle is released after its callback ran. */
  flotilla_handle (*timer_start)(void *host_ctx, uint64_t timeout_ms, uint64_t repeat_ms,
                                 flotilla_timer_cb cb, void *user);
  void (*timer_stop)(void *host_ctx, flotilla_handle timer);

  /* [loop-thread] Watch a file descriptor the plugin owns. The host never
   * closes it; call fd_unwatch before closing. */
  flotilla_handle (*fd_watch)(void *host_ctx, int fd, uint32_t events, flotilla_fd_cb cb,
                              void *user);
  void (*fd_unwatch)(void *host_ctx, flotilla_handle watch);

  /* [loop-thread] Start a child process; its exit is reported through cb
   * (not for detached children that outlive the daemon's stop). *pid_out
   * receives the pid. */
  flotilla_status (*process_spawn)(void *host_ctx, const flotilla_process_spec *spec,
                                   flotilla_exit_cb cb, void *user, int64_t *pid_out);

  /* [loop-thread] Run work on the host's thread pool, then after on the
   * loop thread. After deinit returned, no `after` runs any more, but a
   * `work` already running finishes: a plugin waits for its own queued
   * work inside deinit before freeing what that work touches. The host
   * keeps the plugin's code mapped until the loop is done with it. */
  flotilla_status (*queue_work)(void *host_ctx, flotilla_work_cb work,
                                flotilla_after_work_cb after, void *user);

  /* [loop-thread] An interface served by another loaded plugin (or the
   * host), e.g. "flotilla.store/1". *self_out receives the instance pointer
   * to pass as the first argument of the vtable's functions. NULL when none
   * is loaded. A plugin may only rely on interfaces it listed in its entry's
   * `depends_on`, since only those are guaranteed to be initialised first. */
  const void *(*get_interface)(void *host_ctx, const char *interface_id, void **self_out);

  /* [loop-thread] Event bus between plugins. Subscribers whose prefix
   * matches the topic are called later on the loop thread, in order of
   * publication. Topics are dotted, e.g. "alloc.status". */
  void (*event_publish)(void *host_ctx, const char *topic, const char *json_payload);
  flotilla_handle (*event_subscribe)(void *host_ctx, const char *topic_prefix,
                                     flotilla_event_cb cb, void *user);
  void (*event_unsubscribe)(void *host_ctx, flotilla_handle sub);

  /* [any-thread] Metrics, served at GET /v1/metrics in Prometheus text
   * form. name must match [a-z_][a-z0-9_]*; the host prefixes
   * "flotilla_". */
  void (*metric_counter_add)(void *host_ctx, const char *name, double delta);
  void (*metric_gauge_set)(void *host_ctx, const char *name, double value);

  /* New functions are appended below this line, each block marked with the
   * minor version that added it. */
} flotilla_host;

#ifdef __cplusplus
}
#endif
#endif
