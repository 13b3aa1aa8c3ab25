// Custom profiles from files: the Docker/Moby seccomp JSON format and our own
// TOML form (README.md, "Profile files"). Both become a Profile; every
// problem names the file, the rule (and its TOML line) and the name.
#include <toml++/toml.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <span>
#include <sstream>

#include "profile.h"

namespace flotilla::security {

using json = nlohmann::json;

namespace {

// ---- Docker / Moby JSON ---------------------------------------------------

class DockerReader {
 public:
  DockerReader(std::string source, std::vector<std::string> &problems)
      : source_(std::move(source)), problems_(problems) {}

  [[noreturn]] void fail(const std::string &at, const std::string &what) const {
    throw ProfileError("profile " + source_ + ": " + at + ": " + what);
  }
  // A problem that does not stop the reading: every one is reported.
  void note(const std::string &at, const std::string &what) {
    problems_.push_back("profile " + source_ + ": " + at + ": " + what);
  }
  // Runs one part of the profile; its problem is noted and the rest read on.
  template <class F>
  void attempt(F &&f) {
    try {
      f();
    } catch (const ProfileError &e) {
      problems_.push_back(e.what());
    }
  }

  void only_keys(const json &obj, const std::string &at, std::initializer_list<const char *> keys) {
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      bool ok = false;
      for (const char *k : keys) ok = ok || it.key() == k;
      if (!ok) {
        std::string list;
        for (const char *k : keys) list += (list.empty() ? "" : ", ") + std::string(k);
        note(at.empty() ? it.key() : at + "." + it.key(), "unknown key; accepted: " + list);
      }
    }
  }

  std::string text(const json &v, const std::string &at) const {
    if (!v.is_string()) fail(at, "must be a string, got " + std::string(v.type_name()));
    return v.get<std::string>();
  }

  std::vector<std::string> texts(const json &v, const std::string &at) const {
    if (!v.is_array()) fail(at, "must be an array of strings, got " + std::string(v.type_name()));
    std::vector<std::string> out;
    for (size_t i = 0; i < v.size(); ++i)
      out.push_back(text(v[i], at + "[" + std::to_string(i) + "]"));
    return out;
  }

  uint64_t unsigned_number(const json &v, const std::string &at, uint64_t max) const {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      fail(at, "must be a non-negative integer, got " + v.dump());
    uint64_t n = v.get<uint64_t>();
    if (n > max) fail(at, "must be at most " + std::to_string(max) + ", got " + std::to_string(n));
    return n;
  }

  RuleFilter filter(const json &v, const std::string &at) {
    RuleFilter f;
    if (!v.is_object()) fail(at, "must be an object");
    only_keys(v, at, {"caps", "arches", "minKernel"});
    attempt([&] {
      if (v.contains("caps")) f.caps = texts(v["caps"], at + ".caps");
    });
    attempt([&] {
      if (v.contains("arches")) f.arches = texts(v["arches"], at + ".arches");
    });
    attempt([&] {
      if (v.contains("minKernel") && !v["minKernel"].is_null())
        f.min_kernel = text(v["minKernel"], at + ".minKernel");
    });
    std::vector<std::string> known;
    for (size_t i = 0; i < f.caps.size(); ++i) {
      auto c = canonical_cap(f.caps[i]);
      if (!c)
        note(at + ".caps[" + std::to_string(i) + "]",
             "unknown capability \"" + f.caps[i] + "\" (libcap and this kernel do not know it)");
      else
        known.push_back(*c);
    }
    f.caps = known;
    return f;
  }

  // Reads the whole profile, noting every problem; throws only when the
  // text is not a JSON object at all.
  Profile read(std::string_view text_in, const std::string &name, const HostInfo &host) {
    json doc;
    try {
      doc = json::parse(text_in);
    } catch (const json::parse_error &e) {
      size_t upto = std::min(text_in.size(), e.byte > 0 ? e.byte - 1 : 0);
      int line = 1 + static_cast<int>(std::count(text_in.begin(), text_in.begin() + upto, '\n'));
      std::string what = e.what();
      if (size_t cut = what.find("] "); cut != std::string::npos) what = what.substr(cut + 2);
      if (what.rfind("parse error", 0) == 0)  // "parse error at line 2, column 16: <why>"
        if (size_t cut = what.find(": "); cut != std::string::npos) what = what.substr(cut + 2);
      throw ProfileError("profile " + source_ + " line " + std::to_string(line) +
                         ": not valid JSON: " + what);
    }
    if (!doc.is_object()) fail("(top)", "a Docker seccomp profile is a JSON object");
    only_keys(doc, "",
              {"defaultAction", "defaultErrnoRet", "archMap", "architectures", "syscalls", "flags",
               "listenerPath", "listenerMetadata"});
    if (doc.contains("listenerPath") && !doc["listenerPath"].is_null() && doc["listenerPath"] != "")
      note("listenerPath", "seccomp notification listeners are not supported");
    Profile p;
    p.name = name;
    p.source = source_;
    p.capabilities = docker_default_caps();
    p.no_new_privileges = true;
    Profile def = builtin_profile("default");
    p.masked_paths = def.masked_paths;
    p.readonly_paths = def.readonly_paths;
    attempt([&] {
      if (!doc.contains("defaultAction")) fail("defaultAction", "is required");
      p.default_action = text(doc["defaultAction"], "defaultAction");
    });
    p.default_errno.reset();
    attempt([&] {
      if (doc.contains("defaultErrnoRet"))
        p.default_errno =
            static_cast<uint32_t>(unsigned_number(doc["defaultErrnoRet"], "defaultErrnoRet", 4095));
    });
    if (doc.contains("archMap") && !doc["archMap"].is_null()) {
      const json &m = doc["archMap"];
      if (!m.is_array()) note("archMap", "must be an array");
      for (size_t i = 0; m.is_array() && i < m.size(); ++i)
        attempt([&] { arch_entry(m[i], i, host, p); });
    }
    attempt([&] {
      if (doc.contains("architectures") && !doc["architectures"].is_null())
        p.architectures = texts(doc["architectures"], "architectures");
    });
    if (doc.contains("syscalls") && !doc["syscalls"].is_null()) {
      const json &calls = doc["syscalls"];
      if (!calls.is_array()) note("syscalls", "must be an array");
      for (size_t i = 0; calls.is_array() && i < calls.size(); ++i)
        attempt([&] { p.rules.push_back(rule(calls[i], i)); });
    }
    return p;
  }

  // One archMap entry. Only the entry for this machine's architecture
  // matters (it gives the filter's architectures); the others are for
  // machines this host is not, so they are not checked against this
  // libseccomp, which may not know them (SCMP_ARCH_LOONGARCH64 in 2.5).
  void arch_entry(const json &e, size_t i, const HostInfo &host, Profile &p) {
    std::string at = "archMap[" + std::to_string(i) + "]";
    if (!e.is_object()) fail(at, "must be an object");
    only_keys(e, at, {"architecture", "subArchitectures"});
    ArchMapEntry entry;
    if (!e.contains("architecture")) fail(at + ".architecture", "is required");
    entry.arch = text(e["architecture"], at + ".architecture");
    if (e.contains("subArchitectures") && !e["subArchitectures"].is_null())
      entry.sub_arches = texts(e["subArchitectures"], at + ".subArchitectures");
    // Another machine's entry that this libseccomp cannot name: it cannot
    // apply here, so it is left out rather than refused.
    if (entry.arch != host.scmp_arch &&
        (!arch_known(entry.arch) ||
         !std::all_of(entry.sub_arches.begin(), entry.sub_arches.end(), arch_known)))
      return;
    p.arch_map.push_back(entry);
  }

  SyscallRule rule(const json &c, size_t i) {
    std::string at = "syscalls[" + std::to_string(i) + "]";
    if (!c.is_object()) fail(at, "must be an object");
    only_keys(c, at,
              {"names", "name", "action", "errnoRet", "args", "comment", "includes", "excludes"});
    SyscallRule r;
    r.where = at;
    attempt([&] {
      if (c.contains("names")) r.names = texts(c["names"], at + ".names");
    });
    attempt([&] {
      if (c.contains("name")) r.names.push_back(text(c["name"], at + ".name"));
    });
    attempt([&] {
      if (!c.contains("action")) fail(at + ".action", "is required");
      r.action = text(c["action"], at + ".action");
    });
    attempt([&] {
      if (c.contains("errnoRet") && !c["errnoRet"].is_null())
        r.errno_ret = static_cast<uint32_t>(unsigned_number(c["errnoRet"], at + ".errnoRet", 4095));
    });
    if (c.contains("args") && !c["args"].is_null()) {
      const json &args = c["args"];
      if (!args.is_array()) note(at + ".args", "must be an array");
      for (size_t j = 0; args.is_array() && j < args.size(); ++j)
        attempt([&] { r.args.push_back(arg(args[j], at + ".args[" + std::to_string(j) + "]")); });
    }
    attempt([&] {
      if (c.contains("includes") && !c["includes"].is_null())
        r.includes = filter(c["includes"], at + ".includes");
    });
    attempt([&] {
      if (c.contains("excludes") && !c["excludes"].is_null())
        r.excludes = filter(c["excludes"], at + ".excludes");
    });
    if (!c.contains("names") && !c.contains("name"))
      fail(at, "has no syscall names (\"names\": [...])");
    return r;
  }

  ArgCondition arg(const json &a, const std::string &at) {
    if (!a.is_object()) fail(at, "must be an object");
    only_keys(a, at, {"index", "value", "valueTwo", "op"});
    ArgCondition out;
    attempt([&] {
      if (!a.contains("index")) fail(at + ".index", "is required");
      out.index = static_cast<unsigned>(unsigned_number(a["index"], at + ".index", 5));
    });
    attempt([&] {
      if (a.contains("value")) out.value = unsigned_number(a["value"], at + ".value", UINT64_MAX);
    });
    attempt([&] {
      if (a.contains("valueTwo"))
        out.value_two = unsigned_number(a["valueTwo"], at + ".valueTwo", UINT64_MAX);
    });
    attempt([&] {
      if (!a.contains("op")) fail(at + ".op", "is required");
      out.op = text(a["op"], at + ".op");
    });
    return out;
  }

 private:
  std::string source_;
  std::vector<std::string> &problems_;
};

bool permissive(const std::string &action) {
  return action == "SCMP_ACT_ALLOW" || action == "SCMP_ACT_LOG";
}

// Docker and runc leave out the syscall names their libseccomp does not
// know (syscalls newer than the library), and so does a Docker-format
// profile here: a rule that allows one falls back to the default action,
// which is stricter. Leaving out a rule that denies one in a profile that
// allows by default would open it instead, so that stays an error.
void skip_unknown_syscalls(Profile &p, std::vector<std::string> &problems) {
  std::vector<std::string> skipped;
  std::vector<SyscallRule> rules;
  for (SyscallRule &r : p.rules) {
    std::vector<std::string> keep;
    for (size_t i = 0; i < r.names.size(); ++i) {
      const std::string &n = r.names[i];
      if (syscall_known(n)) {
        keep.push_back(n);
      } else if (permissive(p.default_action) && !permissive(r.action)) {
        problems.push_back("profile " + p.source + ": " + r.where + ".names[" + std::to_string(i) +
                           "]: unknown syscall \"" + n + "\" (libseccomp " +
                           seccomp_version_text() +
                           " does not know it); leaving it out would allow it, since the "
                           "profile allows by default");
      } else if (std::find(skipped.begin(), skipped.end(), n) == skipped.end()) {
        skipped.push_back(n);
      }
    }
    // A rule whose every name was left out is left out whole.
    bool all_skipped = keep.empty() && !r.names.empty();
    r.names = std::move(keep);
    if (!all_skipped) rules.push_back(std::move(r));
  }
  p.rules = std::move(rules);
  if (skipped.empty()) return;
  std::string list;
  for (const auto &n : skipped) list += (list.empty() ? "" : ", ") + n;
  p.skipped = std::to_string(skipped.size()) + " syscall name" + (skipped.size() == 1 ? "" : "s") +
              " that libseccomp " + seccomp_version_text() +
              " does not know were left out of profile " + p.source +
              " (as Docker and runc do; they get the default action " + p.default_action +
              "): " + list;
}

// ---- TOML ----------------------------------------------------------------

const std::pair<const char *, const char *> kTomlActions[] = {
    {"allow", "SCMP_ACT_ALLOW"},
    {"errno", "SCMP_ACT_ERRNO"},
    {"kill_thread", "SCMP_ACT_KILL_THREAD"},
    {"kill_process", "SCMP_ACT_KILL_PROCESS"},
    {"trap", "SCMP_ACT_TRAP"},
    {"log", "SCMP_ACT_LOG"}};
const std::pair<const char *, const char *> kTomlOps[] = {{"eq", "SCMP_CMP_EQ"},
                                                          {"ne", "SCMP_CMP_NE"},
                                                          {"lt", "SCMP_CMP_LT"},
                                                          {"le", "SCMP_CMP_LE"},
                                                          {"gt", "SCMP_CMP_GT"},
                                                          {"ge", "SCMP_CMP_GE"},
                                                          {"masked_eq", "SCMP_CMP_MASKED_EQ"}};

class TomlReader {
 public:
  TomlReader(std::string source, std::vector<std::string> &problems)
      : source_(std::move(source)), problems_(problems) {}

  // Runs one part of the profile; its problem is noted and the rest read on.
  template <class F>
  void attempt(F &&f) {
    try {
      f();
    } catch (const ProfileError &e) {
      problems_.push_back(e.what());
    }
  }

  [[noreturn]] void fail(const toml::node *n, const std::string &at,
                         const std::string &what) const {
    std::string place = "profile " + source_;
    if (n && n->source().begin.line > 0) place += " line " + std::to_string(n->source().begin.line);
    throw ProfileError(place + ", " + at + ": " + what);
  }

  void only_keys(const toml::table &t, const std::string &at,
                 std::initializer_list<const char *> keys) {
    for (auto &&[k, v] : t) {
      bool ok = false;
      for (const char *key : keys) ok = ok || k.str() == key;
      if (!ok) {
        std::string list;
        for (const char *key : keys) list += (list.empty() ? "" : ", ") + std::string(key);
        attempt([&] {
          fail(&v, at.empty() ? std::string(k.str()) : at + "." + std::string(k.str()),
               "unknown key; accepted here: " + list);
        });
      }
    }
  }

  std::string text(const toml::node &n, const std::string &at) const {
    if (!n.is_string()) fail(&n, at, "must be a string");
    return n.as_string()->get();
  }

  std::vector<std::string> texts(const toml::node &n, const std::string &at) const {
    if (!n.is_array()) fail(&n, at, "must be an array of strings");
    std::vector<std::string> out;
    size_t i = 0;
    for (const toml::node &e : *n.as_array())
      out.push_back(text(e, at + "[" + std::to_string(i++) + "]"));
    return out;
  }

  int64_t integer(const toml::node &n, const std::string &at, int64_t min, int64_t max) const {
    if (!n.is_integer()) fail(&n, at, "must be an integer");
    int64_t v = n.as_integer()->get();
    if (v < min || v > max)
      fail(&n, at, "must be from " + std::to_string(min) + " to " + std::to_string(max));
    return v;
  }

  std::string mapped(const toml::node &n, const std::string &at,
                     std::span<const std::pair<const char *, const char *>> table) const {
    std::string v = text(n, at);
    std::string list;
    for (auto &[ours, oci] : table) {
      if (v == ours) return oci;
      list += (list.empty() ? "" : ", ") + std::string(ours);
    }
    fail(&n, at, "\"" + v + "\" is not one of " + list);
  }

  std::vector<std::string> caps(const toml::node &n, const std::string &at) const {
    std::vector<std::string> out = texts(n, at);
    for (size_t i = 0; i < out.size(); ++i) {
      auto c = canonical_cap(out[i]);
      if (!c)
        fail(n.as_array()->get(i), at + "[" + std::to_string(i) + "]",
             "unknown capability \"" + out[i] + "\" (libcap and this kernel do not know it)");
      out[i] = *c;
    }
    return out;
  }

  Profile read(std::string_view text_in, const std::string &name) {
    toml::table root;
    try {
      root = toml::parse(text_in, source_);
    } catch (const toml::parse_error &e) {
      throw ProfileError("profile " + source_ + " line " + std::to_string(e.source().begin.line) +
                         ": TOML syntax error at column " +
                         std::to_string(e.source().begin.column) + ": " +
                         std::string(e.description()));
    }
    only_keys(root, "",
              {"base", "default_action", "default_errno", "capabilities", "no_new_privileges",
               "masked_paths", "readonly_paths", "syscall"});
    Profile p;
    p = builtin_profile("default");
    p.rules.clear();  // without base, the allow-list is the file's own
    attempt([&] {
      if (auto *b = root.get("base")) {
        std::string base = text(*b, "base");
        if (base != "default" && base != "restricted")
          fail(b, "base",
               "\"" + base + "\" is not a profile to build on: use default or restricted");
        p = builtin_profile(base);
      }
    });
    p.name = name;
    p.source = source_;
    attempt([&] {
      if (auto *n = root.get("default_action")) {
        p.default_action = mapped(*n, "default_action", kTomlActions);
        if (p.default_action != "SCMP_ACT_ERRNO") p.default_errno.reset();
      }
    });
    attempt([&] {
      if (auto *n = root.get("default_errno"))
        p.default_errno = static_cast<uint32_t>(integer(*n, "default_errno", 0, 4095));
    });
    attempt([&] {
      if (auto *n = root.get("capabilities")) p.capabilities = caps(*n, "capabilities");
    });
    attempt([&] {
      if (auto *n = root.get("no_new_privileges")) {
        if (!n->is_boolean()) fail(n, "no_new_privileges", "must be true or false");
        p.no_new_privileges = n->as_boolean()->get();
      }
    });
    attempt([&] {
      if (auto *n = root.get("masked_paths")) p.masked_paths = texts(*n, "masked_paths");
    });
    attempt([&] {
      if (auto *n = root.get("readonly_paths")) p.readonly_paths = texts(*n, "readonly_paths");
    });
    std::vector<SyscallRule> own;
    if (auto *n = root.get("syscall")) {
      if (!n->is_array_of_tables())
        attempt([&] { fail(n, "syscall", "must be an array of tables ([[syscall]])"); });
      else {
        size_t i = 0;
        for (const toml::node &t : *n->as_array()) {
          attempt([&] { own.push_back(rule(*t.as_table(), i)); });
          ++i;
        }
      }
    }
    // A [[syscall]] rule replaces what the base said about its names.
    for (SyscallRule &base_rule : p.rules) {
      std::erase_if(base_rule.names, [&](const std::string &name) {
        return std::any_of(own.begin(), own.end(), [&](const SyscallRule &r) {
          return std::find(r.names.begin(), r.names.end(), name) != r.names.end();
        });
      });
    }
    std::erase_if(p.rules, [](const SyscallRule &r) { return r.names.empty(); });
    for (SyscallRule &r : own) p.rules.push_back(std::move(r));
    return p;
  }

  SyscallRule rule(const toml::table &t, size_t i) {
    std::string at = "syscall[" + std::to_string(i) + "]";
    only_keys(
        t, at,
        {"names", "action", "errno", "args", "if_caps", "unless_caps", "arches", "min_kernel"});
    SyscallRule r;
    auto *names = t.get("names");
    if (!names) fail(&t, at + ".names", "is required: the syscalls this rule is about");
    r.names = texts(*names, at + ".names");
    if (r.names.empty()) fail(names, at + ".names", "must name at least one syscall");
    // Unknown names stay errors in our own format (README, "Our TOML"): a
    // file written for this host, where an unknown name is a typo.
    for (size_t j = 0; j < r.names.size(); ++j)
      if (!syscall_known(r.names[j]))
        attempt([&] {
          fail(names->as_array()->get(j), at + ".names[" + std::to_string(j) + "]",
               "unknown syscall \"" + r.names[j] + "\" (libseccomp " + seccomp_version_text() +
                   " does not know it)");
        });
    r.where = at;
    r.action = "SCMP_ACT_ALLOW";
    if (auto *a = t.get("action")) r.action = mapped(*a, at + ".action", kTomlActions);
    if (auto *e = t.get("errno"))
      r.errno_ret = static_cast<uint32_t>(integer(*e, at + ".errno", 0, 4095));
    if (auto *c = t.get("if_caps")) r.includes.caps = caps(*c, at + ".if_caps");
    if (auto *c = t.get("unless_caps")) r.excludes.caps = caps(*c, at + ".unless_caps");
    if (auto *a = t.get("arches")) r.includes.arches = texts(*a, at + ".arches");
    if (auto *k = t.get("min_kernel")) r.includes.min_kernel = text(*k, at + ".min_kernel");
    if (auto *args = t.get("args")) {
      if (!args->is_array_of_tables())
        fail(args, at + ".args", "must be an array of tables ([[syscall.args]])");
      size_t j = 0;
      for (const toml::node &an : *args->as_array()) {
        const toml::table &a = *an.as_table();
        std::string aat = at + ".args[" + std::to_string(j++) + "]";
        only_keys(a, aat, {"index", "op", "value", "value_two"});
        ArgCondition c;
        auto *idx = a.get("index");
        if (!idx) fail(&a, aat + ".index", "is required");
        c.index = static_cast<unsigned>(integer(*idx, aat + ".index", 0, 5));
        auto *op = a.get("op");
        if (!op) fail(&a, aat + ".op", "is required");
        c.op = mapped(*op, aat + ".op", kTomlOps);
        if (auto *v = a.get("value"))
          c.value = static_cast<uint64_t>(integer(*v, aat + ".value", 0, INT64_MAX));
        if (auto *v = a.get("value_two"))
          c.value_two = static_cast<uint64_t>(integer(*v, aat + ".value_two", 0, INT64_MAX));
        r.args.push_back(c);
      }
    }
    return r;
  }

 private:
  std::string source_;
  std::vector<std::string> &problems_;
};

}  // namespace

Profile parse_docker_profile(std::string_view text, const std::string &source,
                             const std::string &name) {
  std::vector<std::string> problems;
  HostInfo host = HostInfo::current();
  Profile p = DockerReader(source, problems).read(text, name, host);
  skip_unknown_syscalls(p, problems);
  check_names(p, problems);
  if (!problems.empty()) throw ProfileError(join_lines(problems));
  compile_profile(p, host);
  return p;
}

Profile parse_toml_profile(std::string_view text, const std::string &source,
                           const std::string &name) {
  std::vector<std::string> problems;
  Profile p = TomlReader(source, problems).read(text, name);
  if (problems.empty()) check_names(p, problems);
  if (!problems.empty()) throw ProfileError(join_lines(problems));
  compile_profile(p, HostInfo::current());
  return p;
}

Profile load_profile_file(const std::string &path, const std::string &name) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ProfileError("profile " + path + ": cannot be read: " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  auto ends = [&](const char *ext) {
    std::string e(ext);
    return path.size() >= e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0;
  };
  if (ends(".json")) return parse_docker_profile(text, path, name);
  if (ends(".toml")) return parse_toml_profile(text, path, name);
  throw ProfileError("profile " + path +
                     ": cannot tell its format: name it *.json (Docker seccomp) or *.toml");
}

}  // namespace flotilla::security
