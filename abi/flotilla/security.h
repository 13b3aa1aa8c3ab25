/*
 * flotilla/security.h — "flotilla.security/1": confinement profiles and
 * admission.
 *
 * admit() runs when a job is submitted and refuses what the host policy
 * forbids; resolve() turns a task's [task.security] table into the OCI spec
 * fragments (linux.seccomp, process.capabilities, noNewPrivileges,
 * maskedPaths, readonlyPaths, ...) for this host and container.
 *
 * Both are [loop-thread] and synchronous: they must be fast (profiles are
 * compiled when loaded, not here).
 */
#ifndef FLOTILLA_SECURITY_H
#define FLOTILLA_SECURITY_H

#include "types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_SECURITY_INTERFACE_ID "flotilla.security/1"

typedef struct flotilla_security_v1 {
  uint32_t struct_size;

  /* ---- since 1.0 ---------------------------------------------------- */

  /* job_json: the validated job. FLOTILLA_OK admits it; otherwise
   * FLOTILLA_E_PERMISSION with set_error naming the rule. */
  flotilla_status (*admit)(void *self, const char *job_json);

  /* task_json: one task with its security table. On success *oci_out holds
   * a JSON object to merge into the OCI config; the caller releases it. */
  flotilla_status (*resolve)(void *self, const char *task_json, flotilla_buf *oci_out);
} flotilla_security_v1;

#ifdef __cplusplus
}
#endif
#endif
