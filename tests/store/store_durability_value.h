// Keys and values the durability writer writes and the test checks.
#pragma once

#include <cstdio>
#include <string>

namespace flotilla::store_test {

inline std::string durable_key(const std::string &prefix, int index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%08d", index);
  return prefix + buf;
}

// Derived from the key, so a value that survived can be checked exactly.
inline std::string durable_value(const std::string &key) {
  std::string v = "{\"key\":\"" + key + "\",\"pad\":\"";
  for (size_t i = 0; v.size() < 160; ++i)
    v.push_back(static_cast<char>('a' + (key.size() + i) % 26));
  return v + "\"}";
}

}  // namespace flotilla::store_test
