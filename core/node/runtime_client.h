// C++ face of a flotilla.runtime/1 vtable for the core (the reconciler and
// the API): std::function callbacks, JSON results. [loop-thread]. If the
// plugin refuses a request synchronously, the callback runs before the
// method returns.
#pragma once

#include <flotilla/runtime.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "store_client.h"  // StoreResult

namespace flotilla {

class RuntimeClient {
 public:
  RuntimeClient(const flotilla_runtime_v1 *vtable, void *self) : vt_(vtable), self_(self) {}

  using JsonCb = std::function<void(StoreResult, nlohmann::json)>;
  using DoneCb = std::function<void(StoreResult)>;

  void create(const std::string &id, const std::string &task_json, JsonCb cb);
  void start(const std::string &id, JsonCb cb);
  void state(const std::string &id, JsonCb cb);
  void stop(const std::string &id, uint64_t timeout_ms, JsonCb cb);
  void remove(const std::string &id, DoneCb cb);
  void list(JsonCb cb);
  // Synchronous: the path of a container's log file, or "" (with *error set).
  std::string log_path(const std::string &id, const std::string &stream, StoreResult *error);

  void image_import(const std::string &path, const std::string &tag, JsonCb cb);
  void image_list(JsonCb cb);
  void image_remove(const std::string &ref, DoneCb cb);

  // Pulls ref from its registry (policy "always" or "if_not_present");
  // progress gets the runtime's progress objects, cb the image record or
  // the error. FLOTILLA_E_UNSUPPORTED from a runtime older than ABI 1.2.
  using ProgressCb = std::function<void(const nlohmann::json &)>;
  bool can_pull() const;
  void image_pull(const std::string &ref, const std::string &policy, ProgressCb progress,
                  JsonCb cb);

 private:
  const flotilla_runtime_v1 *vt_;
  void *self_;
};

}  // namespace flotilla
