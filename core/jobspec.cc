// Job specs: TOML -> JSON, remembering where each key sat -> one validator
// that also serves JSON posted to the API -> canonical JSON. docs/jobspec.md
// documents the schema; keep the two in step.
//
// The validator is table-driven per section: each section lists its keys
// (KeyRule) and reads them with typed readers that record a problem and go
// on, so that one pass reports everything. A new section is a key in its
// parent's list plus one check_* function.
#include "jobspec.h"

#include <toml++/toml.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <span>
#include <sstream>

#include "config.h"

namespace flotilla {

using json = nlohmann::json;

// ---- names and durations --------------------------------------------------

bool is_valid_name(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && i > 0 && i + 1 < s.size())) return false;
  }
  return true;
}

namespace {

constexpr std::int64_t kMaxDurationMs = 8760LL * 3600 * 1000;

struct DurationUnit {
  std::string_view name;
  std::int64_t ms;
};
constexpr DurationUnit kDurationUnits[] = {{"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

}  // namespace

std::int64_t parse_duration_ms(std::string_view text) {
  auto fail = [](const std::string &why) { throw std::invalid_argument(why); };
  if (text.empty()) fail("it is empty");
  if (text == "0") return 0;
  if (text.front() == '-') fail("durations cannot be negative");
  if (text.front() == '+') fail("durations take no sign");
  for (char c : text)
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') fail("it contains a space");
  __int128 total = 0;
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    // A number: digits, optionally with a fraction ("1.5h", ".5s").
    __int128 whole = 0, fraction = 0, scale = 1;
    bool digits = false;
    while (i < n && is_digit(text[i])) {
      whole = whole * 10 + (text[i++] - '0');
      digits = true;
      if (whole > kMaxDurationMs) fail("it is longer than the maximum, 8760h");
    }
    if (i < n && text[i] == '.') {
      ++i;
      while (i < n && is_digit(text[i])) {
        if (scale < static_cast<__int128>(1000000000000000000LL)) {
          fraction = fraction * 10 + (text[i] - '0');
          scale *= 10;
        } else if (text[i] != '0') {
          fail("it is not a whole number of milliseconds");
        }
        ++i;
        digits = true;
      }
    }
    if (!digits) fail("expected a number at " + quote_for_message(text.substr(i), 20));
    const std::size_t unit_start = i;
    while (i < n && !is_digit(text[i]) && text[i] != '.') ++i;
    std::string_view unit = text.substr(unit_start, i - unit_start);
    if (unit.empty()) fail("a number has no unit (use h, m, s or ms)");
    const DurationUnit *u = nullptr;
    for (const DurationUnit &d : kDurationUnits)
      if (d.name == unit) u = &d;
    if (!u) {
      if (unit == "us" || unit == "ns" || unit == "\xC2\xB5s")
        fail("the unit " + quote_for_message(unit) + " is finer than a millisecond; use ms");
      fail("unknown unit " + quote_for_message(unit, 20) + " (use h, m, s or ms)");
    }
    __int128 scaled = whole * u->ms * scale + fraction * u->ms;  // in 1/scale ms
    if (scaled % scale != 0) fail("it is not a whole number of milliseconds");
    total += scaled / scale;
    if (total > kMaxDurationMs) fail("it is longer than the maximum, 8760h");
  }
  return static_cast<std::int64_t>(total);
}

std::string format_duration_ms(std::int64_t ms) {
  if (ms < 0) return "-" + format_duration_ms(-ms);
  if (ms == 0) return "0s";
  std::string out;
  for (const DurationUnit &u : kDurationUnits) {
    if (ms >= u.ms) {
      out += std::to_string(ms / u.ms) + std::string(u.name);
      ms %= u.ms;
    }
  }
  return out;
}

// ---- problems -------------------------------------------------------------

std::string JobSpecProblem::to_string(std::string_view source) const {
  std::string out(source);
  if (line > 0) out += " line " + std::to_string(line);
  if (!key.empty()) out += ", " + key;
  out += ": " + message;
  return out;
}

namespace {
std::string list_problems(const std::string &source, const std::vector<JobSpecProblem> &problems) {
  if (problems.empty()) return source + ": invalid job spec";
  std::string out;
  for (const JobSpecProblem &p : problems) {
    if (!out.empty()) out += '\n';
    out += p.to_string(source);
  }
  return out;
}
}  // namespace

JobSpecInvalid::JobSpecInvalid(std::string source, std::vector<JobSpecProblem> problems)
    : std::runtime_error(list_problems(source, problems)),
      source_(std::move(source)),
      problems_(std::move(problems)) {}

namespace {

// ---- TOML -> JSON ---------------------------------------------------------

constexpr int kMaxTomlDepth = 32;

struct Place {
  int key_line = 0, key_column = 0;      // where the key is written
  int value_line = 0, value_column = 0;  // where its value starts
};

// What the TOML text knew that the JSON does not: where each key sat, and
// which values were TOML dates (JSON has no date type).
struct TomlOrigin {
  std::map<std::string, Place> places;
  std::map<std::string, std::string> dates;  // path -> "a date 1979-05-27"
};

std::string child_path(const std::string &path, std::string_view key) {
  return path.empty() ? key_part(key) : path + "." + key_part(key);
}

std::string index_path(const std::string &path, std::size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

// Everything before the last ".key" or "[i]" of a path ("" for a top key).
std::string parent_path(const std::string &path) {
  std::size_t cut = 0;
  bool quoted = false;
  for (std::size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (quoted) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        quoted = false;
    } else if (c == '"') {
      quoted = true;
    } else if (c == '.' || c == '[') {
      cut = i;
    }
  }
  return path.substr(0, cut);
}

json toml_to_json(const toml::node &n, const std::string &path, TomlOrigin &origin) {
  // The root gets no place: a missing top-level key is not "on line 1".
  if (!path.empty()) {
    Place &place = origin.places[path];
    place.value_line = static_cast<int>(n.source().begin.line);
    place.value_column = static_cast<int>(n.source().begin.column);
  }
  std::ostringstream os;
  switch (n.type()) {
    case toml::node_type::table: {
      json obj = json::object();
      for (auto &&[k, v] : *n.as_table()) {
        std::string child = child_path(path, k.str());
        obj[std::string(k.str())] = toml_to_json(v, child, origin);
        Place &p = origin.places[child];
        p.key_line = static_cast<int>(k.source().begin.line);
        p.key_column = static_cast<int>(k.source().begin.column);
      }
      return obj;
    }
    case toml::node_type::array: {
      json arr = json::array();
      std::size_t i = 0;
      for (const toml::node &v : *n.as_array())
        arr.push_back(toml_to_json(v, index_path(path, i++), origin));
      return arr;
    }
    case toml::node_type::string:
      return n.as_string()->get();
    case toml::node_type::integer:
      return n.as_integer()->get();
    case toml::node_type::floating_point:
      return n.as_floating_point()->get();
    case toml::node_type::boolean:
      return n.as_boolean()->get();
    case toml::node_type::date:
      os << *n.as_date();
      origin.dates[path] = "a date " + os.str();
      return os.str();
    case toml::node_type::time:
      os << *n.as_time();
      origin.dates[path] = "a time " + os.str();
      return os.str();
    case toml::node_type::date_time:
      os << *n.as_date_time();
      origin.dates[path] = "a date-time " + os.str();
      return os.str();
    case toml::node_type::none:
      break;
  }
  return nullptr;
}

// Approximate size of job as compact JSON text; stops counting past limit.
// Iterative, so that a hostile, deeply nested value cannot exhaust the stack.
bool json_larger_than(const json &job, std::size_t limit) {
  std::size_t total = 0;
  std::vector<const json *> stack{&job};
  while (!stack.empty()) {
    const json *v = stack.back();
    stack.pop_back();
    switch (v->type()) {
      case json::value_t::object:
        total += 2;
        for (auto it = v->begin(); it != v->end(); ++it) {
          total += it.key().size() + 4;
          stack.push_back(&it.value());
        }
        break;
      case json::value_t::array:
        total += 2;
        for (const json &e : *v) {
          total += 1;
          stack.push_back(&e);
        }
        break;
      case json::value_t::string:
        total += v->get_ref<const std::string &>().size() + 2;
        break;
      case json::value_t::binary:
        total += v->get_binary().size();
        break;
      default:
        total += 8;
        break;
    }
    if (total > limit) return true;
  }
  return false;
}

// ---- the validator --------------------------------------------------------

// A number as written: "5", "1.5", "nan".
std::string number_text(const json &v) {
  if (v.is_number_unsigned()) return std::to_string(v.get<std::uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<std::int64_t>());
  char buf[64];
  snprintf(buf, sizeof buf, "%.15g", v.get<double>());
  return buf;
}

enum class Form { toml, json };

class Checker {
 public:
  Checker(Form form, const TomlOrigin *origin) : form_(form), origin_(origin) {}

  Form form() const { return form_; }

  // at_key: point at the key rather than its value (unknown keys).
  void problem(const std::string &path, std::string message, bool at_key = false) {
    if (problems_.size() >= kJobSpecMaxProblems) {
      ++dropped_;
      return;
    }
    JobSpecProblem p;
    p.key = path;
    p.message = std::move(message);
    locate(path, at_key, p);
    problems_.push_back(std::move(p));
  }

  bool ok() const { return problems_.empty(); }

  // In file order; problems with no place (and the count of those left out) last.
  std::vector<JobSpecProblem> take() {
    std::stable_sort(problems_.begin(), problems_.end(), [](const auto &a, const auto &b) {
      auto rank = [](const JobSpecProblem &p) {
        return p.line > 0 ? std::pair(p.line, p.column) : std::pair(INT_MAX, 0);
      };
      return rank(a) < rank(b);
    });
    if (dropped_ > 0) {
      JobSpecProblem more;
      more.message = "and " + std::to_string(dropped_) + " more problems not shown";
      problems_.push_back(std::move(more));
    }
    return std::move(problems_);
  }

  // "a string \"64\"", "an integer 5", "a table": what a value is, for "got ...".
  std::string describe(const json &v, const std::string &path) const {
    if (origin_) {
      auto it = origin_->dates.find(path);
      if (it != origin_->dates.end()) return it->second;
    }
    switch (v.type()) {
      case json::value_t::string:
        return "a string " + quote_for_message(v.get_ref<const std::string &>(), 40);
      case json::value_t::number_integer:
      case json::value_t::number_unsigned:
        return "an integer " + number_text(v);
      case json::value_t::number_float:
        return "a float " + number_text(v);
      case json::value_t::boolean:
        return v.get<bool>() ? "a boolean true" : "a boolean false";
      case json::value_t::null:
        return "null";
      case json::value_t::array:
        return "an array";
      case json::value_t::object:
        return form_ == Form::toml ? "a table" : "an object";
      case json::value_t::binary:
        return "binary data";
      case json::value_t::discarded:
        break;
    }
    return "nothing";
  }

  bool is_date(const std::string &path) const { return origin_ && origin_->dates.count(path) > 0; }

 private:
  void locate(const std::string &path, bool at_key, JobSpecProblem &p) const {
    if (!origin_) return;
    // A missing key has no place of its own: point at its table.
    for (std::string at = path;; at = parent_path(at)) {
      auto it = origin_->places.find(at);
      if (it != origin_->places.end()) {
        const Place &pl = it->second;
        bool key = (at_key && at == path && pl.key_line > 0) || pl.value_line == 0;
        p.line = key ? pl.key_line : pl.value_line;
        p.column = key ? pl.key_column : pl.value_column;
        return;
      }
      if (at.empty()) return;
    }
  }

  Form form_;
  const TomlOrigin *origin_;
  std::vector<JobSpecProblem> problems_;
  std::size_t dropped_ = 0;
};

// A duration is written "15s" in TOML and as delay_ms = 15000 in JSON.
enum class KeyKind { plain, duration };
struct KeyRule {
  std::string_view name;
  KeyKind kind = KeyKind::plain;
};

// One table (object) of the spec and the keys it accepts. Unknown keys are
// reported when it is made.
class Section {
 public:
  Section(Checker &checker, const json &obj, std::string path, std::span<const KeyRule> rules)
      : c(checker), obj_(obj), path_(std::move(path)), rules_(rules) {
    std::vector<std::string> accepted;
    std::vector<std::string_view> accepted_views;
    for (const KeyRule &r : rules_) accepted.push_back(spelled(r));
    for (const std::string &a : accepted) accepted_views.push_back(a);
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      const std::string &k = it.key();
      if (std::find(accepted.begin(), accepted.end(), k) != accepted.end()) continue;
      c.problem(child_path(path_, k), unknown_key_message(k, accepted_views), true);
    }
  }

  // The value of a key (by its TOML name), or nullptr when absent.
  const json *get(std::string_view name) const {
    auto it = obj_.find(spelled(rule(name)));
    return it == obj_.end() ? nullptr : &*it;
  }
  // The path of a key as it is spelled in this form: "restart.delay" or "restart.delay_ms".
  std::string key(std::string_view name) const { return child_path(path_, spelled(rule(name))); }

  Checker &c;

 private:
  std::string spelled(const KeyRule &r) const {
    std::string s(r.name);
    if (r.kind == KeyKind::duration && c.form() == Form::json) s += "_ms";
    return s;
  }
  const KeyRule &rule(std::string_view name) const {
    for (const KeyRule &r : rules_)
      if (r.name == name) return r;
    throw std::logic_error("jobspec: no key rule for " + std::string(name));
  }
  std::string unknown_key_message(const std::string &k,
                                  const std::vector<std::string_view> &accepted) const {
    for (const KeyRule &r : rules_) {
      if (r.kind != KeyKind::duration) continue;
      if (c.form() == Form::json && k == r.name)
        return "unknown key; in JSON a duration is an integer of milliseconds: \"" +
               std::string(r.name) + "_ms\"";
      if (c.form() == Form::toml && k == std::string(r.name) + "_ms")
        return "unknown key; in TOML write a duration as a string: " + std::string(r.name) +
               " = \"15s\"";
    }
    std::string near = closest_match(k, accepted);
    if (!near.empty()) return "unknown key; did you mean \"" + near + "\"?";
    return "unknown key; accepted here: " + join_names(accepted);
  }

  const json &obj_;
  std::string path_;
  std::span<const KeyRule> rules_;
};

// ---- typed readers: each reports what is wrong and returns nullopt --------

std::string quote_value(const std::string &s) {
  return quote_for_message(s, 60);
}

// The rules every string obeys: a size limit, UTF-8, no NUL.
bool check_string(Checker &c, const std::string &path, const std::string &s) {
  if (s.size() > kJobSpecMaxStringBytes) {
    c.problem(path, "is " + std::to_string(s.size()) + " bytes long; strings can be at most " +
                        std::to_string(kJobSpecMaxStringBytes) + " bytes");
    return false;
  }
  if (!is_valid_utf8(s)) {
    c.problem(path, "is not valid UTF-8: " + quote_value(s));
    return false;
  }
  if (s.find('\0') != std::string::npos) {
    c.problem(path, "must not contain NUL characters: " + quote_value(s));
    return false;
  }
  return true;
}

// path's value is v: it must be a string; what says what is accepted.
std::optional<std::string> as_text(Checker &c, const json &v, const std::string &path,
                                   std::string_view what, bool allow_empty = false) {
  if (!v.is_string() || c.is_date(path)) {
    c.problem(path, "must be " + std::string(what) + ", got " + c.describe(v, path));
    return std::nullopt;
  }
  const std::string &s = v.get_ref<const std::string &>();
  if (!check_string(c, path, s)) return std::nullopt;
  if (s.empty() && !allow_empty) {
    c.problem(path, "must be " + std::string(what) + ", got an empty string");
    return std::nullopt;
  }
  return s;
}

enum class Presence { optional, required };
enum class Empty { refused, allowed };

std::optional<std::string> text(Section &s, std::string_view name, std::string_view what,
                                Presence presence = Presence::optional,
                                Empty empty = Empty::refused) {
  const json *v = s.get(name);
  if (!v) {
    if (presence == Presence::required)
      s.c.problem(s.key(name), "is required: " + std::string(what));
    return std::nullopt;
  }
  return as_text(s.c, *v, s.key(name), what, empty == Empty::allowed);
}

struct IntRule {
  std::int64_t min, max;
  std::string what;  // "a positive integer (MiB)"
  std::string unit;  // " (MiB)", for "must be at most 100 (MiB)"
};

std::optional<std::int64_t> as_integer(Checker &c, const json &v, const std::string &path,
                                       const IntRule &rule) {
  if (!v.is_number_integer() || c.is_date(path)) {
    c.problem(path, "must be " + rule.what + ", got " + c.describe(v, path));
    return std::nullopt;
  }
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
    c.problem(path, "must be at most " + std::to_string(rule.max) + rule.unit + ", got " +
                        std::to_string(v.get<std::uint64_t>()));
    return std::nullopt;
  }
  const std::int64_t i = v.get<std::int64_t>();
  if (i < rule.min) {
    c.problem(path, "must be " + rule.what + ", got " + std::to_string(i));
    return std::nullopt;
  }
  if (i > rule.max) {
    c.problem(path, "must be at most " + std::to_string(rule.max) + rule.unit + ", got " +
                        std::to_string(i));
    return std::nullopt;
  }
  return i;
}

std::optional<std::int64_t> integer(Section &s, std::string_view name, const IntRule &rule) {
  const json *v = s.get(name);
  if (!v) return std::nullopt;
  return as_integer(s.c, *v, s.key(name), rule);
}

struct DurationRule {
  std::int64_t min_ms, max_ms;
};

std::optional<std::int64_t> duration(Section &s, std::string_view name, const DurationRule &rule) {
  const json *v = s.get(name);
  if (!v) return std::nullopt;
  const std::string path = s.key(name);
  const std::string range =
      "from " + format_duration_ms(rule.min_ms) + " to " + format_duration_ms(rule.max_ms);
  if (s.c.form() == Form::json) {
    const std::string ms_range = std::to_string(rule.min_ms) + " to " + std::to_string(rule.max_ms);
    return as_integer(
        s.c, *v, path,
        {rule.min_ms, rule.max_ms,
         "an integer of milliseconds from " + ms_range + " (" + range + ")", " (milliseconds)"});
  }
  const std::string like = "write durations like \"15s\", \"1h30m\" or \"250ms\"";
  if (!v->is_string() || s.c.is_date(path)) {
    s.c.problem(path, "must be a duration string, got " + s.c.describe(*v, path) + "; " + like);
    return std::nullopt;
  }
  const std::string &t = v->get_ref<const std::string &>();
  if (!check_string(s.c, path, t)) return std::nullopt;
  std::int64_t ms;
  try {
    ms = parse_duration_ms(t);
  } catch (const std::invalid_argument &e) {
    s.c.problem(path, quote_value(t) + " is not a duration: " + e.what() + "; " + like);
    return std::nullopt;
  }
  if (ms < rule.min_ms || ms > rule.max_ms) {
    s.c.problem(path, "must be " + range + ", got " + quote_value(t));
    return std::nullopt;
  }
  return ms;
}

std::string one_of_list(std::span<const std::string_view> choices) {
  std::string out;
  for (std::size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) out += i + 1 == choices.size() ? " or " : ", ";
    out += choices[i];
  }
  return out;
}

std::optional<std::string> choice(Section &s, std::string_view name,
                                  std::span<const std::string_view> choices) {
  const json *v = s.get(name);
  if (!v) return std::nullopt;
  const std::string path = s.key(name);
  auto t = as_text(s.c, *v, path, "one of " + one_of_list(choices));
  if (!t) return std::nullopt;
  if (std::find(choices.begin(), choices.end(), *t) != choices.end()) return t;
  std::string msg = quote_value(*t) + " is not one of " + one_of_list(choices);
  std::string near = closest_match(*t, {choices.begin(), choices.end()});
  if (!near.empty()) msg += "; did you mean \"" + near + "\"?";
  s.c.problem(path, msg);
  return std::nullopt;
}

// The object under name; nullptr when absent or (reported) not an object.
const json *sub_object(Section &s, std::string_view name, std::string_view toml_header) {
  const json *v = s.get(name);
  if (!v || v->is_object()) return v;
  std::string expected =
      s.c.form() == Form::toml ? "a table (" + std::string(toml_header) + ")" : "an object";
  s.c.problem(s.key(name), "must be " + expected + ", got " + s.c.describe(*v, s.key(name)));
  return nullptr;
}

// A list of strings; each is checked by item, which reports its own problems.
// what_each: "a datacenter name"; what_all: "datacenter names".
template <typename Item>
std::optional<std::vector<std::string>> text_list(Section &s, std::string_view name,
                                                  std::string_view what_each,
                                                  std::string_view what_all, std::size_t max_items,
                                                  Item item) {
  const json *v = s.get(name);
  if (!v) return std::nullopt;
  const std::string path = s.key(name);
  if (!v->is_array()) {
    s.c.problem(path,
                "must be an array of " + std::string(what_all) + ", got " + s.c.describe(*v, path));
    return std::nullopt;
  }
  if (v->size() > max_items) {
    s.c.problem(path, "has " + std::to_string(v->size()) + " entries; at most " +
                          std::to_string(max_items) + " are allowed");
    return std::nullopt;
  }
  std::vector<std::string> out;
  bool ok = true;
  for (std::size_t i = 0; i < v->size(); ++i) {
    std::string at = index_path(path, i);
    auto t = as_text(s.c, (*v)[i], at, what_each, true);
    if (!t || !item(at, *t)) {
      ok = false;
      continue;
    }
    out.push_back(*t);
  }
  if (!ok) return std::nullopt;
  return out;
}

// ---- value rules ----------------------------------------------------------

const std::string kNameRule =
    "use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit";

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || is_digit(c);
}

// A repository path component: [a-z0-9]+ joined by ".", "_", "__" or "-"+.
bool is_path_component(std::string_view s) {
  if (s.empty() || !is_lower_alnum(s.front()) || !is_lower_alnum(s.back())) return false;
  for (std::size_t i = 0; i < s.size();) {
    if (is_lower_alnum(s[i])) {
      ++i;
      continue;
    }
    std::size_t start = i;
    while (i < s.size() && !is_lower_alnum(s[i])) ++i;
    std::string_view sep = s.substr(start, i - start);
    bool dashes = std::all_of(sep.begin(), sep.end(), [](char c) { return c == '-'; });
    if (!(sep == "." || sep == "_" || sep == "__" || dashes)) return false;
  }
  return true;
}

// A registry host: DNS labels joined by '.', optionally ":port".
bool is_registry_host(std::string_view s) {
  std::size_t colon = s.find(':');
  if (colon != std::string_view::npos) {
    std::string_view port = s.substr(colon + 1);
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), is_digit))
      return false;
    s = s.substr(0, colon);
  }
  if (s.empty()) return false;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t dot = s.find('.', start);
    std::string_view label = s.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.front() == '-' || label.back() == '-') return false;
    for (char c : label)
      if (!((c >= 'A' && c <= 'Z') || is_lower_alnum(c) || c == '-')) return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

// name[:tag][@sha256:<64 hex>]. Returns what is wrong, or "".
std::string image_problem(std::string_view ref) {
  std::string_view name = ref;
  std::size_t at = name.find('@');
  if (at != std::string_view::npos) {
    std::string_view digest = name.substr(at + 1);
    name = name.substr(0, at);
    std::string_view hex = digest.substr(std::min<std::size_t>(7, digest.size()));
    if (digest.substr(0, 7) != "sha256:" || hex.size() != 64 ||
        !std::all_of(hex.begin(), hex.end(),
                     [](char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); }))
      return "the digest must be sha256: followed by 64 lowercase hex digits";
  }
  std::size_t slash = name.rfind('/');
  std::size_t colon = name.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    std::string_view tag = name.substr(colon + 1);
    name = name.substr(0, colon);
    auto word = [](char c) { return (c >= 'A' && c <= 'Z') || is_lower_alnum(c) || c == '_'; };
    bool ok = !tag.empty() && tag.size() <= 128 && word(tag.front()) &&
              std::all_of(tag.begin(), tag.end(),
                          [&](char c) { return word(c) || c == '.' || c == '-'; });
    if (!ok)
      return "the tag must be 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' "
             "or '-'";
  }
  if (name.empty()) return "the repository name is empty";
  if (name.size() > 255) return "the repository name is longer than 255 characters";
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    std::size_t end = name.find('/', start);
    parts.push_back(name.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  std::size_t first = 0;
  if (parts.size() > 1 &&
      (parts[0].find_first_of(".:") != std::string_view::npos || parts[0] == "localhost")) {
    if (!is_registry_host(parts[0]))
      return "the registry " + quote_for_message(parts[0]) + " is not a host[:port]";
    first = 1;
  }
  for (std::size_t i = first; i < parts.size(); ++i) {
    std::string_view p = parts[i];
    if (p.empty()) return "the repository name has an empty path component";
    if (std::any_of(p.begin(), p.end(), [](char c) { return c >= 'A' && c <= 'Z'; }))
      return "repository names must be lowercase";
    if (!is_path_component(p))
      return "the path component " + quote_for_message(p) +
             " must be lowercase letters and digits joined by '.', '_', '__' or '-'";
  }
  return {};
}

// "busybox" has neither; in "localhost:5000/app" the ':' is a registry port.
bool has_tag_or_digest(std::string_view ref) {
  if (ref.find('@') != std::string_view::npos) return true;
  std::size_t slash = ref.rfind('/'), colon = ref.rfind(':');
  return colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash);
}

// A uid, gid, user or group: a number below 2^32-1 or a login name.
bool is_user_part(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  if (std::all_of(s.begin(), s.end(), is_digit))
    return s.size() <= 10 && std::stoull(std::string(s)) <= 4294967294ULL;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    bool ok = letter || (i > 0 && (is_digit(c) || c == '.' || c == '-')) ||
              (i > 0 && i + 1 == s.size() && c == '$');
    if (!ok) return false;
  }
  return true;
}

bool is_env_name(std::string_view s) {
  if (s.empty() || is_digit(s.front())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_';
  });
}

constexpr std::string_view kJobTypes[] = {"service", "batch", "system"};
constexpr std::string_view kRestartModes[] = {"fail", "delay"};
constexpr std::string_view kNetworkModes[] = {"bridge", "host", "none"};
constexpr std::string_view kImagePullPolicies[] = {"if_not_present", "always", "never"};
constexpr std::string_view kSignals[] = {"SIGHUP",  "SIGINT",  "SIGQUIT",  "SIGKILL", "SIGUSR1",
                                         "SIGUSR2", "SIGTERM", "SIGWINCH", "SIGPWR"};

// ---- sections -------------------------------------------------------------

constexpr KeyRule kJobKeys[] = {{"name"},       {"type"},           {"count"},
                                {"datacenters"}, {"priority"},      {"restart"},
                                {"task"},       {"node_pool"},      {"distinct_hosts"},
                                {"constraint"}, {"affinity"},       {"spread"},
                                {"reschedule"}, {"update"}};
constexpr KeyRule kRestartKeys[] = {{"attempts"},
                                    {"interval", KeyKind::duration},
                                    {"delay", KeyKind::duration},
                                    {"jitter"},
                                    {"mode"}};
constexpr KeyRule kTaskKeys[] = {{"name"},
                                 {"image"},
                                 {"image_pull"},
                                 {"command"},
                                 {"args"},
                                 {"workdir"},
                                 {"user"},
                                 {"kill_timeout", KeyKind::duration},
                                 {"kill_signal"},
                                 {"network"},
                                 {"env"},
                                 {"resources"},
                                 {"logs"},
                                 {"security"},
                                 {"service"}};
constexpr KeyRule kResourceKeys[] = {{"cpu"},  {"memory"}, {"memory_max"}, {"disk"},
                                     {"pids"}, {"ports"},  {"devices"}};
constexpr KeyRule kPortMappingKeys[] = {{"name"}, {"host"}, {"to"}};
constexpr KeyRule kLogKeys[] = {{"max_files"}, {"max_file_size"}};
constexpr KeyRule kSecurityKeys[] = {{"profile"}, {"cap_add"},          {"cap_drop"},
                                     {"user"},    {"read_only_rootfs"}, {"no_new_privileges"}};

constexpr std::int64_t kHourMs = 3600 * 1000;

// [[task.service]] and its checks (plugins/discovery).
constexpr KeyRule kServiceKeys[] = {{"name"}, {"port"}, {"tags"}, {"check"}, {"check_restart"}};
constexpr KeyRule kCheckRestartKeys[] = {{"limit"}, {"grace", KeyKind::duration}};
constexpr KeyRule kCheckKeys[] = {{"type"},
                                  {"interval", KeyKind::duration},
                                  {"timeout", KeyKind::duration},
                                  {"success_before_passing"},
                                  {"failures_before_critical"},
                                  {"path"},
                                  {"expect_status"},
                                  {"port"},
                                  {"command"},
                                  {"args"},
                                  {"grpc_service"},
                                  {"tls"},
                                  {"tls_skip_verify"},
                                  {"tls_server_name"}};
constexpr const char *kCheckTlsKeys[] = {"tls", "tls_skip_verify", "tls_server_name"};
constexpr std::string_view kCheckTypes[] = {"tcp", "http", "exec", "grpc"};

// ---- placement: constraints, affinities, spread, reschedule (scheduler) ----
// Each appears in the canonical form only when the spec gives it; the
// scheduler applies the documented defaults otherwise.

constexpr KeyRule kConstraintKeys[] = {{"attribute"}, {"operator"}, {"value"}};
constexpr KeyRule kAffinityKeys[] = {{"attribute"}, {"operator"}, {"value"}, {"weight"}};
constexpr KeyRule kSpreadKeys[] = {{"attribute"}, {"weight"}, {"target"}};
constexpr KeyRule kSpreadTargetKeys[] = {{"value"}, {"percent"}};
constexpr KeyRule kRescheduleKeys[] = {{"attempts"},
                                       {"interval", KeyKind::duration},
                                       {"delay", KeyKind::duration},
                                       {"delay_function"},
                                       {"max_delay", KeyKind::duration},
                                       {"unlimited"}};
constexpr std::string_view kOperators[] = {"=",      "!=",           "<",      "<=",
                                           ">",      ">=",           "version", "regexp",
                                           "set_contains", "is_set", "is_not_set"};
constexpr std::string_view kDelayFunctions[] = {"constant", "exponential"};
constexpr KeyRule kUpdateKeys[] = {{"max_parallel"},
                                   {"min_healthy_time", KeyKind::duration},
                                   {"healthy_deadline", KeyKind::duration},
                                   {"auto_revert"}};

// "${attr.os}", "${node.name}", "${node.datacenter}", "${node.pool}".
bool is_attribute_ref(const std::string &a) {
  static const std::regex re(R"(\$\{(attr\.[A-Za-z0-9_.-]{1,128}|node\.(name|datacenter|pool))\})");
  return std::regex_match(a, re);
}

// A version condition: ">= 1.2, < 2" (clauses of an optional operator and
// a dotted version).
bool is_version_condition(const std::string &v) {
  static const std::regex clause(R"(\s*(=|==|!=|<|<=|>|>=)?\s*v?[0-9]+(\.[0-9]+)*\s*)");
  std::stringstream in(v);
  std::string part;
  bool any = false;
  while (std::getline(in, part, ',')) {
    if (!std::regex_match(part, clause)) return false;
    any = true;
  }
  return any;
}

// null_is_unset: JSON null means "not given" (the canonical form writes it).
std::optional<bool> boolean(Section &s, std::string_view name, bool null_is_unset = false) {
  const json *v = s.get(name);
  if (!v || (null_is_unset && v->is_null() && s.c.form() == Form::json)) return std::nullopt;
  if (!v->is_boolean()) {
    s.c.problem(s.key(name), "must be true or false, got " + s.c.describe(*v, s.key(name)));
    return std::nullopt;
  }
  return v->get<bool>();
}

// An array of tables ([[constraint]] in TOML); check is called on each.
template <typename Check>
json table_list(Checker &c, const json *v, const std::string &path, std::string_view toml_name,
                std::size_t max_items, Check check) {
  json out = json::array();
  if (!v) return out;
  const std::string are = c.form() == Form::toml
                              ? "an array of tables, written [[" + std::string(toml_name) + "]]"
                              : "an array of objects";
  if (!v->is_array()) {
    c.problem(path, "must be " + are + ", got " + c.describe(*v, path));
    return out;
  }
  if (v->size() > max_items) {
    c.problem(path, "has " + std::to_string(v->size()) + " entries; at most " +
                        std::to_string(max_items) + " are allowed");
    return out;
  }
  for (std::size_t i = 0; i < v->size(); ++i) {
    const std::string at = index_path(path, i);
    if (!(*v)[i].is_object()) {
      c.problem(at, "must be " + std::string(c.form() == Form::toml ? "a table" : "an object") +
                        ", got " + c.describe((*v)[i], at));
      continue;
    }
    out.push_back(check((*v)[i], at));
  }
  return out;
}

json check_attribute(Section &s) {
  auto a = text(s, "attribute", "a node attribute like \"${attr.os}\"", Presence::required);
  if (a && !is_attribute_ref(*a)) {
    s.c.problem(s.key("attribute"),
                quote_value(*a) +
                    " is not a node attribute: write ${attr.<name>}, ${node.name}, "
                    "${node.datacenter} or ${node.pool}");
    a.reset();
  }
  return a.value_or("");
}

// attribute, operator, value: what constraints and affinities share.
json check_condition(Section &s) {
  json out = {{"attribute", check_attribute(s)}};
  const std::string op = choice(s, "operator", kOperators).value_or("=");
  out["operator"] = op;
  const bool needs_value = op != "is_set" && op != "is_not_set";
  auto value = text(s, "value", "the value to compare with",
                    needs_value ? Presence::required : Presence::optional, Empty::allowed);
  if (value && !needs_value && !value->empty()) {  // "" is the canonical form
    s.c.problem(s.key("value"), "is not used with operator \"" + op + "\"; leave it out");
    value.reset();
  }
  if (value && op == "version" && !is_version_condition(*value)) {
    s.c.problem(s.key("value"), quote_value(*value) +
                                    " is not a version condition: write it like \">= 1.2, < 2\"");
  } else if (value && op == "regexp") {
    try {
      std::regex re(*value);
    } catch (const std::regex_error &e) {
      s.c.problem(s.key("value"),
                  quote_value(*value) + " is not a regular expression: " + e.what());
    }
  }
  out["value"] = value.value_or("");
  return out;
}

json check_reschedule(Checker &c, const json *r, const std::string &path, const std::string &type) {
  const bool batch = type == "batch";
  std::int64_t attempts = batch ? 1 : 0, interval = batch ? 24 * kHourMs : kHourMs;
  std::int64_t delay = batch ? 5000 : 30000, max_delay = kHourMs;
  std::string function = batch ? "constant" : "exponential";
  bool unlimited = !batch;
  if (type == "system")
    c.problem(path, "system jobs are not rescheduled (they run on every node); leave it out");
  Section s(c, *r, path, kRescheduleKeys);
  auto given_attempts = integer(s, "attempts", {0, 1000, "an integer from 0 to 1000", ""});
  attempts = given_attempts.value_or(attempts);
  interval = duration(s, "interval", {1000, kMaxDurationMs}).value_or(interval);
  delay = duration(s, "delay", {0, 24 * kHourMs}).value_or(delay);
  max_delay = duration(s, "max_delay", {0, kMaxDurationMs}).value_or(max_delay);
  function = choice(s, "delay_function", kDelayFunctions).value_or(function);
  auto given_unlimited = boolean(s, "unlimited");
  // Attempts given alone mean a limit; unlimited given alone means none.
  unlimited = given_unlimited.value_or(given_attempts ? false : unlimited);
  if (unlimited && given_attempts && given_unlimited)
    c.problem(s.key("attempts"), "is not used when unlimited = true; leave one out");
  if (max_delay < delay)
    c.problem(path, "max_delay (" + format_duration_ms(max_delay) + ") is shorter than delay (" +
                        format_duration_ms(delay) + ")");
  return {{"attempts", attempts},     {"interval_ms", interval},
          {"delay_ms", delay},        {"delay_function", function},
          {"max_delay_ms", max_delay}, {"unlimited", unlimited}};
}

json check_update(Checker &c, const json *u, const std::string &path, const std::string &type) {
  if (type != "service")
    c.problem(path, "only service jobs are updated in steps; leave it out");
  Section s(c, *u, path, kUpdateKeys);
  std::int64_t max_parallel =
      integer(s, "max_parallel", {0, 1000, "an integer from 0 to 1000 (0: all at once)", ""})
          .value_or(1);
  auto min_healthy = duration(s, "min_healthy_time", {0, kHourMs});
  auto deadline = duration(s, "healthy_deadline", {1000, 24 * kHourMs});
  if (min_healthy.value_or(10000) >= deadline.value_or(300000) && (min_healthy || deadline))
    c.problem(path, "healthy_deadline (" + format_duration_ms(deadline.value_or(300000)) +
                        ") must be longer than min_healthy_time (" +
                        format_duration_ms(min_healthy.value_or(10000)) + ")");
  bool auto_revert = boolean(s, "auto_revert").value_or(false);
  return {{"max_parallel", max_parallel},
          {"min_healthy_time_ms", min_healthy.value_or(10000)},
          {"healthy_deadline_ms", deadline.value_or(300000)},
          {"auto_revert", auto_revert}};
}

// The job's placement keys, added to out only when given.
void check_job_placement(Section &s, const std::string &type, json &out) {
  Checker &c = s.c;
  if (const json *v = s.get("node_pool")) {
    auto pool = as_text(c, *v, s.key("node_pool"), "a node pool name or \"all\"");
    if (pool && *pool != "all" && !is_valid_name(*pool))
      c.problem(s.key("node_pool"), quote_value(*pool) + " is not a pool name: " + kNameRule);
    else if (pool)
      out["node_pool"] = *pool;
  }
  if (auto d = boolean(s, "distinct_hosts")) out["distinct_hosts"] = *d;
  if (const json *v = s.get("constraint"))
    out["constraint"] = table_list(c, v, s.key("constraint"), "constraint", 100,
                                   [&](const json &t, const std::string &at) {
                                     Section cs(c, t, at, kConstraintKeys);
                                     return check_condition(cs);
                                   });
  if (const json *v = s.get("affinity"))
    out["affinity"] = table_list(c, v, s.key("affinity"), "affinity", 100,
                                 [&](const json &t, const std::string &at) {
                                   Section as(c, t, at, kAffinityKeys);
                                   json a = check_condition(as);
                                   auto w = integer(as, "weight",
                                                    {-100, 100, "an integer from -100 to 100, not 0", ""});
                                   if (w && *w == 0) {
                                     c.problem(as.key("weight"), "must not be 0 (an affinity of weight 0 does nothing)");
                                     w.reset();
                                   }
                                   a["weight"] = w.value_or(50);
                                   return a;
                                 });
  if (const json *v = s.get("spread"))
    out["spread"] = table_list(c, v, s.key("spread"), "spread", 10, [&](const json &t, const std::string &at) {
      Section ss(c, t, at, kSpreadKeys);
      json sp = {{"attribute", check_attribute(ss)}};
      sp["weight"] = integer(ss, "weight", {1, 100, "an integer from 1 to 100", ""}).value_or(50);
      std::int64_t sum = 0;
      std::set<std::string> seen;
      sp["target"] = table_list(c, ss.get("target"), ss.key("target"), "spread.target", 100,
                                [&](const json &tt, const std::string &tat) {
                                  Section ts(c, tt, tat, kSpreadTargetKeys);
                                  auto value = text(ts, "value", "an attribute value", Presence::required,
                                                    Empty::allowed);
                                  if (value && !seen.insert(*value).second)
                                    c.problem(ts.key("value"), quote_value(*value) + " is listed twice");
                                  auto pct = integer(ts, "percent", {0, 100, "an integer from 0 to 100", " (%)"});
                                  if (!pct && !ts.get("percent")) c.problem(ts.key("percent"), "is required: the share of allocations, 0 to 100");
                                  sum += pct.value_or(0);
                                  return json{{"value", value.value_or("")}, {"percent", pct.value_or(0)}};
                                });
      if (sum > 100)
        c.problem(ss.key("target"), "percents add up to " + std::to_string(sum) + "; at most 100");
      return sp;
    });
  if (const json *r = sub_object(s, "reschedule", "[reschedule]"))
    out["reschedule"] = check_reschedule(c, r, s.key("reschedule"), type);
  if (const json *u = sub_object(s, "update", "[update]"))
    out["update"] = check_update(c, u, s.key("update"), type);
  if (type == "system" && out.value("distinct_hosts", false))
    c.problem(s.key("distinct_hosts"), "system jobs already run once per node; leave it out");
}

// [task.resources] ports and devices, added to out only when given.
void check_resource_placement(Checker &c, const json &resources, const std::string &path,
                              const std::string &network, json &out) {
  if (auto it = resources.find("ports"); it != resources.end()) {
    const std::string at = child_path(path, "ports");
    if (!it->is_array() || it->size() > 64) {
      c.problem(at, "must be an array of up to 64 port numbers or named mappings, got " +
                        c.describe(*it, at));
    } else {
      // A number: that host port, mapped to the same container port. A
      // table: a named mapping {name, host, to}, which services and checks
      // can name as their port.
      const IntRule port_rule{1, 65535, "a port number from 1 to 65535", ""};
      json ports = json::array();
      std::set<std::int64_t> seen;
      std::set<std::string> names;
      for (std::size_t i = 0; i < it->size(); ++i) {
        const std::string iat = index_path(at, i);
        const json &item = (*it)[i];
        std::optional<std::int64_t> p;
        json entry;
        if (item.is_object()) {
          Section m(c, item, iat, kPortMappingKeys);
          auto name = text(m, "name", "a mapping name like \"http\"", Presence::required);
          if (name && !is_valid_name(*name)) {
            c.problem(m.key("name"), quote_value(*name) + " is not a valid name: " + kNameRule);
            name.reset();
          } else if (name && !names.insert(*name).second) {
            c.problem(m.key("name"), quote_value(*name) + " names two mappings");
            name.reset();
          }
          p = integer(m, "host", port_rule);
          if (!m.get("host")) c.problem(m.key("host"), "is required: the host port, like 8080");
          auto to = integer(m, "to", port_rule);
          // A host-network task listens on its host port: nothing maps it.
          if (to && p && *to != *p && network == "host")
            c.problem(m.key("to"),
                      "a host-network task listens on its host port itself; leave "
                      "to out or make it " +
                          std::to_string(*p));
          if (name && p) entry = {{"name", *name}, {"host", *p}, {"to", to.value_or(*p)}};
        } else {
          p = as_integer(c, item, iat,
                         {1, 65535,
                          "a port number from 1 to 65535 or a table "
                          "{ name = \"http\", host = 8080, to = 80 }",
                          ""});
          if (p) entry = *p;
        }
        if (p && !seen.insert(*p).second)
          c.problem(iat, std::to_string(*p) + " is listed twice");
        else if (!entry.is_null())
          ports.push_back(entry);
      }
      out["ports"] = ports;
    }
  }
  if (auto it = resources.find("devices"); it != resources.end()) {
    const std::string at = child_path(path, "devices");
    if (!it->is_object()) {
      c.problem(at, "must be a table of device name = count, got " + c.describe(*it, at));
    } else {
      json devices = json::object();
      for (auto d = it->begin(); d != it->end(); ++d) {
        const std::string dat = child_path(at, d.key());
        static const std::regex name(R"([a-z0-9][a-z0-9._/-]{0,127})");
        if (!std::regex_match(d.key(), name)) {
          c.problem(dat, "is not a device name: 1 to 128 lowercase letters, digits, '.', '_', '/' and '-', like \"nvidia/gpu\"", true);
          continue;
        }
        if (auto n = as_integer(c, d.value(), dat, {1, 1024, "an integer from 1 to 1024", ""})) devices[d.key()] = *n;
      }
      out["devices"] = devices;
    }
  }
}

json check_restart(Checker &c, const json *restart, const std::string &path,
                   const std::string &job_type) {
  const bool batch = job_type == "batch";
  std::int64_t attempts = batch ? 3 : 2;
  std::int64_t interval = batch ? 24 * kHourMs : 30 * 60 * 1000;
  std::int64_t delay = 15 * 1000;
  double jitter = 0.25;
  std::string mode = "fail";
  if (restart) {
    Section s(c, *restart, path, kRestartKeys);
    auto given_attempts = integer(s, "attempts", {0, 1000, "an integer from 0 to 1000", ""});
    auto given_interval = duration(s, "interval", {1000, kMaxDurationMs});
    auto given_delay = duration(s, "delay", {0, 24 * kHourMs});
    attempts = given_attempts.value_or(attempts);
    interval = given_interval.value_or(interval);
    delay = given_delay.value_or(delay);
    // Compare the three only when none of them was wrong already.
    const bool comparable = (given_attempts || !s.get("attempts")) &&
                            (given_interval || !s.get("interval")) &&
                            (given_delay || !s.get("delay"));
    if (const json *j = s.get("jitter")) {
      const std::string at = s.key("jitter");
      const std::string what = "a fraction from 0 to 1 (0.25 adds up to 25% to each delay)";
      if (!j->is_number() || c.is_date(at))
        c.problem(at, "must be " + what + ", got " + c.describe(*j, at));
      else if (double d = j->get<double>(); !(d >= 0 && d <= 1))  // NaN fails too
        c.problem(at, "must be " + what + ", got " + number_text(*j));
      else
        jitter = d;
    }
    mode = choice(s, "mode", kRestartModes).value_or(mode);
    if (comparable && attempts > 0 && attempts * delay > interval)
      c.problem(path, "attempts x delay (" + std::to_string(attempts) + " x " +
                          format_duration_ms(delay) + " = " + format_duration_ms(attempts * delay) +
                          ") is longer than interval (" + format_duration_ms(interval) +
                          "), so a task could never use all its attempts; lower attempts or "
                          "delay, or raise interval");
  }
  return {{"attempts", attempts},
          {"interval_ms", interval},
          {"delay_ms", delay},
          {"jitter", jitter},
          {"mode", mode}};
}

json check_env(Checker &c, const json *env, const std::string &path) {
  json out = json::object();
  if (!env) return out;
  if (env->size() > kJobSpecMaxEnv) {
    c.problem(path, "has " + std::to_string(env->size()) + " variables; at most " +
                        std::to_string(kJobSpecMaxEnv) + " are allowed");
    return out;
  }
  for (auto it = env->begin(); it != env->end(); ++it) {
    const std::string at = child_path(path, it.key());
    if (!check_string(c, at, it.key())) continue;
    if (!is_env_name(it.key())) {
      c.problem(at,
                "is not a variable name: use letters, digits and '_', not starting with a digit",
                true);
      continue;
    }
    if (it.value().is_string() && !c.is_date(at)) {
      auto v = as_text(c, it.value(), at, "a string", true);
      if (v) out[it.key()] = *v;
    } else {
      c.problem(at, "must be a string (quote numbers and booleans: " + it.key() +
                        " = \"1\"), got " + c.describe(it.value(), at));
    }
  }
  return out;
}

json check_resources(Checker &c, const json *resources, const std::string &path,
                     const std::string &network) {
  std::int64_t cpu = 100, memory = 64, disk = 0, pids = 1024;
  std::optional<std::int64_t> memory_max;
  if (resources) {
    Section s(c, *resources, path, kResourceKeys);
    constexpr std::int64_t kMaxMiB = 16LL << 20;  // 16 TiB
    cpu = integer(s, "cpu", {1, 1000000, "a positive integer (MHz)", " (MHz)"}).value_or(cpu);
    auto given_memory = integer(s, "memory", {1, kMaxMiB, "a positive integer (MiB)", " (MiB)"});
    memory = given_memory.value_or(memory);
    memory_max = integer(s, "memory_max", {1, kMaxMiB, "a positive integer (MiB)", " (MiB)"});
    if (memory_max && *memory_max < memory)
      c.problem(s.key("memory_max"), "must be at least memory (" + std::to_string(memory) +
                                         " MiB), got " + std::to_string(*memory_max));
    disk = integer(s, "disk", {0, 1LL << 30, "zero or a positive integer (MiB)", " (MiB)"})
               .value_or(disk);
    pids = integer(s, "pids", {1, 4194304, "a positive integer (processes and threads)", ""})
               .value_or(pids);
  }
  json out = {{"cpu", cpu},
              {"memory", memory},
              {"memory_max", memory_max.value_or(memory)},
              {"disk", disk},
              {"pids", pids}};
  if (resources) check_resource_placement(c, *resources, path, network, out);
  return out;
}

json check_logs(Checker &c, const json *logs, const std::string &path) {
  std::int64_t max_files = 5, max_file_size = 10;
  if (logs) {
    Section s(c, *logs, path, kLogKeys);
    max_files =
        integer(s, "max_files", {1, 100, "an integer from 1 to 100", ""}).value_or(max_files);
    max_file_size =
        integer(s, "max_file_size", {1, 1024, "an integer from 1 to 1024 (MiB)", " (MiB)"})
            .value_or(max_file_size);
  }
  return {{"max_files", max_files}, {"max_file_size", max_file_size}};
}

// A capability as people write it: "NET_ADMIN", "CAP_NET_ADMIN", "net_admin",
// or "ALL". Only the spelling is checked here; the security plugin knows
// which capabilities exist (libcap) and what the host allows.
bool is_capability_spelling(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
  });
}

// [task.security]: written only when the task has the table, so a job
// without one keeps the canonical form it always had. no_new_privileges is
// null when left to the profile.
json check_security(Checker &c, const json &security, const std::string &path) {
  Section s(c, security, path, kSecurityKeys);
  json out = json::object();
  std::string profile;
  if (auto p = text(s, "profile", "a profile name like \"default\" or \"restricted\"")) {
    if (!is_valid_name(*p))
      c.problem(s.key("profile"), quote_value(*p) + " is not a profile name: " + kNameRule);
    else
      profile = *p;
  }
  out["profile"] = profile;
  for (const char *list : {"cap_add", "cap_drop"}) {
    auto caps = text_list(s, list, "a capability name like \"NET_ADMIN\"", "capability names", 64,
                          [&](const std::string &at, const std::string &cap) {
                            if (is_capability_spelling(cap)) return true;
                            c.problem(at, quote_value(cap) +
                                              " is not a capability name: write it like "
                                              "\"NET_ADMIN\" or \"CAP_NET_ADMIN\", or \"ALL\"");
                            return false;
                          });
    out[list] = caps.value_or(std::vector<std::string>{});
  }
  std::string user;
  if (auto u = text(s, "user", "a numeric user like \"65534:65534\"", Presence::optional,
                    Empty::allowed)) {
    std::size_t colon = u->find(':');
    auto numeric = [](std::string_view part) {
      return !part.empty() && part.size() <= 10 &&
             std::all_of(part.begin(), part.end(), is_digit) &&
             std::stoull(std::string(part)) <= 4294967294ULL;
    };
    bool ok = u->empty() ||
              (colon == std::string::npos ? numeric(*u)
                                          : numeric(std::string_view(*u).substr(0, colon)) &&
                                                numeric(std::string_view(*u).substr(colon + 1)));
    if (!ok)
      c.problem(s.key("user"), quote_value(*u) +
                                   " is not a numeric user: write uid[:gid] with numbers, like "
                                   "\"65534:65534\" (the security plugin cannot look names up "
                                   "in the image)");
    else
      user = *u;
  }
  out["user"] = user;
  out["read_only_rootfs"] = boolean(s, "read_only_rootfs").value_or(false);
  auto nnp = boolean(s, "no_new_privileges", true);
  out["no_new_privileges"] = nnp ? json(*nnp) : json(nullptr);
  return out;
}

// The task's named port mappings ([task.resources] ports tables): name ->
// the port its services are reached at (the container port `to`, which is
// the host port itself for a host-network task).
using PortNames = std::map<std::string, std::int64_t>;

PortNames port_names(const json &resources) {
  PortNames out;
  for (const auto &p : resources.value("ports", json::array()))
    if (p.is_object()) out[p.value("name", "")] = p.value("to", 0);
  return out;
}

// A service's or check's port: a container port number, or the name of
// one of the task's port mappings, resolved to its container port.
std::optional<std::int64_t> check_port_or_name(Section &s, const PortNames &names) {
  const json *v = s.get("port");
  if (!v) return std::nullopt;
  const std::string at = s.key("port");
  if (v->is_string() && !s.c.is_date(at)) {
    const std::string name = v->get<std::string>();
    if (auto it = names.find(name); it != names.end()) return it->second;
    std::string known;
    for (const auto &[n, port] : names) known += (known.empty() ? "" : ", ") + quote_value(n);
    s.c.problem(at, quote_value(name) + " is not a port mapping of this task; " +
                        (known.empty() ? std::string("it has no named mappings ([task.resources] "
                                                     "ports = [{ name = \"http\", host = 8080, "
                                                     "to = 80 }])")
                                       : "its named mappings are " + known) +
                        ", or give the container port number, like 8080");
    return 0;
  }
  return as_integer(s.c, *v, at,
                    {1, 65535, "a port number from 1 to 65535 or a port mapping name", ""})
      .value_or(0);
}

json check_service_port(Section &s, const PortNames &names) {
  if (!s.get("port")) {
    s.c.problem(s.key("port"), "is required: the container port the service listens on, like 8080");
    return 0;
  }
  return check_port_or_name(s, names).value_or(0);
}

json check_service_check(Checker &c, const json &check, const std::string &path,
                         const PortNames &names) {
  Section s(c, check, path, kCheckKeys);
  json out = json::object();
  const auto type = choice(s, "type", kCheckTypes);
  if (!s.get("type")) c.problem(s.key("type"), "is required: " + one_of_list(kCheckTypes));
  out["type"] = type.value_or("tcp");
  const auto interval = duration(s, "interval", {100, kHourMs});
  const auto timeout = duration(s, "timeout", {10, kHourMs});
  out["interval_ms"] = interval.value_or(10000);
  out["timeout_ms"] = timeout.value_or(2000);
  if (out["timeout_ms"].get<std::int64_t>() > out["interval_ms"].get<std::int64_t>())
    c.problem(s.get("timeout") ? s.key("timeout") : path,
              "timeout (" + format_duration_ms(out["timeout_ms"].get<std::int64_t>()) +
                  ") is longer than interval (" +
                  format_duration_ms(out["interval_ms"].get<std::int64_t>()) +
                  "); a check must end before the next");
  out["success_before_passing"] =
      integer(s, "success_before_passing", {1, 100, "an integer from 1 to 100", ""}).value_or(1);
  out["failures_before_critical"] =
      integer(s, "failures_before_critical", {1, 100, "an integer from 1 to 100", ""}).value_or(1);
  if (out["type"] == "http") {
    std::string p = "/";
    if (auto given = text(s, "path", "an HTTP path like \"/health\"")) {
      if (given->front() != '/')
        c.problem(s.key("path"),
                  "must start with '/', like \"/health\", got " + quote_value(*given));
      else
        p = *given;
    }
    out["path"] = p;
    if (auto st = integer(s, "expect_status", {100, 599, "an HTTP status from 100 to 599", ""}))
      out["expect_status"] = *st;  // absent: any 2xx
  } else {
    for (const char *k : {"path", "expect_status"})
      if (s.get(k)) c.problem(s.key(k), "is only used with type = \"http\"");
  }
  if (out["type"] == "exec") {
    // Run in the task's container through the runtime (ABI 1.3 exec),
    // with the container's environment and user; exit code 0 passes.
    auto command =
        text(s, "command",
             "the program an exec check runs in the task's container, like \"test\" or "
             "\"/bin/check\" (its arguments go in args)",
             Presence::required);
    out["command"] = command.value_or("");
    auto args = text_list(s, "args", "a string", "strings", 256,
                          [](const std::string &, const std::string &) { return true; });
    out["args"] = args.value_or(std::vector<std::string>{});
    if (s.get("port"))
      c.problem(s.key("port"), "is not used with type = \"exec\": the command runs inside the "
                               "container");
    if (s.get("grpc_service")) c.problem(s.key("grpc_service"), "is only used with type = \"grpc\"");
    for (const char *k : kCheckTlsKeys)
      if (s.get(k)) c.problem(s.key(k), "is only used with type = \"http\" or \"grpc\"");
    return out;
  }
  for (const char *k : {"command", "args"})
    if (s.get(k)) c.problem(s.key(k), "is only used with type = \"exec\"");
  if (out["type"] == "grpc") {
    // grpc.health.v1.Health/Check about one service, or without it about
    // the whole server.
    auto svc = text(s, "grpc_service", "a gRPC service name like \"helloworld.Greeter\"");
    if (svc && (svc->size() > 256 || svc->find_first_of(" \t\r\n\"") != std::string::npos)) {
      c.problem(s.key("grpc_service"),
                quote_value(*svc) +
                    " is not a gRPC service name: at most 256 characters, no spaces or quotes");
      svc.reset();
    }
    if (svc) out["grpc_service"] = *svc;  // absent: the whole server
  } else if (s.get("grpc_service")) {
    c.problem(s.key("grpc_service"), "is only used with type = \"grpc\"");
  }
  if (out["type"] == "tcp") {
    for (const char *k : kCheckTlsKeys)
      if (s.get(k)) c.problem(s.key(k), "is only used with type = \"http\" or \"grpc\"");
  } else {
    // https, or gRPC over TLS: the server's certificate is verified
    // against the discovery plugin's check_ca_file (or the system's CA
    // bundle) and against tls_server_name, else the address checked.
    const auto tls = boolean(s, "tls");
    const auto skip = boolean(s, "tls_skip_verify");
    auto name = text(s, "tls_server_name", "a host name like \"api.internal\"");
    if (name && (name->size() > 253 ||
                 name->find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                         "0123456789.-") != std::string::npos ||
                 name->front() == '.' || name->front() == '-')) {
      c.problem(s.key("tls_server_name"),
                quote_value(*name) + " is not a host name: letters, digits, '.' and '-', at most "
                                     "253 characters");
      name.reset();
    }
    if (tls.value_or(false)) {
      out["tls"] = true;
      if (skip) out["tls_skip_verify"] = *skip;
      if (name) out["tls_server_name"] = *name;
    } else {
      for (const char *k : {"tls_skip_verify", "tls_server_name"})
        if (s.get(k)) c.problem(s.key(k), "needs tls = true");
    }
  }
  if (auto port = check_port_or_name(s, names)) out["port"] = *port;
  return out;
}

json check_service(Checker &c, const json &service, const std::string &path,
                   const PortNames &names) {
  Section s(c, service, path, kServiceKeys);
  json out = json::object();
  auto name = text(s, "name", "a service name like \"web\"", Presence::required);
  if (name && !is_valid_name(*name)) {
    c.problem(s.key("name"), quote_value(*name) +
                                 " is not a valid service name (it becomes a DNS "
                                 "label): " +
                                 kNameRule);
    name.reset();
  }
  out["name"] = name.value_or("");
  out["port"] = check_service_port(s, names);
  std::set<std::string> seen;
  auto tags =
      text_list(s, "tags", "a tag", "tags", 64, [&](const std::string &at, const std::string &t) {
        if (!is_valid_name(t)) {
          c.problem(at,
                    quote_value(t) + " is not a valid tag (it becomes a DNS label): " + kNameRule);
          return false;
        }
        if (!seen.insert(t).second) {
          c.problem(at, quote_value(t) + " is listed twice");
          return false;
        }
        return true;
      });
  out["tags"] = tags.value_or(std::vector<std::string>{});
  // As Nomad's check_restart: the task is restarted (by its [restart]
  // policy) once a check fails `limit` times in a row, not counting runs
  // within `grace` of the task's start.
  if (const json *cr = sub_object(s, "check_restart", "[task.service.check_restart]")) {
    Section r(c, *cr, s.key("check_restart"), kCheckRestartKeys);
    out["check_restart"] = {
        {"limit", integer(r, "limit", {1, 100, "an integer from 1 to 100", ""}).value_or(3)},
        {"grace_ms", duration(r, "grace", {0, kHourMs}).value_or(1000)}};
  }
  out["check"] = table_list(
      c, s.get("check"), s.key("check"), "task.service.check", 16,
      [&](const json &ch, const std::string &at) { return check_service_check(c, ch, at, names); });
  return out;
}

json check_task(Checker &c, const json &task, const std::string &path) {
  Section s(c, task, path, kTaskKeys);
  json out = json::object();

  auto name = text(s, "name", "a task name like \"server\"", Presence::required);
  if (name && !is_valid_name(*name)) {
    c.problem(s.key("name"), quote_value(*name) + " is not a valid name: " + kNameRule);
    name.reset();
  }
  out["name"] = name.value_or("");

  const std::string image_hint =
      "write name[:tag] or name@sha256:<64 hex digits>, like \"busybox:1.36\"";
  auto image = text(s, "image", "an image reference like \"busybox:1.36\"", Presence::required);
  if (image) {
    std::string problem = image_problem(*image);
    if (!problem.empty())
      c.problem(s.key("image"),
                quote_value(*image) + " is not an image reference: " + problem + "; " + image_hint);
    else if (!has_tag_or_digest(*image))
      image = *image + ":latest";  // the default every registry applies, made explicit
  }
  out["image"] = image.value_or("");
  // Only when given: the default ("if_not_present") keeps canonical jobs as
  // they were before the key existed.
  if (auto pull = choice(s, "image_pull", kImagePullPolicies)) out["image_pull"] = *pull;

  // Optional: without it the image's Entrypoint and Cmd run, as in every
  // container tool (the runtime decides, docs/abi-json.md).
  out["command"] = text(s, "command",
                        "the program to run, like \"/bin/httpd\" (or leave command out to run "
                        "the image's Entrypoint and Cmd)",
                        Presence::optional)
                       .value_or("");

  auto args = text_list(s, "args", "a string", "strings", 1024,
                        [](const std::string &, const std::string &) { return true; });
  out["args"] = args.value_or(std::vector<std::string>{});

  // "" (the default) keeps the image's working directory.
  std::string workdir;
  if (auto w = text(s, "workdir", "an absolute path like \"/srv\"", Presence::optional,
                    Empty::allowed)) {
    if (!w->empty() && w->front() != '/')
      c.problem(s.key("workdir"), "must be an absolute path like \"/srv\", got " + quote_value(*w));
    else
      workdir = *w;
  }
  out["workdir"] = workdir;

  // "" (the default) keeps the image's user.
  std::string user;
  if (auto u = text(s, "user", "a user like \"1000:1000\" or \"nobody\"", Presence::optional,
                    Empty::allowed)) {
    std::size_t colon = u->find(':');
    bool ok = u->empty() || (colon == std::string::npos
                                 ? is_user_part(*u)
                                 : is_user_part(std::string_view(*u).substr(0, colon)) &&
                                       is_user_part(std::string_view(*u).substr(colon + 1)));
    if (!ok)
      c.problem(s.key("user"), quote_value(*u) +
                                   " is not a user: write uid[:gid] with numbers or names, like "
                                   "\"1000:1000\" or \"nobody\"");
    else
      user = *u;
  }
  out["user"] = user;

  out["kill_timeout_ms"] = duration(s, "kill_timeout", {0, kHourMs}).value_or(5000);

  std::string signal = "SIGTERM";
  if (const json *v = s.get("kill_signal")) {
    if (v->is_string() && !c.is_date(s.key("kill_signal")) &&
        std::find(std::begin(kSignals), std::end(kSignals), "SIG" + v->get<std::string>()) !=
            std::end(kSignals))
      c.problem(s.key("kill_signal"),
                "write signal names with the SIG prefix: \"SIG" + v->get<std::string>() + "\"");
    else
      signal = choice(s, "kill_signal", kSignals).value_or(signal);
  }
  out["kill_signal"] = signal;

  out["network"] = choice(s, "network", kNetworkModes).value_or("bridge");
  out["env"] = check_env(c, sub_object(s, "env", "[task.env]"), s.key("env"));
  out["resources"] = check_resources(c, sub_object(s, "resources", "[task.resources]"),
                                     s.key("resources"), out["network"].get<std::string>());
  out["logs"] = check_logs(c, sub_object(s, "logs", "[task.logs]"), s.key("logs"));
  if (const json *sec = sub_object(s, "security", "[task.security]"))
    out["security"] = check_security(c, *sec, s.key("security"));
  const PortNames names = port_names(out["resources"]);
  if (s.get("service"))
    out["service"] = table_list(
        c, s.get("service"), s.key("service"), "task.service", 16,
        [&](const json &svc, const std::string &at) { return check_service(c, svc, at, names); });
  return out;
}

json check_job(Checker &c, const json &job) {
  Section s(c, job, "", kJobKeys);
  json out = json::object();

  auto name = text(s, "name", "a job name like \"web\"", Presence::required);
  if (name && !is_valid_name(*name)) {
    c.problem(s.key("name"), quote_value(*name) + " is not a valid name: " + kNameRule);
    name.reset();
  }
  out["name"] = name.value_or("");

  const std::string type = choice(s, "type", kJobTypes).value_or("service");
  out["type"] = type;

  std::int64_t count = 1;
  if (type == "system") {
    if (const json *v = s.get("count"); v && !(v->is_number_integer() && *v == 1))
      c.problem(s.key("count"),
                "system jobs run one allocation on every node: leave count out or set it to 1, "
                "got " +
                    c.describe(*v, s.key("count")));
  } else {
    count = integer(s, "count", {0, 100000, "an integer from 0 to 100000", ""}).value_or(count);
  }
  out["count"] = count;

  std::set<std::string> seen_dcs;
  auto dcs =
      text_list(s, "datacenters", "a datacenter name", "datacenter names", 100,
                [&](const std::string &at, const std::string &dc) {
                  if (!is_valid_name(dc)) {
                    c.problem(at, quote_value(dc) + " is not a datacenter name: " + kNameRule);
                    return false;
                  }
                  if (!seen_dcs.insert(dc).second) {
                    c.problem(at, quote_value(dc) + " is listed twice");
                    return false;
                  }
                  return true;
                });
  if (dcs && dcs->empty()) {
    c.problem(s.key("datacenters"), "must list at least one datacenter, like [\"dc1\"]");
    dcs.reset();
  }
  out["datacenters"] = dcs.value_or(std::vector<std::string>{"dc1"});

  out["priority"] = integer(s, "priority", {1, 100, "an integer from 1 to 100", ""}).value_or(50);

  out["restart"] = check_restart(c, sub_object(s, "restart", "[restart]"), s.key("restart"), type);
  check_job_placement(s, type, out);

  json tasks = json::array();
  const json *t = s.get("task");
  const std::string tpath = s.key("task");
  const std::string tasks_are =
      c.form() == Form::toml ? "an array of tables, written [[task]]" : "an array of objects";
  if (!t) {
    c.problem(tpath, "is required: a job needs at least one task ([[task]] in TOML)");
  } else if (!t->is_array()) {
    c.problem(tpath, "must be " + tasks_are + ", got " + c.describe(*t, tpath));
  } else if (t->empty()) {
    c.problem(tpath, "must have at least one task");
  } else if (t->size() > kJobSpecMaxTasks) {
    c.problem(tpath, "has " + std::to_string(t->size()) + " tasks; a job can have at most " +
                         std::to_string(kJobSpecMaxTasks));
  } else {
    std::map<std::string, std::size_t> names;
    std::map<std::string, std::string> services;  // name -> where first given
    for (std::size_t i = 0; i < t->size(); ++i) {
      const std::string at = index_path(tpath, i);
      const json &task = (*t)[i];
      if (!task.is_object()) {
        std::string one = c.form() == Form::toml ? "a table ([[task]])" : "an object";
        c.problem(at, "must be " + one + ", got " + c.describe(task, at));
        continue;
      }
      json checked = check_task(c, task, at);
      const std::string &tname = checked["name"].get_ref<const std::string &>();
      if (!tname.empty()) {
        auto [it, fresh] = names.emplace(tname, i);
        if (!fresh)
          c.problem(child_path(at, "name"), quote_value(tname) + " is already the name of task[" +
                                                std::to_string(it->second) +
                                                "]; task names must be unique within a job");
      }
      if (checked.contains("service")) {
        for (std::size_t k = 0; k < checked["service"].size(); ++k) {
          const std::string sname = checked["service"][k].value("name", "");
          if (sname.empty()) continue;
          auto [it, fresh] = services.emplace(sname, index_path(child_path(at, "service"), k));
          if (!fresh)
            c.problem(child_path(index_path(child_path(at, "service"), k), "name"),
                      quote_value(sname) + " is already the name of " + it->second +
                          "; service names must be unique within a job");
        }
      }
      tasks.push_back(std::move(checked));
    }
  }
  out["task"] = std::move(tasks);
  return out;
}

std::string too_big_message(std::size_t bytes) {
  return "is " + std::to_string(bytes) + " bytes; a job spec can be at most 1 MiB (" +
         std::to_string(kJobSpecMaxBytes) + " bytes)";
}

[[noreturn]] void throw_one(std::string_view source, std::string message, int line = 0,
                            int column = 0) {
  JobSpecProblem p;
  p.line = line;
  p.column = column;
  p.message = std::move(message);
  throw JobSpecInvalid(std::string(source), {std::move(p)});
}

}  // namespace

json parse_jobspec(std::string_view toml_text, std::string_view source) {
  if (toml_text.size() > kJobSpecMaxBytes) throw_one(source, too_big_message(toml_text.size()));
  if (int line = toml_nesting_exceeds(toml_text, kMaxTomlDepth))
    throw_one(
        source,
        "tables and arrays are nested more than " + std::to_string(kMaxTomlDepth) + " levels deep",
        line);
  toml::table root;
  try {
    root = toml::parse(toml_text, source);
  } catch (const toml::parse_error &e) {
    throw_one(source,
              "TOML syntax error at column " + std::to_string(e.source().begin.column) + ": " +
                  std::string(e.description()),
              static_cast<int>(e.source().begin.line), static_cast<int>(e.source().begin.column));
  }
  TomlOrigin origin;
  json job = toml_to_json(root, "", origin);
  Checker c(Form::toml, &origin);
  json out = check_job(c, job);
  if (!c.ok()) throw JobSpecInvalid(std::string(source), c.take());
  return out;
}

json validate_job_json(const json &job, std::string_view source) {
  if (json_larger_than(job, kJobSpecMaxBytes))
    throw_one(source, "is larger than 1 MiB as JSON; a job spec can be at most 1 MiB (" +
                          std::to_string(kJobSpecMaxBytes) + " bytes)");
  Checker c(Form::json, nullptr);
  if (!job.is_object())
    throw_one(source, "a job must be a JSON object, got " + c.describe(job, ""));
  json out = check_job(c, job);
  if (!c.ok()) throw JobSpecInvalid(std::string(source), c.take());
  return out;
}

}  // namespace flotilla
