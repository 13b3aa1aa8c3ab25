#include "error.h"

namespace flotilla {

const char *status_name(flotilla_status status) {
  switch (status) {
    case FLOTILLA_OK: return "ok";
    case FLOTILLA_E_INVALID: return "invalid";
    case FLOTILLA_E_NOT_FOUND: return "not_found";
    case FLOTILLA_E_EXISTS: return "exists";
    case FLOTILLA_E_CONFLICT: return "conflict";
    case FLOTILLA_E_UNAVAILABLE: return "unavailable";
    case FLOTILLA_E_COMPACTED: return "compacted";
    case FLOTILLA_E_UNSUPPORTED: return "unsupported";
    case FLOTILLA_E_NOMEM: return "nomem";
    case FLOTILLA_E_IO: return "io";
    case FLOTILLA_E_PERMISSION: return "permission";
    case FLOTILLA_E_CANCELLED: return "cancelled";
    case FLOTILLA_E_INTERNAL: return "internal";
  }
  return "unknown";
}

}  // namespace flotilla
