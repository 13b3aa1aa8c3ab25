// The store's key space as the core reads and writes it (DESIGN.md, "Key
// space"), and the client states that end an allocation. One definition for
// every layer (api, node, sched), so the scheduler, the node agent and the
// API agree on every key.
#pragma once

#include <string>

namespace flotilla::keyspace {

// Prefixes: a record's key is the prefix followed by its name or id.
inline const std::string kJobs = "/flotilla/jobs/";
inline const std::string kJobStatus = "/flotilla/job-status/";
inline const std::string kNodes = "/flotilla/nodes/";
inline const std::string kNodeControl = "/flotilla/node-control/";
inline const std::string kHeartbeats = "/flotilla/heartbeats/";
inline const std::string kAllocs = "/flotilla/allocs/";
inline const std::string kAllocStatus = "/flotilla/alloc-status/";
inline const std::string kServices = "/flotilla/services/";     // written by discovery
inline const std::string kVips = "/flotilla/vips/";             // written by discovery
inline const std::string kNetStatus = "/flotilla/net/status/";  // written by net-overlay

// Single keys of the scheduler's election and placement fencing.
inline const std::string kLeader = "/flotilla/leader/scheduler";
inline const std::string kPlacementEpoch = "/flotilla/sched/epoch";

// An allocation in one of these client states runs no more.
inline bool terminal(const std::string &client_status) {
  return client_status == "complete" || client_status == "failed" ||
         client_status == "stopped" || client_status == "lost";
}

}  // namespace flotilla::keyspace
