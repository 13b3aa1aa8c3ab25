#include "policy.h"

#include <algorithm>

namespace flotilla::security {

using json = nlohmann::json;

namespace {

std::string in_quotes(const std::string &s) {
  return "\"" + s + "\"";
}

std::string list_text(const std::vector<std::string> &v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + in_quotes(v[i]);
  return out + "]";
}

// Whether the uid part of a user is known and not 0.
bool known_non_root(const std::string &user) {
  std::string uid = user.substr(0, user.find(':'));
  if (uid.empty() ||
      !std::all_of(uid.begin(), uid.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  return std::stoull(uid) != 0;
}

}  // namespace

bool parse_policy(const json &cfg, HostPolicy &out, ConfigProblems &problems) {
  const size_t before = problems.size();
  auto fail = [&](const std::string &k, const std::string &m) { problems.emplace_back(k, m); };
  for (auto it = cfg.begin(); it != cfg.end(); ++it) {
    static const char *const known[] = {"default_profile",  "min_profile",
                                        "allowed_cap_add",  "allow_root",
                                        "allow_unconfined", "allow_privilege_escalation",
                                        "profiles"};
    if (std::find(std::begin(known), std::end(known), it.key()) == std::end(known))
      fail(it.key(),
           "unknown key; accepted: default_profile, min_profile, allowed_cap_add, "
           "allow_root, allow_unconfined, allow_privilege_escalation, profiles");
  }
  for (const char *b : {"allow_root", "allow_unconfined", "allow_privilege_escalation"}) {
    if (!cfg.contains(b)) continue;
    if (!cfg[b].is_boolean()) {
      fail(b, "must be true or false");
      continue;
    }
    bool v = cfg[b].get<bool>();
    if (std::string(b) == "allow_root") out.allow_root = v;
    if (std::string(b) == "allow_unconfined") out.allow_unconfined = v;
    if (std::string(b) == "allow_privilege_escalation") out.allow_privilege_escalation = v;
  }
  if (cfg.contains("min_profile")) {
    if (!cfg["min_profile"].is_string()) {
      fail("min_profile", "must be a string");
    } else {
      out.min_profile = cfg["min_profile"].get<std::string>();
      if (out.min_profile != "default" && out.min_profile != "restricted")
        fail("min_profile", in_quotes(out.min_profile) +
                                " is not a floor: use \"default\" or \"restricted\" (allow "
                                "unconfined with allow_unconfined = true)");
      else if (out.min_profile == "restricted" && out.allow_unconfined)
        fail("allow_unconfined", "true contradicts min_profile = \"restricted\"; choose one");
    }
  }
  if (cfg.contains("default_profile")) {
    if (!cfg["default_profile"].is_string()) {
      fail("default_profile", "must be a string");
    } else {
      out.default_profile = cfg["default_profile"].get<std::string>();
      if (out.default_profile == "unconfined")
        fail("default_profile",
             "cannot be \"unconfined\": a task runs unconfined only when it asks for it by "
             "name (and allow_unconfined = true)");
    }
  }
  if (cfg.contains("allowed_cap_add")) {
    const json &caps = cfg["allowed_cap_add"];
    if (!caps.is_array()) {
      fail("allowed_cap_add", "must be an array of capability names");
    } else {
      for (size_t i = 0; i < caps.size(); ++i) {
        std::string at = "allowed_cap_add[" + std::to_string(i) + "]";
        if (!caps[i].is_string()) {
          fail(at, "must be a capability name like \"NET_ADMIN\"");
          continue;
        }
        std::string n = caps[i].get<std::string>();
        if (n == "ALL" || n == "all") {
          out.allowed_cap_add.push_back("ALL");
          continue;
        }
        auto c = canonical_cap(n);
        if (!c) {
          fail(at,
               "unknown capability " + in_quotes(n) + " (libcap and this kernel do not know it)");
          continue;
        }
        out.allowed_cap_add.push_back(*c);
      }
    }
  }
  return problems.size() == before;
}

bool parse_policy(const json &cfg, HostPolicy &out, std::string &key, std::string &message) {
  ConfigProblems problems;
  if (parse_policy(cfg, out, problems)) return true;
  key = problems.front().first;
  message = problems.front().second;
  return false;
}

const Profile *profile_for(const HostPolicy &policy, const std::map<std::string, Profile> &profiles,
                           const TaskSecurity &t) {
  auto it = profiles.find(t.profile.empty() ? policy.default_profile : t.profile);
  return it == profiles.end() ? nullptr : &it->second;
}

Refusal check_task(const HostPolicy &policy, const std::map<std::string, Profile> &profiles,
                   const TaskSecurity &t, const std::string &label, const BrokenProfiles &broken) {
  auto refuse = [&](Refusal::Kind k, const std::string &m) { return Refusal{k, label + ": " + m}; };
  const Profile *p = profile_for(policy, profiles, t);
  const std::string wanted = t.profile.empty() ? policy.default_profile : t.profile;
  if (auto it = broken.find(wanted); !p && it != broken.end())
    return refuse(Refusal::invalid, "profile " + in_quotes(wanted) +
                                        " could not be loaded when the plugin started, so no task "
                                        "may use it: " +
                                        it->second);
  if (!p) {
    std::vector<std::string> names;
    for (const auto &[n, _] : profiles) names.push_back(n);
    return refuse(Refusal::invalid, "security.profile " + in_quotes(t.profile) +
                                        " is not a profile this host has; it has " +
                                        list_text(names));
  }
  const std::string asks = "asks for profile " + in_quotes(p->name);
  if (p->unconfined) {
    if (!policy.allow_unconfined)
      return refuse(Refusal::permission,
                    "refused by rule plugin.security.allow_unconfined = false: the task " + asks);
  } else {
    const int floor = policy.min_profile == "restricted" ? 2 : 1;
    if (p->rank < floor)
      return refuse(Refusal::permission, "refused by rule plugin.security.min_profile = " +
                                             in_quotes(policy.min_profile) + ": the task " + asks);
  }

  std::vector<std::string> caps;
  try {
    caps = effective_caps(*p, t);
  } catch (const ProfileError &e) {
    return refuse(Refusal::invalid, e.what());
  }
  for (const std::string &c : caps) {
    if (contains(p->capabilities, c)) continue;  // the profile gives it anyway
    if (p->addable_caps && !contains(*p->addable_caps, c))
      return refuse(Refusal::permission, "refused by profile " + in_quotes(p->name) + ": only " +
                                             list_text(*p->addable_caps) +
                                             " may be added, the task adds " + in_quotes(c));
    if (!contains(policy.allowed_cap_add, "ALL") && !contains(policy.allowed_cap_add, c))
      return refuse(Refusal::permission, "refused by rule plugin.security.allowed_cap_add = " +
                                             list_text(policy.allowed_cap_add) +
                                             ": the task adds " + in_quotes(c));
  }

  const std::string user = !t.user.empty() ? t.user : t.task_user;
  if (!known_non_root(user)) {
    const std::string why =
        user.empty()
            ? "the task may run as root (no user given: the image decides)"
            : "the task's user " + in_quotes(user) + " is root or not a numeric non-root uid";
    const std::string fix = "; set [task.security] user = \"65534:65534\" (any numeric uid but 0)";
    if (p->requires_non_root)
      return refuse(Refusal::permission, "refused by profile " + in_quotes(p->name) +
                                             ": must run as a non-root user; " + why + fix);
    if (!policy.allow_root)
      return refuse(Refusal::permission,
                    "refused by rule plugin.security.allow_root = false: " + why + fix);
  }

  if (t.no_new_privileges == false && p->no_new_privileges) {
    if (p->rank >= 2)
      return refuse(Refusal::permission, "refused by profile " + in_quotes(p->name) +
                                             ": no privilege escalation; no_new_privileges "
                                             "cannot be false");
    if (!policy.allow_privilege_escalation)
      return refuse(Refusal::permission,
                    "refused by rule plugin.security.allow_privilege_escalation = false: the task "
                    "sets no_new_privileges = false");
  }
  return {};
}

}  // namespace flotilla::security
