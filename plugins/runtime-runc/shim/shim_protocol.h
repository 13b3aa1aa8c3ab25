// What the runtime-runc plugin and its per-container monitor,
// flotilla-runc-shim, exchange. Both are built from this tree, so the
// format is private to them; it is still versioned because a shim started
// by an older daemon keeps running under a newer one.
//
// The plugin writes <container dir>/shim.json and starts
//   flotilla-runc-shim <container dir>/shim.json
// detached. The shim keeps <container dir>/shim-state.json up to date
// (always written to a temp file and renamed) and, once `<runtime> create`
// has finished, writes one line of JSON to its stdout — a pipe the plugin
// reads — and closes it:
//   {"status":"created","pid":1234}
//   {"status":"created","pid":1234,"started":true}   (shim.json "start": true)
//   {"status":"create_failed","error":"runc create failed: ..."}
//
// shim-state.json, "status" moves through
//   "creating"       shim_pid, shim_start_ticks
//   "created"        + pid (the container's init, as the runtime reported it);
//                    + "started": true when shim.json said "start": true and
//                    the shim ran `<runtime> run --detach` instead of
//                    `create`, so the process is already running
//   "create_failed"  + error
//   "stopped"        + exit_code, signal, finished_at
// exit_code is the process's exit status, or 128 + signal when a signal
// killed it (signal is then non-zero), as shells report it.
#pragma once

namespace flotilla::runc::shim {

inline constexpr int kProtocolVersion = 1;

inline constexpr const char *kConfigFile = "shim.json";
inline constexpr const char *kStateFile = "shim-state.json";
inline constexpr const char *kShimLogFile = "shim.log";

inline constexpr const char *kStatusCreating = "creating";
inline constexpr const char *kStatusCreated = "created";
inline constexpr const char *kStatusCreateFailed = "create_failed";
inline constexpr const char *kStatusStopped = "stopped";

}  // namespace flotilla::runc::shim
