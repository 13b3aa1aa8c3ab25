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
} flotilla_entry;

#ifdef __cplusplus
}
#endif
#endif
