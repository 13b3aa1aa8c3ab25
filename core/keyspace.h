// Key prefixes of the store's key space that several layers of the core
// read and write (DESIGN.md, "Key space"), and the client states that end
// an allocation. One definition, so the scheduler and the node agree.
#pragma once

#include <string>

namespace flotilla::keyspace {

inline const std::string kJobs = "/flotilla/jobs/";
inline const std::string kNodes = "/flotilla/nodes/";
inline const std::string kAllocs = "/flotilla/allocs/";
inline const std::string kAllocStatus = "/flotilla/alloc-status/";
inline const std::string kJobStatus = "/flotilla/job-status/";

// An allocation in one of these client states runs no more.
inline bool terminal(const std::string &client_status) {
  return client_status == "complete" || client_status == "failed" ||
         client_status == "stopped" || client_status == "lost";
}

}  // namespace flotilla::keyspace
