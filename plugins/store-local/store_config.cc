#include "store_config.h"

#include <nlohmann/json.hpp>

namespace flotilla::store_local {
namespace {

constexpr const char *kKnownKeys =
    "fsync, snapshot_every, snapshot_log_bytes, history, max_request_bytes";

int64_t integer_in(const nlohmann::json &v, const std::string &key, int64_t lo, int64_t hi,
                   const char *meaning) {
  std::string accepted =
      "an integer from " + std::to_string(lo) + " to " + std::to_string(hi) + " (" + meaning + ")";
  if (!v.is_number_integer()) throw ConfigProblem(key, v.dump() + " is not " + accepted);
  int64_t n = 0;
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) throw ConfigProblem(key, v.dump() + " is not " + accepted);
    n = static_cast<int64_t>(u);
  } else {
    n = v.get<int64_t>();
  }
  if (n < lo || n > hi) throw ConfigProblem(key, v.dump() + " is not " + accepted);
  return n;
}

// One key of the table into c; throws ConfigProblem for a bad one.
void read_key(StoreConfig &c, const std::string &key, const nlohmann::json &v) {
  if (key == "fsync") {
    if (!v.is_boolean())
      throw ConfigProblem(key, v.dump() +
                                   " is not true or false (whether to fdatasync the "
                                   "log before acknowledging a write)");
    c.fsync = v.get<bool>();
  } else if (key == "snapshot_every") {
    c.snapshot_every = integer_in(v, key, 1, 1'000'000'000, "log records between snapshots");
  } else if (key == "snapshot_log_bytes") {
    c.snapshot_log_bytes =
        integer_in(v, key, 4096, int64_t{1} << 40, "log bytes that trigger a snapshot");
  } else if (key == "history") {
    c.history = integer_in(v, key, 0, 1'000'000'000,
                           "revisions kept for historic reads and watches; 0 keeps all");
  } else if (key == "max_request_bytes") {
    c.max_request_bytes = integer_in(v, key, 1024, int64_t{512} << 20,
                                     "largest put or transaction, keys and values together");
  } else {
    throw ConfigProblem(key, "unknown key; store-local accepts " + std::string(kKnownKeys));
  }
}

}  // namespace

StoreConfig parse_store_config(std::string_view json_text, std::vector<ConfigProblem> &problems) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (const nlohmann::json::exception &e) {
    problems.emplace_back("", std::string("the plugin's config is not valid JSON: ") + e.what());
    return {};
  }
  if (!j.is_object()) {
    problems.emplace_back("", "the plugin's config must be a table");
    return {};
  }
  StoreConfig c;
  for (const auto &[key, v] : j.items()) {
    try {
      read_key(c, key, v);
    } catch (const ConfigProblem &p) {
      problems.push_back(p);
    }
  }
  return c;
}

StoreConfig parse_store_config(std::string_view json_text) {
  std::vector<ConfigProblem> problems;
  StoreConfig c = parse_store_config(json_text, problems);
  if (!problems.empty()) throw problems.front();
  return c;
}

}  // namespace flotilla::store_local
