// Facts about a process read from /proc, to tell a live monitor from a
// process that merely reuses its pid.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace flotilla::runc {

// The process's start time in clock ticks since boot (field 22 of
// /proc/<pid>/stat), or 0 when the process does not exist.
uint64_t proc_start_ticks(pid_t pid);

// True when pid exists and started at start_ticks (0 matches any start).
bool proc_is(pid_t pid, uint64_t start_ticks);

}  // namespace flotilla::runc
