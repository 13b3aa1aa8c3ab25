/*
 * flotilla/store.h — "flotilla.store/1": the cluster state store.
 *
 * The etcd v3 model: one revisioned key-value map. Every change bumps a
 * single cluster-wide revision; each key records the revision that created
 * it, the revision that last changed it, and how many times it changed.
 * Keys and values are byte strings (values are JSON by convention).
 *
 * All calls are [loop-thread] and asynchronous: the callback runs later on
 * the loop thread, never inside the call. Everything a callback receives is
 * borrowed for the duration of the callback. On failure the status says what
 * kind and host->set_error has the message.
 *
 * A write is acknowledged (its callback gets FLOTILLA_OK) only once it is
 * durable: a crash after that loses nothing.
 *
 * Errors: a function that returns non-OK has refused the request (bad
 * arguments) and never calls its callback. Errors found while serving a
 * request (unknown lease, compacted revision, I/O) come through the
 * callback. Reading or compacting a revision newer than the store's is
 * FLOTILLA_E_INVALID; reading at exactly the compacted revision is allowed,
 * as in etcd. A transaction that writes one key twice, and a lease TTL of 0
 * or less, are FLOTILLA_E_INVALID.
 *
 * Shutdown: deinit ends every open watch with FLOTILLA_E_CANCELLED.
 */
#ifndef FLOTILLA_STORE_H
#define FLOTILLA_STORE_H

#include "types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_STORE_INTERFACE_ID "flotilla.store/1"

typedef uint64_t flotilla_store_watch_id;
typedef int64_t flotilla_lease_id; /* 0: no lease */

typedef struct flotilla_kv {
  uint32_t struct_size;
  const char *key;
  size_t key_len;
  const char *value;
  size_t value_len;
  int64_t create_revision;
  int64_t mod_revision;
  int64_t version;   /* number of changes since creation, 1 for a new key */
  flotilla_lease_id lease;
} flotilla_kv;

/* A key range, as etcd: [key, range_end). range_end NULL (or len 0) means
 * exactly `key`; to read everything under a prefix use prefix = 1. */
typedef struct flotilla_key_range {
  uint32_t struct_size;
  const char *key;
  size_t key_len;
  const char *range_end;
  size_t range_end_len;
  int prefix; /* non-zero: every key that starts with `key` */
} flotilla_key_range;

typedef enum flotilla_compare_target {
  FLOTILLA_CMP_VERSION = 0,  /* number: 0 means "the key does not exist" */
  FLOTILLA_CMP_CREATE = 1,   /* create_revision */
  FLOTILLA_CMP_MOD = 2,      /* mod_revision */
  FLOTILLA_CMP_VALUE = 3,    /* bytes */
  FLOTILLA_CMP_LEASE = 4
} flotilla_compare_target;

typedef enum flotilla_compare_op {
  FLOTILLA_CMP_EQUAL = 0,
  FLOTILLA_CMP_NOT_EQUAL = 1,
  FLOTILLA_CMP_LESS = 2,
  FLOTILLA_CMP_GREATER = 3
} flotilla_compare_op;

/* One comparison of a transaction, on a single key. A key that does not
 * exist has version, create and mod revision 0 and an empty value (a VALUE
 * compare sees ""; a backend whose native store fails such compares, like
 * etcd, emulates this). */
typedef struct flotilla_compare {
  uint32_t struct_size;
  const char *key;
  size_t key_len;
  flotilla_compare_target target;
  flotilla_compare_op op;
  int64_t number;    /* for VERSION, CREATE, MOD, LEASE */
  const char *value; /* for VALUE */
  size_t value_len;
} flotilla_compare;

typedef enum flotilla_op_type {
  FLOTILLA_OP_PUT = 0,
  FLOTILLA_OP_DELETE = 1 /* key range: key + prefix flag */
} flotilla_op_type;

typedef struct flotilla_op {
  uint32_t struct_size;
  flotilla_op_type type;
  const char *key;
  size_t key_len;
  const char *value; /* PUT */
  size_t value_len;
  flotilla_lease_id lease; /* PUT: attach to this lease, 0 for none */
  int prefix;              /* DELETE: every key starting with key */
} flotilla_op;

typedef enum flotilla_event_type {
  FLOTILLA_EVENT_PUT = 0,
  FLOTILLA_EVENT_DELETE = 1 /* kv.value is empty; kv.mod_revision is the
                               revision of the deletion; create_revision
                               and version are 0 */
} flotilla_event_type;

typedef struct flotilla_watch_event {
  uint32_t struct_size;
  flotilla_event_type type;
  flotilla_kv kv;
} flotilla_watch_event;

/* range: kvs sorted by key; revision is the store revision the read saw;
 * more is non-zero when limit cut the result short. */
typedef void (*flotilla_store_range_cb)(void *user, flotilla_status status,
                                        const flotilla_kv *kvs, size_t n_kvs, int64_t revision,
                                        int more);
/* put, delete and txn: revision is the store revision after the request
 * (unchanged for a read-only or failed transaction). deleted counts the keys
 * a delete removed. succeeded: whether the transaction's compares held. */
typedef void (*flotilla_store_write_cb)(void *user, flotilla_status status, int64_t revision);
typedef void (*flotilla_store_delete_cb)(void *user, flotilla_status status, int64_t revision,
                                         int64_t deleted);
typedef void (*flotilla_store_txn_cb)(void *user, flotilla_status status, int succeeded,
                                      int64_t revision);
/* Watch delivery: events in revision order, grouped by revision. status is
 * non-OK exactly once, when the watch ends for a reason other than
 * watch_cancel (FLOTILLA_E_COMPACTED when start_revision was compacted,
 * FLOTILLA_E_UNAVAILABLE when the backend was lost, FLOTILLA_E_CANCELLED at
 * shutdown); no call follows it. */
typedef void (*flotilla_store_watch_cb)(void *user, flotilla_status status,
                                        const flotilla_watch_event *events, size_t n_events,
                                        int64_t revision);
typedef void (*flotilla_lease_cb)(void *user, flotilla_status status, flotilla_lease_id lease,
                                  int64_t ttl_seconds);

typedef struct flotilla_store_v1 {
  uint32_t struct_size;

  /* ---- since 1.0 ---------------------------------------------------- */

  /* Read a key or range. revision 0 reads the latest; a positive revision
   * reads the map as it was then (FLOTILLA_E_COMPACTED if compacted away).
   * limit 0 means no limit. */
  flotilla_status (*range)(void *self, const flotilla_key_range *range, int64_t revision,
                           int64_t limit, flotilla_store_range_cb cb, void *user);

  flotilla_status (*put)(void *self, const char *key, size_t key_len, const char *value,
                         size_t value_len, flotilla_lease_id lease, flotilla_store_write_cb cb,
                         void *user);

  flotilla_status (*delete_range)(void *self, const flotilla_key_range *range,
                                  flotilla_store_delete_cb cb, void *user);

  /* If every compare holds, apply success ops, else failure ops; all in one
   * revision, atomically. A transaction whose applied ops write nothing does
   * not create a revision. */
  flotilla_status (*txn)(void *self, const flotilla_compare *compares, size_t n_compares,
                         const flotilla_op *success, size_t n_success,
                         const flotilla_op *failure, size_t n_failure, flotilla_store_txn_cb cb,
                         void *user);

  /* Deliver every change to the range with revision >= start_revision
   * (0: from the next change). *id_out receives the id for watch_cancel. */
  flotilla_status (*watch)(void *self, const flotilla_key_range *range, int64_t start_revision,
                           flotilla_store_watch_cb cb, void *user,
                           flotilla_store_watch_id *id_out);
  /* No callback for this watch runs after watch_cancel returns. */
  void (*watch_cancel)(void *self, flotilla_store_watch_id id);

  /* Leases: keys put under a lease are deleted when it expires or is
   * revoked. A lease lives ttl_seconds after its grant or last keepalive. */
  flotilla_status (*lease_grant)(void *self, int64_t ttl_seconds, flotilla_lease_cb cb,
                                 void *user);
  flotilla_status (*lease_keepalive)(void *self, flotilla_lease_id lease, flotilla_lease_cb cb,
                                     void *user);
  flotilla_status (*lease_revoke)(void *self, flotilla_lease_id lease, flotilla_done_cb cb,
                                  void *user);

  /* Forget history older than revision; reads and watches before it then
   * fail with FLOTILLA_E_COMPACTED. */
  flotilla_status (*compact)(void *self, int64_t revision, flotilla_done_cb cb, void *user);
} flotilla_store_v1;

#ifdef __cplusplus
}
#endif
#endif
