// The host's architecture as OCI (Go) spells it, from uname(2), not from
// the code under test: images the tests make are for it, and an index must
// resolve to it, on amd64 and arm64 alike. Shared by runtime-runc's image
// tests and the registry e2e tests.
#pragma once

#include <sys/utsname.h>

#include <string>

namespace flotilla::testing {

inline std::string host_arch() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  std::string m = u.machine;
  if (m == "x86_64") return "amd64";
  if (m == "aarch64" || m == "arm64") return "arm64";
  if (m.rfind("armv", 0) == 0) return "arm";
  if (m == "i386" || m == "i686") return "386";
  return m;  // ppc64le, s390x, riscv64: the same in both
}

// An architecture that is not the host's.
inline std::string foreign_arch() {
  return host_arch() == "arm64" ? "amd64" : "arm64";
}

}  // namespace flotilla::testing
