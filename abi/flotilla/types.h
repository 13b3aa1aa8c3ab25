/*
 * flotilla/types.h — status codes, log levels and owned buffers shared by
 * every other header.
 */
#ifndef FLOTILLA_TYPES_H
#define FLOTILLA_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every ABI function that can fail returns one of these. The human-readable
 * message travels separately, through flotilla_host.set_error, so that the
 * API and CLI can show it. Values are stable; new codes are only appended. */
typedef enum flotilla_status {
  FLOTILLA_OK = 0,
  FLOTILLA_E_INVALID = 1,     /* bad argument or input; nothing was changed */
  FLOTILLA_E_NOT_FOUND = 2,   /* the named thing does not exist */
  FLOTILLA_E_EXISTS = 3,      /* the named thing already exists */
  FLOTILLA_E_CONFLICT = 4,    /* a compare failed or a concurrent change won */
  FLOTILLA_E_UNAVAILABLE = 5, /* a backend (etcd, runc, ...) cannot be reached; retry */
  FLOTILLA_E_COMPACTED = 6,   /* store: the requested revision was compacted */
  FLOTILLA_E_UNSUPPORTED = 7, /* the operation is not served by this plugin */
  FLOTILLA_E_NOMEM = 8,
  FLOTILLA_E_IO = 9,          /* an I/O error on a file, socket or device */
  FLOTILLA_E_PERMISSION = 10, /* refused by policy or by the kernel */
  FLOTILLA_E_CANCELLED = 11,  /* the request was cancelled (e.g. at shutdown) */
  FLOTILLA_E_INTERNAL = 12    /* a bug: please report it */
} flotilla_status;

typedef enum flotilla_log_level {
  FLOTILLA_LOG_DEBUG = 0,
  FLOTILLA_LOG_INFO = 1,
  FLOTILLA_LOG_WARN = 2,
  FLOTILLA_LOG_ERROR = 3
} flotilla_log_level;

/* A buffer handed from one side to the other. The receiver owns it and gives
 * it back by calling release(buf) exactly once; release may be NULL when the
 * data is static. */
typedef struct flotilla_buf {
  uint32_t struct_size;
  const char *data;
  size_t len;
  void (*release)(struct flotilla_buf *buf);
  void *release_ctx; /* for the allocator's use only */
} flotilla_buf;

/* A callback that says only whether an asynchronous request succeeded. The
 * message for a failure has been passed to set_error before the call. */
typedef void (*flotilla_done_cb)(void *user, flotilla_status status);

#ifdef __cplusplus
}
#endif
#endif
