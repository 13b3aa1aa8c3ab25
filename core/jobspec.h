// Job specifications: TOML written by people, validated here, stored as
// canonical JSON under /flotilla/jobs/<name>. docs/jobspec.md documents
// every key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla {

struct JobSpecProblem {
  int line = 0;    // 1-based; 0 when the problem has no single place
  int column = 0;
  std::string key; // dotted path, e.g. "task[0].resources.memory"
  std::string message;
  // "web.toml line 12, task[0].resources.memory: must be ..."
  std::string to_string(std::string_view source) const;
};

// Every problem found, not only the first, so one round trip fixes them all.
class JobSpecInvalid : public std::runtime_error {
 public:
  JobSpecInvalid(std::string source, std::vector<JobSpecProblem> problems);
  const std::vector<JobSpecProblem> &problems() const { return problems_; }
  const std::string &source() const { return source_; }

 private:
  std::string source_;
  std::vector<JobSpecProblem> problems_;
};

// TOML text -> canonical job JSON. source names the text in messages
// ("web.toml"). Throws JobSpecInvalid.
nlohmann::json parse_jobspec(std::string_view toml_text, std::string_view source);

// Validate a job given as JSON (API clients may post JSON); returns the
// canonical form. Problems carry keys but no lines. Throws JobSpecInvalid.
nlohmann::json validate_job_json(const nlohmann::json &job, std::string_view source);

// Limits a job spec must stay within (docs/jobspec.md, "Limits").
inline constexpr std::size_t kJobSpecMaxBytes = 1 << 20;  // TOML text, or JSON as serialised
inline constexpr std::size_t kJobSpecMaxTasks = 100;
inline constexpr std::size_t kJobSpecMaxStringBytes = 4096;
inline constexpr std::size_t kJobSpecMaxEnv = 1000;
inline constexpr std::size_t kJobSpecMaxProblems = 100;  // reported; the rest are counted

// The name rule for jobs, tasks and datacenters (a DNS label):
// [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?
bool is_valid_name(std::string_view name);

// Durations as people write them: "1h30m", "15s", "250ms", "1.5h", "0".
// Units h, m, s, ms; no sign, no spaces; a whole number of milliseconds no
// larger than 8760h. Throws std::invalid_argument saying what is wrong.
std::int64_t parse_duration_ms(std::string_view text);
// The inverse, shortest form: 5400000 -> "1h30m", 250 -> "250ms", 0 -> "0s".
std::string format_duration_ms(std::int64_t ms);

}  // namespace flotilla
