#include "image_error.h"

#include <cstring>

namespace flotilla::runc {

void throw_errno(std::string_view what, int err) {
  flotilla_status status = FLOTILLA_E_IO;
  switch (err) {
    case EACCES:
    case EPERM:
      status = FLOTILLA_E_PERMISSION;
      break;
    case ENOENT:
      status = FLOTILLA_E_NOT_FOUND;
      break;
    case ENOMEM:
      status = FLOTILLA_E_NOMEM;
      break;
    default:
      break;
  }
  throw ImageError(status, std::string(what) + ": " + std::strerror(err));
}

}  // namespace flotilla::runc
