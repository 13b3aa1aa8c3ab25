// Errors inside the core. The core uses exceptions for validation and
// start-up failures; they never cross the C ABI (plugin_host.cc catches at
// the boundary) and never escape a libuv callback.
#pragma once

#include <flotilla/types.h>

#include <stdexcept>
#include <string>

namespace flotilla {

// A failure with a status code and a message meant for the operator.
class Error : public std::runtime_error {
 public:
  Error(flotilla_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  flotilla_status status() const { return status_; }

 private:
  flotilla_status status_;
};

// "invalid", "not_found", ... stable names used in API error bodies.
const char *status_name(flotilla_status status);

}  // namespace flotilla
