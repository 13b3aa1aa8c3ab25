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

  /* ---- since 1.1 ---------------------------------------------------- */

  /* What the node has and what is taken beyond CPU, memory and disk, or
   * NULL: {"ports_used":[8080], "devices":{"gpu":2}, "devices_used":{"gpu":1},
   * "job_allocs":{"web":2}} — job_allocs counts the live allocations of each
   * asked job on this node (anti-affinity, distinct_hosts, spread). Borrowed
   * for the call. */
  const char *usage_json;
} flotilla_sched_node;

typedef struct flotilla_sched_ask {
  uint32_t struct_size;
  const char *job;
  const char *group;
  uint32_t index;
  flotilla_resources resources;
  /* The group's placement rules, or NULL (since 1.1 the schema is
   * docs/abi-json.md, "placement rules": datacenters, pool, constraints, affinities,
   * spreads, distinct_hosts, ports, devices, total). */
  const char *constraints_json;
} flotilla_sched_ask;

typedef struct flotilla_sched_placement {
  uint32_t struct_size;
  int64_t node_index; /* index into nodes, or -1 when the ask did not fit */
} flotilla_sched_placement;

typedef struct flotilla_scheduler_v1 {
  uint32_t struct_size;

  /* ---- since 1.0 ---------------------------------------------------- */

  /* Fill placements[i] for every asks[i]; nodes' `used` is not modified.
   * Arrays are walked with the caller's struct_size as the stride (read from
   * the first element), so a 1.0 caller's smaller structs still work.
   * Consecutive asks with the same job, group and constraints_json are one
   * group: they see each other (anti-affinity, spread, distinct_hosts).
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
