// The plugin's config keys ([plugin.<name>] in flotillad.toml, handed over
// as JSON). Every key is documented in README.md.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::store_local {

struct StoreConfig {
  bool fsync = true;                      // fdatasync the log before acknowledging
  int64_t snapshot_every = 10000;         // records between snapshots
  int64_t snapshot_log_bytes = 64 << 20;  // or this many log bytes, whichever first
  int64_t history = 10000;                // revisions kept for reads and watches; 0: all
  int64_t max_request_bytes = 8 << 20;    // keys + values of one put or txn
};

// A bad key: key is the dotted path inside the plugin's table.
class ConfigProblem : public std::runtime_error {
 public:
  ConfigProblem(std::string key, const std::string &message)
      : std::runtime_error(message), key_(std::move(key)) {}
  const std::string &key() const { return key_; }

 private:
  std::string key_;
};

// Parse the config JSON object on top of the defaults. Every bad key is
// appended to problems, naming the key and saying what is accepted.
StoreConfig parse_store_config(std::string_view json_text, std::vector<ConfigProblem> &problems);
// The same; throws the first problem.
StoreConfig parse_store_config(std::string_view json_text);

}  // namespace flotilla::store_local
