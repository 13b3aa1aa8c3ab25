/*
 * flotilla/discovery.h — "flotilla.discovery/1": service registry, health
 * checks, DNS and virtual IPs.
 *
 * The reconciler registers each running allocation's services; the plugin
 * checks their health, publishes healthy endpoints under
 * /flotilla/services/<svc>/<alloc> and answers DNS for
 * <service>.service.flotilla.
 *
 * All calls [loop-thread], asynchronous.
 */
#ifndef FLOTILLA_DISCOVERY_H
#define FLOTILLA_DISCOVERY_H

#include "types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_DISCOVERY_INTERFACE_ID "flotilla.discovery/1"

typedef void (*flotilla_discovery_lookup_cb)(void *user, flotilla_status status,
                                             const char *endpoints_json);

typedef struct flotilla_discovery_v1 {
  uint32_t struct_size;

  /* ---- since 1.0 ---------------------------------------------------- */

  /* services_json: the task's services with checks, plus the allocation's
   * addresses. */
  flotilla_status (*register_alloc)(void *self, const char *alloc_id,
                                    const char *services_json, flotilla_done_cb cb, void *user);
  flotilla_status (*deregister_alloc)(void *self, const char *alloc_id, flotilla_done_cb cb,
                                      void *user);
  /* Healthy endpoints of a service as a JSON array. */
  flotilla_status (*lookup)(void *self, const char *service, flotilla_discovery_lookup_cb cb,
                            void *user);
} flotilla_discovery_v1;

#ifdef __cplusplus
}
#endif
#endif
