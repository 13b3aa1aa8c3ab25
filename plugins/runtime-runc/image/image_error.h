// Errors of the image store. Every failure carries a flotilla_status so the
// runtime-runc plugin can hand it across the C ABI unchanged, and a message
// meant for the operator: it names the image, blob or layer entry and says
// what to do about it.
#pragma once

#include <flotilla/types.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <string_view>

namespace flotilla::runc {

class ImageError : public std::runtime_error {
 public:
  ImageError(flotilla_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  flotilla_status status() const { return status_; }

 private:
  flotilla_status status_;
};

// Throws ImageError for a failed system call: "<what>: <strerror(err)>".
// EACCES/EPERM map to FLOTILLA_E_PERMISSION, ENOENT to NOT_FOUND, ENOMEM to
// NOMEM, anything else to IO.
[[noreturn]] void throw_errno(std::string_view what, int err = errno);

// An image reference the parsers refuse: "image reference \"<ref>\": <why>".
inline ImageError invalid_reference(std::string_view ref, const std::string &why) {
  return ImageError(FLOTILLA_E_INVALID, "image reference \"" + std::string(ref) + "\": " + why);
}

}  // namespace flotilla::runc
