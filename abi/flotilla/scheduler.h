/*
 * flotilla/scheduler.h — "flotilla.scheduler/1": place allocations on nodes.
 *
 * Placement is hot and numeric, so resources cross as C structs; node
 * attributes and constraints, which are not hot, cross as JSON.
 *
 * place() is [any-thread] and synchronous: the core calls it from its work
 * queue for big clusters. It is never called concurrently on one instance.
 */
#ifndef FLOTILLA_SCHEDULER_H
#define FLOTILLA_SCHEDULER_H

#include "types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_SCHEDULER_INTERFACE_ID "flotilla.scheduler/1"

/* A resource vector. Units: CPU in MHz, memory and disk in MiB. */
typedef struct flotilla_resources {
  uint32_t struct_size;
  int64_t cpu_mhz;
  int64_t memory_mb;
  int64_t disk_mb;
} flotilla_resources;

typedef struct flotilla_sched_node {
  uint32_t struct_size;
  const char *name;
  flotilla_resources capacity;
  flotilla_resources used; /* by allocations already placed */
  int eligible;            /* 0: drained or ineligible */
  const char *attributes_json; /* {"os":"linux", "datacenter":"dc1", ...} */
} flotilla_sched_node;

typedef struct flotilla_sched_ask {
  uint32_t struct_size;
  const char *job;
  const char *group;
  uint32_t index;
  flotilla_resources resources;
  const char *constraints_json; /* the group's constraints/affinities, or NULL */
} flotilla_sched_ask;

typedef struct flotilla_sched_placement {
  uint32_t struct_size;
  int64_t node_index; /* index into nodes, or -1 when the ask did not fit */
} flotilla_sched_placement;

typedef struct flotilla_scheduler_v1 {
  uint32_t struct_size;

  /* ---- since 1.0 ---------------------------------------------------- */

  /* Fill placements[i] for every asks[i]; nodes' `used` is not modified.
   * When any ask did not fit, *explain_out (if not NULL) receives a JSON
   * object explaining why per dimension; the caller releases it. Returns
   * FLOTILLA_OK even when some asks did not fit. */
  flotilla_status (*place)(void *self, const flotilla_sched_node *nodes, size_t n_nodes,
                           const flotilla_sched_ask *asks, size_t n_asks,
                           flotilla_sched_placement *placements, flotilla_buf *explain_out);
} flotilla_scheduler_v1;

#ifdef __cplusplus
}
#endif
#endif
