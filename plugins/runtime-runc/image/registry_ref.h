// Image references as a registry sees them: which registry, which
// repository, which tag or digest. Docker Hub's defaults apply, as Docker,
// Podman and containerd apply them:
//
//   busybox                      -> docker.io/library/busybox:latest
//   team/app:2                   -> docker.io/team/app:2
//   127.0.0.1:5000/team/app:1    -> registry 127.0.0.1:5000, repository team/app
//   host:5000/team/app@sha256:…  -> by digest (a tag beside it is ignored)
//
// The first path component is a registry when it has a "." or a ":" or is
// "localhost"; docker.io (and index.docker.io) is reached at
// registry-1.docker.io.
#pragma once

#include <string>
#include <string_view>

namespace flotilla::runc {

struct RegistryRef {
  std::string registry;    // "docker.io", "127.0.0.1:5000": what config and auths are keyed by
  std::string repository;  // "library/busybox", "team/app"
  std::string tag;         // "1.36"; "latest" when neither tag nor digest was given
  std::string digest;      // "sha256:<hex>" when pinned
  std::string store_name;  // the name the image gets in the store: the reference as written,
                           // normalised, without the digest ("busybox:latest")

  // "manifests/<tag or digest>" path part.
  const std::string &reference() const { return digest.empty() ? tag : digest; }
  // "docker.io/library/busybox:1.36" or "...@sha256:..."
  std::string canonical() const;
};

// Throws ImageError(INVALID) naming the reference and what is wrong with it.
RegistryRef parse_registry_ref(std::string_view ref);

// The host[:port] that serves registry ("docker.io" -> "registry-1.docker.io").
std::string registry_endpoint_host(std::string_view registry);

}  // namespace flotilla::runc
