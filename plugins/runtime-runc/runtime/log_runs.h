// The logs of the runs of one container id. A task that restarts is
// replaced by a new container of the same id (create with "replace":
// true, docs/abi-json.md); its earlier runs' output stays, within the
// task's log limits, each run in a directory of its own:
//
//   logs/runs.json            {"runs": [{"run": 1, "created_at", "started_at",
//                              "finished_at", "exit_code", "signal",
//                              "truncated"?, "dropped"?}, ...]} oldest first
//   logs/run-<N>/stdout.log[.k], stderr.log[.k]   run N, rotated by the shim
//   logs/stdout.log -> run-<N>/stdout.log   symlinks to the current run's
//   logs/stderr.log -> run-<N>/stderr.log   files (log_path "stdout"/"stderr")
//
// The earlier runs together keep at most max_files files per stream (the
// task's logs.max_files, each at most logs.max_file_size): the oldest
// files of the oldest runs go first. The current run has its own
// max_files, as before. Functions here block; call them only from work
// callbacks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace flotilla::runc {

struct LogRun {
  int64_t run = 0;
  std::filesystem::path stdout_log, stderr_log;  // where the shim writes this run's output
};

// Starts the next run in logs/ (run 1 in an empty or missing directory):
// ended is the state JSON of the run that ended (its started_at,
// finished_at, exit_code, signal), or null. Logs of an older plugin
// (logs/stdout.log as a plain file) become run 1. Prunes the earlier runs
// to max_files files per stream, writes runs.json (temp file + rename) and
// points the symlinks at the new run. A directory whose last run wrote
// nothing (its create failed) reuses that run's number.
LogRun start_log_run(const std::filesystem::path &logs, const nlohmann::json &ended,
                     unsigned max_files, const std::string &now);

// Records how run `run` (0: the last one listed) ended: started_at,
// finished_at, exit_code, signal of state (a state JSON). No-op without a
// runs.json (a container of an older plugin) or without that run.
void record_run_end(const std::filesystem::path &logs, int64_t run, const nlohmann::json &state);

// "stdout", "stderr" -> the current run's file (the symlink);
// "stdout@N", "stderr@N" -> run N's current file; "runs" -> runs.json.
// "" when stream is none of these.
std::string log_stream_path(const std::filesystem::path &logs, const std::string &stream);

}  // namespace flotilla::runc
