// Image references as the store accepts them: "busybox", "busybox:1.36",
// "registry.example:5000/team/app:v2", "app@sha256:<hex>" or a bare
// "sha256:<hex>". Names follow the distribution reference grammar; a name
// without a tag means ":latest".
#pragma once

#include <string>
#include <string_view>

namespace flotilla::runc {

struct ImageRef {
  std::string name;        // "busybox:latest"; empty when no name or no tag was given
  std::string repository;  // "busybox" for "busybox@sha256:...": any tag of it matches
  std::string digest;      // "sha256:<hex>" when the reference carries one

  // Whether an image named image_name with manifest digest image_digest is
  // what this reference means.
  bool matches(std::string_view image_name, std::string_view image_digest) const;
};

// Throws ImageError(INVALID) naming the offending part.
ImageRef parse_image_ref(std::string_view ref);

// A name to tag an image with: "name[:tag]" without a digest. Returns it
// normalised ("busybox" -> "busybox:latest").
std::string normalize_image_name(std::string_view name);

}  // namespace flotilla::runc
