#include "store_types.h"

namespace flotilla::store_local {

KeyRange KeyRange::exact(std::string_view key) {
  KeyRange r;
  r.begin = key;
  r.end = key;
  r.end.push_back('\0');  // the smallest key greater than `key`
  return r;
}

KeyRange KeyRange::prefix(std::string_view prefix) {
  KeyRange r;
  r.begin = prefix;
  // The end is the prefix with its last byte below 0xff incremented and
  // everything after dropped; all 0xff (or empty) has no end.
  std::string end(prefix);
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (end.empty()) {
    r.unbounded = true;
  } else {
    end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
    r.end = std::move(end);
  }
  return r;
}

KeyRange KeyRange::between(std::string_view begin, std::string_view end) {
  KeyRange r;
  r.begin = begin;
  if (end.size() == 1 && end[0] == '\0')
    r.unbounded = true;
  else
    r.end = end;
  return r;
}

bool KeyRange::is_single_key() const {
  return !unbounded && end.size() == begin.size() + 1 && end.back() == '\0' &&
         std::string_view(end).substr(0, begin.size()) == begin;
}

}  // namespace flotilla::store_local
