// The one logger of the daemon and its plugins. Human text by default,
// one JSON object per line with --log-format=json. Thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flotilla::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };
enum class Format { text, json };

// Throws std::invalid_argument with a message naming the accepted values.
Level parse_level(std::string_view name);
Format parse_format(std::string_view name);

void configure(Level min_level, Format format);
Level min_level();

using Fields = std::vector<std::pair<std::string, std::string>>;

// component: "core", "api", "plugin.store-local", ...
void write(Level level, std::string_view component, std::string_view message,
           const Fields &fields = {});

inline void debug(std::string_view c, std::string_view m, const Fields &f = {}) {
  write(Level::debug, c, m, f);
}
inline void info(std::string_view c, std::string_view m, const Fields &f = {}) {
  write(Level::info, c, m, f);
}
inline void warn(std::string_view c, std::string_view m, const Fields &f = {}) {
  write(Level::warn, c, m, f);
}
inline void error(std::string_view c, std::string_view m, const Fields &f = {}) {
  write(Level::error, c, m, f);
}

}  // namespace flotilla::log
