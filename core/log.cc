#include "log.h"

#include "rfc3339.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace flotilla::log {
namespace {
std::mutex g_mutex;
Level g_level = Level::info;
Format g_format = Format::text;

const char *level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "?";
}

}  // namespace

Level parse_level(std::string_view name) {
  for (Level l : {Level::debug, Level::info, Level::warn, Level::error})
    if (name == level_name(l)) return l;
  throw std::invalid_argument("log level \"" + std::string(name) +
                              "\" is not one of debug, info, warn, error");
}

Format parse_format(std::string_view name) {
  if (name == "text") return Format::text;
  if (name == "json") return Format::json;
  throw std::invalid_argument("log format \"" + std::string(name) + "\" is not one of text, json");
}

void configure(Level min_level, Format format) {
  std::lock_guard lock(g_mutex);
  g_level = min_level;
  g_format = format;
}

Level min_level() {
  std::lock_guard lock(g_mutex);
  return g_level;
}

void write(Level level, std::string_view component, std::string_view message,
           const Fields &fields) {
  std::lock_guard lock(g_mutex);
  if (level < g_level) return;
  std::string line;
  if (g_format == Format::json) {
    nlohmann::json j = {{"time", rfc3339_now(true)},
                        {"level", level_name(level)},
                        {"component", component},
                        {"msg", message}};
    for (const auto &[k, v] : fields) j[k] = v;
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = rfc3339_now(true) + " " + level_name(level) + " [" + std::string(component) + "] " +
           std::string(message);
    for (const auto &[k, v] : fields) line += " " + k + "=" + v;
  }
  line += '\n';
  // One write(2) per line so lines from several processes do not interleave.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace flotilla::log
