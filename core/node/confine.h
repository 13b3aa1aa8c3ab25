// flotillad confines itself ([security] confine_daemon = true): it drops
// the capabilities that neither it nor any container it starts may use, and
// installs a seccomp deny-list for what none of them may ever do. Both are
// inherited by every child — runc, shims and so every container — which is
// the point. plugins/security/README.md explains what is kept and why.
#pragma once

#include <string>
#include <vector>

namespace flotilla {

struct ConfineResult {
  std::vector<std::string> dropped_caps;     // from the bounding and process sets
  std::vector<std::string> denied_syscalls;  // EPERM for the daemon and its children
};

// The lists confine_daemon() applies.
const std::vector<std::string> &confine_dropped_caps();
const std::vector<std::string> &confine_denied_syscalls();

// Apply both to the whole process (the seccomp filter with TSYNC, so every
// thread gets it; capabilities are per thread, so this refuses to run once
// the process has more than one). Throws flotilla::Error naming what failed.
ConfineResult confine_daemon();

}  // namespace flotilla
