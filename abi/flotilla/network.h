/*
 * flotilla/network.h — "flotilla.network/1": give containers addresses and
 * connect them across hosts.
 *
 * attach() is called after the container's network namespace exists and
 * before its process starts. Attachment specs and results cross as JSON
 * (docs/abi-json.md, "network"), in the spirit of CNI.
 *
 * All calls [loop-thread], asynchronous.
 */
#ifndef FLOTILLA_NETWORK_H
#define FLOTILLA_NETWORK_H

#include "types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_NETWORK_INTERFACE_ID "flotilla.network/1"

/* result_json: {"interfaces":[...], "ips":[{"address":"10.42.1.5/24",
 * "gateway":"10.42.1.1"}], "routes":[...], "dns":{...}} */
typedef void (*flotilla_network_attach_cb)(void *user, flotilla_status status,
                                           const char *result_json);

typedef struct flotilla_network_v1 {
  uint32_t struct_size;

  /* ---- since 1.0 ---------------------------------------------------- */

  flotilla_status (*attach)(void *self, const char *alloc_id, const char *netns_path,
                            const char *spec_json, flotilla_network_attach_cb cb, void *user);
  flotilla_status (*detach)(void *self, const char *alloc_id, const char *netns_path,
                            flotilla_done_cb cb, void *user);
  /* Current attachments and mesh peers as JSON, for `flotilla node status`. */
  flotilla_status (*status)(void *self, flotilla_network_attach_cb cb, void *user);
} flotilla_network_v1;

#ifdef __cplusplus
}
#endif
#endif
