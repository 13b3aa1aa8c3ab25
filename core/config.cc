// flotillad.toml -> DaemonConfig. docs/config.md documents every key.
//
// The reader walks the TOML tree with one table of accepted keys per
// section. Every problem is collected with its line and reported together,
// in file order, one per line of ConfigError::what().
#include "config.h"

#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>

#include "flotilla_build_config.h"
#include "jobspec.h"
#include "log.h"

namespace flotilla {

// ---- shared text helpers --------------------------------------------------

namespace {

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

// Optimal string alignment distance: insertions, deletions, substitutions
// and swaps of two neighbours each cost 1.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<std::size_t>> d(n + 1, std::vector<std::size_t>(m + 1));
  for (std::size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= n; ++i) {
    for (std::size_t j = 1; j <= m; ++j) {
      std::size_t cost = ascii_lower(a[i - 1]) == ascii_lower(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && ascii_lower(a[i - 1]) == ascii_lower(b[j - 2]) &&
          ascii_lower(a[i - 2]) == ascii_lower(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

// Length of the UTF-8 sequence starting at s[i], or 0 when it is not one.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  if (c < 0x80) return 1;
  std::size_t len;
  std::uint32_t cp;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  // Overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8.
  if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
      (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
    return 0;
  return len;
}

}  // namespace

std::string closest_match(std::string_view word, const std::vector<std::string_view> &candidates) {
  if (word.empty() || word.size() > 64) return {};
  const std::size_t allowed = word.size() <= 3 ? 1 : word.size() <= 6 ? 2 : 3;
  std::string_view best;
  std::size_t best_distance = allowed + 1;
  for (std::string_view c : candidates) {
    std::size_t d = edit_distance(word, c);
    if (d < best_distance && d < c.size()) {
      best = c;
      best_distance = d;
    }
  }
  return std::string(best);
}

bool is_valid_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    std::size_t len = utf8_sequence_length(text, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string quote_for_message(std::string_view text, std::size_t max_bytes) {
  std::string out = "\"";
  std::size_t i = 0;
  for (; i < text.size() && i < max_bytes;) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    std::size_t len = utf8_sequence_length(text, i);
    char buf[8];
    if (len == 0) {
      snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
      ++i;
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\n') {
      out += "\\n";
      ++i;
    } else if (c == '\t') {
      out += "\\t";
      ++i;
    } else if (c < 0x20 || c == 0x7F) {
      snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
      ++i;
    } else {
      out.append(text.substr(i, len));
      i += len;
    }
  }
  if (i < text.size()) out += "...";
  out += '"';
  return out;
}

std::string key_part(std::string_view key) {
  bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
  return bare ? std::string(key) : quote_for_message(key, 64);
}

int toml_nesting_exceeds(std::string_view text, int max_depth) {
  // A small lexer: enough of TOML to find keys, headers, strings, comments
  // and brackets. The depth of a value is the depth of the table its key
  // sits in plus the number of dotted parts of the key.
  struct Frame {
    char kind;  // '{' or '['
    int depth;  // depth of the inline table or array itself
  };
  std::vector<Frame> stack;
  const std::size_t n = text.size();
  std::size_t i = 0;
  int line = 1;
  int header_depth = 0;  // depth of the table the last [header] opened
  int value_depth = 0;   // depth of the value after the last key
  bool expect_key = true;

  auto skip_blank = [&] {
    while (i < n && (text[i] == ' ' || text[i] == '\t')) ++i;
  };
  // Skips a string starting at text[i]; counts the lines it spans.
  auto skip_string = [&] {
    const char q = text[i];
    if (i + 2 < n && text[i + 1] == q && text[i + 2] == q) {
      i += 3;
      while (i < n) {
        if (q == '"' && text[i] == '\\' && i + 1 < n) {
          if (text[i + 1] == '\n') ++line;
          i += 2;
        } else if (text[i] == q && i + 2 < n && text[i + 1] == q && text[i + 2] == q) {
          i += 3;
          for (int extra = 0; extra < 2 && i < n && text[i] == q; ++extra) ++i;
          return;
        } else {
          if (text[i] == '\n') ++line;
          ++i;
        }
      }
      return;
    }
    ++i;
    while (i < n && text[i] != q && text[i] != '\n') {
      if (q == '"' && text[i] == '\\' && i + 1 < n && text[i + 1] != '\n')
        i += 2;
      else
        ++i;
    }
    if (i < n && text[i] == q) ++i;
  };
  auto is_bare = [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  };
  // Reads a dotted key; returns how many parts it has.
  auto read_dotted_key = [&] {
    int parts = 0;
    while (i < n) {
      if (text[i] == '"' || text[i] == '\'') {
        skip_string();
      } else if (is_bare(text[i])) {
        while (i < n && is_bare(text[i])) ++i;
      } else {
        break;
      }
      ++parts;
      skip_blank();
      if (i < n && text[i] == '.') {
        ++i;
        skip_blank();
      } else {
        break;
      }
    }
    return parts;
  };

  while (i < n) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      ++i;
      if (stack.empty()) expect_key = true;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') {
      ++i;
      continue;
    }
    if (c == '#') {
      while (i < n && text[i] != '\n') ++i;
      continue;
    }
    if (expect_key) {
      if (c == '[' && stack.empty()) {
        ++i;
        const bool array = i < n && text[i] == '[';
        if (array) ++i;
        skip_blank();
        header_depth = read_dotted_key() + (array ? 1 : 0);
        if (header_depth > max_depth) return line;
        while (i < n && (text[i] == ']' || text[i] == ' ' || text[i] == '\t')) ++i;
        continue;
      }
      if (c == '}') {  // "{}" or a trailing comma
        if (!stack.empty()) stack.pop_back();
        ++i;
        expect_key = false;
        continue;
      }
      const int base = stack.empty() ? header_depth : stack.back().depth;
      const int parts = read_dotted_key();
      if (parts == 0) ++i;  // not a key at all: toml++ will say so
      value_depth = base + parts;
      if (value_depth > max_depth) return line;
      expect_key = false;
      continue;
    }
    if (c == '"' || c == '\'') {
      skip_string();
      continue;
    }
    if (c == '{' || c == '[') {
      const int depth =
          (!stack.empty() && stack.back().kind == '[') ? stack.back().depth + 1 : value_depth;
      if (depth > max_depth) return line;
      stack.push_back({c, depth});
      expect_key = c == '{';
      ++i;
      continue;
    }
    if (c == '}' || c == ']') {
      if (!stack.empty()) stack.pop_back();
      ++i;
      continue;
    }
    if (c == ',' && !stack.empty() && stack.back().kind == '{') expect_key = true;
    ++i;
  }
  return 0;
}

std::string join_names(const std::vector<std::string_view> &names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

// ---- the daemon config ----------------------------------------------------

namespace {

constexpr std::size_t kMaxConfigBytes = 1 << 20;
constexpr int kMaxConfigDepth = 64;
constexpr std::size_t kMaxUnixSocketPath = 107;  // sizeof(sockaddr_un::sun_path) - 1

std::string join_key(const std::string &prefix, std::string_view k) {
  return prefix.empty() ? key_part(k) : prefix + "." + key_part(k);
}

std::string describe(const toml::node &n) {
  std::ostringstream os;
  switch (n.type()) {
    case toml::node_type::string:
      return "a string " + quote_for_message(n.as_string()->get());
    case toml::node_type::integer:
      return "an integer " + std::to_string(n.as_integer()->get());
    case toml::node_type::floating_point:
      os << *n.as_floating_point();
      return "a float " + os.str();
    case toml::node_type::boolean:
      return n.as_boolean()->get() ? "a boolean true" : "a boolean false";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::date:
      os << *n.as_date();
      return "a date " + os.str();
    case toml::node_type::time:
      os << *n.as_time();
      return "a time " + os.str();
    case toml::node_type::date_time:
      os << *n.as_date_time();
      return "a date-time " + os.str();
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string one_of(std::string_view value, const std::vector<std::string_view> &accepted) {
  std::string msg = quote_for_message(value) + " is not one of " + join_names(accepted);
  std::string near = closest_match(value, accepted);
  if (!near.empty()) msg += "; did you mean \"" + near + "\"?";
  return msg;
}

bool is_plugin_name(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && c == '-');
    if (!ok) return false;
  }
  return true;
}

// Node names become store keys (/flotilla/nodes/<name>) and appear in DNS.
bool is_node_name(std::string_view s) {
  if (s.empty() || s.size() > 253 || s.front() == '.' || s.front() == '-') return false;
  for (char c : s)
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return false;
  return true;
}

// A group name ([A-Za-z_][A-Za-z0-9_.-]*, optionally ending in $) or a gid.
bool is_group_name(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  if (std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return true;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    bool ok = letter || (i > 0 && ((c >= '0' && c <= '9') || c == '.' || c == '-')) ||
              (i > 0 && i + 1 == s.size() && c == '$');
    if (!ok) return false;
  }
  return true;
}

// "host:port", "[v6addr]:port". Returns what is wrong, or "".
std::string host_port_problem(std::string_view s) {
  const std::string hint = "; write host:port, like \"0.0.0.0:4646\" or \"[::]:4646\"";
  std::size_t colon = s.rfind(':');
  if (colon == std::string_view::npos) return "has no port" + hint;
  std::string_view host = s.substr(0, colon), port = s.substr(colon + 1);
  if (host.empty()) return "has no host (use 0.0.0.0 to listen on every address)" + hint;
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return "has an unclosed [ in the host" + hint;
    for (char c : host.substr(1, host.size() - 2))
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
            c == ':' || c == '.'))
        return "has an IPv6 host that is not an address" + hint;
  } else {
    for (char c : host)
      if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '-'))
        return "has a host that is neither a name nor an IPv4 address (put IPv6 in [brackets])" +
               hint;
  }
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return "has a port that is not a number from 1 to 65535" + hint;
  int p = std::stoi(std::string(port));
  if (p < 1 || p > 65535) return "has a port that is not a number from 1 to 65535" + hint;
  return {};
}

class ConfigReader {
 public:
  explicit ConfigReader(const std::string &path) : path_(path) {
    std::error_code ec;
    std::filesystem::path abs = std::filesystem::absolute(path, ec);
    base_dir_ = ec ? std::filesystem::path(".") : abs.parent_path();
  }

  void error(int line, const std::string &key, const std::string &what) {
    std::string msg = "config " + path_;
    if (line > 0) msg += " line " + std::to_string(line);
    msg += ": ";
    if (!key.empty()) msg += key + ": ";
    msg += what;
    errors_.push_back({line, std::move(msg)});
  }
  void error(const toml::node &at, const std::string &key, const std::string &what) {
    error(static_cast<int>(at.source().begin.line), key, what);
  }

  // Throws ConfigError listing every problem, in file order; problems with
  // no line come last.
  void throw_if_errors() {
    if (errors_.empty()) return;
    std::stable_sort(errors_.begin(), errors_.end(), [](const auto &a, const auto &b) {
      auto rank = [](int line) { return line > 0 ? line : INT_MAX; };
      return rank(a.first) < rank(b.first);
    });
    std::string all;
    for (const auto &[line, text] : errors_) {
      if (!all.empty()) all += '\n';
      all += text;
    }
    throw ConfigError(all);
  }

  using Read = std::function<void(const toml::node &value, const std::string &key)>;
  struct KeyRule {
    std::string_view name;
    Read read;
  };

  // Hands each key of t to the rule of the same name; any other key is an
  // error with a "did you mean" hint.
  void walk(const toml::table &t, const std::string &prefix, const std::vector<KeyRule> &rules) {
    std::vector<std::string_view> names;
    for (const KeyRule &r : rules) names.push_back(r.name);
    for (auto &&[k, v] : t) {
      std::string key = join_key(prefix, k.str());
      auto rule = std::find_if(rules.begin(), rules.end(),
                               [&](const KeyRule &r) { return r.name == k.str(); });
      if (rule != rules.end()) {
        rule->read(v, key);
        continue;
      }
      bool top = prefix.empty();
      std::string what = (top && v.is_table()) ? "unknown table" : "unknown key";
      std::string near = closest_match(k.str(), names);
      if (!near.empty()) {
        what += top ? "; did you mean [" + near + "]?" : "; did you mean \"" + near + "\"?";
      } else if (top) {
        what += "; accepted: [node], [api], [log], [plugins], [store], [security], [gc], "
                "[cluster], [plugin.<name>]";
      } else {
        what += "; accepted here: " + join_names(names);
      }
      error(static_cast<int>(k.source().begin.line), key, what);
    }
  }

  // A section must be a table; returns it or reports the wrong type.
  const toml::table *section(const toml::node &v, const std::string &key) {
    if (const toml::table *t = v.as_table()) return t;
    error(v, key, "must be a table ([" + key + "]), got " + describe(v));
    return nullptr;
  }

  std::optional<std::string> string(const toml::node &v, const std::string &key) {
    if (!v.is_string()) {
      error(v, key, "must be a string, got " + describe(v));
      return std::nullopt;
    }
    const std::string &s = v.as_string()->get();
    if (s.empty()) {
      error(v, key, "must not be empty");
      return std::nullopt;
    }
    if (s.find('\0') != std::string::npos) {
      error(v, key, "must not contain NUL characters");
      return std::nullopt;
    }
    return s;
  }

  std::optional<bool> boolean(const toml::node &v, const std::string &key) {
    if (const auto *b = v.as_boolean()) return b->get();
    error(v, key, "must be true or false, got " + describe(v));
    return std::nullopt;
  }

  // A path the daemon creates (data directory, socket): must be absolute so
  // that it does not depend on where the daemon was started.
  std::optional<std::string> absolute_path(const toml::node &v, const std::string &key) {
    auto s = string(v, key);
    if (!s) return std::nullopt;
    if (s->front() != '/') {
      error(v, key, "must be an absolute path, got " + quote_for_message(*s));
      return std::nullopt;
    }
    return std::filesystem::path(*s).lexically_normal().string();
  }

  // A file or directory the daemon reads: relative paths are taken from the
  // directory of the config file.
  std::optional<std::string> file_path(const toml::node &v, const std::string &key) {
    auto s = string(v, key);
    if (!s) return std::nullopt;
    return resolve(*s);
  }

  std::string resolve(const std::string &p) const {
    std::filesystem::path fp(p);
    if (fp.is_absolute()) return fp.lexically_normal().string();
    return (base_dir_ / fp).lexically_normal().string();
  }

  const std::string &path() const { return path_; }

 private:
  std::string path_;
  std::filesystem::path base_dir_;
  std::vector<std::pair<int, std::string>> errors_;
};

// TOML value of a plugin's own key -> JSON, recording the line of every key.
nlohmann::json plugin_value_json(ConfigReader &r, const toml::node &n, const std::string &inner,
                                 const std::string &key, PluginSettings &plugin) {
  plugin.key_lines[inner] = static_cast<int>(n.source().begin.line);
  std::ostringstream os;
  switch (n.type()) {
    case toml::node_type::table: {
      nlohmann::json obj = nlohmann::json::object();
      for (auto &&[k, v] : *n.as_table()) {
        std::string child = join_key(inner, k.str());
        obj[std::string(k.str())] = plugin_value_json(r, v, child, join_key(key, k.str()), plugin);
        plugin.key_lines[child] = static_cast<int>(k.source().begin.line);
      }
      return obj;
    }
    case toml::node_type::array: {
      nlohmann::json arr = nlohmann::json::array();
      std::size_t i = 0;
      for (const toml::node &v : *n.as_array()) {
        std::string index = "[" + std::to_string(i++) + "]";
        arr.push_back(plugin_value_json(r, v, inner + index, key + index, plugin));
      }
      return arr;
    }
    case toml::node_type::string:
      return n.as_string()->get();
    case toml::node_type::integer:
      return n.as_integer()->get();
    case toml::node_type::floating_point: {
      double d = n.as_floating_point()->get();
      if (!std::isfinite(d))
        r.error(n, key, "must be a finite number (plugins receive JSON, which has no nan or inf)");
      return d;
    }
    case toml::node_type::boolean:
      return n.as_boolean()->get();
    // JSON has no dates: plugins get the TOML text, e.g. "1979-05-27T07:32:00Z".
    case toml::node_type::date:
      os << *n.as_date();
      return os.str();
    case toml::node_type::time:
      os << *n.as_time();
      return os.str();
    case toml::node_type::date_time:
      os << *n.as_date_time();
      return os.str();
    case toml::node_type::none:
      break;
  }
  return nullptr;
}

void read_plugin(ConfigReader &r, const toml::node &v, std::string_view name, DaemonConfig &cfg,
                 std::vector<bool> &path_given) {
  const std::string key = "plugin." + key_part(name);
  if (!is_plugin_name(name)) {
    r.error(v, key,
            "plugin names are 1 to 64 lowercase letters, digits and '-', not starting with '-' "
            "(like \"net-overlay\")");
    return;
  }
  const toml::table *t = v.as_table();
  if (!t) {
    r.error(v, key, "must be a table ([" + key + "]), got " + describe(v));
    return;
  }
  PluginSettings p;
  p.name = std::string(name);
  p.line = static_cast<int>(t->source().begin.line);
  bool has_path = false;
  for (auto &&[k, val] : *t) {
    const std::string sub = join_key(key, k.str());
    if (k.str() == "path") {
      if (auto s = r.file_path(val, sub)) {
        p.path = *s;
        has_path = true;
      }
    } else if (k.str() == "sha256") {
      auto s = r.string(val, sub);
      if (!s) continue;
      bool hex =
          s->size() == 64 && std::all_of(s->begin(), s->end(), [](char c) {
            return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
          });
      if (!hex) {
        r.error(val, sub,
                "must be the SHA-256 of the plugin file as 64 hex digits (sha256sum prints it), "
                "got " +
                    quote_for_message(*s));
        continue;
      }
      p.sha256.clear();
      for (char c : *s) p.sha256 += ascii_lower(c);
    } else if (k.str() == "enabled") {
      if (auto b = r.boolean(val, sub)) p.enabled = *b;
    } else {
      p.config[std::string(k.str())] = plugin_value_json(r, val, key_part(k.str()), sub, p);
      // The key's own line, not its value's (they differ for sub-tables).
      p.key_lines[key_part(k.str())] = static_cast<int>(k.source().begin.line);
    }
  }
  cfg.plugins.push_back(std::move(p));
  path_given.push_back(has_path);
}

std::optional<unsigned> socket_mode(ConfigReader &r, const toml::node &v, const std::string &key) {
  const std::string accepted = "write it as an octal string like \"0660\" or a TOML octal 0o660";
  if (const auto *i = v.as_integer()) {
    // A decimal 660 would silently mean 01224: only literals written in
    // octal, hex or binary say which bits they mean.
    bool decimal = (i->flags() &
                    (toml::value_flags::format_as_octal | toml::value_flags::format_as_hexadecimal |
                     toml::value_flags::format_as_binary)) == toml::value_flags::none;
    if (decimal && i->get() != 0) {
      r.error(v, key,
              "the decimal integer " + std::to_string(i->get()) + " is ambiguous as a file mode; " +
                  accepted);
      return std::nullopt;
    }
    if (i->get() < 0 || i->get() > 0777) {
      r.error(v, key, "must be permission bits from 0 to 0777; " + accepted);
      return std::nullopt;
    }
    return static_cast<unsigned>(i->get());
  }
  if (const auto *s = v.as_string()) {
    const std::string &t = s->get();
    bool ok = (t.size() == 3 || (t.size() == 4 && t[0] == '0')) &&
              std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '7'; });
    if (!ok) {
      r.error(v, key, quote_for_message(t) + " is not permission bits from 0 to 0777; " + accepted);
      return std::nullopt;
    }
    return static_cast<unsigned>(std::stoul(t, nullptr, 8));
  }
  r.error(v, key, "must be a string or an integer, got " + describe(v) + "; " + accepted);
  return std::nullopt;
}

DaemonConfig read_config(ConfigReader &r, const toml::table &root) {
  DaemonConfig cfg;
  cfg.path = r.path();
  cfg.plugin_dir = FLOTILLA_PLUGIN_DIR;
  std::vector<bool> plugin_path_given;
  const toml::node *tcp_listen_node = nullptr;
  std::vector<std::pair<std::string, const toml::node *>> tls_nodes;
  const toml::node *store_plugin_node = nullptr;
  bool name_given = false;

  auto node_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    r.walk(*t, key,
           {
               {"name",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.string(x, k);
                  if (!s) return;
                  name_given = true;
                  if (!is_node_name(*s)) {
                    r.error(x, k,
                            quote_for_message(*s) +
                                " is not a node name: use up to 253 letters, digits, '.', '_' "
                                "and '-', not starting with '.' or '-'");
                    return;
                  }
                  cfg.node.name = *s;
                }},
               {"data_dir",
                [&](const toml::node &x, const std::string &k) {
                  if (auto s = r.absolute_path(x, k)) cfg.node.data_dir = *s;
                }},
               {"datacenter",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.string(x, k);
                  if (!s) return;
                  if (!is_valid_name(*s)) {
                    r.error(x, k,
                            quote_for_message(*s) +
                                " is not a datacenter name: use 1 to 63 lowercase letters, "
                                "digits and '-', starting and ending with a letter or digit");
                    return;
                  }
                  cfg.node.datacenter = *s;
                }},
               {"devices",
                [&](const toml::node &x, const std::string &k) {
                  const toml::table *devs = r.section(x, k);
                  if (!devs) return;
                  for (auto &&[dk, dv] : *devs) {
                    std::string sub = join_key(k, dk.str());
                    const std::string_view name = dk.str();
                    bool ok = !name.empty() && name.size() <= 128 &&
                              ((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')) &&
                              std::all_of(name.begin(), name.end(), [](char c) {
                                return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                                       c == '.' || c == '_' || c == '/' || c == '-';
                              });
                    if (!ok) {
                      r.error(static_cast<int>(dk.source().begin.line), sub,
                              "device names are lowercase letters, digits, '.', '_', '/' and '-', "
                              "starting with a letter or digit (quote a name with dots or "
                              "slashes: \"nvidia/gpu\" = 2)");
                      continue;
                    }
                    const auto *n = dv.as_integer();
                    if (!n || n->get() < 0 || n->get() > 1024) {
                      r.error(dv, sub, "must be an integer count from 0 to 1024, got " + describe(dv));
                      continue;
                    }
                    cfg.node.devices[std::string(name)] = n->get();
                  }
                }},
               {"attributes",
                [&](const toml::node &x, const std::string &k) {
                  const toml::table *attrs = r.section(x, k);
                  if (!attrs) return;
                  for (auto &&[ak, av] : *attrs) {
                    std::string sub = join_key(k, ak.str());
                    bool ok = !ak.str().empty() && ak.str().size() <= 128 &&
                              std::all_of(ak.str().begin(), ak.str().end(), [](char c) {
                                return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                                       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
                              });
                    if (!ok) {
                      r.error(static_cast<int>(ak.source().begin.line), sub,
                              "attribute names are 1 to 128 letters, digits, '.', '_' and '-' "
                              "(quote a name with dots: \"os.version\" = \"12\")");
                      continue;
                    }
                    if (auto s = r.string(av, sub)) cfg.node.attributes[std::string(ak.str())] = *s;
                  }
                }},
           });
  };

  auto api_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    auto tls = [&](std::string *field) {
      return [&, field](const toml::node &x, const std::string &k) {
        tls_nodes.emplace_back(k, &x);
        if (auto s = r.file_path(x, k)) *field = *s;
      };
    };
    r.walk(*t, key,
           {
               {"socket",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.absolute_path(x, k);
                  if (!s) return;
                  if (s->size() > kMaxUnixSocketPath) {
                    r.error(x, k,
                            "is " + std::to_string(s->size()) +
                                " bytes long; a Unix socket path can have at most " +
                                std::to_string(kMaxUnixSocketPath));
                    return;
                  }
                  cfg.api.socket = *s;
                }},
               {"socket_mode",
                [&](const toml::node &x, const std::string &k) {
                  if (auto m = socket_mode(r, x, k)) cfg.api.socket_mode = *m;
                }},
               {"socket_group",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.string(x, k);
                  if (!s) return;
                  if (!is_group_name(*s)) {
                    r.error(x, k, quote_for_message(*s) + " is neither a group name nor a gid");
                    return;
                  }
                  cfg.api.socket_group = *s;
                }},
               {"tcp_listen",
                [&](const toml::node &x, const std::string &k) {
                  tcp_listen_node = &x;
                  auto s = r.string(x, k);
                  if (!s) return;
                  std::string problem = host_port_problem(*s);
                  if (!problem.empty()) {
                    r.error(x, k, quote_for_message(*s) + " " + problem);
                    return;
                  }
                  cfg.api.tcp_listen = *s;
                }},
               {"tls_cert", tls(&cfg.api.tls_cert)},
               {"tls_key", tls(&cfg.api.tls_key)},
               {"tls_client_ca", tls(&cfg.api.tls_client_ca)},
           });
  };

  auto log_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    r.walk(*t, key,
           {
               {"level",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.string(x, k);
                  if (!s) return;
                  try {
                    log::parse_level(*s);
                    cfg.log.level = *s;
                  } catch (const std::invalid_argument &) {
                    r.error(x, k, one_of(*s, {"debug", "info", "warn", "error"}));
                  }
                }},
               {"format",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.string(x, k);
                  if (!s) return;
                  try {
                    log::parse_format(*s);
                    cfg.log.format = *s;
                  } catch (const std::invalid_argument &) {
                    r.error(x, k, one_of(*s, {"text", "json"}));
                  }
                }},
           });
  };

  auto plugins_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    r.walk(*t, key,
           {
               {"dir",
                [&](const toml::node &x, const std::string &k) {
                  if (auto s = r.file_path(x, k)) cfg.plugin_dir = *s;
                }},
           });
  };

  auto store_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    r.walk(*t, key,
           {
               {"plugin",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.string(x, k);
                  if (!s) return;
                  if (!is_plugin_name(*s)) {
                    r.error(x, k,
                            quote_for_message(*s) +
                                " is not a plugin name: the <name> of a [plugin.<name>] table, "
                                "like \"store-local\"");
                    return;
                  }
                  cfg.store_plugin = *s;
                  store_plugin_node = &x;
                }},
           });
  };

  auto security_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    r.walk(*t, key,
           {
               {"confine_daemon",
                [&](const toml::node &x, const std::string &k) {
                  if (auto b = r.boolean(x, k)) cfg.security.confine_daemon = *b;
                }},
           });
  };

  auto gc_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    r.walk(*t, key,
           {
               {"terminal_after",
                [&](const toml::node &x, const std::string &k) {
                  auto s = r.string(x, k);
                  if (!s) return;
                  try {
                    int64_t ms = parse_duration_ms(*s);
                    if (ms < 1000) throw std::invalid_argument("must be at least 1s");
                    cfg.gc.terminal_after_ms = ms;
                  } catch (const std::invalid_argument &e) {
                    r.error(x, k,
                            quote_for_message(*s) + ": " + e.what() +
                                " (a duration from \"1s\" to \"8760h\", like \"4h\")");
                  }
                }},
               {"max_terminal",
                [&](const toml::node &x, const std::string &k) {
                  const auto *i = x.as_integer();
                  if (!i || i->get() < 0 || i->get() > 1000000) {
                    r.error(x, k,
                            "must be an integer from 0 (no limit) to 1000000, got " + describe(x));
                    return;
                  }
                  cfg.gc.max_terminal = i->get();
                }},
           });
  };

  // [cluster] lease_ttl and leader_lease_ttl: whole seconds (etcd leases
  // count seconds), from 1s to 5m.
  auto lease_seconds = [&](const toml::node &x, const std::string &k) -> std::optional<int64_t> {
    auto s = r.string(x, k);
    if (!s) return std::nullopt;
    try {
      int64_t ms = parse_duration_ms(*s);
      if (ms < 1000 || ms > 300000 || ms % 1000 != 0)
        throw std::invalid_argument("must be whole seconds from 1s to 5m");
      return ms;
    } catch (const std::invalid_argument &e) {
      r.error(x, k,
              quote_for_message(*s) + ": " + e.what() +
                  " (a duration in whole seconds from \"1s\" to \"5m\", like \"10s\")");
      return std::nullopt;
    }
  };
  const toml::node *leader_lease_node = nullptr;
  std::string leader_lease_text, lease_text = "10s";
  int64_t leader_lease_ms = 0;  // 0: not given (or not valid)
  bool lease_ttl_invalid = false;

  auto cluster_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = r.section(v, key);
    if (!t) return;
    r.walk(*t, key,
           {
               {"lease_ttl",
                [&](const toml::node &x, const std::string &k) {
                  if (auto ms = lease_seconds(x, k)) {
                    cfg.cluster.lease_ttl_ms = *ms;
                    lease_text = x.as_string()->get();
                  } else {
                    lease_ttl_invalid = true;  // already reported; compare nothing with it
                  }
                }},
               {"leader_lease_ttl",
                [&](const toml::node &x, const std::string &k) {
                  leader_lease_node = &x;
                  if (auto ms = lease_seconds(x, k)) {
                    leader_lease_ms = *ms;
                    leader_lease_text = x.as_string()->get();
                  }
                }},
           });
  };

  auto plugin_section = [&](const toml::node &v, const std::string &key) {
    const toml::table *t = v.as_table();
    if (!t) {
      r.error(v, key, "must be a table of plugins ([plugin.<name>]), got " + describe(v));
      return;
    }
    for (auto &&[name, pv] : *t) read_plugin(r, pv, name.str(), cfg, plugin_path_given);
  };

  r.walk(root, "",
         {
             {"node", node_section},
             {"api", api_section},
             {"log", log_section},
             {"plugins", plugins_section},
             {"store", store_section},
             {"security", security_section},
             {"gc", gc_section},
             {"cluster", cluster_section},
             {"plugin", plugin_section},
         });

  // The scheduler's leader lease: half the node lease by default (rounded,
  // at least 1 s), so that a leader that stops is replaced within the node
  // TTL even though etcd expires a lease up to one of its checks late. A
  // leader lease longer than the node lease would make failover slower than
  // node loss, and is refused.
  if (leader_lease_ms == 0) {
    cfg.cluster.leader_lease_ttl_ms = default_leader_lease_ttl_ms(cfg.cluster.lease_ttl_ms);
  } else if (leader_lease_ms > cfg.cluster.lease_ttl_ms && !lease_ttl_invalid) {
    r.error(*leader_lease_node, "cluster.leader_lease_ttl",
            quote_for_message(leader_lease_text) + " is longer than cluster.lease_ttl (" +
                quote_for_message(lease_text) +
                "): the scheduler's leader lease must not outlive the node lease; set it to at "
                "most the lease_ttl, or leave it out (default: half the lease_ttl)");
  } else {
    cfg.cluster.leader_lease_ttl_ms = leader_lease_ms;
  }

  // TCP is only ever served with mutual TLS, so all three files are needed.
  if (tcp_listen_node) {
    const std::pair<const char *, const std::string *> files[] = {
        {"tls_cert", &cfg.api.tls_cert},
        {"tls_key", &cfg.api.tls_key},
        {"tls_client_ca", &cfg.api.tls_client_ca},
    };
    for (const auto &[name, value] : files) {
      bool given = std::any_of(tls_nodes.begin(), tls_nodes.end(), [&](const auto &t) {
        return t.first == std::string("api.") + name;
      });
      if (!given)
        r.error(*tcp_listen_node, std::string("api.") + name,
                "is required when api.tcp_listen is set: TCP is only served with mutual TLS, "
                "so set tls_cert, tls_key and tls_client_ca");
    }
  } else {
    for (const auto &[key, node] : tls_nodes)
      r.error(*node, key,
              "is set but api.tcp_listen is not; set tcp_listen to serve TCP (with mutual TLS) "
              "or remove the tls_* keys");
  }

  // Plugins in file order, then their default paths (plugins.dir may come
  // later in the file than the [plugin.<name>] tables).
  std::vector<std::size_t> order(cfg.plugins.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return cfg.plugins[a].line < cfg.plugins[b].line;
  });
  std::vector<PluginSettings> sorted;
  for (std::size_t i : order) {
    if (!plugin_path_given[i])
      cfg.plugins[i].path =
          (std::filesystem::path(cfg.plugin_dir) / ("flotilla-" + cfg.plugins[i].name + ".so"))
              .lexically_normal()
              .string();
    sorted.push_back(std::move(cfg.plugins[i]));
  }
  cfg.plugins = std::move(sorted);

  if (store_plugin_node) {
    for (const PluginSettings &p : cfg.plugins)
      if (p.name == cfg.store_plugin && !p.enabled)
        r.error(*store_plugin_node, "store.plugin",
                "names plugin \"" + p.name + "\", which is disabled (plugin." + p.name +
                    ".enabled = false)");
  }

  if (!name_given) {
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0) {
      r.error(0, "node.name",
              std::string("is not set and the host name is unknown (") + std::strerror(errno) +
                  "); set node.name");
    } else if (!is_node_name(host)) {
      r.error(0, "node.name",
              "is not set and the host name " + quote_for_message(host) +
                  " cannot be used as a node name; set node.name");
    } else {
      cfg.node.name = host;
    }
  }
  return cfg;
}

}  // namespace

int64_t default_leader_lease_ttl_ms(int64_t lease_ttl_ms) {
  const int64_t seconds = (lease_ttl_ms / 1000 + 1) / 2;  // half, rounded up
  return std::max<int64_t>(1, seconds) * 1000;
}

DaemonConfig parse_config(std::string_view text, const std::string &path) {
  if (text.size() > kMaxConfigBytes)
    throw ConfigError("config " + path + ": is " + std::to_string(text.size()) +
                      " bytes; the limit is 1 MiB");
  if (int line = toml_nesting_exceeds(text, kMaxConfigDepth))
    throw ConfigError("config " + path + " line " + std::to_string(line) +
                      ": tables and arrays are nested more than " +
                      std::to_string(kMaxConfigDepth) + " levels deep");
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(path));
  } catch (const toml::parse_error &e) {
    throw ConfigError("config " + path + " line " + std::to_string(e.source().begin.line) +
                      ": TOML syntax error at column " + std::to_string(e.source().begin.column) +
                      ": " + std::string(e.description()));
  }
  ConfigReader reader(path);
  DaemonConfig cfg = read_config(reader, root);
  reader.throw_if_errors();
  return cfg;
}

DaemonConfig load_config(const std::string &path) {
  std::unique_ptr<FILE, int (*)(FILE *)> file(fopen(path.c_str(), "rbe"), fclose);
  if (!file) throw ConfigError("config " + path + ": cannot open: " + std::strerror(errno));
  std::string text;
  char buf[65536];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, file.get())) > 0) {
    text.append(buf, n);
    if (text.size() > kMaxConfigBytes)
      throw ConfigError("config " + path + ": is larger than 1 MiB; the limit is 1 MiB");
  }
  if (ferror(file.get()))
    throw ConfigError("config " + path + ": cannot read: " + std::strerror(errno));
  return parse_config(text, path);
}

}  // namespace flotilla
