/*
 * flotilla/entry.h — the one symbol a plugin exports.
 *
 * A plugin is a shared object that exports a data symbol named
 * `flotilla_plugin_entry` of type `const flotilla_entry` (the symbol and
 * the type differ in name because C forbids a typedef and a variable of the
 * same name):
 *
 *   FLOTILLA_PLUGIN_EXPORT const flotilla_entry flotilla_plugin_entry = {
 *     .struct_size = sizeof(flotilla_entry),
 *     .abi_major = FLOTILLA_ABI_VERSION_MAJOR,
 *     .abi_minor = FLOTILLA_ABI_VERSION_MINOR,
 *     .id = "org.example.hello",
 *     ...
 *   };
 *
 * Load order: the host starts plugins so that every interface a plugin
 * `depends_on` is served by a plugin initialised before it; it refuses a cycle
 * and a requirement nobody serves. deinit runs in reverse order.
 */
#ifndef FLOTILLA_ENTRY_H
#define FLOTILLA_ENTRY_H

#include "host.h"
#include "types.h"
#include "version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FLOTILLA_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define FLOTILLA_PLUGIN_EXPORT
#endif

#define FLOTILLA_PLUGIN_ENTRY_SYMBOL "flotilla_plugin_entry"

typedef struct flotilla_plugin_entry {
  uint32_t struct_size;
  uint32_t abi_major;       /* FLOTILLA_ABI_VERSION_MAJOR at build time */
  uint32_t abi_minor;       /* FLOTILLA_ABI_VERSION_MINOR at build time */
  const char *id;           /* reverse-DNS, unique: "org.flotilla.store-local" */
  const char *version;      /* the plugin's own version, e.g. "0.1.0" */
  const char *description;  /* one line for `flotilla plugin ls` */
  /* NULL-terminated lists of interface ids, e.g. "flotilla.store/1". */
  const char *const *provides;
  const char *const *depends_on; /* "requires" is a C++20 keyword */

  /* [loop-thread] Create the plugin instance. host is valid until deinit.
   * On failure, call host->set_error (or config_error) and return non-OK;
   * deinit is then not called. */
  flotilla_status (*init)(const flotilla_host *host, void **instance_out);

  /* [loop-thread] Destroy the instance: cancel timers, watches and
   * subscriptions; complete or cancel every pending request. */
  void (*deinit)(void *instance);

  /* [loop-thread] The vtable for interface id (one the plugin listed in
   * provides), or NULL. The returned pointer is static or lives as long as
   * the instance; its functions take `instance` as their first argument. */
  const void *(*get_interface)(void *instance, const char *interface_id);

  /* ---- since 1.2 ---------------------------------------------------- */

  /* [loop-thread] Check this plugin's config table without creating an
   * instance: every key and value init() would read and every file it would
   * load (a security profile, a certificate), so that an operator learns of
   * every problem before anything starts. Report EACH problem with
   * host->config_error (do not stop at the first one) and return
   * FLOTILLA_E_INVALID if there was any, FLOTILLA_OK otherwise.
   *
   * The host calls it for every plugin before it initialises any, both at
   * start-up (flags 0: report what would make init fail) and for
   * `flotillad --check-config` (FLOTILLA_CHECK_ALL: report as well what
   * init would only log and tolerate, such as a broken optional profile).
   * The host refuses to start, listing every plugin's problems together.
   *
   * host is a table like init's, valid only during the call. Only its
   * identity fields (node_name, plugin_name, data_dir — the directory init
   * would get, which may not exist yet), log, set_error, config_json and
   * config_error may be used; timers, fd watches, processes, work, other
   * interfaces and the event bus are unavailable (they fail or do nothing).
   * Must not write anything. May be NULL: the host then checks the
   * plugin's config only when init runs. Read it only when
   * FLOTILLA_HAS_FIELD(entry, flotilla_entry, check_config). */
  flotilla_status (*check_config)(const flotilla_host *host, uint32_t flags);
} flotilla_entry;

/* check_config flags (since 1.2) */
#define FLOTILLA_CHECK_ALL 1u

#ifdef __cplusplus
}
#endif
#endif
