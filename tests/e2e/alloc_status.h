// The status of an allocation as GET /v1/jobs/<name> or /v1/allocs shows
// it: "" while its node has not reported yet. One copy for every e2e test.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace flotilla::e2e {

inline std::string alloc_status(const nlohmann::json &alloc) {
  if (!alloc.is_object() || !alloc.contains("status")) return "";
  const nlohmann::json &s = alloc["status"];
  if (s.is_object()) return s.value("status", "");
  return s.is_string() ? s.get<std::string>() : "";
}

}  // namespace flotilla::e2e
