/*
 * flotilla/version.h — ABI version of the Flotilla plugin interface.
 *
 * Rules (see DESIGN.md, "The C ABI"):
 *  - A plugin built against another MAJOR is refused at load time.
 *  - A newer MINOR only appends: struct fields and vtable slots are never
 *    reordered or removed. Every struct that crosses the boundary begins with
 *    `uint32_t struct_size`, so each side can tell which fields the other
 *    knows. The host and a plugin agree on min(host minor, plugin minor).
 *
 * Changelog of interface versions (newest last):
 *   1.0  first stable ABI: entry, host table, store/1, runtime/1,
 *        network/1, security/1, discovery/1, scheduler/1.
 *   1.1  scheduler/1: flotilla_sched_node.usage_json (ports, devices and
 *        per-job allocation counts); constraints_json gets a documented
 *        schema (docs/abi-json.md, "placement rules"). Arrays passed to place() are
 *        strided by the caller's struct_size.
 *   1.2  entry: check_config (every config problem reported before any
 *        plugin starts, and by flotillad --check-config);
 *        runtime/1: image_pull (pull from an OCI registry, with progress;
 *        flotilla_runtime_progress_cb). Check FLOTILLA_HAS_FIELD before
 *        calling it: a 1.1 runtime's vtable ends before it.
 *   1.3  runtime/1: exec and exec_cancel (a command inside a running
 *        container, with a timeout and bounded output; flotilla_exec_spec,
 *        flotilla_exec_result, flotilla_runtime_exec_cb), for discovery's
 *        exec health checks. Check FLOTILLA_HAS_FIELD(rt,
 *        flotilla_runtime_v1, exec_cancel): a 1.2 runtime lacks both.
 *   1.4  host: flotilla_process_spec.keep_session (a detached child stays
 *        in the daemon's session and calls setsid() itself, so that what
 *        it starts first shares the daemon's CPU autogroup). A 1.3 host
 *        ignores it: the child then has its own session from the start.
 */
#ifndef FLOTILLA_VERSION_H
#define FLOTILLA_VERSION_H

#include <stddef.h>

#define FLOTILLA_ABI_VERSION_MAJOR 1
#define FLOTILLA_ABI_VERSION_MINOR 4

/* True when a struct received across the ABI, whose size the sender wrote in
 * struct_size, is large enough to contain FIELD. Read a field appended in a
 * later minor only after this check. */
#define FLOTILLA_HAS_FIELD(ptr, type, field)                                   \
  ((ptr)->struct_size >= (unsigned)(offsetof(type, field) + sizeof(((type *)0)->field)))

#endif
