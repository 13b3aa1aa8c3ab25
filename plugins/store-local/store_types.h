// Value types shared by the engine, the log and the plugin glue.
#pragma once

#include <flotilla/types.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::store_local {

// A failure with the status the ABI reports and the message for set_error.
class StoreError : public std::runtime_error {
 public:
  StoreError(flotilla_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  flotilla_status status() const { return status_; }

 private:
  flotilla_status status_;
};

// Keys above this size are refused: they are copied into every history
// entry, watch event and log record.
constexpr size_t kMaxKeyBytes = 64 * 1024;

// The keys k with begin <= k < end, or begin <= k when unbounded.
struct KeyRange {
  std::string begin;
  std::string end;
  bool unbounded = false;

  static KeyRange exact(std::string_view key);
  // Every key starting with prefix; the empty prefix is every key.
  static KeyRange prefix(std::string_view prefix);
  // etcd's [key, range_end); a range_end of one NUL byte means "no end".
  static KeyRange between(std::string_view begin, std::string_view end);

  bool contains(std::string_view key) const {
    return key >= std::string_view(begin) && (unbounded || key < std::string_view(end));
  }
  bool is_single_key() const;
};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

// A change as watchers see it. A deletion carries only key and mod_revision.
struct Event {
  bool deleted = false;
  KeyValue kv;
};

struct RevisionEvents {
  int64_t revision = 0;
  std::vector<Event> events;  // in the order the request made them
};

}  // namespace flotilla::store_local
